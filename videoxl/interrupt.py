"""How the ``videoxl`` command ends when it is told to stop: Ctrl-C (SIGINT) and SIGTERM alike unwind the work
as a ``KeyboardInterrupt``, so every temporary file is cleaned up on the way out, then one line and the shell's
code for the signal (130 for SIGINT, 143 for SIGTERM). After the work is done, a signal ends the process at once
with the same line and code, never by the signal itself."""

from __future__ import annotations

import os
import signal
import sys

SIGNALS = (signal.SIGINT, signal.SIGTERM)
WORDS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}

received: list[int] = []  # the signals received since :func:`install`


def exit_code() -> int:
    """The exit code for the last signal received: 128 + its number (130 when none was recorded)."""
    return 128 + (received[-1] if received else signal.SIGINT)


def leave(prog: str = "videoxl") -> None:
    """Print the one line and exit now with :func:`exit_code`: the unwinding already cleaned up, and leaving
    without the interpreter's shutdown keeps a late signal from ending the process by that signal."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)  # a second signal while leaving stays quiet
    word = WORDS.get(received[-1] if received else signal.SIGINT, "interrupted")
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    sys.stderr.write(f"{prog}: {word}\n")
    sys.stderr.flush()
    os._exit(exit_code())


def _unwind(signum, frame):
    received.append(signum)
    raise KeyboardInterrupt


def _leave_now(signum, frame):
    received.append(signum)
    leave()


def install() -> None:
    """From now on SIGINT and SIGTERM raise KeyboardInterrupt in the main thread (and are recorded)."""
    for sig in SIGNALS:
        signal.signal(sig, _unwind)


def install_early() -> None:
    """Before the command runs (while modules import): a signal leaves at once with the one line."""
    for sig in SIGNALS:
        signal.signal(sig, _leave_now)


def finished() -> None:
    """The work is done: a signal from now on leaves at once instead of unwinding into the interpreter's exit."""
    install_early()

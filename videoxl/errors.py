"""videoxl's exceptions: one base class, and the line between bad input and internal faults.

:class:`InputError` (and its subclasses :class:`VideoError`, :class:`CheckpointError`, :class:`OptionError`) means
the caller gave something unusable: the CLI exits 2 and the server answers 4xx, with the message as it is. Any
other exception is an internal fault: exit 1, HTTP 500.
"""

from __future__ import annotations


class VideoXLError(Exception):
    """Base class of every exception videoxl raises on purpose."""


class InputError(VideoXLError, ValueError):
    """Bad input from the user (a file, an option, a request); the message names it and says what to do."""


class OptionError(InputError):
    """An option or argument out of range, or of the wrong kind; the message names the option."""


class VideoError(InputError):
    """A video that cannot be used: missing, not a regular file, empty, corrupt, or without a video stream."""


class CheckpointError(InputError):
    """A checkpoint that cannot be loaded as Video-XL-2: missing files, wrong keys or shapes, code in the folder,
    an unreachable hub."""

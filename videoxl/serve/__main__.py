"""``videoxl serve``: the command line of the server (``python -m videoxl.serve`` works the same).

:func:`add_parser` adds the ``serve`` subcommand to a CLI's subparsers; :func:`run` starts the server from the
parsed arguments and returns the exit code (0; 2 for bad input such as an unusable checkpoint; 1 otherwise).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .. import DEFAULT_MODEL, decoding, defaults
from ..options import add_compile, device_name, non_negative, positive, rate, whole
from .build import build
from .service import ServeConfig

DEFAULTS = ServeConfig()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="checkpoint folder or hub id (default: the bundled model)")
    p.add_argument("--served-model-name", help="the model id clients send (default: the folder's name)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=whole(0, 65535), default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 routes "
                                                   "(default: $VIDEOXL_API_KEY; none if unset)")
    media = p.add_argument_group("media")
    media.add_argument("--allowed-local-media-path", metavar="DIR",
                       help="serve local files and file:// URLs from DIR only (default: no local files)")
    media.add_argument("--allowed-media-domains", nargs="*", default=[], metavar="DOMAIN",
                       help="fetch http(s) media from these hosts and their subdomains only (default: none)")
    media.add_argument("--allowed-stream-schemes", nargs="*", default=[], metavar="SCHEME",
                       help="live stream schemes POST /v1/streams accepts, e.g. tcp rtsp (default: none)")
    media.add_argument("--max-media-mb", type=positive, default=DEFAULTS.max_media_bytes / 2**20)
    media.add_argument("--max-bodies-mb", type=positive, default=DEFAULTS.max_bodies_bytes / 2**20,
                       help="request bodies read or handled at once, in MB; more waiting bodies get 429 (one body "
                            "alone always passes)")
    media.add_argument("--media-timeout", type=positive, default=30.0, help="seconds to fetch an http(s) video")
    media.add_argument("--max-frames", type=whole(1, defaults.FRAMES_LIMIT), default=DEFAULTS.max_frames,
                       help=f"default and upper limit of frames per video (default {DEFAULTS.max_frames})")
    media.add_argument("--fps", type=rate, default=DEFAULTS.fps)
    media.add_argument("--max-fps", type=rate, default=DEFAULTS.max_fps)
    model = p.add_argument_group("pre-fill and decoding")
    model.add_argument("--chunk", type=whole(1), default=DEFAULTS.prefill.chunk, help="pre-fill chunk, in groups")
    model.add_argument("--window", type=whole(-1), default=DEFAULTS.prefill.window, help="-1: all earlier chunks")
    decoding.add_arguments(p)  # the server's defaults for every request, over the model's profile
    model.add_argument("--max-tokens-limit", type=whole(1, defaults.NEW_TOKENS_LIMIT), default=DEFAULTS.max_tokens_limit)
    model.add_argument("--device", type=device_name, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    model.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    add_compile(model)
    limits = p.add_argument_group("load and KV tiers")
    limits.add_argument("--max-queue", type=whole(1), default=DEFAULTS.max_queue,
                        help="jobs waiting for the model before requests are refused with 429")
    limits.add_argument("--max-question-chars", type=whole(1), default=DEFAULTS.max_question_chars)
    limits.add_argument("--request-timeout", type=positive, default=DEFAULTS.request_timeout_s)
    limits.add_argument("--gpu-kv-gb", type=non_negative, default=8.0)
    limits.add_argument("--cpu-kv-gb", type=non_negative, default=16.0)
    limits.add_argument("--disk-kv-dir", help="keep evicted stores here; they survive restarts (default: none)")
    limits.add_argument("--disk-kv-gb", type=non_negative, default=64.0)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    scale = p.add_argument_group("scale-out (Ray Serve; needs the 'ray' extra)")
    scale.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                       help="serve as a Ray Serve application on the cluster at ADDRESS ('auto': the one "
                            "'ray start' runs on this machine); without ADDRESS a local cluster is started. "
                            "Requests go to the replica that holds their video's KV store")
    scale.add_argument("--replicas", type=whole(1), default=1, help="model replicas under --ray")
    scale.add_argument("--replica-cpus", type=positive, default=None,
                       help="CPU cores per replica under --ray (default: 1 with a GPU per replica, else 2)")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``serve`` to a CLI's subparsers (``parser.add_subparsers()``); it sets ``run`` as the handler."""
    p = subparsers.add_parser("serve", help="serve video QA over an OpenAI-compatible HTTP API",
                              description="An OpenAI-compatible video QA server that pre-fills each video once "
                                          "and answers many questions about it.")
    add_arguments(p)
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Load the model and serve until interrupted; the exit code."""
    import uvicorn

    from .. import interrupt
    from ..errors import InputError
    from .app import create_app
    from .streams import Streams

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("videoxl.serve")
    if args.ray is not None:
        try:
            from .ray import serve_ray
        except ImportError as e:
            print(f"videoxl serve: error: --ray needs Ray Serve ({e}): pip install 'videoxl[ray]'", file=sys.stderr)
            return 2
        return serve_ray(args)
    sweep_scratch()
    scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH}{os.getpid()}-"))
    try:
        try:
            qa = build(args, scratch)
        except (InputError, ValueError) as e:
            print(f"videoxl serve: error: {e}", file=sys.stderr)
            return 2
        streams = Streams(qa.model, tuple(s.lower() for s in args.allowed_stream_schemes))
        api_key = args.api_key or os.environ.get("VIDEOXL_API_KEY") or None
        log.info("serving %s (%s on %s) at http://%s:%d/v1%s", qa.name, args.model or DEFAULT_MODEL,
                 qa.model.device, args.host, args.port, " with an API key" if api_key else "")
        # uvicorn stops gracefully on SIGINT/SIGTERM and raises the signal again, which videoxl.interrupt's
        # handler (installed by the command) turns into a KeyboardInterrupt that uvicorn swallows
        uvicorn.run(create_app(qa, api_key, streams), host=args.host, port=args.port, log_level=args.log_level,
                    timeout_graceful_shutdown=10)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if interrupt.received:  # stopped by a signal: the command exits 130 or 143 with its one line
        raise KeyboardInterrupt
    return 0


SCRATCH = "videoxl-media-"  # + the server's pid + a random part, in the system's temporary folder


def sweep_scratch() -> None:
    """Delete the scratch folders of servers that are gone (killed before they could clean up)."""
    for path in Path(tempfile.gettempdir()).glob(f"{SCRATCH}*"):
        pid = path.name[len(SCRATCH):].split("-")[0]
        if not pid.isdigit() or not path.is_dir() or path.is_symlink() or path.stat().st_uid != os.getuid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    from .. import interrupt

    parser = argparse.ArgumentParser(prog="python -m videoxl.serve", description="OpenAI-compatible video QA server")
    add_arguments(parser)
    interrupt.install()
    try:
        code = run(parser.parse_args(argv))
    except KeyboardInterrupt:
        interrupt.leave("videoxl serve")
    interrupt.finished()
    return code


if __name__ == "__main__":
    sys.exit(main())

"""From the server's options to a running service: :func:`check` validates them without loading anything, and
:func:`build` loads the model and assembles the :class:`VideoQA`. ``videoxl serve`` and each Ray Serve replica of
``videoxl serve --ray`` build the same service from the same options.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import DEFAULT_MODEL, decoding
from .service import ServeConfig

GB = 2**30


def check(args: argparse.Namespace) -> tuple[ServeConfig, Path]:
    """The server's configuration and checkpoint folder from the options, without loading the model; InputError
    (or ValueError) for bad options."""
    from ..engine.prefill import PrefillConfig
    from ..errors import InputError
    from ..model import checkpoint
    from .tiers import own_folder

    given = decoding.given(args)
    decoding.options(**given)
    if given.get("max_new_tokens", 0) > args.max_tokens_limit:
        raise InputError("--max-new-tokens must be <= --max-tokens-limit")
    root = args.allowed_local_media_path
    if root is not None and not Path(root).is_dir():
        raise InputError(f"--allowed-local-media-path {root}: not a folder")
    config = ServeConfig(
        max_frames=args.max_frames, fps=args.fps, max_fps=args.max_fps,
        prefill=PrefillConfig(chunk=args.chunk, window=None if args.window == -1 else args.window),
        decoding=given,
        max_tokens_limit=args.max_tokens_limit, max_question_chars=args.max_question_chars,
        max_queue=args.max_queue, request_timeout_s=args.request_timeout,
        max_media_bytes=int(args.max_media_mb * 2**20), max_bodies_bytes=int(args.max_bodies_mb * 2**20))
    if args.disk_kv_dir:
        own_folder(args.disk_kv_dir)  # a folder the tier must not use is refused before the model loads
    return config, checkpoint.resolve(args.model or str(DEFAULT_MODEL))


def media_resolver(args: argparse.Namespace, config: ServeConfig, scratch: Path):
    """The :class:`MediaResolver` the media options describe, keeping fetched media in ``scratch``."""
    from .media import MediaPolicy, MediaResolver

    root = args.allowed_local_media_path
    return MediaResolver(MediaPolicy(Path(root) if root else None,
                                     tuple(d.lower() for d in args.allowed_media_domains),
                                     config.max_media_bytes, args.media_timeout), scratch)


def served_name(args: argparse.Namespace) -> str:
    return args.served_model_name or Path(str(args.model or DEFAULT_MODEL).rstrip("/")).name


def build(args: argparse.Namespace, scratch: Path, write_through: bool = False):
    """Load the model and assemble the :class:`VideoQA` the options describe; ``write_through`` writes every new
    store to the disk tier at once (a folder shared by replicas). InputError (or ValueError) for bad options."""
    import torch

    from ..model import VideoXL2
    from .metrics import Metrics
    from .service import VideoQA, model_fingerprint
    from .tiers import DiskStores, KVTiers

    config, folder = check(args)
    model = VideoXL2.from_pretrained(folder, dtype=getattr(torch, args.dtype) if args.dtype else None,
                                     device=args.device)
    model.compile_generation = args.compile
    fingerprint = model_fingerprint(folder)
    metrics = Metrics()
    disk = DiskStores(args.disk_kv_dir, fingerprint) if args.disk_kv_dir else None
    tiers = KVTiers(model, int(args.gpu_kv_gb * GB), int(args.cpu_kv_gb * GB), disk, int(args.disk_kv_gb * GB),
                    on_event=lambda name, **labels: metrics.inc("videoxl_kv_events_total", event=name, **labels),
                    write_through=write_through)
    return VideoQA(model, served_name(args), fingerprint, config, tiers, media_resolver(args, config, scratch),
                   metrics)

"""videoxl: question answering over very long videos with streaming chunked pre-fill and bi-level KV decoding.

    from videoxl import VideoXL2, DecodeConfig
    model = VideoXL2.from_pretrained("BAAI/Video-XL-2")      # or a local folder, or the bundled default model
    session = model.ingest("movie.mp4", max_frames=2048)
    print(session.ask("When does the dog appear?", DecodeConfig(topk=4)).text)
"""

from pathlib import Path

from .engine.decode import Answer, DecodeConfig, Decoder
from .engine.layout import Group
from .engine.prefill import PrefillConfig, PrefilledVideo, prefill
from .engine.store import KVStore
from .model import CheckpointError, Session, VideoXL2, VideoXL2Config
from .video import VideoError

DEFAULT_MODEL = Path(__file__).parent / "assets" / "synth"

__all__ = ["VideoXL2", "VideoXL2Config", "Session", "PrefillConfig", "DecodeConfig", "Answer", "prefill", "Decoder",
           "Group", "KVStore", "PrefilledVideo", "VideoError", "CheckpointError", "DEFAULT_MODEL"]

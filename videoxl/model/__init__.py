"""The Video-XL-2 model: vision tower, DTS, projector, Qwen2 LLM, checkpoints in the official layout."""

from ..errors import CheckpointError
from .config import PRESETS, SYNTH, TINY, VIDEO_XL_2, LLMConfig, VideoXL2Config, VisionConfig, preset
from .videoxl2 import VideoXL2

__all__ = ["VideoXL2", "VideoXL2Config", "VisionConfig", "LLMConfig", "PRESETS", "TINY", "SYNTH",
           "VIDEO_XL_2", "preset", "CheckpointError"]

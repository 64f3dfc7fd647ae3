"""Video input: probing and decoding with PyAV, the reference frame-sampling rule, and frame preprocessing."""

from .preprocess import preprocess
from .reader import VideoError, VideoInfo, decode_frames, probe
from .sampling import SampledFrames, plan_frames, sample_indices

__all__ = ["VideoError", "VideoInfo", "probe", "decode_frames", "sample_indices", "plan_frames", "SampledFrames",
           "preprocess"]

"""Video input: probing and decoding with PyAV, the reference frame-sampling rule, and frame preprocessing
(``videoxl.video.preprocess``, kept out of this package's namespace because it needs torch: checking a path stays
light)."""

from ..errors import VideoError
from .reader import VideoInfo, check_file, decode_frames, open_image, open_video, probe, upright
from .sampling import SampledFrames, check_sampling, plan_frames, sample_indices

__all__ = ["VideoError", "VideoInfo", "check_file", "open_video", "open_image", "probe", "decode_frames", "upright",
           "sample_indices", "plan_frames", "check_sampling", "SampledFrames"]

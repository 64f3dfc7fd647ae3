"""Limits, and the few defaults that are not fields of an options dataclass (``decoding.py`` declares the decoding
options). A plain module with no imports, so the CLI can build its parser without loading torch.
"""

MAX_FRAMES = 512  # frame budget of a video (the reference sampling rule spreads it over the whole video)
FPS = 1.0  # base sampling rate, frames per second
MAX_FPS = 4.0  # highest rate for short videos
FRAMES_LIMIT = 100_000  # the largest frame budget accepted: 25,000 groups, about 1.3 million LLM tokens

QUESTION_TOKENS = 2048  # the longest question accepted, far inside every supported model's context
NEW_TOKENS_LIMIT = 4096  # the longest answer accepted

CHUNK = 4  # pre-fill chunk, in 4-frame groups (engine.prefill.PrefillConfig; the published default)
WINDOW = 3  # previous chunks a chunk attends to in full (engine.prefill.PrefillConfig; the published default)

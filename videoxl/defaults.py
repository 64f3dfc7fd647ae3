"""Every option's default and limit, in one place (the CLI, the library and the server read them from here).

A plain module with no imports, so the CLI can build its parser without loading torch.
"""

MAX_FRAMES = 512  # frame budget of a video (the reference sampling rule spreads it over the whole video)
FPS = 1.0  # base sampling rate, frames per second
MAX_FPS = 4.0  # highest rate for short videos
FRAMES_LIMIT = 100_000  # the largest frame budget accepted: 25,000 groups, about 1.3 million LLM tokens

QUESTION_TOKENS = 2048  # the longest question accepted, far inside every supported model's context
MAX_NEW_TOKENS = 32  # answer length in tokens
NEW_TOKENS_LIMIT = 4096

CHUNK = 4  # pre-fill chunk, in 4-frame groups (the published default)
WINDOW = 3  # previous chunks a chunk attends to in full (the published default)
TOPK = 4  # relevant decoding chunks reloaded dense besides the first and last
DECODE_CHUNK = 1  # decoding chunk, in groups
FOLLOW = 0  # best decoding chunks that bring the chunk after them, within TOPK (README: relevance, "follow")
CALIBRATE = False  # re-ranked chunks scored over the chat template's own attention to them: loses a needle the
# prompt before the video announced (the passkey benchmark; docs/calibration.md)
FOLLOW_TAIL = 0.25  # the best chunk brings the next when this share of its attention is on its last 1/16 (None: never)
SPARSE_STAMPS = False  # sparse chunks keep their timestamp tokens in decoding caches (README: relevance, stamps)

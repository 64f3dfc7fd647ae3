"""``videoxl serve``: an OpenAI-compatible video QA server that pre-fills each video once and answers many
questions about it, keeping KV stores in tiers from GPU memory to disk.

The request flows through: ``protocol`` (OpenAI's wire format) -> ``media`` (fetching and confining the video) ->
``service`` (keys, pre-fill once, questions) -> ``scheduler`` (one model worker) -> ``tiers`` (where stores live).
``app`` holds the HTTP routes, ``metrics`` the Prometheus counters, ``build`` the service from the options,
``__main__`` the command line. ``ray`` (imported only under ``--ray``) runs the same app on Ray Serve replicas,
routing each request to the one holding its video.
"""

from .service import ServeConfig, VideoQA

__all__ = ["ServeConfig", "VideoQA"]

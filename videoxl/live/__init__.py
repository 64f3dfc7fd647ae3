"""Live video: sources that are still arriving (live streams, growing files), ingested chunk by chunk into a
horizon-bounded store, answerable at any time (:class:`~videoxl.live.stream.LiveStream`).

Submodules: ``source`` (sampled, stamped frames of a live input), ``horizon`` (the store whose old groups keep only
their sparse KVs), ``stream`` (the ingest loop and questions), ``watch`` (the ``videoxl watch`` command).
"""

"""Benchmark samples as Ray tasks (``--ray [ADDRESS]``): one actor per GPU (one per CPU core where there is no GPU),
each loading the model once. An actor that dies is restarted and its sample retried (Ray's ``max_restarts`` and
``max_task_retries``), so a lost machine loses no sample. Ray is an optional dependency (the ``ray`` extra).
"""

from __future__ import annotations

from typing import Callable

from .benchmarks import Evaluator, _maybe_die, load_model
from .selection import Run
from .tasks import TASKS, Sample, Task


class _Worker:
    def __init__(self, model: str, task: str, run: Run, dtype: str | None, max_frames: int | None, threads: int):
        import torch

        if not torch.cuda.is_available():
            torch.set_num_threads(threads)  # the machine's cores shared among its actors
        self.evaluator = Evaluator(load_model(model, "cuda" if torch.cuda.is_available() else "cpu", dtype),
                                   TASKS[task], run, max_frames)

    def row(self, index: int, sample: Sample) -> tuple[int, dict]:
        _maybe_die()
        return index, self.evaluator.row(sample)


def run_ray(address: str, model: str, task: Task, samples: list[Sample], run: Run, *,
            on_row: Callable[[dict], None] | None = None, dtype: str | None = None, max_frames: int | None = None,
            actors: int | None = None) -> list[dict]:
    """Rows of ``samples`` (in their order) computed by Ray actors. ``address`` "auto" starts a local Ray (or joins
    the cluster $RAY_ADDRESS names); any other address joins that cluster."""
    import ray
    from ray.util import ActorPool

    started = not ray.is_initialized()
    if started:
        # a local Ray started for this run alone gets no dashboard (its processes would take CPU from the samples)
        ray.init(address=None if address == "auto" else address,
                 **({"include_dashboard": False} if address == "auto" else {}))
    try:
        return _run(ray, ActorPool, model, task, samples, run, on_row, dtype, max_frames, actors)
    finally:
        if started:
            ray.shutdown()


def _run(ray, ActorPool, model, task, samples, run, on_row, dtype, max_frames, actors) -> list[dict]:
    gpus = int(ray.cluster_resources().get("GPU", 0))
    n = actors or max(1, gpus or int(ray.cluster_resources().get("CPU", 1)))
    remote = ray.remote(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1, max_restarts=-1,
                        max_task_retries=3)(_Worker)
    n = min(n, len(samples))
    threads = max(1, int(ray.cluster_resources().get("CPU", 1)) // n)
    pool = ActorPool([remote.remote(model, task.name, run, dtype, max_frames, threads) for _ in range(n)])
    results: dict[int, dict] = {}
    for index, sample in enumerate(samples):
        pool.submit(lambda actor, item: actor.row.remote(*item), (index, sample))
    while pool.has_next():
        index, row = pool.get_next_unordered()
        results[index] = row
        if on_row:
            on_row(row)
    return [results[i] for i in range(len(samples))]

"""Server metrics in the Prometheus text format: counters, latency histograms and gauges read at scrape time."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Callable

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, float("inf"))


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{str(v)}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


class Metrics:
    """Counters and histograms by name and labels; gauges are callables returning {labels tuple: value}."""

    HELP = {
        "videoxl_requests_total": ("counter", "Chat completion requests by HTTP status."),
        "videoxl_request_seconds": ("histogram", "Chat completion latency by stage (total, ingest, answer)."),
        "videoxl_ingests_total": ("counter", "Videos pre-filled."),
        "videoxl_lookups_total": ("counter", "Requests by where their video's store was: held (hit), being "
                                             "pre-filled for another request (shared), or neither (miss)."),
        "videoxl_stores": ("gauge", "Pre-filled videos held, in any tier."),
        "videoxl_reuses_total": ("counter", "Questions answered from a pre-filled video, by the tier it was in."),
        "videoxl_kv_events_total": ("counter", "KV store moves: evictions between tiers, loads, discarded files."),
        "videoxl_cancelled_total": ("counter", "Generations stopped because the client went away."),
        "videoxl_generated_tokens_total": ("counter", "Completion tokens generated."),
        "videoxl_kv_bytes": ("gauge", "KV store bytes held per tier."),
        "videoxl_kv_budget_bytes": ("gauge", "KV store byte budget per tier."),
        "videoxl_queue_depth": ("gauge", "Jobs waiting for the model."),
        "videoxl_ingesting": ("gauge", "Videos being pre-filled now."),
    }

    def __init__(self):
        self._lock = threading.Lock()
        self._counters: dict = defaultdict(float)
        self._hist: dict = {}
        self.gauges: dict[str, Callable[[], dict]] = {}

    def inc(self, name: str, value: float = 1, **labels) -> None:
        with self._lock:
            self._counters[(name, tuple(sorted(labels.items())))] += value

    def observe(self, name: str, seconds: float, **labels) -> None:
        with self._lock:
            key = (name, tuple(sorted(labels.items())))
            counts, total = self._hist.get(key, ([0] * len(BUCKETS), 0.0))
            self._hist[key] = ([c + (seconds <= b) for c, b in zip(counts, BUCKETS)], total + seconds)

    def counter(self, name: str, **labels) -> float:
        with self._lock:
            return self._counters.get((name, tuple(sorted(labels.items()))), 0.0)

    def render(self) -> str:
        lines = []
        with self._lock:
            counters, hists = dict(self._counters), dict(self._hist)
        gauges = {}
        for name, read in self.gauges.items():
            gauges.update({(name, labels): v for labels, v in read().items()})
        for name, (kind, text) in self.HELP.items():
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            for (n, labels), value in sorted(counters.items()) + sorted(gauges.items()):
                if n == name:
                    lines.append(f"{name}{_labels(dict(labels))} {value:g}")
            for (n, labels), (counts, total) in sorted(hists.items()):
                if n != name:
                    continue
                for count, bound in zip(counts, BUCKETS):
                    le = "+Inf" if bound == float("inf") else f"{bound:g}"
                    lines.append(f"{name}_bucket{_labels({**dict(labels), 'le': le})} {count}")
                lines.append(f"{name}_sum{_labels(dict(labels))} {total:.6f}")
                lines.append(f"{name}_count{_labels(dict(labels))} {counts[-1]}")
        return "\n".join(lines) + "\n"

"""Server metrics through ``prometheus_client``: counters, latency histograms, and gauges read at scrape time.

The exposition text (escaping of label values included) is ``prometheus_client``'s, never written by hand, and
every metric has a fixed set of labels, so no request can add a series or a line to ``/metrics``.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily

disable_created_metrics()  # no ``*_created`` series beside each counter

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, float("inf"))

# name: (kind, help, label names); a label a call leaves out is recorded as ""
SPEC = {
    "videoxl_requests_total": ("counter", "Chat completion requests by HTTP status.", ("path", "status")),
    "videoxl_request_seconds": ("histogram", "Chat completion latency by stage (total, ingest, answer).",
                                ("stage",)),
    "videoxl_ingests_total": ("counter", "Videos pre-filled.", ()),
    "videoxl_reuses_total": ("counter", "Questions answered from a pre-filled video, by the tier it was in.",
                             ("tier",)),
    "videoxl_kv_events_total": ("counter", "KV store moves: evictions between tiers, loads, discarded files.",
                                ("event", "tier", "to")),
    "videoxl_cancelled_total": ("counter", "Generations stopped because the client went away.", ()),
    "videoxl_generated_tokens_total": ("counter", "Completion tokens generated.", ()),
    "videoxl_refused_bodies_total": ("counter", "Request bodies refused because too many bytes were in flight.",
                                     ()),
    "videoxl_kv_bytes": ("gauge", "KV store bytes held per tier.", ("tier",)),
    "videoxl_kv_budget_bytes": ("gauge", "KV store byte budget per tier.", ("tier",)),
    "videoxl_queue_depth": ("gauge", "Jobs waiting for the model.", ()),
    "videoxl_ingesting": ("gauge", "Videos being pre-filled now.", ()),
    "videoxl_body_bytes_in_flight": ("gauge", "Bytes of request bodies being read or handled now.", ()),
}


class Metrics:
    """Counters and histograms by name and labels (names and label sets from :data:`SPEC`); ``gauges`` maps a
    gauge's name to a callable returning {labels tuple: value}, read at each scrape."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self._metrics: dict = {}
        for name, (kind, text, labels) in SPEC.items():
            if kind == "counter":
                self._metrics[name] = Counter(name.removesuffix("_total"), text, labels, registry=self.registry)
            elif kind == "histogram":
                self._metrics[name] = Histogram(name, text, labels, buckets=BUCKETS, registry=self.registry)
        self.gauges: dict[str, Callable[[], dict]] = {}
        self.registry.register(_Gauges(self))

    def _child(self, name: str, labels: dict):
        metric, names = self._metrics[name], SPEC[name][2]
        unknown = set(labels) - set(names)
        assert not unknown, f"{name} has no label {unknown}"
        return metric.labels(*(str(labels.get(n, "")) for n in names)) if names else metric

    def inc(self, name: str, value: float = 1, **labels) -> None:
        self._child(name, labels).inc(value)

    def observe(self, name: str, seconds: float, **labels) -> None:
        self._child(name, labels).observe(seconds)

    def counter(self, name: str, **labels) -> float:
        names = SPEC[name][2]
        value = self.registry.get_sample_value(name, {n: str(labels.get(n, "")) for n in names})
        return value or 0.0

    def render(self) -> str:
        return generate_latest(self.registry).decode()


class _Gauges:
    """A collector yielding the gauges of a :class:`Metrics` from their callables."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def describe(self):
        return []

    def collect(self):
        for name, read in self.metrics.gauges.items():
            _, text, names = SPEC[name]
            family = GaugeMetricFamily(name, text, labels=names)
            for labels, value in read().items():
                given = dict(labels)
                family.add_metric([str(given.get(n, "")) for n in names], value)
            yield family

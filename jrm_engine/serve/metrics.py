"""Prometheus metrics of one server: its own requests (by endpoint and status), candidates, latency and decode
histograms, rejections by reason, and the runtime's counters (batches, batch sizes, queue depth) read at scrape
time. Each app has its own registry, so several apps in one process (tests, Ray replicas) do not collide."""
from __future__ import annotations

import re
import time
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

# Request latencies on a CPU run from milliseconds to seconds; on a GPU down to ~1 ms.
_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 120)


class _RuntimeCollector:
    """Every numeric field of `ServeEngine.stats()` as a gauge `jrm_runtime_<field>` (counters included: they
    are the runtime's own totals, read as they are)."""

    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        for name, value in self.engine.stats().items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metric = "jrm_runtime_" + re.sub(r"[^a-zA-Z0-9_]", "_", name)
                yield GaugeMetricFamily(metric, f"C++ runtime stats()['{name}']", value=value)


class ServeMetrics:
    def __init__(self, engine):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("jrm_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.candidates = Counter("jrm_candidates", "candidates scored", ["endpoint"], registry=r)
        self.latency = Histogram("jrm_request_seconds", "request latency, body received to answer", ["endpoint"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.decode = Histogram("jrm_decode_seconds", "body parsing and image decoding per request",
                                ["endpoint", "format"], buckets=_LATENCY_BUCKETS, registry=r)
        self.rejections = Counter("jrm_rejections", "requests refused, by reason", ["reason"], registry=r)
        r.register(_RuntimeCollector(engine))

    def rejected(self, status: int) -> None:
        self.rejections.labels(_REASONS.get(status, str(status))).inc()

    @contextmanager
    def timed(self, histogram, *labels):
        start = time.perf_counter()
        yield
        histogram.labels(*labels).observe(time.perf_counter() - start)

    def render(self) -> bytes:
        return generate_latest(self.registry)


_REASONS = {400: "bad_request", 401: "unauthorized", 413: "body_too_large", 422: "invalid_input",
            503: "overloaded", 504: "timeout", 500: "engine_failed"}

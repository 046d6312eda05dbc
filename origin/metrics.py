"""Prometheus metrics of the origin: requests by status, bytes sent, latency; and the
syncer's, read from its status file at each scrape (the syncer is its own process and serves
no HTTP): ``tandem_sync_queue``, ``tandem_sync_inflight``, ``tandem_sync_lag_seconds``,
``tandem_sync_idle``, ``tandem_sync_status_age_seconds``, ``tandem_sync_last_error_info``
and one ``tandem_sync_<counter>_total`` per counter.

The origin runs several worker processes; with ``PROMETHEUS_MULTIPROC_DIR`` set (the
supervisor sets it before the workers start) every worker writes its samples there and
``/metrics`` on any worker shows the sum over all of them.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from syncer.state import read_status

REQUESTS = Counter("tandem_origin_requests_total", "HTTP requests answered", ["code"])
BYTES = Counter("tandem_origin_sent_bytes_total", "Body bytes sent by the origin itself")
LATENCY = Histogram(
    "tandem_origin_request_seconds",
    "Time to answer a request (headers and body written to the socket)",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)
HANDOFFS = Counter(
    "tandem_origin_handoffs_total",
    "X-Accel hand-offs to nginx, by what answered: the shortcut (origin/handoff.py) or the app",
    ["by"],
)
_by_code: dict[int, Counter] = {}


def observe(status: int, sent: int, seconds: float) -> None:
    _code(status).inc()
    if sent:
        BYTES.inc(sent)
    LATENCY.observe(seconds)


def handoff(seconds: float) -> None:
    """A hand-off the app answered: counted and timed like any answer."""
    HANDOFFS.labels(by="app").inc()
    observe(200, 0, seconds)


class ShortcutTally:
    """Hand-offs answered by the shortcut (``origin/handoff.py``), counted in a plain int and
    added to ``tandem_origin_requests_total{code="200"}`` and
    ``tandem_origin_handoffs_total{by="shortcut"}`` within ``FLUSH_AFTER`` seconds: each
    Prometheus update costs a lock, a ``getpid`` and a write to its file, about a tenth of a
    whole hand-off. They are not timed (``tandem_origin_request_seconds`` covers the answers
    the app gives): the shortcut never waits, its answers take tens of microseconds."""

    FLUSH_AFTER = 0.2

    def __init__(self) -> None:
        self.pending = 0

    def count(self) -> None:
        if not self.pending:
            asyncio.get_running_loop().call_later(self.FLUSH_AFTER, self.flush)
        self.pending += 1

    def flush(self) -> None:
        n, self.pending = self.pending, 0
        if n:
            HANDOFFS.labels(by="shortcut").inc(n)
            _code(200).inc(n)


def _code(status: int) -> Counter:
    c = _by_code.get(status)
    if c is None:
        c = _by_code[status] = REQUESTS.labels(code=str(status))
    return c


class SyncCollector(Collector):
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def collect(self) -> Iterator[Metric]:
        st = read_status(self.state_dir)
        if st is None:
            return  # no syncer has run here yet: no sync metrics
        gauges = {
            "queue": ("Changes waiting to be applied", st.get("queue")),
            "inflight": ("Changes being applied or waiting for their commit", st.get("inflight")),
            "lag_seconds": ("Age of the oldest change not yet on the target",
                            st.get("lag_seconds")),
            "idle": ("1 when nothing is pending", st.get("idle")),
            "status_age_seconds": ("Seconds since the syncer last wrote its status",
                                   _age(st.get("updated"))),
        }
        for name, (doc, value) in gauges.items():
            if (v := _number(value)) is not None:  # a garbled value is left out, not a 500
                yield GaugeMetricFamily(f"tandem_sync_{name}", doc, value=v)
        info = GaugeMetricFamily("tandem_sync_last_error_info", "The last error (1 if any)",
                                 labels=["direction", "error"])
        info.add_metric([str(st.get("direction", "")), str(st.get("last_error", ""))],
                        float(bool(st.get("last_error"))))
        yield info
        counters = st.get("counters")
        for key, value in (counters.items() if isinstance(counters, dict) else ()):
            if (v := _number(value)) is not None:
                yield CounterMetricFamily(f"tandem_sync_{key}", f"Syncer counter {key}",
                                          value=v)


def _number(value: object) -> float | None:
    if isinstance(value, bool | int | float):
        return float(value)
    return None


def _age(updated: object) -> float | None:
    t = _number(updated)
    return None if t is None else max(0.0, time.time() - t)


def render(sync_state_dir: Path | None = None) -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    out = generate_latest(registry)
    if sync_state_dir is not None:
        sync = CollectorRegistry()
        sync.register(SyncCollector(sync_state_dir))
        out += generate_latest(sync)
    return out, CONTENT_TYPE_LATEST

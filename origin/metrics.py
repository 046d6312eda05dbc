"""Prometheus metrics of the origin: requests by status, bytes sent, latency.

The origin runs several worker processes; with ``PROMETHEUS_MULTIPROC_DIR`` set (the
supervisor sets it before the workers start) every worker writes its samples there and
``/metrics`` on any worker shows the sum over all of them.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter("tandem_origin_requests_total", "HTTP requests answered", ["code"])
BYTES = Counter("tandem_origin_sent_bytes_total", "Body bytes sent by the origin itself")
LATENCY = Histogram(
    "tandem_origin_request_seconds",
    "Time to answer a request (headers and body written to the socket)",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)
_by_code: dict[int, Counter] = {}


def observe(status: int, sent: int, seconds: float) -> None:
    c = _by_code.get(status)
    if c is None:
        c = _by_code[status] = REQUESTS.labels(code=str(status))
    c.inc()
    if sent:
        BYTES.inc(sent)
    LATENCY.observe(seconds)


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST

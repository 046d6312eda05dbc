"""Shared test set-up: every test starts with structlog's defaults (a test that ran the CLI
must not leave its logging configuration, bound to a captured stream, to the next)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@pytest.fixture(scope="session")
def ceph_rgw() -> Iterator[object]:
    """A real Ceph RGW (S3) on loopback, started once per session and stopped by PID at its
    end (``tests/cephrgw.py``). Skipped, with the reason, where Ceph is not installed."""
    import cephrgw

    missing = cephrgw.missing()
    if missing:
        pytest.skip(f"Ceph not installed ({', '.join(missing)}): "
                    f"apt-get install {cephrgw.PACKAGES} (./dev test does)")
    engine = cephrgw.CephRgw.start()
    try:
        yield engine
    finally:
        engine.stop()

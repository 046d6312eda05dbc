"""Shared test set-up: every test starts with structlog's defaults (a test that ran the CLI
must not leave its logging configuration, bound to a captured stream, to the next)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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


@pytest.fixture(scope="session")
def s3_base(ceph_rgw: Any) -> Iterator[Any]:
    """The ``S3Config`` of a bucket on the session's engine; tests use ``s3util.fresh`` for a
    prefix of their own."""
    import s3util

    cfg = s3util.base_config(
        ceph_rgw.endpoint, ceph_rgw.region, ceph_rgw.access_key, ceph_rgw.secret_key
    )
    raw = s3util.raw_client(cfg)
    raw.create_bucket(Bucket=cfg.bucket)
    yield cfg
    raw.close()

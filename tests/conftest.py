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

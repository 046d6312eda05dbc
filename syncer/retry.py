"""The syncer's one retry layer: a change that fails on the target (full, read-only, missing
mount) or on the master is tried again with exponential backoff, never dropped."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential

from cluster.errors import ClusterError, UserError
from syncer.errors import SyncError

log = structlog.get_logger("syncer")

P = ParamSpec("P")
T = TypeVar("T")


def retryable(exc: BaseException) -> bool:
    """Target and master trouble is retried; bad input (``Skipped``, the cluster's
    ``UserError``) is not: trying again cannot help."""
    if isinstance(exc, SyncError):
        return exc.retryable
    if isinstance(exc, UserError):
        return False
    return isinstance(exc, ClusterError | OSError)


async def retrying(on_error: Callable[[BaseException], None],
                   fn: Callable[P, Awaitable[T]], *args: P.args, **kw: P.kwargs) -> T:
    """``await fn(*args, **kw)`` until it succeeds; ``on_error`` hears of each failure.
    The first try runs bare: the retry machinery is set up only once something failed."""
    try:
        return await fn(*args, **kw)
    except Exception as exc:
        if not retryable(exc):
            raise
        log.warning("sync.retry", error=f"{type(exc).__name__}: {exc}", attempt=0)
        on_error(exc)

    def failed(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        if exc is not None:
            log.warning("sync.retry", error=f"{type(exc).__name__}: {exc}",
                        attempt=state.attempt_number)
            on_error(exc)

    async for attempt in AsyncRetrying(retry=retry_if_exception(retryable),
                                       wait=wait_exponential(multiplier=0.1, max=5.0),
                                       before_sleep=failed, reraise=True):
        with attempt:
            return await fn(*args, **kw)
    raise AssertionError("unreachable")  # AsyncRetrying either returns or raises

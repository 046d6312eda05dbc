"""Readiness and the status page.

``/readyz`` is what nginx and operators use to decide whether this origin should get traffic:
the metadata is readable, every volume (or the legacy directory) is there, the sync lag is
under ``origin.max_sync_lag`` and writers are not fenced (a flip in progress). Any problem
makes it a 503 with the reasons in JSON.
"""

from __future__ import annotations

import html
import os
import time
from typing import Any

from origin.config import Config
from origin.sources import Source
from syncer import fence, state


def sync_status(cfg: Config) -> dict[str, Any] | None:
    return state.read_status(cfg.sync.state_dir)


def problems(cfg: Config, source: Source) -> list[str]:
    return source.ready() + host_problems(cfg)


def host_problems(cfg: Config) -> list[str]:
    """What makes every cluster origin of this host unready whatever it serves from: a flip's
    fence, the sync lag over ``origin.max_sync_lag``. The master reports them to second-host
    origins (``GET /v1/readiness``), which cannot see this host's files."""
    out = []
    fenced = fence.read(cfg.origin.fence_file)
    if fenced is not None:
        out.append(fence.describe(fenced))
    st = sync_status(cfg)
    if st is not None:
        try:
            lag = float(st.get("lag_seconds", 0.0))
        except (TypeError, ValueError):  # a garbled status file is a problem, not a 500
            out.append(f"sync lag unknown: lag_seconds is {st.get('lag_seconds')!r}")
        else:
            if not lag <= cfg.origin.max_sync_lag:  # NaN is over too
                out.append(f"sync lag {lag:.1f} s is over {cfg.origin.max_sync_lag:.1f} s")
    return out


async def status_html(cfg: Config, source: Source, role: str) -> str:
    """A page for people: this origin's readiness, the volumes, goals and sync state."""
    from origin.sources import ClusterSource
    from origin.status_page import render, volume_states

    counts: dict[str, Any] | Exception | None = None
    if isinstance(source, ClusterSource):
        try:
            counts = await source.counts(volume_states(source)[0])
        except Exception as exc:  # any database error: the page says so
            counts = exc
    return render(cfg, source, role, problems(cfg, source), sync_status(cfg), time.time(),
                  os.getpid(), counts)


def esc(value: object) -> str:
    return html.escape(str(value))

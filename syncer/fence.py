"""Who may write into the cluster: the fence a flip raises, and which side is primary.

A flip fences writers before it drains the syncer: it creates the fence file
(``origin.fence_file``, JSON naming the flip) and removes it when the flip has finished or has
stopped with nothing changed. Writers outside tandem (a crawler writing into the legacy
directory) only need to check that the file exists. While it exists:

- the origin answers ``PUT``/``DELETE`` with 503, a JSON message naming the flip and
  ``Retry-After``;
- ``tandem cluster put|rm|mv|mkdir|snapshot|trash undel`` refuse with that message (exit 75,
  ``EX_TEMPFAIL``: try again later);
- ``/readyz`` fails, naming the flip.

While the legacy directory is primary (after ``tandem flip --to legacy``) the cluster is the
syncer's mirror of it: a write into the cluster would be overwritten or removed by the next
reconcile, so the same write paths refuse it and name the legacy directory (exit 1, 503).

``refusal`` is the one check every tandem write path makes; ``describe`` the one wording.
Imports nothing of ``origin`` at run time (the composed config is only a type here).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from syncer import state
from syncer.errors import StateError
from syncer.state import Primary

if TYPE_CHECKING:
    from origin.config import Config

RETRY_AFTER = 30  # seconds a refused writer is told to wait while fenced
EX_TEMPFAIL = 75


@dataclass(frozen=True)
class FenceInfo:
    path: Path
    to: Primary | None  # the flip's target; None for a fence file tandem did not write
    since: float | None  # epoch seconds


@dataclass(frozen=True)
class Refusal:
    reason: str  # "fenced" | "not_primary"
    message: str
    retry_after: int | None  # seconds, for a refusal that ends by itself


def read(path: Path) -> FenceInfo | None:
    """The fence at ``path``, or None when writers are not fenced. Any file there fences:
    an operator may create one by hand to stop writers."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return None
    except OSError:
        return FenceInfo(path, None, None)  # there, but unreadable: still a fence
    to, since = None, None
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        data = json.loads(text)
        if data.get("to") in state.PRIMARIES:
            to = data["to"]
        since = float(data["since"])
    return FenceInfo(path, to, since)


def describe(info: FenceInfo) -> str:
    when = ""
    if info.since is not None:
        when = time.strftime(" since %Y-%m-%d %H:%M:%S UTC", time.gmtime(info.since))
    flip = f"`tandem flip --to {info.to}` is running{when}" if info.to else "a flip is running"
    return f"writers are fenced ({info.path} exists): {flip}"


def raise_fence(path: Path, to: Primary, source: Primary, now: float) -> None:
    body = {"flip": f"{source} -> {to}", "to": to, "since": now, "pid": os.getpid(),
            "message": "writers are fenced while tandem flips the primary; retry later"}
    path.parent.mkdir(parents=True, exist_ok=True)
    state.atomic_write(path, (json.dumps(body) + "\n").encode())


def lift_fence(path: Path) -> None:
    path.unlink(missing_ok=True)


def refusal(cfg: Config) -> Refusal | None:
    """Why a write into the cluster must be refused now, or None when it may go ahead."""
    fence = read(cfg.origin.fence_file)
    if fence is not None:
        return Refusal("fenced", f"{describe(fence)}; try again when it has finished",
                       RETRY_AFTER)
    try:
        primary = state.read_primary(cfg.sync.state_dir)
    except StateError as exc:  # unknown: refuse rather than write into a possible mirror
        return Refusal("not_primary", f"cannot tell which side is primary: {exc}", None)
    if primary == "legacy":
        return Refusal(
            "not_primary",
            f"the legacy directory is primary (tandem flip --to legacy): the cluster is its "
            f"mirror and would lose this write; write into {cfg.legacy.dir}, or flip back first "
            "(tandem flip --to cluster)",
            None,
        )
    return None

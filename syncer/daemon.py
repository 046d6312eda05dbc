"""``tandem sync run`` with the config: the mirror daemon, following the persisted primary.

It holds ``<state_dir>/syncer.lock`` (one syncer per state folder; a flip reads from it that a
syncer runs and which primary it follows), and runs the mirror for the current primary:

- ``cluster`` → ``ClusterMirror``: the cluster's change feed into the legacy directory;
- ``legacy`` → ``DirectoryMirror``: the legacy directory (inotify) into the cluster.

It watches the primary file (``tandem flip`` rewrites it) and, when it changes, cancels the
running mirror — which stops between two changes or mid-file, never leaving a partial file
under a final name — and starts the other one. SIGTERM/SIGINT stop it with exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

import structlog

from cluster.cli import master_client
from cluster.remote import RemoteCluster
from syncer import state
from syncer.cluster_mirror import ClusterMirror
from syncer.cluster_target import ClusterTarget
from syncer.dir_mirror import DirectoryMirror
from syncer.errors import StateError
from syncer.state import Primary
from syncer.target import DeletePolicy, DirectoryTarget

if TYPE_CHECKING:
    from origin.config import Config

log = structlog.get_logger("syncer")

POLL = 0.2  # seconds between looks at the primary file


class Mirror(Protocol):
    async def run(self) -> None: ...


def mirror_for(cfg: Config, master: RemoteCluster, primary: Primary) -> Mirror:
    if primary == "cluster":
        target = DirectoryTarget(cfg.legacy.dir, deletes=cast(DeletePolicy, cfg.sync.deletes))
        return ClusterMirror(master, cfg.cluster.meta_dir, target, cfg.sync.state_dir)
    return DirectoryMirror(cfg.legacy.dir, ClusterTarget(master), cfg.sync.state_dir,
                           direction=state.DIRECTIONS["legacy"],
                           deletes=cfg.sync.deletes != "keep",
                           concurrency=cfg.sync.concurrency,
                           reconcile_every=cfg.sync.reconcile_interval)


async def run(cfg: Config) -> int:
    state_dir = cfg.sync.state_dir
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with state.SyncerLock(state_dir) as lock:
        async with master_client(cfg.cluster) as master:
            primary = state.read_primary(state_dir)
            while not stop.is_set():
                task = asyncio.create_task(mirror_for(cfg, master, primary).run())
                lock.announce(primary)
                log.info("sync.direction", primary=primary, direction=state.DIRECTIONS[primary])
                try:
                    new = await _watch(state_dir, primary, stop, task)
                finally:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                if new is not None:
                    log.info("sync.direction_switched", primary=new,
                             direction=state.DIRECTIONS[new], previous=primary)
                    primary = new
    return 0


async def _watch(state_dir: Path, primary: Primary, stop: asyncio.Event,
                 task: asyncio.Task[None]) -> Primary | None:
    """Wait until the primary changes (returns the new one), ``stop`` is set (None), or the
    mirror ends (its error is raised: a mirror runs until cancelled)."""
    stopping = asyncio.create_task(stop.wait())
    warned = ""
    try:
        while True:
            await asyncio.wait({task, stopping}, timeout=POLL,
                               return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                task.result()
                raise StateError(f"the {state.DIRECTIONS[primary]} mirror stopped by itself")
            if stop.is_set():
                return None
            try:
                now = state.read_primary(state_dir)
            except StateError as exc:  # only a hand edit garbles it: keep going, say so once
                if str(exc) != warned:
                    log.error("sync.primary_unreadable", error=str(exc), keeps=primary)
                    warned = str(exc)
                continue
            if now != primary:
                return now
    finally:
        stopping.cancel()

"""``tandem sync run`` with the config: the mirror daemon for the configured site (cluster →
legacy directory for now)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import TYPE_CHECKING, cast

from cluster.cli import master_url
from cluster.remote import RemoteCluster
from syncer.cluster_mirror import ClusterMirror
from syncer.target import DeletePolicy, DirectoryTarget

if TYPE_CHECKING:
    from origin.config import Config


async def run(cfg: Config) -> int:
    target = DirectoryTarget(cfg.legacy.dir, deletes=cast(DeletePolicy, cfg.sync.deletes))
    async with RemoteCluster(master_url(cfg.cluster)) as master:
        mirror = ClusterMirror(master, cfg.cluster.meta_dir, target, cfg.sync.state_dir)
        task = asyncio.create_task(mirror.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return 0

"""``tandem cluster serve``: the master daemon — metadata, background work and the HTTP API.

Start order: take the metadata lock, open metadata and volumes, start background work, then
listen. On SIGTERM/SIGINT: stop listening, finish requests, stop background work, close the
metadata (the seed's MooseFS order: the master stops last, after its clients).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog

from cluster.config import ClusterConfig, ConfigError, is_loopback
from cluster.http_api import create_app
from cluster.http_server import bind
from cluster.http_server import serve as serve_app
from cluster.master import Master

log = structlog.get_logger("cluster")


async def serve(
    cfg: ClusterConfig,
    listen: str | None = None,
    *,
    prepare: Callable[[Master], Awaitable[None]] | None = None,
    on_ready: Callable[[Master, str], None] | None = None,
    readiness: Callable[[], list[str]] | None = None,
) -> int:
    """Run the master until SIGTERM/SIGINT. ``prepare`` runs once the master is open and
    before it listens; ``on_ready`` once it listens (``tandem up`` uses both)."""
    host, port = cfg.listen
    if listen:
        host, _, p = listen.rpartition(":")
        port = int(p)
        if not cfg.token and not is_loopback(host):  # as cluster.listen is checked at load
            raise ConfigError(f"--listen {listen}: reachable from other hosts, and the master's "
                              "HTTP API can change and delete anything: set cluster.token")
    sock = bind(host, port)
    async with Master(cfg) as master:
        if prepare is not None:
            await prepare(master)

        def ready(url: str) -> None:
            master.announce(url)
            log.info("master.listening", url=url, meta=str(cfg.meta_dir),
                     volumes=[v.path for v in master.volumes.values()])
            if on_ready is not None:
                on_ready(master, url)

        await serve_app(create_app(master, readiness=readiness), sock, ready)
    return 0

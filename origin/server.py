"""``tandem origin``: the origin's worker processes on one listening socket (pre-fork).

The supervisor binds the socket, then forks ``origin.workers`` workers that each run the
sanic app on it in their own event loop; the kernel spreads connections over them. Each
worker opens its own read-only metadata connection after the fork, so workers read
concurrently while the master writes (SQLite WAL). A worker that dies is logged and replaced,
with a growing delay if it keeps dying. SIGTERM/SIGINT stop the workers (they finish the
requests in flight) and then the supervisor. A worker gets SIGTERM when the supervisor dies,
even by SIGKILL (``origin.lifetime``), so none is left holding the port.

With ``origin.master`` set, the workers read the cluster of another host: metadata from the
master's HTTP API, bytes from S3 and a local chunk cache (``origin/remote_source.py``).

Several ``tandem origin`` processes may listen on the same address (``SO_REUSEPORT``): that is
how replicas run on one host (``compose.yaml``'s origin replicas share one network namespace);
the kernel spreads connections over them. Not the legacy origin: one on the cluster origin's
address by mistake must fail to bind rather than take half of its traffic.

Why not sanic's own worker manager: it spawns fresh interpreters and owns signal handling
and start-up; forking after ``bind`` keeps start-up to one config load and lets tandem's
supervisor (``tandem up``) manage the origin like any other child.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import time

import structlog
import uvloop

from cluster.http_server import bind
from origin import lifetime
from origin.config import Config

log = structlog.get_logger("origin")

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
WATCHED = STOP_SIGNALS | {signal.SIGCHLD}
MAX_BACKOFF = 5.0


def run(cfg: Config, *, legacy: bool = False, listen: str | None = None,
        workers: int | None = None) -> int:
    role = "legacy" if legacy else "origin"
    host, port = cfg.legacy.listen if legacy else cfg.origin.listen
    if listen:
        host, _, p = listen.rpartition(":")
        port = int(p)
    count = workers or cfg.origin.workers
    prom = cfg.data_dir / "run" / f"metrics-{role}"
    shutil.rmtree(prom, ignore_errors=True)
    prom.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(prom)  # before prometheus_client is imported
    sock = bind(host, port, reuse_port=not legacy)  # replicas of the cluster origin only
    url = "http://{}:{}".format(*sock.getsockname()[:2])
    signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
    children: dict[int, int] = {}  # pid → worker number
    failures = 0
    for n in range(count):
        children[_spawn(cfg, sock, role, n)] = n
    log.info(f"{role}.listening", url=url, workers=count, pid=os.getpid())
    try:
        while children:
            info = signal.sigwaitinfo(WATCHED)
            if info.si_signo in STOP_SIGNALS:
                break
            for pid, n, code in _reap(children):
                log.error(f"{role}.worker_died", worker=n, pid=pid, code=code)
                failures += 1
                time.sleep(min(MAX_BACKOFF, 0.1 * 2 ** min(failures, 6)))
                children[_spawn(cfg, sock, role, n)] = n
    finally:
        _stop(children)
        sock.close()
        log.info(f"{role}.stopped")
    return 0


def _spawn(cfg: Config, sock: socket.socket, role: str, n: int) -> int:
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        lifetime.die_with_parent(parent)  # (SIGTERM is blocked until the unblock below)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, WATCHED)
        code = uvloop.run(_worker(cfg, sock, role, n))
    except BaseException as exc:  # a worker must never return into the parent's code
        log.error(f"{role}.worker_failed", worker=n, error=repr(exc))
    finally:
        os._exit(code)


async def _worker(cfg: Config, sock: socket.socket, role: str, n: int) -> int:
    from cluster.http_server import serve
    from origin.app import create_app
    from origin.handoff import HandoffProtocol
    from origin.sources import ClusterSource, DirectorySource, Source

    remote = local = None
    if role == "legacy":
        source: Source = DirectorySource(cfg.legacy.dir)
    elif cfg.origin.master:  # a second host: the master over HTTP, bytes from S3 and a cache
        from origin.remote_source import RemoteSource

        source = remote = RemoteSource(cfg)
        await remote.start()
    else:
        source = local = ClusterSource(cfg.cluster, cfg.origin.lookup_cache)
        await local.start()
    app = create_app(cfg, source, role=role)
    try:
        await serve(app, sock, lambda url: log.info(f"{role}.worker_ready", worker=n,
                                                     pid=os.getpid()),
                    protocol=HandoffProtocol)
    finally:
        if remote is not None:
            await remote.close()
        if local is not None:
            await local.close()
    return 0


def _reap(children: dict[int, int]) -> list[tuple[int, int, int]]:
    dead = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        if pid in children:
            dead.append((pid, children.pop(pid), os.waitstatus_to_exitcode(status)))
    return dead


def _stop(children: dict[int, int], grace: float = 10.0) -> None:
    for pid in children:
        _kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while children and time.monotonic() < deadline:
        _reap(children)
        time.sleep(0.02)
    for pid in children:
        _kill(pid, signal.SIGKILL)
    while children:
        try:
            pid, _ = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        children.pop(pid, None)


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)

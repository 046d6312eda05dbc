"""``tandem up``: the whole system on one machine, on the embedded default.

Five children, each a ``tandem`` command of its own, supervised by ``origin.supervisor``;
started in this order, each once the one before it is ready, and stopped in the reverse order:

    name    command (after ``tandem --config FILE``)   ready when
    master  cluster serve      (metadata, volumes)      GET <master URL>/healthz is 200
    syncer  sync run           (cluster → legacy)       it holds syncer.lock and follows a primary
    origin  origin             (asset URLs, cluster)    GET <origin.listen>/healthz is 200
    legacy  origin --legacy    (asset URLs, legacy dir) GET <legacy.listen>/healthz is 200
    front   nginx run          (the generated nginx)    GET <nginx.listen>/healthz is 200

The order is the seed's (MooseFS, then the sync script, then the services, nginx last): the
storage first, then its clients, the front only when both of its upstreams answer, so it
never starts by failing over. Stopping runs backwards: the front stops taking traffic first,
the master closes the metadata last, after every client of it is gone (MooseFS stops its
master after the chunkservers and clients).

``SERVICES`` is the one list of those commands: ``compose.yaml`` and the systemd units in
``docs/systemd/`` run the same ones, with ``origin.probe`` as their health check, and
``tests/test_compose.py`` holds them to it. Liveness (``/healthz``) orders the start: an
origin's ``/readyz`` may rightly say 503 (a flip's fence, sync lag) and ``up`` must come up
all the same; containers check ``/readyz`` (``Service.health``).

The demo dataset is loaded through the master's API once the master is ready: by default
when the cluster is empty, with ``--demo`` whatever is missing of it, with ``--no-demo`` never.
Without nginx, ``up`` says how to install it and runs the rest.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import structlog

from cluster.cli import master_client
from cluster.errors import ClusterError, NotFound
from cluster.remote import RemoteCluster
from nginx import runner as nginx_runner
from nginx.errors import NginxNotInstalled
from origin import demo, probe
from origin.config import Config
from origin.probe import url_of
from origin.supervisor import Child, StartFailed, Supervisor
from syncer import state
from syncer.errors import SyncError

log = structlog.get_logger("up")


@dataclass(frozen=True)
class Service:
    """One process of the stack, as ``tandem up``, compose and systemd run it."""

    name: str
    args: tuple[str, ...]  # the tandem command after ``tandem --config FILE``
    stop_timeout: float = 15.0
    start_timeout: float = 60.0

    @property
    def health(self) -> tuple[str, ...]:
        """The arguments of its health check, after ``tandem --config FILE probe`` or
        ``python -m origin.probe --config FILE``: ready to serve where it has a /readyz."""
        return (self.name, *(("--ready",) if self.name in probe.READYZ else ()))

    async def up(self, cfg: Config) -> str | None:
        """``tandem up``'s readiness check (alive: /healthz), off the event loop."""
        return await asyncio.to_thread(probe.check, cfg, self.name)


SERVICES: tuple[Service, ...] = (
    # The master opens (and at start re-checks) every volume before it listens.
    Service("master", ("cluster", "serve"), start_timeout=300.0),
    Service("syncer", ("sync", "run")),
    Service("origin", ("origin",)),
    Service("legacy", ("origin", "--legacy")),
    # nginx stops gracefully within 10 s (``nginx.runner.stop``) before it is killed.
    Service("front", ("nginx", "run"), stop_timeout=25.0),
)
NAMES = tuple(s.name for s in SERVICES)
assert NAMES == probe.NAMES


def command(config: Path | None, service: Service, *, master_listen: str | None = None
            ) -> tuple[str, ...]:
    """The argv that runs ``service`` with this interpreter (``python -m origin`` is
    ``tandem``); without a config file the child finds the defaults as ``up`` did (same
    working directory)."""
    args = service.args
    if service.name == "master" and master_listen:
        args = (*args, "--listen", master_listen)
    conf = ("--config", str(config)) if config is not None else ()
    return (sys.executable, "-m", "origin", *conf, *args)


def log_dir(cfg: Config) -> Path:
    return cfg.data_dir / "logs"


# -- tandem up ---------------------------------------------------------------------------------


async def up(cfg: Config, *, load_demo: bool | None = None, listen: str | None = None) -> int:
    """Run the stack until SIGTERM/SIGINT. ``load_demo``: None = when the cluster is empty,
    True = whatever is missing of it, False = never. ``listen`` overrides cluster.listen."""
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    _legacy_dir(cfg)
    services: list[Service] = list(SERVICES)
    no_front = ""
    try:
        nginx_runner.binary(cfg)
    except NginxNotInstalled as exc:
        no_front = str(exc)
        services = [s for s in services if s.name != "front"]
        log.warning("up.front_skipped", reason=no_front)
    children = [
        Child(
            name=s.name,
            argv=command(cfg.source, s, master_listen=listen),
            ready=partial(s.up, cfg),
            log_file=log_dir(cfg) / f"{s.name}.log",
            cwd=Path.cwd(),
            start_timeout=s.start_timeout,
            stop_timeout=s.stop_timeout,
        )
        for s in services
    ]
    stack = _Stack(cfg, services, no_front, load_demo)
    sup = Supervisor(children, on_started=stack.started, on_ready=stack.ready,
                     env={"PYTHONUNBUFFERED": "1"})
    stack.supervisor = sup
    try:
        return await sup.run()
    except StartFailed as exc:
        print(f"tandem up: {exc}", file=sys.stderr, flush=True)
        return 1


def _legacy_dir(cfg: Config) -> None:
    """Create the legacy directory when it belongs under the data folder (the embedded
    default). One elsewhere may be a mount point that is not mounted: never create that."""
    d = cfg.legacy.dir
    if not d.exists() and d.is_relative_to(cfg.data_dir):
        d.mkdir(parents=True)


class _Stack:
    """What ``up`` does between the starts: the demo data, the banner."""

    def __init__(self, cfg: Config, services: Sequence[Service], no_front: str,
                 load_demo: bool | None) -> None:
        self.cfg = cfg
        self.services = services
        self.no_front = no_front
        self.load_demo = load_demo
        self.demo_present = False
        self.supervisor: Supervisor | None = None

    async def started(self, name: str) -> None:
        if name == "master":
            await self._demo()

    async def _demo(self) -> None:
        first = next(demo.files())[0]
        try:
            async with master_client(self.cfg.cluster) as rc:
                if self.load_demo is False:
                    self.demo_present = await _exists(rc, first)
                    return
                if state.read_primary(self.cfg.sync.state_dir) == "legacy":
                    # The cluster is the mirror: writes go to the legacy directory.
                    log.info("up.demo_skipped", reason="the legacy directory is primary")
                    self.demo_present = await _exists(rc, first)
                    return
                if self.load_demo is None and (await rc.status())["files"] > 0:
                    self.demo_present = await _exists(rc, first)
                    return
                loaded = 0
                for path, data in demo.files():
                    if not await _exists(rc, path):
                        await rc.put(path, data)
                        loaded += 1
                self.demo_present = True
                log.info("up.demo_loaded", files=loaded)
        except (ClusterError, SyncError, OSError) as exc:
            log.error("up.demo_failed", error=f"{type(exc).__name__}: {exc}")

    def ready(self) -> None:
        assert self.supervisor is not None
        cfg = self.cfg
        urls = {s.name: url_of(cfg, s.name) for s in self.services if s.name != "syncer"}
        log.info("up.ready", urls=urls, pids=self.supervisor.pids(),
                 logs=str(log_dir(cfg)), front=not self.no_front)
        print(self.banner(urls), file=sys.stderr, flush=True)

    def banner(self, urls: dict[str, str]) -> str:
        cfg = self.cfg
        tandem = "tandem" + (f" --config {cfg.source}" if cfg.source else "")
        site = urls.get("front") or urls["origin"]
        images = [p for p, _ in demo.files() if p.startswith("/images/")]
        news = [p for p, _ in demo.files() if p.endswith(".html")]
        lines = ["", "tandem is up"]
        if self.no_front:
            lines += [f"  front (nginx)   not running: {self.no_front}",
                      "                  (then run tandem up again)"]
        else:
            lines += [f"  front (nginx)   {urls['front']}/   (logs: {cfg.nginx.run_dir}/)"]
        if self.demo_present:
            lines += [f"    an image      {site}{images[0]}",
                      f"    a news page   {site}{news[0]}"]
        lines += [
            f"  origin          {urls['origin']}   (/healthz /readyz /metrics /status)",
            f"  legacy origin   {urls['legacy']}   (the front's backup)",
            f"  master API      {urls['master']}   (try: curl {urls['master']}/v1/status)",
            f"  data            {cfg.data_dir}",
            f"    metadata      {cfg.cluster.meta_dir}",
            *(f"    volume {i}      {v.path}" for i, v in enumerate(cfg.cluster.volumes)),
            f"    legacy dir    {cfg.legacy.dir}   (kept equal to the cluster by the syncer)",
            f"    sync state    {cfg.sync.state_dir}",
            f"    logs          {log_dir(cfg)}/{{{','.join(s.name for s in self.services)}}}.log",
            f"  put a file      {tandem} cluster put ./photo.jpg /images/photo.jpg",
            f"                  curl {site}/images/photo.jpg",
        ]
        if cfg.origin.write_prefixes:
            prefix = cfg.origin.write_prefixes[0]
            auth = "Authorization: Bearer <origin.write_token>"
            lines += [f"    over HTTP     curl -X PUT -H '{auth}' --data-binary @page.html "
                      f"{site}{prefix}page.html"]
        lines += [
            f"  status          {tandem} cluster status;  {tandem} sync status",
            f"  flip            {tandem} flip --to legacy   (back: --to cluster)",
            "  stop            Ctrl-C (or SIGTERM): stops "
            + ", ".join(s.name for s in reversed(self.services)) + ", in this order",
            "",
        ]
        return "\n".join(lines)


async def _exists(rc: RemoteCluster, path: str) -> bool:
    try:
        await rc.stat(path)
    except NotFound:
        return False
    return True

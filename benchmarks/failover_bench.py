"""Failover benchmark: what clients see when the primary origin dies, hangs or stops being
able to serve, under steady GET load — tandem's generated upstream against the seed's, in the
same run, on the same origins and files.

Run from the repository root (with nginx installed)::

    .venv/bin/python benchmarks/failover_bench.py --quick    # under a minute, one repeat
    .venv/bin/python benchmarks/failover_bench.py            # three repeats, ~7 minutes

Human-readable lines go to stdout as it runs; the LAST line is one JSON object with, for each
configuration (``tandem``, ``seed``) and fault (``kill``, ``stop``, ``503``), the medians over
the repeats of ``{conf}_failed_{fault}``, ``{conf}_switch_s_{fault}`` and
``{conf}_p99_added_ms_{fault}`` (e.g. ``tandem_failed_kill``, ``seed_switch_s_stop``).

The two configurations differ only in the asset upstream and its proxy settings:

- ``tandem``: ``nginx.render`` with the defaults — ``zone``, ``max_fails=1 fail_timeout=10s``
  on the primary and the backup, connect/send/read timeouts 1/3/3 s, ``proxy_next_upstream
  error timeout http_502 http_503 http_504``, at most 3 tries within 10 s.
- ``seed``: the same rendered config with the seed runbook's upstream put back — ``server
  <origin> max_fails=2 fail_timeout=30s; server <legacy> backup;`` (no zone) — and nginx's
  defaults for everything the seed did not set: ``proxy_next_upstream error timeout``,
  unbounded tries, 60 s connect/send/read timeouts. Keepalive to the upstream is kept on both
  (the comparison is about failover, not connection reuse).

Both run with ``fast_path = false``: every GET reaches an origin, which answers headers and
``X-Accel-Redirect`` (nginx sends the chunk file or the legacy file). With the fast path on, a
GET of a file in a view never touches an origin, and none of this matters for it.

Stack (all on 127.0.0.1, real processes): ``tandem cluster serve`` (3 volumes, default goal),
``tandem origin`` (the primary, ``origin.workers`` = 2), ``tandem origin --legacy`` (the
backup) over a directory holding the same bytes with the same mtimes (so the same ETags), and
one nginx (2 workers) started fresh for every measurement so no failure state carries over.

The faults, each injected after ``--warm`` seconds of load and held for a window:

- ``kill``: SIGKILL to the origin's supervisor and workers; afterwards it is started again.
- ``stop``: SIGSTOP to all of them (a hang: connections are still accepted by the kernel);
  afterwards SIGCONT.
- ``503``: every volume's marker moved aside — the origin cannot serve, ``/readyz`` and every
  read answer 503 (``origin/app.py``, checked at most every 0.5 s per worker); afterwards
  moved back.

Load: an open-loop client on loopback (asyncio, raw HTTP/1.1 keep-alive, at most ``--cap``
connections) sending ``--rate`` GET/s of files drawn at random (the origin_bench size
distribution: lognormal, median 12 KiB, 2–300 KiB). Latency counts from each request's
scheduled time, so a stalled server is not hidden by a client waiting for it. A request
**fails** when it gets no answer, a status other than 200, a short body (truncated), other
bytes than the file's (SHA-256) or another ETag — or no answer within ``--client-timeout``
(quick 6 s, full 90 s: longer than the seed's 60 s read timeout).

Figures per measurement:

- ``failed``: failed requests among those scheduled from the fault to the window's end.
- ``switch_s``: from the fault until the last of those requests that involved the primary
  (its nginx access log ``upstream`` names it, or nginx never logged it) was over. When some
  still involved the primary at the window's end (the seed under ``503`` never switches; under
  ``stop`` in a quick run its 60 s read timeout is beyond the client timeout) the figure is a
  lower bound and the key is listed in ``censored``.
- ``p99_added_ms``: the 99th percentile latency of those requests minus that of the requests
  before the fault.

The windows are shorter than each configuration's ``fail_timeout`` after its switch, so a
probe of the recovered-looking primary never counts. The JSON also says how loaded the
machine was: ``other_cpu_share`` (the share of all CPUs used by processes outside this
benchmark during the run) and the load averages at the start.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO, REPO / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from cluster_bench import make_files, quiet_logs  # noqa: E402
from workload import machine_ticks  # noqa: E402

from cluster.remote import RemoteCluster  # noqa: E402
from cluster.volume import MARKER  # noqa: E402
from nginx import runner  # noqa: E402
from nginx.errors import NginxError  # noqa: E402
from nginx.render import Layout, render  # noqa: E402
from origin import config as origin_config  # noqa: E402
from origin.config import Config  # noqa: E402

PREFIX = "/images/"
CONFS = ("tandem", "seed")
FAULTS = ("kill", "stop", "503")
MTIME0 = 1_700_000_000
NS = 1_000_000_000
START_TIMEOUT = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGETS = {"tandem_failed_kill": 0, "tandem_failed_stop": 0, "tandem_failed_503": 0}
SEED_UPSTREAM = (
    "    upstream tandem_origin {\n"
    "        # the seed runbook's upstream: no zone; nginx's default timeouts and\n"
    "        # proxy_next_upstream (error timeout), unbounded tries\n"
    "        server %(primary)s max_fails=2 fail_timeout=30s;\n"
    "        server %(backup)s backup;\n"
    "        keepalive 32;\n"
    "    }\n"
)
# Server-level lines (8 spaces: the server block's body) that the seed did not have.
SEED_DROPPED = (
    "proxy_connect_timeout",
    "proxy_send_timeout",
    "proxy_read_timeout",
    "proxy_next_upstream",
    "proxy_next_upstream_tries",
    "proxy_next_upstream_timeout",
)


class BenchError(Exception):
    """The benchmark cannot produce honest figures; the message says why."""


def say(msg: str) -> None:
    print(msg, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- processes ------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def tree(pid: int) -> list[int]:
    out = [pid]
    for c in children(pid):
        out += tree(c)
    return out


def ticks(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


class CpuWatch:
    """Samples the CPU ticks of this process and all its descendants (the last value of a
    process that died is kept: ``sample`` is also called just before a kill or a stop), to
    tell our load from everybody else's."""

    current: CpuWatch | None = None

    def __init__(self) -> None:
        self.last: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for pid in tree(os.getpid()):
            t = ticks(pid)
            if t:
                self.last[pid] = max(t, self.last.get(pid, 0))

    @classmethod
    def sample(cls) -> None:
        if cls.current is not None:
            cls.current._sample()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self._sample()

    def __enter__(self) -> CpuWatch:
        CpuWatch.current = self
        self._sample()
        self.start_own = sum(self.last.values())
        self.start_machine = machine_ticks()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()
        CpuWatch.current = None

    def other_share(self) -> float:
        m0, m1 = self.start_machine, machine_ticks()
        own = sum(self.last.values()) - self.start_own
        return max(0.0, (m1["tasks"] - m0["tasks"]) - own) / max(1, m1["all"] - m0["all"])


@dataclasses.dataclass
class Server:
    """A tandem process (stdout: JSON log lines, to a file)."""

    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, ready_event: str, count: int = 1) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "origin", *self.argv],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            seen = self.events(offset).count(ready_event)
            if seen >= count:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise BenchError(f"{self.name} did not start ({ready_event} x{count}); see {self.log}")

    def events(self, offset: int = 0) -> list[str]:
        with open(self.log, "rb") as fh:
            fh.seek(offset)
            out = []
            for line in fh:
                try:
                    out.append(str(json.loads(line).get("event")))
                except ValueError:
                    continue
            return out

    @property
    def pids(self) -> list[int]:
        assert self.proc is not None
        return tree(self.proc.pid)

    def kill9(self) -> None:
        assert self.proc is not None
        CpuWatch.sample()
        for pid in reversed(self.pids):  # the workers, then the supervisor
            os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                for pid in reversed(self.pids):
                    os.kill(pid, signal.SIGKILL)
                self.proc.wait(10)


class Front:
    """One nginx on a config text, started fresh for one measurement."""

    def __init__(self, cfg: Config, text: str) -> None:
        self.cfg, self.paths = cfg, Layout(cfg.nginx.run_dir)
        runner.prepare(cfg)
        self.paths.conf.write_text(text)
        self.argv = [runner.binary(cfg), "-p", f"{self.paths.run_dir}/", "-c",
                     str(self.paths.conf), "-e", str(self.paths.error_log)]
        done = subprocess.run([*self.argv, "-t", "-q"], capture_output=True, check=False)
        if done.returncode:
            raise BenchError(f"nginx -t: {done.stderr.decode(errors='replace')}")
        self.paths.access_log.unlink(missing_ok=True)
        self.proc = subprocess.Popen([*self.argv, "-g", "daemon off;"],
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        port = cfg.nginx.listen[1]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise BenchError(f"nginx did not start: {self.paths.error_log}")

    def stop(self) -> None:
        CpuWatch.sample()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def upstreams(self) -> dict[int, str]:
        """Request sequence number → ``$upstream_addr`` (every server tried)."""
        out: dict[int, str] = {}
        try:
            lines = self.paths.access_log.read_text().splitlines()
        except FileNotFoundError:
            return out
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            _, _, n = str(rec.get("uri", "")).partition("?n=")
            if n.isdigit():
                out[int(n)] = str(rec.get("upstream", ""))
        return out


def seed_text(text: str, primary: str, backup: str) -> str:
    """tandem's rendered config with the seed's upstream and nginx's default proxy settings."""
    start = text.index("    upstream tandem_origin {\n")
    end = text.index("    }\n", start) + len("    }\n")
    text = text[:start] + SEED_UPSTREAM % {"primary": primary, "backup": backup} + text[end:]
    lines = text.split("\n")
    kept = [
        line for line in lines
        if not (line.startswith(" " * 8) and not line.startswith(" " * 9)
                and line.strip().split(" ")[0] in SEED_DROPPED)
    ]
    if len(lines) - len(kept) != len(SEED_DROPPED):
        raise BenchError("the rendered config changed: cannot derive the seed's from it")
    return "\n".join(kept)


# -- the load -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Asset:
    url: str
    size: int
    sha: str
    etag: str


@dataclasses.dataclass
class Req:
    seq: int
    sched: float
    end: float = 0.0
    outcome: str = ""  # ok | status | truncated | bytes | etag | error | timeout

    @property
    def latency(self) -> float:
        return self.end - self.sched


class Load:
    """Open-loop GETs at ``rate`` per second over at most ``cap`` keep-alive connections."""

    def __init__(self, port: int, assets: list[Asset], rate: float, cap: int,
                 timeout: float, seed: int) -> None:
        self.port, self.assets, self.rate, self.cap = port, assets, rate, cap
        self.timeout = timeout
        self.rng = random.Random(seed)
        self.reqs: list[Req] = []
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.open = 0
        self.freed = asyncio.Condition()

    async def run(self, seconds: float) -> None:
        t0 = time.monotonic()
        tasks = []
        n = 0
        while True:
            sched = t0 + n / self.rate
            if sched - t0 >= seconds:
                break
            delay = sched - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            req = Req(n, sched)
            self.reqs.append(req)
            asset = self.assets[self.rng.randrange(len(self.assets))]
            tasks.append(asyncio.create_task(self._one(req, asset)))
            n += 1
        await asyncio.gather(*tasks)
        for _, w in self.idle:
            w.close()

    async def _conn(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with self.freed:
            while not self.idle and self.open >= self.cap:
                await self.freed.wait()
            if self.idle:
                return self.idle.pop()
            self.open += 1
        try:
            return await asyncio.open_connection("127.0.0.1", self.port)
        except BaseException:  # refused, or the request's time ran out meanwhile
            await self._release(None)
            raise

    async def _release(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None
                       ) -> None:
        async with self.freed:
            if conn is None:
                self.open -= 1
            else:
                self.idle.append(conn)
            self.freed.notify()

    async def _one(self, req: Req, asset: Asset) -> None:
        conn = None
        keep = False
        try:
            loop = asyncio.get_running_loop()  # its clock may not be time.monotonic's
            async with asyncio.timeout_at(loop.time() + req.sched + self.timeout
                                          - time.monotonic()):
                conn = await self._conn()
                req.outcome, keep = await self._get(conn, req, asset)
        except TimeoutError:
            req.outcome = "timeout"
        except asyncio.IncompleteReadError:
            req.outcome = "truncated"
        except (OSError, ValueError):
            req.outcome = "error"
        req.end = time.monotonic()
        if conn is not None:
            if not keep:
                conn[1].close()
            await self._release(conn if keep else None)

    async def _get(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], req: Req,
                   asset: Asset) -> tuple[str, bool]:
        reader, writer = conn
        writer.write(f"GET {asset.url}?n={req.seq} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        headers = {}
        for h in lines:
            k, _, v = h.partition(":")
            headers[k.strip().lower()] = v.strip()
        if "content-length" not in headers:
            return "error", False  # every answer here has one
        body = await reader.readexactly(int(headers["content-length"]))
        keep = headers.get("connection", "").lower() != "close"
        if status != 200:
            return "status", keep
        if len(body) != asset.size or hashlib.sha256(body).hexdigest() != asset.sha:
            return "bytes", keep
        if headers.get("etag") != asset.etag:
            return "etag", keep
        return "ok", keep


# -- one measurement ------------------------------------------------------------------------


@dataclasses.dataclass
class Stack:
    cfg: Config
    work: Path
    origin: Server
    legacy: Server
    master: Server
    assets: list[Asset]
    primary: str
    backup: str

    def origin_ready(self) -> None:
        """Until the origin answers a file itself (after a restart, SIGCONT, a marker back)."""
        url = self.assets[0].url
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                status, _, _ = fetch(self.cfg.origin.listen[1], url)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise BenchError("the origin did not come back")


def fetch(port: int, url: str) -> tuple[int, dict[str, str], bytes]:
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", url)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


class Fault:
    def __init__(self, kind: str, stack: Stack) -> None:
        self.kind, self.stack = kind, stack
        self.stopped: list[int] = []
        self.markers = [v.path / MARKER for v in stack.cfg.cluster.volumes]

    def inject(self) -> None:
        s = self.stack
        if self.kind == "kill":
            s.origin.kill9()
        elif self.kind == "stop":
            self.stopped = s.origin.pids
            for pid in self.stopped:
                os.kill(pid, signal.SIGSTOP)
        else:
            for m in self.markers:
                m.rename(m.with_name(MARKER + ".aside"))

    def restore(self) -> None:
        s = self.stack
        if self.kind == "kill":
            s.origin.start("origin.worker_ready", s.cfg.origin.workers)
        elif self.kind == "stop":
            for pid in self.stopped:
                os.kill(pid, signal.SIGCONT)
        else:
            for m in self.markers:
                m.with_name(MARKER + ".aside").rename(m)
        s.origin_ready()


@dataclasses.dataclass
class Figures:
    failed: int
    switch_s: float
    p99_added_ms: float
    censored: bool
    requests: int
    outcomes: dict[str, int]


def p99(values: list[float]) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(0.99 * len(values)))]


def measure(stack: Stack, conf: str, fault: str, args: argparse.Namespace, rep: int) -> Figures:
    cfg = stack.cfg
    run_dir = stack.work / f"nginx-{conf}"
    ncfg = dataclasses.replace(cfg, nginx=dataclasses.replace(
        cfg.nginx, run_dir=run_dir, listen=("127.0.0.1", free_port())))
    text = render(ncfg)
    if conf == "seed":
        text = seed_text(text, stack.primary, stack.backup)
    window = args.window
    if fault == "stop":
        window = args.stop_window if conf == "tandem" else args.seed_stop_window
    front = Front(ncfg, text)
    injector = Fault(fault, stack)
    load = Load(ncfg.nginx.listen[1], stack.assets, args.rate, args.cap, args.client_timeout,
                args.seed + rep)
    t_fault = 0.0

    async def scenario() -> None:
        nonlocal t_fault
        task = asyncio.create_task(load.run(args.warm + window))
        await asyncio.sleep(args.warm)
        t_fault = time.monotonic()
        await asyncio.to_thread(injector.inject)
        await task

    try:
        try:
            asyncio.run(scenario())
        finally:
            injector.restore()
        ups = front.upstreams()
    finally:
        front.stop()
    t_end = t_fault + window
    before = [r for r in load.reqs if r.sched < t_fault]
    during = [r for r in load.reqs if t_fault <= r.sched < t_end]
    outcomes: dict[str, int] = {}
    for r in during:
        outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
    involved = [r for r in during
                if r.seq not in ups or stack.primary in ups[r.seq].split(", ")]
    last = max((r.end for r in involved), default=t_fault)
    # Still on the primary at the window's end: the switch had not happened (yet).
    censored = any(r.end >= t_end for r in involved) or any(
        r.seq not in ups and r.outcome == "timeout" for r in during)
    return Figures(
        failed=sum(1 for r in during if r.outcome != "ok"),
        switch_s=round(min(last, t_end) - t_fault if censored else last - t_fault, 3),
        p99_added_ms=round(
            (p99([r.latency for r in during]) - p99([r.latency for r in before])) * 1000, 1),
        censored=censored,
        requests=len(during),
        outcomes=outcomes,
    )


# -- set-up ---------------------------------------------------------------------------------


def write_config(work: Path, args: argparse.Namespace) -> Path:
    conf = work / "tandem.toml"
    conf.write_text(
        f'data_dir = "{work / "var"}"\n'
        "[cluster]\n"
        f'listen = "127.0.0.1:{free_port()}"\n'
        "[origin]\n"
        f'listen = "127.0.0.1:{free_port()}"\n'
        f"workers = {args.origin_workers}\n"
        "[legacy]\n"
        f'listen = "127.0.0.1:{free_port()}"\n'
        f'dir = "{work / "legacy"}"\n'
        "[nginx]\n"
        "fast_path = false\n"
        f"worker_processes = {args.nginx_workers}\n"
        + ('user = "root"\n' if os.geteuid() == 0 else "")
    )
    return conf


async def load_files(cfg: Config, files: list[tuple[str, bytes, int]]) -> None:
    sem = asyncio.Semaphore(16)
    async with RemoteCluster(cfg.cluster.url) as rc:

        async def one(url: str, data: bytes, mtime_ns: int) -> None:
            async with sem:
                await rc.put(url, data, mtime_ns=mtime_ns)

        await asyncio.gather(*(one(*f) for f in files))


def set_up(work: Path, args: argparse.Namespace, stop_list: list[Callable[[], None]]) -> Stack:
    conf = write_config(work, args)
    cfg = origin_config.load(conf, required=True)
    try:
        runner.binary(cfg)
    except NginxError as exc:
        raise BenchError(str(exc)) from None
    logs = work / "logs"
    logs.mkdir()
    base = ["--config", str(conf)]
    master = Server("master", [*base, "cluster", "serve"], logs / "master.log")
    master.start("master.listening")
    stop_list.append(master.stop)
    made = make_files(args.files, args.seed)
    files = [(PREFIX + f.path, f.data, (MTIME0 + i) * NS + 123_456_789)
             for i, f in enumerate(made)]
    t0 = time.perf_counter()
    asyncio.run(load_files(cfg, files))
    for url, data, mtime_ns in files:  # the legacy copy: same bytes, same mtime
        dest = cfg.legacy.dir / url.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        os.utime(dest, ns=(mtime_ns, mtime_ns))
    total = sum(len(d) for _, d, _ in files)
    say(f"data set: {len(files)} files, {total / (1 << 20):.1f} MiB, in the cluster (3 volumes) "
        f"and the legacy directory with the same mtimes, in {time.perf_counter() - t0:.1f} s")
    origin = Server("origin", [*base, "origin"], logs / "origin.log")
    origin.start("origin.worker_ready", cfg.origin.workers)
    stop_list.append(origin.stop)
    legacy = Server("legacy", [*base, "origin", "--legacy"], logs / "legacy.log")
    legacy.start("legacy.worker_ready", cfg.origin.workers)
    stop_list.append(legacy.stop)
    assets = [
        Asset(url, len(data), hashlib.sha256(data).hexdigest(),
              f'"{mtime_ns // NS:x}-{len(data):x}"')
        for url, data, mtime_ns in files
    ]
    stack = Stack(cfg, work, origin, legacy, master, assets,
                  f"127.0.0.1:{cfg.origin.listen[1]}", f"127.0.0.1:{cfg.legacy.listen[1]}")
    for a in random.Random(args.seed).sample(assets, min(20, len(assets))):
        for port in (cfg.origin.listen[1], cfg.legacy.listen[1]):
            status, headers, body = fetch(port, a.url)
            if (status, headers.get("etag"), hashlib.sha256(body).hexdigest()) != (
                200, a.etag, a.sha
            ):
                raise BenchError(f"{a.url} differs on port {port}: {status} {headers}")
    return stack


# -- the run --------------------------------------------------------------------------------


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    stops: list[Callable[[], None]] = []
    samples: dict[str, list[Figures]] = {}
    load1, load5, _ = os.getloadavg()
    try:
        stack = set_up(work, args, stops)
        with CpuWatch() as cpu:
            for rep in range(args.reps):
                for i, fault in enumerate(FAULTS):
                    order = CONFS if (rep + i) % 2 == 0 else CONFS[::-1]
                    for conf in order:
                        f = measure(stack, conf, fault, args, rep)
                        samples.setdefault(f"{conf}_{fault}", []).append(f)
                        say(f"rep {rep + 1} {conf:6s} {fault:4s}: {f.requests:5d} requests, "
                            f"failed {f.failed:5d}, switch {f.switch_s:7.3f} s"
                            f"{' (or later: censored)' if f.censored else ''}, "
                            f"p99 +{f.p99_added_ms:9.1f} ms  {f.outcomes}")
        other = cpu.other_share()
    finally:
        for stop in reversed(stops):
            stop()
    result: dict[str, Any] = {}
    censored = []
    for conf in CONFS:
        for fault in FAULTS:
            runs = samples[f"{conf}_{fault}"]
            result[f"{conf}_failed_{fault}"] = statistics.median(r.failed for r in runs)
            result[f"{conf}_switch_s_{fault}"] = statistics.median(r.switch_s for r in runs)
            result[f"{conf}_p99_added_ms_{fault}"] = statistics.median(
                r.p99_added_ms for r in runs)
            if any(r.censored for r in runs):
                censored.append(f"{conf}_switch_s_{fault}")
    say("")
    say(f"{'':8s}{'failed':>24s}{'switch s':>27s}{'p99 added ms':>33s}")
    say(f"{'':8s}" + "".join(f"{f:>8s}" for f in FAULTS) + "   "
        + "".join(f"{f:>9s}" for f in FAULTS) + "   " + "".join(f"{f:>11s}" for f in FAULTS))
    for conf in CONFS:
        say(f"{conf:8s}"
            + "".join(f"{result[f'{conf}_failed_{f}']:>8}" for f in FAULTS) + "   "
            + "".join(f"{result[f'{conf}_switch_s_{f}']:>9.3f}" for f in FAULTS) + "   "
            + "".join(f"{result[f'{conf}_p99_added_ms_{f}']:>11.1f}" for f in FAULTS))
    if censored:
        say(f"censored (a lower bound: the switch had not happened by the window's end): "
            f"{', '.join(censored)}")
    met = all(result[k] <= v for k, v in TARGETS.items())
    say(f"other processes used {other:.0%} of the machine's CPU; load average at start "
        f"{load1:.2f} (1 min), {load5:.2f} (5 min); targets "
        f"{'met' if met else 'NOT met'}: {', '.join(TARGETS)} = 0")
    result.update({
        "censored": censored,
        "targets_met": met,
        "rate": args.rate,
        "files": args.files,
        "reps": args.reps,
        "window_s": args.window,
        "stop_window_s": {"tandem": args.stop_window, "seed": args.seed_stop_window},
        "client_timeout_s": args.client_timeout,
        "other_cpu_share": round(other, 3),
        "loadavg_start": [round(load1, 2), round(load5, 2)],
        "cpus": os.cpu_count(),
    })
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="one repeat, short windows: < 1 minute")
    p.add_argument("--workdir", type=Path, help="work directory, kept (default: a temp dir)")
    p.add_argument("--reps", type=int, help="repeats (full 3, quick 1); medians are reported")
    p.add_argument("--files", type=int, help="files (full 2000, quick 300)")
    p.add_argument("--rate", type=float, default=400.0, help="GET/s (default 400)")
    p.add_argument("--cap", type=int, default=256, help="most client connections at once")
    p.add_argument("--warm", type=float, default=1.0, help="seconds of load before the fault")
    p.add_argument("--window", type=float, help="seconds of load after a kill or 503 "
                   "(full 5, quick 3)")
    p.add_argument("--stop-window", type=float, default=5.0,
                   help="seconds of load after a SIGSTOP, tandem (read_timeout 3 s + 2)")
    p.add_argument("--seed-stop-window", type=float,
                   help="the same for the seed (full 75: its 60 s read timeout; quick 5)")
    p.add_argument("--client-timeout", type=float,
                   help="seconds a client waits for an answer (full 90, quick 6)")
    p.add_argument("--origin-workers", type=int, default=2)
    p.add_argument("--nginx-workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=20240501)
    args = p.parse_args(argv)
    args.reps = args.reps or (1 if args.quick else 3)
    args.files = args.files or (300 if args.quick else 2000)
    args.window = args.window or (3.0 if args.quick else 5.0)
    args.seed_stop_window = args.seed_stop_window or (5.0 if args.quick else 75.0)
    args.client_timeout = args.client_timeout or (6.0 if args.quick else 90.0)

    quiet_logs()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        work = args.workdir.resolve()
        if any(work.iterdir()):
            print(f"failover_bench: {work} is not empty", file=sys.stderr)
            return 1
    else:
        work = Path(tempfile.mkdtemp(prefix="failover-bench-"))
    say(f"failover_bench ({'quick' if args.quick else 'full'}): work dir {work}, "
        f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}, {args.rate:g} GET/s")
    t0 = time.perf_counter()
    try:
        result: dict[str, Any] = {"mode": "quick" if args.quick else "full"}
        result.update(run(args, work))
    except BenchError as exc:
        print(f"failover_bench: FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    say(f"done in {result['seconds']} s")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

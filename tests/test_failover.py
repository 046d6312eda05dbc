"""Failover of the generated front, end to end: real nginx on loopback in front of a real
cluster origin (primary) and a real legacy origin (backup) holding the same files with the
same mtimes, under a bounded GET load from a few client threads on loopback.

- ``kill -9`` of the cluster origin: no failed and no truncated response (every body is
  checked against its SHA-256, every ETag against the expected one), the backup answers with
  the same bytes and headers; restarted, the origin gets the traffic back once
  ``fail_timeout`` has passed.
- ``SIGSTOP`` of the origin (a hang): every request still completes, through the backup,
  within ``read_timeout`` plus a small margin.
- The origin unable to serve (every volume's marker gone: ``/readyz`` 503): it answers reads
  503 and nginx moves them to the backup; a fence (a flip) or one volume gone of three fails
  ``/readyz`` but the origin keeps serving reads.

The config: ``fast_path = false`` (every GET reaches an origin, which answers X-Accel-Redirect
— with the fast path on, a GET of a file in a view never touches an origin at all), two nginx
workers sharing the group's state through its ``zone``, short timeouts to keep the module fast.
Which server answered comes from nginx's JSON access log (``upstream``), matched by a
sequence number in each request's query string.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from nginxproc import Nginx, for_test, free_port, require_nginx
from procs import Proc, start_master, write_config
from stack import children, wait_events

from cluster.remote import RemoteCluster
from cluster.volume import MARKER
from origin import config as config_mod
from origin.config import Config

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]

NS = 1_000_000_000
FILES = 24
MTIME0 = 1_700_000_000
READ_TIMEOUT = 1.0
FAIL_TIMEOUT = 2
MARGIN = 1.0  # seconds over read_timeout a request through a hung origin may take
THREADS = 4
RATE = 40.0  # requests per second per client thread


@dataclass(frozen=True)
class Asset:
    url: str
    data: bytes
    mtime_ns: int

    @property
    def etag(self) -> str:
        """nginx's ETag, written out here rather than taken from the code under test."""
        return f'"{self.mtime_ns // NS:x}-{len(self.data):x}"'

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def assets() -> list[Asset]:
    rnd = random.Random(5)
    out = []
    for i in range(FILES):
        size = rnd.choice([300, 4_000, 30_000, 150_000, 600_000])
        ext = "jpg" if i % 2 else "webp"
        out.append(Asset(f"/images/f/{i:03d}.{ext}", rnd.randbytes(size), (MTIME0 + i) * NS + 7))
    return out


@dataclass
class Result:
    seq: int
    asset: Asset
    start: float
    end: float
    status: int = 0
    error: str = ""
    etag: str = ""
    whole: bool = False  # every byte there, and the right ones

    @property
    def ok(self) -> bool:
        return not self.error and self.status == 200 and self.whole and (
            self.etag == self.asset.etag
        )


@dataclass
class Load:
    """``THREADS`` client threads GETting the assets in turn over keep-alive connections,
    each at most ``RATE`` requests per second, recording every outcome."""

    port: int
    files: list[Asset]
    results: list[Result] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _seq: Iterator[int] = field(default_factory=lambda: iter(range(10**9)))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Load:
        for n in range(THREADS):
            t = threading.Thread(target=self._run, args=(n,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self, n: int) -> None:
        conn: http.client.HTTPConnection | None = None
        i = n
        while not self._stop.is_set():
            asset = self.files[i % len(self.files)]
            i += THREADS
            with self._lock:
                seq = next(self._seq)
            r = Result(seq, asset, time.monotonic(), 0.0)
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
                conn.request("GET", f"{asset.url}?n={seq}")
                resp = conn.getresponse()
                body = resp.read()
                r.status, r.etag = resp.status, resp.getheader("ETag", "")
                r.whole = hashlib.sha256(body).hexdigest() == asset.sha
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                r.error = repr(exc)
                if conn is not None:
                    conn.close()
                conn = None
            r.end = time.monotonic()
            with self._lock:
                self.results.append(r)
            self._stop.wait(max(0.0, 1 / RATE - (r.end - r.start)))
        if conn is not None:
            conn.close()

    def since(self, t: float) -> list[Result]:
        with self._lock:
            return [r for r in self.results if r.start >= t]

    def failed(self) -> list[Result]:
        with self._lock:
            return [r for r in self.results if not r.ok]


@dataclass
class Front:
    cfg: Config
    config: Path
    tmp: Path
    nginx: Nginx
    legacy: Proc
    origin: Proc
    files: list[Asset]

    @property
    def primary(self) -> str:
        return f"127.0.0.1:{self.cfg.origin.listen[1]}"

    @property
    def backup(self) -> str:
        return f"127.0.0.1:{self.cfg.legacy.listen[1]}"

    def start_origin(self) -> None:
        self.origin = Proc(["--config", str(self.config), "origin"], self.tmp)
        self.origin.wait_event("origin.listening")
        wait_events(self.origin, "origin.worker_ready", self.cfg.origin.workers)

    def origin_pids(self) -> set[int]:
        return {self.origin.pid} | children(self.origin.pid)

    def upstreams(self) -> dict[int, str]:
        """Request sequence number → nginx's ``$upstream_addr`` (every server tried)."""
        out = {}
        for line in self.nginx.paths.access_log.read_text().splitlines():
            rec = json.loads(line)
            _, _, query = rec["uri"].partition("?n=")
            if query.isdigit():
                out[int(query)] = rec["upstream"]
        return out

    def served_by(self, results: list[Result]) -> list[str]:
        """The server that gave each answer (the last one tried)."""
        ups = self.upstreams()
        return [ups[r.seq].split(", ")[-1] for r in results]

    def wait_primary(self, load: Load, timeout: float) -> float:
        """Wait until the primary answers again (ten answers in a row); returns when the
        first of them started."""
        deadline = time.monotonic() + timeout
        t0 = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.2)
            done = [r for r in load.since(t0) if r.end < time.monotonic() - 0.1]
            ups = self.upstreams()
            tail = [ups.get(r.seq, "") for r in done][-10:]
            if len(tail) == 10 and all(u == self.primary for u in tail):
                return done[-10].start
        raise AssertionError(f"the primary did not get the traffic back within {timeout} s")


async def _load_files(url: str, files: list[Asset]) -> None:
    async with RemoteCluster(url) as rc:
        for a in files:
            await rc.put(a.url, a.data, mtime_ns=a.mtime_ns)


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    tmp = tmp_path_factory.mktemp("failover")
    legacy_dir = tmp / "legacy"
    config = write_config(
        tmp,
        replication_delay=300.0,  # a volume set aside here must not be replaced meanwhile
        sections={
            "origin": {"listen": f"127.0.0.1:{free_port()}", "workers": 1},
            "legacy": {"listen": f"127.0.0.1:{free_port()}", "dir": str(legacy_dir)},
            "nginx": {
                "fast_path": False,
                "worker_processes": 2,
                "max_fails": 1,
                "fail_timeout": FAIL_TIMEOUT,
                "connect_timeout": 0.5,
                "read_timeout": READ_TIMEOUT,
                "next_upstream_timeout": 5.0,
            },
        },
    )
    cfg = config_mod.load(config, required=True)
    files = assets()
    for a in files:  # the legacy copy: the same bytes and mtime (what the syncer keeps)
        dest = legacy_dir / a.url.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(a.data)
        os.utime(dest, ns=(a.mtime_ns, a.mtime_ns))
    ncfg = for_test(cfg, tmp / "nginx")
    require_nginx(ncfg)
    with contextlib.ExitStack() as stack:
        master, url = start_master(config)
        stack.callback(master.stop)
        asyncio.run(_load_files(url, files))
        legacy = Proc(["--config", str(config), "origin", "--legacy"], tmp)
        stack.callback(legacy.stop)
        legacy.wait_event("legacy.listening")
        wait_events(legacy, "legacy.worker_ready", cfg.origin.workers)
        f = Front(cfg, config, tmp, stack.enter_context(Nginx(ncfg)), legacy, legacy, files)
        f.start_origin()
        stack.callback(lambda: f.origin.stop())
        yield f


def _ok(load: Load) -> None:
    bad = load.failed()
    assert not bad, f"{len(bad)} of {len(load.results)} failed, e.g. {bad[:3]}"


def test_kill_9_fails_over_with_no_failed_or_truncated_response(front: Front) -> None:
    a = front.files[3]
    before = httpx.get(f"http://127.0.0.1:{front.nginx.port}{a.url}")
    with Load(front.nginx.port, front.files) as load:
        time.sleep(1.0)
        assert set(front.served_by(load.since(0))) == {front.primary}
        for pid in children(front.origin.pid):  # the workers, then the supervisor
            os.kill(pid, signal.SIGKILL)
        front.origin.kill9()
        killed = time.monotonic()
        time.sleep(1.5)
        after = load.since(killed)
        assert len(after) > 40
        _ok(load)  # no error, no short body, every byte and ETag as expected
        assert set(front.served_by(after)) == {front.backup}
        during = httpx.get(f"http://127.0.0.1:{front.nginx.port}{a.url}")
        front.start_origin()
        restarted = time.monotonic()
        back = front.wait_primary(load, FAIL_TIMEOUT + 5)
        assert back - restarted <= FAIL_TIMEOUT + 2.5
        time.sleep(0.3)
    _ok(load)
    for r in (before, during):
        assert r.content == a.data
    for name in ("etag", "last-modified", "content-type", "content-length", "cache-control"):
        assert before.headers[name] == during.headers[name], name


def test_a_hung_origin_is_passed_over_within_the_read_timeout(front: Front) -> None:
    with Load(front.nginx.port, front.files) as load:
        time.sleep(0.5)
        pids = front.origin_pids()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            time.sleep(READ_TIMEOUT + FAIL_TIMEOUT + 1.0)  # past one probe after fail_timeout
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        resumed = time.monotonic()
        during = [r for r in load.since(stopped) if r.start < resumed]
        served = front.served_by(during)
        front.wait_primary(load, FAIL_TIMEOUT + 5)
    _ok(load)
    slowest = max(r.end - r.start for r in during)
    assert slowest <= READ_TIMEOUT + MARGIN, slowest
    assert slowest >= READ_TIMEOUT * 0.9  # the requests in flight did wait for the timeout
    assert served.count(front.backup) >= len(during) - 2 * THREADS


def test_an_origin_that_cannot_serve_answers_503_and_nginx_moves_to_the_backup(
    front: Front,
) -> None:
    origin = f"http://127.0.0.1:{front.cfg.origin.listen[1]}"
    a = front.files[1]
    markers = [v.path / MARKER for v in front.cfg.cluster.volumes]
    with Load(front.nginx.port, front.files) as load:
        time.sleep(0.5)
        # A fence (a flip running) fails /readyz but must not stop reads.
        front.cfg.origin.fence_file.write_text("flip in progress\n")
        try:
            assert httpx.get(origin + "/readyz").status_code == 503
            fenced = time.monotonic()
            time.sleep(1.0)
            assert set(front.served_by(load.since(fenced))) == {front.primary}
            assert httpx.get(origin + a.url).status_code == 200
        finally:
            front.cfg.origin.fence_file.unlink()
        # One volume gone of three: /readyz fails, but its files have other copies.
        markers[0].rename(markers[0].with_name(MARKER + ".aside"))
        try:
            time.sleep(0.6)  # the origin's check is at most 0.5 s old
            assert httpx.get(origin + "/readyz").status_code == 503
            assert httpx.get(origin + a.url).status_code == 200
        finally:
            markers[0].with_name(MARKER + ".aside").rename(markers[0])
        for m in markers:
            m.rename(m.with_name(MARKER + ".aside"))
        try:
            gone = time.monotonic()
            time.sleep(1.5)
            r = httpx.get(origin + "/readyz")
            assert r.status_code == 503 and "marker" in json.dumps(r.json())
            r = httpx.get(origin + a.url)
            assert r.status_code == 503 and "no volume" in r.headers["x-tandem-reason"]
            settled = [x for x in load.since(gone) if x.start > gone + 0.6]  # the gate's TTL
            assert len(settled) > 20
            assert set(front.served_by(settled)) == {front.backup}
        finally:
            for m in markers:
                m.with_name(MARKER + ".aside").rename(m)
        front.wait_primary(load, FAIL_TIMEOUT + 5)
    _ok(load)

"""The origin as operators and crawlers meet it, on real processes: a master
(``tandem cluster serve``) and a two-worker origin (``tandem origin``) on 127.0.0.1.

Bearer-token writes (PUT/DELETE) and what they leave in the cluster, config errors, Prometheus
metrics summed over the workers, readiness (fence file, sync lag) and the JSON access log.
One master and one origin serve the whole module; the test that kills the master runs last.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from procs import Proc, start_master, write_config
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from cluster.errors import NotFound
from cluster.remote import RemoteCluster
from origin.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

TOKEN = "crawler-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_UPLOAD = 1 << 20


@dataclass
class Stack:
    tmp: Path
    config: Path
    master: Proc
    master_url: str
    origin: Proc
    url: str

    def restart_master(self) -> None:
        self.master, self.master_url = start_master(self.config)

    def cluster(self) -> RemoteCluster:
        return RemoteCluster(self.master_url, timeout=10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("ops")
    config = write_config(tmp, chunk_size=65536, sections={"origin": {
        "listen": "127.0.0.1:0", "workers": 2, "write_prefixes": ["/news/"],
        "write_token": TOKEN, "max_upload": MAX_UPLOAD, "max_sync_lag": 5.0,
    }})
    master, master_url = start_master(config)
    s = Stack(tmp, config, master, master_url, Proc(["--config", str(config), "origin"], tmp), "")
    try:
        s.url = str(s.origin.wait_event("origin.listening")["url"])
        yield s
    finally:
        codes = s.origin.stop(), s.master.stop()  # the master may be a restarted one
        assert codes == (0, 0)


def fresh() -> httpx.AsyncClient:
    """A client that opens a new connection for every request (so the kernel spreads the
    requests over the origin's workers)."""
    return httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0), timeout=10)


async def stat_or_none(s: Stack, path: str) -> tuple[int, bytes] | None:
    """(size, sha256) of a cluster file, or None when there is no such file."""
    async with s.cluster() as c:
        try:
            e = await c.stat(path)
        except NotFound:
            return None
        assert e.hash is not None
        return e.size, e.hash


async def trash_of(s: Stack, path: str) -> list[bytes]:
    """The content hashes of the trashed versions of ``path``."""
    async with s.cluster() as c:
        return [t.hash or b"" for t in await c.trash_list() if t.path == path.encode()]


async def pieces(n: int, size: int = 65536, delay: float = 0.0) -> AsyncIterator[bytes]:
    """A request body of ``n`` pieces without a length: httpx sends it chunked."""
    for i in range(n):
        if delay:
            await asyncio.sleep(delay)
        yield bytes([i % 251]) * size


# -- writes --------------------------------------------------------------------------------------


async def test_put_needs_the_bearer_token(stack: Stack) -> None:
    """No token or a wrong one is 401 with a JSON body and a WWW-Authenticate challenge, and
    nothing is written."""
    async with httpx.AsyncClient(base_url=stack.url) as h:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                        {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}):
            r = await h.put("/news/auth.txt", content=b"nope", headers=headers)
            assert r.status_code == 401, headers
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert r.json()["error"] == "unauthorized"
        r = await h.delete("/news/auth.txt")
        assert r.status_code == 401
    assert await stat_or_none(stack, "/news/auth.txt") is None


async def test_put_outside_the_write_prefixes_is_forbidden(stack: Stack) -> None:
    """A valid token does not open /images/ (only /news/ is writable): 403, nothing written."""
    async with httpx.AsyncClient(base_url=stack.url) as h:
        r = await h.put("/images/x.jpg", content=b"jpeg", headers=AUTH)
        assert r.status_code == 403
        assert r.json()["error"] == "forbidden"
        assert (await h.delete("/images/x.jpg", headers=AUTH)).status_code == 403
    assert await stat_or_none(stack, "/images/x.jpg") is None


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_put_get_overwrite_delete(stack: Stack) -> None:
    """A PUT is 201 with the ETag GET then serves the bytes with; an overwrite gets a new ETag
    and moves the old version to the cluster's trash; DELETE is 204, then GET and a second
    DELETE are 404."""
    v1, v2 = os.urandom(150_000), os.urandom(70_000)  # several 64 KiB chunks
    async with httpx.AsyncClient(base_url=stack.url) as h:
        r = await h.put("/news/2026/story.html", content=v1, headers=AUTH)
        assert r.status_code == 201, r.text
        tag1 = r.headers["etag"]
        assert r.json()["etag"] == tag1 and r.json()["size"] == len(v1)
        r = await h.get("/news/2026/story.html")
        # digests, not bytes: pytest's diff of two 150 KB values takes minutes
        assert (r.status_code, sha(r.content), r.headers["etag"]) == (200, sha(v1), tag1)
        assert r.headers["content-type"].startswith("text/html")

        r = await h.put("/news/2026/story.html", content=v2, headers=AUTH)
        assert r.status_code == 201
        tag2 = r.headers["etag"]
        assert tag2 != tag1
        r = await h.get("/news/2026/story.html")
        assert (sha(r.content), r.headers["etag"]) == (sha(v2), tag2)
        assert (await h.get("/news/2026/story.html",
                            headers={"If-None-Match": tag2})).status_code == 304
        assert await trash_of(stack, "/news/2026/story.html") == [hashlib.sha256(v1).digest()]

        assert (await h.delete("/news/2026/story.html", headers=AUTH)).status_code == 204
        assert (await h.get("/news/2026/story.html")).status_code == 404
        r = await h.delete("/news/2026/story.html", headers=AUTH)
        assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert await stat_or_none(stack, "/news/2026/story.html") is None
    assert sorted(await trash_of(stack, "/news/2026/story.html")) == sorted(
        [hashlib.sha256(v1).digest(), hashlib.sha256(v2).digest()])


async def test_put_over_max_upload_is_413_and_changes_nothing(stack: Stack) -> None:
    """Over ``max_upload``: 413 whether the body declares its length or is chunked and only
    grows past the limit while it streams. The earlier version stays whole, no new file
    appears, nothing goes to trash, and the cluster stays consistent (fsck). The client can
    go on with its next request (the refused body's connection is not reused)."""
    old = os.urandom(100_000)
    async with httpx.AsyncClient(base_url=stack.url) as h:
        assert (await h.put("/news/big.bin", content=old, headers=AUTH)).status_code == 201
        before = await stat_or_none(stack, "/news/big.bin")
        bodies: list[Callable[[], bytes | AsyncIterator[bytes]]] = [
            lambda: b"x" * (MAX_UPLOAD + 1),
            lambda: b"x" * (3 * MAX_UPLOAD),
            lambda: pieces(40),  # 2.5 MiB, chunked: the limit is met mid-stream
        ]
        for body in bodies:
            for path in ("/news/big.bin", "/news/new-big.bin"):
                r = await h.put(path, content=body(), headers=AUTH)
                assert r.status_code == 413, (path, r.text)
                assert r.json()["error"] == "too_large"
                r = await h.get("/news/big.bin")  # the same client, right after
                assert (r.status_code, r.content) == (200, old)
        # exactly the limit is fine
        r = await h.put("/news/limit.bin", content=b"y" * MAX_UPLOAD, headers=AUTH)
        assert r.status_code == 201
    assert await stat_or_none(stack, "/news/big.bin") == before
    assert await stat_or_none(stack, "/news/new-big.bin") is None
    assert await trash_of(stack, "/news/big.bin") == []
    async with stack.cluster() as c:
        report = await c.fsck()
    assert report["ok"], report


async def test_writes_are_off_by_default(stack: Stack, tmp_path: Path) -> None:
    """An origin with no ``write_prefixes`` over the same cluster answers PUT and DELETE as
    the read path does (nginx's 405), even with the right token, and writes nothing."""
    var = stack.tmp / "var"
    config = tmp_path / "tandem.toml"
    config.write_text("\n".join([
        f'data_dir = "{tmp_path}/var"', "[cluster]", f'meta_dir = "{var}/master"',
        *(f'[[cluster.volumes]]\npath = "{var}/volumes/vol{i}"' for i in range(3)),
        "[origin]", 'listen = "127.0.0.1:0"', "workers = 1",
        f'write_token = "{TOKEN}"',
    ]) + "\n")
    origin = Proc(["--config", str(config), "origin"], tmp_path)
    try:
        url = str(origin.wait_event("origin.listening")["url"])
        async with httpx.AsyncClient(base_url=url) as h:
            r = await h.put("/news/ro.txt", content=b"data", headers=AUTH)
            assert r.status_code == 405
            assert r.headers["content-type"].startswith("text/html")  # nginx's page
            assert (await h.delete("/news/ro.txt", headers=AUTH)).status_code == 405
            assert (await h.get("/news/ro.txt")).status_code == 404
    finally:
        assert origin.stop() == 0
    assert await stat_or_none(stack, "/news/ro.txt") is None


# -- config --------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "", "fifteen-chars-x"])
def test_writes_without_a_good_token_are_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], token: str | None
) -> None:
    """``write_prefixes`` with no token, or one under 16 characters: ``tandem config check``
    exits 1 and names ``origin.write_token``; 16 characters pass."""
    origin: dict[str, object] = {"write_prefixes": ["/news/"]}
    if token is not None:
        origin["write_token"] = token
    config = write_config(tmp_path, sections={"origin": origin})
    assert main(["--config", str(config), "config", "check"]) == 1
    err = capsys.readouterr().err
    assert "origin.write_token" in err and "16" in err
    config = write_config(tmp_path, sections={"origin": {**origin, "write_token": "x" * 16}})
    assert main(["--config", str(config), "config", "check"]) == 0


# -- metrics -------------------------------------------------------------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(text: str) -> Samples:
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _delta(before: Samples, after: Samples) -> Callable[..., float]:
    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    return delta


def _requests_by_worker(stack: Stack) -> dict[str, float]:
    """pid → asset requests it counted, read from each worker's own multiprocess file."""
    folder = stack.tmp / "var" / "run" / "metrics-origin"
    out = {}
    for f in folder.glob("counter_*.db"):
        total = 0.0
        for fam in MultiProcessCollector.merge([str(f)]):  # type: ignore[no-untyped-call]
            total += sum(s.value for s in fam.samples if s.name == "tandem_origin_requests_total")
        out[f.stem.split("_")[1]] = total
    return out


async def test_metrics_are_summed_over_the_workers(stack: Stack) -> None:
    """Requests over fresh connections land on both workers; ``/metrics`` (from any worker)
    counts every one of them by status code, with the body bytes and a latency histogram."""
    body = os.urandom(5000)
    async with httpx.AsyncClient(base_url=stack.url) as h:
        assert (await h.put("/news/metrics.txt", content=body, headers=AUTH)).status_code == 201
    async with fresh() as h:
        before = _samples((await h.get(f"{stack.url}/metrics")).text)
        by_worker_before = _requests_by_worker(stack)
        made: dict[int, int] = {}
        sent = 0
        for i in range(200):
            r = await h.get(f"{stack.url}/news/metrics.txt" if i % 3 else
                            f"{stack.url}/news/no-such-{i}.txt")
            made[r.status_code] = made.get(r.status_code, 0) + 1
            sent += len(r.content)
            by_worker = _requests_by_worker(stack)
            counted = {pid: n - by_worker_before.get(pid, 0) for pid, n in by_worker.items()}
            if i >= 23 and len([n for n in counted.values() if n > 0]) >= 2:
                break
        assert made[200] > 0 and made[404] > 0
        assert len([n for n in counted.values() if n > 0]) == 2, counted
        for _ in range(4):  # whichever worker answers, it shows the sum
            after = _samples((await h.get(f"{stack.url}/metrics")).text)
            delta = _delta(before, after)
            for code, n in made.items():
                assert delta("tandem_origin_requests_total", code=str(code)) == n
            total = sum(made.values())
            assert sum(counted.values()) == total
            assert delta("tandem_origin_sent_bytes_total") == sent
            assert delta("tandem_origin_request_seconds_count") == total
            assert delta("tandem_origin_request_seconds_bucket", le="+Inf") == total
            assert delta("tandem_origin_request_seconds_sum") > 0
            buckets = sorted((float(dict(k[1])["le"]), v) for k, v in after.items()
                             if k[0] == "tandem_origin_request_seconds_bucket")
            assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative


async def test_metrics_show_the_syncer(stack: Stack) -> None:
    """The syncer's status file, read at each scrape: queue, lag, idle, its last error and
    its counters; a garbled value is left out rather than failing the scrape."""
    status = stack.tmp / "var" / "sync" / "status.json"
    status.parent.mkdir(parents=True, exist_ok=True)
    try:
        status.write_text(json.dumps({
            "direction": "cluster->legacy", "queue": 7, "inflight": 2, "idle": False,
            "lag_seconds": 1.25, "last_error": "TargetError: the target is read-only",
            "counters": {"files_copied": 41, "errors": 3, "odd": "x"},
            "updated": time.time()}))
        async with httpx.AsyncClient() as h:
            got = _samples((await h.get(f"{stack.url}/metrics")).text)
        assert got[("tandem_sync_queue", ())] == 7
        assert got[("tandem_sync_lag_seconds", ())] == 1.25
        assert got[("tandem_sync_idle", ())] == 0
        assert got[("tandem_sync_files_copied_total", ())] == 41
        assert got[("tandem_sync_errors_total", ())] == 3
        assert not any(k[0].startswith("tandem_sync_odd") for k in got)
        assert got[("tandem_sync_last_error_info", (
            ("direction", "cluster->legacy"),
            ("error", "TargetError: the target is read-only")))] == 1
        assert 0 <= got[("tandem_sync_status_age_seconds", ())] < 60
    finally:
        status.unlink(missing_ok=True)


# -- readiness -----------------------------------------------------------------------------------


async def _ready_everywhere(stack: Stack, expect: int) -> list[dict[str, object]]:
    """/readyz over several fresh connections (both workers); all must answer ``expect``."""
    bodies = []
    async with fresh() as h:
        for _ in range(6):
            r = await h.get(f"{stack.url}/readyz")
            assert r.status_code == expect, r.text
            bodies.append(r.json())
    return bodies


async def test_readiness_fence_and_sync_lag(stack: Stack) -> None:
    """A fence file (a flip running) and a sync lag over ``max_sync_lag`` each make /readyz a
    503 whose JSON names the reason; a garbled lag is a reason too, not a crash; removing
    them makes it 200 again. /healthz stays 200 throughout."""
    fence = stack.tmp / "var" / "fence"
    status = stack.tmp / "var" / "sync" / "status.json"
    status.parent.mkdir(parents=True, exist_ok=True)
    body = (await _ready_everywhere(stack, 200))[0]
    assert body == {"ready": True, "role": "origin", "problems": []}
    try:
        fence.write_text("flip\n")
        for b in await _ready_everywhere(stack, 503):
            assert b["ready"] is False
            assert any("fenced" in p for p in b["problems"])  # type: ignore[attr-defined]
        fence.unlink()
        status.write_text(json.dumps({"direction": "cluster->legacy", "lag_seconds": 2.0}))
        await _ready_everywhere(stack, 200)  # under the limit
        status.write_text(json.dumps({"direction": "cluster->legacy", "lag_seconds": 12.5}))
        for b in await _ready_everywhere(stack, 503):
            assert b["problems"] == ["sync lag 12.5 s is over 5.0 s"]
        status.write_text(json.dumps({"direction": "cluster->legacy", "lag_seconds": "soon"}))
        for b in await _ready_everywhere(stack, 503):
            assert "sync lag unknown" in str(b["problems"])
        async with httpx.AsyncClient() as h:
            assert (await h.get(f"{stack.url}/healthz")).status_code == 200
        status.unlink()
        await _ready_everywhere(stack, 200)
    finally:
        fence.unlink(missing_ok=True)
        status.unlink(missing_ok=True)


# -- access log ----------------------------------------------------------------------------------


async def test_access_log_one_json_line_per_request(stack: Stack) -> None:
    """Each asset request is one JSON line on the origin's stdout with method, path, status,
    body bytes and milliseconds; requests that fail (404, 401) are logged too."""
    tag = uuid.uuid4().hex
    data = os.urandom(3000)
    path = f"/news/log-{tag}.txt"
    async with httpx.AsyncClient(base_url=stack.url) as h:
        expect = []
        r = await h.put(path, content=data, headers=AUTH)
        expect.append(("PUT", path, 201, len(r.content)))
        r = await h.get(path)
        expect.append(("GET", path, 200, len(data)))
        r = await h.get(path, headers={"Range": "bytes=10-19"})
        expect.append(("GET", path, 206, 10))
        r = await h.head(path)
        expect.append(("HEAD", path, 200, 0))
        r = await h.get(f"/news/log-{tag}-missing.txt")
        expect.append(("GET", f"/news/log-{tag}-missing.txt", 404, len(r.content)))
        r = await h.delete(path)
        expect.append(("DELETE", path, 401, len(r.content)))
        r = await h.delete(path, headers=AUTH)
        expect.append(("DELETE", path, 204, 0))
    deadline = time.monotonic() + 5
    while True:
        lines = [rec for rec in list(stack.origin.lines)
                 if rec.get("event") == "http.request" and tag in str(rec.get("path"))]
        if len(lines) >= len(expect) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    got = [(rec["method"], rec["path"], rec["status"], rec["bytes"]) for rec in lines]
    assert got == expect
    for rec in lines:
        assert isinstance(rec["ms"], float | int) and 0 <= rec["ms"] < 10_000
        assert rec["level"] == "info" and rec["role"] == "origin" and "timestamp" in rec


# -- kill -9 of the master during a write (last: it restarts the master) -------------------------


async def test_kill9_master_during_a_slow_put(stack: Stack) -> None:
    """The master dies (SIGKILL) while a crawler streams a new version slowly: the client
    gets an error (a 503 or a dropped connection), and once the master is back the file is
    the complete old version, never a mix; the origin serves it whole, and fsck is clean."""
    old = os.urandom(300_000)
    path = "/news/crash.bin"
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as h:
        assert (await h.put(path, content=old, headers=AUTH)).status_code == 201
        midway = asyncio.Event()

        async def slow() -> AsyncIterator[bytes]:
            sent = 0
            async for piece in pieces(15, delay=0.08):  # 960 KiB over ~1.2 s
                sent += len(piece)
                if sent > 400_000:
                    midway.set()
                yield piece

        async def kill_midway() -> None:
            await midway.wait()
            await asyncio.to_thread(stack.master.kill9)

        killer = asyncio.create_task(kill_midway())
        try:
            r = await h.put(path, content=slow(), headers=AUTH)
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "unavailable"
            print(f"the crawler got {r.status_code}: {r.text}")
        except httpx.TransportError as exc:  # the connection dropped: an error too
            print(f"the crawler's connection dropped: {exc!r}")
        await killer
        await asyncio.to_thread(stack.restart_master)
        assert await stat_or_none(stack, path) == (len(old), hashlib.sha256(old).digest())
        async with stack.cluster() as c:
            assert await c.cat(path) == old
            report = await c.fsck(verify=True)
        assert report["ok"], report
        r = await h.get(path)
        assert (r.status_code, r.content) == (200, old)

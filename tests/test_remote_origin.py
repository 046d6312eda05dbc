"""An origin on a second host (``origin.master`` set), end to end on real processes: a master
with local volumes, the local origin over them, and a remote origin that reaches the master only
over its HTTP API and keeps hot chunks in a bounded local cache. Both must answer every URL
with the same bytes and validators; a change must reach the remote origin within a second.

The ``ceph`` tests add an S3 volume on the session's Ceph RGW: the remote origin then reads
the bytes from S3 itself, and once warm serves them with RGW down.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from nginxproc import free_port
from procs import Proc, start_master, write_config
from stack import wait_events

from cluster import crc
from cluster.config import S3Config
from cluster.meta import NS
from cluster.remote import RemoteCluster
from cluster.store import ChunkKey
from cluster.volume import XATTR
from origin.remote_source import HEALTH_INTERVAL

pytestmark = pytest.mark.timeout(120)

CHUNK_SIZE = 256 * 1024
WORKERS = 2
CACHE_BYTES = 3 * CHUNK_SIZE  # small: the bound test fills it several times over
FILES: dict[str, tuple[bytes, int]] = {
    "/images/a.jpg": (random.Random(1).randbytes(20_000), 1_650_000_000_123_456_789),
    "/images/deep/er/b.webp": (random.Random(2).randbytes(CHUNK_SIZE), 1_650_000_111_000_000_000),
    "/images/big.jpg": (random.Random(3).randbytes(2 * CHUNK_SIZE + 12_345), 1_660_000_000_5),
    "/images/empty.css": (b"", 1_600_000_000_000_000_000),
    "/news/page.html": (b"<html>news</html>\n" * 50, 1_640_000_000_000_000_000),
}
SAME = ("etag", "last-modified", "content-length", "content-type", "cache-control",
        "accept-ranges", "content-range")


def etag_of(mtime_ns: int, size: int) -> str:
    return f'"{mtime_ns // NS:x}-{size:x}"'


@dataclass
class Pair:
    """A master, the local origin and a remote origin (``origin.master``) over it."""

    tmp: Path
    config: Path
    master: Proc
    master_url: str
    local: Proc
    local_url: str
    remote: Proc
    remote_url: str
    cache_dir: Path

    def put(self, path: str, data: bytes, mtime_ns: int | None = None) -> None:
        asyncio.run(_call(self.master_url, "put", path, data, mtime_ns=mtime_ns))

    def call(self, op: str, *args: Any, **kw: Any) -> Any:
        return asyncio.run(_call(self.master_url, op, *args, **kw))

    def master_requests(self, path: str) -> int:
        """How many requests for ``path`` (e.g. /v1/lookup) the master has logged."""
        return sum(1 for r in list(self.master.lines)
                   if r.get("event") == "http.request" and r.get("path") == path)


# Every master here wants tokens (cluster.token / read_token); the second host's origin holds
# the read token only: everything it does must be a read.
TOKEN = "master-token-0123456789"
READ_TOKEN = "origin-read-token-0123456789"


async def _call(url: str, op: str, *args: Any, **kw: Any) -> Any:
    async with RemoteCluster(url, token=TOKEN) as rc:
        return await getattr(rc, op)(*args, **kw)


def remote_config(tmp: Path, master_url: str, cache_bytes: int,
                  s3: S3Config | None = None) -> Path:
    """The second host's tandem.toml: its own data_dir, the master's URL, S3 volumes."""
    port = free_port()
    lines = [
        f'data_dir = "{tmp}/var"',
        "[origin]",
        f'listen = "127.0.0.1:{port}"',
        f"workers = {WORKERS}",
        f'master = "{master_url}"',
        f'master_token = "{READ_TOKEN}"',
        f"cache_bytes = {cache_bytes}",
    ]
    if s3 is not None:
        lines += ["[cluster]", *s3_volume_lines(s3)]
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "tandem.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def s3_volume_lines(s3: S3Config) -> list[str]:
    return ["[[cluster.volumes]]", 'kind = "s3"', f'endpoint = "{s3.endpoint}"',
            f'bucket = "{s3.bucket}"', f'prefix = "{s3.prefix}"', f'region = "{s3.region}"',
            f'access_key = "{s3.access_key}"', f'secret_key = "{s3.secret_key}"',
            "max_attempts = 1", "connect_timeout = 1.0", "read_timeout = 5.0"]


def start_origin(config: Path) -> tuple[Proc, str]:
    proc = Proc(["--config", str(config), "origin"], config.parent)
    url = str(proc.wait_event("origin.listening")["url"])
    wait_events(proc, "origin.worker_ready", WORKERS)
    return proc, url


@contextlib.contextmanager
def running_pair(tmp: Path, *, master_config: Path | None = None, s3: S3Config | None = None,
                 cache_bytes: int = CACHE_BYTES) -> Iterator[Pair]:
    if master_config is None:  # the master on a fixed port: a test restarts it
        config = write_config(
            tmp, chunk_size=CHUNK_SIZE, token=TOKEN, read_token=READ_TOKEN,
            sections={"origin": {"listen": f"127.0.0.1:{free_port()}", "workers": WORKERS}},
        )
        text = config.read_text()
        config.write_text(text.replace('listen = "127.0.0.1:0"',
                                       f'listen = "127.0.0.1:{free_port()}"', 1))
    else:
        config = master_config
    with contextlib.ExitStack() as stack:
        master, master_url = start_master(config)
        stack.callback(master.stop)
        local, local_url = start_origin(config)
        stack.callback(local.stop)
        rconf = remote_config(tmp / "remote", master_url, cache_bytes, s3)
        remote, remote_url = start_origin(rconf)
        stack.callback(remote.stop)
        pair = Pair(tmp, config, master, master_url, local, local_url, remote, remote_url,
                    tmp / "remote" / "var" / "origin-cache")
        # Tests restart the master and the remote origin: stop what runs at the end.
        stack.callback(lambda: [p.stop() for p in (pair.remote, pair.master)
                                if p not in (remote, master)])
        yield pair


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    with running_pair(tmp_path_factory.mktemp("remote")) as p:
        for path, (data, mtime) in FILES.items():
            p.put(path, data, mtime)
        yield p


def get(url: str, path: str, **headers: str) -> httpx.Response:
    """One request on a new connection (so the kernel may give it to any worker)."""
    return httpx.get(url + path, headers=headers, timeout=10)


def same(a: httpx.Response, b: httpx.Response) -> None:
    assert a.status_code == b.status_code, (a, b)
    assert a.content == b.content
    for h in SAME:
        assert a.headers.get(h) == b.headers.get(h), h


def cached_files(cache: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in cache.glob("??/chunk_*") if p.suffix != ".crc"}


def wait_for(check: Any, within: float, what: str) -> float:
    """Poll ``check()`` until it is true; the seconds it took (fails past ``within``)."""
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < within, f"{what}: not within {within} s"
        time.sleep(0.01)
    return time.monotonic() - t0


# == same URLs, same answers ===================================================================


def test_same_bytes_and_validators(pair: Pair) -> None:
    for _ in range(3):  # cold, then warm (from the chunk cache), on any worker
        for path, (data, mtime) in FILES.items():
            local, remote = get(pair.local_url, path), get(pair.remote_url, path)
            assert remote.status_code == 200 and remote.content == data, path
            assert remote.headers["etag"] == etag_of(mtime, len(data))
            same(local, remote)
            head = httpx.head(pair.remote_url + path)
            assert head.headers["etag"] == remote.headers["etag"]
            assert head.headers["content-length"] == str(len(data))
    for path in ("/images/missing.jpg", "/images/deep", "/images/a.jpg/x", "/other/a.jpg"):
        same(get(pair.local_url, path), get(pair.remote_url, path))
        assert get(pair.remote_url, path).status_code == 404


def test_conditionals_and_ranges(pair: Pair) -> None:
    big, mtime = FILES["/images/big.jpg"]
    tag = etag_of(mtime, len(big))
    for path in ("/images/big.jpg", "/images/a.jpg"):
        for headers in (
            {"If-None-Match": tag},
            {"If-None-Match": '"other"'},
            {"If-Modified-Since": "Sat, 01 Jan 2050 00:00:00 GMT"},
            {"Range": "bytes=100-199"},
            {"Range": f"bytes={CHUNK_SIZE - 10}-{CHUNK_SIZE + 9}"},  # across two chunks
            {"Range": "bytes=-500"},
            {"Range": "bytes=99999999-"},
            {"If-Match": '"nope"'},
        ):
            local, remote = get(pair.local_url, path, **headers), get(pair.remote_url, path,
                                                                      **headers)
            same(local, remote)
    r = get(pair.remote_url, "/images/big.jpg", **{"If-None-Match": tag})
    assert r.status_code == 304 and r.content == b""
    r = get(pair.remote_url, "/images/big.jpg", Range=f"bytes={CHUNK_SIZE - 10}-{CHUNK_SIZE + 9}")
    assert r.status_code == 206 and r.content == big[CHUNK_SIZE - 10 : CHUNK_SIZE + 10]


def test_warm_requests_ask_nothing_of_the_master(pair: Pair) -> None:
    path = "/news/page.html"
    for _ in range(16):  # every worker has it now (the kernel picks each connection's)
        get(pair.remote_url, path)
    time.sleep(0.2)  # the master's log lines are drained by a thread
    lookups, chunks = pair.master_requests("/v1/lookup"), pair.master_requests("/v1/chunk")
    for _ in range(30):
        assert get(pair.remote_url, path).status_code == 200
    time.sleep(0.2)  # the master's log lines are drained by a thread
    assert pair.master_requests("/v1/lookup") == lookups
    assert pair.master_requests("/v1/chunk") == chunks


# == freshness =================================================================================


def fresh_everywhere(pair: Pair, path: str, want: int, etag: str | None = None) -> bool:
    """Every worker answers ``want`` (and ``etag``): 8 requests on new connections."""
    for _ in range(8):
        r = get(pair.remote_url, path)
        if r.status_code != want or (etag is not None and r.headers.get("etag") != etag):
            return False
    return True


def test_a_rewrite_is_served_with_its_new_validators_within_a_second(pair: Pair) -> None:
    path = "/images/rewritten.jpg"
    pair.put(path, b"old bytes" * 100, 1_700_000_000_000_000_000)
    wait_for(lambda: fresh_everywhere(pair, path, 200), 2.0, "the first version")
    new = b"new bytes, another size" * 99
    pair.put(path, new, 1_700_000_100_000_000_000)
    t = wait_for(lambda: fresh_everywhere(pair, path, 200, etag_of(1_700_000_100_000_000_000,
                                                                    len(new))), 1.0, "rewrite")
    assert get(pair.remote_url, path).content == new
    same(get(pair.local_url, path), get(pair.remote_url, path))
    print(f"rewrite visible on every worker after {t * 1000:.0f} ms")


def test_a_delete_is_a_404_within_a_second(pair: Pair) -> None:
    path = "/images/deleted.jpg"
    pair.put(path, b"soon gone" * 10)
    wait_for(lambda: fresh_everywhere(pair, path, 200), 2.0, "the file")
    pair.call("rm", path)
    wait_for(lambda: fresh_everywhere(pair, path, 404), 1.0, "delete")
    pair.put(path, b"back again")  # a negative answer is forgotten too
    wait_for(lambda: fresh_everywhere(pair, path, 200), 1.0, "put after delete")
    assert get(pair.remote_url, path).content == b"back again"


def test_directory_moves_removals_and_snapshots(pair: Pair) -> None:
    for name in ("x.jpg", "y.jpg"):
        pair.put(f"/images/dir/{name}", name.encode() * 50)
    for name in ("x.jpg", "y.jpg"):
        wait_for(lambda n=name: fresh_everywhere(pair, f"/images/dir/{n}", 200), 2.0, name)
        wait_for(lambda n=name: fresh_everywhere(pair, f"/images/moved/{n}", 404), 2.0, name)
    pair.call("mv", "/images/dir", "/images/moved")
    for name in ("x.jpg", "y.jpg"):
        wait_for(lambda n=name: fresh_everywhere(pair, f"/images/dir/{n}", 404), 1.0, "mv src")
        wait_for(lambda n=name: fresh_everywhere(pair, f"/images/moved/{n}", 200), 1.0, "mv dst")
    pair.call("snapshot", "/images/moved", "/images/snap")
    wait_for(lambda: fresh_everywhere(pair, "/images/snap/x.jpg", 200), 1.0, "snapshot")
    same(get(pair.local_url, "/images/snap/x.jpg"), get(pair.remote_url, "/images/snap/x.jpg"))
    pair.call("rm", "/images/moved", recursive=True)
    wait_for(lambda: fresh_everywhere(pair, "/images/moved/y.jpg", 404), 1.0, "rm -r")
    assert get(pair.remote_url, "/images/snap/y.jpg").content == b"y.jpg" * 50


# == the chunk cache ===========================================================================


def chunk_keys(pair: Pair, path: str) -> list[ChunkKey]:
    _, infos = pair.call("fileinfo", path)
    return [ChunkKey(i.chunk.id, i.chunk.version) for i in infos]


def test_the_cache_keeps_its_bound(pair: Pair) -> None:
    bodies = {f"/images/fill/{i}.jpg": random.Random(100 + i).randbytes(CHUNK_SIZE // 2 + i)
              for i in range(16)}  # 8 chunks' worth: over the bound (3 chunks) more than twice
    for path, data in bodies.items():
        pair.put(path, data)
    for _ in range(2):
        for path, data in bodies.items():
            assert get(pair.remote_url, path).content == data

    def within_bound() -> bool:
        return 0 < sum(cached_files(pair.cache_dir).values()) <= CACHE_BYTES

    wait_for(within_bound, 5.0, "the cache back under its bound")
    evictions = [r for r in pair.remote.lines if r.get("event") == "origin.remote.cache_evicted"]
    assert evictions and all(int(str(r["stored"])) <= CACHE_BYTES for r in evictions)
    for path, data in bodies.items():  # evicted ones are fetched again
        assert get(pair.remote_url, path).content == data


def test_a_corrupt_cache_file_is_never_served(pair: Pair) -> None:
    path = "/images/corrupt-me.jpg"
    data = random.Random(9).randbytes(3 * crc.BLOCK + 100)
    pair.put(path, data)
    (key,) = chunk_keys(pair, path)
    cached = pair.cache_dir / key.folder / key.name
    wait_for(lambda: get(pair.remote_url, path).content == data and cached.exists(), 2.0,
             "the chunk in the cache")
    assert len(os.getxattr(cached, XATTR)) == 4 * crc.blocks(len(data))
    with open(cached, "r+b") as f:  # one bit flipped in the second block, the table kept
        f.seek(crc.BLOCK + 7)
        byte = f.read(1)
        f.seek(crc.BLOCK + 7)
        f.write(bytes([byte[0] ^ 0x01]))
    for _ in range(6):
        r = get(pair.remote_url, path, Range=f"bytes={crc.BLOCK}-{crc.BLOCK + 99}")
        assert r.status_code == 206 and r.content == data[crc.BLOCK : crc.BLOCK + 100]
        assert get(pair.remote_url, path).content == data
    wait_events(pair.remote, "origin.remote.cache_corrupt", 1, timeout=2)
    wait_for(lambda: cached.exists() and cached.read_bytes() == data, 2.0, "fetched again")


def test_a_truncated_cache_file_is_never_served(pair: Pair) -> None:
    path = "/images/truncate-me.jpg"
    data = random.Random(10).randbytes(2 * crc.BLOCK + 5)
    pair.put(path, data)
    (key,) = chunk_keys(pair, path)
    cached = pair.cache_dir / key.folder / key.name
    wait_for(lambda: get(pair.remote_url, path).content == data and cached.exists(), 2.0,
             "the chunk in the cache")
    os.truncate(cached, crc.BLOCK)
    for _ in range(6):
        assert get(pair.remote_url, path).content == data


def test_the_cache_is_rebuilt_from_its_folder_at_start(pair: Pair) -> None:
    path, (data, _) = "/images/a.jpg", FILES["/images/a.jpg"]
    (key,) = chunk_keys(pair, path)
    cached = pair.cache_dir / key.folder / key.name
    wait_for(lambda: get(pair.remote_url, path).content == data and cached.exists(), 2.0,
             "the chunk in the cache")
    pair.remote.stop()
    usage = pair.cache_dir / ".usage"
    usage.write_bytes((10 << 30).to_bytes(8, "big"))  # a count gone wrong: the scan fixes it
    leftover = pair.cache_dir / "00" / ".tmp.chunk_0000000000000000_00000001.1.1"
    leftover.write_bytes(b"a write a crash interrupted")
    os.utime(leftover, (time.time() - 3600, time.time() - 3600))
    pair.remote, url = start_origin(pair.tmp / "remote" / "tandem.toml")
    assert url == pair.remote_url
    time.sleep(0.2)  # the master's log lines are drained by a thread
    fetched = pair.master_requests("/v1/chunk")
    for _ in range(6):  # every worker: from the cache it found on disk
        assert get(pair.remote_url, path).content == data
    time.sleep(0.2)
    assert pair.master_requests("/v1/chunk") == fetched
    assert not leftover.exists()
    stored = int.from_bytes(usage.read_bytes(), "big")
    assert stored == sum(cached_files(pair.cache_dir).values()) <= CACHE_BYTES


# == endpoints and the master's API ============================================================


def test_readyz_and_status(pair: Pair) -> None:
    r = get(pair.remote_url, "/readyz")
    assert r.status_code == 200 and r.json() == {"ready": True, "role": "origin",
                                                 "problems": []}
    r = get(pair.remote_url, "/status")
    assert r.status_code == 200 and "Ready" in r.text


def test_readyz_follows_the_master_hosts_fence(pair: Pair) -> None:
    """A flip's fence is a file on the master's host: the local origin's ``/readyz`` fails at
    once, the remote one's within its health interval (the master reports it over
    ``GET /v1/readiness``), and both are ready again once it is lifted."""
    from origin.config import load
    from syncer import fence

    fence_file = load(pair.config).origin.fence_file
    fence.raise_fence(fence_file, "legacy", "cluster", time.time())
    try:
        local = get(pair.local_url, "/readyz")
        assert local.status_code == 503 and "fenced" in " ".join(local.json()["problems"])

        def fenced() -> bool:
            r = get(pair.remote_url, "/readyz")
            return r.status_code == 503 and any(
                p.startswith("the master's host: ") and "fenced" in p
                for p in r.json()["problems"])

        wait_for(fenced, 3 * HEALTH_INTERVAL + 2, "the remote /readyz failing on the fence")
    finally:
        fence.lift_fence(fence_file)
    assert get(pair.local_url, "/readyz").status_code == 200
    wait_for(lambda: get(pair.remote_url, "/readyz").status_code == 200,
             3 * HEALTH_INTERVAL + 2, "the remote /readyz back once the fence is lifted")


def test_lookup_and_chunk_endpoints(pair: Pair) -> None:
    data, mtime = FILES["/images/big.jpg"]
    ans = pair.call("lookup", "/images/big.jpg")
    f = ans["file"]
    assert ans["seq"] > 0 and f["size"] == len(data) and f["mtime_ns"] == mtime
    assert [c[2] for c in f["chunks"]] == [CHUNK_SIZE, CHUNK_SIZE, 12_345]
    cid, version, _, copies = f["chunks"][1]
    assert copies
    assert pair.call("chunk", cid, version) == data[CHUNK_SIZE : 2 * CHUNK_SIZE]
    assert pair.call("chunk", cid, version, 10, 20) == data[CHUNK_SIZE + 10 : CHUNK_SIZE + 30]
    for missing in ("/images", "/images/nope.jpg", "/images/a.jpg/below"):
        assert pair.call("lookup", missing)["file"] is None
    from cluster.errors import ChunkMissing, InvalidArgument

    with pytest.raises(ChunkMissing):
        pair.call("chunk", cid, version + 1)
    with pytest.raises(InvalidArgument):
        pair.call("chunk", cid, version, CHUNK_SIZE - 1, 2)


# == the master goes away (last: it restarts the module's master) ==============================


def test_without_the_master_it_cannot_serve_and_recovers(pair: Pair) -> None:
    path = "/news/page.html"
    assert get(pair.remote_url, path).status_code == 200
    pair.master.stop()
    t = wait_for(lambda: fresh_everywhere(pair, path, 503), 3.0, "503 without the master")
    print(f"unable after {t * 1000:.0f} ms")
    r = get(pair.remote_url, "/readyz")
    assert r.status_code == 503 and "cannot be reached" in r.json()["problems"][0]
    assert get(pair.local_url, path).status_code == 200  # the local origin reads SQLite itself
    pair.master, url = start_master(pair.config)  # same port
    assert url == pair.master_url
    wait_for(lambda: fresh_everywhere(pair, path, 200), 5.0, "serving again")
    # Eight requests may all land on one worker: each worker reconnects on its own.
    wait_for(lambda: all(get(pair.remote_url, "/readyz").status_code == 200
                         for _ in range(8)), 5.0, "ready again")
    wait_events(pair.remote, "origin.remote.connected", 2 * WORKERS)


# == bytes from S3 (a real Ceph RGW) =============================================================


def s3_master_config(tmp: Path, s3: S3Config) -> Path:
    """A master with one local volume and one S3 volume: goal 2 puts a copy on each."""
    lines = [
        f'data_dir = "{tmp}/var"',
        "[cluster]",
        f'listen = "127.0.0.1:{free_port()}"',
        f"chunk_size = {CHUNK_SIZE}",
        "default_goal = 2",
        "health_interval = 0.2",
        "work_interval = 0.2",
        "replication_delay = 1.0",
        f'token = "{TOKEN}"',
        f'read_token = "{READ_TOKEN}"',
        "[[cluster.volumes]]",
        f'path = "{tmp}/var/volumes/vol0"',
        *s3_volume_lines(s3),
        "[origin]",
        f'listen = "127.0.0.1:{free_port()}"',
        f"workers = {WORKERS}",
    ]
    path = tmp / "tandem.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def logged(proc: Proc, event: str) -> int:
    return sum(1 for r in list(proc.lines) if r.get("event") == event)


@pytest.mark.ceph
def test_bytes_from_s3_and_a_warm_origin_needs_no_s3(tmp_path: Path, ceph_rgw: Any,
                                                     s3_base: S3Config) -> None:
    import s3util

    s3 = s3util.fresh(s3_base)
    with running_pair(tmp_path, master_config=s3_master_config(tmp_path, s3), s3=s3,
                      cache_bytes=16 << 20) as p:
        bodies = {f"/images/s3/{i}.jpg": (random.Random(50 + i).randbytes(CHUNK_SIZE + 999 * i),
                                          1_690_000_000_000_000_000 + i * NS) for i in range(4)}
        bodies["/images/s3/cold.jpg"] = (b"never fetched while RGW runs" * 100,
                                         1_690_000_100_000_000_000)
        for path, (data, mtime) in bodies.items():
            p.put(path, data, mtime)
            kinds = sorted(cp.kind for i in p.call("fileinfo", path)[1] for cp in i.copies)
            assert kinds.count("s3") == len(kinds) // 2 and kinds.count("local") == len(kinds) // 2
        warm = [path for path in bodies if "cold" not in path]
        # Every worker, cold then warm: the kernel picks the worker of each connection, so
        # 16 rounds leave a worker without a path with a chance of 2^-16 per path.
        for _ in range(16):
            for path in warm:
                same(get(p.local_url, path), get(p.remote_url, path))
                assert get(p.remote_url, path).content == bodies[path][0]
        time.sleep(0.2)
        assert p.master_requests("/v1/chunk") == 0  # every byte came from S3
        assert logged(p.remote, "origin.remote.s3_failed") == 0
        assert get(p.remote_url, "/readyz").status_code == 200

        ceph_rgw.kill_rgw()
        try:
            lookups = p.master_requests("/v1/lookup")
            for _ in range(4):
                for path in warm:  # from the chunk cache: no S3 request, none to the master
                    r = get(p.remote_url, path)
                    assert r.status_code == 200 and r.content == bodies[path][0]
                    assert r.headers["etag"] == etag_of(bodies[path][1], len(bodies[path][0]))
            assert logged(p.remote, "origin.remote.s3_failed") == 0
            time.sleep(0.2)
            assert p.master_requests("/v1/lookup") == lookups
            assert p.master_requests("/v1/chunk") == 0
            # Not cached: S3 fails, the master reads its local copy.
            cold = get(p.remote_url, "/images/s3/cold.jpg")
            assert cold.status_code == 200 and cold.content == bodies["/images/s3/cold.jpg"][0]
            assert logged(p.remote, "origin.remote.s3_failed") >= 1
            assert p.master_requests("/v1/chunk") >= 1

            def names_s3() -> bool:  # in one answer: each worker checks S3 on its own clock
                r = get(p.remote_url, "/readyz")
                return r.status_code == 503 and any(s3.name in x for x in r.json()["problems"])

            wait_for(names_s3, 10.0, "/readyz failing, naming the S3 volume, with RGW down")
        finally:
            ceph_rgw.restart_rgw()
        wait_for(lambda: get(p.remote_url, "/readyz").status_code == 200, 10.0,
                 "/readyz back with RGW")

"""Legacy directory → cluster (the direction after a flip to legacy): the inotify mirror with
the cluster as its target, against a real master process over HTTP."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from procs import start_master, write_config

from cluster.errors import NotFound
from cluster.remote import RemoteCluster
from syncer.cluster_target import ClusterTarget
from syncer.dir_mirror import DirectoryMirror
from syncer.tree import SourceChanged, enable_leases, lstat_item
from syncer.verify import Difference, verify

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def master(tmp_path: Path) -> AsyncIterator[RemoteCluster]:
    proc, url = start_master(write_config(tmp_path))
    try:
        async with RemoteCluster(url) as c:
            yield c
    finally:
        proc.stop()


async def converge(master: RemoteCluster, legacy: Path, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    diffs: list[Difference] = []
    while time.monotonic() < deadline:
        diffs = await verify(master, legacy)
        if not diffs:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no convergence: {[str(d) for d in diffs]}")


async def test_legacy_changes_reach_the_cluster(master: RemoteCluster, tmp_path: Path) -> None:
    legacy = tmp_path / "legacy"
    (legacy / "images").mkdir(parents=True)
    (legacy / "images/before.jpg").write_bytes(b"there before")
    os.utime(legacy / "images/before.jpg", ns=(1_500_000_000_000_000_000,) * 2)
    mirror = DirectoryMirror(legacy, ClusterTarget(master), tmp_path / "state",
                             direction="legacy->cluster")
    task = asyncio.create_task(mirror.run())
    try:
        await converge(master, legacy)
        (legacy / "news").mkdir()
        (legacy / "news/.tmp").write_bytes(b"<p>one</p>")
        os.rename(legacy / "news/.tmp", legacy / "news/one.html")
        for i in range(20):
            (legacy / "images/hot.jpg").write_bytes(b"v%d" % i)
        (legacy / os.fsdecode(b"images/caf\xe9.jpg")).write_bytes(b"latin-1")
        await converge(master, legacy)
        before = mirror.counters["files_copied"]
        os.rename(legacy / "images", legacy / "img")  # a rename stays a rename
        (legacy / "news/one.html").unlink()
        await converge(master, legacy)
        assert mirror.counters["renamed"] >= 1
        assert mirror.counters["files_copied"] == before
        entry = await master.stat("/img/before.jpg")
        assert entry.mtime_ns == 1_500_000_000_000_000_000
        assert any(t.path == b"/news/one.html" for t in await master.trash_list())
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_source_that_changes_under_the_put_commits_nothing(
        master: RemoteCluster, tmp_path: Path) -> None:
    """The body goes to the master over real HTTP under a read lease. After the first MiB a
    writer (another thread) opens the file: the kernel holds its open back and asks the
    lease back, the syncer lets go at once (not after lease-break-time), the upload is cut
    and the master commits nothing. A source that changed before the copy is refused."""
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(3 << 20))
    item = lstat_item(os.fsencode(path))
    assert item is not None
    assert enable_leases()

    def append() -> float:
        started = time.monotonic()
        with open(path, "ab") as f:
            f.write(b"more")
        return time.monotonic() - started

    class GrowsMidway:
        writer: asyncio.Future[float] | None = None

        async def put(self, p: bytes, body: AsyncIterator[bytes], **kw: object) -> object:
            async def relay() -> AsyncIterator[bytes]:
                async for piece in body:
                    yield piece
                    if self.writer is None:
                        self.writer = asyncio.ensure_future(asyncio.to_thread(append))
                        await asyncio.sleep(0.3)  # its open() reaches the kernel and waits

            return await master.put(p, relay(), **kw)  # type: ignore[arg-type]

    grows = GrowsMidway()
    with pytest.raises(SourceChanged):
        await ClusterTarget(grows).put_file(  # type: ignore[arg-type]
            b"f.bin", os.fsencode(path), item)
    assert grows.writer is not None and await grows.writer < 5.0
    with pytest.raises(NotFound):
        await master.stat("/f.bin")
    with pytest.raises(SourceChanged):  # now it is not what was looked at
        await ClusterTarget(master).put_file(b"f.bin", os.fsencode(path), item)
    with pytest.raises(NotFound):
        await master.stat("/f.bin")

"""kill -9 of the master process while a client streams 2,000 puts over the HTTP API.

Real processes: the master is ``python -m origin cluster serve`` on 127.0.0.1, killed with
SIGKILL mid-stream, then restarted on the same metadata and volumes.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from pathlib import Path

import pytest
from procs import start_master, write_config

from cluster.errors import ClusterError, RemoteError
from cluster.master import Master
from cluster.remote import RemoteCluster
from cluster.store import ChunkKey
from origin.config import load

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

FILES = 2000
CONCURRENCY = 8


def payload(i: int) -> bytes:
    rnd = random.Random(i)
    return rnd.randbytes(rnd.randint(1, 256 * 1024))


async def _put_with_retry(shared: dict[str, RemoteCluster], path: str, data: bytes) -> None:
    """Retry until the (possibly restarted) master acknowledges."""
    for _ in range(600):
        try:
            await shared["client"].put(path, data)
            return
        except RemoteError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"{path} never acknowledged")


def _files_on_disk(cfg_path: Path) -> dict[int, set[int]]:
    """volume id → chunk ids present as files (read straight from the volume folders)."""
    cfg = load(cfg_path)
    out: dict[int, set[int]] = {}
    for i, v in enumerate(cfg.cluster.volumes):
        ids = set()
        for sub in v.path.iterdir():
            if sub.is_dir():
                for f in sub.iterdir():
                    parts = f.name.split("_")
                    if len(parts) == 3 and parts[0] == "chunk" and "." not in f.name:
                        ids.add(int(parts[1], 16))
        out[i] = ids
    return out


async def test_kill9_master_during_2000_puts(tmp_path: Path) -> None:
    # 64 KiB chunks: most files have several, so a kill lands between chunk writes and commit
    cfg_path = write_config(tmp_path, default_goal=2, scrub_rate=0, chunk_size=65536)
    master, url = start_master(cfg_path)
    shared = {"client": RemoteCluster(url, timeout=10)}
    acked: dict[str, str] = {}
    sem = asyncio.Semaphore(CONCURRENCY)
    enough = asyncio.Event()

    async def one(i: int) -> None:
        path = f"/crash/{i // 100:02d}/f{i:04d}.bin"
        data = payload(i)
        async with sem:
            await _put_with_retry(shared, path, data)
        acked[path] = hashlib.sha256(data).hexdigest()
        if len(acked) >= 700:
            enough.set()

    client = asyncio.gather(*(one(i) for i in range(FILES)))
    try:
        await asyncio.wait_for(enough.wait(), 120)
        master.kill9()
        acked_at_kill = dict(acked)

        # While the master is dead: every visible file reads back whole, with its hash.
        cfg = load(cfg_path)
        async with Master(cfg.cluster, background=False) as m:
            visible = [e for e in await m.walk("/crash") if not e.is_dir]
            for e in visible:
                data = await m.cat(e.path)
                assert hashlib.sha256(data).digest() == e.hash, e.path
                assert len(data) == e.size
            names = {e.path.decode() for e in visible}
            assert set(acked_at_kill) <= names, "an acknowledged put was lost"
            before = _files_on_disk(cfg_path)
            ids = sorted({cid for s in before.values() for cid in s})
            copies = await m._db(m.meta.copies_of, ids)
            orphans = sum(
                1 for vid, s in before.items() for cid in s if not copies.get(cid, 0) & (1 << vid)
            )
        print(f"visible at kill: {len(visible)}, acknowledged: {len(acked_at_kill)}, "
              f"orphan chunk files left by the kill: {orphans}")

        master, url = start_master(cfg_path)
        old, shared["client"] = shared["client"], RemoteCluster(url, timeout=10)
        await old.__aexit__()
        await asyncio.wait_for(client, 240)
    finally:
        await shared["client"].__aexit__()
        if not client.done():
            client.cancel()
            with pytest.raises((asyncio.CancelledError, ClusterError)):
                await client
    try:
        async with RemoteCluster(url) as c:
            for path, digest in acked.items():
                entry = await c.stat(path)
                assert entry.hash is not None and entry.hash.hex() == digest
                assert hashlib.sha256(await c.cat(path)).hexdigest() == digest
            assert len(acked) == FILES
            # Orphans (copies written for puts the kill interrupted) are swept at start.
            report = await c.fsck()
            assert report["orphans"] == 0, report
            assert report["ok"], report
    finally:
        assert master.stop() == 0
    after = _files_on_disk(cfg_path)
    async with Master(load(cfg_path).cluster, background=False) as m:
        copies = await m._db(m.meta.copies_of, sorted({c for s in after.values() for c in s}))
    for vid, present in after.items():
        for cid in present:
            assert copies.get(cid, 0) & (1 << vid), f"orphan {ChunkKey(cid).name} on volume {vid}"

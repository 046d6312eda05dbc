"""kill -9 of radosgw while a client streams puts to a master whose chunks all go to S3.

Real processes: the session's Ceph RGW (``tests/cephrgw.py``) and the master as
``python -m origin cluster serve`` on 127.0.0.1, driven over its HTTP API. While the engine is
gone every put fails cleanly (an error, nothing visible) or completes; after radosgw restarts,
everything acknowledged reads back whole, nothing is visible that does not, and a restarted
master sweeps the objects of interrupted puts.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from pathlib import Path
from typing import Any

import pytest
from procs import start_master, write_config
from s3util import fresh, volume_toml

from cluster.config import S3Config
from cluster.errors import ClusterError
from cluster.remote import RemoteCluster

pytestmark = [pytest.mark.ceph, pytest.mark.timeout(300)]

FILES = 600
CONCURRENCY = 8


def payload(i: int) -> bytes:
    rnd = random.Random(i)
    return rnd.randbytes(rnd.randint(1, 200 * 1024))


def s3_only_config(tmp: Path, sc: S3Config) -> Path:
    """A master whose one volume is S3 (goal 1), with fast health checks."""
    path = write_config(tmp, default_goal=1, chunk_size=65536, scrub_rate=0)
    with path.open("a") as f:  # the volume: an array of tables of [cluster], last in the file
        f.write(volume_toml(sc, max_attempts=2, connect_timeout=1.0, read_timeout=5.0))
    return path


async def test_kill9_radosgw_mid_stream(tmp_path: Path, s3_base: S3Config, ceph_rgw: Any) -> None:
    cfg_path = s3_only_config(tmp_path, fresh(s3_base))
    master, url = start_master(cfg_path)
    acked: dict[str, str] = {}
    failed: list[str] = []
    sem = asyncio.Semaphore(CONCURRENCY)
    enough = asyncio.Event()
    a_put_failed = asyncio.Event()

    async def one(c: RemoteCluster, i: int) -> None:
        path = f"/rgw/{i // 100:02d}/f{i:04d}.bin"
        data = payload(i)
        async with sem:
            for _ in range(600):
                try:
                    await c.put(path, data)
                    break
                except ClusterError:  # the engine is gone: a clean failure, tried again
                    failed.append(path)
                    a_put_failed.set()
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"{path} never acknowledged")
        acked[path] = hashlib.sha256(data).hexdigest()
        if len(acked) >= FILES // 3:
            enough.set()

    try:
        async with RemoteCluster(url, timeout=30) as c:
            client = asyncio.gather(*(one(c, i) for i in range(FILES)))
            try:
                await asyncio.wait_for(enough.wait(), 120)
                ceph_rgw.kill_rgw()
                try:
                    acked_at_kill = dict(acked)
                    killed = time.monotonic()
                    # Puts keep coming and failing. The first failure waits for the puts in
                    # flight to give up (a retry, backoff): a loaded host can take seconds.
                    try:
                        await asyncio.wait_for(a_put_failed.wait(), 20)
                    except TimeoutError:
                        raise AssertionError(
                            "no put failed within 20 s of radosgw's death"
                        ) from None
                    first_failure = time.monotonic() - killed
                    # A file whose bytes are out of reach fails cleanly: an error (503 over
                    # HTTP), never short or partial bytes.
                    some = next(iter(acked_at_kill))
                    with pytest.raises(ClusterError):
                        await c.cat(some)
                finally:
                    ceph_rgw.restart_rgw()
                await asyncio.wait_for(client, 240)
            finally:
                if not client.done():
                    client.cancel()
                    with pytest.raises((asyncio.CancelledError, ClusterError)):
                        await client
            assert len(acked) == FILES
            visible = [e for e in await c.walk("/rgw") if not e.is_dir]
            assert {e.path.decode() for e in visible} == set(acked)
            for e in visible:
                body = await c.cat(e.path)
                assert len(body) == e.size and hashlib.sha256(body).hexdigest() == acked[
                    e.path.decode()]
        print(f"acknowledged before the kill: {len(acked_at_kill)}, first put failed after "
              f"{first_failure:.2f} s, failed puts (retried): {len(failed)}")
    finally:
        assert master.stop() == 0
    # A restarted master sweeps objects left by puts the outage interrupted.
    master, url = start_master(cfg_path)
    try:
        async with RemoteCluster(url) as c:
            report: dict[str, Any] = {}
            for _ in range(100):
                report = await c.fsck()
                if report["ok"]:
                    break
                await asyncio.sleep(0.2)
            assert report["ok"] and report["orphans"] == 0, report
            assert (await c.status())["under_goal"] == 0
    finally:
        assert master.stop() == 0

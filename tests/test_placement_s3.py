"""Placement that mixes local volumes and S3, against a real engine (the session's Ceph RGW):
where copies go, what counts toward a goal, and re-replication, scrub and repair across the
mix — a lost local volume rebuilt from S3, a lost S3 side served locally and re-replicated
when it returns, a damaged S3 object replaced."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from s3util import flip, fresh, rewrite
from test_master import CHUNK, cluster_cfg, data

from cluster import background
from cluster.config import S3Config
from cluster.master import Master
from cluster.s3store import S3Store
from cluster.store import ChunkKey
from cluster.volume import LocalVolume

pytestmark = pytest.mark.ceph


async def kinds(m: Master, path: str) -> list[list[str]]:
    """Per chunk of the file, the kinds of the volumes holding its copies, sorted."""
    _, infos = await m.fileinfo(path)
    return [sorted(cp.kind for cp in info.copies) for info in infos]


def s3_volume(m: Master) -> Any:
    (vol,) = [v for v in m.volumes.values() if v.kind == "s3"]
    return vol


@pytest.fixture
async def mixed(tmp_path: Path, s3_base: S3Config) -> AsyncIterator[Master]:
    """Two local volumes and one S3 volume, no background tasks (tests run passes)."""
    cfg = cluster_cfg(tmp_path, 2, s3_volumes=(fresh(s3_base),), replication_delay=0.0)
    async with Master(cfg, background=False) as m:
        yield m


async def test_goal_two_is_one_local_copy_and_one_s3_copy(mixed: Master) -> None:
    m = mixed
    bodies = {f"/p/{i}": data(CHUNK * 2 + 7 * i + 1, seed=i) for i in range(8)}
    for p, b in bodies.items():
        await m.put(p, b)
    for p, b in bodies.items():
        assert await kinds(m, p) == [["local", "s3"]] * 3
        assert await m.cat(p) == b
        assert await m.cat(p, CHUNK - 5, 10) == b[CHUNK - 5 : CHUNK + 5]
    status = await m.status()
    s3 = [v for v in status["volumes"] if v["kind"] == "s3"]
    assert len(s3) == 1 and s3[0]["state"] == "ok" and s3[0]["path"].startswith("s3:http")
    assert status["under_goal"] == 0 and status["over_goal"] == 0

    await m.setgoal("/p", 1, recursive=True)
    await background.replicate_pass(m)
    for p, b in bodies.items():  # goal 1 keeps the local copy (placement: local first)
        assert await kinds(m, p) == [["local"]] * 3
        assert await m.cat(p) == b
    await m.setgoal("/p", 3, recursive=True)
    await background.replicate_pass(m)
    for p in bodies:
        assert await kinds(m, p) == [["local", "local", "s3"]] * 3
    assert (await m.status())["under_goal"] == 0


async def test_local_copies_of_a_mixed_put_carry_the_files_mtime(mixed: Master) -> None:
    """The local copy of every chunk gets the file's mtime (nginx's validators come from it);
    the S3 copies keep none, and stamping skips them."""
    m = mixed
    mtime = 1_700_000_000_123_456_789
    e = await m.put("/m/a.jpg", data(CHUNK * 2 + 5, seed=3), mtime_ns=mtime)
    assert e.mtime_ns == mtime
    _, infos = await m.fileinfo("/m/a.jpg")
    assert len(infos) == 3
    for info in infos:
        (local,) = [cp for cp in info.copies if cp.kind == "local"]
        store = m.volumes[local.volume].store
        assert isinstance(store, LocalVolume)
        assert store.mtime_ns(ChunkKey(info.chunk.id, info.chunk.version)) == mtime


async def test_all_copies_on_s3_counting_as_the_engines_own(
    tmp_path: Path, s3_base: S3Config
) -> None:
    """A stateless host: one S3 volume whose engine keeps copies itself (counts_as 3)
    satisfies goal 2 with one object; with counts_as 1 the same chunk is under goal."""
    cfg = dataclasses.replace(
        cluster_cfg(tmp_path, []), s3_volumes=(fresh(s3_base, counts_as=3),)
    )
    async with Master(cfg, background=False) as m:
        await m.put("/a", data(3 * CHUNK, seed=1))
        assert await kinds(m, "/a") == [["s3"]] * 3
        status = await m.status()
        assert status["under_goal"] == 0 and status["volumes"][0]["counts_as"] == 3
        assert (await m.checkfile("/a"))["under_goal"] == 0
        assert await m.cat("/a") == data(3 * CHUNK, seed=1)
        sc = cfg.s3_volumes[0]
    cfg = dataclasses.replace(cfg, s3_volumes=(dataclasses.replace(sc, counts_as=1),))
    async with Master(cfg, background=False) as m:
        assert (await m.status())["under_goal"] == 3
        assert (await m.checkfile("/a"))["under_goal"] == 3


async def test_lost_local_volume_is_served_from_s3_and_rebuilt(mixed: Master) -> None:
    m = mixed
    bodies = {f"/l/{i}": data(CHUNK + 100 * i + 1, seed=40 + i) for i in range(6)}
    for p, b in bodies.items():
        await m.put(p, b)
    for v in [v for v in m.volumes.values() if v.kind == "local"]:
        shutil.rmtree(v.path)  # both local disks gone: every chunk only on S3
    for p, b in bodies.items():
        assert await m.cat(p) == b
    await m.check_volumes()
    assert [v.state for v in m.volumes.values() if v.kind == "local"] == ["missing"] * 2
    assert (await m.status())["under_goal"] == (await m.status())["chunks"]

    for v in [v for v in m.volumes.values() if v.kind == "local"]:
        Path(v.path).mkdir()  # new, empty disks: adopted, then rebuilt from S3
    await m.check_volumes()
    await background.replicate_pass(m)
    for p, b in bodies.items():
        assert await kinds(m, p) == [["local", "s3"]] * 2
        assert await m.cat(p) == b
    assert (await m.status())["under_goal"] == 0
    s3 = s3_volume(m)
    for p in bodies:  # reads go to the local copy first: S3 can be gone now
        _, infos = await m.fileinfo(p)
        for info in infos:
            await s3.store.delete(ChunkKey(info.chunk.id, info.chunk.version))
    for p, b in bodies.items():
        assert await m.cat(p) == b


async def test_lost_s3_is_served_locally_and_re_replicated_when_it_returns(
    mixed: Master, ceph_rgw: Any
) -> None:
    m = mixed
    before = {f"/s/{i}": data(CHUNK + 3 * i + 1, seed=60 + i) for i in range(4)}
    for p, b in before.items():
        await m.put(p, b)
    ceph_rgw.kill_rgw()
    try:
        for p, b in before.items():
            assert await m.cat(p) == b
        await m.check_volumes()
        assert s3_volume(m).state == "missing"
        during = {f"/s/d{i}": data(CHUNK + 5 * i + 1, seed=70 + i) for i in range(4)}
        for p, b in during.items():  # puts go on: the goal is met on the local volumes
            await m.put(p, b)
            assert await kinds(m, p) == [["local", "local"]] * 2
        await background.replicate_pass(m)  # nothing to do while S3 is gone
        for p in during:
            assert await kinds(m, p) == [["local", "local"]] * 2
    finally:
        ceph_rgw.restart_rgw()
    await m.check_volumes()
    assert s3_volume(m).state == "ok"
    await background.replicate_pass(m)  # back: an S3 copy added, the extra local one dropped
    for p, b in {**before, **during}.items():
        assert await kinds(m, p) == [["local", "s3"]] * 2
        assert await m.cat(p) == b
    # 2 chunks a file: in the outage each chunk of ``before`` got a second local copy (8);
    # after it, each of ``during`` got its S3 copy (8), and every chunk lost a local one (16).
    assert m.stats["copies_added"] == m.stats["copies_removed"] == 16
    assert (await m.status())["under_goal"] == 0


async def test_scrub_replaces_a_damaged_s3_object(mixed: Master) -> None:
    m = mixed
    body = data(CHUNK, seed=80)
    await m.put("/x", body)
    _, (info,) = await m.fileinfo("/x")
    key = ChunkKey(info.chunk.id, info.chunk.version)
    s3 = s3_volume(m)
    assert isinstance(s3.store, S3Store)
    rewrite(s3.store, key, flip(70_000))  # CRC table kept, one byte changed
    await background.scrub_chunk(m, info.chunk)
    assert m.stats["scrub_bad_copies"] == 1
    assert await kinds(m, "/x") == [["local", "s3"]]  # re-made on S3 from the local copy
    assert await s3.store.get(key) == body
    assert await m.cat("/x") == body


async def test_a_bucket_prefix_of_someone_elses_chunks_is_refused(
    tmp_path: Path, s3_base: S3Config
) -> None:
    sc = fresh(s3_base)
    async with S3Store(sc) as store:
        await store.put(ChunkKey(5, 1), b"not ours")
    cfg = cluster_cfg(tmp_path, 1, s3_volumes=(sc,))
    async with Master(cfg, background=False) as m:
        s3 = s3_volume(m)
        assert s3.state == "missing" and "no .tandem-volume marker" in s3.reason
        await m.put("/f", b"x")  # the local volume serves meanwhile
        assert await kinds(m, "/f") == [["local"]]
        async with S3Store(sc) as store:
            assert await store.head(ChunkKey(5, 1)) == 8  # nothing of it was touched


async def test_local_origin_serves_from_s3_when_the_local_disks_are_gone(
    mixed: Master,
) -> None:
    """The origin's cluster source (read-only SQLite, the volumes) reads an S3 copy when no
    local one is left, and offers nginx no copy to send (none is on this host)."""
    from origin.sources import ClusterSource

    m = mixed
    bodies = {f"/o/{i}": data(CHUNK + 11 * i + 1, seed=90 + i) for i in range(3)}
    bodies["/o/small"] = data(1000, seed=99)
    for p, b in bodies.items():
        await m.put(p, b)
    src = ClusterSource(m.cfg)
    await src.start()
    try:
        small = await src.lookup((b"o", b"small"))
        assert small is not None and small.accel is not None  # a local copy: nginx sends it
        for v in [v for v in m.volumes.values() if v.kind == "local"]:
            shutil.rmtree(v.path)
        assert src.unable() is None  # S3 still holds every chunk
        for p, b in bodies.items():
            parts = tuple(x.encode() for x in p.strip("/").split("/"))
            f = await src.lookup(parts)  # a cached answer's copy is checked on every hit
            assert f is not None and f.accel is None
            got = b"".join([piece async for piece in src.read(f, 0, f.size)])
            assert got == b
            got = b"".join([piece async for piece in src.read(f, 5, 100)])
            assert got == b[5:105]
    finally:
        await src.close()



async def test_status_page_of_an_origin_with_an_s3_volume(mixed: Master) -> None:
    """The origin's ``/status`` lists the S3 volume (judged by the master, so counted healthy)
    beside the local ones and counts goals with the S3 copies — before, an S3 volume made the
    page a 500. Lost local disks show as missing, and their chunks as under goal."""
    from test_status_page import Dom

    from origin import health
    from origin.config import load
    from origin.sources import ClusterSource

    m = mixed
    for i in range(3):
        await m.put(f"/s/{i}", data(CHUNK + 1 + i, seed=200 + i))  # two chunks each
    cfg = dataclasses.replace(load(None), cluster=m.cfg)
    src = ClusterSource(m.cfg)
    await src.start()
    try:
        s3 = s3_volume(m)
        dom = Dom(await health.status_html(cfg, src, "origin"))
        assert dom.text[f"volume-{s3.id}"].startswith(f"{s3.id}{s3.path}s3, checked by the master")
        assert (dom.text["chunks"], dom.text["under_goal"], dom.text["missing"]) == ("6", "0", "0")
        for v in [v for v in m.volumes.values() if v.kind == "local"]:
            shutil.rmtree(v.path)
        src._counts = None  # the page's counts are reused for a few seconds
        dom = Dom(await health.status_html(cfg, src, "origin"))
        assert all("missing" in dom.text[f"volume-{v.id}"] for v in m.volumes.values()
                   if v.kind == "local")
        assert (dom.text["under_goal"], dom.text["missing"]) == ("6", "0")  # S3 holds them
    finally:
        await src.close()



def spy_gets(monkeypatch: pytest.MonkeyPatch, store: S3Store) -> list[dict[str, Any]]:
    """The arguments of every ``get_object`` the store's client makes from now on."""
    client = store.conn.client
    seen: list[dict[str, Any]] = []
    real = client.get_object

    async def spy(**kw: Any) -> Any:
        seen.append(kw)
        return await real(**kw)

    monkeypatch.setattr(client, "get_object", spy)
    return seen


async def test_a_whole_chunk_is_a_plain_get(
    tmp_path: Path, s3_base: S3Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading a chunk to its end asks S3 for the object without a Range (a plain GET costs
    the engine and botocore less than a ranged one); a part of a chunk is a ranged GET of
    the CRC blocks that hold it."""
    cfg = cluster_cfg(tmp_path, [], s3_volumes=(fresh(s3_base),), default_goal=1)
    async with Master(cfg, background=False) as m:
        body = data(CHUNK + 3000, seed=21)
        await m.put("/g", body)
        seen = spy_gets(monkeypatch, s3_volume(m).store)
        assert await m.cat("/g") == body
        assert ["Range" in kw for kw in seen] == [False, False]
        seen.clear()
        assert await m.cat("/g", 10, 100) == body[10:110]
        assert [kw.get("Range") for kw in seen] == [f"bytes=0-{65536 - 1}"]


async def test_the_remote_origin_reads_a_whole_chunk_with_a_plain_get(
    tmp_path: Path, s3_base: S3Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The remote origin's chunk reads (``RemoteSource._fetch``) follow the same rule as the
    master's: to the chunk's end, no Range; a part, a ranged GET. Its S3 store is mapped by
    hand here (no master over HTTP: the master's bytes are not asked for)."""
    from origin import config as origin_config
    from origin.remote_source import RemoteSource

    cfg = cluster_cfg(tmp_path, [], s3_volumes=(fresh(s3_base),), default_goal=1)
    async with Master(cfg, background=False) as m:
        body = data(5000, seed=23)
        await m.put("/r", body)
        (c,) = (await m.open("/r"))[1]
        vol = s3_volume(m)
        src = RemoteSource(origin_config.load(None))
        src.stores = {vol.id: vol.store}
        seen = spy_gets(monkeypatch, vol.store)
        key = ChunkKey(c.id, c.version)
        assert await src._fetch(c, key, 0, c.size) == body
        assert await src._fetch(c, key, 10, 100) == body[10:110]
        assert [kw.get("Range") for kw in seen] == [None, f"bytes=0-{65536 - 1}"]  # CRC blocks


async def test_a_put_gives_s3_the_hash_of_its_first_chunk(
    tmp_path: Path, s3_base: S3Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The master's SHA-256 of the file so far is the first chunk's: its PUT is signed with it
    (``cluster/s3sign.py``); later chunks, whose hash the master has not, get none."""
    given: list[tuple[int, bytes | None]] = []
    put = S3Store.put

    async def spy(self: S3Store, key: ChunkKey, data: bytes, **kw: Any) -> None:
        given.append((len(data), kw.get("sha256")))
        await put(self, key, data, **kw)

    monkeypatch.setattr(S3Store, "put", spy)
    cfg = cluster_cfg(tmp_path, 0, s3_volumes=(fresh(s3_base),), default_goal=1)
    body = data(CHUNK * 2 + 11, seed=8)
    async with Master(cfg, background=False) as m:
        await m.put("/h/a.jpg", body)
        assert await m.cat("/h/a.jpg") == body
    assert given == [(CHUNK, hashlib.sha256(body[:CHUNK]).digest()), (CHUNK, None), (11, None)]

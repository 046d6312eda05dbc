"""``tandem cluster migrate-store``: every chunk copy moved (or copied) from one volume to
another, online, verified, resumable — local → S3 and back against the session's Ceph RGW,
a damaged source copy, puts, reads, purges and the replicator running during a move, kill -9
of a real master process mid-migration, and bad input."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from procs import start_master, write_config
from s3util import fresh, volume_toml
from test_master import CHUNK, cluster_cfg, copy_path, data, flip, state

from cluster import background
from cluster.config import S3Config
from cluster.errors import InvalidArgument, NotEnoughCopies, RemoteError
from cluster.http_api import create_app
from cluster.http_server import bind, serve
from cluster.master import Master, Volume
from cluster.remote import RemoteCluster
from cluster.store import ChunkKey
from cluster.view import VIEW
from cluster.volume import LocalVolume
from origin.cli import main
from origin.config import load

ceph = pytest.mark.ceph


def bodies(n: int, seed: int = 0, prefix: str = "/m") -> dict[str, bytes]:
    """Files of 0 to 3 chunks (an empty one, exact multiples, ragged tails)."""
    rnd = random.Random(seed)
    out = {f"{prefix}/empty": b""}
    for i in range(n):
        size = rnd.choice([1, 100, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 77, 3 * CHUNK])
        out[f"{prefix}/d{i % 3}/f{i:03d}.bin"] = data(size, seed=seed * 1000 + i)
    return out


async def put_all(m: Master, files: dict[str, bytes]) -> None:
    sem = asyncio.Semaphore(8)

    async def one(p: str, b: bytes) -> None:
        async with sem:
            await m.put(p, b, mtime_ns=1_700_000_000_000_000_000 + len(b))

    await asyncio.gather(*(one(p, b) for p, b in files.items()))


async def kinds(m: Master, path: str) -> list[list[str]]:
    _, infos = await m.fileinfo(path)
    return [sorted(cp.kind for cp in info.copies) for info in infos]


def vol(m: Master, kind: str, n: int = 0) -> Volume:
    return [v for v in m.volumes.values() if v.kind == kind][n]


async def keys_on(v: Volume) -> set[int]:
    """Chunk ids the store itself holds (objects or files)."""
    return {k.id async for k in v.store.list()}


async def on_volume(m: Master, v: Volume) -> int:
    n, _ = await m._db(m.meta.count_on, v.bit)
    return n


async def all_chunk_ids(m: Master) -> set[int]:
    return await m._db(lambda: {r[0] for r in m.meta.db.execute("SELECT id FROM chunk")})


async def check_all(m: Master, files: dict[str, bytes]) -> None:
    """Every file reads back whole; nothing is under or over goal (checkfile on a few files,
    status, fsck: every copy there with its size); fsck finds no orphan or other problem."""
    sem = asyncio.Semaphore(8)

    async def one(p: str, b: bytes) -> None:
        async with sem:
            assert await m.cat(p) == b, p

    await asyncio.gather(*(one(p, b) for p, b in files.items()))
    for p in list(files)[:6]:
        assert (await m.checkfile(p))["under_goal"] == 0, p
    s = await m.status()
    assert (s["under_goal"], s["over_goal"], s["missing"]) == (0, 0, 0), s
    report = await m.fsck()
    assert report["ok"], (report["problems"], await orphans(m))


async def orphans(m: Master) -> list[tuple[int, str]]:
    """(volume id, chunk name) of every object or file the metadata does not name."""
    out = []
    for v in m.volumes.values():
        keys = await keys_on(v)
        copies = await m._db(m.meta.copies_of, sorted(keys))
        out += [(v.id, ChunkKey(k).name) for k in sorted(keys) if not copies.get(k, 0) & v.bit]
    return out


@pytest.fixture
async def mixed(tmp_path: Path, s3_base: S3Config) -> AsyncIterator[Master]:
    """One local volume and one S3 volume, goal 1, no background tasks."""
    cfg = cluster_cfg(tmp_path, 1, s3_volumes=(fresh(s3_base),), replication_delay=0.0,
                      default_goal=1)
    async with Master(cfg, background=False) as m:
        yield m


# -- local → S3 → local -------------------------------------------------------------------------


@ceph
async def test_move_local_to_s3_and_back(mixed: Master) -> None:
    m = mixed
    files = bodies(14, seed=1)
    await put_all(m, files)
    local, s3 = vol(m, "local"), vol(m, "s3")
    ids = await all_chunk_ids(m)
    total = sum(len(b) for b in files.values())
    assert await keys_on(local) == ids and not await keys_on(s3)

    seen: list[dict[str, Any]] = []
    r = await m.migrate_store("local", "s3", move=True, progress=seen.append)  # by kind
    assert r["ok"] and r["migrated"] == len(ids) and r["migrated_bytes"] == total, r
    assert (r["from"]["id"], r["to"]["id"], r["failed"], r["bad_copies"]) == (
        local.id, s3.id, 0, 0)
    assert seen[-1]["processed"] == seen[-1]["chunks"] == len(ids)
    assert not local.draining and m.migration is None
    for p in files:
        assert all(k == ["s3"] for k in await kinds(m, p)), p
    assert not await keys_on(local)  # every local chunk file is gone
    assert await keys_on(s3) == ids
    await check_all(m, files)

    # And back, naming the volumes by their paths as ``status`` prints them.
    r = await m.migrate_store(s3.path, local.path, move=True)
    assert r["ok"] and r["migrated"] == len(ids), r
    for p in files:
        assert all(k == ["local"] for k in await kinds(m, p))
    assert not await keys_on(s3) and await keys_on(local) == ids
    await check_all(m, files)
    # The file's mtime went to S3 and back with each chunk, and the nginx view links the
    # files of one chunk again (the hard link is the chunk file).
    store = local.store
    assert isinstance(store, LocalVolume)
    for p, b in files.items():
        if 0 < len(b) <= CHUNK:
            _, (info,) = await m.fileinfo(p)
            chunk_file = store.path_of(ChunkKey(info.chunk.id, info.chunk.version))
            st = chunk_file.stat()
            assert st.st_mtime_ns == (await m.stat(p)).mtime_ns, p
            assert (Path(local.path) / VIEW / p.lstrip("/")).stat().st_ino == st.st_ino, p

    r = await m.migrate_store(s3.path, local.path, move=True)  # nothing left: a no-op
    assert r["ok"] and r["chunks"] == r["migrated"] == 0


@ceph
async def test_copy_mode_and_dry_run(mixed: Master) -> None:
    m = mixed
    files = bodies(8, seed=2)
    await put_all(m, files)
    await m.setgoal("/m", 2, recursive=True)  # goal 2 allows the extra copy
    one = {"/one/a": data(2 * CHUNK + 5, seed=5)}  # goal 1: its copy on S3 is extra
    await m.mkdir("/one")
    await m.setgoal("/one", 1)
    await put_all(m, one)
    local, s3 = vol(m, "local"), vol(m, "s3")
    ids = await all_chunk_ids(m)
    before = await state(m)

    for move in (False, True):
        r = await m.migrate_store(local.id, s3.id, move=move, dry_run=True)
        assert r["dry_run"] and r["ok"] and r["chunks"] == r["to_copy"] == len(ids), r
        assert r["bytes"] == sum(len(b) for b in {**files, **one}.values())
    assert await state(m) == before and not await keys_on(s3)
    assert not local.draining and m.migration is None

    r = await m.migrate_store(local.id, s3.id)
    assert r["ok"] and r["migrated"] == len(ids) and not r["move"], r
    for p in {**files, **one}:
        assert all(k == ["local", "s3"] for k in await kinds(m, p)), p
    assert await keys_on(local) == await keys_on(s3) == ids
    s = await m.status()
    assert s["under_goal"] == 0 and s["over_goal"] == 3  # /one/a's three chunks
    r = await m.migrate_store(local.id, s3.id)  # done already: nothing to do
    assert r["ok"] and r["chunks"] == 0
    await background.replicate_pass(m)  # the extra copies of goal-1 chunks go
    assert await kinds(m, "/one/a") == [["local"]] * 3
    await check_all(m, {**files, **one})


# -- damaged copies (local volumes only) --------------------------------------------------------


async def test_damaged_source_copy_is_not_propagated(tmp_path: Path) -> None:
    two = cluster_cfg(tmp_path, 2, default_goal=2)
    a, solo = data(3 * CHUNK, seed=7), data(CHUNK // 2, seed=8)
    async with Master(two, background=False) as m:
        await m.put("/a", a)
        await m.put("/solo", solo)
        _, infos = await m.fileinfo("/a")
        hurt = infos[1].chunk
        flip(copy_path(m, 0, hurt), 70_000)  # vol0's copy of /a's second chunk
        _, (solo_info,) = await m.fileinfo("/solo")
        for v in (0, 1):  # both copies of /solo: none is good
            flip(copy_path(m, v, solo_info.chunk), 10)
    # A third volume comes; vol0 moves onto it.
    async with Master(cluster_cfg(tmp_path, 3, default_goal=2), background=False) as m:
        r = await m.migrate_store(0, 2, move=True)
        assert not r["ok"] and r["migrated"] == 3 and r["failed"] == 1, r
        ((name, why),) = [(f["chunk"], f["error"]) for f in r["failed_chunks"]]
        assert name == ChunkKey(solo_info.chunk.id, solo_info.chunk.version).name
        assert "no good copy" in why
        assert r["bad_copies"] == 3  # /a's on vol0, both of /solo's
        assert await m.cat("/a") == a
        _, infos = await m.fileinfo("/a")
        for i, info in enumerate(infos):
            assert {cp.volume for cp in info.copies} == {1, 2}
            key = ChunkKey(info.chunk.id, info.chunk.version)
            assert await m.volumes[2].store.get(key) == a[i * CHUNK : (i + 1) * CHUNK]
        with pytest.raises(NotEnoughCopies):
            await m.cat("/solo")  # reported, never served, never copied
        assert not copy_path(m, 2, solo_info.chunk).exists()
        assert await on_volume(m, m.volumes[0]) == 0


# -- online: puts, reads, purges and the replicator during a move ---------------------------------


@ceph
async def test_puts_reads_purges_and_replicator_during_a_move(
    tmp_path: Path, s3_base: S3Config
) -> None:
    """Two local volumes and S3, goal 2 (a local copy and an S3 one): vol0 moves to S3 while
    the background work runs, four writers put files, a reader reads, files are purged."""
    cfg = cluster_cfg(tmp_path, 2, s3_volumes=(fresh(s3_base),), replication_delay=0.0,
                      default_goal=2, work_interval=0.05, health_interval=0.2, scrub_rate=0)
    files = bodies(120, seed=3)
    doomed = [p for p in files if p.endswith(("0.bin", "5.bin"))]
    kept = {p: b for p, b in files.items() if p not in doomed}
    during: dict[str, bytes] = {}
    after: set[str] = set()  # puts not wholly inside the migration: may be placed on vol0
    reads = 0
    async with Master(cfg) as m:  # the background tasks run
        await put_all(m, files)
        vol0, vol1, s3 = vol(m, "local", 0), vol(m, "local", 1), vol(m, "s3")
        migration = asyncio.create_task(m.migrate_store(vol0.path, s3.path, move=True))

        async def writer(w: int) -> None:
            for i in range(w, 60, 4):
                p, b = f"/new/{i:03d}", data(random.Random(i).choice([10, CHUNK + 3]), seed=i)
                running = m.migration is not None
                await m.put(p, b)
                during[p] = b
                if not (running and m.migration is not None):
                    after.add(p)
                if i == 4:  # delete and purge files, some not reached by the migration yet
                    for d in doomed:
                        await m.rm(d)
                    await m.purge()

        async def reader() -> None:
            nonlocal reads
            while not migration.done():
                for p, b in kept.items():
                    assert await m.cat(p) == b, p
                    reads += 1

        await asyncio.gather(*(writer(w) for w in range(4)), reader())
        r = await migration
        print(f"migrated {r['migrated']} in {r['seconds']} s over {r['pass']} passes, "
              f"{r['gone']} purged meanwhile; {reads} reads and {len(during)} puts alongside "
              f"({len(after)} not wholly during it)")
        assert r["ok"] and r["migrated"] > 0 and reads > 0, r
        assert r["pass"] >= 2  # a move looks again until a pass finds nothing
        assert len(after) < len(during)
        for p in during:
            if p not in after:  # written while vol0 was draining: never placed there
                _, infos = await m.fileinfo(p)
                assert all(vol0.id not in {cp.volume for cp in i.copies} for i in infos), p
        for _ in range(200):  # the replicator settles what the puts and the move left
            s = await m.status()
            if s["under_goal"] == s["over_goal"] == 0:
                break
            await asyncio.sleep(0.05)
    # Checked with the background work stopped: no copy is missing, extra or left over.
    async with Master(cfg, background=False) as m:
        await check_all(m, {**kept, **during})
        for p in kept:
            _, infos = await m.fileinfo(p)
            assert all({cp.volume for cp in i.copies} == {vol1.id, s3.id} for i in infos), p
        late = {i.chunk.id for p in after for i in (await m.fileinfo(p))[1]}
        assert await keys_on(m.volumes[vol0.id]) <= late  # only puts after the move on vol0


async def test_a_put_under_way_on_the_source_is_moved_too(tmp_path: Path) -> None:
    """A put that placed a chunk on the source before the move began (it was not draining
    yet) commits while the move runs: the move waits for it and takes its chunk along."""
    async with Master(cluster_cfg(tmp_path, 3, default_goal=1), background=False) as m:
        await put_all(m, bodies(6, seed=6))
        placed, release = asyncio.Event(), asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            yield data(CHUNK, seed=60)  # a whole chunk: placed now, written at the commit
            placed.set()  # asked for more: the first chunk was placed
            await release.wait()
            yield b"tail"

        for v in (1, 2):  # only vol0 can take the first chunk
            m.volumes[v].draining = True
        put = asyncio.create_task(m.put("/slow", body()))
        await placed.wait()
        assert any(vid == 0 for vid, _ in m.inflight)
        for v in (1, 2):
            m.volumes[v].draining = False
        migration = asyncio.create_task(m.migrate_store(0, 1, move=True))
        await asyncio.sleep(0.2)
        assert not migration.done()  # waiting for the write to vol0 under way
        release.set()
        await put
        r = await migration
        assert r["ok"] and r["pass"] >= 3, r
        assert await on_volume(m, m.volumes[0]) == 0 and not await keys_on(m.volumes[0])
        assert await m.cat("/slow") == data(CHUNK, seed=60) + b"tail"
        _, infos = await m.fileinfo("/slow")
        assert 0 not in {cp.volume for i in infos for cp in i.copies}


# -- kill -9 of the master mid-migration -------------------------------------------------------


def mixed_config(tmp: Path, sc: S3Config) -> Path:
    """One local volume and one S3 volume, goal 1, 64 KiB chunks, fast background work."""
    path = write_config(tmp, default_goal=1, chunk_size=65536, scrub_rate=0)
    with path.open("a") as f:  # the volumes: arrays of tables of [cluster], last in the file
        f.write(f'[[cluster.volumes]]\npath = "{tmp}/local"\n' + volume_toml(sc))
    return path


@ceph
@pytest.mark.timeout(180)
async def test_kill9_master_mid_migration(
    tmp_path: Path, s3_base: S3Config, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    cfg_path = mixed_config(tmp_path, fresh(s3_base))
    files = {f"/k/{i // 50}/f{i:03d}": data(random.Random(i).randint(1, 2 * 65536), seed=i)
             for i in range(150)}
    master, url = start_master(cfg_path)
    try:
        async with RemoteCluster(url) as c:
            sem = asyncio.Semaphore(8)

            async def put(p: str, b: bytes) -> None:
                async with sem:
                    await c.put(p, b)

            await asyncio.gather(*(put(p, b) for p, b in files.items()))
            with pytest.raises(InvalidArgument, match="no volume 'nope'"):
                await c.migrate_store("nope", "s3", move=True)
            with pytest.raises(InvalidArgument, match="same volume"):
                await c.migrate_store("s3", "s3", move=True)
            dry = await c.migrate_store("local", "s3", move=True, dry_run=True)
            total = dry["chunks"]
            assert total > 150

            started = asyncio.Event()

            def progress(p: dict[str, Any]) -> None:
                if p["processed"] >= total // 8:
                    started.set()

            run = asyncio.create_task(c.migrate_store("local", "s3", move=True,
                                                      progress=progress))
            await asyncio.wait({run, asyncio.create_task(started.wait())},
                               return_when=asyncio.FIRST_COMPLETED)
            assert not run.done(), "the migration ended before it could be killed"
            master.kill9()
            with pytest.raises(RemoteError):
                await run
    finally:
        if master.p.poll() is None:
            master.kill9()

    # While the master is dead: every file reads back whole, each chunk on exactly one of
    # the two volumes (a move's add and remove are one commit: no half state), every copy
    # recorded is there; what the kill can leave is objects no metadata names (orphans).
    cfg = load(cfg_path).cluster
    async with Master(cfg, background=False) as m:
        local, s3 = vol(m, "local"), vol(m, "s3")
        cats = [m.cat(p) for p in files]
        assert await asyncio.gather(*cats) == list(files.values())
        for p in files:
            for k in await kinds(m, p):
                assert k in (["local"], ["s3"]), (p, k)
        moved, left = await on_volume(m, s3), await on_volume(m, local)
        assert moved > 0 and left > 0 and moved + left == total, (moved, left)
        report = await m.fsck()
        assert report["under_goal"] == report["missing"] == report["bad_copies"] == 0, report

    # Restarted: the same command finishes the move (the CLI, through the running master).
    master, url = start_master(cfg_path)
    try:
        capfdbinary.readouterr()
        argv = ["--config", str(cfg_path), "cluster", "migrate-store", "--from", "local",
                "--to", "s3", "--move", "--json"]
        code = await asyncio.to_thread(main, argv)
        out, err = capfdbinary.readouterr()
        assert code == 0, err
        r = json.loads(out)
        assert r["ok"] and r["migrated"] == left, r
        async with RemoteCluster(url) as c:
            cats = [c.cat(p) for p in files]
            assert await asyncio.gather(*cats) == list(files.values())
            report = await c.fsck()
            assert report["ok"] and report["orphans"] == 0, report
            assert (await c.status())["under_goal"] == 0
    finally:
        assert master.stop() == 0
    leftover = [f for f in (tmp_path / "local").rglob("chunk_*")]
    assert not leftover, leftover[:5]


async def test_client_going_away_stops_it_and_a_rerun_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over the HTTP API: the client goes away mid-migration, the master stops it (the
    chunks under way finish; nothing left draining, marked in flight or orphaned); the same
    request again finishes the job."""
    cfg = cluster_cfg(tmp_path, 3, default_goal=1)
    stop, listening, urls = asyncio.Event(), asyncio.Event(), []

    def ready(url: str) -> None:
        urls.append(url)
        listening.set()

    async with Master(cfg, background=False) as m:
        files = {f"/g/{i:03d}": data(CHUNK // 4, seed=i) for i in range(240)}
        await put_all(m, files)
        server = asyncio.create_task(serve(create_app(m, f"t{id(m)}"), bind("127.0.0.1", 0),
                                           ready, stop))
        await listening.wait()
        dst = m.volumes[1].store
        assert isinstance(dst, LocalVolume)
        put = dst.put

        async def slow_put(key: ChunkKey, b: bytes, *, mtime_ns: int | None = None) -> None:
            await asyncio.sleep(0.1)  # long enough a migration to walk away from
            await put(key, b, mtime_ns=mtime_ns)

        monkeypatch.setattr(dst, "put", slow_put)
        try:
            on0 = await on_volume(m, m.volumes[0])
            going = asyncio.Event()

            def progress(p: dict[str, Any]) -> None:
                if p["processed"] >= 10:
                    going.set()

            async with RemoteCluster(urls[0]) as c:
                run = asyncio.create_task(c.migrate_store(0, 1, move=True, progress=progress))
                await going.wait()
                assert m.migration is not None and m.volumes[0].draining
                run.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await run
            for _ in range(100):  # the master notices the connection closed
                if m.migration is None:
                    break
                await asyncio.sleep(0.02)
            assert m.migration is None and not m.volumes[0].draining
            assert not m.inflight and not m.migrating
            left = await on_volume(m, m.volumes[0])
            assert 0 < left < on0
            monkeypatch.undo()
            async with RemoteCluster(urls[0]) as c:
                r = await c.migrate_store(0, 1, move=True)
            assert r["ok"] and r["migrated"] == left, r
            await check_all(m, files)
            assert await on_volume(m, m.volumes[0]) == 0 and not await keys_on(m.volumes[0])
        finally:
            stop.set()
            await server


# -- bad input --------------------------------------------------------------------------------


async def test_bad_input_gets_a_clear_error_and_changes_nothing(tmp_path: Path) -> None:
    # No view: its thread would be linking into vol2 while the test removes it.
    async with Master(cluster_cfg(tmp_path, 3, view=False), background=False) as m:
        await put_all(m, bodies(4, seed=4))
        shutil.rmtree(tmp_path / "vol2")  # a lost disk: neither source nor destination
        await m.check_volumes()
        before = await state(m)
        cases: list[tuple[Any, Any, str]] = [
            ("9", "1", "no volume '9'"),
            ("nope", "1", "no volume 'nope'"),
            (0, "0", "same volume"),
            (str(tmp_path / "vol1"), 1, "same volume"),
            ("local", 1, "no volume 'local'"),  # three local volumes: the kind is ambiguous
        ]
        for src, dst, msg in cases:
            for dry_run in (False, True):
                with pytest.raises(InvalidArgument, match=msg):
                    await m.migrate_store(src, dst, move=True, dry_run=dry_run)
        with pytest.raises(InvalidArgument, match=r"destination 2 .* cannot take copies: it "
                                                  r"is missing"):
            await m.migrate_store(0, 2, move=True)
        with pytest.raises(InvalidArgument, match=r"source 2 .* is missing"):
            await m.migrate_store(2, 0, move=True)
        assert await state(m) == before
        assert m.migration is None and not any(v.draining for v in m.volumes.values())


def test_cli_in_process(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    cfg = write_config(tmp_path, default_goal=1, chunk_size=65536)
    c = ("--config", str(cfg), "cluster")
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"f{i}").write_bytes(os.urandom(1000 + 30_000 * i))
    assert main([*c, "put", "-r", str(src), "/c"]) == 0
    capfdbinary.readouterr()

    def run(*argv: str) -> tuple[int, str, str]:
        code = main([*c, *argv])
        out, err = capfdbinary.readouterr()
        return code, out.decode("utf-8", "surrogateescape"), err.decode("utf-8", "replace")

    vols = tmp_path / "var" / "volumes"
    for argv, msg in (
        (("--from", "0", "--to", "0"), "same volume"),
        (("--from", "7", "--to", "0"), "no volume '7'"),
        (("--from", str(vols / "vol0"), "--to", str(vols / "vol0") + "/"), "same volume"),
    ):
        code, out, err = run("migrate-store", *argv, "--move")
        assert code == 1 and err.startswith("tandem: InvalidArgument: ") and msg in err, err
        assert len(err.strip().splitlines()) == 1 and not out

    code, out, _ = run("migrate-store", "--from", str(vols / "vol0"), "--to", "1", "--dry-run")
    assert code == 0 and out.startswith("dry run, copy from 0 ")
    code, out, _ = run("migrate-store", "--from", "0", "--to", "1", "--move", "--json")
    r = json.loads(out)
    assert code == 0 and r["ok"] and r["migrated"] > 0 and r["move"], r
    code, out, _ = run("status", "--json")
    assert json.loads(out)["under_goal"] == 0

    async def damage() -> tuple[str, str]:
        """Damage the only copy of a chunk on vol1: (its file, the chunk's name)."""
        async with Master(load(cfg).cluster, background=False) as m:
            for e in await m.walk("/c"):
                if e.is_dir:
                    continue
                _, infos = await m.fileinfo(e.path)
                for info in infos:
                    assert 0 not in {cp.volume for cp in info.copies}
                    if [cp.volume for cp in info.copies] == [1]:
                        flip(copy_path(m, 1, info.chunk), 5)
                        return e.path.decode(), ChunkKey(info.chunk.id, info.chunk.version).name
        raise AssertionError("no chunk on vol1")

    hurt, name = asyncio.run(damage())
    code, out, _ = run("migrate-store", "--from", "1", "--to", "0", "--move")
    assert code == 1, out
    lines = out.splitlines()
    assert lines[0].startswith("move from 1 ") and "failed 1" in lines[0], out
    failed = [line for line in lines if line.startswith("failed: ")]
    assert len(failed) == 1 and name in failed[0] and "no good copy" in failed[0], out
    for p in sorted(src.iterdir()):
        code, body, _ = run("cat", f"/c/{p.name}")
        if f"/c/{p.name}" != hurt:
            assert code == 0 and body.encode("utf-8", "surrogateescape") == p.read_bytes()


"""The cluster master in process: real SQLite, real volume directories, real tmpfs mounts.

Background work is off (``background=False``) and its passes are called directly, so every
test is deterministic; one test runs the real background loop end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import random
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster import background, paths, schema
from cluster.changelog import ChangeFeed
from cluster.config import ClusterConfig, VolumeConfig
from cluster.errors import (
    AlreadyExists,
    ChangelogTrimmed,
    ClusterError,
    DirectoryNotEmpty,
    InvalidArgument,
    InvalidPath,
    IsADirectory,
    MasterBusy,
    MetadataError,
    NotADirectory,
    NotFound,
)
from cluster.master import Master
from cluster.meta import INODE_ID_BLOCK, Chunk, Meta
from cluster.store import ChunkKey
from cluster.view import VIEW
from cluster.volume import LocalVolume
from origin.config import load

CHUNK = 2 * 65536


def data(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def cluster_cfg(tmp_path: Path, volumes: int | list[Path] = 3, **kw: Any) -> ClusterConfig:
    dirs = [tmp_path / f"vol{i}" for i in range(volumes)] if isinstance(volumes, int) else volumes
    return dataclasses.replace(
        load(None).cluster,
        meta_dir=tmp_path / "meta",
        volumes=tuple(VolumeConfig(p) for p in dirs),
        **{"chunk_size": CHUNK, **kw},
    )


@pytest.fixture
async def m(tmp_path: Path) -> AsyncIterator[Master]:
    async with Master(cluster_cfg(tmp_path), background=False) as master:
        yield master


def copy_path(m: Master, volume: int, c: Chunk) -> Path:
    """Where volume ``volume`` keeps its copy of chunk ``c``."""
    return LocalVolume(Path(m.volumes[volume].path)).path_of(ChunkKey(c.id, c.version))


def chunk_files(m: Master) -> set[Path]:
    return {
        p
        for v in m.volumes.values()
        if Path(v.path).is_dir()
        for p in Path(v.path).rglob("*")
        if p.is_file() and p.name != ".tandem-volume"
        and p.relative_to(v.path).parts[0] != VIEW  # links, not chunk files: test_view.py
    }


async def state(m: Master) -> tuple[Any, ...]:
    """Everything a failed operation must leave as it was."""
    tree = [(e.path, e.kind, e.size, e.hash, e.goal, e.trash_time) for e in await m.walk("/")]
    status = await m.status()
    trash = [(t.id, t.path) for t in await m.trash_list()]
    return tree, status["changelog_last"], status["chunks"], trash, chunk_files(m)


async def copies(m: Master, path: str | bytes) -> list[set[int]]:
    """Per chunk of the file, the set of volume ids the metadata says hold a copy."""
    _, infos = await m.fileinfo(path)
    return [{cp.volume for cp in info.copies} for info in infos]


async def check_refs(m: Master) -> list[str]:
    return await m._db(m.meta.check_refs)


async def replicate(m: Master, passes: int) -> None:
    """Run replication passes: each pass moves every chunk one copy toward its goal."""
    for _ in range(passes):
        await background.replicate_pass(m)


# -- put / read ------------------------------------------------------------------------------------


async def test_put_cat_and_ranged_reads(m: Master) -> None:
    body = data(3 * CHUNK + 1000, seed=1)
    e = await m.put("/site/img/a.bin", body)
    assert e.size == len(body)
    assert e.hash == hashlib.sha256(body).digest()
    assert not e.is_dir
    assert await m.cat("/site/img/a.bin") == body
    cuts = [
        (0, 1),
        (CHUNK - 1, 2),
        (CHUNK, CHUNK),
        (CHUNK - 5, CHUNK + 10),
        (1, 3 * CHUNK),
        (3 * CHUNK, 1000),
        (len(body) - 1, 50),
        (len(body), 10),
        (7, 0),
        (0, None),
        (2 * CHUNK + 3, None),
    ]
    for off, n in cuts:
        want = body[off:] if n is None else body[off : off + n]
        assert await m.cat("/site/img/a.bin", off, n) == want, (off, n)
    pieces = [p async for p in m.read("/site/img/a.bin", 10)]
    assert b"".join(pieces) == body[10:] and all(len(p) <= CHUNK for p in pieces)
    # Four chunks, each with two copies on distinct volumes, holding exactly those bytes.
    _, infos = await m.fileinfo("/site/img/a.bin")
    assert [i.chunk.size for i in infos] == [CHUNK, CHUNK, CHUNK, 1000]
    pos = 0
    for info in infos:
        assert len({cp.volume for cp in info.copies}) == 2
        for cp in info.copies:
            assert (
                copy_path(m, cp.volume, info.chunk).read_bytes()
                == body[pos : pos + info.chunk.size]
            )
        pos += info.chunk.size
    with pytest.raises(InvalidArgument):
        await m.cat("/site/img/a.bin", -1, 5)
    with pytest.raises(IsADirectory):
        await m.cat("/site")
    with pytest.raises(NotFound):
        await m.cat("/site/img/nope")


async def test_empty_and_streamed_puts(m: Master) -> None:
    e = await m.put("/empty", b"")
    assert (e.size, e.hash, e.chunks) == (0, hashlib.sha256(b"").digest(), ())
    assert await m.cat("/empty") == b""
    body = data(2 * CHUNK + 17, seed=2)

    async def source() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 50_000):  # pieces that do not line up with chunks
            yield body[i : i + 50_000]

    e = await m.put("/streamed", source(), mode=0o600, mtime_ns=1_700_000_000_123_456_789)
    assert e.hash == hashlib.sha256(body).digest()
    assert (e.mode, e.mtime_ns, len(e.chunks)) == (0o600, 1_700_000_000_123_456_789, 3)
    assert await m.cat("/streamed") == body


async def test_overwrite_moves_old_version_to_trash(m: Master) -> None:
    old, new = data(CHUNK + 5, seed=3), data(100, seed=4)
    await m.put("/f", old)
    await m.put("/f", new)
    assert await m.cat("/f") == new
    (t,) = await m.trash_list()
    assert (t.path, t.size, t.hash) == (b"/f", len(old), hashlib.sha256(old).digest())
    await m.undelete(t.id, "/f.old")
    assert await m.cat("/f.old") == old
    assert await m.trash_list() == []
    assert await check_refs(m) == []


async def test_readers_see_old_or_new_never_a_mix(m: Master) -> None:
    versions = [data(n, seed=n) for n in (3 * CHUNK + 5, CHUNK // 2, 2 * CHUNK, 4 * CHUNK + 77)]
    known = {hashlib.sha256(v).digest(): i for i, v in enumerate(versions)}
    await m.put("/hot", versions[0])
    writing = True
    seen: list[int] = []

    async def writer() -> None:
        nonlocal writing
        for i in range(24):
            await m.put("/hot", versions[(i + 1) % len(versions)])
            await asyncio.sleep(0)
        writing = False

    async def reader() -> None:
        while writing:
            got = await m.cat("/hot")
            digest = hashlib.sha256(got).digest()
            assert digest in known, f"read {len(got)} bytes that match no version"
            seen.append(known[digest])

    await asyncio.gather(writer(), reader(), reader(), reader())
    assert len(seen) >= 6
    assert len(set(seen)) >= 2, "readers never overlapped an overwrite"
    assert await m.cat("/hot") == versions[24 % len(versions)]


# -- trash -----------------------------------------------------------------------------------------


async def test_rm_trash_undelete_purge(m: Master) -> None:
    body = data(2 * CHUNK + 9, seed=5)
    put = await m.put("/t/a.bin", body, mode=0o640)
    files = chunk_files(m)
    assert len(files) == 3 * 2
    assert await m.rm("/t/a.bin") == 1
    with pytest.raises(NotFound):
        await m.stat("/t/a.bin")
    (t,) = await m.trash_list()
    assert (t.path, t.size, t.hash, t.mtime_ns) == (b"/t/a.bin", len(body), put.hash, put.mtime_ns)
    assert t.expires - t.deleted == m.cfg.default_trash_time
    assert chunk_files(m) == files  # trashed, not deleted
    back = await m.undelete(t.id)
    assert await m.cat("/t/a.bin") == body
    assert (back.mode, back.mtime_ns, back.hash) == (0o640, put.mtime_ns, put.hash)
    assert await m.trash_list() == []
    await m.rm("/t", recursive=True)
    (t,) = await m.trash_list()
    assert await m.purge([t.id]) == 1
    assert await m.trash_list() == []
    assert chunk_files(m) == set()  # unreferenced: every copy is gone from the volumes
    assert (await m.status())["chunks"] == 0
    with pytest.raises(NotFound):
        await m.undelete(t.id)
    assert await check_refs(m) == []


async def test_undelete_onto_existing_path_changes_nothing(m: Master) -> None:
    v1, v2 = b"first version", b"second version"
    await m.put("/a", v1)
    await m.rm("/a")
    await m.put("/a", v2)
    (t,) = await m.trash_list()
    before = await state(m)
    with pytest.raises(AlreadyExists, match="exists"):
        await m.undelete(t.id)
    assert await state(m) == before
    assert await m.cat("/a") == v2
    await m.undelete(t.id, "/restored/a")
    assert await m.cat("/restored/a") == v1


async def test_trash_time_and_expired_purge(m: Master) -> None:
    await m.mkdir("/scratch")
    assert await m.settrashtime("/scratch", 0) == 1
    assert (await m.stat("/scratch")).trash_time == 0
    await m.put("/scratch/tmp", b"x" * 10)
    await m.put("/keep", b"y" * 10)
    assert (await m.stat("/scratch/tmp")).effective_trash_time == 0
    await m.rm("/scratch/tmp")
    await m.rm("/keep")
    assert await m.purge(expired=True) == 1
    assert [t.path for t in await m.trash_list()] == [b"/keep"]
    with pytest.raises(InvalidArgument):
        await m.settrashtime("/scratch", -1)
    await background.purge_pass(m)
    assert [t.path for t in await m.trash_list()] == [b"/keep"]
    assert await check_refs(m) == []


# -- snapshots -------------------------------------------------------------------------------------


async def test_snapshot_is_copy_on_write(m: Master) -> None:
    a, b = data(2 * CHUNK + 1, seed=6), data(CHUNK + 3, seed=7)
    await m.put("/s/a", a)
    await m.put("/s/sub/b", b)
    assert await m.snapshot("/s", "/snap") == 2
    assert await m.cat("/snap/a") == a and await m.cat("/snap/sub/b") == b
    ea, eb = await m.stat("/s/a"), await m.stat("/snap/a")
    assert ea.chunks == eb.chunks  # shared, not copied
    _, infos = await m.fileinfo("/snap/a")
    assert all(i.chunk.refs == 2 for i in infos)
    files = chunk_files(m)
    b_files = {
        copy_path(m, cp.volume, i.chunk)
        for i in (await m.fileinfo("/s/sub/b"))[1]
        for cp in i.copies
    }

    # Changing the snapshot leaves the original intact, and the other way round.
    await m.put("/snap/a", b"new a")
    assert await m.cat("/s/a") == a and await m.cat("/snap/a") == b"new a"
    await m.rm("/s/sub/b")
    assert await m.cat("/snap/sub/b") == b
    assert await m.purge() == 2  # old /snap/a and /s/sub/b: their chunks are still used
    assert files <= chunk_files(m)
    assert await m.cat("/s/a") == a and await m.cat("/snap/sub/b") == b

    # The last user gone, the chunk files go too.
    await m.rm("/snap", recursive=True)
    await m.purge()
    assert not (b_files & chunk_files(m))
    assert all(p.exists() for p in files - b_files)  # /s/a's chunks are still used
    assert await m.cat("/s/a") == a
    assert await check_refs(m) == []

    before = await state(m)
    with pytest.raises(AlreadyExists):
        await m.snapshot("/s/a", "/s/sub")
    with pytest.raises(InvalidArgument, match="into itself"):
        await m.snapshot("/s", "/s/inner")
    with pytest.raises(NotFound):
        await m.snapshot("/nothing", "/x")
    assert await state(m) == before


async def test_snapshot_of_a_file(m: Master) -> None:
    await m.put("/one", b"content")
    assert await m.snapshot("/one", "/copies/one") == 1
    await m.rm("/one")
    await m.purge()
    assert await m.cat("/copies/one") == b"content"
    assert await check_refs(m) == []


# -- goals -----------------------------------------------------------------------------------------


async def test_setgoal_recursive_and_replication(m: Master) -> None:
    await m.mkdir("/g/x/y")
    bodies = {p: data(CHUNK + 1, seed=i) for i, p in enumerate(["/g/a", "/g/x/b", "/g/x/y/c"])}
    for p, b in bodies.items():
        await m.put(p, b)
    await m.put("/other", b"outside")
    assert await m.setgoal("/g", 3, recursive=True) == 6  # /g, a, x, b, y, c
    for e in await m.walk("/g"):
        assert (e.goal, e.effective_goal) == (3, 3), e.path
    assert (await m.stat("/other")).goal is None
    assert (await m.stat("/other")).effective_goal == 2
    for p in bodies:
        assert (await m.checkfile(p))["under_goal"] == 2
    await background.replicate_pass(m)
    for p, b in bodies.items():
        assert await copies(m, p) == [{0, 1, 2}, {0, 1, 2}]
        assert (await m.checkfile(p))["under_goal"] == 0
        assert await m.cat(p) == b
    assert [len(c) for c in await copies(m, "/other")] == [2]

    assert await m.setgoal("/g", 1, recursive=True) == 6
    await replicate(m, 2)  # a pass moves a chunk one copy toward its goal: 3 -> 1 takes two
    for p, b in bodies.items():
        _, infos = await m.fileinfo(p)
        for info in infos:
            assert len(info.copies) == 1
            on_disk = [v for v in m.volumes if copy_path(m, v, info.chunk).exists()]
            assert on_disk == [info.copies[0].volume]
        assert await m.cat(p) == b
    status = await m.status()
    assert (status["under_goal"], status["over_goal"]) == (0, 0)
    assert status["background"]["copies_added"] == 6
    assert status["background"]["copies_removed"] == 12


async def test_goal_set_on_a_directory_is_inherited(m: Master) -> None:
    await m.put("/h/existing", data(10, seed=1))
    assert await m.setgoal("/h", 3) == 1
    h = await m.stat("/h")
    assert (h.goal, h.effective_goal) == (3, 3)
    old = await m.stat("/h/existing")
    assert (old.goal, old.effective_goal) == (None, 3)
    await m.put("/h/new", data(CHUNK + 1, seed=2))
    await m.put("/h/deep/er/file", b"z")
    for p in ("/h/new", "/h/deep/er/file"):
        e = await m.stat(p)
        assert (e.goal, e.effective_goal) == (None, 3)
        assert all(len(c) == 3 for c in await copies(m, p))  # written with 3 copies at once
    await background.replicate_pass(m)
    assert await copies(m, "/h/existing") == [{0, 1, 2}]
    # A file's own goal wins over its directory's.
    await m.setgoal("/h/new", 1)
    assert (await m.stat("/h/new")).goal == 1
    await replicate(m, 2)
    assert all(len(c) == 1 for c in await copies(m, "/h/new"))
    assert (await m.stat("/h/existing")).effective_goal == 3
    before = await state(m)
    for bad in (0, 10, -1):
        with pytest.raises(InvalidArgument, match="goal"):
            await m.setgoal("/h", bad)
    with pytest.raises(NotFound):
        await m.setgoal("/nope", 2)
    assert await state(m) == before


# -- mv --------------------------------------------------------------------------------------------


async def test_mv_files_and_directories(m: Master) -> None:
    a = data(CHUNK + 2, seed=8)
    await m.put("/m/a", a)
    await m.mv("/m/a", "/n/deep/a")  # a new parent is made
    assert await m.cat("/n/deep/a") == a
    with pytest.raises(NotFound):
        await m.stat("/m/a")
    await m.mv("/n", "/o/n")  # a directory, with everything under it
    assert await m.cat("/o/n/deep/a") == a
    assert [e.path for e in await m.walk("/o")] == [b"/o", b"/o/n", b"/o/n/deep", b"/o/n/deep/a"]
    with pytest.raises(NotFound):
        await m.stat("/n")

    await m.put("/p1", b"one")
    await m.put("/p2", b"two")
    await m.mv("/p1", "/p2")  # file over file: the old one goes to trash
    assert await m.cat("/p2") == b"one"
    assert [(t.path, t.size) for t in await m.trash_list()] == [(b"/p2", 3)]

    before = await state(m)
    with pytest.raises(InvalidArgument, match="into itself"):
        await m.mv("/o", "/o/n/x")
    with pytest.raises(AlreadyExists):
        await m.mv("/p2", "/o")  # a file over a directory
    with pytest.raises(AlreadyExists):
        await m.mv("/o/n", "/m")  # a directory over a directory
    with pytest.raises(NotFound):
        await m.mv("/missing", "/x")
    with pytest.raises(NotADirectory):
        await m.mv("/o", "/p2/o")
    with pytest.raises(InvalidArgument):
        await m.mv("/", "/root2")
    assert await state(m) == before
    assert await check_refs(m) == []


async def test_writer_directory_cache_is_never_stale(m: Master) -> None:
    """Puts reuse the directories earlier puts resolved (``Meta._mkdirs``); whatever removes,
    moves or re-goals a directory, or rolls back one just made, must not leave them cached."""
    await m.put("/c/d/f1", b"1")
    await m.rm("/c", recursive=True)
    await m.put("/c/d/f2", b"2")  # /c and /c/d are made again, not reused
    assert [e.path for e in await m.walk("/c")] == [b"/c", b"/c/d", b"/c/d/f2"]

    await m.mv("/c", "/e")
    await m.put("/c/d/f3", b"3")
    assert [e.path for e in await m.walk("/c")] == [b"/c", b"/c/d", b"/c/d/f3"]
    assert await m.cat("/e/d/f2") == b"2"

    await m.setgoal("/c", 3)
    assert (await m.put("/c/d/f4", b"4")).effective_goal == 3

    def made_then_undone() -> None:  # a directory made in a savepoint that rolls back
        with m.meta.transaction(), contextlib.suppress(NotFound), m.meta.savepoint():
            m.meta.mkdir((b"r", b"s"))
            raise NotFound("undo")

    await m._db(made_then_undone)
    with pytest.raises(NotFound):
        await m.stat("/r")
    await m.put("/r/s/f", b"5")
    assert await m.cat("/r/s/f") == b"5"
    assert [e.path for e in await m.walk("/r")] == [b"/r", b"/r/s", b"/r/s/f"]
    assert await check_refs(m) == []


def test_inode_ids_reserved_by_a_rolled_back_transaction_are_never_reused(tmp_path: Path) -> None:
    """Inode ids come from blocks reserved in the counter (``Meta._inode_id``). A block
    reserved by a transaction that rolls back is forgotten with it: the counter went back,
    so keeping the block would hand the same ids out twice."""
    conn = schema.connect(tmp_path / "meta.db")
    schema.init(conn)
    meta = Meta(conn, 1, 86400)
    with contextlib.suppress(NotFound), meta.transaction():
        meta.mkdir((b"gone",), 0o755)  # reserves the block, then rolls back
        raise NotFound("undo")
    with contextlib.suppress(NotFound), meta.transaction(), meta.savepoint():
        meta.mkdir((b"gone",), 0o755)  # the same, in a savepoint
        raise NotFound("undo")
    with meta.transaction():
        for i in range(INODE_ID_BLOCK + 50):
            meta.mkdir((b"d%03d" % i,), 0o755)
    ids = [r[0] for r in conn.execute("SELECT id FROM inode")]
    assert len(ids) == INODE_ID_BLOCK + 51 and len(set(ids)) == len(ids)
    conn.close()


async def test_reader_directory_cache_outlives_puts_not_directory_changes(m: Master) -> None:
    """A reader (the master's own, and an origin's) keeps the directories it resolved while
    files come and go, and forgets them as soon as any directory is removed, moved or
    re-goaled (the ``dirs`` counter's triggers, whatever code path does it)."""
    r = m.reader
    assert r is not None

    def stat(path: str) -> Any:
        return r.stat(paths.parse(path))

    await m.put("/a/b/f1", b"1")
    assert stat("/a/b/f1").size == 1
    await m.put("/a/b/f2", b"22")  # a commit that touches no directory
    assert stat("/a/b/f2").size == 2
    assert (b"a", b"b") in (r._dirs or {}), "a put must not empty the readers' caches"

    await m.mv("/a/b", "/x")
    with pytest.raises(NotFound):
        stat("/a/b/f1")
    assert stat("/x/f1").size == 1
    await m.setgoal("/x", 3)
    assert stat("/x/f1").effective_goal == 3
    await m.settrashtime("/x", 7)
    assert stat("/x/f2").effective_trash_time == 7
    await m.rm("/x", recursive=True)
    with pytest.raises(NotFound):
        stat("/x/f1")
    await m.put("/x/f3", b"333")  # the same name again: a new directory, a new id
    assert stat("/x/f3").size == 3
    await m.mv("/x", "/a/b")  # a directory moved onto a path a cached lookup once held
    assert stat("/a/b/f3").size == 3


async def test_a_reader_resolves_a_new_folder_from_its_deepest_cached_ancestor(m: Master) -> None:
    """A lookup under folders the reader has not seen resolves only the levels its cache
    lacks and caches each of them; a missing level or a file on the way is named."""
    r = m.reader
    assert r is not None
    await m.put("/s/t/u/f", b"1")
    await m.setgoal("/s/t", 3)
    assert r.stat(paths.parse("/s/t/u/f")).effective_goal == 3
    assert {(b"s",), (b"s", b"t"), (b"s", b"t", b"u")} <= set(r._dirs or {})
    await m.put("/s/t/v/f", b"2")
    r._dirs = {k: v for k, v in (r._dirs or {}).items() if k != (b"s", b"t", b"u")}
    assert r.stat(paths.parse("/s/t/v/f")).effective_goal == 3
    assert (b"s", b"t", b"v") in (r._dirs or {})
    with pytest.raises(NotFound, match=r"no such directory: /s/t/w$"):
        r.stat(paths.parse("/s/t/w/x/f"))
    assert r.put_context(paths.parse("/s/t/w/x/f")) == (3, None)
    with pytest.raises(NotADirectory, match=r"not a directory: /s/t/v/f$"):
        r.stat(paths.parse("/s/t/v/f/g"))


async def test_a_puts_lookup_answers_the_same_on_the_writer_and_the_reader(m: Master) -> None:
    """A put looks up its goal and the version it replaces on the writer's connection when
    nothing uses it (through the directories the writer resolved, ``Meta._made``), else on
    the reader's: both must give the same answer, whatever changed the directories."""
    r = m.reader
    assert r is not None
    probes = [
        "/a/b/new", "/a/b/f1", "/a/b/own", "/a/new/f", "/x/f1", "/x/own", "/f0", "/z/y/x",
        "/a/b/c/d/new", "/x/own/f", "/f0/g",
    ]

    async def same() -> None:
        async with m._conn:  # as a put sees it: nothing else is using the writer
            for p in probes:
                parts = paths.parse(p)
                assert m.meta.put_context(parts) == r.put_context(parts), p

    await m.put("/f0", b"0")
    await m.put("/a/b/f1", b"1")
    await m.put("/a/b/own", b"2")
    await m.setgoal("/a/b/own", 3)
    await same()
    await m.setgoal("/a", 2, recursive=False)
    await same()
    await m.mv("/a/b", "/x")
    await same()
    await m.put("/a/b/f1", b"again")  # /a/b made again, a new id
    await same()
    await m.settrashtime("/x", 7)
    await m.rm("/a", recursive=True)
    await same()
    assert (m.meta.put_context(paths.parse("/x/own")))[0] == 3  # a file's own goal


# -- bad input -------------------------------------------------------------------------------------


async def test_bad_input_gets_a_clear_error_and_changes_nothing(m: Master) -> None:
    await m.put("/dir/file", b"content")
    await m.put("/dir/sub/other", data(CHUNK + 1, seed=9))
    await m.rm("/dir/sub/other")
    before = await state(m)
    long_path = "/" + "/".join(["d" * 200] * 20) + "/" + "x" * 75
    assert len(long_path) == 4096
    body = data(CHUNK + 1, seed=10)
    cases: list[tuple[Any, type[ClusterError], str]] = [
        (lambda: m.put("/dir/../etc/passwd", body), InvalidPath, "'..'"),
        (lambda: m.put("/../etc/passwd", body), InvalidPath, "'..'"),
        (lambda: m.put("/dir/./file", body), InvalidPath, "'.'"),
        (lambda: m.put(b"/dir/a\0b", body), InvalidPath, "NUL"),
        (lambda: m.put("/dir//file", body), InvalidPath, "empty component"),
        (lambda: m.put("/dir/" + "n" * 256, body), InvalidPath, "256 bytes"),
        (lambda: m.put(long_path, body), InvalidPath, "4096 bytes"),
        (lambda: m.put("/dir", body), IsADirectory, "/dir"),
        (lambda: m.put("/", body), IsADirectory, "root"),
        (lambda: m.put("/dir/file/x", body), NotADirectory, "/dir/file"),
        (lambda: m.put("/dir/new", body, mode=0o17777), InvalidArgument, "mode"),
        (lambda: m.mkdir("/dir/file"), AlreadyExists, "/dir/file"),
        (lambda: m.mkdir("/dir/file/sub"), NotADirectory, "/dir/file"),
        (lambda: m.mkdir("/dir/.."), InvalidPath, "'..'"),
        (lambda: m.rm("/dir"), DirectoryNotEmpty, "-r"),
        (lambda: m.rm("/"), InvalidArgument, "root"),
        (lambda: m.rm("/dir/nope"), NotFound, "/dir/nope"),
        (lambda: m.rm("/dir/file/x"), NotADirectory, "/dir/file"),
        (lambda: m.mv("/dir/file", "/../x"), InvalidPath, "'..'"),
        (lambda: m.mv("/dir/file", "/dir/sub"), AlreadyExists, "/dir/sub"),
        (lambda: m.snapshot("/dir", "/dir/sub/snap"), InvalidArgument, "into itself"),
        (lambda: m.setgoal("/dir", 0), InvalidArgument, "goal"),
        (lambda: m.setgoal("/dir/" + "n" * 300, 2), InvalidPath, "300 bytes"),
        (lambda: m.settrashtime("/dir", -5), InvalidArgument, "trash time"),
        (lambda: m.undelete(987654), NotFound, "987654"),
        (lambda: m.purge([987654]), NotFound, "987654"),
        (lambda: m.cat("/dir/file", -1), InvalidArgument, "range"),
        (lambda: m.cat("/dir/\xff"), NotFound, "/dir/"),
    ]
    for call, exc, words in cases:
        with pytest.raises(exc) as info:
            await call()
        assert words in str(info.value), (str(info.value), words)
        assert await state(m) == before, f"{exc.__name__} ({info.value}) changed something"
    assert await m.cat("/dir/file") == b"content"


async def test_non_utf8_names_round_trip(m: Master) -> None:
    name = b"/x/\xff\xfe.jpg"
    await m.put(name, b"jpeg bytes")
    assert [e.path for e in await m.ls("/x")] == [name]
    assert await m.cat(name) == b"jpeg bytes"
    assert (await m.stat(name)).path == name
    assert [e.path for e in await m.walk(b"/x")] == [b"/x", name]
    await m.mv(name, b"/x/\x80\x81 caf\xe9.jpg")
    assert [e.path for e in await m.ls("/x")] == [b"/x/\x80\x81 caf\xe9.jpg"]
    ops = [(c.op, c.path, c.dest) for c in await m.changes(0)]
    assert ops[-2:] == [("put", name, None), ("mv", name, b"/x/\x80\x81 caf\xe9.jpg")]
    await m.rm(b"/x/\x80\x81 caf\xe9.jpg")
    assert [t.path for t in await m.trash_list()] == [b"/x/\x80\x81 caf\xe9.jpg"]


# -- damaged copies --------------------------------------------------------------------------------


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        (b,) = f.read(1)
        f.seek(offset)
        f.write(bytes([b ^ 0x5A]))


async def test_a_bad_copy_is_never_served_and_is_replaced(m: Master) -> None:
    body = data(2 * CHUNK, seed=11)
    await m.put("/c", body)
    _, infos = await m.fileinfo("/c")
    first = infos[0].chunk
    bad_vol = sorted(cp.volume for cp in infos[0].copies)[0]
    flip(copy_path(m, bad_vol, first), 70_000)
    # Reads rotate among copies: a put between two reads makes them start on different copies.
    for i in range(2):
        assert await m.cat("/c") == body
        await m.put(f"/rotate{i}", b"r")
    assert m.stats["bad_copies_dropped"] == 1
    after = await copies(m, "/c")
    assert bad_vol not in after[0] and len(after[0]) == 1
    assert not copy_path(m, bad_vol, first).exists()
    assert (await m.checkfile("/c"))["under_goal"] == 1
    await background.replicate_pass(m)
    after = await copies(m, "/c")
    assert len(after[0]) == 2
    for v in after[0]:  # every copy now passes its CRC check
        assert await m.volumes[v].store.get(ChunkKey(first.id, first.version)) == body[:CHUNK]
    assert (await m.checkfile("/c"))["under_goal"] == 0
    assert await m.cat("/c") == body


@pytest.mark.parametrize("change", ["longer", "shorter"])
async def test_a_copy_of_the_wrong_length_is_never_served(m: Master, change: str) -> None:
    """A whole chunk is read "to the end" (on S3 a plain GET, not a ranged one): a copy with
    bytes appended, or cut short, is a bad copy — never served, dropped — whatever its CRCs."""
    body = data(CHUNK + 5000, seed=13)
    await m.put("/w", body)
    _, infos = await m.fileinfo("/w")
    last = infos[1].chunk
    bad_vol = sorted(cp.volume for cp in infos[1].copies)[0]
    path = copy_path(m, bad_vol, last)
    if change == "longer":
        with open(path, "ab") as f:
            f.write(b"appended garbage")
    else:
        os.truncate(path, 4000)
    for i in range(2):  # reads rotate among the copies (see above)
        assert await m.cat("/w") == body
        assert await m.cat("/w", CHUNK + 10, 100) == body[CHUNK + 10 : CHUNK + 110]
        await m.put(f"/rotate{i}", b"r")
    assert bad_vol not in (await copies(m, "/w"))[1]
    assert m.stats["bad_copies_dropped"] == 1

async def test_scrub_finds_and_repairs_a_bad_copy(tmp_path: Path) -> None:
    cfg = cluster_cfg(tmp_path, scrub_rate=1 << 40)
    async with Master(cfg, background=False) as m:
        body = data(3 * CHUNK, seed=12)
        await m.put("/s", body)
        _, infos = await m.fileinfo("/s")
        target = infos[1]
        vol = target.copies[0].volume
        flip(copy_path(m, vol, target.chunk), 5)
        await background.scrub_pass(m)
        assert m.stats["scrub_bad_copies"] == 1
        assert m.stats["scrub_passes"] == 1
        assert m.stats["scrubbed_bytes"] == 6 * CHUNK
        now = await copies(m, "/s")
        assert all(len(c) == 2 for c in now)
        for info, vols in zip(infos, now, strict=True):
            for v in vols:
                got = await m.volumes[v].store.get(ChunkKey(info.chunk.id, info.chunk.version))
                assert (
                    hashlib.sha256(got).digest()
                    == hashlib.sha256(body[infos.index(info) * CHUNK :][:CHUNK]).digest()
                )
        await background.scrub_pass(m)
        assert m.stats["scrub_bad_copies"] == 1  # nothing new found
        assert await m.cat("/s") == body


# -- a lost volume ---------------------------------------------------------------------------------


async def test_lost_volume(m: Master) -> None:
    bodies = {f"/l/{i}": data(CHUNK + 100, seed=20 + i) for i in range(6)}
    for p, b in bodies.items():
        await m.put(p, b)
    lost = 1
    hit = {p: sum(lost in c for c in await copies(m, p)) for p in bodies}  # chunks it held
    on_lost = [p for p in bodies if hit[p]]
    assert on_lost, "no file had a copy on the volume to be lost"
    shutil.rmtree(m.volumes[lost].path)

    for p, b in bodies.items():
        assert await m.cat(p) == b
    await m.check_volumes()
    assert m.volumes[lost].state == "missing"
    vols = {v["id"]: v for v in (await m.status())["volumes"]}
    assert vols[lost]["state"] == "missing" and vols[lost]["reason"]
    for p in bodies:
        assert (await m.checkfile(p))["under_goal"] == hit[p]

    # Within the replication delay nothing is copied (the disk may come back).
    assert m.cfg.replication_delay > 0
    await background.replicate_pass(m)
    assert "copies_added" not in m.stats
    m.cfg = dataclasses.replace(m.cfg, replication_delay=0.0)
    await background.replicate_pass(m)
    for p, b in bodies.items():
        assert (await m.checkfile(p))["under_goal"] == 0
        assert await m.cat(p) == b
    assert (await m.status())["under_goal"] == 0
    assert m.stats["copies_added"] == sum(hit.values())

    # An empty directory where the volume was is a replaced disk: adopted, holding nothing.
    os.mkdir(m.volumes[lost].path)
    await m.check_volumes()
    assert m.volumes[lost].state == "ok"
    for p in bodies:
        assert all(lost not in c for c in await copies(m, p))
    await m.put("/l/after", data(3 * CHUNK, seed=99))
    assert await m.cat("/l/after") == data(3 * CHUNK, seed=99)


# -- full and read-only volumes (real tmpfs mounts) ------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except FileNotFoundError:
        pytest.skip("no mount command here")
    if r.returncode != 0:
        err = r.stderr.strip()
        if os.geteuid() != 0 or "permission" in err.lower() or "superuser" in err.lower():
            pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {err}")
        pytest.fail(f"mount tmpfs failed: {err}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True, timeout=10)


def fill(folder: Path) -> Path:
    """A file that takes every free byte of ``folder``'s filesystem."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
    return filler


async def test_a_commit_on_a_full_metadata_disk_fails_whole_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """The group commit's COMMIT (its WAL write and fsync) fails on a full disk: every put of
    that batch fails with a clear error and none of them is visible; the files acknowledged
    before stay; once there is room again, puts commit, and all of it holds after a restart."""
    with tmpfs(tmp_path / "meta", "4m") as meta:
        cfg = dataclasses.replace(cluster_cfg(tmp_path), meta_dir=meta)
        kept = {f"/kept/{i}": data(300 + i, seed=i) for i in range(20)}
        async with Master(cfg, background=False) as m:
            for p, b in kept.items():
                await m.put(p, b)
            copies = chunk_files(m)
            filler = fill(meta)
            outcome = await asyncio.gather(
                *(m.put(f"/lost/{i}", data(5000, seed=i)) for i in range(8)),
                return_exceptions=True,
            )
            assert all(isinstance(o, MetadataError) for o in outcome), outcome
            assert "full" in str(outcome[0])
            assert chunk_files(m) == copies  # the failed puts' copies are removed
            filler.unlink()
            assert [e.path for e in await m.ls("/")] == [b"/kept"]
            await m.put("/after", b"room again")
            assert await check_refs(m) == []
        async with Master(cfg, background=False) as m:
            assert sorted(e.path for e in await m.ls("/")) == [b"/after", b"/kept"]
            for p, b in kept.items():
                assert await m.cat(p) == b
            assert await m.cat("/after") == b"room again"


async def test_full_volume(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "1m") as small:
        cfg = cluster_cfg(tmp_path, volumes=[small / "vol", tmp_path / "v1", tmp_path / "v2"])
        async with Master(cfg, background=False) as m:
            assert m.volumes[0].path.startswith(str(small))
            bodies: dict[str, bytes] = {}
            extra = 3
            for i in range(40):
                bodies[f"/f{i}"] = data(CHUNK + 30_000, seed=100 + i)
                e = await m.put(f"/f{i}", bodies[f"/f{i}"])
                assert e.size == CHUNK + 30_000
                if m.volumes[0].state == "full":
                    extra -= 1
                    if extra == 0:
                        break
            assert m.volumes[0].state == "full", "the 1 MiB volume never filled up"
            assert "No space" in m.volumes[0].reason
            await m.check_volumes()
            assert m.volumes[0].state == "full"  # still no room for a chunk
            on_small = 0
            for p, b in bodies.items():
                assert await m.cat(p) == b
                c = await m.checkfile(p)
                assert (c["under_goal"], c["missing"]) == (0, 0), c
                on_small += sum(0 in v for v in await copies(m, p))
            assert on_small >= 4  # it did take copies before it filled
            assert not [p for p in small.rglob(".tmp.*")]  # failed writes left nothing
            await background.scrub_pass(m)
            assert "scrub_bad_copies" not in m.stats
            # Freeing space (purging) lets the health check bring it back.
            for p in bodies:
                await m.rm(p)
            await m.purge()
            await m.check_volumes()
            assert m.volumes[0].state == "ok"


async def test_read_only_volume(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "8m") as ro:
        cfg = cluster_cfg(tmp_path, volumes=[ro / "vol", tmp_path / "v1", tmp_path / "v2"])
        async with Master(cfg, background=False) as m:
            old = {f"/old{i}": data(CHUNK + 1, seed=200 + i) for i in range(4)}
            for p, b in old.items():
                await m.put(p, b)
            held = [(p, n, c) for p in old for n, c in enumerate(await copies(m, p)) if 0 in c]
            assert held, "no copy landed on the volume about to become read-only"
            remount = ["mount", "-o", "remount,ro", str(ro)]
            await asyncio.to_thread(subprocess.run, remount, check=True, timeout=10)
            new = {f"/new{i}": data(CHUNK + 1, seed=300 + i) for i in range(4)}
            for p, b in new.items():
                await m.put(p, b)  # the first one finds out the hard way, then it is skipped
            assert m.volumes[0].state == "readonly"
            await m.check_volumes()
            assert m.volumes[0].state == "readonly"
            for p, b in new.items():
                assert all(0 not in c and len(c) == 2 for c in await copies(m, p))
                assert await m.cat(p) == b
            for p, b in old.items():
                assert await m.cat(p) == b
            # The copies on the read-only volume are still good and readable.
            for p, n, _ in held:
                _, infos = await m.fileinfo(p)
                key = ChunkKey(infos[n].chunk.id, infos[n].chunk.version)
                got = await m.volumes[0].store.get(key)
                assert got == old[p][n * CHUNK : (n + 1) * CHUNK]
            assert "bad_copies_dropped" not in m.stats


# -- orphans ---------------------------------------------------------------------------------------


async def test_orphan_pass(m: Master) -> None:
    body = data(2 * CHUNK, seed=13)
    await m.put("/kept", body)
    files = chunk_files(m)
    orphan, writing = ChunkKey(10**12, 1), ChunkKey(10**12 + 1, 1)
    await m.volumes[0].store.put(orphan, b"left by a crash")
    await m.volumes[1].store.put(writing, b"being written")
    m.inflight.add((1, writing.id))
    # A copy of a known chunk on a volume its metadata does not list is an orphan too.
    _, infos = await m.fileinfo("/kept")
    c = infos[0].chunk
    stray = next(v for v in m.volumes if v not in {cp.volume for cp in infos[0].copies})
    await m.volumes[stray].store.put(ChunkKey(c.id, c.version), body[:CHUNK])

    assert await background.orphan_pass(m) == 2
    assert await m.volumes[0].store.head(orphan) is None
    assert await m.volumes[1].store.head(writing) == len(b"being written")
    assert await m.volumes[stray].store.head(ChunkKey(c.id, c.version)) is None
    assert chunk_files(m) == files | {copy_path(m, 1, Chunk(writing.id, 1, 0, 0, 0, 0))}
    assert await m.cat("/kept") == body

    m.inflight.discard((1, writing.id))
    assert await background.orphan_pass(m) == 1
    assert chunk_files(m) == files
    assert m.stats["orphans_removed"] == 3


# -- the changelog ---------------------------------------------------------------------------------


async def test_every_mutation_appends_one_entry(m: Master) -> None:
    await m.mkdir("/c")
    steps: list[tuple[str, Any, bytes]] = [
        ("mkdir", lambda: m.mkdir("/c/d"), b"/c/d"),
        ("put", lambda: m.put("/c/f", b"1"), b"/c/f"),
        ("put", lambda: m.put("/c/f", b"22"), b"/c/f"),
        ("mv", lambda: m.mv("/c/f", "/c/g"), b"/c/f"),
        ("snapshot", lambda: m.snapshot("/c", "/snap"), b"/c"),
        ("setgoal", lambda: m.setgoal("/c", 3, recursive=True), b"/c"),
        ("settrashtime", lambda: m.settrashtime("/c", 60), b"/c"),
        ("rm", lambda: m.rm("/c/g"), b"/c/g"),
        ("undelete", lambda: m.undelete(m_trash_id[0], "/c/g2"), b"/c/g2"),
        ("rm", lambda: m.rm("/snap", recursive=True), b"/snap"),
        ("purge", lambda: m.purge(), b"/"),
    ]
    m_trash_id: list[int] = []
    last = (await m.status())["changelog_last"]
    for op, call, path in steps:
        if op == "undelete":
            m_trash_id.append(next(t.id for t in await m.trash_list() if t.path == b"/c/g"))
        await call()
        (entry,) = await m.changes(last)
        assert entry.seq == last + 1
        assert (entry.op, entry.path) == (op, path)
        assert entry.ts_ms == pytest.approx(time.time() * 1000, abs=5000)
        last = entry.seq
        assert (await m.status())["changelog_last"] == last
    put = [c for c in await m.changes(0) if c.op == "put"][-1]
    assert (put.arg, put.hash) == (2, hashlib.sha256(b"22").digest())
    # A put into new directories logs the directories it made first.
    await m.put("/n1/n2/f", b"x")
    assert [(c.op, c.path) for c in await m.changes(last)] == [
        ("mkdir", b"/n1"),
        ("mkdir", b"/n1/n2"),
        ("put", b"/n1/n2/f"),
    ]
    seqs = [c.seq for c in await m.changes(0)]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_change_feed_wakes_on_commit(m: Master) -> None:
    await m.put("/before", b"b")
    feed = ChangeFeed(m.cfg.meta_dir, poll=30)  # a 30 s poll: only inotify can be this quick
    lo, hi = feed.bounds()
    assert (lo, hi) == await m.changelog_bounds()
    assert feed.read(hi - 1) == await m.changes(hi - 1)
    got: list[tuple[float, Any]] = []

    async def follow() -> None:
        async with contextlib.aclosing(feed.follow(hi)) as changes:
            async for change in changes:
                got.append((time.monotonic(), change))
                if len(got) == 2:
                    return

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.3)  # the follower has read everything and is waiting
    assert got == []
    await m.put("/after", b"a")  # committed (and fsynced) when it returns
    t0 = time.monotonic()
    await asyncio.sleep(0.2)
    await m.mkdir("/after-dir")
    t1 = time.monotonic()
    await asyncio.wait_for(task, 5)
    assert [(c.op, c.path) for _, c in got] == [("put", b"/after"), ("mkdir", b"/after-dir")]
    assert got[0][0] - t0 < 1.5  # far below the 30 s poll: woken by inotify (loaded CI box)
    assert got[1][0] - t1 < 1.5
    assert got[0][1].seq == hi + 1


async def test_trimmed_cursor_raises(m: Master) -> None:
    for i in range(5):
        await m.put(f"/t{i}", b"x")
    feed = ChangeFeed(m.cfg.meta_dir, poll=30)
    assert feed.bounds() == (1, 5)
    future = int(time.time() * 1000) + 60_000
    assert await m._mutate(lambda: m.meta.trim_changelog(future)) == 4  # the newest stays
    assert feed.bounds() == (5, 5)
    with pytest.raises(ChangelogTrimmed) as info:
        feed.read(2)
    assert (info.value.cursor, info.value.oldest) == (2, 5)
    assert "rescan" in str(info.value)
    assert [c.seq for c in feed.read(4)] == [5]  # one behind the oldest kept is still whole
    assert feed.read(5) == []
    with pytest.raises(ChangelogTrimmed):
        async with contextlib.aclosing(feed.follow(0)) as changes:
            async for _ in changes:
                pytest.fail("a trimmed cursor must not yield")
    await m.put("/t5", b"x")
    assert [c.seq for c in feed.read(5)] == [6]


async def test_group_commit_of_concurrent_puts(m: Master) -> None:
    last = (await m.status())["changelog_last"]
    bodies = {f"/g/{i:02d}": data(100 + i, seed=i) for i in range(50)}
    await m.mkdir("/g")
    results = await asyncio.gather(*(m.put(p, b) for p, b in bodies.items()))
    assert [e.path.decode() for e in results] == list(bodies)
    entries = await m.changes(last + 1)
    assert len(entries) == 50 and {e.op for e in entries} == {"put"}
    assert {e.path.decode() for e in entries} == set(bodies)
    assert [e.seq for e in entries] == list(range(last + 2, last + 52))
    for p, b in bodies.items():
        assert await m.cat(p) == b
    # One failing put in a shared commit fails alone. The batch runs once without
    # savepoints, is rolled back at the failure and runs again with them: the others are
    # committed once, and a directory made by the first run is made again, not left cached.
    await m.put("/g/dir/x", b"x")
    last = (await m.status())["changelog_last"]
    commits = m.commits
    outcome = await asyncio.gather(
        m.put("/g/ok1", b"1"),
        m.put("/g/new/ok2", b"2"),
        m.put("/g/dir", b"over a dir"),
        m.put("/g/new/ok3", b"3"),
        return_exceptions=True,
    )
    assert m.commits == commits + 1  # one shared commit
    assert isinstance(outcome[2], IsADirectory)
    assert [e.path for e in outcome if not isinstance(e, BaseException)] == [
        b"/g/ok1", b"/g/new/ok2", b"/g/new/ok3"
    ]
    assert [(e.op, e.path) for e in await m.changes(last)] == [
        ("put", b"/g/ok1"), ("mkdir", b"/g/new"), ("put", b"/g/new/ok2"),
        ("put", b"/g/new/ok3"),
    ]
    assert await m.cat("/g/ok1") == b"1" and await m.cat("/g/new/ok2") == b"2"
    assert await m.cat("/g/new/ok3") == b"3" and (await m.stat("/g/dir")).is_dir
    await m.put("/g/new/ok4", b"4")  # the writer's directory cache holds the real /g/new
    assert [e.path for e in await m.ls("/g/new")] == [
        b"/g/new/ok2", b"/g/new/ok3", b"/g/new/ok4"
    ]
    assert await check_refs(m) == []


async def test_a_bug_in_a_quick_commit_fails_its_batch_and_the_next_one_commits(m: Master) -> None:
    """A mutation that raises something other than a cluster error (a bug) on the loop's
    commit path: its whole group commit is undone and fails, nothing is left half-done, and
    the master goes on committing."""
    before = (await m.status())["changelog_last"]

    def bug() -> None:
        m.meta.mkdir((b"half",), 0o755)  # done, then undone with the rest of the batch
        raise ZeroDivisionError("a bug")

    outcome = await asyncio.gather(
        m.put("/same-batch", b"x"), m._mutate(bug, quick=True), return_exceptions=True
    )
    assert all(isinstance(o, ZeroDivisionError) for o in outcome), outcome
    assert (await m.status())["changelog_last"] == before
    assert await m.ls("/") == []
    await m.put("/after", b"y")
    assert await m.cat("/after") == b"y"
    assert await check_refs(m) == []


# -- life cycle ------------------------------------------------------------------------------------


async def test_restart_keeps_everything_and_lock_is_exclusive(tmp_path: Path) -> None:
    cfg = cluster_cfg(tmp_path)
    body = data(2 * CHUNK + 3, seed=14)
    async with Master(cfg, background=False) as m:
        await m.put("/p/f", body)
        await m.setgoal("/p", 3)
        with pytest.raises(MasterBusy, match="in use"):
            async with Master(cfg, background=False):
                pass
        vols = {v.id: v.path for v in m.volumes.values()}
        last = (await m.status())["changelog_last"]
    async with Master(cfg, background=False) as m:
        assert {v.id: v.path for v in m.volumes.values()} == vols
        assert await m.cat("/p/f") == body
        assert (await m.stat("/p")).goal == 3
        assert (await m.status())["changelog_last"] == last
        e = await m.put("/p/g", b"new")  # chunk ids are never reused after a restart
        assert not set(e.chunks) & set((await m.stat("/p/f")).chunks)


# -- the background loop, end to end ---------------------------------------------------------------


async def test_background_loop_heals_a_lost_volume(tmp_path: Path) -> None:
    cfg = cluster_cfg(
        tmp_path,
        health_interval=0.1,
        work_interval=0.1,
        replication_delay=0.2,
        scrub_rate=1 << 40,
    )
    async with Master(cfg, background=True) as m:
        bodies = {f"/b/{i}": data(CHUNK + 7, seed=40 + i) for i in range(4)}
        for p, b in bodies.items():
            await m.put(p, b)
        await m.mkdir("/tmp")
        await m.settrashtime("/tmp", 0)
        await m.put("/tmp/gone", b"soon purged")
        await m.rm("/tmp/gone")
        # The disk vanishes at once (a rename: rmtree would race the view thread's links).
        os.rename(m.volumes[2].path, f"{m.volumes[2].path}.lost")
        deadline = time.monotonic() + 10
        while True:
            status = await m.status()
            healed = all([(await m.checkfile(p))["under_goal"] == 0 for p in bodies])
            if (
                m.volumes[2].state == "missing"
                and healed
                and status["under_goal"] == 0
                and status["trash_files"] == 0
            ):
                break
            assert time.monotonic() < deadline, f"not healed in time: {status}"
            await asyncio.sleep(0.1)
        for p, b in bodies.items():
            assert await m.cat(p) == b
        assert status["background"].get("scrub_passes", 0) >= 1
        assert status["background"]["trash_purged"] >= 1


async def test_overwrite_keeps_the_files_own_goal_and_trash_time(m: Master) -> None:
    await m.put("/own/f", b"one")
    await m.setgoal("/own/f", 3)
    await m.settrashtime("/own/f", 60)
    put = await m.put("/own/f", b"two")
    e = await m.stat("/own/f")
    assert (e.goal, e.trash_time, e.effective_goal, e.effective_trash_time) == (3, 60, 3, 60)
    assert put == e  # what put returned is what stat reads back
    (t,) = await m.trash_list()
    assert t.expires - t.deleted == 60  # the old version kept the file's own trash time


async def test_a_put_into_a_cached_folder_keeps_the_replaced_files_own_goal(m: Master) -> None:
    """A put into a folder the writer has cached takes the folder's goal without a lookup
    (``Meta.folder_goal``); its commit then meets the replaced file's own goal: for a higher
    one the copies are placed again (all at once, before the put returns), a lower one is the
    chunk's goal."""
    await m.put("/own/hi", b"one")
    await m.put("/own/lo", b"one")
    await m.setgoal("/own/hi", 3)
    await m.setgoal("/own/lo", 1)
    await m.put("/own/other", b"x")  # the folder is cached again
    assert m.meta.folder_goal(paths.parse("/own/hi")) == 2
    await m.put("/own/hi", b"two")
    assert await copies(m, "/own/hi") == [{0, 1, 2}]
    await m.put("/own/lo", b"two")
    _, (info,) = await m.fileinfo("/own/lo")
    assert info.chunk.goal == 1
    for p in ("/own/hi", "/own/lo"):
        assert await m.cat(p) == b"two"
    assert await check_refs(m) == []
    assert await background.orphan_pass(m, remove=False) == 0  # the first placement's copies


async def test_the_scrubber_keeps_its_rate_and_does_not_race_to_catch_up() -> None:
    """``background.Pace``: 2 MiB counted at 10 MiB/s take ~0.2 s (it naps, ≤ NAP early);
    after a stall far behind schedule, the next 2 MiB still take ≥ 0.2 s - NAP, not nothing."""
    pace = background.Pace(10 << 20)
    t0 = time.monotonic()
    for _ in range(32):
        await pace.spent(64 << 10)
    took = time.monotonic() - t0
    assert 0.2 - pace.NAP <= took < 0.5, took
    await asyncio.sleep(0.5)  # a slow disk: half a second behind
    t0 = time.monotonic()
    for _ in range(32):
        await pace.spent(64 << 10)
    took = time.monotonic() - t0
    assert 0.2 - 2 * pace.NAP <= took < 0.5, took


async def test_status_counts_without_holding_back_a_put(m: Master) -> None:
    """``status`` scans every chunk; it does so on a connection and thread of its own, so a
    put issued while it scans commits without waiting for it (on the database thread the
    put's commit queued behind the whole scan). 400,000 chunk rows make the scan long."""
    rows = ((i, 1, 1000, 2, 0b11, 1) for i in range(1 << 40, (1 << 40) + 400_000))

    def insert() -> None:
        with m.meta.transaction():
            m.meta.db.executemany("INSERT INTO chunk (id, version, size, goal, copies, refs) "
                                  "VALUES (?,?,?,?,?,?)", rows)

    await m._db(insert)
    done: list[str] = []

    async def status() -> None:
        st = await m.status()
        assert st["chunks"] >= 400_000
        done.append("status")

    async def put() -> None:
        await asyncio.sleep(0.01)  # the scan has begun
        await m.put("/during-status", b"x" * 1000)
        done.append("put")

    await asyncio.gather(status(), put())
    assert done == ["put", "status"]

"""The origin's per-worker lookup cache (``origin/lookup_cache.py``) over real SQLite and real
volume files: the master commits through its own connection, the source reads through a
read-only one of its own, as an origin worker does. Misses are counted by a spy on the
source's uncached lookup."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_master import cluster_cfg

from cluster.master import Master
from cluster.paths import parse
from cluster.store import ChunkKey
from origin import lookup_cache
from origin.sources import ClusterSource, File


class Pair:
    def __init__(self, m: Master, src: ClusterSource) -> None:
        self.m, self.src, self.misses = m, src, 0

    def get(self, path: str) -> File | None:
        return self.src.lookup_now(parse(path))

    def size(self, path: str) -> int | None:
        f = self.get(path)
        return None if f is None else f.size


@pytest.fixture
async def pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Pair]:
    async with Master(cluster_cfg(tmp_path), background=False) as m:
        src = ClusterSource(m.cfg)
        p = Pair(m, src)
        real = src._lookup

        def counted(parts: tuple[bytes, ...]) -> tuple[File | None, str | None]:
            p.misses += 1
            return real(parts)

        monkeypatch.setattr(src, "_lookup", counted)
        try:
            yield p
        finally:
            src.meta.db.close()


async def test_an_answer_outlives_commits_that_do_not_touch_it(pair: Pair) -> None:
    m = pair.m
    await m.put("/a/1", b"one")
    assert pair.size("/a/1") == 3 and pair.misses == 1
    assert pair.size("/a/1") == 3 and pair.misses == 1  # a hit
    await m.put("/b/2", b"two")
    await m.mkdir("/c")
    await m.setgoal("/b", 3, recursive=True)
    await m.settrashtime("/b", 60)
    assert pair.size("/a/1") == 3 and pair.misses == 1  # still a hit
    assert pair.size("/b/2") == 3 and pair.misses == 2


async def test_every_change_to_a_file_is_seen_at_once(pair: Pair) -> None:
    m = pair.m
    await m.put("/a/1", b"one")
    assert pair.size("/a/1") == 3
    assert pair.get("/a/new") is None
    await m.put("/a/1", b"eleven")  # overwrite
    assert pair.size("/a/1") == 6
    await m.put("/a/new", b"fresh")  # a cached "no such file"
    assert pair.size("/a/new") == 5
    await m.rm("/a/1")
    assert pair.get("/a/1") is None
    (trashed,) = [t for t in await m.trash_list() if t.path == b"/a/1" and t.size == 6]
    await m.undelete(trashed.id)
    assert pair.size("/a/1") == 6


@pytest.mark.parametrize("op", ["mv", "snapshot", "rm -r"])
async def test_tree_operations_drop_every_answer(pair: Pair, op: str) -> None:
    m = pair.m
    await m.put("/d/x", b"x")
    await m.put("/other/y", b"yy")
    assert pair.size("/d/x") == 1 and pair.get("/e/x") is None and pair.size("/other/y") == 2
    if op == "mv":
        await m.mv("/d", "/e")
        assert pair.get("/d/x") is None and pair.size("/e/x") == 1
    elif op == "snapshot":
        await m.snapshot("/d", "/e")
        assert pair.size("/d/x") == 1 and pair.size("/e/x") == 1
    else:
        await m.rm("/d", recursive=True)
        assert pair.get("/d/x") is None
    misses = pair.misses
    assert pair.size("/other/y") == 2
    assert pair.misses == misses + 1  # the untouched file was looked up afresh too


async def test_moved_copies_drop_every_answer(pair: Pair) -> None:
    """Copies change without a changelog entry (re-replication, repair, migrate-store): the
    counter ``copies`` tells the cache, which forgets the copy it would have named. Here a
    copy is dropped as the scrubber drops a bad one, metadata first: its file is still on
    disk (``Master.drop_copies`` deletes it next) but must not be sent any more."""
    m = pair.m
    await m.put("/a/1", b"one")
    f = pair.get("/a/1")
    assert f is not None and f.accel is not None
    _, (c,) = await m.open("/a/1")
    holder = next(v for v in m.volumes.values() if f.accel.startswith(pair.src.accel[v.id]))
    await m._mutate(lambda: m.meta.set_copies(c.id, remove=holder.bit))
    assert os.path.exists(holder.store.path_of(ChunkKey(c.id, c.version)))
    misses = pair.misses
    g = pair.get("/a/1")
    assert pair.misses == misses + 1
    assert g is not None and g.accel is not None
    assert not g.accel.startswith(pair.src.accel[holder.id])


async def test_a_copy_gone_without_a_commit_is_noticed_on_a_hit(pair: Pair) -> None:
    """A disk can lose files without the metadata knowing: the copy nginx would be sent to is
    stat'ed on every hit."""
    m = pair.m
    await m.put("/a/1", b"one")
    f = pair.get("/a/1")
    assert f is not None and f.accel is not None
    _, (c,) = await m.open("/a/1")
    for v in m.volumes.values():
        if f.accel.startswith(pair.src.accel[v.id]):
            os.unlink(v.store.path_of(ChunkKey(c.id, c.version)))
    g = pair.get("/a/1")
    assert g is not None and g.accel is not None and g.accel != f.accel


async def test_a_trimmed_changelog_drops_every_answer(pair: Pair) -> None:
    """Entries trimmed before the cache read them may name its paths: it forgets them all."""
    m = pair.m
    await m.put("/a/1", b"one")
    assert pair.size("/a/1") == 3
    await m.put("/a/1", b"eleven")
    await m.put("/a/2", b"two")
    await m._mutate(lambda: m.meta.trim_changelog(int(time.time() * 1000) + 1000))
    lo, hi = await m.changelog_bounds()
    assert lo == hi  # only the newest entry (/a/2) is left
    assert pair.size("/a/1") == 6


async def test_more_changes_than_it_reads_drop_every_answer(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lookup_cache, "MAX_CHANGES", 2)
    m = pair.m
    await m.put("/a/1", b"one")
    assert pair.size("/a/1") == 3
    for i in range(3):
        await m.put(f"/b/{i}", b"b")
    misses = pair.misses
    assert pair.size("/a/1") == 3 and pair.misses == misses + 1


async def test_a_full_cache_starts_over_and_zero_turns_it_off(pair: Pair) -> None:
    pair.src._cache.limit = 2
    for i in range(3):
        await pair.m.put(f"/a/{i}", b"x")
        assert pair.size(f"/a/{i}") == 1
    assert len(pair.src._cache.answers) == 1
    pair.src._cache.limit = 0  # origin.lookup_cache = 0
    misses = pair.misses
    assert pair.size("/a/0") == 1 and pair.size("/a/0") == 1
    assert pair.misses == misses + 2 and not pair.src._cache.answers


async def test_a_failed_read_of_the_changes_is_read_again(pair: Pair) -> None:
    """A read of the changelog that fails (a disk error, say) fails that lookup, and the next
    lookup reads the changes again: the answer they name is never served stale."""
    m, src = pair.m, pair.src
    await m.put("/a/1", b"one")
    assert pair.size("/a/1") == 3
    await m.put("/a/1", b"eleven")
    real = src.meta.db

    class Failing:
        def execute(self, sql: str, *args: Any) -> Any:
            if "FROM changelog" in sql:
                raise sqlite3.OperationalError("disk I/O error")
            return real.execute(sql, *args)

    src.meta.db = Failing()  # type: ignore[assignment]
    with pytest.raises(sqlite3.OperationalError):
        pair.get("/a/1")
    src.meta.db = real
    assert pair.size("/a/1") == 6

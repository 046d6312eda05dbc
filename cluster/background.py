"""The master's background work: volume health, re-replication, scrubbing, trash purge,
orphan removal and changelog retention. Each runs as its own task started by ``start``;
every pass logs what it did and records counters in ``master.stats`` (shown by status).

- **health** (every ``health_interval``): refresh each volume's state from its disk.
- **replicate** (every ``work_interval``): chunks whose copies on readable volumes differ from
  their goal get a copy added (from a good copy, CRC-verified) or an extra one removed. Copies
  on a volume missing for less than ``replication_delay`` still count, so a disk pulled for a
  minute does not trigger a storm of copying.
- **scrub** (continuous, ``scrub_rate`` bytes/s): re-read every copy; a bad one is dropped and
  the replicator restores the goal from a good one.
- **purge**: trash entries past their trash time; **trim**: changelog entries past retention;
  **orphans** (at start, then hourly): chunk files no metadata points at, e.g. left by a crash
  between writing copies and committing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from cluster import placement
from cluster.crc import BLOCK
from cluster.errors import ChunkCorrupt, ChunkMissing, ClusterError, NotFound, StoreError
from cluster.meta import Chunk
from cluster.store import ChunkKey
from cluster.volume import LocalVolume

if TYPE_CHECKING:
    from cluster.master import Master, Volume

log = structlog.get_logger("cluster")

ORPHAN_INTERVAL = 3600.0
PAGE = 500
SCRUB_ON_LOOP = 1 << 20  # bytes: a cached copy up to this size is verified on the loop


def start(m: Master) -> list[asyncio.Task[None]]:
    cfg = m.cfg
    loops: list[tuple[str, float, Callable[[Master], Awaitable[object]]]] = [
        ("health", cfg.health_interval, lambda m: m.check_volumes()),
        ("replicate", cfg.work_interval, replicate_pass),
        ("purge", cfg.work_interval, purge_pass),
        ("orphans", ORPHAN_INTERVAL, orphan_pass),
    ]
    tasks = [asyncio.create_task(_every(m, n, i, fn), name=n) for n, i, fn in loops]
    if cfg.scrub_rate > 0:
        tasks.append(asyncio.create_task(_every(m, "scrub", cfg.work_interval, scrub_pass)))
    return tasks


async def _every(
    m: Master, name: str, interval: float, fn: Callable[[Master], Awaitable[object]]
) -> None:
    while True:
        try:
            await fn(m)
        except asyncio.CancelledError:
            raise
        except ClusterError as exc:
            log.error("background.failed", task=name, error=str(exc))
        await asyncio.sleep(interval)


def _bump(m: Master, key: str, n: int = 1) -> None:
    m.stats[key] = m.stats.get(key, 0) + n


def counted_mask(m: Master) -> int:
    """Volumes whose copies count toward the goal: readable ones, and missing ones still
    inside their grace period (``replication_delay``)."""
    now = time.monotonic()
    return sum(
        v.bit
        for v in m.volumes.values()
        if v.readable or now - v.since < m.cfg.replication_delay
    )


def kind_masks(m: Master) -> tuple[int, ...]:
    """Per kind of store, the volumes of it that can take a copy now (``placement.py``:
    a chunk with several copies should have one on each such kind)."""
    vols = m._candidates()
    return tuple(sum(v.bit for v in vols if v.kind == k) for k in placement.KINDS)


def _misplaced(m: Master, copies: int) -> bool:
    return copies.bit_count() > 1 and any(k and not copies & k for k in kind_masks(m))


def _retrying() -> AsyncRetrying:
    """The one retry policy for whole background operations on chunks."""
    return AsyncRetrying(
        retry=retry_if_exception(lambda e: isinstance(e, ClusterError) and e.retryable),
        stop=stop_after_attempt(3),
        # exponential backoff with jitter; wait_exponential_jitter(initial=) is deprecated
        wait=wait_exponential(multiplier=0.2, max=2.0) + wait_random(0, 1),
        reraise=True,
    )


async def replicate_pass(m: Master) -> None:
    after, fixed = 0, 0
    while True:
        counted = counted_mask(m)
        page = await m._db(m.meta.needing_work, counted, after, PAGE, kind_masks(m))
        if not page:
            break
        for c in page:
            after = c.id
            try:
                async for attempt in _retrying():
                    with attempt:
                        fixed += await fix_chunk(m, c.id, counted)
            except ClusterError as exc:  # logged and left for the next pass
                _bump(m, "replicate_errors")
                log.warning("replicate.failed", chunk=ChunkKey(c.id, c.version).name,
                            error=str(exc))
    m.stats["last_replicate"] = time.time()
    if fixed:
        log.info("replicate.pass", fixed=fixed)


async def fix_chunk(m: Master, chunk_id: int, counted: int) -> int:
    """Bring one chunk's copy count to its goal, a copy at a time; the number of copies
    added or removed. A chunk a store migration is working on is left alone (``m.migrating``;
    the migration waits for a step already under way: ``m.fixing``)."""
    changed = 0
    m.fixing[chunk_id] += 1
    try:
        for _ in range(16):  # goals are at most 9: this bound is never the one that stops it
            if chunk_id in m.migrating:
                break
            step = await _fix_step(m, chunk_id, counted)
            if not step:
                break
            changed += step
    finally:
        m.fixing[chunk_id] -= 1
        if m.fixing[chunk_id] <= 0:
            del m.fixing[chunk_id]
            m.fixed.set()
            m.fixed.clear()
    return changed


async def _fix_step(m: Master, chunk_id: int, counted: int) -> int:
    try:
        (c,) = await m._db(m.meta.chunks, (chunk_id,))
    except NotFound:  # purged since the page was read
        return 0
    readable = c.copies & m.readable_mask
    have = placement.worth(v for v in m.volumes.values() if c.copies & counted & v.bit)
    if have < c.goal:
        if not readable:
            _bump(m, "missing_chunks_seen")
            log.error("chunk.missing", chunk=ChunkKey(c.id, c.version).name)
            return 0
        return await _add_copy(m, c)
    if readable.bit_count() > c.goal:
        copies = [v for v in m.volumes.values() if readable & v.bit]
        # A copy on a volume a store migration is draining goes first (``migrate.py``).
        victim = placement.victim([v for v in copies if v.draining] or copies)
        await m._mutate(lambda: m.meta.set_copies(c.id, remove=victim.bit))
        await victim.store.delete(ChunkKey(c.id, c.version))
        m.forget_links([victim])
        _bump(m, "copies_removed")
        log.info("replicate.removed", chunk=ChunkKey(c.id, c.version).name, volume=victim.path)
        return 1
    if _misplaced(m, readable):  # a copy on the kind it lacks; then the extra one goes
        return await _add_copy(m, c)
    return 0


async def _add_copy(m: Master, c: Chunk) -> int:
    key = ChunkKey(c.id, c.version)
    sources = [v for v in m.volumes.values() if c.copies & v.bit and v.readable]
    sources.sort(key=lambda v: v.kind != "local")  # read a local copy when there is one
    target = placement.next_target(
        [v for v in m._candidates() if not c.copies & v.bit],
        [v for v in m.volumes.values() if c.copies & v.bit],
    )
    if target is None:
        return 0
    data, mtime = None, None
    for src in sources:
        try:
            data = await src.store.get(key)
            if isinstance(src.store, LocalVolume):  # the copy keeps the file's mtime
                mtime = src.store.mtime_ns(key)
            break
        except (ChunkCorrupt, ChunkMissing) as exc:
            log.error("chunk.bad_copy", volume=src.path, chunk=key.name, error=str(exc))
            await m.drop_copies(c, [src])
    if data is None:
        return 0
    m.inflight.add((target.id, c.id))
    try:
        await m.put_copy(target, key, data, mtime)
        if not await m._mutate(lambda: m.meta.set_copies(c.id, add=target.bit)):
            with contextlib.suppress(StoreError):  # purged meanwhile: not an orphan to leave
                await target.store.delete(key)
            return 0
    finally:
        m.inflight.discard((target.id, c.id))
    _bump(m, "copies_added")
    log.info("replicate.added", chunk=key.name, volume=target.path)
    return 1


async def scrub_pass(m: Master) -> None:
    """One full pass over every copy, paced to ``scrub_rate`` bytes per second."""
    after, started = 0, time.monotonic()
    pace = Pace(m.cfg.scrub_rate)
    while True:
        page = await m._db(m.meta.chunk_page, after, PAGE)
        if not page:
            break
        for c in page:
            after = c.id
            await scrub_chunk(m, c, pace)
    m.stats["scrub_passes"] = m.stats.get("scrub_passes", 0) + 1
    m.stats["last_scrub"] = time.time()
    log.debug("scrub.pass", seconds=round(time.monotonic() - started, 3))


class Pace:
    """Keeps a pass to ``rate`` bytes per second, sleeping once it is ``NAP`` seconds ahead
    (one wake-up per nap, not one per copy: with copies of a few KiB those wake-ups were
    most of an idle master's CPU). A pass that fell behind (a slow disk) does not race to
    catch up: it is never more than ``NAP`` behind its schedule."""

    NAP = 0.05

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.due = time.monotonic()  # when the bytes counted so far may be done

    async def spent(self, nbytes: int) -> None:
        self.due += nbytes / self.rate
        ahead = self.due - time.monotonic()
        if ahead >= self.NAP:
            await asyncio.sleep(ahead)
        elif ahead < -self.NAP:
            self.due -= ahead + self.NAP


async def scrub_chunk(m: Master, c: Chunk, pace: Pace | None = None) -> None:
    key = ChunkKey(c.id, c.version)
    pace = pace or Pace(m.cfg.scrub_rate)
    bad: list[Volume] = []
    for v in list(m.volumes.values()):
        if not (c.copies & v.bit and v.readable):
            continue
        try:
            # A small copy in the page cache is checked on the loop: no hop to a thread.
            data = v.cached.read_cached(key) if v.cached and c.size <= SCRUB_ON_LOOP else None
            if data is None:
                await v.store.get(key)
            else:
                await asyncio.sleep(0)  # stay fair: a cached read never yields by itself
        except (ChunkCorrupt, ChunkMissing) as exc:
            log.error("scrub.bad_copy", volume=v.path, chunk=key.name, error=str(exc))
            bad.append(v)
        except StoreError as exc:
            m._volume_failed(v, exc)
        _bump(m, "scrubbed_bytes", c.size)
        # Each copy counts as at least one CRC block: a copy's fixed cost (an open, a read,
        # the bookkeeping) outweighs its bytes when chunks are small files of a few KiB.
        await pace.spent(max(c.size, BLOCK))
    if bad:
        _bump(m, "scrub_bad_copies", len(bad))
        await m.drop_copies(c, bad)
        counted = counted_mask(m)
        async for attempt in _retrying():
            with attempt:
                await fix_chunk(m, c.id, counted)


async def purge_pass(m: Master) -> None:
    n = await m.purge(expired=True)
    _bump(m, "trash_purged", n)
    cutoff = int((time.time() - m.cfg.changelog_retention) * 1000)
    trimmed = await m._mutate(lambda: m.meta.trim_changelog(cutoff))
    if trimmed:
        log.info("changelog.trimmed", entries=trimmed)


async def orphan_pass(m: Master, *, remove: bool = True) -> int:
    """Delete (or, with ``remove=False``, only count) chunk files that no metadata points at.
    A copy is kept while it is being written (``m.inflight``, checked *before* the metadata,
    which is committed before the in-flight mark is dropped), so a write in progress is never
    mistaken for an orphan."""
    removed = 0
    for v in list(m.volumes.values()):
        if not v.readable:
            continue
        batch: list[ChunkKey] = []
        try:
            async for key in v.store.list():
                batch.append(key)
                if len(batch) >= PAGE:
                    removed += await _sweep(m, v, batch, remove)
                    batch = []
            removed += await _sweep(m, v, batch, remove)
        except StoreError as exc:
            m._volume_failed(v, exc)
    if not remove:
        return removed
    _bump(m, "orphans_removed", removed)
    m.stats["last_orphan_sweep"] = time.time()
    if removed:
        log.info("orphans.removed", files=removed)
    return removed


async def _sweep(m: Master, v: Volume, keys: list[ChunkKey], remove: bool) -> int:
    candidates = [k for k in keys if (v.id, k.id) not in m.inflight]
    if not candidates:
        return 0
    copies = await m._db(m.meta.copies_of, [k.id for k in candidates])
    removed = 0
    for k in candidates:
        if copies.get(k.id, 0) & v.bit or (v.id, k.id) in m.inflight:
            continue
        if remove:
            await v.store.delete(k)
            log.info("orphan.removed", volume=v.path, chunk=k.name)
        removed += 1
    return removed

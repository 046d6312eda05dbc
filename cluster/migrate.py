"""Store migration (``tandem cluster migrate-store``): move or copy every chunk copy on one
volume to another — a local directory to S3 and back, or between any two volumes — online,
inside the master (the one writer of the metadata).

For each chunk with a copy on the source (the chunk table paged by id), unless the destination
already holds one:

1. read a good copy, CRC-verified: the source's, else another one (a bad source copy is
   reported and dropped, never propagated);
2. write it to the destination, keeping the chunk's mtime where the stores keep one, marked in
   flight (``m.inflight``) so the orphan sweep leaves it alone;
3. read it back from the destination (CRC-verified) and compare: same size and SHA-256;
4. record it: the destination's bit is added — with ``move`` the source's is removed in the same
   commit — then, with ``move``, the source copy is deleted and the source's nginx view is
   re-linked (``Master.forget_links``).

**Online.** Puts, reads and background work go on. The replicator leaves a chunk alone while it
is migrated (``m.migrating``), and the migration waits for a replicator step already under way
on it (``m.fixing``), so neither undoes the other's copy. With ``move`` the source is
*draining* (``Volume.draining``): no new copy goes there, and passes repeat until one finds no
chunk on it and no write to it is in flight, so chunks written meanwhile move too. A chunk
purged meanwhile is skipped and its new copy deleted. A read that meets a copy moved under it
re-reads the chunk's copies (``Master.read_chunk``).

**Goals.** ``move`` keeps the number of copies: the source copy is replaced by the
destination's. When the destination already holds a copy, the source copy is dropped if the
other copies still meet the goal, else replaced on another volume in placement order (with no
volume left to take it, it is dropped anyway: the chunk counts in ``under_goal``). ``copy`` adds
a copy: a chunk then over its goal loses one to the replicator (``placement.victim``, maybe the
new one) unless its goal allows the extra copy (``setgoal`` first).

**Resumable.** The state is the metadata itself: a new run skips what is done. A run
interrupted anywhere (even ``kill -9`` of the master) leaves each chunk with its old copies or
its new ones, and at worst an object the metadata does not name (on the destination, or the
source's after its removal was committed), which the orphan sweep removes.

**Memory.** A few chunks at a time: ``CONCURRENCY`` workers, fewer for large chunks
(``MEMORY``), each holding one chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from cluster import placement
from cluster.errors import (
    ChunkCorrupt,
    ChunkMissing,
    ClusterError,
    InvalidArgument,
    NotEnoughCopies,
    NotFound,
    StoreError,
)
from cluster.meta import Chunk
from cluster.store import ChunkKey
from cluster.volume import LocalVolume

if TYPE_CHECKING:
    from cluster.master import Master, Volume

log = structlog.get_logger("cluster")

CONCURRENCY = 8  # chunks migrated at once
MEMORY = 256 << 20  # chunk bytes held at once, about (one chunk per worker)
PAGE = 500
RELINK_EVERY = 1.0  # seconds between requests to re-link the source's view
INFLIGHT_WAIT = 600.0  # seconds a move waits for writes to the source already under way
STOP_WAIT = 120.0  # seconds a stopped migration gets to finish the chunks under way
FAILED_LISTED = 1000  # failed chunks named in a report

Progress = Callable[[dict[str, Any]], None]


def show(v: Volume) -> str:
    return f"{v.id} {v.path}"


def find_volume(m: Master, spec: int | str) -> Volume:
    """A volume by id, by its path or name as ``status`` prints it, or by kind when only one
    volume is of that kind (``s3``, ``local``)."""
    text = str(spec).strip()
    if text.isdigit() and int(text) in m.volumes:
        return m.volumes[int(text)]
    for v in m.volumes.values():
        if text and text.rstrip("/") == v.path.rstrip("/"):
            return v
    if text and not text.startswith("s3:"):
        local = str(Path(text).expanduser().resolve())
        for v in m.volumes.values():
            if v.kind == "local" and v.path == local:
                return v
    same = [v for v in m.volumes.values() if v.kind == text]
    if len(same) == 1:
        return same[0]
    known = "; ".join(f"{show(v)} ({v.kind})" for v in m.volumes.values())
    raise InvalidArgument(f"no volume {text!r} (volumes: {known})")


def plan(m: Master, src: int | str, dst: int | str) -> tuple[Volume, Volume]:
    """The source and destination volumes, or a clear error (nothing is changed)."""
    s, d = find_volume(m, src), find_volume(m, dst)
    if s is d:
        raise InvalidArgument(f"source and destination are the same volume ({show(s)})")
    if not d.writable:
        why = f": {d.reason}" if d.reason else ""
        raise InvalidArgument(f"the destination {show(d)} cannot take copies: it is {d.state}{why}")
    if not s.readable:
        why = f": {s.reason}" if s.reason else ""
        raise InvalidArgument(
            f"the source {show(s)} is missing{why}; its chunks are re-replicated from their "
            "other copies once replication_delay has passed"
        )
    return s, d


@dataclass
class Report:
    src: Volume
    dst: Volume
    move: bool
    dry_run: bool
    chunks: int = 0  # chunks to migrate, as known so far (a move finds more as it goes)
    bytes: int = 0
    to_copy: int = 0  # dry run: chunks whose copy would be written (the rest only dropped)
    to_copy_bytes: int = 0
    processed_bytes: int = 0  # of the chunks taken up so far, whatever the outcome
    migrated: int = 0  # chunks whose copy is on the destination now (moved: off the source)
    migrated_bytes: int = 0
    skipped: int = 0  # nothing left to do when reached (on the destination already, …)
    gone: int = 0  # deleted while being migrated
    bad_copies: int = 0  # bad copies met (CRC or missing) and dropped
    under_goal: int = 0  # moved chunks whose remaining copies fall short of their goal
    passes: int = 0
    failed: dict[int, tuple[str, str]] = field(default_factory=dict)  # id → (name, why)
    failed_bytes: int = 0
    aborted: str = ""
    started: float = field(default_factory=time.monotonic)

    @property
    def processed(self) -> int:
        return self.migrated + self.skipped + self.gone + len(self.failed)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.aborted

    def progress(self) -> dict[str, Any]:
        return {
            "chunks": self.chunks, "bytes": self.bytes, "processed": self.processed,
            "processed_bytes": self.processed_bytes, "migrated": self.migrated,
            "migrated_bytes": self.migrated_bytes, "skipped": self.skipped, "gone": self.gone,
            "failed": len(self.failed), "bad_copies": self.bad_copies, "pass": self.passes,
        }

    def json(self) -> dict[str, Any]:
        def vol(v: Volume) -> dict[str, Any]:
            return {"id": v.id, "path": v.path, "kind": v.kind}

        failed = [
            {"chunk": name, "error": why}
            for name, why in list(self.failed.values())[:FAILED_LISTED]
        ]
        return {
            "from": vol(self.src), "to": vol(self.dst), "move": self.move,
            "dry_run": self.dry_run, **self.progress(), "to_copy": self.to_copy,
            "to_copy_bytes": self.to_copy_bytes, "under_goal": self.under_goal,
            "failed": len(self.failed), "failed_chunks": failed,
            "aborted": self.aborted or None, "ok": self.ok,
            "seconds": round(time.monotonic() - self.started, 3),
        }


class Migration:
    """One run of ``migrate_store`` (at most one at a time per master: ``m.migration``)."""

    def __init__(
        self, m: Master, src: Volume, dst: Volume, *, move: bool, dry_run: bool,
        progress: Progress | None,
    ) -> None:
        self.m, self.src, self.dst, self.move = m, src, dst, move
        self.report = Report(src, dst, move, dry_run)
        self.progress = progress
        # A move works on every chunk on the source; a copy on those not on the destination.
        self.without = 0 if move else dst.bit
        self.workers = max(1, min(CONCURRENCY, MEMORY // max(m.cfg.chunk_size, 1)))
        self._unlinked = False
        self._relinked_at = 0.0
        self._stop = False

    def stop(self) -> None:
        """Finish the chunks under way, start no other (``run`` then returns its report)."""
        self._stop = True

    @property
    def what(self) -> str:
        verb = "move" if self.move else "copy"
        return f"{verb} from {show(self.src)} to {show(self.dst)}"

    def _emit(self) -> None:
        if self.progress is not None:
            self.progress(self.report.progress())

    async def run(self) -> Report:
        m, r = self.m, self.report
        if r.dry_run:
            r.chunks, r.bytes = await m._db(m.meta.count_on, self.src.bit, self.without)
            r.to_copy, r.to_copy_bytes = await m._db(
                m.meta.count_on, self.src.bit, self.dst.bit
            )
            self._emit()
            return r
        if m.migration is not None:
            raise InvalidArgument(f"a store migration is already running: {m.migration.what}")
        m.migration = self
        if self.move:
            self.src.draining = True
        log.info("migrate.started", src=self.src.path, dst=self.dst.path, move=self.move)
        try:
            waited_since: float | None = None
            while True:
                found = await self._pass()
                if self._stop:
                    r.aborted = "stopped before the end; run it again to finish"
                if r.aborted or not self.move:
                    break  # a copy: one pass over the chunks there now
                if found:
                    waited_since = None
                    continue
                if not any(vid == self.src.id for vid, _ in m.inflight):
                    break
                # A write to the source that began before it was draining: wait, look again.
                waited_since = waited_since or time.monotonic()
                if time.monotonic() - waited_since > INFLIGHT_WAIT:
                    r.aborted = "writes to the source did not finish"
                    break
                await asyncio.sleep(0.05)
        finally:
            self.src.draining = False
            m.migration = None
            self._relink(force=True)
        if isinstance(self.dst.store, LocalVolume) and m.view is not None and r.migrated:
            await m.view.rebuild()  # link the new copies into the destination's view
        log.info("migrate.finished", src=self.src.path, dst=self.dst.path, move=self.move,
                 migrated=r.migrated, failed=len(r.failed), aborted=r.aborted or None)
        self._emit()
        return r

    async def _pass(self) -> int:
        """One pass over the chunks on the source; the number it took up."""
        m, r = self.m, self.report
        r.passes += 1
        n, size = await m._db(m.meta.count_on, self.src.bit, self.without)
        r.chunks = max(r.chunks, r.processed + n - len(r.failed))
        r.bytes = max(r.bytes, r.processed_bytes + size - r.failed_bytes)
        self._emit()
        queue: asyncio.Queue[Chunk | None] = asyncio.Queue(self.workers)
        found = 0
        async with asyncio.TaskGroup() as tg:
            for _ in range(self.workers):
                tg.create_task(self._worker(queue))
            after = 0
            while not r.aborted and not self._stop:
                page = await m._db(m.meta.chunks_on, self.src.bit, after, PAGE, self.without)
                if not page:
                    break
                for c in page:
                    after = c.id
                    if self._stop:
                        break
                    if c.id not in r.failed:
                        found += 1
                        await queue.put(c)
            for _ in range(self.workers):
                await queue.put(None)
        return found

    async def _worker(self, queue: asyncio.Queue[Chunk | None]) -> None:
        while (c := await queue.get()) is not None:
            if not self.report.aborted and not self._stop:
                await self._chunk(c)
                self._relink()
                self._emit()

    async def _chunk(self, listed: Chunk) -> None:
        m, r = self.m, self.report
        cid = listed.id
        m.migrating.add(cid)
        try:
            while m.fixing.get(cid):  # a replicator step on it is under way: let it finish
                await m.fixed.wait()
            try:
                outcome = await self._migrate(cid)
            except ClusterError as exc:
                outcome = "failed" if cid in await m._db(m.meta.copies_of, [cid]) else "gone"
                if outcome == "failed":
                    self._failed(listed, exc)
        finally:
            m.migrating.discard(cid)
        r.processed_bytes += listed.size
        if outcome == "migrated":
            r.migrated += 1
            r.migrated_bytes += listed.size
        elif outcome == "skipped":
            r.skipped += 1
        elif outcome == "gone":
            r.gone += 1

    def _failed(self, c: Chunk, exc: ClusterError) -> None:
        r, dst = self.report, self.dst
        name = ChunkKey(c.id, c.version).name
        r.failed[c.id] = (name, str(exc))
        r.failed_bytes += c.size
        log.warning("migrate.failed", chunk=name, error=str(exc))
        if not dst.writable:  # a full or failed destination: the rest would fail too
            why = f": {dst.reason}" if dst.reason else ""
            r.aborted = f"the destination {show(dst)} is {dst.state}{why}"

    async def _migrate(self, cid: int) -> str:
        """Migrate one chunk: "migrated", "skipped" (nothing left to do) or "gone"."""
        m, src, dst = self.m, self.src, self.dst
        try:
            (c,) = await m._db(m.meta.chunks, (cid,))
        except NotFound:
            return "gone"
        if not c.copies & src.bit:
            return "skipped"  # left the source meanwhile (a bad copy dropped, say)
        target: Volume | None = dst
        if c.copies & dst.bit:
            if not self.move:
                return "skipped"
            target = self._replacement(c)
        if target is not None:
            if not await self._copy(c, target):
                return "gone"
        elif not await m._mutate(lambda: m.meta.set_copies(c.id, remove=src.bit)):
            return "gone"
        if self.move:
            rest = c.copies & ~src.bit | (target.bit if target is not None else 0)
            if placement.worth(v for v in m.volumes.values() if rest & v.bit) < c.goal:
                self.report.under_goal += 1
            await self._delete_source(c)
        return "migrated"

    def _replacement(self, c: Chunk) -> Volume | None:
        """A move of a chunk the destination holds already: where the source copy's
        replacement goes, or None when the other copies meet the goal (or nothing can take
        one)."""
        m, src = self.m, self.src
        rest = [v for v in m.volumes.values() if c.copies & v.bit and v is not src]
        if placement.enough([v for v in rest if v.readable], c.goal):
            return None
        return placement.next_target([v for v in m._candidates() if not c.copies & v.bit], rest)

    async def _copy(self, c: Chunk, target: Volume) -> bool:
        """Write, verify and record a copy of ``c`` on ``target`` (with ``move``, the source's
        removed in the same commit); False when the chunk was deleted meanwhile."""
        m, key = self.m, ChunkKey(c.id, c.version)
        data, mtime = await self._read(c, target)
        size, digest = len(data), hashlib.sha256(data).digest()
        m.inflight.add((target.id, c.id))
        stage = "writing"
        try:
            await m.put_copy(target, key, data, mtime)
            del data
            back = await target.store.get(key)
            if len(back) != size or hashlib.sha256(back).digest() != digest:
                raise ChunkCorrupt(f"{target.path}: {key.name} reads back different bytes")
            del back
            add, remove = target.bit, (self.src.bit if self.move else 0)
            stage = "recording"
            commit = asyncio.ensure_future(
                m._mutate(lambda: m.meta.set_copies(c.id, add=add, remove=remove))
            )
            try:
                recorded = await asyncio.shield(commit)
            except asyncio.CancelledError:
                # Cancelled (the client went away, the master stops) with the commit queued:
                # it still lands, or has. Keep the copy; drop its mark once the commit is
                # done (a copy left unrecorded is then an orphan for the sweep).
                if not commit.done():
                    stage = "detached"
                    commit.add_done_callback(lambda _: m.inflight.discard((target.id, c.id)))
                elif not commit.cancelled() and commit.exception() is None:
                    stage = "recorded" if commit.result() else "gone"
                raise
            stage = "recorded" if recorded else "gone"
            return recorded
        finally:
            if stage in ("writing", "recording", "gone"):
                with contextlib.suppress(StoreError):
                    await target.store.delete(key)
            if stage != "detached":
                m.inflight.discard((target.id, c.id))

    async def _read(self, c: Chunk, target: Volume) -> tuple[bytes, int | None]:
        """A good copy's bytes (the source's first, then local ones) and its mtime; bad copies
        met on the way are dropped."""
        m, key = self.m, ChunkKey(c.id, c.version)
        others = sorted(
            (v for v in m.volumes.values() if v is not self.src and v is not target),
            key=lambda v: v.kind != "local",
        )
        order = [v for v in (self.src, *others) if c.copies & v.bit and v.readable]
        bad: list[Volume] = []
        errors: list[str] = []
        try:
            for v in order:
                try:
                    data = await v.store.get(key)
                    if len(data) != c.size:
                        raise ChunkCorrupt(f"{v.path}: {key.name} has {len(data)} bytes, "
                                           f"not {c.size}")
                except (ChunkCorrupt, ChunkMissing) as exc:
                    log.error("migrate.bad_copy", volume=v.path, chunk=key.name, error=str(exc))
                    bad.append(v)
                    errors.append(str(exc))
                    continue
                except StoreError as exc:
                    m._volume_failed(v, exc)
                    errors.append(str(exc))
                    continue
                return data, await _mtime(v, key)
        finally:
            if bad:
                await self._drop(c, bad)
        why = "; ".join(errors) or "no readable copy"
        raise NotEnoughCopies(f"{key.name}: no good copy to migrate from ({why})")

    async def _drop(self, c: Chunk, bad: list[Volume]) -> None:
        """Drop the bad copies the metadata still names (a copy removed meanwhile, e.g. by a
        purge, is not bad)."""
        m = self.m
        now = (await m._db(m.meta.copies_of, [c.id])).get(c.id, 0)
        still = [v for v in bad if now & v.bit]
        if still:
            self.report.bad_copies += len(still)
            await m.drop_copies(c, still)

    async def _delete_source(self, c: Chunk) -> None:
        key = ChunkKey(c.id, c.version)
        try:
            await self.src.store.delete(key)
        except StoreError as exc:  # an orphan now: the orphan sweep removes it
            log.warning("migrate.delete_failed", volume=self.src.path, chunk=key.name,
                        error=str(exc))
        self._unlinked = True

    def _relink(self, force: bool = False) -> None:
        """Ask the view to re-link the source's paths whose chunk file went (throttled: a
        sweep walks the whole view)."""
        now = time.monotonic()
        if self._unlinked and (force or now - self._relinked_at >= RELINK_EVERY):
            self._unlinked, self._relinked_at = False, now
            self.m.forget_links([self.src])


async def _mtime(v: Volume, key: ChunkKey) -> int | None:
    """The mtime a store keeps for a chunk (a local file's; an S3 object's metadata)."""
    if isinstance(v.store, LocalVolume):
        return v.store.mtime_ns(key)
    if v.kind == "s3":
        from cluster.s3store import S3Store

        if isinstance(v.store, S3Store):
            with contextlib.suppress(StoreError):
                return await v.store.mtime_ns(key)
    return None


async def migrate_store(
    m: Master, src: int | str, dst: int | str, *, move: bool = False, dry_run: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Move (``move``) or copy every chunk copy on volume ``src`` to ``dst``; the report
    (``Report.json``). ``dry_run`` only counts. Bad input raises ``InvalidArgument``."""
    s, d = plan(m, src, dst)
    mig = Migration(m, s, d, move=move, dry_run=dry_run, progress=progress)
    return (await mig.run()).json()


async def stream(
    m: Master, send: Callable[[bytes], Awaitable[Any]], src: int | str, dst: int | str, *,
    move: bool = False, dry_run: bool = False, every: float = 0.25, heartbeat: float = 5.0,
) -> None:
    """Run a migration, sending NDJSON lines: ``{"progress": …}`` at most every ``every``
    seconds (and at least every ``heartbeat``), then ``{"result": …}`` or ``{"error": NAME,
    "message": …}`` (``POST /v1/migrate-store``). If sending fails or the caller is cancelled
    (the client went away), the migration stops: the chunks under way finish, no other starts
    (``Migration.stop``); a later run resumes it."""
    latest: dict[str, Any] | None = None

    async def line(obj: dict[str, Any]) -> None:
        await send(json.dumps(obj).encode() + b"\n")

    def progress(p: dict[str, Any]) -> None:
        nonlocal latest
        latest = p

    mig: Migration | None = None

    async def run() -> dict[str, Any]:
        nonlocal mig
        s, d = plan(m, src, dst)
        mig = Migration(m, s, d, move=move, dry_run=dry_run, progress=progress)
        return (await mig.run()).json()

    task = asyncio.create_task(run())
    try:
        sent: dict[str, Any] | None = None
        sent_at = time.monotonic()
        while True:
            done, _ = await asyncio.wait({task}, timeout=every)
            if latest is not None and (
                latest is not sent or time.monotonic() - sent_at >= heartbeat
            ):
                sent, sent_at = latest, time.monotonic()
                await line({"progress": sent})
            if done:
                break
        try:
            result = task.result()
        except ClusterError as exc:
            await line({"error": type(exc).__name__, "message": str(exc)})
            return
        await line({"result": result})
    finally:
        if not task.done():
            if mig is not None:
                mig.stop()
            try:
                await asyncio.wait({task}, timeout=STOP_WAIT)
            finally:
                if not task.done():
                    task.cancel()

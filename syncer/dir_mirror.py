"""Directory → target (another directory, or the cluster): the mirror driven by inotify.

The watcher (``syncer.watch``) reports *paths to look at again*; the mirror never replays
events. Looking at a path means: ``lstat`` it on the source and make the target match (copy
the file with its mtime and mode, mirror a link, make a folder, or apply the delete policy when
it is gone). So events can be merged, reordered within a path's lifetime, or lost to a queue
overflow and recovered by a scan, and the result is still the source's current state.

- **Coalescing**: a path waits in one ordered queue entry however many events it gets; a path
  being copied that changes again is queued once more after the copy. A file rewritten ten
  times in 100 ms is copied once or twice, the last time with its final content.
- **Bounded concurrency** (``concurrency`` workers) and **bounded memory**: more than
  ``MAX_PENDING`` queued paths collapse into one rescan.
- **Renames** stay renames: a paired move renames on the target once no copy under either name
  is running and staged copies are in place, then the new name gets a quick check. A rename of
  a file that was itself still waiting to be copied just moves the queue entry.
- **Never half-written**: a file is copied on ``IN_CLOSE_WRITE``; one found by a scan or
  created without a close is copied once it has been quiet for ``SETTLE`` seconds; a copy
  whose source changed meanwhile is thrown away (``SourceChanged``) and done again.
- **Retries**: target trouble is retried with backoff (``syncer.retry``) and shown in the
  status file; nothing is dropped.
- **Reconcile**: a full comparison (size, mtime, mode; content with ``checksum``) at start,
  after an overflow, and every ``reconcile_every`` seconds, is the safety net. It is also the
  whole of ``tandem sync full``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from syncer.errors import CommitFailed, Skipped
from syncer.retry import retrying
from syncer.status import Status
from syncer.target import TMP, TRASH
from syncer.tree import (
    Item,
    SourceChanged,
    Target,
    enable_leases,
    leases_enabled,
    lstat_item,
    sha256_file,
    topmost,
    walk,
)
from syncer.watch import Watcher

log = structlog.get_logger("syncer")

SETTLE = 0.5  # seconds a file found by a scan (not closed under our eyes) must be quiet
MAX_PENDING = 200_000
BATCH = 512  # staged copies per commit, at most (following changes)
FULL_BATCH = 8192  # the same for a full pass: fewer, bigger flushes
BATCH_FILES = 128  # plain copies handed to the target's thread at once
BATCHES = 2  # batches in flight (more threads only fight over the GIL)
COMMIT_WAIT = 0.005  # seconds a commit waits for copies still running to join it


@dataclass(slots=True)
class Work:
    since: float  # monotonic time of the first event not yet applied (for the lag)
    deep: bool = False  # a folder: compare everything below it too
    check: bool = False  # copy only if the target differs (quick check)
    settle: bool = False  # a file: copy only once it has been quiet for SETTLE
    single: bool = False  # not in a batch: a batch found it is not a plain file copy

    def merge(self, other: Work) -> None:
        self.since = min(self.since, other.since)
        self.deep |= other.deep
        self.check &= other.check
        self.settle &= other.settle
        self.single |= other.single

    @property
    def plain(self) -> bool:
        """Copy it, whatever is on the target: can go in a batch."""
        return not (self.deep or self.check or self.settle or self.single)


@dataclass(frozen=True, slots=True)
class Move:
    src: bytes
    dst: bytes
    is_dir: bool
    since: float


def related(a: bytes, b: bytes) -> bool:
    """One path is the other or lies below it."""
    return a == b or a.startswith(b + b"/") or b.startswith(a + b"/")


class DirectoryMirror:
    def __init__(self, source: str | os.PathLike[str], target: Target, state_dir: Path, *,
                 direction: str = "dir->dir", concurrency: int = 8,
                 reconcile_every: float = 3600.0, deletes: bool = True,
                 checksum: bool = False) -> None:
        self.root = os.fsencode(os.path.abspath(source))
        enable_leases()
        self.target = target
        self.state_dir = state_dir
        self.concurrency = concurrency
        self.reconcile_every = reconcile_every
        self.deletes = deletes
        self.checksum = checksum
        self.counters = {"files_copied": 0, "bytes_copied": 0, "deleted": 0, "renamed": 0,
                         "links": 0, "skipped": 0, "errors": 0, "reconciles": 0,
                         "overflows": 0, "commits": 0}
        self.status = Status(state_dir, direction, os.fsdecode(self.root), target.label,
                             self.counters)
        self.progress: Callable[[int], None] | None = None  # bytes copied, for a progress bar
        self.planned_bytes = 0  # bytes of the files the comparisons found to copy
        self._pending: OrderedDict[bytes | int, Work | Move] = OrderedDict()
        self._inflight: dict[bytes, float] = {}
        self._again: dict[bytes, Work] = {}
        self._waiting: dict[bytes, Work] = {}  # files waiting to settle
        self._moves = 0
        self._staged_since: float | None = None
        self._wake = asyncio.Event()
        self._finished = asyncio.Event()
        self._staged_event = asyncio.Event()
        self._rescan = asyncio.Event()
        self._batch_slots = asyncio.Semaphore(BATCHES)
        self._commit_batch, self._commit_wait = BATCH, COMMIT_WAIT
        self._tasks: list[asyncio.Task[None]] = []

    # -- entry points -------------------------------------------------------------------------

    async def run(self) -> None:
        """The daemon: watch, reconcile once, then follow events (and reconcile now and then)
        until cancelled."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        watcher = Watcher(self.root, self)
        watcher.start()  # before the first scan: nothing made during the scan is missed
        log.info("sync.started", source=self.status.source, target=self.status.target,
                 watches=watcher.watches)
        self._start_workers()
        status = asyncio.create_task(self._status_loop())
        try:
            await self.reconcile()
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.reconcile_every):
                        await self._rescan.wait()
                self._rescan.clear()
                await self.reconcile()
        finally:
            watcher.close()
            status.cancel()
            await self._stop_workers()

    async def full(self) -> dict[str, int]:
        """One full pass (``tandem sync full``): copy what differs, delete extras if
        ``deletes``, make it durable, return the counters."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._commit_batch, self._commit_wait = FULL_BATCH, 1.0  # nobody reads it meanwhile
        self._start_workers()
        try:
            await self.reconcile()
            await self.drained()
            await retrying(self._error, self.target.commit)
            await retrying(self._error, self._flush)
        finally:
            await self._stop_workers()
        self._write_status(force=True)
        return self.counters

    async def drained(self) -> None:
        """Wait until nothing is queued, running, settling or staged."""
        while not self.idle():
            self._finished.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):
                    await self._finished.wait()

    def idle(self) -> bool:
        return not (self._pending or self._inflight or self._again or self._waiting
                    or self.target.staged())

    # -- what the watcher reports (``watch.Sink``) ---------------------------------------------

    def changed(self, rel: bytes, *, deep: bool = False, settle: bool = False) -> None:
        if self._ignored(rel):
            return
        self._add(rel, Work(time.monotonic(), deep=deep, check=settle, settle=settle))

    def moved(self, src: bytes, dst: bytes, is_dir: bool) -> None:
        if self._ignored(dst):
            self.changed(src)
            return
        if self._ignored(src):
            self.changed(dst, deep=is_dir)
            return
        now = time.monotonic()
        if not is_dir and src in self._pending:
            # Still waiting to be copied (the crawler's temp-name-then-rename): the copy goes
            # to the new name; an older copy under the old name, if any, is deleted.
            work = self._pending.pop(src)
            assert isinstance(work, Work)
            self._add(dst, work)
            self._add(src, Work(now))
            return
        self._rekey(src, dst, is_dir)
        self._moves += 1
        self._pending[self._moves] = Move(src, dst, is_dir, now)
        self._wake.set()

    def rescan(self) -> None:
        self.counters["overflows"] += 1
        self._rescan.set()

    def _ignored(self, rel: bytes) -> bool:
        name = rel.rsplit(b"/", 1)[-1]
        return name.startswith(TMP) or rel == TRASH or rel.startswith(TRASH + b"/")

    def _rekey(self, src: bytes, dst: bytes, is_dir: bool) -> None:
        """Queued work under ``src`` now concerns ``dst`` (the source moved)."""
        for table in (self._pending, self._again):
            if is_dir:
                keys = [k for k in table if isinstance(k, bytes) and related(k, src)
                        and len(k) >= len(src)]
            else:
                keys = [src] if src in table else []
            for k in keys:
                assert isinstance(k, bytes)
                work = table.pop(k)
                if isinstance(work, Work):
                    self._add(dst + k[len(src):], work)

    # -- the queue ----------------------------------------------------------------------------

    def _add(self, rel: bytes, work: Work) -> None:
        if rel in self._inflight:
            again = self._again.get(rel)
            if again is None:
                self._again[rel] = work
            else:
                again.merge(work)
            return
        queued = self._pending.get(rel)
        if isinstance(queued, Work):
            queued.merge(work)
        else:
            self._pending[rel] = work
            if len(self._pending) > MAX_PENDING:
                log.warning("sync.queue_full", pending=len(self._pending))
                self._pending.clear()
                self.rescan()
        self._wake.set()

    def _defer(self, rel: bytes, work: Work, delay: float) -> None:
        """Look at ``rel`` again in ``delay`` seconds (a file not quiet yet)."""
        waiting = self._waiting.get(rel)
        if waiting is not None:
            waiting.merge(work)
            return
        self._waiting[rel] = work
        asyncio.get_running_loop().call_later(delay, self._wake_up, rel)

    def _wake_up(self, rel: bytes) -> None:
        work = self._waiting.pop(rel, None)
        if work is not None:
            self._add(rel, work)

    async def _take(self) -> tuple[bytes | int, Work | Move]:
        while not self._pending:
            self._wake.clear()
            await self._wake.wait()
        return self._pending.popitem(last=False)

    def _start_workers(self) -> None:
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.concurrency)]
        self._tasks.append(asyncio.create_task(self._committer()))

    async def _stop_workers(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _worker(self) -> None:
        while True:
            key, job = await self._take()
            if isinstance(job, Move):
                await self._guard((job.src, job.dst), self._move(job))
                self._finished.set()
                continue
            assert isinstance(key, bytes)
            batch = [(key, job)]
            batched = job.plain and hasattr(self.target, "put_many")
            if batched:
                batch += self._take_plain(BATCH_FILES - 1)
            for rel, work in batch:
                self._inflight[rel] = work.since
            try:
                if batched:
                    await self._guard(tuple(r for r, _ in batch), self._copy_batch(batch))
                else:
                    await self._guard((key,), self._sync(key, job))
            finally:
                for rel, _ in batch:
                    del self._inflight[rel]
                    again = self._again.pop(rel, None)
                    if again is not None:
                        self._add(rel, again)
                self._finished.set()

    def _take_plain(self, limit: int) -> list[tuple[bytes, Work]]:
        """More plain copies from the front of the queue (up to the first other kind)."""
        out: list[tuple[bytes, Work]] = []
        while self._pending and len(out) < limit:
            key, job = next(iter(self._pending.items()))
            if not (isinstance(key, bytes) and isinstance(job, Work) and job.plain):
                break
            self._pending.popitem(last=False)
            out.append((key, job))
        return out

    async def _copy_batch(self, batch: list[tuple[bytes, Work]]) -> None:
        """Plain copies, on the target's thread in one go; what turns out not to be a plain
        copy comes back to be looked at one by one."""
        since = {rel: work.since for rel, work in batch}
        async with self._batch_slots:
            done = await self.target.put_many(self.root, list(since))  # type: ignore[attr-defined]
        for rel, size in done.copied:
            self._copied(size, since[rel])
        for rel in done.changed:
            self._add(rel, Work(since[rel], check=True, settle=True))
        for rel in done.other:
            self._add(rel, Work(since[rel], single=True))
        if done.error is not None:
            self._error(done.error)

    async def _guard(self, rels: tuple[bytes, ...], work: Awaitable[None]) -> None:
        """Run one piece of work; a bug in it is logged and its paths looked at again later,
        never the end of the worker."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Skipped as exc:
            self.counters["skipped"] += 1
            log.info("sync.skipped", reason=str(exc))
        except Exception as exc:
            log.exception("sync.failed", error=str(exc))
            self._error(exc)
            for rel in rels:
                self._defer(rel, Work(time.monotonic(), deep=True), 1.0)

    def _error(self, exc: BaseException) -> None:
        self.counters["errors"] += 1
        self.status.last_error = f"{type(exc).__name__}: {exc}"
        self._write_status(force=True)

    # -- looking at one path ------------------------------------------------------------------

    async def _sync(self, rel: bytes, work: Work) -> None:
        source = self.root + b"/" + rel
        item = lstat_item(source)
        if item is None:
            if self.deletes and await retrying(self._error, self.target.delete, rel):
                self.counters["deleted"] += 1
            return
        if item.kind == "dir":
            await retrying(self._error, self.target.make_dir, rel, item)
            if work.deep:
                await self._compare(rel)
            return
        if item.kind == "link":
            await retrying(self._error, self.target.put_link, rel, item.link)
            self.counters["links"] += 1
            return
        if item.kind == "other":
            raise Skipped(f"{os.fsdecode(rel)}: not a regular file, folder or link")
        if work.settle and not leases_enabled():  # a lease tells it is closed: see _copy
            quiet = (time.time_ns() - item.mtime_ns) / 1e9
            if quiet < SETTLE:
                self._defer(rel, work, SETTLE - quiet)
                return
        if work.check and await self._same(rel, source, item,
                                           await retrying(self._error, self.target.stat, rel)):
            return
        await self._copy(rel, source, item, work)

    async def _copy(self, rel: bytes, source: bytes, item: Item, work: Work) -> None:
        try:
            await retrying(self._error, self.target.put_file, rel, source, item)
        except SourceChanged:
            self._defer(rel, Work(work.since, check=True, settle=True), SETTLE)
            return
        self._copied(item.size, work.since)

    def _copied(self, size: int, since: float) -> None:
        self.counters["files_copied"] += 1
        self.counters["bytes_copied"] += size
        if self.progress is not None:
            self.progress(size)
        if self.target.staged():
            if self._staged_since is None:
                self._staged_since = since
            self._staged_event.set()

    async def _same(self, rel: bytes, source: bytes, item: Item, there: Item | None) -> bool:
        if not item.same(there):
            return False
        if not self.checksum or item.kind != "file":
            return True
        digest = getattr(self.target, "digest", None)
        if digest is None:
            return True
        theirs = await retrying(self._error, digest, rel)
        return bool(theirs == await asyncio.to_thread(sha256_file, source))

    async def _move(self, m: Move) -> None:
        while any(related(p, m.src) or related(p, m.dst) for p in self._inflight):
            self._finished.clear()
            await self._finished.wait()
        await retrying(self._error, self.target.commit)
        renamed = await retrying(self._error, self.target.rename, m.src, m.dst)
        if renamed:
            self.counters["renamed"] += 1
        else:
            self._add(m.src, Work(m.since))
        self._add(m.dst, Work(m.since, deep=m.is_dir, check=True))

    async def _committer(self) -> None:
        while True:
            await self._staged_event.wait()
            self._staged_event.clear()
            with contextlib.suppress(TimeoutError):  # let running copies join the batch
                async with asyncio.timeout(self._commit_wait):
                    while self._inflight and self.target.staged() < self._commit_batch:
                        self._finished.clear()
                        await self._finished.wait()
            self._staged_since = None
            try:
                await self.target.commit()
                self.counters["commits"] += 1
            except CommitFailed as exc:
                self._error(exc)
                for rel in exc.rels:
                    self._add(rel, Work(time.monotonic()))
                await asyncio.sleep(1.0)
            except Exception as exc:
                self._error(exc)
                self._staged_event.set()
                await asyncio.sleep(1.0)
            self._finished.set()

    async def _flush(self) -> None:
        flush = getattr(self.target, "flush", None)
        if flush is not None:
            await flush()

    # -- comparing whole trees ----------------------------------------------------------------

    async def reconcile(self) -> None:
        """Compare the whole tree and queue every difference."""
        self.counters["reconciles"] += 1
        started = time.monotonic()
        queued = await self._compare(b"")
        log.info("sync.reconciled", queued=queued, seconds=round(time.monotonic() - started, 3))

    async def _compare(self, under: bytes) -> int:
        """Queue what differs below ``under`` between the source and the target."""
        now = time.monotonic()
        def mine_scan() -> Awaitable[dict[bytes, Item]]:
            return asyncio.to_thread(_scan, self.root, under)

        def theirs_scan() -> Awaitable[dict[bytes, Item]]:
            return retrying(self._error, self.target.scan, under)

        if under:  # a new folder, small, with files waiting on it: both sides at once
            mine, theirs = await asyncio.gather(mine_scan(), theirs_scan())
        else:  # the whole tree: one side after the other, as two scans in two threads hand
            # the GIL back and forth at every stat (both sides of 50,000 files: 1.08 s at
            # once, 0.66 s one after the other)
            mine = await mine_scan()
            theirs = await theirs_scan()
        queued = 0
        for rel, item in mine.items():
            there = theirs.get(rel)
            same = item.same(there)
            if same and (item.kind != "file" or not self.checksum):
                continue
            if item.kind == "dir" and there is not None and there.kind == "dir":
                continue  # folders: only their existence is mirrored
            # A file that looks the same is only queued for its checksum comparison. One that
            # may be being written waits to be quiet unless a lease can tell (see _sync).
            settle = item.kind == "file" and not leases_enabled()
            self._add(rel, Work(now, check=same, settle=settle))
            self.planned_bytes += item.size
            queued += 1
        if self.deletes:
            for rel in topmost(theirs.keys() - mine.keys()):
                self._add(rel, Work(now))
                queued += 1
        return queued

    # -- status -------------------------------------------------------------------------------

    def lag_seconds(self) -> float:
        first = next(iter(self._pending.values()), None)
        oldest = [first.since] if first is not None else []
        oldest += self._inflight.values()
        oldest += (w.since for w in self._waiting.values())
        if self._staged_since is not None:
            oldest.append(self._staged_since)
        return time.monotonic() - min(oldest) if oldest else 0.0

    def _write_status(self, *, force: bool = False) -> None:
        self.status.write(queue=len(self._pending) + len(self._waiting) + len(self._again),
                          inflight=len(self._inflight) + self.target.staged(),
                          lag_seconds=self.lag_seconds(), force=force)

    async def _status_loop(self) -> None:
        while True:
            self._write_status()
            await asyncio.sleep(0.1)


def _scan(root: bytes, under: bytes) -> dict[bytes, Item]:
    """The source below ``under`` (the trash folder and temporary names left out)."""
    return {rel: item for rel, item in walk(root, under, skip=frozenset([TRASH]), skip_prefix=TMP)}


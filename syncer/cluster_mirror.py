"""Cluster → directory: the legacy directory kept an exact mirror of the cluster, driven by the
cluster's change feed from a persisted cursor (so it sees every writer, and a restart
continues where it stopped instead of copying everything again).

Each change names the paths it touched; the mirror re-reads their current state from the
master and makes the target match (a put copies the file, with its mtime and mode; a rm
deletes per policy; a mv renames on the target; a snapshot copies the new tree). Applying a
change twice is harmless, so the cursor is saved after the target is flushed: a crash
re-applies at most the changes since the last save. A cursor behind the changelog's
retention, or no cursor at all, means a full pass first.

Changes come in batches (what the changelog holds when the mirror looks, up to 1,000): puts
of different paths are copied ``COPIES`` at a time, a path put several times is copied once,
other changes keep their order, and the whole batch is made durable with one syncfs (the
copies are staged, then renamed into place) before the cursor moves past it.

Bytes stream from the master in pieces into the target's atomic writer on a thread; memory
per file is bounded by a small queue of pieces.
"""

from __future__ import annotations

import asyncio
import os
import queue
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import structlog

from cluster.changelog import ChangeFeed
from cluster.errors import ChangelogTrimmed, NotFound
from cluster.meta import Change, Entry
from cluster.remote import RemoteCluster
from syncer import state
from syncer.errors import SyncError
from syncer.retry import retrying
from syncer.status import Status
from syncer.target import DirectoryTarget
from syncer.tree import Item, topmost

log = structlog.get_logger("syncer")

_END = object()
T = TypeVar("T")
COPIES = 4  # files copied at once (each holds a worker thread while it writes)
WHOLE = 4 << 20  # files up to this size are read whole, then written in one go
FULL_BATCH = 4096  # copies of a full pass made durable together


class ClusterMirror:
    def __init__(self, master: RemoteCluster, meta_dir: Path, target: DirectoryTarget,
                 state_dir: Path) -> None:
        self.master = master
        self.feed = ChangeFeed(meta_dir)
        self.target = target
        self.state_dir = state_dir
        self.counters = {"files_copied": 0, "deleted": 0, "renamed": 0, "changes": 0,
                         "full_passes": 0, "errors": 0}
        self.status = Status(state_dir, "cluster->legacy", "cluster",
                             os.fsdecode(target.root), self.counters)
        self.oldest_pending_ms: int | None = None
        self.cursor: int | None = None
        self.progress: Callable[[int], None] | None = None  # bytes copied, for a progress bar
        self.planned_bytes = 0  # bytes the full pass found to copy

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cursor = state.read_cursor(self.state_dir)
        while True:
            try:
                if cursor is None:
                    cursor = await self.full()
                await self._follow(cursor)
            except ChangelogTrimmed:
                log.warning("sync.behind_retention", cursor=cursor)
                cursor = None

    async def _follow(self, cursor: int) -> None:
        self.cursor = cursor
        self._status(force=True)
        async for batch in self.feed.follow_batches(cursor):
            self.oldest_pending_ms = batch[0].ts_ms
            await retrying(self._error, self.apply_batch, batch)
            await retrying(self._error, self._durable)
            self.counters["changes"] += len(batch)
            self._save_cursor(batch[-1].seq)
            self.oldest_pending_ms = None
            self._status()

    async def _durable(self) -> None:
        """Staged copies into place (one syncfs for all of them), folders flushed."""
        await asyncio.to_thread(self.target.commit)
        await asyncio.to_thread(self.target.flush)

    def _error(self, exc: BaseException) -> None:
        self.counters["errors"] += 1
        self.status.last_error = f"{type(exc).__name__}: {exc}"
        self._status(force=True)

    # -- applying changes -------------------------------------------------------------------

    async def apply_batch(self, batch: list[Change]) -> None:
        """Apply changes in order. Puts run ``COPIES`` at a time, a path put several times is
        copied once (each copy re-reads the current state), and any other change waits for
        the puts before it."""
        puts: dict[bytes, None] = {}
        for c in batch:
            if c.op in ("put", "undelete"):
                puts[c.path] = None
                continue
            await self._copy_trees(list(puts))
            puts.clear()
            await self.apply(c)
        await self._copy_trees(list(puts))

    async def _copy_trees(self, paths: list[bytes]) -> None:
        await _together(self.copy_tree, paths)

    async def apply(self, c: Change) -> None:
        if c.op in ("put", "undelete"):
            await self.copy_tree(c.path)
        elif c.op == "rm":
            if await asyncio.to_thread(self.target.delete, _rel(c.path)):
                self.counters["deleted"] += 1
        elif c.op == "mv" and c.dest is not None:
            moved = await asyncio.to_thread(self.target.rename, _rel(c.path), _rel(c.dest))
            if moved:
                self.counters["renamed"] += 1
            await self.copy_tree(c.dest, only_changed=moved)
        elif c.op == "snapshot" and c.dest is not None:
            await self.copy_tree(c.dest)

    async def copy_tree(self, path: bytes, *, only_changed: bool = False) -> None:
        """Copy every file under ``path`` (a file: itself) that the target lacks or has with
        another size or mtime (always, unless ``only_changed``: a put must be copied even if
        size and mtime happen to match)."""
        try:
            entries = await self.master.walk(path)
        except NotFound:
            return  # gone again since: a later change says what to do
        for e in entries:
            if e.is_dir:
                continue
            if only_changed and self._same(e):
                continue
            await self.copy_file(e)

    def _same(self, e: Entry) -> bool:
        try:
            st = os.stat(self.target.path(_rel(e.path)))
        except OSError:
            return False
        return st.st_size == e.size and st.st_mtime_ns == e.mtime_ns

    async def copy_file(self, e: Entry) -> None:
        """Copy one file from the master into a staged temporary file (``_durable`` puts it
        in place): a small one in one piece, a big one streamed through a bounded queue."""
        rel = _rel(e.path)
        if e.size <= WHOLE:
            data = b"".join([piece async for piece in self.master.read(e.path)])
            await asyncio.to_thread(self.target.write, rel, [data], mtime_ns=e.mtime_ns,
                                    mode=e.mode, stage=True)
        else:
            await self._stream(rel, e)
        self.counters["files_copied"] += 1
        if self.progress is not None:
            self.progress(e.size)

    async def _stream(self, rel: bytes, e: Entry) -> None:
        pieces: queue.Queue[object] = queue.Queue(maxsize=4)

        def write() -> int:
            return self.target.write(rel, _drain(pieces), mtime_ns=e.mtime_ns, mode=e.mode,
                                     stage=True)

        writer = asyncio.create_task(asyncio.to_thread(write))
        try:
            async for piece in self.master.read(e.path):
                await _offer(pieces, piece, writer)
            await _offer(pieces, _END, writer)
        except BaseException:
            await _offer(pieces, _ABORT, writer)
            await asyncio.gather(writer, return_exceptions=True)
            raise
        await writer

    # -- the full pass ----------------------------------------------------------------------

    async def full(self, *, checksum: bool = False, delete: bool = False) -> int:
        """Copy every file the target lacks or has with another size, mtime or mode (or,
        with ``checksum``, other bytes); with ``delete``, apply the delete policy to what
        only the target has. Returns the changelog position the pass started from (later
        changes are then applied from the feed).

        The daemon's own full pass (no cursor yet, or one behind retention) never deletes:
        a legacy directory that holds more than the cluster is reported by ``verify`` and
        cleaned only on request (``tandem sync full --delete``)."""
        _, start = self.feed.bounds()
        log.info("sync.full_started", cursor=start)
        self.oldest_pending_ms = time.time_ns() // 1_000_000
        self._status(force=True)
        await retrying(self._error, self._full_pass, checksum, delete)
        await retrying(self._error, self._durable)
        self._save_cursor(start)
        self.oldest_pending_ms = None
        self.counters["full_passes"] += 1
        log.info("sync.full_done", cursor=start, copied=self.counters["files_copied"])
        self._status(force=True)
        return start

    async def _full_pass(self, checksum: bool, delete: bool) -> None:
        want = {e.path.lstrip(b"/"): e for e in await self.master.walk(b"/")}
        have = await asyncio.to_thread(self.target.scan)
        todo = []
        for rel, e in want.items():
            if e.is_dir:
                continue
            if Item("file", e.size, e.mtime_ns, e.mode & 0o7777).same(have.get(rel)) and (
                    not checksum or await asyncio.to_thread(self.target.digest, rel) == e.hash):
                continue
            todo.append(e)
        self.planned_bytes = sum(e.size for e in todo)
        for i in range(0, len(todo), FULL_BATCH):
            await _together(self.copy_file, todo[i:i + FULL_BATCH])
            await self._durable()
        if delete:
            for rel in topmost(have.keys() - want.keys()):
                if await asyncio.to_thread(self.target.delete, rel):
                    self.counters["deleted"] += 1

    # -- state ------------------------------------------------------------------------------

    def _save_cursor(self, seq: int) -> None:
        state.write_cursor(self.state_dir, seq)
        self.cursor = seq

    def lag_seconds(self) -> float:
        if self.oldest_pending_ms is None:
            return 0.0
        return max(0.0, time.time() - self.oldest_pending_ms / 1000)

    def _status(self, *, force: bool = False) -> None:
        """``queue``: changes in the changelog not applied yet."""
        busy = self.oldest_pending_ms is not None

        def queue() -> int:
            last = self.feed.bounds()[1]
            return max(0, last - self.cursor) if self.cursor is not None else last

        self.status.write(queue=queue, inflight=int(busy), lag_seconds=self.lag_seconds(),
                          cursor=self.cursor, force=force, idle=not busy)


_ABORT = object()


async def _together(fn: Callable[[T], Awaitable[None]], items: list[T]) -> None:
    """``fn`` on each item, ``COPIES`` at a time; the first failure cancels the rest and is
    raised as itself (the retry layer looks at its type)."""
    slots = asyncio.Semaphore(COPIES)

    async def one(item: T) -> None:
        async with slots:
            await fn(item)

    try:
        async with asyncio.TaskGroup() as tg:
            for item in items:
                tg.create_task(one(item))
    except ExceptionGroup as group:
        raise group.exceptions[0] from None


async def _offer(pieces: queue.Queue[object], item: object, writer: asyncio.Task[int]) -> None:
    """Put ``item`` in the queue without blocking the loop (nor a thread), unless the writer
    has stopped."""
    while not writer.done():
        try:
            pieces.put_nowait(item)
            return
        except queue.Full:
            await asyncio.sleep(0.001)


def _drain(pieces: queue.Queue[object]) -> Iterator[bytes]:
    while True:
        item = pieces.get()
        if item is _END:
            return
        if item is _ABORT:
            raise SyncError("the copy was interrupted")
        assert isinstance(item, bytes)
        yield item


def _rel(path: bytes) -> bytes:
    return path.lstrip(b"/")


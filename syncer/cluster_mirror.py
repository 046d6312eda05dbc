"""Cluster → directory: the legacy directory kept an exact mirror of the cluster, driven by the
cluster's change feed from a persisted cursor (so it sees every writer, and a restart
continues where it stopped instead of copying everything again).

Each change names the paths it touched; the mirror re-reads their current state from the
master and makes the target match (a put copies the file, with its mtime and mode; a rm
deletes per policy; a mv renames on the target; a snapshot copies the new tree). Applying a
change twice is harmless, so the cursor is saved after the target is flushed: a crash
re-applies at most the changes since the last save. A cursor behind the changelog's
retention, or no cursor at all, means a full pass first.

Bytes stream from the master in pieces into the target's atomic writer on a thread; memory
per file is bounded by a small queue of pieces.
"""

from __future__ import annotations

import asyncio
import os
import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path

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
        async for change in self.feed.follow(cursor):
            self.oldest_pending_ms = change.ts_ms
            await retrying(self._error, self.apply, change)
            self.counters["changes"] += 1
            await asyncio.to_thread(self.target.flush)
            self._save_cursor(change.seq)
            self.oldest_pending_ms = None
            self._status()

    def _error(self, exc: BaseException) -> None:
        self.counters["errors"] += 1
        self.status.last_error = f"{type(exc).__name__}: {exc}"
        self._status(force=True)

    # -- applying changes -------------------------------------------------------------------

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
        pieces: queue.Queue[object] = queue.Queue(maxsize=4)

        def write() -> int:
            return self.target.write(_rel(e.path), _drain(pieces), mtime_ns=e.mtime_ns,
                                     mode=e.mode)

        writer = asyncio.create_task(asyncio.to_thread(write))
        try:
            async for piece in self.master.read(e.path):
                while True:
                    try:
                        pieces.put_nowait(piece)
                        break
                    except queue.Full:
                        if writer.done():
                            break
                        await asyncio.sleep(0.001)
            await asyncio.to_thread(pieces.put, _END)
        except BaseException:
            await asyncio.to_thread(pieces.put, _ABORT)
            await asyncio.gather(writer, return_exceptions=True)
            raise
        await writer
        self.counters["files_copied"] += 1
        if self.progress is not None:
            self.progress(e.size)

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
        await asyncio.to_thread(self.target.flush)
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
        for e in todo:
            await self.copy_file(e)
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


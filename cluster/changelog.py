"""Following the changelog: the cluster's change feed, usable from any process on the host.

``ChangeFeed.follow(cursor)`` yields every ``Change`` with ``seq > cursor`` in order, then
waits. It wakes as soon as any process commits (inotify on the metadata folder sees the WAL
being written), with a slow poll as a safety net. A cursor older than the oldest retained
entry raises ``ChangelogTrimmed``: the consumer must rescan, since changes were lost to it.
Each consumer stores its own cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pyinotify

from cluster import schema
from cluster.errors import ChangelogTrimmed
from cluster.meta import Change, Meta

#: Seconds after an inotify event during which the feed re-reads often (the commit that
#: caused it becomes visible only after its fsync).
SETTLE = 2.0


class ChangeFeed:
    """Reads the changelog through its own read-only connection."""

    def __init__(self, meta_dir: Path, *, poll: float = 1.0, batch: int = 1000) -> None:
        self.meta_dir = Path(meta_dir)
        self.poll = poll
        self.batch = batch

    def bounds(self) -> tuple[int, int]:
        """(oldest retained seq, newest seq)."""
        with self._meta() as meta:
            return meta.changelog_bounds()

    @contextlib.contextmanager
    def _meta(self) -> Iterator[Meta]:
        conn = schema.connect(self.meta_dir / "meta.db", readonly=True)
        try:
            yield Meta(conn, 1, 0)
        finally:
            conn.close()

    def read(self, cursor: int) -> list[Change]:
        """The next batch after ``cursor``; raises ``ChangelogTrimmed`` if entries were lost."""
        with self._meta() as meta:
            return self._read(meta, cursor)

    def _read(self, meta: Meta, cursor: int) -> list[Change]:
        meta.db.execute("BEGIN")
        try:
            oldest, _ = meta.changelog_bounds()
            if cursor < oldest - 1:
                raise ChangelogTrimmed(cursor, oldest)
            return meta.changes(cursor, self.batch)
        finally:
            meta.db.execute("COMMIT")

    async def follow(self, cursor: int) -> AsyncIterator[Change]:
        async for changes in self.follow_batches(cursor):
            for change in changes:
                yield change

    async def follow_batches(self, cursor: int) -> AsyncIterator[list[Change]]:
        """``follow``, a list at a time: the changes there are when it looks (at most
        ``batch``), so a consumer can apply them together and save its cursor once."""
        wake = asyncio.Event()
        wm = pyinotify.WatchManager()
        notifier = pyinotify.AsyncioNotifier(
            wm, asyncio.get_running_loop(), default_proc_fun=lambda _event: wake.set()
        )
        try:
            wm.add_watch(str(self.meta_dir), pyinotify.IN_MODIFY | pyinotify.IN_CLOSE_WRITE)
            with self._meta() as meta:
                delay, event_at = self.poll, float("-inf")
                while True:
                    wake.clear()
                    read = asyncio.ensure_future(asyncio.to_thread(self._read, meta, cursor))
                    try:
                        changes = await asyncio.shield(read)
                    except asyncio.CancelledError:
                        # The thread is still using this connection: closing it under a
                        # running query crashes SQLite (a segfault), so let the read finish.
                        await asyncio.wait({read})
                        raise
                    if changes:
                        yield changes
                        cursor = changes[-1].seq
                    if len(changes) < self.batch:
                        try:
                            async with asyncio.timeout(delay):  # wait_for can lose a cancel
                                await wake.wait()
                            # The event comes when the WAL is written, before the commit is
                            # fsynced and visible: after one, keep looking every 0.1 s or
                            # sooner for a while, even if no further event comes.
                            delay, event_at = 0.01, time.monotonic()
                        except TimeoutError:
                            recent = time.monotonic() - event_at < SETTLE
                            delay = min(delay * 2, 0.1, self.poll) if recent else self.poll
        finally:
            notifier.stop()

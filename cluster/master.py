"""The master: the one writer of the cluster's metadata, and the in-process async client API.

``Master`` owns the SQLite metadata (one writer connection, used by one database thread and,
for a put's commit statements, by the loop: ``_commit_quick``), the volumes, the placement of
copies, the write and read paths and the background work (``background.py``). It holds an
exclusive lock on ``meta_dir/master.lock`` so two masters never write the same metadata.

Durability, exactly: ``put`` returns after every chunk copy was fsynced (file and folder) on
``min(goal, writable volumes)`` distinct volumes *and* the SQLite WAL commit that made the file
visible was fsynced (``synchronous=FULL``). Every other mutation returns after its commit was
fsynced. Mutations issued concurrently share one commit (group commit); each is still undone
alone if it fails.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import fcntl
import functools
import hashlib
import os
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from cluster import paths, placement, schema
from cluster.batch import BATCH_MAX, PendingWrite, write_and_sync
from cluster.config import ClusterConfig
from cluster.errors import (
    ChunkCorrupt,
    ChunkMissing,
    ClusterError,
    GoalChanged,
    InvalidArgument,
    IsADirectory,
    MasterBusy,
    MetadataError,
    NotEnoughCopies,
    StoreError,
    VolumeFull,
    VolumeReadOnly,
    VolumeUnavailable,
)
from cluster.meta import Chunk, Entry, Meta, NewChunk, distinct_mtime
from cluster.store import BatchWriter, CachedReader, ChunkKey, ChunkStore
from cluster.view import take_clean
from cluster.viewproc import ViewProcess
from cluster.volume import LocalVolume

if TYPE_CHECKING:
    from cluster.migrate import Migration

log = structlog.get_logger("cluster")
T = TypeVar("T")

READ_PIECE = 1 << 20  # bytes per piece when streaming a file out
CHAIN = 8  # group commits in a row before other database calls get the writer connection

# (mutation, its caller's future, chunk copies to write first, quick: see ``_mutate``)
Batch = list[tuple[Callable[[], Any], "asyncio.Future[Any]", list[PendingWrite], bool]]
Outcome = tuple[list[tuple[bool, Any]], list[tuple[int, StoreError]]]


@dataclass
class Volume:
    """A configured volume and what the master knows of its health."""

    id: int
    path: str  # a local volume's directory; an S3 volume's ``S3Config.name``
    store: ChunkStore
    kind: str = "local"  # local | s3
    worth: int = 1  # what a copy here counts toward a goal (``placement.py``)
    state: str = "ok"  # ok | full | readonly | missing
    reason: str = ""
    draining: bool = False  # a store migration is moving copies off it: no new copies here
    since: float = field(default_factory=time.monotonic)
    total: int = 0
    free: int = 0

    def __post_init__(self) -> None:
        # Optional store abilities, looked up once (isinstance on a Protocol is slow).
        self.batch: BatchWriter | None = (
            self.store if isinstance(self.store, BatchWriter) else None
        )
        self.cached: CachedReader | None = (
            self.store if isinstance(self.store, CachedReader) else None
        )

    @property
    def readable(self) -> bool:
        return self.state != "missing"

    @property
    def writable(self) -> bool:
        return self.state == "ok"

    @property
    def placeable(self) -> bool:
        """New copies may go here: writable and not being drained (``cluster/migrate.py``)."""
        return self.writable and not self.draining

    @property
    def bit(self) -> int:
        return 1 << self.id


@dataclass(frozen=True)
class CopyInfo:
    volume: int
    path: str
    state: str
    kind: str = "local"


@dataclass(frozen=True)
class ChunkInfo:
    chunk: Chunk
    copies: tuple[CopyInfo, ...]


class Master:
    """The cluster master and its in-process client API (``async with Master(cfg) as m``)."""

    def __init__(self, cfg: ClusterConfig, *, background: bool = True) -> None:
        self.cfg = cfg
        self.background = background
        self.volumes: dict[int, Volume] = {}
        self.inflight: set[tuple[int, int]] = set()  # (volume id, chunk id) being written
        # Store migration (``cluster/migrate.py``): the chunks it is working on, which the
        # replicator leaves alone, and the chunks the replicator is fixing, which it waits for.
        self.migrating: set[int] = set()
        self.fixing: Counter[int] = Counter()
        self.fixed = asyncio.Event()  # set (and cleared) when a chunk leaves ``fixing``
        self.migration: Migration | None = None  # the store migration running, if any
        self.stats: dict[str, Any] = {}
        self.changed = asyncio.Event()  # set after every commit (in-process change feed)
        self.commits = 0  # commits so far: compare before waiting on ``changed``
        self.view: ViewProcess | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="meta")
        self._queue: collections.deque[
            tuple[Callable[[], Any], asyncio.Future[Any], list[PendingWrite], bool]
        ] = collections.deque()
        self._conn = asyncio.Lock()  # the writer connection: one user at a time
        self._closing = False  # the committer was cancelled: it starts no other batch
        self._queued = asyncio.Event()
        self._ids: range = range(0)
        self._id_pos = 0
        self._rotation = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._stack = contextlib.AsyncExitStack()  # S3 connections, closed last
        self._lock_fd = -1
        self.meta: Meta
        # A second, read-only connection used on the event loop itself for the hot, short
        # lookups (a put's goal, a read's entry and chunks): a thread hop costs more than
        # these few primary-key reads, and they never wait behind a group commit's fsync.
        self.reader: Meta | None = None

    # -- life cycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Master:
        self._take_lock()
        try:
            await self._open()
        except BaseException:
            await self._stack.aclose()
            self._release_lock()
            self._executor.shutdown(wait=False)
            if self.reader is not None:
                self.reader.db.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self.view is not None:  # after every commit: it catches up, records a clean stop
            await self.view.stop()
        if self.reader is not None:  # first: the writer's close then checkpoints the WAL
            self.reader.db.close()
        await self._db(self.meta.db.close)
        self._executor.shutdown(wait=True)
        await self._stack.aclose()
        self._release_lock()
        log.info("master.stopped")

    def _take_lock(self) -> None:
        self.cfg.meta_dir.mkdir(parents=True, exist_ok=True)
        path = self.cfg.meta_dir / "master.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = " ".join(path.read_text().split()) or "another process"
            raise MasterBusy(
                f"the cluster metadata in {self.cfg.meta_dir} is in use by {holder}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}\n".encode())
        self._lock_fd = fd

    def announce(self, url: str) -> None:
        """Record in the lock file where this master listens (local CLI commands read it)."""
        os.pwrite(self._lock_fd, f"pid {os.getpid()}\nurl {url}\n".encode(), 0)

    def _release_lock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    async def _open(self) -> None:
        def open_db() -> Meta:
            conn = schema.connect(self.cfg.meta_dir / "meta.db")
            schema.init(conn)
            return Meta(conn, self.cfg.default_goal, self.cfg.default_trash_time)

        self.meta = await self._db(open_db)

        conn = schema.connect(self.cfg.meta_dir / "meta.db", readonly=True)
        self.reader = Meta(
            conn, self.cfg.default_goal, self.cfg.default_trash_time, dir_cache=True
        )
        self._tasks.append(asyncio.create_task(self._committer(), name="committer"))
        await self._open_volumes()
        self._ids = await self._db(self.meta.reserve_chunk_ids)
        # Taken whether or not this run keeps the view: a run without it changes the
        # namespace under the views, and the next run with it must rebuild them.
        clean = await self._in_thread(take_clean, self.cfg.meta_dir)
        if self.cfg.view and any(v.kind == "local" for v in self.volumes.values()):
            # Hard links onto local chunk files (none without one), kept by a process of its own.
            self.view = ViewProcess(self, clean)
            await self.view.start()
        if self.background:
            from cluster.background import start

            self._tasks.extend(start(self))
        log.info(
            "master.started",
            meta=str(self.cfg.meta_dir),
            volumes=[v.path for v in self.volumes.values()],
        )

    async def _open_volumes(self) -> None:
        known = await self._db(self.meta.volumes)
        for vc in self.cfg.volumes:
            path = str(vc.path.resolve())
            if path in known:
                vid, _ = known[path]
                vol = Volume(vid, path, LocalVolume(Path(path)))
            else:
                store = await asyncio.to_thread(LocalVolume.create, Path(path))
                uuid = store.identity()
                vid = await self._mutate(functools.partial(self.meta.add_volume, path, uuid))
                vol = Volume(vid, path, store)
                log.info("volume.added", volume=path, id=vid)
            self.volumes[vol.id] = vol
            if isinstance(vol.store, LocalVolume) and (vol.store.root / ".tandem-volume").exists():
                removed = await asyncio.to_thread(vol.store.remove_temp)
                if removed:
                    log.info("volume.temp_removed", volume=path, files=removed)
        if self.cfg.s3_volumes:
            await self._open_s3_volumes(known)
        await self._db(self.meta.set_worth, {v.bit: v.worth for v in self.volumes.values()})
        await self.check_volumes()

    async def _open_s3_volumes(self, known: dict[str, tuple[int, str]]) -> None:
        """S3 volumes: one connection per endpoint and credentials, shared by its stores.
        A new volume is registered by the name of its bucket and prefix and marked (its
        marker object) on its first start; an engine that cannot be reached now leaves the
        volume ``missing`` until the health check finds it (its copies are read elsewhere)."""
        from cluster.s3store import open_stores  # aioboto3 is loaded only when S3 is used

        for sc, store in await open_stores(self.cfg.s3_volumes, self._stack):
            if sc.name in known:
                vid = known[sc.name][0]
            else:
                vid = await self._mutate(functools.partial(self.meta.add_volume, sc.name, ""))
                log.info("volume.added", volume=sc.name, id=vid, kind="s3")
            self.volumes[vid] = Volume(vid, sc.name, store, kind="s3", worth=sc.counts_as)

    async def check_volumes(self) -> None:
        """Refresh every volume's state from the disk (the health checker calls this)."""
        known = await self._db(self.meta.volumes)
        for vol in self.volumes.values():
            state, reason = "ok", ""
            if isinstance(vol.store, LocalVolume):
                state, reason = await self._local_state(vol, known[vol.path][1])
            elif vol.kind == "s3":
                state, reason = await self._s3_state(vol, known[vol.path][1])
            # stat after _local_state: it may just have adopted a replaced (empty) disk
            st = await vol.store.stat()
            vol.total, vol.free = st.total, st.free
            if state == "ok" and not st.healthy:
                state, reason = ("readonly" if "read-only" in st.reason else "missing"), st.reason
            if state == "ok" and vol.state == "full" and st.free < 2 * self.cfg.chunk_size:
                state, reason = "full", vol.reason
            self._set_state(vol, state, reason)

    async def _local_state(self, vol: Volume, uuid: str) -> tuple[str, str]:
        store = vol.store
        assert isinstance(store, LocalVolume)
        try:
            if store.identity() == uuid:
                return "ok", ""
            return "missing", "a different volume is mounted here (uuid mismatch)"
        except VolumeUnavailable:
            pass
        root = store.root
        if root.is_dir() and not any(root.iterdir()):
            # An empty directory where a volume was: a replaced disk. Adopt it, empty.
            await asyncio.to_thread(LocalVolume.create, root)
            new = store.identity()
            await self._mutate(lambda: self.meta.replace_volume(vol.id, new))
            log.warning("volume.replaced", volume=vol.path, id=vol.id)
            return "ok", ""
        return "missing", "volume directory or its marker is missing"

    async def _s3_state(self, vol: Volume, uuid: str) -> tuple[str, str]:
        """An S3 volume is ours when its marker's uuid is the one recorded. No marker on a
        prefix holding no chunk: a new (or emptied, e.g. a lost bucket re-created) volume,
        adopted empty like a replaced disk."""
        from cluster.s3store import S3Store

        store = vol.store
        assert isinstance(store, S3Store)
        try:
            found = await store.identity()
            if found is None:
                found = await store.create()
                if uuid:
                    log.warning("volume.replaced", volume=vol.path, id=vol.id)
                await self._mutate(lambda: self.meta.replace_volume(vol.id, found))
            elif not uuid:
                await self._mutate(lambda: self.meta.replace_volume(vol.id, found))
            elif found != uuid:
                return "missing", "a different volume's marker is in this bucket and prefix"
        except StoreError as exc:
            return "missing", str(exc)
        return "ok", ""

    def _set_state(self, vol: Volume, state: str, reason: str) -> None:
        if vol.state != state:
            log.warning("volume.state", volume=vol.path, old=vol.state, new=state, reason=reason)
            vol.state, vol.reason, vol.since = state, reason, time.monotonic()
            if self.view is not None:
                self.view.volumes_changed()

    def _volume_failed(self, vol: Volume, exc: StoreError) -> None:
        if isinstance(exc, VolumeFull):
            self._set_state(vol, "full", str(exc))
        elif isinstance(exc, VolumeReadOnly):
            self._set_state(vol, "readonly", str(exc))
        elif isinstance(exc, VolumeUnavailable):
            self._set_state(vol, "missing", str(exc))

    @property
    def readable_mask(self) -> int:
        return sum(v.bit for v in self.volumes.values() if v.readable)

    # -- the database thread and group commit ---------------------------------------------------

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the database thread, alone with the writer connection: the committer
        also uses that connection on the loop (``_commit_quick``), under the same lock."""
        async with self._conn:
            return await self._in_thread(fn, *args)

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _mutate(
        self, fn: Callable[[], T], writes: list[PendingWrite] | None = None, *, quick: bool = False
    ) -> T:
        """Run ``fn`` in a transaction shared with whatever else is queued (group commit),
        after the batch's pending chunk ``writes`` were written and synced (``batch.py``).
        ``quick``: ``fn`` is a few primary-key statements, fit to run on the loop."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((fn, fut, writes or [], quick))
        self._queued.set()
        return await fut

    async def _committer(self) -> None:
        """Group commits: every mutation queued when a batch starts shares its transaction,
        up to ``CHAIN`` batches in a row before other database calls get the connection."""
        while True:
            await self._queued.wait()
            self._queued.clear()
            async with self._conn:
                left = CHAIN
                while left > 0 and self._queue:
                    if all(quick for *_, quick in self._queue):
                        try:
                            left = await self._commit_quick(left)
                        except Exception:  # a bug; its batch got the error
                            log.exception("meta.committer_failed")
                            left -= 1
                        continue
                    batch = self._take()
                    left -= 1
                    outcome: Outcome | BaseException
                    try:
                        outcome = await self._in_thread(self._commit_batch, batch)
                    except Exception as exc:  # the commit failed: nothing in the batch happened
                        outcome = _commit_error(exc)
                    self._deliver(batch, outcome)

    def _take(self) -> Batch:
        batch = list(self._queue)
        self._queue.clear()
        return batch

    async def _commit_quick(self, left: int) -> int:
        """Batches of quick mutations: their chunk writes and their COMMIT (its fsync) on the
        database thread, their statements on the loop. A thread runs Python only with the
        GIL, which a busy loop hands over after up to ``sys.getswitchinterval()`` (5 ms) at
        each return from SQLite: a batch's statements there waited for it dozens of times.

        Each step starts from the callback of the one before (no loop iteration in between),
        and the next batch starts where the last one is delivered, while all that is queued
        is quick, for at most ``left`` batches. Returns how many of ``left`` are left."""
        loop = asyncio.get_running_loop()
        chain: asyncio.Future[int] = loop.create_future()

        def then(fn: Callable[..., None], *args: Any) -> Callable[[Any], None]:
            """A thread's done-callback that runs ``fn(future, *args)`` on the loop."""

            def callback(f: Any) -> None:
                loop.call_soon_threadsafe(guarded, fn, f, *args)

            return callback

        def guarded(fn: Callable[..., None], f: Any, batch: Batch, *args: Any) -> None:
            try:
                fn(f, batch, *args)
            except Exception as exc:  # a bug: fail the batch, never leave anyone waiting
                if not chain.done():
                    chain.set_exception(exc)
                with contextlib.suppress(Exception):
                    self.meta.rollback()  # the thread is done with the connection: safe here
                    self._deliver(batch, exc)

        def start(left: int) -> None:
            guarded(write, None, self._take(), left)

        def write(_: None, batch: Batch, left: int) -> None:
            writes = _writes(batch)
            if writes:
                self._executor.submit(write_and_sync, writes).add_done_callback(
                    then(written, batch, left)
                )
            else:
                written(None, batch, left)

        def written(f: concurrent.futures.Future[Any] | None, batch: Batch, left: int) -> None:
            try:
                failures = [] if f is None else f.result()
                results = self._statements(batch)
            except Exception as exc:
                self._deliver(batch, _commit_error(exc))
                next_or_done(left - 1)
                return
            self._executor.submit(self.meta.commit).add_done_callback(
                then(committed, batch, (results, failures), left)
            )

        def committed(
            f: concurrent.futures.Future[None], batch: Batch, ok: Outcome, left: int
        ) -> None:
            exc = f.exception()
            self._deliver(batch, ok if exc is None else _commit_error(exc))
            next_or_done(left - 1)

        def next_or_done(left: int) -> None:
            if left > 0 and self._queue and not self._closing and all(
                quick for *_, quick in self._queue
            ):
                start(left)
            else:
                chain.set_result(left)

        start(left)
        try:
            return await asyncio.shield(chain)
        except asyncio.CancelledError:
            self._closing = True  # the batch in flight ends, no other starts
            await chain
            raise

    def _commit_batch(self, batch: Batch) -> Outcome:
        """A batch on the database thread: chunk writes, statements, COMMIT."""
        failures = write_and_sync(_writes(batch))
        results = self._statements(batch)
        self.meta.commit()
        return results, failures

    def _statements(self, batch: Batch) -> list[tuple[bool, Any]]:
        """Begin the batch's transaction and run its mutations; the caller commits. They run
        first without savepoints (they cost two statements each); if one fails,
        the batch is rolled back and run again with each mutation in its own savepoint, so
        that one that fails is undone alone. Mutations only change the database: running
        one again after a rollback is safe."""
        self.meta.begin()
        try:
            try:
                return [(True, fn()) for fn, _, _, _ in batch]
            except ClusterError:
                self.meta.rollback()
                self.meta.begin()
            results: list[tuple[bool, Any]] = []
            for fn, _, _, _ in batch:
                try:
                    with self.meta.savepoint():
                        results.append((True, fn()))
                except ClusterError as exc:
                    results.append((False, exc))
        except BaseException:
            self.meta.rollback()
            raise
        return results

    def _deliver(self, batch: Batch, outcome: Outcome | BaseException) -> None:
        """On the loop: a committed batch's results to its callers."""
        if isinstance(outcome, BaseException):
            log.error("meta.commit_failed", error=str(outcome), ops=len(batch))
            for _, fut, _, _ in batch:
                if not fut.done():
                    fut.set_exception(outcome)
            return
        results, failures = outcome
        for vid, err in failures:
            log.warning("chunk.put_failed", volume=self.volumes[vid].path, error=str(err))
            self._volume_failed(self.volumes[vid], err)
        for (ok, value), (_, fut, _, _) in zip(results, batch, strict=True):
            if fut.done():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)
        self.commits += 1
        self.changed.set()
        self.changed.clear()
        if self.view is not None:
            self.view.wake()

    async def _next_chunk_id(self) -> int:
        if self._id_pos >= len(self._ids):
            self._ids = await self._db(self.meta.reserve_chunk_ids)
            self._id_pos = 0
        self._id_pos += 1
        return self._ids[self._id_pos - 1]

    # -- placement and the write path -----------------------------------------------------------

    def _candidates(self) -> list[Volume]:
        """Volumes that may take new copies, in placement order (``placement.order``)."""
        self._rotation += 1
        return placement.order((v for v in self.volumes.values() if v.placeable), self._rotation)

    async def _write_copies(
        self, key: ChunkKey, data: bytes, goal: int, candidates: list[Volume],
        sha256: bytes | None,
    ) -> int:
        """Write ``data`` (whose SHA-256 is ``sha256``, when known) to distinct ``candidates``
        (in order) until their worth reaches the goal (or the worth of every writable volume,
        when less); the copies mask."""
        want = min(goal, placement.worth(candidates))
        if want == 0:
            raise NotEnoughCopies("no writable volume: every volume is full, read-only or missing")
        mask, got = 0, 0
        pending = candidates
        while pending and got < want:
            batch = placement.take(pending, want - got)
            pending = pending[len(batch) :]
            for v in batch:
                self.inflight.add((v.id, key.id))
            results = await asyncio.gather(
                *(v.store.put(key, data, sha256=sha256) for v in batch),
                return_exceptions=True,
            )
            for v, r in zip(batch, results, strict=True):
                if isinstance(r, StoreError):
                    log.warning("chunk.put_failed", volume=v.path, chunk=key.name, error=str(r))
                    self._volume_failed(v, r)
                    self.inflight.discard((v.id, key.id))
                elif isinstance(r, BaseException):
                    raise r
                else:
                    mask |= v.bit
                    got += v.worth
        writable = placement.worth(v for v in self.volumes.values() if v.placeable)
        if mask == 0 or got < min(goal, writable):
            raise NotEnoughCopies(
                f"wrote copies worth {got} of {min(goal, writable)} of {key.name}"
            )
        return mask

    async def put(
        self,
        path: bytes | str,
        data: bytes | AsyncIterable[bytes],
        *,
        mode: int = 0o644,
        mtime_ns: int | None = None,
    ) -> Entry:
        """Store a file atomically: it appears only once its data and metadata are durable;
        an existing file is replaced, its old version moved to trash."""
        parts = paths.parse(path)
        if not parts:
            raise IsADirectory("cannot put onto the root directory")
        if not 0 <= mode <= 0o7777:
            raise InvalidArgument(f"mode {mode:o} is not a permission mode")
        # The goal: that of the folder when the writer has it cached (puts into a folder
        # seen before: no lookup), when the data can be placed again should the file replaced
        # have a higher goal of its own (``GoalChanged``, checked by the commit).
        if isinstance(data, bytes | bytearray | memoryview):
            goal = self.meta.folder_goal(parts)
            if goal is not None:
                try:
                    return await self._put(parts, data, mode, mtime_ns, goal, None, True)
                except GoalChanged:
                    pass
        assert self.reader is not None
        # On the loop (see ``self.reader``): the goal, and the version this put replaces (its
        # mtime decides the new one's; the commit checks again against the version it replaces).
        # The writer's connection when nothing uses it: its pages stay cached across commits,
        # where the reader's are dropped after each one (≈ 25 against ≈ 43 µs here).
        goal, current = (self.reader if self._conn.locked() else self.meta).put_context(parts)
        return await self._put(parts, data, mode, mtime_ns, goal, current, False)

    async def _put(
        self,
        parts: tuple[bytes, ...],
        data: bytes | AsyncIterable[bytes],
        mode: int,
        mtime_ns: int | None,
        goal: int,
        current: Entry | None,
        folder_goal: bool,
    ) -> Entry:
        """``put`` with its goal and the entry it replaces (None when unknown or none: the
        commit settles the mtime either way)."""
        digest = hashlib.sha256()
        # In file order: chunks already written and fsynced, or small ones the committer
        # writes with the batch (``batch.py``).
        written: list[NewChunk | PendingWrite] = []
        size = 0
        try:
            async for piece in _pieces(data, self.cfg.chunk_size):
                digest.update(piece)
                size += len(piece)
                key = ChunkKey(await self._next_chunk_id(), 1)
                # The first chunk's SHA-256 is the file's so far: S3 signs with it (s3sign.py).
                sha256 = None if written else digest.digest()
                written.append(await self._place(key, piece, goal, sha256))
            mtime = distinct_mtime(
                current, size, digest.digest(),
                time.time_ns() if mtime_ns is None else mtime_ns,
            )
            await self._stamp(written, mtime)

            def commit() -> Entry:
                entry = self.meta.commit_put(
                    parts, size=size, hash=digest.digest(), mode=mode, mtime_ns=mtime,
                    chunks=[_written(w) for w in written], goal=goal,
                    folder_goal=folder_goal,
                )
                # The version replaced moved the mtime (``distinct_mtime``; unknown before the
                # commit when the goal came from the folder cache, or replaced meanwhile).
                if entry.mtime_ns != mtime:
                    for c in map(_new_chunk, written):
                        self._set_mtime(c, entry.mtime_ns)
                return entry

            entry = await self._mutate(
                commit, [w for w in written if isinstance(w, PendingWrite)], quick=True
            )
        except BaseException:
            await self._discard([_new_chunk(w) for w in written])
            raise
        finally:
            for w in written:
                for v in self.volumes.values():
                    self.inflight.discard((v.id, _new_chunk(w).id))
        return entry  # no log line: one costs ~20 µs of loop CPU even when filtered out

    async def _stamp(self, written: list[NewChunk | PendingWrite], mtime_ns: int) -> None:
        """Give every copy the file's mtime: small chunks get it as the committer writes
        them; large ones, already durable, get it set (and fsynced) now."""
        local = self._local_bits()
        done = []
        for w in written:
            if isinstance(w, PendingWrite):
                w.mtime_ns = mtime_ns
            elif w.copies & local:  # S3 copies keep no mtime: no trip to a thread for them
                done.append(w)
        if done:
            await asyncio.gather(
                *(asyncio.to_thread(self._set_mtime, c, mtime_ns) for c in done)
            )

    def _local_bits(self) -> int:
        """The copies-mask bits of the local volumes."""
        return sum(v.bit for v in self.volumes.values() if isinstance(v.store, LocalVolume))

    def _set_mtime(self, c: NewChunk, mtime_ns: int) -> None:
        for v in self.volumes.values():
            if c.copies & v.bit and isinstance(v.store, LocalVolume):
                v.store.set_mtime(ChunkKey(c.id, c.version), mtime_ns)

    async def _place(
        self, key: ChunkKey, piece: bytes, goal: int, sha256: bytes | None
    ) -> NewChunk | PendingWrite:
        """Write a chunk's copies now, or leave a small one to the group commit."""
        candidates = self._candidates()
        stores = [(v.id, v.batch) for v in candidates if v.batch is not None]
        if len(piece) > BATCH_MAX or len(stores) < len(candidates):
            mask = await self._write_copies(key, piece, goal, candidates, sha256)
            return NewChunk(key.id, key.version, len(piece), mask)
        want = min(goal, len(candidates))
        if want == 0:
            raise NotEnoughCopies("no writable volume: every volume is full, read-only or missing")
        for v in candidates:  # any of them may get a copy: never mistake it for an orphan
            self.inflight.add((v.id, key.id))
        return PendingWrite(key, piece, stores, want)

    async def put_copy(
        self, vol: Volume, key: ChunkKey, data: bytes, mtime_ns: int | None = None
    ) -> None:
        """Write one copy of a chunk to ``vol`` (replication, migration); a store failure
        also updates the volume's state."""
        try:
            await vol.store.put(key, data, mtime_ns=mtime_ns)
        except StoreError as exc:
            self._volume_failed(vol, exc)
            raise

    async def _discard(self, chunks: list[NewChunk]) -> None:
        """Remove copies written for a put that did not commit (best effort; orphans are swept)."""
        for c in chunks:
            for v in self.volumes.values():
                if c.copies & v.bit:
                    with contextlib.suppress(StoreError):
                        await v.store.delete(ChunkKey(c.id, c.version))

    # -- the read path ----------------------------------------------------------------------------

    async def open(self, path: bytes | str) -> tuple[Entry, list[Chunk]]:
        """A file's entry and chunk list, read in one consistent snapshot."""
        parts = paths.parse(path)

        meta = self.reader  # on the loop: see ``self.reader``
        assert meta is not None
        meta.db.execute("BEGIN")
        try:
            e = meta.stat(parts)
            if e.is_dir:
                raise IsADirectory(f"is a directory: {paths.show(e.path)}")
            return e, meta.chunks(e.chunks)
        finally:
            meta.db.execute("COMMIT")

    async def read(
        self, path: bytes | str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """Stream ``[offset, offset+length)`` of a file in pieces of at most 1 MiB."""
        entry, chunks = await self.open(path)
        async for piece in self.read_chunks(entry, chunks, offset, length):
            yield piece

    async def read_chunks(
        self, entry: Entry, chunks: list[Chunk], offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        for c, off, n in chunk_slices(entry.size, chunks, offset, length, READ_PIECE):
            yield await self.read_chunk(c, off, n)

    async def read_chunk(
        self, c: Chunk, offset: int, length: int, *, again: bool = True
    ) -> bytes:
        """Read from any good copy; bad copies found on the way are reported and dropped.
        Copies that moved since ``c`` was read (a store migration, an extra copy removed) are
        not bad: the chunk is read again from the copies the metadata names now."""
        key = ChunkKey(c.id, c.version)
        order = [v for v in self.volumes.values() if c.copies & v.bit and v.readable]
        if order:  # spread reads over the copies; local ones first (no network)
            self._rotation += 1
            turn = self._rotation % len(order)
            order = order[turn:] + order[:turn]
            order.sort(key=lambda v: v.kind != "local")
        data, bad, failed = await read_copy(key, offset, length, order, chunk_size=c.size)
        for v, exc in failed:
            self._volume_failed(v, exc)
        now = self._chunk_now(c) if bad or data is None else c
        if bad:
            still = [v for v in bad if now is None or now.copies & v.bit]
            if still:
                await self.drop_copies(c, still)
        if data is not None:
            return data
        if again and now is not None and now.copies & ~c.copies:
            return await self.read_chunk(now, offset, length, again=False)
        raise NotEnoughCopies(f"no readable good copy of chunk {key.name}")

    def _chunk_now(self, c: Chunk) -> Chunk | None:
        """``c`` as the metadata has it now (None once purged); on the loop, like ``open``."""
        assert self.reader is not None
        try:
            (now,) = self.reader.chunks((c.id,))
        except ClusterError:
            return None
        return now

    async def drop_copies(self, c: Chunk, vols: list[Volume]) -> None:
        """Forget bad copies (metadata first), then delete their files; re-replication
        restores the goal."""
        mask = sum(v.bit for v in vols)
        await self._mutate(lambda: self.meta.set_copies(c.id, remove=mask))
        for v in vols:
            with contextlib.suppress(StoreError):
                await v.store.delete(ChunkKey(c.id, c.version))
        self.forget_links(vols)
        self.stats["bad_copies_dropped"] = self.stats.get("bad_copies_dropped", 0) + len(vols)

    def forget_links(self, vols: list[Volume]) -> None:
        """Chunk files were removed from these volumes: their view links must be redone."""
        if self.view is not None:
            self.view.sweep({v.id for v in vols})

    async def cat(self, path: bytes | str, offset: int = 0, length: int | None = None) -> bytes:
        return b"".join([p async for p in self.read(path, offset, length)])

    # -- namespace ------------------------------------------------------------------------------

    async def stat(self, path: bytes | str) -> Entry:
        return await self._db(self.meta.stat, paths.parse(path))

    async def ls(self, path: bytes | str = b"/") -> list[Entry]:
        return await self._db(self.meta.listdir, paths.parse(path))

    async def walk(self, path: bytes | str = b"/") -> list[Entry]:
        parts = paths.parse(path)
        return await self._db(lambda: list(self.meta.walk(parts)))

    async def mkdir(self, path: bytes | str, mode: int = 0o755) -> Entry:
        parts = paths.parse(path)
        return await self._mutate(lambda: self.meta.mkdir(parts, mode))

    async def rm(self, path: bytes | str, recursive: bool = False) -> int:
        parts = paths.parse(path)
        return await self._mutate(lambda: self.meta.remove(parts, recursive))

    async def mv(self, src: bytes | str, dst: bytes | str) -> Entry:
        s, d = paths.parse(src), paths.parse(dst)
        return await self._mutate(lambda: self.meta.move(s, d))

    async def snapshot(self, src: bytes | str, dst: bytes | str) -> int:
        s, d = paths.parse(src), paths.parse(dst)
        return await self._mutate(lambda: self.meta.snapshot(s, d))

    async def setgoal(self, path: bytes | str, goal: int, recursive: bool = False) -> int:
        if not 1 <= goal <= 9:
            raise InvalidArgument(f"goal must be 1..9, got {goal}")
        parts = paths.parse(path)
        return await self._mutate(lambda: self.meta.set_goal(parts, goal, recursive))

    async def settrashtime(self, path: bytes | str, seconds: int, recursive: bool = False) -> int:
        if seconds < 0:
            raise InvalidArgument(f"trash time must be >= 0 seconds, got {seconds}")
        parts = paths.parse(path)
        return await self._mutate(lambda: self.meta.set_trash_time(parts, seconds, recursive))

    # -- trash ----------------------------------------------------------------------------------

    async def trash_list(self, limit: int = 1000, after: int = 0) -> list[Any]:
        return await self._db(self.meta.trash_list, limit, after)

    async def undelete(self, trash_id: int, dest: bytes | str | None = None) -> Entry:
        d = paths.parse(dest) if dest is not None else None
        return await self._mutate(lambda: self.meta.undelete(trash_id, d))

    async def purge(self, ids: list[int] | None = None, expired: bool = False) -> int:
        """Drop trash entries for good: metadata first, then the chunk copies nobody uses."""
        before = int(time.time()) if expired else None
        n, dead = await self._mutate(lambda: self.meta.purge(ids, expired_before=before))
        for c in dead:
            for v in self.volumes.values():
                if c.copies & v.bit and v.readable:
                    with contextlib.suppress(StoreError):
                        await v.store.delete(ChunkKey(c.id, c.version))
        if n:
            log.info("trash.purged", entries=n, chunks=len(dead))
        return n

    # -- inspection -----------------------------------------------------------------------------

    async def fileinfo(self, path: bytes | str) -> tuple[Entry, list[ChunkInfo]]:
        entry, chunks = await self.open(path)
        infos = []
        for c in chunks:
            copies = tuple(
                CopyInfo(v.id, v.path, v.state, v.kind)
                for v in self.volumes.values()
                if c.copies & v.bit
            )
            infos.append(ChunkInfo(c, copies))
        return entry, infos

    async def checkfile(self, path: bytes | str) -> dict[str, Any]:
        """Per chunk: copies that exist and read back (size checked) versus the goal."""
        entry, infos = await self.fileinfo(path)
        out: list[dict[str, Any]] = []
        for info in infos:
            key = ChunkKey(info.chunk.id, info.chunk.version)
            good = worth = 0
            for cp in info.copies:
                vol = self.volumes[cp.volume]
                if not vol.readable:
                    continue
                try:
                    if await vol.store.head(key) == info.chunk.size:
                        good += 1
                        worth += vol.worth
                except StoreError:
                    pass
            out.append(
                {"chunk": key.name, "goal": info.chunk.goal, "copies": good, "worth": worth}
            )
        under = sum(1 for c in out if c["worth"] < c["goal"])
        missing = sum(1 for c in out if c["copies"] == 0)
        return {
            "path": paths.show(entry.path),
            "goal": entry.effective_goal,
            "chunks": out,
            "under_goal": under,
            "missing": missing,
        }

    async def status(self) -> dict[str, Any]:
        # Off the database thread: a scan of every chunk there would hold back every commit.
        weights = {v.bit: v.worth for v in self.volumes.values()}
        counts = await asyncio.to_thread(scan_counts, self.cfg, self.readable_mask, weights)
        vols = [
            {
                "id": v.id,
                "path": v.path,
                "kind": v.kind,
                "counts_as": v.worth,
                "state": v.state,
                "reason": v.reason,
                "draining": v.draining,
                "total": v.total,
                "used": v.total - v.free,
                "free": v.free,
            }
            for v in self.volumes.values()
        ]
        return {"volumes": vols, **counts, "background": dict(self.stats)}

    async def fsck(self, verify: bool = False, repair: bool = False) -> dict[str, Any]:
        from cluster.fsck import fsck

        return await fsck(self, verify=verify, repair=repair)

    async def migrate_store(
        self,
        src: int | str,
        dst: int | str,
        *,
        move: bool = False,
        dry_run: bool = False,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Copy (or ``move``) every chunk copy on volume ``src`` to volume ``dst`` (an id, or
        a path or name as ``status`` shows it), online; ``progress`` gets counts as it goes.
        The report says what was done and which chunks could not be (``cluster/migrate.py``)."""
        from cluster.migrate import migrate_store

        return await migrate_store(
            self, src, dst, move=move, dry_run=dry_run, progress=progress
        )

    async def changes(self, after: int, limit: int = 1000) -> list[Any]:
        return await self._db(self.meta.changes, after, limit)

    async def changelog_bounds(self) -> tuple[int, int]:
        return await self._db(self.meta.changelog_bounds)


def scan_counts(cfg: ClusterConfig, healthy: int, weights: dict[int, int]) -> dict[str, int]:
    """``Meta.counts`` over a read-only connection of its own: it scans every chunk (≈ 0.8 s
    per million on a 2-core VM), so callers run it on a thread, never on a loop that serves
    and never on the master's database thread. ``weights``: what a copy on each volume counts
    toward a goal (``Meta.set_worth``), as the master counts it."""
    conn = schema.connect(cfg.meta_dir / "meta.db", readonly=True)
    try:
        meta = Meta(conn, cfg.default_goal, cfg.default_trash_time)
        meta.set_worth(weights)
        return meta.counts(healthy)
    finally:
        conn.close()


def chunk_slices(
    size: int, chunks: list[Chunk], offset: int, length: int | None, piece: int
) -> Iterator[tuple[Chunk, int, int]]:
    """The (chunk, offset in it, length) pieces, at most ``piece`` bytes each, that make up
    ``[offset, offset+length)`` of a file of ``size`` bytes."""
    end = size if length is None else min(size, offset + length)
    if offset < 0 or (length is not None and length < 0):
        raise InvalidArgument(f"bad range: offset {offset}, length {length}")
    pos = 0
    for c in chunks:
        lo, hi = max(offset, pos), min(end, pos + c.size)
        while lo < hi:
            n = min(piece, hi - lo)
            yield c, lo - pos, n
            lo += n
        pos += c.size


async def read_copy(
    key: ChunkKey, offset: int, length: int, order: list[Volume], *, chunk_size: int
) -> tuple[bytes | None, list[Volume], list[tuple[Volume, StoreError]]]:
    """Read from the first good copy in ``order``: (bytes or None, copies found bad — logged
    as ``chunk.bad_copy`` —, volumes that failed). A cached read is tried first, on the loop.
    A read that reaches the chunk's end (``chunk_size``) asks the store for "to the end" —
    on S3 a whole chunk is then a plain GET, cheaper than a ranged one — and a copy that
    answers with other than ``length`` bytes is bad."""
    ask = None if offset + length == chunk_size else length
    bad: list[Volume] = []
    failed: list[tuple[Volume, StoreError]] = []
    for v in order:
        try:
            data = None
            if v.cached is not None:
                data = v.cached.read_cached(key, offset, ask)
                await asyncio.sleep(0)  # stay fair: a cached read never yields by itself
            if data is None:
                data = await v.store.get(key, offset, ask)
            if len(data) != length:  # a copy shorter or longer than the chunk
                raise ChunkCorrupt(f"{v.path}: {key.name}: {len(data)} bytes at {offset}, "
                                   f"{length} expected (a chunk of {chunk_size})")
        except (ChunkCorrupt, ChunkMissing) as exc:
            log.error("chunk.bad_copy", volume=v.path, chunk=key.name, error=str(exc))
            bad.append(v)
            continue
        except StoreError as exc:
            failed.append((v, exc))
            continue
        return data, bad, failed
    return None, bad, failed


def _written(w: NewChunk | PendingWrite) -> NewChunk:
    """The chunk as committed; a batched one must have reached at least one volume."""
    if isinstance(w, NewChunk):
        return w
    if not w.mask:
        raise NotEnoughCopies(f"no copy of {w.key.name} could be written: no volume accepted it")
    return _new_chunk(w)


def _writes(batch: Batch) -> list[PendingWrite]:
    """The chunk copies a batch's committer writes before its statements."""
    return [w for _, _, ws, _ in batch for w in ws]


def _commit_error(exc: BaseException) -> BaseException:
    """What the callers of a batch whose commit failed get: SQLite's failures as
    ``MetadataError`` (a full or failing metadata disk), anything else as it is."""
    if isinstance(exc, sqlite3.Error):
        return MetadataError(f"metadata commit failed: {exc}")
    return exc


def _new_chunk(w: NewChunk | PendingWrite) -> NewChunk:
    if isinstance(w, NewChunk):
        return w
    return NewChunk(w.key.id, w.key.version, len(w.data), w.mask)


async def _pieces(data: bytes | AsyncIterable[bytes], size: int) -> AsyncIterator[bytes]:
    """Cut the input into chunk-sized pieces (an empty file has no chunk)."""
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        for i in range(0, len(raw), size):
            yield raw[i : i + size]
        return
    buf = bytearray()
    async for part in data:
        buf += part
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)

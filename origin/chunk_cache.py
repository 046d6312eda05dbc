"""The remote origin's hot-chunk cache: whole chunks on a local disk, under a size bound.

**Format**: a ``LocalVolume`` directory (``cluster/volume.py``) — ``00``…``FF/chunk_<ID>_<VER>``,
the chunk's raw bytes with its CRC table (CRC32 per 64 KiB block) in the ``user.tandem.crc``
xattr, or a ``.crc`` sidecar past 32 MiB or where there are no user xattrs. Every read is
verified (``LocalVolume.read_cached``/``get``), and a read of bytes in the page cache stays on
the event loop (``RWF_NOWAIT``). A key (chunk id, version) names the same bytes forever (the
cluster never reuses one), so an entry is never stale: it is evicted, or dropped when found
corrupt (then fetched again — a bad copy is never served).

**Writes**: a temporary file, its table, then ``rename``: a reader (another worker) finds the
whole chunk or nothing. No fsync — it is a cache: a file torn by a crash fails its CRC check,
is dropped and fetched again.

**The bound** (``origin.cache_bytes``) holds for the directory, however many processes share it
(the origin's workers, origin replicas on one host): they keep one count in ``.usage``, updated
under ``flock`` by every fill (never by a hit). A fill that takes the count over the bound
starts an eviction in the process that gets ``.evict.lock``: it scans the directory — the
truth, which also corrects the count — and deletes the least recently used chunks down to 90%
of the bound. "Used" is the file's mtime: a hit touches it (at most once a minute per chunk and
process). So the directory holds at most the bound plus what is filled while an eviction runs.
A chunk larger than the bound is not cached.

**Rebuilt on start**: the directory is scanned (the count set, temporary files of interrupted
writes removed, an over-full cache evicted); no index is kept that the directory does not hold.

Why not ``diskcache``: its values carry no checksum (a flipped bit on disk would be served),
every get is an SQLite query, and its LRU policy writes to SQLite on every hit; here a hit is
one open + pread, verified per 64 KiB block.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import itertools
import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import structlog

from cluster import crc
from cluster.errors import ChunkCorrupt, ChunkMissing, StoreError
from cluster.store import ChunkKey
from cluster.volume import FOLDERS, MARKER, XATTR, XATTR_MAX, LocalVolume, parse_name

log = structlog.get_logger("origin")

USAGE = ".usage"  # the shared count of bytes stored (8 bytes, big-endian)
EVICT_LOCK = ".evict.lock"
LOW_WATER = 0.9  # an eviction goes down to this share of the bound
TOUCH_EVERY = 60.0  # seconds between two touches of one chunk by one process
TOUCHED_MAX = 100_000  # chunks remembered as touched (forgotten all at once beyond)
TMP_MAX_AGE = 600.0  # seconds after which a temporary file is a crashed writer's


class ChunkCache:
    """Whole chunks by key, in ``root``, at most ``bound`` bytes (see the module docstring).
    ``open`` (blocking) before use, in the process that uses it (after a fork)."""

    def __init__(self, root: Path, bound: int) -> None:
        self.root = Path(root)
        self.bound = bound
        self.volume = LocalVolume(self.root)
        self._touched: dict[ChunkKey, float] = {}
        self._usage_fd = -1
        self._names = itertools.count()
        self._evicting: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()

    # -- life cycle ---------------------------------------------------------------------------

    def open(self) -> None:
        self._prepare()
        self._usage_fd = os.open(self.root / USAGE, os.O_RDWR | os.O_CREAT, 0o644)
        self.evict()

    def _prepare(self) -> None:
        """The folders and the marker ``LocalVolume`` reads expect (made if missing)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for folder in FOLDERS:
            (self.root / folder).mkdir(exist_ok=True)
        if not (self.root / MARKER).exists():
            tmp = self.root / f".{MARKER}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps({"uuid": str(uuid.uuid4()), "cache": True}))
            tmp.rename(self.root / MARKER)

    async def close(self) -> None:
        for t in [*self._writes, *([self._evicting] if self._evicting else [])]:
            with contextlib.suppress(Exception):
                await t
        if self._usage_fd >= 0:
            os.close(self._usage_fd)
            self._usage_fd = -1

    # -- reads ----------------------------------------------------------------------------------

    async def get(self, key: ChunkKey, offset: int, length: int) -> bytes | None:
        """``length`` bytes at ``offset`` of a cached chunk, verified; None when it is not
        cached (or was found corrupt: then it is dropped)."""
        try:
            data = self.volume.read_cached(key, offset, length)
            if data is None:  # not (all) in the page cache: read on a thread
                data = await self.volume.get(key, offset, length)
        except ChunkMissing:
            return None
        except ChunkCorrupt as exc:
            log.error("origin.remote.cache_corrupt", chunk=key.name, error=str(exc))
            await asyncio.to_thread(self._drop, key)
            return None
        except StoreError as exc:  # the cache folder is unreadable or gone: fetch instead
            log.warning("origin.remote.cache_unreadable", chunk=key.name, error=str(exc))
            return None
        now = time.monotonic()
        if now - self._touched.get(key, -TOUCH_EVERY) >= TOUCH_EVERY:
            self._touch(key, now)
        return data

    def _touch(self, key: ChunkKey, now: float) -> None:
        if len(self._touched) >= TOUCHED_MAX:
            self._touched.clear()
        self._touched[key] = now
        with contextlib.suppress(OSError):
            os.utime(f"{self.root}/{key.folder}/{key.name}")

    def _drop(self, key: ChunkKey) -> None:
        path = self.volume.path_of(key)
        freed = 0
        for p in (path, path.with_suffix(".crc")):
            with contextlib.suppress(OSError):
                freed += p.stat().st_size
                p.unlink()
        self._touched.pop(key, None)
        if freed:
            self._add(-freed)

    # -- writes -------------------------------------------------------------------------------

    def put_soon(self, key: ChunkKey, data: bytes) -> None:
        """Store a whole chunk in the background (errors are logged, never raised)."""
        if len(data) > self.bound or self._usage_fd < 0:
            return
        task = asyncio.create_task(self._put(key, data))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _put(self, key: ChunkKey, data: bytes) -> None:
        try:
            total = await asyncio.to_thread(self._write, key, data)
        except OSError as exc:
            log.warning("origin.remote.cache_write_failed", chunk=key.name, error=str(exc))
            return
        if total > self.bound and self._evicting is None:
            self._evicting = asyncio.create_task(self._evict_task())

    async def _evict_task(self) -> None:
        try:
            await asyncio.to_thread(self.evict)
        except OSError as exc:
            log.warning("origin.remote.cache_evict_failed", error=str(exc))
        finally:
            self._evicting = None

    def _write(self, key: ChunkKey, data: bytes) -> int:
        """Write the chunk (temporary name, table, rename); the new shared count."""
        try:
            self._write_files(key, data)
        except FileNotFoundError:  # the cache folder was removed under us: make it again
            self._prepare()
            self._write_files(key, data)
        self._touched[key] = time.monotonic()
        return self._add(len(data))

    def _write_files(self, key: ChunkKey, data: bytes) -> None:
        folder = f"{self.root}/{key.folder}"
        final = f"{folder}/{key.name}"
        tmp = f"{folder}/.tmp.{key.name}.{os.getpid()}.{next(self._names)}"
        table = crc.table(data)
        sidecar = len(table) > XATTR_MAX
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if not sidecar:
                    try:
                        os.setxattr(fd, XATTR, table)
                    except OSError as exc:
                        if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                            raise
                        sidecar = True  # no user xattrs here: the sidecar holds the table
            finally:
                os.close(fd)
            if sidecar:  # in place before the chunk, which is useless without it
                with open(f"{tmp}.crc", "wb") as f:
                    f.write(table)
                os.rename(f"{tmp}.crc", f"{final}.crc")
            os.rename(tmp, final)
        except BaseException:
            for leftover in (tmp, f"{tmp}.crc"):
                with contextlib.suppress(OSError):
                    os.unlink(leftover)
            raise

    # -- the shared count and eviction ----------------------------------------------------------

    def _add(self, delta: int) -> int:
        """Add ``delta`` to the shared count; the new count."""
        return self._update(lambda count: count + delta)

    def _update(self, change: Callable[[int], int]) -> int:
        """Replace the shared count ``c`` by ``change(c)``, under its lock; the new count."""
        fd = self._usage_fd
        if fd < 0:
            return 0
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            total = max(0, change(_read_count(fd)))
            os.pwrite(fd, total.to_bytes(8, "big"), 0)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return total

    def usage(self) -> int:
        """The shared count of bytes stored."""
        return _read_count(self._usage_fd) if self._usage_fd >= 0 else 0

    def evict(self) -> None:
        """Scan the directory, drop temporary files of crashed writes, evict the least recently
        used chunks when over the bound, and set the shared count to what is there. Skipped
        when another process is doing it (blocking: run it on a thread)."""
        lock = os.open(self.root / EVICT_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            before = self.usage()
            chunks, total = self._scan()
            evicted = freed = 0
            if total > self.bound:
                chunks.sort()  # least recently used first
                for _, size, path in chunks:
                    if total <= self.bound * LOW_WATER:
                        break
                    for p in (path, f"{path}.crc"):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(p)
                    total -= size
                    freed += size
                    evicted += 1
            # The truth, plus what other processes filled while we scanned.
            self._update(lambda count: total + max(0, count - before))
            if evicted:
                log.info("origin.remote.cache_evicted", chunks=evicted, bytes=freed,
                         stored=total, bound=self.bound)
        finally:
            os.close(lock)

    def _scan(self) -> tuple[list[tuple[float, int, str]], int]:
        """(mtime, bytes with its sidecar, path) of every cached chunk, and their total."""
        sizes: dict[str, list[float | int]] = {}
        now = time.time()
        for folder in FOLDERS:
            try:
                entries = list(os.scandir(self.root / folder))
            except FileNotFoundError:
                continue
            for e in entries:
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if e.name.startswith(".tmp."):
                    if now - st.st_mtime > TMP_MAX_AGE:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(e.path)
                    continue
                base = e.path.removesuffix(".crc")
                if parse_name(os.path.basename(base)) is None:
                    continue
                entry = sizes.setdefault(base, [0.0, 0])
                entry[1] += st.st_size
                if not e.name.endswith(".crc"):
                    entry[0] = st.st_mtime
        chunks = [(float(m), int(s), p) for p, (m, s) in sizes.items()]
        return chunks, sum(s for _, s, _ in chunks)


def _read_count(fd: int) -> int:
    raw = os.pread(fd, 8, 0)
    return int.from_bytes(raw, "big") if len(raw) == 8 else 0

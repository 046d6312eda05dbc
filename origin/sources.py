"""Where the origin's files come from: the cluster (metadata read straight from the master's
SQLite file, bytes from the volumes) or a plain directory (the legacy ``STATIC``).

Both answer ``lookup`` with a ``File`` — size, mtime, and where nginx can send the bytes from
itself (``accel``) — and stream byte ranges with ``read``. The HTTP layer above them is one
and the same, so the same bytes get the same validators on both.

Lookups run on the event loop: a metadata lookup is a few primary-key reads of pages in
memory and a directory lookup a few syscalls, both cheaper than a hop to a thread. Bytes are
read without blocking when they are in the page cache (``RWF_NOWAIT``), else on a thread.
``lookup`` is a coroutine for the remote source (``remote_source.py``), which asks the master
on a miss; these two never suspend in it (measured: no cost to the local path).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast
from urllib.parse import quote

import structlog

from cluster import schema
from cluster.config import ClusterConfig
from cluster.errors import ClusterError
from cluster.master import Volume, chunk_slices, read_copy, scan_counts
from cluster.meta import Chunk, Entry, Meta
from cluster.store import ChunkKey
from cluster.view import servable
from cluster.volume import LocalVolume, pread_nowait
from nginx.accel import LEGACY_LOCATION, volume_location
from origin.errors import Unavailable
from origin.lookup_cache import LookupCache

log = structlog.get_logger("origin")

PIECE = 256 * 1024  # bytes per piece when streaming: the memory a request may hold
COUNTS_TTL = 5.0  # seconds the status page's chunk counts are reused
CACHE_MAX = 65536  # cached lookups per worker (all dropped when full): origin.lookup_cache


@dataclass(frozen=True, slots=True)
class File:
    size: int
    mtime_ns: int
    accel: str | None  # an internal nginx URI that sends exactly these bytes, if any
    handle: object  # the source's own reference (cluster: entry and chunks; legacy: path)


class Source(Protocol):
    async def lookup(self, parts: tuple[bytes, ...]) -> File | None: ...

    # Sources that never suspend in ``lookup`` also offer it as ``lookup_now`` (plain, for
    # ``origin.handoff``); the remote source does not.

    def read(self, f: File, offset: int, length: int) -> AsyncIterator[bytes]: ...

    def ready(self) -> list[str]: ...

    def unable(self) -> str | None: ...


class ClusterSource:
    """Files of the cluster, read without the master: read-only SQLite, local volumes, and
    this host's S3 volumes (``start`` opens them) for chunks no local volume holds — a lost
    disk is served from S3 while the master rebuilds it. Local copies are read first."""

    def __init__(self, cfg: ClusterConfig, cache: int = CACHE_MAX) -> None:
        self.cfg = cfg
        conn = schema.connect(cfg.meta_dir / "meta.db", readonly=True)
        self.meta = Meta(conn, cfg.default_goal, cfg.default_trash_time, dir_cache=True)
        known = self.meta.volumes()
        self.volumes: dict[int, Volume] = {}
        self.accel: dict[int, str] = {}  # volume id → internal location (config order)
        for i, vc in enumerate(cfg.volumes):
            path = str(vc.path.resolve())
            if path in known:
                vid = known[path][0]
                self.volumes[vid] = Volume(vid, path, LocalVolume(Path(path)))
                self.accel[vid] = volume_location(i)
        self._turn = 0
        self._cache = LookupCache(cache)
        self._s3 = [(sc, known[sc.name][0]) for sc in cfg.s3_volumes if sc.name in known]
        self._stack = contextlib.AsyncExitStack()
        self._counts: tuple[int, float, dict[str, int]] | None = None  # (healthy, when, counts)
        self._counting = asyncio.Lock()

    async def start(self) -> None:
        """Open the S3 volumes (one connection per endpoint, in this worker's loop)."""
        if self._s3:
            from cluster.s3store import open_stores  # aioboto3 only when S3 is used

            opened = await open_stores([sc for sc, _ in self._s3], self._stack)
            for (sc, vid), (_, store) in zip(self._s3, opened, strict=True):
                self.volumes[vid] = Volume(vid, sc.name, store, kind="s3", worth=sc.counts_as)

    async def close(self) -> None:
        await self._stack.aclose()

    async def lookup(self, parts: tuple[bytes, ...]) -> File | None:
        return self.lookup_now(parts)

    def lookup_now(self, parts: tuple[bytes, ...]) -> File | None:
        """The file at ``parts``, from this worker's cache (``origin/lookup_cache.py``) when
        no commit since changed it. The copy nginx would send is stat'ed on every hit: a
        volume's disk can vanish without a commit."""
        db = self.meta.db
        self._cache.sync(db)
        hit = self._cache.get(parts)
        if hit is not None:
            f, copy = hit
            if copy is None or (f is not None and _sends(copy, f)):
                return f
            # that copy is gone or changed: read the metadata again
        db.execute("BEGIN")
        try:
            f, copy = self._lookup(parts)
        finally:
            db.execute("COMMIT")
        self._cache.put(parts, (f, copy))
        return f

    def _lookup(self, parts: tuple[bytes, ...]) -> tuple[File | None, str | None]:
        """Inside the caller's read transaction (the entry and its chunks agree): the file
        and the chunk file nginx would send, if any."""
        meta = self.meta
        try:
            e = meta.stat(parts)
            if e.is_dir:
                return None, None
            chunks = meta.chunks(e.chunks)
        except ClusterError:
            return None, None
        accel = self._accel(e, chunks)
        location, copy = accel if accel is not None else (None, None)
        return File(e.size, e.mtime_ns, location, (e, chunks)), copy

    def _accel(self, e: Entry, chunks: list[Chunk]) -> tuple[str, str] | None:
        """A copy nginx can send as is — one chunk, a file whose size and mtime are the
        entry's (so nginx's validators are the ones the origin computes) — as (internal
        location, chunk file)."""
        if not servable(e):
            return None
        (c,) = chunks
        key = ChunkKey(c.id, c.version)
        for vid in self._order(c):
            if vid not in self.accel:  # an S3 copy: nginx cannot send it
                continue
            store = self.volumes[vid].store
            assert isinstance(store, LocalVolume)
            copy = store.file_of(key)
            if _sends(copy, e):
                return f"{self.accel[vid]}{key.folder}/{key.name}", copy
        return None

    def _order(self, c: Chunk) -> list[int]:
        """The volumes holding a copy: local ones first, rotating among them."""
        vids = [vid for vid in self.volumes if c.copies & (1 << vid)]
        if vids:
            self._turn += 1
            t = self._turn % len(vids)
            vids = vids[t:] + vids[:t]
            vids.sort(key=lambda vid: vid not in self.accel)
        return vids

    async def read(self, f: File, offset: int, length: int) -> AsyncIterator[bytes]:
        entry, chunks = cast(tuple[Entry, list[Chunk]], f.handle)
        for c, off, n in chunk_slices(entry.size, chunks, offset, length, PIECE):
            order = [self.volumes[v] for v in self._order(c)]
            key = ChunkKey(c.id, c.version)
            data, _, failed = await read_copy(key, off, n, order, chunk_size=c.size)
            for v, exc in failed:
                log.warning("origin.volume_failed", volume=v.path, error=str(exc))
            if data is None:
                raise Unavailable(f"no readable good copy of chunk {key.name}")
            yield data

    def ready(self) -> list[str]:
        meta = self._meta_problem()
        return ([meta] if meta else []) + self._volume_problems()

    def unable(self) -> str | None:
        """Why nothing can be served (the metadata unreadable, or not one volume there), or
        None. One volume of several missing is not that: its files are read from their other
        copies, and a file with no readable copy is a 503 of its own."""
        meta = self._meta_problem()
        if meta:
            return meta
        bad = self._volume_problems()
        if self.volumes and len(bad) == len(self.volumes):
            return "no volume is usable: " + "; ".join(bad)
        return None

    async def counts(self, healthy: int) -> dict[str, int]:
        """``Meta.counts`` for the status page. It scans every chunk (≈ 0.8 s per million on
        a 2-core VM), so it runs on a thread over a connection of its own — never on the loop
        that serves assets — one scan at a time, and its answer is reused for
        ``COUNTS_TTL`` seconds: a status page reloaded by many people costs one scan."""
        async with self._counting:
            last = self._counts
            if last is not None and last[0] == healthy and \
                    time.monotonic() - last[1] < COUNTS_TTL:
                return last[2]
            weights = {v.bit: v.worth for v in self.volumes.values()}
            counts = await asyncio.to_thread(scan_counts, self.cfg, healthy, weights)
            self._counts = (healthy, time.monotonic(), counts)
            return counts

    def _meta_problem(self) -> str | None:
        try:
            self.meta.db.execute("SELECT 1 FROM inode LIMIT 1").fetchone()
        except Exception as exc:  # any database error: not ready
            return f"metadata unreadable: {exc}"
        return None

    def _volume_problems(self) -> list[str]:
        problems = []
        for v in self.volumes.values():
            if not isinstance(v.store, LocalVolume):
                continue  # S3: its health is the master's to judge (``cluster status``)
            try:
                v.store.identity()
            except ClusterError as exc:
                problems.append(f"volume {v.path}: {exc}")
        return problems


def _sends(copy: str, f: File | Entry) -> bool:
    """Whether the chunk file ``copy`` is there with ``f``'s size and mtime."""
    try:
        st = os.stat(copy)
    except OSError:
        return False
    return st.st_size == f.size and st.st_mtime_ns == f.mtime_ns


class DirectorySource:
    """Files of a plain directory (the legacy ``STATIC``). Symbolic links are followed only
    when they resolve inside the directory."""

    def __init__(self, root: Path) -> None:
        self.root = os.fsencode(root.resolve())

    async def lookup(self, parts: tuple[bytes, ...]) -> File | None:
        return self.lookup_now(parts)

    def lookup_now(self, parts: tuple[bytes, ...]) -> File | None:
        path = os.path.join(self.root, *parts) if parts else self.root
        real = os.path.realpath(path)
        if real != self.root and not real.startswith(self.root + b"/"):
            return None  # a symbolic link out of the directory
        try:
            st = os.stat(real)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        rel = real[len(self.root) + 1 :]
        return File(st.st_size, st.st_mtime_ns, LEGACY_LOCATION + quote(rel), real)

    async def read(self, f: File, offset: int, length: int) -> AsyncIterator[bytes]:
        path = f.handle
        assert isinstance(path, bytes)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise Unavailable(f"cannot open {os.fsdecode(path)}: {exc}") from None
        try:
            end = offset + length
            while offset < end:
                n = min(PIECE, end - offset)
                data = pread_nowait(fd, n, offset)
                if data is None:
                    data = await asyncio.to_thread(os.pread, fd, n, offset)
                if len(data) != n:  # the file shrank under us: the response cannot be whole
                    raise Unavailable(f"{os.fsdecode(path)} changed while it was being read")
                yield data
                offset += n
        except OSError as exc:
            raise Unavailable(f"cannot read {os.fsdecode(path)}: {exc}") from None
        finally:
            os.close(fd)

    def ready(self) -> list[str]:
        return [] if os.path.isdir(self.root) else [f"{os.fsdecode(self.root)} is missing"]

    def unable(self) -> str | None:
        problems = self.ready()
        return problems[0] if problems else None

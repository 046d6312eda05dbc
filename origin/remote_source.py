"""Files of the cluster for an origin on another host (``origin.master`` set): metadata from
the master's HTTP API, bytes from a local hot-chunk cache, else S3, else the master.

**Metadata.** A lookup asks the master (``GET /v1/lookup``: size, mtime, the chunks and which
volumes hold them, and the changelog position ``seq`` the answer was read at, in one snapshot)
and is kept per worker. The worker follows the master's change feed (``/v1/changes``,
long-polled) and forgets what a change touches: a ``put``, ``undelete`` or file ``rm`` its
path, an ``rm`` of a directory, ``mv`` or ``snapshot`` every path under its source and
destination; an unknown op everything. A change reaches the origin within milliseconds of its
commit, so a rewritten or deleted file is served with its new validators at once. An answer
read at ``seq`` is kept only if the feed has applied nothing after ``seq`` (else a change that
overtook it would be lost); a change at ``s`` forgets only answers read before ``s``. A cursor
the master has trimmed, or a master whose changelog went backwards (new metadata), clears
everything. While the master cannot be reached the origin **cannot serve** (``unable``: every
read a 503, so nginx sends the traffic elsewhere): it cannot know what changed.

**Bytes**, per chunk: the hot-chunk cache (``chunk_cache.py``); else a copy on one of this
host's S3 volumes — ``[[cluster.volumes]] kind = "s3"`` of this host's config, matched to the
master's volumes by name (``s3:<endpoint>/<bucket>/<prefix>``), all through one S3 connection
per endpoint and process — else the master itself (``GET /v1/chunk``: that exact chunk
version, so a file rewritten meanwhile can never lend its bytes). A chunk is fetched whole,
once per worker however many requests want it, and then cached; a warm file costs neither a
request to the master nor one to S3. Chunks larger than the cache bound (or with
``cache_bytes = 0``) are read piece by piece instead, never cached.

**Health.** ``unable``: the master unreachable (two feed polls in a row failed). ``ready``
adds each S3 volume whose bucket does not answer (checked every 2 s), configured S3 volumes
the master does not have, and a cache folder that cannot be used (then there is no cache). An
S3 volume down is not "unable": cached chunks are still served, the others come through the
master.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from cluster import paths
from cluster.errors import ChangelogTrimmed, ChunkCorrupt, ClusterError, StoreError
from cluster.master import chunk_slices
from cluster.meta import Change, Chunk, Kind
from cluster.remote import RemoteCluster
from cluster.store import ChunkKey, StoreStat
from origin.chunk_cache import ChunkCache
from origin.config import Config
from origin.errors import Unavailable
from origin.sources import PIECE, File

if TYPE_CHECKING:
    from cluster.s3store import S3Store

log = structlog.get_logger("origin")

FEED_WAIT = 5  # seconds a change-feed poll waits on the master for a change
FEED_LIMIT = 1000  # changes per poll
TIMEOUT = FEED_WAIT + 5.0  # seconds for any request to the master
HEALTH_INTERVAL = 2.0  # seconds between two checks of the S3 buckets and the master host
LOOKUPS_MAX = 65536  # lookups kept per worker (all forgotten when full)
RETRY_MAX = 2.0  # seconds between two attempts to reach the master, at most
REMAP_EVERY = 10.0  # seconds between two refreshes of the master's volume list, at least
KEEP = frozenset({"setgoal", "settrashtime", "purge"})  # no file's size, mtime or chunks
ONE_PATH = frozenset({"put", "undelete", "mkdir"})

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Remote:
    """``File.handle`` of a remote file: its chunks (``copies``: the master's volume bits)."""

    chunks: list[Chunk]


class RemoteSource:
    """The cluster's files through the master's HTTP API; ``start`` in the worker's loop."""

    def __init__(self, cfg: Config) -> None:
        o = cfg.origin
        self.master = RemoteCluster(o.master, token=o.master_token, timeout=TIMEOUT)
        self.cache = ChunkCache(o.cache_dir, o.cache_bytes) if o.cache_bytes else None
        self.s3_configs = cfg.cluster.s3_volumes
        self.by_name: dict[str, S3Store] = {}  # this host's S3 volumes by name
        self.stores: dict[int, S3Store] = {}  # master volume id → this host's store for it
        self.known = 0  # bits of every volume the master listed
        self.applied = -1  # the feed applied every change up to here; -1: not following
        self.problem: str | None = "the master was not reached yet"
        self.s3_problems: dict[str, str] = {}
        self.master_problems: list[str] = []  # the master host's fence and sync lag
        self.unmatched: list[str] = []
        self.cache_problem = ""
        self._files: dict[tuple[bytes, ...], tuple[int, File | None]] = {}
        self._lookups: dict[tuple[bytes, ...], asyncio.Task[File | None]] = {}
        self._fetches: dict[ChunkKey, asyncio.Task[bytes]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stack = contextlib.AsyncExitStack()
        self._remapped = -REMAP_EVERY
        self._remapping: asyncio.Task[None] | None = None

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the cache and the S3 connections, reach the master once, then follow it."""
        if self.cache is not None:
            try:
                await asyncio.to_thread(self.cache.open)
            except OSError as exc:  # serve without it rather than not at all
                self.cache_problem = f"chunk cache {self.cache.root} unusable: {exc}"
                log.error("origin.remote.cache_unusable", error=str(exc))
                self.cache = None
        if self.s3_configs:
            from cluster.s3store import open_stores  # aioboto3 only when S3 is used

            opened = await open_stores(self.s3_configs, self._stack)
            self.by_name = {cfg.name: store for cfg, store in opened}
        with contextlib.suppress(ClusterError):
            await self._connect()
            self._reached()  # nothing kept yet, so nothing can be stale
        self._tasks = [asyncio.create_task(self._follow(), name="origin-feed"),
                       asyncio.create_task(self._health(), name="origin-health")]

    async def close(self) -> None:
        tasks = [*self._tasks, *([self._remapping] if self._remapping else [])]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.cache is not None:
            await self.cache.close()
        await self.master.__aexit__(None, None, None)
        await self._stack.aclose()

    # -- metadata -------------------------------------------------------------------------------

    async def lookup(self, parts: tuple[bytes, ...]) -> File | None:
        hit = self._files.get(parts)
        if hit is not None:
            return hit[1]
        return await _once(self._lookups, parts, functools.partial(self._ask, parts))

    async def _ask(self, parts: tuple[bytes, ...]) -> File | None:
        path = paths.join(parts)
        try:
            answer = await self.master.lookup(path)
        except ClusterError as exc:
            raise Unavailable(f"cannot look up {paths.show(path)}: {exc}") from None
        seq, found = int(answer["seq"]), answer["file"]
        f = None
        if found is not None:
            chunks = [Chunk(i, v, s, 0, m, 0) for i, v, s, m in found["chunks"]]
            f = File(found["size"], found["mtime_ns"], None, Remote(chunks))
        if self.applied >= 0 and seq >= self.applied and self.problem is None:
            if len(self._files) >= LOOKUPS_MAX:
                self._files.clear()
            self._files[parts] = (seq, f)
        return f

    async def _connect(self) -> None:
        """Learn the master's volumes and where its changelog is. A first connection starts
        following there; a reconnection resumes at the cursor, unless the changelog went
        backwards (another metadata database: everything is forgotten)."""
        await self._remap()
        seq = int((await self.master.lookup(b"/"))["seq"])
        if self.applied < 0 or seq < self.applied:
            if self.applied >= 0:
                log.warning("origin.remote.history_reset", cursor=self.applied, master=seq)
            self._files.clear()
            self.applied = seq

    def _reached(self) -> None:
        """The master answers and every change it committed so far is applied."""
        if self.problem is not None:
            log.info("origin.remote.connected", master=self.master.url, seq=self.applied,
                     s3_volumes=len(self.stores))
            self.problem = None

    async def _remap(self) -> None:
        """Match this host's S3 volumes to the master's (by name)."""
        self._remapped = asyncio.get_running_loop().time()
        volumes: list[dict[str, Any]] = (await self.master.status())["volumes"]
        self.known = sum(1 << int(v["id"]) for v in volumes)
        self.stores = {int(v["id"]): self.by_name[v["path"]] for v in volumes
                       if v["path"] in self.by_name}
        mapped = {v["path"] for v in volumes}
        self.unmatched = [n for n in self.by_name if n not in mapped]
        for name in self.unmatched:
            log.warning("origin.remote.s3_unknown", volume=name, master=self.master.url)

    async def _follow(self) -> None:
        """Apply the master's changes as they commit; reconnect when it cannot be reached."""
        failures = 0
        while True:
            try:
                if failures or self.applied < 0:
                    await self._connect()
                wait = FEED_WAIT if self.problem is None else 0  # catching up: no waiting
                changes = await self.master.changes(self.applied, limit=FEED_LIMIT, wait=wait)
            except ChangelogTrimmed:
                log.warning("origin.remote.feed_trimmed", cursor=self.applied)
                self.applied = -1  # the next connect starts afresh, everything forgotten
                continue
            except Exception as exc:  # unreachable, or an answer not understood: not following
                failures += 1
                if failures >= 2 and self.problem is None:
                    self.problem = f"the master at {self.master.url} cannot be reached: {exc}"
                    log.error("origin.remote.master_unreachable", error=str(exc))
                await asyncio.sleep(min(RETRY_MAX, 0.05 * 2**failures))
                continue
            failures = 0
            for c in changes:
                self._apply(c)
            if changes:
                self.applied = changes[-1].seq
            if self.problem is not None and len(changes) < FEED_LIMIT:  # caught up: serve again
                self._reached()

    def _apply(self, c: Change) -> None:
        if c.op in KEEP:
            return
        files = self._files
        if c.op in ONE_PATH or (c.op == "rm" and c.arg == Kind.FILE):
            parts = paths.parse(c.path)
            hit = files.get(parts)
            if hit is not None and hit[0] < c.seq:
                del files[parts]
        elif c.op in ("rm", "mv", "snapshot"):
            for top in (c.path, c.dest):
                if top is not None:
                    prefix = paths.parse(top)
                    n = len(prefix)
                    for k in [k for k, v in files.items() if k[:n] == prefix and v[0] < c.seq]:
                        del files[k]
        else:
            files.clear()

    # -- bytes ----------------------------------------------------------------------------------

    async def read(self, f: File, offset: int, length: int) -> AsyncIterator[bytes]:
        handle = f.handle
        assert isinstance(handle, Remote)
        cache = self.cache
        held: tuple[Chunk, bytes] | None = None  # the last chunk fetched whole
        for c, off, n in chunk_slices(f.size, handle.chunks, offset, length, PIECE):
            if held is not None and held[0] is c:
                yield held[1][off : off + n]
                continue
            key = ChunkKey(c.id, c.version)
            if cache is not None:
                data = await cache.get(key, off, n)
                if data is not None:
                    if n < length:  # stay fair: a cached read never yields by itself
                        await asyncio.sleep(0)
                    yield data
                    continue
                if c.size <= cache.bound:
                    whole = await _once(self._fetches, key, functools.partial(self._fill, c, key))
                    held = (c, whole)
                    yield whole[off : off + n]
                    continue
            yield await self._fetch(c, key, off, n)

    async def _fill(self, c: Chunk, key: ChunkKey) -> bytes:
        data = await self._fetch(c, key, 0, c.size)
        assert self.cache is not None
        self.cache.put_soon(key, data)
        return data

    async def _fetch(self, c: Chunk, key: ChunkKey, offset: int, length: int) -> bytes:
        """From a copy on this host's S3 volumes (verified by its CRC table), else through
        the master (which reads a good copy). A read to the chunk's end asks for "to the
        end" (on S3 a plain GET, cheaper than a ranged one, as ``master.read_copy`` does)."""
        ask = None if offset + length == c.size else length
        for vid, store in self.stores.items():
            if c.copies & (1 << vid):
                try:
                    data = await store.get(key, offset, ask)
                    if len(data) == length:
                        return data
                    raise ChunkCorrupt(f"{len(data)} bytes at {offset}, {length} expected")
                except StoreError as exc:
                    log.warning("origin.remote.s3_failed", volume=store.name, chunk=key.name,
                                error=str(exc))
        if c.copies & ~self.known and self.by_name:
            self._remap_soon()  # a volume the master added since: maybe one of ours
        try:
            data = await self.master.chunk(c.id, c.version, offset, length)
        except ClusterError as exc:
            raise Unavailable(f"no readable copy of chunk {key.name}: {exc}") from None
        if len(data) != length:  # never cached, never served
            raise Unavailable(f"chunk {key.name}: the master sent {len(data)} of {length} bytes")
        return data

    def _remap_soon(self) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._remapped >= REMAP_EVERY:
            self._remapped = now
            self._remapping = asyncio.create_task(self._remap())
            self._remapping.add_done_callback(_quiet)

    # -- health ---------------------------------------------------------------------------------

    async def _health(self) -> None:
        """Every ``HEALTH_INTERVAL``: this host's S3 buckets, and what the master's host
        reports (its fence, its sync lag: the same ``/readyz`` as the origins there)."""
        while True:
            with contextlib.suppress(ClusterError):  # unreachable: the feed reports that
                problems = await self.master.readiness()
                if problems != self.master_problems:
                    log.info("origin.remote.master_readiness", problems=problems)
                self.master_problems = problems
            for name, store in self.by_name.items():
                try:
                    st = await store.stat()
                except Exception as exc:  # never let the check die: its verdict would stick
                    st = StoreStat(0, 0, False, f"{type(exc).__name__}: {exc}")
                old = self.s3_problems.get(name)
                if st.healthy:
                    if old is not None:
                        log.info("origin.remote.s3_healthy", volume=name)
                        del self.s3_problems[name]
                elif old is None:
                    log.error("origin.remote.s3_unhealthy", volume=name, reason=st.reason)
                    self.s3_problems[name] = st.reason
            await asyncio.sleep(HEALTH_INTERVAL)

    def ready(self) -> list[str]:
        out = [p for p in (self.problem, self.cache_problem) if p]
        out += [f"the master's host: {p}" for p in self.master_problems]
        out += [f"S3 volume {n}: {why}" for n, why in self.s3_problems.items()]
        out += [f"S3 volume {n} is not a volume of the master at {self.master.url}"
                for n in self.unmatched]
        return out

    def unable(self) -> str | None:
        return self.problem


async def _once(running: dict[K, asyncio.Task[V]], key: K, make: Callable[[], Awaitable[V]]) -> V:
    """One ``make()`` at a time per key, its result shared by every caller meanwhile; a caller
    that goes away (a client hung up) does not cancel it for the others."""
    task = running.get(key)
    if task is None:
        task = asyncio.ensure_future(make())
        running[key] = task

        def done(t: asyncio.Task[V]) -> None:
            running.pop(key, None)
            _quiet(t)

        task.add_done_callback(done)
    return await asyncio.shield(task)


def _quiet(task: asyncio.Task[Any]) -> None:
    """Mark a task's exception as seen (its callers got it, or it does not matter)."""
    if not task.cancelled():
        task.exception()

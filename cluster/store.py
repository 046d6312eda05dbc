"""The chunk store protocol: the one narrow seam between the master and chunk bytes.

A store holds immutable chunks named by ``ChunkKey`` (id, version). Every implementation
(local volume directory today; remote chunkserver and S3 next) must:

- ``put``: store the bytes (and ``mtime_ns``, the file's modification time, where the store
  can keep one: a local volume sets the chunk file's mtime, which the nginx fast path turns
  into ETag and Last-Modified); make the chunk durable before returning (a crash after
  ``put`` returns keeps it); ``sha256``, when the caller has it, is the SHA-256 of ``data``
  (a store whose protocol hashes the payload, S3's request signing, uses it instead);
  ``get`` never returns bytes of a chunk whose put has not completed (it raises
  ``ChunkMissing`` or ``ChunkCorrupt``), though ``head``/``list`` may already show it —
  the master only reads chunks its committed metadata points at;
- ``get``: return the bytes of ``[offset, offset+length)``, every byte covered by a verified
  CRC32 of its 64 KiB block; a mismatch raises ``ChunkCorrupt``, absence ``ChunkMissing``;
- ``head``: size of a stored chunk, or None; ``delete``: idempotent; ``list``: every key;
- ``stat``: capacity and health.

Errors are the cluster's ``StoreError`` subclasses, mapped once inside each implementation.
``tests/conformance.py`` (``StoreConformance``) is the suite every implementation passes;
``tests/test_store_local.py`` runs it against ``LocalVolume``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, order=True)
class ChunkKey:
    id: int
    version: int = 1

    @property
    def name(self) -> str:
        """The store-level name: ``chunk_<id:016X>_<version:08X>`` (MooseFS style)."""
        return f"chunk_{self.id:016X}_{self.version:08X}"

    @property
    def folder(self) -> str:
        """``00``..``FF``: the low byte of the id, spreading chunks over 256 folders."""
        return f"{self.id & 0xFF:02X}"


@dataclass(frozen=True)
class StoreStat:
    total: int
    free: int
    healthy: bool
    reason: str = ""

    @property
    def used(self) -> int:
        return self.total - self.free


@runtime_checkable
class ChunkStore(Protocol):
    """An async store of immutable, CRC-protected chunks."""

    name: str

    async def put(
        self, key: ChunkKey, data: bytes, *, mtime_ns: int | None = None,
        sha256: bytes | None = None,
    ) -> None: ...

    async def get(self, key: ChunkKey, offset: int = 0, length: int | None = None) -> bytes: ...

    async def head(self, key: ChunkKey) -> int | None: ...

    async def delete(self, key: ChunkKey) -> None: ...

    def list(self) -> AsyncIterator[ChunkKey]: ...

    async def stat(self) -> StoreStat: ...


@runtime_checkable
class BatchWriter(Protocol):
    """An optional ability (rclone-style feature): writes made durable together.

    ``write_nosync`` stores a chunk without waiting for the disk; ``sync`` makes every earlier
    ``write_nosync`` durable at once. The master's group commit uses it for small chunks: a
    batch of puts costs one sync per filesystem instead of two fsyncs per copy. Both block:
    they run on the master's database thread, never on the event loop.
    """

    sync_domain: int

    def write_nosync(self, key: ChunkKey, data: bytes, *, mtime_ns: int | None = None) -> None:
        ...

    def sync(self) -> None: ...


@runtime_checkable
class CachedReader(Protocol):
    """An optional ability: ``read_cached`` returns the bytes ``get`` would, without blocking,
    when they are already in memory (the page cache), else None. The master calls it on the
    event loop first and falls back to ``get`` — a thread hop costs more than the read."""

    def read_cached(
        self, key: ChunkKey, offset: int = 0, length: int | None = None
    ) -> bytes | None: ...

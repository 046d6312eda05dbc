"""The chunk store protocol: the one narrow seam between the master and chunk bytes.

A store holds immutable chunks named by ``ChunkKey`` (id, version). Every implementation
(local volume directory today; remote chunkserver and S3 next) must:

- ``put``: make the chunk durable before returning (a crash after ``put`` returns keeps it);
  a chunk is visible under its key only complete — never partially written;
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

    async def put(self, key: ChunkKey, data: bytes) -> None: ...

    async def get(self, key: ChunkKey, offset: int = 0, length: int | None = None) -> bytes: ...

    async def head(self, key: ChunkKey) -> int | None: ...

    async def delete(self, key: ChunkKey) -> None: ...

    def list(self) -> AsyncIterator[ChunkKey]: ...

    async def stat(self) -> StoreStat: ...

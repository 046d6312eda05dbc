"""The conformance suite every ``ChunkStore`` implementation must pass (see cluster/store.py).

Use it by subclassing ``StoreConformance`` in a ``test_*.py`` module and providing:

- a ``store`` fixture yielding a fresh, empty store;
- ``corrupt(store, key, offset)``: flip one stored byte of a chunk *behind the store's back*
  (the local volume edits the chunk file; S3 would rewrite the object without its CRC);
- optionally ``reopen(store)``: a new handle onto the same storage, to show that what ``put``
  stored does not live only in the first handle's memory (the default returns ``store``).

The suite pins down what the protocol leaves implicit: a range running past the end of a chunk
is clipped to the end (like ``read(2)``), an offset beyond the end is a ``StoreError``.
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import pytest

from cluster.errors import ChunkCorrupt, ChunkMissing, StoreError
from cluster.store import ChunkKey, ChunkStore, StoreStat

BLOCK = 64 * 1024


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes (every block differs, so a swapped block shows)."""
    return random.Random(seed).randbytes(size)


async def stored_keys(store: ChunkStore) -> set[ChunkKey]:
    return {k async for k in store.list()}


class StoreConformance:
    """Mixin of tests; subclasses provide the ``store`` fixture and ``corrupt``."""

    # -- hooks ------------------------------------------------------------------------------

    def corrupt(self, store: Any, key: ChunkKey, offset: int) -> None:
        raise NotImplementedError("a conformance subclass must say how to damage a stored chunk")

    def reopen(self, store: Any) -> Any:
        return store

    # -- protocol shape -----------------------------------------------------------------------

    async def test_is_a_chunk_store(self, store: Any) -> None:
        assert isinstance(store, ChunkStore)
        assert isinstance(store.name, str) and store.name
        assert await stored_keys(store) == set()

    # -- put / get ----------------------------------------------------------------------------

    @pytest.mark.parametrize(
        "size", [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 123], ids=lambda s: f"{s}B"
    )
    async def test_round_trip(self, store: Any, size: int) -> None:
        key = ChunkKey(1000 + size, 1)
        data = pattern(size, seed=size)
        await store.put(key, data)
        assert await store.get(key) == data
        assert await store.head(key) == size

    async def test_versions_are_distinct_keys(self, store: Any) -> None:
        await store.put(ChunkKey(5, 1), b"one")
        await store.put(ChunkKey(5, 2), b"two!")
        assert await store.get(ChunkKey(5, 1)) == b"one"
        assert await store.get(ChunkKey(5, 2)) == b"two!"
        assert await store.head(ChunkKey(5, 3)) is None

    async def test_ids_spread_over_folders_do_not_collide(self, store: Any) -> None:
        # Same low byte (same folder on a local volume), different ids.
        keys = [ChunkKey(0x42 + (n << 8), 1) for n in range(4)]
        for n, k in enumerate(keys):
            await store.put(k, bytes([n]) * (n + 1))
        for n, k in enumerate(keys):
            assert await store.get(k) == bytes([n]) * (n + 1)

    async def test_durable_across_handles(self, store: Any) -> None:
        key = ChunkKey(77, 3)
        data = pattern(2 * BLOCK + 5)
        await store.put(key, data)
        other = self.reopen(store)
        assert await other.get(key) == data
        assert await other.head(key) == len(data)
        assert key in await stored_keys(other)

    # -- ranged get ----------------------------------------------------------------------------

    @pytest.mark.parametrize(
        ("offset", "length"),
        [
            (0, 1),
            (0, BLOCK),  # exactly the first block
            (BLOCK - 1, 2),  # straddles the first edge
            (BLOCK, BLOCK),  # exactly the second block
            (BLOCK + 10, 100),  # inside a block
            (10, 3 * BLOCK),  # across three blocks
            (3 * BLOCK, 7),  # the short last block
            (3 * BLOCK + 6, 1),  # the very last byte
            (3 * BLOCK + 7, 0),  # empty range at the end
            (5, 0),  # empty range inside
        ],
    )
    async def test_ranged_get(self, store: Any, offset: int, length: int) -> None:
        key = ChunkKey(9, 1)
        data = pattern(3 * BLOCK + 7, seed=3)
        await store.put(key, data)
        assert await store.get(key, offset, length) == data[offset : offset + length]

    async def test_range_without_length_runs_to_the_end(self, store: Any) -> None:
        key = ChunkKey(10, 1)
        data = pattern(2 * BLOCK + 50)
        await store.put(key, data)
        assert await store.get(key, BLOCK + 3) == data[BLOCK + 3 :]

    async def test_range_past_the_end_is_clipped(self, store: Any) -> None:
        key = ChunkKey(11, 1)
        data = pattern(BLOCK + 100)
        await store.put(key, data)
        assert await store.get(key, BLOCK, 10 * BLOCK) == data[BLOCK:]
        assert await store.get(key, len(data), 5) == b""

    async def test_offset_beyond_the_end_is_an_error(self, store: Any) -> None:
        key = ChunkKey(12, 1)
        await store.put(key, b"abc")
        with pytest.raises(StoreError):
            await store.get(key, 4, 1)
        with pytest.raises(StoreError):
            await store.get(key, -1, 1)

    # -- head / delete / list ---------------------------------------------------------------------

    async def test_head(self, store: Any) -> None:
        assert await store.head(ChunkKey(13, 1)) is None
        await store.put(ChunkKey(13, 1), b"x" * 1234)
        assert await store.head(ChunkKey(13, 1)) == 1234
        await store.put(ChunkKey(14, 1), b"")
        assert await store.head(ChunkKey(14, 1)) == 0  # empty, but present: not None

    async def test_delete_is_idempotent(self, store: Any) -> None:
        key = ChunkKey(15, 1)
        await store.delete(key)  # never stored: fine
        await store.put(key, pattern(BLOCK + 1))
        await store.put(ChunkKey(16, 1), b"keep")
        await store.delete(key)
        assert await store.head(key) is None
        with pytest.raises(ChunkMissing):
            await store.get(key)
        await store.delete(key)  # again: fine
        assert await stored_keys(store) == {ChunkKey(16, 1)}
        assert await store.get(ChunkKey(16, 1)) == b"keep"

    async def test_list_is_exactly_the_stored_keys(self, store: Any) -> None:
        keys = {ChunkKey(i * 37 + 1, v) for i in range(40) for v in (1, 2) if (i + v) % 3}
        for k in keys:
            await store.put(k, k.name.encode())
        assert await stored_keys(store) == keys
        gone = sorted(keys)[::4]
        for k in gone:
            await store.delete(k)
        assert await stored_keys(store) == keys - set(gone)

    async def test_missing_chunk(self, store: Any) -> None:
        await store.put(ChunkKey(17, 1), b"other")
        with pytest.raises(ChunkMissing):
            await store.get(ChunkKey(18, 1))
        with pytest.raises(ChunkMissing):
            await store.get(ChunkKey(17, 2), 0, 1)

    # -- atomicity -----------------------------------------------------------------------------

    async def test_put_is_never_partially_readable(self, store: Any) -> None:
        """While a large put runs, get never returns a prefix: the key is absent, or refused
        as incomplete (its CRC table does not cover it yet), or complete. (head and list may
        show a chunk being written; the master reads nothing its metadata has not committed.)"""
        key = ChunkKey(19, 1)
        data = pattern(160 * BLOCK, seed=9)  # 10 MiB: long enough to be caught mid-write
        task = asyncio.create_task(store.put(key, data))
        seen: set[str] = set()
        while True:
            done = task.done()
            size = await store.head(key)
            assert size is None or 0 <= size <= len(data)
            listed = await stored_keys(store)
            assert listed <= {key}, f"list shows unexpected keys: {listed}"
            try:
                got = await store.get(key)
            except (ChunkMissing, ChunkCorrupt):
                seen.add("absent or incomplete")
            else:
                assert got == data, "get returned a partially written chunk"
                seen.add("complete")
            if done:
                break
        await task
        assert "complete" in seen
        assert await store.get(key) == data
        assert await stored_keys(store) == {key}

    async def test_overwriting_put_keeps_one_complete_copy(self, store: Any) -> None:
        # Chunks are immutable, but a retried put (same key, same bytes) must be harmless.
        key = ChunkKey(20, 1)
        data = pattern(2 * BLOCK + 1)
        await store.put(key, data)
        await store.put(key, data)
        assert await store.get(key) == data
        assert await stored_keys(store) == {key}

    # -- integrity -----------------------------------------------------------------------------

    @pytest.mark.parametrize("where", [0, BLOCK - 1, BLOCK, 2 * BLOCK + 99])
    async def test_flipped_byte_is_detected(self, store: Any, where: int) -> None:
        key = ChunkKey(21, 1)
        data = pattern(2 * BLOCK + 100, seed=1)
        await store.put(key, data)
        self.corrupt(store, key, where)
        with pytest.raises(ChunkCorrupt):
            await store.get(key)
        # A range covering the damaged byte is refused too, never served.
        with pytest.raises(ChunkCorrupt):
            await store.get(key, where, 1)
        block = where // BLOCK * BLOCK
        with pytest.raises(ChunkCorrupt):
            await store.get(key, block, BLOCK)

    async def test_corruption_of_one_chunk_does_not_affect_another(self, store: Any) -> None:
        a, b = ChunkKey(22, 1), ChunkKey(23, 1)
        await store.put(a, pattern(BLOCK + 1, seed=4))
        await store.put(b, pattern(BLOCK + 1, seed=5))
        self.corrupt(store, a, 7)
        with pytest.raises(ChunkCorrupt):
            await store.get(a)
        assert await store.get(b) == pattern(BLOCK + 1, seed=5)

    # -- stat ---------------------------------------------------------------------------------

    async def test_stat_is_healthy_with_capacity(self, store: Any) -> None:
        st = await store.stat()
        assert isinstance(st, StoreStat)
        assert st.healthy, st.reason
        assert st.total > 0
        assert 0 <= st.free <= st.total
        assert st.used == st.total - st.free


def flip_byte(path: os.PathLike[str] | str, offset: int) -> None:
    """XOR one byte of a file in place (helper for local-file based stores)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        (b,) = f.read(1)
        f.seek(offset)
        f.write(bytes([b ^ 0xFF]))

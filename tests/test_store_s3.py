"""The S3 chunk store against a real engine: Ceph RGW started by the test session.

The shared store conformance suite, plus what is S3's own: the CRC sidecar of large chunks,
multipart, mtime in metadata, error mapping, and a 2,000-chunk round trip (ListObjectsV2
paging).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conformance import StoreConformance, pattern, stored_keys
from s3util import BUCKET, flip, fresh, raw_client, rewrite

from cluster import crc
from cluster.config import MIB, S3Config
from cluster.errors import ChunkCorrupt, ChunkMissing, StoreError, VolumeUnavailable
from cluster.s3store import S3Store
from cluster.store import ChunkKey

pytestmark = pytest.mark.ceph


@pytest.fixture
async def s3(s3_base: S3Config) -> AsyncIterator[S3Store]:
    async with S3Store(fresh(s3_base)) as store:
        yield store


class TestS3Conformance(StoreConformance):
    @pytest.fixture
    async def store(self, s3: S3Store) -> S3Store:
        return s3

    def corrupt(self, store: S3Store, key: ChunkKey, offset: int) -> None:
        # The object rewritten behind the store's back, its metadata (CRC table) kept.
        rewrite(store, key, flip(offset))

    def reopen(self, store: S3Store) -> S3Store:
        # A new store on the same bucket and prefix (sharing the process's connection).
        return S3Store(store.cfg, conn=store.conn)


async def test_layout_metadata_and_mtime(s3: S3Store) -> None:
    key = ChunkKey(0x1234, 7)
    data = pattern(2 * crc.BLOCK + 3, seed=2)
    await s3.put(key, data, mtime_ns=1_700_000_000_123_456_789)
    raw = raw_client(s3.cfg)
    r = raw.get_object(Bucket=BUCKET, Key=f"{s3.cfg.prefix}34/chunk_0000000000001234_00000007")
    assert r["Body"].read() == data  # raw bytes
    assert "crc" in r["Metadata"]  # the table rides in the object's metadata
    raw.close()
    assert await s3.mtime_ns(key) == 1_700_000_000_123_456_789
    assert await s3.mtime_ns(ChunkKey(1, 1)) is None


async def test_put_signed_with_the_callers_sha256(s3: S3Store) -> None:
    """The hash a put is given signs it (``cluster/s3sign.py``) in place of botocore's own:
    the engine checks the body against it, so a wrong one fails the put and stores nothing,
    and the right one stores the chunk. A put that gives none is signed by botocore."""
    data = pattern(crc.BLOCK + 9, seed=5)
    wrong = ChunkKey(41, 1)
    with pytest.raises(StoreError):
        await s3.put(wrong, data, sha256=hashlib.sha256(b"other bytes").digest())
    assert await s3.head(wrong) is None
    right = ChunkKey(42, 1)
    await s3.put(right, data, sha256=hashlib.sha256(data).digest())
    await s3.put(ChunkKey(43, 1), data)
    assert await s3.get(right) == data == await s3.get(ChunkKey(43, 1))


async def test_large_chunk_table_in_a_sidecar(s3: S3Store) -> None:
    s3.meta_crc_max = 8  # as if the chunk were over 16 MiB: its table goes to <name>.crc
    key = ChunkKey(31, 1)
    data = pattern(6 * MIB + 5, seed=6)  # also over the multipart threshold (5 MiB)
    await s3.put(key, data)
    assert await s3.get(key) == data
    assert await s3.get(key, 5 * MIB - 3, 70_000) == data[5 * MIB - 3 : 5 * MIB - 3 + 70_000]
    assert await stored_keys(s3) == {key}  # the sidecar is not a chunk
    raw = raw_client(s3.cfg)
    raw.delete_object(Bucket=BUCKET, Key=f"{s3.object_key(key)}.crc")
    raw.close()
    with pytest.raises(ChunkCorrupt, match="sidecar"):
        await s3.get(key)
    await s3.delete(key)
    assert await s3.head(key) is None


async def test_missing_crc_table_is_corruption(s3: S3Store) -> None:
    key = ChunkKey(3, 1)
    await s3.put(key, b"abc")
    rewrite(s3, key, lambda d: None, keep_meta=False)
    with pytest.raises(ChunkCorrupt, match="no CRC table"):
        await s3.get(key)


async def test_truncated_object_is_corruption(s3: S3Store) -> None:
    key = ChunkKey(4, 1)
    await s3.put(key, pattern(2 * crc.BLOCK))

    def cut(data: bytearray) -> None:
        del data[crc.BLOCK :]

    rewrite(s3, key, cut)
    with pytest.raises(ChunkCorrupt):
        await s3.get(key)


async def test_missing_bucket_is_unavailable(s3_base: S3Config) -> None:
    async with S3Store(fresh(s3_base, bucket="no-such-bucket")) as store:
        with pytest.raises(VolumeUnavailable):
            await store.get(ChunkKey(1, 1))
        with pytest.raises(VolumeUnavailable):
            await store.put(ChunkKey(1, 1), b"x")
        with pytest.raises(VolumeUnavailable):
            [k async for k in store.list()]
        st = await store.stat()
        assert not st.healthy and st.reason


async def test_unreachable_endpoint_is_unavailable_and_quick(s3_base: S3Config) -> None:
    import cephrgw

    cfg = fresh(s3_base, endpoint=f"http://127.0.0.1:{cephrgw.free_port()}", max_attempts=1,
                connect_timeout=1.0)
    async with S3Store(cfg) as store:
        t0 = time.monotonic()
        for call in (store.get(ChunkKey(1, 1)), store.head(ChunkKey(1, 1)),
                     store.put(ChunkKey(1, 1), b"x"), store.delete(ChunkKey(1, 1))):
            with pytest.raises(VolumeUnavailable) as info:
                await call
            assert info.value.retryable
        assert time.monotonic() - t0 < 5
        assert not (await store.stat()).healthy


async def test_closed_store_refuses(s3_base: S3Config) -> None:
    store = S3Store(fresh(s3_base))
    with pytest.raises(StoreError):
        await store.get(ChunkKey(1, 1))


async def test_round_trip_of_2000_chunks(s3: S3Store) -> None:
    """put/get/range/delete/list of 2,000 small chunks, 32 at a time (ListObjectsV2 pages
    of 1,000). The time is aiobotocore's CPU (~2 ms a request here), not the engine's."""
    rnd = random.Random(7)
    chunks = {ChunkKey(i * 7919 + 1, 1 + i % 3): rnd.randbytes(rnd.randint(1, 80_000))
              for i in range(2000)}
    keys = sorted(chunks)
    gate = asyncio.Semaphore(32)

    async def each(fn: Any, which: list[ChunkKey] = keys) -> None:
        async def one(key: ChunkKey) -> None:
            async with gate:
                await fn(key, chunks[key])
        await asyncio.gather(*(one(k) for k in which))

    async def get(key: ChunkKey, data: bytes) -> None:
        assert await s3.get(key) == data

    async def get_range(key: ChunkKey, data: bytes) -> None:
        off = len(data) // 3
        assert await s3.get(key, off, 70_000) == data[off : off + 70_000]

    async def gone(key: ChunkKey, data: bytes) -> None:
        with pytest.raises(ChunkMissing):
            await s3.get(key)

    t0 = time.monotonic()
    await each(s3.put)
    await each(get)
    await each(get_range, keys[::4])
    assert await stored_keys(s3) == set(chunks)
    await each(lambda k, d: s3.delete(k))
    assert await stored_keys(s3) == set()
    await each(gone, keys[::20])
    assert time.monotonic() - t0 < 60

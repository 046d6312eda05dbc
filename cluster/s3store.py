"""A chunk store on an S3-compatible engine (Ceph RGW, MinIO, SeaweedFS, AWS S3) via aioboto3.

Layout in the bucket::

    <prefix><folder>/chunk_<ID>_<VER>        the chunk's bytes, raw
    <prefix><folder>/chunk_<ID>_<VER>.crc    CRC table, only for chunks over 16 MiB

``folder`` and the object name are ``ChunkKey.folder`` and ``ChunkKey.name``, as on a local
volume. **CRC tables** (CRC32 per 64 KiB block, ``cluster/crc.py``) travel in the object's own
user metadata (``x-amz-meta-crc``, base64): every GET — ranged or not — returns the headers with
the bytes, so verifying a range costs no extra round trip. S3 caps user metadata at 2 KiB, so a
table over 1 KiB (chunks over 16 MiB) goes to a sidecar object ``<name>.crc``, written before
the chunk (the chunk's metadata says ``crc-sidecar``); a get of such a chunk costs one more GET.

**Atomicity.** An S3 PUT (and a multipart upload, on ``CompleteMultipartUpload``) makes an
object visible whole or not at all, so ``get`` never sees a prefix; a chunk whose sidecar is not
there (a crash between the two writes) reads as ``ChunkCorrupt``. **Durability** is the
engine's: the PUT's 200 is the engine's acknowledgement.

**Connections.** One ``S3Connection`` (an aioboto3 session and one S3 client with its
connection pool) is opened once, per process, by entering it (``async with``); stores on the
same endpoint share it (``S3Store(cfg, conn=…)``); a store made without one opens and closes
its own when entered.

**Retries: botocore's, only.** The client runs botocore's ``standard`` retry mode
(``max_attempts``, exponential back-off with jitter, on connection errors, 5xx, throttling).
The store itself never loops: an error that survives them is raised at once as a
``StoreError`` (``VolumeUnavailable``, retryable: the master reads another copy or tries later).

**Errors** are mapped once, in ``map_s3_error``: a missing key → ``ChunkMissing`` (``head``:
None), a missing bucket, connection failures, timeouts, 5xx and throttling →
``VolumeUnavailable``; quota exceeded → ``VolumeFull``; access denied on a write →
``VolumeReadOnly`` (on a read → ``VolumeUnavailable``).

**mtime.** S3 cannot set an object's Last-Modified: it is the upload time. A ``put`` with
``mtime_ns`` keeps it in user metadata (``x-amz-meta-mtime-ns``), read back by ``mtime_ns``.

**Capacity.** S3 reports none: ``stat`` answers the configured ``capacity`` as total and free
(health is a HEAD of the bucket).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import Any

import aioboto3
import aiohttp
import botocore.exceptions
from aiobotocore.config import AioConfig

from cluster import crc
from cluster.config import S3Config
from cluster.errors import (
    ChunkCorrupt,
    ChunkMissing,
    StoreError,
    VolumeFull,
    VolumeReadOnly,
    VolumeUnavailable,
)
from cluster.s3endpoint import cache_endpoints
from cluster.s3sign import PAYLOAD_SHA256, sign_known_payloads
from cluster.store import ChunkKey, StoreStat
from cluster.volume import MARKER, parse_name

#: Largest CRC table kept in the object's metadata (1 KiB: 256 blocks, chunks up to 16 MiB);
#: base64 makes it 1,368 bytes, under S3's 2 KiB of user metadata.
META_CRC_MAX = 1024
META_CRC = "crc"
META_SIDECAR = "crc-sidecar"
META_MTIME = "mtime-ns"

_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_FULL_CODES = frozenset({"QuotaExceeded", "EntityTooLarge", "InsufficientStorage"})
_DENIED_CODES = frozenset({"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId",
                           "SignatureDoesNotMatch", "AccountProblem"})


def map_s3_error(exc: BaseException, what: str, *, write: bool = False) -> StoreError:
    """The one place where botocore/aiohttp errors become store errors."""
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        msg = f"{what}: {code or status} {err.get('Message', '')}".rstrip()
        if code == "NoSuchBucket":
            return VolumeUnavailable(msg)
        if code in _MISSING_CODES or (status == 404 and not code):
            return ChunkMissing(msg)
        if code in _FULL_CODES or status == 507:
            return VolumeFull(msg)
        if code in _DENIED_CODES or status == 403:
            return VolumeReadOnly(msg) if write else VolumeUnavailable(msg)
        if code == "InvalidRange" or status == 416:
            return StoreError(msg)
        return VolumeUnavailable(msg)
    if isinstance(
        exc,
        botocore.exceptions.BotoCoreError | aiohttp.ClientError | asyncio.TimeoutError | OSError,
    ):
        return VolumeUnavailable(f"{what}: {type(exc).__name__}: {exc}")
    return StoreError(f"{what}: {type(exc).__name__}: {exc}")


_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError,
           aiohttp.ClientError, asyncio.TimeoutError, OSError)


class S3Connection:
    """One aioboto3 session and one S3 client (with its connection pool), opened once."""

    def __init__(self, cfg: S3Config) -> None:
        self.cfg = cfg
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            raise VolumeUnavailable(f"{self.cfg.name}: S3 connection is not open")
        return self._client

    async def open(self) -> None:
        if self._client is not None:
            return
        cfg = self.cfg
        session = aioboto3.Session(
            aws_access_key_id=cfg.access_key or None,
            aws_secret_access_key=cfg.secret_key or None,
            region_name=cfg.region or None,
        )
        config = AioConfig(
            retries={"mode": "standard", "max_attempts": cfg.max_attempts},
            connect_timeout=cfg.connect_timeout,
            read_timeout=cfg.read_timeout,
            max_pool_connections=cfg.max_connections,
            s3={"addressing_style": cfg.addressing},
            # Older engines (Ceph 16) reject the aws-chunked trailing checksums botocore
            # sends by default; tandem verifies its own CRC table instead.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        stack = contextlib.AsyncExitStack()
        try:
            self._client = await stack.enter_async_context(
                session.client("s3", endpoint_url=cfg.endpoint or None, config=config)
            )
            cache_endpoints(self._client, session._session.get_component("data_loader"))
            sign_known_payloads(self._client)
        except _ERRORS as exc:
            await stack.aclose()
            raise map_s3_error(exc, f"{cfg.name}: open") from None
        self._stack = stack

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def __aenter__(self) -> S3Connection:
        await self.open()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class S3Store:
    """A ``ChunkStore`` in an S3 bucket under a key prefix."""

    meta_crc_max = META_CRC_MAX

    def __init__(self, cfg: S3Config, conn: S3Connection | None = None) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self._own = conn is None
        self.conn = conn if conn is not None else S3Connection(cfg)

    async def open(self) -> None:
        await self.conn.open()

    async def close(self) -> None:
        if self._own:
            await self.conn.close()

    async def __aenter__(self) -> S3Store:
        await self.open()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def object_key(self, key: ChunkKey) -> str:
        return f"{self.cfg.prefix}{key.folder}/{key.name}"

    # -- identity: the marker object ``<prefix>.tandem-volume``, as on a local volume ----------

    async def identity(self) -> str | None:
        """The uuid in the marker object, or None when there is none."""
        what = f"{self.name}: read {MARKER}"
        try:
            r = await self.conn.client.get_object(
                Bucket=self.cfg.bucket, Key=f"{self.cfg.prefix}{MARKER}"
            )
            async with r["Body"] as body:
                raw: bytes = await body.read()
        except _ERRORS as exc:
            err = map_s3_error(exc, what)
            if isinstance(err, ChunkMissing):
                return None
            raise err from None
        try:
            return str(json.loads(raw)["uuid"])
        except (ValueError, KeyError, TypeError):
            raise VolumeUnavailable(f"{what}: not a volume marker") from None

    async def create(self) -> str:
        """Mark an empty prefix as a new volume; its uuid. A prefix that holds chunks but no
        marker is refused: it is not ours, or it is another volume's."""
        async for key in self.list():
            raise VolumeUnavailable(
                f"{self.name}: holds chunks ({key.name}, …) but no {MARKER} marker; "
                "refusing to use it as a new volume"
            )
        new = str(uuid.uuid4())
        try:
            await self.conn.client.put_object(
                Bucket=self.cfg.bucket, Key=f"{self.cfg.prefix}{MARKER}",
                Body=json.dumps({"uuid": new}).encode(),
            )
        except _ERRORS as exc:
            raise map_s3_error(exc, f"{self.name}: write {MARKER}", write=True) from None
        return new

    # -- put ------------------------------------------------------------------------------

    async def put(
        self, key: ChunkKey, data: bytes, *, mtime_ns: int | None = None,
        sha256: bytes | None = None,
    ) -> None:
        obj = self.object_key(key)
        table = crc.table(data)
        meta: dict[str, str] = {}
        if mtime_ns is not None:
            meta[META_MTIME] = str(mtime_ns)
        s3 = self.conn.client
        bucket = self.cfg.bucket
        try:
            if len(table) > self.meta_crc_max:
                await s3.put_object(Bucket=bucket, Key=f"{obj}.crc", Body=table)
                meta[META_SIDECAR] = "1"
            else:
                meta[META_CRC] = base64.b64encode(table).decode()
            if len(data) > self.cfg.multipart_threshold:
                await self._multipart(obj, data, meta)
            else:
                known = {} if sha256 is None else {PAYLOAD_SHA256: sha256.hex()}
                await s3.put_object(Bucket=bucket, Key=obj, Body=data, Metadata=meta, **known)
        except _ERRORS as exc:
            raise map_s3_error(exc, f"{self.name}: put {key.name}", write=True) from None

    async def _multipart(self, obj: str, data: bytes, meta: dict[str, str]) -> None:
        s3 = self.conn.client
        bucket = self.cfg.bucket
        up = await s3.create_multipart_upload(Bucket=bucket, Key=obj, Metadata=meta)
        upload_id = up["UploadId"]
        view = memoryview(data)
        size = self.cfg.part_size
        parallel = asyncio.Semaphore(4)

        async def part(n: int, start: int) -> dict[str, Any]:
            async with parallel:
                r = await s3.upload_part(
                    Bucket=bucket, Key=obj, UploadId=upload_id, PartNumber=n,
                    Body=bytes(view[start : start + size]),
                )
            return {"PartNumber": n, "ETag": r["ETag"]}

        try:
            parts = await asyncio.gather(
                *(part(n, start) for n, start in enumerate(range(0, len(data), size), 1))
            )
            await s3.complete_multipart_upload(
                Bucket=bucket, Key=obj, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            with contextlib.suppress(*_ERRORS):
                await s3.abort_multipart_upload(Bucket=bucket, Key=obj, UploadId=upload_id)
            raise

    # -- get ------------------------------------------------------------------------------

    async def get(self, key: ChunkKey, offset: int = 0, length: int | None = None) -> bytes:
        what = f"{self.name}: get {key.name}"
        if offset < 0 or (length is not None and length < 0):
            raise StoreError(f"{what}: bad range {offset}+{length}")
        if length == 0:
            size = await self.head(key)
            if size is None:
                raise ChunkMissing(f"{what}: no such chunk")
            if offset > size:
                raise StoreError(f"{what}: range {offset}+0 outside 0..{size}")
            return b""
        first = offset // crc.BLOCK
        start = first * crc.BLOCK
        args: dict[str, Any] = {"Bucket": self.cfg.bucket, "Key": self.object_key(key)}
        if length is not None:
            stop = -(-(offset + length) // crc.BLOCK) * crc.BLOCK
            args["Range"] = f"bytes={start}-{stop - 1}"
        elif start:
            args["Range"] = f"bytes={start}-"
        try:
            r = await self.conn.client.get_object(**args)
            async with r["Body"] as body:
                data: bytes = await body.read()
        except botocore.exceptions.ClientError as exc:
            err = map_s3_error(exc, what)
            if type(err) is StoreError:  # 416: the range starts at or past the end
                size = await self.head(key)
                if size is None:
                    raise ChunkMissing(f"{what}: no such chunk") from None
                if offset == size:
                    return b""
                raise StoreError(f"{what}: range {offset}+{length} outside 0..{size}") from None
            raise err from None
        except _ERRORS as exc:
            raise map_s3_error(exc, what) from None
        size = _total_size(r, len(data))
        if offset > size:
            raise StoreError(f"{what}: range {offset}+{length} outside 0..{size}")
        table = await self._table(key, r.get("Metadata") or {}, what)
        if len(table) != crc.blocks(size) * 4:
            raise ChunkCorrupt(
                f"{what}: {size} bytes but its CRC table covers {len(table) // 4} blocks"
            )
        end = size if length is None else min(size, offset + length)
        want = min(size, -(-end // crc.BLOCK) * crc.BLOCK) - start
        if len(data) != want:
            raise ChunkCorrupt(f"{what}: short read ({len(data)} of {want} bytes)")
        bad = crc.bad_block(table, first, data)
        if bad is not None:
            raise ChunkCorrupt(f"{what}: CRC mismatch in block {bad}")
        return data[offset - start : end - start]

    async def _table(self, key: ChunkKey, meta: dict[str, str], what: str) -> bytes:
        if META_CRC in meta:
            try:
                return base64.b64decode(meta[META_CRC], validate=True)
            except ValueError:
                raise ChunkCorrupt(f"{what}: unreadable CRC table") from None
        if meta.get(META_SIDECAR) != "1":
            raise ChunkCorrupt(f"{what}: no CRC table")
        try:
            r = await self.conn.client.get_object(
                Bucket=self.cfg.bucket, Key=f"{self.object_key(key)}.crc"
            )
            async with r["Body"] as body:
                sidecar: bytes = await body.read()
                return sidecar
        except _ERRORS as exc:
            err = map_s3_error(exc, f"{what}.crc")
            if isinstance(err, ChunkMissing):
                raise ChunkCorrupt(f"{what}: CRC sidecar missing") from None
            raise err from None

    # -- head, mtime, delete, list, stat ----------------------------------------------------

    async def _head(self, key: ChunkKey) -> dict[str, Any] | None:
        try:
            r: dict[str, Any] = await self.conn.client.head_object(
                Bucket=self.cfg.bucket, Key=self.object_key(key)
            )
        except _ERRORS as exc:
            err = map_s3_error(exc, f"{self.name}: head {key.name}")
            if isinstance(err, ChunkMissing):
                return None
            raise err from None
        return r

    async def head(self, key: ChunkKey) -> int | None:
        r = await self._head(key)
        return None if r is None else int(r["ContentLength"])

    async def mtime_ns(self, key: ChunkKey) -> int | None:
        """The ``mtime_ns`` given to ``put`` (kept in metadata), or None."""
        r = await self._head(key)
        value = None if r is None else (r.get("Metadata") or {}).get(META_MTIME)
        return int(value) if value is not None else None

    async def delete(self, key: ChunkKey) -> None:
        """The chunk and its sidecar, if any, in one DeleteObjects request (deleting a key
        that is not there succeeds in S3: idempotent as it is)."""
        obj = self.object_key(key)
        what = f"{self.name}: delete {key.name}"
        try:
            r = await self.conn.client.delete_objects(
                Bucket=self.cfg.bucket,
                Delete={"Objects": [{"Key": obj}, {"Key": f"{obj}.crc"}], "Quiet": True},
            )
        except _ERRORS as exc:
            raise map_s3_error(exc, what, write=True) from None
        for e in r.get("Errors") or ():
            if e.get("Code") in _MISSING_CODES:
                continue
            failed = botocore.exceptions.ClientError({"Error": e}, "DeleteObjects")
            raise map_s3_error(failed, f"{what} ({e.get('Key')})", write=True)

    async def list(self) -> AsyncIterator[ChunkKey]:
        """Every chunk under the prefix (ListObjectsV2, 1,000 keys a page)."""
        args: dict[str, Any] = {"Bucket": self.cfg.bucket, "Prefix": self.cfg.prefix}
        while True:
            try:
                r = await self.conn.client.list_objects_v2(**args)
            except _ERRORS as exc:
                raise map_s3_error(exc, f"{self.name}: list") from None
            for obj in r.get("Contents", ()):
                key = parse_name(str(obj["Key"]).rpartition("/")[2])
                if key is not None:
                    yield key
            token = r.get("NextContinuationToken")
            if not r.get("IsTruncated") or not token:
                return
            args["ContinuationToken"] = token

    async def stat(self) -> StoreStat:
        cap = self.cfg.capacity
        try:
            await self.conn.client.head_bucket(Bucket=self.cfg.bucket)
        except (*_ERRORS, StoreError) as exc:
            reason = str(map_s3_error(exc, f"{self.name}: bucket")) if not isinstance(
                exc, StoreError) else str(exc)
            return StoreStat(cap, cap, False, reason)
        return StoreStat(cap, cap, True)


async def open_stores(
    cfgs: Iterable[S3Config], stack: contextlib.AsyncExitStack
) -> list[tuple[S3Config, S3Store]]:
    """A store per config, sharing one connection per endpoint and credentials (opened
    here, closed by ``stack``)."""
    conns: dict[S3Config, S3Connection] = {}
    out = []
    for cfg in cfgs:
        shared = dataclasses.replace(cfg, bucket="-", prefix="", capacity=1, counts_as=1)
        if shared not in conns:
            conns[shared] = await stack.enter_async_context(S3Connection(cfg))
        out.append((cfg, S3Store(cfg, conns[shared])))
    return out


def _total_size(r: dict[str, Any], got: int) -> int:
    """The object's full size: from Content-Range on a ranged GET, else Content-Length."""
    cr = r.get("ContentRange")
    if cr:
        total = str(cr).rpartition("/")[2]
        if total.isdigit():
            return int(total)
    return int(r.get("ContentLength", got))

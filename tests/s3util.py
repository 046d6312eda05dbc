"""S3 helpers for the tests that run against the session's Ceph RGW (``ceph_rgw`` and
``s3_base`` in ``conftest.py``): a raw boto3 client, a fresh key prefix per test, and a way to
damage an object behind the store's back."""

from __future__ import annotations

import uuid
from typing import Any

import boto3
from botocore.config import Config

from cluster.config import MIB, S3Config
from cluster.store import ChunkKey

BUCKET = "tandem-test"


def raw_client(cfg: S3Config) -> Any:
    """A plain (blocking) boto3 client on the same bucket: what the store must not be."""
    return boto3.client(
        "s3", endpoint_url=cfg.endpoint, region_name=cfg.region,
        aws_access_key_id=cfg.access_key, aws_secret_access_key=cfg.secret_key,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                      request_checksum_calculation="when_required",
                      response_checksum_validation="when_required"),
    )


def fresh(base: S3Config, **kw: Any) -> S3Config:
    """The session's engine and bucket, under a key prefix of its own: an empty store."""
    return S3Config(**{**base.__dict__, "prefix": f"t-{uuid.uuid4().hex[:12]}/", **kw})


def rewrite(store: Any, key: ChunkKey, edit: Any, *, keep_meta: bool = True) -> None:
    raw = raw_client(store.cfg)
    obj = store.object_key(key)
    r = raw.get_object(Bucket=store.cfg.bucket, Key=obj)
    data = bytearray(r["Body"].read())
    edit(data)
    raw.put_object(Bucket=store.cfg.bucket, Key=obj, Body=bytes(data),
                   Metadata=r["Metadata"] if keep_meta else {})
    raw.close()


def flip(offset: int) -> Any:
    def edit(data: bytearray) -> None:
        data[offset] ^= 0xFF
    return edit



def volume_toml(sc: S3Config, **extra: object) -> str:
    """``[[cluster.volumes]]`` of kind ``s3`` for ``sc``, for a tandem.toml (``extra``: more
    keys with numeric values)."""
    lines = ["[[cluster.volumes]]", 'kind = "s3"'] + [
        f'{k} = "{getattr(sc, k)}"'
        for k in ("endpoint", "bucket", "prefix", "region", "access_key", "secret_key")
    ] + [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def base_config(endpoint: str, region: str, access_key: str, secret_key: str) -> S3Config:
    """The session's bucket on the engine (small multipart sizes, so tests reach them)."""
    return S3Config(
        bucket=BUCKET, endpoint=endpoint, region=region,
        access_key=access_key, secret_key=secret_key,
        multipart_threshold=5 * MIB, part_size=5 * MIB, max_attempts=2,
    )

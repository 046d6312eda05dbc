"""S3 benchmark: tandem's cluster put/get with chunks on S3 against raw aioboto3 on the same
engine, files and concurrency.

Run from the repository root (Ceph's packages must be installed: ``./dev test`` does)::

    .venv/bin/python benchmarks/s3_bench.py --quick     # under a minute
    .venv/bin/python benchmarks/s3_bench.py             # full: 2,000 files, 3 repetitions

The engine is a real Ceph RGW started by the benchmark on loopback (``tests/cephrgw.py``: one
mon, one memstore OSD, radosgw), stopped by PID at the end. Workload: N files of 4–200 KiB
(seeded, incompressible; the site's lognormal sizes clipped to that range), concurrency 16.

- **anchor**: one aioboto3 client (the same client settings as tandem's store) doing
  ``put_object`` / ``get_object`` of each file under its own key prefix, 16 at a time;
- **tandem**: an in-process ``Master`` whose only volume is that S3 engine (goal 1: the
  engine does the replication), ``put`` / ``cat`` of each file by path, 16 at a time — a put
  also hashes the file (SHA-256, its ETag), computes the chunk's CRC table and commits the
  metadata durably (SQLite WAL, fsynced, group commit); a get looks the file up and verifies
  the CRCs.

Each repetition runs anchor then tandem on fresh prefixes; figures are medians over the
repetitions. The LAST line is one JSON object: ``put_ratio`` and ``get_ratio`` (tandem files/s
÷ anchor files/s; targets ≥ 0.9 each) and the raw rates.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO, REPO / "benchmarks", REPO / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from workload import KIB, SIZE_MEDIAN, SIZE_SIGMA  # noqa: E402

TARGETS = {"put_ratio": 0.9, "get_ratio": 0.9}
SIZE_MIN, SIZE_MAX = 4 * KIB, 200 * KIB
CONCURRENCY = 16


def say(*a: Any) -> None:
    print(*a, flush=True)


def quiet_logs() -> None:
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def files(n: int, seed: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        size = int(rng.lognormvariate(math.log(SIZE_MEDIAN), SIZE_SIGMA))
        size = max(SIZE_MIN, min(SIZE_MAX, size))
        out.append((f"/img/d{i % 50:02d}/f{i:05d}.jpg", rng.randbytes(size)))
    return out


async def timed(items: list[Any], fn: Callable[[Any], Awaitable[Any]]) -> float:
    """Files per second of ``fn`` over ``items``, ``CONCURRENCY`` at a time."""
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(item: Any) -> None:
        async with sem:
            await fn(item)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in items))
    return len(items) / (time.perf_counter() - t0)


async def anchor(sc: Any, work: list[tuple[str, bytes]]) -> tuple[float, float]:
    from cluster.s3store import S3Connection

    prefix = f"raw-{uuid.uuid4().hex[:8]}/"
    async with S3Connection(sc) as conn:
        s3 = conn.client

        async def put(item: tuple[str, bytes]) -> None:
            await s3.put_object(Bucket=sc.bucket, Key=prefix + item[0][1:], Body=item[1])

        async def get(item: tuple[str, bytes]) -> None:
            r = await s3.get_object(Bucket=sc.bucket, Key=prefix + item[0][1:])
            async with r["Body"] as body:
                data = await body.read()
            assert len(data) == len(item[1])

        return await timed(work, put), await timed(work, get)


async def tandem(cfg: Any, work: list[tuple[str, bytes]]) -> tuple[float, float]:
    from cluster.master import Master

    async with Master(cfg, background=False) as m:

        async def put(item: tuple[str, bytes]) -> None:
            await m.put(item[0], item[1])

        async def get(item: tuple[str, bytes]) -> None:
            data = await m.cat(item[0])
            assert len(data) == len(item[1])

        rates = await timed(work, put), await timed(work, get)
        status = await m.status()
        assert status["files"] == len(work) and status["under_goal"] == 0, status
        return rates


def throughput(args: argparse.Namespace, engine: Any, work_dir: Path) -> dict[str, Any]:
    from cluster.config import S3Config
    from origin import config as origin_config

    base = S3Config(
        bucket="bench", endpoint=engine.endpoint, region=engine.region,
        access_key=engine.access_key, secret_key=engine.secret_key,
    )
    import boto3
    from botocore.config import Config

    boto3.client(
        "s3", endpoint_url=base.endpoint, region_name=base.region,
        aws_access_key_id=base.access_key, aws_secret_access_key=base.secret_key,
        config=Config(s3={"addressing_style": "path"},
                      request_checksum_calculation="when_required"),
    ).create_bucket(Bucket="bench")
    work = files(args.files, args.seed)
    mib = sum(len(d) for _, d in work) / (1 << 20)
    say(f"{len(work)} files, {mib:.1f} MiB, concurrency {CONCURRENCY}")
    rows: dict[str, list[float]] = {k: [] for k in ("raw_put", "raw_get", "put", "get")}
    for rep in range(args.reps):
        cfg = dataclasses.replace(
            origin_config.load(None).cluster,
            meta_dir=work_dir / f"meta{rep}", volumes=(), default_goal=1,
            s3_volumes=(dataclasses.replace(base, prefix=f"tandem-{rep}-{uuid.uuid4().hex[:6]}/"),),
        )
        raw_put, raw_get = asyncio.run(anchor(base, work))
        put, get = asyncio.run(tandem(cfg, work))
        for k, v in (("raw_put", raw_put), ("raw_get", raw_get), ("put", put), ("get", get)):
            rows[k].append(v)
        say(f"rep {rep + 1}: put {put:7.0f} files/s vs raw {raw_put:7.0f} "
            f"({put / raw_put:.2f}) | get {get:7.0f} vs raw {raw_get:7.0f} ({get / raw_get:.2f})")
    med = {k: statistics.median(v) for k, v in rows.items()}
    out = {
        "files": len(work),
        "concurrency": CONCURRENCY,
        "raw_put_files_s": round(med["raw_put"]),
        "put_files_s": round(med["put"]),
        "raw_get_files_s": round(med["raw_get"]),
        "get_files_s": round(med["get"]),
        "put_ratio": round(statistics.median(p / r for p, r in zip(rows["put"], rows["raw_put"],
                                                                      strict=True)), 3),
        "get_ratio": round(statistics.median(g / r for g, r in zip(rows["get"], rows["raw_get"],
                                                                      strict=True)), 3),
    }
    for k, t in TARGETS.items():
        say(f"{k}: {out[k]} (target >= {t}: {'met' if out[k] >= t else 'MISSED'})")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small run, under a minute")
    p.add_argument("--files", type=int, help="files (full 2000, quick 500)")
    p.add_argument("--reps", type=int, help="repetitions (full 3, quick 1)")
    p.add_argument("--seed", type=int, default=20261121)
    args = p.parse_args(argv)
    args.files = args.files or (500 if args.quick else 2000)
    args.reps = args.reps or (1 if args.quick else 3)
    quiet_logs()
    import cephrgw

    missing = cephrgw.missing()
    if missing:
        say(f"Ceph is not installed ({', '.join(missing)}): apt-get install {cephrgw.PACKAGES}")
        return 2
    (REPO / "bench-out").mkdir(exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="s3-bench-", dir=REPO / "bench-out"))
    say(f"s3_bench ({'quick' if args.quick else 'full'}): {os.cpu_count()} CPUs, "
        f"work dir {work_dir}")
    t0 = time.perf_counter()
    engine = cephrgw.CephRgw.start()
    say(f"Ceph RGW at {engine.endpoint}, started in {engine.started_in:.1f} s")
    result: dict[str, Any] = {"mode": "quick" if args.quick else "full"}
    try:
        result.update(throughput(args, engine, work_dir))
    finally:
        engine.stop()
        shutil.rmtree(work_dir, ignore_errors=True)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

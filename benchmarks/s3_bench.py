"""S3 benchmark: tandem's cluster put/get with chunks on S3 against raw aioboto3 on the same
engine, files and concurrency.

Run from the repository root (Ceph's packages must be installed: ``./dev test`` does)::

    .venv/bin/python benchmarks/s3_bench.py --quick     # under a minute
    .venv/bin/python benchmarks/s3_bench.py             # full: 2,000 files, 5 repetitions

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

Each repetition runs both on fresh prefixes, taking turns 200 files at a time (the order
flips every turn), so that the engine's and the machine's drift over a repetition hits both
alike; figures are medians over the repetitions (the ratios: medians of each repetition's
ratio). Five in a full run: the engine shares the two cores with the client.

**Remote origin** (``remote_origin_ratio``): a master process (``tandem cluster serve``) with
one local volume and the S3 volume (goal 2: a local and an S3 copy of each file) holds the
files under ``/images/``. Two origin processes (``tandem origin``, 2 workers each) serve them:
the **local** origin (the master's host: metadata from SQLite, bytes from the local volume)
and a **remote** one configured as a second host (``origin.master``: metadata over the
master's HTTP API, bytes from S3 through its chunk cache). Both are hit directly by wrk (16
connections, random URLs of the data set), so both answer from Python — the origin's Python
path, streaming the bytes — and the ratio is what being remote costs. Before measuring, a
sample of URLs must give identical bytes, ETag and Last-Modified from both; the remote cache
is warmed by fetching every URL once, then a warm-up run. Runs alternate local/remote;
``remote_origin_ratio`` is the median remote req/s ÷ the median local req/s (target ≥ 0.8).

The LAST line is one JSON object: ``put_ratio``, ``get_ratio`` (tandem files/s ÷ anchor
files/s; targets ≥ 0.9 each), ``remote_origin_ratio``, the raw rates, and
``machine_cpu_ms_per_file``: each side's CPU per file over its turns, the whole machine's
(``/proc/stat``: the engine, the client and the kernel), which explains the put ratio — the
machine runs near its ceiling on both sides, so the ratio follows the CPU each file costs.
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

from workload import KIB, SIZE_MEDIAN, SIZE_SIGMA, machine_ticks  # noqa: E402

TARGETS = {"put_ratio": 0.9, "get_ratio": 0.9, "remote_origin_ratio": 0.8}
SIZE_MIN, SIZE_MAX = 4 * KIB, 200 * KIB
CONCURRENCY = 16
BLOCK = 200  # files per turn: the anchor and tandem take turns within a repetition


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
    """Seconds ``fn`` takes over ``items``, ``CONCURRENCY`` at a time."""
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(item: Any) -> None:
        async with sem:
            await fn(item)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in items))
    return time.perf_counter() - t0


async def one_rep(sc: Any, cfg: Any, work: list[tuple[str, bytes]]) -> dict[str, float]:
    """Files/s of the anchor's and tandem's puts, then of their gets, taken ``BLOCK`` files
    at a time in turn (the order flips every block): drift of the engine or of the machine
    over the repetition hits both sides alike."""
    from cluster.master import Master
    from cluster.s3store import S3Connection

    prefix = f"raw-{uuid.uuid4().hex[:8]}/"
    async with S3Connection(sc) as conn, Master(cfg, background=False) as m:
        s3 = conn.client

        async def raw_put(item: tuple[str, bytes]) -> None:
            await s3.put_object(Bucket=sc.bucket, Key=prefix + item[0][1:], Body=item[1])

        async def raw_get(item: tuple[str, bytes]) -> None:
            r = await s3.get_object(Bucket=sc.bucket, Key=prefix + item[0][1:])
            async with r["Body"] as body:
                data = await body.read()
            assert len(data) == len(item[1])

        async def put(item: tuple[str, bytes]) -> None:
            await m.put(item[0], item[1])

        async def get(item: tuple[str, bytes]) -> None:
            data = await m.cat(item[0])
            assert len(data) == len(item[1])

        fns = {"raw_put": raw_put, "put": put, "raw_get": raw_get, "get": get}
        spent = dict.fromkeys(fns, 0.0)
        busy = dict.fromkeys(fns, 0)  # the whole machine's busy clock ticks (engine included)
        blocks = [work[i : i + BLOCK] for i in range(0, len(work), BLOCK)]
        for pair in (("raw_put", "put"), ("raw_get", "get")):
            for n, block in enumerate(blocks):
                for name in pair if n % 2 == 0 else reversed(pair):
                    t0 = machine_ticks()["tasks"]
                    spent[name] += await timed(block, fns[name])
                    busy[name] += machine_ticks()["tasks"] - t0
        status = await m.status()
        assert status["files"] == len(work) and status["under_goal"] == 0, status
    rates = {name: len(work) / t for name, t in spent.items()}
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
    cpu = {f"{name}_cpu": busy[name] * tick_ms / len(work) for name in fns}
    return rates | cpu


def bucket(engine: Any) -> Any:
    """The benchmark's bucket on the engine (created here); its ``S3Config``."""
    import boto3
    from botocore.config import Config

    from cluster.config import S3Config

    base = S3Config(
        bucket="bench", endpoint=engine.endpoint, region=engine.region,
        access_key=engine.access_key, secret_key=engine.secret_key,
    )
    boto3.client(
        "s3", endpoint_url=base.endpoint, region_name=base.region,
        aws_access_key_id=base.access_key, aws_secret_access_key=base.secret_key,
        config=Config(s3={"addressing_style": "path"},
                      request_checksum_calculation="when_required"),
    ).create_bucket(Bucket="bench")
    return base


def throughput(args: argparse.Namespace, base: Any, work_dir: Path) -> dict[str, Any]:
    from origin import config as origin_config

    work = files(args.files, args.seed)
    mib = sum(len(d) for _, d in work) / (1 << 20)
    say(f"{len(work)} files, {mib:.1f} MiB, concurrency {CONCURRENCY}")
    rows: dict[str, list[float]] = {}
    for rep in range(args.reps):
        cfg = dataclasses.replace(
            origin_config.load(None).cluster,
            meta_dir=work_dir / f"meta{rep}", volumes=(), default_goal=1,
            s3_volumes=(dataclasses.replace(base, prefix=f"tandem-{rep}-{uuid.uuid4().hex[:6]}/"),),
        )
        rates = asyncio.run(one_rep(base, cfg, work))
        raw_put, raw_get, put, get = (rates[k] for k in ("raw_put", "raw_get", "put", "get"))
        for k, v in rates.items():
            rows.setdefault(k, []).append(v)
        say(f"rep {rep + 1}: put {put:7.0f} files/s vs raw {raw_put:7.0f} "
            f"({put / raw_put:.2f}) | get {get:7.0f} vs raw {raw_get:7.0f} ({get / raw_get:.2f})"
            f" | machine CPU ms/file: put {rates['put_cpu']:.2f} vs raw "
            f"{rates['raw_put_cpu']:.2f}, get {rates['get_cpu']:.2f} vs raw "
            f"{rates['raw_get_cpu']:.2f}")
    med = {k: statistics.median(v) for k, v in rows.items()}
    out = {
        "files": len(work),
        "concurrency": CONCURRENCY,
        "raw_put_files_s": round(med["raw_put"]),
        "put_files_s": round(med["put"]),
        "raw_get_files_s": round(med["raw_get"]),
        "get_files_s": round(med["get"]),
        "machine_cpu_ms_per_file": {
            k: round(med[f"{k}_cpu"], 2) for k in ("raw_put", "put", "raw_get", "get")
        },
        "put_ratio": round(statistics.median(p / r for p, r in zip(rows["put"], rows["raw_put"],
                                                                      strict=True)), 3),
        "get_ratio": round(statistics.median(g / r for g, r in zip(rows["get"], rows["raw_get"],
                                                                      strict=True)), 3),
    }
    return out


def remote_origin(args: argparse.Namespace, base: Any, work_dir: Path) -> dict[str, Any]:
    import origin_bench as ob
    from s3util import volume_toml as s3_toml

    from cluster.remote import RemoteCluster

    sc = dataclasses.replace(base, prefix=f"origin-{uuid.uuid4().hex[:6]}/")
    mport, lport, rport = ob.free_port(), ob.free_port(), ob.free_port()
    local_conf, remote_conf = work_dir / "local.toml", work_dir / "remote.toml"
    local_conf.write_text(
        f'data_dir = "{work_dir}/local"\n[log]\nlevel = "warning"\n[cluster]\n'
        f'listen = "127.0.0.1:{mport}"\ndefault_goal = 2\nscrub_rate = 0\n'
        f'[[cluster.volumes]]\npath = "{work_dir}/local/vol0"\n{s3_toml(sc)}'
        f'[origin]\nlisten = "127.0.0.1:{lport}"\nworkers = 2\n'
    )
    remote_conf.write_text(
        f'data_dir = "{work_dir}/remote"\n[log]\nlevel = "warning"\n[cluster]\n{s3_toml(sc)}'
        f'[origin]\nlisten = "127.0.0.1:{rport}"\nworkers = 2\n'
        f'master = "http://127.0.0.1:{mport}"\ncache_bytes = 1073741824\n'
    )
    procs: list[Any] = []
    try:
        master, mlog = ob.start_tandem(local_conf, work_dir, "master", "cluster", "serve")
        procs.append(master)
        ob.wait_port(mport, master, "master", mlog)
        work = [(f"/images{p}", d) for p, d in files(args.files, args.seed + 1)]

        async def load() -> None:
            async with RemoteCluster(f"http://127.0.0.1:{mport}") as c:
                await timed(work, lambda item: c.put(item[0], item[1]))

        asyncio.run(load())
        local, llog = ob.start_tandem(local_conf, work_dir, "local-origin", "origin")
        remote, rlog = ob.start_tandem(remote_conf, work_dir, "remote-origin", "origin")
        procs += [local, remote]
        for port, proc, log in ((lport, local, llog), (rport, remote, rlog)):
            ob.wait_port(port, proc, log.stem, log)
            deadline = time.monotonic() + ob.START_TIMEOUT
            while ob.fetch(port, "/readyz")[0] != 200:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise ob.BenchError(f"{log.stem} is not ready: {ob.tail(log)}")
                time.sleep(0.1)
        urls = [p for p, _ in work]
        rng = random.Random(args.seed)
        for url in rng.sample(urls, min(50, len(urls))):
            a, b = ob.fetch(lport, url), ob.fetch(rport, url)
            same = a[0] == b[0] == 200 and a[2] == b[2] and all(
                a[1].get(h) == b[1].get(h) for h in ("etag", "last-modified", "content-length"))
            if not same:
                raise ob.BenchError(f"{url}: the remote origin's answer differs: {a[1]} {b[1]}")
        t0 = time.perf_counter()
        for url in urls:  # fill the remote cache (each file's bytes come from S3 once)
            if ob.fetch(rport, url)[0] != 200:
                raise ob.BenchError(f"{url}: the remote origin did not answer 200")
        say(f"remote origin: {len(urls)} URLs fetched cold in {time.perf_counter() - t0:.1f} s")
        url_file = work_dir / "urls.txt"
        url_file.write_text("\n".join(urls) + "\n")
        script = work_dir / "random_urls.lua"
        script.write_text(ob.WRK_SCRIPT % {"urls": json.dumps(str(url_file))})
        ports = {"local": lport, "remote": rport}
        for port in ports.values():  # warm-up: every worker's lookups and the caches
            ob.wrk(f"http://127.0.0.1:{port}", 16, args.warmup, 2, script, 0)
        rps: dict[str, list[float]] = {"local": [], "remote": []}
        for rep in range(args.origin_runs):
            order = list(ports) if rep % 2 == 0 else list(reversed(ports))
            for name in order:
                run = ob.wrk(f"http://127.0.0.1:{ports[name]}", 16, args.duration, 2, script,
                             rep + 1)
                rps[name].append(run.rps)
            say(f"run {rep + 1}: local {rps['local'][-1]:7.0f} req/s, remote "
                f"{rps['remote'][-1]:7.0f} req/s")
    finally:
        for p in reversed(procs):
            ob.stop_tandem(p)
    med = {k: statistics.median(v) for k, v in rps.items()}
    return {
        "local_origin_rps": round(med["local"]),
        "remote_origin_rps": round(med["remote"]),
        "remote_origin_ratio": round(med["remote"] / med["local"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small run, under a minute")
    p.add_argument("--files", type=int, help="files (full 2000, quick 500)")
    p.add_argument("--reps", type=int, help="put/get repetitions (full 5, quick 1)")
    p.add_argument("--origin-runs", type=int, help="wrk runs per origin (full 6, quick 2)")
    p.add_argument("--seed", type=int, default=20261121)
    p.add_argument("--duration", type=int, help="seconds per wrk run (full 10, quick 4)")
    p.add_argument("--warmup", type=int, help="seconds of wrk warm-up (full 5, quick 2)")
    p.add_argument("--only", choices=("throughput", "origin"), help="one part only")
    args = p.parse_args(argv)
    args.duration = args.duration or (4 if args.quick else 10)
    args.warmup = args.warmup or (2 if args.quick else 5)
    args.files = args.files or (500 if args.quick else 2000)
    args.reps = args.reps or (1 if args.quick else 5)
    args.origin_runs = args.origin_runs or (2 if args.quick else 6)
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
        base = bucket(engine)
        if args.only in (None, "throughput"):
            result.update(throughput(args, base, work_dir))
        if args.only in (None, "origin"):
            result.update(remote_origin(args, base, work_dir))
        for k, t in TARGETS.items():
            if k in result:
                say(f"{k}: {result[k]} (target >= {t}: {'met' if result[k] >= t else 'MISSED'})")
    finally:
        engine.stop()
        shutil.rmtree(work_dir, ignore_errors=True)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

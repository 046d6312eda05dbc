"""Cluster benchmark: tandem's put/get throughput against a plain directory, and the size of
its metadata (on disk and in the master's memory) with a million files.

Run from the repository root::

    .venv/bin/python benchmarks/cluster_bench.py --quick     # under a minute
    .venv/bin/python benchmarks/cluster_bench.py             # full: 5,000 files, 1M meta rows

Human-readable lines go to stdout as it runs; the LAST line is one JSON object with the
figures (ratios are tandem ÷ plain directory, measured in the same run, medians of the reps).

Workload: N files with seeded random (incompressible) content; sizes lognormal with a median of
12 KiB and sigma 1.0, clipped to 2–300 KiB (mean ≈ 20 KiB); paths like
``/static/s03/d042/0001234-1a2b3c4d.jpg`` spread over 1,000 directories. Both sides use the
same number of concurrent writers/readers: tandem through ``asyncio.gather`` under a
semaphore, the plain directory through a thread pool. The plain anchor writes each file with
open → write → fsync → close (no rename, no directory fsync); tandem's puts are group
committed: a batch's chunk copies are written and made durable by one ``syncfs`` per
filesystem, then its SQLite WAL commit (``synchronous=FULL``); the master's view process then
links the files (its CPU, and the time the master takes to stop once the last put returned —
the view catching up — are printed per run).

Metadata size: rows are inserted straight into SQLite (the rows a real put writes: one inode
row, one chunk row with a goal-2 copies mask, one ``put`` changelog entry per file, plus the
directories and their ``mkdir`` entries), in shuffled order so the B-trees fill as they would
from puts arriving in no particular order. Then a fresh subprocess opens a ``Master`` on that
metadata, runs a few ``stat``/``ls`` calls, some puts and reads and ``status()``, and reports
its peak RSS (VmHWM); then it waits for its view process to link every file (no clean-stop
record: a rebuild) and reports that process's peak RSS too.

Nothing is deleted before the end of the run: on ext4 (notably without a journal, where new
inodes skip recently deleted ones one by one), creating files right after deleting thousands
is several times slower, which would penalise whichever side happened to run next.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import logging
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO, REPO / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from workload import KIB, MIB, SIZE_MAX, SIZE_MEDIAN, SIZE_MIN, SIZE_SIGMA, file_size  # noqa: E402

from cluster import schema  # noqa: E402
from cluster.config import ClusterConfig, VolumeConfig  # noqa: E402
from cluster.master import Master  # noqa: E402
from cluster.meta import Kind, Meta, pack_ids  # noqa: E402
from cluster.view import CLEAN  # noqa: E402
from origin import config as origin_config  # noqa: E402

TOP_DIRS, SUB_DIRS = 10, 100  # 10 × 100 = 1,000 leaf directories
EXTS = (".jpg", ".png", ".js", ".css", ".webp", ".svg", ".woff2", ".json")
TARGETS = {"put_goal1_ratio": 0.8, "put_goal2_ratio": 0.5, "get_ratio": 0.8}
META_TARGET_BYTES = 400
RSS_TARGET_MIB = 300


def quiet_logs() -> None:
    """Cluster log lines (warnings and up only) go to stderr: stdout is the report."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def say(msg: str) -> None:
    print(msg, flush=True)


# -- the workload -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class File:
    path: str  # cluster path, also the path under the plain directory
    data: bytes


def file_name(rng: random.Random, i: int) -> tuple[str, str]:
    """(directory, name) of the i-th file: ``static/s03/d042``, ``0001234-1a2b3c4d.jpg``."""
    d = rng.randrange(TOP_DIRS * SUB_DIRS)
    folder = f"static/s{d // SUB_DIRS:02d}/d{d % SUB_DIRS:03d}"
    name = f"{i:07d}-{rng.getrandbits(32):08x}{rng.choice(EXTS)}"
    return folder, name


def make_files(n: int, seed: int) -> list[File]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        folder, name = file_name(rng, i)
        out.append(File(f"{folder}/{name}", rng.randbytes(file_size(rng))))
    return out


# -- tandem and the plain anchor --------------------------------------------------------------


def cluster_config(base: ClusterConfig, root: Path, goal: int, volumes: int) -> ClusterConfig:
    return dataclasses.replace(
        base,
        meta_dir=root / "meta",
        volumes=tuple(VolumeConfig(root / f"vol{i}") for i in range(volumes)),
        default_goal=goal,
    )


async def tandem_put(
    cfg: ClusterConfig, files: Sequence[File], concurrency: int
) -> tuple[float, float]:
    """Seconds to put every file (the Master is opened before the clock starts), and seconds
    the master then took to stop: mostly its view process catching up (linking what it had
    not linked yet), the work a put leaves behind."""
    m = Master(cfg, background=False)
    async with m:
        sem = asyncio.Semaphore(concurrency)

        async def one(f: File) -> None:
            async with sem:
                await m.put(f.path, f.data, mode=0o644, mtime_ns=1_700_000_000_000_000_000)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(f) for f in files))
        t1 = time.perf_counter()
    return t1 - t0, time.perf_counter() - t1


async def tandem_get(
    cfg: ClusterConfig, files: Sequence[File], concurrency: int, reps: int
) -> list[float]:
    """One verified warm-up pass, then ``reps`` timed passes reading every file with cat."""
    async with Master(cfg, background=False) as m:
        sem = asyncio.Semaphore(concurrency)

        async def one(f: File, check: bool) -> None:
            async with sem:
                data = await m.cat(f.path)
            if check and data != f.data:
                raise AssertionError(f"tandem returned wrong bytes for {f.path}")

        await asyncio.gather(*(one(f, True) for f in files))
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            await asyncio.gather(*(one(f, False) for f in files))
            times.append(time.perf_counter() - t0)
        return times


def plain_put(root: Path, files: Sequence[File], concurrency: int, copies: int = 1) -> float:
    """Seconds to write every file durably (write + fsync) to a plain directory tree; with
    ``copies`` > 1 each file is written that many times (``<path>``, ``<path>.2``, …)."""

    def one(f: File) -> None:
        path = root / f.path
        path.parent.mkdir(parents=True, exist_ok=True)
        for n in range(1, copies + 1):
            name = path if n == 1 else path.with_name(f"{path.name}.{n}")
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(f.data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)

    with ThreadPoolExecutor(concurrency) as pool:
        t0 = time.perf_counter()
        for _ in pool.map(one, files):
            pass
        return time.perf_counter() - t0


def plain_get(root: Path, files: Sequence[File], concurrency: int, reps: int) -> list[float]:
    def one(f: File) -> bytes:
        with open(root / f.path, "rb") as fh:
            return fh.read()

    with ThreadPoolExecutor(concurrency) as pool:
        for f, data in zip(files, pool.map(one, files), strict=True):
            if data != f.data:
                raise AssertionError(f"plain directory returned wrong bytes for {f.path}")
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in pool.map(one, files):
                pass
            times.append(time.perf_counter() - t0)
        return times


def fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def cpu_seconds() -> float:
    """User + system CPU of this process (all threads) and of its children that ended (the
    master's view process) so far."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def median_rate(n: int, seconds: list[float]) -> float:
    return n / statistics.median(seconds)


def show_ratio(label: str, ratio: float, tandem: float, plain: float, target: float) -> str:
    verdict = "ok" if ratio >= target else "MISSED"
    return (
        f"  {label:<12} ratio {ratio:5.2f}  (tandem {tandem:8.0f} files/s, plain {plain:8.0f}"
        f" files/s; target ≥ {target}: {verdict})"
    )


def throughput(args: argparse.Namespace, base: ClusterConfig, work: Path) -> dict[str, Any]:
    files = make_files(args.files, args.seed)
    sizes = sorted(len(f.data) for f in files)
    total = sum(sizes)
    say(
        f"workload: {len(files)} files, {total / MIB:.1f} MiB; sizes lognormal(median "
        f"{SIZE_MEDIAN // KIB} KiB, sigma {SIZE_SIGMA}) clipped to {SIZE_MIN // KIB}–"
        f"{SIZE_MAX // KIB} KiB: median {sizes[len(sizes) // 2] / KIB:.1f} KiB, mean "
        f"{total / len(sizes) / KIB:.1f} KiB, max {sizes[-1] / KIB:.0f} KiB; "
        f"{len({f.path.rsplit('/', 1)[0] for f in files})} directories"
    )
    say(
        f"concurrency: {args.concurrency} writers/readers on both sides (tandem: Master.put/cat "
        f"under asyncio.Semaphore({args.concurrency}); plain: ThreadPoolExecutor"
        f"({args.concurrency}) doing open → write → fsync → close, reads open → read); "
        f"{args.volumes} volumes; {args.reps} rep(s), medians quoted"
    )
    say(
        "  (nothing is deleted until the end: on ext4, creating files soon after deleting many"
        " is slower, which would penalise whichever side runs next; the order rotates per rep)"
    )
    times: dict[str, list[float]] = {"plain": [], "goal1": [], "goal2": []}
    cpu: dict[str, list[float]] = {"plain": [], "goal1": [], "goal2": []}
    order = ["plain", "goal1", "goal2"]
    for rep in range(1, args.reps + 1):
        for side in order[rep - 1 :] + order[: rep - 1]:
            c0 = cpu_seconds()
            if side == "plain":
                t = plain_put(fresh(work / f"plain-{rep}"), files, args.concurrency)
                label, extra = "plain put        ", ""
            else:
                goal = int(side[-1])
                cfg = cluster_config(base, fresh(work / f"{side}-{rep}"), goal, args.volumes)
                t, stop = asyncio.run(tandem_put(cfg, files, args.concurrency))
                label = f"tandem put goal {goal}"
                extra = f"; stopped {stop:.2f} s after the last put, its view caught up"
            times[side].append(t)
            cpu[side].append((cpu_seconds() - c0) / len(files) * 1e6)
            say(
                f"rep {rep}: {label} {len(files) / t:8.0f} files/s ({t:.2f} s; CPU "
                f"{cpu[side][-1]:.0f} µs/file{extra})"
            )

    # Reads: the last rep's goal-2 cluster and plain directory, warm (one verified pass first).
    cfg = cluster_config(base, work / f"goal2-{args.reps}", 2, args.volumes)
    t_tandem = asyncio.run(tandem_get(cfg, files, args.concurrency, args.reps))
    t_plain = plain_get(work / f"plain-{args.reps}", files, args.concurrency, args.reps)
    for i, (a, b) in enumerate(zip(t_tandem, t_plain, strict=True), 1):
        say(
            f"rep {i}: get warm: tandem {len(files) / a:8.0f} files/s, "
            f"plain {len(files) / b:8.0f} files/s"
        )

    n = len(files)
    plain = median_rate(n, times["plain"])
    g1 = median_rate(n, times["goal1"])
    g2 = median_rate(n, times["goal2"])
    get_t = median_rate(n, t_tandem)
    get_p = median_rate(n, t_plain)
    out = {
        "put_goal1_ratio": round(g1 / plain, 3),
        "put_goal2_ratio": round(g2 / plain, 3),
        "get_ratio": round(get_t / get_p, 3),
        "put_goal1_files_per_s": round(g1, 1),
        "put_goal2_files_per_s": round(g2, 1),
        "plain_put_files_per_s": round(plain, 1),
        "get_files_per_s": round(get_t, 1),
        "plain_get_files_per_s": round(get_p, 1),
        "put_cpu_us_per_file": {k: round(statistics.median(v)) for k, v in cpu.items()},
        "files": n,
        "concurrency": args.concurrency,
        "reps": args.reps,
    }
    say("throughput (medians):")
    say(show_ratio("put goal 1", out["put_goal1_ratio"], g1, plain, TARGETS["put_goal1_ratio"]))
    say(show_ratio("put goal 2", out["put_goal2_ratio"], g2, plain, TARGETS["put_goal2_ratio"]))
    say(show_ratio("get (warm)", out["get_ratio"], get_t, get_p, TARGETS["get_ratio"]))
    return out


# -- metadata size and master memory ----------------------------------------------------------


def synth_rows(
    n: int, seed: int, first_inode: int, volumes: int
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]], int]:
    """(directory inode rows, their changelog rows, per-file work, next inode id) — the rows
    ``Meta._mkdirs`` and ``Meta.commit_put`` write. Files come back shuffled."""
    rng = random.Random(seed)
    now_ns = time.time_ns()
    ts = now_ns // 1_000_000
    ids = itertools.count(first_inode)
    dir_rows: list[tuple[Any, ...]] = []
    dir_log: list[tuple[Any, ...]] = []
    static = next(ids)
    dir_rows.append((1, b"static", static, Kind.DIR, 0o755, now_ns))
    dir_log.append((ts, "mkdir", b"/static", None, None, None))
    leaves: list[tuple[int, bytes]] = []
    for s in range(TOP_DIRS):
        sid = next(ids)
        spath = f"/static/s{s:02d}".encode()
        dir_rows.append((static, f"s{s:02d}".encode(), sid, Kind.DIR, 0o755, now_ns))
        dir_log.append((ts, "mkdir", spath, None, None, None))
        for d in range(SUB_DIRS):
            did = next(ids)
            dir_rows.append((sid, f"d{d:03d}".encode(), did, Kind.DIR, 0o755, now_ns))
            dpath = spath + f"/d{d:03d}".encode()
            dir_log.append((ts, "mkdir", dpath, None, None, None))
            leaves.append((did, dpath))
    files: list[tuple[Any, ...]] = []
    pairs = [(a, b) for a in range(volumes) for b in range(volumes) if a < b] or [(0, 0)]
    for i in range(n):
        did, dpath = leaves[rng.randrange(len(leaves))]
        name = f"{i:07d}-{rng.getrandbits(32):08x}{rng.choice(EXTS)}".encode()
        a, b = pairs[i % len(pairs)]
        files.append((did, dpath, name, file_size(rng), rng.randbytes(32), (1 << a) | (1 << b)))
    rng.shuffle(files)
    return dir_rows, dir_log, files, next(ids)


def build_meta(meta_dir: Path, n: int, seed: int, volumes: int, batch: int = 50_000) -> None:
    conn = schema.connect(meta_dir / "meta.db")
    schema.init(conn)
    meta = Meta(conn, 2, 86_400)
    (first_inode,) = conn.execute("SELECT value FROM counter WHERE name = 'inode'").fetchone()
    (first_chunk,) = conn.execute("SELECT value FROM counter WHERE name = 'chunk'").fetchone()
    dir_rows, dir_log, files, next_inode = synth_rows(n, seed, first_inode, volumes)
    log_sql = "INSERT INTO changelog (ts, op, path, dest, arg, hash) VALUES (?, ?, ?, ?, ?, ?)"
    with meta.transaction():
        conn.executemany(
            "INSERT INTO inode (parent, name, id, kind, mode, mtime) VALUES (?,?,?,?,?,?)",
            dir_rows,
        )
        conn.executemany(log_sql, dir_log)
    inode, chunk = next_inode, first_chunk
    mtime = time.time_ns()
    for lo in range(0, n, batch):
        part = files[lo : lo + batch]
        ts = time.time_ns() // 1_000_000
        inodes, chunks, changes = [], [], []
        for did, dpath, name, size, digest, copies in part:
            chunks.append((chunk, 1, size, 2, copies))
            inodes.append(
                (did, name, inode, Kind.FILE, 0o644, mtime, size, digest, pack_ids([chunk]), None)
            )
            changes.append((ts, "put", dpath + b"/" + name, None, size, digest))
            inode += 1
            chunk += 1
        with meta.transaction():
            conn.executemany(
                "INSERT INTO chunk (id, version, size, goal, copies, refs) VALUES (?,?,?,?,?,1)",
                chunks,
            )
            conn.executemany(
                "INSERT INTO inode (parent, name, id, kind, mode, mtime, size, hash, chunks, "
                "goal) VALUES (?,?,?,?,?,?,?,?,?,?)",
                inodes,
            )
            conn.executemany(log_sql, changes)
    with meta.transaction():
        conn.execute("UPDATE counter SET value = ? WHERE name = 'inode'", (inode,))
        conn.execute("UPDATE counter SET value = ? WHERE name = 'chunk'", (chunk,))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def meta_disk_bytes(meta_dir: Path) -> int:
    return sum(
        (meta_dir / name).stat().st_size
        for name in ("meta.db", "meta.db-wal", "meta.db-shm")
        if (meta_dir / name).exists() and name != "meta.db-shm"
    )


RSS_PROBE = r"""
import asyncio, json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from cluster.master import Master
import logging, pickle, structlog

structlog.configure(
    wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    logger_factory=structlog.PrintLoggerFactory(sys.stderr),
)
cfg = pickle.loads(bytes.fromhex(sys.argv[2]))

def vm(key, pid="self"):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0

async def main():
    base = vm("VmRSS")
    async with Master(cfg, background=False) as m:
        opened = vm("VmRSS")
        top = await m.ls("/static")
        sub = await m.ls(top[0].path)
        leaf = await m.ls(sub[0].path)
        await m.stat(leaf[0].path)
        await m.stat(leaf[-1].path)
        for i in range(20):
            await m.put(f"/probe/f{i}", bytes(1000 + i))
        for i in range(20):
            assert await m.cat(f"/probe/f{i}") == bytes(1000 + i)
        status = await m.status()
        after = vm("VmRSS")
        # The view process (its own process: not in the master's RSS) links every file of
        # the synthetic metadata, a folder at a time; its peak once done.
        t0 = time.monotonic()
        await m.view.started.wait()
        view_s = time.monotonic() - t0
        view_hwm = vm("VmHWM", m.view.pid)
        hwm = vm("VmHWM")
    print(json.dumps({
        "base": base, "opened": opened, "after": after, "hwm": hwm,
        "files": status["files"], "directories": status["directories"],
        "chunks": status["chunks"], "leaf_entries": len(leaf),
        "view_hwm": view_hwm, "view_wait_s": view_s,
    }))

asyncio.run(main())
"""


def metadata(args: argparse.Namespace, base: ClusterConfig, work: Path) -> dict[str, Any]:
    import pickle

    n = args.meta_files
    root = fresh(work / "meta-bench")
    cfg = cluster_config(base, root, 2, args.volumes)
    say(
        f"metadata: {n:,} files (synthetic rows: inode + goal-2 chunk + 'put' changelog entry per"
        f" file, {TOP_DIRS * SUB_DIRS} leaf directories, shuffled insert order)"
        + ("  [quick mode: 200,000 files, not 1,000,000]" if args.quick else "")
    )

    async def register() -> None:  # a real Master creates the volumes and its rows
        async with Master(cfg, background=False):
            pass

    asyncio.run(register())
    # Rows written behind the master's back: its view must be rebuilt, not resumed from the
    # clean stop that ``register`` recorded (and then replay a million changes one by one).
    (cfg.meta_dir / CLEAN).unlink(missing_ok=True)
    t0 = time.perf_counter()
    build_meta(cfg.meta_dir, n, args.seed, args.volumes)
    size = meta_disk_bytes(cfg.meta_dir)
    per_file = size / n
    say(
        f"  built in {time.perf_counter() - t0:.1f} s; meta.db + WAL after checkpoint: "
        f"{size / MIB:.1f} MiB = {per_file:.0f} B/file (target ≤ {META_TARGET_BYTES}: "
        f"{'ok' if per_file <= META_TARGET_BYTES else 'MISSED'})"
    )
    conn = schema.connect(cfg.meta_dir / "meta.db", readonly=True)
    try:
        rows = conn.execute(
            "SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC"
        ).fetchall()
        parts = [f"{name} {b / n:.0f}" for name, b in rows if b >= n]
        say("  by table/index (B/file): " + ", ".join(parts))
    except Exception as exc:  # dbstat is a compile-time option
        say(f"  (no per-table breakdown: {exc})")
    finally:
        conn.close()

    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, str(REPO), pickle.dumps(cfg).hex()],
        check=True,
        capture_output=True,
        text=True,
    )
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    # VmHWM, not ru_maxrss: ru_maxrss survives exec, so a child started by fork/vfork would
    # report the parent's peak.
    peak = max(probe["hwm"], probe["after"]) / MIB
    say(
        f"  master process (fresh subprocess, {time.perf_counter() - t0:.1f} s): RSS before open "
        f"{probe['base'] / MIB:.1f} MiB, after open {probe['opened'] / MIB:.1f} MiB, after "
        f"ls/stat/put/cat/status {probe['after'] / MIB:.1f} MiB, peak {peak:.1f} MiB "
        f"(target ≤ {RSS_TARGET_MIB}: {'ok' if peak <= RSS_TARGET_MIB else 'MISSED'}); "
        f"status saw {probe['files']:,} files, {probe['directories']:,} directories"
    )
    view_peak = probe["view_hwm"] / MIB
    say(
        f"  view process: linked every file in {probe['view_wait_s']:.1f} s more, peak RSS "
        f"{view_peak:.1f} MiB (its own process; a folder at a time)"
    )
    return {
        "meta_bytes_per_file": round(per_file, 1),
        "master_rss_mib_1m": round(peak, 1),
        "view_rss_mib_1m": round(view_peak, 1),
        "meta_files": n,
    }


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small run, under a minute")
    p.add_argument("--dir", type=Path, help="work directory (default: a temp dir in ./bench-out)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--files", type=int, help="files for put/get (full 5000, quick 1000)")
    p.add_argument("--meta-files", type=int, help="files for the metadata size (1M / 200k)")
    p.add_argument("--reps", type=int, help="repetitions (full 3, quick 2)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--volumes", type=int, default=3)
    p.add_argument("--seed", type=int, default=20240501)
    p.add_argument("--skip-meta", action="store_true", help="only the throughput part")
    p.add_argument("--skip-throughput", action="store_true", help="only the metadata part")
    args = p.parse_args(argv)
    args.files = args.files or (1000 if args.quick else 5000)
    args.meta_files = args.meta_files or (200_000 if args.quick else 1_000_000)
    args.reps = args.reps or (2 if args.quick else 3)

    quiet_logs()
    base = origin_config.load(None).cluster
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="cluster-bench-", dir=args.dir))
    else:
        (REPO / "bench-out").mkdir(exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="cluster-bench-", dir=REPO / "bench-out"))
    say(
        f"cluster_bench ({'quick' if args.quick else 'full'}): work dir {work}, "
        f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}"
    )
    t0 = time.perf_counter()
    result: dict[str, Any] = {"mode": "quick" if args.quick else "full"}
    try:
        if not args.skip_throughput:
            result.update(throughput(args, base, work))
        if not args.skip_meta:
            result.update(metadata(args, base, work))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["own_max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    say(f"done in {result['seconds']} s")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

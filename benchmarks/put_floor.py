"""The floor under ``cluster_bench``'s put ratios: what the durable work a put must do costs on
this machine with none of the master around it, against the same plain-directory anchor.

Run from the repository root::

    .venv/bin/python benchmarks/put_floor.py --quick     # under a minute
    .venv/bin/python benchmarks/put_floor.py             # 5,000 files, 5 reps

A tandem put is acknowledged once its chunk copies are durable on ``goal`` volumes and then
its metadata commit is durable (README, "What is durable when a call returns"). Each chunk
copy is a file of its own (the hard-link view serves them to nginx as they are). So per batch
of ``concurrency`` puts the least a put path can do is: create and write ``goal`` chunk files
per put, make them durable, then commit the metadata rows durably. The *floor* side does only
that, in one thread, with tandem's own parts and nothing else: ``LocalVolume.write_nosync``
(chunk file, CRC table in an xattr, mtime) on ``goal`` of three volumes, one
``LocalVolume.sync`` (syncfs) per batch, then ``Meta.commit_put`` for each put and one
COMMIT (WAL, ``synchronous=FULL``); SHA-256 of each file (its ETag) included. Left out, on
purpose: the event loop, the committer's queue and thread hops, placement, the changelog
feed's wake-ups and the view process. Whatever ``cluster_bench`` measures beyond the floor is
the master's own cost; a target above the floor's ratio cannot be met by any master built on
this design on this machine.

Four more sides, same files, same run:

* ``tandem goal 1`` and ``tandem goal 2``: ``cluster_bench.tandem_put``, the real thing, so
  that each run also says how far tandem is from its floor (``tandem_goal1_of_floor``);
* ``plain``: ``cluster_bench.plain_put``, the anchor itself (one file per put, write + fsync
  each, in ``concurrency`` threads);
* ``plain two files``: the same, but each put writes two files (its two copies), each fsynced:
  the most a goal-2 design that keeps one file per copy can expect from this disk before it
  writes a byte of metadata.

The last line printed is one JSON object: ``floor_goal1_ratio``, ``floor_goal2_ratio``,
``plain_two_files_ratio``, ``tandem_goal1_ratio``, ``tandem_goal2_ratio`` (each ÷ plain,
medians of the reps), ``tandem_goal1_of_floor`` and ``tandem_goal2_of_floor`` (tandem ÷ its
floor) and the absolute files/s.
Nothing is deleted before the end of the run (see ``cluster_bench``: on ext4 files created
right after a mass delete are slower).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from cluster_bench import (
    REPO,
    TARGETS,
    File,
    cluster_config,
    fresh,
    make_files,
    plain_put,
    quiet_logs,
    say,
    tandem_put,
)

from cluster import schema
from cluster.meta import Meta, NewChunk
from cluster.store import ChunkKey
from cluster.volume import LocalVolume
from origin import config as origin_config

VOLUMES = 3
MTIME_NS = 1_700_000_000_000_000_000  # every copy's and entry's mtime, as in tandem_put


def floor_put(root: Path, files: Sequence[File], goal: int, batch: int) -> float:
    """Seconds to put every file with only the durable work (module docstring)."""
    vols = [LocalVolume.create(root / f"vol{i}") for i in range(VOLUMES)]
    (root / "meta").mkdir()
    conn = schema.connect(root / "meta" / "meta.db")
    schema.init(conn)
    meta = Meta(conn, goal, 86_400)
    next_id = 1
    t0 = time.perf_counter()
    for lo in range(0, len(files), batch):
        done = []
        for f in files[lo : lo + batch]:
            key = ChunkKey(next_id)
            copies = 0
            for i in range(goal):
                vid = (next_id + i) % VOLUMES
                vols[vid].write_nosync(key, f.data, mtime_ns=MTIME_NS)
                copies |= 1 << vid
            next_id += 1
            done.append((f, NewChunk(key.id, 1, len(f.data), copies)))
        vols[0].sync()  # one filesystem: one syncfs makes every volume's copies durable
        meta.begin()
        for f, chunk in done:
            meta.commit_put(
                tuple(p.encode() for p in f.path.split("/")), size=len(f.data),
                hash=hashlib.sha256(f.data).digest(), mode=0o644,
                mtime_ns=MTIME_NS, chunks=[chunk], goal=goal,
            )
        meta.commit()
    seconds = time.perf_counter() - t0
    conn.close()
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="1,000 files, 3 reps: under a minute")
    p.add_argument("--files", type=int, help="files per side and rep (full 5000)")
    p.add_argument("--reps", type=int, help="repetitions (full 5, quick 3)")
    p.add_argument("--concurrency", type=int, default=8, help="as cluster_bench: 8")
    p.add_argument("--seed", type=int, default=20240501)
    p.add_argument("--dir", type=Path, help="work directory (default: one in ./bench-out)")
    args = p.parse_args(argv)
    n = args.files or (1000 if args.quick else 5000)
    reps = args.reps or (3 if args.quick else 5)
    files = make_files(n, args.seed)
    quiet_logs()
    base = origin_config.load(None).cluster

    def tandem(goal: int, root: Path) -> float:
        cfg = cluster_config(base, root, goal, VOLUMES)
        return asyncio.run(tandem_put(cfg, files, args.concurrency))[0]

    parent = args.dir or REPO / "bench-out"
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="put-floor-", dir=parent))
    say(
        f"put_floor ({'quick' if args.quick else 'full'}): {n} files "
        f"({sum(len(f.data) for f in files) / (1 << 20):.1f} MiB, cluster_bench's workload), "
        f"batches/threads of {args.concurrency}, {reps} reps, work dir {work}"
    )
    sides = {
        "plain": lambda d: plain_put(d, files, args.concurrency),
        "plain two files": lambda d: plain_put(d, files, args.concurrency, copies=2),
        "floor goal 1": lambda d: floor_put(d, files, 1, args.concurrency),
        "floor goal 2": lambda d: floor_put(d, files, 2, args.concurrency),
        "tandem goal 1": lambda d: tandem(1, d),
        "tandem goal 2": lambda d: tandem(2, d),
    }
    rates: dict[str, list[float]] = {k: [] for k in sides}
    t_start = time.perf_counter()
    try:
        names = list(sides)
        for rep in range(reps):
            for k, name in enumerate(names[rep % len(names) :] + names[: rep % len(names)]):
                rates[name].append(n / sides[name](fresh(work / f"{rep}-{k}")))
            say(f"rep {rep + 1} (files/s): "
                + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items()))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    out = {
        "floor_goal1_ratio": round(med["floor goal 1"] / med["plain"], 3),
        "floor_goal2_ratio": round(med["floor goal 2"] / med["plain"], 3),
        "plain_two_files_ratio": round(med["plain two files"] / med["plain"], 3),
        "tandem_goal1_ratio": round(med["tandem goal 1"] / med["plain"], 3),
        "tandem_goal2_ratio": round(med["tandem goal 2"] / med["plain"], 3),
        "tandem_goal1_of_floor": round(med["tandem goal 1"] / med["floor goal 1"], 3),
        "tandem_goal2_of_floor": round(med["tandem goal 2"] / med["floor goal 2"], 3),
        "plain_put_files_per_s": round(med["plain"], 1),
        "plain_two_files_per_s": round(med["plain two files"], 1),
        "floor_goal1_files_per_s": round(med["floor goal 1"], 1),
        "floor_goal2_files_per_s": round(med["floor goal 2"], 1),
        "tandem_goal1_files_per_s": round(med["tandem goal 1"], 1),
        "tandem_goal2_files_per_s": round(med["tandem goal 2"], 1),
        "files": n,
        "reps": reps,
        "concurrency": args.concurrency,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    say(
        "medians, ÷ plain (cluster_bench's targets: goal 1 ≥ {put_goal1_ratio}, goal 2 ≥ "
        "{put_goal2_ratio}):".format(**TARGETS)
    )
    for key in ("floor_goal1_ratio", "floor_goal2_ratio", "plain_two_files_ratio",
                "tandem_goal1_ratio", "tandem_goal2_ratio"):
        say(f"  {key:<22} {out[key]:.3f}")
    say("tandem ÷ its floor: goal 1 {tandem_goal1_of_floor:.3f}, goal 2 "
        "{tandem_goal2_of_floor:.3f}".format(**out))
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

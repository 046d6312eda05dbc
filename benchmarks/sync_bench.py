"""Sync benchmark: tandem's directory mirror against lsyncd 2.2 (Debian, configured as in the
seed) for delivery latency, and against ``rsync -a`` for full and no-op syncs.

Run from the repository root (``./dev bench sync_bench`` installs lsyncd and rsync first)::

    .venv/bin/python benchmarks/sync_bench.py --quick            # under a minute
    .venv/bin/python benchmarks/sync_bench.py                    # full
    .venv/bin/python benchmarks/sync_bench.py --only lsyncd      # parts alone: tandem lsyncd rsync

Human-readable lines go to stdout as it runs; the LAST line is one JSON object with the figures.

Workload (seeded): a tree of 300 leaf folders (``images/2023..2026/MM/NN``, ``news/<section>/
2026-MM``) pre-seeded with files; new files are written into it, 80 % images and 20 % news pages,
one in 250 into a folder created just before (``news/<section>/live-…``, the mkdir race), the
rest spread over the existing folders. Sizes come from ``workload.file_size``: lognormal,
median 12 KiB, sigma 1.0, clipped to 2–300 KiB. Every file is new (a fresh name) with seeded
random bytes behind a 16-byte header (magic, file number, size, CRC-32 of the rest), so any copy
can be checked on its own: complete and identical, or not.

Method, latency (``p50/p99/max_ms_<rate>``, ``lost``, ``partial``): per tool and rate, a fresh
source tree with the seed files and an empty target; the mirror is started and given its initial
pass (tandem: ``status.json`` idle; lsyncd: "Startup … finished" in its log; then both trees list
the same names and sizes). A writer process writes the files at a fixed rate on an absolute
schedule (``t0 + i/rate``, no drift), in 64 KiB writes, and records CLOCK_MONOTONIC (system-wide
on Linux) right after each ``close()``. A separate observer process watches the target with raw
inotify (IN_CREATE, IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_TO; new folders are watched before they
are listed) and reads every tracked file each time an event names it: the first read that finds
the identical file is its delivery time (also from a stat-then-read of the files still missing
once a second, the net under the events); a read that finds it shorter or different counts the
file as ``partial`` (files, not events; also after delivery: a copy rewritten in place). After
the last write it waits up to ``--grace`` seconds (full 60, quick 5) for the rest; a final
pass reads every file still missing, and what is still not identical then is ``lost``.
Percentiles are nearest-rank over ALL files written, a lost file counting as infinitely late:
when the percentile falls on a lost file it is reported as null (human output: "> grace").
Before the tools, the observer is calibrated: watching the writer's own folder at 1,000 files/s
gives the probe's floor (``probe_floor_*_ms``), and 20 files written in two halves 20 ms apart
must all be seen half-written (``probe_partial_selftest``) — the probe can see what lsyncd's
in-place ``cp`` exposes.

Method, burst (``burst_drain_s``): the writer writes the files as fast as it can; the figure is
the last verified delivery minus the last ``close()``. The same observer watches the target: if
its inotify queue overflows it stats every file still missing (and reads those of the right
size), and every second it does that anyway (``found_by_safety_scan``: files it saw before
their event), so a dropped event delays a delivery time by a second at most, never loses it.
``--burst-probe poll`` lists the folders instead (every 10 ms once the writer is done, 250 ms
while it writes); it costs most of a CPU at 20,000 names, which the mirror needs on a small
machine, so it is not the default.

Method, full and no-op (``full_ratio``, ``noop_ratio``): a tree of N seeded files is written
once and flushed (``sync``); both tools then copy it, warm cache (not dropped: both read the
same cached tree), into fresh empty folders — ``rsync -a SRC/ DST/`` and ``tandem sync full
--from SRC --to DST`` — in alternating order per rep, with ``sync`` after each so neither
pays for the other's write-back. That ``sync`` is not in ``full_ratio``; it is in
``full_ratio_durable`` (copy + ``sync``), shown beside it because tandem makes every file
durable before it exits (one syncfs per 8,192 files) while rsync leaves its data in the page
cache. Wall time of the whole command, CLI start-up included,
as an operator would run it. Each copy is checked (names, sizes, mtimes; a sample of contents).
No-op: the same commands again on the last rep's targets with nothing changed. Ratios are
tandem ÷ rsync seconds of the medians.

Noise: each measurement also reports ``other_load``, the share of the machine's CPUs other
processes used meanwhile (machine-wide user+system time minus this run's process tree and
kernel threads), flagged above 15 %: on a shared machine the figures are then pessimistic.

Quick mode scales down: 5 s of writing per rate instead of 10, a 5 s grace instead of 60 (so
lsyncd's ``lost`` is counted 5 s after the last write, not 60), 200 seed files per phase
instead of 2,000, 1 s of probe calibration instead of 5, a burst of 5,000 files instead of
20,000, a full-sync tree of 5,000 files instead of 50,000 with 1 rep instead of 3, and 3 no-op
reps instead of 5. The keys are the same.

Everything runs on the real disk (a temp dir, refused on tmpfs; ``--workdir`` to choose);
nothing is deleted until the end (on ext4, creating files right after deleting many is slower);
every process this starts is stopped by its id, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import array
import ctypes
import dataclasses
import json
import math
import os
import random
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO, REPO / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from workload import KIB, MIB, SIZE_MAX, SIZE_MEDIAN, SIZE_MIN, SIZE_SIGMA, file_size  # noqa: E402

TARGETS: dict[str, float] = {
    "p99_ms_1000": 100, "lost": 0, "partial": 0, "p99_ms_200": 50, "burst_drain_s": 5,
    "full_ratio": 0.7, "noop_ratio": 0.5,
}
PARTS = ("tandem", "lsyncd", "rsync")
NS = 1_000_000_000
CLK_TCK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 120.0  # a mirror's initial pass over the seed files
CHUNK = 64 * KIB  # the writer's write size, as cp/nginx/most publishers write
HEADER = struct.Struct(">4sIII")  # magic, file number, total size, CRC-32 of the rest
MAGIC = b"TSB1"
SECTIONS = ("world", "sport", "tech", "business", "culture", "local")
IMAGE_EXTS = (".jpg", ".png", ".webp", ".gif")
NEW_DIR_EVERY = 250
SELFTEST_FILES = 20
POLL_INTERVAL = 0.01  # the poller's, once the writer is done (0.25 s while it writes)
SAFETY_SCAN = 1.0  # the inotify observer stats what is still missing this often
NOISY = 0.15  # a run during which other processes used more of the machine is flagged


class BenchError(Exception):
    """The benchmark cannot produce honest figures; the message says why."""


def say(msg: str) -> None:
    print(msg, flush=True)


def part(msg: str) -> None:
    """A part's first line, with the time since the start."""
    say(f"[{time.monotonic() - STARTED:5.1f} s] {msg}")


STARTED = time.monotonic()


# -- the workload -----------------------------------------------------------------------------


def leaf_dirs() -> list[str]:
    """The pre-seeded tree's 300 leaf folders: 240 for images, 60 for news."""
    images = [f"images/{y}/{m:02d}/{k:02d}" for y in range(2023, 2027) for m in range(1, 13)
              for k in range(5)]
    news = [f"news/{s}/2026-{m:02d}" for s in SECTIONS for m in range(1, 11)]
    return images + news


@dataclasses.dataclass(frozen=True)
class Plan:
    """The files one phase writes, in order: relative paths, sizes and the content seed."""

    paths: list[str]
    sizes: list[int]
    seed: int

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps(dataclasses.asdict(self)))
        return path

    @classmethod
    def load(cls, path: Path) -> Plan:
        raw = json.loads(path.read_text())
        return cls(list(raw["paths"]), list(raw["sizes"]), int(raw["seed"]))


def make_plan(n: int, seed: int, tag: str, new_dirs: bool = True) -> Plan:
    """``n`` new files for a phase; names carry ``tag`` so no two phases share one."""
    rng = random.Random(f"{seed}:{tag}")
    dirs = leaf_dirs()
    fresh: list[str] = []
    paths, sizes = [], []
    for i in range(n):
        if new_dirs and i % NEW_DIR_EVERY == NEW_DIR_EVERY // 2:
            folder = f"news/{rng.choice(SECTIONS)}/live-{tag}-{len(fresh):03d}"
            fresh.append(folder)
        elif fresh and rng.random() < 0.03:
            folder = rng.choice(fresh)
        else:
            folder = rng.choice(dirs)
        if folder.startswith("images/"):
            name = f"{tag}{i:06d}-{rng.getrandbits(32):08x}{rng.choice(IMAGE_EXTS)}"
        else:
            name = f"story-{rng.getrandbits(24):06x}-{tag}{i:06d}.html"
        paths.append(f"{folder}/{name}")
        sizes.append(file_size(rng))
    return Plan(paths, sizes, seed)


def content(plan: Plan, i: int) -> bytes:
    size = plan.sizes[i]
    body = random.Random(plan.seed * 1_000_003 + i).randbytes(size - HEADER.size)
    return HEADER.pack(MAGIC, i, size, zlib.crc32(body)) + body


def identical(data: bytes, i: int, size: int) -> bool:
    """Whether ``data`` is file ``i`` complete (the header names it and the CRC holds)."""
    if len(data) != size:
        return False
    magic, num, hsize, crc = HEADER.unpack_from(data)
    return bool(magic == MAGIC and num == i and hsize == size
                and zlib.crc32(data[HEADER.size:]) == crc)


def write_file(path: Path, data: bytes, pause: float = 0.0) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        if pause:  # the self-test: the first half, a pause, the rest
            half = len(data) // 2
            os.write(fd, data[:half])
            time.sleep(pause)
            os.write(fd, data[half:])
        else:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view[:CHUNK]):]
    finally:
        os.close(fd)


def seed_tree(root: Path, n: int, seed: int, new_dirs: bool = False) -> Plan:
    """The source tree of a phase: every leaf folder and ``n`` files (written untimed)."""
    for d in leaf_dirs():
        (root / d).mkdir(parents=True, exist_ok=True)
    plan = make_plan(n, seed, "s", new_dirs=new_dirs)
    for i, rel in enumerate(plan.paths):
        path = root / rel
        if new_dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
        write_file(path, content(plan, i))
    return plan


def listing(root: Path) -> dict[str, int]:
    """Relative path → size of every file under ``root``."""
    out: dict[str, int] = {}
    base = len(str(root)) + 1
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            full = os.path.join(dirpath, f)
            with suppress(FileNotFoundError):
                out[full[base:]] = os.stat(full).st_size
    return out


# -- the writer and the observer (child processes) --------------------------------------------


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def writer_main(plan_file: Path, root: Path, times_out: Path, rate: float, pause: float) -> int:
    """Writes the plan under ``root`` at ``rate`` files/s (0: as fast as possible). Prints
    "ready" once every file's bytes are in memory, starts on a "go" line on stdin, and writes
    each file's close time (CLOCK_MONOTONIC ns) to ``times_out``; then one JSON line."""
    plan = Plan.load(plan_file)
    datas = [content(plan, i) for i in range(len(plan.paths))]
    made = {str(Path(p).parent) for p in plan.paths if (root / p).parent.is_dir()}
    closes = array.array("q", bytes(8 * len(datas)))
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    behind = 0
    t0 = time.monotonic_ns()
    step = NS / rate if rate else 0.0
    for i, data in enumerate(datas):
        due = t0 + int(i * step)
        now = time.monotonic_ns()
        if now < due:
            time.sleep((due - now) / NS)
        elif step:
            behind = max(behind, now - due)
        rel = plan.paths[i]
        folder = rel.rsplit("/", 1)[0]
        if folder not in made:
            os.makedirs(root / folder, exist_ok=True)
            made.add(folder)
        write_file(root / rel, data, pause)
        closes[i] = time.monotonic_ns()
    times_out.write_bytes(closes.tobytes())
    print(json.dumps({"first": closes[0], "last": closes[-1], "t0": t0,
                      "behind_ms": behind / 1e6, "cpu_s": own_cpu()}), flush=True)
    return 0


IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x2, 0x8, 0x80, 0x100
IN_Q_OVERFLOW, IN_ISDIR = 0x4000, 0x40000000
WATCH_MASK = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
EVENT = struct.Struct("iIII")  # struct inotify_event without its name


class Observer:
    """Tracks the plan's files under ``root``: delivery time (first identical read), files seen
    half-written, and how it learnt of them."""

    def __init__(self, plan: Plan, root: Path) -> None:
        self.root = os.fsencode(root)
        self.sizes = plan.sizes
        self.index = {p.encode(): i for i, p in enumerate(plan.paths)}
        self.delivered = [0] * len(plan.paths)
        self.partial: set[int] = set()
        self.paths = plan.paths
        self.examples: list[tuple[str, int, int]] = []  # (path, bytes read, size) when partial
        self.pending = len(plan.paths)
        self.reads = self.events = self.overflows = self.found_late = self.passes = 0
        self.scans = self.found_by_scan = 0
        self.fast = False  # the poller: the writer is done, poll at full rate

    def check(self, i: int, path: bytes) -> bool:
        """Read file ``i`` now: True when it is there and identical."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            return False
        try:
            data = os.read(fd, SIZE_MAX + 1)
        finally:
            os.close(fd)
        now = time.monotonic_ns()
        self.reads += 1
        if identical(data, i, self.sizes[i]):
            if not self.delivered[i]:
                self.delivered[i] = now
                self.pending -= 1
            return True
        self.half_written(i, len(data))
        return False

    def half_written(self, i: int, length: int) -> None:
        if i not in self.partial and len(self.examples) < 3:
            self.examples.append((self.paths[i], length, self.sizes[i]))
        self.partial.add(i)

    def final_pass(self) -> None:
        for key, i in self.index.items():
            if not self.delivered[i] and self.check(i, self.root + b"/" + key):
                self.found_late += 1

    def scan_missing(self) -> None:
        """Stat every file still missing; read those of the right size."""
        for key, i in self.index.items():
            if self.delivered[i]:
                continue
            path = self.root + b"/" + key
            try:
                size = os.stat(path).st_size
            except (FileNotFoundError, NotADirectoryError):
                continue
            if size < self.sizes[i]:
                self.half_written(i, size)
            elif self.check(i, path):
                self.found_by_scan += 1

    def result(self) -> dict[str, Any]:
        return {"delivered": self.delivered, "partial": sorted(self.partial),
                "examples": self.examples,
                "reads": self.reads, "events": self.events, "overflows": self.overflows,
                "found_late": self.found_late, "passes": self.passes, "cpu_s": own_cpu(),
                "scans": self.scans, "found_by_scan": self.found_by_scan}


class Inotify:
    """The three inotify calls through libc, nothing else (pyinotify costs ~10× per event)."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = int(self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")

    def add(self, path: bytes, mask: int) -> int:
        wd = int(self.libc.inotify_add_watch(self.fd, path, mask))
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path.decode(errors="replace"))
        return wd


def watch_loop(obs: Observer, stop: Callable[[float], bool]) -> None:
    ino = Inotify()
    dirs: dict[int, bytes] = {}  # watch descriptor → folder relative to the root (b"" at top)

    def watch(rel: bytes) -> None:
        """Watch first, then list: a file made in between shows up in one or the other."""
        path = obs.root + b"/" + rel if rel else obs.root
        try:
            dirs[ino.add(path, WATCH_MASK)] = rel
            entries = list(os.scandir(path))
        except (FileNotFoundError, NotADirectoryError):
            return
        for e in entries:
            sub = rel + b"/" + e.name if rel else e.name
            if e.is_dir(follow_symlinks=False):
                watch(sub)
            elif (num := obs.index.get(sub)) is not None:
                obs.check(num, e.path)

    watch(b"")
    print("ready", flush=True)
    next_scan = time.monotonic() + SAFETY_SCAN
    while not stop(0.0):
        if time.monotonic() >= next_scan:  # the net under the events: what came unannounced
            obs.scans += 1
            obs.scan_missing()
            next_scan = time.monotonic() + SAFETY_SCAN
        ready, _, _ = select.select([ino.fd], [], [], 0.05)
        if not ready:
            continue
        try:
            buf = os.read(ino.fd, 1 << 20)
        except BlockingIOError:
            continue
        todo: dict[int, bytes] = {}  # one read per file per batch: its state now is what counts
        off = 0
        while off < len(buf):
            wd, mask, _cookie, length = EVENT.unpack_from(buf, off)
            name = buf[off + EVENT.size: off + EVENT.size + length].rstrip(b"\0")
            off += EVENT.size + length
            obs.events += 1
            if mask & IN_Q_OVERFLOW:  # events were dropped: look at every file still missing
                obs.overflows += 1
                obs.scan_missing()
                continue
            rel = dirs.get(wd)
            if rel is None:
                continue
            key = rel + b"/" + name if rel else name
            if mask & IN_ISDIR:
                if mask & (IN_CREATE | IN_MOVED_TO):
                    watch(key)
            elif (num := obs.index.get(key)) is not None:
                todo[num] = obs.root + b"/" + key
        for i, path in todo.items():
            obs.check(i, path)
        if obs.pending == 0:
            stop(-1.0)  # announce completion once


def poll_loop(obs: Observer, stop: Callable[[float], bool]) -> None:
    """List each folder holding missing files; stat and read only those names."""
    by_dir: dict[bytes, dict[bytes, int]] = {}
    for key, i in obs.index.items():
        folder, _, name = key.rpartition(b"/")
        by_dir.setdefault(obs.root + b"/" + folder, {})[name] = i
    print("ready", flush=True)
    while not stop(POLL_INTERVAL if obs.fast else 0.25):
        obs.passes += 1
        for folder in list(by_dir):
            names = by_dir[folder]
            try:
                entries = os.scandir(folder)
            except (FileNotFoundError, NotADirectoryError):
                continue
            with entries:
                for e in entries:
                    name = e.name  # bytes: the folder was given as bytes
                    num = names.get(name)
                    if num is None:
                        continue
                    try:
                        size = e.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue
                    if size < obs.sizes[num]:
                        obs.half_written(num, size)
                    elif obs.check(num, e.path):
                        del names[name]
            if not names:
                del by_dir[folder]
        if obs.pending == 0:
            stop(-1.0)


def observer_main(mode: str, plan_file: Path, root: Path, out: Path) -> int:
    """Prints "ready" when watching, "complete" when every file is there; stops on a line on
    stdin, after a last pass over what is still missing, writing its findings to ``out``."""
    obs = Observer(Plan.load(plan_file), root)
    announced, lines = False, b""

    def stop(wait: float) -> bool:
        """Announce completion (``wait`` < 0), or wait for a line: "fast" (the writer is done)
        or "stop"."""
        nonlocal announced, lines
        if wait < 0:
            if not announced:
                print("complete", flush=True)
                announced = True
            return False
        if b"\n" not in lines:  # raw reads: a buffered stdin would hide a second line
            if not select.select([0], [], [], wait)[0]:
                return False
            chunk = os.read(0, 4096)
            if not chunk:
                return True  # the parent is gone
            lines += chunk
        while b"\n" in lines:
            line, _, lines = lines.partition(b"\n")
            if line.strip() != b"fast":
                return True
            obs.fast = True
        return False

    (watch_loop if mode == "inotify" else poll_loop)(obs, stop)
    obs.final_pass()
    out.write_text(json.dumps(obs.result()))
    print("done", flush=True)
    return 0


# -- child processes, seen from the parent ----------------------------------------------------


class Child:
    """A helper process of ours speaking lines on stdin/stdout; stderr goes to a log file."""

    def __init__(self, name: str, argv: Sequence[str], log: Path) -> None:
        self.name, self.log = name, log
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), *argv],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                start_new_session=True,
            )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.out, self.inp = self.proc.stdout, self.proc.stdin
        self.buf = b""

    def line(self, timeout: float) -> str | None:
        """The next line, or None when ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.out], [], [], left)[0]:
                return None
            chunk = os.read(self.out.fileno(), 65536)
            if not chunk:
                self.proc.wait(5)
                raise BenchError(f"{self.name} exited {self.proc.returncode}: {tail(self.log)}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()

    def expect(self, word: str, timeout: float) -> str:
        got = self.line(timeout)
        if got is None:
            raise BenchError(f"{self.name}: no {word!r} within {timeout:.0f} s: {tail(self.log)}")
        if word and got != word:
            raise BenchError(f"{self.name}: expected {word!r}, got {got!r}")
        return got

    def send(self, line: str) -> None:
        with suppress(BrokenPipeError):
            self.inp.write(line.encode() + b"\n")
            self.inp.flush()

    def stop(self) -> None:
        stop_process(self.proc, 10.0)


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM by pid, then SIGKILL to its process group (ours: started in a new session)."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # children it left behind (lsyncd's cp)


def tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_bytes()[-n:].decode(errors="replace").strip() or "(empty log)"
    except OSError:
        return "(no log)"


def cpu_seconds(pid: int) -> float:
    """utime + stime + the reaped children's (lsyncd's cp processes) of ``pid``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return sum(int(f) for f in fields[11:15]) / CLK_TCK


PF_KTHREAD = 0x00200000


def cpu_snapshot() -> tuple[float, float, float]:
    """(CPU seconds the machine spent in user space and system calls, all CPUs' seconds, the
    part of the first that was this run's or the kernel's own threads'), since boot."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    busy, total = (v[0] + v[1] + v[2]) / CLK_TCK, sum(v) / CLK_TCK  # user, nice, system
    t = os.times()  # this process and the children it has reaped (writers, rsync, mirrors)
    mine = t.user + t.system + t.children_user + t.children_system
    stats: dict[int, tuple[int, list[int]]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(name)] = (int(fields[1]), [int(f) for f in fields[6:15]])
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    todo = list(children.get(os.getpid(), ()))
    while todo:  # live descendants, with the children they reaped (lsyncd's cp)
        pid = todo.pop()
        mine += sum(stats[pid][1][5:9]) / CLK_TCK
        todo.extend(children.get(pid, ()))
    kernel = sum(f[5] + f[6] for _, f in stats.values() if f[0] & PF_KTHREAD) / CLK_TCK
    return busy, total, mine + kernel


class LoadMeter:
    """The share of the machine's CPUs that other processes used between ``__init__`` and
    ``share()`` (other people's tests, say): a noisy neighbour makes the figures worse.
    Machine-wide user+system time minus this run's processes and kernel threads."""

    def __init__(self) -> None:
        self.start = cpu_snapshot()

    def share(self) -> float:
        end = cpu_snapshot()
        busy, total, ours = (b - a for a, b in zip(self.start, end, strict=True))
        return max(0.0, busy - ours) / total if total > 0 else 0.0


def noisy(share: float) -> str:
    return f"other load {share:.0%}" + ("  (NOISY: other processes were busy)"
                                         if share > NOISY else "")


# -- the mirrors ------------------------------------------------------------------------------


@dataclasses.dataclass
class Mirror:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited {self.proc.returncode}: {tail(self.log)}")


LSYNCD_CONF = """\
-- The seed's settings (docs/seeds 000), adapted to this machine's paths. Changed:
-- statusIntervall → statusInterval (lsyncd 2.2 refuses the old spelling), logfacility quoted
-- (the seed's bare `daemon` is an undefined Lua global, i.e. nil). -nodaemon on the command
-- line keeps it in the foreground so the bench can stop it by pid.
settings {
    statusFile = "%(status)s",
    logfile    = "%(log)s",
    logfacility = "daemon",
    statusInterval = 20,
    maxDelays    = 10,
    maxProcesses = 4
}

sync {
    default.direct,
    source="%(src)s",
    target="%(dst)s"
}
"""


def start_lsyncd(stack: ExitStack, root: Path, src: Path, dst: Path) -> Mirror:
    conf = root / "lsyncd.conf.lua"
    log = root / "lsyncd.log"
    conf.write_text(LSYNCD_CONF % {"status": root / "lsyncd.status", "log": log, "src": src,
                                   "dst": dst})
    with open(root / "lsyncd.out", "wb") as out:
        proc = subprocess.Popen(["lsyncd", "-nodaemon", str(conf)], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    stack.callback(stop_process, proc, 20.0)
    mirror = Mirror("lsyncd", proc, root / "lsyncd.out")
    deadline = time.monotonic() + START_TIMEOUT
    while "finished" not in (log.read_text() if log.exists() else ""):
        mirror.alive()
        if time.monotonic() > deadline:
            raise BenchError(f"lsyncd: startup not finished in {START_TIMEOUT:.0f} s: {tail(log)}")
        time.sleep(0.05)
    return mirror


def tandem_argv(conf: Path, *argv: str) -> list[str]:
    return [str(REPO / ".venv" / "bin" / "tandem"), "--config", str(conf), *argv]


def tandem_env() -> dict[str, str]:
    return {**os.environ, "TQDM_DISABLE": "1"}


def tandem_missing(conf: Path) -> str | None:
    """Why the tandem CLI cannot run this benchmark yet, or None."""
    exe = Path(tandem_argv(conf)[0])
    if not exe.exists():
        return f"{exe} is not installed (./dev test installs it)"
    done = subprocess.run(tandem_argv(conf, "sync", "--help"), capture_output=True, text=True,
                          env=tandem_env(), timeout=60)
    for want in ("run", "full", "--from", "--to", "--state-dir"):
        if done.returncode != 0 or want not in done.stdout:
            return f"`tandem sync --help` has no {want!r} (exit {done.returncode}) yet"
    return None


def start_tandem(stack: ExitStack, conf: Path, root: Path, src: Path, dst: Path) -> Mirror:
    state = root / "state"
    log = root / "tandem-sync.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            tandem_argv(conf, "sync", "run", "--from", str(src), "--to", str(dst),
                        "--state-dir", str(state)),
            cwd=conf.parent, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=tandem_env(), start_new_session=True,
        )
    stack.callback(stop_process, proc, 20.0)
    mirror = Mirror("tandem sync run", proc, log)
    wait_idle(mirror, state / "status.json", time.monotonic() + START_TIMEOUT)
    return mirror


def wait_idle(mirror: Mirror, status: Path, deadline: float) -> dict[str, Any]:
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        mirror.alive()
        with suppress(OSError, ValueError):
            last = json.loads(status.read_text())
            if last.get("idle") is True and last.get("queue") == 0:
                return last
        time.sleep(0.1)
    raise BenchError(f"tandem: not idle within {START_TIMEOUT:.0f} s (last status {last}): "
                     f"{tail(mirror.log)}")


def wait_mirrored(mirror: Mirror, src: Path, dst: Path, timeout: float) -> None:
    want = listing(src)
    deadline = time.monotonic() + timeout
    while (got := listing(dst)) != want:
        mirror.alive()
        if time.monotonic() > deadline:
            missing = len(set(want.items()) - set(got.items()))
            raise BenchError(f"{mirror.name}: initial pass incomplete after {timeout:.0f} s "
                             f"({missing} of {len(want)} files missing or short)")
        time.sleep(0.1)


# -- one measured phase -----------------------------------------------------------------------


@dataclasses.dataclass
class Phase:
    """What a writer/observer run found; latencies in ms, None when the file never came."""

    label: str
    files: int
    write_s: float
    behind_ms: float
    latencies: list[float | None]
    partial: int
    found_late: int
    overflows: int
    events: int
    reads: int
    examples: list[tuple[str, int, int]]  # files seen half-written: (path, bytes seen, size)
    cpu_s: float  # the mirror's CPU (and its reaped children's) during the phase
    other_load: float  # share of the machine other processes used meanwhile
    wait_s: float  # how long after the last write the run waited for the target
    drain_s: float | None  # last delivery − last close, when every file came
    probe_cpu_s: tuple[float, float]  # CPU of the writer and of the observer
    passes: int  # the poller's
    found_by_scan: int  # the inotify observer's safety scans found before any event
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def lost(self) -> int:
        return sum(lat is None for lat in self.latencies)

    def pct(self, q: float) -> float | None:
        """Nearest-rank percentile over every file written; a lost file is infinitely late."""
        ranked = sorted(self.latencies, key=lambda v: math.inf if v is None else v)
        return ranked[max(0, math.ceil(q * len(ranked)) - 1)]


def run_phase(
    label: str,
    root: Path,
    watch: Path,
    plan: Plan,
    rate: float,
    mode: str,
    wait: float,
    mirror: Mirror | None,
    pause: float = 0.0,
) -> Phase:
    """Writer → ``root``, observer/poller on ``watch``; ``wait`` seconds after the last write
    at most; the figures."""
    tag = label.replace(" ", "-").replace("/", "")
    plan_file = plan.save(root.parent / f"{tag}.plan.json")
    times, found = root.parent / f"{tag}.closes", root.parent / f"{tag}.observed.json"
    with ExitStack() as stack:
        obs = Child(f"observer ({label})", ["_observer", mode, str(plan_file), str(watch),
                                            str(found)], root.parent / f"{tag}.observer.log")
        stack.callback(obs.stop)
        wr = Child(f"writer ({label})", ["_writer", str(plan_file), str(root), str(times),
                                         str(rate), str(pause)], root.parent / f"{tag}.writer.log")
        stack.callback(wr.stop)
        obs.expect("ready", 60)
        wr.expect("ready", 120)
        cpu0 = cpu_seconds(mirror.proc.pid) if mirror else math.nan
        meter = LoadMeter()
        wr.send("go")
        budget = 60 + (len(plan.paths) / rate * 2 if rate else len(plan.paths) / 200)
        summary = json.loads(wr.expect("", budget))
        obs.send("fast")
        last = int(summary["last"])
        complete = False
        while (left := last / NS + wait - time.monotonic()) > 0:
            if obs.line(left) == "complete":
                complete = True
                break
        waited = time.monotonic() - last / NS
        others = meter.share()
        if mirror:
            mirror.alive()
            cpu = cpu_seconds(mirror.proc.pid) - cpu0
        else:
            cpu = math.nan
        if complete and mode == "inotify" and mirror:
            time.sleep(0.5)  # a late rewrite in place would still be seen
        # What is not identical by the final pass the observer makes now is lost.
        obs.send("stop")
        obs.expect("done", 120)
    closes = array.array("q")
    closes.frombytes(times.read_bytes())
    res = json.loads(found.read_text())
    got: list[int] = res["delivered"]
    lat = [(d - c) / 1e6 if d else None for c, d in zip(closes, got, strict=True)]
    drain = None if not all(got) else (max(got) - last) / NS
    return Phase(
        label, len(plan.paths), (last - summary["t0"]) / NS, summary["behind_ms"], lat,
        len(res["partial"]), res["found_late"], res["overflows"], res["events"], res["reads"],
        [tuple(e) for e in res["examples"]], cpu, others, waited, drain,
        (summary["cpu_s"], res["cpu_s"]), res["passes"], res["found_by_scan"],
    )


def fmt_ms(v: float | None, grace: float) -> str:
    return f"> {grace:.0f} s" if v is None else f"{v:.1f} ms"


def show_phase(p: Phase, grace: float) -> None:
    rate = p.files / p.write_s if p.write_s else 0
    say(f"  {p.label}: {p.files} files in {p.write_s:.2f} s ({rate:.0f} files/s; writer at "
        f"most {p.behind_ms:.1f} ms behind schedule; {noisy(p.other_load)})")
    say(f"    close → identical on target: p50 {fmt_ms(p.pct(0.50), grace)}, p99 "
        f"{fmt_ms(p.pct(0.99), grace)}, max {fmt_ms(p.pct(1.0), grace)}; lost {p.lost}, "
        f"partial {p.partial}" + (f"; all there {p.drain_s:.2f} s after the last write"
                                  if p.drain_s is not None else
                                  f"; waited {p.wait_s:.1f} s after the last write"))
    cpu = "" if math.isnan(p.cpu_s) else f"mirror CPU {p.cpu_s:.2f} s, "
    how = (f"{p.events} events, {p.overflows} queue overflows, {p.reads} reads, "
           f"{p.found_by_scan} files found by the 1 s safety scan first" if not p.passes else
           f"{p.passes} passes, {p.reads} reads")
    say(f"    {cpu}writer CPU {p.probe_cpu_s[0]:.2f} s, observer CPU {p.probe_cpu_s[1]:.2f} s; "
        f"observer: {how}, {p.found_late} files found only by the final pass")
    if p.examples:
        say("    seen half-written, e.g.: " + ", ".join(
            f"{path} ({seen} of {size} B)" for path, seen, size in p.examples))


def latency_keys(p: Phase, prefix: str, rate: int) -> dict[str, Any]:
    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 2)

    return {
        f"{prefix}p99_ms_{rate}": r(p.pct(0.99)), f"{prefix}p50_ms_{rate}": r(p.pct(0.50)),
        f"{prefix}max_ms_{rate}": r(p.pct(1.0)),
    }


# -- the parts --------------------------------------------------------------------------------


def fresh_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=False)
    return path


def calibrate(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The probe on the writer's own folder: its floor, and whether it sees half-written files."""
    part(f"probe calibration: observer watching the writer's own tree, 1000 files/s for "
        f"{args.calibrate} s, no mirror")
    root = fresh_dir(work / "probe" / "src")
    seed_tree(root, 0, args.seed)
    p = run_phase("probe @1000/s", root, root, make_plan(1000 * args.calibrate, args.seed, "p"),
                  1000, "inotify", 10, None)
    floor = {f"probe_floor_{k}_ms": round(v, 2) for k, q in (("p50", 0.5), ("p99", 0.99),
                                                              ("max", 1.0))
             if (v := p.pct(q)) is not None}
    say(f"  floor: p50 {floor['probe_floor_p50_ms']} ms, p99 {floor['probe_floor_p99_ms']} ms, "
        f"max {floor['probe_floor_max_ms']} ms ({p.lost} lost, {p.overflows} overflows)")
    if p.lost:
        raise BenchError("the probe lost files on the writer's own tree: it cannot keep up")
    q = run_phase("probe half-written", root, root,
                  make_plan(SELFTEST_FILES, args.seed, "h", new_dirs=False), 50, "inotify", 10,
                  None, pause=0.02)
    say(f"  half-written self-test: {q.partial}/{q.files} files written in two halves 20 ms "
        f"apart were seen half-written ({q.lost} lost)")
    if q.partial < q.files or q.lost:
        raise BenchError("the probe does not see half-written files reliably")
    return {**floor, "probe_partial_selftest": f"{q.partial}/{q.files}"}


def latency(
    args: argparse.Namespace, work: Path, tool: str, rate: int, conf: Path | None
) -> Phase:
    root = work / f"{tool}-{rate}"
    src, dst = fresh_dir(root / "src"), fresh_dir(root / "dst")
    seed_tree(src, args.seed_files, args.seed)
    with ExitStack() as stack:
        t0 = time.perf_counter()
        if conf is None:
            mirror = start_lsyncd(stack, root, src, dst)
        else:
            mirror = start_tandem(stack, conf, root, src, dst)
        wait_mirrored(mirror, src, dst, START_TIMEOUT)
        part(f"{tool} @{rate} files/s for {args.seconds} s: started, initial pass over "
            f"{args.seed_files} seed files done in {time.perf_counter() - t0:.1f} s")
        plan = make_plan(rate * args.seconds, args.seed, f"r{rate}")
        p = run_phase(f"{tool} @{rate}/s", src, dst, plan, rate, "inotify", args.grace, mirror)
    show_phase(p, args.grace)
    if conf is None:  # what lsyncd's cp processes complained about (two copies of one file)
        errors = [line for line in tail(mirror.log, 1 << 24).splitlines() if "/bin/cp:" in line]
        p.notes["lsyncd_cp_errors"] = len(errors)
        if errors:
            say(f"    lsyncd's cp failed {len(errors)} times, e.g. {errors[0][-160:]}")
    return p


def burst(args: argparse.Namespace, work: Path, conf: Path) -> Phase:
    root = work / "tandem-burst"
    src, dst = fresh_dir(root / "src"), fresh_dir(root / "dst")
    seed_tree(src, args.seed_files, args.seed)
    with ExitStack() as stack:
        mirror = start_tandem(stack, conf, root, src, dst)
        wait_mirrored(mirror, src, dst, START_TIMEOUT)
        how = ("an inotify observer (queue overflows → a scan of what is missing) with a "
               f"{SAFETY_SCAN:.0f} s safety scan" if args.burst_probe == "inotify" else
               f"a poller listing the target every {POLL_INTERVAL * 1000:.0f} ms once the "
               "writer is done (every 250 ms while it writes)")
        part(f"tandem burst: {args.burst} files as fast as possible; {how}")
        plan = make_plan(args.burst, args.seed, "b")
        p = run_phase("tandem burst", src, dst, plan, 0, args.burst_probe, args.burst_wait,
                      mirror)
    show_phase(p, args.burst_wait)
    return p


def timed(argv: Sequence[str], log: Path, timeout: float, env: dict[str, str] | None = None,
          cwd: Path | None = None, loads: list[float] | None = None) -> float:
    """Wall seconds of one command; the other processes' share of the machine meanwhile is
    appended to ``loads``."""
    with open(log, "ab") as out:
        meter = LoadMeter()
        t0 = time.perf_counter()
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=timeout, env=env, cwd=cwd)
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"{argv[0]} took over {timeout:.0f} s: {tail(log)}") from exc
        t = time.perf_counter() - t0
        if loads is not None:
            loads.append(meter.share())
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {done.returncode}: {tail(log)}")
    return t


def check_copy(src: Path, dst: Path, who: str, rng: random.Random) -> None:
    """Same names and sizes, same mtimes (to the second), a sample of identical contents."""
    want, got = listing(src), listing(dst)
    if want != got:
        bad = len(set(want.items()) ^ set(got.items()))
        raise BenchError(f"{who}: the copy differs from the source ({bad} names/sizes differ)")
    names = sorted(want)
    stale = sum(int(os.stat(src / n).st_mtime) != int(os.stat(dst / n).st_mtime) for n in names)
    if stale:
        say(f"    WARNING: {who}: {stale} of {len(names)} files have a different mtime")
    for n in rng.sample(names, min(200, len(names))):
        if (src / n).read_bytes() != (dst / n).read_bytes():
            raise BenchError(f"{who}: {n} differs from the source")


def full_and_noop(args: argparse.Namespace, work: Path, conf: Path | None) -> dict[str, Any]:
    root = work / "full"
    src = fresh_dir(root / "src")
    t0 = time.perf_counter()
    plan = seed_tree(src, args.full_files, args.seed, new_dirs=True)
    os.sync()
    total = sum(plan.sizes)
    part(f"full sync: {args.full_files} files, {total / MIB:.0f} MiB in "
        f"{len({p.rsplit('/', 1)[0] for p in plan.paths})} folders (written in "
        f"{time.perf_counter() - t0:.1f} s, then sync; warm cache); {args.reps} rep(s), "
        f"order alternating")
    tools = ["rsync"] + (["tandem"] if conf else [])
    cmds: dict[str, Callable[[Path], list[str]]] = {
        "rsync": lambda d: ["rsync", "-a", f"{src}/", f"{d}/"],
        "tandem": lambda d: tandem_argv(conf or Path(), "sync", "full", "--from", str(src),
                                        "--to", str(d)),
    }
    env = {"rsync": None, "tandem": tandem_env()}
    log = root / "commands.log"
    times: dict[str, list[float]] = {t: [] for t in tools}
    durable: dict[str, list[float]] = {t: [] for t in tools}  # the copy plus a `sync` after it
    dsts: dict[str, Path] = {}
    rng = random.Random(args.seed)
    loads: list[float] = []
    for rep in range(1, args.reps + 1):
        for tool in tools[rep % len(tools):] + tools[: rep % len(tools)]:
            dst = fresh_dir(root / f"{tool}-{rep}")
            t = timed(cmds[tool](dst), log, 1800, env[tool], work, loads)
            flushed = time.perf_counter()
            os.sync()
            flush_s = time.perf_counter() - flushed
            check_copy(src, dst, tool, rng)
            times[tool].append(t)
            durable[tool].append(t + flush_s)
            dsts[tool] = dst
            say(f"  rep {rep}: {tool:<6} full {t:7.2f} s  ({args.full_files / t:8.0f} files/s; "
                f"then sync {flush_s:.2f} s; {noisy(loads[-1])})")
    noop: dict[str, list[float]] = {t: [] for t in tools}
    for rep in range(1, args.noop_reps + 1):
        for tool in tools[rep % len(tools):] + tools[: rep % len(tools)]:
            noop[tool].append(timed(cmds[tool](dsts[tool]), log, 600, env[tool], work, loads))
        say(f"  no-op rep {rep}: " + ", ".join(f"{t} {noop[t][-1]:.3f} s" for t in tools)
            + f" ({noisy(max(loads[-len(tools):]))})")
    for tool in tools:
        check_copy(src, dsts[tool], f"{tool} (after the no-op runs)", rng)
    med = {t: statistics.median(v) for t, v in times.items()}
    dmed = {t: statistics.median(v) for t, v in durable.items()}
    nmed = {t: statistics.median(v) for t, v in noop.items()}
    out: dict[str, Any] = {
        "rsync_full_s": round(med["rsync"], 3), "rsync_noop_s": round(nmed["rsync"], 3),
        "rsync_full_durable_s": round(dmed["rsync"], 3),
        "full_files": args.full_files, "full_mib": round(total / MIB, 1),
        "full_other_load_max": round(max(loads), 3),
    }
    if conf:
        out.update({
            "full_ratio": round(med["tandem"] / med["rsync"], 3),
            "noop_ratio": round(nmed["tandem"] / nmed["rsync"], 3),
            "full_s": round(med["tandem"], 3), "noop_s": round(nmed["tandem"], 3),
            "full_durable_s": round(dmed["tandem"], 3),
            "full_ratio_durable": round(dmed["tandem"] / dmed["rsync"], 3),
        })
        startup = [timed(tandem_argv(conf, "config", "show"), log, 60, tandem_env())
                   for _ in range(1 if args.quick else 3)]
        out["tandem_cli_startup_s"] = round(statistics.median(startup), 3)
        for key, name, m in (("full_ratio", "full", med), ("noop_ratio", "no-op", nmed)):
            say(f"  {name:<6} ratio {out[key]:.3f}: tandem {m['tandem']:.3f} s, rsync "
                f"{m['rsync']:.3f} s (medians; target ≤ {TARGETS[key]}: "
                f"{verdict(out[key], TARGETS[key])})")
        say(f"  full to durable (each copy plus a `sync` after it; tandem flushes before it "
            f"exits, rsync leaves its data in the page cache): ratio "
            f"{out['full_ratio_durable']:.3f}: tandem {dmed['tandem']:.3f} s, rsync "
            f"{dmed['rsync']:.3f} s (not an issue key; shown for what each one promises)")
        say(f"  (tandem CLI start-up alone, `tandem config show`: "
            f"{out['tandem_cli_startup_s']:.3f} s)")
    else:
        say(f"  rsync alone (medians): full {med['rsync']:.3f} s, no-op {nmed['rsync']:.3f} s")
    return out


def verdict(value: float | None, target: float) -> str:
    return "ok" if value is not None and value <= target else "MISSED"


# -- main -------------------------------------------------------------------------------------


def fs_of(path: Path) -> tuple[str, str]:
    """(filesystem type, device) of the mount holding ``path``."""
    best = ("", "?", "?")
    real = str(path.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        dev, mnt, fstype = line.split()[:3]
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
            best = (mnt, fstype, dev)
    return best[1], best[2]


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    needs = {"lsyncd": ("lsyncd", "rsync"), "rsync": ("rsync",), "tandem": ("rsync",)}
    for tool in sorted({t for part in args.only for t in needs[part]}):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not installed (./dev bench sync_bench installs it, or "
                             f"apt-get install -y {tool})")
    conf: Path | None = None
    if "tandem" in args.only:
        conf = work / "tandem.toml"
        conf.write_text('[log]\nlevel = "warning"\n')
        if (why := tandem_missing(conf)) is not None:
            raise BenchError(f"tandem: {why}; run the other parts with --only lsyncd rsync")
    out: dict[str, Any] = {}
    phases: dict[str, Phase] = {}
    if "tandem" in args.only or "lsyncd" in args.only:
        out.update(calibrate(args, work))
    if "tandem" in args.only:
        assert conf is not None
        for rate in (1000, 200):
            phases[f"tandem{rate}"] = p = latency(args, work, "tandem", rate, conf)
            out.update(latency_keys(p, "", rate))
            suffix = "" if rate == 1000 else f"_{rate}"
            out[f"lost{suffix}"], out[f"partial{suffix}"] = p.lost, p.partial
        b = phases["burst"] = burst(args, work, conf)
        out.update({"burst_drain_s": None if b.drain_s is None else round(b.drain_s, 3),
                    "burst_files": b.files, "burst_write_s": round(b.write_s, 2),
                    "burst_lost": b.lost})
    if "lsyncd" in args.only:
        p = phases["lsyncd1000"] = latency(args, work, "lsyncd", 1000, None)
        out.update(latency_keys(p, "lsyncd_", 1000))
        out.update({"lsyncd_lost": p.lost, "lsyncd_partial": p.partial,
                    "lsyncd_delivered_p99_ms_1000": percentile_delivered(p, 0.99)})
    if "rsync" in args.only or "tandem" in args.only:
        out.update(full_and_noop(args, work, conf))
    for name, p in phases.items():
        out.setdefault("detail", {})[name] = {
            "files": p.files, "write_s": round(p.write_s, 3),
            "writer_behind_ms": round(p.behind_ms, 2), "waited_s": round(p.wait_s, 2),
            "drain_s": None if p.drain_s is None else round(p.drain_s, 3),
            "observer_events": p.events, "observer_overflows": p.overflows,
            "found_by_final_pass": p.found_late, "found_by_safety_scan": p.found_by_scan,
            "mirror_cpu_s": round(p.cpu_s, 2),
            "writer_cpu_s": round(p.probe_cpu_s[0], 2), "other_load": round(p.other_load, 3),
            "observer_cpu_s": round(p.probe_cpu_s[1], 2), **p.notes,
        }
    loads = [p.other_load for p in phases.values()] + [out.get("full_other_load_max", 0.0)]
    out["other_load_max"] = round(max(loads), 3)
    summary(out, args)
    return out


def percentile_delivered(p: Phase, q: float) -> float | None:
    got = sorted(v for v in p.latencies if v is not None)
    return round(got[max(0, math.ceil(q * len(got)) - 1)], 2) if got else None


def summary(out: dict[str, Any], args: argparse.Namespace) -> None:
    say("")
    say("summary (targets from the issue):")
    for key, target in TARGETS.items():
        if key not in out:
            continue
        v = out[key]
        shown = "null (a file was never delivered)" if v is None else f"{v}"
        say(f"  {key:<14} {shown:<10} target ≤ {target}: {verdict(v, target)}")
    for key in ("lsyncd_p50_ms_1000", "lsyncd_p99_ms_1000", "lsyncd_max_ms_1000",
                "lsyncd_lost", "lsyncd_partial"):
        if key in out:
            v = out[key]
            say(f"  {key:<20} {f'> {args.grace:.0f} s (never delivered)' if v is None else v}")
    say(f"  other processes used at most {out['other_load_max']:.0%} of the machine during a "
        f"measurement" + ("  (NOISY: the figures may be worse than on a quiet machine)"
                          if out["other_load_max"] > NOISY else ""))


def remove(work: Path) -> float:
    """Deletes ``work``, its sub-folders in 8 threads (several times faster than one on ext4
    mounted with ``discard``, where each delete waits on the journal); returns the seconds."""
    t0 = time.perf_counter()
    tops: list[str] = []

    def collect(path: str, depth: int) -> None:  # work/<phase>/<src|dst>/<images|news>/<x>
        with suppress(OSError), os.scandir(path) as entries:
            for e in entries:
                if not e.is_dir(follow_symlinks=False):
                    continue
                if depth == 0:
                    tops.append(e.path)
                else:
                    collect(e.path, depth - 1)

    collect(str(work), 3)
    with ThreadPoolExecutor(8) as pool:
        for _ in pool.map(lambda p: shutil.rmtree(p, ignore_errors=True), tops):
            pass
    shutil.rmtree(work, ignore_errors=True)
    return time.perf_counter() - t0


def interrupted(signum: int, _frame: object) -> None:
    """SIGTERM ends the run like Ctrl-C: the ``finally`` blocks stop what was started here."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_writer"]:
        plan, root, times, rate, pause = argv[1:6]
        return writer_main(Path(plan), Path(root), Path(times), float(rate), float(pause))
    if argv[:1] == ["_observer"]:
        mode, plan, root, out = argv[1:5]
        return observer_main(mode, Path(plan), Path(root), Path(out))

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small run, under a minute")
    p.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS),
                   help="parts to run: tandem (latency, burst, full/no-op vs rsync), lsyncd "
                        "(latency at 1000/s), rsync (full/no-op alone); default all")
    p.add_argument("--workdir", type=Path,
                   help="parent of the work directory, kept (default: a temp dir, removed)")
    p.add_argument("--seconds", type=int, help="seconds of writing per rate (full 10, quick 5)")
    p.add_argument("--grace", type=float,
                   help="seconds to wait for deliveries after the last write (full 60, quick 5)")
    p.add_argument("--burst", type=int, help="files in the burst (full 20000, quick 5000)")
    p.add_argument("--burst-wait", type=float, help="seconds to wait for the burst to drain "
                                                    "(full 120, quick 30)")
    p.add_argument("--burst-probe", choices=["inotify", "poll"], default="inotify",
                   help="how the burst's target is watched (default inotify: polling 20,000 "
                        "names costs a CPU the mirror needs on a small machine)")
    p.add_argument("--seed-files", type=int, help="files in the tree before each latency phase "
                                                  "(full 2000, quick 200)")
    p.add_argument("--full-files", type=int, help="files of the full sync (full 50000, quick "
                                                  "5000)")
    p.add_argument("--reps", type=int, help="full-sync reps (full 3, quick 1)")
    p.add_argument("--noop-reps", type=int, help="no-op reps (full 5, quick 3)")
    p.add_argument("--calibrate", type=int, help="seconds of probe calibration (full 5, quick 1)")
    p.add_argument("--seed", type=int, default=20240501)
    args = p.parse_args(argv)
    q = args.quick
    args.seconds = args.seconds or (5 if q else 10)
    args.grace = args.grace if args.grace is not None else (5.0 if q else 60.0)
    args.burst = args.burst or (5_000 if q else 20_000)
    args.burst_wait = args.burst_wait or (30.0 if q else 120.0)
    args.seed_files = args.seed_files if args.seed_files is not None else (200 if q else 2000)
    args.full_files = args.full_files or (5_000 if q else 50_000)
    args.reps = args.reps or (1 if q else 3)
    args.noop_reps = args.noop_reps or (3 if q else 5)
    args.calibrate = args.calibrate or (1 if q else 5)

    base = args.workdir
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sync-bench-", dir=base)).resolve()
    fstype, dev = fs_of(work)
    say(f"sync_bench ({'quick' if q else 'full'}; parts: {' '.join(args.only)}): work dir "
        f"{work} ({fstype} on {dev}), {os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    say(f"workload: sizes lognormal(median {SIZE_MEDIAN // KIB} KiB, sigma {SIZE_SIGMA}) "
        f"clipped to {SIZE_MIN // KIB}–{SIZE_MAX // KIB} KiB; {len(leaf_dirs())} leaf folders; "
        f"seed {args.seed}")
    t0 = time.perf_counter()
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with it ignored
    try:
        if fstype in ("tmpfs", "ramfs"):
            raise BenchError(f"{work} is on {fstype}; give --workdir on a real disk")
        result: dict[str, Any] = {"mode": "quick" if q else "full", "parts": args.only}
        result.update(run(args, work))
    except BenchError as exc:
        print(f"sync_bench: FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if base is None:
            say(f"cleanup: work dir removed in {remove(work):.1f} s")
    result.update({"seconds": round(time.perf_counter() - t0, 1), "grace_s": args.grace,
                   "rate_seconds": args.seconds, "targets": TARGETS})
    say(f"done in {result['seconds']} s")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

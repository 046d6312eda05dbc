"""``tandem sync run --from DIR --to DIR`` as a real process on real inotify: every way a
crawler changes a tree, then ``verify`` (content hashes of both sides) must find zero
differences. Also: a queue overflow, ``kill -9`` mid-burst, a target that turns read-only,
and ``sync full`` with and without ``--checksum``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import Proc, write_config
from test_master import tmpfs

from syncer.verify import Difference, verify_dirs

pytestmark = pytest.mark.timeout(120)


class Site:
    def __init__(self, tmp: Path, target: Path | None = None) -> None:
        self.tmp = tmp
        self.config = write_config(tmp)
        self.src = tmp / "src"
        self.dst = target or tmp / "dst"
        self.state = tmp / "state"
        self.src.mkdir(exist_ok=True)
        self.dst.mkdir(exist_ok=True)
        self.proc: Proc | None = None

    def start(self) -> Proc:
        self.proc = Proc(["--config", str(self.config), "sync", "run", "--from", str(self.src),
                          "--to", str(self.dst), "--state-dir", str(self.state)], self.tmp)
        self.proc.wait_event("sync.reconciled")
        return self.proc

    def status(self) -> dict[str, object]:
        return dict(json.loads((self.state / "status.json").read_text()))

    def counter(self, name: str) -> int:
        counters = self.status()["counters"]
        assert isinstance(counters, dict)
        return int(counters[name])

    def converge(self, within: float = 20.0) -> None:
        """Wait until verify finds no difference and the mirror says it is idle."""
        deadline = time.monotonic() + within
        while True:
            diffs = []
            if self.status().get("idle"):  # cheap; then the hashes
                diffs = asyncio.run(verify_dirs(self.src, self.dst))
                if not diffs:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"no convergence: {[str(d) for d in diffs[:20]]} "
                                     f"{self.status()}")
            time.sleep(0.1)

    def full(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "origin", "--config", str(self.config), "sync", "full",
             "--from", str(self.src), "--to", str(self.dst), "--state-dir", str(self.state),
             *extra], capture_output=True, text=True, timeout=60, cwd=self.tmp, check=True)

    def verify(self) -> list[Difference]:
        return asyncio.run(verify_dirs(self.src, self.dst))


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path)
    try:
        yield s
    finally:
        if s.proc is not None:
            s.proc.stop()


def write(path: Path, data: bytes, mtime_ns: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def test_everyday_changes_end_equal(site: Site, tmp_path: Path) -> None:
    write(site.src / "images/old.jpg", b"before the syncer started")
    site.start()
    site.converge()
    # Direct writes and the crawler's temp-name-then-rename.
    write(site.src / "news/direct.html", b"<p>direct</p>")
    tmp = site.src / "news/.crawl.tmp"
    write(tmp, b"<p>renamed into place</p>")
    os.rename(tmp, site.src / "news/renamed.html")
    # Rapid rewrites: the last content wins.
    for i in range(30):
        (site.src / "news/hot.html").write_bytes(b"version %d" % i)
    # A folder full of files renamed; one moved in from outside; one moved out.
    for i in range(50):
        write(site.src / f"gallery/{i:03}.jpg", os.urandom(2000))
    write(site.src / "leaving/x.jpg", b"moves out")
    write(tmp_path / "outside/in/y.jpg", b"moves in")
    site.converge()
    renamed_before = site.counter("renamed")
    copied_before = site.counter("files_copied")
    os.rename(site.src / "gallery", site.src / "gallery-2026")
    os.rename(tmp_path / "outside/in", site.src / "moved-in")
    os.rename(site.src / "leaving", tmp_path / "gone")
    # Deletes, a symbolic link inside the tree, a name that is not UTF-8, a fifo (skipped).
    (site.src / "images/old.jpg").unlink()
    os.symlink("../news/direct.html", site.src / "images/link.html")
    write(site.src / os.fsdecode(b"images/caf\xe9.jpg"), b"latin-1 name")
    os.mkfifo(site.src / "fifo")
    time.sleep(0.3)
    (site.src / "fifo").unlink()
    site.converge()
    assert (site.dst / "news/hot.html").read_bytes() == b"version 29"
    assert (site.dst / os.fsdecode(b"images/caf\xe9.jpg")).read_bytes() == b"latin-1 name"
    assert os.readlink(site.dst / "images/link.html") == "../news/direct.html"
    assert not (site.dst / "leaving").exists() and not (site.dst / "gallery").exists()
    # The folder rename was a rename on the target, not 50 new copies.
    assert site.counter("renamed") > renamed_before
    assert site.counter("files_copied") - copied_before < 10
    leftovers = [p for p in site.dst.rglob("*") if p.name.startswith(".tandem-sync.")]
    assert leftovers == []


def test_mkdir_p_twelve_levels_with_a_file_at_each(site: Site) -> None:
    site.start()
    deep = site.src.joinpath(*(f"l{i}" for i in range(12)))
    deep.mkdir(parents=True)
    levels = [deep.parents[i] for i in range(11, -1, -1)] + [deep]

    def put(folder: Path) -> None:
        (folder / "page.html").write_bytes(folder.name.encode() * 100)

    threads = [threading.Thread(target=put, args=(f,)) for f in levels[1:]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    site.converge()
    assert (deep / "page.html").read_bytes() == (site.dst / deep.relative_to(site.src)
                                                 / "page.html").read_bytes()


def test_a_file_growing_while_copied_is_never_seen_half_written(site: Site) -> None:
    """The target shows only states the source had at a close(): the observer polls the
    target while the writer closes and re-opens the file to append."""
    site.start()
    path, target = site.src / "big.bin", site.dst / "big.bin"
    closed: set[bytes] = set()
    content = os.urandom(8 << 20)
    path.write_bytes(content)
    closed.add(content)
    seen: set[int] = set()
    bad: list[int] = []
    done = threading.Event()

    def observe() -> None:
        while not done.is_set():
            try:
                data = target.read_bytes()
            except FileNotFoundError:
                continue
            seen.add(len(data))
            if data not in closed:
                bad.append(len(data))

    watcher = threading.Thread(target=observe)
    watcher.start()
    try:
        for _ in range(8):
            piece = os.urandom(1 << 20)
            with open(path, "ab") as f:
                for i in range(0, len(piece), 64 << 10):  # slow appends: the copy overlaps
                    f.write(piece[i:i + (64 << 10)])
                    f.flush()
                    time.sleep(0.002)
                content += piece
                closed.add(content)
        site.converge()
    finally:
        done.set()
        watcher.join()
    assert bad == [], f"target seen with sizes that were never closed: {sorted(set(bad))}"
    assert target.read_bytes() == content


def test_a_file_created_then_opened_later_is_never_mirrored_empty(site: Site) -> None:
    """The kernel reports a file's creation before its writer's ``open`` holds write access,
    and in that instant a read lease can be had on the empty file (``tree.just_created``).
    ``os.mknod`` makes that instant last: the file exists, empty and open by nobody, until its
    writer opens it 0.3 s later. The target must never show it empty, and ends with it whole."""
    write(site.src / "news/first.html", b"<p>first</p>")
    site.start()
    site.converge()
    path, target = site.src / "news/slow.html", site.dst / "news/slow.html"
    os.mknod(path, 0o644 | stat.S_IFREG)
    seen_empty = False
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            seen_empty |= target.stat().st_size == 0
        time.sleep(0.002)
    with open(path, "wb") as f:
        f.write(b"<p>whole</p>")
    site.converge()
    assert not seen_empty
    assert target.read_bytes() == b"<p>whole</p>"


def test_same_size_rewrite_with_old_mtime(site: Site) -> None:
    """Caught by the running mirror (the close is an event); when the mirror was not running,
    ``sync full`` by size and mtime cannot see it, ``--checksum`` and ``verify`` do."""
    old = 1_600_000_000_000_000_000
    write(site.src / "a.jpg", b"A" * 1000, old)
    write(site.src / "b.jpg", b"B" * 1000, old)
    site.start()
    site.converge()
    write(site.src / "a.jpg", b"a" * 1000, old)  # same size, mtime put back
    site.converge()
    assert (site.dst / "a.jpg").read_bytes() == b"a" * 1000
    assert site.proc is not None
    site.proc.stop()
    site.proc = None
    write(site.src / "b.jpg", b"b" * 1000, old)
    site.full()
    diffs = site.verify()
    assert [(d.path, d.kind) for d in diffs] == [(b"b.jpg", "content")]
    out = site.full("--checksum")
    assert "1 file(s) copied" in out.stdout, out.stdout
    assert site.verify() == []


def test_sync_full_copies_deletes_extras_only_when_asked(site: Site) -> None:
    for i in range(300):
        write(site.src / f"n/{i % 7}/{i}.html", b"<p>%d</p>" % i)
    write(site.dst / "stray.txt", b"only on the target")
    out = site.full()
    assert "300 file(s) copied" in out.stdout and (site.dst / "stray.txt").exists()
    assert [d.kind for d in site.verify()] == ["extra"]
    out = site.full("--delete")
    assert "0 file(s) copied" in out.stdout and "1 deleted" in out.stdout, out.stdout
    assert site.verify() == []


def test_burst_that_overflows_the_kernel_queue(site: Site) -> None:
    """20,000 new files while the syncer is stopped (SIGSTOP): far more events than
    fs.inotify.max_queued_events, so the kernel drops them and says so; the mirror rescans."""
    for d in range(100):  # watched folders: every new file in them is two events
        (site.src / f"burst/{d:02}").mkdir(parents=True)
    proc = site.start()
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        for d in range(100):
            folder = site.src / f"burst/{d:02}"
            for i in range(200):
                (folder / f"{i}.jpg").write_bytes(b"%d/%d" % (d, i))
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert limit < 20_000 * 2
    site.converge(within=60)
    assert site.counter("overflows") >= 1


def test_kill9_mid_burst_resumes_without_copying_everything(site: Site) -> None:
    """The syncer is killed while a writer is still writing and after it has mirrored some
    files, so the kill always lands mid-burst; the restarted one copies what is missing."""
    proc = site.start()
    stop, written = threading.Event(), [0]

    def writer() -> None:
        while not stop.is_set() and written[0] < 20_000:
            i = written[0]
            write(site.src / f"b/{i % 40}/{i}.jpg", os.urandom(3000))
            written[0] += 1

    def mirrored() -> int:
        return sum(1 for p in site.dst.rglob("*.jpg") if not p.name.startswith(".tandem-sync."))

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while mirrored() < 200:
            assert time.monotonic() < deadline and thread.is_alive(), (written, mirrored())
            time.sleep(0.01)
        proc.kill9()
        assert thread.is_alive(), "the writer must still be writing when the syncer dies"
    finally:
        stop.set()
        thread.join()
    total, copied = written[0], mirrored()
    assert 200 <= copied < total
    site.start()
    site.converge(within=60)
    assert site.counter("files_copied") <= total - copied + 50
    assert [p for p in site.dst.rglob("*") if p.name.startswith(".tandem-sync.")] == []


def test_target_read_only_then_writable_loses_nothing(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt", "64m") as mnt:
        (mnt / "legacy").mkdir()
        site = Site(tmp_path, target=mnt / "legacy")
        site.start()
        try:
            write(site.src / "first.jpg", b"1")
            site.converge()
            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
            try:
                for i in range(20):
                    write(site.src / f"during/{i}.jpg", b"written while read-only %d" % i)
                deadline = time.monotonic() + 10
                while "read-only" not in str(site.status()["last_error"]):
                    assert time.monotonic() < deadline, site.status()
                    time.sleep(0.1)
                time.sleep(1.0)
                assert float(site.status()["lag_seconds"]) > 0.5
            finally:
                subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)
            site.converge(within=30)
            assert float(site.status()["lag_seconds"]) == 0.0
        finally:
            assert site.proc is not None
            site.proc.stop()
            shutil.rmtree(mnt / "legacy", ignore_errors=True)

"""The hard-link view on the volumes (the nginx fast path's files) and the chunk mtimes it
relies on: real volume directories, real hard links, the master's real view task."""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import json
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from procs import start_master, write_config
from test_master import cluster_cfg, copy_path, data

from cluster import background
from cluster.master import Master
from cluster.meta import NS, Entry
from cluster.view import CLEAN, TMP, Stopped, View, ViewVolume, view_root
from cluster.viewproc import _Pipe

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def m(tmp_path: Path) -> AsyncIterator[Master]:
    async with Master(cluster_cfg(tmp_path), background=False) as master:
        yield master


def link(m: Master, vid: int, path: str) -> Path:
    return Path(os.fsdecode(view_root(m.volumes[vid].path))) / path.lstrip("/")


def linked(m: Master, path: str) -> set[int]:
    """Volumes whose view has ``path``."""
    return {vid for vid in m.volumes if link(m, vid, path).is_file()}


async def settle(m: Master, until: Callable[[], bool], within: float = 2.0) -> None:
    """Wait until ``until()`` is true (the view applies commits within milliseconds)."""
    deadline = time.monotonic() + within
    while not until():
        assert time.monotonic() < deadline, "the view did not catch up"
        await asyncio.sleep(0.01)


async def holders(m: Master, path: str) -> set[int]:
    _, infos = await m.fileinfo(path)
    (info,) = infos
    return {cp.volume for cp in info.copies}


async def test_a_put_is_linked_on_every_volume_holding_a_copy(m: Master) -> None:
    body = data(5000)
    e = await m.put("/images/a.jpg", body, mtime_ns=1_700_000_000_123_456_789)
    want = await holders(m, "/images/a.jpg")
    assert len(want) == 2  # default goal 2
    await settle(m, lambda: linked(m, "/images/a.jpg") == want)
    _, (info,) = await m.fileinfo("/images/a.jpg")
    for vid in want:
        st = link(m, vid, "/images/a.jpg").stat()
        chunk = copy_path(m, vid, info.chunk).stat()
        assert (st.st_ino, st.st_dev) == (chunk.st_ino, chunk.st_dev)  # the chunk file itself
        assert st.st_mtime_ns == e.mtime_ns == 1_700_000_000_123_456_789
        assert link(m, vid, "/images/a.jpg").read_bytes() == body


async def test_overwrite_relinks_and_same_size_same_second_moves_mtime(m: Master) -> None:
    t = 1_700_000_000 * NS
    await m.put("/n/index.html", b"A" * 100, mtime_ns=t)
    await settle(m, lambda: bool(linked(m, "/n/index.html")))
    e2 = await m.put("/n/index.html", b"B" * 100, mtime_ns=t + 500_000_000)
    assert e2.mtime_ns == t + NS  # same size, same second, other bytes: the next second
    same = await m.put("/n/index.html", b"B" * 100, mtime_ns=t + NS)
    assert same.mtime_ns == t + NS  # identical bytes keep their validators
    other = await m.put("/n/index.html", b"C" * 101, mtime_ns=t)
    assert other.mtime_ns == t  # another size: the ETag differs anyway

    def new_bytes() -> bool:
        vids = linked(m, "/n/index.html")
        try:  # a link of an older version may go between the listing and the read
            return bool(vids) and all(
                link(m, v, "/n/index.html").read_bytes() == b"C" * 101 for v in vids
            )
        except FileNotFoundError:
            return False

    await settle(m, new_bytes)
    assert (await m.stat("/n/index.html")).mtime_ns == t


async def test_rm_mv_snapshot_and_trees(m: Master) -> None:
    for i in range(3):
        await m.put(f"/news/2026/{i}.html", data(300, i))
    await settle(m, lambda: all(linked(m, f"/news/2026/{i}.html") for i in range(3)))
    await m.rm("/news/2026/0.html")
    await settle(m, lambda: not linked(m, "/news/2026/0.html"))
    await m.mv("/news/2026", "/news/archive")
    await settle(m, lambda: bool(linked(m, "/news/archive/1.html")))
    assert not any(link(m, v, "/news/2026").exists() for v in m.volumes)  # folders go too
    await m.snapshot("/news/archive", "/snap")
    await settle(m, lambda: bool(linked(m, "/snap/2.html")))
    assert linked(m, "/news/archive/2.html")
    await m.rm("/news", recursive=True)
    await settle(m, lambda: not any(link(m, v, "/news").exists() for v in m.volumes))
    assert linked(m, "/snap/1.html")  # the snapshot is untouched


async def test_a_file_replaced_by_a_directory_and_back(m: Master) -> None:
    await m.put("/x", b"file")
    await settle(m, lambda: bool(linked(m, "/x")))
    await m.rm("/x")
    await m.put("/x/inner.txt", b"inner")
    await settle(m, lambda: bool(linked(m, "/x/inner.txt")))
    await m.rm("/x", recursive=True)
    await m.put("/x", b"file again")
    await settle(m, lambda: bool(linked(m, "/x")))


async def test_only_single_chunk_files_are_in_the_view(m: Master) -> None:
    await m.put("/big.bin", data(3 * m.cfg.chunk_size))  # three chunks: the origin serves it
    await m.put("/empty.txt", b"")
    await m.put("/one.bin", b"1")
    await settle(m, lambda: bool(linked(m, "/one.bin")))
    assert not linked(m, "/big.bin") and not linked(m, "/empty.txt")


async def test_large_single_chunk_file_keeps_its_mtime(tmp_path: Path) -> None:
    cfg = cluster_cfg(tmp_path, chunk_size=4 << 20)
    async with Master(cfg, background=False) as m:
        e = await m.put("/large.bin", data(2 << 20), mtime_ns=1_600_000_000 * NS)
        _, (info,) = await m.fileinfo("/large.bin")
        for cp in info.copies:  # written before the mtime was known, then stamped
            assert copy_path(m, cp.volume, info.chunk).stat().st_mtime_ns == e.mtime_ns


async def test_replication_keeps_the_mtime(m: Master) -> None:
    await m.setgoal("/", 1)
    e: Entry = await m.put("/r.bin", data(1000), mtime_ns=1_650_000_000 * NS)
    await m.setgoal("/r.bin", 3)
    await background.replicate_pass(m)
    await background.replicate_pass(m)
    _, (info,) = await m.fileinfo("/r.bin")
    assert len(info.copies) == 3
    for cp in info.copies:
        assert copy_path(m, cp.volume, info.chunk).stat().st_mtime_ns == e.mtime_ns


async def test_a_dropped_bad_copy_is_unlinked_and_never_served(m: Master) -> None:
    body = data(4000, 7)
    await m.put("/images/bad.jpg", body)
    want = await holders(m, "/images/bad.jpg")
    await settle(m, lambda: linked(m, "/images/bad.jpg") == want)
    _, (info,) = await m.fileinfo("/images/bad.jpg")
    victim = min(want)
    p = copy_path(m, victim, info.chunk)
    raw = bytearray(p.read_bytes())
    raw[10] ^= 0xFF
    p.write_bytes(raw)  # in place: the view link is the same inode, so it is corrupt too
    for _ in range(4):  # reads rotate over the copies: one of them meets the bad copy
        assert await m.cat("/images/bad.jpg") == body
    assert victim not in await holders(m, "/images/bad.jpg")
    await settle(m, lambda: victim not in linked(m, "/images/bad.jpg"))
    for vid in linked(m, "/images/bad.jpg"):
        assert link(m, vid, "/images/bad.jpg").read_bytes() == body


def view_starts(logs: list[MutableMapping[str, Any]]) -> list[str]:
    return [e["event"] for e in logs if e["event"] in ("view.rebuilt", "view.resumed")]


async def start_and_stop(cfg: Any, logs: list[MutableMapping[str, Any]]) -> None:
    """Run a master until its view has started (rebuilt or resumed), then stop it."""
    before = len(view_starts(logs))
    async with Master(cfg, background=False) as m:
        await settle(m, lambda: len(view_starts(logs)) > before)


async def test_a_clean_stop_lets_the_next_start_resume_instead_of_rebuilding(
    tmp_path: Path,
) -> None:
    """A clean stop records where the views are (``view.clean``); the next start takes the
    file away before anything else (a crash while running leaves none: it rebuilds) and
    applies only the changes since. Other volumes, or a changelog that no longer holds those
    changes, mean a rebuild."""
    cfg = cluster_cfg(tmp_path)
    clean = cfg.meta_dir / CLEAN
    # One capture for the whole test: loggers are cached on first use.
    with structlog.testing.capture_logs() as logs:
        async with Master(cfg, background=False) as m:
            await m.put("/a.txt", b"a")
            await settle(m, lambda: bool(linked(m, "/a.txt")))
        assert clean.exists()
        async with Master(cfg, background=False) as m:
            assert not clean.exists(), "a running master must leave no clean-stop record"
            await m.put("/b.txt", b"b")  # changes after a resume are followed as ever
            await settle(m, lambda: bool(linked(m, "/b.txt")) and bool(linked(m, "/a.txt")))
        assert view_starts(logs) == ["view.rebuilt", "view.resumed"]

        fewer = dataclasses.replace(cfg, volumes=cfg.volumes[:2])
        state = json.loads(clean.read_text())
        for run_cfg, left in (
            (fewer, state),
            (cfg, {**state, "applied": -5}),  # the changes since were trimmed
            (cfg, "{not json"),
        ):
            clean.write_text(left if isinstance(left, str) else json.dumps(left))
            await start_and_stop(run_cfg, logs)
    assert view_starts(logs) == ["view.rebuilt", "view.resumed"] + ["view.rebuilt"] * 3


def children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        out.update(int(c) for c in (task / "children").read_text().split())
    return out


async def test_a_view_process_killed_is_started_again(m: Master) -> None:
    assert m.view is not None
    first = m.view.pid
    assert first is not None and first in children(os.getpid())
    os.kill(first, signal.SIGKILL)
    await settle(m, lambda: m.view is not None and m.view.pid not in (None, first), within=10)
    await m.put("/after.txt", b"linked by the new view process")
    await settle(m, lambda: bool(linked(m, "/after.txt")), within=10)


async def test_messages_wait_for_a_busy_view_process_and_none_is_lost(m: Master) -> None:
    """A view process too busy to read (stopped here) fills its pipe: the master never
    blocks, keeps what the pipe cannot take, and the view gets all of it, in order, once it
    reads again — here a sweep after hundreds of commits."""
    await m.put("/a.txt", b"a")
    want = await holders(m, "/a.txt")
    await settle(m, lambda: linked(m, "/a.txt") == want)
    assert m.view is not None and m.view.pid is not None
    pid = m.view.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        fcntl.fcntl(m.view._to, fcntl.F_SETPIPE_SZ, 4096)  # a pipe that fills soon
        for i in range(400):
            await m.put(f"/many/{i}", b"x")  # a commit each, and a wake-up while there is room
        assert m.view._out, "the pipe never filled"
        _, (info,) = await m.fileinfo("/a.txt")
        victim = min(want)
        await m.drop_copies(info.chunk, [m.volumes[victim]])  # its link must go: a sweep
    finally:
        os.kill(pid, signal.SIGCONT)
    await settle(m, lambda: linked(m, "/a.txt") == want - {victim}, within=10)
    await settle(m, lambda: all(linked(m, f"/many/{i}") for i in range(400)), within=10)


async def test_a_rebuild_ends_between_two_folders_when_a_stop_is_asked(tmp_path: Path) -> None:
    """A stop in the middle of a rebuild (a million files take 44 s here) ends it between
    two folders (``Stopped``); one not asked to stop links everything."""
    cfg = cluster_cfg(tmp_path, view=False)
    async with Master(cfg, background=False) as m:
        for i in range(20):
            await m.put(f"/d{i}/f", b"x")
        vols = {vid: ViewVolume(v.path) for vid, v in m.volumes.items()}
    view = View(cfg.meta_dir, cfg.default_goal, cfg.default_trash_time, vols)
    asked = 0

    def stop_after_five() -> bool:
        nonlocal asked
        asked += 1
        return asked > 5

    view.stopping = stop_after_five
    with pytest.raises(Stopped):
        view.rebuild()
    views = [Path(os.fsdecode(view_root(v.path))) for v in vols.values()]

    def linked_dirs() -> int:
        return sum(any((root / f"d{i}/f").is_file() for root in views) for i in range(20))

    assert linked_dirs() < 20
    view.stopping = lambda: False
    view.rebuild()
    assert linked_dirs() == 20
    view.close()


def test_a_stop_message_is_seen_without_losing_the_others() -> None:
    """``_Pipe.stopping`` reads what came without waiting; ``read`` then returns it all, in
    order, and a closed pipe counts as a stop."""
    r, w = os.pipe()
    pipe = _Pipe(r)
    assert not pipe.stopping()
    os.write(w, b'{"op": "sweep", "volumes": [1]}\n{"op": "st')
    assert not pipe.stopping()
    os.write(w, b'op"}\n')
    assert pipe.stopping()
    assert [m["op"] for m in pipe.read(0)] == ["sweep", "stop"]
    os.close(w)
    assert pipe.stopping() and pipe.eof
    os.close(r)


def test_the_view_process_dies_with_a_master_killed(tmp_path: Path) -> None:
    """A real master process (``tandem cluster serve``) killed with SIGKILL takes its view
    process with it (``PR_SET_PDEATHSIG``, and the end of its pipe): two could otherwise keep
    the same views."""
    proc, _ = start_master(write_config(tmp_path))
    try:
        deadline = time.monotonic() + 10
        while not (kids := children(proc.pid)):
            assert time.monotonic() < deadline, "no view process"
            time.sleep(0.05)
    finally:
        proc.kill9()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{k}").exists() and "Z" not in _state(k) for k in kids):
        assert time.monotonic() < deadline, f"view process {kids} outlived its master"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


async def test_restart_rebuilds_the_view_and_clears_leftovers(tmp_path: Path) -> None:
    cfg = cluster_cfg(tmp_path)
    async with Master(cfg, background=False) as m:
        await m.put("/keep.txt", b"keep")
        await settle(m, lambda: bool(linked(m, "/keep.txt")))
        vid = min(linked(m, "/keep.txt"))
        stray = link(m, vid, "/gone.txt")
        leftover = link(m, vid, "/" + TMP + "abc")
    async with Master(dataclasses.replace(cfg, view=False), background=False) as m:
        await m.rm("/keep.txt")  # changed while no view was kept
    stray.write_bytes(b"stale")
    leftover.write_bytes(b"half")
    async with Master(cfg, background=False) as m:
        await settle(m, lambda: not stray.exists() and not leftover.exists())
        await settle(m, lambda: not linked(m, "/keep.txt"))


async def test_a_rebuild_fixes_every_folder_of_a_tree(tmp_path: Path) -> None:
    """A rebuild goes a folder at a time: in every one, stray files and folders go, a folder
    stands where a file goes (and a file where a folder goes) is replaced, and every file
    is linked."""
    cfg = cluster_cfg(tmp_path, volumes=1)
    files = ["/a/b/c.txt", "/a/b/d/e.txt", "/a/f.txt", "/k/g.txt", "/x.txt"]
    async with Master(cfg, background=False) as m:
        for p in files:
            await m.put(p, p.encode())
        await settle(m, lambda: all(linked(m, p) == {0} for p in files))
        view = Path(os.fsdecode(view_root(m.volumes[0].path)))
    (cfg.meta_dir / CLEAN).unlink()  # as after a crash: the next start rebuilds
    (view / "a/b/stale.txt").write_bytes(b"stale")
    (view / "a/b/d/e.txt").unlink()
    (view / "gone/deep").mkdir(parents=True)
    (view / "gone/deep/f").write_bytes(b"stale")
    (view / "x.txt").unlink()
    (view / "x.txt/inner").mkdir(parents=True)
    shutil.rmtree(view / "k")
    (view / "k").write_bytes(b"a file where a folder goes")
    async with Master(cfg, background=False) as m:
        await settle(m, lambda: all(linked(m, p) == {0} for p in files))
        await settle(m, lambda: not (view / "a/b/stale.txt").exists())
        assert not (view / "gone").exists()
        for p in files:
            assert (view / p.lstrip("/")).read_bytes() == p.encode()

"""The syncer's directory target: atomic writes (a reader never sees a partial file), exact
mtime and mode, byte-exact names, the delete policies, and a full or read-only target that
raises a retryable error and leaves nothing behind. Real files, real tmpfs mounts."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest
from test_master import tmpfs

from syncer.errors import Skipped, TargetError
from syncer.target import TMP, DeletePolicy, DirectoryTarget
from syncer.tree import SourceChanged

MTIME = 1_600_000_000_123_456_789


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(TMP.decode())]


def test_write_keeps_mtime_mode_and_replaces(tmp_path: Path) -> None:
    t = DirectoryTarget(tmp_path)
    assert t.write(b"news/2026/a.html", [b"<p>", b"one</p>"], mtime_ns=MTIME, mode=0o640) == 10
    p = tmp_path / "news/2026/a.html"
    st = p.stat()
    assert (p.read_bytes(), st.st_mtime_ns, st.st_mode & 0o7777) == (b"<p>one</p>", MTIME, 0o640)
    t.write(b"news/2026/a.html", [b"two"], mtime_ns=MTIME + 1, mode=0o644)
    assert (p.read_bytes(), p.stat().st_mtime_ns) == (b"two", MTIME + 1)
    t.flush()
    assert not leftovers(tmp_path)


def test_a_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    t = DirectoryTarget(tmp_path)
    old, new = b"a" * 3_000_000, b"b" * 3_000_000
    t.write(b"big.bin", [old], mtime_ns=MTIME, mode=0o644)
    seen: set[bytes] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            data = (tmp_path / "big.bin").read_bytes()
            seen.add(data[:1] + data[-1:] + str(len(data)).encode())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(20):
            body = new if i % 2 == 0 else old
            t.write(b"big.bin", (body[j : j + 65536] for j in range(0, len(body), 65536)),
                    mtime_ns=MTIME, mode=0o644)
    finally:
        stop.set()
        reader.join()
    assert seen <= {b"aa3000000", b"bb3000000"}, seen  # whole old or whole new, nothing else


def test_names_that_are_not_utf8_round_trip(tmp_path: Path) -> None:
    t = DirectoryTarget(tmp_path)
    name = b"img/caf\xe9-\xff.jpg"
    t.write(name, [b"x"], mtime_ns=MTIME, mode=0o644)
    assert os.listdir(os.fsencode(tmp_path) + b"/img") == [b"caf\xe9-\xff.jpg"]


@pytest.mark.parametrize("rel", [b"../escape", b"a/../../escape", b"", b"/", b"a\0b"])
def test_paths_out_of_the_root_are_refused(tmp_path: Path, rel: bytes) -> None:
    t = DirectoryTarget(tmp_path / "root")
    (tmp_path / "root").mkdir()
    with pytest.raises(Skipped):
        t.write(rel, [b"x"], mtime_ns=MTIME, mode=0o644)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]


def test_symlinks_stay_inside_the_root(tmp_path: Path) -> None:
    t = DirectoryTarget(tmp_path)
    t.write(b"a/real.txt", [b"r"], mtime_ns=MTIME, mode=0o644)
    t.symlink(b"a/link.txt", b"real.txt")
    assert os.readlink(tmp_path / "a/link.txt") == "real.txt"
    for target in (b"/etc/passwd", b"../../outside"):
        with pytest.raises(Skipped):
            t.symlink(b"a/bad", target)
    assert not (tmp_path / "a/bad").exists()


def test_delete_policies(tmp_path: Path) -> None:
    policies: tuple[DeletePolicy, ...] = ("delete", "trash", "keep")
    for policy in policies:
        root = tmp_path / policy
        root.mkdir()
        t = DirectoryTarget(root, deletes=policy)
        t.write(b"d/f.txt", [b"f"], mtime_ns=MTIME, mode=0o644)
        assert t.delete(b"d/f.txt")
        assert (root / "d/f.txt").exists() == (policy == "keep")
        trashed = list((root / ".tandem-trash/d").glob("f.txt.*")) if policy == "trash" else []
        assert [p.read_bytes() for p in trashed] == ([b"f"] if policy == "trash" else [])
        assert not t.delete(b"d/missing.txt")


def test_rename_and_type_changes(tmp_path: Path) -> None:
    t = DirectoryTarget(tmp_path)
    t.write(b"a/x.txt", [b"x"], mtime_ns=MTIME, mode=0o644)
    assert t.rename(b"a", b"b/a")  # a directory moves whole
    assert (tmp_path / "b/a/x.txt").read_bytes() == b"x" and not (tmp_path / "a").exists()
    assert not t.rename(b"nothing", b"else")
    t.write(b"b/a", [b"now a file"], mtime_ns=MTIME, mode=0o644)  # directory → file
    assert (tmp_path / "b/a").read_bytes() == b"now a file"
    t.write(b"b/a/y.txt", [b"y"], mtime_ns=MTIME, mode=0o644)  # file → directory
    assert (tmp_path / "b/a/y.txt").read_bytes() == b"y"
    source = tmp_path.parent / f"{tmp_path.name}-source"
    source.write_bytes(b"staged")
    t.stage_copy(b"b/a", os.fsencode(source))  # directory → file, through a staged copy
    assert (tmp_path / "b/a/y.txt").read_bytes() == b"y"  # nothing moves before the commit
    t.commit()
    assert (tmp_path / "b/a").read_bytes() == b"staged"
    (tmp_path / "b/d").mkdir()
    link = tmp_path / "b/l"
    link.symlink_to("d")  # a link to a folder: replaced itself, the folder left alone
    t.write(b"b/l", [b"over a link"], mtime_ns=MTIME, mode=0o644)
    assert not link.is_symlink() and link.read_bytes() == b"over a link"
    assert (tmp_path / "b/d").is_dir()


def test_a_missing_root_is_never_created(tmp_path: Path) -> None:
    t = DirectoryTarget(tmp_path / "unmounted")
    with pytest.raises(TargetError, match="missing"):
        t.write(b"a/b.txt", [b"x"], mtime_ns=MTIME, mode=0o644)
    assert not (tmp_path / "unmounted").exists()


def test_full_target_raises_retryable_and_leaves_nothing(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "256k") as small:
        t = DirectoryTarget(small)
        t.write(b"keep.txt", [b"old"], mtime_ns=MTIME, mode=0o644)
        with pytest.raises(TargetError, match="full") as info:
            t.write(b"keep.txt", [b"x" * 65536] * 16, mtime_ns=MTIME, mode=0o644)
        assert info.value.retryable
        assert (small / "keep.txt").read_bytes() == b"old"  # the old version is intact
        assert not leftovers(small)


def test_read_only_target_raises_retryable(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "1m") as ro:
        t = DirectoryTarget(ro)
        t.write(b"a.txt", [b"a"], mtime_ns=MTIME, mode=0o644)
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True, timeout=10)
        try:
            with pytest.raises(TargetError, match="read-only"):
                t.write(b"a.txt", [b"b"], mtime_ns=MTIME, mode=0o644)
            with pytest.raises(TargetError, match="read-only"):
                t.delete(b"a.txt")
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(ro)], check=True, timeout=10)
        t.write(b"a.txt", [b"b"], mtime_ns=MTIME, mode=0o644)  # writable again: it works
        assert (ro / "a.txt").read_bytes() == b"b"


def test_an_empty_file_just_created_is_not_copied_yet(tmp_path: Path) -> None:
    """It may be one whose writer has not opened it yet (``tree.just_created``): nothing is
    staged. Once older, an empty file is copied like any other."""
    root = tmp_path / "dst"
    root.mkdir()
    t = DirectoryTarget(root)
    empty = tmp_path / "empty.txt"
    empty.touch()
    with pytest.raises(SourceChanged, match="just created"):
        t.stage_copy(b"empty.txt", os.fsencode(empty))
    assert t.staged() == 0 and list(root.iterdir()) == []
    os.utime(empty, ns=(MTIME, MTIME))
    t.stage_copy(b"empty.txt", os.fsencode(empty))
    t.commit()
    assert (root / "empty.txt").read_bytes() == b""
    assert (root / "empty.txt").stat().st_mtime_ns == MTIME

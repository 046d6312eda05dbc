"""``tandem sync run`` in the cluster → legacy direction, as real processes: a master, the
syncer following the change feed, files put, overwritten, removed, moved and snapshotted
through the master's HTTP API; the legacy directory must end up byte- and mtime-exact, and a
syncer killed with SIGKILL resumes from its cursor without copying everything again."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import Proc, start_master, write_config
from test_master import tmpfs

from cluster.remote import RemoteCluster

pytestmark = pytest.mark.timeout(90)


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Relative path → (content, mtime ns) of every regular file under ``root``. The syncer
    may be renaming folders meanwhile: what vanishes during the walk is simply not there
    (``converge`` looks again)."""
    out = {}
    for folder, _, names in os.walk(root):  # os.walk skips folders that vanish
        for name in names:
            p = Path(folder) / name
            if name.startswith("."):
                continue
            try:
                if p.is_file():
                    out[str(p.relative_to(root))] = (p.read_bytes(), p.stat().st_mtime_ns)
            except FileNotFoundError:
                continue
    return out


async def cluster_tree(c: RemoteCluster) -> dict[str, tuple[bytes, int]]:
    out = {}
    for e in await c.walk("/"):
        if not e.is_dir:
            out[os.fsdecode(e.path).lstrip("/")] = (await c.cat(e.path), e.mtime_ns)
    return out


async def converge(c: RemoteCluster, legacy: Path, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while True:
        want, got = await cluster_tree(c), tree(legacy)
        if want == got:
            return
        if time.monotonic() > deadline:
            missing = sorted(set(want) - set(got))
            extra = sorted(set(got) - set(want))
            stale = sorted(k for k in set(want) & set(got) if want[k] != got[k])
            raise AssertionError(f"no convergence: missing {missing} extra {extra} "
                                 f"stale {stale}")
        await asyncio.sleep(0.05)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, str, Path]]:
    config = write_config(tmp_path)
    master, url = start_master(config)
    try:
        yield config, url, tmp_path / "var" / "legacy"
    finally:
        master.stop()


def start_syncer(config: Path) -> Proc:
    (config.parent / "var" / "legacy").mkdir(parents=True, exist_ok=True)
    return Proc(["--config", str(config), "sync", "run"], config.parent)


async def test_mirror_follows_every_change(site: tuple[Path, str, Path]) -> None:
    config, url, legacy = site
    async with RemoteCluster(url) as c:
        await c.put("/images/old.jpg", b"before the syncer started", mtime_ns=1_600_000_000 * 10**9)
        syncer = start_syncer(config)
        try:
            syncer.wait_event("sync.full_done")
            await converge(c, legacy)
            await c.put("/images/a.jpg", os.urandom(300_000))
            await c.put("/news/été.html", b"<p>x</p>")
            await c.put(b"/news/raw-\xff.html", b"not utf-8 name")
            for i in range(10):  # rapid rewrites: the last one wins
                await c.put("/news/index.html", f"version {i}".encode())
            await converge(c, legacy)
            await c.mv("/images", "/pictures")
            await c.snapshot("/news", "/news-copy")
            await c.rm("/news/index.html")
            await converge(c, legacy)
            assert not (legacy / "images").exists()
            status = json.loads((config.parent / "var/sync/status.json").read_text())
            assert status["direction"] == "cluster->legacy" and status["lag_seconds"] < 5
        finally:
            syncer.stop()


async def test_kill9_resumes_from_the_cursor(site: tuple[Path, str, Path]) -> None:
    config, url, legacy = site
    async with RemoteCluster(url) as c:
        for i in range(30):
            await c.put(f"/news/{i}.html", f"story {i}".encode())
        syncer = start_syncer(config)
        try:
            syncer.wait_event("sync.full_done")
            await converge(c, legacy)
        finally:
            syncer.kill9()
        for i in range(30, 40):
            await c.put(f"/news/{i}.html", f"story {i}".encode())
        await c.rm("/news/0.html")
        syncer = start_syncer(config)
        try:
            await converge(c, legacy)
            assert not any(r.get("event") == "sync.full_started" for r in syncer.lines), (
                "a restart with a cursor must not start a full pass"
            )
        finally:
            syncer.stop()


def verify_cli(config: Path) -> tuple[int, str]:
    r = subprocess.run([sys.executable, "-m", "origin", "--config", str(config), "sync",
                        "verify"], capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout


async def test_verify_compares_content(site: tuple[Path, str, Path]) -> None:
    """``sync verify`` exits 0 on equal sides, and names what differs — including a rewrite
    of the same size with the old mtime restored, which only the content hash can see."""
    config, url, legacy = site
    async with RemoteCluster(url) as c:
        await c.put("/images/a.jpg", os.urandom(5000))
        await c.put("/news/b.html", b"<p>b</p>")
        syncer = start_syncer(config)
        try:
            syncer.wait_event("sync.full_done")
            await converge(c, legacy)
        finally:
            syncer.stop()
    code, out = verify_cli(config)
    assert (code, out.strip().splitlines()[-1].split(" between")[0]) == (0, "0 difference(s)")
    victim = legacy / "images" / "a.jpg"
    st = victim.stat()
    victim.write_bytes(os.urandom(st.st_size))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    (legacy / "stray.txt").write_bytes(b"not in the cluster")
    code, out = verify_cli(config)
    assert code == 1, out
    assert "content  /images/a.jpg" in out and "extra    /stray.txt" in out, out
    assert "2 difference(s)" in out, out
    # sync full compares size and mtime: it cannot see that rewrite, and keeps extras;
    # --checksum sees it, --delete removes the extra.
    assert "0 file(s) copied" in sync_full(config)
    assert verify_cli(config)[0] == 1
    out = sync_full(config, "--checksum", "--delete")
    assert "1 file(s) copied" in out and "1 deleted" in out, out
    code, out = verify_cli(config)
    assert code == 0 and "0 difference(s)" in out, out


def sync_full(config: Path, *extra: str) -> str:
    r = subprocess.run([sys.executable, "-m", "origin", "--config", str(config), "sync",
                        "full", *extra], capture_output=True, text=True, timeout=60, check=True)
    return r.stdout


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True, timeout=10)


async def test_a_failing_target_loses_nothing(tmp_path: Path) -> None:
    """The legacy directory turns read-only mid-stream: changes are retried (the status file
    shows the error), none is dropped, and the mirror converges once it is writable again."""
    legacy = tmp_path / "var" / "legacy"
    legacy.mkdir(parents=True)
    with tmpfs(legacy, "16m"):
        config = write_config(tmp_path)
        master, url = start_master(config)
        syncer = start_syncer(config)
        try:
            async with RemoteCluster(url) as c:
                syncer.wait_event("sync.full_done")
                await c.put("/news/before.html", b"before")
                await converge(c, legacy)
                remount(legacy, "ro")
                try:
                    for i in range(5):
                        await c.put(f"/news/during-{i}.html", f"during {i}".encode())
                    syncer.wait_event("sync.retry")
                    status = json.loads((tmp_path / "var/sync/status.json").read_text())
                    assert "read-only" in status["last_error"], status
                finally:
                    remount(legacy, "rw")
                await converge(c, legacy, within=15.0)
        finally:
            syncer.stop()
            master.stop()

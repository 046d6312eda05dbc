"""The origin's ``/status`` page as people see it: rendered by a real headless browser
(Debian's chromium, ``--dump-dom``) from a real origin over a real master on 127.0.0.1.

The DOM chromium builds is what is checked, so a page that only looks right as text (an
unclosed tag swallowing a table, a value that needs a script to appear) fails here.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from procs import Proc, start_master, write_config

from cluster.remote import RemoteCluster
from cluster.volume import MARKER
from origin import health
from origin.config import load
from origin.sources import DirectorySource
from origin.status_page import render

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [pytest.mark.timeout(90)]
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install -y chromium)"
)

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


class Dom(HTMLParser):
    """The text of every element that has an ``id`` (nested text included), the tags seen,
    and the text of each table row by its cells."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.text: dict[str, str] = {}
        self.classes: dict[str, str] = {}
        self.tags: set[str] = set()
        self.rows: list[list[str]] = []
        self._open: list[tuple[str, str | None]] = []  # (tag, id)
        self._cell: list[str] | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        a = dict(attrs)
        if tag in VOID:
            return
        ident = a.get("id")
        if ident is not None:
            self.text[ident] = ""
            self.classes[ident] = a.get("class") or ""
        self._open.append((tag, ident))
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th") and self.rows:
            self.rows[-1].append("")
            self._cell = self.rows[-1]

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            t, _ = self._open.pop()
            if t == tag:
                break
        if tag in ("td", "th"):
            self._cell = None

    def handle_data(self, data: str) -> None:
        for _, ident in self._open:
            if ident is not None:
                self.text[ident] += data
        if self._cell is not None:
            self._cell[-1] += data

    def row(self, first: str) -> list[str]:
        """The cells of the table row whose first cell is ``first``."""
        found = [r for r in self.rows if r and r[0].strip() == first]
        assert len(found) == 1, (first, self.rows)
        return [c.strip() for c in found[0]]


def browse(url: str, profile: Path) -> Dom:
    """The DOM chromium renders for ``url`` (no sandbox: tests run as root; no network
    services: this is a closed network)."""
    assert CHROMIUM is not None
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode == 0 and "<body" in out.stdout, out.stderr[-2000:]
    return Dom(out.stdout)


@dataclass
class Site:
    tmp: Path
    url: str
    master_url: str


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("status")
    # the master's own health checks would notice a missing volume and re-replicate; slow
    # them down so the page is read against a cluster that holds still
    config = write_config(tmp, chunk_size=65536, health_interval=0.2, work_interval=60.0,
                          replication_delay=600.0,
                          sections={"origin": {"listen": "127.0.0.1:0", "workers": 2,
                                               "max_sync_lag": 30.0}})
    master, master_url = start_master(config)
    origin = Proc(["--config", str(config), "origin"], tmp)
    try:
        url = str(origin.wait_event("origin.listening")["url"])
        yield Site(tmp, url, master_url)
    finally:
        codes = origin.stop(), master.stop()
        assert codes == (0, 0)


FILES = {"/images/a.jpg": 200_000, "/images/b.png": 1000, "/news/index.html": 12}


async def _load(site: Site) -> tuple[dict[str, Any], list[int]]:
    """A few files (one of several chunks); the master's own status for comparison, and the
    copies mask of every chunk."""
    async with RemoteCluster(site.master_url) as c:
        masks = []
        for path, size in FILES.items():
            await c.put(path, os.urandom(size))
            masks += [ci.chunk.copies for ci in (await c.fileinfo(path))[1]]
        return await c.status(), masks


@pytest.mark.slow
@needs_chromium
def test_status_page_in_a_browser(site: Site, tmp_path: Path) -> None:
    """The page shows, in the rendered DOM: ready, every volume with its path and state "ok",
    the default goal, file and chunk counts equal to the master's, no chunk under goal or
    missing, the sync direction and lag against the limit; and it needs no script.
    Then a volume loses its marker: the page says not ready, names the problem, and shows
    that volume as missing (the others still ok). Put back, all is ready again."""
    status, masks = asyncio.run(_load(site))
    sync = site.tmp / "var" / "sync" / "status.json"
    sync.parent.mkdir(parents=True, exist_ok=True)
    sync.write_text(json.dumps({"direction": "cluster->legacy", "lag_seconds": 0.4,
                                "last_event": "2026-11-21T10:00:00Z", "queue": 0}))
    page = f"{site.url}/status"
    assert httpx.get(page).headers["content-type"] == "text/html; charset=utf-8"

    dom = browse(page, tmp_path / "profile")
    assert "script" not in dom.tags
    assert dom.text["state"].startswith("Ready"), dom.text["state"]
    assert "problems" not in dom.text
    vols = sorted((site.tmp / "var" / "volumes").iterdir())
    assert len(vols) == 3
    for v in vols:
        cells = [r for r in dom.rows if len(r) >= 3 and r[1].strip() == str(v.resolve())]
        assert len(cells) == 1, (v, dom.rows)
        assert cells[0][2].strip() == "ok"
    assert dom.text["default_goal"] == "2"
    assert dom.text["files"] == str(status["files"]) == "3"
    assert dom.text["chunks"] == str(status["chunks"]) == str(len(masks)) == "6"
    assert dom.text["under_goal"] == "0" and dom.text["missing"] == "0"
    assert dom.row("Chunks under goal") == ["Chunks under goal", "0"]
    assert dom.text["sync_direction"] == "cluster->legacy"
    assert dom.text["sync_lag"] == "0.4 s (limit 30.0 s)"
    assert "ok" in dom.classes["sync_lag"]
    assert dom.row("last_event") == ["last_event", "2026-11-21T10:00:00Z"]

    gone = vols[1] / MARKER
    hidden = vols[1] / (MARKER + ".away")
    gone.rename(hidden)
    try:
        dom = browse(page, tmp_path / "profile")
        assert dom.text["state"].startswith("Not ready"), dom.text["state"]
        assert str(vols[1].resolve()) in dom.text["problems"]
        for v in vols:
            row = next(r for r in dom.rows if len(r) >= 3 and r[1].strip() == str(v.resolve()))
            assert row[2].strip() == ("missing" if v == vols[1] else "ok"), row
            if v == vols[1]:
                assert "no volume marker" in row[3]
        # every chunk had 2 copies: those with one on the missing volume are under goal now
        vid = next(v["id"] for v in status["volumes"] if v["path"] == str(vols[1].resolve()))
        under = sum(1 for m in masks if m & (1 << vid))
        assert 0 < under < len(masks)
        assert dom.text["under_goal"] == str(under) and dom.text["missing"] == "0"
        assert "bad" in dom.classes["under_goal"]
        assert httpx.get(f"{site.url}/readyz").status_code == 503
    finally:
        hidden.rename(gone)
    dom = browse(page, tmp_path / "profile")
    assert dom.text["state"].startswith("Ready")


def test_legacy_page_and_odd_sync_files(tmp_path: Path) -> None:
    """The legacy origin's page shows its directory and state; a sync file with a lag that
    is not a number, or over the limit, is shown as a problem, never a crash."""
    (tmp_path / "legacy").mkdir()
    cfg = load(write_config(tmp_path, sections={"legacy": {"dir": str(tmp_path / "legacy")}}))
    source = DirectorySource(cfg.legacy.dir)
    for sync, lag_text, bad in [
        ({"direction": "legacy->cluster", "lag_seconds": 99}, "99.0 s (limit 30.0 s)", True),
        ({"direction": "legacy->cluster", "lag_seconds": "soon"}, "unknown ('soon')", True),
        ({"direction": "legacy->cluster"}, "0.0 s (limit 30.0 s)", False),
    ]:
        status = tmp_path / "var" / "sync" / "status.json"
        status.parent.mkdir(parents=True, exist_ok=True)
        status.write_text(json.dumps(sync))
        problems = health.problems(cfg, source)
        assert bool(problems) == bad, problems
        dom = Dom(render(cfg, source, "legacy", problems, health.sync_status(cfg), 0.0, 1))
        assert dom.text["sync_lag"] == lag_text
        assert dom.text["sync_direction"] == "legacy->cluster"
        assert dom.text["state"].startswith("Not ready" if bad else "Ready")
        assert dom.row(str(cfg.legacy.dir.resolve())) == [str(cfg.legacy.dir.resolve()), "ok"]
    (tmp_path / "legacy").rmdir()
    problems = health.problems(cfg, source)
    dom = Dom(render(cfg, source, "legacy", problems, None, 0.0, 1))
    assert dom.row(str(cfg.legacy.dir.resolve()))[1] == "missing"
    assert dom.text["problems"] == f"{cfg.legacy.dir.resolve()} is missing"
    assert dom.text["sync"].startswith("No syncer status")


async def test_counts_are_scanned_off_the_loop_once_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page's goal counts scan every chunk (≈ 0.8 s per million): on a thread, never on
    the loop that serves assets; concurrent pages share one scan; the answer is reused for
    ``COUNTS_TTL`` seconds, then scanned afresh."""
    from test_master import cluster_cfg

    from cluster.master import Master
    from cluster.meta import Meta
    from origin import sources

    threads: list[int] = []
    real = Meta.counts

    def spy(self: Meta, healthy: int) -> dict[str, int]:
        threads.append(threading.get_ident())
        return real(self, healthy)

    monkeypatch.setattr(Meta, "counts", spy)
    async with Master(cluster_cfg(tmp_path), background=False) as m:
        await m.put("/a/1", b"one")
        src = sources.ClusterSource(m.cfg)
        first, second = await asyncio.gather(src.counts(7), src.counts(7))
        assert first == second and first["files"] == 1
        assert len(threads) == 1 and threads[0] != threading.get_ident()
        await m.put("/a/2", b"two")
        assert (await src.counts(7))["files"] == 1  # reused
        monkeypatch.setattr(sources, "COUNTS_TTL", 0.0)
        assert (await src.counts(7))["files"] == 2 and len(threads) == 2
        src.meta.db.close()

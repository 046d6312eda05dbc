"""``tandem flip`` on real processes: a master, the syncer (``tandem sync run``), the origin
with crawler writes on, and (when installed) a real nginx in front.

A flip fences writers (the origin's PUT is a 503, ``tandem cluster put`` exits 75, /readyz
fails), drains the syncer, verifies both sides, switches the primary (the syncer turns
around: a file written into the legacy directory reaches the cluster), re-points nginx and
unfences. Flipping back restores the first state. A flip killed with SIGKILL while it drains,
or stopped after any of its steps, continues when run again; a difference between the sides,
or no syncer to drain, stops it with nothing changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from nginxproc import Nginx, free_port, require_nginx, serves_views
from procs import Proc, start_master, write_config
from test_sync_mirror import cluster_tree, tree

from cluster.errors import NotFound
from cluster.remote import RemoteCluster
from origin import config as config_mod
from origin.cli import NginxFront
from syncer import state
from syncer.flip import JOURNAL_FILE, STEPS, Flip

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

TOKEN = "crawler-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MTIME = 1_700_000_000 * 10**9


@dataclasses.dataclass
class Site:
    tmp: Path
    config: Path
    master_url: str
    syncer: Proc | None = None
    origin_url: str = ""

    @property
    def legacy(self) -> Path:
        return self.tmp / "var" / "legacy"

    @property
    def state_dir(self) -> Path:
        return self.tmp / "var" / "sync"

    @property
    def fence(self) -> Path:
        return self.tmp / "var" / "fence"

    def start_syncer(self) -> Proc:
        """``tandem sync run``, once it holds its lock and runs its mirror."""
        self.syncer = Proc(["--config", str(self.config), "sync", "run"], self.tmp)
        self.syncer.wait_event("sync.direction")
        return self.syncer

    def stop_syncer(self) -> None:
        """SIGTERM the syncer (it exits 0); its stderr in the message when it does not."""
        if self.syncer is not None:
            p, self.syncer = self.syncer, None
            os.kill(p.pid, signal.SIGCONT)  # a stopped process would not see the SIGTERM
            os.kill(p.pid, signal.SIGTERM)
            code = p.p.wait(15)
            err = p.p.stderr.read().decode(errors="replace") if p.p.stderr else ""
            assert p.stop() == code == 0, f"tandem sync run exited {code}: {err[-3000:]}"

    def tandem(self, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "origin", "--config", str(self.config), *args],
            input=stdin.decode(), capture_output=True, text=True, timeout=60,
        )

    def flip_bg(self, to: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "origin", "--config", str(self.config), "flip", "--to", to,
             "--timeout", "30"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def primary(self) -> str:
        return state.read_primary(self.state_dir)

    def journal(self) -> dict[str, object] | None:
        try:
            data: dict[str, object] = json.loads((self.state_dir / JOURNAL_FILE).read_text())
        except FileNotFoundError:
            return None
        return data


def site_config(tmp: Path, sections: dict[str, dict[str, object]]) -> Path:
    origin: dict[str, object] = {"listen": "127.0.0.1:0", "workers": 1,
                                 "write_prefixes": ["/news/"], "write_token": TOKEN}
    origin.update(sections.get("origin", {}))
    return write_config(tmp, sections={**sections, "origin": origin})


@contextlib.contextmanager
def running_site(tmp: Path, *, origin: bool = False,
                 sections: dict[str, dict[str, object]] | None = None) -> Iterator[Site]:
    """A master and a syncer (and an origin) on ``tmp``; every process stopped by PID."""
    config = site_config(tmp, sections or {})
    (tmp / "var" / "legacy").mkdir(parents=True)
    master, url = start_master(config)
    site = Site(tmp, config, url)
    procs = [master]
    try:
        site.start_syncer()
        site.syncer.wait_event("sync.full_done")  # type: ignore[union-attr]
        if origin:
            p = Proc(["--config", str(config), "origin"], tmp)
            procs.append(p)
            site.origin_url = str(p.wait_event("origin.listening")["url"])
            p.wait_event("origin.worker_ready")
        yield site
    finally:
        site.stop_syncer()
        for p in reversed(procs):
            p.stop()


async def converge(site: Site, within: float = 10.0) -> None:
    """Wait until the cluster and the legacy directory hold the same files (bytes, mtime)."""
    deadline = time.monotonic() + within
    async with RemoteCluster(site.master_url) as c:
        while True:
            want, got = await cluster_tree(c), tree(site.legacy)
            if want == got:
                return
            assert time.monotonic() < deadline, f"no convergence: {want.keys() ^ got.keys()}"
            await asyncio.sleep(0.05)


async def wait_for(cond: Callable[[], bool], within: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what or cond}"
        await asyncio.sleep(0.05)


async def put_http(site: Site, path: str, data: bytes) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as h:
        return await h.put(f"{site.origin_url}{path}", content=data, headers=AUTH)


async def in_cluster(site: Site, path: str) -> bytes | None:
    async with RemoteCluster(site.master_url) as c:
        try:
            return await c.cat(path)
        except NotFound:
            return None


def syncer_follows(site: Site) -> str | None:
    syncer = state.running_syncer(site.state_dir)
    return syncer.primary if syncer is not None else None


def fenced_at_drain(site: Site) -> bool:
    j = site.journal()
    return j is not None and j["done"] == ["fence"] and site.fence.exists()


# -- end to end ------------------------------------------------------------------------------


async def test_flip_end_to_end_and_back(tmp_path: Path) -> None:
    """Writes before; refused everywhere while fenced; direction reversed after (a file
    written into the legacy directory reaches the cluster, tandem's writes into the cluster
    are refused); flipping back restores the first state."""
    with running_site(tmp_path, origin=True) as site:
        assert (await put_http(site, "/news/before.html", b"before")).status_code == 201
        assert site.tandem("cluster", "put", "-", "/news/cli.html", stdin=b"cli").returncode == 0
        await converge(site)

        plan = site.tandem("flip", "--to", "legacy", "--dry-run")
        assert plan.returncode == 0, plan.stderr
        assert all(step in plan.stdout for step in STEPS), plan.stdout
        assert "cluster->legacy to legacy->cluster" in plan.stdout
        assert not site.fence.exists() and site.journal() is None
        assert site.primary() == "cluster"

        # Hold the syncer so the flip waits in its drain: the fenced state can be looked at.
        assert site.syncer is not None
        os.kill(site.syncer.pid, signal.SIGSTOP)
        async with RemoteCluster(site.master_url) as c:
            await c.put("/news/late.html", b"written just before the fence")
        flip = site.flip_bg("legacy")
        try:
            await wait_for(lambda: fenced_at_drain(site), what="the fence")
            r = await put_http(site, "/news/fenced.html", b"must not land")
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "fenced" and "tandem flip --to legacy" in r.text
            assert r.headers["retry-after"] == "30"
            cli = site.tandem("cluster", "put", "-", "/news/fenced.html", stdin=b"no")
            assert cli.returncode == 75 and "fenced" in cli.stderr, cli.stderr
            assert site.tandem("cluster", "rm", "/news/cli.html").returncode == 75
            async with httpx.AsyncClient(timeout=10) as h:
                ready = await h.get(f"{site.origin_url}/readyz")
            assert ready.status_code == 503 and "fenced" in ready.text
        finally:
            os.kill(site.syncer.pid, signal.SIGCONT)
        out, err = flip.communicate(timeout=60)
        assert flip.returncode == 0, out + err
        assert "flip done: legacy is primary" in out, out

        assert site.primary() == "legacy"
        assert not site.fence.exists() and site.journal() is None
        assert await in_cluster(site, "/news/fenced.html") is None
        assert (site.legacy / "news" / "late.html").read_bytes() == b"written just before the fence"
        # The syncer turned around: legacy → cluster.
        crawler = site.legacy / "news" / "crawled.html"
        crawler.write_bytes(b"written by the crawler into STATIC")
        os.utime(crawler, ns=(MTIME, MTIME))
        await converge(site)
        status = state.read_status(site.state_dir)
        assert status is not None and status["direction"] == "legacy->cluster", status
        r = await put_http(site, "/news/into-the-mirror.html", b"x")
        assert r.status_code == 503 and r.json()["error"] == "not_primary", r.text
        cli = site.tandem("cluster", "put", "-", "/news/x.html", stdin=b"x")
        assert cli.returncode == 1 and str(site.legacy) in cli.stderr, cli.stderr
        again = site.tandem("flip", "--to", "legacy")
        assert again.returncode == 0 and "already primary" in again.stdout

        # Flipping back is the rollback.
        back = site.tandem("flip", "--to", "cluster", "--timeout", "30")
        assert back.returncode == 0, back.stdout + back.stderr
        assert site.primary() == "cluster" and not site.fence.exists()
        assert (await put_http(site, "/news/after.html", b"after")).status_code == 201
        await converge(site)
        assert (site.legacy / "news" / "after.html").read_bytes() == b"after"
        status = state.read_status(site.state_dir)
        assert status is not None and status["direction"] == "cluster->legacy", status
        assert await in_cluster(site, "/news/crawled.html") == (
            b"written by the crawler into STATIC")


# -- under failure ---------------------------------------------------------------------------


async def test_a_flip_killed_while_draining_continues(tmp_path: Path) -> None:
    """SIGKILL while the flip waits for the syncer: writers stay fenced, the journal says
    where it was; another target is refused; the same command again finishes the flip."""
    with running_site(tmp_path) as site:
        async with RemoteCluster(site.master_url) as c:
            await c.put("/images/a.jpg", os.urandom(20_000))
        await converge(site)
        assert site.syncer is not None
        os.kill(site.syncer.pid, signal.SIGSTOP)
        async with RemoteCluster(site.master_url) as c:
            await c.put("/images/b.jpg", b"waits in the changelog")
        flip = site.flip_bg("legacy")
        try:
            await wait_for(lambda: fenced_at_drain(site), what="the fence")
            await asyncio.sleep(0.3)  # well inside the drain's wait
            flip.kill()
            flip.communicate(timeout=10)
            assert site.fence.exists() and site.primary() == "cluster"
            other = site.tandem("flip", "--to", "cluster")
            assert other.returncode == 1 and "--abort" in other.stderr, other.stderr
            plan = site.tandem("flip", "--to", "legacy", "--dry-run")
            assert "done 1. fence" in plan.stdout and "2. drain" in plan.stdout, plan.stdout
            assert site.fence.exists()
        finally:
            os.kill(site.syncer.pid, signal.SIGCONT)
        done = site.tandem("flip", "--to", "legacy", "--timeout", "30")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "resuming the flip to legacy (done: fence)" in done.stdout
        assert site.primary() == "legacy" and not site.fence.exists()
        assert site.journal() is None
        assert (site.legacy / "images" / "b.jpg").read_bytes() == b"waits in the changelog"


async def test_a_failure_after_the_switch_keeps_writers_fenced(tmp_path: Path) -> None:
    """The syncer does not take up the new direction in time (held with SIGSTOP): the flip
    has switched, so it stops there with writers fenced; once the syncer runs again the same
    command finishes."""
    with running_site(tmp_path) as site:
        async with RemoteCluster(site.master_url) as c:
            await c.put("/news/a.html", b"a")
        await converge(site)
        assert site.syncer is not None
        os.kill(site.syncer.pid, signal.SIGSTOP)  # drained already: only the switch waits
        try:
            r = site.tandem("flip", "--to", "legacy", "--timeout", "1")
            assert r.returncode == 1, r.stdout + r.stderr
            assert "did not switch" in r.stdout and "writers stay fenced" in r.stdout, r.stdout
            assert site.fence.exists() and site.primary() == "legacy"
            journal = site.journal()
            assert journal is not None and journal["done"] == ["fence", "drain", "verify"]
        finally:
            os.kill(site.syncer.pid, signal.SIGCONT)
        r = site.tandem("flip", "--to", "legacy", "--timeout", "20")
        assert r.returncode == 0 and "resuming" in r.stdout, r.stdout + r.stderr
        assert not site.fence.exists() and syncer_follows(site) == "legacy"


class Crash(Exception):
    """Stands for the flip process dying right after a step was journaled."""


async def test_a_flip_stopped_after_any_step_continues(tmp_path: Path) -> None:
    """A flip that dies after each of its steps in turn (alternating the direction): the
    journal names the steps done, the sides stay equal, and running it again completes it."""
    with running_site(tmp_path) as site:
        cfg = config_mod.load(site.config, required=True)
        async with RemoteCluster(site.master_url) as c:
            await c.put("/news/a.html", b"a", mtime_ns=MTIME)
        await converge(site)
        to: state.Primary = "legacy"
        for stop_after in STEPS[:-1]:
            def crash(step: str, stop_after: str = stop_after) -> None:
                if step == stop_after:
                    raise Crash(step)

            lines: list[str] = []
            first = Flip(cfg, to, front=NginxFront(cfg), timeout=20, out=lines.append,
                         after_step=crash)
            with pytest.raises(Crash):
                await first.run()
            journal = site.journal()
            assert journal is not None, stop_after
            assert journal["done"] == list(STEPS[: STEPS.index(stop_after) + 1])
            assert site.fence.exists()
            switched = "switch" in journal["done"]
            assert site.primary() == (to if switched else state.other(to)), stop_after
            lines.clear()
            assert await Flip(cfg, to, front=NginxFront(cfg), timeout=20,
                              out=lines.append).run() == 0, lines
            assert any(line.startswith("resuming") for line in lines), lines
            assert site.primary() == to and not site.fence.exists() and site.journal() is None
            assert syncer_follows(site) == to  # the switch waited for the syncer
            # The new primary's writes reach the other side.
            if to == "legacy":
                (site.legacy / "news" / f"{stop_after}.html").write_bytes(stop_after.encode())
            else:
                async with RemoteCluster(site.master_url) as c:
                    await c.put(f"/news/{stop_after}.html", stop_after.encode())
            await converge(site)
            to = state.other(to)


async def test_a_difference_stops_the_flip_with_nothing_changed(tmp_path: Path) -> None:
    """A file only the legacy directory has: the flip lists it and stops; the primary is
    unchanged, writers are unfenced, no journal is left, and writes work again."""
    with running_site(tmp_path, origin=True) as site:
        assert (await put_http(site, "/news/a.html", b"a")).status_code == 201
        await converge(site)
        (site.legacy / "stray.txt").write_bytes(b"not in the cluster")
        r = site.tandem("flip", "--to", "legacy", "--timeout", "20")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "extra    /stray.txt" in r.stdout and "nothing changed" in r.stdout, r.stdout
        assert site.primary() == "cluster"
        assert not site.fence.exists() and site.journal() is None
        assert (await put_http(site, "/news/b.html", b"b")).status_code == 201


async def test_no_syncer_to_drain_stops_the_flip(tmp_path: Path) -> None:
    """Changes the syncer has not applied and no syncer running: the flip says so and stops
    with nothing changed; with the syncer started again it goes through."""
    with running_site(tmp_path) as site:
        site.stop_syncer()
        async with RemoteCluster(site.master_url) as c:
            await c.put("/news/pending.html", b"not mirrored yet")
        r = site.tandem("flip", "--to", "legacy", "--timeout", "20")
        assert r.returncode == 1 and "no syncer is running" in r.stdout, r.stdout + r.stderr
        assert site.primary() == "cluster" and not site.fence.exists()
        assert site.journal() is None
        site.start_syncer()
        r = site.tandem("flip", "--to", "legacy", "--timeout", "20")
        assert r.returncode == 0, r.stdout + r.stderr
        assert (site.legacy / "news" / "pending.html").read_bytes() == b"not mirrored yet"


async def test_abort_cancels_an_unfinished_flip(tmp_path: Path) -> None:
    """``--abort`` before the switch unfences and forgets the flip; once the primary was
    written it is refused (the way back is to finish, then flip back) — also when the flip
    died between writing the primary and journaling its switch, and the same command then
    finishes it."""
    with running_site(tmp_path) as site:
        cfg = config_mod.load(site.config, required=True)
        for stop_after, switched in (("verify", False), ("verify", True), ("switch", True)):
            def crash(step: str, stop_after: str = stop_after) -> None:
                if step == stop_after:
                    raise Crash(step)

            flip = Flip(cfg, "legacy", front=NginxFront(cfg), timeout=20, out=lambda _: None,
                        after_step=crash)
            with pytest.raises(Crash):
                await flip.run()
            if switched and stop_after == "verify":  # died inside the switch step
                state.write_primary(site.state_dir, "legacy")
            r = site.tandem("flip", "--abort")
            if switched:
                assert r.returncode == 1 and "has switched already" in r.stderr, r.stderr
                assert site.fence.exists() and site.primary() == "legacy"
                r = site.tandem("flip", "--to", "legacy", "--timeout", "20")
                assert r.returncode == 0, r.stdout + r.stderr
                assert not site.fence.exists() and site.journal() is None
                assert syncer_follows(site) == "legacy"
                r = site.tandem("flip", "--to", "cluster", "--timeout", "20")
                assert r.returncode == 0, r.stdout + r.stderr
            else:
                assert r.returncode == 0 and "cancelled" in r.stdout, r.stdout + r.stderr
                assert not site.fence.exists() and site.journal() is None
            assert site.primary() == "cluster"
        assert site.tandem("flip", "--abort").stdout.startswith("no unfinished flip")


# -- with nginx in front ---------------------------------------------------------------------


def access_upstreams(nginx: Nginx) -> list[str]:
    lines = nginx.paths.access_log.read_text().splitlines()
    return [json.loads(line)["upstream"] for line in lines]


async def test_flip_reloads_nginx_with_the_new_primary(tmp_path: Path) -> None:
    """With nginx running, the flip reloads it: the legacy origin becomes the upstream's
    primary (the fast path off); flipping back restores the cluster origin and the views. A
    config nginx refuses (``nginx -t``) stops the flip before the switch, nothing changed."""
    origin_port, legacy_port = free_port(), free_port()
    sections: dict[str, dict[str, object]] = {
        "origin": {"listen": f"127.0.0.1:{origin_port}"},
        "legacy": {"listen": f"127.0.0.1:{legacy_port}"},
        "nginx": {"listen": f"127.0.0.1:{free_port()}", "run_dir": str(tmp_path / "nginx"),
                  "user": "root" if os.geteuid() == 0 else ""},
    }
    with running_site(tmp_path, origin=True, sections=sections) as site:
        cfg = config_mod.load(site.config, required=True)
        require_nginx(cfg)
        legacy = Proc(["--config", str(site.config), "origin", "--legacy", "--workers", "1"],
                      tmp_path)
        try:
            legacy.wait_event("legacy.worker_ready")
            with Nginx(cfg) as nginx:
                # A crawler's write through the origin: nginx serves it at once, and it is in
                # the legacy directory within a second.
                assert (await put_http(site, "/news/a.html", b"a")).status_code == 201
                written = time.monotonic()
                assert nginx.request("GET", "/news/a.html").body == b"a"
                await wait_for(lambda: (site.legacy / "news/a.html").exists(), within=1.0,
                               what="the new file in the legacy directory within 1 s")
                assert time.monotonic() - written < 1.0
                await converge(site)
                if os.geteuid() == 0:  # only root's nginx -t looks the user up
                    good = site.config.read_text()
                    site.config.write_text(good.replace('user = "root"',
                                                        'user = "tandem-no-such-user"'))
                    r = site.tandem("flip", "--to", "legacy", "--timeout", "30")
                    assert r.returncode == 1, r.stdout + r.stderr
                    assert "tandem-no-such-user" in r.stdout and "nothing changed" in r.stdout
                    assert site.primary() == "cluster" and not site.fence.exists()
                    site.config.write_text(good)
                r = site.tandem("flip", "--to", "legacy", "--timeout", "30")
                assert r.returncode == 0 and "nginx    reloaded" in r.stdout, r.stdout + r.stderr
                conf = nginx.paths.conf.read_text()
                assert f"server 127.0.0.1:{legacy_port} max_fails=1 fail_timeout=10s;" in conf
                assert (f"server 127.0.0.1:{origin_port} max_fails=1 fail_timeout=10s backup;"
                        in conf)
                assert not serves_views(conf)
                await wait_for(lambda: nginx.request("GET", "/news/a.html").body == b"a"
                               and access_upstreams(nginx)[-1] == f"127.0.0.1:{legacy_port}",
                               what="nginx to proxy to the legacy origin")
                # Legacy primary: the crawler writes the legacy directory again (the seed's
                # old way); nginx serves it from there, and the syncer carries it to the cluster.
                (site.legacy / "news/after.html").write_bytes(b"written to legacy")
                await wait_for(lambda: nginx.request("GET", "/news/after.html").body
                               == b"written to legacy", what="nginx to serve the legacy write")
                assert access_upstreams(nginx)[-1] == f"127.0.0.1:{legacy_port}"
                for _ in range(100):
                    if await in_cluster(site, "/news/after.html") == b"written to legacy":
                        break
                    await asyncio.sleep(0.1)
                assert await in_cluster(site, "/news/after.html") == b"written to legacy"
                r = site.tandem("flip", "--to", "cluster", "--timeout", "30")
                assert r.returncode == 0 and "nginx    reloaded" in r.stdout, r.stdout + r.stderr
                conf = nginx.paths.conf.read_text()
                assert f"server 127.0.0.1:{origin_port} max_fails=1 fail_timeout=10s;" in conf
                assert (f"server 127.0.0.1:{legacy_port} max_fails=1 fail_timeout=10s backup;"
                        in conf)
                assert serves_views(conf)
                assert site.tandem("nginx", "render").stdout == conf
        finally:
            legacy.stop()

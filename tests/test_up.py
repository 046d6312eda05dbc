"""``tandem up`` on real processes, and its supervisor on small stand-in children.

The whole stack (master, syncer, origin, legacy origin, the real nginx) starts in order on
free loopback ports; a demo image comes through nginx with the right bytes and reaches the
legacy directory through the syncer; the origin killed with SIGKILL is started again and
serves; SIGTERM stops every child in the reverse order, each by its PID, and ``up`` exits 0.
Without nginx, ``up`` says how to install it and runs the rest.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import structlog
from nginxproc import free_port, require_nginx
from procs import Proc

from origin import config as config_mod
from origin import demo, probe, supervisor
from origin.cli import main
from origin.supervisor import Child, StartFailed, Supervisor
from origin.up import NAMES, SERVICES

pytestmark = [pytest.mark.timeout(90)]

RED = "/images/2026/11/red.png"
NEWS = "/news/2026/11/21/item-1.html"


def up_config(tmp: Path, **nginx: object) -> Path:
    ports = {name: free_port() for name in ("cluster", "origin", "legacy", "nginx")}
    lines = [f'data_dir = "{tmp}/var"']
    for name, port in ports.items():
        lines += [f"[{name}]", f'listen = "127.0.0.1:{port}"']
        if name == "cluster":
            lines += ["health_interval = 0.2", "work_interval = 0.2"]
        if name == "nginx":
            lines += [f'{k} = "{v}"' for k, v in nginx.items()]
    path = tmp / "tandem.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_for(proc: Proc, what: str, pred: Callable[[list[dict[str, object]]], bool],
             timeout: float = 30.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        lines = list(proc.lines)
        if pred(lines):
            return lines
        if proc.p.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen (exit {proc.p.poll()}); last: {lines[-8:]}")
        time.sleep(0.05)


def events(lines: list[dict[str, object]], event: str, **fields: object) -> list[dict[str, object]]:
    return [r for r in lines if r.get("event") == event
            and all(r.get(k) == v for k, v in fields.items())]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def workers(pid: int) -> set[int]:
    return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def until(cond: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def stop_up(proc: Proc, timeout: float = 60.0) -> tuple[int, str]:
    """SIGTERM to ``up`` by its PID; its exit status and what it wrote on stderr."""
    os.kill(proc.pid, signal.SIGTERM)
    code = proc.p.wait(timeout)
    assert proc.p.stderr is not None
    err = proc.p.stderr.read().decode(errors="replace")
    proc.stop()
    return code, err


@pytest.mark.slow
def test_up_runs_the_stack_restarts_a_crash_and_stops_in_reverse(tmp_path: Path) -> None:
    config = up_config(tmp_path)
    cfg = config_mod.load(config, required=True)
    require_nginx(cfg)
    proc = Proc(["--config", str(config), "up"], tmp_path)
    started: set[int] = set()
    try:
        ready = proc.wait_event("up.ready", 60)
        lines = list(proc.lines)
        assert [r["name"] for r in events(lines, "up.child_ready")] == list(NAMES)
        pids = {str(k): int(v) for k, v in dict(ready["pids"]).items()}  # type: ignore[call-overload]
        assert set(pids) == set(NAMES)
        started |= set(pids.values())
        urls = dict(ready["urls"])  # type: ignore[call-overload]
        front, origin = str(urls["front"]), str(urls["origin"])
        assert front == f"http://127.0.0.1:{cfg.nginx.listen[1]}"

        # The demo, through nginx, and mirrored into the legacy directory by the syncer.
        red = dict(demo.files())[RED]
        with httpx.Client(trust_env=False, timeout=5) as http:
            r = http.get(front + RED)
            assert (r.status_code, r.content) == (200, red)
            r = http.get(front + NEWS)
            assert r.status_code == 200 and b"News item 1" in r.content
        until(lambda: (cfg.legacy.dir / RED[1:]).is_file()
              and (cfg.legacy.dir / RED[1:]).read_bytes() == red, "the syncer to copy the demo")

        # The health checks of compose.yaml (python -m origin.probe) and the systemd units
        # (tandem probe): one code.
        for s in SERVICES:
            assert probe.main(["--config", str(config), *s.health]) == 0, s.name
            assert main(["--config", str(config), "probe", s.name, "--wait", "1"]) == 0
        assert (tmp_path / "var" / "logs" / "origin.log").is_file()

        # SIGKILL the origin: its workers go with it, the supervisor starts it again.
        old_workers = workers(pids["origin"])
        os.kill(pids["origin"], signal.SIGKILL)
        lines = wait_for(proc, "the origin to come back", lambda ls: len(
            events(ls, "up.child_ready", name="origin")) == 2)
        (crash,) = events(lines, "up.child_exited", name="origin")
        assert crash["pid"] == pids["origin"] and crash["code"] == -signal.SIGKILL
        (restart,) = events(lines, "up.child_restarting", name="origin")
        assert restart["restarts"] == 1 and float(restart["delay"]) > 0  # type: ignore[arg-type]
        new_origin = int(events(lines, "up.child_ready", name="origin")[-1]["pid"])  # type: ignore[call-overload]
        assert new_origin != pids["origin"]
        started.add(new_origin)
        until(lambda: not any(alive(w) for w in old_workers), "the old workers to stop")
        with httpx.Client(trust_env=False, timeout=5) as http:
            r = http.get(origin + RED)
            assert (r.status_code, r.content) == (200, red)
            assert http.get(front + RED).status_code == 200
    finally:
        code, err = stop_up(proc)
    assert code == 0, err
    stopped = events(list(proc.lines), "up.child_stopped")
    assert [r["name"] for r in stopped] == list(reversed(NAMES))
    assert all(r["code"] == 0 for r in stopped), stopped
    assert not [p for p in started if alive(p)]
    assert "tandem is up" in err and front + RED in err and "stops front, legacy, origin" in err


@pytest.mark.slow
def test_up_without_nginx_says_how_to_install_it_and_runs_the_rest(tmp_path: Path) -> None:
    config = up_config(tmp_path, binary=str(tmp_path / "no-nginx"))
    proc = Proc(["--config", str(config), "up", "--no-demo"], tmp_path)
    try:
        ready = proc.wait_event("up.ready", 60)
        assert ready["front"] is False
        (skipped,) = events(list(proc.lines), "up.front_skipped")
        assert "apt-get install nginx" in str(skipped["reason"])
        assert not events(list(proc.lines), "up.demo_loaded")
        src = tmp_path / "a.html"
        src.write_bytes(b"<p>hello</p>")
        assert main(["--config", str(config), "cluster", "put", str(src), "/news/a.html"]) == 0
        with httpx.Client(trust_env=False, timeout=5) as http:
            r = http.get(str(dict(ready["urls"])["origin"]) + "/news/a.html")  # type: ignore[call-overload]
            assert (r.status_code, r.content) == (200, b"<p>hello</p>")
    finally:
        code, err = stop_up(proc)
    assert code == 0, err
    assert "apt-get install nginx" in err
    stopped = [r["name"] for r in events(list(proc.lines), "up.child_stopped")]
    assert stopped == [n for n in reversed(NAMES) if n != "front"]


def test_probe_says_what_is_down(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = up_config(tmp_path)
    cfg = config_mod.load(config, required=True)
    assert main(["--config", str(config), "probe", "origin", "--ready"]) == 1
    assert f"tandem: probe: origin: http://127.0.0.1:{cfg.origin.listen[1]}/readyz: " in (
        capsys.readouterr().err)
    assert probe.main(["--config", str(config), "syncer"]) == 1
    assert "no tandem sync run holds" in capsys.readouterr().err
    assert probe.check(cfg, "front") is not None


# -- the supervisor alone, on stand-in children --------------------------------------------------


def stand_in(tmp: Path, name: str, body: str, prelude: str = "", **kw: float) -> Child:
    """A child that runs ``prelude``, marks itself ready by creating ``<tmp>/<name>.ready``,
    then runs ``body`` (Python)."""
    marker = tmp / f"{name}.ready"
    script = (f"import os, signal, sys, time\n{prelude}\n"
              f"open({str(marker)!r}, 'a').close()\n{body}")

    async def ready() -> str | None:
        return None if marker.exists() else "no marker"

    return Child(name, (sys.executable, "-c", script), ready, tmp / "logs" / f"{name}.log",
                 **kw)  # type: ignore[arg-type]


async def run_until(sup: Supervisor, cond: Callable[[], bool], within: float = 10.0) -> int:
    task = asyncio.create_task(sup.run())
    deadline = time.monotonic() + within
    while not cond() and not task.done():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)
    sup.stop()
    return await task


async def test_a_crashing_child_is_restarted_with_growing_delays(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "BASE_DELAY", 0.05)
    steady = stand_in(tmp_path, "steady", "time.sleep(60)")
    crashy = stand_in(tmp_path, "crashy",
                      "time.sleep(0.3); print('giving up', flush=True); sys.exit(3)")
    with structlog.testing.capture_logs() as logs:
        sup = Supervisor([steady, crashy])
        code = await run_until(sup, lambda: len(
            [e for e in logs if e["event"] == "up.child_restarting"]) >= 3)
    assert code == 0
    exits = [e for e in logs if e["event"] == "up.child_exited"]
    assert {e["name"] for e in exits} == {"crashy"} and exits[0]["code"] == 3
    assert exits[0]["last"] == "giving up"
    delays = [e["delay"] for e in logs if e["event"] == "up.child_restarting"]
    assert delays[:3] == [0.05, 0.1, 0.2]
    assert supervisor.backoff(20) == supervisor.MAX_DELAY
    stopped = [e["name"] for e in logs if e["event"] == "up.child_stopped"]
    assert stopped == ["crashy", "steady"]


async def test_a_child_that_dies_before_it_is_ready_fails_the_start(tmp_path: Path) -> None:
    first = stand_in(tmp_path, "first", "time.sleep(60)")
    broken = Child("broken", (sys.executable, "-c", "print('cannot bind'); raise SystemExit(2)"),
                   lambda: asyncio.sleep(0, "not yet"), tmp_path / "broken.log")
    never = stand_in(tmp_path, "never", "time.sleep(60)")
    failure = r"(?s)broken could not be started: it exited with status 2.*cannot bind"
    with structlog.testing.capture_logs() as logs, pytest.raises(StartFailed, match=failure):
        await Supervisor([first, broken, never]).run()
    started = [e["name"] for e in logs if e["event"] == "up.child_started"]
    assert started == ["first", "broken"]
    (first_pid,) = [e["pid"] for e in logs if e["event"] == "up.child_started"
                    and e["name"] == "first"]
    assert not alive(first_pid)


async def test_a_child_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    stubborn = stand_in(tmp_path, "stubborn", "time.sleep(60)",
                        "signal.signal(signal.SIGTERM, signal.SIG_IGN)", stop_timeout=0.3)
    with structlog.testing.capture_logs() as logs:
        sup = Supervisor([stubborn])
        assert await run_until(sup, lambda: (tmp_path / "stubborn.ready").exists()) == 1
    assert [e["name"] for e in logs if e["event"] == "up.child_killed"] == ["stubborn"]
    assert not any(alive(p) for p in [e["pid"] for e in logs if e["event"] == "up.child_started"])

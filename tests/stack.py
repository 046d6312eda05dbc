"""A whole serving stack of real processes on 127.0.0.1, for tests that exercise every path.

``running_stack(tmp)`` starts, and stops by PID on exit:

- the master (``tandem cluster serve``) with three volumes and a small chunk size, so files of
  more than ``CHUNK_SIZE`` bytes have several chunks (never in the view: the origin streams
  them);
- the origin (``tandem origin``, ``ORIGIN_WORKERS`` pre-forked workers) over the cluster;
- the legacy origin (``tandem origin --legacy``, one worker) over ``<tmp>/legacy``;
- two real nginx in front of the origin, when nginx is installed: one with the fast path
  (files from the volumes' hard-link views, misses to the origin) and one with
  ``fast_path = false``, where every request reaches the origin, which answers
  ``X-Accel-Redirect`` to the chunk file.

``Stack.urls`` names each serving path's base URL; the nginx ones are absent without nginx
(``Stack.nginx_missing`` says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nginxproc import Nginx, for_test, free_port
from procs import Proc, start_master, write_config

from cluster.meta import Entry
from cluster.remote import RemoteCluster
from nginx import runner
from nginx.errors import NginxNotInstalled
from origin import config as config_mod
from origin.config import Config

CHUNK_SIZE = 256 * 1024
ORIGIN_WORKERS = 2

ORIGIN = "origin"  # the Python origin, directly: streams every file
FAST = "nginx-fast"  # nginx serving from the views, the origin behind it
ACCEL = "nginx-accel"  # nginx with fast_path off: the origin answers X-Accel-Redirect
LEGACY = "legacy"  # the legacy origin over the legacy directory, directly


@dataclass
class Stack:
    tmp: Path
    cfg: Config
    master: Proc
    master_url: str
    origin: Proc
    legacy: Proc
    urls: dict[str, str] = field(default_factory=dict)  # serving path → base URL
    nginx: dict[str, Nginx] = field(default_factory=dict)
    nginx_missing: str = ""

    @property
    def legacy_dir(self) -> Path:
        return self.cfg.legacy.dir

    def put(self, path: str, data: bytes, mtime_ns: int | None = None) -> Entry:
        """Put ``data`` at the cluster ``path`` through the master (returns after commit)."""
        return asyncio.run(_put(self.master_url, path, data, mtime_ns))

    def put_legacy(self, path: str, data: bytes, mtime_ns: int) -> Path:
        """Write ``data`` at ``path`` in the legacy directory, atomically, with that mtime."""
        dest = self.legacy_dir / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        tmp.write_bytes(data)
        os.utime(tmp, ns=(mtime_ns, mtime_ns))
        tmp.rename(dest)
        return dest


async def _put(url: str, path: str, data: bytes, mtime_ns: int | None) -> Entry:
    async with RemoteCluster(url) as rc:
        return await rc.put(path, data, mtime_ns=mtime_ns)


def wait_events(proc: Proc, event: str, count: int, timeout: float = 20.0) -> None:
    """Wait until ``proc`` has logged ``event`` ``count`` times (polls its parsed lines)."""
    deadline = time.monotonic() + timeout
    while sum(1 for rec in list(proc.lines) if rec.get("event") == event) < count:
        if proc.p.poll() is not None:
            proc.wait_event(f"{event} (x{count})", 0)  # raises with the process's stderr
        assert time.monotonic() < deadline, (
            f"{count} x {event!r} not seen within {timeout} s; pid {proc.pid} logged: "
            f"{proc.lines[-10:]}"
        )
        time.sleep(0.02)


def children(pid: int) -> set[int]:
    """The child processes of ``pid`` (for the origin supervisor: its workers)."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(c) for c in text.split()}


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """``values`` in the environment the stack's processes inherit, restored on exit."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def running_stack(tmp: Path) -> Iterator[Stack]:
    """The whole stack under ``tmp``; every process is stopped by its PID on exit."""
    origin_port, legacy_port = free_port(), free_port()
    legacy_dir = tmp / "legacy"
    legacy_dir.mkdir()
    config = write_config(
        tmp,
        chunk_size=CHUNK_SIZE,
        sections={
            "origin": {"listen": f"127.0.0.1:{origin_port}", "workers": ORIGIN_WORKERS},
            "legacy": {"listen": f"127.0.0.1:{legacy_port}", "dir": str(legacy_dir)},
        },
    )
    cfg = config_mod.load(config, required=True)
    with contextlib.ExitStack() as stack:
        # Unbuffered output, as in a container: the pre-forked workers share one stdout pipe
        # and every log line must still reach it whole (origin/logs.py).
        with _environ(PYTHONUNBUFFERED="1"):
            master, master_url = start_master(config)
            stack.callback(master.stop)
            origin = Proc(["--config", str(config), "origin"], tmp)
            stack.callback(origin.stop)
            legacy = Proc(["--config", str(config), "origin", "--legacy", "--workers", "1"], tmp)
            stack.callback(legacy.stop)
        s = Stack(tmp, cfg, master, master_url, origin, legacy)
        s.urls[ORIGIN] = str(origin.wait_event("origin.listening")["url"])
        s.urls[LEGACY] = str(legacy.wait_event("legacy.listening")["url"])
        try:
            runner.binary(cfg)
        except NginxNotInstalled as exc:
            s.nginx_missing = f"needs the real nginx: {exc} (./dev test installs it)"
        else:
            for name, fast in ((FAST, True), (ACCEL, False)):
                ncfg = for_test(cfg, tmp / name)
                ncfg = dataclasses.replace(
                    ncfg, nginx=dataclasses.replace(ncfg.nginx, fast_path=fast)
                )
                s.nginx[name] = stack.enter_context(Nginx(ncfg))
                s.urls[name] = f"http://127.0.0.1:{ncfg.nginx.listen[1]}"
        wait_events(origin, "origin.worker_ready", ORIGIN_WORKERS)
        wait_events(legacy, "legacy.worker_ready", 1)
        yield s

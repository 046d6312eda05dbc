"""The view process: keeps the hard-link views (``view.py``) beside the master, in a process of
its own, so that the view's work (a few SQLite reads and a few links per change) neither waits
for the master's GIL nor holds it. Moved here from a thread of the master, it made 3,000
goal-1 puts 29% faster (median of eight alternating pairs of runs here: 824 → 1,060 files/s).

The master (``ViewProcess``) starts ``python -m cluster.viewproc`` with two pipes and talks in
JSON lines. To the view: the set-up (metadata folder, defaults, local volumes, what the last
clean stop left), then ``wake`` after every commit, ``volumes`` when a volume's state
changes, ``sweep`` when chunk files were removed from under links, ``rebuild`` (a migration),
``stop``. From the view: ``started`` (``rebuilt`` or ``resumed``), ``rebuilt`` (asked for, or
the hourly one), ``stopped``. The view dies with the master (``PR_SET_PDEATHSIG``, and the
end of its pipe), leaving no clean-stop record: the next start rebuilds. A view process that
dies on its own is started again (it then rebuilds).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import select
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from cluster.view import BUSY_PAUSE, RECONCILE, Stopped, View, ViewVolume
from cluster.volume import LocalVolume

if TYPE_CHECKING:
    from cluster.master import Master

log = structlog.get_logger("cluster")

#: Where the view process imports the code from: where the master did.
_CODE = str(Path(__file__).resolve().parent.parent)
STOP_WAIT = 60.0  # seconds a stop waits for the view to catch up before killing it
RESTART_DELAY = 1.0


class ViewProcess:
    """The master's side: starts the view process and tells it what it must know."""

    def __init__(self, m: Master, clean: dict[str, Any] | None) -> None:
        self.m = m
        self._clean = clean  # for the first start only: a restarted view rebuilds
        self._proc: asyncio.subprocess.Process | None = None
        self._to: int = -1
        self._from: int = -1
        self._out = bytearray()  # messages not yet taken by the pipe (the view is busy)
        self._rebuilt: asyncio.Future[int] | None = None
        self._stopped: asyncio.Future[bool] | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.started = asyncio.Event()  # the first view process rebuilt or resumed the views

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def volumes(self) -> dict[str, list[Any]]:
        return {
            str(v.id): [v.path, v.readable]
            for v in self.m.volumes.values()
            if isinstance(v.store, LocalVolume)
        }

    async def start(self) -> None:
        await self._spawn()
        self._task = asyncio.create_task(self._keep(), name="view")

    async def _keep(self) -> None:
        """Follow the view process; start it again when it dies on its own."""
        while True:
            returncode = await self._follow()
            if self._stopping:
                return
            log.error("view.died", returncode=returncode)
            while True:
                await asyncio.sleep(RESTART_DELAY)
                if self._stopping:
                    return
                try:
                    await self._spawn()
                    break
                except OSError as exc:
                    log.error("view.start_failed", error=str(exc))

    async def _spawn(self) -> None:
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        setup = {
            "meta_dir": str(self.m.cfg.meta_dir),
            "goal": self.m.cfg.default_goal,
            "trash_time": self.m.cfg.default_trash_time,
            "volumes": self.volumes(),
            "clean": self._clean,
            "log_level": _log_level(),
        }
        self._clean = None
        try:
            path = os.pathsep.join(p for p in (_CODE, os.environ.get("PYTHONPATH")) if p)
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cluster.viewproc", str(to_r), str(from_w),
                pass_fds=(to_r, from_w),
                stdin=asyncio.subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": path},
            )
        except BaseException:
            os.close(to_w)
            os.close(from_r)
            raise
        finally:
            os.close(to_r)
            os.close(from_w)
        self._to, self._from = to_w, from_r
        os.set_blocking(self._to, False)
        self._send({"op": "setup", **setup})

    async def _follow(self) -> int | None:
        """Read the view's messages until its pipe ends; its exit status."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(self._from, "rb", 0)
        )
        try:
            while line := await reader.readline():
                self._received(json.loads(line))
        finally:
            transport.close()
            if self._out:
                asyncio.get_running_loop().remove_writer(self._to)
                self._out.clear()
            with contextlib.suppress(OSError):
                os.close(self._to)
            self._to = -1
            for fut in (self._rebuilt, self._stopped):
                if fut is not None and not fut.done():
                    fut.set_exception(RuntimeError("the view process ended"))
        assert self._proc is not None
        return await self._proc.wait()

    def _received(self, msg: dict[str, Any]) -> None:
        kind = msg.get("event")
        if kind == "started":
            log.info(f"view.{msg['how']}", upto=msg["applied"])
            self.started.set()
        elif kind == "rebuilt":
            log.info("view.rebuilt", upto=msg["applied"])
            if self._rebuilt is not None and not self._rebuilt.done():
                self._rebuilt.set_result(int(msg["applied"]))
        elif kind == "stopped":
            log.info("view.stopped", clean=msg["clean"])  # unclean: stopped mid-rebuild
            if self._stopped is not None and not self._stopped.done():
                self._stopped.set_result(bool(msg["clean"]))

    def _send(self, msg: dict[str, Any]) -> None:
        """Queue a message; it reaches the view in order, never blocking the loop (a view
        busy for long, e.g. rebuilding, fills the pipe: the rest waits here)."""
        if self._to < 0:
            return  # none running: the next one starts from the master's state
        backlog = bool(self._out)
        self._out += json.dumps(msg).encode() + b"\n"
        if not backlog:
            self._flush()

    def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._out:
                del self._out[: os.write(self._to, self._out)]
        except BlockingIOError:
            loop.add_writer(self._to, self._flush)  # again when the pipe has room
            return
        except OSError:  # the view is gone: ``_follow`` starts another
            self._out.clear()
        loop.remove_writer(self._to)

    # -- what the master tells it ------------------------------------------------------------

    def wake(self) -> None:
        """A commit: there are changes to apply (no need to say so again while messages
        wait for the view: it wakes for them)."""
        if not self._out:
            self._send({"op": "wake"})

    def volumes_changed(self) -> None:
        self._send({"op": "volumes", "volumes": self.volumes()})

    def sweep(self, vids: set[int]) -> None:
        """Chunk files were removed from these volumes: their links must be redone."""
        self._send({"op": "sweep", "volumes": sorted(vids)})

    async def rebuild(self) -> None:
        """Make every view match the namespace (after a migration); returns when done."""
        if self._to < 0:
            return  # not running: a view process that starts again rebuilds anyway
        self._rebuilt = asyncio.get_running_loop().create_future()
        self._send({"op": "rebuild"})
        with contextlib.suppress(RuntimeError):  # it ended: the next one rebuilds
            await self._rebuilt

    async def stop(self) -> None:
        """Let the view catch up and record a clean stop, then end it (killed after
        ``STOP_WAIT`` seconds: the next start then rebuilds)."""
        self._stopping = True
        proc = self._proc
        if self._to >= 0:
            self._stopped = asyncio.get_running_loop().create_future()
            self._send({"op": "stop"})
            try:
                async with asyncio.timeout(STOP_WAIT):
                    await asyncio.shield(self._stopped)
            except (TimeoutError, RuntimeError) as exc:
                log.warning("view.stop_failed", error=str(exc) or "timed out")
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _log_level() -> str:
    """The master's log level, for the view's own lines."""
    level = structlog.get_logger().bind().get_effective_level()
    for name in ("error", "warning", "info"):
        if level >= getattr(logging, name.upper()):
            return name
    return "debug"


# -- the view process -------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Ask the kernel to kill this process when the master dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _Pipe:
    """Messages from the master, read without blocking longer than asked."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""
        self.eof = False
        self.pending: list[dict[str, Any]] = []

    def _fill(self, timeout: float | None) -> None:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            data = os.read(self.fd, 1 << 16)
            if not data:
                self.eof = True
            self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        self.pending.extend(json.loads(line) for line in lines if line)

    def read(self, timeout: float | None) -> list[dict[str, Any]]:
        """The messages that came, waiting up to ``timeout`` for one if none did."""
        if not self.pending:
            self._fill(timeout)
        out, self.pending = self.pending, []
        return out

    def stopping(self) -> bool:
        """Without waiting: whether the master asked for a stop, or is gone (the messages
        read meanwhile stay for ``read``)."""
        self._fill(0)
        return self.eof or any(m.get("op") == "stop" for m in self.pending)


def main(argv: list[str]) -> int:
    _die_with_parent()
    pipe, out = _Pipe(int(argv[0])), int(argv[1])

    def send(**msg: Any) -> None:
        os.write(out, json.dumps(msg).encode() + b"\n")

    msgs: list[dict[str, Any]] = []
    while not msgs and not pipe.eof:
        msgs = pipe.read(None)
    if not msgs or msgs[0].get("op") != "setup":
        return 2
    setup = msgs.pop(0)
    from origin import logs

    logs.configure(setup["log_level"], role="view")
    view = View(
        Path(setup["meta_dir"]), setup["goal"], setup["trash_time"], _volumes(setup["volumes"])
    )
    # A stop asked for in the middle of a rebuild (a million files: 44 s here) ends it
    # between two folders: the views are not whole, so no clean-stop record; the master
    # stops at once and its next start rebuilds.
    view.stopping = pipe.stopping
    try:
        if view.resume(setup["clean"]):
            how = "resumed"
        else:
            view.rebuild()
            how = "rebuilt"
        send(event="started", how=how, applied=view.applied)
        return _serve(view, pipe, msgs, send)
    except Stopped:
        with contextlib.suppress(OSError):
            send(event="stopped", clean=False)
        return 0
    finally:
        view.close()


def _serve(view: View, pipe: _Pipe, msgs: list[dict[str, Any]], send: Any) -> int:
    rebuilt_at = time.monotonic()
    busy = True  # a pass at once: commits may have come during the start
    while True:
        for msg in msgs:
            op = msg.get("op")
            if op == "volumes":
                view.volumes = _volumes(msg["volumes"])
            elif op == "sweep":
                view.suspects.update(msg["volumes"])
            elif op == "rebuild":
                view.rebuild()
                rebuilt_at = time.monotonic()
                send(event="rebuilt", applied=view.applied)
            elif op == "stop":
                view.finish()
                send(event="stopped", clean=True)
                return 0
            busy = True
        if pipe.eof:
            return 0  # the master is gone without a stop: no clean-stop record
        if time.monotonic() - rebuilt_at >= RECONCILE:
            view.rebuild()
            rebuilt_at = time.monotonic()
            send(event="rebuilt", applied=view.applied)
        if busy:
            busy = view.apply_next() > 0
            if view.suspects:
                view.sweep_suspects()
        # While commits keep coming, a pass every BUSY_PAUSE; else wait for a wake-up.
        if busy:
            time.sleep(BUSY_PAUSE)
            msgs = pipe.read(0)
        else:
            msgs = pipe.read(max(0.0, rebuilt_at + RECONCILE - time.monotonic()))


def _volumes(raw: dict[str, list[Any]]) -> dict[int, ViewVolume]:
    return {int(vid): ViewVolume(path, readable) for vid, (path, readable) in raw.items()}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

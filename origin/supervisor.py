"""Supervising child processes: start them in order, each once the one before it is ready;
restart one that crashes, with a growing delay; stop them in reverse order.

``Supervisor(children).run()`` is the engine of ``tandem up`` (``origin/up.py`` says which
children and how each is known to be ready); it knows nothing of what they are.

- **Start**: one child at a time; the next starts when ``Child.ready`` says the previous one
  is ready. A child that exits before it is ready, or is not ready within its
  ``start_timeout``, fails the start: what was started is stopped (reverse order) and
  ``StartFailed`` carries the last lines of its log.
- **Crash** (a ready child exits while nobody stopped it): logged (``up.child_exited``, with
  the last line of its log) and started again after ``BASE_DELAY`` × 2^n, at most
  ``MAX_DELAY`` (``up.child_restarting``); a child that ran ``STABLE`` seconds before it
  crashed starts again from the shortest delay. Its readiness is awaited again
  (``up.child_ready``) without holding up anything else.
- **Stop** (SIGTERM/SIGINT to the supervisor, or the end of ``run``): children in the reverse
  of the start order, one at a time: SIGTERM to the child's PID, then SIGKILL to that PID if
  it has not exited within its ``stop_timeout``. Only processes this supervisor started are
  signalled, always by PID.

Each child runs in its own session (Ctrl-C on the terminal reaches the supervisor alone, which
then stops the children in order), with stdin from /dev/null and stdout and stderr appended to
its own log file; ``SUPERVISOR_ENV`` names the supervisor, so the child asks for SIGTERM if the
supervisor dies (``origin.lifetime``).

Why a loop and not tenacity (the project's retry library): tenacity retries a *call* until it
returns; a supervised child never returns while it is healthy, its restart must wait for the
crash, back off, reset after a stable run and give way to a stop at any moment. That is the
ten lines of ``_watch``; tenacity's wait objects would only replace the one formula in
``backoff``.

Imports nothing of ours but ``origin.lifetime`` (for the environment name); never sanic.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import structlog

from origin.lifetime import SUPERVISOR_ENV

log = structlog.get_logger("up")

BASE_DELAY = 0.5  # seconds before the first restart of a crashed child
MAX_DELAY = 30.0  # longest delay between two restarts
STABLE = 30.0  # seconds of running after which a crash counts as the first again
POLL = 0.1  # seconds between two readiness checks
CHECK_TIMEOUT = 5.0  # seconds one readiness check may take

# What a readiness check answers: None when ready, else what is still missing (for the log).
Check = Callable[[], Awaitable[str | None]]


@dataclass(frozen=True)
class Child:
    """A process to supervise: ``argv`` started in ``cwd``, logging into ``log_file``."""

    name: str
    argv: tuple[str, ...]
    ready: Check
    log_file: Path
    cwd: Path | None = None
    start_timeout: float = 60.0
    stop_timeout: float = 15.0


class StartFailed(Exception):
    """A child could not be started (it exited, or was not ready in time); the message says
    which, why, and ends with the last lines of its log."""


def backoff(failures: int) -> float:
    """Seconds to wait before restart number ``failures`` (1, 2, …) of a crashing child."""
    return float(min(MAX_DELAY, BASE_DELAY * 2 ** max(0, failures - 1)))


def tail(path: Path, lines: int = 5, limit: int = 2000) -> str:
    """The last ``lines`` lines of a log file (at most ``limit`` characters), or ""."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read()
    except OSError:
        return ""
    text = "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])
    return text[-limit:]


@dataclass
class _Running:
    child: Child
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0  # monotonic time of the last start
    failures: int = 0  # crashes since the last stable run
    restarts: int = 0
    stopping: bool = False
    watcher: asyncio.Task[None] | None = None


class Supervisor:
    """Runs ``children`` (in start order) until SIGTERM/SIGINT or ``stop()``.

    ``on_ready`` is called once every child is ready; ``run`` returns 0 when every child
    stopped cleanly on its SIGTERM (status 0, or ended by the signal), 1 when one had to be
    killed or exited with an error while stopping. It raises ``StartFailed`` when the start
    failed (after stopping what it had started)."""

    def __init__(self, children: Sequence[Child], *,
                 on_ready: Callable[[], Awaitable[None] | None] | None = None,
                 on_started: Callable[[str], Awaitable[None] | None] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.children = list(children)
        self.on_ready = on_ready
        self.on_started = on_started  # after each child is ready (``tandem up`` loads the demo)
        self.env = env or {}
        self._stop = asyncio.Event()
        self._running: list[_Running] = []  # in start order

    def stop(self) -> None:
        self._stop.set()

    def pids(self) -> dict[str, int]:
        """The PID of each running child."""
        return {r.child.name: r.proc.pid for r in self._running
                if r.proc is not None and r.proc.returncode is None}

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            try:
                await self._start_all()
                if not self._stop.is_set() and self.on_ready is not None:
                    await _maybe_await(self.on_ready())
                await self._stop.wait()
            finally:
                code = await self._stop_all()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        return code

    def _on_signal(self, sig: int) -> None:
        if not self._stop.is_set():
            log.info("up.stopping", signal=signal.Signals(sig).name,
                     order=[r.child.name for r in reversed(self._running)])
        self._stop.set()

    # -- start ---------------------------------------------------------------------------------

    async def _start_all(self) -> None:
        for child in self.children:
            if self._stop.is_set():
                return
            run = _Running(child)
            self._running.append(run)
            try:
                await self._spawn(run)
            except OSError as exc:
                raise StartFailed(f"{child.name} could not be started: {exc}") from None
            problem = await self._until_ready(run, child.start_timeout)
            if problem is not None:
                if self._stop.is_set():
                    return
                raise StartFailed(_failure(child, problem))
            run.watcher = asyncio.create_task(self._watch(run), name=f"watch-{child.name}")
            if self.on_started is not None:
                await _maybe_await(self.on_started(child.name))

    async def _spawn(self, run: _Running) -> None:
        child = run.child
        with _open_log(child) as out:  # the child keeps its own descriptor
            run.proc = await asyncio.create_subprocess_exec(
                *child.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=child.cwd,
                env={**os.environ, **self.env, SUPERVISOR_ENV: str(os.getpid())},
                start_new_session=True,
            )
        run.started = time.monotonic()
        log.info("up.child_started", name=child.name, pid=run.proc.pid,
                 log=str(child.log_file), restarts=run.restarts)

    async def _until_ready(self, run: _Running, within: float) -> str | None:
        """Wait until the child is ready (None), or return why not: it exited, the timeout
        passed, or the supervisor is stopping."""
        assert run.proc is not None
        proc, child = run.proc, run.child
        deadline = time.monotonic() + within
        reason = "not checked yet"
        while True:
            if self._stop.is_set() or run.stopping:
                return "stopping"
            if proc.returncode is not None:
                return f"it exited with status {proc.returncode} before it was ready"
            answer: str | None
            try:
                answer = await asyncio.wait_for(child.ready(), CHECK_TIMEOUT)
            except TimeoutError:
                answer = "the readiness check timed out"
            if answer is not None:
                reason = answer
            else:
                if proc.returncode is None:  # the answer came from this process, still alive
                    log.info("up.child_ready", name=child.name, pid=proc.pid,
                             seconds=round(time.monotonic() - run.started, 3))
                    return None
                continue
            if time.monotonic() > deadline:
                return f"not ready after {within:g} s: {reason}"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), POLL)

    # -- crash and restart ---------------------------------------------------------------------

    async def _watch(self, run: _Running) -> None:
        child = run.child
        while True:
            assert run.proc is not None
            proc = run.proc
            code = await proc.wait()
            if run.stopping or self._stop.is_set():
                return
            uptime = time.monotonic() - run.started
            if uptime >= STABLE:
                run.failures = 0
            run.failures += 1
            delay = backoff(run.failures)
            log.error("up.child_exited", name=child.name, pid=proc.pid, code=code,
                      uptime=round(uptime, 3), log=str(child.log_file),
                      last=tail(child.log_file, 1, 500))
            log.warning("up.child_restarting", name=child.name, delay=delay,
                        restarts=run.restarts + 1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if run.stopping or self._stop.is_set():
                return
            run.restarts += 1
            try:
                await self._spawn(run)
            except OSError as exc:  # its log folder went away …: counts as one more crash
                log.error("up.child_restart_failed", name=child.name, error=str(exc))
                run.started = time.monotonic()
                continue
            problem = await self._until_ready(run, child.start_timeout)
            if problem is not None and problem != "stopping" and run.proc.returncode is None:
                log.warning("up.child_not_ready", name=child.name, pid=run.proc.pid,
                            reason=problem)

    # -- stop ----------------------------------------------------------------------------------

    async def _stop_all(self) -> int:
        self._stop.set()
        code = 0
        for run in reversed(self._running):
            run.stopping = True
            proc = run.proc
            if not await self._terminate(run):
                code = 1
            if run.watcher is not None:
                await run.watcher  # returns once its process exited, or at once (stopping)
            if run.proc is not proc and not await self._terminate(run):
                code = 1  # a restart was being spawned while the stop began
        log.info("up.stopped", code=code)
        return code

    async def _terminate(self, run: _Running) -> bool:
        """SIGTERM to the child's PID, SIGKILL after its ``stop_timeout``; True when it
        exited with status 0 or by the SIGTERM (or was not running: crashed and waiting for
        its restart)."""
        proc, child = run.proc, run.child
        if proc is None:
            return True
        if proc.returncode is not None:
            log.info("up.child_stopped", name=child.name, pid=proc.pid, code=proc.returncode,
                     running=False)
            return True
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        killed = False
        try:
            code = await asyncio.wait_for(proc.wait(), child.stop_timeout)
        except TimeoutError:
            log.error("up.child_killed", name=child.name, pid=proc.pid,
                      after=child.stop_timeout)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            code = await proc.wait()
            killed = True
        log.info("up.child_stopped", name=child.name, pid=proc.pid, code=code)
        # Ended by the SIGTERM itself (no handler) is a clean stop, as systemd counts it.
        return not killed and code in (0, -signal.SIGTERM)


def _open_log(child: Child) -> BinaryIO:
    """The child's log file, for appending, with a line that says who starts now."""
    child.log_file.parent.mkdir(parents=True, exist_ok=True)
    out = open(child.log_file, "ab")  # noqa: SIM115 - closed by the caller's with
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    out.write(f"-- tandem up: starting {child.name} at {stamp}: {' '.join(child.argv)}\n"
              .encode())
    out.flush()
    return out


def _failure(child: Child, problem: str) -> str:
    last = tail(child.log_file)
    text = f"{child.name} could not be started: {problem} (log: {child.log_file})"
    return f"{text}\n{last}" if last else text


async def _maybe_await(value: Awaitable[None] | None) -> None:
    if value is not None:
        await value

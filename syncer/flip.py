"""``tandem flip --to cluster|legacy``: the seed's migration and rollback runbook as one
journaled, resumable command. Flipping back is the rollback.

The steps, each recorded in ``<state_dir>/flip.json`` (atomic writes) once done:

    fence    create the fence file (``syncer.fence``): tandem's write paths refuse, crawlers
             see the file, ``/readyz`` fails.
    drain    wait until the syncer has applied everything written before the fence:
             cluster → legacy, its cursor reaches the changelog head; legacy → cluster, its
             status says idle with an empty queue, written after the fence (or unchanged for
             ``SETTLE`` seconds after it).
    verify   compare both sides by SHA-256, mtime and mode (``sync verify``); check that the
             changelog did not move since the drain (a write that slipped past the fence: drain
             and verify again, up to ``ROUNDS`` times); when nginx runs, ``nginx -t`` the
             config for the new primary.
    switch   write the new primary into ``<state_dir>/primary`` (to the cluster: first set the
             cluster → legacy cursor to the verified changelog head, so that mirror does not
             replay what the other direction wrote); wait until the running syncer follows it.
    nginx    when nginx runs on ``nginx.run_dir``: render with the new primary and backup,
             ``nginx -t``, reload. Not running: nothing to do (its next start renders the
             persisted primary).
    unfence  remove the fence and the journal.

What a failure does:

- **Before the switch** (no syncer to drain, a drain timeout, a difference, the master
  unreachable): the flip stops with nothing changed: writers unfenced, journal removed, the
  primary as it was; exit 1 with the reason (the differences listed).
- **At or after the switch** (the syncer does not follow, nginx refuses its config): the flip
  stops where it is and writers stay fenced (the sides are equal; nothing may write until the
  flip is finished); exit 1 with the reason. Fix it and run the same command again.
- **Killed** (SIGKILL, Ctrl-C, power loss) at any point: the journal says which steps are
  done; the same command again continues with the next one. Every step is safe to repeat.

``--to`` naming the other side while a flip is unfinished is refused (finish it, or cancel it
with ``--abort`` before its switch). This module imports neither ``origin`` nor ``nginx``: the
CLI root passes the front web server in as a ``Front``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import structlog

from cluster.changelog import ChangeFeed
from cluster.cli import master_client
from cluster.errors import ClusterError
from syncer import fence, state
from syncer.errors import FlipError, StateError, SyncError
from syncer.state import DIRECTIONS, PRIMARIES, Primary, other
from syncer.verify import verify

if TYPE_CHECKING:
    from origin.config import Config

log = structlog.get_logger("syncer")

STEPS = ("fence", "drain", "verify", "switch", "nginx", "unfence")
JOURNAL_FILE = "flip.json"
LOCK_FILE = "flip.lock"
POLL = 0.1  # seconds between looks at the syncer's progress
SETTLE = 1.0  # seconds an idle directory mirror's status must stay unchanged after the fence
ROUNDS = 3  # drain + verify rounds when the changelog moves under the fence
SHOW_DIFFERENCES = 20
PROGRESS_EVERY = 5.0  # seconds between progress lines while waiting


class Front(Protocol):
    """The front web server a flip re-points (nginx, adapted by the CLI root). ``test`` and
    ``reload`` raise ``FlipError`` with the server's own message."""

    where: str  # for people: "nginx on /srv/tandem/nginx"

    def running(self) -> int | None: ...

    def test(self, primary: Primary) -> None: ...

    def reload(self, primary: Primary) -> None: ...


@dataclass
class Journal:
    to: Primary
    source: Primary  # the primary before the flip
    started: float
    done: list[str] = field(default_factory=list)
    fenced_at: float | None = None
    head: int | None = None  # changelog head once drained (and verified)

    @staticmethod
    def load(path: Path) -> Journal | None:
        try:
            data = json.loads(path.read_text())
            j = Journal(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            raise StateError(f"{path}: unreadable flip journal ({exc}); look at it, and remove "
                             "it only if no flip is unfinished") from None
        if j.to not in PRIMARIES or j.source not in PRIMARIES or not set(j.done) <= set(STEPS):
            raise StateError(f"{path}: not a flip journal: {data!r}")
        return j

    def save(self, path: Path) -> None:
        state.atomic_write(path, (json.dumps(asdict(self)) + "\n").encode())


class Flip:
    """One flip to ``to``; ``run`` carries it out (or on), ``plan`` describes it."""

    def __init__(self, cfg: Config, to: Primary, *, front: Front, timeout: float = 300.0,
                 out: Callable[[str], None] = print,
                 after_step: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.to = to
        self.front = front
        self.timeout = timeout
        self.out = out
        self.after_step = after_step  # called once a step is journaled (tests stop flips here)
        self.state_dir = cfg.sync.state_dir
        self.journal_file = self.state_dir / JOURNAL_FILE
        self.fence_file = cfg.origin.fence_file
        self.feed = ChangeFeed(cfg.cluster.meta_dir)

    # -- running -----------------------------------------------------------------------------

    async def run(self) -> int:
        with flip_lock(self.state_dir):
            j = self._begin()
            if j is None:
                return 0
            for step in STEPS:
                if step in j.done:
                    continue
                try:
                    await getattr(self, f"_{step}")(j)
                except (SyncError, ClusterError, OSError) as exc:
                    return self._stopped(j, step, exc)
                j.done.append(step)
                if step != "unfence":
                    j.save(self.journal_file)
                log.info("flip.step_done", step=step, to=j.to)
                if self.after_step is not None:
                    self.after_step(step)
        log.info("flip.done", primary=j.to, direction=DIRECTIONS[j.to])
        self.out(f"flip done: {j.to} is primary; the syncer mirrors {DIRECTIONS[j.to]}")
        if j.to == "legacy":
            self.out(f"writes into the cluster are refused while the legacy directory is "
                     f"primary: writers write into {self.cfg.legacy.dir}; "
                     "`tandem flip --to cluster` is the way back")
        return 0

    def _begin(self) -> Journal | None:
        """The journal to carry on: an unfinished flip's, or a new one (None: nothing to do)."""
        j = Journal.load(self.journal_file)
        primary = state.read_primary(self.state_dir)
        if j is not None:
            if j.to != self.to:
                raise FlipError(self._conflict(j))
            log.info("flip.resumed", to=j.to, done=j.done)
            self.out(f"resuming the flip to {j.to} (done: {', '.join(j.done) or 'nothing'})")
            return j
        if primary == self.to:
            self.out(f"{self.to} is already primary: nothing to do")
            return None
        found = fence.read(self.fence_file)
        if found is not None:
            raise FlipError(f"{fence.describe(found)}, but no flip is recorded in "
                            f"{self.journal_file}: someone else fenced the writers; remove "
                            f"{self.fence_file} when they are done, then flip")
        j = Journal(to=self.to, source=primary, started=time.time())
        j.save(self.journal_file)
        log.info("flip.started", to=j.to, source=j.source)
        self.out(f"flipping: {DIRECTIONS[j.source]} becomes {DIRECTIONS[j.to]}")
        return j

    def _conflict(self, j: Journal) -> str:
        done = ", ".join(j.done) or "nothing yet"
        how = ("its switch is done: finish it, then flip back to roll back"
               if switched(self.state_dir, j) else "run `tandem flip --abort` to cancel it")
        return (f"an unfinished flip to {j.to} is recorded in {self.journal_file} (done: "
                f"{done}); run `tandem flip --to {j.to}` to finish it, or {how}")

    def _stopped(self, j: Journal, step: str, exc: BaseException) -> int:
        """A step failed: before the switch, undo the fence (nothing changed); after it,
        stay fenced for a re-run."""
        reason = str(exc) if isinstance(exc, SyncError) else f"{type(exc).__name__}: {exc}"
        if not switched(self.state_dir, j):
            abort(self.state_dir, self.fence_file)
            log.warning("flip.aborted", step=step, to=j.to, error=reason)
            self.out(f"{step:8} failed: {reason}")
            self.out(f"flip stopped with nothing changed: {j.source} is still primary, "
                     "writers are unfenced")
        else:
            log.error("flip.stopped", step=step, to=j.to, error=reason)
            self.out(f"{step:8} failed: {reason}")
            self.out(f"flip stopped at step {step}: {j.to} is primary now, writers stay "
                     f"fenced; fix the cause and run `tandem flip --to {j.to}` again")
        return 1

    # -- the steps ---------------------------------------------------------------------------

    async def _fence(self, j: Journal) -> None:
        j.fenced_at = time.time()
        fence.raise_fence(self.fence_file, j.to, j.source, j.fenced_at)
        self.out(f"fence    writers fenced: {self.fence_file}")

    async def _drain(self, j: Journal) -> None:
        j.head = await self._drained(j, time.monotonic() + self.timeout)
        self.out(f"drain    the syncer has applied everything (changelog at {j.head})")

    async def _drained(self, j: Journal, deadline: float) -> int:
        """Wait until the syncer has applied everything written before the fence; returns the
        changelog head at that moment."""
        assert j.fenced_at is not None
        quiet: tuple[object, float] | None = None  # (status written at, first seen)
        reported = time.monotonic()
        while True:
            head = await self._head()
            syncer = state.running_syncer(self.state_dir)
            if j.source == "cluster":
                applied = state.read_cursor(self.state_dir)
                if applied is not None and applied >= head:
                    return head
                where = f"applied {applied if applied is not None else 'nothing'} of {head}"
            else:
                st = state.read_status(self.state_dir) or {}
                updated = st.get("updated")
                if (st.get("direction") == DIRECTIONS["legacy"] and st.get("idle") is True
                        and st.get("queue") == 0):
                    if isinstance(updated, int | float) and updated >= j.fenced_at:
                        return head
                    # A mirror that writes its status only when something happens.
                    if quiet is None or quiet[0] != updated:
                        quiet = (updated, time.monotonic())
                    elif time.monotonic() - quiet[1] >= SETTLE:
                        return head
                else:
                    quiet = None
                where = f"queue {st.get('queue', '?')}, idle {st.get('idle', '?')}"
            if syncer is None:
                raise FlipError(
                    f"no syncer is running (nothing holds {self.state_dir / state.LOCK_FILE}) "
                    f"and it has not drained ({where}): start `tandem sync run`, then flip "
                    "again")
            now = time.monotonic()
            if now > deadline:
                err = (state.read_status(self.state_dir) or {}).get("last_error") or "none"
                raise FlipError(f"the syncer (pid {syncer.pid}) did not drain within "
                                f"{self.timeout:g} s ({where}; its last error: {err}); flip "
                                "again when it has caught up, with a longer --timeout if it "
                                "is only slow")
            if now - reported >= PROGRESS_EVERY:
                reported = now
                log.info("flip.draining", where=where, syncer=syncer.pid)
                self.out(f"drain    waiting for the syncer (pid {syncer.pid}): {where}")
            await asyncio.sleep(POLL)

    async def _verify(self, j: Journal) -> None:
        deadline = time.monotonic() + self.timeout
        for _ in range(ROUNDS):
            async with master_client(self.cfg.cluster) as master:
                diffs = await verify(master, self.cfg.legacy.dir)
            if diffs:
                lines = [f"  {d}" for d in diffs[:SHOW_DIFFERENCES]]
                if len(diffs) > SHOW_DIFFERENCES:
                    lines.append(f"  … and {len(diffs) - SHOW_DIFFERENCES} more "
                                 "(`tandem sync verify` lists them all)")
                raise FlipError(f"{len(diffs)} difference(s) between the cluster and "
                                f"{self.cfg.legacy.dir}:\n" + "\n".join(lines))
            head = await self._head()
            if head == j.head:
                break
            log.warning("flip.changed_while_fenced", head=j.head, now=head)
            self.out(f"verify   the changelog moved from {j.head} to {head} under the fence: "
                     "draining again")
            j.head = await self._drained(j, deadline)
        else:
            raise FlipError(f"the cluster kept changing while writers were fenced (changelog "
                            f"now at {j.head}): something writes past the fence; find it, "
                            "then flip again")
        if self.front.running() is not None:
            self.front.test(j.to)
        self.out(f"verify   both sides are equal (changelog at {j.head})")

    async def _switch(self, j: Journal) -> None:
        if state.read_primary(self.state_dir) != j.to:
            if j.to == "cluster" and j.head is not None:
                # The legacy directory equals the cluster at this changelog position
                # (verified, fenced): the cluster → legacy mirror continues from there.
                state.write_cursor(self.state_dir, j.head)
            state.write_primary(self.state_dir, j.to)
            log.info("flip.switched", primary=j.to)
        deadline = time.monotonic() + self.timeout
        while (syncer := state.running_syncer(self.state_dir)) is not None:
            if syncer.primary == j.to:
                self.out(f"switch   {j.to} is primary; the syncer (pid {syncer.pid}) mirrors "
                         f"{DIRECTIONS[j.to]}")
                return
            if time.monotonic() > deadline:
                raise FlipError(f"the syncer (pid {syncer.pid}) did not switch to "
                                f"{DIRECTIONS[j.to]} within {self.timeout:g} s: see its log")
            await asyncio.sleep(POLL)
        self.out(f"switch   {j.to} is primary; no syncer is running: start `tandem sync run` "
                 f"(it will mirror {DIRECTIONS[j.to]})")

    async def _nginx(self, j: Journal) -> None:
        pid = self.front.running()
        if pid is None:
            self.out(f"nginx    {self.front.where} is not running: nothing to reload (its next "
                     f"start renders {j.to} as primary)")
            return
        await asyncio.to_thread(self.front.reload, j.to)
        self.out(f"nginx    reloaded (pid {pid}): primary {j.to}, backup {other(j.to)}")

    async def _unfence(self, j: Journal) -> None:
        fence.lift_fence(self.fence_file)
        self.journal_file.unlink(missing_ok=True)
        self.out("unfence  writers unfenced")

    async def _head(self) -> int:
        try:
            return (await asyncio.to_thread(self.feed.bounds))[1]
        except sqlite3.Error as exc:  # no metadata there, or unreadable
            raise FlipError(f"cannot read the changelog in {self.cfg.cluster.meta_dir}: "
                            f"{exc}") from None

    # -- the plan ------------------------------------------------------------------------------

    def plan(self) -> tuple[int, list[str]]:
        """What ``run`` would do now, for people (``--dry-run``); changes nothing. Returns the
        exit code ``run`` would start with (1: it would refuse) and the lines."""
        j = Journal.load(self.journal_file)
        primary = state.read_primary(self.state_dir)
        if j is not None and j.to != self.to:
            return 1, [f"tandem flip --to {self.to} would refuse: {self._conflict(j)}"]
        if j is None and primary == self.to:
            return 0, [f"{self.to} is already primary: nothing to do"]
        source = j.source if j is not None else primary
        syncer = state.running_syncer(self.state_dir)
        running = (f"running (pid {syncer.pid}, mirrors {DIRECTIONS[syncer.primary]})"
                   if syncer is not None and syncer.primary is not None
                   else "running" if syncer is not None else "NOT running")
        if source == "cluster":
            try:
                head: object = self.feed.bounds()[1]
            except sqlite3.Error as exc:
                head = f"unknown: {exc}"
            backlog = f"changelog head now {head}, applied {state.read_cursor(self.state_dir)}"
        else:
            st = state.read_status(self.state_dir) or {}
            backlog = f"queue now {st.get('queue', '?')}, idle {st.get('idle', '?')}"
        nginx = self.front.running()
        what = {
            "fence": f"create {self.fence_file}: origin PUT/DELETE answer 503, `tandem "
                     "cluster` writes exit 75, /readyz fails",
            "drain": f"wait (at most {self.timeout:g} s) until the syncer has applied "
                     f"everything ({backlog}); the syncer is {running}",
            "verify": f"compare the cluster and {self.cfg.legacy.dir} by SHA-256, mtime and "
                      "mode; a difference stops the flip with nothing changed",
            "switch": f"write {self.to} into {self.state_dir / state.PRIMARY_FILE}; the "
                      f"syncer then mirrors {DIRECTIONS[self.to]}",
            "nginx": (f"nginx -t, then reload {self.front.where} (pid {nginx}) with primary "
                      f"{self.to}, backup {other(self.to)}" if nginx is not None else
                      f"nothing: {self.front.where} is not running"),
            "unfence": f"remove {self.fence_file}",
        }
        head_line = (f"resume the flip to {self.to} (primary {primary})" if j is not None else
                     f"flip {DIRECTIONS[source]} to {DIRECTIONS[self.to]}")
        lines = [f"plan: {head_line} (dry run: nothing is changed)"]
        for n, step in enumerate(STEPS, 1):
            mark = "done" if j is not None and step in j.done else "    "
            lines.append(f"  {mark} {n}. {step:8} {what[step]}")
        return 0, lines


def switched(state_dir: Path, j: Journal) -> bool:
    """Whether the flip has changed the primary (also when it died before journaling its
    switch): from then on it can only be finished, not cancelled."""
    return "switch" in j.done or state.read_primary(state_dir) != j.source


def abort(state_dir: Path, fence_file: Path) -> None:
    """Cancel a flip that has not switched: unfence, forget the journal."""
    fence.lift_fence(fence_file)
    (state_dir / JOURNAL_FILE).unlink(missing_ok=True)


@contextlib.contextmanager
def flip_lock(state_dir: Path) -> Iterator[None]:
    """One flip at a time per state folder (``flock``: a killed flip releases it)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FlipError(f"another tandem flip is running (it holds {path})") from None
        yield
    finally:
        os.close(fd)


# -- the command -------------------------------------------------------------------------------


def run(args: argparse.Namespace, cfg: Config, front: Front) -> int:
    if args.abort:
        return _abort_command(cfg)
    flip = Flip(cfg, args.to, front=front, timeout=args.timeout,
                out=lambda line: print(line, flush=True))
    if args.dry_run:
        code, lines = flip.plan()
        print("\n".join(lines))
        return code
    return asyncio.run(flip.run())


def _abort_command(cfg: Config) -> int:
    state_dir = cfg.sync.state_dir
    with flip_lock(state_dir):
        j = Journal.load(state_dir / JOURNAL_FILE)
        if j is None:
            print("no unfinished flip: nothing to abort")
            return 0
        if switched(state_dir, j):
            raise FlipError(f"the flip to {j.to} has switched already: finish it with "
                            f"`tandem flip --to {j.to}`, then flip back to roll back")
        abort(state_dir, cfg.origin.fence_file)
        log.warning("flip.aborted", to=j.to, step="--abort")
        print(f"flip to {j.to} cancelled: {j.source} is still primary, writers are unfenced")
        return 0

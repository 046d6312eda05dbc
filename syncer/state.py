"""The syncer's persisted state in ``sync.state_dir``, one reader and writer for each file:

    primary       ``cluster`` (the default when absent) or ``legacy``: the side writers use
                  and the syncer mirrors from. Changed only by ``tandem flip``; the running
                  ``tandem sync run`` watches it and switches its mirror.
    syncer.lock   held (``flock``) by the running ``tandem sync run``, so there is one per
                  state folder; it names that process and the primary its mirror follows
                  (how a flip knows a syncer runs, and that it has switched).
    status.json   written by the running mirror: direction, cursor, queue, idle, lag …
    cursor        the changelog position the cluster → legacy mirror has applied.

Small files are replaced atomically (temporary file, fsync, rename), so a reader sees the old
or the new content, never a part. This module may import ``cluster``; never ``origin``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cluster.volume import sync_folder
from syncer.errors import StateError

Primary = Literal["cluster", "legacy"]
PRIMARIES: tuple[Primary, ...] = ("cluster", "legacy")
DIRECTIONS: dict[Primary, str] = {"cluster": "cluster->legacy", "legacy": "legacy->cluster"}

PRIMARY_FILE = "primary"
LOCK_FILE = "syncer.lock"
STATUS_FILE = "status.json"
CURSOR_FILE = "cursor"


def other(primary: Primary) -> Primary:
    return "legacy" if primary == "cluster" else "cluster"


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data``: temporary file in the same folder, rename; ``durable``:
    the file fsynced before the rename and the folder after it (the rename itself survives
    a power loss). A reader sees the old content or the new, never a part, either way."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        sync_folder(path.parent)


# -- primary -----------------------------------------------------------------------------------


def read_primary(state_dir: Path) -> Primary:
    try:
        text = (state_dir / PRIMARY_FILE).read_text().strip()
    except FileNotFoundError:
        return "cluster"
    except OSError as exc:
        raise StateError(f"cannot read {state_dir / PRIMARY_FILE}: {exc}") from None
    if text not in PRIMARIES:
        raise StateError(f"{state_dir / PRIMARY_FILE}: expected 'cluster' or 'legacy', "
                         f"got {text!r}")
    return text


def write_primary(state_dir: Path, primary: Primary) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(state_dir / PRIMARY_FILE, f"{primary}\n".encode())


# -- the mirror's files ------------------------------------------------------------------------


def read_status(state_dir: Path) -> dict[str, Any] | None:
    """The running mirror's status file, or None when there is none (or it is garbled)."""
    try:
        data = json.loads((state_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_cursor(state_dir: Path) -> int | None:
    try:
        return int((state_dir / CURSOR_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def write_cursor(state_dir: Path, seq: int) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(state_dir / CURSOR_FILE, f"{seq}\n".encode())


# -- the running syncer ------------------------------------------------------------------------


@dataclass(frozen=True)
class Syncer:
    """The running ``tandem sync run`` of a state folder."""

    pid: int | None  # None while it is (re)writing the lock file
    primary: Primary | None  # the primary its mirror follows; None while it starts


class SyncerLock:
    """Held by ``tandem sync run`` while it runs (``flock``: released by the kernel when the
    process dies, even by SIGKILL). ``announce`` records which primary the mirror follows."""

    def __init__(self, state_dir: Path, *, wait: float = 2.0) -> None:
        self.path = state_dir / LOCK_FILE
        self.wait = wait  # a flip probing the lock holds it for a moment
        self._fd: int | None = None

    def __enter__(self) -> SyncerLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    holder = running_syncer(self.path.parent)
                    os.close(fd)
                    pid = holder.pid if holder is not None else "?"
                    raise StateError(f"another tandem sync run (pid {pid}) already follows "
                                     f"{self.path.parent}") from None
                time.sleep(0.05)
        self._fd = fd
        self.announce(None)
        return self

    def announce(self, primary: Primary | None) -> None:
        assert self._fd is not None
        text = f"pid {os.getpid()}\nprimary {primary or '-'}\n".encode()
        os.pwrite(self._fd, text, 0)
        os.ftruncate(self._fd, len(text))

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None


def running_syncer(state_dir: Path) -> Syncer | None:
    """The ``tandem sync run`` holding ``state_dir``'s lock, or None when none runs."""
    try:
        fd = os.open(state_dir / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _parse_lock(os.pread(fd, 256, 0).decode(errors="replace"))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _parse_lock(text: str) -> Syncer:
    fields = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
    pid = None
    with contextlib.suppress(ValueError):
        pid = int(fields.get("pid", ""))
    primary = fields.get("primary")
    return Syncer(pid, primary if primary in PRIMARIES else None)

"""A local tree watched with inotify, reported to the mirror as paths to look at again.

What is reported, and why:

- ``IN_CLOSE_WRITE`` → the file is complete: look at it now. A file is never acted on
  because it was opened or modified, only once its writer closed it.
- ``IN_MOVED_FROM`` + ``IN_MOVED_TO`` with the same cookie → a rename inside the tree
  (``moved``), so the target renames too instead of copying again. A ``MOVED_FROM`` with no
  partner within ``HOLD`` seconds was a move out of the tree (reported as changed: it is gone);
  a lone ``MOVED_TO`` is a move in (a folder: watched, then looked at in depth).
- ``IN_CREATE`` of a folder → the folder is watched *before* it is listed (so a file made in
  it a moment later is never missed), then looked at in depth. ``IN_CREATE`` of anything else
  (a hard link, a symbolic link, a file still being written) → looked at once it has been
  quiet for a while (``settle``): a file being written is then copied on its close instead.
- ``IN_DELETE`` → changed (gone); ``IN_ATTRIB`` → changed, once quiet (``touch -d``, chmod).
- ``IN_Q_OVERFLOW`` → events were lost: ``rescan``.

The watcher reads the inotify descriptor on the event loop (``loop.add_reader``), draining
it whole each time, and keeps the watch → folder map itself: a folder renamed inside the tree
carries its watches to the new name. It uses watchdog's thin ctypes bindings of the inotify
calls, not pyinotify, which decodes every name as strict UTF-8 and fails on the names this
mirror must carry byte for byte; and not watchdog's observer, which holds moves back for
half a second and does not tell its user about a queue overflow.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import struct
import time
from typing import Protocol

import structlog
from watchdog.observers.inotify_c import InotifyConstants as IN
from watchdog.observers.inotify_c import (
    WatchDescriptor,
    inotify_add_watch,
    inotify_init,
    inotify_rm_watch,
)

log = structlog.get_logger("syncer")

HOLD = 0.05  # seconds a MOVED_FROM waits for its MOVED_TO before it counts as a move out
MASK = (IN.IN_CLOSE_WRITE | IN.IN_MOVED_FROM | IN.IN_MOVED_TO | IN.IN_CREATE | IN.IN_DELETE
        | IN.IN_ATTRIB | IN.IN_ONLYDIR | IN.IN_DONT_FOLLOW | IN.IN_EXCL_UNLINK)
_HEADER = struct.Struct("iIII")


class Sink(Protocol):
    def changed(self, rel: bytes, *, deep: bool = False, settle: bool = False) -> None: ...

    def moved(self, src: bytes, dst: bytes, is_dir: bool) -> None: ...

    def rescan(self) -> None: ...


class Watcher:
    def __init__(self, root: bytes, sink: Sink) -> None:
        self.root = root
        self.sink = sink
        self.fd = -1
        self._rel: dict[int, bytes] = {}  # watch descriptor → folder (relative)
        self._wd: dict[bytes, int] = {}
        self._held: dict[int, tuple[bytes, bool, float]] = {}  # cookie → (path, dir, since)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._expiry: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Open inotify, watch the whole tree, and read events on the running loop."""
        self.fd = inotify_init()
        if self.fd < 0:
            raise OSError(errno.EMFILE, "inotify_init failed (instance limit?)")
        os.set_blocking(self.fd, False)
        self.watch_tree(b"")
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.fd, self._readable)

    def close(self) -> None:
        if self.fd >= 0:
            if self._loop is not None:
                self._loop.remove_reader(self.fd)
            if self._expiry is not None:
                self._expiry.cancel()
            os.close(self.fd)
            self.fd = -1

    @property
    def watches(self) -> int:
        return len(self._wd)

    # -- watches ----------------------------------------------------------------------------

    def watch_tree(self, rel: bytes) -> None:
        """Watch ``rel`` and every folder below it, each before it is listed."""
        stack = [rel]
        while stack:
            folder = stack.pop()
            path = self.root + b"/" + folder if folder else self.root
            wd = inotify_add_watch(self.fd, path, MASK)
            if wd < 0:
                err = ctypes.get_errno()
                if err == errno.ENOSPC:
                    log.error("sync.watch_limit", folder=os.fsdecode(path),
                              hint="raise fs.inotify.max_user_watches; the periodic "
                                   "reconcile still finds changes below it")
                continue  # gone again, or not a folder: its own events say what happened
            old = self._rel.get(wd)
            if old is not None and old != folder:
                self._wd.pop(old, None)
            self._rel[wd] = folder
            self._wd[folder] = wd
            try:
                with os.scandir(path) as it:
                    for e in it:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(folder + b"/" + e.name if folder else e.name)
            except OSError:
                continue

    def _under(self, rel: bytes) -> list[bytes]:
        prefix = rel + b"/"
        return [f for f in self._wd if f == rel or f.startswith(prefix)]

    def _rewatch(self, src: bytes, dst: bytes) -> None:
        """A watched folder was renamed inside the tree: its watches follow it."""
        for folder in self._under(src):
            wd = self._wd.pop(folder)
            new = dst + folder[len(src):]
            self._rel[wd] = new
            self._wd[new] = wd

    def _unwatch(self, rel: bytes) -> None:
        """A folder left the tree: stop watching it and everything below."""
        for folder in self._under(rel):
            wd = self._wd.pop(folder)
            self._rel.pop(wd, None)
            inotify_rm_watch(self.fd, WatchDescriptor(wd))

    # -- events -----------------------------------------------------------------------------

    def _readable(self) -> None:
        events = []
        while True:
            try:
                data = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                break
            except OSError as exc:
                log.error("sync.inotify_read_failed", error=str(exc))
                self.sink.rescan()
                return
            i = 0
            while i + 16 <= len(data):
                wd, mask, cookie, length = _HEADER.unpack_from(data, i)
                events.append((wd, mask, cookie, data[i + 16:i + 16 + length].rstrip(b"\0")))
                i += 16 + length
        for event in events:
            self._event(*event)
        self._expire()

    def _event(self, wd: int, mask: int, cookie: int, name: bytes) -> None:
        if mask & IN.IN_Q_OVERFLOW:
            log.warning("sync.inotify_overflow")
            self.sink.rescan()
            return
        folder = self._rel.get(wd)
        if folder is None:
            return
        if mask & IN.IN_IGNORED:  # the folder itself is gone
            del self._rel[wd]
            if self._wd.get(folder) == wd:
                del self._wd[folder]
            return
        if not name:
            return  # an event about the watched folder itself
        rel = folder + b"/" + name if folder else name
        is_dir = bool(mask & IN.IN_ISDIR)
        if mask & IN.IN_MOVED_FROM:
            self._held[cookie] = (rel, is_dir, time.monotonic())
        elif mask & IN.IN_MOVED_TO:
            held = self._held.pop(cookie, None)
            if held is not None:
                if is_dir:
                    self._rewatch(held[0], rel)
                self.sink.moved(held[0], rel, is_dir)
            else:
                if is_dir:
                    self.watch_tree(rel)
                self.sink.changed(rel, deep=is_dir)
        elif mask & IN.IN_CREATE:
            if is_dir:
                self.watch_tree(rel)
                self.sink.changed(rel, deep=True)
            else:
                self.sink.changed(rel, settle=True)
        elif mask & IN.IN_CLOSE_WRITE or mask & IN.IN_DELETE:
            self.sink.changed(rel)
        elif mask & IN.IN_ATTRIB:
            self.sink.changed(rel, settle=not is_dir)

    def _expire(self) -> None:
        """Moves out of the tree: a MOVED_FROM whose MOVED_TO did not come."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        now = time.monotonic()
        for cookie, (rel, is_dir, since) in list(self._held.items()):
            if now - since >= HOLD:
                del self._held[cookie]
                if is_dir:
                    self._unwatch(rel)
                self.sink.changed(rel)
        if self._held and self._loop is not None:
            self._expiry = self._loop.call_later(HOLD, self._expire)


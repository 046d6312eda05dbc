"""What the syncer knows of an entry on either side, how it walks a local tree, and the one
interface every target (a directory, the cluster) offers the mirror.

Paths are bytes relative to the side's root, without a leading slash (``b"news/a.html"``):
names that are not UTF-8 round-trip exactly.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import signal
import stat
import time
from collections.abc import Iterator
from typing import Literal, NamedTuple, Protocol

Kind = Literal["file", "dir", "link", "other"]


class Item(NamedTuple):  # a tuple: a scan makes tens of thousands of these
    kind: Kind
    size: int = 0
    mtime_ns: int = 0
    mode: int = 0  # permission bits only
    link: bytes = b""  # a symbolic link's target

    def same(self, other: Item | None) -> bool:
        """Equal for the mirror's quick check (rsync's default): kind, size, mtime, mode."""
        return self == other


def item_of(st: os.stat_result, path: bytes | None = None) -> Item:
    """The ``Item`` for an ``lstat`` result (``path`` is needed to read a link's target)."""
    mode = st.st_mode
    fmt = stat.S_IFMT(mode)
    if fmt == stat.S_IFREG:
        return Item("file", st.st_size, st.st_mtime_ns, mode & 0o7777)
    if fmt == stat.S_IFDIR:
        return Item("dir", 0, st.st_mtime_ns, mode & 0o7777)
    if fmt == stat.S_IFLNK and path is not None:
        return Item("link", 0, 0, 0, os.readlink(path))
    return Item("other", 0, st.st_mtime_ns, mode & 0o7777)


def lstat_item(path: bytes) -> Item | None:
    try:
        return item_of(os.lstat(path), path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def sha256_file(path: bytes) -> bytes | None:
    """SHA-256 of a local file's bytes; None when there is no such file."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").digest()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def walk(root: bytes, under: bytes = b"", *, skip: frozenset[bytes] = frozenset(),
         skip_prefix: bytes | None = None) -> Iterator[tuple[bytes, Item]]:
    """Every entry below ``root/under`` (not ``under`` itself), parents before children,
    as ``(relative path, Item)``; folders that vanish meanwhile are skipped. ``skip``: relative
    paths not to enter or report; ``skip_prefix``: names starting with it are not reported."""
    stack = [under]
    while stack:
        rel_dir = stack.pop()
        folder = root + b"/" + rel_dir if rel_dir else root
        prefix = rel_dir + b"/" if rel_dir else b""
        try:
            it = os.scandir(folder)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with it:
            for e in it:
                if skip_prefix is not None and e.name.startswith(skip_prefix):
                    continue
                rel = prefix + e.name
                if rel in skip:
                    continue
                try:
                    item = item_of(e.stat(follow_symlinks=False), e.path)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                yield rel, item
                if item.kind == "dir":
                    stack.append(rel)


def topmost(paths: set[bytes]) -> list[bytes]:
    """The paths whose folder is not in ``paths`` too (deleting a folder takes its entries),
    sorted."""
    return sorted(p for p in paths if p.rpartition(b"/")[0] not in paths)


class SourceChanged(Exception):
    """The source file changed while it was being copied, or is open for writing: nothing
    was exposed; the path is looked at again."""


class NotAFile(SourceChanged):
    """The source is not a regular file (any more): a link, a folder, a fifo, or gone."""


_leases = False
_breaks = 0  # leases the kernel asked back (a writer opened a file we hold a lease on)


def _on_break(signum: int, frame: object) -> None:
    global _breaks
    _breaks += 1


def enable_leases() -> bool:
    """Let ``read_lease`` take leases. The kernel asks a lease back with SIGIO, whose default
    action would end the process: it is counted instead, so a long copy can let go early.
    Main thread only; False elsewhere."""
    global _leases
    try:
        signal.signal(signal.SIGIO, _on_break)
    except ValueError:
        return False
    _leases = True
    return True


def leases_enabled() -> bool:
    return _leases


class Lease:
    def __init__(self) -> None:
        self.breaks = _breaks

    def asked_back(self) -> bool:
        """A writer has opened some file under lease since this one was taken (the kernel
        does not say which): a long copy stops, lets go, and is done again later."""
        return _breaks != self.breaks


#: Nanoseconds an empty file counts as just created (``just_created``).
JUST_CREATED_NS = 500_000_000


def just_created(item: Item) -> bool:
    """An empty file made within ``JUST_CREATED_NS``: perhaps one whose writer has created it
    and not yet opened it for writing. The kernel reports the creation (inotify's
    ``IN_CREATE``) before the writer's ``open`` holds write access, and in that instant a read
    lease is granted on the empty file; copying it would expose an empty file under the final
    name (seen once in 2,000 files at 200 files/s on a busy 2-core VM). Such a file is copied
    on its writer's close, or once it is older."""
    return item.kind == "file" and item.size == 0 and (
        abs(time.time_ns() - item.mtime_ns) < JUST_CREATED_NS
    )


@contextlib.contextmanager
def read_lease(fd: int, name: bytes) -> Iterator[Lease]:
    """Hold a read lease on ``fd`` (open read-only) while copying from it.

    The kernel grants a read lease only while no process has the file open for writing, and
    holds back a writer's ``open`` until the lease is let go (at most
    ``/proc/sys/fs/lease-break-time`` seconds): what is read under it is a state the file
    had after a ``close`` — except in the instant between a file's creation and its writer's
    ``open`` (``just_created``). A file open for writing raises ``SourceChanged`` (its writer's
    close brings it back). Where a lease cannot be had (neither the file's owner nor
    CAP_LEASE, a filesystem without leases) nothing is held, and the size and mtime checks
    around the copy are the only guard."""
    held = False
    if _leases:
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
            held = True
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                raise SourceChanged(f"{os.fsdecode(name)} is open for writing") from None
    try:
        yield Lease()
    finally:
        if held:
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)


class Target(Protocol):
    """Where the mirror writes. Every method may raise ``TargetError`` (retryable) or
    ``Skipped``; each is safe to repeat."""

    label: str

    async def put_file(self, rel: bytes, source: bytes, item: Item) -> None:
        """Copy the local file ``source`` to ``rel`` with ``item``'s mtime and mode, never
        exposing a part; raises ``SourceChanged`` when the source changed during the copy.
        The copy may be staged: it is visible and durable after ``commit``."""
        ...

    async def put_link(self, rel: bytes, link: bytes) -> None: ...

    async def make_dir(self, rel: bytes, item: Item) -> None: ...

    async def delete(self, rel: bytes) -> bool:
        """Apply the delete policy to ``rel`` (file or tree); False when it was not there."""
        ...

    async def rename(self, src: bytes, dst: bytes) -> bool:
        """Move ``src`` to ``dst``; False when that cannot be done as a rename (``src``
        missing, ``dst`` a folder that is not empty): the caller copies instead."""
        ...

    async def commit(self) -> None:
        """Make every staged copy visible and everything done so far durable."""
        ...

    async def stat(self, rel: bytes) -> Item | None: ...

    async def scan(self, under: bytes = b"") -> dict[bytes, Item]:
        """Every entry below ``under`` (its own temporary and trash names left out)."""
        ...

    def staged(self) -> int:
        """Copies waiting for ``commit``."""
        ...

"""A directory as the syncer's target: every change lands atomically, never half-written.

- A file is written to a temporary name in its own folder, fsynced, given its mode and exact
  mtime (nanoseconds: the origins' ETag is derived from it), then renamed over the final name;
  a reader of the target sees the old file or the new one, never a part. The folder is
  fsynced by ``flush`` (once per batch, not once per file).
- Deletions follow the configured policy: ``delete``, ``trash`` (moved under ``trash_dir``
  inside the target, with the time appended) or ``keep``.
- Names are bytes: names that are not UTF-8 round-trip exactly. A relative path that would
  leave the root (``..``, an absolute path, NUL) is refused.
- Errors of the target (full, read-only, missing) raise ``TargetError`` (retryable) after the
  temporary file was removed: nothing partial is ever left under a final name.

- A copy from a local file (``stage_copy``) is written without waiting for the disk and
  renamed into place by ``commit``, which first makes the whole batch durable with one
  syncfs(2): a reader still sees only whole files, and a burst costs one disk flush per batch
  instead of one per file.

Blocking calls throughout: the syncer runs them on its worker threads. ``DirectoryTargetAsync``
is the same target behind the mirror's async ``Target`` interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from cluster.volume import sync_folder
from syncer.errors import CommitFailed, Skipped, SyncError, TargetError
from syncer.tree import (
    Item,
    NotAFile,
    SourceChanged,
    item_of,
    just_created,
    lstat_item,
    read_lease,
    sha256_file,
    walk,
)

TMP = b".tandem-sync."  # prefix of a file being written; never a final name
TRASH = b".tandem-trash"  # the folder the ``trash`` delete policy moves deletions to
FLUSH_FOLDERS = 16  # more folders to flush than this: one syncfs instead of an fsync each
DeletePolicy = Literal["delete", "trash", "keep"]


def check_rel(rel: bytes) -> bytes:
    """A relative path inside the root, normalised (no empty, ``.``, ``..`` components)."""
    if b"\0" in rel:
        raise Skipped(f"path contains NUL: {rel!r}")
    parts = [p for p in rel.split(b"/") if p and p != b"."]
    if not parts or b".." in parts:
        raise Skipped(f"path leaves the root or is empty: {rel!r}")
    return b"/".join(parts)


@dataclass
class Staged:
    """What ``stage_many`` did."""

    copied: list[tuple[bytes, int]] = field(default_factory=list)  # (path, size)
    changed: list[bytes] = field(default_factory=list)  # changed during the copy
    other: list[bytes] = field(default_factory=list)  # not a regular file, or not done
    error: SyncError | None = None


class DirectoryTarget:
    def __init__(self, root: str | os.PathLike[str], *, deletes: DeletePolicy = "delete",
                 trash_dir: bytes = TRASH) -> None:
        self.root = os.fsencode(os.path.abspath(root))
        self.deletes = deletes
        self.trash_dir = check_rel(trash_dir)
        self._dirty: set[bytes] = set()  # folders whose entries changed since the last flush
        self._staged: list[tuple[bytes, bytes, bytes]] = []  # (rel, temporary, final)
        self._lock = threading.Lock()  # _staged and _dirty, between worker threads
        self._commit_lock = threading.Lock()
        self._sweep = True  # the first scan removes temporary files of an earlier process
        self._tmp_prefix = TMP + os.urandom(4).hex().encode() + b"."  # this process's names
        self._tmp_count = itertools.count()
        self._folders: set[bytes] = set()  # folders this target made or saw: not stat'ed again

    def path(self, rel: bytes) -> bytes:
        return self.root + b"/" + check_rel(rel)

    def write(self, rel: bytes, pieces: Iterable[bytes], *, mtime_ns: int, mode: int,
              stage: bool = False) -> int:
        """Replace ``rel`` with the bytes of ``pieces``, atomically: fsynced and renamed into
        place now, or with ``stage`` left for ``commit`` (one flush for a batch). Returns the
        size."""
        final = self.path(rel)
        folder = os.path.dirname(final)
        tmp = self._tmp_name(folder)
        size = 0

        def fill(fd: int) -> None:
            nonlocal size
            for piece in pieces:
                view = memoryview(piece)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                    size += n

        self._write_tmp(rel, folder, tmp, fill, Item("file", 0, mtime_ns, mode), fsync=not stage)
        if stage:
            with self._lock:
                self._staged.append((rel, tmp, final))
            return size
        self._place(rel, tmp, final, "write")
        return size

    def _place(self, rel: bytes, tmp: bytes, final: bytes, what: str) -> None:
        """Rename ``tmp`` over ``final`` (a folder there is replaced); ``tmp`` is removed if
        that fails."""
        try:
            self._rename_over(tmp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise _target_error(exc, f"{what} {os.fsdecode(rel)}") from None
        self._touch(os.path.dirname(final))

    def _rename_over(self, tmp: bytes, final: bytes) -> None:
        """Rename ``tmp`` to ``final``, removing a folder there first (a folder became a file
        or a link). The rename is tried first: a folder there is rare, and a stat before every
        rename cost a full pass ~5% of its copying threads' time."""
        try:
            os.rename(tmp, final)
        except IsADirectoryError:
            self._folders.clear()
            shutil.rmtree(final)
            os.rename(tmp, final)

    def stage_copy(self, rel: bytes, source: bytes, item: Item | None = None) -> Item:
        """Copy the local file ``source`` to a temporary name beside ``rel``, under a read
        lease (``tree.read_lease``); ``commit`` renames it into place. Returns what was
        copied. Raises ``SourceChanged`` (nothing staged) when the source is open for writing,
        is not ``item`` (when given) any more, or changes during the copy, and ``NotAFile``
        when it is not a regular file (any more)."""
        final = self.path(rel)
        folder = os.path.dirname(final)
        tmp = self._tmp_name(folder)
        try:  # O_NONBLOCK: a fifo must not block the open
            src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            raise NotAFile(f"{os.fsdecode(source)}: {exc.strerror}") from None
        try:
            with read_lease(src, source):
                found = item_of(os.fstat(src))
                if found.kind != "file":
                    raise NotAFile(f"{os.fsdecode(source)} is not a regular file")
                if item is not None and found != item:
                    raise SourceChanged(f"{os.fsdecode(source)} changed before the copy")
                if just_created(found):
                    raise SourceChanged(f"{os.fsdecode(source)} is empty and just created")
                self._write_tmp(rel, folder, tmp, lambda fd: _copy_fd(src, fd, found.size),
                                found, fsync=False)
                if not _is(os.fstat(src), found):
                    os.unlink(tmp)
                    raise SourceChanged(f"{os.fsdecode(source)} changed during the copy")
        finally:
            os.close(src)
        with self._lock:
            self._staged.append((rel, tmp, final))
        return found

    def _tmp_name(self, folder: bytes) -> bytes:
        return folder + b"/" + self._tmp_prefix + b"%d" % next(self._tmp_count)

    def _write_tmp(self, rel: bytes, folder: bytes, tmp: bytes, fill: Callable[[int], None],
                   item: Item, *, fsync: bool) -> None:
        """``tmp`` made in ``folder`` (created if needed), filled, given ``item``'s mode and
        mtime, fsynced if asked; removed again on any failure."""
        try:
            if folder not in self._folders:  # folders known to be there: no stat per file
                self._make_dirs(folder)
                self._folders.add(folder)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except (FileNotFoundError, NotADirectoryError):  # it went away since
                self._folders.clear()
                self._make_dirs(folder)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                fill(fd)
                os.fchmod(fd, item.mode & 0o7777)
                os.utime(fd, ns=(item.mtime_ns, item.mtime_ns))
                if fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise _target_error(exc, f"write {os.fsdecode(rel)}") from None
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def stage_many(self, root: bytes, rels: list[bytes]) -> Staged:
        """``stage_copy`` for each regular file ``root/rel`` in turn, on one thread (a burst
        costs one hand-off per batch, not per file). What is not a regular file now, or
        changed during its copy, is returned to be looked at one by one; a target error
        stops the batch and is returned with the paths not done."""
        out = Staged()
        for i, rel in enumerate(rels):
            try:
                item = self.stage_copy(rel, root + b"/" + rel)
            except NotAFile:
                out.other.append(rel)
            except SourceChanged:
                out.changed.append(rel)
            except (TargetError, Skipped) as exc:
                out.error, out.other = exc, out.other + rels[i:]
                break
            else:
                out.copied.append((rel, item.size))
        return out

    def staged(self) -> int:
        return len(self._staged)

    def commit(self) -> None:
        """Make every staged copy durable (one syncfs of the target's filesystem), then
        rename each into place. On failure the temporary files are removed and
        ``CommitFailed`` names the paths to copy again."""
        with self._commit_lock:
            with self._lock:
                batch, self._staged = self._staged, []
            if not batch:
                return
            done = 0
            try:
                sync_folder(self.root, whole_fs=True)
                for _, tmp, final in batch:
                    self._rename_over(tmp, final)
                    done += 1
            except OSError as exc:
                for _, tmp, _ in batch[done:]:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                raise CommitFailed([rel for rel, _, _ in batch[done:]],
                                   str(_target_error(exc, "commit"))) from None
            with self._lock:
                self._dirty.update(os.path.dirname(final) for _, _, final in batch)

    def _unstage(self, final: bytes) -> None:
        """Forget staged copies at or under ``final`` (it is being deleted or moved)."""
        with self._lock:
            keep = []
            for entry in self._staged:
                if entry[2] == final or entry[2].startswith(final + b"/"):
                    with contextlib.suppress(OSError):
                        os.unlink(entry[1])
                else:
                    keep.append(entry)
            self._staged = keep

    def make_dir(self, rel: bytes, mode: int) -> None:
        """Make sure ``rel`` is a folder (a file or link there is replaced)."""
        final = self.path(rel)
        if os.path.isdir(final) and not os.path.islink(final):
            return
        try:
            if os.path.islink(final) or os.path.isfile(final):
                self._unstage(final)
                os.unlink(final)
            self._make_dirs(final)  # another worker may be making it too: that is fine
            os.chmod(final, mode & 0o7777 or 0o755)
        except OSError as exc:
            raise _target_error(exc, f"mkdir {os.fsdecode(rel)}") from None

    def stat(self, rel: bytes) -> Item | None:
        return lstat_item(self.path(rel))

    def digest(self, rel: bytes) -> bytes | None:
        return sha256_file(self.path(rel))

    def scan(self, under: bytes = b"") -> dict[bytes, Item]:
        if not os.path.isdir(self.root):
            raise TargetError(f"scan {os.fsdecode(self.root)}: the target (or its mount) "
                              "is missing")
        found = dict(walk(self.root, under, skip=frozenset([self.trash_dir])))
        temps = [rel for rel in found if rel.rsplit(b"/", 1)[-1].startswith(TMP)]
        with self._lock:
            mine = {tmp for _, tmp, _ in self._staged}
        for rel in temps:
            del found[rel]
            path = self.root + b"/" + rel
            if path not in mine and self._sweep:  # left by a syncer that was killed
                with contextlib.suppress(OSError):
                    os.unlink(path)
        if not under:
            self._sweep = False
        return found

    def symlink(self, rel: bytes, link_target: bytes) -> None:
        """Mirror a symbolic link as a link, if it stays inside the root."""
        final = self.path(rel)
        inside = os.path.normpath(os.path.join(os.path.dirname(final), link_target))
        if link_target.startswith(b"/") or not (inside + b"/").startswith(self.root + b"/"):
            raise Skipped(f"symbolic link {rel!r} -> {link_target!r} leads out of the root")
        folder = os.path.dirname(final)
        tmp = self._tmp_name(folder)
        try:
            self._make_dirs(folder)
            os.symlink(link_target, tmp)
        except OSError as exc:
            raise _target_error(exc, f"symlink {os.fsdecode(rel)}") from None
        self._place(rel, tmp, final, "symlink")

    def delete(self, rel: bytes) -> bool:
        """Apply the delete policy to ``rel`` (file or tree); False when it was not there."""
        final = self.path(rel)
        self._unstage(final)
        self._folders.clear()
        if not os.path.lexists(final):
            return False
        if self.deletes == "keep":
            return True
        try:
            if self.deletes == "trash":
                dest = self.path(self.trash_dir + b"/" + check_rel(rel))
                dest += b".%d" % time.time_ns()
                self._make_dirs(os.path.dirname(dest))
                os.rename(final, dest)
                self._touch(os.path.dirname(dest))
            elif os.path.isdir(final) and not os.path.islink(final):
                shutil.rmtree(final)
            else:
                os.unlink(final)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _target_error(exc, f"delete {os.fsdecode(rel)}") from None
        self._touch(os.path.dirname(final))
        return True

    def rename(self, src: bytes, dst: bytes) -> bool:
        """Move ``src`` to ``dst`` on the target (a rename on the source stays a rename);
        False when ``src`` is not there (the caller then copies ``dst`` instead)."""
        a, b = self.path(src), self.path(dst)
        self._unstage(a)
        self._unstage(b)
        self._folders.clear()
        try:
            self._make_dirs(os.path.dirname(b))
            if os.path.isdir(b) and not os.path.islink(b) and not os.path.isdir(a):
                shutil.rmtree(b)
            os.rename(a, b)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR):
                return False  # a folder with entries (or a file onto a folder) is there
            raise _target_error(exc, f"rename {os.fsdecode(src)}") from None
        with self._lock:
            self._dirty.update((os.path.dirname(a), os.path.dirname(b)))
        return True

    def _touch(self, folder: bytes) -> None:
        with self._lock:
            self._dirty.add(folder)

    def flush(self) -> None:
        """Make the renames since the last flush durable: fsync each folder touched, or the
        whole filesystem at once (syncfs) when many were."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        whole_fs = len(dirty) > FLUSH_FOLDERS
        for folder in [self.root] if whole_fs else sorted(dirty):
            try:
                sync_folder(folder, whole_fs=whole_fs)
            except FileNotFoundError:
                continue  # removed since: nothing of it to keep
            except OSError as exc:
                raise _target_error(exc, f"sync folder {os.fsdecode(folder)}") from None

    def _make_dirs(self, folder: bytes) -> None:
        if os.path.isdir(folder):
            return
        if not os.path.isdir(self.root):  # never create the root: it may be a missing mount
            raise FileNotFoundError(errno.ENOENT, "target root is missing", self.root)
        # A file where a folder now goes was a file before: it is replaced by the folder.
        probe = folder
        while len(probe) > len(self.root) and not os.path.isdir(probe):
            if os.path.lexists(probe) and not os.path.isdir(probe):
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    os.unlink(probe)
                break
            probe = os.path.dirname(probe)
        os.makedirs(folder, 0o755, exist_ok=True)
        self._touch(os.path.dirname(folder))


def _target_error(exc: OSError, what: str) -> TargetError:
    reason = {
        errno.ENOSPC: "the target is full",
        errno.EDQUOT: "the target's quota is exceeded",
        errno.EROFS: "the target is read-only",
        errno.EACCES: "permission denied on the target",
        errno.ENOENT: "the target (or its mount) is missing",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    return TargetError(f"{what}: {reason}")


def _is(st: os.stat_result, item: Item) -> bool:
    return st.st_size == item.size and st.st_mtime_ns == item.mtime_ns


def _copy_fd(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes in the kernel (copy_file_range; read/write where it cannot)."""
    left = size
    try:
        while left > 0:
            n = os.copy_file_range(src, dst, left)
            if n == 0:
                break
            left -= n
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    os.lseek(src, size - left, os.SEEK_SET)
    while left > 0:
        piece = os.read(src, min(left, 1 << 20))
        if not piece:
            break
        os.write(dst, piece)
        left -= len(piece)


class DirectoryTargetAsync:
    """A ``DirectoryTarget`` behind the mirror's async ``Target`` interface: every call runs
    on a worker thread."""

    def __init__(self, target: DirectoryTarget) -> None:
        self.sync = target
        self.label = os.fsdecode(target.root)

    async def put_file(self, rel: bytes, source: bytes, item: Item) -> None:
        await asyncio.to_thread(self.sync.stage_copy, rel, source, item)

    async def put_many(self, root: bytes, rels: list[bytes]) -> Staged:
        return await asyncio.to_thread(self.sync.stage_many, root, rels)

    async def put_link(self, rel: bytes, link: bytes) -> None:
        await asyncio.to_thread(self.sync.symlink, rel, link)

    async def make_dir(self, rel: bytes, item: Item) -> None:
        await asyncio.to_thread(self.sync.make_dir, rel, item.mode)

    async def delete(self, rel: bytes) -> bool:
        return await asyncio.to_thread(self.sync.delete, rel)

    async def rename(self, src: bytes, dst: bytes) -> bool:
        return await asyncio.to_thread(self.sync.rename, src, dst)

    async def commit(self) -> None:
        await asyncio.to_thread(self.sync.commit)

    async def flush(self) -> None:
        await asyncio.to_thread(self.sync.flush)

    async def stat(self, rel: bytes) -> Item | None:
        return await asyncio.to_thread(self.sync.stat, rel)

    async def scan(self, under: bytes = b"") -> dict[bytes, Item]:
        return await asyncio.to_thread(self.sync.scan, under)

    async def digest(self, rel: bytes) -> bytes | None:
        return await asyncio.to_thread(self.sync.digest, rel)

    def staged(self) -> int:
        return self.sync.staged()

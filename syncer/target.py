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

Blocking calls throughout: the syncer runs them on its worker threads.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
from collections.abc import Iterable
from typing import Literal

from syncer.errors import Skipped, TargetError

TMP = b".tandem-sync."  # prefix of a file being written; never a final name
DeletePolicy = Literal["delete", "trash", "keep"]


def check_rel(rel: bytes) -> bytes:
    """A relative path inside the root, normalised (no empty, ``.``, ``..`` components)."""
    if b"\0" in rel:
        raise Skipped(f"path contains NUL: {rel!r}")
    parts = [p for p in rel.split(b"/") if p and p != b"."]
    if not parts or b".." in parts:
        raise Skipped(f"path leaves the root or is empty: {rel!r}")
    return b"/".join(parts)


class DirectoryTarget:
    def __init__(self, root: str | os.PathLike[str], *, deletes: DeletePolicy = "delete",
                 trash_dir: bytes = b".tandem-trash") -> None:
        self.root = os.fsencode(os.path.abspath(root))
        self.deletes = deletes
        self.trash_dir = check_rel(trash_dir)
        self._dirty: set[bytes] = set()  # folders whose entries changed since the last flush

    def path(self, rel: bytes) -> bytes:
        return self.root + b"/" + check_rel(rel)

    def write(self, rel: bytes, pieces: Iterable[bytes], *, mtime_ns: int, mode: int) -> int:
        """Replace ``rel`` with the bytes of ``pieces``, atomically; returns the size."""
        final = self.path(rel)
        folder = os.path.dirname(final)
        tmp = folder + b"/" + TMP + os.urandom(6).hex().encode()
        try:
            self._make_dirs(folder)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                size = 0
                for piece in pieces:
                    view = memoryview(piece)
                    while view:
                        n = os.write(fd, view)
                        view = view[n:]
                        size += n
                os.fchmod(fd, mode & 0o7777)
                os.utime(fd, ns=(mtime_ns, mtime_ns))
                os.fsync(fd)
            finally:
                os.close(fd)
            if os.path.isdir(final) and not os.path.islink(final):
                shutil.rmtree(final)  # a directory became a file
            os.rename(tmp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise _target_error(exc, f"write {os.fsdecode(rel)}") from None
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._dirty.add(folder)
        return size

    def symlink(self, rel: bytes, link_target: bytes) -> None:
        """Mirror a symbolic link as a link, if it stays inside the root."""
        final = self.path(rel)
        inside = os.path.normpath(os.path.join(os.path.dirname(final), link_target))
        if link_target.startswith(b"/") or not (inside + b"/").startswith(self.root + b"/"):
            raise Skipped(f"symbolic link {rel!r} -> {link_target!r} leads out of the root")
        folder = os.path.dirname(final)
        tmp = folder + b"/" + TMP + os.urandom(6).hex().encode()
        try:
            self._make_dirs(folder)
            os.symlink(link_target, tmp)
            os.rename(tmp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise _target_error(exc, f"symlink {os.fsdecode(rel)}") from None
        self._dirty.add(folder)

    def delete(self, rel: bytes) -> bool:
        """Apply the delete policy to ``rel`` (file or tree); False when it was not there."""
        final = self.path(rel)
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
                self._dirty.add(os.path.dirname(dest))
            elif os.path.isdir(final) and not os.path.islink(final):
                shutil.rmtree(final)
            else:
                os.unlink(final)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _target_error(exc, f"delete {os.fsdecode(rel)}") from None
        self._dirty.add(os.path.dirname(final))
        return True

    def rename(self, src: bytes, dst: bytes) -> bool:
        """Move ``src`` to ``dst`` on the target (a rename on the source stays a rename);
        False when ``src`` is not there (the caller then copies ``dst`` instead)."""
        a, b = self.path(src), self.path(dst)
        try:
            self._make_dirs(os.path.dirname(b))
            if os.path.isdir(b) and not os.path.islink(b) and not os.path.isdir(a):
                shutil.rmtree(b)
            os.rename(a, b)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _target_error(exc, f"rename {os.fsdecode(src)}") from None
        self._dirty.update((os.path.dirname(a), os.path.dirname(b)))
        return True

    def flush(self) -> None:
        """Make the renames since the last flush durable: fsync each folder touched."""
        dirty, self._dirty = self._dirty, set()
        for folder in sorted(dirty):
            try:
                fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                continue  # removed since: nothing of it to keep
            except OSError as exc:
                raise _target_error(exc, f"open folder {os.fsdecode(folder)}") from None
            try:
                os.fsync(fd)
            except OSError as exc:
                raise _target_error(exc, f"fsync folder {os.fsdecode(folder)}") from None
            finally:
                os.close(fd)

    def _make_dirs(self, folder: bytes) -> None:
        if os.path.isdir(folder):
            return
        if not os.path.isdir(self.root):  # never create the root: it may be a missing mount
            raise FileNotFoundError(errno.ENOENT, "target root is missing", self.root)
        # A file where a folder now goes was a file before: it is replaced by the folder.
        probe = folder
        while len(probe) > len(self.root) and not os.path.isdir(probe):
            if os.path.lexists(probe):
                os.unlink(probe)
                break
            probe = os.path.dirname(probe)
        os.makedirs(folder, 0o755, exist_ok=True)
        self._dirty.add(os.path.dirname(folder))


def _target_error(exc: OSError, what: str) -> TargetError:
    reason = {
        errno.ENOSPC: "the target is full",
        errno.EDQUOT: "the target's quota is exceeded",
        errno.EROFS: "the target is read-only",
        errno.EACCES: "permission denied on the target",
        errno.ENOENT: "the target (or its mount) is missing",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    return TargetError(f"{what}: {reason}")

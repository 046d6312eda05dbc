"""The hard-link view: each local volume's ``view/`` folder mirrors the namespace with hard
links onto that volume's chunk files, so nginx can serve files without Python per request.

A file is in the view of every volume that holds a copy of it whole: files of exactly one
chunk (empty and multi-chunk files are served by the origin). The link *is* the chunk file
(same inode), so nginx's ETag and Last-Modified come from the chunk file's size and mtime,
and every copy carries its file's mtime (``Master.put``, replication). The link for a path is
replaced by ``rename``, so a reader sees the old or the new version, never a mix or nothing.

The view is kept by a process of its own (``viewproc.py``), so that its work never waits for
the master's GIL nor holds it. It follows the master's commits (a wake-up through a pipe, no
polling): the first commit after a quiet spell at once, then one pass every ``BUSY_PAUSE``
while commits keep coming. It
re-reads the metadata of every path a change touches, so applying a change twice, or late, is
harmless; until a file's link is in place, nginx passes its requests to the origin.
It is rebuilt on start (which also clears leftovers of a crash) and every ``RECONCILE``
seconds. A clean stop leaves ``view.clean`` in the metadata folder (the last change applied,
and the volumes the views were kept on); the next start takes that file away (durably, before
anything else) and, when the volumes are the same and the changelog still holds every change
since, only applies those changes instead of rebuilding (a million files took 44 s to relink
here, in the benchmark's metadata test). Any other start (after a crash, after a run without
the view, with other volumes) rebuilds. A chunk file removed from under a link (a bad copy
dropped, an extra copy removed) leaves the link with one name: ``sweep_suspects`` finds such
links and re-links the path.

Everything here blocks; it runs in the view process, never in the master.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from cluster import schema
from cluster.errors import ClusterError, NotFound
from cluster.meta import Change, Entry, Meta
from cluster.store import ChunkKey
from cluster.volume import sync_folder

log = structlog.get_logger("cluster")

VIEW = "view"  # the folder, inside each volume, that holds the view
RECONCILE = 3600.0  # seconds between full rebuilds (a safety net: changes apply at once)
PAGE = 1000
#: Seconds between passes while commits keep coming: one pass (one read transaction) covers
#: many commits.
BUSY_PAUSE = 0.025
TMP = ".tandem-link."  # prefix of a link being put in place
CLEAN = "view.clean"  # in the metadata folder: left by a clean stop (see above)


def view_root(volume: str | os.PathLike[str]) -> bytes:
    return os.path.join(os.fsencode(volume), VIEW.encode())


class Stopped(Exception):
    """The view process was asked to stop in the middle of its work (``View.stopping``)."""


@dataclass
class ViewVolume:
    """A local volume as the view process knows it."""

    path: str
    readable: bool = True


class View:
    """Keeps the volumes' views in step with the namespace (blocking; in the view process,
    ``viewproc.py``)."""

    def __init__(
        self,
        meta_dir: Path,
        default_goal: int,
        default_trash_time: int,
        volumes: dict[int, ViewVolume],
    ) -> None:
        self.meta_dir = meta_dir
        self.volumes = volumes  # id → the local volume; the master sends changes
        self._defaults = (default_goal, default_trash_time)
        self._meta: Meta | None = None
        self.suspects: set[int] = set()  # volume ids to sweep for links that lost their chunk
        self.applied = 0  # the last changelog seq reflected in the view
        #: Asked between the folders of a rebuild: True ends it (``Stopped``).
        self.stopping: Callable[[], bool] = lambda: False

    def close(self) -> None:
        if self._meta is not None:
            self._meta.db.close()
            self._meta = None

    @property
    def meta(self) -> Meta:
        if self._meta is None:
            conn = schema.connect(self.meta_dir / "meta.db", readonly=True)
            self._meta = Meta(conn, *self._defaults, dir_cache=True)
        return self._meta

    def resume(self, state: dict[str, Any] | None) -> bool:
        """Start from where a clean stop left the views (``take_clean``), when that can be
        trusted; False when the views must be rebuilt."""
        if state is None or state.get("volumes") != self._volume_list():
            return False
        applied = state.get("applied")
        first, _ = self.meta.changelog_bounds()
        if not isinstance(applied, int) or applied < first - 1:
            return False  # changes since were trimmed from the changelog: rebuild
        self.applied = applied
        return True

    def finish(self) -> None:
        """At a stop: apply what is left, sweep what waits for it, and record a clean stop
        (``CLEAN``) for the next start."""
        while self.apply_next():
            pass
        self.sweep_suspects()
        state = {"applied": self.applied, "volumes": self._volume_list()}
        tmp = self.meta_dir / (CLEAN + ".tmp")
        with open(tmp, "w") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.meta_dir / CLEAN)
        sync_folder(self.meta_dir)

    def _volume_list(self) -> list[list[Any]]:
        """The views kept: volume id, view folder and that folder's inode (a volume restored
        from a copy, or a view folder put back from elsewhere, is not the one left)."""
        out: list[list[Any]] = []
        for vid, root in self._volumes():
            try:
                st = os.stat(root)
                ino: list[int] | None = [st.st_dev, st.st_ino]
            except OSError:
                ino = None
            out.append([vid, os.fsdecode(root), ino])
        return out

    def _volumes(self) -> list[tuple[int, bytes]]:
        return [(vid, view_root(v.path)) for vid, v in self.volumes.items() if v.readable]

    def rebuild(self) -> None:
        """Make every view match the whole namespace."""
        self.applied = self.meta.changelog_bounds()[1]
        self.sync(b"/", stoppable=True)

    def apply_next(self) -> int:
        """Apply the next page of changes; how many there were."""
        # One read transaction for the pass: the changes and the state of every path they touch.
        with self._snapshot():
            changes = self.meta.changes(self.applied, PAGE)
            # In order, each path once (its last state is what counts): a burst of puts to the
            # same file costs one sync.
            paths = dict.fromkeys(p for c in changes for p in touched(c))
            volumes = self._volumes()
            for path in paths:
                self.sync(path, volumes)
        if changes:
            self.applied = changes[-1].seq
        return len(changes)

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[None]:
        """A read transaction around the block (one consistent state of the metadata), unless
        one is open already."""
        db = self.meta.db
        if db.in_transaction:
            yield
            return
        db.execute("BEGIN")
        try:
            yield
        finally:
            db.execute("COMMIT")

    def sync(
        self,
        path: bytes,
        volumes: list[tuple[int, bytes]] | None = None,
        *,
        stoppable: bool = False,
    ) -> None:
        """Make the views of the tree at ``path`` match the metadata (on ``volumes``, the
        local ones that are readable, when the caller has them). A tree is done a folder at
        a time, each in its own read transaction unless the caller holds one: memory stays
        that of the largest folder, and a rebuild of millions of files never keeps one read
        transaction open (which would keep the WAL from being checkpointed). ``stoppable``:
        ``stopping`` is asked between folders."""
        vols = self._volumes() if volumes is None else volumes
        folders = [path]
        while folders:
            if stoppable and self.stopping():
                raise Stopped
            top = folders.pop()
            want, subdirs = self._servable(top)
            for vid, root in vols:
                bit = 1 << vid
                mine = {rel: key for rel, (key, copies, _) in want.items() if copies & bit}
                base = os.fsencode(self.volumes[vid].path)
                try:
                    self._sync_volume(root + _rel(top), mine, base, want, subdirs)
                except OSError as exc:  # a failing disk: the health check will mark it
                    log.warning("view.sync_failed", volume=root, error=str(exc))
            folders.extend(_rel(top) + b"/" + name for name in subdirs or ())

    def _servable(
        self, path: bytes
    ) -> tuple[dict[bytes, tuple[ChunkKey, int, int]], list[bytes] | None]:
        """What the view holds at ``path``: (relative path → (chunk, copies, mtime), the
        names of its subfolders). For a folder: its files (``/name``) and subfolders; for a
        file: itself (``b""``) and None; for nothing: nothing and None."""
        out: dict[bytes, tuple[ChunkKey, int, int]] = {}
        meta = self.meta
        try:
            with self._snapshot():
                top = meta.stat(_parts(path))
                if not top.is_dir:
                    entries, subdirs = [(b"", top)], None
                else:
                    children = meta.listdir(_parts(path))
                    entries = [(b"/" + _name(e), e) for e in children if not e.is_dir]
                    subdirs = [_name(e) for e in children if e.is_dir]
                for rel, e in entries:
                    if servable(e):
                        (c,) = meta.chunks(e.chunks)
                        out[rel] = (ChunkKey(c.id, c.version), c.copies, e.mtime_ns)
                return out, subdirs
        except NotFound:
            pass
        except ClusterError as exc:  # e.g. a parent that is now a file
            log.debug("view.walk_failed", path=path, error=str(exc))
        return {}, None

    def _sync_volume(
        self,
        top: bytes,
        mine: dict[bytes, ChunkKey],
        base: bytes,
        want: dict[bytes, tuple[ChunkKey, int, int]],
        subdirs: list[bytes] | None,
    ) -> None:
        """One volume's view at ``top``: of a folder (``subdirs`` given), its files and any
        folder that is no longer one; else of a file or of nothing, whatever is there."""
        if subdirs is None:
            have = _existing(top)
            if have is None:  # nothing there (one lstat): nothing to remove
                have = {}
            elif not mine and os.path.isdir(top) and not os.path.islink(top):
                shutil.rmtree(top, ignore_errors=True)  # a removed tree: its folders go too
                return
        else:
            have = _folder(top, set(subdirs))
        for rel in have:
            if rel not in mine:
                _remove(top + rel)
        for rel, key in mine.items():
            src = b"%s/%s/%s" % (base, key.folder.encode(), key.name.encode())
            try:
                st = os.stat(src)
            except FileNotFoundError:
                continue  # the copy is gone: the metadata will catch up
            mtime = want[rel][2]
            if st.st_mtime_ns != mtime:  # e.g. a copy made before copies kept mtimes
                os.utime(src, ns=(mtime, mtime))
            if have.get(rel) != st.st_ino:
                _link(src, top + rel)

    def sweep_suspects(self) -> None:
        """Re-link every path whose link lost its chunk file (its only name is the link), on
        the volumes named suspect."""
        vids, self.suspects = self.suspects, set()
        for vid, root in self._volumes():
            if vid not in vids:
                continue
            stale = [rel for rel, n in (_existing(root, nlink=True) or {}).items() if n == 1]
            for rel in stale:
                self.sync(rel)
            if stale:
                log.info("view.swept", volume=root, relinked=len(stale))


def take_clean(meta_dir: Path) -> dict[str, Any] | None:
    """What a clean stop left (``View.finish``), removed durably before the views change
    again: a crash from now on leaves nothing, and the next start rebuilds."""
    path = meta_dir / CLEAN
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    os.unlink(path)
    sync_folder(meta_dir)
    try:
        state = json.loads(text)
    except ValueError:
        return None
    return state if isinstance(state, dict) else None


def servable(e: Entry) -> bool:
    """Whether nginx can send the file as one chunk file (the origin serves the rest)."""
    return not e.is_dir and len(e.chunks) == 1


def touched(c: Change) -> list[bytes]:
    """The paths whose view a change may alter."""
    if c.op in ("put", "undelete", "rm"):
        return [c.path]
    if c.op in ("mv", "snapshot") and c.dest is not None:
        return [c.path, c.dest] if c.op == "mv" else [c.dest]
    return []


def _parts(path: bytes) -> tuple[bytes, ...]:
    return tuple(p for p in path.split(b"/") if p)


def _rel(path: bytes) -> bytes:
    return b"" if path == b"/" else path.rstrip(b"/")


def _name(e: Entry) -> bytes:
    return e.path.rsplit(b"/", 1)[1]


def _folder(top: bytes, subdirs: set[bytes]) -> dict[bytes, int]:
    """The regular files right in the view folder ``top`` (``/name`` → inode), after
    removing what stands where no file or folder of the namespace is: folders not in
    ``subdirs``, or a file where the folder itself goes."""
    out: dict[bytes, int] = {}
    try:
        it = os.scandir(top)
    except FileNotFoundError:
        return out
    except NotADirectoryError:
        _remove(top)  # a file where the folder now is
        return out
    with it:
        for e in it:
            if e.is_dir(follow_symlinks=False):
                if e.name not in subdirs:
                    shutil.rmtree(e.path, ignore_errors=True)
            elif e.is_file(follow_symlinks=False):
                out[b"/" + e.name] = e.stat(follow_symlinks=False).st_ino
    return out


def _existing(top: bytes | str, *, nlink: bool = False) -> dict[bytes, int] | None:
    """Regular files under ``top`` (itself if it is one): path relative to ``top`` → inode
    (or link count); None when there is nothing at ``top``. Directories are walked; anything
    else is ignored."""
    top = os.fsencode(top)
    out: dict[bytes, int] = {}
    try:
        st = os.lstat(top)
    except FileNotFoundError:
        return None
    if stat.S_ISREG(st.st_mode):
        out[b""] = st.st_nlink if nlink else st.st_ino
        return out
    stack = [top]
    while stack:
        d = stack.pop()
        with contextlib.suppress(FileNotFoundError), os.scandir(d) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    s = e.stat(follow_symlinks=False)
                    out[e.path[len(top):]] = s.st_nlink if nlink else s.st_ino
    return out


def _remove(path: bytes) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _link(src: bytes, dst: bytes) -> None:
    """Put a hard link to ``src`` at ``dst`` atomically, making room for it: a directory
    where the file goes is removed, a file where a parent directory goes is removed.
    A new name is linked in place (one syscall); an existing one is replaced by rename."""
    parent = os.path.dirname(dst)
    try:
        os.link(src, dst)
        return
    except FileExistsError:
        pass
    except (FileNotFoundError, NotADirectoryError):
        _make_dirs(parent)
        with contextlib.suppress(FileExistsError):
            os.link(src, dst)
            return
    tmp = os.path.join(parent, TMP.encode() + os.urandom(6).hex().encode())
    os.link(src, tmp)
    try:
        if os.path.isdir(dst) and not os.path.islink(dst):
            shutil.rmtree(dst)
        os.rename(tmp, dst)
    except BaseException:
        _remove(tmp)
        raise


def _make_dirs(path: bytes) -> None:
    try:
        os.makedirs(path, 0o755, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        # A file stands where a directory now goes: it was a file before, remove it.
        probe = path
        while probe and not os.path.isdir(probe):
            if os.path.lexists(probe):
                os.unlink(probe)
                break
            probe = os.path.dirname(probe)
        os.makedirs(path, 0o755, exist_ok=True)



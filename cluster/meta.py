"""The master's metadata: namespace, chunks, trash, snapshots and the changelog, in SQLite.

``Meta`` is synchronous and owns no thread: the master runs every call on its one database
thread (``master.Master``), and every mutating call runs inside a transaction opened by the
caller (``Meta.transaction``) so that several puts can share one commit (group commit). Each
mutation appends its changelog entry in that same transaction.

Paths arrive already parsed (``paths.parse``): tuples of byte names.
"""

from __future__ import annotations

import sqlite3
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from cluster.errors import (
    AlreadyExists,
    DirectoryNotEmpty,
    GoalChanged,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotFound,
)
from cluster.paths import join, show

ROOT_ID = 1
NS = 1_000_000_000
CHUNK_ID_BLOCK = 4096
#: Inode ids the writer takes from the counter at once (one counter update per block).
INODE_ID_BLOCK = 256


class Kind(IntEnum):
    DIR = 1
    FILE = 2


@dataclass(frozen=True, slots=True)  # slots: origins cache tens of thousands of these
class Entry:
    """A directory entry as stored, plus its effective (inherited) goal and trash time."""

    path: bytes
    id: int
    kind: Kind
    mode: int
    mtime_ns: int
    size: int
    hash: bytes | None
    chunks: tuple[int, ...]
    goal: int | None
    trash_time: int | None
    effective_goal: int
    effective_trash_time: int

    @property
    def is_dir(self) -> bool:
        return self.kind is Kind.DIR


def distinct_mtime(old: Entry | None, size: int, hash: bytes, mtime_ns: int) -> int:
    """The mtime to store for new content replacing ``old``.

    Origins and nginx derive ETag and Last-Modified from (mtime in seconds, size) — nginx's
    own validators — so they must change whenever the bytes do: new bytes of the same size
    within the same second as the old version move to the second after the old one."""
    if old is None or old.is_dir or old.size != size or old.hash == hash:
        return mtime_ns
    if old.mtime_ns // NS != mtime_ns // NS:
        return mtime_ns
    return (old.mtime_ns // NS + 1) * NS


@dataclass(frozen=True, slots=True)
class Chunk:
    id: int
    version: int
    size: int
    goal: int
    copies: int
    refs: int


@dataclass(frozen=True)
class NewChunk:
    """A chunk whose copies were written and fsynced, waiting for its metadata commit."""

    id: int
    version: int
    size: int
    copies: int


@dataclass(frozen=True)
class TrashItem:
    id: int
    path: bytes
    size: int
    hash: bytes | None
    mtime_ns: int
    deleted: int
    expires: int


@dataclass(frozen=True)
class Change:
    """One changelog entry: a namespace mutation with its sequence number."""

    seq: int
    ts_ms: int
    op: str
    path: bytes
    dest: bytes | None
    arg: int | None
    hash: bytes | None


def pack_ids(ids: tuple[int, ...] | list[int]) -> bytes:
    return struct.pack(f">{len(ids)}Q", *ids)


def unpack_ids(blob: bytes | None) -> tuple[int, ...]:
    if not blob:
        return ()
    return struct.unpack(f">{len(blob) // 8}Q", blob)


_ROW = "id, kind, mode, mtime, size, hash, chunks, goal, trash_time"
_INSERT_FILE = (
    "INSERT INTO inode (parent, name, id, kind, mode, mtime, size, hash, chunks, goal, "
    "trash_time) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)
_INSERT_NEW_FILE = _INSERT_FILE.replace("INSERT", "INSERT OR IGNORE", 1)
#: An entry by (parent, name) with the counter 'dirs', in one snapshot (``_walk_cached``).
_PROBE = (
    "SELECT c.value, i.id, i.kind, i.mode, i.mtime, i.size, i.hash, i.chunks, i.goal, "
    "i.trash_time FROM counter AS c LEFT JOIN inode AS i ON i.parent = ? AND i.name = ? "
    "WHERE c.name = 'dirs'"
)


class Meta:
    """Namespace and chunk metadata over one SQLite connection."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        default_goal: int,
        default_trash_time: int,
        *,
        dir_cache: bool = False,
    ) -> None:
        self.db = conn
        self.default_goal = default_goal
        self.default_trash_time = default_trash_time
        # Read-only connections may cache directory lookups until the counter 'dirs' moves
        # (a trigger moves it whenever a directory goes or is moved or re-goaled: schema.py).
        self._dirs: dict[tuple[bytes, ...], tuple[Any, int, int]] | None = (
            {} if dir_cache else None
        )
        self._version: Any = None
        # The writer caches the directories ``_mkdirs`` resolved or made: (id, effective goal,
        # effective trash time) by path. Only its own transactions change the namespace, so
        # it forgets them whenever one may remove, move or re-goal a directory, and whenever
        # a transaction or savepoint rolls back (a directory made there is gone again).
        self._made: dict[tuple[bytes, ...], tuple[int, int, int]] | None = (
            None if dir_cache else {}
        )
        # Inode ids reserved by the current transaction and not yet used: [next, end).
        self._ids = (0, 0)

    # -- transactions and counters ----------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.begin()
        try:
            yield
        except BaseException:
            self.rollback()
            raise
        self.commit()

    def begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        """Commit (the WAL's fsync included); on failure nothing of the transaction stays."""
        try:
            self.db.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise

    def rollback(self) -> None:
        self._undone()
        if self.db.in_transaction:  # a failed COMMIT may already have rolled back
            self.db.execute("ROLLBACK")

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested unit inside a group commit: its failure undoes only itself."""
        self.db.execute("SAVEPOINT op")
        try:
            yield
        except BaseException:
            self._undone()
            self.db.execute("ROLLBACK TO op")
            self.db.execute("RELEASE op")
            raise
        self.db.execute("RELEASE op")

    def _forget_dirs(self) -> None:
        if self._made:
            self._made.clear()

    def _undone(self) -> None:
        """A rollback: directories made and inode ids reserved since may be gone again."""
        self._forget_dirs()
        self._ids = (0, 0)

    def _inode_id(self) -> int:
        """A fresh inode id, from a block reserved in the counter by this transaction (or an
        earlier one): one counter update per ``INODE_ID_BLOCK`` new entries, not two statements
        per entry. A rollback forgets the block; unused ids are only a gap."""
        first, end = self._ids
        if first == end:
            first = self._next("inode", INODE_ID_BLOCK)
            end = first + INODE_ID_BLOCK
        self._ids = (first + 1, end)
        return first

    def _next(self, name: str, count: int = 1) -> int:
        """The first of ``count`` fresh values of counter ``name``. Two statements, not one
        ``UPDATE … RETURNING``: SQLite 3.40 runs RETURNING through a temporary table, ~29 µs
        against ~7 µs for both (one per put, on the master's event loop)."""
        self.db.execute("UPDATE counter SET value = value + ? WHERE name = ?", (count, name))
        (value,) = self.db.execute("SELECT value FROM counter WHERE name = ?", (name,)).fetchone()
        return int(value) - count

    def reserve_chunk_ids(self) -> range:
        """A block of chunk ids for this process; never handed out again, even after a crash."""
        with self.transaction():
            first = self._next("chunk", CHUNK_ID_BLOCK)
        return range(first, first + CHUNK_ID_BLOCK)

    def _log(
        self,
        op: str,
        path: bytes,
        dest: bytes | None = None,
        arg: int | None = None,
        hash: bytes | None = None,
    ) -> None:
        self.db.execute(
            "INSERT INTO changelog (ts, op, path, dest, arg, hash) VALUES (?, ?, ?, ?, ?, ?)",
            (int(time.time() * 1000), op, path, dest, arg, hash),
        )

    # -- lookups ------------------------------------------------------------------------------

    def _row(self, parent: int, name: bytes) -> Any:
        row: Any = self.db.execute(
            f"SELECT {_ROW} FROM inode WHERE parent = ? AND name = ?", (parent, name)
        ).fetchone()
        return row

    def _walk(self, parts: tuple[bytes, ...]) -> tuple[Any, int, int, int]:
        """Resolve ``parts``: (row or None, parent id, effective goal, effective trash time).
        Raises ``NotFound`` when a parent is missing, ``NotADirectory`` when one is a file."""
        if self._dirs is not None and parts:
            return self._walk_cached(parts)
        made = self._made.get(parts[:-1]) if self._made and len(parts) > 1 else None
        if made is not None:  # the writer, in a directory it resolved (its own view of it)
            return self._in_dir(*made, parts[-1])
        row = self._row(0, b"")
        assert row is not None, "metadata has no root"
        goal = int(row[7]) if row[7] is not None else self.default_goal
        trash = int(row[8]) if row[8] is not None else self.default_trash_time
        parent = ROOT_ID
        for i, name in enumerate(parts):
            if row is None:
                raise NotFound(f"no such directory: {show(join(parts[:i]))}")
            if row[1] != Kind.DIR:
                raise NotADirectory(f"not a directory: {show(join(parts[:i]))}")
            parent = int(row[0])
            row = self._row(parent, name)
            if row is not None:
                goal = int(row[7]) if row[7] is not None else goal
                trash = int(row[8]) if row[8] is not None else trash
        return row, parent, goal, trash

    def _walk_cached(self, parts: tuple[bytes, ...]) -> tuple[Any, int, int, int]:
        hit = self._dirs.get(parts[:-1]) if self._dirs else None
        if hit is not None:
            # The usual case, in one statement: the entry in a cached directory, and the
            # counter that says whether the cache still holds.
            prow, goal, trash = hit
            found = self.db.execute(_PROBE, (int(prow[0]), parts[-1])).fetchone()
            if found is not None and (found[0],) == self._version:
                row = None if found[1] is None else found[1:]
                if row is not None:
                    goal = int(row[7]) if row[7] is not None else goal
                    trash = int(row[8]) if row[8] is not None else trash
                return row, int(prow[0]), goal, trash
        prow, goal, trash = self._cached_dir(parts[:-1])
        return self._in_dir(int(prow[0]), goal, trash, parts[-1])

    def _cached_dir(self, parts: tuple[bytes, ...]) -> tuple[Any, int, int]:
        """The directory at ``parts`` (its row, effective goal and trash time) from the cache,
        resolving from its deepest cached ancestor the levels the cache lacks and caching
        each: a put into a new folder costs one lookup per new level, not a walk from the
        root. Raises ``NotFound``/``NotADirectory`` for the first level that is missing or a
        file; the levels above it stay cached (``put_context`` reads the goal there)."""
        dirs = self._dirs
        assert dirs is not None
        version = self.db.execute("SELECT value FROM counter WHERE name = 'dirs'").fetchone()
        if version is None:  # metadata from before the counter: any commit may be the one
            version = ("commit", *self.db.execute("PRAGMA data_version").fetchone())
        if version != self._version or len(dirs) > 65536:
            dirs.clear()
            self._version = version
        hit = dirs.get(parts)
        if hit is not None:
            return hit
        depth = len(parts) - 1
        while depth >= 0 and parts[:depth] not in dirs:
            depth -= 1
        if depth < 0:
            root = self._row(0, b"")
            assert root is not None, "metadata has no root"
            goal = int(root[7]) if root[7] is not None else self.default_goal
            trash = int(root[8]) if root[8] is not None else self.default_trash_time
            dirs[()] = hit = (root, goal, trash)
            depth = 0
        else:
            hit = dirs[parts[:depth]]
        for i in range(depth, len(parts)):
            prow, goal, trash = hit
            row = self._row(int(prow[0]), parts[i])
            if row is None:
                raise NotFound(f"no such directory: {show(join(parts[: i + 1]))}")
            if row[1] != Kind.DIR:
                raise NotADirectory(f"not a directory: {show(join(parts[: i + 1]))}")
            goal = int(row[7]) if row[7] is not None else goal
            trash = int(row[8]) if row[8] is not None else trash
            dirs[parts[: i + 1]] = hit = (row, goal, trash)
        return hit

    def _in_dir(self, parent: int, goal: int, trash: int, name: bytes) -> tuple[Any, int, int, int]:
        """``_walk``'s answer for ``name`` in a directory already resolved: its id and its
        effective goal and trash time, which the entry's own override."""
        row = self._row(parent, name)
        if row is not None:
            goal = int(row[7]) if row[7] is not None else goal
            trash = int(row[8]) if row[8] is not None else trash
        return row, parent, goal, trash

    @staticmethod
    def _entry(path: bytes, row: Any, goal: int, trash: int) -> Entry:
        id_, kind, mode, mtime, size, hash_, chunks, g, t = row
        return Entry(
            path=path,
            id=int(id_),
            kind=Kind(kind),
            mode=int(mode),
            mtime_ns=int(mtime),
            size=int(size),
            hash=hash_,
            chunks=unpack_ids(chunks),
            goal=g,
            trash_time=t,
            effective_goal=goal,
            effective_trash_time=trash,
        )

    def stat(self, parts: tuple[bytes, ...]) -> Entry:
        row, _, goal, trash = self._walk(parts)
        if row is None:
            raise NotFound(f"no such file or directory: {show(join(parts))}")
        return self._entry(join(parts), row, goal, trash)

    def exists(self, parts: tuple[bytes, ...]) -> bool:
        try:
            return self._walk(parts)[0] is not None
        except (NotFound, NotADirectory):
            return False

    def listdir(self, parts: tuple[bytes, ...]) -> list[Entry]:
        d = self.stat(parts)
        if not d.is_dir:
            return [d]
        rows = self.db.execute(
            f"SELECT name, {_ROW} FROM inode WHERE parent = ? ORDER BY name", (d.id,)
        ).fetchall()
        out = []
        for name, *rest in rows:
            g = rest[7] if rest[7] is not None else d.effective_goal
            t = rest[8] if rest[8] is not None else d.effective_trash_time
            out.append(self._entry(join((*parts, name)), tuple(rest), g, t))
        return out

    def walk(self, parts: tuple[bytes, ...]) -> Iterator[Entry]:
        """Every entry under ``parts`` (itself first), depth first, names sorted."""
        top = self.stat(parts)
        yield top
        if not top.is_dir:
            return
        stack = [parts]
        while stack:
            base = stack.pop()
            for e in self.listdir(base):
                yield e
                if e.is_dir:
                    stack.append((*base, e.path.rsplit(b"/", 1)[1]))

    def chunks(self, ids: tuple[int, ...]) -> list[Chunk]:
        out = []
        for cid in ids:
            row = self.db.execute(
                "SELECT id, version, size, goal, copies, refs FROM chunk WHERE id = ?", (cid,)
            ).fetchone()
            if row is None:
                raise NotFound(f"chunk {cid:016X} is not in the metadata")
            out.append(Chunk(*row))
        return out

    # -- namespace mutations (call inside a transaction) --------------------------------------

    def _mkdirs(self, parts: tuple[bytes, ...], mode: int, now_ns: int) -> tuple[int, int, int]:
        """Make every missing directory of ``parts``; (dir id, effective goal, trash time)."""
        made = self._made
        start = 0
        if made is not None:
            for start in range(len(parts), 0, -1):
                hit = made.get(parts[:start])
                if hit is not None:
                    if start == len(parts):
                        return hit
                    current, goal, trash = hit
                    break
            else:
                start = 0
            if len(made) > 65536:
                made.clear()
        if start == 0:
            row, _, goal, trash = self._walk(())
            assert row is not None
            current = ROOT_ID
        for i in range(start, len(parts)):
            name = parts[i]
            row = self._row(current, name)
            if row is None:
                new_id = self._inode_id()
                self.db.execute(
                    "INSERT INTO inode (parent, name, id, kind, mode, mtime) VALUES (?,?,?,?,?,?)",
                    (current, name, new_id, Kind.DIR, mode, now_ns),
                )
                self._log("mkdir", join(parts[: i + 1]))
                current = new_id
            else:
                if row[1] != Kind.DIR:
                    raise NotADirectory(f"not a directory: {show(join(parts[: i + 1]))}")
                current = int(row[0])
                goal = int(row[7]) if row[7] is not None else goal
                trash = int(row[8]) if row[8] is not None else trash
            if made is not None:
                made[parts[: i + 1]] = (current, goal, trash)
        return current, goal, trash

    def mkdir(self, parts: tuple[bytes, ...], mode: int = 0o755, parents: bool = True) -> Entry:
        if not parts:
            raise AlreadyExists("the root directory always exists")
        now = time.time_ns()
        if self.exists(parts):
            e = self.stat(parts)
            if e.is_dir and parents:
                return e
            raise AlreadyExists(f"already exists: {show(join(parts))}")
        if not parents:
            self.stat(parts[:-1])
        self._mkdirs(parts, mode, now)
        return self.stat(parts)

    def folder_goal(self, parts: tuple[bytes, ...]) -> int | None:
        """The goal of the folder a put at ``parts`` goes into, from the directories the
        writer resolved (``_made``; safe to read from another thread), or None. Not the
        file's own goal, if it exists and has one: ``commit_put`` checks that."""
        made = self._made
        hit = made.get(parts[:-1]) if made else None
        return None if hit is None else hit[1]

    def put_context(self, parts: tuple[bytes, ...]) -> tuple[int, Entry | None]:
        """For a put at ``parts``, in one walk: the goal the new file gets (``effective_goal``)
        and what is there now (None when nothing is)."""
        try:
            row, _, goal, trash = self._walk(parts)
        except NotFound:  # a folder still to be made: the ancestors' goal
            return self._nearest_goal(parts), None
        except NotADirectory:  # the put fails at its commit; the goal it would have had
            return self.effective_goal(parts), None
        if row is None:
            return goal, None
        return goal, self._entry(join(parts), row, goal, trash)

    def _nearest_goal(self, parts: tuple[bytes, ...]) -> int:
        """``effective_goal`` after a walk of ``parts`` found a folder missing: with the
        directory cache, the walk left every existing level cached; the deepest has the goal."""
        if self._dirs is None:
            return self.effective_goal(parts)
        depth = len(parts) - 1
        while depth > 0 and parts[:depth] not in self._dirs:
            depth -= 1
        hit = self._dirs.get(parts[:depth])
        return self.effective_goal(parts) if hit is None else hit[1]

    def effective_goal(self, parts: tuple[bytes, ...]) -> int:
        """The goal a new file at ``parts`` gets: its own, else its nearest ancestor's (the
        deepest existing entry on the path; one walk from the root)."""
        row = self._row(0, b"")
        assert row is not None, "metadata has no root"
        goal = int(row[7]) if row[7] is not None else self.default_goal
        for name in parts:
            if row[1] != Kind.DIR:
                break
            row = self._row(int(row[0]), name)
            if row is None:
                break
            if row[7] is not None:
                goal = int(row[7])
        return goal

    def commit_put(
        self,
        parts: tuple[bytes, ...],
        *,
        size: int,
        hash: bytes,
        mode: int,
        mtime_ns: int,
        chunks: list[NewChunk],
        goal: int,
        folder_goal: bool = False,
    ) -> Entry:
        """Make a written file visible: its chunks, its entry, the old version into trash.
        The stored mtime may differ from ``mtime_ns``: see ``distinct_mtime``. With
        ``folder_goal``, ``goal`` is the folder's (``folder_goal``): ``GoalChanged`` when the
        file replaced has a higher goal of its own, its own goal when lower."""
        if not parts:
            raise IsADirectory("cannot put onto the root directory")
        parent, eff_goal, eff_trash = self._mkdirs(parts[:-1], 0o755, time.time_ns())
        file_goal = file_trash = None
        new_id = self._inode_id()
        row: list[Any] = [
            parent, parts[-1], new_id, Kind.FILE, mode, mtime_ns, size, hash,
            pack_ids([c.id for c in chunks]), file_goal, file_trash,
        ]
        # Most puts make a new file: one statement, that does nothing where the name is taken.
        if self.db.execute(_INSERT_NEW_FILE, row).rowcount == 0:
            old = self._row(parent, parts[-1])
            if old is None:  # ignored for another reason: let it raise
                self.db.execute(_INSERT_FILE, row)
            assert old is not None
            if old[1] == Kind.DIR:
                raise IsADirectory(f"is a directory: {show(join(parts))}")
            # A file's own goal and trash time stay with the path across overwrites.
            file_goal = int(old[7]) if old[7] is not None else None
            file_trash = int(old[8]) if old[8] is not None else None
            if folder_goal and file_goal is not None:
                if file_goal > goal:
                    raise GoalChanged(file_goal)
                goal = file_goal  # fewer copies wanted than written: the extra ones go later
            old_entry = self._entry(
                join(parts), old,
                eff_goal if file_goal is None else file_goal,
                eff_trash if file_trash is None else file_trash,
            )
            self._to_trash(old_entry)
            self.db.execute("DELETE FROM inode WHERE parent = ? AND name = ?", (parent, parts[-1]))
            mtime_ns = distinct_mtime(old_entry, size, hash, mtime_ns)
            row[5], row[9], row[10] = mtime_ns, file_goal, file_trash
            self.db.execute(_INSERT_FILE, row)
        for c in chunks:
            self.db.execute(
                "INSERT INTO chunk (id, version, size, goal, copies, refs) VALUES (?,?,?,?,?,1)",
                (c.id, c.version, c.size, goal, c.copies),
            )
        path = join(parts)
        self._log("put", path, arg=size, hash=hash)
        # The entry as ``stat`` would read it back, without walking the path again.
        return Entry(
            path=path, id=new_id, kind=Kind.FILE, mode=mode, mtime_ns=mtime_ns, size=size,
            hash=hash, chunks=tuple(c.id for c in chunks), goal=file_goal, trash_time=file_trash,
            effective_goal=eff_goal if file_goal is None else file_goal,
            effective_trash_time=eff_trash if file_trash is None else file_trash,
        )

    def _to_trash(self, e: Entry) -> None:
        now = int(time.time())
        self.db.execute(
            "INSERT INTO trash (path, mode, mtime, size, hash, chunks, goal, deleted, expires) "
            "VALUES (?,?,?,?,?,?,?,?,?)",
            (e.path, e.mode, e.mtime_ns, e.size, e.hash, pack_ids(e.chunks), e.goal, now,
             now + e.effective_trash_time),
        )

    def remove(self, parts: tuple[bytes, ...], recursive: bool = False) -> int:
        """Files go to trash (for their trash time), directories are dropped. Returns the
        number of files moved to trash."""
        self._forget_dirs()  # may remove, move or re-goal a directory
        if not parts:
            raise InvalidArgument("refusing to remove the root directory")
        top = self.stat(parts)
        has_child = "SELECT 1 FROM inode WHERE parent = ? LIMIT 1"
        if top.is_dir and not recursive and self.db.execute(has_child, (top.id,)).fetchone():
            raise DirectoryNotEmpty(f"directory not empty: {show(top.path)} (use -r)")
        entries = list(self.walk(parts))
        files = 0
        for e in entries:
            if e.kind is Kind.FILE:
                self._to_trash(e)
                files += 1
        dir_ids = [e.id for e in entries if e.is_dir]
        for did in dir_ids:
            self.db.execute("DELETE FROM inode WHERE parent = ?", (did,))
        parent = self._walk(parts[:-1])[0]
        assert parent is not None
        self.db.execute("DELETE FROM inode WHERE parent = ? AND name = ?", (parent[0], parts[-1]))
        self._log("rm", top.path, arg=int(top.kind))
        return files

    def move(self, src: tuple[bytes, ...], dst: tuple[bytes, ...]) -> Entry:
        """rename(2): ``dst`` may not exist, except a file replaced by a file (old → trash)."""
        self._forget_dirs()  # may remove, move or re-goal a directory
        if not src or not dst:
            raise InvalidArgument("cannot move the root directory")
        s = self.stat(src)
        if s.is_dir and dst[: len(src)] == src:
            raise InvalidArgument(f"cannot move {show(s.path)} into itself")
        if src == dst:
            return s
        dparent, _, _ = self._mkdirs(dst[:-1], 0o755, time.time_ns())
        old = self._row(dparent, dst[-1])
        if old is not None:
            if s.is_dir or old[1] == Kind.DIR:
                raise AlreadyExists(f"destination exists: {show(join(dst))}")
            self._to_trash(self.stat(dst))
            self.db.execute("DELETE FROM inode WHERE parent = ? AND name = ?", (dparent, dst[-1]))
        sparent = self._walk(src[:-1])[0]
        assert sparent is not None
        self.db.execute(
            "UPDATE inode SET parent = ?, name = ? WHERE parent = ? AND name = ?",
            (dparent, dst[-1], sparent[0], src[-1]),
        )
        self._log("mv", join(src), dest=join(dst))
        return self.stat(dst)

    def snapshot(self, src: tuple[bytes, ...], dst: tuple[bytes, ...]) -> int:
        """Copy-on-write copy of a tree: new entries sharing the same chunks (refs + 1).
        Returns the number of files in the snapshot."""
        self._forget_dirs()  # may remove, move or re-goal a directory
        top = self.stat(src)
        if not dst:
            raise AlreadyExists("the root directory always exists")
        if top.is_dir and dst[: len(src)] == src:
            raise InvalidArgument("cannot snapshot a directory into itself")
        if self.exists(dst):
            raise AlreadyExists(f"destination exists: {show(join(dst))}")
        dparent, _, _ = self._mkdirs(dst[:-1], 0o755, time.time_ns())
        files = 0
        # (source dir id, destination parent id, name) to copy, breadth first
        queue: list[tuple[int, int, bytes]] = []
        sparent = self._walk(src[:-1])[0]
        assert sparent is not None
        queue.append((int(sparent[0]), dparent, src[-1]))
        rename_top = dst[-1]
        while queue:
            sp, dp, name = queue.pop()
            row = self.db.execute(
                f"SELECT {_ROW} FROM inode WHERE parent = ? AND name = ?", (sp, name)
            ).fetchone()
            new_id = self._inode_id()
            new_name = rename_top if (sp, name) == (sparent[0], src[-1]) else name
            self.db.execute(
                "INSERT INTO inode (parent, name, id, kind, mode, mtime, size, hash, chunks, "
                "goal, trash_time) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (dp, new_name, new_id, *row[1:]),
            )
            if row[1] == Kind.FILE:
                files += 1
                self._ref(unpack_ids(row[6]), +1)
            else:
                for (child,) in self.db.execute(
                    "SELECT name FROM inode WHERE parent = ?", (row[0],)
                ).fetchall():
                    queue.append((int(row[0]), new_id, child))
        self._log("snapshot", join(src), dest=join(dst))
        return files

    def _ref(self, ids: tuple[int, ...], delta: int) -> None:
        for cid in ids:
            self.db.execute("UPDATE chunk SET refs = refs + ? WHERE id = ?", (delta, cid))

    def set_goal(self, parts: tuple[bytes, ...], goal: int, recursive: bool) -> int:
        """Set an explicit goal; chunks of affected files follow (raised always, lowered
        only where no other file shares the chunk). Returns the number of entries changed."""
        self._forget_dirs()  # may remove, move or re-goal a directory
        targets = list(self.walk(parts)) if recursive else [self.stat(parts)]
        changed = self._set_column(targets, "goal", goal)
        files = [e for e in self.walk(parts) if e.kind is Kind.FILE]
        for e in files:
            g = self.stat(_split(e.path)).effective_goal
            for cid in e.chunks:
                self.db.execute(
                    "UPDATE chunk SET goal = CASE WHEN refs > 1 THEN max(goal, ?) ELSE ? END "
                    "WHERE id = ?",
                    (g, g, cid),
                )
        self._log("setgoal", join(parts), arg=goal)
        return changed

    def set_trash_time(self, parts: tuple[bytes, ...], seconds: int, recursive: bool) -> int:
        self._forget_dirs()  # may remove, move or re-goal a directory
        targets = list(self.walk(parts)) if recursive else [self.stat(parts)]
        changed = self._set_column(targets, "trash_time", seconds)
        self._log("settrashtime", join(parts), arg=seconds)
        return changed

    def _set_column(self, targets: list[Entry], column: str, value: int) -> int:
        for e in targets:
            parts = _split(e.path)
            parent = self._walk(parts[:-1])[0] if parts else None
            pid, name = (int(parent[0]), parts[-1]) if parent else (0, b"")
            self.db.execute(
                f"UPDATE inode SET {column} = ? WHERE parent = ? AND name = ?", (value, pid, name)
            )
        return len(targets)

    # -- trash --------------------------------------------------------------------------------

    def trash_list(self, limit: int = 1000, after: int = 0) -> list[TrashItem]:
        rows = self.db.execute(
            "SELECT id, path, size, hash, mtime, deleted, expires FROM trash WHERE id > ? "
            "ORDER BY id LIMIT ?",
            (after, limit),
        ).fetchall()
        return [TrashItem(*r) for r in rows]

    def undelete(self, trash_id: int, dest: tuple[bytes, ...] | None = None) -> Entry:
        self._forget_dirs()  # may remove, move or re-goal a directory
        row = self.db.execute(
            "SELECT path, mode, mtime, size, hash, chunks, goal FROM trash WHERE id = ?",
            (trash_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no trash entry {trash_id}")
        path, mode, mtime, size, hash_, chunks, goal = row
        parts = dest if dest is not None else _split(path)
        if self.exists(parts):
            raise AlreadyExists(f"cannot undelete: {show(join(parts))} exists (give a new path)")
        parent, _, _ = self._mkdirs(parts[:-1], 0o755, time.time_ns())
        self.db.execute(
            "INSERT INTO inode (parent, name, id, kind, mode, mtime, size, hash, chunks, goal) "
            "VALUES (?,?,?,?,?,?,?,?,?,?)",
            (parent, parts[-1], self._inode_id(), Kind.FILE, mode, mtime, size, hash_, chunks,
             goal),
        )
        self.db.execute("DELETE FROM trash WHERE id = ?", (trash_id,))
        self._log("undelete", join(parts), arg=size, hash=hash_)
        return self.stat(parts)

    def purge(self, ids: list[int] | None = None, *, expired_before: int | None = None) -> tuple[
        int, list[Chunk]
    ]:
        """Drop trash entries (given ids, or those expired before a time, or all). Returns
        (entries dropped, chunks no longer used by anything — the caller deletes their
        copies *after* this transaction commits)."""
        if ids is not None:
            q = "SELECT id, chunks FROM trash WHERE id IN ({})".format(",".join("?" * len(ids)))
            rows = self.db.execute(q, ids).fetchall()
            if len(rows) != len(set(ids)):
                missing = sorted(set(ids) - {r[0] for r in rows})
                raise NotFound(f"no trash entry {missing[0]}")
        elif expired_before is not None:
            rows = self.db.execute(
                "SELECT id, chunks FROM trash WHERE expires <= ?", (expired_before,)
            ).fetchall()
        else:
            rows = self.db.execute("SELECT id, chunks FROM trash").fetchall()
        dead: list[Chunk] = []
        for tid, blob in rows:
            cids = unpack_ids(blob)
            self._ref(cids, -1)
            self.db.execute("DELETE FROM trash WHERE id = ?", (tid,))
            for c in self.chunks(cids):
                if c.refs <= 0:
                    dead.append(c)
                    self.db.execute("DELETE FROM chunk WHERE id = ?", (c.id,))
        if rows:
            self._log("purge", b"/", arg=len(rows))
        return len(rows), dead

    # -- chunk copies ----------------------------------------------------------------------------

    def set_copies(self, chunk_id: int, add: int = 0, remove: int = 0) -> bool:
        """Add and remove copies (volume bits); False when the chunk is no longer there."""
        cur = self.db.execute(
            "UPDATE chunk SET copies = (copies | ?) & ~? WHERE id = ?", (add, remove, chunk_id)
        )
        return cur.rowcount > 0

    def set_worth(self, weights: dict[int, int]) -> None:
        """What a copy on each volume counts toward a goal (volume bit → worth), for the SQL
        function ``worth(mask)``; volumes not named count 1. An S3 volume whose engine keeps
        several copies itself counts as that many (``counts_as``)."""
        heavy = [(bit, w - 1) for bit, w in weights.items() if w > 1]

        def worth(mask: int) -> int:
            return mask.bit_count() + sum(extra for bit, extra in heavy if mask & bit)

        self.db.create_function(
            "worth", 1, worth if heavy else int.bit_count, deterministic=True
        )

    def needing_work(
        self, healthy: int, after: int, limit: int, kinds: tuple[int, ...] = ()
    ) -> list[Chunk]:
        """Chunks under their goal (the worth of their copies on healthy volumes is less), over
        it (more copies on healthy volumes than the goal), or with several copies and none on
        one of ``kinds`` (masks of the volumes of a kind that can take a copy now)."""
        lacking = "".join(f" OR (popcount(copies & ?2) > 1 AND copies & {int(k)} = 0)"
                          for k in kinds if k)
        rows = self.db.execute(
            "SELECT id, version, size, goal, copies, refs FROM chunk WHERE id > ?1 AND "
            f"(worth(copies & ?2) < goal OR popcount(copies & ?2) > goal{lacking}) "
            "ORDER BY id LIMIT ?3",
            (after, healthy, limit),
        ).fetchall()
        return [Chunk(*r) for r in rows]

    def chunk_page(self, after: int, limit: int) -> list[Chunk]:
        rows = self.db.execute(
            "SELECT id, version, size, goal, copies, refs FROM chunk WHERE id > ? "
            "ORDER BY id LIMIT ?",
            (after, limit),
        ).fetchall()
        return [Chunk(*r) for r in rows]

    def chunks_on(self, mask: int, after: int, limit: int, without: int = 0) -> list[Chunk]:
        """Chunks after id ``after`` with a copy on a volume of ``mask`` and none on a volume
        of ``without``, by id (a store migration's work list)."""
        rows = self.db.execute(
            "SELECT id, version, size, goal, copies, refs FROM chunk "
            "WHERE id > ? AND copies & ? != 0 AND copies & ? = 0 ORDER BY id LIMIT ?",
            (after, mask, without, limit),
        ).fetchall()
        return [Chunk(*r) for r in rows]

    def count_on(self, mask: int, without: int = 0) -> tuple[int, int]:
        """(chunks, bytes) that ``chunks_on`` would list in all."""
        n, size = self.db.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM chunk "
            "WHERE copies & ? != 0 AND copies & ? = 0",
            (mask, without),
        ).fetchone()
        return int(n), int(size)

    def copies_of(self, ids: list[int]) -> dict[int, int]:
        """chunk id → copies mask, for the ids that exist."""
        out: dict[int, int] = {}
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            q = "SELECT id, copies FROM chunk WHERE id IN ({})".format(",".join("?" * len(part)))
            out.update(self.db.execute(q, part).fetchall())
        return out

    # -- volumes ---------------------------------------------------------------------------------

    def volumes(self) -> dict[str, tuple[int, str]]:
        """path → (volume id, uuid)."""
        rows = self.db.execute("SELECT path, id, uuid FROM volume").fetchall()
        return {p: (i, u) for p, i, u in rows}

    def add_volume(self, path: str, uuid: str) -> int:
        used = {r[0] for r in self.db.execute("SELECT id FROM volume")}
        vid = next(i for i in range(63) if i not in used)
        self.db.execute(
            "INSERT INTO volume (id, path, uuid, added) VALUES (?,?,?,?)",
            (vid, path, uuid, int(time.time())),
        )
        return vid

    def replace_volume(self, vid: int, uuid: str) -> None:
        """A volume came back empty (new disk): no copy it was said to hold exists any more."""
        self.db.execute("UPDATE volume SET uuid = ? WHERE id = ?", (uuid, vid))
        self.db.execute("UPDATE chunk SET copies = copies & ~? WHERE copies & ?", (1 << vid,) * 2)

    # -- changelog -------------------------------------------------------------------------------

    def changes(self, after: int, limit: int = 1000) -> list[Change]:
        rows = self.db.execute(
            "SELECT seq, ts, op, path, dest, arg, hash FROM changelog WHERE seq > ? "
            "ORDER BY seq LIMIT ?",
            (after, limit),
        ).fetchall()
        return [Change(*r) for r in rows]

    def changelog_bounds(self) -> tuple[int, int]:
        """(oldest kept seq, newest seq); (0, 0) for an empty changelog."""
        lo, hi = self.db.execute("SELECT min(seq), max(seq) FROM changelog").fetchone()
        if hi is None:
            row = self.db.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'changelog'"
            ).fetchone()
            last = int(row[0]) if row else 0
            return last + 1, last
        return int(lo), int(hi)

    def trim_changelog(self, before_ms: int) -> int:
        """Drop entries older than ``before_ms``, always keeping the newest one."""
        cur = self.db.execute(
            "DELETE FROM changelog WHERE ts < ? AND seq < (SELECT max(seq) FROM changelog)",
            (before_ms,),
        )
        return cur.rowcount

    # -- status and checks -------------------------------------------------------------------

    def counts(self, healthy: int) -> dict[str, int]:
        q = self.db.execute
        files, dirs = q(
            "SELECT sum(kind = 2), sum(kind = 1) FROM inode"
        ).fetchone()
        chunks, under, over, missing, stored = q(
            "SELECT count(*), sum(worth(copies & ?1) < goal), sum(popcount(copies & ?1) > goal),"
            " sum((copies & ?1) = 0), coalesce(sum(size), 0) FROM chunk",
            (healthy,),
        ).fetchone()
        trash, trash_bytes = q("SELECT count(*), coalesce(sum(size), 0) FROM trash").fetchone()
        lo, hi = self.changelog_bounds()
        return {
            "files": int(files or 0),
            "directories": int(dirs or 0),
            "chunks": int(chunks or 0),
            "chunk_bytes": int(stored or 0),
            "under_goal": int(under or 0),
            "over_goal": int(over or 0),
            "missing": int(missing or 0),
            "trash_files": int(trash or 0),
            "trash_bytes": int(trash_bytes or 0),
            "changelog_oldest": lo,
            "changelog_last": hi,
        }

    def check_refs(self) -> list[str]:
        """Recount chunk references from entries and trash; every disagreement as text."""
        want: dict[int, int] = {}
        for (blob,) in self.db.execute(
            "SELECT chunks FROM inode WHERE kind = 2 UNION ALL SELECT chunks FROM trash"
        ):
            for cid in unpack_ids(blob):
                want[cid] = want.get(cid, 0) + 1
        problems = []
        have = dict(self.db.execute("SELECT id, refs FROM chunk").fetchall())
        for cid, n in want.items():
            if cid not in have:
                problems.append(f"chunk {cid:016X} is used by {n} file(s) but has no record")
            elif have[cid] != n:
                problems.append(f"chunk {cid:016X} has refs={have[cid]}, counted {n}")
        for cid in have.keys() - want.keys():
            problems.append(f"chunk {cid:016X} is used by no file")
        return problems


def _split(path: bytes) -> tuple[bytes, ...]:
    body = path.strip(b"/")
    return tuple(body.split(b"/")) if body else ()

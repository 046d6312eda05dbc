"""A worker's cache of cluster lookups, kept exact by the master's changelog.

A lookup that misses walks the path and reads the file's row and its chunks: ≈ 100 µs on a
2-core VM, more than the rest of an X-Accel answer. CDN edges send misses spread over every
file, so a cache that lives only until the next commit (every put is one) or for a second
would hardly ever hit on a busy site. This one keeps each answer until the metadata says it
changed:

- each lookup first asks SQLite whether anything was committed since the last one
  (``PRAGMA data_version``: one statement, no transaction);
- when something was, one read transaction reads the changelog entries since the last seen
  one (every namespace mutation appends one in its own transaction) and the counter
  ``copies`` (a trigger moves it whenever a chunk's copies change: ``cluster/schema.py``);
- a ``put``, ``undelete`` or ``rm`` of a file drops that path's answer; ``mkdir``,
  ``setgoal``, ``settrashtime`` and trash ``purge`` drop nothing (no served file changes);
  anything else — ``mv``, ``snapshot``, ``rm`` of a directory, an op this code does not know,
  more than ``MAX_CHANGES`` entries at once, entries trimmed by retention before they were
  seen, the counter ``copies`` moving — drops every answer.

Answers of "no such file" are kept too (a 404 storm costs one lookup per URL), and dropped
by the same rules. What a commit cannot announce — a volume's disk vanishing — the caller
checks on every hit (``ClusterSource.lookup_now`` stats the copy nginx would send).
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from cluster import paths
from cluster.errors import InvalidPath
from cluster.meta import Kind

if TYPE_CHECKING:
    from origin.sources import File

MAX_CHANGES = 1000  # more new changelog entries than this: drop everything instead
KEEP = frozenset({"mkdir", "setgoal", "settrashtime", "purge"})  # no served file changes
ONE = frozenset({"put", "undelete"})  # the one path named changed


Answer = tuple["File | None", "str | None"]  # the file (None: no such file), the copy nginx sends


class LookupCache:
    """Answers by parsed cluster path, at most ``limit`` of them (all dropped when full)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.answers: dict[tuple[bytes, ...], Answer] = {}
        self._version: int | None = None  # PRAGMA data_version at the last sync
        self._seq = -1  # the newest changelog entry applied; -1: none seen yet
        self._copies: object = None

    def sync(self, db: sqlite3.Connection) -> None:
        """Drop the answers that commits since the last call may have changed."""
        (version,) = db.execute("PRAGMA data_version").fetchone()
        if version == self._version:
            return
        db.execute("BEGIN")
        try:
            (version,) = db.execute("PRAGMA data_version").fetchone()
            row = db.execute("SELECT value FROM counter WHERE name = 'copies'").fetchone()
            # Metadata from before the counter: any commit may have moved a copy.
            copies = row[0] if row is not None else ("commit", version)
            changes = db.execute(
                "SELECT seq, op, path, arg FROM changelog WHERE seq > ? ORDER BY seq LIMIT ?",
                (self._seq, MAX_CHANGES + 1),
            ).fetchall()
            whole = (copies != self._copies or self._seq < 0 or len(changes) > MAX_CHANGES
                     or (changes and changes[0][0] != self._seq + 1)
                     or not self._apply(changes))
            if whole:
                self.answers.clear()
                self._copies = copies
                (last,) = db.execute("SELECT seq FROM sqlite_sequence "
                                     "WHERE name = 'changelog'").fetchone() or (0,)
                self._seq = int(last)
            elif changes:
                self._seq = int(changes[-1][0])
            self._version = version  # only now: a read that failed is read again next time
        finally:
            db.execute("COMMIT")

    def _apply(self, changes: list[tuple[int, str, bytes, int | None]]) -> bool:
        """Drop the answers of the paths these entries name; False when an entry needs every
        answer dropped."""
        for _, op, path, arg in changes:
            if op in KEEP:
                continue
            if op in ONE or (op == "rm" and arg != Kind.DIR):
                try:
                    self.answers.pop(paths.parse(path), None)
                except InvalidPath:
                    return False
                continue
            return False
        return True

    def get(self, parts: tuple[bytes, ...]) -> Answer | None:
        return self.answers.get(parts)

    def put(self, parts: tuple[bytes, ...], answer: Answer) -> None:
        if len(self.answers) >= self.limit:
            self.answers.clear()
            if not self.limit:
                return
        self.answers[parts] = answer

"""The master's SQLite schema and connection settings (one place for both).

Sizes matter: with a million files the metadata must stay near 200–300 bytes per file, so
directory entries are one ``WITHOUT ROWID`` table keyed by (parent, name) — the name is stored
once — a file's chunk ids are packed into one blob, and a chunk's copies are a bitmask of
volume ids.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

SCHEMA_VERSION = 1

DDL = """
CREATE TABLE IF NOT EXISTS inode (
    parent     INTEGER NOT NULL,      -- id of the directory holding it; 0 for the root
    name       BLOB    NOT NULL,      -- raw bytes; b'' for the root
    id         INTEGER NOT NULL,
    kind       INTEGER NOT NULL,      -- 1 directory, 2 file
    mode       INTEGER NOT NULL,
    mtime      INTEGER NOT NULL,      -- nanoseconds since the epoch
    size       INTEGER NOT NULL DEFAULT 0,
    hash       BLOB,                  -- SHA-256 of the content (files)
    chunks     BLOB,                  -- packed big-endian u64 chunk ids (files)
    goal       INTEGER,               -- explicit goal, NULL = inherited
    trash_time INTEGER,               -- explicit trash time in seconds, NULL = inherited
    PRIMARY KEY (parent, name)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS chunk (
    id      INTEGER PRIMARY KEY,
    version INTEGER NOT NULL,
    size    INTEGER NOT NULL,
    goal    INTEGER NOT NULL,         -- copies wanted (highest goal of the files using it)
    copies  INTEGER NOT NULL,         -- bitmask of volume ids holding a good copy
    refs    INTEGER NOT NULL          -- files (live, trashed, snapshots) that use it
);

CREATE TABLE IF NOT EXISTS trash (
    id      INTEGER PRIMARY KEY,
    path    BLOB    NOT NULL,
    mode    INTEGER NOT NULL,
    mtime   INTEGER NOT NULL,
    size    INTEGER NOT NULL,
    hash    BLOB,
    chunks  BLOB,
    goal    INTEGER,
    deleted INTEGER NOT NULL,         -- unix seconds
    expires INTEGER NOT NULL          -- unix seconds
);
CREATE INDEX IF NOT EXISTS trash_expires ON trash (expires);

CREATE TABLE IF NOT EXISTS changelog (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    ts   INTEGER NOT NULL,            -- unix milliseconds
    op   TEXT    NOT NULL,
    path BLOB    NOT NULL,
    dest BLOB,
    arg  INTEGER,                     -- size for put, goal/trash time for set*, kind for rm
    hash BLOB
);

CREATE TABLE IF NOT EXISTS volume (
    id    INTEGER PRIMARY KEY,        -- bit number in chunk.copies
    path  TEXT    NOT NULL UNIQUE,
    uuid  TEXT    NOT NULL,
    added INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS counter (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;

-- The counter 'dirs' moves whenever a directory goes or changes what a cached path lookup
-- holds of it (its place, id, kind, goal or trash time), whichever code path does it:
-- readers keep their directory caches until it moves (``Meta._walk_cached``), not merely
-- until the next commit (every put is one). Directories made do not move it.
CREATE TRIGGER IF NOT EXISTS dir_changed
AFTER UPDATE OF parent, name, id, kind, goal, trash_time ON inode WHEN OLD.kind = 1
BEGIN UPDATE counter SET value = value + 1 WHERE name = 'dirs'; END;

CREATE TRIGGER IF NOT EXISTS dir_removed AFTER DELETE ON inode WHEN OLD.kind = 1
BEGIN UPDATE counter SET value = value + 1 WHERE name = 'dirs'; END;

-- The counter 'copies' moves whenever a chunk's copies change (re-replication, repair, a lost
-- or replaced volume, migrate-store): the origins' lookup caches (``origin/lookup_cache.py``)
-- hold which copies a file has and drop everything when it moves. New chunks do not move it.
CREATE TRIGGER IF NOT EXISTS copies_changed AFTER UPDATE OF copies ON chunk
WHEN OLD.copies != NEW.copies
BEGIN UPDATE counter SET value = value + 1 WHERE name = 'copies'; END;
"""


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the metadata database. Writers get WAL with ``synchronous=FULL``: a commit that
    returned is on disk. Read-only connections (other processes) never write or checkpoint."""
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA cache_size=-16384")  # 16 MiB page cache: bounded master RSS
    conn.create_function("popcount", 1, int.bit_count, deterministic=True)
    conn.create_function("worth", 1, int.bit_count, deterministic=True)  # Meta.set_worth
    return conn


def init(conn: sqlite3.Connection) -> None:
    conn.executescript(DDL)
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "INSERT OR IGNORE INTO counter VALUES ('schema', ?), ('inode', 2), ('chunk', 1), "
            "('dirs', 0), ('copies', 0)",
            (SCHEMA_VERSION,),
        )
        conn.execute(
            "INSERT OR IGNORE INTO inode (parent, name, id, kind, mode, mtime) "
            "VALUES (0, x'', 1, 1, 493, CAST(strftime('%s','now') AS INTEGER) * 1000000000)"
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise

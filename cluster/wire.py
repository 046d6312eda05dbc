"""JSON forms of the cluster's values, for the HTTP API and the CLI's ``--json`` output.

Paths travel percent-encoded (``quote_from_bytes``): names that are not UTF-8 survive the trip
byte-exactly. Hashes travel as hex.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote_from_bytes, unquote_to_bytes

from cluster.master import ChunkInfo, CopyInfo
from cluster.meta import Change, Chunk, Entry, Kind, TrashItem


def enc(path: bytes) -> str:
    return quote_from_bytes(path, safe="/")


def dec(text: str) -> bytes:
    return unquote_to_bytes(text)


def _hex(b: bytes | None) -> str | None:
    return b.hex() if b is not None else None


def _unhex(s: str | None) -> bytes | None:
    return bytes.fromhex(s) if s is not None else None


def entry_json(e: Entry) -> dict[str, Any]:
    return {
        "path": enc(e.path),
        "id": e.id,
        "kind": "dir" if e.is_dir else "file",
        "mode": e.mode,
        "mtime_ns": e.mtime_ns,
        "size": e.size,
        "hash": _hex(e.hash),
        "chunks": list(e.chunks),
        "goal": e.goal,
        "trash_time": e.trash_time,
        "effective_goal": e.effective_goal,
        "effective_trash_time": e.effective_trash_time,
    }


def entry_from(d: dict[str, Any]) -> Entry:
    return Entry(
        path=dec(d["path"]),
        id=d["id"],
        kind=Kind.DIR if d["kind"] == "dir" else Kind.FILE,
        mode=d["mode"],
        mtime_ns=d["mtime_ns"],
        size=d["size"],
        hash=_unhex(d["hash"]),
        chunks=tuple(d["chunks"]),
        goal=d["goal"],
        trash_time=d["trash_time"],
        effective_goal=d["effective_goal"],
        effective_trash_time=d["effective_trash_time"],
    )


def chunkinfo_json(c: ChunkInfo) -> dict[str, Any]:
    k = c.chunk
    return {
        "id": k.id, "version": k.version, "size": k.size, "goal": k.goal, "copies_mask": k.copies,
        "refs": k.refs,
        "copies": [
            {"volume": cp.volume, "path": cp.path, "state": cp.state, "kind": cp.kind}
            for cp in c.copies
        ],
    }


def chunkinfo_from(d: dict[str, Any]) -> ChunkInfo:
    chunk = Chunk(d["id"], d["version"], d["size"], d["goal"], d["copies_mask"], d["refs"])
    copies = tuple(
        CopyInfo(c["volume"], c["path"], c["state"], c.get("kind", "local")) for c in d["copies"]
    )
    return ChunkInfo(chunk, copies)


def trash_json(t: TrashItem) -> dict[str, Any]:
    return {
        "id": t.id, "path": enc(t.path), "size": t.size, "hash": _hex(t.hash),
        "mtime_ns": t.mtime_ns, "deleted": t.deleted, "expires": t.expires,
    }


def trash_from(d: dict[str, Any]) -> TrashItem:
    return TrashItem(
        d["id"], dec(d["path"]), d["size"], _unhex(d["hash"]), d["mtime_ns"], d["deleted"],
        d["expires"],
    )


def change_json(c: Change) -> dict[str, Any]:
    return {
        "seq": c.seq, "ts_ms": c.ts_ms, "op": c.op, "path": enc(c.path),
        "dest": enc(c.dest) if c.dest is not None else None, "arg": c.arg, "hash": _hex(c.hash),
    }


def change_from(d: dict[str, Any]) -> Change:
    return Change(
        d["seq"], d["ts_ms"], d["op"], dec(d["path"]),
        dec(d["dest"]) if d["dest"] is not None else None, d["arg"], _unhex(d["hash"]),
    )

"""``tandem sync verify``: prove two sides hold the same files, by content hash, and name every
difference: missing, extra, type, content, mtime, mode, link.

A side is its entries (``tree.Item`` by relative path) and a way to get a file's SHA-256: the
cluster keeps one for every file in its metadata; a directory's files are read and hashed.
Folders are not compared (only what is in them); the directory target's trash folder and
temporary names are left out.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from cluster.remote import RemoteCluster
from syncer.target import TMP, TRASH
from syncer.tree import Item, sha256_file, walk

Digest = Callable[[bytes], Awaitable[bytes | None]]


@dataclass(frozen=True)
class Difference:
    path: bytes
    kind: str  # missing | extra | type | content | mtime | mode | link
    detail: str = ""

    def __str__(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.kind:8} /{os.fsdecode(self.path)}{extra}"


@dataclass(frozen=True)
class Side:
    items: dict[bytes, Item]  # folders left out
    digest: Digest


async def directory_side(root: str | os.PathLike[str]) -> Side:
    base = os.fsencode(root)

    def scan() -> dict[bytes, Item]:
        return {rel: item for rel, item in walk(base, skip=frozenset([TRASH]), skip_prefix=TMP)
                if item.kind != "dir"}

    async def digest(rel: bytes) -> bytes | None:
        return await asyncio.to_thread(sha256_file, base + b"/" + rel)

    return Side(await asyncio.to_thread(scan), digest)


async def cluster_side(master: RemoteCluster) -> Side:
    entries = {e.path.lstrip(b"/"): e for e in await master.walk("/") if not e.is_dir}

    async def digest(rel: bytes) -> bytes | None:
        return entries[rel].hash

    return Side({rel: Item("file", e.size, e.mtime_ns, e.mode & 0o7777)
                 for rel, e in entries.items()}, digest)


async def compare(want: Side, have: Side) -> list[Difference]:
    """What ``have`` lacks or holds otherwise than ``want``."""
    diffs = [Difference(p, "extra") for p in sorted(have.items.keys() - want.items.keys())]
    for p in sorted(want.items):
        a, b = want.items[p], have.items.get(p)
        if b is None:
            diffs.append(Difference(p, "missing"))
        elif a.kind != b.kind:
            diffs.append(Difference(p, "type", f"{b.kind} instead of {a.kind}"))
        elif a.kind == "link":
            if a.link != b.link:
                diffs.append(Difference(p, "link", f"-> {b.link!r} instead of {a.link!r}"))
        elif a.kind != "file":
            continue
        elif a.size != b.size:
            diffs.append(Difference(p, "content", f"{b.size} bytes instead of {a.size}"))
        elif await want.digest(p) != await have.digest(p):
            diffs.append(Difference(p, "content", "same size, other bytes"))
        elif a.mtime_ns != b.mtime_ns:
            diffs.append(Difference(p, "mtime", f"{b.mtime_ns} ns instead of {a.mtime_ns}"))
        elif a.mode != b.mode:
            diffs.append(Difference(p, "mode", f"{b.mode:o} instead of {a.mode:o}"))
    return diffs


async def verify(master: RemoteCluster, legacy: Path) -> list[Difference]:
    """The legacy directory against the cluster."""
    return await compare(await cluster_side(master), await directory_side(legacy))


async def verify_dirs(source: Path, target: Path) -> list[Difference]:
    return await compare(await directory_side(source), await directory_side(target))


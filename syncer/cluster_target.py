"""The cluster as the syncer's target (the legacy → cluster direction, before and after a
flip back): each change goes through the master's HTTP API.

- A file is streamed to ``PUT /v1/file`` with its mtime and mode; the master makes it visible
  only once it is durable (nothing to stage: ``commit`` has nothing to do). If the source
  changes while it is read, the body is cut before its end, so the master commits nothing,
  and ``SourceChanged`` is raised.
- Deleting moves the file to the cluster's trash (the cluster's own undelete applies);
  ``keep`` leaves it. Symbolic links are not carried: the cluster has none (``Skipped``).
- Master trouble is ``RemoteError`` (retryable); bad names come back as the cluster's
  ``UserError`` and are skipped with their reason.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from cluster.errors import AlreadyExists, InvalidPath, NotADirectory, NotFound, UserError
from cluster.meta import Entry
from cluster.remote import RemoteCluster
from syncer.errors import Skipped
from syncer.tree import Item, SourceChanged, just_created, read_lease

PIECE = 1 << 20


def _path(rel: bytes) -> bytes:
    return b"/" + rel


def _item(e: Entry) -> Item:
    if e.is_dir:
        return Item("dir", 0, e.mtime_ns, e.mode)
    return Item("file", e.size, e.mtime_ns, e.mode)


class ClusterTarget:
    def __init__(self, master: RemoteCluster, *, keep_deleted: bool = False) -> None:
        self.master = master
        self.keep_deleted = keep_deleted
        self.label = "cluster"

    async def put_file(self, rel: bytes, source: bytes, item: Item) -> None:
        try:
            await self.master.put(_path(rel), _read(source, item), mode=item.mode,
                                  mtime_ns=item.mtime_ns)
        except (InvalidPath, NotADirectory) as exc:
            raise Skipped(f"{os.fsdecode(rel)}: the cluster refuses it: {exc}") from None

    async def put_link(self, rel: bytes, link: bytes) -> None:
        raise Skipped(f"{os.fsdecode(rel)}: a symbolic link; the cluster has none")

    async def make_dir(self, rel: bytes, item: Item) -> None:
        try:
            await self.master.mkdir(_path(rel))
        except AlreadyExists:
            there = await self.stat(rel)
            if there is None or there.kind != "dir":  # a file where a folder goes now
                await self.master.rm(_path(rel))
                await self.master.mkdir(_path(rel))

    async def delete(self, rel: bytes) -> bool:
        try:
            if self.keep_deleted:
                await self.master.stat(_path(rel))
            else:
                await self.master.rm(_path(rel), recursive=True)
        except NotFound:
            return False
        return True

    async def rename(self, src: bytes, dst: bytes) -> bool:
        try:
            there = await self.stat(dst)
            if there is not None and there.kind == "dir":
                return False  # the caller copies into it instead
            await self.master.mv(_path(src), _path(dst))
        except (NotFound, UserError):
            return False
        return True

    async def commit(self) -> None:
        return None  # every put is durable when it returns

    def staged(self) -> int:
        return 0

    async def stat(self, rel: bytes) -> Item | None:
        try:
            return _item(await self.master.stat(_path(rel)))
        except NotFound:
            return None

    async def digest(self, rel: bytes) -> bytes | None:
        try:
            return (await self.master.stat(_path(rel))).hash
        except NotFound:
            return None

    async def scan(self, under: bytes = b"") -> dict[bytes, Item]:
        try:
            entries = await self.master.walk(_path(under))
        except NotFound:
            return {}
        return {e.path.lstrip(b"/"): _item(e) for e in entries if e.path.strip(b"/")
                and e.path.lstrip(b"/") != under}


async def _read(source: bytes, item: Item) -> AsyncIterator[bytes]:
    """The bytes of ``source`` under a read lease, checked to still be ``item`` before the
    last piece goes (else the body is cut and the master commits nothing)."""
    try:
        f = await asyncio.to_thread(open, source, "rb")
    except OSError as exc:
        raise SourceChanged(f"{os.fsdecode(source)}: {exc.strerror}") from None
    with f, read_lease(f.fileno(), source) as lease:
        if not _is(os.fstat(f.fileno()), item):
            raise SourceChanged(f"{os.fsdecode(source)} changed before the copy")
        if just_created(item):
            raise SourceChanged(f"{os.fsdecode(source)} is empty and just created")
        left = item.size
        while True:
            if lease.asked_back():  # a writer waits for this file (or another): let go
                raise SourceChanged(f"{os.fsdecode(source)}: a writer opened it")
            piece = await asyncio.to_thread(f.read, PIECE) if left > PIECE else f.read(PIECE)
            left -= len(piece)
            if left <= 0 and (left < 0 or not _is(os.fstat(f.fileno()), item)):
                raise SourceChanged(f"{os.fsdecode(source)} changed during the copy")
            if not piece:
                if left != 0:  # shorter than it was
                    raise SourceChanged(f"{os.fsdecode(source)} shrank during the copy")
                return
            yield piece


def _is(st: os.stat_result, item: Item) -> bool:
    return st.st_size == item.size and st.st_mtime_ns == item.mtime_ns

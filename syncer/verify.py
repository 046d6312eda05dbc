"""``tandem sync verify``: prove the cluster and the legacy directory hold the same files, by
content hash (the SHA-256 the cluster keeps for every file, computed here over the legacy
copy), and name every difference: missing, extra, content, mtime, mode."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cluster.remote import RemoteCluster
from syncer.target import TMP


@dataclass(frozen=True)
class Difference:
    path: bytes
    kind: str  # missing | extra | content | mtime | mode | type
    detail: str = ""

    def __str__(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.kind:8} {os.fsdecode(self.path)}{extra}"


def _legacy_files(legacy: Path, skip: bytes) -> tuple[bytes, dict[bytes, os.stat_result]]:
    root = os.fsencode(os.path.abspath(legacy))
    out: dict[bytes, os.stat_result] = {}
    stack = [root]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                rel = e.path[len(root):]
                if e.name.startswith(TMP) or rel.lstrip(b"/") == skip:
                    continue
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                else:
                    out[rel] = e.stat(follow_symlinks=False)
    return root, out


def _sha256(path: bytes) -> bytes:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").digest()


async def verify(master: RemoteCluster, legacy: Path, *,
                 trash_dir: bytes = b".tandem-trash") -> list[Difference]:
    want = {e.path: e for e in await master.walk("/") if not e.is_dir}
    root, have = await asyncio.to_thread(_legacy_files, legacy, trash_dir)
    diffs = [Difference(p, "extra") for p in sorted(set(have) - set(want))]
    for p in sorted(want):
        e, st = want[p], have.get(p)
        if st is None:
            diffs.append(Difference(p, "missing"))
        elif not stat.S_ISREG(st.st_mode):
            diffs.append(Difference(p, "type", "not a regular file on the legacy side"))
        elif st.st_size != e.size or await asyncio.to_thread(_sha256, root + p) != e.hash:
            diffs.append(Difference(p, "content", f"{st.st_size} vs {e.size} bytes"))
        elif st.st_mtime_ns != e.mtime_ns:
            diffs.append(Difference(p, "mtime", f"{st.st_mtime_ns} vs {e.mtime_ns} ns"))
        elif st.st_mode & 0o7777 != e.mode & 0o7777:
            diffs.append(Difference(p, "mode", f"{st.st_mode & 0o7777:o} vs {e.mode:o}"))
    return diffs

"""``fsck``: a full consistency check of metadata against the chunk stores.

Checks SQLite's own integrity, chunk reference counts against the files and trash that use
them, every recorded copy (present with the right size; with ``verify``, read in full and
CRC-checked), goals, and chunk files no metadata points at. With ``repair`` it drops bad
copies, removes orphans and re-replicates; without it, it changes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cluster import background
from cluster.errors import ChunkCorrupt, ChunkMissing, StoreError
from cluster.store import ChunkKey

if TYPE_CHECKING:
    from cluster.master import Master, Volume


async def fsck(m: Master, *, verify: bool = False, repair: bool = False) -> dict[str, Any]:
    integrity = await m._db(lambda: m.meta.db.execute("PRAGMA quick_check").fetchone()[0])
    problems: list[str] = [] if integrity == "ok" else [f"sqlite: {integrity}"]
    problems += await m._db(m.meta.check_refs)
    checked = under = missing = bad_copies = 0
    after = 0
    while True:
        page = await m._db(m.meta.chunk_page, after, background.PAGE)
        if not page:
            break
        for c in page:
            after = c.id
            checked += 1
            key = ChunkKey(c.id, c.version)
            bad: list[Volume] = []
            good = worth = 0
            for v in m.volumes.values():
                if not c.copies & v.bit or not v.readable:
                    continue
                try:
                    if verify:
                        await v.store.get(key)
                        ok = True
                    else:
                        ok = await v.store.head(key) == c.size
                except (ChunkCorrupt, ChunkMissing):
                    ok = False
                except StoreError as exc:
                    problems.append(f"{v.path}: {exc}")
                    continue
                if ok:
                    good += 1
                    worth += v.worth
                else:
                    bad.append(v)
                    problems.append(f"{key.name}: bad or missing copy on {v.path}")
            bad_copies += len(bad)
            if good == 0:
                missing += 1
                problems.append(f"{key.name}: no good copy")
            elif worth < c.goal:
                under += 1
            if repair and bad and good:
                await m.drop_copies(c, bad)
    orphans = await background.orphan_pass(m, remove=False)
    if orphans:
        problems.append(f"{orphans} orphan chunk file(s)")
    if repair:
        await background.orphan_pass(m)
        await background.replicate_pass(m)
    return {
        "ok": not problems,
        "chunks_checked": checked,
        "under_goal": under,
        "missing": missing,
        "bad_copies": bad_copies,
        "orphans": orphans,
        "problems": problems[:1000],
        "repaired": repair,
    }

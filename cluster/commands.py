"""The ``tandem cluster`` commands (the arguments are in ``cluster/cli.py``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import stat as stat_mod
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import structlog
from tqdm import tqdm

from cluster import paths, wire
from cluster.cli import master_client
from cluster.config import ClusterConfig
from cluster.errors import InvalidArgument, MasterBusy, NotFound
from cluster.master import Master
from cluster.meta import Entry

log = structlog.get_logger("cluster")

READ_PIECE = 1 << 20
PUT_CONCURRENCY = 8


@contextlib.asynccontextmanager
async def connect(cfg: ClusterConfig) -> AsyncIterator[Any]:
    """The running master over HTTP if there is one, else the metadata in-process."""
    stack = contextlib.AsyncExitStack()
    try:
        client: Any = await stack.enter_async_context(Master(cfg, background=False))
    except MasterBusy:
        client = await stack.enter_async_context(master_client(cfg))
    async with stack:
        yield client


async def run_command(args: argparse.Namespace, cfg: ClusterConfig) -> int:
    async with connect(cfg) as c:
        handler: Callable[[Any, argparse.Namespace], Any] = COMMANDS[args.cmd]
        result = await handler(c, args)
        return int(result or 0)


def out(text: str | bytes = b"") -> None:
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    sys.stdout.buffer.write(data + b"\n")
    sys.stdout.buffer.flush()


def _fs(path: str) -> bytes:
    return os.fsencode(path)


# -- put / get ---------------------------------------------------------------------------------


async def _put(c: Any, args: argparse.Namespace) -> int:
    dest = _fs(args.dest)
    into = dest.endswith(b"/") or len(args.src) > 1
    if not into:
        with contextlib.suppress(NotFound):
            into = (await c.stat(dest)).is_dir
    jobs: list[tuple[str, bytes]] = []  # (local path, cluster path)
    for src in args.src:
        base = dest.rstrip(b"/") + b"/" + _fs(os.path.basename(src.rstrip("/"))) if into else dest
        if src == "-":
            if into:
                raise InvalidArgument("stdin (-) needs a file name as destination")
            jobs.append(("-", dest))
        elif os.path.isdir(src):
            if not args.recursive:
                raise InvalidArgument(f"{src} is a directory (use -r)")
            for root, dirs, files in os.walk(src):
                dirs.sort()
                rel = os.path.relpath(root, src)
                for f in sorted(files):
                    local = os.path.join(root, f)
                    if not os.path.isfile(local) or os.path.islink(local):
                        log.warning("put.skipped", path=local, reason="not a regular file")
                        continue
                    sub = b"" if rel == "." else b"/" + _fs(rel)
                    jobs.append((local, base + sub + b"/" + _fs(f)))
        else:
            jobs.append((src, base))
    for _, cpath in jobs:
        paths.parse(cpath)  # refuse bad names before anything is written
    total = sum(os.path.getsize(p) for p, _ in jobs if p != "-")
    sem = asyncio.Semaphore(PUT_CONCURRENCY)
    sent = 0
    with tqdm(total=total, unit="B", unit_scale=True, disable=None, file=sys.stderr) as bar:

        def progress(n: int) -> None:
            nonlocal sent
            sent += n
            bar.update(n)  # a no-op when stderr is not a terminal

        async def one(local: str, cpath: bytes) -> None:
            async with sem:
                if local == "-":
                    body = sys.stdin.buffer.read()
                    await c.put(cpath, body)
                    progress(len(body))
                    return
                st = os.stat(local)
                await c.put(cpath, _read_pieces(local, progress),
                            mode=stat_mod.S_IMODE(st.st_mode), mtime_ns=st.st_mtime_ns)

        await asyncio.gather(*(one(p, cp) for p, cp in jobs))
    print(f"put {len(jobs)} file(s), {sent} bytes", file=sys.stderr)
    return 0


async def _read_pieces(path: str, progress: Callable[[int], Any]) -> AsyncIterator[bytes]:
    """A local file as 1 MiB pieces: memory stays bounded whatever the file's size."""
    with open(path, "rb") as f:
        while piece := await asyncio.to_thread(f.read, READ_PIECE):
            progress(len(piece))
            yield piece


async def _get(c: Any, args: argparse.Namespace) -> int:
    top = await c.stat(_fs(args.src))
    if top.is_dir and not args.recursive:
        raise InvalidArgument(f"{args.src} is a directory (use -r)")
    entries = await c.walk(top.path) if top.is_dir else [top]
    dest = Path(args.dest)
    for e in entries:
        rel = e.path[len(top.path) :].lstrip(b"/")
        local = Path(os.fsdecode(os.path.join(os.fsencode(dest), rel))) if rel else dest
        if e.is_dir:
            local.mkdir(parents=True, exist_ok=True)
            continue
        if top.is_dir is False and dest.is_dir():
            local = dest / os.fsdecode(top.path.rsplit(b"/", 1)[1])
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.tandem-tmp")
        with open(tmp, "wb") as f:
            async for piece in c.read(e.path):
                f.write(piece)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, e.mode & 0o7777)
        os.utime(tmp, ns=(e.mtime_ns, e.mtime_ns))
        os.replace(tmp, local)
    return 0


async def _cat(c: Any, args: argparse.Namespace) -> int:
    async for piece in c.read(_fs(args.path)):
        sys.stdout.buffer.write(piece)
    sys.stdout.buffer.flush()
    return 0


# -- namespace -----------------------------------------------------------------------------------


def _long(e: Entry) -> bytes:
    kind = "d" if e.is_dir else "-"
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.mtime_ns / 1e9))
    h = e.hash.hex()[:16] if e.hash else "-"
    mode = stat_mod.filemode(e.mode)[1:]
    return f"{kind}{mode} {e.effective_goal} {e.size:>12} {when} {h} ".encode() + e.path


async def _ls(c: Any, args: argparse.Namespace) -> int:
    entries = (await c.walk(_fs(args.path)))[1:] if args.recursive else await c.ls(_fs(args.path))
    if args.json:
        out(json.dumps([wire.entry_json(e) for e in entries]))
        return 0
    for e in entries:
        out(_long(e) if args.long else e.path + (b"/" if e.is_dir else b""))
    return 0


async def _rm(c: Any, args: argparse.Namespace) -> int:
    for p in args.path:
        n = await c.rm(_fs(p), args.recursive)
        print(f"{p}: {n} file(s) moved to trash", file=sys.stderr)
    return 0


async def _mv(c: Any, args: argparse.Namespace) -> int:
    src, dst = _fs(args.src), _fs(args.dst)
    with contextlib.suppress(NotFound):
        if dst.endswith(b"/") or (await c.stat(dst)).is_dir:
            dst = dst.rstrip(b"/") + b"/" + src.rstrip(b"/").rsplit(b"/", 1)[-1]
    await c.mv(src, dst)
    return 0


async def _mkdir(c: Any, args: argparse.Namespace) -> int:
    for p in args.path:
        await c.mkdir(_fs(p))
    return 0


async def _snapshot(c: Any, args: argparse.Namespace) -> int:
    n = await c.snapshot(_fs(args.src), _fs(args.dst))
    print(f"snapshot {args.dst}: {n} file(s)", file=sys.stderr)
    return 0


async def _fileinfo(c: Any, args: argparse.Namespace) -> int:
    for p in args.path:
        entry, infos = await c.fileinfo(_fs(p))
        if args.json:
            out(json.dumps({"entry": wire.entry_json(entry),
                            "chunks": [wire.chunkinfo_json(i) for i in infos]}))
            continue
        out(entry.path + b":")
        out(f"\tsize: {entry.size}  sha256: {entry.hash.hex() if entry.hash else '-'}  "
            f"goal: {entry.effective_goal}")
        for n, info in enumerate(infos):
            k = info.chunk
            out(f"\tchunk {n}: {k.id:016X}_{k.version:08X} ({k.size} bytes, goal {k.goal}, "
                f"refs {k.refs})")
            if not info.copies:
                out("\t\tno valid copies !!!")
            for i, cp in enumerate(info.copies, 1):
                out(f"\t\tcopy {i}: volume {cp.volume} {cp.kind} {cp.path} ({cp.state})")
    return 0


async def _checkfile(c: Any, args: argparse.Namespace) -> int:
    bad = 0
    for p in args.path:
        r = await c.checkfile(_fs(p))
        bad += r["under_goal"]
        if args.json:
            out(json.dumps(r))
            continue
        out(f"{r['path']}:")
        counts: dict[int, int] = {}
        for ch in r["chunks"]:
            counts[ch["copies"]] = counts.get(ch["copies"], 0) + 1
        for copies in sorted(counts):
            out(f"\tchunks with {copies} cop{'y' if copies == 1 else 'ies'}: {counts[copies]:>10}")
        if r["under_goal"]:
            out(f"\tunder goal ({r['goal']}): {r['under_goal']} chunk(s)")
    return 0


async def _set(c: Any, args: argparse.Namespace) -> int:
    fn = c.setgoal if args.cmd == "setgoal" else c.settrashtime
    for p in args.path:
        n = await fn(_fs(p), args.value, args.recursive)
        out(f"{p}: {args.value} ({n} entr{'y' if n == 1 else 'ies'})")
    return 0


async def _getset(c: Any, args: argparse.Namespace) -> int:
    goal = args.cmd == "getgoal"
    for p in args.path:
        entries = await c.walk(_fs(p)) if args.recursive else [await c.stat(_fs(p))]
        for e in entries:
            eff = e.effective_goal if goal else e.effective_trash_time
            own = e.goal if goal else e.trash_time
            out(e.path + f": {eff}{'' if own is not None else ' (inherited)'}".encode())
    return 0


async def _trash(c: Any, args: argparse.Namespace) -> int:
    if args.trash_cmd == "ls":
        after = 0
        while items := await c.trash_list(1000, after):
            for t in items:
                if args.json:
                    out(json.dumps(wire.trash_json(t)))
                else:
                    exp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t.expires))
                    out(f"{t.id:>8} {t.size:>12} expires {exp} ".encode() + t.path)
                after = t.id
        return 0
    if args.trash_cmd == "undel":
        e = await c.undelete(args.id, _fs(args.to) if args.to else None)
        out(b"restored " + e.path)
        return 0
    if args.id:
        n = await c.purge(args.id)
    elif args.expired:
        n = await c.purge(None, expired=True)
    elif args.all:
        n = await c.purge(None)
    else:
        raise InvalidArgument("trash purge needs entry ids, --expired or --all")
    out(f"purged {n} trash entr{'y' if n == 1 else 'ies'}")
    return 0


async def _status(c: Any, args: argparse.Namespace) -> int:
    s = await c.status()
    if args.json:
        out(json.dumps(s))
        return 0
    gib = 1 << 30
    out("volumes:")
    for v in s["volumes"]:
        why = f"  ({v['reason']})" if v["reason"] else ""
        why += "  (draining: a migration is moving its copies off)" if v.get("draining") else ""
        if v["kind"] == "s3":  # S3 reports no usage; a copy may count as several
            space = f"{'counts as ' + str(v['counts_as']):<37}"
        else:
            space = f"{v['used'] / gib:8.2f} GiB used {v['free'] / gib:8.2f} GiB free  "
        out(f"  {v['id']:>2} {v['kind']:<5} {v['state']:<8} {space}{v['path']}{why}")
    out(f"files: {s['files']}  directories: {s['directories']}  chunks: {s['chunks']} "
        f"({s['chunk_bytes']} bytes)")
    out(f"under goal: {s['under_goal']}  over goal: {s['over_goal']}  missing: {s['missing']}")
    out(f"trash: {s['trash_files']} file(s), {s['trash_bytes']} bytes")
    out(f"changelog: {s['changelog_oldest']}..{s['changelog_last']}")
    if s["background"]:
        out("background: " + "  ".join(f"{k}={v}" for k, v in sorted(s["background"].items())))
    return 0


async def _fsck(c: Any, args: argparse.Namespace) -> int:
    r = await c.fsck(args.verify, args.repair)
    for p in r["problems"]:
        out(f"problem: {p}")
    out(f"checked {r['chunks_checked']} chunk(s): under goal {r['under_goal']}, missing "
        f"{r['missing']}, bad copies {r['bad_copies']}, orphans {r['orphans']}"
        + (" (repaired)" if r["repaired"] else ""))
    return 0 if r["ok"] else 1


def _volume_arg(spec: str) -> str:
    """A volume as the master knows it: a local directory given relative to here resolved."""
    if not spec.isdigit() and not spec.startswith("s3:") and os.path.isdir(spec):
        return str(Path(spec).resolve())
    return spec


async def _migrate_store(c: Any, args: argparse.Namespace) -> int:
    with tqdm(total=0, unit="B", unit_scale=True, disable=None, file=sys.stderr) as bar:

        def progress(p: dict[str, Any]) -> None:
            bar.total = p["bytes"]
            bar.n = p["processed_bytes"]
            bar.set_postfix(chunks=f"{p['processed']}/{p['chunks']}", failed=p["failed"],
                            refresh=False)
            bar.refresh()  # a no-op when stderr is not a terminal

        r = await c.migrate_store(_volume_arg(args.src), _volume_arg(args.dst), move=args.move,
                                  dry_run=args.dry_run, progress=progress)
    if args.json:
        out(json.dumps(r))
    else:
        src, dst = (f"{v['id']} {v['path']}" for v in (r["from"], r["to"]))
        verb = "move" if r["move"] else "copy"
        if r["dry_run"]:
            out(f"dry run, {verb} from {src} to {dst}: {r['chunks']} chunk(s), {r['bytes']} "
                f"bytes; {r['to_copy']} chunk(s), {r['to_copy_bytes']} bytes to write"
                + (f"; {r['chunks'] - r['to_copy']} only dropped from the source"
                   if r["move"] else ""))
            return 0
        out(f"{verb} from {src} to {dst}: {r['migrated']} chunk(s), {r['migrated_bytes']} "
            f"bytes in {r['seconds']} s; already done {r['skipped']}, deleted meanwhile "
            f"{r['gone']}, bad copies dropped {r['bad_copies']}, failed {r['failed']}")
        if r["under_goal"]:
            out(f"under goal after the move: {r['under_goal']} chunk(s) (no other volume could "
                "take a copy)")
        for f in r["failed_chunks"]:
            out(f"failed: {f['chunk']}: {f['error']}")
        if r["failed"] > len(r["failed_chunks"]):
            out(f"failed: … and {r['failed'] - len(r['failed_chunks'])} more")
        if r["aborted"]:
            out(f"stopped: {r['aborted']}")
    return 0 if r["ok"] else 1


COMMANDS: dict[str, Callable[[Any, argparse.Namespace], Any]] = {
    "put": _put, "get": _get, "cat": _cat, "ls": _ls, "rm": _rm, "mv": _mv, "mkdir": _mkdir,
    "snapshot": _snapshot, "fileinfo": _fileinfo, "checkfile": _checkfile,
    "setgoal": _set, "settrashtime": _set, "getgoal": _getset, "gettrashtime": _getset,
    "trash": _trash, "status": _status, "fsck": _fsck, "migrate-store": _migrate_store,
}

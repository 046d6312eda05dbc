"""The ``tandem sync`` commands (the arguments are in ``syncer/cli.py``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from tqdm import tqdm

from syncer.dir_mirror import DirectoryMirror
from syncer.state import DIRECTIONS, read_primary, read_status
from syncer.target import DeletePolicy, DirectoryTarget, DirectoryTargetAsync
from syncer.tree import Target

# The site's commands (the master over HTTP, the daemon, the cluster mirror) import their
# modules when they run: a directory pair's ``full`` or ``run`` starts ~0.1 s sooner.

if TYPE_CHECKING:  # the composed config; the syncer needs only its own and these sections
    from origin.config import Config

T = TypeVar("T")


def run_command(args: argparse.Namespace, cfg: Config) -> int:
    args.concurrency = args.concurrency or cfg.sync.concurrency
    if (args.source is None) != (args.target is None):
        print("tandem: sync: give both --from and --to, or neither", file=sys.stderr)
        return 2
    state_dir = args.state_dir or _state_dir(args, cfg)
    if args.action == "status":
        st = read_status(state_dir)
        if st is None:
            print(f"tandem: no sync status in {state_dir} yet", file=sys.stderr)
            return 1
        if args.source is None:
            st = {"primary": read_primary(state_dir), **st}
        print(json.dumps(st, indent=2))
        return 0
    if args.action == "verify":
        return asyncio.run(_verify(args, cfg))
    if args.source is None:
        if args.action == "full":
            return asyncio.run(_site_full(args, cfg, state_dir))
        from syncer import daemon

        return asyncio.run(daemon.run(cfg))
    for folder in (args.source, args.target):
        if not folder.is_dir():
            print(f"tandem: {folder} is not a folder (a missing target is never created: it "
                  "may be a disk that is not mounted)", file=sys.stderr)
            return 1
    deletes = cast(DeletePolicy, cfg.sync.deletes)
    target = DirectoryTargetAsync(DirectoryTarget(args.target, deletes=deletes))
    if args.action == "full":
        return asyncio.run(_full(args, target, state_dir))
    mirror = DirectoryMirror(args.source, target, state_dir, concurrency=args.concurrency,
                             deletes=cfg.sync.deletes != "keep",
                             reconcile_every=cfg.sync.reconcile_interval)
    return asyncio.run(_until_signal(mirror.run()))


def _state_dir(args: argparse.Namespace, cfg: Config) -> Path:
    if args.source is None:
        return cfg.sync.state_dir
    pair = f"{args.source.resolve()}\0{args.target.resolve()}".encode()
    return cfg.sync.state_dir / f"dirs-{hashlib.sha256(pair).hexdigest()[:12]}"


async def _until_signal(work: Any) -> int:
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return 0


async def _full(args: argparse.Namespace, target: Target, state_dir: Path) -> int:
    mirror = DirectoryMirror(args.source, target, state_dir, concurrency=args.concurrency,
                             deletes=args.delete, checksum=args.checksum)
    _report(await _with_bar(mirror, mirror.full()), f"{args.source} → {args.target}")
    return 0


async def _site_full(args: argparse.Namespace, cfg: Config, state_dir: Path) -> int:
    """One full pass in the site's current direction (``sync.state_dir``'s primary)."""
    from cluster.cli import master_client
    from syncer.cluster_mirror import ClusterMirror
    from syncer.cluster_target import ClusterTarget

    primary = read_primary(state_dir)
    async with master_client(cfg.cluster) as master:
        if primary == "legacy":
            mirror = DirectoryMirror(cfg.legacy.dir, ClusterTarget(master), state_dir,
                                     direction=DIRECTIONS[primary],
                                     concurrency=args.concurrency, deletes=args.delete,
                                     checksum=args.checksum)
            counters = await _with_bar(mirror, mirror.full())
        else:
            target = DirectoryTarget(cfg.legacy.dir, deletes=cast(DeletePolicy,
                                                                  cfg.sync.deletes))
            cm = ClusterMirror(master, cfg.cluster.meta_dir, target, state_dir)
            await _with_bar(cm, cm.full(checksum=args.checksum, delete=args.delete))
            counters = cm.counters
    _report(counters, DIRECTIONS[primary])
    return 0


class _Progress(Protocol):
    progress: Callable[[int], None] | None
    planned_bytes: int


async def _with_bar(mirror: _Progress, work: Awaitable[T]) -> T:
    """Run ``work`` with a progress bar (bytes copied of those planned) on stderr."""
    with tqdm(unit="B", unit_scale=True, disable=None, file=sys.stderr,
              desc="sync full") as bar:
        def progress(n: int) -> None:
            if bar.total != mirror.planned_bytes:
                bar.total = mirror.planned_bytes
            bar.update(n)

        mirror.progress = progress
        return await work


def _report(c: dict[str, int], what: str) -> None:
    print(f"{c['files_copied']} file(s) copied ({c.get('bytes_copied', 0)} bytes), "
          f"{c['deleted']} deleted, {c.get('links', 0)} link(s), {c.get('skipped', 0)} "
          f"skipped, {c['errors']} error(s): {what}")


async def _verify(args: argparse.Namespace, cfg: Config) -> int:
    from cluster.cli import master_client
    from syncer.verify import verify, verify_dirs

    if args.source is not None:
        diffs = await verify_dirs(args.source, args.target)
        sides = f"{args.source} and {args.target}"
    else:
        async with master_client(cfg.cluster) as master:
            diffs = await verify(master, cfg.legacy.dir)
        sides = f"the cluster and {cfg.legacy.dir}"
    for d in diffs:
        print(d)
    print(f"{len(diffs)} difference(s) between {sides}")
    return 1 if diffs else 0

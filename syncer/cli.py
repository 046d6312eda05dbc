"""``tandem sync run|status``: the mirror daemon (cluster → legacy directory for now) and its
status file."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any

from cluster.cli import master_url
from cluster.remote import RemoteCluster
from syncer import daemon
from syncer.verify import verify

if TYPE_CHECKING:  # the composed config; the syncer needs only its own and these sections
    from origin.config import Config


def add_parser(sub: Any) -> None:
    p = sub.add_parser("sync", help="mirror the cluster into the legacy directory")
    p.add_argument("action", choices=["run", "status", "verify"],
                   help="run the mirror, show its status, or verify both sides by content")


def run(args: argparse.Namespace, cfg: Config) -> int:
    if args.action == "status":
        try:
            print(json.dumps(json.loads((cfg.sync.state_dir / "status.json").read_text()),
                             indent=2))
        except (OSError, ValueError) as exc:
            print(f"tandem: no sync status yet ({exc})", file=sys.stderr)
            return 1
        return 0
    if args.action == "verify":
        return asyncio.run(_verify(cfg))
    return asyncio.run(daemon.run(cfg))


async def _verify(cfg: Config) -> int:
    async with RemoteCluster(master_url(cfg.cluster)) as master:
        diffs = await verify(master, cfg.legacy.dir)
    for d in diffs:
        print(d)
    print(f"{len(diffs)} difference(s) between the cluster and {cfg.legacy.dir}")
    return 1 if diffs else 0

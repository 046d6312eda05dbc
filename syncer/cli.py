"""``tandem sync run|full|status|verify``.

    tandem sync run                      the site's mirror daemon (follows the primary: see
                                         syncer/daemon.py)
    tandem sync run --from DIR --to DIR  a directory mirrored into another, until stopped
    tandem sync full [--from DIR --to DIR] [--checksum] [--delete]
                                         one full pass with a progress bar, then exit
    tandem sync status [--state-dir DIR] the status file, pretty-printed
    tandem sync verify                   both sides compared by content hash; exit 0 / 1
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from syncer.state import PRIMARIES

if TYPE_CHECKING:  # the composed config; the syncer needs only its own and these sections
    from origin.config import Config


def add_parser(sub: Any) -> None:
    p = sub.add_parser("sync", help="mirror the cluster and the legacy directory")
    p.add_argument("action", choices=["run", "full", "status", "verify"],
                   help="run the mirror, one full pass, show its status, or verify both "
                        "sides by content")
    p.add_argument("--from", dest="source", type=Path, metavar="DIR",
                   help="a source folder (with --to: directory → directory)")
    p.add_argument("--to", dest="target", type=Path, metavar="DIR", help="the target folder")
    p.add_argument("--state-dir", type=Path,
                   help="status (and cursor) folder (default: sync.state_dir, or a folder "
                        "under it per --from/--to pair)")
    p.add_argument("--checksum", action="store_true",
                   help="full: compare files that look equal by content too")
    p.add_argument("--delete", action="store_true",
                   help="full: delete what the target has and the source has not")
    p.add_argument("--concurrency", type=int,
                   help="copies at once (default: sync.concurrency)")


def add_flip_parser(sub: Any) -> None:
    p = sub.add_parser(
        "flip", help="make the cluster or the legacy directory primary (the rollback runbook)",
        description="fence writers, drain the syncer, verify both sides, switch the primary, "
                    "reload nginx, unfence; journaled: running it again continues",
    )
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--to", choices=PRIMARIES, help="the side that becomes primary")
    g.add_argument("--abort", action="store_true",
                   help="cancel an unfinished flip that has not switched yet (unfence)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds to wait for the syncer to drain or switch (default 300)")


def run(args: argparse.Namespace, cfg: Config) -> int:
    # Imported here: the commands need asyncio, httpx and the mirrors, which every other
    # ``tandem`` command would otherwise pay for at start-up.
    from syncer.commands import run_command

    return run_command(args, cfg)

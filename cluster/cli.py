"""``tandem cluster …``: the admin tools, with MooseFS/MogileFS parity.

Each command talks to the running master over its HTTP API when one holds the metadata lock,
and otherwise opens the metadata in-process (taking the lock itself, so there is still only
one writer). ``serve`` runs the master daemon.

    put SRC… DEST [-r]      mfs cp / mogupload       get SRC DEST [-r]     mogfetch
    cat PATH                                          ls [-l] [-R] PATH     moglistkeys
    rm [-r] PATH…           mogdelete                 mv SRC DST
    mkdir PATH                                        snapshot SRC DST      mfsmakesnapshot
    fileinfo PATH           mfsfileinfo/mogfileinfo   checkfile PATH        mfscheckfile
    setgoal [-r] N PATH…    mfssetgoal                getgoal [-r] PATH…    mfsgetgoal
    settrashtime [-r] S P…  mfssettrashtime           gettrashtime [-r] P…  mfsgettrashtime
    trash ls|undel|purge    mfsundel & meta mount     status [--json]       mfscgiserv
    fsck [--verify] [--repair]                        serve [--listen H:P]  mfsmaster
    migrate-store --from VOL --to VOL [--move] [--dry-run] [--json]
                            move or copy every chunk copy from one volume to another, online
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cluster.config import ClusterConfig

if TYPE_CHECKING:
    from cluster.remote import RemoteCluster


def add_parser(sub: Any) -> None:
    p = sub.add_parser("cluster", help="the chunked storage cluster (master and admin tools)")
    cs = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        c: argparse.ArgumentParser = cs.add_parser(name, help=help, description=help)
        return c

    c = cmd("serve", "run the master daemon (metadata, HTTP API, background work)")
    c.add_argument("--listen", help="HOST:PORT to bind (default: cluster.listen; port 0 = any)")
    c = cmd("put", "store local files (or trees with -r) in the cluster")
    c.add_argument("src", nargs="+", help="local files or directories; - for stdin")
    c.add_argument("dest", help="cluster path; an existing directory or a trailing / puts into it")
    c.add_argument("-r", "--recursive", action="store_true")
    c = cmd("get", "copy a cluster file (or tree with -r) to a local path")
    c.add_argument("src")
    c.add_argument("dest")
    c.add_argument("-r", "--recursive", action="store_true")
    c = cmd("cat", "write a file's bytes to stdout")
    c.add_argument("path")
    c = cmd("ls", "list a directory")
    c.add_argument("path", nargs="?", default="/")
    c.add_argument("-l", "--long", action="store_true")
    c.add_argument("-R", "--recursive", action="store_true")
    c.add_argument("--json", action="store_true")
    c = cmd("rm", "move files to trash; directories need -r")
    c.add_argument("path", nargs="+")
    c.add_argument("-r", "--recursive", action="store_true")
    c = cmd("mv", "rename or move a file or directory")
    c.add_argument("src")
    c.add_argument("dst")
    c = cmd("mkdir", "make a directory (and its parents)")
    c.add_argument("path", nargs="+")
    c = cmd("snapshot", "copy-on-write copy of a file or tree")
    c.add_argument("src")
    c.add_argument("dst")
    c = cmd("fileinfo", "a file's chunks and where their copies are")
    c.add_argument("path", nargs="+")
    c.add_argument("--json", action="store_true")
    c = cmd("checkfile", "count the good copies of each chunk of a file against its goal")
    c.add_argument("path", nargs="+")
    c.add_argument("--json", action="store_true")
    for name, what in (("setgoal", "goal (copies)"), ("settrashtime", "trash time (seconds)")):
        c = cmd(name, f"set the {what} of files and directories")
        c.add_argument("-r", "--recursive", action="store_true")
        c.add_argument("value", type=int)
        c.add_argument("path", nargs="+")
    for name, what in (("getgoal", "goal"), ("gettrashtime", "trash time")):
        c = cmd(name, f"show the {what} (effective; explicit ones marked)")
        c.add_argument("-r", "--recursive", action="store_true")
        c.add_argument("path", nargs="+")
    c = cmd("trash", "deleted and overwritten files: list, undelete, purge")
    ts = c.add_subparsers(dest="trash_cmd", required=True, metavar="ACTION")
    t = ts.add_parser("ls", help="list trash entries")
    t.add_argument("--json", action="store_true")
    t = ts.add_parser("undel", help="restore a trash entry (to its old path or --to PATH)")
    t.add_argument("id", type=int)
    t.add_argument("--to")
    t = ts.add_parser("purge", help="delete trash entries for good")
    t.add_argument("id", type=int, nargs="*")
    t.add_argument("--expired", action="store_true", help="entries past their trash time")
    t.add_argument("--all", action="store_true", help="every entry (cannot be undone)")
    c = cmd("status", "volumes, files, chunks, goals, changelog position")
    c.add_argument("--json", action="store_true")
    c = cmd("fsck", "check metadata against every chunk copy (exit 1 on problems)")
    c.add_argument("--verify", action="store_true", help="read every copy in full (CRC)")
    c.add_argument("--repair", action="store_true", help="drop bad copies, remove orphans")
    c = cmd("migrate-store", "copy (or --move) every chunk copy on one volume to another, "
            "online and resumable, each copy verified by CRC (exit 1 when some could not be)")
    c.add_argument("--from", dest="src", required=True, metavar="VOL",
                   help="source volume: its id, or its path or name as status prints it")
    c.add_argument("--to", dest="dst", required=True, metavar="VOL", help="destination volume")
    c.add_argument("--move", action="store_true",
                   help="drop each source copy once its new copy is verified (default: copy)")
    c.add_argument("--dry-run", action="store_true", help="only count what would be done")
    c.add_argument("--json", action="store_true", help="print the report as JSON")


def master_url(cfg: ClusterConfig) -> str:
    """The URL the running master wrote into its lock file, else the configured one."""
    with contextlib.suppress(OSError):
        for line in (cfg.meta_dir / "master.lock").read_text().splitlines():
            if line.startswith("url "):
                return line[4:].strip()
    return cfg.url


def master_client(cfg: ClusterConfig, **kw: Any) -> RemoteCluster:
    """A client of this host's master (``master_url``), with this host's ``cluster.token``."""
    from cluster.remote import RemoteCluster

    return RemoteCluster(master_url(cfg), token=cfg.token, **kw)


async def run(args: argparse.Namespace, cfg: ClusterConfig,
              readiness: Callable[[], list[str]] | None = None) -> int:
    """``readiness``: for ``serve``, what this host's origins would call a problem (the
    caller's, as the cluster package knows nothing of fences or the syncer)."""
    # Imported here: the commands need the master, httpx and tqdm, which every other
    # ``tandem`` command would otherwise pay for at start-up.
    if args.cmd == "serve":
        from cluster.daemon import serve

        return await serve(cfg, args.listen, readiness=readiness)
    from cluster.commands import run_command

    return await run_command(args, cfg)

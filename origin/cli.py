"""The ``tandem`` command: one console script, argparse subcommands.

    tandem [--config FILE] config check|show
    tandem [--config FILE] cluster COMMAND …       (see cluster/cli.py)
    tandem [--config FILE] nginx render|check|reload|run (see nginx/cli.py)
    tandem [--config FILE] sync run|status|verify    (see syncer/cli.py)
    tandem [--config FILE] flip --to cluster|legacy [--dry-run] [--timeout S] | --abort
                                                     (see syncer/flip.py)
    tandem [--config FILE] origin [--legacy]         (see origin/server.py)
    tandem [--config FILE] up [--demo | --no-demo]   (see origin/up.py)
    tandem [--config FILE] probe SERVICE [--ready] [--wait S]
                                  exit 0 when that service of ``up`` is up (origin/probe.py)

Cluster commands that change the namespace are refused while writers are fenced or the legacy
directory is primary (``syncer.fence``).

``main(argv) -> int`` is what tests call. User errors print one line on stderr and exit 1.

Environment, read here only: ``TANDEM_SUPERVISOR`` (set by ``tandem up`` for its children: they
stop when it dies, see ``origin.lifetime``) and the effective user (``nginx.user``, below).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import pwd
import sys
from pathlib import Path

from cluster import cli as cluster_cli
from cluster.config import ConfigError
from cluster.errors import ClusterError
from nginx import cli as nginx_cli
from nginx.errors import NginxError
from origin import config as config_mod
from origin import lifetime, logs, probe
from syncer import cli as sync_cli
from syncer import fence, state
from syncer.errors import FlipError, SyncError

# ``tandem cluster`` commands that change what the syncer mirrors.
WRITE_COMMANDS = frozenset({"put", "rm", "mv", "mkdir", "snapshot"})


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tandem", description="static-asset CDN origin on a chunked, replicated cluster"
    )
    p.add_argument("--config", type=Path, help="TOML config file (default: ./tandem.toml)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    c = sub.add_parser("config", help="check or show the effective configuration")
    c.add_argument("action", choices=["check", "show"])
    cluster_cli.add_parser(sub)
    nginx_cli.add_parser(sub)
    sync_cli.add_parser(sub)
    sync_cli.add_flip_parser(sub)
    o = sub.add_parser("origin", help="serve asset URLs from the cluster (or --legacy directory)")
    o.add_argument("--legacy", action="store_true",
                   help="serve the legacy directory (legacy.dir) on legacy.listen instead")
    o.add_argument("--listen", help="HOST:PORT (default: origin.listen or legacy.listen)")
    o.add_argument("--workers", type=int, help="worker processes (default: origin.workers)")
    u = sub.add_parser("up", help="run the whole system on this machine (embedded default)")
    # Also after ``up`` (``./dev up --config FILE``); SUPPRESS keeps the top-level value.
    u.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    d = u.add_mutually_exclusive_group()
    d.add_argument("--demo", dest="demo", action="store_true", default=None,
                   help="load the demo dataset (what is missing of it), even into a cluster "
                        "that has files (default: only into an empty cluster)")
    d.add_argument("--no-demo", dest="demo", action="store_false",
                   help="do not load the demo dataset")
    u.add_argument("--listen", help="HOST:PORT for the master (default: cluster.listen)")
    pr = sub.add_parser("probe", help="exit 0 when a service of tandem up is up (health checks)")
    probe.add_arguments(pr)
    return p


def _host_problems(cfg: config_mod.Config) -> list[str]:
    from origin.health import host_problems  # the master's only: not every command's start-up

    return host_problems(cfg)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        cfg = config_mod.load(args.config or Path("tandem.toml"), required=args.config is not None)
    except ConfigError as exc:
        print(f"tandem: config error: {exc}", file=sys.stderr)
        return 1
    cfg = _nginx_user(cfg)
    supervisor = os.environ.pop(lifetime.SUPERVISOR_ENV, "")
    if supervisor.isdigit():
        lifetime.die_with_parent(int(supervisor))
    server = args.command in ("up", "origin") or (
        args.command == "cluster" and args.cmd == "serve"
    ) or (args.command == "sync" and args.action == "run") or (
        args.command == "nginx" and args.cmd == "run"
    )
    # A flip is worth its log at the configured level (stderr; stdout is for people).
    level = cfg.log.level if server or args.command == "flip" else "warning"
    logs.configure(level, role=args.command, to_stderr=not server)
    try:
        if args.command == "config":
            if args.action == "show":
                sys.stdout.write(config_mod.render(cfg))
            else:
                print(f"config ok ({cfg.source or 'built-in defaults'})")
            return 0
        if args.command == "up":
            from origin.up import up

            return asyncio.run(up(cfg, load_demo=args.demo, listen=args.listen))
        if args.command == "probe":
            return probe.run(cfg, args.service, ready=args.ready, within=args.wait)
        if args.command == "origin":
            from origin.server import run

            return run(cfg, legacy=args.legacy, listen=args.listen, workers=args.workers)
        if args.command == "sync":
            return sync_cli.run(args, cfg)
        if args.command == "flip":
            from syncer import flip

            return flip.run(args, cfg, NginxFront(cfg))
        if args.command == "nginx":
            return nginx_cli.run(args, cfg, state.read_primary(cfg.sync.state_dir))
        if _writes(args):
            refused = fence.refusal(cfg)
            if refused is not None:
                print(f"tandem: refused: {refused.message}", file=sys.stderr)
                return fence.EX_TEMPFAIL if refused.retry_after is not None else 1
        return asyncio.run(cluster_cli.run(args, cfg.cluster,
                                           readiness=lambda: _host_problems(cfg)))
    except (ClusterError, SyncError) as exc:
        print(f"tandem: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:  # what only a command line can get wrong (``--listen``)
        print(f"tandem: config error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _nginx_user(cfg: config_mod.Config) -> config_mod.Config:
    """``nginx.user = ""`` when tandem runs as root: the owner of ``data_dir`` (the current
    user while it does not exist). nginx's own default, ``nobody``, cannot read data kept
    under a private folder (``/root/…``), and the workers must read the volumes and the legacy
    directory; the data's owner can. Resolved here, once per command, so that every command
    that renders the config (``nginx check|reload|run``, ``flip``) renders the same user."""
    if cfg.nginx.user or os.geteuid() != 0:
        return cfg
    try:
        uid = cfg.data_dir.stat().st_uid
    except OSError:
        uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without a name (a volume from another system): nginx's default
        return cfg
    return dataclasses.replace(cfg, nginx=dataclasses.replace(cfg.nginx, user=name))


def _writes(args: argparse.Namespace) -> bool:
    return args.cmd in WRITE_COMMANDS or (args.cmd == "trash" and args.trash_cmd == "undel")


class NginxFront:
    """``nginx.runner`` as the flip's ``Front`` (the syncer imports no nginx)."""

    def __init__(self, cfg: config_mod.Config) -> None:
        from nginx import runner  # imported only when a flip runs

        self.runner = runner
        self.cfg = cfg
        self.where = f"nginx on {cfg.nginx.run_dir}"

    def running(self) -> int | None:
        return self.runner.running(self.cfg)

    def test(self, primary: state.Primary) -> None:
        try:
            self.runner.check_only(self.cfg, primary)
        except NginxError as exc:
            raise FlipError(f"nginx refuses the config for primary {primary}: {exc}") from None

    def reload(self, primary: state.Primary) -> None:
        try:
            self.runner.reload(self.cfg, primary)
        except NginxError as exc:
            raise FlipError(f"nginx reload failed: {exc}") from None


def entry() -> None:
    sys.exit(main())

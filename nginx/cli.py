"""``tandem nginx …``: the generated front configuration.

    render      print the nginx.conf that the config renders to (nothing is written or run)
    check       render, test with ``nginx -t`` and install as ``<nginx.run_dir>/nginx.conf``
    reload      check, then reload the running nginx (never with a config that fails the test)

The upstream's primary side is the persisted one (``tandem flip``); the CLI root reads it
(this package imports no syncer) and passes it in. Errors print one line (nginx's own message
for a failed test) and exit 1.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from nginx import runner
from nginx.errors import NginxError
from nginx.render import Primary, render

if TYPE_CHECKING:
    from origin.config import Config


def add_parser(sub: Any) -> None:
    p = sub.add_parser("nginx", help="the generated front nginx (render, check, reload)")
    cs = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    cs.add_parser("render", help="print the generated nginx.conf")
    cs.add_parser("check", help="test the generated config with nginx -t and install it")
    cs.add_parser("reload", help="check, install and reload the running nginx")


def run(args: argparse.Namespace, cfg: Config, primary: Primary) -> int:
    try:
        if args.cmd == "render":
            # surrogateescape: a non-UTF-8 folder name goes out as the bytes it is
            sys.stdout.buffer.write(render(cfg, primary).encode("utf-8", "surrogateescape"))
        elif args.cmd == "check":
            print(f"nginx config ok: {runner.check(cfg, primary)} (primary: {primary})")
        else:
            print(f"nginx reloaded: {runner.reload(cfg, primary)} (primary: {primary})")
    except NginxError as exc:
        print(f"tandem: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0

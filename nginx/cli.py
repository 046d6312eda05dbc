"""``tandem nginx …``: the generated front configuration.

    render      print the nginx.conf that the config renders to (nothing is written or run)
    check       render, test with ``nginx -t`` and install as ``<nginx.run_dir>/nginx.conf``
    reload      check, then reload the running nginx (never with a config that fails the test)
    run         check, then run nginx in the foreground until SIGTERM/SIGINT, which stop it
                gracefully (``tandem up``'s front, the front container, the systemd unit)

The upstream's primary side is the persisted one (``tandem flip``); the CLI root reads it
(this package imports no syncer) and passes it in. Errors print one line (nginx's own message
for a failed test) and exit 1.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType
from typing import TYPE_CHECKING, Any

import structlog

from nginx.errors import NginxError

if TYPE_CHECKING:
    from nginx.render import Primary
    from origin.config import Config


def add_parser(sub: Any) -> None:
    p = sub.add_parser("nginx", help="the generated front nginx (render, check, reload)")
    cs = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    cs.add_parser("render", help="print the generated nginx.conf")
    cs.add_parser("check", help="test the generated config with nginx -t and install it")
    cs.add_parser("reload", help="check, install and reload the running nginx")
    cs.add_parser("run", help="check and install the config, then run nginx in the foreground "
                              "until SIGTERM/SIGINT")


def run(args: argparse.Namespace, cfg: Config, primary: Primary) -> int:
    # Imported here, as in _foreground: every other tandem command starts without them.
    from nginx import runner
    from nginx.render import render

    try:
        if args.cmd == "render":
            # surrogateescape: a non-UTF-8 folder name goes out as the bytes it is
            sys.stdout.buffer.write(render(cfg, primary).encode("utf-8", "surrogateescape"))
        elif args.cmd == "run":
            return _foreground(cfg, primary)
        elif args.cmd == "check":
            print(f"nginx config ok: {runner.check(cfg, primary)} (primary: {primary})")
        else:
            print(f"nginx reloaded: {runner.reload(cfg, primary)} (primary: {primary})")
    except NginxError as exc:
        print(f"tandem: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def _foreground(cfg: Config, primary: Primary) -> int:
    """``nginx run``: nginx as a child (its own session: see ``runner.start``) until SIGTERM or
    SIGINT here, which stop it gracefully (``runner.stop``: SIGQUIT, SIGKILL to its process
    group after 10 s). Exit 0 after such a stop, 1 when nginx exited by itself (its reason is
    in ``error.log``). ``tandem flip`` reloads it through its pid file as any other nginx."""
    from nginx import runner
    from nginx.render import Layout

    log = structlog.get_logger("nginx")
    stop: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    proc = None
    try:
        proc = runner.start(cfg, primary)
        host, port = cfg.nginx.listen
        log.info("nginx.running", pid=proc.pid, listen=f"{host}:{port}", primary=primary,
                 conf=str(Layout(cfg.nginx.run_dir).conf))
        while not stop and proc.poll() is None:
            time.sleep(0.1)
        if not stop:
            log.error("nginx.exited", pid=proc.pid, code=proc.returncode,
                      error_log=str(Layout(cfg.nginx.run_dir).error_log))
            return 1
        code = runner.stop(proc)
        log.info("nginx.stopped", pid=proc.pid, code=code)
        return 0 if code == 0 else 1
    finally:
        if proc is not None and proc.poll() is None:
            runner.stop(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)

"""Is a service of the stack up? One check per service, used by everything that starts them:
``tandem up`` (each child is started once the one before it passes), ``tandem probe`` and
``python -m origin.probe`` (the health checks of ``compose.yaml`` and the systemd units).

    master   GET <master URL>/healthz is 200 (the URL its lock file names, else cluster.listen)
    syncer   a ``tandem sync run`` holds ``<sync.state_dir>/syncer.lock`` and follows a primary
    origin   GET <origin.listen>/healthz is 200 — with ``ready``: /readyz
    legacy   GET <legacy.listen>/healthz is 200 — with ``ready``: /readyz
    front    GET <nginx.listen>/healthz (through nginx to an origin) — with ``ready``: /readyz

Light on purpose: a container runs its health check every few seconds, so this module needs
only the config, the syncer's lock reader and the standard library's HTTP client
(``python -m origin.probe`` costs about 0.15 s of CPU; the whole ``tandem`` CLI about 0.5 s).
Proxies from the environment are never used: every address here is local.

    python -m origin.probe [--config FILE] SERVICE [--ready] [--wait SECONDS]
"""

from __future__ import annotations

import argparse
import http.client
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from cluster.cli import master_url
from cluster.config import ConfigError
from origin import config as config_mod
from origin.config import Config
from syncer import state

NAMES = ("master", "syncer", "origin", "legacy", "front")
READYZ = frozenset({"origin", "legacy", "front"})  # the services that have a /readyz
TIMEOUT = 2.0  # seconds one HTTP check may take


def reachable(listen: tuple[str, int]) -> str:
    """``http://HOST:PORT`` to connect to a server bound to ``listen`` (a wildcard bind is
    reached on the loopback address of its family)."""
    host, port = listen
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def url_of(cfg: Config, name: str) -> str:
    """The base URL of an HTTP service of the stack."""
    if name == "master":
        return master_url(cfg.cluster)
    listen = {"origin": cfg.origin.listen, "legacy": cfg.legacy.listen,
              "front": cfg.nginx.listen}[name]
    return reachable(listen)


def check(cfg: Config, name: str, *, ready: bool = False, timeout: float = TIMEOUT
          ) -> str | None:
    """None when service ``name`` is up (with ``ready``, for the origins and the front:
    ready to serve), else what is wrong, in a few words."""
    if name not in NAMES:
        raise ValueError(f"no service {name!r} (expected one of {', '.join(NAMES)})")
    if name == "syncer":
        holder = state.running_syncer(cfg.sync.state_dir)
        if holder is None:
            return f"no tandem sync run holds {cfg.sync.state_dir / state.LOCK_FILE}"
        if holder.primary is None:
            return f"tandem sync run (pid {holder.pid}) is starting"
        return None
    url = url_of(cfg, name) + ("/readyz" if ready and name in READYZ else "/healthz")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        body = exc.read(300).decode("utf-8", "replace").strip()
        return f"{url}: {exc.code} {body}".strip()
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return f"{url}: {reason}"
    return None if status == 200 else f"{url}: {status}"


def wait(cfg: Config, name: str, *, ready: bool = False, within: float = 0.0) -> str | None:
    """``check`` until it passes or ``within`` seconds have passed (one check when 0)."""
    deadline = time.monotonic() + within
    while True:
        problem = check(cfg, name, ready=ready)
        if problem is None or time.monotonic() >= deadline:
            return problem
        time.sleep(0.2)


def run(cfg: Config, name: str, *, ready: bool = False, within: float = 0.0) -> int:
    """``tandem probe``: exit 0 and say so when up, else 1 with the reason on stderr."""
    problem = wait(cfg, name, ready=ready, within=within)
    if problem is not None:
        print(f"tandem: probe: {name}: {problem}", file=sys.stderr)
        return 1
    print(f"{name}: {'ready' if ready and name in READYZ else 'up'}")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("service", choices=NAMES)
    p.add_argument("--ready", action="store_true",
                   help="the origins' (and, through nginx, the front's) /readyz rather than "
                        "/healthz: able to serve, not only alive")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="keep checking for up to this long (default: check once)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m origin.probe",
                                description="exit 0 when a service of tandem up is up")
    p.add_argument("--config", type=Path, help="TOML config file (default: ./tandem.toml)")
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        cfg = config_mod.load(args.config or Path("tandem.toml"),
                              required=args.config is not None)
    except ConfigError as exc:
        print(f"tandem: config error: {exc}", file=sys.stderr)
        return 1
    return run(cfg, args.service, ready=args.ready, within=args.wait)


if __name__ == "__main__":
    sys.exit(main())

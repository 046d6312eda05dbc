"""The ``[nginx]`` section of ``tandem.toml``: the front nginx that tandem generates and runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cluster.config import ConfigError, Table


@dataclass(frozen=True)
class NginxConfig:
    listen: tuple[str, int]  # where the front accepts client traffic
    binary: str  # the nginx executable (a name on PATH or a path)
    run_dir: Path  # generated nginx.conf, pid file, logs and temp folders
    user: str  # the ``user`` directive when nginx starts as root ("" = nginx's default)
    worker_processes: int  # 0 = auto
    fast_path: bool  # serve cluster files straight from the volumes' hard-link views


def load_nginx(t: Table, data_dir: Path) -> NginxConfig:
    user = t.string("user", "")
    if any(c.isspace() or c in ';{}"\'' for c in user):
        raise ConfigError(f"{t.key('user')}: expected a user name, got {user!r}")
    cfg = NginxConfig(
        listen=t.listen("listen", "127.0.0.1:8080"),
        binary=t.string("binary", "nginx"),
        run_dir=t.path("run_dir", data_dir / "nginx"),
        user=user,
        worker_processes=t.integer("worker_processes", 1, 0, 256),
        fast_path=t.boolean("fast_path", True),
    )
    t.done()
    return cfg

"""The ``[nginx]`` section of ``tandem.toml``: the front nginx that tandem generates and runs.

Besides where nginx runs, the section holds the failover model of the origin group (primary
origins, the other side as ``backup``, ``max_fails``/``fail_timeout``, short timeouts, bounded
retries), the dynamic pass-through (``[nginx.app]``) and the optional ``proxy_cache``
(``[nginx.cache]``). Values are checked here, each error naming its key; what depends on other
sections (a server listed twice, the group's shape) is checked by ``nginx.upstream`` when the
config is rendered.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cluster.config import ConfigError, Table

BALANCES = ("round_robin", "least_conn", "hash", "ip_hash", "random")
MAX_TIMEOUT = 3600.0  # seconds: any timeout beyond an hour is a typo


@dataclass(frozen=True)
class AppConfig:
    """``[nginx.app]``: the dynamic app servers everything outside the asset routes goes to."""

    servers: tuple[tuple[str, int], ...]  # () = no pass-through: 404 outside the routes
    max_fails: int  # per server; 0 = never taken out
    fail_timeout: int  # seconds
    read_timeout: float  # seconds: dynamic pages may take longer than assets


@dataclass(frozen=True)
class CacheConfig:
    """``[nginx.cache]``: nginx's ``proxy_cache`` in front of the origins (asset GET/HEAD)."""

    path: Path
    max_size: int  # bytes
    inactive: int  # seconds an entry nobody asked for is kept
    valid: int  # seconds nginx's copy is fresh before it revalidates it with the origin


@dataclass(frozen=True)
class NginxConfig:
    listen: tuple[str, int]  # where the front accepts client traffic
    binary: str  # the nginx executable (a name on PATH or a path)
    run_dir: Path  # generated nginx.conf, pid file, logs and temp folders
    user: str  # the ``user`` directive when nginx starts as root ("" = nginx's default)
    worker_processes: int  # 0 = auto
    fast_path: bool  # serve cluster files straight from the volumes' hard-link views
    # -- the origin group ----------------------------------------------------------------------
    origins: tuple[tuple[str, int], ...] = ()  # more cluster origins besides origin.listen
    backup: bool = True  # the other side (legacy when the cluster is primary) as ``backup``
    balance: str = "round_robin"  # over several primary origins (BALANCES)
    max_fails: int = 1  # failed attempts within fail_timeout that take an origin out; 0 = never
    fail_timeout: int = 10  # seconds: the window for max_fails and how long an origin stays out
    connect_timeout: float = 1.0  # seconds
    send_timeout: float = 3.0  # seconds between two writes to an origin
    read_timeout: float = 3.0  # seconds between two reads from an origin
    next_upstream_tries: int = 3  # attempts per GET/HEAD, the first included
    next_upstream_timeout: float = 10.0  # seconds after which no further server is tried
    keepalive: int = 32  # idle connections kept open per worker and group; 0 = none
    app: AppConfig = AppConfig((), 0, 10, 60.0)
    cache: CacheConfig | None = None


def load_nginx(t: Table, data_dir: Path) -> NginxConfig:
    user = t.string("user", "")
    if any(c.isspace() or c in ';{}"\'' for c in user):
        raise ConfigError(f"{t.key('user')}: expected a user name, got {user!r}")
    run_dir = t.path("run_dir", data_dir / "nginx")
    balance = t.string("balance", "round_robin")
    if balance not in BALANCES:
        raise ConfigError(
            f"{t.key('balance')}: expected one of {', '.join(BALANCES)}, got {balance!r}"
        )
    connect = _timeout(t, "connect_timeout", 1.0)
    read = _timeout(t, "read_timeout", 3.0)
    if connect > read:
        raise ConfigError(
            f"{t.key('connect_timeout')}: {connect:g} s is longer than {t.key('read_timeout')} "
            f"({read:g} s); a connect is the quick part (swapped?)"
        )
    tries = t.integer("next_upstream_tries", 3, 0, 100)
    if tries < 2:
        raise ConfigError(
            f"{t.key('next_upstream_tries')}: {tries} would never try another server "
            "(1) or retry without bound (0); expected 2..100"
        )
    window = _timeout(t, "next_upstream_timeout", 10.0)
    if window <= connect + read:
        raise ConfigError(
            f"{t.key('next_upstream_timeout')}: {window:g} s leaves no time to try the backup "
            f"after a hung origin ({t.key('connect_timeout')} + {t.key('read_timeout')} = "
            f"{connect + read:g} s); make it larger"
        )
    cfg = NginxConfig(
        listen=t.listen("listen", "127.0.0.1:8080"),
        binary=t.string("binary", "nginx"),
        run_dir=run_dir,
        user=user,
        worker_processes=t.integer("worker_processes", 0, 0, 256),
        fast_path=t.boolean("fast_path", True),
        origins=_servers(t, "origins"),
        backup=t.boolean("backup", True),
        balance=balance,
        max_fails=t.integer("max_fails", 1, 0, 100),
        fail_timeout=t.integer("fail_timeout", 10, 1, 3600),
        connect_timeout=connect,
        send_timeout=_timeout(t, "send_timeout", 3.0),
        read_timeout=read,
        next_upstream_tries=tries,
        next_upstream_timeout=window,
        keepalive=t.integer("keepalive", 32, 0, 4096),
        app=_app(t.table("app")),
        cache=_cache(t.table("cache"), run_dir),
    )
    t.done()
    return cfg


def _timeout(t: Table, name: str, default: float) -> float:
    """Seconds, more than 0 (nginx reads 0 as "no limit" in some places and as "at once" in
    others) and whole milliseconds (nginx's finest unit)."""
    value = t.number(name, default, 0.0, MAX_TIMEOUT)
    if round(value * 1000) < 1:
        raise ConfigError(f"{t.key(name)}: expected at least 0.001 s, got {value:g}")
    return round(value * 1000) / 1000


def _servers(t: Table, name: str) -> tuple[tuple[str, int], ...]:
    out = []
    for i, value in enumerate(t.strings(name, [])):
        host, sep, port = value.rpartition(":")
        if host.startswith("[") and host.endswith("]"):  # [::1]:80
            host = host[1:-1]
        if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ConfigError(f"{t.key(name)}[{i}]: expected HOST:PORT, got {value!r}")
        out.append((host, int(port)))
    return tuple(out)


def _app(t: Table) -> AppConfig:
    servers = _servers(t, "servers")
    # One server: nginx ignores max_fails, so it is 0 unless set — and set, it is refused by
    # nginx.upstream (a group of one cannot take its server out).
    max_fails = t.integer("max_fails", 1 if len(servers) > 1 else 0, 0, 100)
    app = AppConfig(
        servers=servers,
        max_fails=max_fails,
        fail_timeout=t.integer("fail_timeout", 10, 1, 3600),
        read_timeout=_timeout(t, "read_timeout", 60.0),
    )
    t.done()
    return app


def _cache(t: Table, run_dir: Path) -> CacheConfig | None:
    enabled = t.boolean("enabled", False)
    cache = CacheConfig(
        path=t.path("path", run_dir / "cache"),
        max_size=t.integer("max_size", 1 << 30, 1 << 20, 1 << 50),
        inactive=t.integer("inactive", 600, 1, 365 * 86400),
        valid=t.integer("valid", 1, 1, 365 * 86400),
    )
    t.done()
    return cache if enabled else None

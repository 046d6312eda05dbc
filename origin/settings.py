"""The ``[origin]`` and ``[legacy]`` sections of ``tandem.toml``.

A route maps a URL prefix (``/images/``) onto a cluster directory (``/images/``); the legacy
directory has the same layout as the cluster namespace, so the same route serves it. Each route
carries its ``Cache-Control``. The longest matching prefix wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cluster.config import MIB, ConfigError, Table

DEFAULT_ROUTES = (
    ("/images/", "/images/", "public, max-age=2592000"),
    ("/news/", "/news/", "public, max-age=60"),
)


@dataclass(frozen=True)
class Route:
    prefix: str  # URL prefix, starts and ends with "/"
    root: str  # cluster directory it maps onto, starts and ends with "/"
    cache_control: str  # "" sends none

    def to_cluster(self, url_path: bytes) -> bytes:
        """The cluster path of a (decoded) URL path under this route's prefix."""
        return self.root.encode() + url_path[len(self.prefix.encode()) :]


@dataclass(frozen=True)
class OriginConfig:
    listen: tuple[str, int]
    workers: int
    routes: tuple[Route, ...]
    write_prefixes: tuple[str, ...]
    write_token: str
    max_upload: int
    max_sync_lag: float
    fence_file: Path
    # A second-host origin (``origin/remote_source.py``): the master's HTTP API ("" = read the
    # master's SQLite file and the volumes on this host), and the hot-chunk cache.
    master: str = ""
    master_token: str = ""  # sent to ``master``: its cluster.read_token (cluster.token for writes)
    cache_dir: Path = Path("var/origin-cache")
    cache_bytes: int = 1 << 30  # 0 = no cache
    lookup_cache: int = 65536  # cached cluster lookups per worker (lookup_cache.py); 0 = none

    def route(self, url_path: bytes) -> Route | None:
        """The route of the longest prefix that the (decoded) URL path starts with."""
        best = None
        for r in self.routes:
            p = r.prefix.encode()
            if url_path.startswith(p) and (best is None or len(p) > len(best.prefix.encode())):
                best = r
        return best

    def writable(self, url_path: bytes) -> bool:
        return any(url_path.startswith(p.encode()) for p in self.write_prefixes)


@dataclass(frozen=True)
class LegacyConfig:
    dir: Path
    listen: tuple[str, int]


def _prefix(t: Table, name: str, value: str) -> str:
    if not (value.startswith("/") and value.endswith("/")) or "//" in value or "/../" in value:
        raise ConfigError(
            f"{t.key(name)}: expected a path that starts and ends with '/', got {value!r}"
        )
    return value


def _master_url(t: Table, value: str) -> str:
    """The master's HTTP API: ``http(s)://HOST:PORT`` (a path prefix allowed), or ""."""
    if not value:
        return ""
    scheme, sep, rest = value.partition("://")
    host = rest.split("/", 1)[0]
    if not sep or scheme not in ("http", "https") or not host or any(c.isspace() for c in value):
        raise ConfigError(
            f"{t.key('master')}: expected the master's URL (http://HOST:PORT) or an empty "
            f"string, got {value!r}"
        )
    return value.rstrip("/")


def load_origin(t: Table, data_dir: Path) -> OriginConfig:
    rts = t.tables("routes")
    if rts is None:
        routes = tuple(Route(*r) for r in DEFAULT_ROUTES)
    else:
        out = []
        for r in rts:
            prefix = _prefix(r, "prefix", r.string("prefix", ""))
            root = _prefix(r, "root", r.string("root", prefix))
            cc = r.string("cache_control", "")
            if any(c in cc for c in "\r\n\"\\"):
                raise ConfigError(f"{r.key('cache_control')}: must be one header value")
            r.done()
            out.append(Route(prefix, root, cc))
        routes = tuple(out)
        if len({r.prefix for r in routes}) != len(routes):
            raise ConfigError(f"{t.key('routes')}: the same prefix is listed twice")
    write_prefixes = tuple(
        _prefix(t, "write_prefixes", w) for w in t.strings("write_prefixes", [])
    )
    token = t.string("write_token", "")
    if write_prefixes and len(token) < 16:
        raise ConfigError(
            f"{t.key('write_token')}: writes are on (write_prefixes), so a bearer token of at "
            "least 16 characters is required"
        )
    cfg = OriginConfig(
        listen=t.listen("listen", "127.0.0.1:9430"),
        workers=t.integer("workers", 2, 1, 64),
        routes=routes,
        write_prefixes=write_prefixes,
        write_token=token,
        max_upload=t.integer("max_upload", 64 * MIB, 0, 1 << 40),
        max_sync_lag=t.number("max_sync_lag", 30.0, 0.0, 86_400.0),
        fence_file=t.path("fence_file", data_dir / "fence"),
        master=_master_url(t, t.string("master", "")),
        master_token=t.string("master_token", ""),
        cache_dir=t.path("cache_dir", data_dir / "origin-cache"),
        cache_bytes=t.integer("cache_bytes", 1 << 30, 0, 1 << 50),
        lookup_cache=t.integer("lookup_cache", 65536, 0, 1 << 24),
    )
    t.done()
    return cfg


def load_legacy(t: Table, data_dir: Path) -> LegacyConfig:
    cfg = LegacyConfig(
        dir=t.path("dir", data_dir / "legacy"),
        listen=t.listen("listen", "127.0.0.1:9431"),
    )
    t.done()
    return cfg


"""The front nginx configuration as a pure function of the tandem config: ``render(cfg)``.

What the generated server does, and why each construct was chosen (all tried on the real
nginx 1.22; the behaviours are pinned by ``tests/test_nginx_render.py``):

- **Routes** (``/images/`` …) are regex locations with a named capture, ``(?<tandem_rest>…)``,
  of the URL path after the prefix. A regex location matches the *normalised, percent-decoded*
  ``$uri``, so the capture is a file name that can be appended to each volume's view folder:
  ``try_files <vol0>/view<root>$tandem_rest <vol1>/view<root>$tandem_rest … @tandem_origin``
  under ``root /``. Regex locations are tried in order, so routes are listed longest prefix
  first (the config's "longest prefix wins"). The pattern starts with ``(?s)``: without it
  ``.`` stops at a decoded newline and ``/images/a.jpg%0Ab.jpg`` would serve ``a.jpg``.
- **GET/HEAD from the views, every other method to the origin**: nginx's static handler
  answers 405 to any method but GET/HEAD on a file it found, and ``error_page 405 =
  @tandem_origin`` hands that request — method, URI and unread body intact — to the origin;
  a missing file reaches the origin through ``try_files`` whatever the method. ``limit_except
  GET { proxy_pass … }`` looks like the obvious construct but cannot hold ``add_header`` and
  inherits the route's, so the origin's answers to writes would carry the route's
  ``Cache-Control``.
- **Primary and backup**: the upstream holds the primary side's origin (``max_fails=2
  fail_timeout=30s``) and the other side's as ``backup``, which nginx uses only while the
  primary is failing. ``primary`` is the persisted one (``tandem flip`` swaps them; the caller
  reads it, this module imports no syncer): ``cluster`` → the cluster origin, backed by the
  legacy origin; ``legacy`` → the legacy origin, backed by the cluster origin, and no fast path
  (the cluster is then the mirror and may lag, so nginx must not serve its views first).
- **The origin** is one named location; every ``proxy_*`` setting sits at server level. nginx
  drops *all* inherited ``proxy_set_header`` lines in a location that sets one, so no
  location sets any. ``proxy_pass`` without a URI part sends the client's URI unchanged.
- **X-Accel**: ``^~`` prefix locations (which beat every regex location) with ``internal``
  alias each volume and the legacy folder; from outside they answer 404.
- **Hostile URIs**: an encoded slash, backslash or NUL, or a raw backslash, in the raw path
  is refused with 400 before any location is chosen; ``..`` and ``%2e%2e`` are left to nginx's
  own normalisation (400 above the root, else the normalised path is routed); a request line
  over 8 KiB gets nginx's 414.

Everything the renderer writes into the config is checked here and refused with
``NginxConfigError`` when nginx could not read it back as meant (a ``$`` cannot be escaped in
nginx config; control characters cannot be written at all). Regex metacharacters in a route
prefix are escaped, not refused.

This module touches no file: ``nginx.runner`` writes and runs what it returns.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Literal

from cluster.view import VIEW
from nginx.accel import ACCEL_HEADER, INTERNAL, LEGACY_LOCATION, volume_location
from nginx.errors import NginxConfigError
from origin.mime import nginx_types

if TYPE_CHECKING:
    from origin.config import Config
    from origin.settings import Route

Primary = Literal["cluster", "legacy"]
PRIMARIES = ("cluster", "legacy")
UPSTREAM = "tandem_origin"
ORIGIN_LOCATION = "@tandem_origin"
REST = "tandem_rest"  # the capture of a route's URL path after its prefix
ENDPOINTS = ("/healthz", "/readyz", "/metrics", "/status")  # the origin's own pages
TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")

WORKER_CONNECTIONS = 1024
UPSTREAM_KEEPALIVE = 32  # idle connections kept open to the origin, per worker
# The primary is taken out of rotation after 2 failures within 30 s, for 30 s (the backup
# serves meanwhile), as in the seed's runbook.
MAX_FAILS = 2
FAIL_TIMEOUT = "30s"
# Short, so a hung origin fails fast (issue 5 adds failover on these); reads and sends are
# timed between two successive operations, not over a whole streamed body.
CONNECT_TIMEOUT = "2s"
READ_TIMEOUT = "15s"
SEND_TIMEOUT = "15s"
KEEPALIVE_TIMEOUT = "65s"
KEEPALIVE_REQUESTS = 1000

# In the raw request path (before any "?"): %2F or %5C (an encoded separator would become a
# path separator after decoding), a raw backslash, %00, or a dot segment ("." or "..", also
# percent-encoded). nginx would resolve dot segments itself, but the origin refuses them: every
# path gives the same answer (400) whether nginx or the origin serves the file.
HOSTILE_PATH = r"^[^?]*(?:%2[fF]|%5[cC]|%00|\\|/(?:\.|%2[eE]){1,2}(?:/|\?|$))"

LOG_FORMAT = (
    '{"event":"nginx.request","level":"info","time":"$time_iso8601",'
    '"remote":"$remote_addr","method":"$request_method","uri":"$request_uri",'
    '"status":$status,"bytes":$body_bytes_sent,"duration":$request_time,'
    '"upstream":"$upstream_addr","upstream_status":"$upstream_status",'
    '"upstream_time":"$upstream_response_time","referer":"$http_referer",'
    '"agent":"$http_user_agent","request_id":"$request_id"}'
)

INDENT = "    "
_HOST = re.compile(r"[A-Za-z0-9.\-]+|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*")


@dataclass(frozen=True)
class Layout:
    """Where nginx's own files live under ``run_dir``: written into the config here, created
    by the runner (one definition for both)."""

    run_dir: Path

    @property
    def conf(self) -> Path:
        return self.run_dir / "nginx.conf"

    @property
    def pid(self) -> Path:
        return self.run_dir / "nginx.pid"

    @property
    def error_log(self) -> Path:
        return self.run_dir / "error.log"

    @property
    def access_log(self) -> Path:
        return self.run_dir / "access.log"

    def temp(self, kind: str) -> Path:
        return self.run_dir / "tmp" / kind


def render(cfg: Config, primary: Primary = "cluster") -> str:
    """The complete ``nginx.conf`` for ``cfg`` with ``primary`` (``cluster`` or ``legacy``)
    as the upstream's primary side; raises ``NginxConfigError`` for what nginx config cannot
    express."""
    _check(cfg, primary)
    lines = [
        "# Generated by tandem (nginx/render.py) from the tandem config: edits are overwritten.",
        *_main(cfg),
        "",
        *_block("events", [f"worker_connections {WORKER_CONNECTIONS};"]),
        "",
        *_block("http", _http(cfg, primary)),
    ]
    return "\n".join(lines) + "\n"


def fast_path(cfg: Config, primary: Primary = "cluster") -> bool:
    """Whether nginx serves from the views: only when the master keeps them current (or a
    stale link would serve old bytes) and the cluster is primary (else it is the mirror)."""
    return cfg.nginx.fast_path and cfg.cluster.view and primary == "cluster"


# -- checks ------------------------------------------------------------------------------------


def _check(cfg: Config, primary: str) -> None:
    """Refuse, naming the key, what would make nginx reject or misread the config."""
    if primary not in PRIMARIES:
        raise NginxConfigError(f"primary: expected 'cluster' or 'legacy', got {primary!r}")
    _port(cfg.nginx.listen, "nginx.listen")
    _port(cfg.origin.listen, "origin.listen")
    _port(cfg.legacy.listen, "legacy.listen")
    _absolute(cfg.nginx.run_dir, "nginx.run_dir")
    _absolute(cfg.legacy.dir, "legacy.dir")
    for i, v in enumerate(cfg.cluster.volumes):
        _absolute(v.path, f"cluster.volumes[{i}].path")
    for i, r in enumerate(cfg.origin.routes):
        if r.prefix.startswith(INTERNAL):
            raise NginxConfigError(
                f"origin.routes[{i}].prefix: {r.prefix!r} is under {INTERNAL}, which is "
                "reserved for nginx's internal X-Accel locations"
            )


def _port(listen: tuple[str, int], what: str) -> None:
    if listen[1] == 0:
        raise NginxConfigError(f"{what}: nginx needs a fixed port, not 0")


def _absolute(path: PurePath, what: str) -> None:
    # Relative paths would resolve against nginx's prefix, not the config file's folder.
    if not path.is_absolute():
        raise NginxConfigError(f"{what}: expected an absolute path, got {str(path)!r}")


# -- quoting -----------------------------------------------------------------------------------


def _escape(value: str, what: str, *, variables: bool = True) -> str:
    """``value`` escaped for the inside of a double-quoted nginx token.

    nginx unescapes ``\\\\`` and ``\\"`` in a token and keeps any other backslash, so those
    two are all that needs escaping. A ``$`` cannot be escaped where a directive expands
    variables (``variables``), and a control character cannot be written at all."""
    if any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise NginxConfigError(f"{what}: control characters cannot go into nginx config: {value!r}")
    if variables and "$" in value:
        raise NginxConfigError(
            f"{what}: nginx would read '$' as a variable and it cannot be escaped: {value!r}"
        )
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _q(value: str, what: str, *, variables: bool = True) -> str:
    """One double-quoted nginx token holding exactly ``value``."""
    return f'"{_escape(value, what, variables=variables)}"'


def _dir(path: PurePath, what: str) -> str:
    """A directory as a quoted token with a trailing slash (what ``alias`` needs)."""
    return _q(str(path).rstrip("/") + "/", what)


def _hostport(listen: tuple[str, int], what: str) -> str:
    host, port = listen
    if not _HOST.fullmatch(host):
        raise NginxConfigError(f"{what}: {host!r} is not a host name or IP address")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reachable(listen: tuple[str, int]) -> tuple[str, int]:
    """Where to connect to a server that listens on ``listen``: a wildcard bind is reached on
    the loopback address of the same family."""
    host, port = listen
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host), port


def _block(head: str, body: Iterable[str]) -> list[str]:
    return [f"{head} {{", *(INDENT + line if line else "" for line in body), "}"]


# -- contexts ----------------------------------------------------------------------------------


def _main(cfg: Config) -> list[str]:
    n, paths = cfg.nginx, Layout(cfg.nginx.run_dir)
    lines = [
        f"pid {_q(str(paths.pid), 'nginx.run_dir')};",
        f"error_log {_q(str(paths.error_log), 'nginx.run_dir')} warn;",
        f"worker_processes {n.worker_processes or 'auto'};",
        "pcre_jit on;  # the route locations and the hostile-URI check are regexes",
    ]
    if n.user:
        lines.append(f"user {_q(n.user, 'nginx.user')};")
    return lines


def _http(cfg: Config, primary: Primary) -> list[str]:
    paths = Layout(cfg.nginx.run_dir)
    return [
        *nginx_types().splitlines(),
        "",
        *(
            f"{kind}_temp_path {_q(str(paths.temp(kind)), 'nginx.run_dir')};"
            for kind in TEMP_KINDS
        ),
        f"log_format tandem_json escape=json '{LOG_FORMAT}';",
        f"access_log {_q(str(paths.access_log), 'nginx.run_dir')} tandem_json;",
        "",
        "sendfile on;",
        "# With tcp_nopush on, sendfile from a non-zero offset (a Range) stalls ~40 ms.",
        "tcp_nopush off;",
        "etag on;",
        "if_modified_since before;",
        "max_ranges 1;",
        "server_tokens off;",
        f"keepalive_timeout {KEEPALIVE_TIMEOUT};",
        f"keepalive_requests {KEEPALIVE_REQUESTS};",
        "reset_timedout_connection on;",
        "# No open_file_cache: a file replaced in a view must be served new at once.",
        "",
        *_upstreams(cfg, primary),
        "",
        *_server(cfg, primary),
    ]


def _upstreams(cfg: Config, primary: Primary) -> list[str]:
    """The origin group: the primary side's origin, the other side's as ``backup``."""
    sides = {
        "cluster": _hostport(_reachable(cfg.origin.listen), "origin.listen"),
        "legacy": _hostport(_reachable(cfg.legacy.listen), "legacy.listen"),
    }
    backup = "legacy" if primary == "cluster" else "cluster"
    return _block(f"upstream {UPSTREAM}", [
        f"# primary: {primary}, backup: {backup} (tandem flip swaps them)",
        f"server {sides[primary]} max_fails={MAX_FAILS} fail_timeout={FAIL_TIMEOUT};",
        f"server {sides[backup]} backup;",
        f"keepalive {UPSTREAM_KEEPALIVE};",
    ])


def _server(cfg: Config, primary: Primary) -> list[str]:
    body = [
        f"listen {_hostport(cfg.nginx.listen, 'nginx.listen')};",
        "",
        *_proxy_settings(cfg),
        "",
        f'if ($request_uri ~ {_q(HOSTILE_PATH, "HOSTILE_PATH", variables=False)}) {{',
        f"{INDENT}return 400;",
        "}",
    ]
    # Regex locations are tried in order: longest prefix first is "the longest prefix wins".
    routes = sorted(enumerate(cfg.origin.routes), key=lambda ir: len(ir[1].prefix), reverse=True)
    for index, route in routes:
        body += ["", *_route_location(cfg, primary, route, f"origin.routes[{index}]")]
    body += ["", *_block(f"location {ORIGIN_LOCATION}", [_proxy_pass()])]
    body += [""] + [line for e in ENDPOINTS for line in _endpoint_location(e)]
    body += ["", *_accel_locations(cfg)]
    body += ["", *_block("location /", ["return 404;"])]
    return _block("server", body)


def _proxy_settings(cfg: Config) -> list[str]:
    """How every request reaches the origin; set once here, inherited by every location."""
    # nginx reads client_max_body_size 0 as "no limit"; 1 byte is the closest it can say.
    max_body = max(cfg.origin.max_upload, 1)
    return [
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";  # keepalive to the upstream',
        "proxy_set_header Host $host;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        f"proxy_set_header {ACCEL_HEADER} 1;",
        f"proxy_connect_timeout {CONNECT_TIMEOUT};",
        f"proxy_read_timeout {READ_TIMEOUT};",
        f"proxy_send_timeout {SEND_TIMEOUT};",
        "# Small answers are taken whole (the origin is freed at once); big ones stream through",
        "# memory buffers at the client's pace, never spooled to disk.",
        "proxy_hide_header Alt-Svc;  # sanic sends an empty one",
        "proxy_buffering on;",
        "proxy_max_temp_file_size 0;",
        "# Uploads stream to the origin as they arrive.",
        "proxy_request_buffering off;",
        f"client_max_body_size {max_body};",
    ]


def _proxy_pass() -> str:
    return f"proxy_pass http://{UPSTREAM};"


def _route_location(cfg: Config, primary: Primary, route: Route, what: str) -> list[str]:
    """One route: GET/HEAD from the first volume view holding the file, anything else (and
    any miss) to the origin — or everything to the origin without the fast path."""
    regex = f"(?s)^{re.escape(route.prefix)}(?<{REST}>.*)"
    head = f"location ~ {_q(regex, f'{what}.prefix', variables=False)}"
    if not fast_path(cfg, primary):
        return _block(head, [_proxy_pass()])
    tries = " ".join(
        _view_file(v.path, f"cluster.volumes[{i}].path", route, f"{what}.root")
        for i, v in enumerate(cfg.cluster.volumes)
    )
    body = [
        "root /;",
        f"try_files {tries} {ORIGIN_LOCATION};",
        f"error_page 405 = {ORIGIN_LOCATION};  # any method but GET/HEAD",
    ]
    if route.cache_control:
        cc = _q(route.cache_control, f"{what}.cache_control")
        body.append(f"add_header Cache-Control {cc};")
    return _block(head, body)


def _view_file(volume: PurePath, volume_what: str, route: Route, route_what: str) -> str:
    """The ``try_files`` candidate for a route's file in one volume's view (under ``root /``):
    ``<volume>/view<route root>$tandem_rest``, quoted, the variable left to nginx."""
    folder = _escape(str(volume).rstrip("/"), volume_what) + f"/{VIEW}"
    return f'"{folder}{_escape(route.root, route_what)}${REST}"'


def _endpoint_location(path: str) -> list[str]:
    return _block(f"location = {path}", [_proxy_pass()])


def _accel_locations(cfg: Config) -> list[str]:
    """The internal X-Accel-Redirect targets: each volume (config order) and the legacy
    folder. ``^~`` keeps every regex location (a route "/" included) from taking them."""
    targets = [
        (volume_location(i), v.path, f"cluster.volumes[{i}].path")
        for i, v in enumerate(cfg.cluster.volumes)
    ]
    targets.append((LEGACY_LOCATION, cfg.legacy.dir, "legacy.dir"))
    lines: list[str] = []
    for location, path, what in targets:
        lines += _block(f"location ^~ {location}", ["internal;", f"alias {_dir(path, what)};"])
    return lines

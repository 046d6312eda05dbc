"""The front nginx configuration as a pure function of the tandem config: ``render(cfg)``.

What the generated server does, and why each construct was chosen (all tried on the real
nginx 1.22; the behaviours are pinned by ``tests/test_nginx_render.py``):

- **Routes** (``/images/`` …) are regex locations with a named capture, ``(?<tandem_rest>…)``,
  of the URL path after the prefix. A regex location matches the *normalised, percent-decoded*
  ``$uri``, so the capture is a file name that can be appended to each volume's view folder:
  ``try_files <vol0>/view<root>$tandem_rest <vol1>/view<root>$tandem_rest … @tandem_origin``
  under ``root /``. A route whose ``root`` is its ``prefix`` (the defaults) needs no capture:
  its location has ``root <vol0>/view`` and ``error_page 301 403 404`` to a named location per
  further view (``root <vol1>/view`` …), the last to ``@tandem_origin`` — the static handler's
  ``open`` per view tried instead of ``try_files``' ``stat`` per view and then the ``open``
  (measured: ≈ 3 µs less nginx CPU per request, a third of the gap to a plain directory).
  A folder would be a 301 (no slash) or an index page, so a location before it sends paths
  ending in "/" to the origin. Regex locations are tried in order, so routes are listed
  longest prefix first (the config's "longest prefix wins"). The pattern starts with
  ``(?s)``: without it ``.`` stops at a decoded newline and ``/images/a.jpg%0Ab.jpg`` would
  serve ``a.jpg``.
- **GET/HEAD from the views, every other method to the origin**: nginx's static handler
  answers 405 to any method but GET/HEAD on a file it found, and ``error_page 405 =
  @tandem_write`` hands that request — method, URI and unread body intact — to the primary
  origin; a missing file reaches ``@tandem_origin`` through the views whatever the
  method (which sends a non-GET/HEAD on to ``@tandem_write``, below). ``limit_except
  GET { proxy_pass … }`` looks like the obvious construct but cannot hold ``add_header`` and
  inherits the route's, so the origin's answers to writes would carry the route's
  ``Cache-Control``.
- **Primary and backup** (``nginx.upstream`` is the model and its refusals): the group
  ``tandem_origin`` holds the primary side's origins (``origin.listen`` and ``nginx.origins``
  when the cluster is primary) with ``max_fails``/``fail_timeout``, and the other side's as
  ``backup``, which nginx uses only while every primary is failing; a shared ``zone`` makes
  all workers agree on that. ``primary`` is the persisted one (``tandem flip`` swaps them; the
  caller reads it, this module imports no syncer): ``cluster`` → the cluster origins, backed
  by the legacy origin; ``legacy`` → the legacy origin, backed by the cluster origins, and no
  fast path (the cluster is then the mirror and may lag, so nginx must not serve its views).
- **Failover for GET/HEAD only**: ``proxy_next_upstream error timeout http_502 http_503
  http_504`` with bounded tries and time, and short connect/send/read timeouts, at server
  level. Any other method is handed (``error_page 418``, raised by an ``if`` that only
  ``return``s — the one safe use of ``if`` in a location) to ``@tandem_write``: the group
  ``tandem_primary`` (the primary side only, no backup) with ``proxy_next_upstream off`` and
  long send/read timeouts (a durable write of a big upload takes time). nginx's own default
  would replay a PUT or DELETE (it counts them idempotent) on the backup, whose answer (405, or
  503 ``not_primary``) would then reach the client instead of the primary's. A 500 is not
  retried: the origin answers 503 for anything that means "cannot serve" (storage trouble,
  not ready), and a 500 is a bug the client should see.
- **The origin's pages** (``/readyz`` …) go to the failover group but are retried on error and
  timeout only: through the front, ``/readyz`` is the primary's answer while it answers (a
  503 of a fenced or lagging primary must neither be hidden nor count as a failure that moves
  the asset traffic to the backup), and the backup's while nginx has taken the primary out
  (the front still serves then: its health checks go through here).
- **Dynamic pass-through**: with ``[nginx.app] servers``, everything outside the routes, the
  origin's pages and the internal locations goes to the group ``tandem_app`` (same GET/HEAD
  rule, its own read timeout, no ``X-Tandem-Accel`` header, its ``X-Accel-Redirect`` ignored —
  an app server must not reach the volumes); without, it is a 404.
- **proxy_cache** (``[nginx.cache]``, off by default) on the asset GET/HEADs that reach an
  origin: fresh for ``valid`` seconds whatever the origin's ``Cache-Control`` (which still
  reaches the clients), then revalidated; stale answers on error, timeout, 5xx and while
  updating, a cache lock, background updates. X-Accel-Redirect answers are never cached
  (nginx follows them before caching; the bytes come from a local file anyway): the cache
  holds what origins stream.
- **Every ``proxy_*`` setting sits at server level** unless a location must differ. nginx
  drops *all* inherited ``proxy_set_header`` lines in a location that sets one, so only the
  app locations set their own (all of them). ``proxy_pass`` without a URI part sends the
  client's URI unchanged.
- **X-Accel**: ``^~`` prefix locations (which beat every regex location) with ``internal``
  alias each volume and the legacy folder; from outside they answer 404.
- **Hostile URIs**: in a route, an encoded slash, backslash or NUL, a raw backslash or a dot
  segment in the raw path is refused with 400 before any file is looked for (dynamic URLs are
  the app's business); ``..`` above the root is nginx's own 400; a request line over 8 KiB
  gets nginx's 414.

Everything the renderer writes into the config is checked here and refused with
``NginxConfigError`` when nginx could not read it back as meant (a ``$`` cannot be escaped in
nginx config; control characters cannot be written at all). Regex metacharacters in a route
prefix are escaped, not refused.

This module touches no file: ``nginx.runner`` writes and runs what it returns.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Literal

from cluster.view import VIEW
from nginx import upstream
from nginx.accel import ACCEL_HEADER, INTERNAL, LEGACY_LOCATION, volume_location
from nginx.errors import NginxConfigError
from origin.mime import nginx_types

if TYPE_CHECKING:
    from origin.config import Config
    from origin.settings import Route

Primary = Literal["cluster", "legacy"]
PRIMARIES = ("cluster", "legacy")
UPSTREAM = "tandem_origin"  # GET/HEAD of assets: the primary side, the other as backup
PRIMARY_UPSTREAM = "tandem_primary"  # writes: the primary side only
APP_UPSTREAM = "tandem_app"  # the dynamic pass-through
ORIGIN_LOCATION = "@tandem_origin"
WRITE_LOCATION = "@tandem_write"
APP_WRITE_LOCATION = "@tandem_app_write"
CACHE_ZONE = "tandem_cache"
REST = "tandem_rest"  # the capture of a route's URL path after its prefix
ENDPOINTS = ("/healthz", "/readyz", "/metrics", "/status")  # the origin's own pages
TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")

WORKER_CONNECTIONS = 1024
# What a GET/HEAD is retried on. Never ``non_idempotent``; http_500 is not in it either: the
# origin answers 503 for what means "cannot serve", so a 500 is a bug the client should see.
NEXT_UPSTREAM = "error timeout http_502 http_503 http_504"
READ_METHODS = "^(?:GET|HEAD)$"
DISPATCH_STATUS = 418  # raised for a non-GET/HEAD, caught by error_page (never sent)
# A write's answer comes after the upload is durable on every copy, and the origin may pause
# reading an upload while it writes a chunk: far longer than a read's first byte may take.
# Reads and sends are timed between two successive operations, not over a whole body.
WRITE_TIMEOUT = 60.0
KEEPALIVE_TIMEOUT = "65s"
KEEPALIVE_REQUESTS = 1000
CACHE_KEYS_ZONE = "10m"  # ~80,000 keys

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
    '"cache":"$upstream_cache_status","agent":"$http_user_agent","request_id":"$request_id"}'
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
    express or would ignore."""
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


def groups(cfg: Config, primary: Primary = "cluster") -> list[upstream.Group]:
    """The upstream groups for ``cfg``, checked (``nginx.upstream.check``): the failover group,
    the primary side alone, and the app servers when there are any."""
    n = cfg.nginx
    cluster = [upstream.Server(_address(cfg.origin.listen, "origin.listen"), "origin.listen")]
    cluster += [
        upstream.Server(_address(o, f"nginx.origins[{i}]"), f"nginx.origins[{i}]")
        for i, o in enumerate(n.origins)
    ]
    legacy = [upstream.Server(_address(cfg.legacy.listen, "legacy.listen"), "legacy.listen")]
    sides = {"cluster": cluster, "legacy": legacy}
    other = "legacy" if primary == "cluster" else "cluster"
    primaries = [
        dataclasses.replace(s, max_fails=n.max_fails, fail_timeout=n.fail_timeout)
        for s in sides[primary]
    ]
    backups = [
        dataclasses.replace(s, backup=True, max_fails=n.max_fails, fail_timeout=n.fail_timeout)
        for s in sides[other]
    ]
    if not n.backup:
        backups = []
    failover = upstream.Group(
        UPSTREAM,
        (*primaries, *backups),
        "nginx.max_fails",
        n.balance,
        keepalive=n.keepalive,
        comment=f"primary: {primary}, backup: {other if n.backup else 'none'}"
        + (" (tandem flip swaps them)" if n.backup else ""),
    )
    # Writes are never retried, so this group needs no failure accounting unless it can
    # spread over several servers (nginx ignores max_fails in a group of one anyway).
    alone = len(primaries) == 1
    direct = upstream.Group(
        PRIMARY_UPSTREAM,
        tuple(dataclasses.replace(s, max_fails=0) if alone else s for s in primaries),
        "nginx.max_fails",
        n.balance,
        keepalive=n.keepalive,
        comment="writes: the primary side only, never retried",
    )
    out = [failover, direct]
    if n.app.servers:
        app = [
            upstream.Server(
                _address(a, f"nginx.app.servers[{i}]"),
                f"nginx.app.servers[{i}]",
                max_fails=n.app.max_fails,
                fail_timeout=n.app.fail_timeout,
            )
            for i, a in enumerate(n.app.servers)
        ]
        out.append(
            upstream.Group(
                APP_UPSTREAM,
                tuple(app),
                "nginx.app.max_fails",
                keepalive=n.keepalive,
                comment="the dynamic app servers",
            )
        )
    front = (_address(n.listen, "nginx.listen"), "nginx.listen")
    for g in out:
        upstream.check(g, front)
    return out


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
    if cfg.nginx.cache is not None:
        _absolute(cfg.nginx.cache.path, "nginx.cache.path")
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


def _address(listen: tuple[str, int], what: str) -> str:
    """A server's address in an upstream group (a wildcard bind mapped onto loopback)."""
    _port(listen, what)
    return _hostport(_reachable(listen), what)


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
    lines = [
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
        "# With tcp_nopush on, sendfile from a non-zero file offset (a Range, every proxy_cache",
        "# hit) stalls ~40 ms per response.",
        "tcp_nopush off;",
        "etag on;",
        "if_modified_since before;",
        "max_ranges 1;",
        "server_tokens off;",
        f"keepalive_timeout {KEEPALIVE_TIMEOUT};",
        f"keepalive_requests {KEEPALIVE_REQUESTS};",
        "reset_timedout_connection on;",
        "# No open_file_cache: a file replaced in a view must be served new at once.",
    ]
    cache = cfg.nginx.cache
    if cache is not None:
        lines += [
            "",
            f"proxy_cache_path {_q(str(cache.path), 'nginx.cache.path')} levels=1:2 "
            f"keys_zone={CACHE_ZONE}:{CACHE_KEYS_ZONE} max_size={cache.max_size} "
            f"inactive={cache.inactive}s use_temp_path=off;",
        ]
    for group in groups(cfg, primary):
        lines += ["", *upstream.lines(group)]
    return [*lines, "", *_server(cfg, primary)]


def _server(cfg: Config, primary: Primary) -> list[str]:
    body = [
        f"listen {_hostport(cfg.nginx.listen, 'nginx.listen')};",
        "",
        *_proxy_settings(cfg),
    ]
    # Regex locations are tried in order: longest prefix first is "the longest prefix wins".
    routes = sorted(enumerate(cfg.origin.routes), key=lambda ir: len(ir[1].prefix), reverse=True)
    for index, route in routes:
        body += ["", *_route_location(cfg, primary, route, f"origin.routes[{index}]", index)]
    if fast_path(cfg, primary):
        # A miss in a view's chain passes on by error_page, and so may the location after it.
        body += ["", "recursive_error_pages on;"]
    body += ["", *_block(f"location {ORIGIN_LOCATION}", _asset_proxy(cfg))]
    body += ["", *_block(f"location {WRITE_LOCATION}", _write_proxy(PRIMARY_UPSTREAM))]
    body += [""] + [line for e in ENDPOINTS for line in _endpoint_location(e)]
    body += ["", *_accel_locations(cfg)]
    body += ["", *_app_locations(cfg)]
    return _block("server", body)


def _proxy_settings(cfg: Config) -> list[str]:
    """How every request reaches an upstream; set once here, inherited by every location."""
    n = cfg.nginx
    # nginx reads client_max_body_size 0 as "no limit"; 1 byte is the closest it can say.
    max_body = max(cfg.origin.max_upload, 1)
    return [
        "proxy_http_version 1.1;",
        *_headers(accel=True),
        f"proxy_connect_timeout {upstream.duration(n.connect_timeout)};",
        f"proxy_send_timeout {upstream.duration(n.send_timeout)};",
        f"proxy_read_timeout {upstream.duration(n.read_timeout)};",
        "# A GET/HEAD that fails before its answer began goes to the next server (a backup",
        "# once the primaries fail), within bounds; the write locations turn this off.",
        f"proxy_next_upstream {NEXT_UPSTREAM};",
        f"proxy_next_upstream_tries {n.next_upstream_tries};",
        f"proxy_next_upstream_timeout {upstream.duration(n.next_upstream_timeout)};",
        "# Small answers are taken whole (the origin is freed at once); big ones stream through",
        "# memory buffers at the client's pace, never spooled to disk.",
        "proxy_hide_header Alt-Svc;  # sanic sends an empty one",
        "proxy_buffering on;",
        "proxy_max_temp_file_size 0;",
        "# Uploads stream to the origin as they arrive.",
        "proxy_request_buffering off;",
        f"client_max_body_size {max_body};",
    ]


def _headers(*, accel: bool) -> list[str]:
    """The request headers an upstream gets; ``accel`` marks a request to a tandem origin,
    which may then answer with X-Accel-Redirect."""
    lines = [
        'proxy_set_header Connection "";  # keepalive to the upstream',
        "proxy_set_header Host $host;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
    ]
    if accel:
        lines.append(f"proxy_set_header {ACCEL_HEADER} 1;")
    return lines


def _dispatch(write_location: str) -> list[str]:
    """Send every method but GET/HEAD to ``write_location`` (never retried). An ``if`` that
    only returns is safe in a location; the 418 never leaves nginx."""
    return [
        f"error_page {DISPATCH_STATUS} = {write_location};",
        f'if ($request_method !~ "{READ_METHODS}") {{',
        f"{INDENT}return {DISPATCH_STATUS};",
        "}",
    ]


def _asset_proxy(cfg: Config) -> list[str]:
    """An asset request that reaches the origins: GET/HEAD through the failover group (and
    the cache, when on), anything else to ``@tandem_write``."""
    lines = [*_dispatch(WRITE_LOCATION), f"proxy_pass http://{UPSTREAM};"]
    cache = cfg.nginx.cache
    if cache is not None:
        lines += [
            f"proxy_cache {CACHE_ZONE};",
            # The origin's Cache-Control (30 days for images) is for browsers and CDNs, which
            # revalidate on their own; nginx's copy is fresh for `valid` only, then revalidated
            # (a 304 when unchanged), so an overwrite reaches the clients that quickly.
            "proxy_ignore_headers Cache-Control Expires;",
            f"proxy_cache_valid 200 {cache.valid}s;",
            "proxy_cache_use_stale error timeout updating http_500 http_502 http_503 http_504;",
            "proxy_cache_background_update on;",
            "proxy_cache_lock on;",
            "proxy_cache_revalidate on;",
        ]
    return lines


def _write_proxy(group: str) -> list[str]:
    return [
        "proxy_next_upstream off;  # a write is never replayed",
        f"proxy_send_timeout {upstream.duration(WRITE_TIMEOUT)};",
        f"proxy_read_timeout {upstream.duration(WRITE_TIMEOUT)};",
        f"proxy_pass http://{group};",
    ]


def _hostile() -> list[str]:
    return [
        f'if ($request_uri ~ {_q(HOSTILE_PATH, "HOSTILE_PATH", variables=False)}) {{',
        f"{INDENT}return 400;",
        "}",
    ]


def _route_location(cfg: Config, primary: Primary, route: Route, what: str,
                    index: int) -> list[str]:
    """One route: GET/HEAD from the first volume view holding the file, anything else (and
    any miss) to the origin — or everything to the origin without the fast path."""
    regex = f"(?s)^{re.escape(route.prefix)}(?<{REST}>.*)"
    head = f"location ~ {_q(regex, f'{what}.prefix', variables=False)}"
    if not fast_path(cfg, primary):
        return _block(head, [*_hostile(), *_asset_proxy(cfg)])
    if route.prefix == route.root:
        # Folders (a path ending in "/") are the origin's: no listings, no index pages.
        folders = f"(?s)^{re.escape(route.prefix)}(?:.*/)?$"
        return [*_block(f"location ~ {_q(folders, f'{what}.prefix', variables=False)}",
                        [*_hostile(), *_asset_proxy(cfg)]),
                "", *_view_chain(cfg, route, what, index, head)]
    tries = " ".join(
        _view_file(v.path, f"cluster.volumes[{i}].path", route, f"{what}.root")
        for i, v in enumerate(cfg.cluster.volumes)
    )
    body = [
        *_hostile(),
        "root /;",
        f"try_files {tries} {ORIGIN_LOCATION};",
        f"error_page 405 = {WRITE_LOCATION};  # any method but GET/HEAD on a file nginx has",
    ]
    if route.cache_control:
        cc = _q(route.cache_control, f"{what}.cache_control")
        body.append(f"add_header Cache-Control {cc};")
    return _block(head, body)


def _view_chain(cfg: Config, route: Route, what: str, index: int, head: str) -> list[str]:
    """A route whose URL paths are cluster paths: the static handler opens the file under the
    first view (``root``) and each miss — 404, or 301/403 for a folder — passes the request
    to the next view's named location, the last to the origin. An ``open`` per view tried
    instead of ``try_files``' ``stat`` per view and then the ``open``."""
    steps = [
        (f"@tandem_view_{index}_{i}", _q(f"{str(v.path).rstrip('/')}/{VIEW}",
                                         f"cluster.volumes[{i}].path"))
        for i, v in enumerate(cfg.cluster.volumes)
    ]
    nexts = [name for name, _ in steps[1:]] + [ORIGIN_LOCATION]
    cc = [f"add_header Cache-Control {_q(route.cache_control, f'{what}.cache_control')};"
          ] if route.cache_control else []
    lines: list[str] = []
    for n, ((name, root), after) in enumerate(zip(steps, nexts, strict=True)):
        body = [
            f"root {root};",
            "log_not_found off;  # a miss here is the next view's or the origin's",
            f"error_page 301 403 404 = {after};",
            f"error_page 405 = {WRITE_LOCATION};  # any method but GET/HEAD on a file nginx has",
            *cc,
        ]
        lines += _block(head, [*_hostile(), *body]) if n == 0 else ["", *_block(
            f"location {name}", body)]
    return lines


def _view_file(volume: PurePath, volume_what: str, route: Route, route_what: str) -> str:
    """The ``try_files`` candidate for a route's file in one volume's view (under ``root /``):
    ``<volume>/view<route root>$tandem_rest``, quoted, the variable left to nginx."""
    folder = _escape(str(volume).rstrip("/"), volume_what) + f"/{VIEW}"
    return f'"{folder}{_escape(route.root, route_what)}${REST}"'


def _endpoint_location(path: str) -> list[str]:
    return _block(
        f"location = {path}",
        [
            "proxy_next_upstream error timeout;  # an answer, even a 503, is the primary's",
            f"proxy_pass http://{UPSTREAM};",
        ],
    )


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


def _app_locations(cfg: Config) -> list[str]:
    """Everything else: the app servers (GET/HEAD retried, other methods not), or 404."""
    app = cfg.nginx.app
    if not app.servers:
        return _block("location /", ["return 404;"])
    common = [
        *_headers(accel=False),
        "proxy_ignore_headers X-Accel-Redirect;  # an app server must not reach the volumes",
        f"proxy_read_timeout {upstream.duration(app.read_timeout)};",
    ]
    return [
        *_block("location /", [*_dispatch(APP_WRITE_LOCATION), *common,
                               f"proxy_pass http://{APP_UPSTREAM};"]),
        *_block(f"location {APP_WRITE_LOCATION}", [
            *common, "proxy_next_upstream off;  # a write is never replayed",
            f"proxy_pass http://{APP_UPSTREAM};",
        ]),
    ]

"""The master's HTTP API for remote clients (sanic; handlers stay thin over ``Master``).

Paths travel percent-encoded in the ``path`` query parameter (raw bytes, so names that are not
UTF-8 survive). Errors come back as ``{"error": <class name>, "message": …}`` with the status
the error class names, and ``RemoteCluster`` re-raises the same class.

    GET  /healthz                       alive
    PUT  /v1/file?path=P[&mode=&mtime_ns=]   streamed body → put; 201 + entry JSON
    GET  /v1/file?path=P                the bytes; one ``Range: bytes=a-b`` → 206
    GET  /v1/stat|ls|walk|fileinfo|checkfile?path=P
    GET  /v1/lookup?path=P              what an origin serves: {"seq", "file": null | {size,
                                        mtime_ns, chunks: [[id, version, size, copies], …]}}
    GET  /v1/chunk?id=&version=[&offset=&length=]   one chunk's bytes (a good copy, verified)
    GET  /v1/status | /v1/trash?after=&limit= | /v1/changes?after=&limit=&wait=
    GET  /v1/readiness                  {"problems": […]}: this host's fence and sync lag, for
                                        second-host origins' /readyz
    POST /v1/mkdir|rm|mv|snapshot|setgoal|settrashtime|undelete|purge|fsck   JSON body
    POST /v1/migrate-store {"from", "to", "move", "dry_run"}   NDJSON progress, then result

**Access.** With ``cluster.token`` set, every request but ``/healthz`` needs
``Authorization: Bearer <token>``: ``cluster.token`` may do anything, ``cluster.read_token``
(if set) only GET/HEAD — lookups, bytes, the change feed: what a second-host origin needs.
Missing or wrong → 401 ``Unauthorized``; the read token on a change → 403 ``Forbidden``;
compared in constant time. Without a token the master must listen on loopback
(``cluster/config.py`` refuses anything else).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qsl

import structlog
from sanic import Request, Sanic
from sanic.response import BaseHTTPResponse, HTTPResponse, JSONResponse, json

from cluster import paths, wire
from cluster.config import ClusterConfig
from cluster.errors import (
    ChunkMissing,
    ClusterError,
    Forbidden,
    InvalidArgument,
    Unauthorized,
    UserError,
)
from cluster.master import Master
from cluster.ranges import parse_range

log = structlog.get_logger("cluster")


def _query(request: Request) -> dict[str, bytes]:
    """Query parameters as raw bytes (percent-decoding without assuming UTF-8)."""
    pairs = parse_qsl(request.query_string, keep_blank_values=True, encoding="latin-1")
    return {k: v.encode("latin-1") for k, v in pairs}


def _int(q: dict[str, bytes], name: str, default: int | None = None) -> int | None:
    if name not in q:
        return default
    try:
        return int(q[name])
    except ValueError:
        raise InvalidArgument(f"query parameter {name!r} must be an integer") from None


def _path(q: dict[str, bytes]) -> bytes:
    if "path" not in q:
        raise InvalidArgument("missing query parameter 'path'")
    return q["path"]


def _body(request: Request) -> dict[str, Any]:
    data = request.json
    if not isinstance(data, dict):
        raise InvalidArgument("expected a JSON object body")
    return data


READS = frozenset({"GET", "HEAD"})


def authorize(cfg: ClusterConfig, request: Request) -> None:
    """Let the request through, or raise ``Unauthorized`` / ``Forbidden`` (see Access)."""
    if not cfg.token or request.path == "/healthz":
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("the master's API needs 'Authorization: Bearer <token>' "
                           "(cluster.token; cluster.read_token for reads)")
    key = given.strip().encode()
    if hmac.compare_digest(key, cfg.token.encode()):
        return
    if cfg.read_token and hmac.compare_digest(key, cfg.read_token.encode()):
        if request.method in READS:
            return
        raise Forbidden(f"the read-only token (cluster.read_token) cannot {request.method} "
                        f"{request.path}: that needs cluster.token")
    raise Unauthorized("wrong token for the master's API")


def create_app(master: Master, name: str = "tandem-master", *,
               readiness: Callable[[], list[str]] | None = None) -> Sanic[Any, Any]:
    """``readiness``: what ``GET /v1/readiness`` reports as this host's problems (a flip's
    fence, the sync lag: ``origin.health.host_problems``); none when not given."""
    app: Sanic[Any, Any] = Sanic(name, configure_logging=False)
    app.config.REQUEST_MAX_SIZE = 1 << 40
    app.config.REQUEST_TIMEOUT = 300
    app.config.RESPONSE_TIMEOUT = 3600
    app.config.KEEP_ALIVE_TIMEOUT = 30
    # TouchUp rewrites sanic's own methods at start-up and breaks when a second app starts in
    # the same process (tests, `tandem up`); the master API does not need its few microseconds.
    app.config.TOUCHUP = False
    app.ctx.master = master
    m = master

    @app.on_request
    async def started(request: Request) -> None:
        request.ctx.t0 = time.perf_counter()
        authorize(m.cfg, request)

    @app.on_response  # type: ignore[untyped-decorator]
    async def access_log(request: Request, response: BaseHTTPResponse) -> None:
        """One JSON line per request."""
        log.info(
            "http.request",
            method=request.method,
            path=request.path,
            query=request.query_string[:200],
            status=response.status,
            ms=round((time.perf_counter() - request.ctx.t0) * 1000, 2),
        )

    @app.exception(ClusterError)
    async def cluster_error(request: Request, exc: ClusterError) -> JSONResponse:
        headers = {"WWW-Authenticate": 'Bearer realm="tandem"'} if exc.status == 401 else None
        return json({"error": type(exc).__name__, "message": str(exc)}, status=exc.status,
                    headers=headers)

    @app.get("/healthz")
    async def healthz(request: Request) -> JSONResponse:
        return json({"ok": True})

    @app.put("/v1/file", stream=True)
    async def put_file(request: Request) -> JSONResponse:
        q = _query(request)

        async def body() -> AsyncIterator[bytes]:
            assert request.stream is not None
            while (piece := await request.stream.read()) is not None:  # type: ignore[attr-defined]
                yield piece

        entry = await m.put(
            _path(q), body(), mode=_int(q, "mode", 0o644) or 0, mtime_ns=_int(q, "mtime_ns")
        )
        return json(wire.entry_json(entry), status=201)

    @app.get("/v1/file")
    async def get_file(request: Request) -> HTTPResponse | None:
        entry, chunks = await m.open(_path(_query(request)))
        offset, length, status = 0, entry.size, 200
        headers = {"ETag": f'"{entry.hash.hex() if entry.hash else ""}"', "Accept-Ranges": "bytes"}
        if (rng := request.headers.get("range")) is not None:
            r = parse_range(rng, entry.size)
            if r is None:
                return json({"error": "RangeNotSatisfiable", "message": rng}, status=416,
                            headers={"Content-Range": f"bytes */{entry.size}"})
            offset, length, status = r[0], r[1], 206
            headers["Content-Range"] = f"bytes {offset}-{offset + length - 1}/{entry.size}"
        headers["Content-Length"] = str(length)
        pieces = m.read_chunks(entry, chunks, offset, length)
        first = await anext(pieces, b"")  # storage errors surface before any header is sent
        resp = await request.respond(
            status=status, headers=headers, content_type="application/octet-stream"
        )
        assert resp is not None
        await resp.send(first)
        async for piece in pieces:
            await resp.send(piece)
        await resp.eof()
        return None

    @app.get("/v1/stat")
    async def stat(request: Request) -> JSONResponse:
        return json(wire.entry_json(await m.stat(_path(_query(request)))))

    @app.get("/v1/ls")
    async def ls(request: Request) -> JSONResponse:
        return json([wire.entry_json(e) for e in await m.ls(_path(_query(request)))])

    @app.get("/v1/walk")
    async def walk(request: Request) -> JSONResponse:
        return json([wire.entry_json(e) for e in await m.walk(_path(_query(request)))])

    @app.get("/v1/fileinfo")
    async def fileinfo(request: Request) -> JSONResponse:
        entry, infos = await m.fileinfo(_path(_query(request)))
        return json({"entry": wire.entry_json(entry),
                     "chunks": [wire.chunkinfo_json(i) for i in infos]})

    @app.get("/v1/lookup")
    async def lookup(request: Request) -> JSONResponse:
        """A file as an origin needs it, and the changelog position it was read at (one
        snapshot): a change after ``seq`` is not in the answer. ``file`` is null for a path
        that is not a file. On the event loop, like ``Master.open``: a few primary-key reads."""
        return json(_lookup(m, _path(_query(request))))

    @app.get("/v1/chunk")
    async def chunk(request: Request) -> HTTPResponse:
        """The bytes of chunk ``id`` at ``version`` (all, or ``length`` from ``offset``),
        from a good copy; ``ChunkMissing`` when the metadata has no such chunk version."""
        q = _query(request)
        cid, version = _int(q, "id"), _int(q, "version")
        if cid is None or version is None:
            raise InvalidArgument("query parameters 'id' and 'version' are required")
        meta = m.reader
        assert meta is not None
        try:
            (c,) = meta.chunks((cid,))
        except (UserError, OverflowError):
            c = None
        if c is None or c.version != version:
            raise ChunkMissing(f"no chunk {cid:016X} version {version} in the metadata")
        offset = _int(q, "offset", 0) or 0
        length = _int(q, "length", c.size - offset)
        if length is None or offset < 0 or length < 0 or offset + length > c.size:
            raise InvalidArgument(f"range {offset}+{length} outside chunk of {c.size} bytes")
        data = await m.read_chunk(c, offset, length) if length else b""
        return HTTPResponse(data, content_type="application/octet-stream")

    @app.get("/v1/checkfile")
    async def checkfile(request: Request) -> JSONResponse:
        return json(await m.checkfile(_path(_query(request))))

    @app.get("/v1/readiness")
    async def host_readiness(request: Request) -> JSONResponse:
        return json({"problems": readiness() if readiness is not None else []})

    @app.get("/v1/status")
    async def status(request: Request) -> JSONResponse:
        return json(await m.status())

    @app.get("/v1/trash")
    async def trash(request: Request) -> JSONResponse:
        q = _query(request)
        items = await m.trash_list(_int(q, "limit", 1000) or 1000, _int(q, "after", 0) or 0)
        return json([wire.trash_json(t) for t in items])

    @app.get("/v1/changes")
    async def changes(request: Request) -> JSONResponse:
        """Long poll: entries after ``after``, waiting up to ``wait`` seconds for one."""
        q = _query(request)
        after, limit = _int(q, "after", 0) or 0, _int(q, "limit", 1000) or 1000
        wait = min(_int(q, "wait", 0) or 0, 60)
        oldest, last = await m.changelog_bounds()
        if after < oldest - 1:
            return json({"error": "ChangelogTrimmed", "oldest": oldest,
                         "message": f"cursor {after} is behind retention (oldest {oldest})"},
                        status=410)
        if last <= after and wait:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):  # not wait_for: it can swallow a cancel
                    await m.changed.wait()
        return json([wire.change_json(c) for c in await m.changes(after, limit)])

    @app.post("/v1/migrate-store")
    async def migrate_store(request: Request) -> None:
        """A store migration (``cluster/migrate.py``): bad input is a JSON error as usual,
        then NDJSON lines: ``{"progress": …}`` as it goes, ``{"result": …}`` or ``{"error":
        NAME, "message": …}`` last. The client going away cancels it (a re-run resumes)."""
        from cluster import migrate

        b = _body(request)
        src, dst = migrate.plan(m, b.get("from", ""), b.get("to", ""))
        resp = await request.respond(content_type="application/x-ndjson")
        assert resp is not None
        await migrate.stream(m, resp.send, src.id, dst.id, move=bool(b.get("move")),
                             dry_run=bool(b.get("dry_run")))
        await resp.eof()

    @app.post("/v1/<op:str>")
    async def op(request: Request, op: str) -> JSONResponse:
        b = _body(request)

        def p(key: str = "path") -> bytes:
            if not isinstance(b.get(key), str):
                raise InvalidArgument(f"body needs a string {key!r}")
            return wire.dec(b[key])

        rec = bool(b.get("recursive", False))
        match op:
            case "mkdir":
                return json(wire.entry_json(await m.mkdir(p())))
            case "rm":
                return json({"files": await m.rm(p(), rec)})
            case "mv":
                return json(wire.entry_json(await m.mv(p("src"), p("dst"))))
            case "snapshot":
                return json({"files": await m.snapshot(p("src"), p("dst"))})
            case "setgoal":
                return json({"changed": await m.setgoal(p(), int(b.get("goal", 0)), rec)})
            case "settrashtime":
                return json({"changed": await m.settrashtime(p(), int(b.get("seconds", -1)), rec)})
            case "undelete":
                dest = wire.dec(b["dest"]) if b.get("dest") is not None else None
                return json(wire.entry_json(await m.undelete(int(b.get("id", 0)), dest)))
            case "purge":
                ids = b.get("ids")
                return json({"purged": await m.purge(ids, bool(b.get("expired", False)))})
            case "fsck":
                return json(await m.fsck(bool(b.get("verify")), bool(b.get("repair"))))
        return json({"error": "NotFound", "message": f"no operation {op!r}"}, status=404)

    return app


def _lookup(m: Master, path: bytes) -> dict[str, Any]:
    meta = m.reader
    assert meta is not None
    meta.db.execute("BEGIN")
    try:
        seq = meta.changelog_bounds()[1]
        try:
            e = meta.stat(paths.parse(path))
            if e.is_dir:
                return {"seq": seq, "file": None}
            chunks = meta.chunks(e.chunks)
        except UserError:  # not found, a parent is a file, a path the cluster cannot hold
            return {"seq": seq, "file": None}
    finally:
        meta.db.execute("COMMIT")
    return {"seq": seq, "file": {"size": e.size, "mtime_ns": e.mtime_ns, "chunks": [
        [c.id, c.version, c.size, c.copies] for c in chunks]}}

"""The origin's HTTP app (sanic): asset URLs, health, metrics, status, crawler writes.

Thin handlers over a ``Source`` (``sources.py``): the URL becomes a cluster path
(``urls.py``), the source gives the file, ``semantics.evaluate`` gives nginx's answer for it
(validators, 304/412, ranges), and the bytes go out one of two ways:

- behind tandem's nginx (the request carries ``X-Tandem-Accel``) and for a file nginx can send
  as is: headers only, with ``X-Accel-Redirect`` to the chunk file (or legacy file); nginx
  answers conditionals and ranges itself from that file, which has the same size and mtime;
- otherwise streamed in pieces of at most ``sources.PIECE`` bytes, with Content-Length.

Storage trouble is a 503 (nginx fails a 503 over to the backup; a 500 it would pass on).
So is every read while this origin cannot serve at all (``Source.unable``: the metadata
unreadable, no volume there, the legacy directory missing): nginx has no active health checks,
so a read answered 503 is how it learns to move traffic to the backup. A fence (a flip) or
sync lag fails ``/readyz`` but never stops reads.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from sanic import Request, Sanic
from sanic.http import Http
from sanic.response import HTTPResponse, json

from nginx.accel import ACCEL_HEADER
from origin import health, metrics, mime, semantics, urls
from origin.config import Config
from origin.errors import OriginError, Refused
from origin.handoff import Handoff, accel_headers
from origin.sources import File, Source
from origin.writes import DISCARD_MAX, Writer

log = structlog.get_logger("origin")

METHODS = ["GET", "HEAD", "PUT", "DELETE", "POST", "OPTIONS", "PATCH"]
UNABLE_TTL = 0.5  # seconds a worker trusts its last "can I serve at all" check


class Gate:
    """Whether the source can serve at all, asked at most every ``UNABLE_TTL`` per worker (a
    metadata query and a marker read per volume: too much for every request)."""

    def __init__(self, source: Source, role: str) -> None:
        self.source, self.role = source, role
        self.checked = -UNABLE_TTL
        self.reason: str | None = None

    def unable(self) -> str | None:
        now = time.monotonic()
        if now - self.checked >= UNABLE_TTL:
            reason, self.checked = self.source.unable(), now
            if reason != self.reason:
                if reason is None:
                    log.info(f"{self.role}.serving_again")
                else:
                    log.error(f"{self.role}.unable", reason=reason)
            self.reason = reason
        return self.reason


def create_app(cfg: Config, source: Source, *, role: str = "origin") -> Sanic[Any, Any]:
    app: Sanic[Any, Any] = Sanic(f"tandem-{role}", configure_logging=False)
    # TouchUp (sanic compiling its unused hooks out of the request path) is safe here: every
    # worker process holds exactly one app. It halves sanic's CPU per request.
    app.config.TOUCHUP = True
    app.config.KEEP_ALIVE_TIMEOUT = 75  # nginx keeps upstream connections open
    # Room to read and drop a refused body (writes.DISCARD_MAX) beyond the upload limit.
    app.config.REQUEST_MAX_SIZE = max(cfg.origin.max_upload, 1 << 20) + DISCARD_MAX
    app.config.REQUEST_MAX_HEADER_SIZE = urls.MAX_URI
    app.config.REQUEST_TIMEOUT = 10  # a slow client holds only its own connection
    app.config.RESPONSE_TIMEOUT = 3600
    writer = Writer(cfg) if role == "origin" and cfg.origin.write_prefixes else None
    gate = Gate(source, role)
    ocfg = cfg.origin
    lookup_now = getattr(source, "lookup_now", None)
    # Plain hand-offs skip sanic (``origin.server`` serves with ``HandoffProtocol``).
    app.ctx.handoff = Handoff(ocfg, lookup_now, gate) if lookup_now is not None else None

    @app.get("/healthz")
    async def healthz(request: Request) -> HTTPResponse:
        return HTTPResponse("ok\n", content_type="text/plain")

    @app.get("/readyz")
    async def readyz(request: Request) -> HTTPResponse:
        problems = health.problems(cfg, source)
        body = {"ready": not problems, "role": role, "problems": problems}
        return json(body, status=503 if problems else 200)

    @app.get("/metrics")
    async def metrics_page(request: Request) -> HTTPResponse:
        data, ctype = metrics.render(cfg.sync.state_dir)
        return HTTPResponse(data, content_type=ctype)

    @app.get("/status")
    async def status_page(request: Request) -> HTTPResponse:
        return HTTPResponse(await health.status_html(cfg, source, role),
                            content_type="text/html; charset=utf-8")

    async def asset(request: Request, anything: str) -> HTTPResponse | None:
        started = time.perf_counter()
        status, sent, accel = 500, 0, False
        resp: HTTPResponse | None = None  # an answer returned, that sanic sends after us
        try:
            url_path = urls.decode(request.raw_url)
            if request.method in ("PUT", "DELETE") and writer is not None:
                resp = await writer.handle(request, url_path)
                return resp
            _close_if_body_unread(request)  # the read path never reads a request body
            if request.method not in ("GET", "HEAD", "POST"):
                resp = _page(405, request)  # as nginx: before it looks for the file
                return resp
            unable = gate.unable()
            if unable is not None:
                resp = _page(503, request, f"cannot serve: {unable}")
                return resp
            found = urls.resolve(ocfg, url_path)
            f = await source.lookup(found[1]) if found is not None else None
            if found is None or f is None:
                resp = _page(404, request)
                return resp
            status, sent, accel = await _serve(
                request, found[0].cache_control, found[1][-1], f, source
            )
            return None
        except Refused as exc:
            resp = _page(exc.status, request, str(exc))
            return resp
        except OriginError as exc:
            log.error("origin.unavailable", path=request.path, error=str(exc))
            resp = _page(503, request, str(exc))
            return resp
        finally:
            if resp is not None:
                status, sent = resp.status, len(resp.body or b"")
                _close_if_body_unread(request)
            elapsed = time.perf_counter() - started
            if accel:  # logged once, by nginx's access log
                metrics.handoff(elapsed)
            else:
                metrics.observe(status, sent, elapsed)
                log.info("http.request", method=request.method, path=request.path,
                         status=status, bytes=sent, ms=round(elapsed * 1000, 3))

    # Reads on a plain route (sanic reads no body for them); bodies stream on the other.
    app.add_route(asset, "/<anything:path>", methods=["GET", "HEAD"], unquote=False,
                  name="read")
    app.add_route(asset, "/<anything:path>", methods=[m for m in METHODS if m not in (
        "GET", "HEAD")], stream=True, unquote=False, name="write")
    return app


async def _serve(request: Request, cache_control: str, name: bytes, f: File,
                 source: Source) -> tuple[int, int, bool]:
    """Answer a file; returns (status, body bytes sent, handed to nginx by X-Accel)."""
    if f.accel is not None and ACCEL_HEADER in request.headers and request.method in (
        "GET", "HEAD"
    ):
        await request.respond(HTTPResponse(b"", headers=accel_headers(f, name, cache_control)))
        return 200, 0, True
    tag = semantics.etag(f.mtime_ns, f.size)
    out = semantics.evaluate(request.method, request.headers.get, tag,
                             f.mtime_ns // 1_000_000_000, f.size)
    headers = dict(out.headers)
    if out.file_type:
        headers["Content-Type"] = mime.content_type(name)
    if cache_control and out.cacheable:
        headers["Cache-Control"] = cache_control
    if out.body or not out.length:
        await request.respond(HTTPResponse(out.body, status=out.status, headers=headers))
        return out.status, len(out.body), False
    pieces = source.read(f, out.offset, out.length)
    first = await anext(pieces)  # storage errors surface before any header is sent
    if len(first) == out.length:
        await request.respond(HTTPResponse(first, status=out.status, headers=headers))
        return out.status, len(first), False
    resp = await request.respond(status=out.status, headers=headers)
    assert resp is not None
    await resp.send(first)
    sent = len(first)
    async for piece in pieces:
        await resp.send(piece)
        sent += len(piece)
    await resp.eof()
    return out.status, sent, False


def _close_if_body_unread(request: Request) -> None:
    """Answer with ``Connection: close`` when the request body was not (all) read: a refused
    upload, a write cut short, a body sent to the read path. Sanic would read and drop the
    rest after the response, but only up to REQUEST_MAX_SIZE, and then drop the connection
    after a response that said keep-alive, so the client's next request on it is reset."""
    http = request.stream
    if isinstance(http, Http) and http.request_body:
        http.keep_alive = False


def _page(status: int, request: Request, reason: str = "") -> HTTPResponse:
    """nginx's page for ``status``; the reason goes to a header, not into the page."""
    body = semantics.error_page(status, request.headers.get("user-agent"))
    headers = {"X-Tandem-Reason": reason} if reason else {}
    if request.method == "HEAD":
        body = b""
    return HTTPResponse(body, status=status, headers=headers,
                        content_type=semantics.ERROR_CONTENT_TYPE)

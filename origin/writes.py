"""Crawler writes over HTTP: ``PUT`` and ``DELETE`` under configured URL prefixes.

Off unless ``origin.write_prefixes`` is set (a bearer token is then required by the config).
The token is compared in constant time. A PUT streams its body to the master (never held
whole in memory) and is atomic there: the file appears only once it is durable, a failed or
cut upload changes nothing. A DELETE moves the file to the cluster's trash.

Answers: 201 (created or replaced, with the new ETag), 204 (deleted), 401 (no or wrong token),
403 (not a writable prefix), 404 (DELETE of nothing), 413 (over ``origin.max_upload``), 503
(the master cannot be reached or refuses for storage reasons; writers are fenced by a flip —
``"error": "fenced"`` with ``Retry-After`` —; or the legacy directory is primary and the
cluster only its mirror — ``"error": "not_primary"``). Bodies are JSON with a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator

import structlog
from sanic import Request
from sanic.response import HTTPResponse, json

from cluster.cli import master_client
from cluster.errors import ClusterError, NotFound, RemoteError, UserError
from cluster.paths import join
from cluster.remote import RemoteCluster
from origin import semantics, urls
from origin.config import Config
from syncer import fence

log = structlog.get_logger("origin")

DISCARD_MAX = 64 << 20  # bytes of a refused body read and dropped before answering
DISCARD_SECONDS = 5.0


class TooLarge(Exception):
    pass


class Writer:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.token = cfg.origin.write_token.encode()

    def _authorized(self, request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self.token
        )

    async def handle(self, request: Request, url_path: bytes) -> HTTPResponse:
        if not self._authorized(request):
            return json({"error": "unauthorized", "message": "a valid bearer token is required"},
                        status=401, headers={"WWW-Authenticate": 'Bearer realm="tandem"'})
        found = urls.resolve(self.cfg.origin, url_path)
        if not self.cfg.origin.writable(url_path) or found is None:
            return json({"error": "forbidden",
                         "message": "writes are not allowed under this URL"}, status=403)
        refused = fence.refusal(self.cfg)
        if refused is not None:
            await _discard(request)
            headers = {}
            if refused.retry_after is not None:
                headers["Retry-After"] = str(refused.retry_after)
            log.info("origin.write_refused", path=request.path, reason=refused.reason)
            return json({"error": refused.reason, "message": refused.message}, status=503,
                        headers=headers)
        path = join(found[1])
        limit = self.cfg.origin.max_upload
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _discard(request)
            return _too_large(limit)
        o = self.cfg.origin
        client = (RemoteCluster(o.master, token=o.master_token) if o.master  # a remote host's
                  else master_client(self.cfg.cluster))
        try:
            async with client as master:
                if request.method == "DELETE":
                    await master.rm(path)
                    log.info("origin.deleted", path=request.path)
                    return HTTPResponse(status=204)
                entry = await master.put(path, _body(request, limit))
        except TooLarge:
            await _discard(request)
            return _too_large(limit)
        except NotFound as exc:
            return json({"error": "not_found", "message": str(exc)}, status=404)
        except UserError as exc:
            return json({"error": type(exc).__name__, "message": str(exc)}, status=400)
        except (RemoteError, ClusterError) as exc:
            log.error("origin.write_failed", path=request.path, error=str(exc))
            return json({"error": "unavailable", "message": str(exc)}, status=503)
        log.info("origin.written", path=request.path, size=entry.size)
        return json({"path": request.path, "size": entry.size,
                     "etag": semantics.etag(entry.mtime_ns, entry.size)},
                    status=201, headers={"ETag": semantics.etag(entry.mtime_ns, entry.size)})


async def _body(request: Request, limit: int) -> AsyncIterator[bytes]:
    seen = 0
    assert request.stream is not None
    while (piece := await request.stream.read()) is not None:  # type: ignore[attr-defined]
        seen += len(piece)
        if seen > limit:
            raise TooLarge
        yield bytes(piece)


async def _discard(request: Request) -> None:
    """Read and drop the rest of a refused body (at most ``DISCARD_MAX`` bytes, for at most
    ``DISCARD_SECONDS``), as nginx's lingering close does: closing with unread bytes makes the
    kernel reset the connection, and the client may lose the 413 before it reads it."""
    assert request.stream is not None
    seen = 0
    with contextlib.suppress(Exception):  # sanic's own size limit, a client gone: stop
        async with asyncio.timeout(DISCARD_SECONDS):
            while seen < DISCARD_MAX:
                piece = await request.stream.read()  # type: ignore[attr-defined]
                if piece is None:
                    return
                seen += len(piece)


def _too_large(limit: int) -> HTTPResponse:
    return json({"error": "too_large", "message": f"the body is over the {limit}-byte limit"},
                status=413)

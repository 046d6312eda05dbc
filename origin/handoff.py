"""The X-Accel hand-off without sanic's per-request machinery.

Behind tandem's nginx most reads that reach the origin end in a hand-off: the origin answers
headers only, ``X-Accel-Redirect`` to a chunk file (or legacy file), and nginx sends the bytes.
Measured on a 2-core VM, sanic spends ≈ 110–160 µs per request on its request and response
objects, router and header handling even when the answer is four headers, which held the
Python path to ≈ 0.15–0.2 of nginx's own rate.

``HandoffProtocol`` is sanic's own HTTP protocol with one shortcut: a request that arrives
whole on an idle connection, is a GET or HEAD carrying nginx's ``X-Tandem-Accel`` mark and no
body, and names a file that nginx can send as is, is answered at once from ``data_received``
— parsed by httptools, looked up synchronously (both local sources look up without
suspending), the hand-off written straight to the transport. Everything else — a miss, a
refusal, a file without a local copy, an unusual request, any error — is handed to sanic
unchanged, so every other answer stays sanic's and the app's (``origin/app.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING, Any

import httptools
from sanic.http.constants import Stage
from sanic.server.protocols.http_protocol import HttpProtocol

from nginx.accel import ACCEL_HEADER
from origin import metrics, mime, urls
from origin.errors import OriginError

if TYPE_CHECKING:
    from origin.app import Gate
    from origin.settings import OriginConfig, Route
    from origin.sources import File

_MARK = ACCEL_HEADER.lower().encode()
_BODY = (b"content-length", b"transfer-encoding")
_UNKNOWN: Any = object()


def accel_headers(f: File, name: bytes, cache_control: str) -> dict[str, str]:
    """The hand-off's headers for ``f`` (named ``name``): nginx keeps Content-Type and
    Cache-Control and derives ETag, Last-Modified and the length from the file it sends."""
    assert f.accel is not None
    headers = {"X-Accel-Redirect": f.accel, "Content-Type": mime.content_type(name)}
    if cache_control:
        headers["Cache-Control"] = cache_control
    return headers


class _Head:
    """What httptools reports of one request head; ``plain`` once it may take the shortcut:
    a GET or HEAD over HTTP/1.1 that keeps the connection, marked by nginx, with no body."""

    __slots__ = ("body", "done", "marked", "parser", "plain", "url")

    def __init__(self) -> None:
        self.url = b""
        self.marked = self.body = self.plain = False
        self.done = 0
        self.parser = httptools.HttpRequestParser(self)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == _MARK:
            self.marked = True
        elif name in _BODY:
            self.body = True

    def on_headers_complete(self) -> None:
        # Read here: once the message is complete the parser is reset for the next one.
        p = self.parser
        self.plain = (self.marked and not self.body and p.get_method() in (b"GET", b"HEAD")
                      and p.get_http_version() == "1.1" and p.should_keep_alive())

    def on_message_complete(self) -> None:
        self.done += 1


class Handoff:
    """The shortcut's answers: the same lookup and headers as the app's hand-off."""

    def __init__(self, cfg: OriginConfig, lookup: Callable[[tuple[bytes, ...]], File | None],
                 gate: Gate) -> None:
        self.cfg, self.lookup, self.gate = cfg, lookup, gate
        self.tally = metrics.ShortcutTally()
        # Raw request target → route and cluster path (``urls.resolve`` of its decoded form,
        # a pure function of the URL): decoding and checking cost ≈ a third of a cached hit.
        # As many as the lookup cache holds (``origin.lookup_cache``), all forgotten when full.
        self._routes: dict[bytes, tuple[Route, tuple[bytes, ...]] | None] = {}

    def answer(self, data: bytes) -> bytes | None:
        """The whole response to the request in ``data``, or None for sanic to answer it."""
        head = _Head()
        try:
            head.parser.feed_data(data)
        except httptools.HttpParserError:
            return None
        if head.done != 1 or not head.plain:
            return None
        try:
            if self.gate.unable() is not None:
                return None
            found = self._routes.get(head.url, _UNKNOWN)
            if found is _UNKNOWN:
                found = urls.resolve(self.cfg, urls.decode(head.url))
                if len(self._routes) >= self.cfg.lookup_cache:
                    self._routes.clear()
                if self.cfg.lookup_cache:
                    self._routes[head.url] = found
            f = self.lookup(found[1]) if found is not None else None
        except OriginError:
            return None
        if found is None or f is None or f.accel is None:
            return None
        headers = accel_headers(f, found[1][-1], found[0].cache_control)
        if any("\r" in v or "\n" in v for v in headers.values()):
            return None  # never a stray line break in a header: sanic's sanitising answers
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.tally.count()
        return (
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: keep-alive\r\n"
            f"{lines}\r\n"
        ).encode("latin-1")


class HandoffProtocol(HttpProtocol):
    """sanic's HTTP/1.1 protocol, answering plain hand-offs itself (see the module text)."""

    def data_received(self, data: bytes) -> None:
        handoff: Handoff | None = getattr(self.app.ctx, "handoff", None)
        http = getattr(self, "_http", None)  # None until sanic's connection task starts
        if (handoff is not None and (http is None or http.stage is Stage.IDLE)
                and not self.recv_buffer and self.transport is not None
                and not self.transport.is_closing()):
            try:
                out = handoff.answer(data)
            except Exception:  # never lose a request to the shortcut: sanic answers it
                out = None
            if out is not None:
                self._time = monotonic()  # as sanic's own data_received
                self.transport.write(out)
                return
        super().data_received(data)

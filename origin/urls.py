"""From a request's raw URL to a cluster path, refusing whatever could escape or mislead.

The URL path is percent-decoded exactly once (``%252e`` stays the name ``%2e``). Refused with
400: encoded slashes and backslashes (``%2F``, ``%5C``), literal backslashes and NUL — a name
in the cluster never holds them, and a proxy may decode them differently from us — and dot
segments (``.``/``..``), which nginx would have resolved before proxying anything legitimate.
Repeated slashes are merged, as nginx does. Over-long paths get 414.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from cluster import paths
from cluster.errors import InvalidPath
from origin.errors import Refused
from origin.settings import OriginConfig, Route

MAX_URI = 8192  # nginx's default large_client_header_buffers line size
_FORBIDDEN = (b"%2f", b"%5c", b"%00", b"\\")
_PLAIN_UNLESS = (b"%", b"\\", b"\0", b"//", b"/.")  # a path without these decodes to itself


def decode(raw_url: bytes) -> bytes:
    """The decoded, slash-merged URL path of a raw request target."""
    path = raw_url.split(b"?", 1)[0].split(b"#", 1)[0]
    if len(path) > MAX_URI:
        raise Refused("the URL is too long", 414)
    if path.startswith(b"/") and not any(c in path for c in _PLAIN_UNLESS):
        return path  # the usual URL: nothing to refuse, decode or merge
    low = path.lower()
    if any(f in low for f in _FORBIDDEN):
        raise Refused("encoded slashes, backslashes and NUL are not allowed in URLs")
    if not path.startswith(b"/"):
        raise Refused("the URL path must start with '/'")
    decoded = unquote_to_bytes(path)
    if b"\0" in decoded:
        raise Refused("NUL is not allowed in URLs")
    segments = [s for s in decoded.split(b"/") if s]
    if any(s in (b".", b"..") for s in segments):
        raise Refused("dot segments are not allowed in URLs")
    trail = b"/" if decoded.endswith(b"/") and segments else b""
    return b"/" + b"/".join(segments) + trail


def resolve(cfg: OriginConfig, url_path: bytes) -> tuple[Route, tuple[bytes, ...]] | None:
    """The route and the cluster path (parsed) of a decoded URL path; None outside every
    route or for a directory (a trailing slash: there are no listings)."""
    route = cfg.route(url_path)
    if route is None or url_path.endswith(b"/"):
        return None
    target = route.to_cluster(url_path)
    try:
        return route, paths.parse(target)
    except InvalidPath as exc:
        status = 414 if len(target) > paths.PATH_MAX else 400
        raise Refused(str(exc), status) from None

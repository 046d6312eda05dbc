"""The one extension → Content-Type table, for every serving path.

nginx (the fast path and the legacy directory) gets it as config text from ``nginx_types()``;
the Python path calls ``content_type()``. Both give byte-for-byte the same header value — a
test runs every extension through a real nginx — so a failover between paths never changes a
response's type.

Choices, where there was one:
- JavaScript is ``text/javascript`` (RFC 9239 and the HTML standard; nginx 1.22's own
  ``mime.types`` still says ``application/javascript``).
- XML is ``application/xml`` (RFC 7303), icons ``image/x-icon`` (what browsers and nginx use),
  source maps (``.map``) ``application/json``.
- Text types get ``; charset=utf-8`` (nginx's ``charset utf-8`` + ``charset_types``): every
  ``text/*`` we list, JSON, XML, RSS, Atom, SVG, the web manifest. Binary types never do.
- Anything else is ``application/octet-stream`` (nginx's ``default_type``).

Which extension counts is nginx's rule for a request URI (its URI parser, which records a dot
only outside the run of dots that may start a path segment): the text after the last ``.`` of
the last path segment once its leading dots are set aside, compared case-insensitively
(ASCII). So ``.css`` and ``..css`` (dotfiles) have no extension, ``a.`` has an empty one, and
``.min.css`` is CSS. (nginx's other rule, ``ngx_http_set_exten``, used after an internal
redirect such as ``X-Accel-Redirect``, differs for ``..css``: it sees ``css``.)
"""

from __future__ import annotations

import functools

DEFAULT_TYPE = "application/octet-stream"
CHARSET = "utf-8"

#: extension (lower case) → MIME type, in the order the nginx ``types`` block lists them.
TYPES: dict[str, str] = {
    # images
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "jpe": "image/jpeg",
    "png": "image/png",
    "apng": "image/apng",
    "gif": "image/gif",
    "webp": "image/webp",
    "avif": "image/avif",
    "jxl": "image/jxl",
    "heic": "image/heic",
    "heif": "image/heif",
    "svg": "image/svg+xml",
    "ico": "image/x-icon",
    "bmp": "image/bmp",
    "tif": "image/tiff",
    "tiff": "image/tiff",
    # pages and the web platform
    "html": "text/html",
    "htm": "text/html",
    "css": "text/css",
    "js": "text/javascript",
    "mjs": "text/javascript",
    "json": "application/json",
    "map": "application/json",
    "webmanifest": "application/manifest+json",
    "xml": "application/xml",
    "rss": "application/rss+xml",
    "atom": "application/atom+xml",
    "txt": "text/plain",
    "md": "text/markdown",
    "csv": "text/csv",
    "vtt": "text/vtt",
    "wasm": "application/wasm",
    # documents and fonts
    "pdf": "application/pdf",
    "woff": "font/woff",
    "woff2": "font/woff2",
    "ttf": "font/ttf",
    "otf": "font/otf",
    "eot": "application/vnd.ms-fontobject",
    # audio and video
    "mp4": "video/mp4",
    "m4v": "video/mp4",
    "webm": "video/webm",
    "ogv": "video/ogg",
    "mov": "video/quicktime",
    "m3u8": "application/vnd.apple.mpegurl",
    "ts": "video/mp2t",
    "mp3": "audio/mpeg",
    "m4a": "audio/mp4",
    "ogg": "audio/ogg",
    "oga": "audio/ogg",
    "opus": "audio/ogg",
    "wav": "audio/wav",
    "flac": "audio/flac",
    # archives
    "zip": "application/zip",
    "gz": "application/gzip",
    "tar": "application/x-tar",
}

#: MIME types that are sent with ``; charset=utf-8``.
TEXT_TYPES: frozenset[str] = frozenset({
    "text/html",
    "text/css",
    "text/javascript",
    "text/plain",
    "text/markdown",
    "text/csv",
    "text/vtt",
    "application/json",
    "application/manifest+json",
    "application/xml",
    "application/rss+xml",
    "application/atom+xml",
    "image/svg+xml",
})


def _header_value(mime: str) -> str:
    return f"{mime}; charset={CHARSET}" if mime in TEXT_TYPES else mime


#: lower-case extension (bytes) → the full Content-Type value; built once.
_BY_EXTENSION: dict[bytes, str] = {
    ext.encode("ascii"): _header_value(mime) for ext, mime in TYPES.items()
}


def extension(name: bytes | str) -> bytes:
    """The extension nginx sees in a (decoded) URI path or file name, lower-cased; b"" if none.

    ``bytes.lower`` is ASCII-only, like nginx's: no Unicode case folding can turn a foreign
    extension into one of ours.
    """
    raw = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else name
    _, dot, ext = raw.rpartition(b"/")[2].lstrip(b".").rpartition(b".")
    return ext.lower() if dot else b""


def content_type(name: bytes | str) -> str:
    """The Content-Type value nginx sends for this path or file name (charset included)."""
    return _BY_EXTENSION.get(extension(name), DEFAULT_TYPE)


@functools.cache
def nginx_types() -> str:
    """nginx config text for the ``http`` context that makes nginx send ``content_type()``.

    ``text/html`` is left out of ``charset_types`` because nginx always includes it (listing
    it again draws a "duplicate MIME type" warning from ``nginx -t``).
    """
    by_type: dict[str, list[str]] = {}
    for ext, mime in TYPES.items():
        by_type.setdefault(mime, []).append(ext)
    lines = ["types {"]
    lines += [f"    {mime} {' '.join(exts)};" for mime, exts in by_type.items()]
    lines += [
        "}",
        f"default_type {DEFAULT_TYPE};",
        f"charset {CHARSET};",
        f"charset_types {' '.join(sorted(TEXT_TYPES - {'text/html'}))};",
    ]
    return "\n".join(lines) + "\n"

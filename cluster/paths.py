"""Cluster path validation: every path that enters the cluster passes through ``parse``.

Paths are bytes (names that are not UTF-8 must round-trip byte-exactly). A path is
``/``-separated components under the cluster root; a leading ``/`` is optional and means the
cluster root, never the host's. Nothing is normalised away: ``..`` and ``.`` are refused, not
resolved, so a path can never name something outside the tree it appears to name.
"""

from __future__ import annotations

import os

from cluster.errors import InvalidPath

#: Longest name (one component), in bytes — ext3/ext4's NAME_MAX.
NAME_MAX = 255
#: Longest path, in bytes, including the separators — Linux's PATH_MAX less the NUL.
PATH_MAX = 4095


def parse(path: bytes | str) -> tuple[bytes, ...]:
    """Split and validate a path; ``()`` is the root. Raises ``InvalidPath`` with the reason."""
    raw = os.fsencode(path)
    if b"\0" in raw:
        raise InvalidPath(f"path contains a NUL byte: {show(raw)}")
    if len(raw) > PATH_MAX:
        raise InvalidPath(f"path is {len(raw)} bytes long; the limit is {PATH_MAX}")
    body = raw[1:] if raw.startswith(b"/") else raw
    if body in (b"",):
        return ()
    if body.endswith(b"/"):
        body = body[:-1]
    parts = tuple(body.split(b"/"))
    for part in parts:
        if part == b"":
            raise InvalidPath(f"path has an empty component: {show(raw)}")
        if part in (b".", b".."):
            raise InvalidPath(f"path component {part.decode()!r} is not allowed: {show(raw)}")
        if len(part) > NAME_MAX:
            raise InvalidPath(f"name is {len(part)} bytes long; the limit is {NAME_MAX}")
    return parts


def join(parts: tuple[bytes, ...]) -> bytes:
    """The canonical form of a parsed path: ``/a/b``, and ``/`` for the root."""
    return b"/" + b"/".join(parts)


def show(path: bytes) -> str:
    """A printable form of a byte path for messages and logs (undecodable bytes as \\xNN)."""
    return path.decode("utf-8", "backslashreplace")

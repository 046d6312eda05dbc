"""``Range: bytes=…`` parsed exactly as nginx 1.22 parses it (``max_ranges 1``).

The origin serves the same files through nginx (``sendfile``) and through Python, and both must
answer every request the same way, so the rules here are nginx's
(``ngx_http_range_filter_module.c``, ``ngx_http_range_parse``), not RFC 9110's:

- The header is looked at only when it starts with ``bytes=`` (ASCII case-insensitive, no space
  before ``=``) and is at least 7 characters long; anything else (other units, ``bytes=``
  alone, ``bytes =0-1``) is ignored and the whole file is served with 200.
- Syntax errors make the *whole* header unsatisfiable (416), where RFC 9110 says to ignore it:
  ``bytes=x-y``, ``bytes=5``, ``bytes=0-10,`` (an empty list element), a tab, ``bytes=5-1``
  (first > last), and numbers that overflow a signed 64-bit ``off_t``
  (``bytes=0-99999999999999999999`` is 416, not "to the end").
- Only spaces are skipped between tokens; ``BYTES= 1 - 2`` is fine.
- A range starting past the end is dropped; when none is left the answer is 416 with
  ``Content-Range: bytes */size``. ``bytes=-0`` is such a range (it selects nothing).
- A range that starts at 0 but selects nothing — only possible for an empty file
  (``bytes=0-0``, ``bytes=-5``) — makes nginx ignore the header: 200 with an empty body.
- ``max_ranges 1``: a second satisfiable range makes nginx ignore the header (full 200, never a
  multipart answer), while unsatisfiable ranges around one good range are just dropped
  (``bytes=0-1,5000-`` on a 1000-byte file is 206 ``bytes 0-1/1000``).

``select_range`` is the nginx rule; ``parse_range`` is the master API's stricter view of it.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from cluster.errors import InvalidArgument

_MAX_OFF_T = (1 << 63) - 1
_CUTOFF, _CUTLIM = divmod(_MAX_OFF_T, 10)


class ByteRange(NamedTuple):
    """The one part of the file to send with 206: ``length`` bytes from ``offset``."""

    offset: int
    length: int

    def content_range(self, size: int) -> str:
        """The ``Content-Range`` value nginx sends with this part."""
        return f"bytes {self.offset}-{self.offset + self.length - 1}/{size}"


class NoRange(enum.Enum):
    """Why no part is served."""

    #: nginx ignores the header: 200 with the whole file (and ``Accept-Ranges: bytes``).
    IGNORE = "ignore"
    #: 416 with ``Content-Range: bytes */size``.
    UNSATISFIABLE = "unsatisfiable"


def _digit(c: str) -> bool:
    return "0" <= c <= "9"


def _number(s: str, p: int) -> tuple[int, int] | None:
    """The decimal number at ``s[p]`` and the position after it; None when there is no digit
    or it does not fit nginx's off_t (2^63 - 1)."""
    if not _digit(s[p]):
        return None
    n = 0
    while _digit(s[p]):
        d = ord(s[p]) - 48
        if n >= _CUTOFF and (n > _CUTOFF or d > _CUTLIM):
            return None
        n = n * 10 + d
        p += 1
    return n, p


def is_bytes_range(header: str) -> bool:
    """Whether nginx looks at this Range header at all (``bytes=`` and at least 7 chars)."""
    prefix = header[:6]
    return len(header) >= 7 and prefix.isascii() and prefix.lower() == "bytes="


def select_range(header: str | None, size: int) -> ByteRange | NoRange:
    """What nginx (``max_ranges 1``) serves for this Range header on a ``size``-byte file.

    A line-by-line port of ``ngx_http_range_parse`` so that odd inputs get nginx's odd answers;
    the value must already be stripped of surrounding spaces, as an HTTP parser does.
    """
    if header is None or not is_bytes_range(header):
        return NoRange.IGNORE
    s = header[6:] + "\0"  # nginx reads up to the NUL that ends every header value
    p = 0
    found: ByteRange | None = None
    while True:
        start = end = 0
        open_ended = suffix = False
        while s[p] == " ":
            p += 1
        if s[p] != "-":
            got = _number(s, p)
            if got is None:
                return NoRange.UNSATISFIABLE
            start, p = got
            while s[p] == " ":
                p += 1
            if s[p] != "-":
                return NoRange.UNSATISFIABLE
            p += 1
            while s[p] == " ":
                p += 1
            if s[p] in ",\0":
                end, open_ended = size, True
        else:
            suffix = True
            p += 1
        if not open_ended:
            got = _number(s, p)
            if got is None:
                return NoRange.UNSATISFIABLE
            end, p = got
            while s[p] == " ":
                p += 1
            if s[p] not in ",\0":
                return NoRange.UNSATISFIABLE
            if suffix:
                start = size - end if end < size else 0
                end = size - 1
            end = size if end >= size else end + 1  # from here on `end` is exclusive
        if start < end:
            if found is not None:  # a second part: max_ranges 1 declines the header
                return NoRange.IGNORE
            found = ByteRange(start, end - start)
        elif start == 0:  # a part at 0 that selects nothing (an empty file)
            return NoRange.IGNORE
        if s[p] != ",":
            break
        p += 1
    return NoRange.UNSATISFIABLE if found is None else found


def parse_range(header: str, size: int) -> ByteRange | None:
    """The master API's view of ``select_range``: the part to send with 206, or None for 416.

    The master API serves exactly one part or nothing: a header nginx would ignore (several
    ranges, another unit) is refused with ``InvalidArgument`` (400) rather than answered with
    the whole file, except on an empty file, where there is nothing to serve whatever was asked
    (416, which ``RemoteCluster.read`` takes as "no bytes").
    """
    r = select_range(header.strip(" "), size)
    if isinstance(r, ByteRange):
        return r
    if r is NoRange.UNSATISFIABLE or size == 0:
        return None
    raise InvalidArgument(f"unsupported Range header (one byte range only): {header!r}")

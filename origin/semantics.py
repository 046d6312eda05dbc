"""HTTP validators, conditionals and ranges for a static file, answered exactly as nginx does.

The origin serves the same file through nginx (``sendfile``) and through Python (streaming); a
cache or a browser must not be able to tell which one answered, so the Python path calls
``evaluate`` and gets the answer nginx 1.22 gives with ``etag on; if_modified_since before;
max_ranges 1; charset utf-8; server_tokens off;`` — status, validator and range headers, the
file bytes to send, or nginx's own error page. ``tests/validator_cases.py`` is the table of
cases; ``tests/test_semantics.py`` runs it against this module *and* against a real nginx.

Pure functions, no I/O. nginx's order (``ngx_http_not_modified_filter_module.c``, then
``ngx_http_range_filter_module.c``):

1. ``If-Unmodified-Since`` then ``If-Match`` → 412.
2. ``If-Modified-Since`` and ``If-None-Match`` → 304 only when *every one present* says "not
   modified"; ``If-None-Match`` uses the weak comparison (``W/`` ignored) and ``*``.
3. ``Range`` (see ``cluster.ranges``), guarded by ``If-Range``: a value ending in ``"`` must
   equal the ETag byte for byte, anything else is a date that must equal Last-Modified.

Where nginx differs from RFC 9110 (§13.2.2 and §14), and so do we:

- ``If-Modified-Since`` is not ignored when ``If-None-Match`` is present: a matching ETag with
  an older ``If-Modified-Since`` is 200, not 304.
- ``If-Unmodified-Since`` is not ignored when ``If-Match`` is present, and an invalid
  ``If-Unmodified-Since`` date fails (412) instead of being ignored.
- ``If-Modified-Since`` with ``if_modified_since before`` is 304 for any date at or after
  Last-Modified, including dates in the future; an invalid date means "modified" (200).
- ``If-Match: *`` / ``If-None-Match: *`` only when the value is exactly ``*``; ``*, "x"`` is a
  list that matches nothing.
- The header value must be exactly a list of entity-tags; nginx compares raw bytes, so an
  unquoted tag never matches and an empty ``If-Match`` fails (412).
- ``If-Range`` with a weak tag is compared to the strong ETag and never matches (200, as the
  RFC wants); an ``If-Range`` date must be *equal* to Last-Modified (the RFC's strong
  validator rule also needs the date to be a second older than the response's Date; nginx
  does not check that).
- Range syntax errors are 416, not ignored; several ranges are a full 200 (``max_ranges 1``).
- HTTP dates: the zone is ignored (``… 12:26:40 +0100`` is read as GMT), trailing text is
  ignored, the weekday is not checked, a date without a weekday is invalid; see
  ``parse_http_date``.
- 412 / 416 / 405 answers carry nginx's HTML error page (``text/html; charset=utf-8``), no
  ETag, Last-Modified or Accept-Ranges; 206 has no Accept-Ranges; 304 has no Content-Type
  and no Content-Length. Browsers whose User-Agent nginx takes for MSIE or Chrome get the page
  padded to 512+ bytes (``msie_padding on``), which defeats their "friendly" error pages.

Methods: GET and HEAD are served; any other method gets nginx's 405 page (the static module
refuses them before looking at any condition). Header values are expected as an HTTP parser
hands them over, stripped of surrounding spaces; nginx 1.22 itself strips spaces but not tabs
(``If-None-Match:<TAB>*`` matches nothing there), which Python servers strip before we see it.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cluster.ranges import ByteRange, NoRange, is_bytes_range, select_range

#: ``headers`` for ``evaluate``: a Mapping (any key case) or a getter called with the
#: lower-case header name that returns the value or None.
Headers = Mapping[str, str] | Callable[[str], str | None]

_ERROR_TITLES = {
    400: "400 Bad Request",
    403: "403 Forbidden",
    404: "404 Not Found",
    405: "405 Not Allowed",
    412: "412 Precondition Failed",
    414: "414 Request-URI Too Large",
    416: "416 Requested Range Not Satisfiable",
    500: "500 Internal Server Error",
    503: "503 Service Temporarily Unavailable",
}
#: the tail of nginx's built-in error pages with ``server_tokens off``.
_ERROR_TAIL = "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
_MSIE_PADDING = "<!-- a padding to disable MSIE and Chrome friendly error page -->\r\n" * 6
ERROR_CONTENT_TYPE = "text/html; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Outcome:
    """nginx's answer to one request for one file.

    ``offset``/``length``: the file bytes to send after the headers (``length`` is 0 for HEAD,
    304, 412, 416 and 405). ``body``: a generated body to send instead (nginx's error page;
    empty for HEAD). ``headers``: the ETag, Last-Modified, Accept-Ranges, Content-Range and
    Content-Length nginx sends, in nginx's order — plus the error page's Content-Type, which is
    not the file's. The caller adds the file's Content-Type when ``file_type`` and its
    Cache-Control when ``cacheable``.
    """

    status: int
    offset: int = 0
    length: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @property
    def file_type(self) -> bool:
        """The answer carries the file's Content-Type (200/206; nginx drops it on 304)."""
        return self.status in (200, 206)

    @property
    def cacheable(self) -> bool:
        """nginx's ``add_header``/``expires`` (without ``always``) apply: 200, 206 and 304."""
        return self.status in (200, 206, 304)


def etag(mtime_ns: int, size: int) -> str:
    """nginx's ETag, ``"<mtime seconds hex>-<size hex>"``: same bytes and mtime, same tag on
    every serving path, so a failover does not invalidate caches."""
    return f'"{mtime_ns // 1_000_000_000:x}-{size:x}"'


def http_date(seconds: int) -> str:
    """IMF-fixdate (``Sun, 13 Sep 2020 12:26:40 GMT``), the form nginx sends."""
    return email.utils.formatdate(seconds, usegmt=True)


_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_U64 = (1 << 64) - 1


def _two(s: str, p: int) -> int | None:
    a, b = s[p], s[p + 1]
    if not ("0" <= a <= "9" and "0" <= b <= "9"):
        return None
    return (ord(a) - 48) * 10 + ord(b) - 48


def _month(s: str, p: int) -> int | None:
    """nginx guesses the month from one to three letters (``Jxn`` is June)."""
    c = s[p]
    if c == "J":
        return 0 if s[p + 1] == "a" else 5 if s[p + 2] == "n" else 6
    if c == "M":
        return 2 if s[p + 2] == "r" else 4
    if c == "A":
        return 3 if s[p + 1] == "p" else 7
    return {"F": 1, "S": 8, "O": 9, "N": 10, "D": 11}.get(c)


def parse_http_date(value: str) -> int | None:
    """Seconds since the epoch for an HTTP date, read exactly as nginx's
    ``ngx_parse_http_time`` reads it; None where nginx fails.

    Not ``email.utils``: the stdlib parser reads a different language. It honours zones
    (``+0100``) that nginx ignores, and accepts dates without a weekday and lower-case month
    names that nginx rejects; each would make the Python path answer 304 where nginx answers
    200 or the reverse (cases ``ims-zone-ignored``, ``ims-no-weekday``, ``ims-lowercase-month``
    in ``tests/validator_cases.py``). The three forms of RFC 9110 §5.6.7 are accepted (IMF-fixdate,
    RFC 850 with a two-digit year < 70 → 20xx, asctime), plus nginx's leniencies: the weekday
    and anything after the time (or the year, for asctime) are not checked.
    """
    n = len(value)
    s = value + "\0" * 24  # nginx may read past the value, up to its NUL terminator
    p, isoc = 0, False
    while p < n:
        if s[p] == ",":
            break
        if s[p] == " ":
            isoc = True
            break
        p += 1
    p += 1
    while p < n and s[p] == " ":
        p += 1
    if n - p < 18:
        return None
    rfc822 = False
    day = 0
    if not isoc:
        if (d := _two(s, p)) is None:
            return None
        day, p = d, p + 2
        if s[p] == " ":
            if n - p < 18:
                return None
            rfc822 = True
        elif s[p] != "-":
            return None
        p += 1
    if (month := _month(s, p)) is None:
        return None
    p += 3
    if (rfc822 and s[p] != " ") or (not isoc and not rfc822 and s[p] != "-"):
        return None
    p += 1
    year = 0
    if rfc822:
        hi, lo = _two(s, p), _two(s, p + 2)
        if hi is None or lo is None:
            return None
        year, p = hi * 100 + lo, p + 4
    elif not isoc:
        if (yy := _two(s, p)) is None:
            return None
        year, p = yy + (2000 if yy < 70 else 1900), p + 2
    else:
        if s[p] == " ":
            p += 1
        if not "0" <= s[p] <= "9":
            return None
        day, p = ord(s[p]) - 48, p + 1
        if s[p] != " ":
            if not "0" <= s[p] <= "9":
                return None
            day, p = day * 10 + ord(s[p]) - 48, p + 1
        if n - p < 14:
            return None
    if s[p] != " ":
        return None
    p += 1
    hour = _two(s, p)
    if hour is None or s[p + 2] != ":":
        return None
    minute = _two(s, p + 3)
    if minute is None or s[p + 5] != ":":
        return None
    sec = _two(s, p + 6)
    if sec is None:
        return None
    p += 8
    if isoc:
        if s[p] != " ":
            return None
        hi, lo = _two(s, p + 1), _two(s, p + 3)
        if hi is None or lo is None:
            return None
        year = hi * 100 + lo
    if hour > 23 or minute > 59 or sec > 59:
        return None
    if day == 29 and month == 1:
        if year % 4 or (year % 100 == 0 and year % 400):
            return None
    elif day > _MONTH_DAYS[month]:
        return None
    # Gauss' formula with the year starting on March 1, in nginx's unsigned 64-bit arithmetic
    # (so that even "00 Jan 0000" gives nginx's number).
    month -= 1
    if month <= 0:
        month, year = month + 12, year - 1
    y = year & _U64
    days = (365 * y + y // 4 - y // 100 + y // 400 + 367 * month // 12 - 30 + day - 1
            - 719527 + 31 + 28) & _U64
    t = (days * 86400 + hour * 3600 + minute * 60 + sec) & _U64
    return t - (1 << 64) if t >> 63 else t


def _date_or_error(value: str) -> int:
    """nginx compares the parser's result directly, with -1 (NGX_ERROR) for a bad date."""
    t = parse_http_date(value)
    return -1 if t is None else t


def etag_listed(value: str, tag: str, weak: bool) -> bool:
    """Whether an If-Match (strong) / If-None-Match (weak) value names ``tag``
    (``ngx_http_test_if_match``: raw byte comparison of each comma-separated entry, spaces
    and tabs around them skipped; ``*`` only as the whole value)."""
    if value == "*":
        return True
    if weak and len(tag) > 2 and tag.startswith("W/"):
        tag = tag[2:]
    n, p, k = len(value), 0, len(tag)
    while p < n:
        if weak and n - p > 2 and value.startswith("W/", p):
            p += 2
        if k > n - p:
            return False
        if value.startswith(tag, p):
            p += k
            while p < n and value[p] in " \t":
                p += 1
            if p == n or value[p] == ",":
                return True
        while p < n and value[p] != ",":
            p += 1
        while p < n and value[p] in " \t,":
            p += 1
    return False


def _getter(headers: Headers) -> Callable[[str], str | None]:
    """A lookup by lower-case name. A Mapping is lower-cased once (the first of two spellings
    wins, as nginx keeps the first Range); a callable is trusted to be case-insensitive."""
    if not isinstance(headers, Mapping):
        return headers
    lowered: dict[str, str] = {}
    for k, v in headers.items():
        lowered.setdefault(k.lower(), v)
    return lowered.get


def _padded_for(user_agent: str | None) -> bool:
    """nginx's MSIE / Chrome detection (``ngx_http_process_user_agent``), which decides the
    error page padding (``msie_padding on``)."""
    if user_agent is None or "Opera" in user_agent:
        return False
    i = user_agent.find("MSIE ")
    if i >= 0 and i + 7 < len(user_agent):
        return True
    return "Gecko/" not in user_agent and "Chrome/" in user_agent


def error_page(status: int, user_agent: str | None = None) -> bytes:
    """nginx's built-in HTML page for 405/412/416 (``server_tokens off``)."""
    title = _ERROR_TITLES[status]
    page = (f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
            f"<center><h1>{title}</h1></center>\r\n{_ERROR_TAIL}")
    if _padded_for(user_agent):
        page += _MSIE_PADDING
    return page.encode("ascii")


def _error(status: int, head: bool, get: Callable[[str], str | None],
           extra: list[tuple[str, str]]) -> Outcome:
    page = error_page(status, get("user-agent"))
    headers = [("Content-Type", ERROR_CONTENT_TYPE), ("Content-Length", str(len(page)))]
    return Outcome(status, headers=headers + extra, body=b"" if head else page)


def _not_modified(get: Callable[[str], str | None], tag: str, mtime_s: int) -> bool:
    """nginx's 304 rule: at least one of IMS / INM present, and every one present agrees."""
    ims, inm = get("if-modified-since"), get("if-none-match")
    if ims is None and inm is None:
        return False
    # `if_modified_since before`: a date equal to or later than Last-Modified is "not modified"
    if ims is not None and _date_or_error(ims) < mtime_s:
        return False
    return inm is None or etag_listed(inm, tag, weak=True)


def _if_range_holds(value: str | None, tag: str, mtime_s: int) -> bool:
    if value is None:
        return True
    if len(value) >= 2 and value.endswith('"'):
        return value == tag
    return _date_or_error(value) == mtime_s


def evaluate(method: str, headers: Headers, etag: str, mtime_s: int, size: int) -> Outcome:
    """nginx's answer to ``method`` with these request headers, for a file with this ETag,
    Last-Modified (whole seconds) and size. See the module docstring for the rules."""
    get = _getter(headers)
    head = method == "HEAD"
    if method not in ("GET", "HEAD"):
        return _error(405, head, get, [])
    ius, im = get("if-unmodified-since"), get("if-match")
    if (ius is not None and not _date_or_error(ius) >= mtime_s) or (
        im is not None and not etag_listed(im, etag, weak=False)
    ):
        return _error(412, head, get, [])
    last_modified = http_date(mtime_s)
    if _not_modified(get, etag, mtime_s):
        return Outcome(304, headers=[("Last-Modified", last_modified), ("ETag", etag)])
    rng = get("range")
    chosen: ByteRange | NoRange = NoRange.IGNORE
    if rng is not None and is_bytes_range(rng) and _if_range_holds(get("if-range"), etag, mtime_s):
        chosen = select_range(rng, size)
    if chosen is NoRange.UNSATISFIABLE:
        return _error(416, head, get, [("Content-Range", f"bytes */{size}")])
    if chosen is NoRange.IGNORE:
        return Outcome(200, 0, 0 if head else size, [
            ("Content-Length", str(size)),
            ("Last-Modified", last_modified),
            ("ETag", etag),
            ("Accept-Ranges", "bytes"),
        ])
    return Outcome(206, chosen.offset, 0 if head else chosen.length, [
        ("Content-Length", str(chosen.length)),
        ("Last-Modified", last_modified),
        ("ETag", etag),
        ("Content-Range", chosen.content_range(size)),
    ])

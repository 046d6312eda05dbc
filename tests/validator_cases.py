"""What nginx 1.22 answers to conditional and range requests for a static file, as data.

Every serving path of the origin (the Python origin, the nginx fast path, the legacy directory)
must give these answers; ``tests/test_semantics.py`` proves the table against a real nginx
(``etag on; if_modified_since before; max_ranges 1; charset utf-8; server_tokens off;``) and
against ``origin.semantics.evaluate``. To run it against another path: put ``FILES`` in place
(content and mtime), send each case's ``method`` and ``headers`` for ``case.file``, and call
``check_response``.

The expected values are written out here, not computed by the code under test: the ETag and
date literals below are what nginx sends for ``MTIME_NS`` and the sizes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: the files every case refers to: name → (content, mtime in ns). The mtime has a fraction of
#: a second, which nginx (and we) drop.
MTIME_NS = 1_600_000_000_987_654_321
DATA = bytes((i * 31 + 7) % 256 for i in range(1000))
FILES: dict[str, tuple[bytes, int]] = {
    "data.bin": (DATA, MTIME_NS),
    "empty.bin": (b"", MTIME_NS),
}
ETAGS = {"data.bin": '"5f5e1000-3e8"', "empty.bin": '"5f5e1000-0"'}
ETAG = ETAGS["data.bin"]
LAST_MODIFIED = "Sun, 13 Sep 2020 12:26:40 GMT"  # 1600000000
ONE_SECOND_EARLIER = "Sun, 13 Sep 2020 12:26:39 GMT"
LATER = "Sun, 13 Sep 2020 12:26:41 GMT"

CHROME = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/120.0.0.0 Safari/537.36")
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
MSIE = "Mozilla/4.0 (compatible; MSIE 8.0; Windows NT 6.1)"
OPERA = "Opera/9.80 (X11; Linux x86_64) Presto/2.12.388 Version/12.16 Chrome/1"

#: the headers every case pins down (a None expectation means "must be absent").
CHECKED = ("ETag", "Last-Modified", "Accept-Ranges", "Content-Range", "Content-Length")


@dataclass(frozen=True)
class Case:
    """One request and nginx's answer.

    ``body``: the file slice ``(offset, length)`` the answer carries, literal bytes (an error
    page), or None for no body at all (HEAD, 304).
    """

    name: str
    method: str
    headers: dict[str, str]
    status: int
    expect: dict[str, str | None]
    body: tuple[int, int] | bytes | None
    file: str = "data.bin"
    why: str = field(default="", compare=False)


def _size(file: str) -> int:
    return len(FILES[file][0])


def error_page(status: int, padded: bool = False) -> bytes:
    """nginx's built-in page (server_tokens off), padded for MSIE and Chrome."""
    title = {405: "405 Not Allowed", 412: "412 Precondition Failed",
             416: "416 Requested Range Not Satisfiable"}[status]
    page = (f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
            f"<center><h1>{title}</h1></center>\r\n"
            "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
    if padded:
        page += "<!-- a padding to disable MSIE and Chrome friendly error page -->\r\n" * 6
    return page.encode()


def full(name: str, headers: dict[str, str] | None = None, *, method: str = "GET",
         file: str = "data.bin", why: str = "") -> Case:
    """200 with the whole file."""
    size = _size(file)
    return Case(name, method, headers or {}, 200, {
        "ETag": ETAGS[file], "Last-Modified": LAST_MODIFIED, "Accept-Ranges": "bytes",
        "Content-Range": None, "Content-Length": str(size),
    }, None if method == "HEAD" else (0, size), file, why)


def part(name: str, headers: dict[str, str], offset: int, length: int, *,
         method: str = "GET", why: str = "") -> Case:
    """206 with one part of data.bin (nginx sends no Accept-Ranges with it)."""
    return Case(name, method, headers, 206, {
        "ETag": ETAG, "Last-Modified": LAST_MODIFIED, "Accept-Ranges": None,
        "Content-Range": f"bytes {offset}-{offset + length - 1}/{_size('data.bin')}",
        "Content-Length": str(length),
    }, None if method == "HEAD" else (offset, length), "data.bin", why)


def not_modified(name: str, headers: dict[str, str], *, method: str = "GET",
                 why: str = "") -> Case:
    """304: the validators, nothing else (no Content-Type, no Content-Length)."""
    return Case(name, method, headers, 304, {
        "ETag": ETAG, "Last-Modified": LAST_MODIFIED, "Accept-Ranges": None,
        "Content-Range": None, "Content-Length": None, "Content-Type": None,
    }, None, "data.bin", why)


def error(name: str, status: int, headers: dict[str, str] | None = None, *,
          method: str = "GET", file: str = "data.bin", padded: bool = False,
          why: str = "") -> Case:
    """405/412/416: nginx's HTML page, without the file's validators."""
    page = error_page(status, padded)
    return Case(name, method, headers or {}, status, {
        "ETag": None, "Last-Modified": None, "Accept-Ranges": None,
        "Content-Range": f"bytes */{_size(file)}" if status == 416 else None,
        "Content-Length": str(len(page)), "Content-Type": "text/html; charset=utf-8",
    }, None if method == "HEAD" else page, file, why)


def _r(spec: str, **more: str) -> dict[str, str]:
    return {"Range": spec, **more}


CASES: list[Case] = [
    # --- plain requests --------------------------------------------------------------------
    full("get"),
    full("head", method="HEAD"),
    full("empty-file", file="empty.bin"),
    # --- If-None-Match (weak comparison) ------------------------------------------------------
    not_modified("inm-match", {"If-None-Match": ETAG}),
    not_modified("inm-match-head", {"If-None-Match": ETAG}, method="HEAD"),
    not_modified("inm-weak-prefix", {"If-None-Match": "W/" + ETAG}),
    not_modified("inm-star", {"If-None-Match": "*"}),
    full("inm-star-in-list", {"If-None-Match": '*, "x"'},
         why="`*` counts only as the whole value"),
    not_modified("inm-list", {"If-None-Match": f'"x", {ETAG}'}),
    not_modified("inm-list-spaces", {"If-None-Match": f'"x" ,  W/{ETAG}'}),
    full("inm-mismatch", {"If-None-Match": '"x"'}),
    full("inm-unquoted", {"If-None-Match": "5f5e1000-3e8"}),
    full("inm-other-size", {"If-None-Match": '"5f5e1000-3e9"'}),
    full("inm-trailing-garbage", {"If-None-Match": ETAG + "x"}),
    full("inm-empty", {"If-None-Match": ""}),
    # --- If-Modified-Since (`if_modified_since before`) -------------------------------------
    not_modified("ims-equal", {"If-Modified-Since": LAST_MODIFIED}),
    not_modified("ims-later", {"If-Modified-Since": LATER}),
    not_modified("ims-future", {"If-Modified-Since": "Fri, 13 Sep 2030 12:26:40 GMT"},
                 why="nginx does not reject dates later than its clock"),
    full("ims-earlier", {"If-Modified-Since": ONE_SECOND_EARLIER}),
    not_modified("ims-rfc850", {"If-Modified-Since": "Sunday, 13-Sep-20 12:26:40 GMT"}),
    not_modified("ims-asctime", {"If-Modified-Since": "Sun Sep 13 12:26:40 2020"}),
    not_modified("ims-asctime-one-digit-day", {"If-Modified-Since": "Sat Oct  3 12:26:40 2020"}),
    full("ims-invalid", {"If-Modified-Since": "garbage"}),
    not_modified("ims-zone-ignored", {"If-Modified-Since": "Sun, 13 Sep 2020 12:26:40 +0100"},
                 why="nginx reads the time as GMT whatever the zone says"),
    not_modified("ims-no-zone", {"If-Modified-Since": "Sun, 13 Sep 2020 12:26:40"}),
    not_modified("ims-trailing-garbage", {"If-Modified-Since": LAST_MODIFIED + "xx"}),
    not_modified("ims-weekday-unchecked", {"If-Modified-Since": "Xyz, 13 Sep 2020 12:26:40 GMT"}),
    full("ims-no-weekday", {"If-Modified-Since": "13 Sep 2020 12:26:40 GMT"},
         why="invalid for nginx (email.utils would accept it)"),
    full("ims-lowercase-month", {"If-Modified-Since": "Sun, 13 sep 2020 12:26:40 GMT"}),
    full("ims-feb-29-not-leap", {"If-Modified-Since": "Mon, 29 Feb 2021 00:00:00 GMT"}),
    full("ims-second-60", {"If-Modified-Since": "Sun, 13 Sep 2020 12:26:60 GMT"}),
    # --- both 304 conditions: nginx needs every one present to agree -------------------------
    not_modified("inm-and-ims-match", {"If-None-Match": ETAG, "If-Modified-Since": LAST_MODIFIED}),
    full("inm-match-ims-earlier",
         {"If-None-Match": ETAG, "If-Modified-Since": ONE_SECOND_EARLIER},
         why="RFC 9110 ignores If-Modified-Since next to If-None-Match (304); nginx does not"),
    full("inm-mismatch-ims-equal", {"If-None-Match": '"x"', "If-Modified-Since": LAST_MODIFIED}),
    not_modified("inm-match-with-range", _r("bytes=0-9", **{"If-None-Match": ETAG})),
    not_modified("ims-equal-with-range", _r("bytes=0-9", **{"If-Modified-Since": LAST_MODIFIED})),
    # --- If-Match / If-Unmodified-Since -> 412 ----------------------------------------------
    full("im-match", {"If-Match": ETAG}),
    full("im-star", {"If-Match": "*"}),
    full("im-list", {"If-Match": f'"x", {ETAG}'}),
    error("im-weak", 412, {"If-Match": "W/" + ETAG}, why="If-Match compares strongly"),
    error("im-mismatch", 412, {"If-Match": '"x"'}),
    error("im-empty", 412, {"If-Match": ""}),
    error("im-mismatch-head", 412, {"If-Match": '"x"'}, method="HEAD"),
    error("im-mismatch-inm-match", 412, {"If-Match": '"x"', "If-None-Match": ETAG}),
    error("im-mismatch-with-range", 412, _r("bytes=0-9", **{"If-Match": '"x"'})),
    full("ius-equal", {"If-Unmodified-Since": LAST_MODIFIED}),
    full("ius-later", {"If-Unmodified-Since": LATER}),
    error("ius-earlier", 412, {"If-Unmodified-Since": ONE_SECOND_EARLIER}),
    error("ius-invalid", 412, {"If-Unmodified-Since": "garbage"},
          why="RFC 9110 ignores an invalid date; nginx fails the condition"),
    error("im-match-ius-earlier", 412,
          {"If-Match": ETAG, "If-Unmodified-Since": ONE_SECOND_EARLIER},
          why="RFC 9110 ignores If-Unmodified-Since next to If-Match; nginx does not"),
    # --- nginx's error page padding for MSIE and Chrome ---------------------------------------
    error("error-page-chrome", 412, {"If-Match": '"x"', "User-Agent": CHROME}, padded=True),
    error("error-page-msie", 412, {"If-Match": '"x"', "User-Agent": MSIE}, padded=True),
    error("error-page-firefox", 412, {"If-Match": '"x"', "User-Agent": FIREFOX}),
    error("error-page-opera", 412, {"If-Match": '"x"', "User-Agent": OPERA}),
    error("error-page-chrome-416-head", 416, _r("bytes=5000-", **{"User-Agent": CHROME}),
          method="HEAD", padded=True),
    # --- Range ------------------------------------------------------------------------------
    part("range-first-byte", _r("bytes=0-0"), 0, 1),
    part("range-closed", _r("bytes=100-199"), 100, 100),
    part("range-suffix", _r("bytes=-500"), 500, 500),
    part("range-open", _r("bytes=500-"), 500, 500),
    part("range-whole", _r("bytes=0-"), 0, 1000),
    part("range-suffix-longer-than-file", _r("bytes=-5000"), 0, 1000),
    part("range-last-beyond-end", _r("bytes=990-2000"), 990, 10),
    part("range-last-byte", _r("bytes=999-999"), 999, 1),
    part("range-spaces", _r("bytes= 1 - 2"), 1, 2),
    part("range-uppercase-unit", _r("BYTES=1-2"), 1, 2),
    part("range-max-off-t", _r("bytes=0-9223372036854775807"), 0, 1000),
    part("range-head", _r("bytes=0-9"), 0, 10, method="HEAD"),
    error("range-first-at-end", 416, _r("bytes=1000-")),
    error("range-first-beyond-end", 416, _r("bytes=5000-6000")),
    error("range-suffix-zero", 416, _r("bytes=-0"), why="a range of nothing: unsatisfiable"),
    error("range-reversed", 416, _r("bytes=500-100"), why="RFC 9110: invalid, so ignored (200)"),
    error("range-malformed", 416, _r("bytes=x-y"), why="RFC 9110: ignored (200)"),
    error("range-no-dash", 416, _r("bytes=5")),
    error("range-trailing-comma", 416, _r("bytes=0-10,"), why="RFC 9110 allows empty elements"),
    error("range-tab", 416, _r("bytes=\t1-2"), why="only spaces are skipped"),
    error("range-overflow", 416, _r("bytes=0-9223372036854775808"),
          why="RFC 9110: a last-pos past the end means the end (206)"),
    error("range-huge", 416, _r("bytes=0-99999999999999999999")),
    error("range-head-unsatisfiable", 416, _r("bytes=2000-"), method="HEAD"),
    full("range-space-before-equals", _r("bytes =1-2")),
    full("range-empty-set", _r("bytes=")),
    full("range-other-unit", _r("items=0-5")),
    full("range-two", _r("bytes=0-1,5-6"), why="max_ranges 1: never multipart"),
    full("range-overlapping", _r("bytes=0-1,0-1")),
    part("range-two-one-unsatisfiable", _r("bytes=0-1,5000-"), 0, 2,
         why="unsatisfiable parts are dropped before max_ranges counts"),
    part("range-unsatisfiable-then-good", _r("bytes=5000-, 0-1"), 0, 2),
    # --- If-Range ---------------------------------------------------------------------------
    part("if-range-etag", _r("bytes=0-9", **{"If-Range": ETAG}), 0, 10),
    full("if-range-etag-mismatch", _r("bytes=0-9", **{"If-Range": '"x"'})),
    full("if-range-weak-etag", _r("bytes=0-9", **{"If-Range": "W/" + ETAG})),
    part("if-range-date", _r("bytes=0-9", **{"If-Range": LAST_MODIFIED}), 0, 10),
    part("if-range-rfc850-date", _r("bytes=0-9", **{"If-Range": "Sunday, 13-Sep-20 12:26:40 GMT"}),
         0, 10),
    full("if-range-date-later", _r("bytes=0-9", **{"If-Range": LATER}),
         why="the date must be exactly Last-Modified"),
    full("if-range-date-invalid", _r("bytes=0-9", **{"If-Range": "garbage"})),
    full("if-range-mismatch-malformed-range", _r("bytes=x", **{"If-Range": '"x"'}),
         why="If-Range is looked at before the Range syntax"),
    error("if-range-match-malformed-range", 416, _r("bytes=x", **{"If-Range": ETAG})),
    # --- an empty file ------------------------------------------------------------------------
    full("empty-range-first-byte", _r("bytes=0-0"), file="empty.bin",
         why="a part at 0 that selects nothing makes nginx ignore Range"),
    full("empty-range-suffix", _r("bytes=-5"), file="empty.bin"),
    full("empty-range-suffix-zero", _r("bytes=-0"), file="empty.bin"),
    error("empty-range-open", 416, _r("bytes=5-"), file="empty.bin"),
    # --- other methods --------------------------------------------------------------------------
    error("post", 405, method="POST"),
    error("delete", 405, method="DELETE"),
    error("options-with-condition", 405, {"If-None-Match": "*"}, method="OPTIONS"),
]


def expected_body(case: Case, file_bytes: bytes) -> bytes:
    """The exact body the case's answer carries."""
    if case.body is None:
        return b""
    if isinstance(case.body, bytes):
        return case.body
    offset, length = case.body
    return file_bytes[offset : offset + length]


def check_response(case: Case, status: int,
                   headers: Mapping[str, str] | Iterable[tuple[str, str]],
                   body: bytes, file_bytes: bytes) -> None:
    """Raise AssertionError, naming the case and every difference, unless the response is the
    one nginx gives. ``headers`` may be a Mapping or (name, value) pairs; each checked header
    must appear exactly once."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    got: dict[str, list[str]] = {}
    for k, v in pairs:
        got.setdefault(k.lower(), []).append(v)
    problems = []
    if status != case.status:
        problems.append(f"status {status}, expected {case.status}")
    for name, want in case.expect.items():
        values = got.get(name.lower(), [])
        if want is None and values:
            problems.append(f"{name}: {values!r}, expected no such header")
        elif want is not None and values != [want]:
            problems.append(f"{name}: {values or 'absent'!r}, expected {want!r}")
    want_body = expected_body(case, file_bytes)
    if body != want_body:
        problems.append(f"body: {len(body)} bytes {body[:48]!r}…, "
                        f"expected {len(want_body)} bytes {want_body[:48]!r}…")
    if problems:
        why = f" ({case.why})" if case.why else ""
        raise AssertionError(
            f"case {case.name!r}{why}: {case.method} /{case.file} {case.headers}\n  "
            + "\n  ".join(problems)
        )

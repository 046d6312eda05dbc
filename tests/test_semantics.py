"""``origin.semantics`` and ``origin.mime`` give nginx's answers — proven twice: the case table
(``validator_cases``) through the pure functions, and the same table through a real nginx on
127.0.0.1 (skipped, with the reason, when nginx is not installed)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from validator_cases import CASES, ETAG, FILES, LAST_MODIFIED, Case, check_response

from cluster.errors import InvalidArgument
from cluster.ranges import ByteRange, NoRange, parse_range, select_range
from origin.mime import TYPES, content_type, nginx_types
from origin.semantics import etag, evaluate, http_date, parse_http_date

NGINX = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")

#: names whose extension handling is nginx's own rule, beyond one file per table entry.
ODD_NAMES = ["UPPER.JPG", "Mixed.Css", "archive.tar.gz", "no-extension", "dot.", ".css",
             "..css", "...css", ".min.css", "a..css", "a.b.unknownext", "dir.jpg.d/file",
             "dir.d/.hidden.png"]


# --- the pure path -------------------------------------------------------------------------


def _pure(case: Case) -> tuple[int, list[tuple[str, str]], bytes]:
    data, mtime_ns = FILES[case.file]
    out = evaluate(case.method, case.headers, etag(mtime_ns, len(data)),
                   mtime_ns // 1_000_000_000, len(data))
    body = out.body or data[out.offset : out.offset + out.length]
    return out.status, out.headers, body


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_evaluate_gives_nginx_answer(case: Case) -> None:
    status, headers, body = _pure(case)
    check_response(case, status, headers, body, FILES[case.file][0])


def test_the_table_is_broad() -> None:
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)
    assert {c.status for c in CASES} == {200, 206, 304, 405, 412, 416}


def test_validators() -> None:
    assert etag(1_600_000_000_987_654_321, 1000) == ETAG
    assert http_date(1_600_000_000) == LAST_MODIFIED
    assert parse_http_date(LAST_MODIFIED) == 1_600_000_000
    assert parse_http_date("Sunday, 13-Sep-20 12:26:40 GMT") == 1_600_000_000
    assert parse_http_date("Sun Sep 13 12:26:40 2020") == 1_600_000_000
    assert parse_http_date("Tue, 29 Feb 2000 00:00:00 GMT") == 951_782_400
    assert parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT") == 0
    for bad in ["", "garbage", "13 Sep 2020 12:26:40 GMT", "Sun, 13 Sep 2020 24:00:00 GMT",
                "Mon, 29 Feb 2021 00:00:00 GMT", "Sun, 31 Sep 2020 00:00:00 GMT"]:
        assert parse_http_date(bad) is None, bad


def test_headers_any_case_or_a_getter() -> None:
    """A Mapping is looked up case-insensitively; a callable gets the lower-case name."""
    want = evaluate("GET", {"range": "bytes=0-9"}, ETAG, 1_600_000_000, 1000)
    assert want.status == 206 and (want.offset, want.length) == (0, 10)
    assert evaluate("GET", {"RANGE": "bytes=0-9"}, ETAG, 1_600_000_000, 1000) == want
    got = evaluate("GET", {"range": "bytes=0-9"}.get, ETAG, 1_600_000_000, 1000)
    assert got == want
    head = evaluate("HEAD", {"Range": "bytes=0-9"}, ETAG, 1_600_000_000, 1000)
    assert head.length == 0 and ("Content-Length", "10") in head.headers
    assert (want.file_type, want.cacheable) == (True, True)
    assert evaluate("GET", {"If-None-Match": "*"}, ETAG, 0, 1).file_type is False


def test_select_range() -> None:
    assert select_range("bytes=0-0", 10) == ByteRange(0, 1)
    assert select_range("bytes=-3", 10) == ByteRange(7, 3)
    assert ByteRange(7, 3).content_range(10) == "bytes 7-9/10"
    assert select_range("bytes=10-", 10) is NoRange.UNSATISFIABLE
    assert select_range("bytes=0-1,3-4", 10) is NoRange.IGNORE
    assert select_range(None, 10) is NoRange.IGNORE


def test_master_api_range_view() -> None:
    """The master API serves one part or nothing; ignorable headers are refused (400)."""
    assert parse_range("bytes=-10", 100) == (90, 10)
    assert parse_range("bytes=x-y", 100) is None
    assert parse_range("bytes=0-4", 0) is None  # an empty file has nothing to serve
    with pytest.raises(InvalidArgument):
        parse_range("bytes=0-1,5-6", 100)
    with pytest.raises(InvalidArgument):
        parse_range("items=0-1", 100)


def test_content_type_rules() -> None:
    assert content_type("a/b/photo.JPG") == "image/jpeg"
    assert content_type(b"/news/index.html") == "text/html; charset=utf-8"
    assert content_type("logo.svg") == "image/svg+xml; charset=utf-8"
    assert content_type("archive.tar.gz") == "application/gzip"
    assert content_type(".css") == "application/octet-stream"  # a dotfile
    assert content_type("dir.jpg/README") == "application/octet-stream"
    assert content_type("x.\u212a") == "application/octet-stream"  # no Unicode case folding


# --- the same table against a real nginx ---------------------------------------------------


@dataclass
class Nginx:
    url: str
    root: Path
    error_log: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp: Path, port: int) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    temps = "\n".join(f"    {kind}_temp_path {tmp}/temp/{kind};"
                      for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""daemon off;
master_process off;
worker_processes 1;
{user}error_log {tmp}/error.log;
pid {tmp}/nginx.pid;
events {{}}
http {{
    access_log off;
{temps}
{nginx_types()}
    etag on;
    if_modified_since before;
    max_ranges 1;
    sendfile on;
    server_tokens off;
    server {{
        listen 127.0.0.1:{port};
        root {tmp}/www;
    }}
}}
"""


def _wait_for_port(proc: subprocess.Popen[bytes], port: int, error_log: Path) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = error_log.read_text() if error_log.exists() else ""
            raise RuntimeError(f"nginx exited with {proc.returncode}: {log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nginx did not listen on 127.0.0.1:{port} within 5 s")


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """A real nginx with the origin's settings, serving FILES and one file per extension."""
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx): the table is not proven "
                    "against the real thing")
    tmp = tmp_path_factory.mktemp("nginx")
    www = tmp / "www"
    (www / "types").mkdir(parents=True)
    (tmp / "temp").mkdir()
    for name, (data, mtime_ns) in FILES.items():
        (www / name).write_bytes(data)
        os.utime(www / name, ns=(mtime_ns, mtime_ns))
    for name in [f"file.{ext}" for ext in TYPES] + ODD_NAMES:
        (www / "types" / name).parent.mkdir(parents=True, exist_ok=True)
        (www / "types" / name).write_bytes(b"x")
    port = _free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(_config(tmp, port))
    error_log = tmp / "error.log"
    proc = subprocess.Popen(
        [NGINX, "-p", str(tmp), "-e", str(error_log), "-c", str(conf)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        _wait_for_port(proc, port, error_log)
        yield Nginx(f"http://127.0.0.1:{port}", www, error_log)
    finally:
        proc.terminate()  # by its PID: only the nginx this fixture started
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.fixture(scope="module")
def client(nginx: Nginx) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=nginx.url, timeout=5) as c:
        yield c


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_nginx_gives_the_table_answer(client: httpx.Client, case: Case) -> None:
    r = client.request(case.method, f"/{case.file}", headers=case.headers)
    check_response(case, r.status_code, r.headers.multi_items(), r.content,
                   FILES[case.file][0])


def test_nginx_content_types_match(nginx: Nginx, client: httpx.Client) -> None:
    names = [f"file.{ext}" for ext in TYPES] + ODD_NAMES
    wrong = {}
    for name in names:
        r = client.get(f"/types/{name}")
        assert r.status_code == 200, name
        if r.headers.get("content-type") != content_type(name):
            wrong[name] = (r.headers.get("content-type"), content_type(name))
    assert not wrong, f"nginx vs content_type(): {wrong}"


def test_nginx_config_draws_no_warning(nginx: Nginx) -> None:
    log = nginx.error_log.read_text() if nginx.error_log.exists() else ""
    assert "[warn]" not in log and "[emerg]" not in log, log


def test_a_plain_url_decodes_to_itself_as_the_full_decoder_would_have() -> None:
    """``urls.decode`` returns a URL with nothing to decode or merge as it is; the full path
    through the decoder (forced here by a leading '//', which it merges) agrees on every one of
    a few thousand random plain URLs, and every URL it must refuse still reaches the checks."""
    import random

    from origin.errors import Refused
    from origin.urls import decode

    rng = random.Random(5)
    alphabet = b"abcXYZ019-_.~/+=,;@!$&'()*"
    for _ in range(3000):
        p = b"/" + bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        try:
            full = decode(b"/" + p)
        except Refused:
            full = None
        try:
            quick = decode(p)
        except Refused:
            quick = None
        assert quick == full, p
    for bad in (b"/a/../b", b"/a/./b", b"/a\\b", b"/a%2fb", b"/a%00", b"/a\0b", b"a/b"):
        with pytest.raises(Refused):
            decode(bad)

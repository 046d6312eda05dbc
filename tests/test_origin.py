"""The origin end to end, on real processes: one stack for the whole module (``stack.py``) —
a master, the origin with two pre-forked workers, the legacy origin, and two real nginx (the
fast path from the hard-link views, and the X-Accel path with ``fast_path = false``).

Four serving paths answer every request here: ``origin`` (the Python origin directly,
streaming), ``nginx-fast``, ``nginx-accel`` and ``legacy`` (the legacy origin directly, over
a directory holding the same bytes and mtimes). The nginx paths are skipped, with the reason,
when nginx is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import structlog
from stack import (
    ACCEL,
    CHUNK_SIZE,
    FAST,
    LEGACY,
    ORIGIN,
    ORIGIN_WORKERS,
    Stack,
    children,
    running_stack,
    wait_events,
)
from validator_cases import CASES, FILES, Case, check_response

from cluster.meta import NS
from cluster.remote import RemoteCluster
from cluster.view import view_root
from cluster.volume import MARKER
from origin import logs, mime
from origin.metrics import ShortcutTally

pytestmark = pytest.mark.timeout(120)

PATHS = [ORIGIN, FAST, ACCEL, LEGACY]
CLUSTER_PATHS = [ORIGIN, FAST, ACCEL]  # the ones the master's writes reach
NGINX_PATHS = {FAST, ACCEL}

VALIDATED = "/images/v/"  # where validator_cases.FILES live (cluster and legacy)
SAME = "/news/same/page.html"  # one file, same bytes and mtime on both sides
SAME_BYTES = b"<html>same bytes, same validators</html>\n" * 40
SAME_MTIME = 1_650_000_000_123_456_789
BIG = "/images/big/panorama.jpg"  # several chunks: never in the view
BIG_BYTES = random.Random(7).randbytes(3 * CHUNK_SIZE + 12_345)
BIG_MTIME = 1_660_000_000_500_000_000
SECRET = b"TANDEM-SECRET-OUTSIDE-THE-SERVED-TREE"
EXTENSIONS = ["jpg", "webp", "avif", "svg", "html", "css", "js", "json"]
ROUTES = {"/images/": "public, max-age=2592000", "/news/": "public, max-age=60"}


def etag_of(mtime_ns: int, size: int) -> str:
    """nginx's ETag, written out here rather than taken from the code under test."""
    return f'"{mtime_ns // NS:x}-{size:x}"'


def blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the stack ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack, loaded: validator files, one file per extension under each route, SAME and
    BIG — each in the cluster (through the master) and in the legacy directory, with the same
    mtimes; a secret outside every served tree and a legacy symlink pointing at it."""
    tmp = tmp_path_factory.mktemp("stack")
    with running_stack(tmp) as s:
        files = {f"{VALIDATED}{name}": (data, mtime) for name, (data, mtime) in FILES.items()}
        for prefix in ROUTES:
            for ext in EXTENSIONS:
                files[f"{prefix}ct/file.{ext}"] = (f"{prefix} {ext}\n".encode(), SAME_MTIME)
        files[SAME] = (SAME_BYTES, SAME_MTIME)
        files[BIG] = (BIG_BYTES, BIG_MTIME)
        files["/images/sub/a.jpg"] = (b"in a sub-directory", SAME_MTIME)
        asyncio.run(_load(s.master_url, files))
        for path, (data, mtime) in files.items():
            s.put_legacy(path, data, mtime)
        (tmp / "secret.txt").write_bytes(SECRET)
        os.symlink(tmp / "secret.txt", s.legacy_dir / "images" / "escape.jpg")
        os.symlink("../../secret.txt", s.legacy_dir / "images" / "escape-relative.jpg")
        os.symlink("sub/a.jpg", s.legacy_dir / "images" / "inside.jpg")
        for path, (data, _) in files.items():
            if data and len(data) <= CHUNK_SIZE:
                wait_in_view(s, path)
        yield s


async def _load(url: str, files: dict[str, tuple[bytes, int]]) -> None:
    async with RemoteCluster(url) as rc:
        for path, (data, mtime) in files.items():
            e = await rc.put(path, data, mtime_ns=mtime)
            assert e.mtime_ns == mtime, path


def view_links(s: Stack, path: str) -> list[Path]:
    return [Path(os.fsdecode(view_root(v.path))) / path.lstrip("/") for v in s.cfg.cluster.volumes]


def wait_in_view(s: Stack, path: str, within: float = 2.0) -> None:
    """Poll until some volume's view holds ``path`` (the fast path can serve it)."""
    deadline = time.monotonic() + within
    while not any(p.is_file() for p in view_links(s, path)):
        assert time.monotonic() < deadline, f"{path} not in any view after {within} s"
        time.sleep(0.005)


def base_url(s: Stack, path: str) -> str:
    if path in NGINX_PATHS and s.nginx_missing:
        pytest.skip(s.nginx_missing)
    return s.urls[path]


@pytest.fixture(scope="module")
def clients(stack: Stack) -> Iterator[dict[str, httpx.Client]]:
    """One keep-alive client per serving path, for the whole module."""
    made = {p: httpx.Client(base_url=u, timeout=5) for p, u in stack.urls.items()}
    yield made
    for c in made.values():
        c.close()


def error_log_tail(s: Stack, path: str) -> str:
    """The end of nginx's error.log, for a failure on an nginx path."""
    return f"\nnginx error.log:\n{s.nginx[path].error_log()[-3000:]}" if path in s.nginx else ""


def client(s: Stack, clients: dict[str, httpx.Client], path: str) -> httpx.Client:
    base_url(s, path)  # skips an nginx path without nginx
    return clients[path]


# -- raw HTTP ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    status: int
    head: bytes
    body: bytes


def raw(url: str, target: bytes, extra: bytes = b"", timeout: float = 5.0) -> Raw:
    """One request written byte for byte (no client library would send these targets); the
    answer is read to the end (``Connection: close``). Status 0: no answer at all."""
    host, port = url.rsplit("/", 1)[1].rsplit(":", 1)
    data = b""
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n" + extra
                     + b"Connection: close\r\n\r\n")
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return Raw(status, head, body)


# == 0. the log stream the stack is watched through ========================================


def test_a_log_record_is_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pre-forked workers share one stdout pipe, so each record must reach it in one
    write: with ``print`` the newline went out separately, and with unbuffered output
    (``PYTHONUNBUFFERED``, common in containers) two workers' records merged into one
    unparseable line — the stack then never saw ``origin.worker_ready``."""
    writes: list[str] = []

    class Sink:
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(sys, "stdout", Sink())
    logs.configure("info", role="origin")
    structlog.get_logger("origin").info("origin.worker_ready", worker=0)
    assert len(writes) == 1 and writes[0].endswith("}\n"), writes
    assert json.loads(writes[0])["event"] == "origin.worker_ready"


# == 1. the validator / range table on every path ==============================================


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_validator_table(stack: Stack, clients: dict[str, httpx.Client], path: str,
                         case: Case) -> None:
    """Every case of ``validator_cases`` (proven against a bare nginx) gets nginx's exact
    answer on every serving path: status, validators, range headers, body, error pages."""
    c = client(stack, clients, path)
    headers = dict(case.headers)
    if case.status == 412:
        # nginx closes the connection after a 412 without saying so (no "Connection: close"),
        # so the next request on that keep-alive connection could race the close.
        headers["Connection"] = "close"
    try:
        r = c.request(case.method, VALIDATED + case.file, headers=headers)
    except httpx.HTTPError as exc:
        pytest.fail(f"{path}: {exc!r}{error_log_tail(stack, path)}")
    check_response(case, r.status_code, r.headers.multi_items(), r.content,
                   FILES[case.file][0])


def test_the_fast_path_served_the_table_from_the_view(stack: Stack,
                                                      clients: dict[str, httpx.Client]) -> None:
    """The nginx-fast answers above did not go through Python: nginx's access log shows no
    upstream for GET/HEAD of the single-chunk file, while nginx-accel's shows the origin for
    every request (the origin answered X-Accel-Redirect, nginx sent the bytes)."""
    client(stack, clients, FAST).get(VALIDATED + "data.bin")
    client(stack, clients, ACCEL).get(VALIDATED + "data.bin")

    def records(name: str) -> list[dict[str, object]]:
        lines = stack.nginx[name].paths.access_log.read_text().splitlines()
        recs = [json.loads(line) for line in lines]
        return [r for r in recs if r["uri"] == VALIDATED + "data.bin"
                and r["method"] in ("GET", "HEAD")]

    fast, accel = records(FAST), records(ACCEL)
    assert fast and all(r["upstream"] == "" for r in fast)
    assert accel and all(r["upstream"] != "" for r in accel)
    direct = httpx.get(stack.urls[ORIGIN] + VALIDATED + "data.bin",
                       headers={"X-Tandem-Accel": "1"})
    assert direct.headers["x-accel-redirect"].startswith("/_tandem/vol/")
    assert direct.content == b""


@pytest.mark.parametrize("status", [200, 206, 304])
def test_content_type_and_cache_control_agree(stack: Stack, clients: dict[str, httpx.Client],
                                              status: int) -> None:
    """Content-Type (from the extension) and Cache-Control (from the route) are the same on
    every path, for 200, 206 and 304 answers (304 carries no Content-Type anywhere)."""
    for prefix, cache_control in ROUTES.items():
        for ext in EXTENSIONS:
            url = f"{prefix}ct/file.{ext}"
            headers = {200: {}, 206: {"Range": "bytes=1-3"},
                       304: {"If-None-Match": etag_of(SAME_MTIME, len(f"{prefix} {ext}\n"))}}
            seen = {}
            for path in PATHS:
                if path in NGINX_PATHS and stack.nginx_missing:
                    continue
                r = clients[path].get(url, headers=headers[status])
                assert r.status_code == status, (path, url)
                seen[path] = (r.headers.get_list("content-type"),
                              r.headers.get_list("cache-control"))
            want = ([] if status == 304 else [mime.content_type(url)], [cache_control])
            assert all(v == want for v in seen.values()), (url, status, seen)


# == 2. the same validators on every path ======================================================


def test_same_bytes_same_validators_on_every_path(stack: Stack,
                                                  clients: dict[str, httpx.Client]) -> None:
    """A file in the cluster and the same bytes and mtime in the legacy directory get one and
    the same ETag and Last-Modified on all four paths (a failover invalidates no cache)."""
    want = ('"62590080-668"', "Fri, 15 Apr 2022 05:20:00 GMT")  # nginx's, for 1650000000
    assert want[0] == etag_of(SAME_MTIME, len(SAME_BYTES))
    for path in PATHS:
        if path in NGINX_PATHS and stack.nginx_missing:
            continue
        r = clients[path].get(SAME)
        assert (r.status_code, r.content) == (200, SAME_BYTES), path
        assert (r.headers["etag"], r.headers["last-modified"]) == want, path


RANGES = [
    ("bytes=0-0", 0, 1),
    (f"bytes={CHUNK_SIZE - 5}-{CHUNK_SIZE + 4}", CHUNK_SIZE - 5, 10),  # across a chunk edge
    (f"bytes={2 * CHUNK_SIZE}-", 2 * CHUNK_SIZE, len(BIG_BYTES) - 2 * CHUNK_SIZE),
    ("bytes=-1000", len(BIG_BYTES) - 1000, 1000),
    (f"bytes=100-{3 * CHUNK_SIZE}", 100, 3 * CHUNK_SIZE - 99),
]


@pytest.mark.parametrize("path", PATHS)
def test_a_multi_chunk_file_full_and_ranged(stack: Stack, clients: dict[str, httpx.Client],
                                            path: str) -> None:
    """A file of several chunks (never in the view: the origin streams it, also behind
    nginx) is served whole, in ranges across chunk edges, and conditionally, on every path."""
    c = client(stack, clients, path)
    assert not any(p.exists() for p in view_links(stack, BIG))
    tag = etag_of(BIG_MTIME, len(BIG_BYTES))
    r = c.get(BIG)
    assert (r.status_code, r.headers["etag"], r.headers["content-length"]) == (
        200, tag, str(len(BIG_BYTES)))
    assert sha(r.content) == sha(BIG_BYTES)
    for spec, offset, length in RANGES:
        r = c.get(BIG, headers={"Range": spec})
        assert r.status_code == 206, spec
        assert r.headers["content-range"] == (
            f"bytes {offset}-{offset + length - 1}/{len(BIG_BYTES)}"), spec
        assert r.content == BIG_BYTES[offset : offset + length], spec
    assert c.get(BIG, headers={"If-None-Match": tag}).status_code == 304
    assert c.get(BIG, headers={"Range": f"bytes={len(BIG_BYTES)}-"}).status_code == 416
    head = c.head(BIG)
    assert (head.headers["content-length"], head.content) == (str(len(BIG_BYTES)), b"")


def test_the_origin_streams_a_multi_chunk_file_even_behind_nginx(stack: Stack) -> None:
    """Asked by nginx (``X-Tandem-Accel``), the origin answers a single-chunk file with
    X-Accel-Redirect but streams a multi-chunk file itself."""
    r = httpx.get(stack.urls[ORIGIN] + BIG, headers={"X-Tandem-Accel": "1"})
    assert "x-accel-redirect" not in r.headers
    assert sha(r.content) == sha(BIG_BYTES)


# -- the hand-off shortcut (origin/handoff.py) -------------------------------------------------

MARK = b"X-Tandem-Accel: 1\r\n"


def handoffs(s: Stack) -> dict[str, float]:
    """The origin's hand-off counters, summed over its workers: by the shortcut, by the app.
    The shortcut's reach Prometheus within ``ShortcutTally.FLUSH_AFTER``: waited for here."""
    time.sleep(2.5 * ShortcutTally.FLUSH_AFTER)
    out = {"shortcut": 0.0, "app": 0.0}
    for line in httpx.get(s.urls[ORIGIN] + "/metrics").text.splitlines():
        if line.startswith('tandem_origin_handoffs_total{by="'):
            by, _, value = line[len('tandem_origin_handoffs_total{by="'):].partition('"} ')
            out[by] = float(value)
    return out


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def exchange(url: str, sends: list[bytes], answers: int, pause: float = 0.0) -> list[Answer]:
    """Write ``sends`` on one keep-alive connection (``pause`` seconds apart) and read
    ``answers`` responses to GETs, parsed by httptools."""
    import httptools

    got: list[Answer] = []

    class Sink:
        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers[name.decode().lower()] = value.decode()

        def on_message_begin(self) -> None:
            self.headers: dict[str, str] = {}
            self.body = b""

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            got.append(Answer(parser.get_status_code(), self.headers, self.body))

    parser = httptools.HttpResponseParser(Sink())
    host, port = url.rsplit("/", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        for data in sends:
            sock.sendall(data)
            time.sleep(pause)
        while len(got) < answers:
            data = sock.recv(65536)
            assert data, f"the origin closed the connection after {len(got)} answers"
            parser.feed_data(data)
    return got


def _get(target: str, extra: bytes = MARK, version: bytes = b"1.1") -> bytes:
    return b"GET " + target.encode() + b" HTTP/" + version + b"\r\nHost: t\r\n" + extra + b"\r\n"


def test_a_plain_handoff_is_answered_by_the_shortcut_as_the_app_would(stack: Stack) -> None:
    """A marked GET or HEAD of a single-chunk file skips sanic: the shortcut's counter moves,
    the app's does not, and sanic still answers its own routes on the same connection. The
    answer carries the headers the app gives the same file (the app answers a request with
    ``Connection: close``, which the shortcut leaves alone)."""
    url = stack.urls[ORIGIN]
    targets = [VALIDATED + "data.bin", SAME, "/images/ct/file.webp", "/news/ct/file.html"]
    before = handoffs(stack)
    with httpx.Client(base_url=url) as c:
        for target in targets:
            for method in ("GET", "HEAD"):
                r = c.request(method, target, headers={"X-Tandem-Accel": "1"})
                assert r.status_code == 200 and r.content == b"", (method, target)
                app = raw(url, target.encode(), MARK)
                assert app.status == 200 and app.body == b""
                app_headers = {
                    k.lower(): v for k, v in (
                        line.decode().split(": ", 1) for line in app.head.split(b"\r\n")[1:]
                    )
                }
                ours = {k.lower(): v for k, v in r.headers.items()}
                assert ours.pop("connection") == "keep-alive"
                assert app_headers.pop("connection") == "close"
                assert app_headers.pop("alt-svc") == ""  # sanic's empty one; nginx hides it
                # The copy nginx is sent to rotates over the volumes holding one.
                for h in (ours, app_headers):
                    h["x-accel-redirect"] = h["x-accel-redirect"].split("/", 4)[-1]
                assert ours == app_headers, target
                assert c.get("/healthz").text == "ok\n"
    after = handoffs(stack)
    assert after["shortcut"] - before["shortcut"] == 2 * len(targets)
    assert after["app"] - before["app"] == 2 * len(targets)  # the Connection: close ones


@pytest.mark.parametrize("case", [
    "unmarked", "http/1.0", "close", "a body", "pipelined", "split head", "missing", "hostile",
    "multi-chunk", "post",
])
def test_the_shortcut_leaves_every_other_request_to_the_app(stack: Stack, case: str) -> None:
    """Whatever is not a whole, plain, marked GET/HEAD of a file nginx can send goes to sanic
    untouched and gets the app's usual answer; the shortcut's counter stays put."""
    url = stack.urls[ORIGIN]
    data = VALIDATED + "data.bin"
    sends, answers, want, pause = {
        "unmarked": ([_get(data, b"")], 1, 200, 0.0),
        "http/1.0": ([_get(data, MARK + b"Connection: keep-alive\r\n", b"1.0")], 1, 200, 0.0),
        "close": ([_get(data, MARK + b"Connection: close\r\n")], 1, 200, 0.0),
        "a body": ([_get(data, MARK + b"Content-Length: 2\r\n") + b"hi"], 1, 200, 0.0),
        "pipelined": ([_get(data) + _get(SAME)], 2, 200, 0.0),
        "split head": ([_get(data)[:20], _get(data)[20:]], 1, 200, 0.2),
        "missing": ([_get("/images/v/no-such-file.jpg")], 1, 404, 0.0),
        "hostile": ([_get("/images/%2e%2e/secret.txt")], 1, 400, 0.0),
        "multi-chunk": ([_get(BIG)], 1, 200, 0.0),
        "post": ([_get(data).replace(b"GET", b"POST", 1)], 1, 405, 0.0),
    }[case]
    before = handoffs(stack)
    got = exchange(url, sends, answers, pause)
    assert [a.status for a in got] == [want] * answers, got
    if case == "unmarked" or case == "multi-chunk":
        assert "x-accel-redirect" not in got[0].headers
        assert got[0].body == (BIG_BYTES if case == "multi-chunk" else FILES["data.bin"][0])
    elif want == 200:
        assert all(a.headers["x-accel-redirect"].startswith("/_tandem/vol/") for a in got)
    after = handoffs(stack)
    assert after["shortcut"] == before["shortcut"], case

# == 3. overwrites are served new within a second ==============================================


def _serves(c: httpx.Client, url: str, tag: str, data: bytes) -> bool:
    r = c.get(url)
    return r.status_code == 200 and r.headers.get("etag") == tag and r.content == data


def _converge(s: Stack, clients: dict[str, httpx.Client], paths: list[str], url: str, tag: str,
              data: bytes, within: float = 1.0) -> float:
    """Poll ``paths`` until each serves ``tag`` and ``data`` for ``url``; returns the time
    taken, failing past ``within`` seconds."""
    started = time.monotonic()
    pending = [p for p in paths if not (p in NGINX_PATHS and s.nginx_missing)]
    while pending:
        pending = [p for p in pending if not _serves(clients[p], url, tag, data)]
        elapsed = time.monotonic() - started
        assert elapsed < within, f"{url}: {pending} still old after {elapsed:.3f} s"
    return time.monotonic() - started


@pytest.mark.parametrize("size", [5000, 2 * CHUNK_SIZE + 77], ids=["one-chunk", "multi-chunk"])
def test_an_overwrite_is_served_new_within_a_second(stack: Stack,
                                                    clients: dict[str, httpx.Client],
                                                    size: int) -> None:
    """A file overwritten through the master is served with its new ETag and bytes within
    1 s on every cluster path, including a same-size overwrite within the same second (the
    cluster moves the mtime to the next second, so the ETag changes)."""
    url = f"/news/live/{size}.html"
    t = 1_700_000_000 * NS
    old = blob(size, 1)
    e = stack.put(url, old, t + 100_000_000)
    _converge(stack, clients, CLUSTER_PATHS, url, etag_of(e.mtime_ns, size), old, within=2.0)

    other = blob(size + 10, 2)  # another size
    e = stack.put(url, other, t + 200_000_000)
    took = _converge(stack, clients, CLUSTER_PATHS, url, etag_of(e.mtime_ns, len(other)), other)
    assert took < 1.0

    same = blob(size + 10, 3)  # the same size, the same second: only the mtime can tell
    e2 = stack.put(url, same, t + 700_000_000)
    assert e2.mtime_ns == t + NS  # moved to the next second
    assert etag_of(e2.mtime_ns, len(same)) != etag_of(e.mtime_ns, len(other))
    took = _converge(stack, clients, CLUSTER_PATHS, url, etag_of(e2.mtime_ns, len(same)), same)
    assert took < 1.0

    # With the master's own clock: two same-size puts in a row still differ in ETag.
    a = stack.put(url, blob(size, 4))
    b = stack.put(url, blob(size, 5))
    assert a.mtime_ns // NS != b.mtime_ns // NS
    took = _converge(stack, clients, CLUSTER_PATHS, url, etag_of(b.mtime_ns, size),
                     blob(size, 5))
    assert took < 1.0


def test_a_legacy_overwrite_is_served_new_at_once(stack: Stack,
                                                  clients: dict[str, httpx.Client]) -> None:
    """The legacy origin caches nothing: a file replaced in the directory (as the syncer
    replaces it, by rename) is served new on the next request."""
    url = "/news/live/legacy.html"
    stack.put_legacy(url, b"old", SAME_MTIME)
    assert _serves(clients[LEGACY], url, etag_of(SAME_MTIME, 3), b"old")
    stack.put_legacy(url, b"new", SAME_MTIME + NS)
    assert _serves(clients[LEGACY], url, etag_of(SAME_MTIME + NS, 3), b"new")


# == 4. hostile requests =======================================================================

HOSTILE = [
    b"/images/../../secret.txt",
    b"/images/../../../../../../../../etc/passwd",
    b"/images/v/../../../secret.txt",
    b"/images/%2e%2e/%2e%2e/secret.txt",
    b"/images/%2E%2E/%2E%2E/%2E%2E/%2E%2E/etc/passwd",
    b"/images/.%2e/.%2e/secret.txt",
    b"/images/v%2F..%2F..%2F..%2Fsecret.txt",
    b"/images/v/..%2f..%2f..%2fsecret.txt",
    b"/images/%252e%252e/%252e%252e/secret.txt",
    b"/images/%25252e%25252e/secret.txt",
    b"/images/..\\..\\secret.txt",
    b"/images\\..\\..\\secret.txt",
    b"/images/%5c..%5c..%5csecret.txt",
    b"/images/v/data.bin%00.jpg",
    b"/images/%00",
    b"/images/" + b"a/" * 2100 + b"x.jpg",  # > 4096
    b"/images/" + b"a/" * 4200 + b"x.jpg",  # > 8192
    b"/images/" + b"n" * 300 + b".jpg",  # one name over 255 bytes
    b"/images/",
    b"/images/sub/",
    b"/images/sub",
    b"/images/v/",
    b"/news/",
    b"/images/escape.jpg",  # legacy: a symlink to the secret, outside the directory
    b"/images/escape-relative.jpg",
    b"/etc/passwd",
    b"/secret.txt",
    b"/",
    b"/_tandem/vol/0/",
    b"/_tandem/legacy/images/v/data.bin",
]


def _clean_refusal(r: Raw, what: str) -> None:
    assert 400 <= r.status < 500, f"{what}: {r.head[:200]!r}"
    assert SECRET not in r.body and b"root:" not in r.body, what
    for listed in (b"data.bin", b"a.jpg", b"Index of", b"file.jpg"):
        assert listed not in r.body, f"{what}: looks like a listing"


@pytest.mark.parametrize("path", PATHS)
def test_hostile_requests_are_refused_cleanly(stack: Stack, path: str) -> None:
    """Traversal (raw, encoded, double-encoded), encoded slashes and backslashes, NUL,
    overlong paths and names, directory URLs, symlinks out of the legacy directory, paths
    outside every route, internal locations: each a 4xx — never a 5xx, never a byte of a
    file outside the served tree, never a listing."""
    url = base_url(stack, path)
    for target in HOSTILE:
        _clean_refusal(raw(url, target), f"{path} {target[:80]!r}")
    if path == LEGACY:
        assert raw(url, b"/images/escape.jpg").status == 404
        assert raw(url, b"/images/escape-relative.jpg").status == 404
        assert raw(url, b"/images/inside.jpg").body == b"in a sub-directory"  # stays inside


@pytest.mark.parametrize("path", PATHS)
def test_overlong_headers_are_refused_cleanly(stack: Stack, path: str) -> None:
    """One header of 10 KB or 100 KB, or 1000 headers of 100 bytes: a 4xx, and the connection is not
    left hanging."""
    url = base_url(stack, path)
    target = VALIDATED.encode() + b"data.bin"
    for extra in (b"X-Big: " + b"a" * 10_000 + b"\r\n",
                  b"X-Big: " + b"a" * 100_000 + b"\r\n",
                  b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 100) for i in range(1000))):
        _clean_refusal(raw(url, target, extra), f"{path} {len(extra)} header bytes")


@pytest.mark.parametrize("path", PATHS)
def test_dot_segments_inside_the_tree(stack: Stack, path: str) -> None:
    """A ``..`` that stays inside the served tree is refused (400) on every path alike: the
    Python origins refuse dot segments, and the generated nginx refuses them before its own
    normalisation could serve the file (``nginx.render.HOSTILE_PATH``)."""
    url = base_url(stack, path)
    for target in (b"/images/../news/same/page.html", b"/images/%2e%2e/news/same/page.html",
                   b"/news/same/./page.html"):
        r = raw(url, target)
        assert r.status == 400, (path, target, r.status)
        _clean_refusal(r, f"{path} {target!r}")


# == 5. a slow client does not stall the others ================================================


def test_a_slow_client_does_not_stall_others(stack: Stack) -> None:
    """Connections that send half a request line, and connections that read a large
    response very slowly (a tiny receive window), on the Python origin: meanwhile every
    other request completes in well under 0.5 s, and the slow responses still arrive
    whole."""
    url = stack.urls[ORIGIN]
    host, port = url.rsplit("/", 1)[1].rsplit(":", 1)
    big = "/images/slow/huge.bin"
    # Bigger than the most the kernel buffers for one connection's writes: the worker must
    # hold the rest and wait for the reader (backpressure), not hand it all to the kernel.
    wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    data = blob(wmem_max + 2 * CHUNK_SIZE, 9)
    stack.put(big, data)
    with contextlib.ExitStack() as held:
        for _ in range(2 * ORIGIN_WORKERS):
            half = held.enter_context(socket.create_connection((host, int(port)), timeout=5))
            half.sendall(b"GET /images/v/da")
        slow = []
        for _ in range(2 * ORIGIN_WORKERS):
            s = held.enter_context(socket.socket())
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.settimeout(10)
            s.connect((host, int(port)))
            s.sendall(f"GET {big} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
            slow.append(s)
        for s in slow:  # the response has started: the server is now writing to it
            assert select.select([s], [], [], 5)[0]
        worst = 0.0
        with httpx.Client(base_url=url, timeout=5) as c:
            for i in range(20):
                started = time.monotonic()
                fresh = c.get(SAME, headers={"Connection": "close"} if i % 2 else {})
                worst = max(worst, time.monotonic() - started)
                assert fresh.content == SAME_BYTES
        assert worst < 0.5, f"a request took {worst:.3f} s next to slow clients"
        for s in slow:
            got = b""
            while chunk := s.recv(1 << 20):
                got += chunk
            head, _, body = got.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert sha(body) == sha(data)


# == 6. workers read while the master writes; a worker killed ==================================


def test_workers_read_while_the_master_writes(stack: Stack) -> None:
    """200+ GETs over 8 connections (origin workers directly, and through both nginx) while
    the master overwrites the files they read, one chunk and several chunks: every answer is
    a whole old or a whole new version — its body is exactly the version its ETag names —
    never an error."""
    small, big = "/images/rw/small.bin", "/images/rw/big.bin"
    base = 1_710_000_000
    versions: dict[str, list[tuple[int, bytes]]] = {
        small: [((base + i) * NS + 250_000_000, blob(5000 + 97 * i, 100 + i)) for i in range(6)],
        big: [((base + i) * NS + 250_000_000, blob(3 * CHUNK_SIZE + 97 * i, 200 + i))
              for i in range(6)],
    }
    expected = {(url, etag_of(m, len(d))): sha(d) for url, vs in versions.items() for m, d in vs}
    for url, vs in versions.items():
        stack.put(url, vs[0][1], vs[0][0])
    targets = [p for p in PATHS if p != LEGACY and not (p in NGINX_PATHS and stack.nginx_missing)]
    stop = threading.Event()
    writes = 0
    problems: list[str] = []
    seen: dict[tuple[str, str], int] = {}
    lock = threading.Lock()

    async def write() -> None:
        nonlocal writes
        async with RemoteCluster(stack.master_url) as rc:
            i = 0
            while not stop.is_set():
                i += 1
                for url, vs in versions.items():
                    mtime, data = vs[i % len(vs)]
                    e = await rc.put(url, data, mtime_ns=mtime)
                    assert e.mtime_ns == mtime
                writes += 1

    def read(n: int) -> None:
        target = targets[n % len(targets)]
        with httpx.Client(base_url=stack.urls[target], timeout=10) as c:
            count = 0
            while count < 25 or (writes < 6 and count < 2000):
                url = small if count % 2 else big
                count += 1
                try:
                    r = c.get(url)
                except httpx.HTTPError as exc:
                    problems.append(f"{target} {url}: {exc!r}")
                    continue
                tag = r.headers.get("etag", "")
                with lock:
                    seen[(url, tag)] = seen.get((url, tag), 0) + 1
                if r.status_code != 200 or expected.get((url, tag)) != sha(r.content):
                    problems.append(f"{target} {url}: {r.status_code} {tag} "
                                    f"{len(r.content)} bytes, not the version its ETag names")

    writer = threading.Thread(target=lambda: asyncio.run(write()))
    readers = [threading.Thread(target=read, args=(n,)) for n in range(8)]
    writer.start()
    for t in readers:
        t.start()
    for t in readers:
        t.join(60)
    stop.set()
    writer.join(30)
    assert not problems, problems[:10]
    assert sum(seen.values()) >= 200
    assert writes >= 6
    for url in versions:  # the reads really overlapped the writes
        assert len({tag for (u, tag) in seen if u == url}) >= 2, url


def _wait_log(stack: Stack, event: str, pid: int, within: float = 10.0) -> dict[str, object]:
    deadline = time.monotonic() + within
    while True:
        for rec in list(stack.origin.lines):
            if rec.get("event") == event and rec.get("pid") == pid:
                return rec
        assert time.monotonic() < deadline, f"no {event} for pid {pid}"
        time.sleep(0.01)


def test_a_killed_worker_is_replaced(stack: Stack) -> None:
    """``kill -9`` of one origin worker while clients keep requesting: the supervisor logs
    ``origin.worker_died`` and forks a new worker, which serves (shown by stopping the
    surviving old worker); only a request in flight on the killed worker may fail."""
    url = stack.urls[ORIGIN]
    workers = children(stack.origin.pid)
    assert len(workers) == ORIGIN_WORKERS
    victim = min(workers)
    ready_before = sum(1 for r in list(stack.origin.lines)
                       if r.get("event") == "origin.worker_ready")
    stop = threading.Event()
    tallies = [[0, 0] for _ in range(4)]  # per thread: [succeeded, failed]

    def keep_asking(tally: list[int]) -> None:
        with httpx.Client(base_url=url, timeout=5) as c:
            while not stop.is_set():
                try:
                    ok = c.get(SAME).content == SAME_BYTES
                except httpx.HTTPError:
                    ok = False
                tally[not ok] += 1

    def succeeded() -> int:
        return sum(t[0] for t in tallies)

    threads = [threading.Thread(target=keep_asking, args=(t,)) for t in tallies]
    for t in threads:
        t.start()
    try:
        while succeeded() < 20:
            time.sleep(0.005)
        os.kill(victim, signal.SIGKILL)
        died = _wait_log(stack, "origin.worker_died", victim)
        assert died["code"] == -signal.SIGKILL
        wait_events(stack.origin, "origin.worker_ready", ready_before + 1)
        after = succeeded()
        while succeeded() < after + 20:
            time.sleep(0.005)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    failed = [t[1] for t in tallies]
    assert all(f <= 1 for f in failed), f"failed requests per connection: {failed}"
    now = children(stack.origin.pid)
    (new,) = now - workers
    assert victim not in now and len(now) == ORIGIN_WORKERS
    _wait_log(stack, "origin.worker_ready", new)
    (survivor,) = workers - {victim}
    os.kill(survivor, signal.SIGSTOP)  # from now on only the new worker can accept
    try:
        for _ in range(5):
            r = httpx.get(url + SAME, headers={"Connection": "close"}, timeout=3)
            assert r.content == SAME_BYTES
    finally:
        os.kill(survivor, signal.SIGCONT)


# == 7. health and readiness (last: it breaks things on purpose) ===============================


def test_healthz_and_readyz(stack: Stack) -> None:
    """``/healthz`` is 200 while the process runs. ``/readyz`` is 200, then 503 with the
    reason in JSON while the fence file exists, and while a volume's marker is gone (for the
    legacy origin: while its directory is missing); 200 again once restored."""
    origin, legacy = stack.urls[ORIGIN], stack.urls[LEGACY]
    for url in (origin, legacy):
        assert httpx.get(url + "/healthz").status_code == 200
        r = httpx.get(url + "/readyz")
        assert (r.status_code, r.json()["ready"]) == (200, True)

    def not_ready(url: str, reason: str) -> None:
        r = httpx.get(url + "/readyz")
        body = r.json()
        assert (r.status_code, body["ready"]) == (503, False)
        assert any(reason in p for p in body["problems"]), body

    fence = stack.cfg.origin.fence_file
    fence.write_text("flip in progress\n")
    try:
        not_ready(origin, "fenced")
        not_ready(legacy, "fenced")
    finally:
        fence.unlink()
    assert httpx.get(origin + "/readyz").status_code == 200

    marker = stack.cfg.cluster.volumes[0].path / MARKER
    aside = marker.with_name(MARKER + ".aside")
    marker.rename(aside)
    try:
        not_ready(origin, "marker")
    finally:
        aside.rename(marker)
    assert httpx.get(origin + "/readyz").status_code == 200

    moved = stack.legacy_dir.with_name("legacy.aside")
    stack.legacy_dir.rename(moved)
    try:
        not_ready(legacy, "missing")
        assert httpx.get(legacy + "/healthz").status_code == 200  # alive, just not ready
    finally:
        moved.rename(stack.legacy_dir)
    assert httpx.get(legacy + "/readyz").status_code == 200

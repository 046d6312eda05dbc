"""Real nginx processes for tests, a fake origin for them to proxy to, and a small client.

``Nginx(cfg)`` runs the real nginx (through ``nginx.runner``, so the tests exercise the same
install/test/start/stop code as ``tandem``) on a config made fit for a test by ``for_test``.
``FakeOrigin`` stands in for the tandem origin (``origin/``, written by someone else): it
records every request nginx passes on and answers what the test scripted for its path.
Tests that need nginx call ``require_nginx`` first and are skipped, with the reason, when the
binary is missing.
"""

from __future__ import annotations

import dataclasses
import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from nginx import runner
from nginx.errors import NginxNotInstalled
from nginx.render import Layout
from origin.config import Config

START_TIMEOUT = 5.0


def require_nginx(cfg: Config) -> None:
    try:
        runner.binary(cfg)
    except NginxNotInstalled as exc:
        pytest.skip(f"needs the real nginx: {exc} (./dev test installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def for_test(cfg: Config, run_dir: Path, origin: tuple[str, int] | None = None) -> Config:
    """``cfg`` made fit for a test: nginx on a free loopback port with its files in
    ``run_dir``, as root when the test runs as root (nginx's default user, nobody, cannot
    read pytest's 0700 temp folders), proxying to ``origin`` when given."""
    nginx = dataclasses.replace(
        cfg.nginx,
        listen=("127.0.0.1", free_port()),
        run_dir=run_dir,
        user="root" if os.geteuid() == 0 else "",
    )
    settings = cfg.origin if origin is None else dataclasses.replace(cfg.origin, listen=origin)
    return dataclasses.replace(cfg, nginx=nginx, origin=settings)


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


class Nginx:
    """A running nginx for ``cfg`` (see ``for_test``); stopped by PID on exit (SIGQUIT, then
    SIGKILL), with its error.log printed when the test failed and raised when nginx did."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.paths = Layout(cfg.nginx.run_dir)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return self.cfg.nginx.listen[1]

    def _running(self) -> subprocess.Popen[bytes]:
        assert self.proc is not None, "use Nginx as a context manager"
        return self.proc

    def error_log(self) -> str:
        try:
            return self.paths.error_log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no error.log)"

    def workers(self) -> set[int]:
        """The master's children: after a reload, old workers accept connections until they
        have seen the signal, so a test waits for them to go before expecting the new config."""
        pid = self._running().pid
        children = Path(f"/proc/{pid}/task/{pid}/children")
        return {int(pid) for pid in children.read_text().split()}

    def __enter__(self) -> Nginx:
        require_nginx(self.cfg)
        self.proc = proc = runner.start(self.cfg)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"nginx exited {proc.returncode}:\n{self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.02)
        runner.stop(proc)
        raise AssertionError(f"nginx did not accept connections:\n{self.error_log()}")

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        code = runner.stop(self._running())
        if kind is not None:
            print(f"nginx error.log:\n{self.error_log()}", file=sys.stderr)
        elif code != 0:
            raise AssertionError(f"nginx exited {code}:\n{self.error_log()}")

    def request(
        self, method: str, target: str, body: bytes | None = None, **headers: str
    ) -> Reply:
        """One request on a fresh connection (keyword headers: ``If_None_Match="…"``)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request(method, target, body, {k.replace("_", "-"): v for k, v in headers.items()})
            r = conn.getresponse()
            return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            conn.close()

    def raw(self, target: bytes, method: bytes = b"GET") -> Reply:
        """A request line sent byte for byte (http.client refuses hostile targets)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(method + b" " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
        return Reply(int(status_line.split()[1]), headers, body)


@dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class Seen:
    method: str
    target: str  # the request target exactly as nginx sent it
    headers: dict[str, str]  # lower-case names
    body: bytes


NOT_FOUND = Answer(404, {"Content-Type": "text/plain"}, b"fake origin: no answer scripted\n")


class FakeOrigin:
    """Stands in for the tandem origin, which another person is writing: an HTTP/1.1 server
    on 127.0.0.1 (keep-alive, as nginx's upstream connections are) that records each request
    in ``seen`` and answers ``answers[path]`` (the target without its query), else 404.
    Request bodies must come with Content-Length."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {}
        self.seen: list[Seen] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.origin = self
        serve = self._server.serve_forever
        self._thread = threading.Thread(target=serve, args=(0.05,), daemon=True)

    @property
    def listen(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def seen_for(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.target.split("?")[0] == path]

    def __enter__(self) -> FakeOrigin:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    origin: FakeOrigin


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stall
    server: _Server

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        origin = self.server.origin
        headers = {k.lower(): v for k, v in self.headers.items()}
        origin.seen.append(Seen(self.command, self.path, headers, body))
        answer = origin.answers.get(self.path.split("?")[0], NOT_FOUND)
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.body)

    do_GET = do_HEAD = do_PUT = do_DELETE = do_POST = do_PATCH = do_OPTIONS = _answer

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read ``seen``
        pass


def serves_views(conf: str) -> bool:
    """Whether a rendered config serves files from the volumes' views (the fast path), in
    either form ``nginx.render`` writes: a chain of views, or ``try_files`` over them."""
    return "error_page 301 403 404" in conf or "try_files" in conf

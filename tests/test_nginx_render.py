"""The generated nginx config: its text (a golden file), ``nginx -t``, and the behaviour of a
real nginx in front of a fake origin — the fast path from the volumes' views, the fallback to
the origin, X-Accel-Redirect, writes, the internal locations and hostile URIs.

Regenerate the golden file with ``TANDEM_UPDATE_GOLDEN=1 pytest tests/test_nginx_render.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nginxproc import Answer, FakeOrigin, Nginx, for_test, free_port, require_nginx
from procs import write_config

from cluster.config import VolumeConfig
from nginx import runner
from nginx.errors import NginxCommandError, NginxConfigError, NginxNotInstalled
from nginx.render import Primary, render
from origin.cli import main
from origin.config import Config, load
from origin.settings import Route

GOLDEN = Path(__file__).parent / "golden" / "nginx.conf"
GOLDEN_TOML = """\
data_dir = "/srv/tandem"
[cluster]
[[cluster.volumes]]
path = "/srv/tandem/vol0"
[[cluster.volumes]]
path = "/srv/tandem/vol1"
[[cluster.volumes]]
path = "/srv/tandem/vol2"
[origin]
listen = "0.0.0.0:9430"
[nginx]
listen = "0.0.0.0:80"
user = "www-data"
worker_processes = 0
"""
ODD_ROUTE = {"prefix": "/a.b+c/", "root": "/odd/", "cache_control": "public, max-age=5"}
ROUTES = [
    {"prefix": "/images/", "root": "/images/", "cache_control": "public, max-age=2592000"},
    {"prefix": "/news/", "root": "/news/", "cache_control": "public, max-age=60"},
    ODD_ROUTE,
]
SECRET = b"TOP SECRET, outside every view"


def etag(path: Path) -> str:
    """nginx's ETag: hex mtime (seconds) and hex size."""
    st = path.stat()
    return f'"{int(st.st_mtime):x}-{st.st_size:x}"'


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_config(tmp: Path, origin: tuple[str, int], **nginx: object) -> Config:
    """A test config whose volumes have names that need quoting in nginx config (a space,
    quotes, braces, ``;``, ``#``, a backslash, a non-UTF-8 byte)."""
    path = write_config(
        tmp, sections={"origin": {"routes": ROUTES}, "nginx": dict(nginx)}, view=True
    )
    cfg = load(path)
    vols = (tmp / "vol0", tmp / 'vol 1 "q" {x};\\#é', tmp / "vol2-\udcff")
    cluster = dataclasses.replace(cfg.cluster, volumes=tuple(VolumeConfig(v) for v in vols))
    return for_test(dataclasses.replace(cfg, cluster=cluster), tmp / "nginx", origin)


@dataclasses.dataclass
class Front:
    cfg: Config
    origin: FakeOrigin
    nginx: Nginx
    vols: list[Path]


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    tmp = tmp_path_factory.mktemp("front")
    with FakeOrigin() as origin:
        cfg = make_config(tmp, origin.listen)
        require_nginx(cfg)
        vols = [v.path for v in cfg.cluster.volumes]
        put(vols[0] / "secret.txt", SECRET)
        put(tmp / "secret.txt", SECRET)
        with Nginx(cfg) as nginx:
            yield Front(cfg, origin, nginx, vols)


# -- the text ----------------------------------------------------------------------------------


def test_golden(tmp_path: Path) -> None:
    (tmp_path / "tandem.toml").write_text(GOLDEN_TOML)
    text = render(load(tmp_path / "tandem.toml"))
    if os.environ.get("TANDEM_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "set TANDEM_UPDATE_GOLDEN=1 to accept the new config"


def test_route_prefix_metacharacters_are_escaped(tmp_path: Path) -> None:
    text = render(make_config(tmp_path, ("127.0.0.1", 1)))
    assert 'location ~ "(?s)^/a\\\\.b\\\\+c/(?<tandem_rest>.*)"' in text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: _volume(c, "/srv/$x"), "cluster.volumes[0].path: nginx would read '$'"),
        (lambda c: _volume(c, "/srv/a\nb"), "cluster.volumes[0].path: control characters"),
        (lambda c: _volume(c, "srv/vol0"), "cluster.volumes[0].path: expected an absolute"),
        (lambda c: _route(c, Route("/i/", "/i/", "max-age=$x")), "routes[0].cache_control"),
        (lambda c: _route(c, Route("/_tandem/x/", "/x/", "")), "reserved for nginx"),
        (lambda c: _origin_port(c, 0), "origin.listen: nginx needs a fixed port"),
    ],
)
def test_render_refuses_what_nginx_cannot_read(
    tmp_path: Path, change: Callable[[Config], Config], message: str
) -> None:
    cfg = make_config(tmp_path, ("127.0.0.1", 1))
    with pytest.raises(NginxConfigError, match=message.replace("$", r"\$").replace("[", r"\[")):
        render(change(cfg))


def _volume(cfg: Config, path: str) -> Config:
    cluster = dataclasses.replace(cfg.cluster, volumes=(VolumeConfig(Path(path)),))
    return dataclasses.replace(cfg, cluster=cluster)


def _route(cfg: Config, route: Route) -> Config:
    return dataclasses.replace(cfg, origin=dataclasses.replace(cfg.origin, routes=(route,)))


def _origin_port(cfg: Config, port: int) -> Config:
    return dataclasses.replace(cfg, origin=dataclasses.replace(cfg.origin, listen=("h", port)))


def test_missing_nginx_says_how_to_install(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, ("127.0.0.1", 1), binary=str(tmp_path / "no-nginx"))
    with pytest.raises(NginxNotInstalled, match="apt-get install nginx"):
        runner.check(cfg)


def test_nginx_t_and_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_config(tmp_path, ("127.0.0.1", 1))
    require_nginx(cfg)
    assert runner.check(cfg).read_bytes() == render(cfg).encode("utf-8", "surrogateescape")
    no_fast_path = dataclasses.replace(cfg, nginx=dataclasses.replace(cfg.nginx, fast_path=False))
    assert "try_files" not in runner.check(no_fast_path).read_text(errors="replace")
    toml = write_config(tmp_path, sections={"nginx": {"run_dir": str(tmp_path / "cli")}})
    assert main(["--config", str(toml), "nginx", "render"]) == 0
    assert "upstream tandem_origin {" in capsys.readouterr().out
    assert main(["--config", str(toml), "nginx", "check"]) == 0
    assert (tmp_path / "cli" / "nginx.conf").is_file()
    assert main(["--config", str(toml), "nginx", "reload"]) == 1
    assert "nginx is not running" in capsys.readouterr().err


# -- a real nginx ------------------------------------------------------------------------------


def test_a_file_in_one_view_is_served_by_nginx(front: Front) -> None:
    only2 = put(front.vols[2] / "view/images/only2.jpg", b"only in vol2")
    put(front.vols[0] / "view/images/both.jpg", b"vol0 copy")
    put(front.vols[2] / "view/images/both.jpg", b"vol2 copy")
    r = front.nginx.request("GET", "/images/only2.jpg")
    assert (r.status, r.body) == (200, b"only in vol2")
    assert r.headers["etag"] == etag(only2)
    assert r.headers["cache-control"] == "public, max-age=2592000"
    assert r.headers["content-type"] == "image/jpeg"
    assert front.nginx.request("GET", "/images/both.jpg").body == b"vol0 copy"  # volume order
    for dots in ("/images/x/../only2.jpg", "/images/./only2.jpg", "/images/x/%2E%2e/only2.jpg"):
        assert front.nginx.request("GET", dots).status == 400  # refused, as by the origin
    assert front.nginx.request("GET", "/images/only2.jpg?a=/../").status == 200  # query: fine
    assert front.nginx.request("GET", "/images/only2.jpg", If_None_Match=etag(only2)).status == 304
    r = front.nginx.request("GET", "/images/only2.jpg", Range="bytes=5-6")
    assert (r.status, r.body) == (206, b"in")
    assert front.nginx.request("HEAD", "/images/only2.jpg").headers["content-length"] == "12"
    odd = put(front.vols[1] / "view/odd/x.txt", b"odd route, odd volume path")
    r = front.nginx.request("GET", "/a.b+c/x.txt")
    assert (r.status, r.body, r.headers["etag"]) == (200, odd.read_bytes(), etag(odd))
    assert r.headers["cache-control"] == "public, max-age=5"
    put(front.vols[2] / "view/images/a\nb.jpg", b"newline")
    assert front.nginx.request("GET", "/images/a%0Ab.jpg").body == b"newline"
    assert front.nginx.request("GET", "/aXb+c/x.txt").status == 404  # "." is not a wildcard
    assert not front.origin.seen_for("/images/only2.jpg")
    assert not front.origin.seen_for("/images/both.jpg")


def test_a_missing_file_reaches_the_origin_unchanged(front: Front) -> None:
    put(front.vols[0] / "view/images/a.jpg", b"a.jpg, which the newline must not reach")
    put(front.vols[0] / "view/images/dir/f.jpg", b"f")
    # Folders in a view are not files: listings (none) and index pages are the origin's.
    targets = ["/images/", "/images/dir", "/images/dir/", "/news/"]
    targets += ["/images/no%20such.jpg?v=1&x=%2F", "/images/a.jpg%0Ab.jpg"]
    for target in targets:
        r = front.nginx.request("GET", target, X_Tandem_Accel="forged")
        assert r.status == 404 and r.body.startswith(b"fake origin"), target
        (seen,) = [s for s in front.origin.seen if s.target == target]
        assert seen.headers["x-tandem-accel"] == "1"
        assert seen.headers["x-forwarded-for"] == "127.0.0.1"
    for path in ("/healthz", "/readyz", "/metrics", "/status"):
        front.origin.answers[path] = Answer(200, {"Content-Type": "text/plain"}, b"ok")
        assert front.nginx.request("GET", path).body == b"ok"


def test_x_accel_redirect_is_served_from_the_volume(front: Front) -> None:
    chunk = put(front.vols[0] / "ab/chunk_x", b"chunk bytes")
    other = put(front.vols[1] / "cd/chunk_y", b"on the oddly named volume")
    legacy = put(front.cfg.legacy.dir / "news/old.html", b"<p>legacy</p>")
    cases = [
        ("/images/accel.jpg", "/_tandem/vol/0/ab/chunk_x", "image/webp", chunk),
        ("/images/accel1.jpg", "/_tandem/vol/1/cd/chunk_y", "image/png", other),
        ("/news/old.html", "/_tandem/legacy/news/old.html", "text/html; charset=utf-8", legacy),
    ]
    for path, redirect, ctype, file in cases:
        front.origin.answers[path] = Answer(
            200,
            {
                "X-Accel-Redirect": redirect,
                "Content-Type": ctype,
                "Cache-Control": "public, max-age=7",
                "ETag": '"from-the-origin"',
            },
        )
        r = front.nginx.request("GET", path)
        assert (r.status, r.body) == (200, file.read_bytes()), path
        assert r.headers["content-type"] == ctype
        assert r.headers["cache-control"] == "public, max-age=7"
        assert r.headers["etag"] == etag(file)


def test_writes_reach_the_origin_with_their_body(front: Front) -> None:
    put(front.vols[0] / "view/images/w.jpg", b"old bytes")
    front.origin.answers["/images/w.jpg"] = Answer(201, {}, b"stored")
    front.origin.answers["/images/new.jpg"] = Answer(204)
    for method, target, body in [
        ("PUT", "/images/w.jpg?token=1", b"new bytes"),  # on a file nginx could serve
        ("PUT", "/images/new.jpg", b"x" * 200_000),  # on a file nobody has yet
        ("DELETE", "/images/w.jpg", None),
        ("POST", "/images/w.jpg", b"form"),
        ("OPTIONS", "/images/w.jpg", None),
    ]:
        r = front.nginx.request(method, target, body)
        assert r.status in (201, 204), (method, target)
        assert "cache-control" not in r.headers  # the route's is for files nginx serves
        seen = front.origin.seen[-1]
        assert (seen.method, seen.target, seen.body) == (method, target, body or b"")
        assert seen.headers["x-tandem-accel"] == "1"


def test_internal_locations_are_unreachable(front: Front) -> None:
    put(front.vols[0] / "ab/chunk_x", b"chunk bytes")
    before = len(front.origin.seen)
    for target in ("/_tandem/vol/0/ab/chunk_x", "/_tandem/legacy/", "/_tandem/", "/elsewhere"):
        assert front.nginx.request("GET", target).status == 404, target
    assert len(front.origin.seen) == before


@pytest.mark.parametrize(
    "target",
    [
        b"/images/x%2F..%2F..%2Fsecret.txt",
        b"/images/x%2f..%2f..%2fsecret.txt",
        b"/images/%5C..%5Csecret.txt",
        b"/images/\\..\\secret.txt",
        b"/images/secret.txt%00.jpg",
        b"/images/secret\x00.txt",
        b"/images/../secret.txt",
        b"/images/../../secret.txt",
        b"/images/%2e%2e/secret.txt",
        b"/images/%2e%2e/%2E%2E/secret.txt",
        b"/images/" + b"a" * 9000,
    ],
)
def test_hostile_uris_are_refused(front: Front, target: bytes) -> None:
    before = len(front.origin.seen)
    r = front.nginx.raw(target)
    assert 400 <= r.status < 500
    assert SECRET not in r.body
    assert len(front.origin.seen) == before


def test_access_log_is_json(front: Front) -> None:
    agent = 'say "hi" \\ there'
    front.nginx.request("GET", "/elsewhere", User_Agent=agent)
    lines = front.nginx.paths.access_log.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert all(r["event"] == "nginx.request" for r in records)
    assert (records[-1]["uri"], records[-1]["status"], records[-1]["agent"]) == (
        "/elsewhere", 404, agent
    )


def test_without_the_fast_path_everything_goes_to_the_origin(tmp_path: Path) -> None:
    with FakeOrigin() as origin:
        cfg = make_config(tmp_path, origin.listen, fast_path=False)
        put(cfg.cluster.volumes[0].path / "view/images/a.jpg", b"in the view")
        with Nginx(cfg) as nginx:
            assert nginx.request("GET", "/images/a.jpg").status == 404
            assert [s.target for s in origin.seen] == ["/images/a.jpg"]


def test_reload_applies_a_new_config_and_refuses_a_bad_one(tmp_path: Path) -> None:
    with FakeOrigin() as origin:
        cfg = make_config(tmp_path, origin.listen)
        put(cfg.cluster.volumes[0].path / "view/images/a.jpg", b"a")
        with Nginx(cfg) as nginx:
            assert _cache_control(nginx, "/images/a.jpg") == "public, max-age=2592000"
            new = _route(cfg, Route("/images/", "/images/", "no-store"))
            old_workers = nginx.workers()
            runner.reload(new)
            _wait_for(lambda: not nginx.workers() & old_workers)
            assert _cache_control(nginx, "/images/a.jpg") == "no-store"
            installed = nginx.paths.conf.read_text(errors="replace")
            if os.geteuid() == 0:  # only root's nginx looks the user up
                user = dataclasses.replace(new.nginx, user="tandem-no-such-user")
                bad = dataclasses.replace(new, nginx=user)
                with pytest.raises(NginxCommandError, match="tandem-no-such-user"):
                    runner.reload(bad)
                assert nginx.paths.conf.read_text(errors="replace") == installed
                assert not list(nginx.paths.run_dir.glob("*.new"))
            assert _cache_control(nginx, "/images/a.jpg") == "no-store"


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _cache_control(nginx: Nginx, target: str) -> str | None:
    return nginx.request("GET", target).headers.get("cache-control")


# -- primary and backup ------------------------------------------------------------------------


def _hp(listen: tuple[str, int]) -> str:
    return f"{listen[0]}:{listen[1]}"


def _legacy_at(cfg: Config, listen: tuple[str, int]) -> Config:
    return dataclasses.replace(cfg, legacy=dataclasses.replace(cfg.legacy, listen=listen))


def _reload(nginx: Nginx, cfg: Config, primary: Primary) -> None:
    old_workers = nginx.workers()
    runner.reload(cfg, primary)
    _wait_for(lambda: not nginx.workers() & old_workers)


def test_the_legacy_primary_and_the_backup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The upstream's primary side is an input: with the cluster primary the legacy origin is
    the backup; with the legacy directory primary (after ``tandem flip --to legacy``) the
    legacy origin is primary, the cluster origin the backup, and nothing is served from the
    views (the cluster is then the mirror and may lag). A real nginx reloaded from one to the
    other follows, and uses the backup when the primary is down. ``tandem nginx render``
    renders the persisted primary."""
    with FakeOrigin() as origin, FakeOrigin() as legacy:
        cfg = _legacy_at(make_config(tmp_path, origin.listen), legacy.listen)
        text, cluster_text = render(cfg, "legacy"), render(cfg)
        assert f"server {_hp(legacy.listen)} max_fails=2 fail_timeout=30s;" in text
        assert f"server {_hp(origin.listen)} backup;" in text
        assert f"server {_hp(origin.listen)} max_fails=2 fail_timeout=30s;" in cluster_text
        assert f"server {_hp(legacy.listen)} backup;" in cluster_text
        assert "try_files" not in text and "try_files" in cluster_text
        with pytest.raises(NginxConfigError, match="primary"):
            render(cfg, "elsewhere")  # type: ignore[arg-type]
        require_nginx(cfg)
        put(cfg.cluster.volumes[0].path / "view/images/a.jpg", b"in the view")
        legacy.answers["/images/a.jpg"] = Answer(200, {}, b"from the legacy origin")
        origin.answers["/images/a.jpg"] = Answer(200, {}, b"from the cluster origin")
        with Nginx(cfg) as nginx:
            assert nginx.request("GET", "/images/a.jpg").body == b"in the view"
            _reload(nginx, cfg, "legacy")
            assert nginx.request("GET", "/images/a.jpg").body == b"from the legacy origin"
            _reload(nginx, _legacy_at(cfg, ("127.0.0.1", free_port())), "legacy")  # down
            assert nginx.request("GET", "/images/a.jpg").body == b"from the cluster origin"
    toml = write_config(tmp_path, sections={"nginx": {"run_dir": str(tmp_path / "cli")}})
    (tmp_path / "var" / "sync").mkdir(parents=True)
    (tmp_path / "var" / "sync" / "primary").write_text("legacy\n")
    assert main(["--config", str(toml), "nginx", "render"]) == 0
    assert "# primary: legacy, backup: cluster" in capsys.readouterr().out

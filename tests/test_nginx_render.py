"""The generated nginx config: its text (golden files), ``nginx -t``, the refusals of the
upstream model, and the behaviour of a real nginx in front of fake origins — the fast path
from the volumes' views, the fallback to the origin, X-Accel-Redirect, writes, the internal
locations, hostile URIs, failover of GET/HEAD (and never of writes), the dynamic pass-through
and the cache. Failover against real origins is ``test_failover.py``.

Regenerate the golden files with ``TANDEM_UPDATE_GOLDEN=1 pytest tests/test_nginx_render.py``
(and read the diff).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nginxproc import (
    Answer,
    FakeOrigin,
    Nginx,
    for_test,
    free_port,
    require_nginx,
    serves_views,
)
from procs import write_config

from cluster.config import ConfigError, VolumeConfig
from nginx import runner
from nginx.config import AppConfig, CacheConfig
from nginx.errors import NginxCommandError, NginxConfigError, NginxNotInstalled
from nginx.render import Primary, render
from origin.cli import main
from origin.config import Config, load
from origin.settings import Route

GOLDEN_DIR = Path(__file__).parent / "golden"
GOLDEN_TOML = """\
data_dir = "{data_dir}"
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
listen = "{listen}"
{user}worker_processes = 0
"""
# Every knob of the failover model, the pass-through and the cache, away from the defaults.
FULL_TOML = """\
fast_path = false
origins = ["127.0.0.1:9432", "[::1]:9433"]
balance = "least_conn"
max_fails = 2
fail_timeout = 5
connect_timeout = 0.25
send_timeout = 2
read_timeout = 1.5
next_upstream_tries = 2
next_upstream_timeout = 4
keepalive = 8
[nginx.app]
servers = ["127.0.0.1:8000", "127.0.0.1:8001"]
read_timeout = 30
[nginx.cache]
enabled = true
max_size = 104857600
inactive = 300
valid = 20
"""
GOLDEN_CASES = {  # golden file → (more [nginx] TOML, primary)
    "nginx.conf": ("", "cluster"),
    "nginx-legacy-primary.conf": ("", "legacy"),
    "nginx-full.conf": (FULL_TOML, "cluster"),
}


def golden_config(tmp: Path, extra: str, *, for_nginx_t: bool = False) -> Config:
    """The golden files' config; ``for_nginx_t`` puts it under ``tmp`` on a free port without
    the user (what ``nginx -t`` can check here)."""
    text = GOLDEN_TOML.format(
        data_dir=tmp if for_nginx_t else "/srv/tandem",
        listen=f"127.0.0.1:{free_port()}" if for_nginx_t else "0.0.0.0:80",
        user="" if for_nginx_t else 'user = "www-data"\n',
    )
    if for_nginx_t:
        text = text.replace("/srv/tandem/", f"{tmp}/")
    (tmp / "tandem.toml").write_text(text + extra)
    return load(tmp / "tandem.toml")
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


@pytest.mark.parametrize("name", GOLDEN_CASES)
def test_golden(tmp_path: Path, name: str) -> None:
    extra, primary = GOLDEN_CASES[name]
    text = render(golden_config(tmp_path, extra), primary)  # type: ignore[arg-type]
    golden = GOLDEN_DIR / name
    if os.environ.get("TANDEM_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text(), "set TANDEM_UPDATE_GOLDEN=1 to accept the new config"


@pytest.mark.parametrize("name", GOLDEN_CASES)
def test_golden_configs_pass_nginx_t(tmp_path: Path, name: str) -> None:
    extra, primary = GOLDEN_CASES[name]
    cfg = golden_config(tmp_path, extra, for_nginx_t=True)
    require_nginx(cfg)
    runner.check_only(cfg, primary)  # type: ignore[arg-type]


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
    assert not serves_views(runner.check(no_fast_path).read_text(errors="replace"))
    assert serves_views(render(cfg))
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
    put(front.vols[1] / "view/images/dir/index.html", b"an index page nginx must not serve")
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
        assert f"server {_hp(legacy.listen)} max_fails=1 fail_timeout=10s;" in text
        assert f"server {_hp(origin.listen)} max_fails=1 fail_timeout=10s backup;" in text
        assert f"server {_hp(origin.listen)} max_fails=1 fail_timeout=10s;" in cluster_text
        assert f"server {_hp(legacy.listen)} max_fails=1 fail_timeout=10s backup;" in cluster_text
        assert not serves_views(text) and serves_views(cluster_text)
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


# -- the upstream model: what nginx would ignore or reject is refused ---------------------------

LISTENS = 'origin.listen = "0.0.0.0:9430"'  # as GOLDEN_TOML; legacy.listen is 127.0.0.1:9431


@pytest.mark.parametrize(
    ("nginx", "primary", "message"),
    [
        ("backup = false", "cluster",
         r"nginx\.max_fails: nginx ignores max_fails in upstream tandem_origin, which has one "
         r"server \(127\.0\.0\.1:9430, origin\.listen\) and no backup"),
        ('backup = false\norigins = ["10.0.0.2:9430"]', "legacy",  # flipped: legacy alone
         r"nginx\.max_fails: .* one server \(127\.0\.0\.1:9431, legacy\.listen\)"),
        ('balance = "hash"', "cluster",
         r"nginx\.balance: nginx refuses backup servers with hash \(legacy\.listen is the "
         r"backup of upstream tandem_origin\)"),
        ('balance = "ip_hash"', "cluster", r"nginx\.balance: .* with ip_hash"),
        ('balance = "random"\norigins = ["10.0.0.2:9430"]', "legacy",
         r"nginx\.balance: .* with random \(origin\.listen is the backup"),
        ('origins = ["127.0.0.1:9430"]', "cluster",  # origin.listen binds 0.0.0.0:9430
         r"nginx\.origins\[0\]: 127\.0\.0\.1:9430 is already in upstream tandem_origin as "
         r"origin\.listen"),
        ('origins = ["10.0.0.2:1", "10.0.0.2:1"]', "cluster",
         r"nginx\.origins\[1\]: 10\.0\.0\.2:1 is already .* as nginx\.origins\[0\]"),
        ('origins = ["127.0.0.1:9431"]', "cluster",
         r"legacy\.listen: 127\.0\.0\.1:9431 is already .* as nginx\.origins\[0\]"),
        ('origins = ["127.0.0.1:80"]', "cluster",  # the front listens on 0.0.0.0:80
         r"nginx\.origins\[0\]: 127\.0\.0\.1:80 is the front itself \(nginx\.listen\)"),
        ('[nginx.app]\nservers = ["10.0.0.5:8000", "10.0.0.5:8000"]', "cluster",
         r"nginx\.app\.servers\[1\]: 10\.0\.0\.5:8000 is already in upstream tandem_app"),
        ('[nginx.app]\nservers = ["10.0.0.5:8000"]\nmax_fails = 3', "cluster",
         r"nginx\.app\.max_fails: nginx ignores max_fails in upstream tandem_app"),
    ],
)
def test_render_refuses_a_group_nginx_would_ignore_or_reject(
    tmp_path: Path, nginx: str, primary: Primary, message: str
) -> None:
    cfg = golden_config(tmp_path, nginx + "\n")
    with pytest.raises(NginxConfigError, match=message):
        render(cfg, primary)


@pytest.mark.parametrize(
    "nginx",
    [
        "backup = false\nmax_fails = 0",  # one server, nothing relies on max_fails
        'backup = false\norigins = ["10.0.0.2:9430"]',  # two servers
        'balance = "hash"\nbackup = false\norigins = ["10.0.0.2:9430"]',
        'balance = "least_conn"\norigins = ["10.0.0.2:9430"]',
        '[nginx.app]\nservers = ["10.0.0.5:8000"]',  # one app server: max_fails 0 by default
        '[nginx.app]\nservers = ["10.0.0.5:8000", "10.0.0.6:8000"]\nmax_fails = 3',
    ],
)
def test_render_accepts_groups_nginx_honours(tmp_path: Path, nginx: str) -> None:
    text = render(golden_config(tmp_path, nginx + "\n"))
    assert "upstream tandem_origin {" in text


@pytest.mark.parametrize(
    ("nginx", "message"),
    [
        ("read_timeout = 0", r"nginx\.read_timeout: expected at least 0\.001 s, got 0"),
        ("read_timeout = -1", r"nginx\.read_timeout: -1\.0 is out of range"),
        ("connect_timeout = 5", r"nginx\.connect_timeout: 5 s is longer than "
         r"nginx\.read_timeout \(3 s\)"),
        ("next_upstream_timeout = 4", r"nginx\.next_upstream_timeout: 4 s leaves no time to "
         r"try the backup after a hung origin \(nginx\.connect_timeout \+ nginx\.read_timeout"),
        ("next_upstream_tries = 1", r"nginx\.next_upstream_tries: 1 would never try another"),
        ("next_upstream_tries = 0", r"nginx\.next_upstream_tries: 0 .* retry without bound"),
        ("fail_timeout = 0", r"nginx\.fail_timeout: 0 is out of range 1\.\.3600"),
        ("fail_timeout = 1.5", r"nginx\.fail_timeout: expected an integer"),
        ("max_fails = -1", r"nginx\.max_fails: -1 is out of range"),
        ('balance = "fair"', r"nginx\.balance: expected one of round_robin, least_conn"),
        ('origins = ["no-port"]', r"nginx\.origins\[0\]: expected HOST:PORT"),
        ('origins = ["h:0"]', r"nginx\.origins\[0\]: expected HOST:PORT"),
        ("[nginx.app]\nread_timeout = 0", r"nginx\.app\.read_timeout: expected at least"),
        ('[nginx.app]\nservers = "h:1"', r"nginx\.app\.servers: expected an array of strings"),
        ("[nginx.cache]\nmax_size = 10", r"nginx\.cache\.max_size: 10 is out of range"),
        ("[nginx.cache]\nsize = 10", r"nginx\.cache\.size: unknown key"),
    ],
)
def test_config_refuses_nonsensical_values(tmp_path: Path, nginx: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        golden_config(tmp_path, nginx + "\n")


# -- failover, writes, the pass-through and the cache on a real nginx ---------------------------


def _two_sided(tmp: Path, primary: FakeOrigin, backup: FakeOrigin, **nginx: object) -> Config:
    cfg = _legacy_at(make_config(tmp, primary.listen, fast_path=False, **nginx), backup.listen)
    require_nginx(cfg)
    return cfg


def test_gets_fail_over_and_writes_never_do(tmp_path: Path) -> None:
    """A 503 (or a refused connection) on a GET/HEAD is retried on the backup; a 500 is the
    client's; a write (PUT, DELETE, POST) goes to the primary only and is never replayed —
    not even while the primary is out of the group; the origin's pages are the primary's
    answer (a 503 included) while it answers."""
    with FakeOrigin() as primary, FakeOrigin() as backup:
        cfg = _two_sided(tmp_path, primary, backup)
        for side, name in ((primary, b"primary"), (backup, b"backup")):
            for path in ("/images/a.jpg", "/images/b.jpg", "/news/c.html"):
                side.answers[path] = Answer(200, {}, b"from the " + name)
        primary.answers["/images/b.jpg"] = Answer(500, {}, b"a bug")
        primary.answers["/readyz"] = Answer(503, {}, b"not ready")
        with Nginx(cfg) as nginx:
            r = nginx.request("GET", "/images/b.jpg")
            assert (r.status, r.body) == (500, b"a bug")  # not retried, not counted
            assert nginx.request("GET", "/readyz").status == 503  # the primary's own answer
            assert nginx.request("GET", "/images/a.jpg").body == b"from the primary"
            primary.answers["/images/a.jpg"] = Answer(503, {}, b"storage trouble")
            assert nginx.request("GET", "/images/a.jpg").body == b"from the backup"
            # one failure (max_fails = 1) took the primary out for fail_timeout
            assert nginx.request("HEAD", "/news/c.html").status == 200
            assert not primary.seen_for("/news/c.html") and backup.seen_for("/news/c.html")
            primary.answers["/news/c.html"] = Answer(503, {}, b"fenced")
            for method, body in (("PUT", b"new"), ("DELETE", None), ("POST", b"form")):
                r = nginx.request(method, "/news/c.html", body)
                assert (r.status, r.body) == (503, b"fenced"), method
            assert [s.method for s in primary.seen_for("/news/c.html")] == [
                "PUT", "DELETE", "POST"
            ]
            assert {s.method for s in backup.seen} <= {"GET", "HEAD"}
            assert not backup.seen_for("/readyz")
            head = nginx.paths.access_log.read_text().splitlines()
            tried = [json.loads(line)["upstream"] for line in head]
            assert f"{_hp(primary.listen)}, {_hp(backup.listen)}" in tried


def test_a_primary_that_refuses_connections_is_passed_over(tmp_path: Path) -> None:
    with FakeOrigin() as backup:
        down = ("127.0.0.1", free_port())
        cfg = _legacy_at(make_config(tmp_path, down, fast_path=False), backup.listen)
        require_nginx(cfg)
        backup.answers["/images/a.jpg"] = Answer(200, {}, b"from the backup")
        with Nginx(cfg) as nginx:
            for _ in range(3):
                assert nginx.request("GET", "/images/a.jpg").body == b"from the backup"
            assert nginx.request("PUT", "/images/a.jpg", b"x").status == 502  # never the backup
            backup.answers["/healthz"] = Answer(200, {}, b"ok")
            assert nginx.request("GET", "/healthz").body == b"ok"  # the front still serves
            assert not [s for s in backup.seen if s.method == "PUT"]


def test_the_dynamic_pass_through(tmp_path: Path) -> None:
    """Outside the routes, the origin's pages and the internal locations, requests go to the
    app servers unchanged, without X-Tandem-Accel; an app's X-Accel-Redirect is not
    followed (it cannot reach the volumes); the routes stay the origin's."""
    with FakeOrigin() as origin, FakeOrigin() as app:
        cfg = make_config(tmp_path, origin.listen, fast_path=False)
        put(cfg.cluster.volumes[0].path / "ab/chunk_x", b"chunk bytes")
        n = dataclasses.replace(cfg.nginx, app=AppConfig((app.listen,), 0, 10, 5.0))
        cfg = dataclasses.replace(cfg, nginx=n)
        require_nginx(cfg)
        app.answers["/"] = Answer(200, {"Content-Type": "text/html"}, b"home page")
        app.answers["/api/a%2Fb"] = Answer(200, {}, b"api")
        app.answers["/sneaky"] = Answer(200, {"X-Accel-Redirect": "/_tandem/vol/0/ab/chunk_x"},
                                        b"the app's own body")
        origin.answers["/images/a.jpg"] = Answer(200, {}, b"asset")
        with Nginx(cfg) as nginx:
            assert nginx.request("GET", "/").body == b"home page"
            assert nginx.request("GET", "/api/a%2Fb?q=1").body == b"api"  # not hostile here
            r = nginx.request("POST", "/form", b"name=x")
            assert r.status == 404 and app.seen[-1].body == b"name=x"
            r = nginx.request("GET", "/sneaky")
            assert (r.body, "x-accel-redirect" in r.headers) == (b"the app's own body", False)
            assert nginx.request("GET", "/images/a.jpg").body == b"asset"
            assert nginx.request("GET", "/images/x/../a.jpg").status == 400
            assert all("x-tandem-accel" not in s.headers for s in app.seen)
            assert [s.target for s in app.seen] == ["/", "/api/a%2Fb?q=1", "/form", "/sneaky"]


def test_the_cache_serves_stale_answers_when_the_origins_fail(tmp_path: Path) -> None:
    with FakeOrigin() as primary, FakeOrigin() as backup:
        cfg = _two_sided(tmp_path, primary, backup)
        cache = CacheConfig(tmp_path / "cache", 1 << 20, 60, 1)
        cfg = dataclasses.replace(cfg, nginx=dataclasses.replace(cfg.nginx, cache=cache))
        streamed = Answer(200, {"Cache-Control": "max-age=60"}, b"version 1")
        primary.answers["/news/s.html"] = streamed
        put(cfg.cluster.volumes[0].path / "ab/chunk_x", b"chunk bytes")
        accel = Answer(200, {"X-Accel-Redirect": "/_tandem/vol/0/ab/chunk_x"})
        primary.answers["/images/x.jpg"] = accel
        with Nginx(cfg) as nginx:
            for _ in range(2):
                assert nginx.request("GET", "/news/s.html").body == b"version 1"
                assert nginx.request("GET", "/images/x.jpg").body == b"chunk bytes"
            assert len(primary.seen_for("/news/s.html")) == 1  # the second was a hit
            assert len(primary.seen_for("/images/x.jpg")) == 2  # X-Accel: never cached
            time.sleep(2.1)  # valid = 1 s in nginx's whole seconds (the max-age is ignored)
            for side in (primary, backup):
                side.answers["/news/s.html"] = Answer(503, {}, b"down")
            for _ in range(2):
                r = nginx.request("GET", "/news/s.html")
                assert (r.status, r.body) == (200, b"version 1")
            statuses = [json.loads(line)["cache"]
                        for line in nginx.paths.access_log.read_text().splitlines()]
            assert "HIT" in statuses and ("STALE" in statuses or "UPDATING" in statuses)


def test_an_overwrite_is_served_new_through_the_cache_within_valid(tmp_path: Path) -> None:
    """nginx's copy is fresh for ``valid`` seconds, not for the origin's 30-day max-age (which
    still reaches the client): the new version of a streamed file is served within ``valid``
    plus the one background update; while unchanged, the origin sees no GET of it."""
    with FakeOrigin() as primary, FakeOrigin() as backup:
        cfg = _two_sided(tmp_path, primary, backup)
        cache = CacheConfig(tmp_path / "cache", 1 << 20, 60, 1)
        cfg = dataclasses.replace(cfg, nginx=dataclasses.replace(cfg.nginx, cache=cache))
        month = {"Cache-Control": "public, max-age=2592000"}
        primary.answers["/news/s.html"] = Answer(200, {**month, "ETag": '"v1"'}, b"version 1")
        with Nginx(cfg) as nginx:
            for _ in range(3):
                r = nginx.request("GET", "/news/s.html")
                assert r.body == b"version 1"
                assert r.headers["cache-control"] == month["Cache-Control"]
            assert len(primary.seen_for("/news/s.html")) == 1
            primary.answers["/news/s.html"] = Answer(200, {**month, "ETag": '"v2"'}, b"version 2")
            t0 = time.monotonic()
            while nginx.request("GET", "/news/s.html").body != b"version 2":
                assert time.monotonic() - t0 < 4.0, "still the old version through the cache"
                time.sleep(0.1)

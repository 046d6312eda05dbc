"""Path validation (cluster/paths.py) and config loading (origin/config.py, cluster/config.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cluster import paths
from cluster.config import ConfigError
from cluster.errors import InvalidPath, UserError
from origin.config import load, render

# -- paths ---------------------------------------------------------------------------------------


def long_path(n: int) -> str:
    """A valid-looking path of exactly ``n`` bytes: every name is within NAME_MAX."""
    head = "/" + "/".join(["d" * 200] * 20)
    return head + "/" + "x" * (n - len(head) - 1)


@pytest.mark.parametrize(
    ("raw", "parts"),
    [
        ("/", ()),
        ("", ()),
        ("/a", (b"a",)),
        ("a/b", (b"a", b"b")),
        ("/a/b/", (b"a", b"b")),
        (b"/x/\xff\xfe.jpg", (b"x", b"\xff\xfe.jpg")),
        ("/caf\u00e9/\u65e5\u672c", ("caf\u00e9".encode(), "\u65e5\u672c".encode())),
        ("/..a/b..", (b"..a", b"b..")),
        ("/.hidden/...", (b".hidden", b"...")),
        ("/" + "n" * 255, (b"n" * 255,)),
    ],
)
def test_parse_accepts(raw: str | bytes, parts: tuple[bytes, ...]) -> None:
    assert paths.parse(raw) == parts


def test_non_utf8_round_trips_byte_exactly() -> None:
    raw = b"/d\xe9j\xe0/\x80\xff\xfe name.jpg"
    assert paths.join(paths.parse(raw)) == raw
    assert "\\xff" in paths.show(raw)  # printable form for messages, never lossy '?'


def test_str_with_surrogateescape_is_the_same_bytes() -> None:
    raw = b"/x/\xff.jpg"
    assert paths.parse(raw.decode("utf-8", "surrogateescape")) == paths.parse(raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("/a/../etc/passwd", "component '..' is not allowed"),
        ("/../etc/passwd", "component '..' is not allowed"),
        ("..", "component '..' is not allowed"),
        ("/a/./b", "component '.' is not allowed"),
        ("/a/.", "component '.' is not allowed"),
        (b"/a\0b", "NUL byte"),
        ("/a/b\x00", "NUL byte"),
        ("/a//b", "empty component"),
        ("//a", "empty component"),
        ("/a/b//", "empty component"),
        ("/" + "n" * 256, "name is 256 bytes long; the limit is 255"),
        ("/a/" + "\u00e9" * 128, "name is 256 bytes long"),  # 128 chars, 256 bytes
        (long_path(4096), "path is 4096 bytes long; the limit is 4095"),
        (long_path(5000), "path is 5000 bytes long; the limit is 4095"),
    ],
)
def test_parse_rejects(raw: str | bytes, message: str) -> None:
    with pytest.raises(InvalidPath, match=re.escape(message)):
        paths.parse(raw)


def test_invalid_path_is_a_user_error() -> None:
    with pytest.raises(UserError):
        paths.parse("/a/../b")


def test_path_max_boundary() -> None:
    assert len(long_path(4095)) == 4095
    assert len(paths.parse(long_path(4095))) == 21


# -- config --------------------------------------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "tandem.toml") -> Path:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def test_default_without_file_lives_under_var(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load(None)
    base = Path.cwd()
    assert cfg.source is None
    assert cfg.data_dir == base / "var"
    c = cfg.cluster
    assert c.meta_dir == base / "var" / "master"
    assert [v.path for v in c.volumes] == [base / "var" / "volumes" / f"vol{i}" for i in range(3)]
    assert c.chunk_size == 64 << 20
    assert c.default_goal == 2
    assert c.listen == ("127.0.0.1", 9420)
    assert c.url == "http://127.0.0.1:9420"
    assert not (tmp_path / "var").exists()  # loading creates nothing


def test_missing_optional_file_gives_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load(tmp_path / "absent.toml")
    assert cfg.source is None
    assert cfg.data_dir == Path.cwd() / "var"


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml: no such config file"):
        load(missing, required=True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[cluster]\nchunk_sise = 131072\n", r"^cluster\.chunk_sise: unknown key$"),
        ("colour = 1\n", r"^colour: unknown key$"),
        ("[log]\nlevle = 'info'\n", r"^log\.levle: unknown key$"),
        (
            "[[cluster.volumes]]\npath = 'a'\nsize = 3\n",
            r"^cluster\.volumes\[0\]\.size: unknown key$",
        ),
        (
            "[cluster]\nchunk_size = 'big'\n",
            r"^cluster\.chunk_size: expected an integer, got 'big'$",
        ),
        (
            "[cluster]\ndefault_goal = true\n",
            r"^cluster\.default_goal: expected an integer, got True$",
        ),
        (
            "[cluster]\nreplication_delay = 'soon'\n",
            r"^cluster\.replication_delay: expected a number",
        ),
        ("[cluster]\nmeta_dir = 5\n", r"^cluster\.meta_dir: expected a string, got 5$"),
        ("[cluster]\nmeta_dir = ''\n", r"^cluster\.meta_dir: must not be empty$"),
        ("cluster = 3\n", r"^cluster: expected a table"),
        ("[cluster]\ndefault_goal = 10\n", r"^cluster\.default_goal: 10 is out of range 1\.\.9$"),
        ("[cluster]\ndefault_goal = 0\n", r"^cluster\.default_goal: 0 is out of range 1\.\.9$"),
        (
            "[cluster]\ndefault_trash_time = -1\n",
            r"^cluster\.default_trash_time: -1 is out of range",
        ),
        ("[cluster]\nchunk_size = 100000\n", r"^cluster\.chunk_size: must be a multiple of 65536"),
        ("[cluster]\nchunk_size = 1024\n", r"^cluster\.chunk_size: 1024 is out of range"),
        ("[cluster]\nchunk_size = 134217728\n", r"^cluster\.chunk_size: 134217728 is out of range"),
        (
            "[cluster]\nlisten = 'localhost'\n",
            r"^cluster\.listen: expected HOST:PORT, got 'localhost'$",
        ),
        ("[cluster]\nlisten = 'h:70000'\n", r"^cluster\.listen: expected HOST:PORT"),
        ("[cluster]\nvolumes = []\n", r"^cluster\.volumes: at least one volume is needed$"),
        ("[cluster]\nvolumes = 'v'\n", r"^cluster\.volumes: expected an array of tables"),
        (
            "[[cluster.volumes]]\npath = 'a'\n[[cluster.volumes]]\npath = './a'\n",
            r"^cluster\.volumes: the same path is listed twice$",
        ),
        ("[[cluster.volumes]]\npath = 3\n", r"^cluster\.volumes\[0\]\.path: expected a string"),
        ("[log]\nlevel = 'loud'\n", r"^log\.level: expected one of debug, info, warning, error"),
        ("[cluster\n", r"tandem\.toml: not valid TOML"),
        ("[origin]\nworkers = 0\n", r"^origin\.workers: 0 is out of range 1\.\.64$"),
        (
            "[[origin.routes]]\nprefix = 'images/'\n",
            r"^origin\.routes\[0\]\.prefix: expected a path that starts and ends with '/'",
        ),
        (
            "[[origin.routes]]\nprefix = '/a/'\nroot = '/x/../y/'\n",
            r"^origin\.routes\[0\]\.root: expected a path",
        ),
        (
            "[[origin.routes]]\nprefix = '/a/'\ncache_control = \"x\\ny\"\n",
            r"^origin\.routes\[0\]\.cache_control: must be one header value$",
        ),
        (
            "[[origin.routes]]\nprefix = '/a/'\n[[origin.routes]]\nprefix = '/a/'\n",
            r"^origin\.routes: the same prefix is listed twice$",
        ),
        ("[origin]\nwrite_prefixes = '/news/'\n", r"^origin\.write_prefixes: expected an array"),
        ("[origin]\nwrite_prefixes = [1]\n", r"^origin\.write_prefixes: expected an array of str"),
        (
            "[origin]\nwrite_prefixes = ['/news/']\n",
            r"^origin\.write_token: writes are on \(write_prefixes\), so a bearer token",
        ),
        (
            "[origin]\nwrite_prefixes = ['/news/']\nwrite_token = 'short'\n",
            r"^origin\.write_token: writes are on",
        ),
        ("[nginx]\nuser = 'a b'\n", r"^nginx\.user: expected a user name, got 'a b'$"),
        ("[nginx]\nfast_path = 1\n", r"^nginx\.fast_path: expected true or false, got 1$"),
        ("[legacy]\nlisten = 'nope'\n", r"^legacy\.listen: expected HOST:PORT"),
        ("[cluster]\nview = 'yes'\n", r"^cluster\.view: expected true or false"),
        ("[sync]\ndeletes = 'rm'\n", r"^sync\.deletes: expected one of delete, trash, keep"),
        (
            "[cluster]\nlisten = '0.0.0.0:9420'\n",
            r"^cluster\.token: cluster\.listen '0\.0\.0\.0' is reachable from other hosts",
        ),
        (
            "[cluster]\nlisten = 'master.lan:9420'\n",
            r"^cluster\.token: cluster\.listen 'master\.lan' is reachable",
        ),
        ("[cluster]\ntoken = 'short'\n", r"^cluster\.token: at least 16 characters, no spaces$"),
        (
            "[cluster]\ntoken = 'sixteen chars and a space'\n",
            r"^cluster\.token: at least 16 characters",
        ),
        (
            "[cluster]\nread_token = '0123456789abcdef'\n",
            r"^cluster\.read_token: needs cluster\.token as well$",
        ),
        (
            "[cluster]\ntoken = '0123456789abcdef'\nread_token = '0123456789abcdef'\n",
            r"^cluster\.read_token: must differ from cluster\.token$",
        ),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(write(tmp_path, text), required=True)


def test_too_many_volumes(tmp_path: Path) -> None:
    text = "".join(f"[[cluster.volumes]]\npath = 'v{i}'\n" for i in range(63))
    with pytest.raises(ConfigError, match=r"^cluster\.volumes: at most 62 volumes"):
        load(write(tmp_path, text))


def test_relative_paths_are_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    conf = write(
        tmp_path,
        """
data_dir = "data"
[cluster]
meta_dir = "meta/here"
chunk_size = 131072
default_goal = 3
replication_delay = 0
health_interval = 0.1
[[cluster.volumes]]
path = "disks/one"
[[cluster.volumes]]
path = "/abs/two"
""",
        name="etc/tandem.toml",
    )
    cfg = load(conf, required=True)
    etc = conf.resolve().parent
    assert cfg.source == conf.resolve()
    assert cfg.data_dir == etc / "data"
    c = cfg.cluster
    assert c.meta_dir == etc / "meta" / "here"
    assert [v.path for v in c.volumes] == [etc / "disks" / "one", Path("/abs/two")]
    assert c.chunk_size == 131072
    assert c.default_goal == 3
    assert c.replication_delay == 0.0
    assert c.health_interval == 0.1


@pytest.mark.parametrize("listen", ["127.0.0.1:9420", "127.0.0.2:1", "[::1]:9420",
                                    "localhost:9420"])
def test_a_master_on_loopback_needs_no_token(tmp_path: Path, listen: str) -> None:
    assert load(write(tmp_path, f"[cluster]\nlisten = '{listen}'\n")).cluster.token == ""


def test_master_tokens_load_and_are_never_shown(tmp_path: Path) -> None:
    text = ("[cluster]\nlisten = '0.0.0.0:9420'\ntoken = 'full-0123456789abcdef'\n"
            "read_token = 'read-0123456789abcdef'\n[origin]\nmaster = 'http://m:9420'\n"
            "master_token = 'read-0123456789abcdef'\n")
    cfg = load(write(tmp_path, text))
    assert (cfg.cluster.token, cfg.cluster.read_token) == ("full-0123456789abcdef",
                                                           "read-0123456789abcdef")
    assert cfg.origin.master_token == "read-0123456789abcdef"
    shown = render(cfg)
    assert "0123456789abcdef" not in shown
    assert 'token = "<set>"' in shown and 'master_token = "<set>"' in shown


def test_defaults_follow_data_dir(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, 'data_dir = "/srv/tandem"\n'))
    assert cfg.cluster.meta_dir == Path("/srv/tandem/master")
    assert cfg.cluster.volumes[2].path == Path("/srv/tandem/volumes/vol2")


def test_render_round_trips(tmp_path: Path) -> None:
    conf = write(
        tmp_path,
        "[cluster]\nchunk_size = 196608\ndefault_goal = 1\n[[cluster.volumes]]\npath = 'v'\n",
    )
    cfg = load(conf)
    again = load(write(tmp_path / "again", render(cfg)))
    assert again.cluster == cfg.cluster
    assert again.data_dir == cfg.data_dir
    assert again.log == cfg.log
    assert again.origin == cfg.origin
    assert again.legacy == cfg.legacy
    assert again.nginx == cfg.nginx
    assert again.sync == cfg.sync


def test_s3_volume(tmp_path: Path) -> None:
    text = (
        '[[cluster.volumes]]\npath = "v0"\n'
        '[[cluster.volumes]]\nkind = "s3"\nendpoint = "http://127.0.0.1:7480"\n'
        'bucket = "tandem"\nprefix = "chunks"\naccess_key = "AK"\nsecret_key = "SK"\n'
        "multipart_threshold = 8388608\n"
    )
    c = load(write(tmp_path, text), required=True).cluster
    assert [v.path.name for v in c.volumes] == ["v0"]
    (s3,) = c.s3_volumes
    assert (s3.bucket, s3.prefix, s3.endpoint, s3.region) == (
        "tandem", "chunks/", "http://127.0.0.1:7480", "us-east-1")
    assert s3.multipart_threshold == 8 << 20 and s3.max_attempts == 3
    assert s3.name == "s3:http://127.0.0.1:7480/tandem/chunks/"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('kind = "s3"\n', r"cluster\.volumes\[0\]\.bucket: an S3 volume needs a bucket"),
        ('kind = "s3"\nbucket = "b"\npath = "/x"\n', r"cluster\.volumes\[0\]\.path: unknown"),
        ('kind = "s3"\nbucket = "b"\naccess_key = "a"\n', r"volumes\[0\]\.secret_key: .*together"),
        ('kind = "s3"\nbucket = "b"\npart_size = 1024\n', r"volumes\[0\]\.part_size: .*range"),
        ('kind = "nfs"\n', r"cluster\.volumes\[0\]\.kind: expected local or s3"),
    ],
)
def test_bad_s3_volume_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(write(tmp_path, "[[cluster.volumes]]\n" + text), required=True)

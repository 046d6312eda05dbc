"""The ``[cluster]`` section of ``tandem.toml`` and the one helper that validates TOML tables.

``Table`` reads typed keys from a parsed TOML table and names the full key in every error
(``cluster.volumes[1].path: expected a string``); unknown keys are refused so a typo is never
silently ignored. Other packages' sections use the same helper.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

MIB = 1 << 20
BLOCK = 64 * 1024


class ConfigError(Exception):
    """The configuration is invalid; the message names the key."""


class Table:
    """A TOML table being read: typed getters that name the key on error."""

    def __init__(self, data: dict[str, Any], prefix: str, base: Path) -> None:
        self.data = data
        self.prefix = prefix
        self.base = base
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def _get(self, name: str, kinds: tuple[type, ...], default: T, what: str) -> Any:
        self.seen.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        if isinstance(value, bool) and bool not in kinds:
            raise ConfigError(f"{self.key(name)}: expected {what}, got {value!r}")
        if not isinstance(value, kinds):
            raise ConfigError(f"{self.key(name)}: expected {what}, got {value!r}")
        return value

    def string(self, name: str, default: str) -> str:
        value: str = self._get(name, (str,), default, "a string")
        return value

    def strings(self, name: str, default: list[str]) -> list[str]:
        value: list[str] = self._get(name, (list,), default, "an array of strings")
        if not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{self.key(name)}: expected an array of strings, got {value!r}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value: bool = self._get(name, (bool,), default, "true or false")
        return value

    def integer(self, name: str, default: int, lo: int, hi: int) -> int:
        value: int = self._get(name, (int,), default, "an integer")
        if not lo <= value <= hi:
            raise ConfigError(f"{self.key(name)}: {value} is out of range {lo}..{hi}")
        return value

    def number(self, name: str, default: float, lo: float, hi: float) -> float:
        value = float(self._get(name, (int, float), default, "a number"))
        if not lo <= value <= hi:
            raise ConfigError(f"{self.key(name)}: {value} is out of range {lo}..{hi}")
        return value

    def path(self, name: str, default: Path) -> Path:
        """A filesystem path; relative paths are relative to the config file's folder."""
        value = self.string(name, str(default))
        if not value:
            raise ConfigError(f"{self.key(name)}: must not be empty")
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base / p)

    def listen(self, name: str, default: str) -> tuple[str, int]:
        value = self.string(name, default)
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"{self.key(name)}: expected HOST:PORT, got {value!r}")
        return host, int(port)

    def table(self, name: str) -> Table:
        value = self._get(name, (dict,), {}, "a table")
        return Table(value, self.key(name), self.base)

    def tables(self, name: str) -> list[Table] | None:
        """An array of tables, or None when the key is absent."""
        self.seen.add(name)
        if name not in self.data:
            return None
        value = self.data[name]
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ConfigError(f"{self.key(name)}: expected an array of tables [[{self.key(name)}]]")
        return [Table(v, f"{self.key(name)}[{i}]", self.base) for i, v in enumerate(value)]

    def done(self) -> None:
        """Refuse keys that were never read: a typo must not pass silently."""
        extra = sorted(set(self.data) - self.seen)
        if extra:
            raise ConfigError(f"{self.key(extra[0])}: unknown key")


@dataclass(frozen=True)
class VolumeConfig:
    path: Path


@dataclass(frozen=True)
class S3Config:
    """A chunk store in an S3 bucket (``[[cluster.volumes]]`` with ``kind = "s3"``)."""

    bucket: str
    prefix: str = ""  # key prefix, e.g. "tandem/" (chunks are <prefix><folder>/<name>)
    endpoint: str = ""  # "http://127.0.0.1:7480"; empty: AWS S3
    region: str = "us-east-1"
    access_key: str = ""  # empty: botocore's chain (AWS_ACCESS_KEY_ID …, ~/.aws, a role)
    secret_key: str = ""
    addressing: str = "path"  # path | virtual | auto (path style suits Ceph, MinIO)
    multipart_threshold: int = 16 * MIB  # chunks larger than this go up in parts
    part_size: int = 8 * MIB
    max_attempts: int = 3  # botocore's standard retries: the only retry layer
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_connections: int = 64
    capacity: int = 1 << 50  # S3 reports no capacity: what ``stat`` answers
    counts_as: int = 1  # a copy here counts as this many toward a goal (the engine's own copies)

    @property
    def name(self) -> str:
        where = self.endpoint.rstrip("/") if self.endpoint else "aws"
        return f"s3:{where}/{self.bucket}/{self.prefix}"


def load_s3(v: Table) -> S3Config:
    """The keys of an S3 volume (``kind = "s3"``); ``done`` is the caller's."""
    bucket = v.string("bucket", "")
    if not bucket:
        raise ConfigError(f"{v.key('bucket')}: an S3 volume needs a bucket")
    prefix = v.string("prefix", "")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    addressing = v.string("addressing", "path")
    if addressing not in ("path", "virtual", "auto"):
        raise ConfigError(f"{v.key('addressing')}: expected path, virtual or auto")
    access, secret = v.string("access_key", ""), v.string("secret_key", "")
    if bool(access) != bool(secret):
        raise ConfigError(f"{v.key('secret_key' if access else 'access_key')}: "
                          "access_key and secret_key go together (or neither: environment)")
    part_size = v.integer("part_size", 8 * MIB, 5 * MIB, 5 << 30)
    return S3Config(
        bucket=bucket,
        prefix=prefix,
        endpoint=v.string("endpoint", ""),
        region=v.string("region", "us-east-1"),
        access_key=access,
        secret_key=secret,
        addressing=addressing,
        multipart_threshold=v.integer("multipart_threshold", 16 * MIB, 5 * MIB, 5 << 30),
        part_size=part_size,
        max_attempts=v.integer("max_attempts", 3, 1, 20),
        connect_timeout=v.number("connect_timeout", 5.0, 0.1, 600.0),
        read_timeout=v.number("read_timeout", 30.0, 0.1, 3600.0),
        max_connections=v.integer("max_connections", 64, 1, 4096),
        capacity=v.integer("capacity", 1 << 50, 1, 1 << 62),
        counts_as=v.integer("counts_as", 1, 1, 9),
    )


@dataclass(frozen=True)
class ClusterConfig:
    listen: tuple[str, int]
    meta_dir: Path
    volumes: tuple[VolumeConfig, ...]
    chunk_size: int
    default_goal: int
    default_trash_time: int
    changelog_retention: int
    replication_delay: float
    scrub_rate: int
    health_interval: float
    work_interval: float
    view: bool  # keep each volume's hard-link view (the nginx fast path) up to date
    # ``[[cluster.volumes]]`` with ``kind = "s3"`` (``cluster/s3store.py``).
    s3_volumes: tuple[S3Config, ...] = ()
    # Bearer tokens of the master's HTTP API ("" = none): ``token`` may do anything,
    # ``read_token`` only GETs (what a second-host origin needs). ``cluster/http_api.py``.
    token: str = ""
    read_token: str = ""

    @property
    def url(self) -> str:
        host, port = self.listen
        return f"http://{host}:{port}"


def load_cluster(t: Table, data_dir: Path) -> ClusterConfig:
    vols = t.tables("volumes")
    s3_volumes: list[S3Config] = []
    if vols is None:
        volumes = tuple(VolumeConfig(data_dir / "volumes" / f"vol{i}") for i in range(3))
    else:
        local: list[VolumeConfig] = []
        for v in vols:
            kind = v.string("kind", "local")
            if kind == "local":
                local.append(VolumeConfig(v.path("path", Path())))
            elif kind == "s3":
                s3_volumes.append(load_s3(v))
            else:
                raise ConfigError(f"{v.key('kind')}: expected local or s3, got {kind!r}")
            v.done()
        volumes = tuple(local)
        if not vols:
            raise ConfigError(f"{t.key('volumes')}: at least one volume is needed")
        if len({v.path.resolve() for v in volumes}) != len(volumes):
            raise ConfigError(f"{t.key('volumes')}: the same path is listed twice")
        if len(volumes) + len(s3_volumes) > 62:
            raise ConfigError(f"{t.key('volumes')}: at most 62 volumes per master")
    chunk_size = t.integer("chunk_size", 64 * MIB, BLOCK, 64 * MIB)
    if chunk_size % BLOCK:
        raise ConfigError(f"{t.key('chunk_size')}: must be a multiple of {BLOCK} (64 KiB)")
    listen = t.listen("listen", "127.0.0.1:9420")
    token, read_token = _tokens(t, listen[0])
    cfg = ClusterConfig(
        listen=listen,
        meta_dir=t.path("meta_dir", data_dir / "master"),
        volumes=volumes,
        chunk_size=chunk_size,
        default_goal=t.integer("default_goal", 2, 1, 9),
        default_trash_time=t.integer("default_trash_time", 86_400, 0, 10 * 365 * 86_400),
        changelog_retention=t.integer("changelog_retention", 7 * 86_400, 60, 10 * 365 * 86_400),
        replication_delay=t.number("replication_delay", 300.0, 0.0, 30 * 86_400.0),
        scrub_rate=t.integer("scrub_rate", 8 * MIB, 0, 1 << 40),
        health_interval=t.number("health_interval", 2.0, 0.05, 3600.0),
        work_interval=t.number("work_interval", 5.0, 0.05, 3600.0),
        view=t.boolean("view", True),
        s3_volumes=tuple(s3_volumes),
        token=token,
        read_token=read_token,
    )
    t.done()
    return cfg


TOKEN_MIN = 16


def _tokens(t: Table, host: str) -> tuple[str, str]:
    """``token`` and ``read_token``: each empty or at least ``TOKEN_MIN`` characters, distinct;
    a master that listens beyond loopback must have a token (its API can delete anything)."""
    token, read = t.string("token", ""), t.string("read_token", "")
    for name, value in (("token", token), ("read_token", read)):
        if value and (len(value) < TOKEN_MIN or any(c.isspace() for c in value)):
            raise ConfigError(f"{t.key(name)}: at least {TOKEN_MIN} characters, no spaces")
    if read and not token:
        raise ConfigError(f"{t.key('read_token')}: needs {t.key('token')} as well")
    if read and read == token:
        raise ConfigError(f"{t.key('read_token')}: must differ from {t.key('token')}")
    if not token and not is_loopback(host):
        raise ConfigError(
            f"{t.key('token')}: {t.key('listen')} {host!r} is reachable from other hosts, "
            "and the master's HTTP API can change and delete anything: set a token"
        )
    return token, read


def is_loopback(host: str) -> bool:
    """Whether a listen address is this host's loopback (a host name other than localhost
    may resolve anywhere: it is not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False

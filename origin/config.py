"""Loading ``tandem.toml``: one file, parsed once with ``tomllib``, validated into frozen
dataclasses. Every package owns its section's dataclass; this module composes them.

Relative paths in the file are relative to the file's folder (to the working directory when
there is no file). With no file at all, everything lives under ``./var``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from cluster.config import ClusterConfig, ConfigError, Table, load_cluster
from nginx.config import NginxConfig, load_nginx
from origin.settings import LegacyConfig, OriginConfig, load_legacy, load_origin
from syncer.config import SyncConfig, load_sync

LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class LogConfig:
    level: str


@dataclass(frozen=True)
class Config:
    source: Path | None
    data_dir: Path
    log: LogConfig
    cluster: ClusterConfig
    origin: OriginConfig
    legacy: LegacyConfig
    nginx: NginxConfig
    sync: SyncConfig


def load(path: Path | None, *, required: bool = False) -> Config:
    """Load and validate the config file; a missing file gives the embedded default
    unless ``required`` (an explicit ``--config`` that does not exist is an error)."""
    if path is not None and path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from None
        base, source = path.resolve().parent, path.resolve()
    elif path is not None and required:
        raise ConfigError(f"{path}: no such config file")
    else:
        data, base, source = {}, Path.cwd(), None
    root = Table(data, "", base)
    data_dir = root.path("data_dir", Path("var"))
    log_t = root.table("log")
    level = log_t.string("level", "info")
    if level not in LOG_LEVELS:
        raise ConfigError(f"log.level: expected one of {', '.join(LOG_LEVELS)}, got {level!r}")
    log_t.done()
    cfg = Config(
        source=source,
        data_dir=data_dir,
        log=LogConfig(level),
        cluster=load_cluster(root.table("cluster"), data_dir),
        origin=load_origin(root.table("origin"), data_dir),
        legacy=load_legacy(root.table("legacy"), data_dir),
        nginx=load_nginx(root.table("nginx"), data_dir),
        sync=load_sync(root.table("sync"), data_dir),
    )
    root.done()
    return cfg


def render(cfg: Config) -> str:
    """The effective configuration as TOML (``tandem config show``)."""
    c = cfg.cluster
    host, port = c.listen
    lines = [
        f"# effective configuration (source: {cfg.source or 'built-in defaults'})",
        f'data_dir = "{cfg.data_dir}"',
        "",
        "[log]",
        f'level = "{cfg.log.level}"',
        "",
        "[cluster]",
        f'listen = "{host}:{port}"',
        f'meta_dir = "{c.meta_dir}"',
        f"chunk_size = {c.chunk_size}",
        f"default_goal = {c.default_goal}",
        f"default_trash_time = {c.default_trash_time}",
        f"changelog_retention = {c.changelog_retention}",
        f"replication_delay = {c.replication_delay}",
        f"scrub_rate = {c.scrub_rate}",
        f"health_interval = {c.health_interval}",
        f"work_interval = {c.work_interval}",
        f"view = {'true' if c.view else 'false'}",
        f"token = {_q('<set>' if c.token else '')}",
        f"read_token = {_q('<set>' if c.read_token else '')}",
    ]
    for v in c.volumes:
        lines += ["", "[[cluster.volumes]]", f'path = "{v.path}"']
    for s3 in c.s3_volumes:
        lines += ["", "[[cluster.volumes]]", 'kind = "s3"', f"endpoint = {_q(s3.endpoint)}",
                  f"bucket = {_q(s3.bucket)}", f"prefix = {_q(s3.prefix)}",
                  f"region = {_q(s3.region)}", f"access_key = {_q(s3.access_key)}",
                  f"secret_key = {_q('<set>' if s3.secret_key else '')}",
                  f"counts_as = {s3.counts_as}"]
    o = cfg.origin
    lines += [
        "",
        "[origin]",
        f'listen = "{_hp(o.listen)}"',
        f"workers = {o.workers}",
        f"write_prefixes = [{', '.join(_q(p) for p in o.write_prefixes)}]",
        f"write_token = {_q('<set>' if o.write_token else '')}",
        f"max_upload = {o.max_upload}",
        f"max_sync_lag = {o.max_sync_lag}",
        f'fence_file = "{o.fence_file}"',
        f"master = {_q(o.master)}",
        f"master_token = {_q('<set>' if o.master_token else '')}",
        f'cache_dir = "{o.cache_dir}"',
        f"cache_bytes = {o.cache_bytes}",
        f"lookup_cache = {o.lookup_cache}",
    ]
    for r in o.routes:
        lines += [
            "",
            "[[origin.routes]]",
            f"prefix = {_q(r.prefix)}",
            f"root = {_q(r.root)}",
            f"cache_control = {_q(r.cache_control)}",
        ]
    n = cfg.nginx
    lines += [
        "",
        "[legacy]",
        f'dir = "{cfg.legacy.dir}"',
        f'listen = "{_hp(cfg.legacy.listen)}"',
        "",
        "[nginx]",
        f'listen = "{_hp(n.listen)}"',
        f"binary = {_q(n.binary)}",
        f'run_dir = "{n.run_dir}"',
        f"user = {_q(n.user)}",
        f"worker_processes = {n.worker_processes}",
        f"fast_path = {'true' if n.fast_path else 'false'}",
        f"origins = [{', '.join(_q(_hp(o)) for o in n.origins)}]",
        f"backup = {'true' if n.backup else 'false'}",
        f"balance = {_q(n.balance)}",
        f"max_fails = {n.max_fails}",
        f"fail_timeout = {n.fail_timeout}",
        f"connect_timeout = {n.connect_timeout}",
        f"send_timeout = {n.send_timeout}",
        f"read_timeout = {n.read_timeout}",
        f"next_upstream_tries = {n.next_upstream_tries}",
        f"next_upstream_timeout = {n.next_upstream_timeout}",
        f"keepalive = {n.keepalive}",
        "",
        "[nginx.app]",
        f"servers = [{', '.join(_q(_hp(a)) for a in n.app.servers)}]",
        f"max_fails = {n.app.max_fails}",
        f"fail_timeout = {n.app.fail_timeout}",
        f"read_timeout = {n.app.read_timeout}",
        "",
        "[nginx.cache]",
        f"enabled = {'true' if n.cache else 'false'}",
        *(
            [
                f'path = "{n.cache.path}"',
                f"max_size = {n.cache.max_size}",
                f"inactive = {n.cache.inactive}",
                f"valid = {n.cache.valid}",
            ]
            if n.cache
            else []
        ),
        "",
        "[sync]",
        f'state_dir = "{cfg.sync.state_dir}"',
        f"deletes = {_q(cfg.sync.deletes)}",
        f"concurrency = {cfg.sync.concurrency}",
        f"reconcile_interval = {cfg.sync.reconcile_interval}",
    ]
    return "\n".join(lines) + "\n"


def _hp(listen: tuple[str, int]) -> str:
    return f"{listen[0]}:{listen[1]}"


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

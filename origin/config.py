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
    cluster = load_cluster(root.table("cluster"), data_dir)
    root.done()
    return Config(source=source, data_dir=data_dir, log=LogConfig(level), cluster=cluster)


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
    ]
    for v in c.volumes:
        lines += ["", "[[cluster.volumes]]", f'path = "{v.path}"']
    return "\n".join(lines) + "\n"

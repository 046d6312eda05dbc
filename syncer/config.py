"""The ``[sync]`` section of ``tandem.toml``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cluster.config import ConfigError, Table

DELETES = ("delete", "trash", "keep")


@dataclass(frozen=True)
class SyncConfig:
    state_dir: Path  # cursor and status file
    deletes: str  # what a deletion on the source does on the target: delete | trash | keep
    concurrency: int  # copies at once (directory source)
    reconcile_interval: float  # seconds between full comparisons, the safety net


def load_sync(t: Table, data_dir: Path) -> SyncConfig:
    deletes = t.string("deletes", "delete")
    if deletes not in DELETES:
        raise ConfigError(f"{t.key('deletes')}: expected one of {', '.join(DELETES)}, "
                          f"got {deletes!r}")
    cfg = SyncConfig(state_dir=t.path("state_dir", data_dir / "sync"), deletes=deletes,
                     concurrency=t.integer("concurrency", 8, 1, 256),
                     reconcile_interval=t.number("reconcile_interval", 3600.0, 1.0, 7 * 86400.0))
    t.done()
    return cfg

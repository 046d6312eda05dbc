"""Real tandem processes for tests: spawn, read the JSON "listening" line, kill by PID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path


def write_config(
    tmp: Path, *, sections: Mapping[str, Mapping[str, object]] | None = None, **cluster: object
) -> Path:
    """A tandem.toml under ``tmp`` with fast background intervals and 3 volumes.

    ``sections`` adds other tables (``{"nginx": {"fast_path": False}}``); a list of tables as
    a value is written as an array of tables (``{"origin": {"routes": [{…}, …]}}``)."""
    opts = {"health_interval": 0.2, "work_interval": 0.2, "replication_delay": 1.0}
    opts.update(cluster)
    lines = [f'data_dir = "{tmp}/var"', "[cluster]", 'listen = "127.0.0.1:0"']
    for k, v in opts.items():
        lines.append(f"{k} = {json.dumps(v)}")
    for name, table in (sections or {}).items():
        lines += _toml_table(name, table)
    path = tmp / "tandem.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml_table(name: str, table: Mapping[str, object]) -> list[str]:
    """One TOML table; JSON scalars and string arrays are valid TOML values."""
    lines, arrays = [f"[{name}]"], []
    for k, v in table.items():
        if isinstance(v, list) and v and all(isinstance(i, Mapping) for i in v):
            arrays += [(k, item) for item in v]
        else:
            lines.append(f"{k} = {json.dumps(v)}")
    for k, item in arrays:
        lines.append(f"[[{name}.{k}]]")
        lines += [f"{ik} = {json.dumps(iv)}" for ik, iv in item.items()]
    return lines


class Proc:
    """A tandem subprocess whose stdout is JSON log lines, drained by a thread (a server that
    logs every request must never block on a full pipe)."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.p = subprocess.Popen(
            [sys.executable, "-m", "origin", *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: list[dict[str, object]] = []
        self._new = threading.Condition()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            with self._new:
                self.lines.append(rec)
                self._new.notify_all()
        with self._new:
            self._new.notify_all()

    @property
    def pid(self) -> int:
        return self.p.pid

    def wait_event(self, event: str, timeout: float = 20.0) -> dict[str, object]:
        """Wait for a log line with ``event``; fail with stderr if the process dies first."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._new:
            while time.monotonic() < deadline:
                for rec in self.lines[seen:]:
                    if rec.get("event") == event:
                        return rec
                seen = len(self.lines)
                if self.p.poll() is not None and not self._reader.is_alive():
                    break
                self._new.wait(0.2)
        err = self.p.stderr.read().decode() if self.p.poll() is not None and self.p.stderr else ""
        raise AssertionError(f"no {event!r} from pid {self.pid} (exit {self.p.poll()}): {err}")

    def kill9(self) -> None:
        os.kill(self.p.pid, signal.SIGKILL)
        self.p.wait(10)
        self._close()

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGTERM)
        try:
            return self.p.wait(timeout)
        finally:
            self._close()

    def _close(self) -> None:
        self._reader.join(5)
        for f in (self.p.stdout, self.p.stderr):
            if f is not None:
                f.close()


def start_master(config: Path) -> tuple[Proc, str]:
    proc = Proc(["--config", str(config), "cluster", "serve"], config.parent)
    rec = proc.wait_event("master.listening")
    return proc, str(rec["url"])

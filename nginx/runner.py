"""Running the real nginx on the rendered config: install, test, start, reload, stop.

The config on disk is always one that passed ``nginx -t``: ``check`` writes the rendered text
to a candidate file next to ``nginx.conf``, tests the candidate, and only then renames it
over ``nginx.conf`` (atomic), so a bad config can neither be reloaded into a running nginx nor
be left behind for the next start.

nginx runs in the foreground (``daemon off``) as a child of the caller, in its own session
(Ctrl-C on the terminal goes to tandem, which stops nginx gracefully), with every file it
writes under ``nginx.run_dir``.

``OSError`` from running the binary is mapped into ``nginx.errors`` here, once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from nginx.errors import NginxCommandError, NginxNotInstalled
from nginx.render import TEMP_KINDS, Layout, Primary, render

if TYPE_CHECKING:
    from origin.config import Config

# Debian installs nginx in /usr/sbin, which is not on an unprivileged user's PATH.
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")
COMMAND_TIMEOUT = 30.0


def binary(cfg: Config) -> str:
    """The nginx executable for ``cfg`` (``nginx.binary``: a name on PATH or a path)."""
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), *SBIN])
    found = shutil.which(cfg.nginx.binary, path=search)
    if found is None:
        raise NginxNotInstalled(
            f"nginx not found (nginx.binary = {cfg.nginx.binary!r}); "
            "install it with: apt-get install nginx"
        )
    return found


def prepare(cfg: Config) -> Layout:
    """Create ``run_dir`` and nginx's temp folders (logs are created by nginx itself)."""
    paths = Layout(cfg.nginx.run_dir)
    try:
        for kind in TEMP_KINDS:
            paths.temp(kind).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NginxCommandError(f"cannot create {paths.run_dir}: {exc}") from None
    return paths


def check(cfg: Config, primary: Primary = "cluster") -> Path:
    """Render ``cfg`` (with ``primary`` as the upstream's primary side), test it with
    ``nginx -t`` and install it as ``nginx.conf``; returns its path. On failure nothing is
    installed and ``NginxCommandError`` carries nginx's message."""
    with _tested(cfg, primary) as candidate:
        os.replace(candidate, Layout(cfg.nginx.run_dir).conf)
    return Layout(cfg.nginx.run_dir).conf


def check_only(cfg: Config, primary: Primary = "cluster") -> None:
    """``check`` without installing: whether nginx would accept the config for ``primary``."""
    with _tested(cfg, primary):
        pass


@contextlib.contextmanager
def _tested(cfg: Config, primary: Primary) -> Iterator[Path]:
    """The rendered config in a candidate file next to ``nginx.conf`` that passed
    ``nginx -t``; removed on exit unless the caller renamed it."""
    text = render(cfg, primary)
    binary(cfg)  # before anything is written
    paths = prepare(cfg)
    # A candidate per process: two checks at once must not test each other's text.
    candidate = paths.conf.with_name(f"{paths.conf.name}.{os.getpid()}.new")
    try:
        _write(candidate, text)
        _run(cfg, candidate, "-t", "-q")
        yield candidate
    finally:
        candidate.unlink(missing_ok=True)


def start(cfg: Config, primary: Primary = "cluster") -> subprocess.Popen[bytes]:
    """Check and install the config, then run nginx in the foreground; stop it with
    ``stop``. Bind errors and the like show up as an early exit and in ``error.log``."""
    conf = check(cfg, primary)
    try:
        return subprocess.Popen(
            [*_argv(cfg, conf), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        raise NginxCommandError(f"cannot run {cfg.nginx.binary}: {exc}") from None


def reload(cfg: Config, primary: Primary = "cluster") -> Path:
    """Check and install the config, then tell the running nginx to load it (graceful: old
    workers finish their requests). A config that fails ``nginx -t`` is never reloaded."""
    _require_running(Layout(cfg.nginx.run_dir))
    conf = check(cfg, primary)
    _run(cfg, conf, "-s", "reload")
    return conf


def running(cfg: Config) -> int | None:
    """The pid of the nginx running on ``nginx.run_dir``, or None (no pid file, an empty one,
    or one naming a process that is gone)."""
    try:
        pid = int(Layout(cfg.nginx.run_dir).pid.read_text().strip())
        os.kill(pid, 0)
    except PermissionError:  # running, as another user (root's nginx)
        return pid
    except (OSError, ValueError):
        return None
    return pid


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """Stop an nginx from ``start``: SIGQUIT (graceful), then SIGKILL to its whole process
    group after ``timeout`` — the workers would outlive a killed master otherwise."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGQUIT)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


def _require_running(paths: Layout) -> None:
    """Refuse clearly when no nginx runs on this run_dir (``nginx -t`` leaves an empty pid
    file behind, about which ``nginx -s`` only says 'invalid PID number ""')."""
    try:
        pid = paths.pid.read_text().strip()
    except FileNotFoundError:
        pid = ""
    except OSError as exc:
        raise NginxCommandError(f"cannot read {paths.pid}: {exc}") from None
    if not pid:
        raise NginxCommandError(f"nginx is not running (no pid in {paths.pid})")


def _argv(cfg: Config, conf: Path) -> list[str]:
    paths = Layout(cfg.nginx.run_dir)
    # -e: nginx logs to its compiled-in error log until it has read the config; keep even
    # that under run_dir (the default, /var/log/nginx, is root's).
    return [binary(cfg), "-p", f"{paths.run_dir}/", "-c", str(conf), "-e", str(paths.error_log)]


def _run(cfg: Config, conf: Path, *args: str) -> None:
    """Run one nginx command to completion; a failure raises with nginx's own words."""
    try:
        done = subprocess.run(
            [*_argv(cfg, conf), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NginxCommandError(f"cannot run {cfg.nginx.binary}: {exc}") from None
    if done.returncode != 0:
        message = (done.stderr or done.stdout).decode("utf-8", "replace").strip()
        raise NginxCommandError(message or f"nginx {' '.join(args)} exited {done.returncode}")


def _write(path: Path, text: str) -> None:
    """Write ``text`` atomically: a temp file in the same folder, fsync, rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(text.encode("utf-8", "surrogateescape"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise NginxCommandError(f"cannot write {path}: {exc}") from None

"""A throw-away single-node Ceph cluster with RGW (S3) on loopback, for tests against a real engine.

Debian's Ceph 16.2 (``ceph-mon ceph-osd radosgw ceph-common python3-rados``): one monitor, one
OSD on ``memstore`` (no disk), one radosgw — no mgr. All state is in a folder under
``/dev/shm`` (no fsync stalls), removed on stop. Every process is started here and stopped here
by its PID (SIGTERM, then SIGKILL), also when the start fails half-way.

What makes the start take ~2 s instead of ~16 s (the facts of issue 6):

- ``auth … = none`` everywhere; radosgw then also needs ``ms mon client mode = crc`` (its
  default ``secure`` loops on EACCES against an auth-none monitor);
- ``osd pool default size = 1`` with ``mon allow pool size one = true``: one OSD is enough;
- RGW's pools are created up front, in one batch of monitor commands (``python3-rados``,
  Debian's module, run by the system Python: one process instead of a ``ceph`` CLI per pool);
  radosgw would otherwise create them one by one, each waiting for a paxos round;
- ``bdev aio poll ms = 20``, ``osd op num shards = 2``, ``osd objectstore = memstore``.

The S3 user (access and secret key below) is made with ``radosgw-admin`` before radosgw runs.

Run ``python tests/cephrgw.py`` to start one by hand (it prints the endpoint, Ctrl-C stops it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool")
PACKAGES = "ceph-mon ceph-osd radosgw ceph-common python3-rados"
ACCESS_KEY = "TANDEMTESTACCESSKEY0"
SECRET_KEY = "tandem-test-secret-key-0000000000000000"
REGION = "us-east-1"
SYSTEM_PYTHON = "/usr/bin/python3"

POOLS = (
    ".rgw.root",
    "default.rgw.control",
    "default.rgw.meta",
    "default.rgw.log",
    "default.rgw.buckets.index",
    "default.rgw.buckets.data",
    "default.rgw.buckets.non-ec",
)

# Run by the system Python (python3-rados), in one client session: register the OSD (argv[2]
# is its uuid), then create every pool RGW needs (argv[3:]).
_BOOTSTRAP = """
import json, sys, rados
r = rados.Rados(conffile=sys.argv[1])
r.connect(timeout=20)
def cmd(**kw):
    rc, out, err = r.mon_command(json.dumps(kw), b"")
    if rc not in (0, -17):
        sys.exit(f"{kw['prefix']}: {rc} {err}")
if sys.argv[2] != "-":
    cmd(prefix="osd new", uuid=sys.argv[2], id=0)
for p in sys.argv[3:]:
    cmd(prefix="osd pool create", pool=p, pg_num=8, pgp_num=8)
    cmd(prefix="osd pool application enable", pool=p, app="rgw", yes_i_really_mean_it=True)
r.shutdown()
"""


def missing() -> list[str]:
    """The Ceph programs that are not installed (empty when the engine can run here)."""
    return [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/bin", b).exists()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class CephRgw:
    """A running engine; ``endpoint`` is the S3 URL. ``stop`` ends every process it started."""

    root: Path
    endpoint: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    started_in: float = 0.0
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "ceph.conf"

    # -- start ---------------------------------------------------------------------------

    @classmethod
    def start(cls, timeout: float = 60.0) -> CephRgw:
        root = Path(tempfile.mkdtemp(prefix="tandem-ceph-", dir=_state_parent()))
        rgw = cls(root)
        try:
            rgw._start(timeout)
        except BaseException:
            rgw.stop()
            raise
        return rgw

    def _start(self, timeout: float) -> None:
        t0 = time.monotonic()
        deadline = t0 + timeout
        mon_port, rgw_port = free_port(), free_port()
        fsid = str(uuid.uuid4())
        r = self.root
        (r / "mon").mkdir()
        (r / "osd").mkdir()
        self.conf.write_text(
            f"""[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
ms bind msgr1 = false
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
ms mon client mode = crc
run dir = {r}
admin socket = {r}/$name.asok
log file = {r}/$name.log
pid file = {r}/$name.pid
keyring = /dev/null
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
mon data avail warn = 1
mon data avail crit = 0
debug ms = 0
[mon]
mon data = {r}/mon
mon initial members = a
mon cluster log file = {r}/mon-cluster.log
paxos propose interval = 0.01
paxos min wait = 0.01
[osd]
osd data = {r}/osd
osd objectstore = memstore
memstore device bytes = {2 << 30}
osd op num shards = 2
osd op num threads per shard = 1
bdev aio poll ms = 20
osd max object name len = 460
osd max object namespace len = 64
[client.rgw]
ms mon client mode = crc
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw data = {r}/rgw
rgw dns name = 127.0.0.1
rgw enable usage log = false
rgw thread pool size = 64
"""
        )
        (r / "rgw").mkdir()
        conf = str(self.conf)
        self._run("monmaptool", "--create", "--fsid", fsid, "--addv", "a",
                  f"[v2:127.0.0.1:{mon_port}]", str(r / "monmap"))
        self._run("ceph-mon", "-c", conf, "--mkfs", "-i", "a", "--monmap", str(r / "monmap"))
        self._spawn("mon", "ceph-mon", "-f", "-c", conf, "-i", "a")
        osd_uuid = str(uuid.uuid4())
        self._run("ceph-osd", "-c", conf, "-i", "0", "--mkfs", "--osd-uuid", osd_uuid)
        # Register the OSD, start it, then create RGW's pools: pools made once the OSD is up
        # get their PGs at once (made before, they wait for the monitor's next tick).
        self._run(SYSTEM_PYTHON, "-c", _BOOTSTRAP, conf, osd_uuid,
                  timeout=max(5.0, deadline - time.monotonic()))
        self._spawn("osd", "ceph-osd", "-f", "-c", conf, "-i", "0")
        self._run(SYSTEM_PYTHON, "-c", _BOOTSTRAP, conf, "-", *POOLS,
                  timeout=max(5.0, deadline - time.monotonic()))
        self._run("radosgw-admin", "-c", conf, "-n", "client.rgw", "user", "create",
                  "--uid", "tandem", "--display-name", "tandem tests",
                  "--access-key", self.access_key, "--secret", self.secret_key,
                  timeout=max(5.0, deadline - time.monotonic()))
        self._spawn("rgw", "radosgw", "-f", "-c", conf, "-n", "client.rgw")
        self.endpoint = f"http://127.0.0.1:{rgw_port}"
        while True:
            if self._answers():
                break
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode}\n{self.tail(name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"radosgw not answering after {timeout:.0f} s\n"
                                   f"{self.tail('rgw')}")
            time.sleep(0.05)
        self.started_in = time.monotonic() - t0

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint, timeout=1):
                return True
        except OSError:
            return False

    def _run(self, *cmd: str, timeout: float = 30.0) -> None:
        t = time.monotonic()
        p = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
        if p.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd[:3])}… exited with {p.returncode}: "
                f"{p.stderr.decode(errors='replace')[-2000:]}"
            )
        self.timings[f"{len(self.timings)}:{Path(cmd[0]).name}"] = round(time.monotonic() - t, 2)

    def _spawn(self, name: str, *cmd: str) -> None:
        log = open(self.root / f"{name}.out", "wb")  # noqa: SIM115 - the child keeps it
        try:
            self.procs[name] = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()

    def tail(self, name: str, lines: int = 30) -> str:
        out = []
        for f in (self.root / f"{name}.out", *self.root.glob("*.log")):
            if f.name.startswith(("mon", "osd", "client.rgw")) or f.name == f"{name}.out":
                with contextlib.suppress(OSError):
                    text = f.read_text(errors="replace").splitlines()[-lines:]
                    out.append(f"--- {f.name}\n" + "\n".join(text))
        return "\n".join(out)

    # -- rgw alone (kill -9 tests) -------------------------------------------------------------

    def kill_rgw(self) -> None:
        p = self.procs.pop("rgw", None)
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()

    def restart_rgw(self, timeout: float = 30.0) -> None:
        self.kill_rgw()
        self._spawn("rgw", "radosgw", "-f", "-c", str(self.conf), "-n", "client.rgw")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._answers():
                return
            time.sleep(0.05)
        raise RuntimeError(f"radosgw did not come back\n{self.tail('rgw')}")

    # -- stop ----------------------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM each process by PID (rgw, osd, mon), SIGKILL after 5 s; remove the state."""
        for name in ("rgw", "osd", "mon"):
            p = self.procs.pop(name, None)
            if p is None:
                continue
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p.pid, signal.SIGKILL)
                    p.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def _state_parent() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


if __name__ == "__main__":
    engine = CephRgw.start()
    pids = {k: p.pid for k, p in engine.procs.items()}
    print(json.dumps({"endpoint": engine.endpoint, "started_in": round(engine.started_in, 2),
                      "state": str(engine.root), "timings": engine.timings, "pids": pids}),
          flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        engine.stop()

"""``compose.yaml``, the ``Dockerfile`` and the systemd units in ``docs/systemd/`` run what
``tandem up`` runs.

No Docker engine runs here: the compose file is validated by ``docker-compose config`` (Debian's
docker-compose package, which ``./dev test`` installs; it checks the file against the compose
specification's schema and that every ``depends_on`` names a service) and the units by
``systemd-analyze verify`` when it is installed. Then both are held to ``origin/up.py``:
the same commands (``SERVICES``), the same start order (each service waits for the one before
it to be healthy, so stopping runs backwards), the same health checks (``tandem probe``), every
data folder of the container config on a named volume.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from nginx.render import render
from origin import config as config_mod
from origin.up import NAMES, SERVICES

ROOT = Path(__file__).resolve().parent.parent
CONF = "/etc/tandem/tandem.toml"  # where the Dockerfile puts docker/tandem.toml
REMOTE_CONF = "/etc/tandem/tandem-remote.toml"  # where compose mounts docker/tandem-remote.toml
TANDEM = ["tandem", "--config", CONF]
UNITS = ROOT / "docs" / "systemd"
UNIT_BIN = "/opt/tandem/bin/tandem"


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


def container_config() -> config_mod.Config:
    return config_mod.load(ROOT / "docker" / "tandem.toml", required=True)


def test_docker_compose_accepts_the_file() -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("needs docker-compose (Debian's package; ./dev test installs it)")
    done = subprocess.run([exe, "-f", str(ROOT / "compose.yaml"), "config", "-q"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_the_services_run_the_commands_of_tandem_up() -> None:
    services = {n: c for n, c in compose()["services"].items() if "profiles" not in c}
    assert set(services) == {*NAMES, "net"}
    for s in SERVICES:
        c = services[s.name]
        assert c["command"] == [*TANDEM, *s.args], s.name
        assert c["healthcheck"]["test"] == ["CMD", "python3", "-m", "origin.probe",
                                            "--config", CONF, *s.health], s.name
        assert c["network_mode"] == "service:net", s.name  # the config's loopback addresses
        assert c["image"] == services["net"]["image"]
    assert services["origin"]["deploy"]["replicas"] >= 2
    assert "8080:8080" in services["net"]["ports"]
    assert container_config().nginx.listen == ("0.0.0.0", 8080)


def test_the_remote_profile_is_an_origin_on_a_second_host() -> None:
    """``--profile remote``: an origin that mounts none of the master's data (only its own
    config and cache), reaches the master over HTTP and reads S3 from the profile's MinIO."""
    exe = shutil.which("docker-compose")
    if exe is not None:
        done = subprocess.run([exe, "-f", str(ROOT / "compose.yaml"), "--profile", "remote",
                               "config", "-q"], cwd=ROOT, capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, done.stderr
    services = compose()["services"]
    extra = {n for n, c in services.items() if "profiles" in c}
    assert extra == {"s3", "s3-bucket", "origin-remote"}
    assert all(services[n]["profiles"] == ["remote"] for n in extra)
    remote = services["origin-remote"]
    assert remote["command"] == ["tandem", "--config", REMOTE_CONF, "origin"]
    assert remote["healthcheck"]["test"] == ["CMD", "python3", "-m", "origin.probe",
                                             "--config", REMOTE_CONF, "origin", "--ready"]
    assert remote["network_mode"] == "service:net"
    assert remote["depends_on"]["master"] == {"condition": "service_healthy"}
    mounts = dict(m.split(":")[1::-1] for m in remote["volumes"])
    assert mounts[REMOTE_CONF] == "./docker/tandem-remote.toml"
    assert set(mounts.values()) - {"./docker/tandem-remote.toml"} <= set(compose()["volumes"])
    assert not {"master", "vol0", "vol1", "vol2", "legacy", "sync"} & set(mounts.values())

    cfg, host = remote_config(), container_config()
    assert cfg.origin.master == f"http://{host.cluster.listen[0]}:{host.cluster.listen[1]}"
    assert cfg.origin.listen not in (host.origin.listen, host.legacy.listen)  # one netns
    (cache_mount,) = [target for target, vol in mounts.items() if vol == "origin-cache"]
    assert cfg.origin.cache_dir.is_relative_to(cache_mount)  # hot chunks outlive the container
    (s3,) = cfg.cluster.s3_volumes
    address = services["s3"]["command"][services["s3"]["command"].index("--address") + 1]
    assert s3.endpoint == f"http://{address}"
    assert f"s3/{s3.bucket}" in " ".join(services["s3-bucket"]["entrypoint"])
    assert cfg.cluster.volumes == ()  # no local volume: nothing of the master on this host


def remote_config() -> config_mod.Config:
    return config_mod.load(ROOT / "docker" / "tandem-remote.toml", required=True)


def test_each_service_starts_when_the_one_before_it_is_healthy() -> None:
    services = compose()["services"]
    for before, s in itertools.pairwise(NAMES):
        deps = services[s]["depends_on"]
        assert deps[before] == {"condition": "service_healthy"}, s
        # nothing waits for a service that starts later (the stop order is the reverse)
        assert all(NAMES.index(d) < NAMES.index(s) for d in deps), s
        assert all(d["condition"] == "service_healthy" for d in deps.values()), s


def test_every_data_folder_is_a_named_volume_in_every_container() -> None:
    data = compose()
    cfg = container_config()
    named = set(data["volumes"])
    shared = [cfg.cluster.meta_dir, *(v.path for v in cfg.cluster.volumes), cfg.legacy.dir,
              cfg.sync.state_dir]
    assert cfg.origin.fence_file.parent == cfg.sync.state_dir  # the origins see the fence
    for name in NAMES:
        mounts = dict(m.split(":")[1::-1] for m in data["services"][name]["volumes"])
        assert set(mounts.values()) <= named, name
        for folder in shared + ([cfg.nginx.run_dir] if name == "front" else []):
            assert str(folder) in mounts, f"{name}: {folder} is not on a named volume"


def test_the_image_carries_the_container_config() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert f"COPY docker/tandem.toml {CONF}" in text
    assert re.search(r"apt-get install .*\bnginx\b", text.replace("\\\n", " "))
    cfg = container_config()
    assert cfg.nginx.user  # nginx starts as root in its container: workers as www-data
    render(cfg, "cluster")  # nginx config can be written for it


def _units() -> dict[str, dict[str, list[str]]]:
    """``tandem-NAME.service`` → key → values (repeated keys and space-separated lists)."""
    out: dict[str, dict[str, list[str]]] = {}
    for path in sorted(UNITS.glob("tandem-*.service")):
        keys: dict[str, list[str]] = {}
        for line in path.read_text().splitlines():
            if "=" in line and not line.startswith(("#", "[")):
                k, _, v = line.partition("=")
                keys.setdefault(k, []).append(v)
        out[path.name.removeprefix("tandem-").removesuffix(".service")] = keys
    return out


def test_systemd_units_run_the_commands_of_tandem_up_in_its_order() -> None:
    units = _units()
    assert set(units) == set(NAMES)
    target = (UNITS / "tandem.target").read_text()
    for s in SERVICES:
        u = units[s.name]
        assert u["ExecStart"] == [" ".join([UNIT_BIN, "--config", CONF, *s.args])], s.name
        (post,) = u["ExecStartPost"]
        assert post.startswith(" ".join([UNIT_BIN, "--config", CONF, "probe", s.name, "--wait"]))
        assert post.removeprefix(" ".join([UNIT_BIN, "--config", CONF, "probe"])).split()[:-2] \
            == [s.name]  # liveness, as tandem up waits
        assert u["KillMode"] == ["mixed"] and u["PartOf"] == ["tandem.target"]
        assert f"tandem-{s.name}.service" in target
        after = " ".join(u.get("After", [])).split()
        i = NAMES.index(s.name)
        if i:
            assert f"tandem-{NAMES[i - 1]}.service" in after, s.name
        assert all(NAMES.index(a.removeprefix("tandem-").removesuffix(".service")) < i
                   for a in after if a.startswith("tandem-")), s.name
    # The front must outlive a stopped origin (failover): ordered after them, never bound.
    assert "Requires" not in units["front"]


def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("needs systemd-analyze (the systemd package)")
    for path in UNITS.iterdir():  # ExecStart must name an executable that exists here
        (tmp_path / path.name).write_text(path.read_text().replace(UNIT_BIN, "/usr/bin/true"))
    done = subprocess.run([exe, "verify", *sorted(str(p) for p in tmp_path.iterdir())],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr

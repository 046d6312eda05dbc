"""The ``tandem`` command: config, and the cluster tools both in-process (no master running)
and against a real master process over HTTP."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from procs import start_master, write_config

from origin.cli import main


def run(capfdbinary: pytest.CaptureFixture[bytes], *argv: str) -> tuple[int, bytes, str]:
    code = main(list(argv))
    out, err = capfdbinary.readouterr()
    return code, out, err.decode("utf-8", "replace")


def test_config_check_show_and_errors(tmp_path: Path, capfdbinary, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capfdbinary, "config", "show")
    assert code == 0
    assert f'data_dir = "{tmp_path}/var"'.encode() in out
    assert b"[[cluster.volumes]]" in out
    code, out, _ = run(capfdbinary, "config", "check")
    assert code == 0 and b"built-in defaults" in out

    bad = tmp_path / "bad.toml"
    bad.write_text("[cluster]\ndefault_gaol = 3\n")
    code, _, err = run(capfdbinary, "--config", str(bad), "config", "check")
    assert code == 1 and "cluster.default_gaol: unknown key" in err
    bad.write_text("[cluster]\ndefault_goal = 'two'\n")
    code, _, err = run(capfdbinary, "--config", str(bad), "config", "check")
    assert code == 1 and "cluster.default_goal: expected an integer" in err
    code, _, err = run(capfdbinary, "--config", str(tmp_path / "nope.toml"), "config", "check")
    assert code == 1 and "no such config file" in err


def test_a_master_off_loopback_needs_a_token_on_the_command_line_too(
    tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cluster serve --listen`` is held to the rule ``cluster.listen`` is held to at load:
    no token, no listening beyond loopback (nothing is opened or bound)."""
    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path)
    code, _, err = run(capfdbinary, "--config", str(cfg), "cluster", "serve",
                       "--listen", "0.0.0.0:0")
    assert code == 1
    assert "--listen 0.0.0.0:0: reachable from other hosts" in err and "cluster.token" in err
    assert not (tmp_path / "var" / "master").exists()

def _tree(root: Path) -> dict[bytes, bytes]:
    files = {}
    for dirpath, _, names in os.walk(os.fsencode(root)):
        for n in names:
            full = os.path.join(dirpath, n)
            with open(full, "rb") as f:
                files[os.path.relpath(full, os.fsencode(root))] = f.read()
    return files


def _cluster_session(cfg: str, tmp: Path, capfdbinary) -> None:
    """The same admin session, whichever way the commands reach the metadata."""
    c = ("--config", cfg, "cluster")
    src = tmp / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "deep.jpg").write_bytes(os.urandom(200_000))
    (src / os.fsdecode(b"caf\xe9.html")).write_bytes(b"latin-1 name")
    os.utime(src / "a" / "b" / "deep.jpg", ns=(1_600_000_000_123_456_789,) * 2)

    assert run(capfdbinary, *c, "put", "-r", str(src), "/site")[0] == 0
    code, out, _ = run(capfdbinary, *c, "ls", "-R", "/site")
    assert code == 0
    assert b"/site/caf\xe9.html" in out.splitlines()
    code, out, _ = run(capfdbinary, *c, "cat", "/site/a/b/deep.jpg")
    assert out == (src / "a" / "b" / "deep.jpg").read_bytes()

    code, out, _ = run(capfdbinary, *c, "fileinfo", "--json", "/site/a/b/deep.jpg")
    info = json.loads(out)
    assert info["entry"]["mtime_ns"] == 1_600_000_000_123_456_789
    assert all(len(ch["copies"]) == 2 for ch in info["chunks"])
    code, out, _ = run(capfdbinary, *c, "checkfile", "/site/a/b/deep.jpg")
    assert code == 0 and b"chunks with 2 copies" in out

    assert run(capfdbinary, *c, "setgoal", "-r", "3", "/site")[0] == 0
    code, out, _ = run(capfdbinary, *c, "getgoal", "-r", "/site")
    assert all(line.split(b": ")[1] == b"3" for line in out.splitlines())

    assert run(capfdbinary, *c, "snapshot", "/site", "/snap")[0] == 0
    assert run(capfdbinary, *c, "mv", "/site/a", "/site/moved")[0] == 0
    assert run(capfdbinary, *c, "rm", "/site/moved/b/deep.jpg")[0] == 0
    code, out, _ = run(capfdbinary, *c, "trash", "ls", "--json")
    items = [json.loads(line) for line in out.splitlines()]
    assert [i["path"] for i in items] == ["/site/moved/b/deep.jpg"]
    assert run(capfdbinary, *c, "trash", "undel", str(items[0]["id"]))[0] == 0
    code, out, _ = run(capfdbinary, *c, "cat", "/snap/a/b/deep.jpg")
    assert out == (src / "a" / "b" / "deep.jpg").read_bytes()

    dest = tmp / "back"
    assert run(capfdbinary, *c, "get", "-r", "/site", str(dest))[0] == 0
    assert _tree(dest) == {
        b"moved/b/deep.jpg": (src / "a" / "b" / "deep.jpg").read_bytes(),
        b"caf\xe9.html": b"latin-1 name",
    }
    assert (dest / "moved" / "b" / "deep.jpg").stat().st_mtime_ns == 1_600_000_000_123_456_789

    # Bad input: one clear line, exit 1, nothing changed.
    code, out, _ = run(capfdbinary, *c, "status", "--json")
    before = json.loads(out)
    for argv in (
        ("put", str(src / "a" / "b" / "deep.jpg"), "/x/../y"),
        ("rm", "/site"),
        ("cat", "/nope"),
        ("trash", "purge"),
        ("setgoal", "12", "/site"),
        ("mv", "/site", "/site/inside"),
    ):
        code, _, err = run(capfdbinary, *c, *argv)
        assert code == 1, argv
        assert err.startswith("tandem: ") and len(err.strip().splitlines()) == 1, err
    code, out, _ = run(capfdbinary, *c, "status", "--json")
    after = json.loads(out)
    assert after["changelog_last"] == before["changelog_last"]
    assert after["files"] == before["files"]
    assert run(capfdbinary, *c, "fsck")[0] == 0


def test_cluster_tools_in_process(tmp_path: Path, capfdbinary) -> None:
    cfg = write_config(tmp_path)
    _cluster_session(str(cfg), tmp_path, capfdbinary)


@pytest.mark.slow
def test_cluster_tools_against_running_master(tmp_path: Path, capfdbinary) -> None:
    cfg = write_config(tmp_path)
    master, _ = start_master(cfg)
    try:
        # The master holds the metadata lock, so every command here goes over HTTP.
        _cluster_session(str(cfg), tmp_path, capfdbinary)
    finally:
        assert master.stop() == 0

"""The status page for people (``/status``): one small HTML document, no scripts.

What an operator looks for first comes first: is this origin ready, and if not, why (the same
problems ``/readyz`` answers with). Then the volumes (path, state), the goals (the default
goal, chunks under goal and chunks with no good copy at all) and the sync (direction, lag
against ``origin.max_sync_lag``). Every value has an ``id`` so a script can read it too.
"""

from __future__ import annotations

import time
from typing import Any

from cluster.errors import ClusterError
from cluster.master import Volume
from cluster.volume import LocalVolume
from origin.config import Config
from origin.health import esc
from origin.sources import ClusterSource, DirectorySource, Source

STYLE = (
    "body{font:15px/1.4 sans-serif;margin:2em;max-width:60em}"
    "table{border-collapse:collapse;margin-bottom:1em}"
    "td,th{border:1px solid #ccc;padding:3px 10px;text-align:left}"
    "th{background:#f4f4f4;font-weight:normal}td.n{text-align:right}"
    ".ok{color:#070}.bad{color:#b00;font-weight:bold}#state{font-size:1.4em}"
)


def render(cfg: Config, source: Source, role: str, problems: list[str],
           sync: dict[str, Any] | None, now: float, pid: int,
           counts: dict[str, int] | Exception | None = None) -> str:
    """The page; ``counts``: a cluster source's ``counts`` (or the error reading them)."""
    parts = [_readiness(problems)]
    if isinstance(source, ClusterSource):
        assert counts is not None, "a cluster's page needs its counts"
        parts.append(_cluster(cfg, source, counts))
    elif isinstance(source, DirectorySource):
        parts.append(_directory(source))
    parts.append(_sync(sync, cfg.origin.max_sync_lag))
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>tandem {esc(role)}: {'ready' if not problems else 'NOT READY'}</title>"
        f"<style>{STYLE}</style></head><body>"
        f"<h1>tandem {esc(role)}</h1>" + "".join(parts)
        + f"<p><small>{esc(stamp)}, worker pid {pid}</small></p></body></html>"
    )


def _readiness(problems: list[str]) -> str:
    if not problems:
        return "<p id=state class=ok>Ready (/readyz answers 200)</p>"
    items = "".join(f"<li>{esc(p)}</li>" for p in problems)
    return f"<p id=state class=bad>Not ready (/readyz answers 503)</p><ul id=problems>{items}</ul>"


def volume_states(source: ClusterSource) -> tuple[int, list[tuple[Volume, str, str]]]:
    """The mask of the volumes that count as healthy, and each volume with its state and
    problem. A local volume is checked here (its marker file); an S3 volume is the master's
    to judge (``cluster status``), as for ``/readyz``, and counts as healthy."""
    healthy, out = 0, []
    for v in sorted(source.volumes.values(), key=lambda v: v.id):
        state, reason = "ok", ""
        if isinstance(v.store, LocalVolume):
            try:
                v.store.identity()
            except ClusterError as exc:
                state, reason = "missing", str(exc)
        else:
            state = "s3, checked by the master"
        if not reason:
            healthy |= v.bit
        out.append((v, state, reason))
    return healthy, out


def _cluster(cfg: Config, source: ClusterSource, counts: dict[str, int] | Exception) -> str:
    rows = [f"<tr id=volume-{v.id}><td class=n>{v.id}</td><td>{esc(v.path)}</td>"
            f"<td class={'bad' if reason else 'ok'}>{esc(state)}</td>"
            f"<td>{esc(reason)}</td></tr>" for v, state, reason in volume_states(source)[1]]
    out = ("<h2>Volumes</h2><table id=volumes><tr><th>id</th><th>path</th><th>state</th>"
           "<th>problem</th></tr>" + "".join(rows) + "</table>")
    if isinstance(counts, Exception):  # a database error: say so, the rest still helps
        return out + f"<h2>Goals</h2><p id=counts class=bad>metadata unreadable: {esc(counts)}</p>"
    c = counts
    lines = [
        ("default_goal", "Default goal (copies of each chunk)", cfg.cluster.default_goal, False),
        ("under_goal", "Chunks under goal", c["under_goal"], c["under_goal"] > 0),
        ("missing", "Chunks with no good copy", c["missing"], c["missing"] > 0),
        ("over_goal", "Chunks over goal", c["over_goal"], False),
        ("chunks", "Chunks", c["chunks"], False),
        ("files", "Files", c["files"], False),
        ("directories", "Directories", c["directories"], False),
        ("chunk_bytes", "Bytes in chunks", _size(c["chunk_bytes"]), False),
        ("trash_files", "Files in trash", c["trash_files"], False),
    ]
    items = "".join(f"<tr><th>{label}</th><td id={key} class='n{' bad' if bad else ''}'>"
                    f"{esc(value)}</td></tr>" for key, label, value, bad in lines)
    return out + f"<h2>Goals</h2><table id=counts>{items}</table>"


def _directory(source: DirectorySource) -> str:
    problems = source.ready()
    state = "missing" if problems else "ok"
    return ("<h2>Legacy directory</h2><table id=volumes><tr><th>path</th><th>state</th></tr>"
            f"<tr id=volume-legacy><td>{esc(source.root.decode(errors='replace'))}</td>"
            f"<td class={'bad' if problems else 'ok'}>{state}</td></tr></table>")


def _sync(sync: dict[str, Any] | None, max_lag: float) -> str:
    if sync is None:
        return "<h2>Sync</h2><p id=sync>No syncer status file: nothing is being mirrored.</p>"
    direction = sync.get("direction", "unknown")
    lag = sync.get("lag_seconds", 0.0)  # as /readyz reads it
    try:
        seconds = float(lag)
        over, lag_text = not seconds <= max_lag, f"{seconds:.1f} s (limit {max_lag:.1f} s)"
    except (TypeError, ValueError):
        over, lag_text = True, f"unknown ({lag!r})"
    rows = [
        f"<tr><th>Direction</th><td id=sync_direction>{esc(direction)}</td></tr>",
        f"<tr><th>Lag</th><td id=sync_lag class={'bad' if over else 'ok'}>{esc(lag_text)}"
        "</td></tr>",
    ]
    rows += [f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in sync.items()
             if k not in ("direction", "lag_seconds")]
    return f"<h2>Sync</h2><table id=sync>{''.join(rows)}</table>"


def _size(n: int) -> str:
    size, unit = float(n), "bytes"
    for u in ("KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size, unit = size / 1024, u
    return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit} ({n} bytes)"

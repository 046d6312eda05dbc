"""The status page for people (``/status``): one small HTML document, no scripts."""

from __future__ import annotations

from typing import Any

from origin.config import Config
from origin.health import esc
from origin.sources import ClusterSource, Source


def render(cfg: Config, source: Source, role: str, problems: list[str],
           sync: dict[str, Any] | None, now: float, pid: int) -> str:
    rows: list[str] = []
    state = "ready" if not problems else "not ready"
    rows.append(f'<p id="state" class="{"ok" if not problems else "bad"}">{esc(role)}: '
                f"{state}</p>")
    if problems:
        rows.append("<ul id=problems>" + "".join(f"<li>{esc(p)}</li>" for p in problems)
                    + "</ul>")
    if isinstance(source, ClusterSource):
        rows.append(_cluster(source))
    rows.append(_sync(sync))
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>tandem {esc(role)} status</title>"
        "<style>body{font:14px sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}.bad{color:#b00}"
        ".ok{color:#070}</style></head><body>"
        f"<h1>tandem {esc(role)}</h1>" + "".join(rows)
        + f"<p><small>worker pid {pid}</small></p></body></html>"
    )


def _cluster(source: ClusterSource) -> str:
    healthy = 0
    vol_rows = []
    for v in source.volumes.values():
        problems = [p for p in source.ready() if v.path in p]
        if not problems:
            healthy |= v.bit
        vol_rows.append(
            f"<tr><td>{v.id}</td><td>{esc(v.path)}</td>"
            f"<td class={'bad' if problems else 'ok'}>{'missing' if problems else 'ok'}</td></tr>"
        )
    counts = source.meta.counts(healthy)
    items = "".join(f"<tr><th>{esc(k)}</th><td id={esc(k)}>{esc(v)}</td></tr>"
                    for k, v in counts.items())
    return ("<h2>Volumes</h2><table id=volumes><tr><th>id</th><th>path</th><th>state</th></tr>"
            + "".join(vol_rows) + "</table><h2>Chunks and files</h2><table id=counts>"
            + items + "</table>")


def _sync(sync: dict[str, Any] | None) -> str:
    if sync is None:
        return "<h2>Sync</h2><p id=sync>no syncer status</p>"
    items = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in sync.items())
    return f"<h2>Sync</h2><table id=sync>{items}</table>"

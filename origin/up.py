"""``tandem up``: the whole system on one machine, on the embedded default.

For now that is the cluster master with its volumes and HTTP API, loaded with a small demo
dataset when the cluster is empty. It prints where everything is and how to put a file.
"""

from __future__ import annotations

import sys

from cluster.daemon import serve
from cluster.master import Master
from origin import demo
from origin.config import Config


async def up(cfg: Config, *, demo: bool = True, listen: str | None = None) -> int:
    async def prepare(m: Master) -> None:
        if demo and (await m.status())["files"] == 0:
            for path, data in _demo_files():
                await m.put(path, data)

    def banner(m: Master, url: str) -> None:
        conf = f" --config {cfg.source}" if cfg.source else ""
        lines = [
            "",
            "tandem is up",
            f"  master API     {url}   (try: curl {url}/v1/status)",
            f"  metadata       {cfg.cluster.meta_dir}/meta.db",
            *(f"  volume {v.id}       {v.path}" for v in m.volumes.values()),
            f"  put a file     tandem{conf} cluster put ./photo.jpg /images/photo.jpg",
            f"  list           tandem{conf} cluster ls -l -R /",
            f"  status         tandem{conf} cluster status",
            "  stop           Ctrl-C",
            "",
        ]
        print("\n".join(lines), file=sys.stderr, flush=True)

    return await serve(cfg.cluster, listen, prepare=prepare, on_ready=banner)


def _demo_files() -> list[tuple[str, bytes]]:
    return list(demo.files())

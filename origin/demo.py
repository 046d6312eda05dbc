"""A small demo dataset (images and news pages) for ``tandem up`` on an empty cluster."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

COLORS = {"red": (220, 40, 40), "green": (40, 180, 80), "blue": (40, 90, 220)}


def png(rgb: tuple[int, int, int], size: int = 64) -> bytes:
    """A solid-colour PNG (zlib and struct are all a one-colour image needs)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    row = b"\x00" + bytes(rgb) * size
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(row * size, 9)) + chunk(b"IEND", b""))


def files() -> Iterator[tuple[str, bytes]]:
    for name, rgb in COLORS.items():
        yield f"/images/2026/11/{name}.png", png(rgb)
        yield f"/news/images/{name}-thumb.png", png(rgb, 16)
    svg = ('<svg xmlns="http://www.w3.org/2000/svg" width="120" height="40">'
           '<text x="10" y="25">tandem</text></svg>')
    yield "/images/logo.svg", svg.encode()
    for n in range(1, 4):
        html = (f"<!doctype html><meta charset=utf-8><title>News {n}</title>"
                f"<h1>News item {n}</h1><img src=/news/images/red-thumb.png>"
                "<p>Served by tandem from the cluster.</p>")
        yield f"/news/2026/11/21/item-{n}.html", html.encode()

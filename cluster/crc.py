"""CRC32 per 64 KiB block: computing a chunk's table and checking bytes read against it."""

from __future__ import annotations

import struct
import zlib

BLOCK = 64 * 1024


def table(data: bytes | memoryview) -> bytes:
    """The packed big-endian CRC32 of each 64 KiB block of ``data`` (an empty chunk has none)."""
    view = memoryview(data)
    return b"".join(
        struct.pack(">I", zlib.crc32(view[i : i + BLOCK])) for i in range(0, len(view), BLOCK)
    )


def blocks(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK


def bad_block(crcs: bytes, first_block: int, data: bytes | memoryview) -> int | None:
    """Check whole blocks read starting at block ``first_block``; the first bad block or None."""
    view = memoryview(data)
    for n, i in enumerate(range(0, len(view), BLOCK)):
        want = crcs[(first_block + n) * 4 : (first_block + n) * 4 + 4]
        if len(want) != 4 or struct.pack(">I", zlib.crc32(view[i : i + BLOCK])) != want:
            return first_block + n
    return None

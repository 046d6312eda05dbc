"""The contract between the origin and the front nginx for ``X-Accel-Redirect``.

nginx marks requests it sends to the origin with ``ACCEL_HEADER``; only then does the origin
answer with ``X-Accel-Redirect`` (headers from the origin, bytes sent by nginx from the file).
The internal locations below are rendered by ``nginx.render`` and are unreachable from outside.
"""

from __future__ import annotations

ACCEL_HEADER = "X-Tandem-Accel"
INTERNAL = "/_tandem/"
LEGACY_LOCATION = INTERNAL + "legacy/"


def volume_location(index: int) -> str:
    """The internal location of the ``index``-th configured volume (config order)."""
    return f"{INTERNAL}vol/{index}/"

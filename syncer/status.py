"""The mirror's status file (as lsyncd's ``statusFile``): ``<state_dir>/status.json``, rewritten
atomically at most every ``EVERY`` seconds, and at once on an error, when it turns idle or
busy, and when it is idle after work (so an idle status always shows the work done).

    {"direction": "cluster->legacy", "source": "...", "target": "...", "cursor": 123 | null,
     "queue": 0, "inflight": 0, "idle": true, "lag_seconds": 0.0, "last_error": "",
     "counters": {...}, "updated": 1763700000.1, "pid": 4242}

``lag_seconds`` is the age of the oldest change not yet on the target; ``cursor`` the
changelog position applied (cluster source only).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from syncer.state import atomic_write

EVERY = 0.5


class Status:
    def __init__(self, state_dir: Path, direction: str, source: str, target: str,
                 counters: dict[str, int]) -> None:
        self.file = state_dir / "status.json"
        self.direction = direction
        self.source = source
        self.target = target
        self.counters = counters
        self.last_error = ""
        self._at = 0.0
        self._idle = False  # what the file says
        self._counted: dict[str, int] = {}  # the counters it shows

    def write(self, *, queue: int | Callable[[], int], inflight: int, lag_seconds: float,
              cursor: int | None = None, force: bool = False, idle: bool | None = None) -> None:
        """``queue`` may be a function, called only when the file is written; ``idle``
        defaults to nothing queued and nothing in flight."""
        now = time.monotonic()
        if idle is None:
            assert isinstance(queue, int)
            idle = queue == 0 and inflight == 0
        settled = idle and self._counted != self.counters  # work done since: show it now
        if not force and not settled and idle == self._idle and now - self._at < EVERY:
            return
        self._at, self._idle, self._counted = now, idle, dict(self.counters)
        body = {
            "direction": self.direction,
            "source": self.source,
            "target": self.target,
            "cursor": cursor,
            "queue": queue if isinstance(queue, int) else queue(),
            "inflight": inflight,
            "idle": idle,
            "lag_seconds": round(lag_seconds, 3),
            "last_error": self.last_error,
            "counters": self.counters,
            "updated": time.time(),
            "pid": os.getpid(),
        }
        atomic_write(self.file, json.dumps(body).encode(), durable=False)

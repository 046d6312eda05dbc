"""The syncer's errors.

    SyncError
    ├── TargetError      the target refused a change (full, read-only, missing mount);
    │                    retryable: the change stays queued and is tried again with backoff
    └── Skipped          a source entry the mirror does not carry (a special file, a symbolic
                         link that leads out of the root); logged with the reason, not retried
"""

from __future__ import annotations


class SyncError(Exception):
    retryable = False


class TargetError(SyncError):
    retryable = True


class Skipped(SyncError):
    pass

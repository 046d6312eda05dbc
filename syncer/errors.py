"""The syncer's errors.

    SyncError
    ├── TargetError      the target refused a change (full, read-only, missing mount);
    │   │                retryable: the change stays queued and is tried again with backoff
    │   └── CommitFailed a batch of staged copies could not be put in place; names the paths
    │                    to copy again
    ├── Skipped          a source entry the mirror does not carry (a special file, a symbolic
    │                    link that leads out of the root); logged with the reason, not retried
    ├── StateError       a state file in ``sync.state_dir`` is unreadable or invalid, or
    │                    another ``tandem sync run`` already follows this state folder
    └── FlipError        ``tandem flip`` cannot go on (no syncer to drain, drain timeout,
                         another flip running, a conflicting unfinished flip, nginx refused);
                         the message says what to do
"""

from __future__ import annotations


class SyncError(Exception):
    retryable = False


class TargetError(SyncError):
    retryable = True


class CommitFailed(TargetError):
    def __init__(self, rels: list[bytes], message: str) -> None:
        super().__init__(message)
        self.rels = rels


class Skipped(SyncError):
    pass


class StateError(SyncError):
    pass


class FlipError(SyncError):
    pass

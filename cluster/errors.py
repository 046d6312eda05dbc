"""The cluster's error tree — every error the cluster raises is one of these.

    ClusterError                      base; ``retryable`` says whether trying again may help
    ├── UserError                     bad input from a caller; nothing was changed
    │   ├── InvalidPath               ``..``, NUL, empty or overlong names, paths too long
    │   ├── NotFound                  no such file, directory or trash entry
    │   ├── AlreadyExists             the destination exists (mkdir, mv, snapshot, undelete)
    │   ├── NotADirectory             a path component, or the target, is a file
    │   ├── IsADirectory              a file operation named a directory
    │   ├── DirectoryNotEmpty         rm without recursion on a non-empty directory
    │   └── InvalidArgument           goal out of range, negative trash time, bad range …
    ├── StoreError                    a chunk store could not do what was asked
    │   ├── ChunkMissing              no such chunk on this store
    │   ├── ChunkCorrupt              a CRC mismatch: the copy is bad and must not be served
    │   ├── VolumeFull                ENOSPC / EDQUOT (retryable elsewhere)
    │   ├── VolumeReadOnly            EROFS / EACCES on write (retryable elsewhere)
    │   └── VolumeUnavailable         the volume directory is gone or unreadable (retryable)
    ├── NotEnoughCopies               no healthy copy could be written or read
    ├── GoalChanged                   internal: a put placed its copies for a lower goal
    ├── ChangelogTrimmed              a cursor fell behind retention: the consumer must rescan
    ├── MasterBusy                    another process holds the master lock
    ├── Unauthorized                  the master's HTTP API wants a (valid) bearer token
    ├── Forbidden                     the read-only token (``cluster.read_token``) on a change
    └── RemoteError                   the master's HTTP API could not be reached (retryable)

``OSError`` is mapped into this tree once, at the store boundary (``volume.map_os_error``).
"""

from __future__ import annotations


class ClusterError(Exception):
    """Base of every cluster error."""

    retryable = False
    #: HTTP status the master API answers with for this error.
    status = 500


class UserError(ClusterError):
    status = 400


class InvalidPath(UserError):
    pass


class NotFound(UserError):
    status = 404


class AlreadyExists(UserError):
    status = 409


class NotADirectory(UserError):
    status = 409


class IsADirectory(UserError):
    status = 409


class DirectoryNotEmpty(UserError):
    status = 409


class InvalidArgument(UserError):
    pass


class StoreError(ClusterError):
    status = 503


class ChunkMissing(StoreError):
    pass


class ChunkCorrupt(StoreError):
    pass


class VolumeFull(StoreError):
    retryable = True
    status = 507


class VolumeReadOnly(StoreError):
    retryable = True


class VolumeUnavailable(StoreError):
    retryable = True


class NotEnoughCopies(ClusterError):
    status = 503


class GoalChanged(ClusterError):
    """A put's copies were placed for a goal read from the writer's folder cache, and the
    path's goal is higher (the file it replaces has its own). Never leaves ``Master.put``,
    which places the copies again for ``goal``."""

    def __init__(self, goal: int) -> None:
        super().__init__(f"the path's goal is {goal}")
        self.goal = goal


class MetadataError(ClusterError):
    """The metadata could not be committed (its disk is full or failing): nothing of the
    mutation happened; it may be tried again."""

    retryable = True
    status = 503


class ChangelogTrimmed(ClusterError):
    """The consumer's cursor is older than the oldest retained changelog entry."""

    status = 410

    def __init__(self, cursor: int, oldest: int) -> None:
        super().__init__(
            f"changelog cursor {cursor} is behind retention (oldest kept entry is {oldest}); "
            "rescan and restart from the current position"
        )
        self.cursor = cursor
        self.oldest = oldest


class MasterBusy(ClusterError):
    pass


class Unauthorized(ClusterError):
    status = 401


class Forbidden(ClusterError):
    status = 403


class RemoteError(ClusterError):
    retryable = True
    status = 502


#: name → class, used by the remote client to re-raise what the master raised.
BY_NAME: dict[str, type[ClusterError]] = {
    cls.__name__: cls
    for cls in (
        ClusterError, UserError, InvalidPath, NotFound, AlreadyExists, NotADirectory,
        IsADirectory, DirectoryNotEmpty, InvalidArgument, StoreError, ChunkMissing,
        ChunkCorrupt, VolumeFull, VolumeReadOnly, VolumeUnavailable, NotEnoughCopies,
        MasterBusy, Unauthorized, Forbidden, RemoteError,
    )
}

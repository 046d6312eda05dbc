"""The origin's errors: what a request can run into once it was accepted.

    OriginError
    ├── Refused        the request is bad (a hostile or malformed path); 4xx, nothing changes
    └── Unavailable    storage trouble; answered 503 so nginx fails over to the backup
"""

from __future__ import annotations


class OriginError(Exception):
    status = 500


class Refused(OriginError):
    status = 400

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Unavailable(OriginError):
    status = 503

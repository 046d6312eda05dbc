"""nginx upstream groups as a small model, checked before anything is written.

A ``Group`` is what one ``upstream { … }`` block says: servers (some of them ``backup``), the
balancing method, keepalive, and a shared-memory ``zone`` so that every worker sees the same
failure state (without one each worker counts failures and probes a recovered server on its
own). ``check`` refuses, naming the config key, what nginx would silently ignore or refuse:

- a group of one server, without a backup, relying on ``max_fails`` — nginx ignores
  ``max_fails``/``fail_timeout`` there, so the server is never taken out and every request
  during an outage fails (with a backup in the group they are honoured);
- ``backup`` together with ``hash``, ``ip_hash`` or ``random`` — ``nginx -t`` rejects it;
- the same server twice (after a wildcard bind is mapped onto its loopback address), or the
  front itself in a group (it would proxy to itself);
- a group without a primary server.

Imports nothing of ours but the error tree: ``nginx.render`` builds the groups from the config
and writes ``lines(group)`` into the config.
"""

from __future__ import annotations

from dataclasses import dataclass

from nginx.errors import NginxConfigError

ZONE_SIZE = "64k"  # shared state of a group: room for hundreds of servers
BACKUP_REFUSED = ("hash", "ip_hash", "random")
BALANCE_DIRECTIVE = {
    "round_robin": None,  # nginx's default, no directive
    "least_conn": "least_conn;",
    "hash": "hash $request_uri consistent;",  # a file's requests go to the same origin
    "ip_hash": "ip_hash;",
    "random": "random;",
}


@dataclass(frozen=True)
class Server:
    address: str  # HOST:PORT as written into the config ("[::1]:80" for IPv6)
    what: str  # the config key it comes from, for messages
    backup: bool = False
    max_fails: int = 1  # 0 = never taken out
    fail_timeout: int = 10  # seconds

    def line(self) -> str:
        parts = [f"server {self.address}"]
        if self.max_fails:
            parts.append(f"max_fails={self.max_fails} fail_timeout={self.fail_timeout}s")
        else:
            parts.append("max_fails=0")
        if self.backup:
            parts.append("backup")
        return " ".join(parts) + ";"


@dataclass(frozen=True)
class Group:
    name: str
    servers: tuple[Server, ...]
    max_fails_what: str  # the key that sets max_fails, for messages
    balance: str = "round_robin"
    balance_what: str = "nginx.balance"
    keepalive: int = 32  # idle connections per worker; 0 = none
    comment: str = ""

    @property
    def primaries(self) -> tuple[Server, ...]:
        return tuple(s for s in self.servers if not s.backup)

    @property
    def backups(self) -> tuple[Server, ...]:
        return tuple(s for s in self.servers if s.backup)


def check(group: Group, front: tuple[str, str] | None = None) -> None:
    """Refuse what nginx would ignore or reject; ``front`` is the front's own address (as a
    server address) and the key that sets it."""
    if not group.primaries:
        raise NginxConfigError(f"{group.max_fails_what}: upstream {group.name} has no server")
    seen: dict[str, str] = {}
    for s in group.servers:
        if front is not None and s.address == front[0]:
            raise NginxConfigError(
                f"{s.what}: {s.address} is the front itself ({front[1]}); nginx would proxy "
                "to itself"
            )
        if s.address in seen:
            raise NginxConfigError(
                f"{s.what}: {s.address} is already in upstream {group.name} as {seen[s.address]}"
            )
        seen[s.address] = s.what
    if group.backups and group.balance in BACKUP_REFUSED:
        raise NginxConfigError(
            f"{group.balance_what}: nginx refuses backup servers with {group.balance} "
            f"({group.backups[0].what} is the backup of upstream {group.name}); use "
            "round_robin or least_conn"
        )
    (first, *others) = group.primaries
    if not others and not group.backups and first.max_fails:
        raise NginxConfigError(
            f"{group.max_fails_what}: nginx ignores max_fails in upstream {group.name}, which "
            f"has one server ({first.address}, {first.what}) and no backup: it would never be "
            "taken out; add a server or a backup, or set max_fails = 0"
        )


def lines(group: Group) -> list[str]:
    """The ``upstream`` block; the balancing method comes before ``keepalive`` (nginx needs
    it so), the zone first."""
    body = [f"# {group.comment}"] if group.comment else []
    body.append(f"zone {group.name} {ZONE_SIZE};  # failure state shared by all workers")
    directive = BALANCE_DIRECTIVE[group.balance]
    if directive:
        body.append(directive)
    body += [s.line() for s in group.servers]
    if group.keepalive:
        body.append(f"keepalive {group.keepalive};")
    return [f"upstream {group.name} {{", *("    " + line for line in body), "}"]


def duration(seconds: float) -> str:
    """A time as nginx reads it: whole seconds as ``3s``, else milliseconds (``1500ms``)."""
    ms = round(seconds * 1000)
    if ms < 1:
        raise ValueError(f"{seconds!r} is under a millisecond")
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"

"""Where a chunk's copies go, and which copy goes first when there are too many: the one
place for that rule.

- Copies go to distinct volumes, spread over the **kinds** of store: the first copy to a local
  volume (the nginx fast path sends it, reads cost no network), the second to an S3 volume (off
  this host), then alternating while both kinds have volumes left. Within a kind, the least
  full volume first, rotating among equals to spread load. A cluster of local volumes only is
  placed exactly as before S3 existed.
- A chunk has **enough** copies when their worth reaches its goal: a copy counts as its
  volume's ``counts_as`` (1 for a local volume; an S3 volume whose engine keeps N copies
  itself may count as N, so "all copies on S3" satisfies any goal up to N).
- It has **too many** when it has more copies than its goal; the copy dropped is the last one
  this order would have chosen (so goal 2 over two local copies and one S3 copy keeps one of
  each).
- A **missing** copy is re-made where it adds a kind the chunk lacks, else in the usual order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, TypeVar


class Placed(Protocol):
    @property
    def id(self) -> int: ...

    @property
    def kind(self) -> str: ...

    @property
    def worth(self) -> int: ...

    @property
    def total(self) -> int: ...

    @property
    def free(self) -> int: ...


V = TypeVar("V", bound=Placed)

KINDS = ("local", "s3")  # placement order of the kinds


def order(vols: Iterable[V], rotation: int = 0) -> list[V]:
    """``vols`` in placement order: kinds interleaved, least full first within a kind."""
    vols = list(vols)
    if len(vols) < 2:  # one volume (or none): nothing to order, on every put
        return vols
    groups: list[list[V]] = []
    for kind in KINDS:
        group = [v for v in vols if v.kind == kind]
        n = max(len(group), 1)
        group.sort(
            key=lambda v: (
                round(20 * (1 - v.free / v.total)) if v.total else 0,
                (v.id - rotation) % n,
            )
        )
        groups.append(group)
    out: list[V] = []
    for i in range(max((len(g) for g in groups), default=0)):
        out.extend(g[i] for g in groups if i < len(g))
    return out


def worth(vols: Iterable[Placed]) -> int:
    return sum(v.worth for v in vols)


def enough(vols: Sequence[Placed], goal: int) -> bool:
    return len(vols) >= goal or worth(vols) >= goal


def take(candidates: Sequence[V], need: int) -> list[V]:
    """The shortest prefix of ``candidates`` worth at least ``need`` (all of them if none is)."""
    out: list[V] = []
    for v in candidates:
        if worth(out) >= need:
            break
        out.append(v)
    return out


def victim(copies: Sequence[V]) -> V:
    """The copy to drop from a chunk with more copies than its goal."""
    return order(copies)[-1]


def next_target(candidates: Sequence[V], copies: Sequence[Placed]) -> V | None:
    """Where a missing copy goes: a kind the chunk has fewest copies of, in placement order."""
    have = {k: sum(1 for c in copies if c.kind == k) for k in KINDS}
    ranked = sorted(enumerate(candidates), key=lambda iv: (have.get(iv[1].kind, 0), iv[0]))
    return ranked[0][1] if ranked else None

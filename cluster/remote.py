"""``RemoteCluster``: the master's client API over its HTTP API (httpx).

It has the same methods and return types as ``Master`` for everything a client does, and
re-raises the error class the master raised; a master that cannot be reached raises
``RemoteError`` (retryable).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any
from urllib.parse import urlencode

import httpx

from cluster import wire
from cluster.errors import BY_NAME, ChangelogTrimmed, ClusterError, RemoteError
from cluster.master import ChunkInfo
from cluster.meta import Change, Entry, TrashItem

UPLOAD_PIECE = 1 << 20


class RemoteCluster:
    def __init__(self, url: str, *, token: str = "", timeout: float = 60.0) -> None:
        """``token``: the bearer token the master wants (``cluster.token`` or, for reads
        only, ``cluster.read_token``); "" sends none."""
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout, headers=headers)

    async def __aenter__(self) -> RemoteCluster:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    # -- plumbing --------------------------------------------------------------------------

    @staticmethod
    def _raise(resp: httpx.Response) -> None:
        if resp.status_code < 400:
            return
        try:
            body = resp.json()
        except ValueError:
            raise RemoteError(f"master answered {resp.status_code}: {resp.text[:200]}") from None
        if body.get("error") == "ChangelogTrimmed":
            raise ChangelogTrimmed(-1, int(body.get("oldest", 0)))
        cls = BY_NAME.get(body.get("error", ""), ClusterError)
        raise cls(body.get("message", resp.text))

    async def _request(self, method: str, url: str, **kw: Any) -> Any:
        try:
            resp = await self._http.request(method, url, **kw)
        except httpx.HTTPError as exc:
            raise RemoteError(f"cannot reach the master at {self.url}: {exc}") from None
        self._raise(resp)
        return resp.json()

    async def _get(self, url: str, path: bytes | str | None = None, **params: Any) -> Any:
        return await self._request("GET", _url(url, path, **params))

    async def _post(self, op: str, **body: Any) -> Any:
        return await self._request("POST", f"/v1/{op}", json=body)

    # -- the client API -------------------------------------------------------------------------

    async def put(
        self,
        path: bytes | str,
        data: bytes | AsyncIterable[bytes],
        *,
        mode: int = 0o644,
        mtime_ns: int | None = None,
    ) -> Entry:
        params: dict[str, Any] = {"mode": mode}
        if mtime_ns is not None:
            params["mtime_ns"] = mtime_ns
        content = _pieces(data) if isinstance(data, bytes | bytearray) else data
        return wire.entry_from(
            await self._request("PUT", _url("/v1/file", path, **params), content=content)
        )

    async def read(
        self, path: bytes | str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        headers = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            if length == 0:
                return
            headers["Range"] = f"bytes={offset}-{end}"
        try:
            async with self._http.stream("GET", _url("/v1/file", path), headers=headers) as resp:
                if resp.status_code == 416:
                    return
                if resp.status_code >= 400:
                    await resp.aread()
                    self._raise(resp)
                async for piece in resp.aiter_bytes():
                    yield piece
        except httpx.HTTPError as exc:
            raise RemoteError(f"reading from the master at {self.url}: {exc}") from None

    async def cat(self, path: bytes | str, offset: int = 0, length: int | None = None) -> bytes:
        return b"".join([p async for p in self.read(path, offset, length)])

    async def stat(self, path: bytes | str) -> Entry:
        return wire.entry_from(await self._get("/v1/stat", path))

    async def ls(self, path: bytes | str = b"/") -> list[Entry]:
        return [wire.entry_from(d) for d in await self._get("/v1/ls", path)]

    async def walk(self, path: bytes | str = b"/") -> list[Entry]:
        return [wire.entry_from(d) for d in await self._get("/v1/walk", path)]

    async def mkdir(self, path: bytes | str) -> Entry:
        return wire.entry_from(await self._post("mkdir", path=_b(path)))

    async def rm(self, path: bytes | str, recursive: bool = False) -> int:
        return int((await self._post("rm", path=_b(path), recursive=recursive))["files"])

    async def mv(self, src: bytes | str, dst: bytes | str) -> Entry:
        return wire.entry_from(await self._post("mv", src=_b(src), dst=_b(dst)))

    async def snapshot(self, src: bytes | str, dst: bytes | str) -> int:
        return int((await self._post("snapshot", src=_b(src), dst=_b(dst)))["files"])

    async def setgoal(self, path: bytes | str, goal: int, recursive: bool = False) -> int:
        return int((await self._post("setgoal", path=_b(path), goal=goal, recursive=recursive))[
            "changed"])

    async def settrashtime(self, path: bytes | str, seconds: int, recursive: bool = False) -> int:
        body = await self._post("settrashtime", path=_b(path), seconds=seconds, recursive=recursive)
        return int(body["changed"])

    async def trash_list(self, limit: int = 1000, after: int = 0) -> list[TrashItem]:
        return [wire.trash_from(d) for d in await self._get("/v1/trash", limit=limit, after=after)]

    async def undelete(self, trash_id: int, dest: bytes | str | None = None) -> Entry:
        d = _b(dest) if dest is not None else None
        return wire.entry_from(await self._post("undelete", id=trash_id, dest=d))

    async def purge(self, ids: list[int] | None = None, expired: bool = False) -> int:
        return int((await self._post("purge", ids=ids, expired=expired))["purged"])

    async def fileinfo(self, path: bytes | str) -> tuple[Entry, list[ChunkInfo]]:
        d = await self._get("/v1/fileinfo", path)
        return wire.entry_from(d["entry"]), [wire.chunkinfo_from(c) for c in d["chunks"]]

    async def lookup(self, path: bytes | str) -> dict[str, Any]:
        """``GET /v1/lookup``: ``{"seq": N, "file": None | {"size", "mtime_ns", "chunks":
        [[id, version, size, copies mask], …]}}`` read in one snapshot at changelog ``seq``."""
        result: dict[str, Any] = await self._get("/v1/lookup", path)
        return result

    async def chunk(
        self, chunk_id: int, version: int, offset: int = 0, length: int | None = None
    ) -> bytes:
        """The bytes of one chunk version (all, or ``length`` from ``offset``), read by the
        master from a good copy."""
        params: dict[str, Any] = {"id": chunk_id, "version": version, "offset": offset}
        if length is not None:
            params["length"] = length
        try:
            resp = await self._http.get(_url("/v1/chunk", **params))
        except httpx.HTTPError as exc:
            raise RemoteError(f"cannot reach the master at {self.url}: {exc}") from None
        self._raise(resp)
        return resp.content

    async def checkfile(self, path: bytes | str) -> dict[str, Any]:
        result: dict[str, Any] = await self._get("/v1/checkfile", path)
        return result

    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._get("/v1/status")
        return result

    async def fsck(self, verify: bool = False, repair: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = await self._post("fsck", verify=verify, repair=repair)
        return result

    async def migrate_store(
        self,
        src: int | str,
        dst: int | str,
        *,
        move: bool = False,
        dry_run: bool = False,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/migrate-store``: the master runs it and streams NDJSON progress lines
        (at least one every few seconds, so the read timeout holds), then the report."""
        body = {"from": str(src), "to": str(dst), "move": move, "dry_run": dry_run}
        result: dict[str, Any] | None = None
        try:
            async with self._http.stream("POST", "/v1/migrate-store", json=body) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    self._raise(resp)
                async for text in resp.aiter_lines():
                    if not text.strip():
                        continue
                    msg = json.loads(text)
                    if "progress" in msg and progress is not None:
                        progress(msg["progress"])
                    elif "result" in msg:
                        result = msg["result"]
                    elif "error" in msg:
                        cls = BY_NAME.get(msg["error"], ClusterError)
                        raise cls(msg.get("message", ""))
        except httpx.HTTPError as exc:
            raise RemoteError(f"migrating on the master at {self.url}: {exc}") from None
        if result is None:
            raise RemoteError(f"the master at {self.url} ended the migration without a report")
        return result

    async def readiness(self) -> list[str]:
        """The master host's problems for its origins (a flip's fence, the sync lag)."""
        return [str(p) for p in (await self._get("/v1/readiness"))["problems"]]

    async def changes(self, after: int, limit: int = 1000, wait: int = 0) -> list[Change]:
        rows = await self._get("/v1/changes", after=after, limit=limit, wait=wait)
        return [wire.change_from(d) for d in rows]


def _b(path: bytes | str) -> str:
    """A path for a JSON body: percent-encoded raw bytes."""
    return wire.enc(os.fsencode(path))


def _url(base: str, path: bytes | str | None = None, **params: Any) -> str:
    """A URL whose ``path`` parameter carries the raw bytes of the path, percent-encoded."""
    if path is not None:
        params["path"] = os.fsencode(path)
    return f"{base}?{urlencode(params)}" if params else base


async def _pieces(data: bytes | bytearray) -> AsyncIterator[bytes]:
    for i in range(0, len(data), UPLOAD_PIECE):
        yield bytes(data[i : i + UPLOAD_PIECE])

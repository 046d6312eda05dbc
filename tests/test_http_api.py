"""The master's HTTP API on a real loopback socket, through ``RemoteCluster`` and raw httpx."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from cluster import errors
from cluster.config import ClusterConfig
from cluster.http_api import create_app
from cluster.http_server import bind, serve
from cluster.master import Master
from cluster.remote import RemoteCluster
from origin.config import load

TOKEN = "full-token-0123456789"
READ_TOKEN = "read-token-0123456789"


@pytest.fixture
async def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Master, str]]:
    monkeypatch.chdir(tmp_path)
    async with serving(dataclasses.replace(load(None).cluster, chunk_size=65536)) as served:
        yield served


@pytest.fixture
async def guarded(tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Master, str]]:
    """A master whose API wants ``TOKEN`` (anything) or ``READ_TOKEN`` (reads)."""
    monkeypatch.chdir(tmp_path)
    cfg = dataclasses.replace(load(None).cluster, token=TOKEN, read_token=READ_TOKEN)
    async with serving(cfg) as served:
        yield served


@contextlib.asynccontextmanager
async def serving(cfg: ClusterConfig) -> AsyncIterator[tuple[Master, str]]:
    stop = asyncio.Event()
    urls: list[str] = []
    listening = asyncio.Event()

    def ready(url: str) -> None:
        urls.append(url)
        listening.set()

    async with Master(cfg, background=False) as m:
        task = asyncio.create_task(serve(create_app(m, f"t{id(m)}"), bind("127.0.0.1", 0),
                                         ready, stop))
        await asyncio.wait({task, asyncio.create_task(listening.wait())},
                           return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        try:
            yield m, urls[0]
        finally:
            stop.set()
            await task


async def test_put_get_ranges_and_validators(api: tuple[Master, str]) -> None:
    _, url = api
    data = os.urandom(200_000)  # four chunks of 64 KiB
    async with RemoteCluster(url) as c:
        e = await c.put("/images/big.jpg", data, mtime_ns=123, mode=0o600)
        assert e.hash == hashlib.sha256(data).digest()
        assert (e.size, e.mtime_ns, e.mode) == (len(data), 123, 0o600)
        assert await c.cat("/images/big.jpg") == data
        assert await c.cat("/images/big.jpg", 65_530, 20) == data[65_530:65_550]
        assert await c.cat("/images/big.jpg", 199_990) == data[199_990:]
    async with httpx.AsyncClient(base_url=url) as h:
        r = await h.get("/v1/file?path=/images/big.jpg", headers={"Range": "bytes=-10"})
        assert r.status_code == 206 and r.content == data[-10:]
        assert r.headers["content-range"] == f"bytes {len(data) - 10}-{len(data) - 1}/{len(data)}"
        assert r.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
        r = await h.get("/v1/file?path=/images/big.jpg", headers={"Range": "bytes=999999-"})
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(data)}"
        r = await h.get("/v1/file?path=/images/big.jpg", headers={"Range": "bytes=0-1,5-6"})
        assert r.status_code == 400 and r.json()["error"] == "InvalidArgument"
        # nginx's rules (cluster.ranges): a malformed Range is unsatisfiable, not a bad request
        r = await h.get("/v1/file?path=/images/big.jpg", headers={"Range": "bytes=x-y"})
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(data)}"
        r = await h.get("/v1/file?path=/images/big.jpg", headers={"Range": "bytes=0-1,999999-"})
        assert r.status_code == 206 and r.content == data[:2]


async def test_errors_map_to_the_same_classes(api: tuple[Master, str]) -> None:
    _, url = api
    async with RemoteCluster(url) as c:
        await c.put("/a/file", b"x")
        with pytest.raises(errors.NotFound):
            await c.stat("/nope")
        with pytest.raises(errors.InvalidPath, match=r"'\.\.'"):
            await c.put("/a/../b", b"x")
        with pytest.raises(errors.InvalidPath, match="NUL"):
            await c.stat(b"/a/\0b")
        with pytest.raises(errors.IsADirectory):
            await c.put("/a", b"x")
        with pytest.raises(errors.DirectoryNotEmpty):
            await c.rm("/a")
        with pytest.raises(errors.AlreadyExists):
            await c.snapshot("/a/file", "/a/file")
        with pytest.raises(errors.InvalidArgument):
            await c.setgoal("/a", 0)
        assert await c.cat("/a/file") == b"x"


async def test_non_utf8_names_round_trip(api: tuple[Master, str]) -> None:
    _, url = api
    name = b"/news/\xff\xfe caf\xe9 %2F+&=?.html"
    async with RemoteCluster(url) as c:
        await c.put(name, b"bytes")
        assert [e.path for e in await c.ls("/news")] == [name]
        assert await c.cat(name) == b"bytes"
        await c.mv(name, name + b".old")
        assert (await c.stat(name + b".old")).size == 5
        changes = await c.changes(0)
        assert changes[-1].op == "mv" and changes[-1].dest == name + b".old"


async def test_changes_long_poll_and_trimmed_cursor(api: tuple[Master, str]) -> None:
    m, url = api
    async with RemoteCluster(url) as c:
        await c.put("/one", b"1")
        _, last = await m.changelog_bounds()
        waiter = asyncio.create_task(c.changes(last, wait=10))
        await asyncio.sleep(0.2)
        assert not waiter.done()
        await c.put("/two", b"2")
        got = await asyncio.wait_for(waiter, 5)
        assert [(ch.op, ch.path) for ch in got] == [("put", b"/two")]

        await c.put("/three", b"3")
        trimmed = await m._mutate(lambda: m.meta.trim_changelog(2**62))
        assert trimmed > 0
        with pytest.raises(errors.ChangelogTrimmed):
            await c.changes(0)


async def test_streamed_put_larger_than_memory_pieces(api: tuple[Master, str]) -> None:
    """A body sent in many small pieces is cut into chunks on the master as it arrives."""
    _, url = api
    digest = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for i in range(100):
            piece = bytes([i]) * 7_001
            digest.update(piece)
            yield piece

    async with RemoteCluster(url) as c:
        e = await c.put("/stream.bin", body())
        assert e.size == 700_100 and e.hash == digest.digest()
        _, infos = await c.fileinfo("/stream.bin")
        assert [i.chunk.size for i in infos] == [65536] * 10 + [44_740]


async def test_a_token_guards_every_change_and_the_read_token_only_reads(
    guarded: tuple[Master, str],
) -> None:
    """With ``cluster.token`` set: no token or a wrong one → 401 and nothing done; the read
    token reads (lookups, bytes, the change feed) but any change → 403 and nothing done;
    ``/healthz`` stays open for probes."""
    m, url = guarded
    async with RemoteCluster(url, token=TOKEN) as full:
        await full.put("/images/a.jpg", b"bytes")
    async with httpx.AsyncClient(base_url=url) as h:
        assert (await h.get("/healthz")).status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                        {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"}):
            r = await h.get("/v1/stat?path=/images/a.jpg", headers=headers)
            assert r.status_code == 401 and r.json()["error"] == "Unauthorized", r.text
            assert r.headers["www-authenticate"].startswith("Bearer")
            r = await h.post("/v1/rm", json={"path": "/images", "recursive": True},
                             headers=headers)
            assert r.status_code == 401
    async with RemoteCluster(url) as anonymous:
        with pytest.raises(errors.Unauthorized, match="Bearer"):
            await anonymous.rm("/images", recursive=True)
    async with RemoteCluster(url, token=READ_TOKEN) as reader:
        assert await reader.cat("/images/a.jpg") == b"bytes"
        assert (await reader.stat("/images/a.jpg")).size == 5
        assert [c.op for c in await reader.changes(0)] == ["mkdir", "put"]
        for change in (reader.rm("/images", recursive=True), reader.put("/images/b", b"x"),
                       reader.purge(None, expired=False), reader.setgoal("/images", 1)):
            with pytest.raises(errors.Forbidden, match="read_token"):
                await change
    assert await m.cat("/images/a.jpg") == b"bytes"  # every refused change changed nothing
    assert [e.path for e in await m.walk("/images")] == [b"/images", b"/images/a.jpg"]

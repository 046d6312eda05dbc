"""The local volume directory: the shared store conformance suite, plus what is local-only."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conformance import StoreConformance, flip_byte, pattern

from cluster import crc, volume
from cluster.errors import ChunkCorrupt, ChunkMissing, VolumeUnavailable
from cluster.store import ChunkKey
from cluster.volume import MARKER, XATTR, LocalVolume


class TestLocalVolumeConformance(StoreConformance):
    @pytest.fixture
    def store(self, tmp_path: Path) -> LocalVolume:
        return LocalVolume.create(tmp_path / "v")

    def corrupt(self, store: LocalVolume, key: ChunkKey, offset: int) -> None:
        flip_byte(store.path_of(key), offset)

    def reopen(self, store: LocalVolume) -> LocalVolume:
        return LocalVolume(store.root)


@pytest.fixture
def vol(tmp_path: Path) -> LocalVolume:
    return LocalVolume.create(tmp_path / "v")


async def test_layout_and_crc_xattr(vol: LocalVolume) -> None:
    key = ChunkKey(0x1234, 7)
    data = pattern(2 * crc.BLOCK, seed=2)
    await vol.put(key, data)
    path = vol.path_of(key)
    assert path == vol.root / "34" / "chunk_0000000000001234_00000007"
    assert path.read_bytes() == data  # raw bytes: nginx can send the file as it is
    table = os.getxattr(path, XATTR)
    assert len(table) == 8  # one CRC32 per 64 KiB block
    assert table == crc.table(data)
    assert not path.with_suffix(".crc").exists()  # small tables need no sidecar
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp left behind


async def test_large_crc_table_in_a_sidecar(
    vol: LocalVolume, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(volume, "XATTR_MAX", 4)  # as if the chunk were over 32 MiB
    key = ChunkKey(5, 1)
    data = pattern(2 * crc.BLOCK + 1, seed=5)
    await vol.put(key, data)
    sidecar = Path(f"{vol.path_of(key)}.crc")
    assert sidecar.read_bytes() == crc.table(data)
    assert await vol.get(key) == data
    assert await vol.get(key, crc.BLOCK + 3, 10) == data[crc.BLOCK + 3 : crc.BLOCK + 13]
    sidecar.unlink()
    with pytest.raises(ChunkCorrupt, match="no CRC table"):
        await vol.get(key)


async def test_missing_crc_table_is_corruption(vol: LocalVolume) -> None:
    key = ChunkKey(3, 1)
    await vol.put(key, b"abc")
    os.removexattr(vol.path_of(key), XATTR)
    with pytest.raises(ChunkCorrupt, match="no CRC table"):
        await vol.get(key)


async def test_truncated_chunk_is_corruption(vol: LocalVolume) -> None:
    key = ChunkKey(4, 1)
    await vol.put(key, pattern(2 * crc.BLOCK))
    os.truncate(vol.path_of(key), crc.BLOCK)
    with pytest.raises(ChunkCorrupt):
        await vol.get(key)


async def test_remove_temp(vol: LocalVolume) -> None:
    key = ChunkKey(0xFF, 1)
    await vol.put(key, b"keep me")
    (vol.root / "00" / ".tmp.chunk_0000000000000000_00000001.abcd1234").write_bytes(b"half")
    (vol.root / "FF" / ".tmp.chunk_00000000000000FF_00000002.crc").write_bytes(b"x")
    (vol.root / "7A" / "notes.txt").write_bytes(b"not ours, not a temp")
    assert vol.remove_temp() == 2
    assert not any(p.name.startswith(".tmp.") for p in vol.root.rglob("*"))
    assert (vol.root / "7A" / "notes.txt").exists()
    assert await vol.get(key) == b"keep me"
    assert {k async for k in vol.list()} == {key}
    assert vol.remove_temp() == 0


def test_create_refuses_a_non_empty_foreign_directory(tmp_path: Path) -> None:
    d = tmp_path / "photos"
    d.mkdir()
    (d / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(VolumeUnavailable, match="not empty"):
        LocalVolume.create(d)
    assert sorted(p.name for p in d.iterdir()) == ["holiday.jpg"]  # untouched
    assert (d / "holiday.jpg").read_bytes() == b"precious"


def test_create_makes_marker_and_folders(tmp_path: Path) -> None:
    v = LocalVolume.create(tmp_path / "a" / "b")
    assert (v.root / MARKER).is_file()
    assert len([p for p in v.root.iterdir() if p.is_dir()]) == 256
    assert v.identity() == LocalVolume(v.root).identity()
    assert v.identity() != LocalVolume.create(tmp_path / "c").identity()


async def test_vanished_volume_is_unavailable_not_missing_chunk(vol: LocalVolume) -> None:
    key = ChunkKey(5, 1)
    await vol.put(key, b"data")
    shutil.rmtree(vol.root)
    with pytest.raises(VolumeUnavailable):
        await vol.get(key)
    with pytest.raises(VolumeUnavailable):
        await vol.head(key)
    with pytest.raises(VolumeUnavailable):
        [k async for k in vol.list()]
    with pytest.raises(VolumeUnavailable):
        vol.identity()
    st = await vol.stat()
    assert not st.healthy and st.reason


async def test_missing_chunk_on_a_present_volume(vol: LocalVolume) -> None:
    with pytest.raises(ChunkMissing):
        await vol.get(ChunkKey(6, 1))
    assert await vol.head(ChunkKey(6, 1)) is None


async def test_batch_writes_become_readable_after_sync(vol: LocalVolume) -> None:
    """The group-commit ability: write_nosync then one sync; the bytes are the put's."""
    keys = {ChunkKey(100 + i, 1): pattern(crc.BLOCK + i, seed=i) for i in range(5)}
    for key, data in keys.items():
        vol.write_nosync(key, data)
    vol.sync()
    for key, data in keys.items():
        assert await vol.get(key) == data
        assert os.getxattr(vol.path_of(key), XATTR) == crc.table(data)
    assert vol.sync_domain == os.stat(vol.root).st_dev


async def test_read_cached_matches_get_or_declines(vol: LocalVolume) -> None:
    """read_cached (RWF_NOWAIT, on the event loop) returns get's bytes, or None when the data
    is not all in memory; it refuses corruption exactly like get."""
    key = ChunkKey(200, 1)
    data = pattern(3 * crc.BLOCK + 5, seed=4)
    await vol.put(key, data)
    await vol.get(key)  # now in the page cache
    for off, length in ((0, None), (crc.BLOCK - 1, 2), (3 * crc.BLOCK, 5)):
        got = vol.read_cached(key, off, length)
        want = data[off:] if length is None else data[off : off + length]
        assert got is None or got == want
    assert vol.read_cached(key) == data, "a chunk just read is in the page cache"
    flip_byte(vol.path_of(key), crc.BLOCK + 3)
    with pytest.raises(ChunkCorrupt):
        vol.read_cached(key)
    with pytest.raises(ChunkMissing):
        vol.read_cached(ChunkKey(201, 1))

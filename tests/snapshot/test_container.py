"""The generic container: chunks, manifest, trailing offset, bounds."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import rlp
import snappy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pycita.crypto import keccak
from pycita.snapshot import container
from pycita.snapshot.container import (
    CHUNK_PAYLOAD_LIMIT,
    MAX_CHUNK_PAYLOAD,
    Chunker,
    ChunkReader,
    ChunkWriter,
    RLPError,
    decode_rlp,
    encode_bytes,
    encode_list,
    encode_raw,
    encode_uint,
    snappy_declared_length,
)
from pycita.snapshot.errors import (
    BadTrailingOffset,
    ChunkDecodeError,
    ChunkHashMismatch,
    ChunkTooLarge,
    ManifestError,
    SnapshotError,
    TruncatedFile,
    UnsupportedVersion,
)

item_lists = st.lists(st.lists(st.binary(max_size=300), min_size=0, max_size=8), min_size=0, max_size=6)


def write_container(path: Path, chunks: list[list[bytes]], extra: list[object] | None = None) -> list[object]:
    with ChunkWriter(path, fsync=False) as w:
        for items in chunks:
            w.add_chunk([rlp.encode(x) for x in items])
        manifest = [1, [c.to_rlp() for c in w.chunks], *(extra or [b"tail"])]
        w.finish(manifest)
    return manifest


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=item_lists)
def test_round_trip(tmp_path: Path, chunks: list[list[bytes]]) -> None:
    path = tmp_path / "c.rlp"
    manifest = write_container(path, chunks)
    with ChunkReader(path) as r:
        assert r.manifest == rlp.decode(rlp.encode(manifest))
        assert len(r.chunks) == len(chunks)
        for i, items in enumerate(chunks):
            assert r.read_chunk(i) == items
    assert not Path(str(path) + ".partial").exists()


@given(st.binary(max_size=5000))
def test_encoders_match_pyrlp(data: bytes) -> None:
    assert encode_bytes(data) == rlp.encode(data)
    n = int.from_bytes(data[:40], "big")
    assert encode_uint(n) == rlp.encode(n)
    structure = [data, [data[:3], [data[:60]]], []]
    assert encode_raw(structure) == rlp.encode(structure)
    assert snappy_declared_length(snappy.compress(data)) == len(data)


def test_chunker_cuts_at_limit_and_isolates_oversize_entries(tmp_path: Path) -> None:
    path = tmp_path / "c.rlp"
    sizes = [100, 200, 300, 900, 50, 50, 2000, 10, 400, 400, 400]
    with ChunkWriter(path, fsync=False) as w:
        ch = Chunker(w, limit=1000)
        for i, n in enumerate(sizes):
            ch.add(rlp.encode(bytes([i]) * n), prefix=(rlp.encode(i),))
        ch.flush()
        w.finish([1, [c.to_rlp() for c in w.chunks]])
    seen: list[int] = []
    with ChunkReader(path) as r:
        for i in range(len(r.chunks)):
            payload = r.read_payload(i)
            items = rlp.decode(payload)
            entries = items[1:]
            assert int.from_bytes(items[0], "big") == entries[0][0]  # prefix of the first entry
            assert len(payload) <= 1000 or len(entries) == 1
            seen.extend(len(e) for e in entries)
    assert seen == sizes


class _ChunkRecorder:
    """A ChunkWriter stand-in that keeps the entry lists of the chunks it is given."""

    def __init__(self) -> None:
        self.chunks: list[list[bytes]] = []

    def add_chunk(self, items: list[bytes]) -> object:
        self.chunks.append(list(items))
        return len(self.chunks)


@settings(max_examples=150, deadline=None)
@given(
    limit=st.integers(20, 400),
    before=st.lists(st.integers(1, 120), max_size=5),
    batches=st.lists(st.lists(st.integers(1, 500), max_size=30), max_size=5),
)
def test_chunker_add_many_cuts_the_same_chunks_as_adding_one_entry_at_a_time(
    limit: int, before: list[int], batches: list[list[int]]
) -> None:
    def entry(i: int, n: int) -> bytes:
        return bytes([i % 256]) * n

    one, many = _ChunkRecorder(), _ChunkRecorder()
    a, b = Chunker(one, limit=limit), Chunker(many, limit=limit)  # type: ignore[arg-type]
    k = 0
    for n in before:
        a.add(entry(k, n))
        b.add(entry(k, n))
        k += 1
    for sizes in batches:
        entries = [entry(k + j, n) for j, n in enumerate(sizes)]
        k += len(sizes)
        for e in entries:
            a.add(e)
        b.add_many(entries)
        assert a.pending_entries == b.pending_entries
    a.flush()
    b.flush()
    assert many.chunks == one.chunks


def test_partial_file_removed_on_error(tmp_path: Path) -> None:
    path = tmp_path / "c.rlp"
    with pytest.raises(RuntimeError), ChunkWriter(path, fsync=False) as w:
        w.add_chunk([rlp.encode(b"x")])
        raise RuntimeError("boom")
    assert not path.exists()
    assert not Path(str(path) + ".partial").exists()


def test_writer_refuses_payload_over_hard_bound(tmp_path: Path) -> None:
    with ChunkWriter(tmp_path / "c.rlp", fsync=False) as w, pytest.raises(ChunkTooLarge):
        w.add_payload(b"\x00" * (MAX_CHUNK_PAYLOAD + 1))


def valid_file(tmp_path: Path) -> Path:
    path = tmp_path / "c.rlp"
    write_container(path, [[b"a" * 100, b"b"], [b"c" * 70]])
    return path


def test_truncated_files(tmp_path: Path) -> None:
    path = valid_file(tmp_path)
    data = path.read_bytes()
    for n in range(len(data)):
        path.write_bytes(data[:n])
        with pytest.raises(SnapshotError) as e:
            ChunkReader(path).close()
        assert isinstance(e.value, TruncatedFile | BadTrailingOffset | ManifestError)
        assert str(path) in str(e.value)


def test_wrong_trailing_offset(tmp_path: Path) -> None:
    path = valid_file(tmp_path)
    data = path.read_bytes()
    (offset,) = struct.unpack("<Q", data[-8:])
    for bad in (offset - 1, offset + 1, 0, len(data) - 8, len(data), 2**64 - 1):
        path.write_bytes(data[:-8] + struct.pack("<Q", bad))
        with pytest.raises((BadTrailingOffset, ManifestError)) as e:
            ChunkReader(path)
        assert e.value.check in ("trailing offset", "manifest")


def test_manifest_must_end_at_trailer(tmp_path: Path) -> None:
    path = valid_file(tmp_path)
    data = path.read_bytes()
    (offset,) = struct.unpack("<Q", data[-8:])
    # an extra byte between manifest and trailer
    path.write_bytes(data[:-8] + b"\x00" + data[-8:])
    with pytest.raises(BadTrailingOffset):
        ChunkReader(path)
    assert offset > 0


def test_chunk_table_validation(tmp_path: Path) -> None:
    path = tmp_path / "c.rlp"
    payload = snappy.compress(rlp.encode([b"x"]))
    h = keccak(payload)
    n = len(payload)
    cases = {
        "gap": [[h, n, 1]],
        "zero length": [[h, 0, 0], [h, n, 0]],
        "short end": [[h, n - 1, 0]],
        "bad hash length": [[h[:31], n, 0]],
        "not a list": [b"x"],
        "non-canonical int": [[h, b"\x00" + bytes([n]), 0]],
    }
    for name, table in cases.items():
        manifest = rlp.encode([1, table])
        path.write_bytes(payload + manifest + struct.pack("<Q", n))
        with pytest.raises(ManifestError):
            ChunkReader(path)
        assert name


def test_unsupported_version(tmp_path: Path) -> None:
    path = tmp_path / "c.rlp"
    manifest = rlp.encode([2, []])
    path.write_bytes(manifest + struct.pack("<Q", 0))
    with pytest.raises(UnsupportedVersion) as e:
        ChunkReader(path)
    assert e.value.expected == "1" and e.value.actual == 2


def test_chunk_hash_mismatch_names_file_and_chunk(tmp_path: Path) -> None:
    path = valid_file(tmp_path)
    data = bytearray(path.read_bytes())
    with ChunkReader(path) as r:
        second = r.chunks[1]
    data[second.offset + 2] ^= 0x40
    path.write_bytes(bytes(data))
    with ChunkReader(path) as r:
        r.read_chunk(0)
        with pytest.raises(ChunkHashMismatch) as e:
            r.read_chunk(1)
    assert e.value.chunk == 1 and e.value.file == str(path)
    assert "chunk 1" in str(e.value) and str(path) in str(e.value)


def craft(path: Path, chunk_bytes: bytes) -> None:
    manifest = rlp.encode([1, [[keccak(chunk_bytes), len(chunk_bytes), 0]]])
    path.write_bytes(chunk_bytes + manifest + struct.pack("<Q", len(chunk_bytes)))


def test_declared_size_checked_before_decompressing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bomb.rlp"
    # a raw snappy block declaring 1 GiB, then a literal and garbage copies
    bomb = bytes([0x80, 0x80, 0x80, 0x80, 0x04]) + b"\x00a" + b"\x01\x00" * 50
    assert snappy_declared_length(bomb) == 1 << 30
    craft(path, bomb)

    def no_decompress(_data: bytes) -> bytes:
        raise AssertionError("decompressed before the size check")

    monkeypatch.setattr(container.snappy, "uncompress", no_decompress)
    with ChunkReader(path) as r, pytest.raises(ChunkTooLarge) as e:
        r.read_chunk(0)
    assert e.value.actual == 1 << 30 and e.value.chunk == 0


def test_declared_size_just_over_hard_bound(tmp_path: Path) -> None:
    n = MAX_CHUNK_PAYLOAD + 1
    header = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        header.append(b | (0x80 if n else 0))
        if not n:
            break
    path = tmp_path / "c.rlp"
    craft(path, bytes(header) + b"\x00a")
    with ChunkReader(path) as r, pytest.raises(ChunkTooLarge):
        r.read_chunk(0)


def test_overlong_varint_and_garbage(tmp_path: Path) -> None:
    path = tmp_path / "c.rlp"
    craft(path, b"\xff" * 6)
    with ChunkReader(path) as r, pytest.raises(ChunkDecodeError):
        r.read_chunk(0)
    craft(path, b"\x05\x00abc")  # declares 5 bytes, literal of 1 byte
    with ChunkReader(path) as r, pytest.raises(ChunkDecodeError):
        r.read_chunk(0)
    craft(path, snappy.compress(b"\x81\x05"))  # non-canonical RLP
    with ChunkReader(path) as r, pytest.raises(ChunkDecodeError):
        r.read_chunk(0)
    craft(path, snappy.compress(rlp.encode(b"not a list")))
    with ChunkReader(path) as r, pytest.raises(ChunkDecodeError):
        r.read_chunk(0)


def test_multi_entry_chunk_over_soft_limit_rejected(tmp_path: Path) -> None:
    path = tmp_path / "c.rlp"
    big = b"\x00" * (CHUNK_PAYLOAD_LIMIT // 2 + 10)
    with ChunkWriter(path, fsync=False) as w:
        w.add_chunk([rlp.encode(big), rlp.encode(big)])  # 2 entries, > 4 MiB
        w.add_chunk([rlp.encode(big + big)])  # one entry > 4 MiB: allowed
        w.finish([1, [c.to_rlp() for c in w.chunks]])
    with ChunkReader(path) as r:
        with pytest.raises(ChunkTooLarge):
            r.read_chunk(0)
        assert len(r.read_chunk(1)) == 1


def test_opening_reads_only_trailer_and_manifest(tmp_path: Path) -> None:
    path = valid_file(tmp_path)
    data = bytearray(path.read_bytes())
    with ChunkReader(path) as r:
        end = r.manifest_offset
    data[:end] = b"\xee" * end  # destroy every chunk
    path.write_bytes(bytes(data))
    with ChunkReader(path) as r:
        assert len(r.chunks) == 2
        with pytest.raises(ChunkHashMismatch):
            r.read_chunk(0)


rlp_values = st.recursive(st.binary(max_size=70), lambda children: st.lists(children, max_size=6), max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(value=rlp_values)
def test_decode_rlp_matches_pyrlp_on_valid_input(value: object) -> None:
    encoded = rlp.encode(value)
    assert decode_rlp(encoded) == rlp.decode(encoded, strict=True) == value


@settings(max_examples=500, deadline=None)
@given(value=rlp_values, pos=st.integers(0, 10_000), byte=st.integers(0, 255), cut=st.booleans())
def test_decode_rlp_accepts_exactly_what_pyrlp_strict_accepts(value: object, pos: int, byte: int, cut: bool) -> None:
    data = bytearray(rlp.encode(value))
    if cut:
        del data[pos % len(data):]
    else:
        data[pos % len(data)] = byte
    try:
        expected: object = rlp.decode(bytes(data), strict=True)
    except rlp.exceptions.DecodingError:
        expected = None
    try:
        actual: object = decode_rlp(bytes(data))
    except RLPError:
        actual = None
    assert actual == expected


def test_decode_rlp_rejects_non_canonical_and_deep_input() -> None:
    for bad in (b"\x81\x05", b"\xb8\x05hello", b"\xf8\x02\x01\x02", b"\xc2\x01\x02\x03", b"\xb9\x00\x38" + b"a" * 56,
                b"\xc3\x82\x01", b"", b"\xc1"):
        with pytest.raises(RLPError):
            decode_rlp(bad)
    deep = b"\xc0"
    for _ in range(20):
        deep = encode_list([deep])
    with pytest.raises(RLPError, match="deeper"):
        decode_rlp(deep)
    assert decode_rlp(deep, max_depth=30)

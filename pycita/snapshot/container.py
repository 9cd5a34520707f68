"""The generic snapshot container: chunks, a manifest and a trailing offset.

Byte layout (DESIGN.md section 5)::

    offset 0                                     M                 size-8    size
    | chunk 0 | chunk 1 | ... | chunk n-1        | manifest RLP     | u64 LE M |

* A chunk is *raw* (unframed) snappy of the RLP encoding of one list (the
  chunk *payload*). Its ChunkInfo is ``[hash, len, offset]`` where ``hash`` is
  keccak-256 of the **compressed** bytes, ``len`` their length and
  ``offset`` their byte offset in the file. Chunks are contiguous: chunk 0
  starts at 0, chunk i+1 at ``offset_i + len_i``, and the last one ends at M.
* The manifest is one canonical RLP list whose first item is the format
  version (an RLP integer); which of its items hold ChunkInfo tables is the
  format's business (:mod:`pycita.snapshot.chain_format`,
  :mod:`pycita.snapshot.state_format`); tables are listed in file order.
* The last 8 bytes are M, little-endian. The manifest occupies exactly the
  bytes ``[M, size - 8)``.

Bounds (enforced by :class:`ChunkReader` before any decompression):

* :data:`CHUNK_PAYLOAD_LIMIT` (4 MiB): writers cut chunks so the payload
  stays at or under it. A chunk whose payload is larger must hold exactly one
  entry (after the format's fixed prefix items): an entry that alone exceeds
  the limit stands in a chunk of its own.
* :data:`MAX_CHUNK_PAYLOAD` (64 MiB): the hard bound on any payload. The
  declared decompressed length (the varint at the start of a raw snappy
  block) is checked against it before decompressing; writers refuse entries
  that would exceed it.
* :data:`MAX_COMPRESSED_CHUNK`: the compressed length of any chunk (snappy's
  worst case for :data:`MAX_CHUNK_PAYLOAD`), checked on the manifest before
  any chunk is read.
* :data:`MAX_MANIFEST` (64 MiB): the manifest size.

Reading streams: :class:`ChunkReader` holds one chunk in memory at a time,
and opening it touches only the trailer and the manifest.
"""

from __future__ import annotations

import logging
import os
import struct
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

import rlp
import snappy
from rlp.sedes import big_endian_int

from pycita.crypto import Hash32, keccak
from pycita.native import native as _native
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
from pycita.state import rlp_bytes, rlp_int, rlp_list

__all__ = [
    "CHUNK_PAYLOAD_LIMIT",
    "MAX_CHUNK_PAYLOAD",
    "MAX_COMPRESSED_CHUNK",
    "MAX_MANIFEST",
    "TRAILER_SIZE",
    "ChunkInfo",
    "ChunkReader",
    "ChunkWriter",
    "Chunker",
    "ProgressFn",
    "RLPError",
    "ReadProgress",
    "decode_rlp",
    "decode_uint",
    "encode_bytes",
    "encode_list",
    "encode_raw",
    "encode_uint",
    "snappy_declared_length",
]

logger = logging.getLogger(__name__)

CHUNK_PAYLOAD_LIMIT: Final[int] = 4 * 1024 * 1024
MAX_CHUNK_PAYLOAD: Final[int] = 64 * 1024 * 1024
MAX_COMPRESSED_CHUNK: Final[int] = 32 + MAX_CHUNK_PAYLOAD + MAX_CHUNK_PAYLOAD // 6
MAX_MANIFEST: Final[int] = 64 * 1024 * 1024
TRAILER_SIZE: Final[int] = 8
_LIST_HEADER_MAX: Final[int] = 9  # an RLP list header is at most 9 bytes


# --------------------------------------------------------------------------- helpers


def encode_list(encoded_items: Sequence[bytes]) -> bytes:
    """RLP of a list whose items are already RLP-encoded."""
    return rlp_list(encoded_items)


def encode_bytes(data: bytes) -> bytes:
    """RLP of a byte string (same bytes as ``rlp.encode(data)``)."""
    return rlp_bytes(data)


def encode_uint(value: int) -> bytes:
    """RLP of a non-negative integer (same bytes as ``rlp.encode(value)``)."""
    if value < 0:
        raise ValueError("RLP integers are non-negative")
    return rlp_int(value)


def encode_raw(obj: bytes | list[Any]) -> bytes:
    """RLP of a decoded structure (nested lists of bytes), e.g. to re-hash a decoded header."""
    if isinstance(obj, bytes):
        return encode_bytes(obj)
    return encode_list([encode_raw(x) for x in obj])


MAX_RLP_DEPTH: Final[int] = 16
MAX_RLP_DEPTH_LIMIT: Final[int] = 256
"""The largest ``max_depth`` honoured (both decoders recurse once per level)."""
"""Deepest list nesting :func:`decode_rlp` accepts (the formats need 5)."""


class RLPError(ValueError):
    """Raised by :func:`decode_rlp` for malformed or non-canonical RLP."""


def decode_rlp(data: bytes, max_depth: int = MAX_RLP_DEPTH) -> bytes | list[Any]:
    """Decode one canonical RLP item filling ``data`` exactly (nested lists of bytes).

    Accepts exactly what ``rlp.decode(data, strict=True)`` accepts (single
    bytes below 0x80 stand for themselves, short forms below 56 bytes, no
    leading zeros in lengths), but runs in linear time (pyrlp's decoder is
    quadratic in the number of list items) and bounds the nesting depth.
    Runs in C when :mod:`pycita.native` is loaded (it accepts exactly the
    same inputs; a refused input is decoded again here for the message).
    Raises :class:`RLPError`.
    """
    max_depth = min(max_depth, MAX_RLP_DEPTH_LIMIT)
    if _native is not None:
        try:
            return _native.rlp_decode(data, max_depth)  # type: ignore[no-any-return]
        except ValueError:
            pass  # the same input is refused below, with the precise message
    return decode_rlp_python(data, max_depth)


def decode_rlp_python(data: bytes, max_depth: int = MAX_RLP_DEPTH) -> bytes | list[Any]:
    """The pure-Python :func:`decode_rlp` (the reference of the native decoder)."""
    max_depth = min(max_depth, MAX_RLP_DEPTH_LIMIT)
    item, end = _decode_at(data, 0, len(data), 0, max_depth)
    if end != len(data):
        raise RLPError(f"{len(data) - end} trailing bytes after the RLP item")
    return item


def _long_length(data: bytes, pos: int, size_len: int, limit: int) -> tuple[int, int]:
    start = pos + 1 + size_len
    if start > limit:
        raise RLPError(f"length of the item at {pos} is truncated")
    if data[pos + 1] == 0:
        raise RLPError(f"length of the item at {pos} has leading zeros")
    n = int.from_bytes(data[pos + 1 : start], "big")
    if n < 56:
        raise RLPError(f"long form used for a {n}-byte item at {pos}")
    return start, n


def _decode_at(data: bytes, pos: int, limit: int, depth: int, max_depth: int) -> tuple[bytes | list[Any], int]:
    if pos >= limit:
        raise RLPError(f"item at {pos} is truncated")
    b = data[pos]
    if b < 0x80:
        return data[pos : pos + 1], pos + 1
    if b < 0xB8:
        start, n = pos + 1, b - 0x80
        if n == 1 and start < limit and data[start] < 0x80:
            raise RLPError(f"single byte below 0x80 encoded as a string at {pos}")
    elif b < 0xC0:
        start, n = _long_length(data, pos, b - 0xB7, limit)
    else:
        if b < 0xF8:
            start, n = pos + 1, b - 0xC0
        else:
            start, n = _long_length(data, pos, b - 0xF7, limit)
        end = start + n
        if end > limit:
            raise RLPError(f"list at {pos} runs past its container")
        if depth >= max_depth:
            raise RLPError(f"lists nested deeper than {max_depth}")
        items: list[Any] = []
        append = items.append
        p = start
        while p < end:
            item, p = _decode_at(data, p, end, depth + 1, max_depth)
            append(item)
        return items, end
    end = start + n
    if end > limit:
        raise RLPError(f"string at {pos} runs past its container")
    return data[start:end], end


def decode_uint(raw: object, what: str, exc: type[SnapshotError], **where: Any) -> int:
    """A canonical RLP integer (no leading zeros) or ``exc`` naming ``what``."""
    if type(raw) is bytes and (not raw or raw[0]):
        return int.from_bytes(raw, "big")
    if not isinstance(raw, bytes):
        raise exc(f"{what} must be an integer, got a list", **where)
    try:
        return int(big_endian_int.deserialize(raw))
    except rlp.exceptions.DeserializationError as e:
        raise exc(f"{what} is not a canonical integer: {e}", **where) from e


def decode_bytes(raw: object, what: str, exc: type[SnapshotError], length: int | None = None,
                 **where: Any) -> bytes:
    """A byte string (of ``length`` bytes when given) or ``exc`` naming ``what``."""
    if not isinstance(raw, bytes):
        raise exc(f"{what} must be a byte string, got a list", **where)
    if length is not None and len(raw) != length:
        raise exc(f"{what} must be {length} bytes", expected=length, actual=len(raw), **where)
    return raw


def decode_list(raw: object, what: str, exc: type[SnapshotError], length: int | None = None,
                **where: Any) -> list[Any]:
    """An RLP list (of ``length`` items when given) or ``exc`` naming ``what``."""
    if not isinstance(raw, list):
        raise exc(f"{what} must be a list, got a byte string", **where)
    if length is not None and len(raw) != length:
        raise exc(f"{what} must have {length} items", expected=length, actual=len(raw), **where)
    return raw


def snappy_declared_length(compressed: bytes) -> int:
    """The uncompressed length a raw snappy block declares (its leading varint).

    Raises :class:`ValueError` when the varint is truncated or longer than the
    5 bytes a 32-bit length needs.
    """
    result = 0
    for i in range(5):
        if i >= len(compressed):
            raise ValueError("snappy length header is truncated")
        b = compressed[i]
        result |= (b & 0x7F) << (7 * i)
        if b < 0x80:
            return result
    raise ValueError("snappy length header is longer than 5 bytes")


@dataclass(frozen=True)
class ReadProgress:
    """Passed to progress callbacks after each chunk is read."""

    file: str
    chunk: int
    chunks: int
    bytes_done: int
    bytes_total: int


ProgressFn = Callable[[ReadProgress], None]


@dataclass(frozen=True)
class ChunkInfo:
    """Where a chunk is and what it hashes to: RLP ``[hash, len, offset]``."""

    hash: Hash32
    length: int
    offset: int

    def to_rlp(self) -> list[Any]:
        return [self.hash, self.length, self.offset]

    @classmethod
    def from_rlp(cls, raw: object, *, file: str, index: int) -> ChunkInfo:
        what = f"ChunkInfo {index}"
        items = decode_list(raw, what, ManifestError, 3, file=file)
        h = decode_bytes(items[0], f"{what} hash", ManifestError, 32, file=file)
        length = decode_uint(items[1], f"{what} len", ManifestError, file=file)
        offset = decode_uint(items[2], f"{what} offset", ManifestError, file=file)
        return cls(Hash32(h), length, offset)


# --------------------------------------------------------------------------- writing


class ChunkWriter:
    """Writes a container file: ``add_chunk`` per chunk, then ``finish(manifest)``.

    Bytes go to ``path + '.partial'``; :meth:`finish` appends the manifest and
    trailer, fsyncs and renames the file to ``path`` atomically. Used as a
    context manager, an exception (or a missing ``finish``) removes the
    partial file.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.partial = Path(str(self.path) + ".partial")
        self._fsync = fsync
        self._file: IO[bytes] | None = open(self.partial, "wb")  # noqa: SIM115 - closed in finish/abort
        self._offset = 0
        self.chunks: list[ChunkInfo] = []
        self.payload_bytes = 0
        self.finished = False

    @property
    def offset(self) -> int:
        """Bytes written so far (the offset of the next chunk)."""
        return self._offset

    def add_chunk(self, encoded_items: Sequence[bytes]) -> ChunkInfo:
        """Compress and append one chunk whose payload is the list of ``encoded_items``."""
        payload = encode_list(encoded_items)
        return self.add_payload(payload)

    def add_payload(self, payload: bytes) -> ChunkInfo:
        """Compress and append one chunk whose payload (an RLP list) is given whole."""
        if self._file is None:
            raise SnapshotError("writer is closed", file=str(self.path), check="write")
        if len(payload) > MAX_CHUNK_PAYLOAD:
            raise ChunkTooLarge("chunk payload exceeds the hard bound", file=str(self.path),
                                chunk=len(self.chunks), expected=f"<= {MAX_CHUNK_PAYLOAD}",
                                actual=len(payload))
        compressed = snappy.compress(payload)
        info = ChunkInfo(keccak(compressed), len(compressed), self._offset)
        self._file.write(compressed)
        self._offset += len(compressed)
        self.payload_bytes += len(payload)
        self.chunks.append(info)
        return info

    def finish(self, manifest_fields: Sequence[Any]) -> int:
        """Append the manifest RLP and trailer, fsync, rename into place; returns the file size."""
        if self._file is None:
            raise SnapshotError("writer is closed", file=str(self.path), check="write")
        manifest = rlp.encode(list(manifest_fields))
        if len(manifest) > MAX_MANIFEST:
            raise ManifestError("manifest exceeds its bound", file=str(self.path),
                                expected=f"<= {MAX_MANIFEST}", actual=len(manifest))
        f = self._file
        f.write(manifest)
        f.write(struct.pack("<Q", self._offset))
        size = self._offset + len(manifest) + TRAILER_SIZE
        f.flush()
        if self._fsync:
            os.fsync(f.fileno())
        f.close()
        self._file = None
        os.replace(self.partial, self.path)
        if self._fsync:
            _fsync_dir(self.path.parent)
        self.finished = True
        logger.info("wrote %s: %d chunks, %d bytes (%d payload bytes)", self.path, len(self.chunks),
                    size, self.payload_bytes)
        return size

    def abort(self) -> None:
        """Close and delete the partial file (no-op after :meth:`finish`)."""
        if self._file is not None:
            self._file.close()
            self._file = None
            try:
                self.partial.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> ChunkWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.abort()


def _fsync_dir(path: Path) -> None:
    fd = os.open(str(path or "."), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Chunker:
    """Packs RLP-encoded entries into chunks of at most ``limit`` payload bytes.

    ``add(entry, prefix)``: ``prefix`` (already-encoded items, e.g. a chain
    chunk's ``parent_number, parent_hash``) is used only when ``entry`` opens
    a new chunk. An entry that does not fit closes the current chunk; an
    entry that alone exceeds ``limit`` stands in a chunk of its own.
    """

    def __init__(self, writer: ChunkWriter, limit: int = CHUNK_PAYLOAD_LIMIT) -> None:
        if limit > CHUNK_PAYLOAD_LIMIT:
            raise ValueError(f"chunk limit {limit} is above the format's {CHUNK_PAYLOAD_LIMIT}")
        self.writer = writer
        self.limit = limit
        self._items: list[bytes] = []
        self._entries = 0
        self._size = _LIST_HEADER_MAX
        self.chunks: list[ChunkInfo] = []

    @property
    def pending_entries(self) -> int:
        return self._entries

    def opens_chunk(self, size: int) -> bool:
        """Whether :meth:`add` of an entry of ``size`` bytes starts a chunk (its ``prefix`` is then used)."""
        return not self._entries or self._size + size > self.limit

    def add(self, entry: bytes, prefix: Sequence[bytes] = ()) -> None:
        if self._entries and self._size + len(entry) > self.limit:
            self.flush()
        if not self._entries:
            self._items = list(prefix)
            self._size = _LIST_HEADER_MAX + sum(len(p) for p in prefix)
        self._items.append(entry)
        self._size += len(entry)
        self._entries += 1

    def add_many(self, entries: Sequence[bytes]) -> None:
        """:meth:`add` of each of ``entries`` in turn (no prefix), without a Python call per entry: the
        same chunks, cut at the same entries."""
        i, n = 0, len(entries)
        while i < n:
            if not self._entries:
                self._items = []
                self._size = _LIST_HEADER_MAX
            sizes = list(accumulate(map(len, entries[i:])))
            k = bisect_right(sizes, self.limit - self._size)
            if k == 0:
                if self._entries:  # the next entry does not fit: close this chunk
                    self.flush()
                    continue
                k = 1  # an entry that alone exceeds the limit stands in a chunk of its own
            self._items.extend(entries[i:i + k])
            self._size += sizes[k - 1]
            self._entries += k
            i += k

    def flush(self) -> ChunkInfo | None:
        """Write the pending entries as one chunk (nothing when there are none)."""
        if not self._entries:
            return None
        info = self.writer.add_chunk(self._items)
        self.chunks.append(info)
        self._items = []
        self._entries = 0
        self._size = _LIST_HEADER_MAX
        return info


# --------------------------------------------------------------------------- reading


class ChunkReader:
    """Reads a container file: trailer and manifest on open, chunks on demand.

    ``chunk_tables`` are the manifest item indexes holding ChunkInfo lists, in
    file order; ``versions`` the accepted format versions (manifest item 0).
    Opening validates the trailer, decodes the manifest and validates the
    chunk table layout; nothing else is read until :meth:`read_chunk`.
    """

    def __init__(self, path: str | os.PathLike[str], *, chunk_tables: Sequence[int] = (1,),
                 versions: Sequence[int] = (1,)) -> None:
        self.path = Path(path)
        self.name = str(path)
        try:
            self._file: IO[bytes] = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        except OSError as e:
            raise SnapshotError(f"cannot open: {e}", file=self.name, check="open") from e
        try:
            self._open(chunk_tables, versions)
        except BaseException:
            self._file.close()
            raise

    def _open(self, chunk_tables: Sequence[int], versions: Sequence[int]) -> None:
        name = self.name
        f = self._file
        size = os.fstat(f.fileno()).st_size
        self.file_size = size
        if size < TRAILER_SIZE + 1:
            raise TruncatedFile("file is too short for a manifest and trailer", file=name,
                                expected=f">= {TRAILER_SIZE + 1} bytes", actual=size)
        f.seek(size - TRAILER_SIZE)
        (offset,) = struct.unpack("<Q", f.read(TRAILER_SIZE))
        manifest_len = size - TRAILER_SIZE - offset
        if offset >= size - TRAILER_SIZE:
            raise BadTrailingOffset("manifest offset points past the manifest area (truncated file?)",
                                    file=name, expected=f"< {size - TRAILER_SIZE}", actual=offset)
        if manifest_len > MAX_MANIFEST:
            raise ManifestError("manifest exceeds its bound", file=name, expected=f"<= {MAX_MANIFEST}",
                                actual=manifest_len)
        self.manifest_offset = offset
        f.seek(offset)
        data = f.read(manifest_len)
        if len(data) != manifest_len:
            raise TruncatedFile("file shrank while reading the manifest", file=name,
                                expected=manifest_len, actual=len(data))
        try:
            _prefix, typ, item_len, start = rlp.codec.consume_length_prefix(data, 0)
        except rlp.exceptions.DecodingError as e:
            raise BadTrailingOffset(f"no RLP item at manifest offset {offset}: {e}", file=name) from e
        if start + item_len != manifest_len:
            raise BadTrailingOffset(
                f"the RLP item at manifest offset {offset} does not end where the trailer begins",
                file=name, expected=manifest_len, actual=start + item_len)
        try:
            manifest = decode_rlp(data)
        except RLPError as e:
            raise ManifestError(f"manifest is not canonical RLP: {e}", file=name) from e
        if not isinstance(manifest, list) or not manifest:
            raise ManifestError("manifest must be a non-empty RLP list", file=name)
        self.manifest_bytes = manifest_len
        self.manifest: list[Any] = manifest
        version = decode_uint(manifest[0], "manifest version", ManifestError, file=name)
        if version not in versions:
            raise UnsupportedVersion("unsupported snapshot format version", file=name,
                                     expected=" or ".join(map(str, versions)), actual=version)
        self.version = version
        if len(manifest) <= max(chunk_tables):
            raise ManifestError("manifest has too few items", file=name,
                                expected=f">= {max(chunk_tables) + 1}", actual=len(manifest))
        tables: list[tuple[ChunkInfo, ...]] = []
        chunks: list[ChunkInfo] = []
        for field in chunk_tables:
            raw = decode_list(manifest[field], f"manifest item {field} (chunk table)", ManifestError, file=name)
            table = tuple(ChunkInfo.from_rlp(r, file=name, index=len(chunks) + i) for i, r in enumerate(raw))
            tables.append(table)
            chunks.extend(table)
        expected_offset = 0
        for i, info in enumerate(chunks):
            if info.offset != expected_offset:
                raise ManifestError("chunks must be contiguous from offset 0", file=name, chunk=i,
                                    expected=expected_offset, actual=info.offset)
            if not 0 < info.length <= MAX_COMPRESSED_CHUNK:
                raise ManifestError("chunk length out of bounds", file=name, chunk=i,
                                    expected=f"1..{MAX_COMPRESSED_CHUNK}", actual=info.length)
            expected_offset += info.length
        if expected_offset != offset:
            raise ManifestError("chunks must end where the manifest begins", file=name,
                                expected=offset, actual=expected_offset)
        self.tables: tuple[tuple[ChunkInfo, ...], ...] = tuple(tables)
        self.chunks: tuple[ChunkInfo, ...] = tuple(chunks)

    def read_payload(self, index: int) -> bytes:
        """Chunk ``index``'s decompressed payload, after its hash and size checks."""
        info = self.chunks[index]
        name = self.name
        self._file.seek(info.offset)
        compressed = self._file.read(info.length)
        if len(compressed) != info.length:
            raise TruncatedFile("file ends inside the chunk", file=name, chunk=index,
                                expected=info.length, actual=len(compressed))
        actual_hash = keccak(compressed)
        if actual_hash != info.hash:
            raise ChunkHashMismatch("keccak-256 of the compressed chunk differs from its ChunkInfo",
                                    file=name, chunk=index, expected=info.hash, actual=actual_hash)
        try:
            declared = snappy_declared_length(compressed)
        except ValueError as e:
            raise ChunkDecodeError(f"bad snappy header: {e}", file=name, chunk=index) from e
        if declared > MAX_CHUNK_PAYLOAD:
            raise ChunkTooLarge("declared decompressed size exceeds the hard bound (not decompressed)",
                                file=name, chunk=index, expected=f"<= {MAX_CHUNK_PAYLOAD}", actual=declared)
        try:
            payload = snappy.uncompress(compressed)
        except Exception as e:  # snappy.UncompressError and cramjam errors
            raise ChunkDecodeError(f"chunk does not decompress: {e!r}", file=name, chunk=index) from e
        if len(payload) != declared:
            raise ChunkDecodeError("decompressed length differs from the declared one", file=name,
                                   chunk=index, expected=declared, actual=len(payload))
        return bytes(payload)

    def read_chunk(self, index: int, prefix_items: int = 0) -> list[Any]:
        """Chunk ``index`` decoded to its RLP list.

        ``prefix_items`` is the number of fixed items before the entries; a
        payload above :data:`CHUNK_PAYLOAD_LIMIT` must hold exactly one entry.
        """
        payload = self.read_payload(index)
        try:
            items = decode_rlp(payload)
        except RLPError as e:
            raise ChunkDecodeError(f"chunk payload is not canonical RLP: {e}", file=self.name,
                                   chunk=index) from e
        if not isinstance(items, list):
            raise ChunkDecodeError("chunk payload must be an RLP list", file=self.name, chunk=index)
        if len(payload) > CHUNK_PAYLOAD_LIMIT and len(items) != prefix_items + 1:
            raise ChunkTooLarge("a chunk above the 4 MiB payload limit must hold exactly one entry",
                                file=self.name, chunk=index, expected=1, actual=len(items) - prefix_items)
        return items

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ChunkReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

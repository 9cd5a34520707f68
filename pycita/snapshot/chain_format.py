"""The chain snapshot file (``FILE_chain.rlp``): headers, and receipts and bodies of the newest blocks.

Container: see :mod:`pycita.snapshot.container` (chunks of raw snappy RLP,
manifest RLP, u64 LE manifest offset).

Chunk payload (uncompressed)::

    [parent_number, parent_hash, entry, entry, ...]

* ``parent_number`` / ``parent_hash``: number and hash of the parent of the
  chunk's lowest block (0 and the genesis hash for the first chunk);
* entries in strictly ascending, consecutive heights 1..H across the file
  (genesis is never exported);
* entry ``[header]`` for older blocks, ``[header, receipts, body]`` for the
  newest ``full_blocks`` blocks (heights ``H - full_blocks + 1 .. H``), where
  ``header`` is the 12-field header list of :class:`pycita.types.Header`,
  ``receipts`` the list of :class:`pycita.types.Receipt` and ``body`` the list
  of :class:`pycita.types.SignedTransaction`, in block order.

Manifest, version 1 (exactly these 10 items; new fields come with a version
bump and are appended)::

    [0 version=1, 1 [ChunkInfo...], 2 state_root, 3 block_number (H),
     4 block_hash, 5 last_proof, 6 chain_id, 7 genesis_hash, 8 full_blocks,
     9 created_at]

* ``last_proof``: the protobuf-encoded :class:`pycita.proto.cita_pb2.Proof` of
  block H (empty when H = 0);
* ``chain_id`` and ``genesis_hash`` must equal the local genesis';
* ``full_blocks``: how many of the newest blocks carry receipts and body
  (``min(history_blocks, H)``); verified exactly;
* ``created_at``: unix time in milliseconds when the file was written.

Informational fields (:data:`CHAIN_INFORMATIONAL_FIELDS`): only
``created_at`` (item 9). Restore and verification never use it; every other
byte of a file is checked (chunk hashes, canonical RLP, layout, and the
values against genesis, the proof and the other file).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import rlp

from pycita.crypto import Hash32, keccak
from pycita.genesis import Genesis
from pycita.native import native as _native
from pycita.snapshot.container import (
    CHUNK_PAYLOAD_LIMIT,
    Chunker,
    ChunkInfo,
    ChunkReader,
    ChunkWriter,
    ProgressFn,
    ReadProgress,
    decode_bytes,
    decode_list,
    decode_uint,
    encode_bytes,
    encode_list,
    encode_raw,
    encode_uint,
)
from pycita.snapshot.errors import (
    ChunkDecodeError,
    HeaderChainBroken,
    ManifestError,
    SnapshotError,
)
from pycita.types import Header, Height, Receipt, SignedTransaction, header_from_fields

__all__ = [
    "CHAIN_FORMAT_VERSION",
    "CHAIN_INFORMATIONAL_FIELDS",
    "DEFAULT_HISTORY_BLOCKS",
    "BlockSource",
    "ChainEntry",
    "ChainFileReader",
    "ChainManifest",
    "decode_header",
    "read_chain_manifest",
    "write_chain_file",
]

logger = logging.getLogger(__name__)

CHAIN_FORMAT_VERSION: Final[int] = 1
DEFAULT_HISTORY_BLOCKS: Final[int] = 100
CHAIN_MANIFEST_ITEMS: Final[int] = 10
CHAIN_INFORMATIONAL_FIELDS: Final[dict[int, str]] = {9: "created_at"}
"""Manifest item index -> name of the fields restore and verification do not use."""

BlockSource = tuple[Header, Sequence[Receipt] | None, Sequence[SignedTransaction] | None]
"""What :func:`write_chain_file` takes per block: header, and receipts and body (or ``None``)."""


@dataclass(frozen=True)
class ChainManifest:
    version: int
    chunks: tuple[ChunkInfo, ...]
    state_root: Hash32
    block_number: Height
    block_hash: Hash32
    last_proof: bytes
    chain_id: int
    genesis_hash: Hash32
    full_blocks: int
    created_at: int

    def to_rlp(self) -> list[Any]:
        return [self.version, [c.to_rlp() for c in self.chunks], self.state_root, self.block_number,
                self.block_hash, self.last_proof, self.chain_id, self.genesis_hash, self.full_blocks,
                self.created_at]

    @classmethod
    def from_reader(cls, reader: ChunkReader) -> ChainManifest:
        m = reader.manifest
        f = reader.name
        if len(m) != CHAIN_MANIFEST_ITEMS:
            raise ManifestError("chain manifest has the wrong number of items", file=f,
                                expected=CHAIN_MANIFEST_ITEMS, actual=len(m))
        created = decode_bytes(m[9], "created_at", ManifestError, file=f)
        return cls(
            version=reader.version,
            chunks=reader.tables[0],
            state_root=Hash32(decode_bytes(m[2], "state_root", ManifestError, 32, file=f)),
            block_number=Height(decode_uint(m[3], "block_number", ManifestError, file=f)),
            block_hash=Hash32(decode_bytes(m[4], "block_hash", ManifestError, 32, file=f)),
            last_proof=decode_bytes(m[5], "last_proof", ManifestError, file=f),
            chain_id=decode_uint(m[6], "chain_id", ManifestError, file=f),
            genesis_hash=Hash32(decode_bytes(m[7], "genesis_hash", ManifestError, 32, file=f)),
            full_blocks=decode_uint(m[8], "full_blocks", ManifestError, file=f),
            created_at=int.from_bytes(created, "big"),  # informational: not checked
        )


@dataclass(frozen=True)
class ChainEntry:
    """One block of a chain file, shape-validated (not yet verified)."""

    chunk: int
    header: Header
    hash: Hash32
    receipts: tuple[Receipt, ...] | None
    body: tuple[SignedTransaction, ...] | None
    chunk_parent: tuple[int, Hash32] | None
    """``(parent_number, parent_hash)`` declared by the chunk, on its first entry only."""

    @property
    def number(self) -> int:
        return int(self.header.number)


def decode_header(raw: object, *, file: str, chunk: int) -> tuple[Header, Hash32]:
    """A decoded header list -> (Header, block hash) or :class:`ChunkDecodeError`."""
    if not isinstance(raw, list):
        raise ChunkDecodeError("header must be an RLP list", file=file, chunk=chunk)
    encoded = _native.rlp_encode(raw) if _native is not None else encode_raw(raw)
    fast = header_from_fields(raw, encoded)
    if fast is not None:
        return fast, keccak(encoded)
    try:
        header = Header.deserialize(raw)
    except (rlp.exceptions.DeserializationError, TypeError, ValueError) as e:  # TypeError: a list for an int
        raise ChunkDecodeError(f"bad header: {e}", file=file, chunk=chunk) from e
    return header, keccak(encode_raw(raw))


def _decode_list_of(raw: object, sedes: Any, what: str, file: str, chunk: int) -> tuple[Any, ...]:
    items = decode_list(raw, what, ChunkDecodeError, file=file, chunk=chunk)
    try:
        return tuple(sedes.deserialize(x) for x in items)
    except (rlp.exceptions.DeserializationError, TypeError, ValueError) as e:  # TypeError: a list for an int
        raise ChunkDecodeError(f"bad {what}: {e}", file=file, chunk=chunk) from e


def parse_chunk_parent(items: list[Any], *, file: str, chunk: int) -> tuple[int, Hash32]:
    """The ``parent_number, parent_hash`` prefix of a block/header chunk."""
    if len(items) < 3:
        raise ChunkDecodeError("chunk must hold parent_number, parent_hash and at least one entry",
                               file=file, chunk=chunk, expected=">= 3 items", actual=len(items))
    number = decode_uint(items[0], "parent_number", ChunkDecodeError, file=file, chunk=chunk)
    parent = decode_bytes(items[1], "parent_hash", ChunkDecodeError, 32, file=file, chunk=chunk)
    return number, Hash32(parent)


def read_chain_manifest(path: str | os.PathLike[str]) -> ChainManifest:
    """The manifest of a chain file (reads only the trailer and the manifest)."""
    with ChunkReader(path, chunk_tables=(1,), versions=(CHAIN_FORMAT_VERSION,)) as reader:
        return ChainManifest.from_reader(reader)


class ChainFileReader:
    """Streams the entries of a chain file, one chunk in memory at a time."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.reader = ChunkReader(path, chunk_tables=(1,), versions=(CHAIN_FORMAT_VERSION,))
        try:
            self.manifest = ChainManifest.from_reader(self.reader)
        except BaseException:
            self.reader.close()
            raise
        self.name = self.reader.name

    @property
    def file_size(self) -> int:
        return self.reader.file_size

    def entries(self, progress: ProgressFn | None = None) -> Iterator[ChainEntry]:
        """Every block entry in file order, with its chunk index."""
        name = self.name
        chunks = self.reader.chunks
        done = 0
        for index in range(len(chunks)):
            items = self.reader.read_chunk(index, prefix_items=2)
            parent = parse_chunk_parent(items, file=name, chunk=index)
            first = True
            for raw in items[2:]:
                entry = decode_list(raw, "chain entry", ChunkDecodeError, file=name, chunk=index)
                if len(entry) not in (1, 3):
                    raise ChunkDecodeError("chain entry must be [header] or [header, receipts, body]",
                                           file=name, chunk=index, expected="1 or 3 items", actual=len(entry))
                header, block_hash = decode_header(entry[0], file=name, chunk=index)
                receipts = body = None
                if len(entry) == 3:
                    receipts = _decode_list_of(entry[1], Receipt, "receipts", name, index)
                    body = _decode_list_of(entry[2], SignedTransaction, "body", name, index)
                yield ChainEntry(index, header, block_hash, receipts, body, parent if first else None)
                first = False
            done += chunks[index].length
            if progress is not None:
                progress(ReadProgress(name, index, len(chunks), done, self.reader.manifest_offset))

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> ChainFileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_chain_file(
    path: str | os.PathLike[str],
    blocks: Iterable[BlockSource],
    *,
    genesis: Genesis,
    last_proof: bytes,
    history_blocks: int = DEFAULT_HISTORY_BLOCKS,
    created_at: int | None = None,
    chunk_limit: int = CHUNK_PAYLOAD_LIMIT,
    fsync: bool = True,
) -> ChainManifest:
    """Write the chain file for blocks 1..H (``blocks`` in ascending order; streamed).

    Each item is ``(header, receipts, body)``; receipts and body must be given
    (both) for exactly the newest ``min(history_blocks, H)`` blocks and
    ``None`` for the older ones. ``last_proof`` is the protobuf-encoded proof
    of block H (``b''`` when H = 0). Headers must chain from ``genesis``.
    Writes ``path + '.partial'`` and renames it to ``path`` when complete.
    Raises :class:`SnapshotError` (the partial file is removed).
    """
    name = str(path)
    genesis_header = genesis.header()
    prev_number, prev_hash = 0, genesis_header.hash
    state_root = genesis_header.state_root
    full = 0
    with ChunkWriter(path, fsync=fsync) as writer:
        chunker = Chunker(writer, chunk_limit)
        for header, receipts, body in blocks:
            number = int(header.number)
            if number != prev_number + 1 or header.parent_hash != prev_hash:
                raise HeaderChainBroken("blocks must chain from genesis in ascending order", file=name,
                                        expected=(prev_number + 1, "0x" + prev_hash.hex()),
                                        actual=(number, "0x" + header.parent_hash.hex()))
            header_rlp = rlp.encode(header)
            if (receipts is None) != (body is None):
                raise SnapshotError(f"block {number}: receipts and body must both be given or both None",
                                    file=name, check="history")
            if receipts is None:
                if full:
                    raise SnapshotError(f"block {number} has no body but an older block has one",
                                        file=name, check="history")
                entry = encode_list([header_rlp])
            else:
                assert body is not None
                full += 1
                entry = rlp.encode([header, list(receipts), list(body)])
            chunker.add(entry, (encode_uint(prev_number), encode_bytes(prev_hash)))
            prev_number, prev_hash = number, keccak(header_rlp)
            state_root = header.state_root
        chunker.flush()
        height = prev_number
        if full != min(history_blocks, height):
            raise SnapshotError(f"{full} blocks carry receipts and body; the newest {min(history_blocks, height)} "
                                "must", file=name, check="history", expected=min(history_blocks, height),
                                actual=full)
        if height == 0 and last_proof:
            raise SnapshotError("a snapshot at genesis has no proof", file=name, check="last proof")
        manifest = ChainManifest(
            version=CHAIN_FORMAT_VERSION,
            chunks=tuple(writer.chunks),
            state_root=Hash32(state_root),
            block_number=Height(height),
            block_hash=Hash32(prev_hash),
            last_proof=last_proof,
            chain_id=genesis.chain_id,
            genesis_hash=genesis_header.hash,
            full_blocks=full,
            created_at=int(time.time() * 1000) if created_at is None else created_at,
        )
        writer.finish(manifest.to_rlp())
    logger.info("chain snapshot %s at height %d: %d chunks", name, height, len(manifest.chunks))
    return manifest


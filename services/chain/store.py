"""The chain's block store: one LevelDB, keys from :mod:`services.chain.schema`.

:class:`ChainReader` is the read API. It works over the live database or over
a LevelDB snapshot (:meth:`ChainStore.view`), which is what the snapshot
exporter uses: every read through one view sees the same consistent cut
while new blocks keep being committed.

:class:`ChainStore` adds the one write the chain ever does,
:meth:`ChainStore.write_block`: every key of a block plus the new tip in one
atomic batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pycita.crypto import Hash32, keccak
from pycita.storage import LevelDB
from pycita.types import Header, decode_header_rlp
from services.chain import schema
from services.chain.rawrlp import join_list, split_list

Getter = Callable[[bytes], "bytes | None"]
RangeIterator = Callable[[bytes, bytes], Iterator[tuple[bytes, bytes]]]


@dataclass(frozen=True)
class StoredBlock:
    """One block as stored: raw header, body and receipts RLP, and its proof."""

    height: int
    header: bytes
    body: bytes
    receipts: bytes
    proof: bytes

    @property
    def hash(self) -> Hash32:
        return keccak(self.header)

    def block_rlp(self) -> bytes:
        """The RLP ``Block`` ``[header, [tx, ...]]`` without decoding anything."""
        return join_list([self.header, self.body])


@dataclass(frozen=True)
class PreparedBlock:
    """Everything the store writes for one verified block (see :meth:`ChainStore.write_block`)."""

    height: int
    hash: Hash32
    header: bytes
    body: bytes
    receipts: bytes
    proof: bytes
    tx_hashes: tuple[bytes, ...]
    new_block: bytes  # serialized pb.NewBlock


class ChainReader:
    """Reads blocks through ``get`` and a key-range iterator (live DB or snapshot)."""

    def __init__(self, get: Getter, iterate: RangeIterator) -> None:
        self._get = get
        self._iterate = iterate

    # -- tip and identity ------------------------------------------------
    def tip(self) -> tuple[int, Hash32] | None:
        raw = self._get(schema.TIP)
        if raw is None:
            return None
        height, block_hash = schema.decode_tip(raw)
        return height, Hash32(block_hash)

    def genesis_hash(self) -> bytes | None:
        return self._get(schema.GENESIS)

    # -- per block -------------------------------------------------------
    def header_rlp(self, height: int) -> bytes | None:
        return self._get(schema.header_key(height))

    def header(self, height: int) -> Header | None:
        raw = self.header_rlp(height)
        return None if raw is None else decode_header_rlp(raw, f"stored header {height}")

    def body_rlp(self, height: int) -> bytes | None:
        return self._get(schema.body_key(height))

    def receipts_rlp(self, height: int) -> bytes | None:
        return self._get(schema.receipts_key(height))

    def proof(self, height: int) -> bytes | None:
        return self._get(schema.proof_key(height))

    def new_block_msg(self, height: int) -> bytes | None:
        """The serialized ``NewBlock`` (TxKeys) of a block."""
        return self._get(schema.txkeys_key(height))

    def block(self, height: int) -> StoredBlock | None:
        header = self.header_rlp(height)
        if header is None:
            return None
        return StoredBlock(height, header, self.body_rlp(height) or b"\xc0",
                           self.receipts_rlp(height) or b"\xc0", self.proof(height) or b"")

    def block_rlp(self, height: int) -> bytes | None:
        header = self.header_rlp(height)
        if header is None:
            return None
        return join_list([header, self.body_rlp(height) or b"\xc0"])

    def block_hash(self, height: int) -> Hash32 | None:
        raw = self.header_rlp(height)
        return None if raw is None else keccak(raw)

    def height_of(self, block_hash: bytes) -> int | None:
        raw = self._get(schema.hash_key(block_hash))
        return None if raw is None else schema.decode_height(raw)

    def tx_location(self, tx_hash: bytes) -> tuple[int, int] | None:
        raw = self._get(schema.tx_key(tx_hash))
        return None if raw is None else schema.decode_tx_location(raw)

    def transactions(self, height: int) -> list[bytes]:
        """The raw signed transactions of a block (empty for an unknown block)."""
        body = self.body_rlp(height)
        return [] if body is None else split_list(body, f"stored body {height}")

    def receipts(self, height: int) -> list[bytes]:
        """The raw receipts of a block (empty for an unknown block)."""
        raw = self.receipts_rlp(height)
        return [] if raw is None else split_list(raw, f"stored receipts {height}")

    # -- ranges (snapshot export, sync) ------------------------------------
    def iter_headers(self, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        """(height, header RLP) for every stored height in [start, end], ascending."""
        for key, value in self._iterate(schema.header_key(start), schema.header_key(end + 1)):
            yield schema.decode_height(key[len(schema.HEADER):]), value

    def iter_blocks(self, start: int, end: int) -> Iterator[StoredBlock]:
        """Every stored block in [start, end], ascending, with body, receipts and proof."""
        for height, header in self.iter_headers(start, end):
            yield StoredBlock(height, header, self.body_rlp(height) or b"\xc0",
                              self.receipts_rlp(height) or b"\xc0", self.proof(height) or b"")


class ChainStore(ChainReader):
    """The chain's LevelDB: reads (live) plus atomic per-block writes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.db = LevelDB(path)
        super().__init__(self.db.get, self._live_range)

    def _live_range(self, start: bytes, stop: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self.db.iterate(start=start):
            if key >= stop:
                return
            yield key, value

    @contextmanager
    def view(self) -> Iterator[ChainReader]:
        """A reader over one consistent LevelDB snapshot (released on exit)."""
        snap: Any = self.db.snapshot()
        try:
            def _range(start: bytes, stop: bytes) -> Iterator[tuple[bytes, bytes]]:
                with snap.iterator(start=start, stop=stop) as it:
                    yield from it

            yield ChainReader(snap.get, _range)
        finally:
            snap.close()

    def write_block(self, block: PreparedBlock, *, genesis_hash: bytes | None = None, sync: bool = True) -> None:
        """Write every key of ``block`` and make it the tip, in one atomic batch."""
        h = block.height
        with self.db.batch(sync=sync) as wb:
            wb.put(schema.header_key(h), block.header)
            wb.put(schema.body_key(h), block.body)
            wb.put(schema.receipts_key(h), block.receipts)
            wb.put(schema.proof_key(h), block.proof)
            wb.put(schema.txkeys_key(h), block.new_block)
            wb.put(schema.hash_key(block.hash), schema.encode_height(h))
            for index, tx_hash in enumerate(block.tx_hashes):
                wb.put(schema.tx_key(tx_hash), schema.encode_tx_location(h, index))
            if genesis_hash is not None:
                wb.put(schema.GENESIS, genesis_hash)
            wb.put(schema.TIP, schema.encode_tip(h, block.hash))

    def close(self) -> None:
        self.db.close()

"""Auth's two memories: the persistent transaction pool and the recent window.

:class:`TxPool` holds admitted transactions in arrival order, in memory and
in auth's LevelDB (written before the client hears "ok", reloaded at
start-up), indexed by hash, by (sender, nonce) and by valid_until_block (for
eviction once expired).

:class:`RecentWindow` remembers the hashes and (sender, nonce) pairs of the
transactions in the newest ``blocks`` blocks (100): a transaction cannot be
valid more than 100 blocks after its tip (ARCHITECTURE.md), so nothing older
can be replayed and the window is all auth needs for dedupe.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NewType

import rlp

from pycita.crypto import Address, Hash32, keccak
from pycita.errors import DecodeError
from pycita.storage import LevelDB
from services.auth import schema

log = logging.getLogger(__name__)

Seq = NewType("Seq", int)
SenderNonce = tuple[bytes, int]

WINDOW_BLOCKS = 100


@dataclass(frozen=True, slots=True)
class PoolTx:
    """An admitted transaction with what block selection and dedupe need."""

    hash: Hash32
    raw: bytes
    sender: Address
    nonce: int
    valid_until_block: int
    quota: int

    def encode(self) -> bytes:
        return rlp.encode([self.sender, self.nonce, self.valid_until_block, self.quota, self.raw])

    @classmethod
    def decode(cls, value: bytes) -> PoolTx:
        try:
            sender, nonce, until, quota, raw = rlp.decode(value)
            return cls(keccak(raw), raw, Address(sender), int.from_bytes(nonce, "big"),
                       int.from_bytes(until, "big"), int.from_bytes(quota, "big"))
        except (rlp.exceptions.DecodingError, ValueError, TypeError) as exc:
            raise DecodeError("pooled transaction", str(exc)) from exc


@dataclass(frozen=True, slots=True)
class TxKeyView:
    """What the window keeps per included transaction (a ``TxKey`` without its expiry)."""

    hash: bytes
    sender: bytes
    nonce: int


class TxPool:
    """Admitted, not yet included transactions, persisted in ``db``."""

    def __init__(self, db: LevelDB, capacity: int) -> None:
        self.db = db
        self.capacity = capacity
        self._txs: dict[bytes, tuple[Seq, PoolTx]] = {}
        self._by_sender_nonce: dict[SenderNonce, bytes] = {}
        self._by_expiry: dict[int, set[bytes]] = {}
        self._next_seq = 0

    # -- queries -----------------------------------------------------------
    def __len__(self) -> int:
        return len(self._txs)

    def __contains__(self, tx_hash: object) -> bool:
        return tx_hash in self._txs

    @property
    def full(self) -> bool:
        return len(self._txs) >= self.capacity

    def has_sender_nonce(self, sender: bytes, nonce: int) -> bool:
        return (sender, nonce) in self._by_sender_nonce

    def get(self, tx_hash: bytes) -> PoolTx | None:
        entry = self._txs.get(tx_hash)
        return None if entry is None else entry[1]

    def __iter__(self) -> Iterator[PoolTx]:
        """Transactions in arrival order."""
        for _seq, tx in self._txs.values():
            yield tx

    # -- changes -------------------------------------------------------------
    def load(self) -> int:
        """Reload the pool from the store (arrival order); returns how many were loaded."""
        self._txs.clear()
        self._by_sender_nonce.clear()
        self._by_expiry.clear()
        bad: list[bytes] = []
        for key, value in self.db.iterate(prefix=schema.POOL):
            seq = Seq(schema.pool_seq(key))
            try:
                tx = PoolTx.decode(value)
            except DecodeError as exc:
                log.error("auth: dropping unreadable pooled tx %s: %s", key.hex(), exc)
                bad.append(key)
                continue
            self._index(seq, tx)
            self._next_seq = seq + 1
        if bad:
            self.db.write({}, bad)
        return len(self._txs)

    def _index(self, seq: Seq, tx: PoolTx) -> None:
        self._txs[tx.hash] = (seq, tx)
        self._by_sender_nonce[(tx.sender, tx.nonce)] = tx.hash
        self._by_expiry.setdefault(tx.valid_until_block, set()).add(tx.hash)

    def add_many(self, txs: Sequence[PoolTx]) -> None:
        """Add ``txs`` (already checked) and persist them in one synced batch."""
        if not txs:
            return
        puts: dict[bytes, bytes] = {}
        for tx in txs:
            seq = Seq(self._next_seq)
            self._next_seq += 1
            puts[schema.pool_key(seq)] = tx.encode()
            self._index(seq, tx)
        self.db.write(puts, sync=True)

    def remove_many(self, hashes: Iterable[bytes]) -> int:
        """Remove the listed transactions (unknown hashes are ignored); returns how many went."""
        deletes: list[bytes] = []
        for tx_hash in hashes:
            entry = self._txs.pop(tx_hash, None)
            if entry is None:
                continue
            seq, tx = entry
            deletes.append(schema.pool_key(seq))
            if self._by_sender_nonce.get((tx.sender, tx.nonce)) == tx_hash:
                del self._by_sender_nonce[(tx.sender, tx.nonce)]
            bucket = self._by_expiry.get(tx.valid_until_block)
            if bucket is not None:
                bucket.discard(tx_hash)
                if not bucket:
                    del self._by_expiry[tx.valid_until_block]
        if deletes:
            self.db.write({}, deletes)
        return len(deletes)

    def remove_sender_nonces(self, pairs: Iterable[SenderNonce]) -> int:
        """Remove pooled transactions using any of these (sender, nonce) pairs."""
        hashes = [h for p in pairs if (h := self._by_sender_nonce.get(p)) is not None]
        return self.remove_many(hashes)

    def evict_expired(self, next_height: int) -> int:
        """Remove transactions that can no longer enter a block (valid_until_block < next_height)."""
        expired = [until for until in self._by_expiry if until < next_height]
        hashes = [h for until in expired for h in self._by_expiry[until]]
        return self.remove_many(hashes)

    def clear(self) -> None:
        """Drop every pooled transaction, in memory and in the store."""
        self.remove_many(list(self._txs))


class RecentWindow:
    """Hashes and (sender, nonce) pairs of transactions in the newest ``blocks`` blocks."""

    def __init__(self, blocks: int = WINDOW_BLOCKS) -> None:
        self.blocks = blocks
        self._heights: dict[int, list[TxKeyView]] = {}
        self._hashes: dict[bytes, int] = {}
        self._sender_nonces: dict[SenderNonce, int] = {}
        self.height = -1

    def __len__(self) -> int:
        return len(self._hashes)

    def has_hash(self, tx_hash: bytes) -> bool:
        return tx_hash in self._hashes

    def has_sender_nonce(self, sender: bytes, nonce: int) -> bool:
        return (sender, nonce) in self._sender_nonces

    def has_block(self, height: int) -> bool:
        return height in self._heights

    def add_block(self, height: int, keys: Iterable[TxKeyView]) -> bool:
        """Remember a block's transactions; ``False`` if that height is already known."""
        if height in self._heights:
            return False
        entries = list(keys)
        self._heights[height] = entries
        for key in entries:
            if self._hashes.get(key.hash, -1) < height:
                self._hashes[key.hash] = height
            pair = (key.sender, key.nonce)
            if self._sender_nonces.get(pair, -1) < height:
                self._sender_nonces[pair] = height
        self.height = max(self.height, height)
        return True

    def replace(self, height: int, keys: Iterable[TxKeyView]) -> None:
        """Start over from the chain's answer: every key counts as included at ``height``.

        ``RecentTxs`` does not say which block each tx came from, so all are kept
        as if in the newest block (a superset of the true window, never less).
        """
        self.clear()
        self.add_block(height, keys)

    def prune(self, tip: int) -> int:
        """Forget blocks at or below ``tip - blocks``; returns how many blocks went."""
        cutoff = tip - self.blocks
        old = [h for h in self._heights if h <= cutoff]
        for h in old:
            for key in self._heights.pop(h):
                if self._hashes.get(key.hash) == h:
                    del self._hashes[key.hash]
                pair = (key.sender, key.nonce)
                if self._sender_nonces.get(pair) == h:
                    del self._sender_nonces[pair]
        return len(old)

    def clear(self) -> None:
        self._heights.clear()
        self._hashes.clear()
        self._sender_nonces.clear()
        self.height = -1

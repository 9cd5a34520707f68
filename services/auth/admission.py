"""Transaction admission (ARCHITECTURE.md "Transaction admission") and block filling.

:class:`Admitter` owns auth's state -- the pool, the recent window, the tip,
whether it is ready -- and applies the checks in this order (cheap first,
the ~40 µs signature recovery only for a transaction that passed the rest):

==  ===================  ============================================================
 9  NOT_READY            start-up (no answer from the chain yet) or flight mode
10  TOO_LARGE            raw transaction over 1 MiB
 1  MALFORMED            not canonical RLP of the signed-transaction shape
 3  WRONG_CHAIN_ID       chain id is not genesis's
 6  INVALID_UNTIL_BLOCK  valid_until_block not in (tip, tip + 100]
 7  QUOTA                below the intrinsic quota or above genesis quota_limit
 4  DUPLICATE            hash already in the pool, the recent window or this batch
 2  BAD_SIGNATURE        the signature does not recover
 5  REUSED_NONCE         (sender, nonce) in the pool, the recent window or this batch
 8  POOL_FULL            the pool holds ``pool_size`` transactions
==  ===================  ============================================================

The accepted transactions of a batch are written to the store in one synced
batch before the verdicts are returned.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pycita.crypto import Hash32, keccak
from pycita.quota import intrinsic_quota
from services.auth.pool import PoolTx, RecentWindow, TxKeyView, TxPool
from services.auth.txcheck import MAX_TX_BYTES, AdmissionError, Code, parse_tx

log = logging.getLogger(__name__)

UNTIL_BLOCK_HORIZON = 100


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer for one raw transaction (becomes a ``TxResult``)."""

    tx_hash: Hash32
    code: Code
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.code == Code.OK


@dataclass(frozen=True)
class Rules:
    """The chain-wide parameters admission checks against (from genesis)."""

    chain_id: int
    quota_limit: int
    max_tx_bytes: int = MAX_TX_BYTES
    until_block_horizon: int = UNTIL_BLOCK_HORIZON


class Admitter:
    """Auth's domain state: admits transactions, fills blocks, follows the chain."""

    def __init__(self, rules: Rules, pool: TxPool, window: RecentWindow) -> None:
        self.rules = rules
        self.pool = pool
        self.window = window
        self.tip: int | None = None
        self.ready = False

    # -- admission -------------------------------------------------------------
    def admit_batch(self, raws: Sequence[bytes], *, flight_mode: bool = False) -> list[Verdict]:
        """One verdict per raw transaction, in order; accepted ones are persisted first."""
        if flight_mode or not self.ready or self.tip is None:
            why = "node is in flight mode (snapshot restore)" if flight_mode else \
                "auth is starting: waiting for the chain's recent transactions"
            return [Verdict(keccak(raw), Code.NOT_READY, why) for raw in raws]
        accepted: list[PoolTx] = []
        batch_hashes: set[bytes] = set()
        batch_pairs: set[tuple[bytes, int]] = set()
        verdicts: list[Verdict] = []
        for raw in raws:
            try:
                tx = self._check(raw, self.tip, batch_hashes, batch_pairs, len(accepted))
            except AdmissionError as exc:
                verdicts.append(Verdict(keccak(raw), exc.code, exc.message))
                continue
            accepted.append(tx)
            batch_hashes.add(tx.hash)
            batch_pairs.add((tx.sender, tx.nonce))
            verdicts.append(Verdict(tx.hash, Code.OK))
        self.pool.add_many(accepted)
        return verdicts

    def _check(self, raw: bytes, tip: int, batch_hashes: set[bytes], batch_pairs: set[tuple[bytes, int]],
               pending: int) -> PoolTx:
        rules = self.rules
        tx = parse_tx(raw, rules.max_tx_bytes)
        if tx.chain_id != rules.chain_id:
            raise AdmissionError(Code.WRONG_CHAIN_ID, f"chain id {tx.chain_id}, this chain is {rules.chain_id}")
        horizon = tip + rules.until_block_horizon
        if not tip < tx.valid_until_block <= horizon:
            raise AdmissionError(Code.INVALID_UNTIL_BLOCK,
                                 f"valid_until_block {tx.valid_until_block} not in ({tip}, {horizon}]")
        need = intrinsic_quota(tx.action, tx.data)
        if tx.quota < need:
            raise AdmissionError(Code.QUOTA, f"quota {tx.quota} is below the intrinsic {need}")
        if tx.quota > rules.quota_limit:
            raise AdmissionError(Code.QUOTA, f"quota {tx.quota} is above the block quota limit {rules.quota_limit}")
        if tx.hash in batch_hashes or tx.hash in self.pool or self.window.has_hash(tx.hash):
            where = "this batch" if tx.hash in batch_hashes else \
                "the pool" if tx.hash in self.pool else "a recent block"
            raise AdmissionError(Code.DUPLICATE, f"transaction 0x{tx.hash.hex()} is already in {where}")
        sender = tx.sender()
        pair = (sender, tx.nonce)
        if pair in batch_pairs or self.pool.has_sender_nonce(sender, tx.nonce) or \
                self.window.has_sender_nonce(sender, tx.nonce):
            raise AdmissionError(Code.REUSED_NONCE,
                                 f"nonce {tx.nonce} of sender 0x{sender.hex()} is already used")
        if len(self.pool) + pending >= self.pool.capacity:
            raise AdmissionError(Code.POOL_FULL, f"the pool is full ({self.pool.capacity} transactions)")
        return PoolTx(tx.hash, raw, sender, tx.nonce, tx.valid_until_block, tx.quota)

    # -- block filling ------------------------------------------------------------
    def block_txs(self, height: int, max_count: int, quota_limit: int) -> list[bytes]:
        """Pool transactions valid at ``height``, in arrival order, within count and quota.

        Nothing is removed: the pool lets go of a transaction only when a committed
        block lists it. Empty while not ready.
        """
        return self.block_txs_with_senders(height, max_count, quota_limit)[0]

    def block_txs_with_senders(self, height: int, max_count: int,
                               quota_limit: int) -> tuple[list[bytes], list[bytes]]:
        """:meth:`block_txs` and, in the same order, the sender recovered from each at admission."""
        if not self.ready:
            return [], []
        budget = quota_limit or self.rules.quota_limit
        limit = max_count or len(self.pool)
        out: list[bytes] = []
        senders: list[bytes] = []
        used = 0
        window = self.window
        for tx in self.pool:
            if len(out) >= limit:
                break
            if tx.valid_until_block < height or tx.quota > budget - used:
                continue
            if window.has_hash(tx.hash) or window.has_sender_nonce(tx.sender, tx.nonce):
                continue
            out.append(tx.raw)
            senders.append(tx.sender)
            used += tx.quota
        return out, senders

    # -- following the chain -----------------------------------------------------
    def on_new_block(self, height: int, keys: Iterable[TxKeyView]) -> None:
        """A committed block: its txs leave the pool and enter the window; old blocks are pruned."""
        entries = list(keys)
        if self.window.add_block(height, entries):
            self.pool.remove_many(k.hash for k in entries)
            self.pool.remove_sender_nonces((k.sender, k.nonce) for k in entries)
        self.on_tip(height)

    def on_tip(self, height: int) -> bool:
        """The chain's tip; evicts expired txs and prunes.

        ``True`` when the window lacks blocks up to ``height`` (``chain.new_block``
        precedes ``chain.rich_status``, so a gap means announcements were missed
        and the window should be reloaded from the chain).
        """
        if self.tip is None or height > self.tip:
            self.tip = height
        self.window.prune(self.tip)
        self.pool.evict_expired(self.tip + 1)
        return self.ready and height > self.window.height

    def on_recent_txs(self, height: int, keys: Iterable[TxKeyView]) -> None:
        """The chain's answer to ``recent_txs_req``: rebuild the window, become ready."""
        entries = list(keys)
        self.window.replace(height, entries)
        self.pool.remove_many(k.hash for k in entries)
        self.pool.remove_sender_nonces((k.sender, k.nonce) for k in entries)
        self.tip = height
        self.pool.evict_expired(height + 1)
        if not self.ready:
            log.info("auth: ready at height %s (%s recent txs, %s pooled)", height, len(entries), len(self.pool))
        self.ready = True

    def clear(self) -> None:
        """Snapshot Clear: forget the pool and the window; not ready until the chain answers again."""
        self.pool.clear()
        self.window.clear()
        self.tip = None
        self.ready = False

    def status(self) -> dict[str, object]:
        return {"ready": self.ready, "tip": self.tip, "pool": len(self.pool), "recent_window": len(self.window)}

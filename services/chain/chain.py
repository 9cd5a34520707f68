"""The chain's domain logic: verify a block with its proof, commit it, answer reads.

:meth:`Chain.accept` runs every check of ARCHITECTURE.md step 6 before
anything is written:

* ``number == tip + 1`` and ``parent_hash == hash(tip)``;
* ``header.proof`` is a quorum proof of the parent (skipped when the parent
  is genesis);
* the accompanying proof is a quorum proof of this block, by the genesis
  validators and chain id;
* ``transactions_root`` and ``receipts_root`` recomputed from the body and
  the receipts; receipt ``i`` names transaction ``i``.

A block already stored is ignored (``accept`` returns ``None``); anything
else wrong raises :class:`BlockRejected` and nothing is stored.

Transactions and receipts are never decoded: the body is split into raw
items (hashed for the roots and the tx index); only the leading fields of
each tx (nonce, valid_until_block) and receipt (tx hash, sender) are read
for ``TxKey``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import rlp

from pycita.crypto import Hash32, keccak
from pycita.errors import ConfigError, DecodeError, PycitaError
from pycita.genesis import Genesis
from pycita.messages import pb
from pycita.proof import ProofError, verify_proof
from pycita.types import Header, decode_as, ordered_root
from services.chain.rawrlp import join_list, leading_strings, split_list
from services.chain.store import ChainStore, PreparedBlock

log = logging.getLogger(__name__)

MAX_SYNC_BLOCKS = 100
MAX_SYNC_BYTES = 8 * 1024 * 1024
MAX_RECENT_BLOCKS = 1000
UINT64_MAX = (1 << 64) - 1
EMPTY_LIST = b"\xc0"


class BlockRejected(PycitaError):
    """Raised when a block offered to the chain fails a check; nothing of it is stored.

    ``height`` is the block's number (as claimed by its header, -1 if unreadable),
    ``reason`` says which check failed.
    """

    def __init__(self, height: int, reason: str) -> None:
        super().__init__(f"block {height} rejected: {reason}")
        self.height = height
        self.reason = reason


@dataclass(frozen=True)
class Tip:
    """The newest stored block and its proof."""

    height: int
    hash: Hash32
    state_root: Hash32
    timestamp: int
    proof: bytes


@dataclass(frozen=True)
class Committed:
    """A block :meth:`Chain.accept` has just written."""

    height: int
    hash: Hash32
    new_block: pb.NewBlock


def _int(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def _proof_message(proof: bytes) -> pb.Proof:
    msg = pb.Proof()
    if proof:
        msg.ParseFromString(proof)
    return msg


class Chain:
    """The block store with its verification rules, for one genesis."""

    def __init__(self, store: ChainStore, genesis: Genesis) -> None:
        self.store = store
        self.genesis = genesis
        self.genesis_hash: Hash32 = genesis.hash
        self.validators = tuple(genesis.validators)
        stored = store.genesis_hash()
        if store.tip() is None:
            self._write_genesis()
        elif stored != self.genesis_hash:
            raise ConfigError(
                f"chain store {store.db.path} belongs to genesis 0x{(stored or b'').hex()}, "
                f"genesis.json is 0x{self.genesis_hash.hex()}")
        self.tip = self._load_tip()

    # -- start-up ------------------------------------------------------------
    def _write_genesis(self) -> None:
        header = rlp.encode(self.genesis.header())
        block_hash = keccak(header)
        new_block = pb.NewBlock(height=0, hash=block_hash)
        self.store.write_block(
            PreparedBlock(0, block_hash, header, EMPTY_LIST, EMPTY_LIST, b"", (), new_block.SerializeToString()),
            genesis_hash=block_hash)
        log.info("chain: initialised genesis 0x%s", block_hash.hex())

    def _load_tip(self) -> Tip:
        tip = self.store.tip()
        if tip is None:
            raise ConfigError(f"chain store {self.store.db.path} has no tip")
        height, block_hash = tip
        header = self.store.header(height)
        if header is None:
            raise ConfigError(f"chain store {self.store.db.path} lacks the header of its tip {height}")
        return Tip(height, block_hash, Hash32(header.state_root), header.timestamp, self.store.proof(height) or b"")

    # -- commit ----------------------------------------------------------------
    def accept(self, block_rlp: bytes, proof: bytes, receipts: Sequence[bytes]) -> Committed | None:
        """Verify and store one block; ``None`` if it is already stored.

        Raises :class:`BlockRejected` when any check fails.
        """
        prepared, header = self.verify(block_rlp, proof, receipts)
        if prepared is None:
            return None
        self.store.write_block(prepared)
        self.tip = Tip(prepared.height, prepared.hash, Hash32(header.state_root), header.timestamp, prepared.proof)
        nb = pb.NewBlock()
        nb.ParseFromString(prepared.new_block)
        return Committed(prepared.height, prepared.hash, nb)

    def verify(self, block_rlp: bytes, proof: bytes,
               receipts: Sequence[bytes]) -> tuple[PreparedBlock | None, Header]:
        """All checks of :meth:`accept`; returns what to write (``None`` if already stored)."""
        try:
            parts = split_list(block_rlp, "block")
            if len(parts) != 2:
                raise DecodeError("block", f"expected [header, transactions], got {len(parts)} items")
            header_rlp, body = parts
            header: Header = decode_as(header_rlp, Header, "block header")  # type: ignore[assignment]
            txs = split_list(body, "block transactions")
        except DecodeError as exc:
            raise BlockRejected(-1, str(exc)) from exc
        number = header.number
        block_hash = keccak(header_rlp)

        tip = self.tip
        if number <= tip.height:
            if self.store.block_hash(number) == block_hash:
                return None, header
            raise BlockRejected(number, f"conflicts with stored block {number}")
        if number != tip.height + 1:
            raise BlockRejected(number, f"out of order: tip is {tip.height}")
        if header.parent_hash != tip.hash:
            raise BlockRejected(number, f"parent hash 0x{header.parent_hash.hex()} is not the tip 0x{tip.hash.hex()}")

        tx_hashes: list[bytes] = [keccak(tx) for tx in txs]
        if ordered_root(tx_hashes) != header.transactions_root:
            raise BlockRejected(number, "transactions_root does not match the transactions")
        if len(receipts) != len(txs):
            raise BlockRejected(number, f"{len(receipts)} receipts for {len(txs)} transactions")
        if ordered_root(list(receipts)) != header.receipts_root:
            raise BlockRejected(number, "receipts_root does not match the receipts")
        keys = [self._tx_key(number, i, tx, tx_hashes[i], receipts[i]) for i, tx in enumerate(txs)]

        if number > 1:
            try:
                verify_proof(header.proof, chain_id=self.genesis.chain_id, height=number - 1,
                             block_hash=header.parent_hash, validators=self.validators)
            except ProofError as exc:
                raise BlockRejected(number, f"header proof does not prove the parent: {exc}") from exc
        try:
            verify_proof(proof, chain_id=self.genesis.chain_id, height=number, block_hash=block_hash,
                         validators=self.validators)
        except ProofError as exc:
            raise BlockRejected(number, f"proof does not prove this block: {exc}") from exc

        new_block = pb.NewBlock(height=number, hash=block_hash, txs=keys)
        return PreparedBlock(number, block_hash, header_rlp, body, join_list(receipts), proof,
                             tuple(tx_hashes), new_block.SerializeToString()), header

    @staticmethod
    def _tx_key(number: int, index: int, tx: bytes, tx_hash: bytes, receipt: bytes) -> pb.TxKey:
        try:
            _chain_id, nonce, until = leading_strings(tx, 3, f"transaction {index}")
            rec_hash, sender = leading_strings(receipt, 2, f"receipt {index}")
        except DecodeError as exc:
            raise BlockRejected(number, str(exc)) from exc
        if rec_hash != tx_hash:
            raise BlockRejected(number, f"receipt {index} is for tx 0x{rec_hash.hex()}, not 0x{tx_hash.hex()}")
        if len(sender) != 20:
            raise BlockRejected(number, f"receipt {index} has no 20-byte sender")
        return pb.TxKey(hash=tx_hash, sender=sender, nonce=min(_int(nonce), UINT64_MAX),
                        valid_until_block=min(_int(until), UINT64_MAX))

    # -- reads for other services ----------------------------------------------
    def rich_status(self, flight_mode: bool = False) -> pb.RichStatus:
        tip = self.tip
        return pb.RichStatus(height=tip.height, hash=tip.hash, state_root=tip.state_root, timestamp=tip.timestamp,
                             genesis_hash=self.genesis_hash, proof=_proof_message(tip.proof),
                             flight_mode=flight_mode)

    def sync_blocks(self, start: int, end: int, max_blocks: int = MAX_SYNC_BLOCKS,
                    max_bytes: int = MAX_SYNC_BYTES) -> pb.SyncResp:
        """Full block RLPs from ``start`` up to ``end`` (0 or beyond the tip: the tip), capped.

        At most ``max_blocks`` blocks and about ``max_bytes`` bytes (always at least
        one block when any is in range); the requester asks again from where it stopped.
        """
        tip = self.tip.height
        last = tip if end == 0 or end > tip else end
        resp = pb.SyncResp(tip=tip)
        size = 0
        with self.store.view() as view:
            for block in view.iter_blocks(start, min(last, start + max_blocks - 1)):
                raw = block.block_rlp()
                if resp.blocks and size + len(raw) > max_bytes:
                    break
                resp.blocks.append(raw)
                size += len(raw)
        return resp

    def recent_txs(self, blocks: int) -> pb.RecentTxs:
        """TxKeys of every transaction in the newest ``blocks`` blocks (genesis excluded)."""
        blocks = max(0, min(blocks, MAX_RECENT_BLOCKS))
        with self.store.view() as view:
            tip = view.tip()
            height = tip[0] if tip else 0
            resp = pb.RecentTxs(height=height)
            for h in range(max(1, height - blocks + 1), height + 1):
                raw = view.new_block_msg(h)
                if raw is None:
                    continue
                nb = pb.NewBlock()
                nb.ParseFromString(raw)
                resp.txs.extend(nb.txs)
        return resp

    def status(self) -> dict[str, object]:
        tip = self.tip
        return {"height": tip.height, "block_hash": "0x" + tip.hash.hex(), "state_root": "0x" + tip.state_root.hex(),
                "genesis_hash": "0x" + self.genesis_hash.hex()}

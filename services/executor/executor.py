"""The executor's domain logic, free of any bus: proposals, commits, catch-up.

:class:`Executor` owns the executor store (keys in :mod:`services.executor.schema`)
and follows ARCHITECTURE.md steps 4 and 7:

* :meth:`Executor.execute_proposal` executes a proposal on top of the
  committed tip when the proposal's parent is the tip, and keeps the result
  *pending* (keyed by height and state root) without writing anything;
* :meth:`Executor.on_chain_block` (``chain.rich_status`` / ``chain.new_block``)
  writes the matching pending result in one batch, or asks for a catch-up;
  the block's full header (the proposal header with the executed roots,
  quota_used and log_bloom, as consensus seals it) is stored with it when its
  hash is the chain's (the snapshot's header chunks come from these);
* :meth:`Executor.apply_synced_blocks` (``chain.sync_resp``) re-executes
  blocks from the chain, checks each header's state_root and receipts_root and
  commits them; a mismatch halts the executor for good (it never commits a
  wrong state) and raises :class:`pycita.execution.BlockMismatch`.

Methods that need the chain's help return a :class:`SyncRange` for the
caller to request (``executor.sync_req``); repeats are throttled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import rlp

from pycita.crypto import Hash32, keccak
from pycita.errors import PycitaError
from pycita.execution import (
    BlockMismatch,
    ExecutionError,
    ExecutionResult,
    execute_block,
    init_genesis_state,
    recover_senders,
    verify_result,
)
from pycita.genesis import Genesis
from pycita.state import AccountCache, NodeStore, StateDB
from pycita.storage import KV
from pycita.types import EMPTY_BLOOM, Block, decode_as
from services.executor import schema

log = logging.getLogger(__name__)

SYNC_RETRY_SECONDS = 3.0
MAX_PENDING = 16


class ExecutorError(PycitaError):
    """Raised when the executor store is inconsistent or belongs to another chain."""


class ExecutorHalted(ExecutorError):
    """Raised when the executor was halted by a state mismatch and refuses to execute."""


@dataclass(frozen=True)
class Tip:
    """The newest committed block as the executor knows it."""

    height: int
    block_hash: Hash32
    state_root: Hash32


@dataclass(frozen=True)
class SyncRange:
    """Blocks ``start..end`` (inclusive) the executor needs from the chain."""

    start: int
    end: int


@dataclass(frozen=True)
class ProposalOutcome:
    """The reply to a proposal: ``result`` on success, else ``error`` (and maybe a catch-up)."""

    height: int
    proposal_hash: Hash32
    result: ExecutionResult | None
    error: str = ""
    sync: SyncRange | None = None


@dataclass(frozen=True)
class _Pending:
    height: int
    parent_hash: bytes
    result: ExecutionResult
    headers: tuple[bytes, ...] = ()
    """Sealed header RLPs of the proposals that gave this result (newest last)."""

    def header_for(self, block_hash: bytes) -> bytes | None:
        for header in reversed(self.headers):
            if keccak(header) == block_hash:
                return header
        return None


class Executor:
    """Execution and committed state of one node (see the module docstring). Not thread-safe."""

    def __init__(self, kv: KV, genesis: Genesis, clock: Callable[[], float] = time.monotonic) -> None:
        self.kv = kv
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self._clock = clock
        self.nodes = NodeStore(kv)
        self.halted: str = ""
        self._pending: dict[tuple[int, bytes], _Pending] = {}
        self._chain_height = 0  # newest height the chain announced
        self._sync_asked: tuple[SyncRange, float] | None = None
        self.tip = self._load_or_init()
        self.cache = AccountCache(self.tip.state_root)

    # ----------------------------------------------------------------- store

    def _load_or_init(self) -> Tip:
        genesis_hash = self.genesis.hash
        stored_genesis = self.kv.get(schema.GENESIS)
        raw_tip = self.kv.get(schema.TIP)
        if stored_genesis is None or raw_tip is None:
            commit = init_genesis_state(self.kv, self.genesis)
            puts = {
                schema.height_key(0): schema.encode_height_entry(genesis_hash, commit.state_root),
                schema.TIP: schema.encode_tip(0),
                schema.GENESIS: genesis_hash,
            }
            self.kv.write(puts)
            log.info("executor: initialised genesis state 0x%s", commit.state_root.hex())
            return Tip(0, genesis_hash, commit.state_root)
        if stored_genesis != genesis_hash:
            raise ExecutorError(
                f"executor store belongs to genesis 0x{stored_genesis.hex()}, this chain is 0x{genesis_hash.hex()}"
            )
        try:
            height = schema.decode_tip(raw_tip)
        except ValueError as exc:
            raise ExecutorError(f"executor store: bad tip: {exc}") from exc
        entry = self.block_at(height)
        if entry is None:
            raise ExecutorError(f"executor store: tip {height} has no height entry")
        log.info("executor: at height %s, state 0x%s", height, entry[1].hex())
        return Tip(height, Hash32(entry[0]), Hash32(entry[1]))

    def block_at(self, height: int) -> tuple[bytes, bytes] | None:
        """(block hash, state root) of committed ``height``, or None."""
        if height < 0:
            return None
        raw = self.kv.get(schema.height_key(height))
        if raw is None:
            return None
        try:
            return schema.decode_height_entry(raw)
        except ValueError as exc:
            raise ExecutorError(f"executor store: height {height}: {exc}") from exc

    def header_rlp(self, height: int) -> bytes | None:
        """The stored header RLP of committed ``height`` (None for genesis or when unknown)."""
        return self.kv.get(schema.header_key(height))

    def _commit(self, height: int, block_hash: bytes, result: ExecutionResult,
                header_rlp: bytes | None = None) -> None:
        commit = result.commit
        puts = dict(commit.puts)
        puts[schema.height_key(height)] = schema.encode_height_entry(block_hash, commit.state_root)
        if header_rlp is not None:
            puts[schema.header_key(height)] = header_rlp
        else:
            log.warning("executor: no header of block %s 0x%s is known (no proposal sealed to that hash); "
                        "snapshots including it will be refused", height, bytes(block_hash).hex()[:16])
        puts[schema.TIP] = schema.encode_tip(height)
        self.kv.write(puts)
        self.cache.advance(commit)
        self.tip = Tip(height, Hash32(bytes(block_hash)), commit.state_root)
        for key in [k for k in self._pending if k[0] <= height]:
            del self._pending[key]
        log.info("executor: committed block %s 0x%s state 0x%s", height, bytes(block_hash).hex()[:16],
                 commit.state_root.hex()[:16])

    def state_at(self, root: bytes) -> StateDB:
        """A read view of the state at ``root`` (shares caches when it is the tip's)."""
        cache = self.cache if root == self.cache.root else None
        return StateDB(self.kv, root, nodes=self.nodes, cache=cache)

    # ------------------------------------------------------------- execution

    def _execute(self, block: Block, senders: Sequence[bytes] | None = None) -> ExecutionResult:
        state = StateDB(self.kv, self.tip.state_root, nodes=self.nodes, cache=self.cache)
        return execute_block(state, block, senders, chain_id=self.chain_id)

    def execute_proposal(self, block_rlp: bytes, senders: Sequence[bytes] = ()) -> ProposalOutcome:
        """Execute a proposed block on the tip and keep the result pending.

        ``senders`` (optional) are the transactions' senders as this node's auth
        recovered them from the signatures at admission (``BlockProposal.senders``,
        forwarded by this node's consensus from ``auth.block_txs``). They are used
        only when there is exactly one 20-byte sender per transaction; otherwise
        every signature is recovered here. Blocks from ``chain.sync_resp`` are
        always recovered here.

        Raises :class:`pycita.errors.DecodeError` when ``block_rlp`` is not a block.
        """
        block = decode_as(block_rlp, Block, "proposal block")
        proposal_hash = keccak(block_rlp)
        header = block.header
        height = header.number
        tip = self.tip
        if self.halted:
            return ProposalOutcome(height, proposal_hash, None, f"executor halted: {self.halted}")
        if height != tip.height + 1:
            sync = None
            if height > tip.height + 1:
                self._chain_height = max(self._chain_height, height - 1)
                sync = self._ask(tip.height + 1, height - 1)
            return ProposalOutcome(height, proposal_hash, None,
                                   f"executor at {tip.height}, parent {height - 1}", sync)
        if header.parent_hash != tip.block_hash:
            return ProposalOutcome(height, proposal_hash, None,
                                   f"parent hash 0x{header.parent_hash.hex()} is not the executor's block "
                                   f"{tip.height} 0x{tip.block_hash.hex()}")
        known: list[bytes] | None = None
        if senders and len(senders) == len(block.transactions) and all(len(a) == 20 for a in senders):
            known = [bytes(a) for a in senders]
        try:
            result = self._execute(block, known)
        except ExecutionError as exc:
            return ProposalOutcome(height, proposal_hash, None, str(exc))
        key = (height, bytes(result.state_root))
        sealed = rlp.encode(header.copy(state_root=result.state_root, receipts_root=result.receipts_root,
                                        quota_used=result.quota_used, log_bloom=result.log_bloom or EMPTY_BLOOM))
        previous = self._pending.pop(key, None)
        headers = (previous.headers if previous is not None else ())[-7:] + (sealed,)
        self._pending[key] = _Pending(height, header.parent_hash, result, headers)
        while len(self._pending) > MAX_PENDING:
            del self._pending[next(iter(self._pending))]
        log.debug("executor: executed proposal %s (%s txs) -> state 0x%s", height, len(block.transactions),
                  result.state_root.hex())
        return ProposalOutcome(height, proposal_hash, result)

    def on_chain_block(self, height: int, block_hash: bytes, state_root: bytes | None) -> SyncRange | None:
        """The chain committed ``height`` (``state_root`` None when unknown, as in ``new_block``).

        Commits the matching pending result, or returns the range to catch up.
        """
        self._chain_height = max(self._chain_height, height)
        tip = self.tip
        if height <= tip.height:
            if height == tip.height and bytes(block_hash) != tip.block_hash:
                log.error("executor: chain block %s is 0x%s, executor committed 0x%s", height,
                          bytes(block_hash).hex(), tip.block_hash.hex())
            return None
        if self.halted:
            return None
        if height == tip.height + 1:
            pending = self._find_pending(height, state_root)
            if pending is not None:
                self._commit(height, block_hash, pending.result, pending.header_for(bytes(block_hash)))
                self._sync_asked = None
                return None
            if state_root is None and any(k[0] == height for k in self._pending):
                return None  # ambiguous: wait for rich_status, which names the state root
        return self._ask(self.tip.height + 1, height)

    def _find_pending(self, height: int, state_root: bytes | None) -> _Pending | None:
        if state_root is not None:
            return self._pending.get((height, bytes(state_root)))
        candidates = [p for (h, _root), p in self._pending.items() if h == height]
        return candidates[0] if len(candidates) == 1 else None

    def apply_synced_blocks(self, raw_blocks: Sequence[bytes], chain_tip: int) -> SyncRange | None:
        """Re-execute, verify and commit blocks from ``chain.sync_resp`` (ascending; others skipped).

        Raises :class:`BlockMismatch` (after halting) when a header disagrees
        with execution, :class:`pycita.errors.DecodeError` on a malformed block
        (blocks before it stay committed).
        """
        self._chain_height = max(self._chain_height, chain_tip)
        if self.halted:
            return None
        progressed = False
        for raw in raw_blocks:
            block = decode_as(raw, Block, "synced block")
            header = block.header
            tip = self.tip
            if header.number <= tip.height:
                continue
            if header.number != tip.height + 1:
                log.warning("executor: sync gap: got block %s at height %s", header.number, tip.height)
                break
            if header.parent_hash != tip.block_hash:
                log.error("executor: synced block %s has parent 0x%s, executor has 0x%s", header.number,
                          header.parent_hash.hex(), tip.block_hash.hex())
                break
            try:
                senders = recover_senders(block.transactions)
                result = self._execute(block, senders)
                verify_result(block, result)
            except BlockMismatch as exc:
                self.halted = str(exc)
                log.critical("executor: HALTED: %s; nothing of block %s was committed", exc, header.number)
                raise
            except ExecutionError as exc:
                self.halted = f"block {header.number} cannot be executed: {exc}"
                log.critical("executor: HALTED: %s", self.halted)
                raise
            self._commit(header.number, block.hash, result, rlp.encode(header))
            progressed = True
        if progressed:
            self._sync_asked = None
        if self._chain_height > self.tip.height:
            return self._ask(self.tip.height + 1, self._chain_height)
        return None

    def tick(self) -> SyncRange | None:
        """Periodic check: re-ask for blocks the chain has and the executor lacks."""
        if not self.halted and self._chain_height > self.tip.height:
            return self._ask(self.tip.height + 1, self._chain_height)
        return None

    def _ask(self, start: int, end: int) -> SyncRange | None:
        """A sync request for ``start..end`` unless the same start was asked recently."""
        if self.halted or end < start:
            return None
        now = self._clock()
        asked = self._sync_asked
        if asked is not None and asked[0].start == start and now - asked[1] < SYNC_RETRY_SECONDS:
            return None
        rng = SyncRange(start, end)
        self._sync_asked = (rng, now)
        return rng

    # ----------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        tip = self.tip
        return {
            "height": tip.height,
            "block_hash": "0x" + tip.block_hash.hex(),
            "state_root": "0x" + tip.state_root.hex(),
            "chain_height": self._chain_height,
            "pending": len(self._pending),
            "halted": self.halted or None,
        }

"""Deterministic block execution (the transaction model of :mod:`pycita.types`).

:func:`execute_block` runs a block's transactions in order on a
:class:`pycita.state.StateDB` and commits it, returning the new state root,
the receipts and the puts to write. The result depends only on the state and
the block (and the chain id), never on the clock or the node.

A transaction uses ``min(quota, intrinsic quota)`` (:func:`pycita.quota.intrinsic_quota`),
success or failure; there are no fees. Its checks, in order (the first
failing one gives status 0 with the reason in ``Receipt.error``; the sender's
account nonce advances in every case and nothing else of the transaction
stays):

1. the block's ``quota_limit`` must cover the cumulative quota used (a tx past
   it fails using 0 quota);
2. ``chain_id`` must be the chain's (when the caller names it), and the block
   number must not exceed ``valid_until_block`` ("expired");
3. ``quota`` must cover the intrinsic quota;
4. the action:

   * TRANSFER: ``to`` is 20 bytes; ``value`` moves from the sender to ``to``.
   * DEPLOY: ``to`` is empty and ``data`` (the code) is not; the contract address
     is ``keccak(rlp([sender, n]))[12:]`` with ``n`` the sender's account nonce
     before the tx; it must hold no code and have nonce 0. ``value`` moves to
     the contract, and the contract's account nonce is set to ``n + 1`` (a
     contract never sends, so its nonce records its deployment instead).
   * SET_ABI: ``to`` is a contract (holds code), ``value`` is 0, and the sender
     is its deployer: ``contract_address(sender, to.nonce - 1) == to``. The
     deployer relation thus lives in the account values alone (a restored
     snapshot enforces it too) and costs one hash to check. ``data`` replaces
     the ABI (empty clears it); the deployer may set it again.
   * STORE: ``to`` is a contract; ``data`` is RLP ``[[key, value], ...]`` with
     keys of 1 to 64 bytes (an empty value deletes, later pairs win); ``value``
     moves from the sender to the contract.

Receipts carry no logs, so ``log_bloom`` is always the empty bloom.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import rlp

from pycita.crypto import EMPTY_KECCAK, Address, Hash32, SignatureError, keccak, recover_address
from pycita.errors import PycitaError
from pycita.genesis import Genesis
from pycita.quota import intrinsic_quota
from pycita.state import (
    AccountCache,
    NodeStore,
    StateCommit,
    StateDB,
    genesis_commit,
    rlp_bytes,
    rlp_int,
    rlp_list,
)
from pycita.storage import KV, MemoryKV
from pycita.types import (
    EMPTY_BLOOM,
    Action,
    Block,
    Receipt,
    SignedTransaction,
    contract_address,
    ordered_root,
)

log = logging.getLogger(__name__)

__all__ = [
    "BlockMismatch",
    "ExecutionError",
    "ExecutionResult",
    "MAX_STORAGE_KEY",
    "ReceiptsRootMismatch",
    "StateRootMismatch",
    "encode_receipt",
    "execute_block",
    "init_genesis_state",
    "recover_sender",
    "recover_senders",
    "replay_blocks",
    "tx_hash",
    "verify_result",
]

MAX_STORAGE_KEY = 64
"""Longest storage key a STORE may write, in bytes."""


class ExecutionError(PycitaError):
    """Raised when a block cannot be executed at all (e.g. a transaction's signature does not recover)."""


class BlockMismatch(ExecutionError):
    """Raised when a re-executed block disagrees with its header (``height``, ``expected``, ``actual`` carried)."""

    what = "root"

    def __init__(self, height: int, expected: bytes, actual: bytes) -> None:
        super().__init__(
            f"block {height}: {self.what} mismatch: header has 0x{expected.hex()}, execution gave 0x{actual.hex()}"
        )
        self.height = height
        self.expected = expected
        self.actual = actual


class StateRootMismatch(BlockMismatch):
    """Raised when the state root after executing a block differs from the header's ``state_root``."""

    what = "state_root"


class ReceiptsRootMismatch(BlockMismatch):
    """Raised when the receipts root of an executed block differs from the header's ``receipts_root``."""

    what = "receipts_root"


@dataclass(frozen=True)
class ExecutionResult:
    """What executing one block produced; ``commit.puts`` still has to be written."""

    height: int
    state_root: Hash32
    receipt_rlps: tuple[bytes, ...]
    receipts_root: Hash32
    quota_used: int
    log_bloom: bytes
    commit: StateCommit

    @property
    def receipts(self) -> tuple[Receipt, ...]:
        """The receipts as :class:`pycita.types.Receipt` objects (decoded on each access)."""
        return tuple(rlp.decode(r, Receipt) for r in self.receipt_rlps)


class _TxFailed(Exception):
    """Internal: the transaction fails with this reason (status 0)."""


def _unsigned_items(tx: SignedTransaction) -> list[bytes]:
    return [rlp_int(tx.chain_id), rlp_int(tx.nonce), rlp_int(tx.valid_until_block), rlp_int(tx.quota),
            rlp_bytes(tx.to), rlp_int(tx.value), rlp_int(tx.action), rlp_bytes(tx.data)]


def recover_sender(tx: SignedTransaction) -> Address:
    """``tx.sender()`` with a faster signing-hash encoding; raises :class:`pycita.crypto.SignatureError`."""
    return recover_address(keccak(rlp_list(_unsigned_items(tx))), tx.signature)


def tx_hash(tx: SignedTransaction) -> Hash32:
    """``tx.hash`` without going through rlp's generic serializer (same bytes)."""
    raw = getattr(tx, "_cached_rlp", None)
    if not raw:
        items = _unsigned_items(tx)
        items.append(rlp_bytes(tx.signature))
        raw = rlp_list(items)
    return keccak(raw)


def encode_receipt(tx_hash: bytes, sender: bytes, status: int, quota_used: int, cumulative: int,
                   contract: bytes, error: bytes) -> bytes:
    """RLP of a :class:`pycita.types.Receipt` from its fields (same bytes as ``rlp.encode(Receipt(...))``)."""
    return rlp_list([rlp_bytes(tx_hash), rlp_bytes(sender), rlp_int(status), rlp_int(quota_used),
                     rlp_int(cumulative), rlp_bytes(contract), rlp_bytes(error)])


def recover_senders(txs: Iterable[SignedTransaction]) -> list[Address]:
    """Recover every sender; raises :class:`ExecutionError` naming the first bad transaction."""
    out: list[Address] = []
    for i, tx in enumerate(txs):
        try:
            out.append(recover_sender(tx))
        except SignatureError as exc:
            raise ExecutionError(f"transaction {i} (0x{tx.hash.hex()}): {exc}") from exc
    return out


def _store_pairs(data: bytes) -> list[tuple[bytes, bytes]]:
    try:
        items = rlp.decode(data)
    except rlp.exceptions.DecodingError as exc:
        raise _TxFailed(f"STORE data is not RLP: {exc}") from exc
    if not isinstance(items, list):
        raise _TxFailed("STORE data must be an RLP list of [key, value] pairs")
    pairs: list[tuple[bytes, bytes]] = []
    for i, item in enumerate(items):
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], bytes)
                and isinstance(item[1], bytes)):
            raise _TxFailed(f"STORE pair {i} is not [key, value] of byte strings")
        key, value = item
        if not 1 <= len(key) <= MAX_STORAGE_KEY:
            raise _TxFailed(f"STORE pair {i}: key must be 1 to {MAX_STORAGE_KEY} bytes, got {len(key)}")
        pairs.append((key, value))
    return pairs


def _apply(state: StateDB, tx: SignedTransaction, sender: bytes, nonce_before: int) -> bytes:
    """Apply the action of ``tx``; returns the contract address (DEPLOY) or b''. Raises _TxFailed."""
    action = tx.action
    to = tx.to
    value = tx.value
    if action == Action.TRANSFER:
        if len(to) != 20:
            raise _TxFailed("TRANSFER needs a 20-byte to address")
        if state.balance(sender) < value:
            raise _TxFailed(f"insufficient balance: has {state.balance(sender)}, needs {value}")
        state.transfer(sender, to, value)
        return b""
    if action == Action.DEPLOY:
        if to:
            raise _TxFailed("DEPLOY must not name a to address")
        if not tx.data:
            raise _TxFailed("DEPLOY needs code in data")
        addr = contract_address(sender, nonce_before)
        existing = state.get_account(addr)
        if existing[3] != EMPTY_KECCAK or existing[0] != 0:
            raise _TxFailed(f"contract address 0x{addr.hex()} is already in use")
        if state.balance(sender) < value:
            raise _TxFailed(f"insufficient balance: has {state.balance(sender)}, needs {value}")
        state.transfer(sender, addr, value)
        state.set_code(addr, tx.data)
        _n, balance, storage_root, code_hash, abi_hash = state.get_account(addr)
        state.set_account(addr, (nonce_before + 1, balance, storage_root, code_hash, abi_hash))
        return addr
    if action == Action.SET_ABI:
        if len(to) != 20 or not state.is_contract(to):
            raise _TxFailed("SET_ABI target is not a contract")
        if value:
            raise _TxFailed("SET_ABI must not carry a value")
        deploy_nonce = state.nonce(to) - 1
        if deploy_nonce < 0 or contract_address(sender, deploy_nonce) != to:
            raise _TxFailed("SET_ABI: only the contract's deployer may set its ABI")
        state.set_abi(to, tx.data)
        return b""
    if action == Action.STORE:
        if len(to) != 20 or not state.is_contract(to):
            raise _TxFailed("STORE target is not a contract")
        pairs = _store_pairs(tx.data)
        if state.balance(sender) < value:
            raise _TxFailed(f"insufficient balance: has {state.balance(sender)}, needs {value}")
        state.transfer(sender, to, value)
        state.update_storage(to, pairs)
        return b""
    raise _TxFailed(f"unknown action {action}")


def execute_block(state: StateDB, block: Block, senders: Sequence[bytes] | None = None, *,
                  chain_id: int | None = None) -> ExecutionResult:
    """Execute ``block``'s transactions on ``state`` and commit it (see the module docstring).

    ``senders`` are the recovered senders, one per transaction (recovered here
    when omitted). ``chain_id``, when given, fails transactions of another
    chain. The caller writes ``result.commit.puts`` (in one batch with its own
    keys) before using ``state`` again. Raises :class:`ExecutionError` (before
    touching ``state``) when a signature does not recover or ``senders`` has
    the wrong length.
    """
    header = block.header
    txs = block.transactions
    if senders is None:
        senders = recover_senders(txs)
    elif len(senders) != len(txs):
        raise ExecutionError(f"block {header.number}: {len(senders)} senders for {len(txs)} transactions")
    number = header.number
    quota_limit = header.quota_limit
    cumulative = 0
    receipt_rlps: list[bytes] = []
    for tx, sender in zip(txs, senders, strict=True):
        cp = state.checkpoint()
        nonce_before = state.nonce(sender)
        state.increment_nonce(sender)
        inner = state.checkpoint()
        intrinsic = intrinsic_quota(tx.action, tx.data)
        quota_used = min(tx.quota, intrinsic)
        contract = b""
        try:
            if cumulative + quota_used > quota_limit:
                quota_used = 0
                raise _TxFailed(f"block quota limit {quota_limit} reached")
            if chain_id is not None and tx.chain_id != chain_id:
                raise _TxFailed(f"wrong chain id {tx.chain_id}, chain is {chain_id}")
            if tx.valid_until_block < number:
                raise _TxFailed(f"expired: valid until block {tx.valid_until_block}, block is {number}")
            if tx.quota < intrinsic:
                raise _TxFailed(f"quota {tx.quota} below intrinsic quota {intrinsic}")
            contract = _apply(state, tx, sender, nonce_before)
            status, error = 1, b""
        except _TxFailed as exc:
            state.revert_to(inner)
            status, error, contract = 0, str(exc).encode(), b""
        state.discard_checkpoint(cp)
        cumulative += quota_used
        receipt_rlps.append(encode_receipt(tx_hash(tx), sender, status, quota_used, cumulative, contract, error))
    commit = state.commit()
    return ExecutionResult(
        height=number,
        state_root=commit.state_root,
        receipt_rlps=tuple(receipt_rlps),
        receipts_root=ordered_root(receipt_rlps),
        quota_used=cumulative,
        log_bloom=EMPTY_BLOOM,
        commit=commit,
    )


def verify_result(block: Block, result: ExecutionResult) -> None:
    """Check ``result`` against ``block``'s header; raises StateRootMismatch / ReceiptsRootMismatch."""
    header = block.header
    if header.state_root != result.state_root:
        raise StateRootMismatch(header.number, header.state_root, result.state_root)
    if header.receipts_root != result.receipts_root:
        raise ReceiptsRootMismatch(header.number, header.receipts_root, result.receipts_root)


def init_genesis_state(kv: KV, genesis: Genesis) -> StateCommit:
    """Write the genesis state into ``kv``; raises StateRootMismatch when it differs from the genesis header."""
    commit = genesis_commit(genesis.state_items())
    expected = genesis.header().state_root
    if commit.state_root != expected:
        raise StateRootMismatch(0, expected, commit.state_root)
    kv.write(commit.puts)
    return commit


def replay_blocks(genesis: Genesis, blocks: Iterable[Block], *, kv: KV | None = None, verify: bool = False,
                  sender_of: Callable[[int, SignedTransaction], bytes] | None = None) -> list[Hash32]:
    """Execute ``blocks`` (heights 1, 2, ... in order) from a fresh genesis state.

    Returns the state root after each block (``roots[i]`` belongs to
    ``blocks[i]``). With ``verify`` a block whose header disagrees raises
    :class:`StateRootMismatch` / :class:`ReceiptsRootMismatch`. ``kv`` (default:
    a fresh MemoryKV) receives the state.
    """
    store: KV = kv if kv is not None else MemoryKV()
    commit = init_genesis_state(store, genesis)
    cache = AccountCache(commit.state_root)
    state = StateDB(store, commit.state_root, nodes=NodeStore(store), cache=cache)
    roots: list[Hash32] = []
    for block in blocks:
        senders = None if sender_of is None else [sender_of(i, tx) for i, tx in enumerate(block.transactions)]
        result = execute_block(state, block, senders, chain_id=genesis.chain_id)
        if verify:
            verify_result(block, result)
        store.write(result.commit.puts)
        state.after_write(result.commit)
        roots.append(result.state_root)
    return roots

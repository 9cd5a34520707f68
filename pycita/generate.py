"""Chain generator: fill a node directory with a real, valid chain, fast (``pycita generate``).

::

    pycita generate test-chain/0 --accounts 1000000 --blocks 100000 --contracts 100 --slots 100000

Works on a stopped node directory made by ``pycita create`` (any height, as
long as its chain and executor stores agree). It appends blocks on top of the
tip through the *same code the services run*:

* proposals are built as the consensus engine builds them (parent hash,
  ``number``, timestamp ``max(now_ms, parent + 1)``, parent proof, proposer
  ``validators[h % n]``, transactions root);
* they are executed by :class:`services.executor.executor.Executor` exactly as
  on ``consensus.block_proposal`` (:meth:`Executor.execute_proposal`: decode,
  :func:`pycita.execution.execute_block` on the tip state, result and sealed
  header kept pending) and committed as on ``chain.new_block``
  (:meth:`Executor.on_chain_block`: state puts, per-height entry, full header
  and tip in one batch);
* the final header is signed by a quorum of the genesis validators
  (:func:`pycita.proof.sign_vote`, :class:`pycita.proof.QuorumCert`; keys from
  this node's ``privkey`` and its sibling node directories) and handed to
  :meth:`services.chain.chain.Chain.verify` — every check the chain service runs
  on ``block_with_proof`` (parent, parent proof, proof, transactions root,
  receipts root, tx keys) — then stored with :meth:`ChainStore.write_block`.

What the chain holds (one stream of signed transactions, spread evenly over
``--blocks`` blocks, at most ``--txs-per-block`` a block and within the block
quota limit):

1. one TRANSFER per new account, from the funded genesis accounts
   (``accounts.json``) to deterministic fresh addresses
   (``keccak("pycita-generate" | seed | i)[12:]``);
2. ``--contracts`` DEPLOYs (a few distinct codes, so the snapshot's blob dedupe
   is exercised) each followed by a SET_ABI from its deployer;
3. STOREs writing ``--slots`` 32-byte storage slots spread round-robin over
   the contracts (up to 200 pairs a transaction).

Shortcuts, and why they keep the chain genuine:

* transactions are encoded with the fast RLP helpers of :mod:`pycita.state`
  rather than ``rlp.Serializable`` (same bytes: the chain hashes the raw bytes
  and checks every receipt names ``keccak(raw tx)``; replay decodes them);
* the executor is given the senders (as the node's auth forwards them in
  ``BlockProposal.senders``) instead of recovering each signature (the
  generator just signed them; ``--verify-senders`` recovers them anyway, and
  any replay — ``snapshot_bench`` runs one — recovers every signature);
* chain writes are not fsynced per block (``sync=False``); the stores are
  closed cleanly at the end (a crash mid-generation leaves a consistent prefix
  in each store, but the two may differ by a block: the executor catches up).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import coincurve
import rlp

from pycita.config import NodeConfig, load_node_config
from pycita.crypto import Address, PrivateKey, keccak
from pycita.errors import PycitaError
from pycita.genesis import Genesis
from pycita.proof import QuorumCert, quorum_size, sign_vote
from pycita.quota import intrinsic_quota
from pycita.state import rlp_bytes, rlp_int, rlp_list
from pycita.storage import LevelDB
from pycita.types import ZERO_HASH, Action, Header, contract_address, ordered_root

log = logging.getLogger(__name__)

__all__ = ["GenerateError", "GenerateParams", "GenerateReport", "generate", "account_address"]

MAX_STORE_PAIRS = 200
"""Storage pairs per STORE transaction."""
TRANSFER_QUOTA = 21_000
VALID_FOR = 50
"""``valid_until_block = number + VALID_FOR`` (auth accepts (tip, tip + 100])."""
CODES = 4
"""Distinct contract codes (contracts reuse them: dedupe by hash in the snapshot)."""


class GenerateError(PycitaError):
    """Raised when a node directory cannot be generated into (running node, missing keys, bad sizes, ...)."""


@dataclass(frozen=True)
class GenerateParams:
    accounts: int = 1000
    blocks: int = 100
    contracts: int = 0
    slots: int = 0
    txs_per_block: int = 5000
    seed: int = 1
    verify_senders: bool = False


@dataclass(frozen=True)
class GenerateReport:
    node_dir: str
    start_height: int
    height: int
    block_hash: str
    state_root: str
    blocks: int
    transactions: int
    accounts_created: int
    contracts: int
    slots: int
    seconds: float
    signing_seconds: float
    execute_seconds: float
    chain_seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Tx:
    """A signed transaction: its fields and raw RLP (the bytes of :class:`pycita.types.SignedTransaction`)."""

    __slots__ = ("chain_id", "nonce", "valid_until_block", "quota", "to", "value", "action", "data",
                 "signature", "_cached_rlp")

    def __init__(self, chain_id: int, nonce: int, valid_until_block: int, quota: int, to: bytes, value: int,
                 action: int, data: bytes, signature: bytes, raw: bytes) -> None:
        self.chain_id = chain_id
        self.nonce = nonce
        self.valid_until_block = valid_until_block
        self.quota = quota
        self.to = to
        self.value = value
        self.action = action
        self.data = data
        self.signature = signature
        self._cached_rlp = raw

    @property
    def hash(self) -> bytes:
        return keccak(self._cached_rlp)


def sign_tx(signer: coincurve.PrivateKey, chain_id: int, nonce: int, valid_until_block: int, quota: int, to: bytes,
            value: int, action: int, data: bytes) -> _Tx:
    """Sign a transaction (the encoding of :class:`pycita.types.SignedTransaction`)."""
    items = [rlp_int(chain_id), rlp_int(nonce), rlp_int(valid_until_block), rlp_int(quota), rlp_bytes(to),
             rlp_int(value), rlp_int(action), rlp_bytes(data)]
    sig = bytes(signer.sign_recoverable(keccak(rlp_list(items)), hasher=None))
    items.append(rlp_bytes(sig))
    return _Tx(chain_id, nonce, valid_until_block, quota, to, value, action, data, sig, rlp_list(items))


def account_address(seed: int, index: int) -> Address:
    """The ``index``-th generated account address for ``seed``."""
    return Address(keccak(b"pycita-generate" + seed.to_bytes(8, "big") + index.to_bytes(8, "big"))[12:])


def _code(i: int) -> bytes:
    body = keccak(b"pycita-code" + i.to_bytes(4, "big")) * (4 + 4 * i)
    return b"\x60\x80\x60\x40\x52" + body  # 133..517 bytes


def _abi(i: int) -> bytes:
    return json.dumps([{"type": "function", "name": f"f{i}", "inputs": [{"name": "x", "type": "uint256"}]}]).encode()


def _slot(seed: int, i: int) -> tuple[bytes, bytes]:
    k = keccak(b"pycita-slot" + seed.to_bytes(8, "big") + i.to_bytes(8, "big"))
    return k, keccak(k)


@dataclass
class _Plan:
    """An abstract transaction before signing: (sender index, action, to, value, data)."""

    sender: int
    action: int
    to: bytes
    value: int
    data: bytes


def _plan(params: GenerateParams, senders: Sequence[bytes], nonces: list[int]) -> Iterator[_Plan]:
    """The stream of transactions (see the module docstring); ``nonces`` are the senders' account nonces."""
    n = len(senders)
    for i in range(params.accounts):
        yield _Plan(i % n, Action.TRANSFER, account_address(params.seed, i), 1_000_000 + i, b"")
    contracts: list[bytes] = []
    for c in range(params.contracts):
        s = c % n
        contracts.append(contract_address(senders[s], nonces[s]))  # nonce when the DEPLOY executes
        yield _Plan(s, Action.DEPLOY, b"", 0, _code(c % CODES))
        yield _Plan(s, Action.SET_ABI, contracts[-1], 0, _abi(c % CODES))
    if params.slots:
        per: list[list[tuple[bytes, bytes]]] = [[] for _ in contracts]
        t = 0
        for i in range(params.slots):
            ci = i % len(contracts)
            per[ci].append(_slot(params.seed, i))
            if len(per[ci]) == MAX_STORE_PAIRS:
                yield _Plan(t % n, Action.STORE, contracts[ci], 0, rlp.encode([list(p) for p in per[ci]]))
                per[ci] = []
                t += 1
        for ci, pairs in enumerate(per):
            if pairs:
                yield _Plan(t % n, Action.STORE, contracts[ci], 0, rlp.encode([list(p) for p in pairs]))
                t += 1


def _plan_count(params: GenerateParams) -> int:
    n = params.accounts + 2 * params.contracts
    if params.slots:
        per, rest = divmod(params.slots, params.contracts)
        n += sum(math.ceil((per + (1 if i < rest else 0)) / MAX_STORE_PAIRS) for i in range(params.contracts))
    return n


def _validator_keys(cfg: NodeConfig, genesis: Genesis) -> list[tuple[Address, PrivateKey]]:
    """(address, key) of a quorum of genesis validators: this node's key and its sibling node dirs'."""
    keys: dict[Address, PrivateKey] = {}
    candidates = [cfg.node_dir / "privkey"] + sorted(cfg.node_dir.parent.glob("*/privkey"))
    for path in candidates:
        try:
            key = PrivateKey.from_hex(path.read_text().strip())
        except (OSError, ValueError, PycitaError):
            continue
        if key.address in genesis.validators:
            keys[key.address] = key
    need = quorum_size(len(set(genesis.validators)))
    ordered = [(v, keys[v]) for v in dict.fromkeys(genesis.validators) if v in keys]
    if len(ordered) < need:
        raise GenerateError(f"found keys of {len(ordered)} genesis validators next to {cfg.node_dir}, "
                            f"a proof needs {need}")
    return ordered[:need]


def _funded_keys(cfg: NodeConfig, genesis: Genesis) -> list[PrivateKey]:
    from pycita.node import load_accounts

    funded = {a for a, bal in genesis.alloc if bal > 0}
    try:
        accounts = load_accounts(cfg.node_dir)
    except PycitaError as exc:
        raise GenerateError(f"the generator sends from the funded genesis accounts: {exc}") from exc
    keys = [a.key() for a in accounts]
    keys = [k for k in keys if k.address in funded]
    if not keys:
        raise GenerateError(f"no key in accounts.json next to {cfg.node_dir} is funded in the genesis")
    return keys


def generate(node_dir: str | Path, params: GenerateParams,
             progress: Callable[[int, int, int], None] | None = None) -> GenerateReport:
    """Append ``params.blocks`` blocks to the stopped node in ``node_dir``; see the module docstring.

    ``progress(height, blocks_done, txs_done)`` is called after each block.
    Raises :class:`GenerateError`.
    """
    from pycita import node as nodelib
    from services.chain.chain import BlockRejected, Chain
    from services.chain.chain import Tip as ChainTip
    from services.chain.rawrlp import join_list
    from services.chain.store import ChainStore
    from services.executor.executor import Executor

    if params.blocks < 1:
        raise GenerateError("--blocks must be at least 1")
    if min(params.accounts, params.contracts, params.slots) < 0:
        raise GenerateError("--accounts, --contracts and --slots must not be negative")
    if params.slots and not params.contracts:
        raise GenerateError("--slots needs at least one contract (--contracts)")
    if params.txs_per_block < 1:
        raise GenerateError("--txs-per-block must be at least 1")
    cfg = load_node_config(node_dir)
    if nodelib.is_running(cfg.node_dir):
        raise GenerateError(f"node {cfg.node_dir} is running; stop it first (pycita stop {cfg.node_dir})")
    genesis = Genesis.load(cfg.genesis_path)
    validators = _validator_keys(cfg, genesis)
    funded = _funded_keys(cfg, genesis)
    signers = [coincurve.PrivateKey(k.secret) for k in funded]
    sender_addrs = [k.address for k in funded]
    n_validators = len(genesis.validators)
    chain_id = genesis.chain_id

    total_txs = _plan_count(params)
    per_block = max(1, math.ceil(total_txs / params.blocks))
    if per_block > params.txs_per_block:
        raise GenerateError(f"{total_txs} transactions do not fit {params.blocks} blocks of at most "
                            f"{params.txs_per_block} (raise --txs-per-block or --blocks)")

    started = time.perf_counter()
    t_sign = t_exec = t_chain = 0.0
    chain_store = ChainStore(cfg.service_data("chain"))
    exec_db = LevelDB(cfg.service_data("executor"))
    try:
        chain = Chain(chain_store, genesis)
        executor = Executor(exec_db, genesis)
        if chain.tip.height != executor.tip.height or chain.tip.hash != executor.tip.block_hash:
            raise GenerateError(f"chain is at {chain.tip.height}, executor at {executor.tip.height}: start the node "
                                "once so the executor catches up, then stop it and generate")
        start_height = chain.tip.height
        state = executor.state_at(executor.tip.state_root)
        nonces = [state.nonce(a) for a in sender_addrs]
        tx_nonce = list(nonces)  # the tx nonce field: a per-sender counter, as clients use
        plan = _plan(params, sender_addrs, nonces)
        quota_limit = genesis.quota_limit
        done_txs = 0
        remaining = total_txs
        pending: _Plan | None = None
        b = -1
        while True:
            b += 1
            if b >= params.blocks and remaining <= 0:
                break
            # ``--blocks`` is a minimum: when the quota limit cuts blocks short (big STOREs), extra
            # blocks carry the rest instead of leaving transactions behind.
            tip = chain.tip
            number = tip.height + 1
            # -- transactions of this block (as auth hands them: within the quota limit)
            t0 = time.perf_counter()
            target = min(per_block, remaining)
            txs: list[_Tx] = []
            senders: list[bytes] = []
            used = 0
            while len(txs) < target:
                p = pending if pending is not None else next(plan, None)
                pending = None
                if p is None:
                    break
                quota = intrinsic_quota(p.action, p.data)
                if used + quota > quota_limit:
                    pending = p
                    break
                used += quota
                s = p.sender
                tx = sign_tx(signers[s], chain_id, tx_nonce[s], number + VALID_FOR, quota, p.to, p.value,
                             p.action, p.data)
                tx_nonce[s] += 1
                nonces[s] += 1
                txs.append(tx)
                senders.append(sender_addrs[s])
            remaining -= len(txs)
            if not txs and remaining > 0 and b >= params.blocks:
                raise GenerateError("a planned transaction needs more quota than a block allows "
                                    f"({quota_limit}); lower --slots per contract")
            # -- the proposal, as the consensus engine builds it
            header = Header(
                parent_hash=tip.hash, state_root=ZERO_HASH,
                transactions_root=ordered_root([keccak(tx._cached_rlp) for tx in txs]),
                receipts_root=ZERO_HASH, log_bloom=b"\x00" * 256, number=number, quota_limit=quota_limit,
                quota_used=0, timestamp=max(int(time.time() * 1000), tip.timestamp + 1), version=0,
                proof=b"" if tip.height == 0 else tip.proof,
                proposer=genesis.validators[number % n_validators])
            t1 = time.perf_counter()
            t_sign += t1 - t0
            # -- execution by the executor: the proposal message's path (pending result, nothing written)
            proposal_rlp = join_list([rlp.encode(header), rlp_list([tx._cached_rlp for tx in txs])])
            outcome = executor.execute_proposal(proposal_rlp, () if params.verify_senders else senders)
            result = outcome.result
            if result is None:
                raise GenerateError(f"block {number}: the executor refused the proposal: {outcome.error}")
            for r in result.receipt_rlps:
                fields = rlp.decode(r)
                if fields[2] != b"\x01":
                    raise GenerateError(f"block {number}: a generated transaction failed: {fields[6]!r}")
            header = header.copy(state_root=result.state_root, receipts_root=result.receipts_root,
                                 quota_used=result.quota_used, log_bloom=result.log_bloom)
            header_rlp = rlp.encode(header)
            block_hash = keccak(header_rlp)
            t2 = time.perf_counter()
            t_exec += t2 - t1
            # -- votes, quorum proof, the chain's checks and its one-batch write
            qc = QuorumCert(number, 0, block_hash,
                            tuple((addr, sign_vote(key, chain_id, number, 0, block_hash)) for addr, key in validators))
            proof = qc.to_proof_bytes()
            block_rlp = join_list([header_rlp, rlp_list([tx._cached_rlp for tx in txs])])
            try:
                prepared, _hdr = chain.verify(block_rlp, proof, list(result.receipt_rlps))
            except BlockRejected as exc:
                raise GenerateError(f"the chain rejects generated block {number}: {exc}") from exc
            assert prepared is not None
            chain_store.write_block(prepared, sync=False)
            chain.tip = ChainTip(number, prepared.hash, header.state_root, header.timestamp, proof)
            t3 = time.perf_counter()
            t_chain += t3 - t2
            # -- chain.new_block / rich_status: the executor commits the matching pending result
            #    (state puts, its per-height keys and sealed header, tip: one batch)
            if executor.on_chain_block(number, block_hash, header.state_root) is not None \
                    or executor.tip.height != number or executor.tip.block_hash != block_hash:
                raise GenerateError(f"the executor did not commit block {number} on the chain's announcement")
            t_exec += time.perf_counter() - t3
            done_txs += len(txs)
            if progress is not None:
                progress(number, b + 1, done_txs)
        if pending is not None or next(plan, None) is not None:
            raise GenerateError("internal: transactions left over after the last block")
        tip = chain.tip
        report = GenerateReport(
            node_dir=str(cfg.node_dir), start_height=start_height, height=tip.height,
            block_hash="0x" + tip.hash.hex(), state_root="0x" + tip.state_root.hex(), blocks=chain.tip.height - start_height,
            transactions=done_txs, accounts_created=params.accounts, contracts=params.contracts,
            slots=params.slots, seconds=round(time.perf_counter() - started, 3),
            signing_seconds=round(t_sign, 3), execute_seconds=round(t_exec, 3), chain_seconds=round(t_chain, 3))
    finally:
        chain_store.close()
        exec_db.close()
    log.info("generated %s blocks (%s txs) into %s in %.1f s", report.blocks, report.transactions, node_dir,
             report.seconds)
    return report

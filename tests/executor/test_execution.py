"""Block execution: each action's effects and failures, receipts, determinism, replay."""

from __future__ import annotations

import random

import pytest
import rlp
from hypothesis import example, given, settings
from hypothesis import strategies as st
from trie import HexaryTrie

from pycita.crypto import EMPTY_KECCAK, PrivateKey, keccak
from pycita.execution import (
    ExecutionError,
    ExecutionResult,
    StateRootMismatch,
    execute_block,
    init_genesis_state,
    recover_sender,
    replay_blocks,
    tx_hash,
)
from pycita.genesis import Genesis
from pycita.state import StateDB
from pycita.storage import MemoryKV
from pycita.types import (
    BLANK_ROOT,
    EMPTY_BLOOM,
    ZERO_ADDRESS,
    ZERO_HASH,
    Account,
    Action,
    Block,
    Header,
    Receipt,
    SignedTransaction,
    Transaction,
    contract_address,
    ordered_root,
    sign_transaction,
)

CHAIN_ID = 7
KEYS = [PrivateKey(bytes([i + 1]) * 32) for i in range(4)]
ALICE, BOB, CAROL, DAVE = KEYS
FUNDS = 10**21
GENESIS = Genesis(CHAIN_ID, 1_700_000_000_000, 10**9, (ALICE.address,),
                  tuple(sorted((k.address, FUNDS) for k in KEYS[:3])))
STRANGER = b"\x5a" * 20


def tx(key: PrivateKey, action: Action = Action.TRANSFER, to: bytes = b"", value: int = 0, data: bytes = b"",
       quota: int = 10**7, nonce: int = 0, chain_id: int = CHAIN_ID, valid_until: int = 100) -> SignedTransaction:
    return sign_transaction(Transaction(chain_id, nonce, valid_until, quota, to, value, int(action), data), key)


def block(number: int, txs: list[SignedTransaction], quota_limit: int = 10**9) -> Block:
    header = Header(ZERO_HASH, ZERO_HASH, ZERO_HASH, ZERO_HASH, EMPTY_BLOOM, number, quota_limit, 0, number, 0, b"",
                    ZERO_ADDRESS)
    return Block(header, txs)


def fresh_state() -> tuple[MemoryKV, StateDB]:
    kv = MemoryKV()
    commit = init_genesis_state(kv, GENESIS)
    return kv, StateDB(kv, commit.state_root)


def run(txs: list[SignedTransaction], number: int = 1, quota_limit: int = 10**9,
        state: tuple[MemoryKV, StateDB] | None = None) -> tuple[StateDB, ExecutionResult]:
    kv, st_ = state or fresh_state()
    result = execute_block(st_, block(number, txs, quota_limit), chain_id=CHAIN_ID)
    kv.write(result.commit.puts)
    st_.after_write(result.commit)
    return st_, result


def only_receipt(result: ExecutionResult) -> Receipt:
    (receipt,) = result.receipts
    return receipt


# ----------------------------------------------------------------------------- transfers

def test_a_transfer_moves_value_bumps_the_nonce_and_succeeds() -> None:
    state, result = run([tx(ALICE, to=STRANGER, value=123)])
    assert state.balance(ALICE.address) == FUNDS - 123
    assert state.balance(STRANGER) == 123
    assert state.nonce(ALICE.address) == 1
    receipt = only_receipt(result)
    assert (receipt.status, receipt.quota_used, receipt.cumulative_quota_used, receipt.error) == (1, 21_000, 21_000,
                                                                                                b"")
    assert receipt.sender == ALICE.address and receipt.contract_address == b""
    assert result.quota_used == 21_000 and result.log_bloom == EMPTY_BLOOM


def test_a_transfer_beyond_the_balance_fails_but_still_bumps_the_nonce() -> None:
    state, result = run([tx(DAVE, to=STRANGER, value=1)])
    receipt = only_receipt(result)
    assert receipt.status == 0 and b"insufficient balance" in receipt.error
    assert state.nonce(DAVE.address) == 1 and state.balance(STRANGER) == 0


def test_a_transfer_without_a_to_address_fails() -> None:
    _, result = run([tx(ALICE, to=b"", value=1)])
    assert only_receipt(result).status == 0


def test_a_transfer_to_oneself_keeps_the_balance() -> None:
    state, result = run([tx(ALICE, to=ALICE.address, value=5)])
    assert only_receipt(result).status == 1 and state.balance(ALICE.address) == FUNDS


# ----------------------------------------------------------------------------- deploy / abi

def test_a_deploy_creates_a_contract_at_the_sender_nonce_address() -> None:
    state, result = run([tx(ALICE, to=STRANGER, value=1), tx(ALICE, Action.DEPLOY, value=9, data=b"\x60\x01")])
    receipt = result.receipts[1]
    addr = contract_address(ALICE.address, 1)
    assert receipt.status == 1 and receipt.contract_address == addr
    assert receipt.quota_used == 21_000 + 200 * 2
    assert state.code(addr) == b"\x60\x01" and state.balance(addr) == 9 and state.is_contract(addr)
    assert state.nonce(addr) == 2


def test_a_deploy_with_empty_code_or_a_to_address_fails() -> None:
    state, result = run([tx(ALICE, Action.DEPLOY, data=b""), tx(ALICE, Action.DEPLOY, to=STRANGER, data=b"c")])
    assert [r.status for r in result.receipts] == [0, 0]
    assert all(r.contract_address == b"" for r in result.receipts)
    assert not state.is_contract(contract_address(ALICE.address, 0))
    assert state.nonce(ALICE.address) == 2


def test_only_the_deployer_may_set_the_abi() -> None:
    addr = contract_address(ALICE.address, 1)
    state, result = run([
        tx(ALICE, to=STRANGER, value=1),
        tx(ALICE, Action.DEPLOY, data=b"code"),
        tx(BOB, Action.SET_ABI, to=addr, data=b"bob's abi"),
        tx(ALICE, Action.SET_ABI, to=addr, value=1, data=b"with value"),
        tx(ALICE, Action.SET_ABI, to=addr, data=b"[abi]"),
    ])
    assert [r.status for r in result.receipts] == [1, 1, 0, 0, 1]
    assert b"deployer" in result.receipts[2].error
    assert state.abi(addr) == b"[abi]"
    assert state.nonce(addr) == 2  # the deployer's nonce at the deploy, plus one
    assert result.receipts[4].quota_used == 21_000 + 10 * len(b"[abi]")
    state, result = run([tx(ALICE, Action.SET_ABI, to=addr, data=b"[v2]")], number=2,
                        state=(state.kv, state))  # type: ignore[arg-type]
    assert only_receipt(result).status == 1 and state.abi(addr) == b"[v2]"


def test_set_abi_on_a_non_contract_fails() -> None:
    _, result = run([tx(ALICE, Action.SET_ABI, to=STRANGER, data=b"abi")])
    assert only_receipt(result).status == 0 and b"not a contract" in only_receipt(result).error


# ----------------------------------------------------------------------------- store

def test_store_writes_and_deletes_contract_storage() -> None:
    addr = contract_address(ALICE.address, 0)
    data1 = rlp.encode([[b"k1", b"v1"], [b"k2", b"v2"]])
    state, result = run([tx(ALICE, Action.DEPLOY, data=b"c"), tx(BOB, Action.STORE, to=addr, data=data1)])
    assert result.receipts[1].status == 1
    assert result.receipts[1].quota_used == 21_000 + 2 * 20_000 + 10 * 4
    assert state.storage(addr, b"k1") == b"v1" and state.storage(addr, b"k2") == b"v2"
    kv = state.kv
    state, result = run([tx(BOB, Action.STORE, to=addr, data=rlp.encode([[b"k1", b""]]))], number=2,
                        state=(kv, state))  # type: ignore[arg-type]
    assert result.receipts[0].status == 1
    assert state.storage(addr, b"k1") == b"" and state.storage(addr, b"k2") == b"v2"


@pytest.mark.parametrize("data", [b"\xff\x00", rlp.encode(b"notalist"), rlp.encode([[b"k"]]),
                                  rlp.encode([[b"", b"v"]]), rlp.encode([[b"k" * 65, b"v"]])])
def test_store_with_malformed_data_fails_and_writes_nothing(data: bytes) -> None:
    addr = contract_address(ALICE.address, 0)
    state, result = run([tx(ALICE, Action.DEPLOY, data=b"c"), tx(BOB, Action.STORE, to=addr, data=data)])
    assert result.receipts[1].status == 0
    assert state.get_account(addr)[2] == BLANK_ROOT


def test_store_into_a_non_contract_fails() -> None:
    _, result = run([tx(ALICE, Action.STORE, to=STRANGER, data=rlp.encode([[b"k", b"v"]]))])
    assert only_receipt(result).status == 0 and b"not a contract" in only_receipt(result).error


def test_a_failed_store_reverts_its_value_transfer() -> None:
    addr = contract_address(ALICE.address, 0)
    state, result = run([tx(ALICE, Action.DEPLOY, data=b"c"),
                         tx(BOB, Action.STORE, to=addr, value=5, data=b"\xff")])
    assert result.receipts[1].status == 0
    assert state.balance(addr) == 0 and state.balance(BOB.address) == FUNDS and state.nonce(BOB.address) == 1


# ----------------------------------------------------------------------------- quota, chain id, expiry

def test_quota_below_the_intrinsic_fails_using_all_of_it() -> None:
    state, result = run([tx(ALICE, to=STRANGER, value=1, quota=20_000)])
    receipt = only_receipt(result)
    assert receipt.status == 0 and receipt.quota_used == 20_000 and b"intrinsic" in receipt.error
    assert state.balance(STRANGER) == 0 and state.nonce(ALICE.address) == 1


def test_transactions_past_the_block_quota_limit_fail_using_no_quota() -> None:
    _, result = run([tx(ALICE, to=STRANGER, value=1), tx(BOB, to=STRANGER, value=1)], quota_limit=30_000)
    assert [r.status for r in result.receipts] == [1, 0]
    assert [r.quota_used for r in result.receipts] == [21_000, 0]
    assert result.quota_used == 21_000


def test_a_transaction_of_another_chain_or_expired_fails() -> None:
    _, result = run([tx(ALICE, to=STRANGER, value=1, chain_id=CHAIN_ID + 1),
                     tx(ALICE, to=STRANGER, value=1, valid_until=4)], number=5)
    assert [r.status for r in result.receipts] == [0, 0]
    assert b"chain id" in result.receipts[0].error and b"expired" in result.receipts[1].error


# ----------------------------------------------------------------------------- receipts, hashes, senders

def test_receipts_root_is_the_ordered_root_of_the_receipt_rlps() -> None:
    txs = [tx(ALICE, to=STRANGER, value=1), tx(DAVE, to=STRANGER, value=1), tx(BOB, to=STRANGER, value=2)]
    _, result = run(txs)
    assert result.receipts_root == ordered_root(list(result.receipt_rlps))
    assert [rlp.encode(r) for r in result.receipts] == list(result.receipt_rlps)
    assert [r.tx_hash for r in result.receipts] == [t.hash for t in txs]
    assert [r.cumulative_quota_used for r in result.receipts] == [21_000, 42_000, 63_000]


def test_fast_tx_hash_and_sender_recovery_match_the_types_module() -> None:
    for t in [tx(ALICE, to=STRANGER, value=10**30, data=b"x" * 100), tx(BOB, Action.DEPLOY, data=b"")]:
        assert tx_hash(t) == t.hash
        assert recover_sender(t) == t.sender()


def test_an_unrecoverable_signature_fails_the_whole_block() -> None:
    good = tx(ALICE, to=STRANGER, value=1)
    bad = SignedTransaction(*[getattr(good, f) for f, _ in Transaction._meta.fields], b"\x00" * 64 + b"\x05")
    kv, state = fresh_state()
    with pytest.raises(ExecutionError):
        execute_block(state, block(1, [good, bad]))


def test_precomputed_senders_give_the_same_result() -> None:
    txs = [tx(ALICE, to=STRANGER, value=1), tx(BOB, Action.DEPLOY, data=b"c")]
    _, a = run(txs)
    kv, state = fresh_state()
    b = execute_block(state, block(1, txs), [ALICE.address, BOB.address], chain_id=CHAIN_ID)
    assert (a.state_root, a.receipts_root) == (b.state_root, b.receipts_root)
    with pytest.raises(ExecutionError):
        execute_block(fresh_state()[1], block(1, txs), [ALICE.address], chain_id=CHAIN_ID)


# ----------------------------------------------------------------------------- determinism and replay

def random_blocks(seed: int, count: int) -> list[Block]:
    rng = random.Random(seed)
    contracts: list[bytes] = []
    nonces = {k.address: 0 for k in KEYS}
    blocks = []
    for number in range(1, count + 1):
        txs = []
        for _ in range(rng.randrange(0, 12)):
            key = rng.choice(KEYS)
            kind = rng.random()
            if kind < 0.5 or not contracts:
                if kind < 0.1:
                    txs.append(tx(key, Action.DEPLOY, data=rng.randbytes(rng.randrange(1, 20)), nonce=number))
                    contracts.append(contract_address(key.address, nonces[key.address]))
                else:
                    txs.append(tx(key, to=rng.choice([STRANGER] + [k.address for k in KEYS]),
                                  value=rng.randrange(0, 10**18), valid_until=number + 10))
            elif kind < 0.8:
                pairs = [[rng.randbytes(rng.randrange(1, 4)), rng.choice([b"", rng.randbytes(5)])]
                         for _ in range(rng.randrange(1, 4))]
                txs.append(tx(key, Action.STORE, to=rng.choice(contracts), data=rlp.encode(pairs),
                              valid_until=number + 10))
            else:
                txs.append(tx(key, Action.SET_ABI, to=rng.choice(contracts), data=rng.randbytes(10),
                              valid_until=number + 10))
            nonces[key.address] += 1
        blocks.append(block(number, txs))
    return blocks


def test_two_executors_reach_the_same_roots_on_the_same_blocks() -> None:
    blocks = random_blocks(3, 8)
    first = replay_blocks(GENESIS, blocks)
    second = replay_blocks(GENESIS, blocks, kv=MemoryKV())
    assert first == second and len(first) == 8
    assert len(set(first)) > 1


def test_replay_blocks_verifies_headers_and_names_the_bad_height() -> None:
    blocks = random_blocks(5, 4)
    roots = replay_blocks(GENESIS, blocks)
    sealed = []
    kv, state = fresh_state()
    for b, root in zip(blocks, roots, strict=True):
        result = execute_block(state, b, chain_id=CHAIN_ID)
        kv.write(result.commit.puts)
        state.after_write(result.commit)
        assert result.state_root == root
        sealed.append(Block(b.header.copy(state_root=root, receipts_root=result.receipts_root), b.transactions))
    assert replay_blocks(GENESIS, sealed, verify=True) == roots
    broken = list(sealed)
    broken[2] = Block(sealed[2].header.copy(state_root=b"\x01" * 32), sealed[2].transactions)
    with pytest.raises(StateRootMismatch) as info:
        replay_blocks(GENESIS, broken, verify=True)
    assert info.value.height == 3 and info.value.expected == b"\x01" * 32


# ----------------------------------------------------------------------------- reference roots

def reference_state_root(accounts: dict[bytes, list]) -> bytes:
    """py-trie HexaryTrie root of [nonce, balance, {storage}, code, abi] per address (empty ones absent)."""
    state = HexaryTrie({})
    for addr, (nonce, balance, storage, code, abi) in accounts.items():
        if nonce == balance == 0 and not code and not abi and not any(storage.values()):
            continue
        storage_trie = HexaryTrie({})
        for key, value in storage.items():
            if value:
                storage_trie[key] = value
        state[addr] = rlp.encode(Account(nonce, balance, storage_trie.root_hash, keccak(code) if code else
                                         EMPTY_KECCAK, keccak(abi)))
    return state.root_hash


workload = st.lists(
    st.tuples(st.integers(0, 3), st.sampled_from(["transfer", "store"]), st.integers(0, 3),
              st.integers(0, 2 * FUNDS), st.lists(st.tuples(st.binary(min_size=1, max_size=3),
                                                            st.binary(max_size=4)), max_size=3)),
    max_size=15,
)


@settings(max_examples=25, deadline=None)
@given(workload)
@example([(0, "transfer", 3, 0, []), (3, "store", 0, 0, [(b"k", b"v"), (b"k", b"")])])
def test_random_workloads_match_a_py_trie_reference_model(ops: list[tuple]) -> None:
    contract = contract_address(ALICE.address, 0)
    model: dict[bytes, list] = {k.address: [0, FUNDS, {}, b"", b""] for k in KEYS[:3]}
    model[ALICE.address][0] = 1
    model[contract] = [1, 0, {}, b"code", b""]
    txs = [tx(ALICE, Action.DEPLOY, data=b"code")]
    targets = [k.address for k in KEYS[:3]] + [STRANGER]
    for sender_i, kind, target_i, value, pairs in ops:
        key = KEYS[sender_i]
        sender = model.setdefault(key.address, [0, 0, {}, b"", b""])
        sender[0] += 1
        if kind == "transfer":
            to = targets[target_i]
            txs.append(tx(key, to=to, value=value))
            if sender[1] >= value:
                sender[1] -= value
                model.setdefault(to, [0, 0, {}, b"", b""])[1] += value
        else:
            txs.append(tx(key, Action.STORE, to=contract, data=rlp.encode([list(p) for p in pairs])))
            model[contract][2].update(dict(pairs))
    _, result = run(txs)
    assert result.state_root == reference_state_root(model)

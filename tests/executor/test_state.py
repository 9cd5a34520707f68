"""Account state over the MPT: reads, writes, checkpoints, commits, roots equal py-trie's."""

from __future__ import annotations

import rlp
from hypothesis import given, settings
from hypothesis import strategies as st
from trie import HexaryTrie

from pycita.crypto import EMPTY_KECCAK, Address, keccak
from pycita.genesis import Genesis
from pycita.state import (
    EMPTY_TUPLE,
    AccountCache,
    InsufficientBalance,
    NodeStore,
    StateDB,
    StateError,
    encode_account,
    genesis_commit,
    rlp_bytes,
    rlp_int,
    rlp_list,
)
from pycita.state_schema import abi_key, code_key, node_key
from pycita.storage import MemoryKV
from pycita.trie import BLANK_ROOT
from pycita.types import Account

A = Address(b"\x0a" * 20)
B = Address(b"\x0b" * 20)
C = Address(b"\x0c" * 20)


def committed(kv: MemoryKV, state: StateDB) -> bytes:
    commit = state.commit()
    kv.write(commit.puts)
    state.after_write(commit)
    return commit.state_root


def reference_root(accounts: dict[bytes, tuple[int, int, dict[bytes, bytes], bytes, bytes]]) -> bytes:
    """State root by py-trie's HexaryTrie: address -> [nonce, balance, storage_root, code_hash, abi_hash]."""
    state = HexaryTrie({})
    for addr, (nonce, balance, storage, code, abi) in accounts.items():
        storage_trie = HexaryTrie({})
        for key, value in storage.items():
            if value:
                storage_trie[key] = value
        acct = Account(nonce, balance, storage_trie.root_hash, keccak(code), keccak(abi))
        if (nonce, balance, storage_trie.root_hash, keccak(code), keccak(abi)) != EMPTY_TUPLE:
            state[addr] = rlp.encode(acct)
    return state.root_hash


def test_an_empty_state_has_the_blank_root_and_empty_accounts() -> None:
    state = StateDB(MemoryKV())
    assert state.root == BLANK_ROOT
    assert state.get_account(A) == EMPTY_TUPLE
    assert state.account(A) is None
    assert state.balance(A) == 0 and state.nonce(A) == 0
    assert state.code(A) == b"" and state.abi(A) == b"" and state.storage(A, b"k") == b""
    assert state.commit().state_root == BLANK_ROOT


def test_fast_rlp_helpers_match_pyrlp() -> None:
    for n in (0, 1, 0x7F, 0x80, 255, 256, 2**64, 10**30):
        assert rlp_int(n) == rlp.encode(n)
    for b in (b"", b"\x00", b"\x7f", b"\x80", b"x" * 55, b"x" * 56, b"y" * 1000):
        assert rlp_bytes(b) == rlp.encode(b)
    items = [b"a" * 40, b"b" * 40]
    assert rlp_list([rlp_bytes(i) for i in items]) == rlp.encode(items)
    acct = (7, 10**20, BLANK_ROOT, EMPTY_KECCAK, keccak(b"abi"))
    assert encode_account(acct) == rlp.encode(Account(*acct))


def test_writes_are_visible_before_commit_and_after_reopening() -> None:
    kv = MemoryKV()
    state = StateDB(kv)
    state.add_balance(A, 100)
    state.increment_nonce(A)
    state.set_code(B, b"code")
    state.set_abi(B, b"abi")
    state.set_storage(B, b"k1", b"v1")
    assert (state.balance(A), state.nonce(A), state.code(B), state.abi(B), state.storage(B, b"k1")) == (
        100, 1, b"code", b"abi", b"v1")
    root = committed(kv, state)
    again = StateDB(kv, root)
    assert again.balance(A) == 100 and again.nonce(A) == 1
    assert again.code(B) == b"code" and again.abi(B) == b"abi" and again.storage(B, b"k1") == b"v1"
    assert kv.get(code_key(keccak(b"code"))) == b"code"
    assert kv.get(abi_key(keccak(b"abi"))) == b"abi"
    assert kv.get(node_key(root)) is not None
    assert list(again.storage_items(B)) == [(b"k1", b"v1")]
    assert [a for a, _ in again.account_items()] == [A, B]


def test_root_equals_py_trie_reference_for_a_simple_state() -> None:
    kv = MemoryKV()
    state = StateDB(kv)
    state.add_balance(A, 5)
    state.set_code(C, b"\x60\x00")
    state.update_storage(C, [(b"a", b"1"), (b"ab", b"2"), (b"b" * 40, b"3" * 70)])
    root = committed(kv, state)
    assert root == reference_root({A: (0, 5, {}, b"", b""),
                                   C: (0, 0, {b"a": b"1", b"ab": b"2", b"b" * 40: b"3" * 70}, b"\x60\x00", b"")})


def test_an_empty_storage_value_deletes_the_key() -> None:
    kv = MemoryKV()
    state = StateDB(kv)
    state.set_code(C, b"c")
    state.set_storage(C, b"k", b"v")
    committed(kv, state)
    state.set_storage(C, b"k", b"")
    root = committed(kv, state)
    assert StateDB(kv, root).storage(C, b"k") == b""
    assert StateDB(kv, root).get_account(C)[2] == BLANK_ROOT


def test_revert_to_a_checkpoint_undoes_account_and_storage_changes_after_it() -> None:
    kv = MemoryKV()
    state = StateDB(kv)
    state.add_balance(A, 50)
    state.set_code(C, b"c")
    state.set_storage(C, b"k", b"old")
    cp = state.checkpoint()
    state.increment_nonce(A)
    state.sub_balance(A, 20)
    state.add_balance(B, 20)
    state.set_storage(C, b"k", b"new")
    state.set_storage(C, b"other", b"x")
    state.revert_to(cp)
    assert state.balance(A) == 50 and state.nonce(A) == 0 and state.balance(B) == 0
    assert state.storage(C, b"k") == b"old" and state.storage(C, b"other") == b""
    root = committed(kv, state)
    assert root == reference_root({A: (0, 50, {}, b"", b""), C: (0, 0, {b"k": b"old"}, b"c", b"")})


def test_a_debit_beyond_the_balance_raises_and_changes_nothing() -> None:
    state = StateDB(MemoryKV())
    state.add_balance(A, 10)
    try:
        state.sub_balance(A, 11)
    except InsufficientBalance as exc:
        assert exc.balance == 10 and exc.amount == 11
    else:
        raise AssertionError("expected InsufficientBalance")
    assert state.balance(A) == 10


def test_accounts_left_empty_are_not_stored() -> None:
    kv = MemoryKV()
    state = StateDB(kv)
    state.add_balance(A, 0)
    state.transfer(B, B, 0)
    assert committed(kv, state) == BLANK_ROOT


def test_old_roots_stay_readable_after_newer_commits() -> None:
    kv = MemoryKV()
    state = StateDB(kv, nodes=NodeStore(kv), cache=AccountCache())
    roots = []
    for i in range(1, 6):
        state.add_balance(A, i)
        state.set_code(C, b"c")
        state.set_storage(C, i.to_bytes(1, "big"), b"v%d" % i)
        roots.append(committed(kv, state))
    for i, root in enumerate(roots, 1):
        old = StateDB(kv, root)
        assert old.balance(A) == sum(range(1, i + 1))
        assert old.storage(C, i.to_bytes(1, "big")) == b"v%d" % i
        assert old.storage(C, (i + 1).to_bytes(1, "big")) == b""


def test_a_shared_account_cache_follows_commits_and_is_ignored_at_other_roots() -> None:
    kv = MemoryKV()
    cache = AccountCache()
    nodes = NodeStore(kv)
    first = StateDB(kv, nodes=nodes, cache=cache)
    first.add_balance(A, 7)
    root1 = committed(kv, first)
    assert cache.root == root1 and cache.accounts[A] is not None
    second = StateDB(kv, root1, nodes=nodes, cache=cache)
    assert second.balance(A) == 7
    second.add_balance(A, 1)
    pending = second.commit()  # never written: the cache must stay at root1
    assert cache.root == root1
    assert StateDB(kv, root1, nodes=nodes, cache=cache).balance(A) == 7
    assert StateDB(kv, BLANK_ROOT, nodes=nodes, cache=cache).balance(A) == 0
    assert pending.parent_root == root1


def test_a_missing_node_is_a_state_error() -> None:
    state = StateDB(MemoryKV(), b"\x01" * 32)
    try:
        state.balance(A)
    except StateError:
        pass
    else:
        raise AssertionError("expected StateError")


def test_genesis_commit_root_equals_the_genesis_header_state_root() -> None:
    genesis = Genesis(1, 0, 10**9, (A,), ((A, 10), (B, 20), (C, 30)))
    commit = genesis_commit(genesis.state_items())
    assert commit.state_root == genesis.header().state_root
    assert commit.state_root == reference_root({A: (0, 10, {}, b"", b""), B: (0, 20, {}, b"", b""),
                                                C: (0, 30, {}, b"", b"")})


addresses = st.sampled_from([bytes([i]) * 20 for i in range(1, 9)] + [b"\x01" * 19 + b"\x02"])
storage_keys = st.binary(min_size=1, max_size=6)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("credit"), addresses, st.integers(0, 10**20)),
        st.tuples(st.just("nonce"), addresses, st.just(0)),
        st.tuples(st.just("code"), addresses, st.binary(max_size=40)),
        st.tuples(st.just("abi"), addresses, st.binary(max_size=40)),
        st.tuples(st.just("store"), addresses, st.tuples(storage_keys, st.binary(max_size=40))),
        st.tuples(st.just("commit"), addresses, st.just(0)),
        st.tuples(st.just("checkpoint_revert"), addresses, st.integers(0, 5)),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(operations)
def test_random_workloads_give_the_py_trie_reference_root(ops: list[tuple[str, bytes, object]]) -> None:
    kv = MemoryKV()
    state = StateDB(kv, nodes=NodeStore(kv), cache=AccountCache())
    model: dict[bytes, list] = {}

    def entry(addr: bytes) -> list:
        return model.setdefault(addr, [0, 0, {}, b"", b""])

    for op, addr, arg in ops:
        if op == "credit":
            state.add_balance(addr, arg)  # type: ignore[arg-type]
            entry(addr)[1] += arg
        elif op == "nonce":
            state.increment_nonce(addr)
            entry(addr)[0] += 1
        elif op == "code":
            state.set_code(addr, arg)  # type: ignore[arg-type]
            entry(addr)[3] = arg
        elif op == "abi":
            state.set_abi(addr, arg)  # type: ignore[arg-type]
            entry(addr)[4] = arg
        elif op == "store":
            assert isinstance(arg, tuple)
            skey: bytes = arg[0]
            svalue: bytes = arg[1]
            state.set_storage(addr, skey, svalue)
            entry(addr)[2][skey] = svalue
        elif op == "commit":
            committed(kv, state)
        else:  # some writes, then revert them: the model does not change
            cp = state.checkpoint()
            state.add_balance(addr, 1)
            state.increment_nonce(addr)
            state.set_storage(addr, b"tmp", b"x" * int(arg))  # type: ignore[call-overload]
            state.revert_to(cp)
    root = committed(kv, state)
    expected = reference_root({a: (e[0], e[1], e[2], e[3], e[4]) for a, e in model.items()})
    assert root == expected
    reopened = StateDB(kv, root)
    for addr, (nonce, balance, storage, code, abi) in model.items():
        assert (reopened.nonce(addr), reopened.balance(addr)) == (nonce, balance)
        assert reopened.code(addr) == code and reopened.abi(addr) == abi
        for key, value in storage.items():
            assert reopened.storage(addr, key) == value

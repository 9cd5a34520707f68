"""The fast hexary trie matches py-trie's HexaryTrie root for root, node for node."""

from __future__ import annotations

import pytest
import rlp
from hypothesis import given, settings
from hypothesis import strategies as st
from trie import HexaryTrie
from trie.utils.nodes import compute_extension_key, compute_leaf_key

from pycita.crypto import keccak
from pycita.errors import DecodeError
from pycita.trie import (
    BLANK_ROOT,
    MissingTrieNode,
    Trie,
    _enc_ext,
    _enc_leaf,
    _enc_list,
    _enc_str,
    build_from_sorted,
)

pytestmark = pytest.mark.timeout(120)

_PREFIXES = [b"", b"\x12\x34", bytes(18)]

short_keys = st.binary(max_size=3)
# 20- and 32-byte keys, many of them sharing long (zero-padded) prefixes.
fixed_keys = st.builds(
    lambda head, tail, size: (head + tail).ljust(size, b"\x00")[:size],
    st.sampled_from(_PREFIXES),
    st.binary(max_size=32),
    st.sampled_from([20, 32]),
)
keys = st.one_of(short_keys, fixed_keys)
values = st.one_of(st.binary(min_size=1, max_size=1), st.binary(min_size=1, max_size=80))
values_or_delete = st.one_of(st.just(b""), values)


def reference_root(model: dict[bytes, bytes]) -> bytes:
    reference = HexaryTrie({})
    for key, value in model.items():
        reference.set(key, value)
    return bytes(reference.root_hash)


def committed(model: dict[bytes, bytes]) -> tuple[bytes, dict[bytes, bytes]]:
    trie = Trie({})
    trie.update_many(model.items())
    return trie.commit()


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_random_sets_and_deletes_give_py_trie_roots_at_every_commit(data: st.DataObject) -> None:
    pool = data.draw(st.lists(keys, min_size=1, max_size=24, unique=True), label="keys")
    ops = data.draw(
        st.lists(
            st.tuples(st.integers(0, len(pool) - 1), values_or_delete, st.integers(0, 4)),
            max_size=60,
        ),
        label="ops",
    )
    db: dict[bytes, bytes] = {}
    trie = Trie(db)
    reference = HexaryTrie({})
    model: dict[bytes, bytes] = {}
    for step, (index, value, commit_draw) in enumerate(ops):
        key = pool[index]
        trie.set(key, value)
        reference.set(key, value)
        if value:
            model[key] = value
        else:
            model.pop(key, None)
        assert trie.get(key) == value
        if commit_draw == 0 or step == len(ops) - 1:
            root, nodes = trie.commit()
            assert root == reference.root_hash
            assert trie.root_hash == root
            assert all(keccak(encoded) == node_hash for node_hash, encoded in nodes.items())
            db.update(nodes)
            reopened = Trie(db, root)
            for probe in pool:
                assert trie.get(probe) == model.get(probe, b"")
                assert reopened.get(probe) == model.get(probe, b"")
            assert list(reopened.items()) == sorted(model.items())
            assert list(trie.items()) == sorted(model.items())


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(keys, values, max_size=40))
def test_build_from_sorted_gives_the_py_trie_root_and_nodes_a_trie_can_read(
    model: dict[bytes, bytes],
) -> None:
    sunk: list[tuple[bytes, bytes]] = []
    root = build_from_sorted(sorted(model.items()), lambda h, n: sunk.append((h, n)))
    assert root == reference_root(model)
    assert all(keccak(encoded) == node_hash for node_hash, encoded in sunk)
    if model:
        assert sunk[-1][0] == root
    db = dict(sunk)
    assert len(db) == len(sunk)  # every node is emitted once
    trie = Trie(db, root)
    assert list(trie.items()) == sorted(model.items())
    for key, value in model.items():
        assert trie.get(key) == value
    assert committed(model) == (root, db)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(keys, values, max_size=40), keys)
def test_items_from_start_yields_exactly_the_keys_at_or_after_start(
    model: dict[bytes, bytes], start: bytes
) -> None:
    root, nodes = committed(model)
    expected = [(key, value) for key, value in sorted(model.items()) if key >= start]
    assert list(Trie(nodes, root).items(start)) == expected


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_hand_rolled_string_encoding_matches_rlp(data: bytes) -> None:
    assert _enc_str(data) == rlp.encode(data)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=70), max_size=20))
def test_hand_rolled_list_encoding_matches_rlp(items: list[bytes]) -> None:
    assert _enc_list(b"".join(rlp.encode(item) for item in items)) == rlp.encode(items)


nibble_paths = st.lists(st.integers(0, 15), max_size=64)


@settings(max_examples=100, deadline=None)
@given(nibble_paths, st.binary(max_size=300))
def test_hand_rolled_leaf_encoding_matches_rlp(nibbles: list[int], value: bytes) -> None:
    path = "".join(f"{n:x}" for n in nibbles)
    assert _enc_leaf(path, value) == rlp.encode([compute_leaf_key(nibbles), value])


@settings(max_examples=100, deadline=None)
@given(nibble_paths, st.binary(min_size=32, max_size=32))
def test_hand_rolled_extension_encoding_matches_rlp(nibbles: list[int], child_hash: bytes) -> None:
    path = "".join(f"{n:x}" for n in nibbles)
    expected = rlp.encode([compute_extension_key(nibbles), child_hash])
    assert _enc_ext(path, rlp.encode(child_hash)) == expected


def test_an_empty_trie_has_the_blank_root_and_no_items() -> None:
    assert BLANK_ROOT.hex().startswith("56e81f") and BLANK_ROOT == HexaryTrie({}).root_hash
    trie = Trie({})
    assert trie.commit() == (BLANK_ROOT, {})
    assert trie.get(b"anything") == b""
    assert list(trie.items()) == []
    assert build_from_sorted([], lambda h, n: None) == BLANK_ROOT


def test_deleting_every_key_returns_to_the_blank_root() -> None:
    db: dict[bytes, bytes] = {}
    trie = Trie(db)
    trie.update_many([(b"\x01", b"a"), (b"\x01\x02", b"b"), (bytes(20), b"c")])
    db.update(trie.commit()[1])
    trie.update_many([(b"\x01", b""), (b"\x01\x02", b""), (bytes(20), b"")])
    assert trie.commit() == (BLANK_ROOT, {})


def test_a_commit_without_changes_returns_no_nodes() -> None:
    db: dict[bytes, bytes] = {}
    trie = Trie(db)
    trie.set(b"key", b"value")
    root, nodes = trie.commit()
    db.update(nodes)
    assert trie.commit() == (root, {})
    trie.set(b"absent", b"")  # deleting an absent key changes nothing
    assert trie.commit() == (root, {})


def test_a_tiny_root_is_still_hashed_and_stored() -> None:
    root, nodes = committed({b"\x01": b"\x02"})
    assert root == reference_root({b"\x01": b"\x02"})
    assert nodes == {root: rlp.encode([b"\x20\x01", b"\x02"])}
    assert Trie(nodes, root).get(b"\x01") == b"\x02"


def test_items_of_a_trie_read_from_a_plain_dict_db() -> None:
    model = {bytes([i]) * 20: bytes([i]) * (i + 1) for i in range(0, 256, 7)}
    model[b""] = b"empty key"
    model[b"\x07"] = b"short key"
    db: dict[bytes, bytes] = {}
    root = build_from_sorted(sorted(model.items()), db.__setitem__)
    trie = Trie(db, root)
    assert list(trie.items()) == sorted(model.items())
    assert list(trie.items(b"\x07")) == [kv for kv in sorted(model.items()) if kv[0] >= b"\x07"]
    assert list(trie.items(b"\xff" * 21)) == []


def test_items_streams_reading_only_the_nodes_it_needs() -> None:
    reads: list[bytes] = []
    nodes: dict[bytes, bytes] = {}

    class CountingDB:
        def get(self, key: bytes, /) -> bytes | None:
            reads.append(key)
            return nodes.get(key)

    model = {keccak(i.to_bytes(4, "big"))[:20]: b"v" * 40 for i in range(2000)}
    root = build_from_sorted(sorted(model.items()), nodes.__setitem__)
    first = next(Trie(CountingDB(), root).items())
    assert first == min(model.items())
    assert len(reads) <= 6  # one path from the root, not the whole trie


def test_uncommitted_changes_are_visible_to_get_but_not_to_items() -> None:
    db: dict[bytes, bytes] = {}
    trie = Trie(db)
    trie.set(b"a", b"1")
    root, nodes = trie.commit()
    db.update(nodes)
    trie.set(b"b", b"2")
    assert trie.get(b"b") == b"2"
    assert trie.root_hash == root
    assert list(trie.items()) == [(b"a", b"1")]


def test_build_from_sorted_rejects_unsorted_keys_naming_the_key() -> None:
    with pytest.raises(ValueError, match="strictly ascending: key 01 follows 02"):
        build_from_sorted([(b"\x02", b"x"), (b"\x01", b"y")], lambda h, n: None)


def test_build_from_sorted_rejects_duplicate_keys_naming_the_key() -> None:
    with pytest.raises(ValueError, match="strictly ascending: key 0a0b follows 0a0b"):
        build_from_sorted([(b"\x0a\x0b", b"x"), (b"\x0a\x0b", b"y")], lambda h, n: None)


@pytest.mark.parametrize("position", [0, 1])
def test_build_from_sorted_rejects_empty_values_naming_the_key(position: int) -> None:
    items = [(b"\x01", b"x"), (b"\x02", b"y")]
    items[position] = (items[position][0], b"")
    with pytest.raises(ValueError, match=f"empty value for key 0{position + 1}"):
        build_from_sorted(items, lambda h, n: None)


def test_a_missing_root_raises_missing_trie_node_with_its_hash() -> None:
    root = keccak(b"nowhere")
    trie = Trie({}, root)
    with pytest.raises(MissingTrieNode) as raised:
        trie.get(b"key")
    assert raised.value.node_hash == root
    assert root.hex() in str(raised.value)
    with pytest.raises(MissingTrieNode):
        list(trie.items())
    with pytest.raises(MissingTrieNode):
        trie.set(b"key", b"value")


def test_a_missing_inner_node_raises_missing_trie_node_with_its_hash() -> None:
    model = {bytes([i, j]) * 10: b"v" * 40 for i in range(4) for j in range(4)}
    root, nodes = committed(model)
    missing = next(h for h in nodes if h != root)
    del nodes[missing]
    trie = Trie(nodes, root)
    hashes = set()
    for key in model:
        try:
            trie.get(key)
        except MissingTrieNode as error:
            hashes.add(error.node_hash)
    assert hashes == {missing}
    with pytest.raises(MissingTrieNode) as raised:
        list(trie.items())
    assert raised.value.node_hash == missing


def test_a_wrong_length_root_hash_is_rejected() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Trie({}, b"\x00" * 31)


@pytest.mark.parametrize("garbage", [b"\x01", b"\xc0", b"\xc3\x80\x80\x80", b"\xc2\x50\x01", b"\xc1\x80"])
def test_a_corrupt_node_raises_decode_error(garbage: bytes) -> None:
    root = keccak(garbage)
    with pytest.raises(DecodeError, match="trie node"):
        Trie({root: garbage}, root).get(b"\x01")

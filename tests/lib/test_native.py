"""The C extension pycita._native agrees with its pure-Python references, function by function.

Each native function (see the header comment of pycita/_native.c) is checked against the Python code it
replaces: the same results for valid input, the same refusals (and, through the public wrappers, the same
exception classes and messages) for invalid input. The suite requires the extension: a missing build fails.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import rlp
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from trie import HexaryTrie

import pycita.crypto
import pycita.native
from pycita.crypto import keccak_reference
from pycita.errors import DecodeError
from pycita.snapshot.container import MAX_RLP_DEPTH, RLPError, decode_rlp, decode_rlp_python
from pycita.snapshot.errors import ChunkDecodeError
from pycita.snapshot.state_format import (
    BlobState,
    FatAccount,
    account_rlp,
    account_rlp_python,
    decode_fat_chunk,
    decode_fat_chunk_python,
    plain_fats_python,
)
from pycita.trie import BLANK_ROOT, MissingTrieNode, Trie, _build_python, build_from_sorted, iter_items

pytestmark = pytest.mark.timeout(120)

_native: Any = pycita.native.native

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def _require_the_extension() -> None:
    if not pycita.native.AVAILABLE:
        pytest.fail(
            "pycita._native is not built (or PYCITA_NATIVE=0): run '.venv/bin/python -m pip install -e .'"
        )


# --------------------------------------------------------------------------- availability and keccak


def test_the_native_extension_is_built_and_loaded() -> None:
    assert pycita.native.AVAILABLE is True
    from pycita import _native as module

    assert pycita.native.native is module
    assert pycita.crypto.keccak is module.keccak256


def test_native_keccak_of_the_empty_string_is_the_known_ethereum_digest() -> None:
    expected = bytes.fromhex("c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470")
    assert _native.keccak256(b"") == expected == keccak_reference(b"")
    assert BLANK_ROOT == keccak_reference(b"\x80")


_RATE_LENGTHS = [0, 1, 7, 8, 9, 135, 136, 137, 271, 272, 273, 407, 408, 409, 4095, 4096, 4097, 100_003]


@pytest.mark.parametrize("length", _RATE_LENGTHS)
def test_native_keccak_matches_the_reference_at_lengths_around_the_136_byte_rate(length: int) -> None:
    data = bytes((i * 131 + length) & 0xFF for i in range(length))
    expected = keccak_reference(data)
    assert _native.keccak256(data) == expected
    assert _native.keccak256(bytearray(data)) == expected
    assert _native.keccak256(memoryview(data)) == expected
    assert _native.keccak256(memoryview(b"xx" + data + b"yy")[2:-2]) == expected


def _pseudo_random_bytes(seed: int, length: int) -> bytes:
    return random.Random(seed).randbytes(length)


@SETTINGS
@given(
    st.one_of(
        st.binary(max_size=600),
        st.builds(_pseudo_random_bytes, st.integers(0, 2**32), st.integers(600, 9000)),
    )
)
def test_native_keccak_matches_the_reference_for_arbitrary_bytes(data: bytes) -> None:
    expected = keccak_reference(data)
    assert _native.keccak256(data) == expected
    assert _native.keccak256(bytearray(data)) == expected
    assert _native.keccak256(memoryview(data)) == expected


def test_native_keccak_refuses_what_is_not_a_buffer() -> None:
    with pytest.raises(TypeError):
        _native.keccak256("text")


# --------------------------------------------------------------------------- RLP decoding


def _python_outcome(data: bytes, max_depth: int) -> tuple[str, object]:
    try:
        return "ok", decode_rlp_python(data, max_depth)
    except RLPError as exc:  # anything else (IndexError, RecursionError...) fails the test
        return "refused", str(exc)


def _native_outcome(data: bytes, max_depth: int) -> tuple[str, object]:
    try:
        return "ok", _native.rlp_decode(data, max_depth)
    except ValueError as exc:
        assert type(exc) is ValueError
        return "refused", None


def _same_shape(a: object, b: object) -> bool:
    """Equal values with the same bytes/list structure (no bytes/bytearray mix-ups)."""
    if isinstance(a, list):
        return (
            type(b) is list and len(a) == len(b) and all(_same_shape(x, y) for x, y in zip(a, b, strict=True))
        )
    return type(a) is bytes and type(b) is bytes and a == b


def assert_decoders_agree(data: bytes, max_depth: int = MAX_RLP_DEPTH) -> None:
    py_kind, py_value = _python_outcome(data, max_depth)
    c_kind, c_value = _native_outcome(data, max_depth)
    assert c_kind == py_kind, (data.hex(), max_depth, py_value, c_value)
    if py_kind == "ok":
        assert _same_shape(c_value, py_value), (data.hex(), max_depth)
        assert decode_rlp(data, max_depth) == py_value
    else:
        with pytest.raises(RLPError) as info:
            decode_rlp(data, max_depth)
        assert str(info.value) == py_value


rlp_strings = st.one_of(
    st.binary(max_size=3),
    st.binary(min_size=1, max_size=1),
    st.binary(min_size=50, max_size=60),
    st.binary(max_size=300),
)
rlp_structures = st.recursive(rlp_strings, lambda children: st.lists(children, max_size=6), max_leaves=24)


@SETTINGS
@given(rlp_structures, st.one_of(st.just(MAX_RLP_DEPTH), st.integers(0, 8)))
def test_native_rlp_decode_returns_what_the_python_decoder_returns_for_valid_encodings(
    structure: object, max_depth: int
) -> None:
    data = rlp.encode(structure)
    assert_decoders_agree(data, max_depth)
    assert_decoders_agree(data, MAX_RLP_DEPTH)
    if _python_outcome(data, MAX_RLP_DEPTH)[0] == "ok":
        assert _native.rlp_decode(data, MAX_RLP_DEPTH) == structure
        assert _native.rlp_decode(bytearray(data), MAX_RLP_DEPTH) == structure
        assert _native.rlp_decode(memoryview(data), MAX_RLP_DEPTH) == structure


_HEADER_BYTES = [
    0x00,
    0x01,
    0x37,
    0x38,
    0x7F,
    0x80,
    0x81,
    0x82,
    0xB7,
    0xB8,
    0xB9,
    0xBA,
    0xBF,
    0xC0,
    0xC1,
    0xC2,
    0xF7,
    0xF8,
    0xF9,
    0xFA,
    0xFF,
]
biased_bytes = st.one_of(st.sampled_from(_HEADER_BYTES), st.integers(0, 255))


@st.composite
def mutated_encodings(draw: st.DrawFn) -> bytes:
    data = bytearray(rlp.encode(draw(rlp_structures)))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "set", "truncate", "extend", "insert", "delete"]))
        if kind in ("flip", "set", "delete") and data:
            pos = draw(st.integers(0, len(data) - 1))
            if kind == "flip":
                data[pos] ^= draw(st.integers(1, 255))
            elif kind == "set":
                data[pos] = draw(biased_bytes)
            else:
                del data[pos]
        elif kind == "truncate" and data:
            del data[draw(st.integers(0, len(data) - 1)) :]
        elif kind == "insert":
            data.insert(draw(st.integers(0, len(data))), draw(biased_bytes))
        else:
            data += draw(st.binary(min_size=1, max_size=5))
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        mutated_encodings(),
        st.binary(max_size=64),
        st.lists(biased_bytes, max_size=40).map(bytes),
    ),
    st.one_of(st.just(MAX_RLP_DEPTH), st.integers(0, 6)),
)
def test_native_rlp_decode_accepts_exactly_what_the_python_decoder_accepts(
    data: bytes, max_depth: int
) -> None:
    assert_decoders_agree(data, max_depth)


_NON_CANONICAL_AND_EDGE_CASES = [
    b"",
    b"\x00",
    b"\x7f",
    b"\x80",
    b"\x81",
    b"\x81\x05",  # single byte below 0x80 as a string
    b"\x81\x7f",
    b"\x81\x80",  # valid
    b"\x82\x00\x01",  # valid (leading zero bytes in a string are fine)
    b"\xb7" + b"a" * 55,  # valid: the longest short form
    b"\xb8",  # truncated long length
    b"\xb8\x01\x00",  # long form for a 1-byte string
    b"\xb8\x37" + b"a" * 55,  # long form for 55 bytes
    b"\xb8\x38" + b"a" * 56,  # valid: the shortest long form
    b"\xb8\x38" + b"a" * 55,  # runs past the end
    b"\xb9\x00\x38" + b"a" * 56,  # length with a leading zero
    b"\xb9\x01\x00" + b"a" * 256,  # valid
    b"\xbf" + b"\xff" * 8,  # 8-byte length, far past the end
    b"\xbf\x00" + b"\xff" * 7,
    b"\xbf\x01" + bytes(7),
    b"\xc0",  # valid empty list
    b"\xc0\x00",  # trailing byte
    b"\xc1",  # truncated list
    b"\xc1\xc0",  # valid
    b"\xc2\x81\x05",  # non-canonical string inside a list
    b"\xc2\x81\x80",  # valid
    b"\xc1\x81",  # a string running past its list
    b"\xc2\x81\x05\x00",
    b"\xf7" + b"\x01" * 55,  # valid: the longest short list
    b"\xf8\x01\x00",  # long form for a 1-byte list
    b"\xf8\x37" + b"\x01" * 55,  # long form for 55 bytes
    b"\xf8\x38" + b"\x01" * 56,  # valid
    b"\xf9\x00\x38" + b"\x01" * 56,  # length with a leading zero
    b"\xff" + b"\xff" * 8,
    b"\xff\x00" + b"\xff" * 7,
    b"\xc3\xc2\xc1\xc0",  # depth 4
]


@pytest.mark.parametrize("max_depth", [0, 1, 2, 3, 4, MAX_RLP_DEPTH])
@pytest.mark.parametrize("data", _NON_CANONICAL_AND_EDGE_CASES, ids=lambda d: d[:12].hex() or "empty")
def test_native_rlp_decode_agrees_on_non_canonical_forms_and_edge_cases(data: bytes, max_depth: int) -> None:
    assert_decoders_agree(data, max_depth)


def test_the_known_non_canonical_forms_are_refused_by_both_decoders() -> None:
    for data in (b"\x81\x05", b"\xb8\x01\x00", b"\xb9\x00\x38" + b"a" * 56, b"\xf8\x01\x00", b"\xc0\x00"):
        assert _python_outcome(data, MAX_RLP_DEPTH)[0] == "refused"
        assert _native_outcome(data, MAX_RLP_DEPTH)[0] == "refused"


def _nested(depth: int, leaf: object) -> object:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 24), st.integers(0, 20), st.sampled_from([b"", b"x", b"y" * 60]), st.booleans())
def test_native_rlp_decode_refuses_lists_nested_deeper_than_max_depth_as_the_python_decoder_does(
    depth: int, max_depth: int, leaf: bytes, wide: bool
) -> None:
    structure = _nested(depth, [leaf, b"z" * 70] if wide else leaf)
    data = rlp.encode(structure)
    assert_decoders_agree(data, max_depth)
    assert _native_outcome(data, max_depth)[0] == ("ok" if depth + wide <= max_depth else "refused")


def test_the_public_rlp_decoder_gives_the_python_decoders_message_for_refused_input() -> None:
    cases = {
        b"\x81\x05": "single byte below 0x80 encoded as a string at 0",
        b"\xb8\x01\x00": "long form used for a 1-byte item at 0",
        b"\xb9\x00\x38" + b"a" * 56: "length of the item at 0 has leading zeros",
        b"\xc0\x00": "1 trailing bytes after the RLP item",
        b"\xc1": "list at 0 runs past its container",
        b"": "item at 0 is truncated",
        rlp.encode(_nested(17, b"")): f"lists nested deeper than {MAX_RLP_DEPTH}",
    }
    for data, message in cases.items():
        with pytest.raises(ValueError):
            _native.rlp_decode(data, MAX_RLP_DEPTH)
        with pytest.raises(RLPError) as info:
            decode_rlp(data)
        assert str(info.value) == message


# --------------------------------------------------------------------------- trie builder

_KEY_BYTES = b"\x00\x01\x10\x12\x7f\x80\xff"
# Keys from a small alphabet share long prefixes and are often prefixes of each other.
mixed_keys = st.one_of(
    st.lists(st.sampled_from(_KEY_BYTES), min_size=1, max_size=40).map(bytes),
    st.binary(min_size=1, max_size=40),
    # 41..54 bytes: hex-prefix paths longer than the C stack buffer (the Python leaf encoder cannot go further)
    st.lists(st.sampled_from(_KEY_BYTES), min_size=41, max_size=54).map(bytes),
)


def _fixed(size: int) -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda head, tail: (head + tail).ljust(size, b"\x00")[:size],
        st.sampled_from([b"", b"\x12\x34", bytes(18), b"\xff" * 10]),
        st.binary(max_size=size),
    )


trie_values = st.one_of(
    st.integers(0, 0x7F).map(lambda b: bytes([b])),
    st.binary(min_size=1, max_size=1),
    st.binary(min_size=1, max_size=120),
    st.binary(min_size=56, max_size=120),
)
trie_models = st.one_of(
    st.dictionaries(mixed_keys, trie_values, max_size=60),
    st.dictionaries(_fixed(20), trie_values, max_size=60),
    st.dictionaries(_fixed(32), trie_values, max_size=60),
)

Node = tuple[bytes, bytes]


def python_build(items: Sequence[Node]) -> tuple[bytes, list[Node]]:
    sunk: list[Node] = []
    if not items:
        return BLANK_ROOT, sunk
    root = _build_python(items[0], iter(items[1:]), lambda h, n: sunk.append((h, n)))
    return root, sunk


def native_build(items: Sequence[Any], cuts: list[int], emit: bool = True) -> tuple[bytes, list[Node]]:
    builder = _native.TrieBuilder(emit)
    nodes: list[Node] = []
    bounds = [0, *sorted(cuts), len(items)]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        fed = builder.feed(items[lo:hi])
        assert isinstance(fed, list)
        nodes.extend(fed)
    root, rest = builder.finish()
    nodes.extend(rest)
    return root, nodes


def _cuts(n: int) -> st.SearchStrategy[list[int]]:
    return st.one_of(
        st.lists(st.integers(0, n), max_size=8),  # random batches, empty ones where cuts repeat
        st.just(list(range(n + 1))),  # one pair per batch (and an empty first batch)
        st.just([]),  # everything at once
    )


@SETTINGS
@given(st.data())
def test_native_trie_builder_gives_the_python_builders_root_and_nodes_for_any_batching(
    data: st.DataObject,
) -> None:
    model = data.draw(trie_models, label="model")
    items = sorted(model.items())
    cuts = data.draw(_cuts(len(items)), label="cuts")
    py_root, py_nodes = python_build(items)
    c_root, c_nodes = native_build(items, cuts)
    assert c_root == py_root
    assert Counter(c_nodes) == Counter(py_nodes)
    assert all(type(h) is bytes and type(n) is bytes for h, n in c_nodes)
    assert all(keccak_reference(n) == h for h, n in c_nodes)
    if items:
        assert c_nodes[-1][0] == c_root and py_nodes[-1][0] == py_root  # the root last
    assert native_build(items, cuts, emit=False) == (py_root, [])


@FEW
@given(trie_models)
def test_native_trie_builder_roots_are_py_trie_roots(model: dict[bytes, bytes]) -> None:
    reference = HexaryTrie({})
    for key, value in model.items():
        reference.set(key, value)
    assert native_build(sorted(model.items()), [])[0] == bytes(reference.root_hash)


long_key_models = st.dictionaries(
    st.lists(st.sampled_from(_KEY_BYTES), min_size=55, max_size=90).map(bytes),
    trie_values,
    min_size=1,
    max_size=12,
)


@settings(max_examples=20, deadline=None)
@given(long_key_models)
def test_native_trie_builder_and_walker_handle_keys_longer_than_55_bytes_as_py_trie_does(
    model: dict[bytes, bytes],
) -> None:
    reference = HexaryTrie({})
    for key, value in model.items():
        reference.set(key, value)
    nodes: dict[bytes, bytes] = {}
    root = build_from_sorted(sorted(model.items()), nodes.__setitem__)
    assert root == bytes(reference.root_hash)
    assert list(iter_items(nodes.get, root, b"", 3)) == sorted(model.items())
    assert list(Trie(nodes, root).items()) == sorted(model.items())


def test_the_python_trie_builder_handles_keys_of_55_bytes_and_more() -> None:
    for size in (55, 56, 100, 300):
        items = [(b"\x00" * size, b"v"), (b"\x01" * size, b"w" * 70)]
        assert python_build(items) == native_build(items, [])
        trie = Trie({})
        for k, v in items:
            trie.set(k, v)
        assert trie.commit()[0] == python_build(items)[0]


@SETTINGS
@given(trie_models)
def test_build_from_sorted_passes_the_native_builders_nodes_to_its_sink(model: dict[bytes, bytes]) -> None:
    items = sorted(model.items())
    sunk: list[Node] = []
    root = build_from_sorted(iter(items), lambda h, n: sunk.append((h, n)))
    py_root, py_nodes = python_build(items)
    assert root == py_root
    assert Counter(sunk) == Counter(py_nodes)


def test_build_from_sorted_feeds_long_inputs_in_several_native_batches() -> None:
    items = sorted((keccak_reference(i.to_bytes(4, "big")), i.to_bytes(3, "big") + b"v") for i in range(5000))
    sunk: list[Node] = []
    root = build_from_sorted(iter(items), lambda h, n: sunk.append((h, n)))
    py_root, py_nodes = python_build(items)
    assert root == py_root
    assert Counter(sunk) == Counter(py_nodes)


def test_a_native_trie_builder_fed_nothing_finishes_with_the_blank_root() -> None:
    assert _native.TrieBuilder().finish() == (BLANK_ROOT, [])
    assert _native.TrieBuilder(False).finish() == (BLANK_ROOT, [])
    builder = _native.TrieBuilder()
    assert builder.feed([]) == []
    assert builder.feed(()) == []
    assert builder.finish() == (BLANK_ROOT, [])
    sunk: list[Node] = []
    assert build_from_sorted([], lambda h, n: sunk.append((h, n))) == BLANK_ROOT
    assert sunk == []


def test_a_single_small_pair_emits_its_small_root() -> None:
    items = [(b"\x01", b"\x02")]
    root, nodes = native_build(items, [])
    assert (root, nodes) == python_build(items)
    assert nodes == [(root, rlp.encode([b"\x20\x01", b"\x02"]))]


def _python_build_error(items: Sequence[Node]) -> str:
    with pytest.raises(ValueError) as info:
        python_build(items)
    return str(info.value)


def _native_build_error(items: Sequence[Node], cuts: list[int]) -> str:
    with pytest.raises(ValueError) as info:
        native_build(items, cuts)
    assert type(info.value) is ValueError
    return str(info.value)


@SETTINGS
@given(st.data())
def test_native_trie_builder_refuses_keys_out_of_order_and_empty_values_with_the_python_message(
    data: st.DataObject,
) -> None:
    model = data.draw(st.one_of(trie_models), label="model")
    items = sorted(model.items())
    fault = data.draw(st.sampled_from(["swap", "duplicate", "empty value", "smaller key"]), label="fault")
    if fault == "swap":
        assume(len(items) >= 2)
        i = data.draw(st.integers(0, len(items) - 2))
        items[i], items[i + 1] = items[i + 1], items[i]
    elif fault == "duplicate":
        assume(items)
        i = data.draw(st.integers(0, len(items) - 1))
        items.insert(i + 1, (items[i][0], data.draw(trie_values)))
    elif fault == "empty value":
        assume(items)
        i = data.draw(st.integers(0, len(items) - 1))
        items[i] = (items[i][0], b"")
    else:
        assume(items)
        i = data.draw(st.integers(0, len(items) - 1))
        items.insert(i + 1, (items[i][0][:-1], data.draw(trie_values)))  # a prefix sorts before the key
    cuts = data.draw(_cuts(len(items)), label="cuts")
    message = _python_build_error(items)
    assert _native_build_error(items, cuts) == message
    with pytest.raises(ValueError) as info:
        build_from_sorted(items, lambda h, n: None)
    assert str(info.value) == message


def test_native_trie_builder_error_messages_name_the_keys() -> None:
    assert _native_build_error([(b"\x02", b"a"), (b"\x01", b"b")], []) == (
        "keys must be strictly ascending: key 01 follows 02"
    )
    assert _native_build_error([(b"\x02", b"a"), (b"\x02", b"b")], [1]) == (
        "keys must be strictly ascending: key 02 follows 02"
    )
    assert _native_build_error([(b"\xab", b"")], []) == "empty value for key ab"
    assert _native_build_error([(b"\x01", b"a"), (b"\xab", b"")], [1]) == "empty value for key ab"


def test_a_native_trie_builder_that_failed_or_finished_refuses_more_work() -> None:
    builder = _native.TrieBuilder()
    with pytest.raises(ValueError):
        builder.feed([(b"\x02", b"a"), (b"\x01", b"b")])
    with pytest.raises(RuntimeError):
        builder.feed([(b"\x03", b"c")])
    with pytest.raises(RuntimeError):
        builder.finish()
    builder = _native.TrieBuilder()
    builder.feed([(b"\x01", b"a")])
    builder.finish()
    with pytest.raises(RuntimeError):
        builder.finish()


def test_native_trie_builder_refuses_pairs_that_are_not_bytes() -> None:
    for bad in ([(b"\x01",)], [b"\x01"], [(b"\x01", "a")], [("a", b"\x01")]):
        with pytest.raises(TypeError):
            _native.TrieBuilder().feed(bad)
    assert native_build([[b"\x01", b"a"], [b"\x02", b"b"]], []) == python_build(
        [(b"\x01", b"a"), (b"\x02", b"b")]
    )


# --------------------------------------------------------------------------- trie walker


_NO_NODES: dict[bytes, bytes] = {}


def stored_trie(
    model: dict[bytes, bytes], prefix: bytes
) -> tuple[bytes, dict[bytes, bytes], dict[bytes, bytes]]:
    """Root, the nodes by hash, and the same nodes under prefix + hash."""
    nodes: dict[bytes, bytes] = {}
    root = build_from_sorted(sorted(model.items()), nodes.__setitem__)
    return root, nodes, {prefix + h: n for h, n in nodes.items()}


def _collect(items: Iterator[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], BaseException | None]:
    out: list[tuple[bytes, bytes]] = []
    try:
        for pair in items:
            out.append(pair)
    except Exception as exc:  # noqa: BLE001 - the caller compares what was raised
        return out, exc
    return out, None


@SETTINGS
@given(trie_models, st.sampled_from([b"", b"n"]))
def test_native_trie_walk_yields_what_trie_items_yields_for_every_batch_size(
    model: dict[bytes, bytes], prefix: bytes
) -> None:
    root, nodes, prefixed = stored_trie(model, prefix)
    expected = sorted(model.items())
    assert list(Trie(nodes, root).items()) == expected
    for batch in (1, 3, 1024):
        walked = list(iter_items(prefixed.get, root, prefix, batch))
        assert walked == expected
        assert all(type(k) is bytes and type(v) is bytes for k, v in walked)
    walker = _native.TrieWalker(prefixed.get, root, prefix)
    pairs: list[tuple[bytes, bytes]] = []
    while batch_pairs := walker.next_batch(7):
        assert len(batch_pairs) <= 7
        pairs.extend(batch_pairs)
    assert pairs == expected
    assert walker.next_batch(7) == []  # stays at the end


def test_walking_the_blank_root_yields_nothing_and_reads_nothing() -> None:
    def get(key: bytes) -> bytes | None:
        raise AssertionError(f"read {key.hex()}")

    assert list(iter_items(get, BLANK_ROOT)) == []
    assert list(iter_items(get, BLANK_ROOT, b"n")) == []
    assert _native.TrieWalker(get, BLANK_ROOT, b"n").next_batch(10) == []
    assert list(Trie({}, BLANK_ROOT).items()) == []


def test_walking_refuses_a_root_hash_that_is_not_32_bytes() -> None:
    with pytest.raises(ValueError):
        list(iter_items(_NO_NODES.get, b"\x01" * 31))
    with pytest.raises(ValueError):
        _native.TrieWalker(_NO_NODES.get, b"\x01" * 33)


@FEW
@given(st.data())
def test_a_missing_node_raises_missing_trie_node_from_both_walks(data: st.DataObject) -> None:
    model = data.draw(trie_models.filter(bool), label="model")
    prefix = data.draw(st.sampled_from([b"", b"n"]), label="prefix")
    root, nodes, prefixed = stored_trie(model, prefix)
    lost = data.draw(st.sampled_from(sorted(nodes)), label="lost")
    del nodes[lost]
    del prefixed[prefix + lost]
    py_items, py_exc = _collect(Trie(nodes, root).items())
    assert isinstance(py_exc, MissingTrieNode) and py_exc.node_hash == lost
    for batch in (1, 3, 1024):
        c_items, c_exc = _collect(iter_items(prefixed.get, root, prefix, batch))
        assert isinstance(c_exc, MissingTrieNode)
        assert c_exc.node_hash == lost and str(c_exc) == str(py_exc)
        # A batch is lost with its error: the walk yields a prefix of what Trie.items yields (all of it by 1).
        assert c_items == py_items[: len(c_items)]
        if batch == 1:
            assert c_items == py_items


def test_a_missing_root_raises_missing_trie_node() -> None:
    root = b"\x11" * 32
    with pytest.raises(MissingTrieNode) as info:
        list(iter_items(_NO_NODES.get, root, b"n"))
    assert info.value.node_hash == root
    with pytest.raises(KeyError):
        _native.TrieWalker(_NO_NODES.get, root).next_batch(1)


def _damaged(node: bytes, how: str) -> bytes:
    if how == "c180":
        return b"\xc1\x80"
    if how == "truncated":
        return node[:-1]
    if how == "half":
        return node[: len(node) // 2]
    if how == "string":
        return rlp.encode(node)
    return node + b"\x00"  # "extended"


@FEW
@given(st.data())
def test_a_corrupted_node_raises_decode_error_from_both_walks(data: st.DataObject) -> None:
    model = data.draw(trie_models.filter(bool), label="model")
    prefix = data.draw(st.sampled_from([b"", b"n"]), label="prefix")
    root, nodes, prefixed = stored_trie(model, prefix)
    victim = data.draw(st.sampled_from(sorted(nodes)), label="victim")
    how = data.draw(st.sampled_from(["c180", "truncated", "half", "string", "extended"]), label="how")
    nodes[victim] = prefixed[prefix + victim] = _damaged(nodes[victim], how)
    py_items, py_exc = _collect(Trie(nodes, root).items())
    assert isinstance(py_exc, DecodeError), repr(py_exc)
    for batch in (1, 1024):
        c_items, c_exc = _collect(iter_items(prefixed.get, root, prefix, batch))
        assert isinstance(c_exc, DecodeError), repr(c_exc)
        assert c_items == py_items[: len(c_items)]
        if batch == 1:
            assert c_items == py_items
    with pytest.raises(ValueError):
        walker = _native.TrieWalker(prefixed.get, root, prefix)
        while walker.next_batch(1024):
            pass


@SETTINGS
@given(st.data())
def test_native_trie_walk_fails_where_trie_items_fails_on_randomly_damaged_nodes(data: st.DataObject) -> None:
    model = data.draw(trie_models.filter(bool), label="model")
    root, nodes, _ = stored_trie(model, b"")
    victim = data.draw(st.sampled_from(sorted(nodes)), label="victim")
    node = bytearray(nodes[victim])
    pos = data.draw(st.integers(0, len(node) - 1), label="pos")
    node[pos] = data.draw(st.one_of(st.sampled_from(_HEADER_BYTES), st.integers(0, 255)), label="byte")
    nodes[victim] = bytes(node)
    py_items, py_exc = _collect(Trie(nodes, root).items())
    c_items, c_exc = _collect(iter_items(nodes.get, root, b"", 1))
    assert c_items == py_items
    if py_exc is None:
        assert c_exc is None
    elif isinstance(py_exc, MissingTrieNode):
        assert isinstance(c_exc, MissingTrieNode) and c_exc.node_hash == py_exc.node_hash
    else:
        # Trie.items raises DecodeError, or a bare ValueError for a key of an odd number of nibbles (see below)
        assert isinstance(py_exc, DecodeError | ValueError), repr(py_exc)
        assert isinstance(c_exc, DecodeError), repr(c_exc)


def _odd_key_trie() -> tuple[bytes, dict[bytes, bytes]]:
    """A root leaf whose hex-prefix path has one nibble: a key of half a byte (only a corrupted db has it)."""
    raw = rlp.encode([b"\x31", b"v" * 40])
    return keccak_reference(raw), {keccak_reference(raw): raw}


def test_the_native_walk_refuses_a_key_of_an_odd_number_of_nibbles_with_decode_error() -> None:
    root, nodes = _odd_key_trie()
    with pytest.raises(DecodeError, match="odd number of nibbles"):
        list(iter_items(nodes.get, root))


def test_trie_items_refuses_a_key_of_an_odd_number_of_nibbles_with_decode_error() -> None:
    root, nodes = _odd_key_trie()
    with pytest.raises(DecodeError):
        list(Trie(nodes, root).items())


# --------------------------------------------------------------------------- account RLP

uint256 = st.one_of(
    st.integers(0, 2**256),
    st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, 0x100, 2**56 - 1, 2**56, 2**63, 2**64 - 1, 2**64, 2**256 - 1]),
)
hashes = st.one_of(st.binary(min_size=32, max_size=32), st.binary(max_size=60))


@SETTINGS
@given(uint256, uint256, hashes, hashes, hashes)
def test_native_account_rlp_is_the_python_account_rlp(
    nonce: int, balance: int, root: bytes, code_hash: bytes, abi_hash: bytes
) -> None:
    expected = account_rlp_python(nonce, balance, root, code_hash, abi_hash)
    assert _native.account_rlp(nonce, balance, root, code_hash, abi_hash) == expected
    assert account_rlp(nonce, balance, root, code_hash, abi_hash) == expected
    assert expected == rlp.encode([nonce, balance, root, code_hash, abi_hash])


@pytest.mark.parametrize("nonce, balance", [(-1, 0), (0, -1), (-(2**70), 5), (3, -(2**300))])
def test_native_account_rlp_refuses_negative_integers_as_the_python_one_does(
    nonce: int, balance: int
) -> None:
    h = bytes(32)
    with pytest.raises(ValueError) as python_info:
        account_rlp_python(nonce, balance, h, h, h)
    with pytest.raises(ValueError) as native_info:
        _native.account_rlp(nonce, balance, h, h, h)
    assert type(native_info.value) is ValueError
    assert str(native_info.value) == str(python_info.value)


def test_native_account_rlp_refuses_integers_that_are_not_ints() -> None:
    h = bytes(32)
    with pytest.raises(TypeError):
        _native.account_rlp(1.0, 0, h, h, h)
    with pytest.raises(TypeError):
        _native.account_rlp(0, b"\x01", h, h, h)


# --------------------------------------------------------------------------- fat accounts


def _uint_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


blobs = st.one_of(
    st.just([b"", b""]),
    st.binary(min_size=1, max_size=80).map(lambda data: [b"\x01", data]),
    st.binary(min_size=32, max_size=32).map(lambda digest: [b"\x02", digest]),
)
storage_pairs = st.lists(
    st.tuples(st.binary(max_size=33), st.binary(min_size=1, max_size=40)).map(list), max_size=5
)


@st.composite
def valid_fat(draw: st.DrawFn) -> list[Any]:
    code, abi = draw(blobs), draw(blobs)
    body = [_uint_bytes(draw(uint256)), _uint_bytes(draw(uint256)), *code, *abi, draw(storage_pairs)]
    return [draw(st.binary(min_size=20, max_size=20)), body]


_FAULTS: dict[str, Callable[[list[Any]], list[Any] | bytes]] = {
    "address of 19 bytes": lambda f: [f[0][:19], f[1]],
    "address of 21 bytes": lambda f: [f[0] + b"\x00", f[1]],
    "address as a list": lambda f: [[f[0]], f[1]],
    "item as bytes": lambda f: f[0],
    "item of 3": lambda f: [f[0], f[1], b""],
    "item of 1": lambda f: [f[0]],
    "body as bytes": lambda f: [f[0], b"\x01"],
    "body of 6 items": lambda f: [f[0], f[1][:6]],
    "body of 8 items": lambda f: [f[0], [*f[1], b""]],
    "nonce with a leading zero": lambda f: [f[0], [b"\x00" + f[1][0], *f[1][1:]]],
    "balance as a list": lambda f: [f[0], [f[1][0], [f[1][1]], *f[1][2:]]],
    "balance with a leading zero": lambda f: [f[0], [f[1][0], b"\x00\x01", *f[1][2:]]],
    "code state 3": lambda f: [f[0], [*f[1][:2], b"\x03", *f[1][3:]]],
    "code state as a list": lambda f: [f[0], [*f[1][:2], [], *f[1][3:]]],
    "code state zero with a leading zero": lambda f: [f[0], [*f[1][:2], b"\x00", b"", *f[1][4:]]],
    "code state of 9 bytes": lambda f: [f[0], [*f[1][:2], b"\x01" * 9, *f[1][3:]]],
    "code state 0 with data": lambda f: [f[0], [*f[1][:2], b"", b"code", *f[1][4:]]],
    "code state 1 with no data": lambda f: [f[0], [*f[1][:2], b"\x01", b"", *f[1][4:]]],
    "code state 2 with 31 bytes": lambda f: [f[0], [*f[1][:2], b"\x02", b"h" * 31, *f[1][4:]]],
    "code as a list": lambda f: [f[0], [*f[1][:2], b"\x01", [b"code"], *f[1][4:]]],
    "abi state 3": lambda f: [f[0], [*f[1][:4], b"\x03", *f[1][5:]]],
    "abi state 0 with data": lambda f: [f[0], [*f[1][:4], b"", b"abi", f[1][6]]],
    "abi state 1 with no data": lambda f: [f[0], [*f[1][:4], b"\x01", b"", f[1][6]]],
    "abi state 2 with 33 bytes": lambda f: [f[0], [*f[1][:4], b"\x02", b"h" * 33, f[1][6]]],
    "storage as bytes": lambda f: [f[0], [*f[1][:6], b"storage"]],
    "storage item not a pair": lambda f: [f[0], [*f[1][:6], [*f[1][6], [b"k"]]]],
    "storage item of 3": lambda f: [f[0], [*f[1][:6], [[b"k", b"v", b"x"], *f[1][6]]]],
    "storage item as bytes": lambda f: [f[0], [*f[1][:6], [*f[1][6], b"kv"]]],
    "storage key as a list": lambda f: [f[0], [*f[1][:6], [*f[1][6], [[b"k"], b"v"]]]],
    "storage value as a list": lambda f: [f[0], [*f[1][:6], [*f[1][6], [b"k", [b"v"]]]]],
    "empty storage value": lambda f: [f[0], [*f[1][:6], [*f[1][6], [b"\x01\x02", b""]]]],
}


def _run(accounts: Iterator[FatAccount]) -> tuple[list[FatAccount], tuple[type, str] | None]:
    out: list[FatAccount] = []
    try:
        for account in accounts:
            out.append(account)
    except Exception as exc:  # noqa: BLE001 - the caller compares what was raised
        return out, (type(exc), str(exc))
    return out, None


def _assert_well_typed(accounts: list[FatAccount]) -> None:
    for account in accounts:
        assert type(account) is FatAccount
        assert type(account.code_state) is BlobState and type(account.abi_state) is BlobState
        assert type(account.nonce) is int and type(account.balance) is int
        assert type(account.storage) is tuple and all(type(p) is tuple for p in account.storage)


@SETTINGS
@given(st.lists(valid_fat(), max_size=8), st.integers(0, 50))
def test_native_fat_chunk_decoding_yields_the_python_accounts_for_valid_chunks(
    items: list[Any], chunk: int
) -> None:
    expected = list(decode_fat_chunk_python(items, file="f.rlp", chunk=chunk))
    got = list(decode_fat_chunk(items, file="f.rlp", chunk=chunk))
    assert got == expected
    _assert_well_typed(got)
    _assert_well_typed(expected)
    parsed, bad = _native.parse_fat(items)
    assert bad == -1
    assert [FatAccount(chunk, *fields) for fields in parsed] == expected


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_native_fat_chunk_decoding_fails_on_the_first_bad_item_as_the_python_decoder_does(
    data: st.DataObject,
) -> None:
    items: list[Any] = data.draw(st.lists(valid_fat(), min_size=1, max_size=6), label="items")
    positions = data.draw(st.sets(st.integers(0, len(items) - 1), min_size=1, max_size=2), label="positions")
    for i in sorted(positions):
        items[i] = _FAULTS[data.draw(st.sampled_from(sorted(_FAULTS)), label="fault")](items[i])
    expected = _run(decode_fat_chunk_python(items, file="state.rlp", chunk=3))
    got = _run(decode_fat_chunk(items, file="state.rlp", chunk=3))
    assert got == expected
    _assert_well_typed(got[0])
    if expected[1] is not None:
        assert expected[1][0] is ChunkDecodeError
    parsed, bad = _native.parse_fat(items)
    assert len(parsed) == (bad if bad >= 0 else len(items))
    if expected[1] is not None:  # C stops at or before the first item Python refuses
        assert 0 <= bad <= len(expected[0])


@pytest.mark.parametrize("fault", sorted(_FAULTS))
def test_each_kind_of_bad_fat_account_gets_the_python_error_after_the_same_accounts(fault: str) -> None:
    good = [b"\x01" * 20, [b"\x05", b"\x01\x00", b"\x01", b"code", b"\x02", b"h" * 32, [[b"k", b"v"]]]]
    other = [b"\x02" * 20, [b"", b"", b"", b"", b"", b"", []]]
    items: list[Any] = [good, other, _FAULTS[fault](good), other]
    expected = _run(decode_fat_chunk_python(items, file="state.rlp", chunk=7))
    assert expected[1] is not None and expected[1][0] is ChunkDecodeError
    assert len(expected[0]) == 2
    assert _run(decode_fat_chunk(items, file="state.rlp", chunk=7)) == expected
    assert _native.parse_fat(items)[1] == 2


def test_native_parse_fat_refuses_what_is_not_a_list() -> None:
    with pytest.raises(TypeError):
        _native.parse_fat((b"",))


# --------------------------------------------------------------------------- plain accounts of an export

_EMPTY = pycita.crypto.EMPTY_KECCAK


def _plain_raw(nonce: int, balance: int) -> bytes:
    return rlp.encode([nonce, balance, BLANK_ROOT, _EMPTY, _EMPTY])


_RAW_FAULTS: dict[str, Callable[[bytes], object]] = {
    "storage root": lambda r: rlp.encode(rlp.decode(r)[:2] + [b"\x11" * 32, _EMPTY, _EMPTY]),
    "code hash": lambda r: rlp.encode(rlp.decode(r)[:2] + [BLANK_ROOT, b"\x22" * 32, _EMPTY]),
    "abi hash": lambda r: rlp.encode(rlp.decode(r)[:2] + [BLANK_ROOT, _EMPTY, b"\x33" * 32]),
    "leading zero nonce": lambda r: rlp.encode([b"\x00\x05"] + rlp.decode(r)[1:]),
    "zero byte balance": lambda r: rlp.encode([rlp.decode(r)[0], b"\x00"] + rlp.decode(r)[2:]),
    "single byte as a string": lambda r: b"\xf8\x66\x01\x81\x05" + r[-99:],
    "33-byte nonce": lambda r: rlp.encode([b"\x01" * 33] + rlp.decode(r)[1:]),
    "four items": lambda r: rlp.encode(rlp.decode(r)[:4]),
    "six items": lambda r: rlp.encode(rlp.decode(r) + [b""]),
    "trailing byte": lambda r: r + b"\x00",
    "truncated": lambda r: r[:-1],
    "long header for a short list": lambda r: b"\xf9\x00" + r[1:],
    "not bytes": lambda r: bytearray(r),
    "empty": lambda r: b"",
}
_PAIR_FAULTS: dict[str, Callable[[tuple[bytes, bytes]], object]] = {
    "short address": lambda p: (p[0][:19], p[1]),
    "long address": lambda p: (p[0] + b"\x00", p[1]),
    "address not bytes": lambda p: (bytearray(p[0]), p[1]),
    "list pair": lambda p: [p[0], p[1]],
    "three-tuple": lambda p: (p[0], p[1], b""),
    "not a pair": lambda p: None,
}


@st.composite
def plain_pair_lists(draw: st.DrawFn) -> tuple[list[Any], int, bytes | None]:
    addresses = sorted(draw(st.sets(st.binary(min_size=20, max_size=20), min_size=0, max_size=12)))
    pairs: list[Any] = [(a, _plain_raw(draw(uint256), draw(uint256))) for a in addresses]
    for i in draw(st.sets(st.integers(0, max(len(pairs) - 1, 0)), max_size=2)) if pairs else ():
        if draw(st.booleans()):
            fault = draw(st.sampled_from(sorted(_RAW_FAULTS)))
            pairs[i] = (pairs[i][0], _RAW_FAULTS[fault](pairs[i][1]))
        else:
            pairs[i] = _PAIR_FAULTS[draw(st.sampled_from(sorted(_PAIR_FAULTS)))](pairs[i])
    if len(pairs) > 1 and draw(st.booleans()):  # out of order: a repeated or lower address
        i = draw(st.integers(1, len(pairs) - 1))
        if isinstance(pairs[i - 1], tuple) and len(pairs[i - 1]) == 2 and isinstance(pairs[i], tuple):
            pairs[i] = (pairs[i - 1][0],) + tuple(pairs[i][1:])
    start = draw(st.integers(0, len(pairs) + 1))
    prev = draw(st.one_of(st.none(), st.binary(max_size=21), st.sampled_from(addresses or [b""])))
    return pairs, start, prev


@SETTINGS
@given(plain_pair_lists())
def test_native_plain_fats_takes_the_same_accounts_and_gives_the_python_fat_rlps(
    case: tuple[list[Any], int, bytes | None],
) -> None:
    pairs, start, prev = case
    expected = plain_fats_python(pairs, start, prev)
    assert _native.plain_fats(pairs, start, prev) == expected
    fats, stop = expected
    assert stop >= start and len(fats) == max(stop - start, 0)
    for (address, raw), fat in zip(pairs[start:stop], fats, strict=True):  # each is the writer's fat RLP of that account
        nonce, balance = (int.from_bytes(x, "big") for x in rlp.decode(raw)[:2])
        assert fat == rlp.encode([address, [nonce, balance, 0, b"", 0, b"", []]])
        assert raw == account_rlp_python(nonce, balance, BLANK_ROOT, _EMPTY, _EMPTY)


@pytest.mark.parametrize("fault", sorted(_RAW_FAULTS))
def test_each_kind_of_account_that_is_not_plain_and_canonical_ends_the_run_in_both(fault: str) -> None:
    good = [(bytes([i]) * 20, _plain_raw(i, 10**i)) for i in range(1, 5)]
    pairs: list[Any] = list(good)
    pairs[2] = (pairs[2][0], _RAW_FAULTS[fault](pairs[2][1]))
    assert plain_fats_python(pairs, 0, None)[1] == 2
    assert _native.plain_fats(pairs, 0, None) == plain_fats_python(pairs, 0, None)
    assert _native.plain_fats(pairs, 3, pairs[2][0]) == plain_fats_python(pairs, 3, pairs[2][0])


def test_native_plain_fats_refuses_arguments_of_the_wrong_type() -> None:
    with pytest.raises(TypeError):
        _native.plain_fats((), 0, None)
    with pytest.raises(TypeError):
        _native.plain_fats([], 0, "prev")

"""A fast Ethereum-compatible hexary Merkle Patricia trie.

Roots and node encodings are byte-for-byte those of py-trie's ``HexaryTrie``
(the reference implementation the tests compare against), but nodes are only
encoded and hashed once per :meth:`Trie.commit`, not on every insert.

Node encoding
=============

Keys are raw bytes (no "secure trie" hashing) split into nibbles; values are
raw bytes, and an empty value means "absent" (setting ``b''`` deletes).
There are three node kinds, each an RLP list:

* leaf ``[hp(path, leaf=True), value]`` - the rest of a key and its value;
* extension ``[hp(path, leaf=False), child]`` - a shared run of nibbles;
* branch ``[child_0, ..., child_15, value]`` - one slot per next nibble, plus
  the value of the key that ends exactly here (``b''`` when none).

``hp`` is the hex-prefix encoding: a first nibble ``2*leaf + odd`` (followed by
a padding ``0`` nibble when the path has even length) and then the path.

A child reference is ``b''`` for "no child"; the child's RLP itself (embedded
inline) when that RLP is shorter than 32 bytes; otherwise keccak-256 of the
child's RLP, the child being stored in the node database under that hash.
The root is always hashed: the root hash is ``keccak(rlp(root node))`` even for
a tiny root, and the empty trie has root ``BLANK_ROOT = keccak(rlp(b''))``.
The trie is kept normalised after deletes exactly as py-trie does: a branch
left with one entry collapses into a leaf or extension, and consecutive
extension/leaf paths merge, so the root depends only on the set of (key, value).

Design
======

* Nibble paths are lower-case hex strings (``key.hex()``): slicing, prefix tests
  and hex-prefix encoding (``bytes.fromhex(flag + path)``) are all C operations.
* In memory a node is a small ``__slots__`` object (:class:`_Leaf`,
  :class:`_Ext`, :class:`_Branch`).  A child slot holds either such an object
  or, while unresolved, the *reference piece* that appears in the parent's RLP:
  ``b'\\x80'`` (no child), ``b'\\xa0' + hash`` or an embedded node's RLP.
  Unresolved children are loaded from the database only when a write goes
  through them.
* Each node caches its reference piece in ``ref``; ``None`` marks it dirty.
  Writes mutate the path from the root in place and clear ``ref`` along it.
  :meth:`Trie.commit` does one bottom-up pass over the dirty nodes only,
  encoding each with a hand-rolled RLP encoder (the node shapes are fixed) and
  hashing it once, and returns the new nodes for the caller's atomic batch.
  Afterwards only the top :data:`CACHE_DEPTH` levels stay decoded in memory;
  deeper nodes are dropped back to their references, so memory does not grow
  with the trie.
* :func:`build_from_sorted` builds a trie from ascending keys with a stack of
  open branches (one per depth, found from the common prefix of neighbouring
  keys), emitting every node as soon as it is final: O(depth) memory.
* :meth:`Trie.items` walks the committed trie depth-first with an explicit
  stack, reading nodes from the database as it goes.
* With the C extension (:mod:`pycita.native`), :func:`build_from_sorted` and
  :func:`iter_items` run the same algorithms in C
  (:class:`pycita._native.TrieBuilder`, :class:`pycita._native.TrieWalker`):
  the same nodes, roots, order and errors, without per-item Python work.

Hashing goes through the extension's Keccak when it is loaded, else through the keccak one-shot entry point of pycryptodome's native
library when available (about twice as fast as going through its Python
wrapper); it is checked against :func:`pycita.crypto.keccak` at import and
falls back to it otherwise.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Final, Protocol

from pycita.crypto import keccak
from pycita.errors import DecodeError, PycitaError
from pycita.native import native as _native

__all__ = [
    "BLANK_ROOT",
    "CACHE_DEPTH",
    "MissingTrieNode",
    "NodeReader",
    "Trie",
    "build_from_sorted",
    "discard_node",
    "iter_item_batches",
    "iter_items",
]

BLANK_ROOT: Final[bytes] = keccak(b"\x80")
"""Root hash of the empty trie: keccak(rlp(b''))."""

CACHE_DEPTH: Final[int] = 3
"""Node levels (root = level 0) kept decoded in memory across commits."""

_EMPTY: Final[bytes] = b"\x80"  # reference piece of "no child" (rlp of b'')
_HEX: Final[str] = "0123456789abcdef"
_NIB: Final[dict[str, int]] = {c: i for i, c in enumerate(_HEX)}
_STR_HDR: Final[tuple[bytes, ...]] = tuple(bytes((0x80 + n,)) for n in range(56))
_LIST_HDR: Final[tuple[bytes, ...]] = tuple(bytes((0xC0 + n,)) for n in range(56))


class MissingTrieNode(PycitaError):
    """Raised when a node referenced by the trie is not in the database."""

    def __init__(self, node_hash: bytes) -> None:
        super().__init__(f"trie node {node_hash.hex()} is missing from the node database")
        self.node_hash = node_hash


class NodeReader(Protocol):
    """Read access to the node database: node hash -> node RLP (a dict or LevelDB fit)."""

    def get(self, key: bytes, /) -> bytes | None: ...


# --------------------------------------------------------------------------- hashing


def _load_oneshot() -> Callable[..., int] | None:
    """The native ``keccak_oneshot`` of pycryptodome, if loadable and correct."""
    try:
        from Crypto.Hash import keccak as _pycryptodome_keccak

        lib = ctypes.CDLL(_pycryptodome_keccak._raw_keccak_lib._name)
        fn = lib.keccak_oneshot
        fn.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_size_t,
            ctypes.c_ubyte,
            ctypes.c_ubyte,
        ]
        fn.restype = ctypes.c_int
        out = ctypes.create_string_buffer(32)
        for probe in (b"", b"\x80", bytes(range(256)) * 3):
            if fn(probe, len(probe), out, 32, 64, 24, 1) or out.raw != keccak(probe):
                return None
        return fn  # type: ignore[no-any-return]
    except Exception:  # any loading problem: use the portable path
        return None


_ONESHOT = _load_oneshot()


def _make_hasher() -> Callable[[bytes], bytes]:
    """A keccak-256 function with its own output buffer (one per trie or build)."""
    if _native is not None:
        return _native.keccak256  # type: ignore[no-any-return]
    fn = _ONESHOT
    if fn is None:
        return keccak
    out = ctypes.create_string_buffer(32)
    # Arguments already in their C types skip a conversion per call (about 25% faster).
    size, capacity = ctypes.c_size_t(32), ctypes.c_size_t(64)
    rounds, padding = ctypes.c_ubyte(24), ctypes.c_ubyte(1)

    def hasher(data: bytes) -> bytes:
        if fn(data, len(data), out, size, capacity, rounds, padding):
            raise RuntimeError("keccak_oneshot failed")
        return out.raw

    return hasher


_LOCAL = threading.local()


def _thread_hasher() -> Callable[[bytes], bytes]:
    """This thread's hasher (one output buffer per thread: the native call releases the GIL)."""
    hasher: Callable[[bytes], bytes] | None = getattr(_LOCAL, "hasher", None)
    if hasher is None:
        hasher = _LOCAL.hasher = _make_hasher()
    return hasher


# --------------------------------------------------------------------------- RLP


def _enc_str(data: bytes) -> bytes:
    """RLP of a byte string."""
    n = len(data)
    if n == 1 and data[0] < 0x80:
        return data
    if n < 56:
        return _STR_HDR[n] + data
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0xB7 + len(size),)) + size + data


def _enc_list(payload: bytes) -> bytes:
    """RLP of a list whose items' encodings concatenate to ``payload``."""
    n = len(payload)
    if n < 56:
        return _LIST_HDR[n] + payload
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0xF7 + len(size),)) + size + payload


def _enc_leaf(path: str, value: bytes) -> bytes:
    """RLP of a leaf (the hottest encoder, so _enc_str/_enc_list are inlined)."""
    hp = bytes.fromhex("3" + path if len(path) & 1 else "20" + path)
    h = len(hp)
    n = len(value)
    if n < 56:
        value_header = b"" if n == 1 and value[0] < 0x80 else _STR_HDR[n]
    else:
        size = n.to_bytes((n.bit_length() + 7) // 8, "big")
        value_header = bytes((0xB7 + len(size),)) + size
    if h > 1:
        hp_header = _STR_HDR[h] if h < 56 else _enc_str(hp)[:-h]  # a key of 55+ bytes: long form
        total = len(hp_header) + h + len(value_header) + n
    else:  # a single byte below 0x80 is its own encoding
        hp_header = b""
        total = 1 + len(value_header) + n
    if total < 56:
        return b"".join((_LIST_HDR[total], hp_header, hp, value_header, value))
    size = total.to_bytes((total.bit_length() + 7) // 8, "big")
    return b"".join((bytes((0xF7 + len(size),)), size, hp_header, hp, value_header, value))


def _enc_ext(path: str, child_ref: bytes) -> bytes:
    hp = bytes.fromhex("1" + path) if len(path) & 1 else bytes.fromhex("00" + path)
    return _enc_list(_enc_str(hp) + child_ref)


def _item(data: bytes, pos: int) -> tuple[int, int, bool]:
    """Locate the RLP item at ``pos``: (payload start, item end, is a list)."""
    b = data[pos]
    if b < 0x80:
        return pos, pos + 1, False
    if b < 0xB8:
        return pos + 1, pos + 1 + b - 0x80, False
    if b < 0xC0:
        start = pos + 1 + b - 0xB7
        return start, start + int.from_bytes(data[pos + 1 : start], "big"), False
    if b < 0xF8:
        return pos + 1, pos + 1 + b - 0xC0, True
    start = pos + 1 + b - 0xF7
    return start, start + int.from_bytes(data[pos + 1 : start], "big"), True


# --------------------------------------------------------------------------- nodes


class _Leaf:
    __slots__ = ("path", "value", "ref")

    def __init__(self, path: str, value: bytes, ref: bytes | None = None) -> None:
        self.path = path
        self.value = value
        self.ref = ref


class _Ext:
    __slots__ = ("path", "child", "ref")

    def __init__(self, path: str, child: _Slot, ref: bytes | None = None) -> None:
        self.path = path
        self.child = child
        self.ref = ref


class _Branch:
    __slots__ = ("children", "value", "ref")

    def __init__(self, children: list[_Slot], value: bytes, ref: bytes | None = None) -> None:
        self.children = children
        self.value = value
        self.ref = ref


_Node = _Leaf | _Ext | _Branch
_Slot = _Node | bytes  # bytes: an unresolved reference piece (``_EMPTY`` for none)


class _NoChange:
    """Sentinel: a delete found nothing to delete."""


_NOCHANGE: Final = _NoChange()


def _bad(raw: bytes, reason: str) -> DecodeError:
    return DecodeError(f"trie node {raw[:40].hex()}", reason)


def _decode(raw: bytes, ref: bytes) -> _Node:
    """Decode a node's RLP; ``ref`` is its reference piece (stored as its clean cache)."""
    try:
        start, end, is_list = _item(raw, 0)
        if not is_list or end != len(raw):
            raise _bad(raw, "not a single RLP list")
        a0, a1, a_list = _item(raw, start)
        if a1 >= end:
            raise _bad(raw, "not a leaf, extension or branch")
        b0, b1, b_list = _item(raw, a1)
        if b1 == end:  # two items: leaf or extension
            if a_list or a1 == a0:
                raise _bad(raw, "leaf or extension path is not a hex-prefix string")
            hp = raw[a0:a1].hex()
            flag = hp[0]
            if flag == "2" or flag == "3":
                if b_list:
                    raise _bad(raw, "leaf value is a list")
                return _Leaf(hp[2:] if flag == "2" else hp[1:], raw[b0:b1], ref)
            if flag == "0" or flag == "1":
                return _Ext(hp[2:] if flag == "0" else hp[1:], _child(raw, a1, b1, b_list), ref)
            raise _bad(raw, f"bad hex-prefix flag {flag}")
        children: list[_Slot] = []
        append = children.append
        pos = start
        for _ in range(16):
            b = raw[pos]
            if b == 0x80:
                append(_EMPTY)
                pos += 1
            elif b == 0xA0:
                append(raw[pos : pos + 33])
                pos += 33
            else:
                _, item_end, item_list = _item(raw, pos)
                append(_child(raw, pos, item_end, item_list))
                pos = item_end
        v0, v1, v_list = _item(raw, pos)
        if v_list or v1 != end:
            raise _bad(raw, "not a leaf, extension or branch")
        return _Branch(children, raw[v0:v1], ref)
    except IndexError:
        raise _bad(raw, "truncated") from None


def _child(raw: bytes, pos: int, end: int, is_list: bool) -> bytes:
    """A child reference piece taken from the parent's RLP."""
    piece = raw[pos:end]
    if is_list:
        if len(piece) >= 32:
            raise _bad(raw, "embedded child of 32 bytes or more")
        return piece
    if piece == _EMPTY:
        return _EMPTY
    if len(piece) != 33:
        raise _bad(raw, "child reference is neither empty, a hash nor an embedded node")
    return piece


def _lcp(a: str, b: str) -> int:
    """Length of the common prefix of two hex strings."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x = int(a[:n], 16) ^ int(b[:n], 16)
    return n - (x.bit_length() + 3) // 4


# --------------------------------------------------------------------------- trie


class Trie:
    """A hexary Merkle Patricia trie over a node database, with batched hashing.

    Reads and writes see uncommitted changes; :meth:`commit` hashes them and
    returns the new nodes, which the caller must write to the database (in
    its own atomic batch) before using the trie again: after a commit only the
    top levels stay in memory and everything else is read back from ``db``.
    Not thread-safe.
    """

    __slots__ = ("_db", "_root", "_root_hash", "_hash")

    def __init__(self, db: NodeReader, root_hash: bytes = BLANK_ROOT) -> None:
        if len(root_hash) != 32:
            raise ValueError(f"root hash must be 32 bytes, got {len(root_hash)}")
        self._db = db
        self._root_hash = bytes(root_hash)
        self._root: _Slot = _EMPTY if root_hash == BLANK_ROOT else b"\xa0" + root_hash
        self._hash = _make_hasher()

    def __repr__(self) -> str:
        return f"Trie(root_hash={self._root_hash.hex()})"

    @property
    def root_hash(self) -> bytes:
        """The root hash as of the last :meth:`commit` (or construction)."""
        return self._root_hash

    # ----------------------------------------------------------------- reads

    def _resolve(self, ref: bytes) -> _Node | None:
        """Load the node a reference piece points to (``None`` for no child)."""
        if len(ref) == 33:
            node_hash = ref[1:]
            raw = self._db.get(node_hash)
            if raw is None:
                raise MissingTrieNode(node_hash)
            # A small root is stored by hash but is embedded when it becomes a child.
            return _decode(raw, ref if len(raw) >= 32 else raw)
        if ref is _EMPTY or ref == _EMPTY:
            return None
        return _decode(ref, ref)

    def get(self, key: bytes) -> bytes:
        """The value at ``key`` (``b''`` when absent), including uncommitted changes."""
        k = key.hex()
        pos = 0
        slot = self._root
        while True:
            node = self._resolve(slot) if isinstance(slot, bytes) else slot
            if node is None:
                return b""
            if isinstance(node, _Branch):
                if pos == len(k):
                    return node.value
                slot = node.children[_NIB[k[pos]]]
                pos += 1
            elif isinstance(node, _Leaf):
                return node.value if k[pos:] == node.path else b""
            else:
                assert isinstance(node, _Ext)
                if not k.startswith(node.path, pos):
                    return b""
                pos += len(node.path)
                slot = node.child

    def items(self, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """(key, value) of the committed trie in ascending key order, from ``start`` on.

        Streams: nodes are read from the database as the walk reaches them and
        only the current path (at most 16 pending children a level) is held.
        """
        s = start.hex()
        root_hash = self._root_hash
        if root_hash == BLANK_ROOT:
            return
        resolve = self._resolve
        stack: list[tuple[str, bytes]] = [("", b"\xa0" + root_hash)]
        pop, push = stack.pop, stack.append
        while stack:
            prefix, ref = pop()
            node = resolve(ref)
            if isinstance(node, _Leaf):
                full = prefix + node.path
                if full >= s:
                    if len(full) & 1:
                        raise DecodeError("trie walk", f"trie key of an odd number of nibbles: {full}")
                    yield bytes.fromhex(full), node.value
            elif isinstance(node, _Branch):
                if node.value and prefix >= s:
                    if len(prefix) & 1:
                        raise DecodeError("trie walk", f"trie key of an odd number of nibbles: {prefix}")
                    yield bytes.fromhex(prefix), node.value
                children = node.children
                bounded = prefix <= s  # else every key below is >= start
                for j in range(15, -1, -1):
                    child = children[j]
                    if child is _EMPTY:
                        continue
                    p = prefix + _HEX[j]
                    if bounded and p < s[: len(p)]:
                        continue
                    assert isinstance(child, bytes)
                    push((p, child))
            elif isinstance(node, _Ext):
                p = prefix + node.path
                if p >= s[: len(p)]:
                    assert isinstance(node.child, bytes)
                    push((p, node.child))

    # ----------------------------------------------------------------- writes

    def set(self, key: bytes, value: bytes) -> None:
        """Set ``key`` to ``value``; an empty value deletes the key."""
        if value:
            self._root = self._put(self._root, key.hex(), value)
            return
        new = self._delete(self._root, key.hex())
        if not isinstance(new, _NoChange):
            self._root = _EMPTY if new is None else new

    def update_many(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """:meth:`set` each (key, value) in turn."""
        put, delete = self._put, self._delete
        for key, value in items:
            if value:
                self._root = put(self._root, key.hex(), value)
            else:
                new = delete(self._root, key.hex())
                if not isinstance(new, _NoChange):
                    self._root = _EMPTY if new is None else new

    def _put(self, slot: _Slot, key: str, value: bytes) -> _Node:
        node = self._resolve(slot) if isinstance(slot, bytes) else slot
        if node is None:
            return _Leaf(key, value)
        if isinstance(node, _Branch):
            if key:
                children = node.children
                i = _NIB[key[0]]
                children[i] = self._put(children[i], key[1:], value)
            else:
                node.value = value
            node.ref = None
            return node
        assert isinstance(node, _Leaf) or isinstance(node, _Ext)
        path = node.path
        if key == path:
            if isinstance(node, _Leaf):
                node.value = value
            else:
                node.child = self._put(node.child, "", value)
            node.ref = None
            return node
        n = _lcp(path, key)
        if n == len(path) and isinstance(node, _Ext):
            node.child = self._put(node.child, key[n:], value)
            node.ref = None
            return node
        slots: list[_Slot] = [_EMPTY] * 16
        branch = _Branch(slots, b"")
        if n == len(path):  # a leaf whose path is a proper prefix of key
            assert isinstance(node, _Leaf)
            branch.value = node.value
        else:
            rest = path[n + 1 :]
            if rest or isinstance(node, _Leaf):
                node.path = rest
                node.ref = None
                slots[_NIB[path[n]]] = node
            else:
                slots[_NIB[path[n]]] = node.child
        if n == len(key):
            branch.value = value
        else:
            slots[_NIB[key[n]]] = _Leaf(key[n + 1 :], value)
        if n:
            return _Ext(key[:n], branch)
        return branch

    def _delete(self, slot: _Slot, key: str) -> _Node | None | _NoChange:
        node = self._resolve(slot) if isinstance(slot, bytes) else slot
        if node is None:
            return _NOCHANGE
        if isinstance(node, _Leaf):
            return None if node.path == key else _NOCHANGE
        if isinstance(node, _Ext):
            path = node.path
            if not key.startswith(path):
                return _NOCHANGE
            new = self._delete(node.child, key[len(path) :])
            if new is _NOCHANGE or new is None:  # None: only in a non-normalised trie
                return new
            if isinstance(new, _Branch):
                node.child = new
                node.ref = None
                return node
            assert isinstance(new, _Leaf) or isinstance(new, _Ext)
            new.path = path + new.path
            new.ref = None
            return new
        assert isinstance(node, _Branch)
        children = node.children
        if key:
            i = _NIB[key[0]]
            child = children[i]
            if child is _EMPTY:
                return _NOCHANGE
            new = self._delete(child, key[1:])
            if isinstance(new, _NoChange):
                return new
            children[i] = _EMPTY if new is None else new
        else:
            if not node.value:
                return _NOCHANGE
            node.value = b""
        node.ref = None
        empties = children.count(_EMPTY)
        if empties < 15 or (empties == 15 and node.value):
            return node
        if empties == 16:
            return _Leaf("", node.value) if node.value else None
        j = next(i for i, c in enumerate(children) if c is not _EMPTY)
        only = children[j]
        only_node = self._resolve(only) if isinstance(only, bytes) else only
        assert only_node is not None
        if isinstance(only_node, _Branch):
            return _Ext(_HEX[j], only_node)
        assert isinstance(only_node, _Leaf) or isinstance(only_node, _Ext)
        only_node.path = _HEX[j] + only_node.path
        only_node.ref = None
        return only_node

    # ----------------------------------------------------------------- commit

    def commit(self) -> tuple[bytes, dict[bytes, bytes]]:
        """Hash the changes since the last commit.

        Returns the new root hash and the new nodes ``{hash: rlp}``; the caller
        writes them to the database (the trie does not write) before using the
        trie again.
        """
        root = self._root
        if root is _EMPTY:
            self._root_hash = BLANK_ROOT
            return BLANK_ROOT, {}
        if isinstance(root, bytes) or root.ref is not None:
            return self._root_hash, {}
        nodes: dict[bytes, bytes] = {}
        encoded = _encode(root, nodes, self._hash)
        root_hash = self._hash(encoded)
        nodes[root_hash] = encoded  # the root is stored even when small
        root.ref = encoded if len(encoded) < 32 else b"\xa0" + root_hash
        self._root_hash = root_hash
        self._root = _trim(root, CACHE_DEPTH)
        return root_hash, nodes


def _encode(node: _Node, nodes: dict[bytes, bytes], hasher: Callable[[bytes], bytes]) -> bytes:
    """RLP of ``node``, first giving its dirty descendants their references."""
    if isinstance(node, _Leaf):
        return _enc_leaf(node.path, node.value)
    if isinstance(node, _Ext):
        child = node.child
        if not isinstance(child, bytes):
            child = child.ref or _reference(child, nodes, hasher)
        return _enc_ext(node.path, child)
    assert isinstance(node, _Branch)
    pieces = [
        c if isinstance(c, bytes) else (c.ref or _reference(c, nodes, hasher))
        for c in node.children
    ]
    pieces.append(_enc_str(node.value))
    return _enc_list(b"".join(pieces))


def _reference(node: _Node, nodes: dict[bytes, bytes], hasher: Callable[[bytes], bytes]) -> bytes:
    """Encode a dirty non-root node, store it in ``nodes`` if hashed, return its reference."""
    encoded = _encode(node, nodes, hasher)
    if len(encoded) < 32:
        ref = encoded
    else:
        node_hash = hasher(encoded)
        nodes[node_hash] = encoded
        ref = b"\xa0" + node_hash
    node.ref = ref
    return ref


def _trim(node: _Node, depth: int) -> _Slot:
    """Drop committed nodes below ``depth`` levels back to their references."""
    if depth == 0:
        assert node.ref is not None
        return node.ref
    if isinstance(node, _Branch):
        children = node.children
        for i, c in enumerate(children):
            if not isinstance(c, bytes):
                children[i] = _trim(c, depth - 1)
    elif isinstance(node, _Ext) and not isinstance(node.child, bytes):
        node.child = _trim(node.child, depth - 1)
    return node


# --------------------------------------------------------------------------- bulk build


def _lcp_bytes(a: bytes, b: bytes) -> int:
    """Common prefix length, in nibbles, of two byte strings."""
    if len(a) == len(b):
        n = len(a)
        x = int.from_bytes(a, "big") ^ int.from_bytes(b, "big")
    else:
        n = min(len(a), len(b))
        x = int.from_bytes(a[:n], "big") ^ int.from_bytes(b[:n], "big")
    return 2 * n - (x.bit_length() + 3) // 4


def discard_node(_hash: bytes, _node: bytes, /) -> None:
    """A node sink that keeps nothing (root computation only; the native builder then skips the nodes)."""
    return None


_FEED: Final[int] = 2048  # pairs per call into the native builder


def _build_native(first: tuple[bytes, bytes], rest: Iterator[tuple[bytes, bytes]],
                  sink: Callable[[bytes, bytes], None],
                  sink_many: Callable[[list[tuple[bytes, bytes]]], None] | None) -> bytes:
    """:func:`build_from_sorted` with :class:`pycita._native.TrieBuilder` (same nodes, root and errors)."""
    assert _native is not None
    emit = sink is not discard_node or sink_many is not None
    builder = _native.TrieBuilder(emit)

    def hand_over(nodes: list[tuple[bytes, bytes]]) -> None:
        if sink_many is not None:
            if nodes:
                sink_many(nodes)
        elif emit:
            for node_hash, node in nodes:
                sink(node_hash, node)

    batch = [first]
    batch.extend(islice(rest, _FEED - 1))
    while batch:
        hand_over(builder.feed(batch))
        batch = list(islice(rest, _FEED))
    root, nodes = builder.finish()
    hand_over(nodes)
    return root  # type: ignore[no-any-return]


def iter_items(get: Callable[[bytes], bytes | None], root_hash: bytes, prefix: bytes = b"",
               batch: int = 1024) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of the trie at ``root_hash`` in ascending key order, the nodes read by ``get(prefix + hash)``.

    What :meth:`Trie.items` yields, without a :class:`Trie` (a bulk walk such as a snapshot export: ``get``
    can be a plain bound method, no wrapper per node). Raises :class:`MissingTrieNode` and
    :class:`DecodeError` as :meth:`Trie.items` does.
    """
    for pairs in iter_item_batches(get, root_hash, prefix, batch):
        yield from pairs


def iter_item_batches(get: Callable[[bytes], bytes | None], root_hash: bytes, prefix: bytes = b"",
                      batch: int = 1024) -> Iterator[list[tuple[bytes, bytes]]]:
    """:func:`iter_items` in lists of up to ``batch`` pairs (non-empty; ``(key, value)`` tuples), for a
    consumer that handles a batch at a time."""
    if len(root_hash) != 32:
        raise ValueError(f"root hash must be 32 bytes, got {len(root_hash)}")
    if root_hash == BLANK_ROOT:
        return
    if _native is None:
        class _Prefixed:
            def get(self, node_hash: bytes, /) -> bytes | None:
                return get(prefix + node_hash)

        items = Trie(_Prefixed(), root_hash).items()
        while True:
            pairs = list(islice(items, batch))
            if not pairs:
                return
            yield pairs
    walker = _native.TrieWalker(get, root_hash, prefix)
    while True:
        try:
            pairs = walker.next_batch(batch)
        except KeyError as exc:
            raise MissingTrieNode(exc.args[0]) from None
        except ValueError as exc:
            raise DecodeError("trie walk", str(exc)) from None
        if not pairs:
            return
        yield pairs


def build_from_sorted(items: Iterable[tuple[bytes, bytes]], sink: Callable[[bytes, bytes], None], *,
                      sink_many: Callable[[list[tuple[bytes, bytes]]], None] | None = None) -> bytes:
    """Build the trie of ``items`` (strictly ascending keys, non-empty values).

    Each hashed node is passed to ``sink(hash, rlp)`` as soon as it is final
    (the root last, stored even when small); memory is O(trie depth).
    With ``sink_many`` the same nodes go to it in lists instead (one call per
    batch, in the same order; ``sink`` is then not called).
    Returns the root hash (:data:`BLANK_ROOT` for no items). Raises
    :class:`ValueError` naming the key when keys are not strictly ascending
    or a value is empty.
    """
    iterator = iter(items)
    first = next(iterator, None)
    if first is None:  # no storage: nothing to build (the common case for accounts)
        return BLANK_ROOT
    if _native is not None:
        return _build_native(first, iterator, sink, sink_many)
    if sink_many is not None:
        return _build_python(first, iterator, lambda h, n: sink_many([(h, n)]))
    return _build_python(first, iterator, sink)


def _build_python(first: tuple[bytes, bytes], iterator: Iterator[tuple[bytes, bytes]],
                  sink: Callable[[bytes, bytes], None]) -> bytes:
    """The pure-Python :func:`build_from_sorted` (the reference of the native builder)."""
    hasher = _thread_hasher()
    nib = _NIB
    # Open branches, deepest last: (depth in nibbles, 16 child references + value).
    stack: list[tuple[int, list[bytes]]] = []

    def ref_of(encoded: bytes) -> bytes:
        if len(encoded) < 32:
            return encoded
        node_hash = hasher(encoded)
        sink(node_hash, encoded)
        return b"\xa0" + node_hash

    def close(path: str, target: int) -> bytes | None:
        """Finish the open branches deeper than ``target``; the root RLP when target < 0."""
        while stack and stack[-1][0] > target:
            depth, slots = stack.pop()
            value = slots.pop()
            slots.append(_enc_str(value))
            encoded = _enc_list(b"".join(slots))
            if stack and stack[-1][0] >= target:
                parent_depth, parent = stack[-1]
            elif target >= 0:
                parent_depth, parent = target, [_EMPTY] * 16 + [b""]
                stack.append((target, parent))
            else:
                return _enc_ext(path[:depth], ref_of(encoded)) if depth else encoded
            ref = ref_of(encoded)
            if depth > parent_depth + 1:
                ref = ref_of(_enc_ext(path[parent_depth + 1 : depth], ref))
            parent[nib[path[parent_depth]]] = ref
        return None

    key, value = first
    if not value:
        raise ValueError(f"empty value for key {key.hex()}")
    shared_before = -1  # common prefix with the previous key (-1: none)
    root_rlp: bytes | None = None
    path = key.hex()
    while True:
        following = next(iterator, None)
        if following is None:
            shared_after = -1
        else:
            next_key, next_value = following
            if not next_key > key:
                raise ValueError(
                    f"keys must be strictly ascending: key {next_key.hex()} follows {key.hex()}"
                )
            if not next_value:
                raise ValueError(f"empty value for key {next_key.hex()}")
            shared_after = _lcp_bytes(key, next_key)
        if shared_after > shared_before:
            stack.append((shared_after, [_EMPTY] * 16 + [b""]))
        if stack:
            depth, slots = stack[-1]
            if shared_after == len(path):  # key is a prefix of the next key
                slots[16] = value
            else:
                leaf = _enc_leaf(path[depth + 1 :], value)
                if len(leaf) < 32:
                    slots[nib[path[depth]]] = leaf
                else:
                    leaf_hash = hasher(leaf)
                    sink(leaf_hash, leaf)
                    slots[nib[path[depth]]] = b"\xa0" + leaf_hash
        else:  # a single item
            root_rlp = _enc_leaf(path, value)
        if following is None:
            if root_rlp is None:
                root_rlp = close(path, -1)
            break
        close(path, shared_after)
        key, value = following
        path = key.hex()
        shared_before = shared_after
    assert root_rlp is not None
    root_hash = hasher(root_rlp)
    sink(root_hash, root_rlp)
    return root_hash

"""Account state over Ethereum's hexary Merkle Patricia trie (DESIGN.md section 6).

The state trie maps the raw 20-byte address to the account RLP
``[nonce, balance, storage_root, code_hash, abi_hash]``. Each account's
storage trie maps raw storage keys to raw values (an empty value deletes the
key). Code and ABIs are stored by their keccak hash (keccak(b"") when
absent, never stored). Keys follow :mod:`pycita.state_schema`.

:class:`StateDB` opens the state at a root, reads accounts, applies changes in
memory (with checkpoints a failed transaction reverts to) and, on
:meth:`StateDB.commit`, hashes everything once with batched trie updates and
returns the new root plus the key/value puts for the caller to write in ONE
batch together with its own meta keys. Until those puts are written the
StateDB must not be used again (the tries read committed nodes back from the
store), exactly as with :class:`pycita.trie.Trie`.

Rules that make the root a pure function of the account values:

* an account whose fields all equal :data:`pycita.types.EMPTY_ACCOUNT` is never
  stored (setting an account to empty deletes it);
* storage tries are opened only for accounts whose storage is read or written;
* trie nodes, code and ABIs are content-addressed and never deleted, so every
  committed root stays readable (history, snapshots of a past height).

Speed: account values are plain tuples ``(nonce, balance, storage_root,
code_hash, abi_hash)``; a shared :class:`AccountCache` keeps decoded accounts of
the committed root across blocks, and a shared :class:`NodeStore` keeps raw
trie nodes in a bounded cache.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

import rlp

from pycita.crypto import EMPTY_KECCAK, Address, Hash32, keccak
from pycita.errors import PycitaError
from pycita.native import native as _native
from pycita.state_schema import NODE_PREFIX, abi_key, code_key
from pycita.storage import KV
from pycita.trie import BLANK_ROOT, MissingTrieNode, Trie, build_from_sorted
from pycita.types import Account

log = logging.getLogger(__name__)

__all__ = [
    "AccountCache",
    "AccountTuple",
    "EMPTY_TUPLE",
    "InsufficientBalance",
    "NodeStore",
    "StateCommit",
    "StateDB",
    "StateError",
    "decode_account",
    "encode_account",
    "rlp_bytes",
    "rlp_int",
    "rlp_list",
    "genesis_commit",
]

AccountTuple = tuple[int, int, bytes, bytes, bytes]
"""(nonce, balance, storage_root, code_hash, abi_hash)."""

EMPTY_TUPLE: Final[AccountTuple] = (0, 0, BLANK_ROOT, EMPTY_KECCAK, EMPTY_KECCAK)
_ABSENT: Final = object()


class StateError(PycitaError):
    """Raised when the store lacks data a state root refers to (trie node, code, ABI) or holds malformed data."""


class InsufficientBalance(StateError):
    """Raised when a debit exceeds the account's balance (``address``, ``balance``, ``amount`` carried)."""

    def __init__(self, address: bytes, balance: int, amount: int) -> None:
        super().__init__(f"insufficient balance: 0x{address.hex()} has {balance}, needs {amount}")
        self.address = address
        self.balance = balance
        self.amount = amount


def _fast_account(raw: bytes) -> AccountTuple | None:
    """The canonical short-form shapes of an account RLP decoded without pyrlp; ``None`` for anything else."""
    end = len(raw)
    if not end:
        return None
    b = raw[0]
    if 0xC0 <= b < 0xF8:
        p, n = 1, b - 0xC0
    elif b == 0xF8 and end > 1 and raw[1] >= 56:
        p, n = 2, raw[1]
    else:
        return None
    if p + n != end:
        return None
    items = []
    for _ in range(5):
        if p >= end:
            return None
        b = raw[p]
        if b < 0x80:
            items.append(raw[p : p + 1])
            p += 1
        elif b < 0xB8:
            n = b - 0x80
            if p + 1 + n > end or (n == 1 and raw[p + 1] < 0x80):
                return None
            items.append(raw[p + 1 : p + 1 + n])
            p += 1 + n
        else:
            return None
    if p != end:
        return None
    nonce, balance, storage_root, code_hash, abi_hash = items
    return (int.from_bytes(nonce, "big"), int.from_bytes(balance, "big"), storage_root, code_hash, abi_hash)


def decode_account(raw: bytes) -> AccountTuple:
    """Decode an account RLP into a tuple; raises :class:`StateError` on a malformed one."""
    fast = _native.decode_account(raw) if _native is not None else _fast_account(raw)
    if fast is not None:
        return fast
    try:
        items = rlp.decode(raw)
    except rlp.exceptions.DecodingError as exc:
        raise StateError(f"malformed account RLP: {exc}") from exc
    if not isinstance(items, list) or len(items) != 5 or not all(isinstance(i, bytes) for i in items):
        raise StateError("malformed account RLP: expected a list of 5 byte strings")
    nonce, balance, storage_root, code_hash, abi_hash = items
    return (int.from_bytes(nonce, "big"), int.from_bytes(balance, "big"), storage_root, code_hash, abi_hash)


def rlp_bytes(data: bytes) -> bytes:
    """RLP of a byte string (fast path for the fixed shapes encoded here)."""
    n = len(data)
    if n == 1 and data[0] < 0x80:
        return data
    if n < 56:
        return bytes((0x80 + n,)) + data
    ln = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0xB7 + len(ln),)) + ln + data


def rlp_int(value: int) -> bytes:
    """RLP of a non-negative integer (big-endian, no leading zeros)."""
    if value == 0:
        return b"\x80"
    if value < 0x80:
        return bytes((value,))
    return rlp_bytes(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def rlp_list(encoded_items: Sequence[bytes]) -> bytes:
    """RLP of a list whose items are already RLP-encoded."""
    payload = b"".join(encoded_items)
    n = len(payload)
    if n < 56:
        return bytes((0xC0 + n,)) + payload
    ln = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0xF7 + len(ln),)) + ln + payload


def encode_account(acct: AccountTuple) -> bytes:
    """RLP of an account tuple (the :class:`pycita.types.Account` encoding)."""
    nonce, balance, storage_root, code_hash, abi_hash = acct
    return rlp_list([rlp_int(nonce), rlp_int(balance), rlp_bytes(storage_root), rlp_bytes(code_hash),
                     rlp_bytes(abi_hash)])


class NodeStore:
    """Trie node reader over a store (``state_schema.node_key``) with a bounded cache of raw nodes.

    Nodes are content-addressed, so the cache is valid for every root and can
    be shared by all StateDBs over the same store. When full it is cleared.
    """

    def __init__(self, kv: KV, cache_limit: int = 100_000) -> None:
        self._kv = kv
        self._cache: dict[bytes, bytes] = {}
        self._limit = cache_limit

    @property
    def kv(self) -> KV:
        return self._kv

    def get(self, node_hash: bytes, /) -> bytes | None:
        raw = self._cache.get(node_hash)
        if raw is None:
            raw = self._kv.get(NODE_PREFIX + node_hash)
            if raw is not None:
                if len(self._cache) >= self._limit:
                    self._cache.clear()
                self._cache[node_hash] = raw
        return raw

    def clear_cache(self) -> None:
        self._cache.clear()


class AccountCache:
    """Decoded accounts (``None`` for absent) of one committed state root, shared across blocks.

    A :class:`StateDB` opened at ``root`` reads through it; after the caller has
    written a :class:`StateCommit` it calls :meth:`advance` so the cache follows
    the new root. Cleared when it grows past ``limit`` entries.
    """

    def __init__(self, root: bytes = BLANK_ROOT, limit: int = 500_000) -> None:
        self.root = bytes(root)
        self.accounts: dict[bytes, AccountTuple | None] = {}
        self.limit = limit

    def reset(self, root: bytes) -> None:
        self.root = bytes(root)
        self.accounts.clear()

    def advance(self, commit: StateCommit) -> None:
        """Follow ``commit`` (already written) from ``commit.parent_root`` to ``commit.state_root``."""
        if self.root != commit.parent_root:
            self.reset(commit.state_root)
            return
        if len(self.accounts) + len(commit.accounts) > self.limit:
            self.accounts.clear()
        self.accounts.update(commit.accounts)
        self.root = commit.state_root


@dataclass(frozen=True)
class StateCommit:
    """The outcome of :meth:`StateDB.commit`: new root and the puts to write in one batch."""

    parent_root: Hash32
    state_root: Hash32
    puts: dict[bytes, bytes]
    accounts: dict[bytes, AccountTuple | None]  # the accounts written (None: deleted)


class StateDB:
    """Mutable view of the account state at a root; see the module docstring.

    Not thread-safe. Reads are safe on any committed root while other StateDBs
    commit newer ones (nodes are never deleted).
    """

    def __init__(self, kv: KV, root: bytes = BLANK_ROOT, *, nodes: NodeStore | None = None,
                 cache: AccountCache | None = None) -> None:
        if len(root) != 32:
            raise ValueError(f"state root must be 32 bytes, got {len(root)}")
        self._kv = kv
        self._nodes = nodes if nodes is not None else NodeStore(kv)
        self._root = Hash32(bytes(root))
        self._base_root = self._root  # the root the shared cache must be at to be used
        self._cache = cache
        self._trie: Trie | None = None
        self._accounts: dict[bytes, AccountTuple | None] = {}
        self._dirty: set[bytes] = set()
        self._storage: dict[bytes, dict[bytes, bytes]] = {}
        self._storage_tries: dict[bytes, Trie] = {}
        self._new_code: dict[bytes, bytes] = {}
        self._new_abi: dict[bytes, bytes] = {}
        self._journal: list[tuple[bytes, object] | tuple[bytes, bytes, object]] = []

    def __repr__(self) -> str:
        return f"StateDB(root=0x{self._root.hex()}, touched={len(self._accounts)}, dirty={len(self._dirty)})"

    @property
    def root(self) -> Hash32:
        """The state root as of the last commit (or opening)."""
        return self._root

    @property
    def kv(self) -> KV:
        return self._kv

    # ------------------------------------------------------------------ reads

    def _state_trie(self) -> Trie:
        if self._trie is None:
            self._trie = Trie(self._nodes, self._root)
        return self._trie

    def _get(self, addr: bytes) -> AccountTuple | None:
        try:
            return self._accounts[addr]
        except KeyError:
            pass
        cache = self._cache
        use_cache = cache is not None and cache.root == self._base_root
        if use_cache:
            assert cache is not None
            hit = cache.accounts.get(addr, _ABSENT)
            if hit is not _ABSENT:
                self._accounts[addr] = hit  # type: ignore[assignment]
                return hit  # type: ignore[return-value]
        try:
            raw = self._state_trie().get(addr)
        except MissingTrieNode as exc:
            raise StateError(f"state {self._root.hex()}: {exc}") from exc
        acct = decode_account(raw) if raw else None
        self._accounts[addr] = acct
        if use_cache:
            assert cache is not None
            cache.accounts[addr] = acct
        return acct

    def get_account(self, addr: bytes) -> AccountTuple:
        """The account tuple (``EMPTY_TUPLE`` when absent), including uncommitted changes."""
        acct = self._get(addr)
        return EMPTY_TUPLE if acct is None else acct

    def account(self, addr: bytes) -> Account | None:
        """The account as a :class:`pycita.types.Account`, or ``None`` when it does not exist."""
        acct = self._get(addr)
        return None if acct is None or acct == EMPTY_TUPLE else Account(*acct)

    def exists(self, addr: bytes) -> bool:
        acct = self._get(addr)
        return acct is not None and acct != EMPTY_TUPLE

    def balance(self, addr: bytes) -> int:
        acct = self._get(addr)
        return 0 if acct is None else acct[1]

    def nonce(self, addr: bytes) -> int:
        acct = self._get(addr)
        return 0 if acct is None else acct[0]

    def code_hash(self, addr: bytes) -> bytes:
        acct = self._get(addr)
        return EMPTY_KECCAK if acct is None else acct[3]

    def is_contract(self, addr: bytes) -> bool:
        """True when the account holds code."""
        return self.code_hash(addr) != EMPTY_KECCAK

    def code(self, addr: bytes) -> bytes:
        return self._blob(self.code_hash(addr), self._new_code, code_key, "code")

    def abi(self, addr: bytes) -> bytes:
        acct = self._get(addr)
        return self._blob(EMPTY_KECCAK if acct is None else acct[4], self._new_abi, abi_key, "abi")

    def _blob(self, h: bytes, new: dict[bytes, bytes], key_of: object, what: str) -> bytes:
        if h == EMPTY_KECCAK:
            return b""
        data = new.get(h)
        if data is None:
            data = self._kv.get(key_of(h))  # type: ignore[operator]
            if data is None:
                raise StateError(f"{what} 0x{h.hex()} is missing from the state store")
        return data

    def _storage_trie(self, addr: bytes, storage_root: bytes) -> Trie:
        trie = self._storage_tries.get(addr)
        if trie is None or trie.root_hash != storage_root:
            trie = Trie(self._nodes, storage_root)
            self._storage_tries[addr] = trie
        return trie

    def storage(self, addr: bytes, key: bytes) -> bytes:
        """The storage value at ``key`` (``b""`` when absent), including uncommitted writes."""
        writes = self._storage.get(addr)
        if writes is not None and key in writes:
            return writes[key]
        acct = self._get(addr)
        if acct is None or acct[2] == BLANK_ROOT:
            return b""
        try:
            return self._storage_trie(addr, acct[2]).get(key)
        except MissingTrieNode as exc:
            raise StateError(f"storage of 0x{addr.hex()}: {exc}") from exc

    def storage_items(self, addr: bytes, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Committed storage of ``addr`` in ascending key order (uncommitted writes not included)."""
        acct = self._get(addr)
        if acct is None or acct[2] == BLANK_ROOT:
            return iter(())
        return Trie(self._nodes, acct[2]).items(start)

    def account_items(self, start: bytes = b"") -> Iterator[tuple[bytes, AccountTuple]]:
        """Committed accounts in ascending address order (streams from the store)."""
        for addr, raw in Trie(self._nodes, self._root).items(start):
            yield addr, decode_account(raw)

    # ------------------------------------------------------------ checkpoints

    def checkpoint(self) -> int:
        """Mark the current changes; :meth:`revert_to` undoes everything after the mark."""
        return len(self._journal)

    def revert_to(self, checkpoint: int) -> None:
        """Undo account and storage changes made after ``checkpoint``."""
        journal = self._journal
        while len(journal) > checkpoint:
            entry = journal.pop()
            if len(entry) == 2:
                self._accounts[entry[0]] = entry[1]  # type: ignore[assignment]
            else:
                addr, key, old = entry  # type: ignore[misc]
                writes = self._storage[addr]
                if old is _ABSENT:
                    del writes[key]
                else:
                    writes[key] = old  # type: ignore[assignment]

    def discard_checkpoint(self, checkpoint: int) -> None:
        """Keep the changes since ``checkpoint``; the outermost one (0) drops the journal."""
        if checkpoint == 0:
            self._journal.clear()

    # ----------------------------------------------------------------- writes

    def set_account(self, addr: bytes, acct: AccountTuple) -> None:
        old = self._get(addr)
        self._journal.append((addr, old))
        self._accounts[addr] = acct
        self._dirty.add(addr)

    def increment_nonce(self, addr: bytes) -> None:
        n, b, s, c, a = self.get_account(addr)
        self.set_account(addr, (n + 1, b, s, c, a))

    def add_balance(self, addr: bytes, amount: int) -> None:
        if amount < 0:
            raise ValueError("amount must not be negative")
        n, b, s, c, a = self.get_account(addr)
        self.set_account(addr, (n, b + amount, s, c, a))

    def sub_balance(self, addr: bytes, amount: int) -> None:
        """Debit ``amount``; raises :class:`InsufficientBalance` (changing nothing) when short."""
        if amount < 0:
            raise ValueError("amount must not be negative")
        n, b, s, c, a = self.get_account(addr)
        if b < amount:
            raise InsufficientBalance(addr, b, amount)
        self.set_account(addr, (n, b - amount, s, c, a))

    def transfer(self, sender: bytes, to: bytes, amount: int) -> None:
        """Move ``amount`` from ``sender`` to ``to``; raises :class:`InsufficientBalance` when short."""
        self.sub_balance(sender, amount)
        if amount or sender != to:
            self.add_balance(to, amount)

    def set_code(self, addr: bytes, code: bytes) -> None:
        h = keccak(code)
        if code:
            self._new_code[h] = code
        n, b, s, _c, a = self.get_account(addr)
        self.set_account(addr, (n, b, s, h, a))

    def set_abi(self, addr: bytes, abi: bytes) -> None:
        h = keccak(abi)
        if abi:
            self._new_abi[h] = abi
        n, b, s, c, _a = self.get_account(addr)
        self.set_account(addr, (n, b, s, c, h))

    def set_storage(self, addr: bytes, key: bytes, value: bytes) -> None:
        """Write ``value`` at ``key`` in the storage of ``addr`` (``b""`` deletes); ``key`` must be non-empty."""
        if not key:
            raise ValueError("storage key must not be empty")
        self._get(addr)
        writes = self._storage.setdefault(addr, {})
        self._journal.append((addr, key, writes.get(key, _ABSENT)))
        writes[key] = value
        self._dirty.add(addr)

    def update_storage(self, addr: bytes, pairs: Iterable[tuple[bytes, bytes]]) -> None:
        for key, value in pairs:
            self.set_storage(addr, key, value)

    # ----------------------------------------------------------------- commit

    def commit(self) -> StateCommit:
        """Hash all changes; returns the new root and the puts (nodes, code, ABIs) to write in one batch.

        Ends any open checkpoint. The caller must write ``puts`` before using
        this StateDB again.
        """
        self._journal.clear()
        nodes: dict[bytes, bytes] = {}
        try:
            for addr, writes in self._storage.items():
                if not writes:
                    continue
                acct = self._accounts.get(addr)
                if acct is None:
                    acct = EMPTY_TUPLE
                trie = self._storage_trie(addr, acct[2])
                trie.update_many(sorted(writes.items()))
                storage_root, new_nodes = trie.commit()
                nodes.update(new_nodes)
                if storage_root != acct[2]:
                    self._accounts[addr] = (acct[0], acct[1], storage_root, acct[3], acct[4])
            self._storage.clear()
            puts: dict[bytes, bytes] = {}
            updates: list[tuple[bytes, bytes]] = []
            written: dict[bytes, AccountTuple | None] = {}
            accounts = self._accounts
            new_code, new_abi = self._new_code, self._new_abi
            for addr in sorted(self._dirty):
                acct = accounts[addr]
                if acct is None or acct == EMPTY_TUPLE:
                    updates.append((addr, b""))
                    written[addr] = None
                    accounts[addr] = None
                    continue
                updates.append((addr, encode_account(acct)))
                written[addr] = acct
                if acct[3] in new_code:
                    puts[code_key(acct[3])] = new_code[acct[3]]
                if acct[4] in new_abi:
                    puts[abi_key(acct[4])] = new_abi[acct[4]]
            trie = self._state_trie()
            trie.update_many(updates)
            root, state_nodes = trie.commit()
        except MissingTrieNode as exc:
            raise StateError(f"state {self._root.hex()}: {exc}") from exc
        nodes.update(state_nodes)
        for h, node in nodes.items():
            puts[NODE_PREFIX + h] = node
        parent = self._root
        self._root = Hash32(root)
        self._dirty.clear()
        new_code.clear()
        new_abi.clear()
        if len(self._storage_tries) > 4096:
            self._storage_tries.clear()
        return StateCommit(parent, Hash32(root), puts, written)

    def after_write(self, commit: StateCommit) -> None:
        """Tell the state its ``commit`` has been written; advances the shared account cache."""
        if self._cache is not None:
            self._cache.advance(commit)
            if self._cache.root == commit.state_root:
                self._base_root = commit.state_root


def genesis_commit(items: Iterable[tuple[bytes, bytes]]) -> StateCommit:
    """Build the state of sorted (address, account RLP) ``items`` (``Genesis.state_items()``)."""
    puts: dict[bytes, bytes] = {}
    accounts: dict[bytes, AccountTuple | None] = {}

    def sink(h: bytes, node: bytes) -> None:
        puts[NODE_PREFIX + h] = node

    def tracked() -> Iterator[tuple[bytes, bytes]]:
        for addr, raw in items:
            accounts[addr] = decode_account(raw)
            yield addr, raw

    root = build_from_sorted(tracked(), sink)
    return StateCommit(Hash32(BLANK_ROOT), Hash32(root), puts, accounts)


def open_state(kv: KV, root: bytes) -> StateDB:
    """A fresh StateDB at ``root`` over ``kv`` (no shared caches), e.g. for a historical query."""
    return StateDB(kv, root)


def address(raw: bytes) -> Address:
    """Check ``raw`` is a 20-byte address."""
    if len(raw) != 20:
        raise ValueError(f"address must be 20 bytes, got {len(raw)}")
    return Address(raw)

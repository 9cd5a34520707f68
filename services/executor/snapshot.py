"""The executor's side of snapshot and restore (domain logic, no bus).

Export (:func:`export_state`): the state at the state root of H, streamed
from the executor store ascending by address through a fresh trie reader (no
cache shared with the executing thread; trie nodes, code and ABIs are
content-addressed and never deleted, so the state of H stays readable while
newer blocks are committed), with code and ABI by hash and each account's
storage ascending by key, then the stored headers 1..H, into
``FILE_executor.rlp`` with :func:`pycita.snapshot.state_format.write_state_file`
(which rebuilds the state root as it goes and refuses a file that would not
verify).

Restore (:func:`restore_state`): :func:`pycita.snapshot.verify.verify_executor_file`
checks the file (chunk hashes and bounds, the rebuilt state root against the
manifest and header H, headers chained to the local genesis, code/ABI
references, the trusted hash) and cross-checks the chain file's manifest
(same H, hash and state root; ``last_proof`` a quorum proof of H by the
genesis validators), while its sinks write a *staged* executor store
(``data/executor.staged``, a fresh LevelDB): every trie node of the rebuilt
state, each code/ABI blob, headers and height entries 1..H, plus the genesis
state and height 0, and the tip H -- a complete executor store. Then it is
closed, fsynced and marked complete. Any failure removes it and raises
:class:`pycita.snapshot.errors.SnapshotError`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import rlp

from pycita.crypto import EMPTY_KECCAK, Hash32, keccak
from pycita.errors import DecodeError
from pycita.execution import init_genesis_state
from pycita.genesis import Genesis
from pycita.snapshot.container import ReadProgress
from pycita.snapshot.errors import SnapshotError
from pycita.snapshot.journal import discard_staged, fsync_tree, write_complete_marker
from pycita.snapshot.state_format import AccountSource, HeaderEntry, PlainRun, plain_run, write_state_file
from pycita.snapshot.verify import verify_executor_file
from pycita.state import decode_account
from pycita.storage import KV, BackgroundWriter, LevelDB
from pycita.trie import BLANK_ROOT, MissingTrieNode, iter_item_batches, iter_items
from services.executor import schema

log = logging.getLogger(__name__)

BATCH_BYTES = 4 * 1024 * 1024

Check = Callable[[], None]
Progress = Callable[[int, int, int, int], None]
"""``(accounts, blocks, chunks_done, bytes_done)``."""


def _no_check() -> None:
    return None


def _no_progress(_accounts: int, _blocks: int, _chunks: int, _bytes: int) -> None:
    return None


@dataclass(frozen=True)
class StateSnapshotResult:
    height: int
    block_hash: Hash32
    state_root: Hash32
    path: Path
    file_size: int
    accounts: int


def _height_entry(kv: KV, height: int, name: str) -> tuple[bytes, bytes]:
    raw = kv.get(schema.height_key(height))
    if raw is None:
        raise SnapshotError(f"the executor has not committed block {height}", file=name, check="height")
    return schema.decode_height_entry(raw)


# ------------------------------------------------------------------ export


class _Account(NamedTuple):
    """The fields of :class:`pycita.types.Account` that :func:`write_state_file` reads (no sedes object per account)."""

    nonce: int
    balance: int
    storage_root: bytes
    code_hash: bytes
    abi_hash: bytes


def _node_getter(kv: KV) -> Callable[[bytes], bytes | None]:
    """Trie node reads for one export walk (keys ``NODE_PREFIX + hash``, see :func:`pycita.trie.iter_items`):
    no cache (a walk reads each node once) and, on LevelDB, reads that do not fill the block cache (an
    export of a large state would otherwise grow the process by the whole cache)."""
    uncached = getattr(kv, "uncached_getter", None)
    return uncached() if uncached is not None else kv.get  # type: ignore[no-any-return]


def export_state(kv: KV, genesis: Genesis, path: Path, height: int, *, check: Check = _no_check,
                 progress: Progress = _no_progress, fsync: bool = True) -> StateSnapshotResult:
    """Write ``path`` (the executor file): the state at ``height`` and headers 1..``height``.

    Raises :class:`SnapshotError` when the executor has not committed
    ``height``, lacks a header, or the state is incomplete; the partial file is removed.
    """
    name = str(path)
    if height <= 0:
        raise SnapshotError("height 0 is the genesis block, which is not exported", file=name, check="height")
    block_hash, state_root = _height_entry(kv, height, name)
    get_node = _node_getter(kv)
    counts = {"accounts": 0, "blocks": 0}

    def blob(key: bytes, digest: bytes, what: str, addr: bytes) -> bytes:
        if digest == EMPTY_KECCAK:
            return b""
        data = kv.get(key)
        if data is None:
            raise SnapshotError(f"{what} 0x{digest.hex()} of account 0x{addr.hex()} is missing from the store",
                                file=name, check="state store")
        return data

    def account(addr: bytes, raw: bytes) -> AccountSource:
        nonce, balance, storage_root, code_hash, abi_hash = decode_account(raw)
        code = b"" if code_hash == EMPTY_KECCAK else blob(schema.code_key(code_hash), code_hash, "code", addr)
        abi = b"" if abi_hash == EMPTY_KECCAK else blob(schema.abi_key(abi_hash), abi_hash, "abi", addr)
        # an account without storage passes an empty tuple (the writer's fast path), others their walk
        storage: Iterable[tuple[bytes, bytes]] = (() if storage_root == BLANK_ROOT
                                                  else iter_items(get_node, storage_root, schema.NODE_PREFIX))
        return (addr, _Account(nonce, balance, storage_root, code_hash, abi_hash), code,  # type: ignore[return-value]
                abi, storage)

    def accounts() -> Iterator[AccountSource | PlainRun]:
        # a batch of the walk at a time (the abort check and progress once a batch): runs of plain accounts
        # go to the writer as they are read (see PlainRun), each other account as an AccountSource
        count = 0
        prev: bytes | None = None
        for pairs in iter_item_batches(get_node, state_root, schema.NODE_PREFIX, 1024):
            check()
            progress(count, 0, 0, 0)
            i, n = 0, len(pairs)
            while i < n:
                run, i = plain_run(pairs, i, prev)
                if run is not None:
                    yield run
                    prev = pairs[i - 1][0]
                if i < n:
                    addr, raw = pairs[i]
                    yield account(addr, raw)
                    prev = addr
                    i += 1
            count += n
        counts["accounts"] = count
        progress(count, 0, 0, 0)

    def headers() -> Iterator[bytes]:
        # the stored RLP (the writer reads the fields it checks from it and refuses a bad one); the abort
        # check and progress every 256 headers
        get = kv.get
        for number in range(1, height + 1):
            if not number & 255 or number == 1:
                check()
                counts["blocks"] = number
                progress(counts["accounts"], number, 0, 0)
            raw = get(schema.header_key(number))
            if raw is None:
                raise SnapshotError(f"the executor store has no header of block {number}", file=name,
                                    check="headers")
            yield raw
        counts["blocks"] = height
        progress(counts["accounts"], height, 0, 0)

    last = kv.get(schema.header_key(height))
    if last is not None and keccak(last) != block_hash:
        raise SnapshotError(f"the stored header of block {height} does not hash to the committed block hash",
                            file=name, check="headers", expected=block_hash, actual=keccak(last))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        manifest = write_state_file(path, accounts(), headers(), genesis=genesis, fsync=fsync)
    except (DecodeError, MissingTrieNode) as exc:
        raise SnapshotError(f"the executor store is damaged: {exc}", file=name, check="state store") from exc
    if manifest.block_hash != block_hash or manifest.state_root != state_root:
        path.unlink(missing_ok=True)
        raise SnapshotError(f"the headers end at 0x{manifest.block_hash.hex()}, the executor committed "
                            f"0x{bytes(block_hash).hex()} at {height}", file=name, check="headers")
    return StateSnapshotResult(height, Hash32(block_hash), Hash32(state_root), path, path.stat().st_size,
                               manifest.account_count)


# ----------------------------------------------------------------- restore


class _StagedWriter:
    """The node, blob and header sinks: batches written into the staged store by a background thread
    (:class:`pycita.storage.BackgroundWriter`) while the verifier goes on."""

    def __init__(self, db: LevelDB, check: Check, progress: Progress) -> None:
        self.db = db
        self.check = check
        self.progress = progress
        self.writer = BackgroundWriter(db)
        self.puts: dict[bytes, bytes] = {}
        self.size = 0
        self.nodes = 0
        self.blocks = 0
        self.chunks_done = 0
        self.bytes_done = 0

    def put(self, key: bytes, value: bytes) -> None:
        self.puts[key] = value
        self.size += len(key) + len(value)
        if self.size >= BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.puts:
            self.check()
            self.writer.submit(self.puts)
            self.puts = {}
            self.size = 0

    def finish(self) -> None:
        """Write what is left and wait for every batch (synced)."""
        self.check()
        puts, self.puts = self.puts, {}
        self.writer.close(puts, sync=True)

    def abandon(self) -> None:
        """Stop the writer thread after a failure (its own failure, if any, is dropped: one error is raised)."""
        try:
            self.writer.close()
        except BaseException:  # noqa: BLE001 - the caller is already raising
            pass

    def node_batch(self, nodes: list[tuple[bytes, bytes]]) -> None:
        prefix = schema.NODE_PREFIX
        puts = self.puts
        size = 0
        for node_hash, node in nodes:
            puts[prefix + node_hash] = node
            size += len(node)
        self.nodes += len(nodes)
        self.size += size + 33 * len(nodes)
        if self.size >= BATCH_BYTES:
            self.flush()

    def node(self, node_hash: bytes, node: bytes) -> None:
        self.nodes += 1
        self.put(schema.node_key(node_hash), node)

    def blob(self, digest: bytes, data: bytes) -> None:
        # the sink does not say whether the bytes serve as code or ABI (or both): keep both keys
        self.put(schema.code_key(digest), data)
        self.put(schema.abi_key(digest), data)

    def header(self, entry: HeaderEntry) -> None:
        number = entry.number
        self.put(schema.header_key(number), rlp.encode(entry.header))
        self.put(schema.height_key(number), schema.encode_height_entry(entry.hash, entry.header.state_root))
        self.blocks += 1
        self.progress(0, self.blocks, self.chunks_done, self.bytes_done)

    def on_read(self, p: ReadProgress) -> None:
        self.chunks_done = p.chunk + 1
        self.bytes_done = p.bytes_done
        self.progress(0, self.blocks, self.chunks_done, self.bytes_done)


def restore_state(path: Path, chain_path: Path, genesis: Genesis, staged: Path, *,
                  trusted_hash: bytes | None = None, check: Check = _no_check,
                  progress: Progress = _no_progress) -> StateSnapshotResult:
    """Verify the executor file ``path`` (against the chain file's manifest) into ``staged``.

    Raises :class:`SnapshotError` (the staged store is removed).
    """
    for p in (path, chain_path):
        if not p.is_file():
            raise SnapshotError("the snapshot file does not exist", file=str(p), check="file")
    discard_staged(staged)
    staged.parent.mkdir(parents=True, exist_ok=True)
    db = LevelDB(staged)
    closed = False
    try:
        commit = init_genesis_state(db, genesis)
        genesis_hash = genesis.hash
        db.write({schema.height_key(0): schema.encode_height_entry(genesis_hash, commit.state_root),
                  schema.GENESIS: genesis_hash})
        writer = _StagedWriter(db, check, progress)
        try:
            report = verify_executor_file(path, genesis, chain_path=chain_path,
                                          trusted_hash=trusted_hash or None, node_sink=writer.node,
                                          node_batch_sink=writer.node_batch, blob_sink=writer.blob,
                                          header_sink=writer.header, progress=writer.on_read)
            check()
            height = report.height
            writer.put(schema.TIP, schema.encode_tip(height))
            writer.finish()
            db.flush_memtable()  # the service opens the store right after the swap: no log to replay then
        except BaseException:
            writer.abandon()
            raise
        db.close()
        closed = True
        fsync_tree(staged)
        write_complete_marker(staged, height=height, block_hash=report.block_hash, state_root=report.state_root)
        log.info("executor: staged state of block %d (root 0x%s, %d accounts, %d trie nodes) from %s", height,
                 report.state_root.hex()[:16], report.accounts, writer.nodes, path)
        return StateSnapshotResult(height, report.block_hash, report.state_root, path, report.bytes,
                                   report.accounts)
    except BaseException:
        if not closed:
            db.close()
        try:
            discard_staged(staged)
        except OSError as exc:
            log.warning("executor: cannot remove the staged store %s: %s", staged, exc)
        raise

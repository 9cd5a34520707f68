"""Offline verification of a snapshot file pair (DESIGN.md section 7).

Used by restore (with sinks, so verifying and staging are one pass) and by
``snapshot_tool -m verify`` (without sinks: writes nothing).

What is checked, and the error raised (all :class:`SnapshotError`):

* container: trailer offset (:class:`BadTrailingOffset`, :class:`TruncatedFile`),
  canonical manifest RLP, shape, version and a contiguous chunk table
  (:class:`ManifestError`, :class:`UnsupportedVersion`); every chunk's keccak
  of its compressed bytes (:class:`ChunkHashMismatch`); its declared
  decompressed size against the bounds *before* decompressing
  (:class:`ChunkTooLarge`); decompression, canonical RLP and the shape of
  every item (:class:`ChunkDecodeError`);
* identity: the manifests' ``genesis_hash`` and ``chain_id`` equal the local
  genesis' (:class:`WrongChain`); the optional trusted hash equals
  ``block_hash`` (:class:`TrustedHashMismatch`); both manifests name the
  same H, block hash, state root, chain id and genesis (:class:`FilesDisagree`);
* ``last_proof`` (chain manifest) is a valid quorum proof of (H, block_hash)
  by the genesis validators under the genesis chain id, in canonical encoding
  (re-encoding its certificate gives the same bytes) (:class:`ProofInvalid`);
* headers, in each file: each chunk's ``parent_number, parent_hash`` and
  each header's number and parent hash follow the previous header, starting
  at genesis (:class:`HeaderChainBroken`, :class:`WrongChain` for the first);
  the last header is H and its hash is ``block_hash``
  (:class:`BlockHashMismatch`); its ``state_root`` is the manifest's
  (:class:`StateRootMismatch`);
* chain file: exactly the newest ``full_blocks`` blocks carry receipts and
  body; their ``transactions_root`` / ``receipts_root`` recompute, and the
  receipts name the body's transactions in order (:class:`BodyRootMismatch`);
* executor file: accounts strictly ascending, storage keys strictly ascending
  across the pieces of a split account (:class:`OrderError`); pieces agree on
  nonce, balance, code and ABI and continuation pieces carry storage
  (:class:`ChunkDecodeError`); every by-hash code/ABI reference names bytes
  emitted inline earlier (:class:`MissingCodeOrAbi`); the state trie rebuilt
  from the accounts (storage roots included) has the manifest's state root,
  which is header H's (:class:`StateRootMismatch`); ``account_count``
  (:class:`ManifestError`).

Per-block proofs inside headers are not re-verified: the chain of parent
hashes from the quorum-proved block H covers every earlier header byte.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import rlp

from pycita.crypto import EMPTY_KECCAK, Hash32, keccak
from pycita.genesis import Genesis
from pycita.proof import ProofError, verify_proof
from pycita.snapshot.chain_format import ChainEntry, ChainFileReader, ChainManifest, read_chain_manifest
from pycita.snapshot.container import ProgressFn
from pycita.snapshot.errors import (
    BlockHashMismatch,
    BodyRootMismatch,
    ChunkDecodeError,
    FilesDisagree,
    HeaderChainBroken,
    ManifestError,
    MissingCodeOrAbi,
    OrderError,
    ProofInvalid,
    StateRootMismatch,
    TrustedHashMismatch,
    WrongChain,
)
from pycita.snapshot.state_format import (
    BlobState,
    ExecutorFileReader,
    ExecutorManifest,
    FatAccount,
    HeaderEntry,
    account_rlp,
    read_executor_manifest,
)
from pycita.trie import BLANK_ROOT, build_from_sorted, discard_node
from pycita.types import Header, ordered_root

__all__ = [
    "BlobSink",
    "BlockSink",
    "HeaderSink",
    "NodeSink",
    "VerifyReport",
    "verify_chain_file",
    "verify_executor_file",
    "verify_snapshot",
]

logger = logging.getLogger(__name__)

NodeSink = Callable[[bytes, bytes], None]
NodeBatchSink = Callable[[list[tuple[bytes, bytes]]], None]
"""Receives every hashed trie node (state and storage tries) as ``(hash, node RLP)``."""
BlobSink = Callable[[Hash32, bytes], None]
"""Receives each code/ABI blob once, when emitted inline: ``(keccak(blob), blob)``."""
BlockSink = Callable[[ChainEntry], None]
"""Receives each chain-file block after its linkage (and body roots) checked."""
HeaderSink = Callable[[HeaderEntry], None]
"""Receives each executor-file header after its linkage checked."""


@dataclass(frozen=True)
class VerifyReport:
    """What was verified. Counts are 0 for a file that was not read."""

    height: int
    block_hash: Hash32
    state_root: Hash32
    chain_file: str | None
    executor_file: str | None
    cross_checked: bool
    chunks: int
    blocks: int
    full_blocks: int
    headers: int
    accounts: int
    account_pieces: int
    storage_slots: int
    blobs: int
    bytes: int
    elapsed: float


def _check_identity(name: str, chain_id: int, genesis_hash: bytes, block_hash: bytes, genesis: Genesis,
                    local_genesis_hash: bytes, trusted_hash: bytes | None) -> None:
    if genesis_hash != local_genesis_hash:
        raise WrongChain("the snapshot is of another chain (genesis hash differs from the local genesis)",
                         file=name, expected=local_genesis_hash, actual=genesis_hash)
    if chain_id != genesis.chain_id:
        raise WrongChain("the snapshot's chain id differs from the local genesis'", file=name,
                         expected=genesis.chain_id, actual=chain_id)
    if trusted_hash is not None and block_hash != trusted_hash:
        raise TrustedHashMismatch("the snapshot's block hash is not the trusted one", file=name,
                                  expected=trusted_hash, actual=block_hash)


def _cross_check(chain: ChainManifest, chain_name: str, executor: ExecutorManifest, executor_name: str) -> None:
    pairs: tuple[tuple[str, object, object], ...] = (
        ("block_number", chain.block_number, executor.block_number),
        ("block_hash", chain.block_hash, executor.block_hash),
        ("state_root", chain.state_root, executor.state_root),
        ("chain_id", chain.chain_id, executor.chain_id),
        ("genesis_hash", chain.genesis_hash, executor.genesis_hash),
    )
    for field, c, e in pairs:
        if c != e:
            raise FilesDisagree(f"{field} differs between {chain_name} (expected) and {executor_name} (actual)",
                                file=executor_name, expected=c, actual=e)


def _check_proof(name: str, manifest: ChainManifest, genesis: Genesis, local_genesis_hash: bytes) -> None:
    height = int(manifest.block_number)
    if height == 0:
        if manifest.block_hash != local_genesis_hash:
            raise BlockHashMismatch("a snapshot at height 0 must name the genesis block", file=name,
                                    expected=local_genesis_hash, actual=manifest.block_hash)
        if manifest.last_proof:
            raise ProofInvalid("a snapshot at height 0 has no proof", file=name)
        return
    try:
        qc = verify_proof(manifest.last_proof, chain_id=genesis.chain_id, height=height,
                          block_hash=manifest.block_hash, validators=genesis.validators)
    except ProofError as e:
        raise ProofInvalid(f"last_proof does not prove block {height}: {e}", file=name) from e
    canonical = qc.to_proof_bytes()
    if canonical != manifest.last_proof:
        # decode_qc tolerates e.g. a round encoded as b"\x00"; the bytes restore hands on must be canonical
        raise ProofInvalid("last_proof is not canonically encoded", file=name, expected=canonical,
                           actual=manifest.last_proof)


class _HeaderChain:
    """Follows headers from genesis to H, checking numbers, parent hashes and chunk prefixes."""

    def __init__(self, name: str, genesis_header: Header, genesis_hash: bytes, height: int) -> None:
        self.name = name
        self.height = height
        self.number = 0
        self.hash = genesis_hash
        self.state_root: bytes = genesis_header.state_root
        self.count = 0

    def step(self, chunk: int, header: Header, block_hash: bytes,
             chunk_parent: tuple[int, bytes] | None) -> None:
        name = self.name
        if chunk_parent is not None and chunk_parent != (self.number, self.hash):
            cls = WrongChain if self.number == 0 and chunk_parent[0] == 0 else HeaderChainBroken
            raise cls("the chunk's declared parent is not the previous block", file=name, chunk=chunk,
                      expected=(self.number, "0x" + self.hash.hex()),
                      actual=(chunk_parent[0], "0x" + chunk_parent[1].hex()))
        number = int(header.number)
        if number != self.number + 1:
            raise HeaderChainBroken("block numbers must be consecutive", file=name, chunk=chunk,
                                    expected=self.number + 1, actual=number)
        if number > self.height:
            raise HeaderChainBroken(f"block {number} is above the manifest height {self.height}", file=name,
                                    chunk=chunk, expected=self.height, actual=number)
        if header.parent_hash != self.hash:
            cls = WrongChain if number == 1 else HeaderChainBroken
            raise cls(f"block {number}'s parent hash is not the hash of block {self.number}", file=name,
                      chunk=chunk, expected=self.hash, actual=header.parent_hash)
        self.number = number
        self.hash = block_hash
        self.state_root = header.state_root
        self.count += 1

    def finish(self, block_hash: bytes, state_root: bytes) -> None:
        name = self.name
        if self.number != self.height:
            raise BlockHashMismatch(f"the headers end at block {self.number}, the manifest names {self.height}",
                                    file=name, expected=self.height, actual=self.number)
        if self.hash != block_hash:
            raise BlockHashMismatch(f"hash of header {self.height} differs from the manifest's block_hash",
                                    file=name, expected=block_hash, actual=self.hash)
        if self.state_root != state_root:
            raise StateRootMismatch(f"header {self.height}'s state_root differs from the manifest's",
                                    file=name, expected=state_root, actual=self.state_root)


def _check_body(name: str, entry: ChainEntry) -> None:
    assert entry.receipts is not None and entry.body is not None
    header = entry.header
    number = entry.number
    tx_hashes: list[bytes] = [tx.hash for tx in entry.body]
    root = ordered_root(tx_hashes)
    if root != header.transactions_root:
        raise BodyRootMismatch(f"block {number}: body does not hash to transactions_root", file=name,
                               chunk=entry.chunk, expected=header.transactions_root, actual=root)
    root = ordered_root([rlp.encode(r) for r in entry.receipts])
    if root != header.receipts_root:
        raise BodyRootMismatch(f"block {number}: receipts do not hash to receipts_root", file=name,
                               chunk=entry.chunk, expected=header.receipts_root, actual=root)
    if len(entry.receipts) != len(tx_hashes):
        raise BodyRootMismatch(f"block {number}: one receipt per transaction", file=name, chunk=entry.chunk,
                               expected=len(tx_hashes), actual=len(entry.receipts))
    for i, (receipt, tx_hash) in enumerate(zip(entry.receipts, tx_hashes, strict=True)):
        if receipt.tx_hash != tx_hash:
            raise BodyRootMismatch(f"block {number}: receipt {i} is not for transaction {i}", file=name,
                                   chunk=entry.chunk, expected=tx_hash, actual=receipt.tx_hash)


def verify_chain_file(
    path: str | os.PathLike[str],
    genesis: Genesis,
    *,
    executor_path: str | os.PathLike[str] | None = None,
    trusted_hash: bytes | None = None,
    block_sink: BlockSink | None = None,
    progress: ProgressFn | None = None,
) -> VerifyReport:
    """Verify a chain file against the local genesis (and the executor file's manifest, when given).

    Streams the file once; ``block_sink`` gets each block as soon as it is
    checked (a later failure still raises, so stage, don't commit).
    Raises :class:`SnapshotError`.
    """
    start = time.monotonic()
    genesis_header = genesis.header()
    genesis_hash = genesis_header.hash
    with ChainFileReader(path) as reader:
        name = reader.name
        m = reader.manifest
        _check_identity(name, m.chain_id, m.genesis_hash, m.block_hash, genesis, genesis_hash, trusted_hash)
        if executor_path is not None:
            _cross_check(m, name, read_executor_manifest(executor_path), str(executor_path))
        _check_proof(name, m, genesis, genesis_hash)
        height = int(m.block_number)
        if m.full_blocks > height:
            raise ManifestError("full_blocks exceeds the height", file=name, expected=f"<= {height}",
                                actual=m.full_blocks)
        first_full = height - m.full_blocks + 1
        chain = _HeaderChain(name, genesis_header, genesis_hash, height)
        full = 0
        for entry in reader.entries(progress):
            chain.step(entry.chunk, entry.header, entry.hash, entry.chunk_parent)
            if (entry.body is not None) != (entry.number >= first_full):
                raise ChunkDecodeError(f"block {entry.number}: exactly the newest {m.full_blocks} blocks must "
                                       "carry receipts and body", file=name, chunk=entry.chunk, check="history")
            if entry.body is not None:
                _check_body(name, entry)
                full += 1
            if block_sink is not None:
                block_sink(entry)
        chain.finish(m.block_hash, m.state_root)
        report = VerifyReport(
            height=height, block_hash=m.block_hash, state_root=m.state_root, chain_file=name,
            executor_file=None if executor_path is None else str(executor_path),
            cross_checked=executor_path is not None, chunks=len(m.chunks), blocks=chain.count,
            full_blocks=full, headers=0, accounts=0, account_pieces=0, storage_slots=0, blobs=0,
            bytes=reader.file_size, elapsed=time.monotonic() - start,
        )
    logger.info("verified %s: height %d, %d blocks in %d chunks, %.2fs", name, height, report.blocks,
                report.chunks, report.elapsed)
    return report


class _StateCheck:
    """Rebuilds the state trie from streamed fat accounts, checking order, splits and blob references."""

    def __init__(self, name: str, pieces: Iterator[FatAccount], node_sink: NodeSink,
                 blob_sink: BlobSink | None, node_batch_sink: NodeBatchSink | None = None) -> None:
        self.name = name
        self.pieces = pieces
        self.node_sink = node_sink
        self.node_batch_sink = node_batch_sink
        self.blob_sink = blob_sink
        self.next_piece = next(pieces, None)
        self.pushed_back: FatAccount | None = None  # a piece read ahead by _accounts, for _storage
        self.emitted: set[bytes] = set()
        self.accounts = 0
        self.piece_count = 0
        self.slots = 0
        self.blobs = 0

    def _resolve(self, piece: FatAccount, state: BlobState, data: bytes, what: str) -> bytes:
        if state == BlobState.EMPTY:
            return EMPTY_KECCAK
        if state == BlobState.INLINE:
            digest = keccak(data)
            if digest not in self.emitted:
                self.emitted.add(digest)
                self.blobs += 1
                if self.blob_sink is not None:
                    self.blob_sink(digest, data)
            return digest
        if data not in self.emitted:
            raise MissingCodeOrAbi(f"account 0x{piece.address.hex()}: {what} hash references bytes not "
                                   "emitted earlier", file=self.name, chunk=piece.chunk, actual=data)
        return data

    def root(self) -> bytes:
        try:
            return build_from_sorted(self._accounts(), self.node_sink, sink_many=self.node_batch_sink)
        except ValueError as e:  # order and empty values are checked first; kept as a safety net
            raise OrderError(str(e), file=self.name) from e

    def _accounts(self) -> Iterator[tuple[bytes, bytes]]:
        prev: bytes | None = None
        while self.next_piece is not None:
            first = self.next_piece
            if prev is not None and first.address <= prev:
                raise OrderError("accounts must be strictly ascending by address", file=self.name,
                                 chunk=first.chunk, expected=f"> 0x{prev.hex()}", actual=first.address)
            prev = first.address
            code_hash = self._resolve(first, first.code_state, first.code, "code")
            abi_hash = self._resolve(first, first.abi_state, first.abi, "abi")
            if not first.storage:  # most accounts: no storage and no further piece, no trie to build
                nxt = next(self.pieces, None)
                if nxt is None or nxt.address != first.address:
                    self.piece_count += 1
                    self.next_piece = nxt
                    self.accounts += 1
                    yield first.address, account_rlp(first.nonce, first.balance, BLANK_ROOT, code_hash, abi_hash)
                    continue
                self.pushed_back = nxt  # a continuation piece (checked by _storage)
            try:
                storage_root = build_from_sorted(self._storage(first, code_hash, abi_hash), self.node_sink,
                                                 sink_many=self.node_batch_sink)
            except ValueError as e:
                raise OrderError(f"account 0x{first.address.hex()}: {e}", file=self.name,
                                 chunk=first.chunk) from e
            self.accounts += 1
            yield first.address, account_rlp(first.nonce, first.balance, storage_root, code_hash, abi_hash)

    def _storage(self, first: FatAccount, code_hash: bytes, abi_hash: bytes) -> Iterator[tuple[bytes, bytes]]:
        piece = first
        last_key: bytes | None = None
        while True:
            self.piece_count += 1
            for key, value in piece.storage:
                if last_key is not None and key <= last_key:
                    raise OrderError(f"account 0x{first.address.hex()}: storage keys must be strictly ascending",
                                     file=self.name, chunk=piece.chunk, expected=f"> 0x{last_key.hex()}",
                                     actual=key)
                last_key = key
                yield key, value
            self.slots += len(piece.storage)
            nxt, self.pushed_back = (self.pushed_back, None) if self.pushed_back is not None else (
                next(self.pieces, None), None)
            if nxt is None or nxt.address != first.address:
                self.next_piece = nxt
                return
            self._check_continuation(first, nxt, code_hash, abi_hash)
            piece = nxt

    def _check_continuation(self, first: FatAccount, piece: FatAccount, code_hash: bytes, abi_hash: bytes) -> None:
        where = f"account 0x{first.address.hex()}: split piece"
        if (piece.nonce, piece.balance) != (first.nonce, first.balance):
            raise ChunkDecodeError(f"{where} disagrees on nonce/balance", file=self.name, chunk=piece.chunk,
                                   check="split account", expected=(first.nonce, first.balance),
                                   actual=(piece.nonce, piece.balance))
        code = self._resolve(piece, piece.code_state, piece.code, "code")
        abi = self._resolve(piece, piece.abi_state, piece.abi, "abi")
        if code != code_hash or abi != abi_hash:
            raise ChunkDecodeError(f"{where} disagrees on code/abi", file=self.name, chunk=piece.chunk,
                                   check="split account", expected=(code_hash, abi_hash), actual=(code, abi))
        if not piece.storage:
            raise ChunkDecodeError(f"{where} carries no storage", file=self.name, chunk=piece.chunk,
                                   check="split account")


def verify_executor_file(
    path: str | os.PathLike[str],
    genesis: Genesis,
    *,
    chain_path: str | os.PathLike[str],
    trusted_hash: bytes | None = None,
    node_sink: NodeSink | None = None,
    blob_sink: BlobSink | None = None,
    header_sink: HeaderSink | None = None,
    progress: ProgressFn | None = None,
    node_batch_sink: NodeBatchSink | None = None,
) -> VerifyReport:
    """Verify an executor file against the local genesis and the chain file's manifest.

    The chain file's manifest (only) is read to cross-check H, hash and state
    root and to verify ``last_proof``, which is what makes H trusted.
    ``node_sink`` receives every trie node of the rebuilt state, ``blob_sink``
    every code/ABI blob, ``header_sink`` every header, as they are checked
    (one pass; a later failure still raises, so stage, don't commit).
    ``node_batch_sink``, when given, receives the nodes in lists instead of ``node_sink`` (fewer calls).
    Raises :class:`SnapshotError`.
    """
    start = time.monotonic()
    genesis_header = genesis.header()
    genesis_hash = genesis_header.hash
    with ExecutorFileReader(path) as reader:
        name = reader.name
        m = reader.manifest
        _check_identity(name, m.chain_id, m.genesis_hash, m.block_hash, genesis, genesis_hash, trusted_hash)
        chain_name = str(chain_path)
        chain_manifest = read_chain_manifest(chain_path)
        _cross_check(chain_manifest, chain_name, m, name)
        _check_proof(chain_name, chain_manifest, genesis, genesis_hash)
        state = _StateCheck(name, reader.accounts(progress), node_sink or discard_node, blob_sink, node_batch_sink)
        root = state.root()
        if root != m.state_root:
            raise StateRootMismatch("the rebuilt state trie's root differs from the manifest's state_root",
                                    file=name, expected=m.state_root, actual=root)
        if state.accounts != m.account_count:
            raise ManifestError("account_count differs from the accounts in the file", file=name,
                                check="account count", expected=m.account_count, actual=state.accounts)
        height = int(m.block_number)
        chain = _HeaderChain(name, genesis_header, genesis_hash, height)
        for entry in reader.headers(progress):
            chain.step(entry.chunk, entry.header, entry.hash, entry.chunk_parent)
            if header_sink is not None:
                header_sink(entry)
        chain.finish(m.block_hash, m.state_root)
        report = VerifyReport(
            height=height, block_hash=m.block_hash, state_root=m.state_root, chain_file=chain_name,
            executor_file=name, cross_checked=True,
            chunks=len(m.state_chunks) + len(m.block_chunks), blocks=0, full_blocks=0, headers=chain.count,
            accounts=state.accounts, account_pieces=state.piece_count, storage_slots=state.slots,
            blobs=state.blobs, bytes=reader.file_size, elapsed=time.monotonic() - start,
        )
    logger.info("verified %s: height %d, %d accounts, %d headers, %d chunks, %.2fs", name, height,
                report.accounts, report.headers, report.chunks, report.elapsed)
    return report


def verify_snapshot(
    chain_path: str | os.PathLike[str],
    executor_path: str | os.PathLike[str],
    genesis: Genesis,
    *,
    trusted_hash: bytes | None = None,
    block_sink: BlockSink | None = None,
    node_sink: NodeSink | None = None,
    blob_sink: BlobSink | None = None,
    header_sink: HeaderSink | None = None,
    progress: ProgressFn | None = None,
) -> VerifyReport:
    """Verify both files of a snapshot (every check of DESIGN.md section 7); returns the combined report."""
    start = time.monotonic()
    c = verify_chain_file(chain_path, genesis, executor_path=executor_path, trusted_hash=trusted_hash,
                          block_sink=block_sink, progress=progress)
    e = verify_executor_file(executor_path, genesis, chain_path=chain_path, trusted_hash=trusted_hash,
                             node_sink=node_sink, blob_sink=blob_sink, header_sink=header_sink,
                             progress=progress)
    return VerifyReport(
        height=c.height, block_hash=c.block_hash, state_root=c.state_root, chain_file=c.chain_file,
        executor_file=e.executor_file, cross_checked=True, chunks=c.chunks + e.chunks, blocks=c.blocks,
        full_blocks=c.full_blocks, headers=e.headers, accounts=e.accounts, account_pieces=e.account_pieces,
        storage_slots=e.storage_slots, blobs=e.blobs, bytes=c.bytes + e.bytes,
        elapsed=time.monotonic() - start,
    )

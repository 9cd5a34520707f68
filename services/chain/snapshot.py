"""The chain's side of snapshot and restore (domain logic, no bus).

Export (:func:`export_chain`): from one consistent :meth:`ChainStore.view`
(the node keeps committing blocks meanwhile), stream blocks 1..H into
``FILE_chain.rlp`` with :func:`pycita.snapshot.chain_format.write_chain_file`:
``[header, receipts, body]`` for the newest ``history_blocks`` blocks,
``[header]`` for older ones, manifest ``last_proof`` = the stored proof of H.

Restore (:func:`restore_chain`): verify the file with
:func:`pycita.snapshot.verify.verify_chain_file` (every check of DESIGN.md
section 7 that concerns the chain file, plus the cross-check with the
executor file's manifest when it is there) while a block sink writes a
*staged* store (``data/chain.staged``, a fresh LevelDB):

* the genesis block from the local genesis;
* every header 1..H, hash -> height, the proof of each block (the proof of
  h travels in header h+1; the proof of H is ``last_proof``);
* bodies, receipts, the tx index and the ``NewBlock`` TxKeys of the blocks
  that carry them (the newest ``full_blocks``), so auth can reload its
  dedupe window from the restored chain;
* the tip H.

Then the store is closed, fsynced, and marked complete
(:func:`pycita.snapshot.journal.write_complete_marker`). Any failure removes
the staged store and raises :class:`pycita.snapshot.errors.SnapshotError`
(file, chunk, check in its message). Nothing live is touched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import rlp
from rlp.sedes import CountableList

from pycita.crypto import Hash32, keccak
from pycita.errors import DecodeError
from pycita.genesis import Genesis
from pycita.messages import pb
from pycita.snapshot.chain_format import BlockSource, ChainEntry, read_chain_manifest, write_chain_file
from pycita.snapshot.container import ReadProgress
from pycita.snapshot.errors import SnapshotError
from pycita.snapshot.journal import discard_staged, fsync_tree, write_complete_marker
from pycita.snapshot.verify import verify_chain_file
from pycita.types import Receipt, SignedTransaction, decode_as, decode_header_rlp
from services.chain import schema
from services.chain.chain import Chain
from services.chain.store import ChainReader, ChainStore

log = logging.getLogger(__name__)

UINT64_MAX = (1 << 64) - 1
BATCH_BYTES = 4 * 1024 * 1024
"""Staged writes are flushed to LevelDB in batches of about this size."""

Check = Callable[[], None]
"""Called often; raises to cancel (e.g. :class:`pycita.service.SnapshotCancelled`)."""
Progress = Callable[[int, int, int], None]
"""``(blocks_done, chunks_done, bytes_done)``."""


def _no_check() -> None:
    return None


def _no_progress(_blocks: int, _chunks: int, _bytes: int) -> None:
    return None


@dataclass(frozen=True)
class ChainSnapshotResult:
    """What an export wrote or a restore staged."""

    height: int
    block_hash: Hash32
    state_root: Hash32
    last_proof: bytes
    path: Path
    file_size: int


# ------------------------------------------------------------------ export


def export_chain(view: ChainReader, genesis: Genesis, path: Path, height: int, *, history_blocks: int = 100,
                 check: Check = _no_check, progress: Progress = _no_progress,
                 fsync: bool = True) -> ChainSnapshotResult:
    """Write ``path`` (the chain file) for blocks 1..``height`` as seen by ``view``.

    Raises :class:`SnapshotError` when ``height`` is 0 or above the view's tip,
    or a block (or the body of one of the newest blocks) is missing; the
    partial file is removed.
    """
    name = str(path)
    tip = view.tip()
    tip_height = tip[0] if tip else 0
    if height <= 0:
        raise SnapshotError("height 0 is the genesis block, which is not exported", file=name, check="height")
    if height > tip_height:
        raise SnapshotError(f"height {height} is above the chain's tip {tip_height}", file=name, check="height",
                            expected=f"<= {tip_height}", actual=height)
    last_proof = view.proof(height)
    if not last_proof:
        raise SnapshotError(f"the chain has no proof of block {height}", file=name, check="last proof")
    block_hash = view.block_hash(height)
    header_h = view.header(height)
    assert block_hash is not None and header_h is not None
    full_from = height - min(history_blocks, height) + 1

    def blocks() -> Iterator[BlockSource]:
        for number, header_rlp in view.iter_headers(1, height):
            check()
            header = decode_header_rlp(header_rlp, f"stored header {number}")
            if number < full_from:
                yield header, None, None
            else:
                body_rlp, receipts_rlp = view.body_rlp(number), view.receipts_rlp(number)
                if body_rlp is None or receipts_rlp is None:
                    raise SnapshotError(f"the chain has no body or receipts of block {number} (it was restored "
                                        f"from a snapshot without them); choose a height whose newest "
                                        f"{history_blocks} blocks the node holds in full", file=name,
                                        check="history")
                body = decode_as(body_rlp, CountableList(SignedTransaction), f"stored body {number}")
                receipts = decode_as(receipts_rlp, CountableList(Receipt), f"stored receipts {number}")
                yield header, receipts, body  # type: ignore[misc]
            progress(number, 0, 0)

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        manifest = write_chain_file(path, blocks(), genesis=genesis, last_proof=last_proof,
                                    history_blocks=history_blocks, fsync=fsync)
    except DecodeError as exc:
        raise SnapshotError(f"the chain store is damaged: {exc}", file=name, check="chain store") from exc
    if manifest.block_number != height or manifest.block_hash != block_hash:
        path.unlink(missing_ok=True)
        raise SnapshotError(f"exported up to block {manifest.block_number}, not {height} (a block is missing "
                            f"from the store)", file=name, check="height", expected=height,
                            actual=manifest.block_number)
    return ChainSnapshotResult(height, manifest.block_hash, manifest.state_root, last_proof, path,
                               path.stat().st_size)


# ----------------------------------------------------------------- restore


class _StagedWriter:
    """The block sink: writes each verified block's keys into the staged store, in batches."""

    def __init__(self, store: ChainStore, check: Check, progress: Progress) -> None:
        self.store = store
        self.check = check
        self.progress = progress
        self.puts: dict[bytes, bytes] = {}
        self.size = 0
        self.blocks = 0
        self.chunks_done = 0
        self.bytes_done = 0

    def _put(self, key: bytes, value: bytes) -> None:
        self.puts[key] = value
        self.size += len(key) + len(value)

    def flush(self, sync: bool = False) -> None:
        if self.puts:
            self.store.db.write(self.puts, sync=sync)
            self.puts = {}
            self.size = 0

    def on_read(self, p: ReadProgress) -> None:
        self.chunks_done = p.chunk + 1
        self.bytes_done = p.bytes_done
        self.progress(self.blocks, self.chunks_done, self.bytes_done)

    def __call__(self, entry: ChainEntry) -> None:
        self.check()
        number = entry.number
        header = entry.header
        header_rlp = rlp.encode(header)
        block_hash = entry.hash
        if keccak(header_rlp) != block_hash:  # pragma: no cover - the reader checks canonical RLP
            raise SnapshotError(f"block {number}: header is not canonically encoded", chunk=entry.chunk,
                                check="chain entry")
        self._put(schema.header_key(number), header_rlp)
        self._put(schema.hash_key(block_hash), schema.encode_height(number))
        if number > 1:
            self._put(schema.proof_key(number - 1), header.proof)
        keys: list[pb.TxKey] = []
        if entry.body is not None and entry.receipts is not None:
            self._put(schema.body_key(number), rlp.encode(list(entry.body)))
            self._put(schema.receipts_key(number), rlp.encode(list(entry.receipts)))
            for index, (tx, receipt) in enumerate(zip(entry.body, entry.receipts, strict=True)):
                tx_hash = receipt.tx_hash  # verified equal to tx.hash
                self._put(schema.tx_key(tx_hash), schema.encode_tx_location(number, index))
                keys.append(pb.TxKey(hash=tx_hash, sender=receipt.sender, nonce=min(tx.nonce, UINT64_MAX),
                                     valid_until_block=min(tx.valid_until_block, UINT64_MAX)))
        self._put(schema.txkeys_key(number),
                  pb.NewBlock(height=number, hash=block_hash, txs=keys).SerializeToString())
        self.blocks += 1
        if self.size >= BATCH_BYTES:
            self.flush()
        self.progress(self.blocks, self.chunks_done, self.bytes_done)


def restore_chain(path: Path, genesis: Genesis, staged: Path, *, trusted_hash: bytes | None = None,
                  executor_path: Path | None = None, check: Check = _no_check,
                  progress: Progress = _no_progress) -> ChainSnapshotResult:
    """Verify the chain file ``path`` into a fresh staged store at ``staged``; see the module docstring.

    ``executor_path`` (when the file exists) is cross-checked by manifest.
    Raises :class:`SnapshotError` (the staged store is removed).
    """
    if not path.is_file():
        raise SnapshotError("the snapshot file does not exist", file=str(path), check="file")
    discard_staged(staged)
    staged.parent.mkdir(parents=True, exist_ok=True)
    store = ChainStore(staged)
    closed = False
    try:
        Chain(store, genesis)  # writes the genesis block and m:genesis
        writer = _StagedWriter(store, check, progress)
        report = verify_chain_file(path, genesis,
                                   executor_path=executor_path if executor_path and executor_path.is_file()
                                   else None,
                                   trusted_hash=trusted_hash or None, block_sink=writer, progress=writer.on_read)
        check()
        height = report.height
        last_proof = read_chain_manifest(path).last_proof
        writer._put(schema.proof_key(height), last_proof)
        writer._put(schema.TIP, schema.encode_tip(height, report.block_hash))
        writer.flush(sync=True)
        store.db.flush_memtable()  # the service opens the store right after the swap: no log to replay then
        store.close()
        closed = True
        fsync_tree(staged)
        write_complete_marker(staged, height=height, block_hash=report.block_hash, state_root=report.state_root)
        log.info("chain: staged block %d 0x%s from %s (%d blocks, %d with bodies)", height,
                 report.block_hash.hex()[:16], path, report.blocks, report.full_blocks)
        return ChainSnapshotResult(height, report.block_hash, report.state_root, last_proof, path, report.bytes)
    except BaseException:
        if not closed:
            store.close()
        try:
            discard_staged(staged)
        except OSError as exc:
            log.warning("chain: cannot remove the staged store %s: %s", staged, exc)
        raise

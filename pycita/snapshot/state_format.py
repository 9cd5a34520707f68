"""The executor snapshot file (``FILE_executor.rlp``): the state at H, then headers 1..H.

Container: see :mod:`pycita.snapshot.container`. State chunks come first,
then header chunks; each section is contiguous.

State chunk payload (uncompressed): a list of *fat RLP* accounts::

    [[address, [nonce, balance, code_state, code, abi_state, abi, [[key, value], ...]]], ...]

* ``address``: 20 bytes; accounts strictly ascending by address across the
  file (the pieces of a split account are consecutive, see below).
* ``nonce``, ``balance``: canonical RLP integers.
* ``code_state`` / ``abi_state`` (:class:`BlobState`): 0 empty (``code`` is
  ``b''``), 1 inline (``code`` is the non-empty bytes), 2 by hash (``code``
  is keccak-256 of bytes emitted inline *earlier in this file*, as code or
  as ABI). A writer emits each distinct blob inline once per file, the first
  time it is needed, and by hash afterwards.
* storage: the account's ``[key, value]`` pairs, raw bytes, values non-empty,
  keys strictly ascending (across pieces).

Split accounts: an account whose fat RLP would not fit a chunk
(:data:`~pycita.snapshot.container.CHUNK_PAYLOAD_LIMIT`) is written as several
consecutive fat RLPs with the same address ("pieces"). Every piece repeats
the same ``nonce`` and ``balance`` and names the same code and ABI: the first
piece carries them as any account would (inline or by hash), continuation
pieces always by hash (state 2) or empty (state 0). Continuation pieces hold
at least one storage pair; the storage keys keep ascending across pieces.
A reader must check the repeated fields agree (:mod:`pycita.snapshot.verify`
does). A single storage pair larger than the limit stands in its own chunk
(bounded by :data:`~pycita.snapshot.container.MAX_CHUNK_PAYLOAD`).

Header chunk payload::

    [parent_number, parent_hash, header, header, ...]

as the chain file's chunks but with bare header lists (heights 1..H).

Manifest, version 1 (exactly these 10 items)::

    [0 version=1, 1 [state ChunkInfo...], 2 [block ChunkInfo...], 3 state_root,
     4 block_number (H), 5 block_hash, 6 chain_id, 7 genesis_hash,
     8 account_count, 9 created_at]

``account_count`` counts distinct addresses (verified exactly).
Informational fields (:data:`EXECUTOR_INFORMATIONAL_FIELDS`): only
``created_at`` (item 9, unix milliseconds).

Dedupe memory: writer and verifier keep the set of hashes of blobs emitted
inline (32 bytes per distinct code/ABI); nothing else grows with the state.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import IO, Any, Final, NamedTuple

import rlp

from pycita.crypto import EMPTY_KECCAK, Address, Hash32, keccak
from pycita.errors import DecodeError
from pycita.genesis import Genesis
from pycita.native import native as _native
from pycita.snapshot.chain_format import decode_header, parse_chunk_parent
from pycita.snapshot.container import (
    CHUNK_PAYLOAD_LIMIT,
    Chunker,
    ChunkInfo,
    ChunkReader,
    ChunkWriter,
    ProgressFn,
    ReadProgress,
    RLPError,
    decode_bytes,
    decode_list,
    decode_rlp,
    decode_rlp_python,
    decode_uint,
    encode_bytes,
    encode_list,
    encode_uint,
)
from pycita.snapshot.errors import (
    ChunkDecodeError,
    HeaderChainBroken,
    ManifestError,
    OrderError,
    SnapshotError,
    StateRootMismatch,
)
from pycita.trie import BLANK_ROOT, build_from_sorted, discard_node
from pycita.types import Account, Header, Height, decode_as, header_values

__all__ = [
    "EXECUTOR_FORMAT_VERSION",
    "EXECUTOR_INFORMATIONAL_FIELDS",
    "AccountSource",
    "BlobState",
    "ExecutorFileReader",
    "ExecutorManifest",
    "FatAccount",
    "HeaderEntry",
    "PlainRun",
    "account_rlp",
    "decode_fat_chunk",
    "plain_run",
    "read_executor_manifest",
    "write_state_file",
]

logger = logging.getLogger(__name__)

EXECUTOR_FORMAT_VERSION: Final[int] = 1
EXECUTOR_MANIFEST_ITEMS: Final[int] = 10
EXECUTOR_INFORMATIONAL_FIELDS: Final[dict[int, str]] = {9: "created_at"}
"""Manifest item index -> name of the fields restore and verification do not use."""

_PIECE_SLACK: Final[int] = 16  # room for the chunk's own list header


class PlainRun(NamedTuple):
    """Consecutive accounts with no code, ABI or storage, as an export reads them from the state trie.

    Made only by :func:`plain_run`, which guarantees: every address is 20 bytes and they ascend strictly
    (from above the ``prev`` it was given); every value is the canonical account RLP
    ``[nonce, balance, BLANK_ROOT, EMPTY_KECCAK, EMPTY_KECCAK]`` and ``fats[i]`` is the fat RLP of
    ``pairs[i]``. :func:`write_state_file` takes it in place of that many :data:`AccountSource` tuples: the
    fat RLPs go to the chunks and the pairs, unchanged, to the state root check.
    """

    pairs: list[tuple[bytes, bytes]]
    fats: list[bytes]


AccountSource = tuple[Address, Account, bytes, bytes, Iterable[tuple[bytes, bytes]]]
"""What :func:`write_state_file` takes per account: address, Account, code, abi, storage pairs (ascending)."""

_BLANK_HASHES: Final[tuple[bytes, bytes, bytes]] = (BLANK_ROOT, EMPTY_KECCAK, EMPTY_KECCAK)


def plain_fats_python(pairs: list[tuple[bytes, bytes]], start: int, prev: bytes | None) -> tuple[list[bytes], int]:
    """The pure-Python ``_native.plain_fats`` (its reference): the fat RLPs of ``pairs[start:stop]``, where
    ``stop`` is the first pair from ``start`` that is not a plain account (see :class:`PlainRun`) in
    canonical form with a 20-byte address above the previous one (``prev`` before ``start``)."""
    fats: list[bytes] = []
    last = prev
    first = i = max(start, 0)
    for i in range(first, len(pairs)):
        pair = pairs[i]
        if type(pair) is not tuple or len(pair) != 2:
            break
        address, raw = pair
        if type(address) is not bytes or type(raw) is not bytes or len(address) != 20:
            break
        if last is not None and address <= last:
            break
        try:
            items = decode_rlp_python(raw, 1)
        except RLPError:
            break
        if type(items) is not list or len(items) != 5 or not all(type(x) is bytes for x in items):
            break
        nonce, balance = items[0], items[1]
        if len(nonce) > 32 or len(balance) > 32 or nonce[:1] == b"\0" or balance[:1] == b"\0":
            break
        if tuple(items[2:]) != _BLANK_HASHES:
            break
        fats.append(_plain_fat_python(address, int.from_bytes(nonce, "big"), int.from_bytes(balance, "big")))
        last = address
    else:
        i = max(first, len(pairs))
    return fats, i


def plain_run(pairs: list[tuple[bytes, bytes]], start: int, prev: bytes | None) -> tuple[PlainRun | None, int]:
    """The plain accounts of ``pairs`` (address, account RLP) from ``start``: ``(run, stop)``, ``run`` None
    when ``pairs[start]`` is not one (see :func:`plain_fats_python`; in C when :mod:`pycita.native` is loaded).
    """
    if _native is not None:
        fats, stop = _native.plain_fats(pairs, start, prev)
    else:
        fats, stop = plain_fats_python(pairs, start, prev)
    if not fats:
        return None, start
    return PlainRun(pairs[start:stop], fats), stop


class BlobState(IntEnum):
    EMPTY = 0
    INLINE = 1
    HASH = 2


@dataclass(frozen=True)
class ExecutorManifest:
    version: int
    state_chunks: tuple[ChunkInfo, ...]
    block_chunks: tuple[ChunkInfo, ...]
    state_root: Hash32
    block_number: Height
    block_hash: Hash32
    chain_id: int
    genesis_hash: Hash32
    account_count: int
    created_at: int

    def to_rlp(self) -> list[Any]:
        return [self.version, [c.to_rlp() for c in self.state_chunks], [c.to_rlp() for c in self.block_chunks],
                self.state_root, self.block_number, self.block_hash, self.chain_id, self.genesis_hash,
                self.account_count, self.created_at]

    @classmethod
    def from_reader(cls, reader: ChunkReader) -> ExecutorManifest:
        m = reader.manifest
        f = reader.name
        if len(m) != EXECUTOR_MANIFEST_ITEMS:
            raise ManifestError("executor manifest has the wrong number of items", file=f,
                                expected=EXECUTOR_MANIFEST_ITEMS, actual=len(m))
        created = decode_bytes(m[9], "created_at", ManifestError, file=f)
        return cls(
            version=reader.version,
            state_chunks=reader.tables[0],
            block_chunks=reader.tables[1],
            state_root=Hash32(decode_bytes(m[3], "state_root", ManifestError, 32, file=f)),
            block_number=Height(decode_uint(m[4], "block_number", ManifestError, file=f)),
            block_hash=Hash32(decode_bytes(m[5], "block_hash", ManifestError, 32, file=f)),
            chain_id=decode_uint(m[6], "chain_id", ManifestError, file=f),
            genesis_hash=Hash32(decode_bytes(m[7], "genesis_hash", ManifestError, 32, file=f)),
            account_count=decode_uint(m[8], "account_count", ManifestError, file=f),
            created_at=int.from_bytes(created, "big"),  # informational: not checked
        )


class FatAccount(NamedTuple):
    """One fat RLP (an account, or one piece of a split account), shape-validated (a named tuple: cheap to
    build and to pickle by the millions)."""

    chunk: int
    address: Address
    nonce: int
    balance: int
    code_state: BlobState
    code: bytes
    abi_state: BlobState
    abi: bytes
    storage: tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True)
class HeaderEntry:
    """One header of the executor file's header chunks, shape-validated."""

    chunk: int
    header: Header
    hash: Hash32
    chunk_parent: tuple[int, Hash32] | None
    """``(parent_number, parent_hash)`` declared by the chunk, on its first header only."""

    @property
    def number(self) -> int:
        return int(self.header.number)


def account_rlp(nonce: int, balance: int, storage_root: bytes, code_hash: bytes, abi_hash: bytes) -> bytes:
    """RLP of :class:`pycita.types.Account` (the state trie value), built without pyrlp (in C when
    :mod:`pycita.native` is loaded)."""
    if _native is not None:
        return _native.account_rlp(nonce, balance, storage_root, code_hash, abi_hash)  # type: ignore[no-any-return]
    return account_rlp_python(nonce, balance, storage_root, code_hash, abi_hash)


def account_rlp_python(nonce: int, balance: int, storage_root: bytes, code_hash: bytes, abi_hash: bytes) -> bytes:
    """The pure-Python :func:`account_rlp` (the reference of the native encoder)."""
    return encode_list([encode_uint(nonce), encode_uint(balance), encode_bytes(storage_root),
                        encode_bytes(code_hash), encode_bytes(abi_hash)])


def read_executor_manifest(path: str | os.PathLike[str]) -> ExecutorManifest:
    """The manifest of an executor file (reads only the trailer and the manifest)."""
    with ChunkReader(path, chunk_tables=(1, 2), versions=(EXECUTOR_FORMAT_VERSION,)) as reader:
        return ExecutorManifest.from_reader(reader)


def _blob(state_raw: object, data_raw: object, what: str, file: str, chunk: int) -> tuple[BlobState, bytes]:
    state = decode_uint(state_raw, f"{what}_state", ChunkDecodeError, file=file, chunk=chunk)
    data = decode_bytes(data_raw, what, ChunkDecodeError, file=file, chunk=chunk)
    if state == BlobState.EMPTY:
        if data:
            raise ChunkDecodeError(f"{what}_state 0 (empty) with {len(data)} bytes", file=file, chunk=chunk)
    elif state == BlobState.INLINE:
        if not data:
            raise ChunkDecodeError(f"{what}_state 1 (inline) with no bytes", file=file, chunk=chunk)
    elif state == BlobState.HASH:
        if len(data) != 32:
            raise ChunkDecodeError(f"{what}_state 2 (hash) needs 32 bytes", file=file, chunk=chunk,
                                   expected=32, actual=len(data))
    else:
        raise ChunkDecodeError(f"{what}_state must be 0, 1 or 2", file=file, chunk=chunk, actual=state)
    return BlobState(state), data


def decode_fat_account(raw: object, *, file: str, chunk: int) -> FatAccount:
    """A decoded fat RLP -> :class:`FatAccount` or :class:`ChunkDecodeError`."""
    item = decode_list(raw, "fat account", ChunkDecodeError, 2, file=file, chunk=chunk)
    address = decode_bytes(item[0], "address", ChunkDecodeError, 20, file=file, chunk=chunk)
    body = decode_list(item[1], "fat account body", ChunkDecodeError, 7, file=file, chunk=chunk)
    nonce = decode_uint(body[0], "nonce", ChunkDecodeError, file=file, chunk=chunk)
    balance = decode_uint(body[1], "balance", ChunkDecodeError, file=file, chunk=chunk)
    code_state, code = _blob(body[2], body[3], "code", file, chunk)
    abi_state, abi = _blob(body[4], body[5], "abi", file, chunk)
    pairs = body[6]
    if type(pairs) is not list:
        raise ChunkDecodeError("storage must be a list", file=file, chunk=chunk)
    storage = []
    for p in pairs:
        if type(p) is not list or len(p) != 2 or type(p[0]) is not bytes or type(p[1]) is not bytes:
            raise ChunkDecodeError("storage item must be [key, value]", file=file, chunk=chunk)
        if not p[1]:
            raise ChunkDecodeError(f"storage key 0x{p[0].hex()} has an empty value", file=file, chunk=chunk)
        storage.append((p[0], p[1]))
    return FatAccount(chunk, Address(address), nonce, balance, code_state, code, abi_state, abi, tuple(storage))


_BLOB_STATES: Final[tuple[BlobState, ...]] = (BlobState.EMPTY, BlobState.INLINE, BlobState.HASH)


def decode_fat_chunk_python(items: list[Any], *, file: str, chunk: int) -> Iterator[FatAccount]:
    """The pure-Python :func:`decode_fat_chunk` (the reference of the native parser)."""
    for raw in items:
        yield decode_fat_account(raw, file=file, chunk=chunk)


def decode_fat_chunk(items: list[Any], *, file: str, chunk: int) -> Iterator[FatAccount]:
    """:func:`decode_fat_account` of every item of a decoded state chunk, in order (the same accounts and the
    same first error; the plain valid items are parsed in C when :mod:`pycita.native` is loaded)."""
    if _native is None:
        yield from decode_fat_chunk_python(items, file=file, chunk=chunk)
        return
    states = _BLOB_STATES
    while items:
        parsed, bad = _native.parse_fat(items)
        for address, nonce, balance, code_state, code, abi_state, abi, storage in parsed:
            yield FatAccount(chunk, address, nonce, balance, states[code_state], code, states[abi_state], abi,
                             storage)
        if bad < 0:
            return
        yield decode_fat_account(items[bad], file=file, chunk=chunk)  # raises, or an item C left to Python
        items = items[bad + 1 :]


class ExecutorFileReader:
    """Streams the fat accounts and then the headers of an executor file, one chunk at a time."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._worker: _DecodeWorker | None = None
        self.reader = ChunkReader(path, chunk_tables=(1, 2), versions=(EXECUTOR_FORMAT_VERSION,))
        try:
            self.manifest = ExecutorManifest.from_reader(self.reader)
        except BaseException:
            self.reader.close()
            raise
        self.name = self.reader.name

    @property
    def file_size(self) -> int:
        return self.reader.file_size

    def _progress(self, progress: ProgressFn | None, index: int) -> None:
        if progress is not None:
            info = self.reader.chunks[index]
            progress(ReadProgress(self.name, index, len(self.reader.chunks), info.offset + info.length,
                                  self.reader.manifest_offset))

    def accounts(self, progress: ProgressFn | None = None, *, parallel: bool = True) -> Iterator[FatAccount]:
        """Every fat RLP of the state chunks in file order (pieces of a split account consecutive).

        With ``parallel`` and at least :data:`PARALLEL_MIN_BYTES` of state chunks, the chunks are read,
        hash-checked, decompressed and decoded by a worker process (:class:`_DecodeWorker`) while the
        caller consumes them; the items, their order and every error (same class, file, chunk, check and
        message, raised at the same point of the stream) are those of the sequential path.
        """
        if (parallel and PARALLEL_DECODE and self.manifest.state_chunks
                and sum(c.length for c in self.manifest.state_chunks) >= PARALLEL_MIN_BYTES):
            yield from self._accounts_parallel(progress)
            return
        name = self.name
        for index in range(len(self.manifest.state_chunks)):
            items = self.reader.read_chunk(index, prefix_items=0)
            if not items:
                raise ChunkDecodeError("state chunk holds no account", file=name, chunk=index)
            yield from decode_fat_chunk(items, file=name, chunk=index)
            self._progress(progress, index)

    def headers(self, progress: ProgressFn | None = None) -> Iterator[HeaderEntry]:
        """Every header of the header chunks in file order (chunk indexes follow the state chunks)."""
        name = self.name
        first_index = len(self.manifest.state_chunks)
        for index in range(first_index, first_index + len(self.manifest.block_chunks)):
            items = self.reader.read_chunk(index, prefix_items=2)
            parent = parse_chunk_parent(items, file=name, chunk=index)
            first = True
            for raw in items[2:]:
                header, block_hash = decode_header(raw, file=name, chunk=index)
                yield HeaderEntry(index, header, block_hash, parent if first else None)
                first = False
            self._progress(progress, index)

    def _accounts_parallel(self, progress: ProgressFn | None) -> Iterator[FatAccount]:
        worker = _DecodeWorker(self.name, len(self.manifest.state_chunks))
        self._worker = worker
        try:
            for kind, value in worker.results():
                if kind == "end":
                    self._progress(progress, value)
                else:
                    yield from value
        finally:
            worker.stop()
            self._worker = None

    def close(self) -> None:
        worker = self._worker
        if worker is not None:  # a consumer that stopped early (an error, an abort): no orphan process
            worker.stop()
            self._worker = None
        self.reader.close()

    def __enter__(self) -> ExecutorFileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


PARALLEL_DECODE: bool = os.environ.get("PYCITA_SNAPSHOT_WORKERS", "0") != "0"
"""Whether :meth:`ExecutorFileReader.accounts` may decode in a worker process (``PYCITA_SNAPSHOT_WORKERS=1``).
Off by default since the decoding runs in C: a 1M-account restore took 9.3 s without it and 9.9 s with it
(the worker's pickling costs what the parsing saves, and it takes the core the chain service restores on)."""
PARALLEL_MIN_BYTES: int = 8 << 20
"""State chunks smaller than this in all (compressed) are decoded in the calling process: starting the
worker (about 0.3 s of interpreter start and imports) costs more than it saves."""
_BATCH: Final[int] = 2048  # fat accounts per message from the worker


def _decode_chunks(name: str, count: int, out: IO[bytes]) -> None:
    """Worker process body: the state chunks 0..count-1 of ``name`` as pickled ``("items", [FatAccount...])``
    batches and ``("end", index)`` per chunk on ``out``, or ``("error", exc)`` where the sequential reader
    would raise it. The pipe's backpressure bounds how far it runs ahead."""

    def put(message: tuple[str, Any]) -> None:
        pickle.dump(message, out, protocol=pickle.HIGHEST_PROTOCOL)

    try:
        with ChunkReader(name, chunk_tables=(1, 2), versions=(EXECUTOR_FORMAT_VERSION,)) as reader:
            for index in range(count):
                items = reader.read_chunk(index, prefix_items=0)
                if not items:
                    raise ChunkDecodeError("state chunk holds no account", file=name, chunk=index)
                batch: list[FatAccount] = []
                try:
                    for fat in decode_fat_chunk(items, file=name, chunk=index):
                        batch.append(fat)
                        if len(batch) >= _BATCH:
                            put(("items", batch))
                            batch = []
                finally:
                    if batch:  # the items before a bad one are consumed before its error, as in sequence
                        put(("items", batch))
                put(("end", index))
    except BrokenPipeError:  # the consumer stopped (an error, an abort): exit quietly
        return
    except BaseException as exc:  # noqa: BLE001 - every failure is handed to the consumer
        try:
            pickle.dumps(exc)
        except Exception:  # an exception that does not pickle: its text
            exc = RuntimeError(f"{type(exc).__name__}: {exc}")
        try:
            put(("error", exc))
        except BrokenPipeError:
            return
    out.flush()


class _DecodeWorker:
    """One worker process (``python -m pycita.snapshot._decode_worker``) decoding state chunks ahead of the
    consumer; :meth:`stop` ends it. A plain subprocess (not multiprocessing): nothing of the caller's
    ``__main__`` is re-run and nothing is forked from a threaded service."""

    def __init__(self, name: str, count: int) -> None:
        self.name = name
        self.count = count
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pycita.snapshot._decode_worker", name, str(count)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env, bufsize=1 << 20)
        assert self.process.stdout is not None
        self.stdout = self.process.stdout

    def results(self) -> Iterator[tuple[str, Any]]:
        done = 0
        while done < self.count:
            try:
                kind, value = pickle.load(self.stdout)
            except (EOFError, pickle.UnpicklingError) as exc:
                code = self.process.wait()
                raise SnapshotError(f"the decoding worker exited (code {code}) before the end of the state "
                                    "chunks", file=self.name, check="chunk decode") from exc
            if kind == "error":
                raise value
            if kind == "end":
                done += 1
            yield kind, value

    def stop(self) -> None:
        """End the worker and wait for it (closing the pipe makes its next write fail); idempotent."""
        proc = self.process
        if proc.poll() is None:
            proc.terminate()  # a stopped consumer: no need to let it finish its chunk
        try:
            self.stdout.close()
        except OSError:  # pragma: no cover
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a worker stuck in a read
            proc.kill()
            proc.wait()


_EMPTY_BLOB: Final[bytes] = encode_uint(int(BlobState.EMPTY)) + encode_bytes(b"")
_HASH_STATE: Final[bytes] = encode_uint(int(BlobState.HASH))
_INLINE_STATE: Final[bytes] = encode_uint(int(BlobState.INLINE))


def _plain_fat(address: bytes, nonce: int, balance: int) -> bytes:
    """The fat RLP of an account with no code, ABI or storage."""
    if _native is not None and nonce < 1 << 64 and balance < 1 << 64:
        return _native.rlp_encode([address, [nonce, balance, 0, b"", 0, b"", []]])
    return _plain_fat_python(address, nonce, balance)


def _plain_fat_python(address: bytes, nonce: int, balance: int) -> bytes:
    """:func:`_plain_fat` without the native encoder (also the reference of ``_native.plain_fats``)."""
    return encode_list([encode_bytes(address), encode_list([encode_uint(nonce) + encode_uint(balance),
                                                            _EMPTY_BLOB + _EMPTY_BLOB, encode_list([])])])


class _StateEmitter:
    """Turns account sources into fat RLP pieces; yields (address, account RLP) for the root check."""

    def __init__(self, chunker: Chunker, name: str, check_roots: bool) -> None:
        self.chunker = chunker
        self.name = name
        self.check_roots = check_roots
        self.budget = chunker.limit - _PIECE_SLACK
        self.emitted: set[bytes] = set()
        self.count = 0
        self.pieces = 0

    def _first_blob(self, data: bytes, what: str, address: bytes, declared: bytes) -> tuple[bytes, bytes]:
        digest = keccak(data) if data else EMPTY_KECCAK
        if digest != declared:
            raise SnapshotError(f"account 0x{address.hex()}: {what} hash does not match its bytes",
                                file=self.name, check="write", expected=declared, actual=digest)
        if not data:
            return digest, _EMPTY_BLOB
        if digest in self.emitted:
            return digest, _HASH_STATE + encode_bytes(digest)
        self.emitted.add(digest)
        return digest, _INLINE_STATE + encode_bytes(data)

    @staticmethod
    def _later_blob(data: bytes, digest: bytes) -> bytes:
        if not data:
            return _EMPTY_BLOB
        return _HASH_STATE + encode_bytes(digest)

    def run(self, accounts: Iterable[AccountSource | PlainRun]) -> Iterator[tuple[bytes, bytes]]:
        prev: bytes | None = None
        for source in accounts:
            if type(source) is PlainRun:  # checked by plain_run, in order from its first address on
                run_pairs, fats = source
                if prev is not None and run_pairs[0][0] <= prev:
                    raise OrderError("accounts must be strictly ascending by address", file=self.name,
                                     expected=f"> 0x{prev.hex()}", actual=run_pairs[0][0])
                prev = run_pairs[-1][0]
                self.count += len(fats)
                self.pieces += len(fats)
                self.chunker.add_many(fats)
                yield from run_pairs
                continue
            address, account, code, abi, storage = source  # type: ignore[misc]
            if len(address) != 20:
                raise SnapshotError(f"address 0x{address.hex()} is not 20 bytes", file=self.name, check="write")
            if prev is not None and address <= prev:
                raise OrderError("accounts must be strictly ascending by address", file=self.name,
                                 expected=f"> 0x{prev.hex()}", actual=address)
            prev = address
            self.count += 1
            if (type(storage) is tuple and not storage and not code and not abi
                    and account.storage_root == BLANK_ROOT and account.code_hash == EMPTY_KECCAK
                    and account.abi_hash == EMPTY_KECCAK):  # most accounts: no code, ABI or storage
                self.pieces += 1
                self.chunker.add(_plain_fat(address, account.nonce, account.balance))
                yield address, account_rlp(account.nonce, account.balance, BLANK_ROOT, EMPTY_KECCAK, EMPTY_KECCAK)
                continue
            code_hash, code_first = self._first_blob(code, "code", address, account.code_hash)
            abi_hash, abi_first = self._first_blob(abi, "abi", address, account.abi_hash)
            later = self._later_blob(code, code_hash) + self._later_blob(abi, abi_hash)
            pairs = self._pieces(address, encode_uint(account.nonce) + encode_uint(account.balance),
                                 code_first + abi_first, later, storage)
            if self.check_roots:
                try:
                    root = build_from_sorted(pairs, discard_node)
                except ValueError as e:
                    raise OrderError(f"account 0x{address.hex()}: {e}", file=self.name) from e
                if root != account.storage_root:
                    raise StateRootMismatch(f"account 0x{address.hex()}: storage pairs do not match its "
                                            "storage_root", file=self.name, expected=account.storage_root,
                                            actual=root)
            else:
                for _ in pairs:
                    pass
            yield address, account_rlp(account.nonce, account.balance, account.storage_root, code_hash, abi_hash)

    def _pieces(self, address: bytes, nonce_balance: bytes, first_blobs: bytes, later_blobs: bytes,
                storage: Iterable[tuple[bytes, bytes]]) -> Iterator[tuple[bytes, bytes]]:
        """Pass ``storage`` through while packing it into pieces of at most ``budget`` bytes."""
        enc_address = encode_bytes(address)
        base = len(enc_address) + len(nonce_balance) + 27  # three list headers of at most 9 bytes
        blobs = first_blobs
        size = base + len(blobs)
        encoded: list[bytes] = []
        first = True
        last_key: bytes | None = None
        for key, value in storage:
            if last_key is not None and key <= last_key:
                raise OrderError(f"account 0x{address.hex()}: storage keys must be strictly ascending",
                                 file=self.name, expected=f"> 0x{last_key.hex()}", actual=key)
            if not value:
                raise SnapshotError(f"account 0x{address.hex()}: storage key 0x{key.hex()} has an empty value",
                                    file=self.name, check="write")
            last_key = key
            pair = encode_list([encode_bytes(key), encode_bytes(value)])
            if size + len(pair) > self.budget and (encoded or first):
                self._emit(enc_address, nonce_balance, blobs, encoded)
                first = False
                blobs = later_blobs
                encoded = []
                size = base + len(blobs)
            encoded.append(pair)
            size += len(pair)
            yield key, value
        if encoded or first:
            self._emit(enc_address, nonce_balance, blobs, encoded)

    def _emit(self, enc_address: bytes, nonce_balance: bytes, blobs: bytes, pairs: list[bytes]) -> None:
        self.pieces += 1
        self.chunker.add(encode_list([enc_address, encode_list([nonce_balance, blobs, encode_list(pairs)])]))


def _header_link(raw: bytes, number: int, file: str) -> tuple[int, bytes, bytes]:
    """``(number, parent_hash, state_root)`` of a header given as its RLP (expected to be header
    ``number``); :class:`SnapshotError` when it is not one."""
    try:
        values = header_values(decode_rlp(raw, 2))
    except RLPError:
        values = None
    if values is None:  # not the plain valid shape: pyrlp decides and names the problem
        try:
            header = decode_as(raw, Header, f"header {number}")
        except DecodeError as exc:
            raise SnapshotError(str(exc), file=file, check="headers") from exc
        return int(header.number), header.parent_hash, header.state_root
    return values[5], values[0], values[1]


def write_state_file(
    path: str | os.PathLike[str],
    accounts: Iterable[AccountSource | PlainRun],
    headers: Iterable[Header | bytes],
    *,
    genesis: Genesis,
    check_roots: bool = True,
    created_at: int | None = None,
    chunk_limit: int = CHUNK_PAYLOAD_LIMIT,
    fsync: bool = True,
) -> ExecutorManifest:
    """Write the executor file: the state at H, then headers 1..H (both streamed).

    ``accounts`` yields ``(address, account, code, abi, storage_pairs)``
    (or a :class:`PlainRun` of several plain accounts) ascending by address, where ``storage_pairs`` iterates the account's
    storage ascending by key and ``account.code_hash``/``abi_hash`` are
    keccak of ``code``/``abi``. ``headers`` yields headers 1..H chaining from
    ``genesis`` (:class:`Header` objects or their RLP encodings); H and the state root come from the last one. With
    ``check_roots`` the writer rebuilds every storage root and the state root
    as it goes and refuses (:class:`StateRootMismatch`) to finish a file that
    would not verify. Raises :class:`SnapshotError`; the partial file is removed.
    """
    name = str(path)
    genesis_header = genesis.header()
    with ChunkWriter(path, fsync=fsync) as writer:
        state_chunker = Chunker(writer, chunk_limit)
        emitter = _StateEmitter(state_chunker, name, check_roots)
        items = emitter.run(accounts)
        if check_roots:
            try:
                root = build_from_sorted(items, discard_node)
            except ValueError as e:  # pragma: no cover - order is checked by the emitter
                raise OrderError(str(e), file=name) from e
        else:
            for _ in items:
                pass
        state_chunker.flush()
        header_chunker = Chunker(writer, chunk_limit)
        prev_number, prev_hash = 0, genesis_header.hash
        state_root = genesis_header.state_root
        for header in headers:
            if isinstance(header, bytes):  # a stored header's RLP: its fields without a Header object
                header_rlp = header
                number, parent_hash, header_root = _header_link(header_rlp, prev_number + 1, name)
            else:
                header_rlp = rlp.encode(header)
                number, parent_hash, header_root = int(header.number), header.parent_hash, header.state_root
            if number != prev_number + 1 or parent_hash != prev_hash:
                raise HeaderChainBroken("headers must chain from genesis in ascending order", file=name,
                                        expected=(prev_number + 1, "0x" + prev_hash.hex()),
                                        actual=(number, "0x" + parent_hash.hex()))
            prefix = ((encode_uint(prev_number), encode_bytes(prev_hash))
                      if header_chunker.opens_chunk(len(header_rlp)) else ())
            header_chunker.add(header_rlp, prefix)
            prev_number, prev_hash = number, keccak(header_rlp)
            state_root = header_root
        header_chunker.flush()
        if check_roots and root != state_root:
            raise StateRootMismatch(f"the accounts do not hash to the state root of header {prev_number}",
                                    file=name, expected=state_root, actual=root)
        manifest = ExecutorManifest(
            version=EXECUTOR_FORMAT_VERSION,
            state_chunks=tuple(state_chunker.chunks),
            block_chunks=tuple(header_chunker.chunks),
            state_root=Hash32(state_root),
            block_number=Height(prev_number),
            block_hash=Hash32(prev_hash),
            chain_id=genesis.chain_id,
            genesis_hash=genesis_header.hash,
            account_count=emitter.count,
            created_at=int(time.time() * 1000) if created_at is None else created_at,
        )
        writer.finish(manifest.to_rlp())
    logger.info("executor snapshot %s at height %d: %d accounts (%d pieces), %d state + %d header chunks",
                name, prev_number, emitter.count, emitter.pieces, len(manifest.state_chunks),
                len(manifest.block_chunks))
    return manifest

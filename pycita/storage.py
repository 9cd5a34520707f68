"""Key-value stores: LevelDB (plyvel) for services, an in-memory one for tests.

Every service owns one store under ``<node>/data/<service>``. All writes that
must land together go through one :class:`WriteBatch` (LevelDB write batches
are atomic). Keys are never built ad hoc: each store has a ``schema`` module
beside its service that builds every key.

Staging (used by snapshot restore): a store can be built in a sibling
directory and swapped in with :func:`swap_directories`, which renames
atomically on one filesystem.
"""

from __future__ import annotations

import functools
import os
import queue
import resource
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import plyvel

from pycita.errors import PycitaError


class StorageError(PycitaError):
    """Raised when a store cannot be opened, read or written (path and cause included)."""


class WriteBatch(Protocol):
    def put(self, key: bytes, value: bytes, /) -> None: ...

    def delete(self, key: bytes, /) -> None: ...


class KV(Protocol):
    """What domain code needs from a store."""

    def get(self, key: bytes, /) -> bytes | None: ...

    def put(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> None: ...

    def write(self, puts: dict[bytes, bytes], deletes: list[bytes] | None = None) -> None: ...

    def iterate(self, prefix: bytes = b"", start: bytes | None = None, reverse: bool = False) -> Iterator[tuple[bytes, bytes]]: ...

    def close(self) -> None: ...


def _max_open_files() -> int:
    """LevelDB's table cache size for each store of this process: LevelDB keeps at most ``max_open_files``
    table files open (default 1000) and re-opens a table (footer, index block) on every miss, so random
    reads over a store of more table files than that - a snapshot export walking the state trie of a
    large executor store (about 2,000 files of 2 MiB at 1M accounts) - thrash. Raises the soft
    ``RLIMIT_NOFILE`` to the hard limit and gives each store a third of it (several stores, sockets)."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:
            hard = 1 << 20
        if soft != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1 << 20), hard))
            soft = min(hard, 1 << 20)
    except (OSError, ValueError):
        return 1000
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(200, min(soft // 3, 50_000))


_MAX_OPEN_FILES: int | None = None

#: Bits per key of the Bloom filter every table file carries (LevelDB's ``NewBloomFilterPolicy``; 10 bits
#: give ~1 % false positives). Trie nodes are keyed by their hash, so a point read of a large store would
#: otherwise search one table per level (an index and a data block each) to find the one that holds it;
#: with the filters it reads the blocks of that one table. Tables written without filters (a store made
#: before this option) are still read, without the shortcut, until a compaction rewrites them.
BLOOM_FILTER_BITS = 10


def max_open_files() -> int:
    global _MAX_OPEN_FILES
    if _MAX_OPEN_FILES is None:
        _MAX_OPEN_FILES = _max_open_files()
    return _MAX_OPEN_FILES


class LevelDB:
    """A plyvel database; ``write`` applies puts and deletes in one atomic batch."""

    def __init__(self, path: str | os.PathLike[str], create: bool = True) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = plyvel.DB(str(self.path), create_if_missing=create, lru_cache_size=64 << 20,
                                 write_buffer_size=32 << 20, max_open_files=max_open_files(),
                                 bloom_filter_bits=BLOOM_FILTER_BITS)
        except plyvel.Error as exc:
            raise StorageError(f"cannot open LevelDB at {self.path}: {exc}") from exc
        self._lock = threading.Lock()

    def get(self, key: bytes, /) -> bytes | None:
        return self._db.get(key)  # type: ignore[no-any-return]

    def get_uncached(self, key: bytes, /) -> bytes | None:
        """``get`` without filling the block cache (bulk scans such as a snapshot export)."""
        return self._db.get(key, fill_cache=False)  # type: ignore[no-any-return]

    def uncached_getter(self) -> Callable[[bytes], bytes | None]:
        """:meth:`get_uncached` as one C-level callable (no Python frame per read: bulk walks)."""
        return functools.partial(self._db.get, fill_cache=False)

    def flush_memtable(self) -> None:
        """Write the in-memory table to a table file now (LevelDB does it before any range compaction; this
        range holds no key, so nothing else is compacted). A store closed after a bulk load otherwise
        replays its whole write-ahead log at the next open (about 0.7 s per 32 MiB here)."""
        self._db.compact_range(start=b"\xff" * 16, stop=b"\xff" * 17)

    def put(self, key: bytes, value: bytes) -> None:
        self._db.put(key, value)

    def delete(self, key: bytes) -> None:
        self._db.delete(key)

    def write(self, puts: dict[bytes, bytes], deletes: list[bytes] | None = None, sync: bool = False) -> None:
        with self._db.write_batch(sync=sync) as wb:
            for k in deletes or ():
                wb.delete(k)
            for k, v in puts.items():
                wb.put(k, v)

    def batch(self, sync: bool = False) -> plyvel._plyvel.WriteBatch:
        """A write batch context manager (committed on exit)."""
        return self._db.write_batch(sync=sync)

    def iterate(self, prefix: bytes = b"", start: bytes | None = None, reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        if start is not None:
            it = self._db.iterator(start=start, prefix=None, reverse=reverse) if not prefix else \
                self._db.iterator(start=start, stop=_prefix_end(prefix), reverse=reverse)
        else:
            it = self._db.iterator(prefix=prefix or None, reverse=reverse)
        with it:
            yield from it

    def snapshot(self) -> plyvel._plyvel.Snapshot:
        """A consistent read view (LevelDB snapshot)."""
        return self._db.snapshot()

    def close(self) -> None:
        if not self._db.closed:
            self._db.close()


def _prefix_end(prefix: bytes) -> bytes | None:
    p = bytearray(prefix)
    while p:
        if p[-1] < 0xFF:
            p[-1] += 1
            return bytes(p)
        p.pop()
    return None


class MemoryKV:
    """A dict-backed store with the same interface, for tests and tools."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, key: bytes, /) -> bytes | None:
        return self.data.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.data[key] = value

    def delete(self, key: bytes) -> None:
        self.data.pop(key, None)

    def write(self, puts: dict[bytes, bytes], deletes: list[bytes] | None = None, sync: bool = False) -> None:
        for k in deletes or ():
            self.data.pop(k, None)
        self.data.update(puts)

    def iterate(self, prefix: bytes = b"", start: bytes | None = None, reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        keys = sorted((k for k in self.data if k.startswith(prefix)), reverse=reverse)
        for k in keys:
            if start is not None and ((k < start) if not reverse else (k > start)):
                continue
            yield k, self.data[k]

    def close(self) -> None:
        pass


class BackgroundWriter:
    """Writes batches into a :class:`LevelDB` from a thread, so that preparing the next batch overlaps the
    write (plyvel releases the GIL while LevelDB writes and compacts).

    :meth:`submit` queues a batch (blocking while ``depth`` batches wait: memory stays bounded) and raises a
    failure of an earlier write; :meth:`close` waits for every queued batch, writes a last one with
    ``sync`` if asked, and raises a failure. Batches are written in submission order. Not thread-safe:
    one producer.
    """

    def __init__(self, db: LevelDB, depth: int = 2) -> None:
        self._db = db
        self._queue: queue.Queue[dict[bytes, bytes] | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"writer-{db.path.name}", daemon=True)
        self._thread.start()
        self._closed = False

    def _run(self) -> None:
        while True:
            puts = self._queue.get()
            if puts is None:
                return
            if self._error is None:  # after a failure, drain without writing
                try:
                    self._db.write(puts)
                except BaseException as exc:  # noqa: BLE001 - handed to the producer
                    self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, puts: dict[bytes, bytes]) -> None:
        self._raise()
        if puts:
            self._queue.put(puts)

    def close(self, last: dict[bytes, bytes] | None = None, sync: bool = False) -> None:
        """Wait for the queued batches, then write ``last`` (with ``sync``); raise a failure of any write."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()
        self._raise()
        if last or sync:
            self._db.write(last or {}, sync=sync)


def swap_directories(live: Path, staged: Path, backup: Path) -> None:
    """Make ``staged`` live: ``live`` -> ``backup``, ``staged`` -> ``live`` (renames on one filesystem).

    The caller records its intent durably before calling (see the restore
    journal), so a crash between the two renames is rolled forward at start-up.
    """
    if backup.exists():
        shutil.rmtree(backup)
    if live.exists():
        os.replace(live, backup)
    os.replace(staged, live)
    fsync_dir(live.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""The restore journal (the commit point of a restore) and the per-node snapshot lock.

A restore runs ``Begin -> Restore -> Clear -> End`` (DESIGN.md section 4).
At Restore, chain and executor build their stores in a *staged* directory
(``data/<service>.staged``) beside the live one (``data/<service>``); nothing
live changes. The tool then writes the journal ``run/restore.journal`` with
phase ``"commit"`` -- the commit point -- and only then sends Clear, at which
chain and executor swap staged -> live (live -> ``data/<service>.backup``).

Journal phases (one JSON object, replaced atomically: temp file, fsync,
rename, fsync of the directory):

``"prepare"``
    written by the tool before Begin. The restore may still be aborted;
    staged stores are disposable.
``"commit"``
    written by the tool after every RestoreAck agreed and before Clear.
    The restore *will* complete: every staged store is to be made live.
``"done"``
    written by the tool after every EndAck, just before it removes the
    journal (so a crash between the two still reads as finished).

A staged store is *complete* once its service verified the whole file,
closed and fsynced it and wrote the :data:`COMPLETE_MARKER` file inside it
(JSON height / block hash / state root, :func:`write_complete_marker`), just
before its RestoreAck.

Start-up recovery (:func:`recover_store`, called by chain and executor for
their store before opening it)::

    journal "prepare", staged complete     -> keep staged: the tool may still commit
                                              it (a service restarting between its
                                              RestoreAck and Clear must not lose it);
                                              Abort or the tool's leftover-prepare
                                              clean-up discards it
    journal absent / "prepare" / "done"    -> roll back: delete staged (for "prepare":
                                              only an incomplete one); if the live
                                              store is missing but a backup exists,
                                              rename backup -> live
    journal "commit"                       -> roll forward: make staged live (if it
                                              still exists; it must be complete), as
                                              commit_staged does

Crash cases (what is on disk -> what recovery does):

1. *Service or tool crash before the commit write* (during Begin or Restore,
   or while the journal is being written): the journal is absent or
   ``"prepare"`` (the atomic rename means a half-written commit journal never
   exists). Staged stores are deleted at start-up; the live store was never
   touched. The next ``snapshot_tool -m restore`` sees the ``"prepare"``
   journal, sends Abort (services leave flight mode, drop staged data) and
   removes it.
2. *Crash after the commit write, before any swap*: journal ``"commit"``,
   live and staged both exist. Start-up rolls forward: live -> backup,
   staged -> live.
3. *Crash between the two renames* (live -> backup done, staged -> live not):
   journal ``"commit"``, no live, staged and backup exist. Start-up renames
   staged -> live.
4. *Crash after the swap, before End*: journal ``"commit"``, live exists,
   staged does not (a backup may). Nothing to do for the store; the backup
   stays until End. The tool (re-run, it finds the ``"commit"`` journal)
   re-sends Clear and End, which are idempotent.
5. *Tool crash* at each step: before the commit write, the node may be left
   in flight mode with staged data; re-running the tool Aborts (case 1).
   After the commit write, re-running the tool completes Clear + End (case 2-4
   for the stores; Clear is idempotent for every service). After all EndAcks
   but before removing the journal: the tool re-sends Clear/End, which
   services ack again (idempotent), then removes it.

A staged store is only ever made live under a ``"commit"`` journal, and the
journal is only written after both chain and executor verified their file
and agreed on height, block hash and state root, so a node never serves a
half-restored or unverified store.

:class:`SnapshotLock` allows one snapshot operation (snapshot or restore)
per node at a time.
"""

from __future__ import annotations

import enum
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from pycita.snapshot.errors import SnapshotError
from pycita.storage import fsync_dir

log = logging.getLogger(__name__)

__all__ = [
    "COMPLETE_MARKER",
    "JOURNAL_NAME",
    "LOCK_NAME",
    "PID_NAME",
    "JournalEntry",
    "JournalError",
    "Phase",
    "RecoveryAction",
    "RestoreJournal",
    "SnapshotLock",
    "SnapshotLockedError",
    "commit_staged",
    "discard_staged",
    "fsync_tree",
    "read_complete_marker",
    "recover_store",
    "remove_backup",
    "store_paths",
    "write_complete_marker",
]

JOURNAL_NAME = "restore.journal"
LOCK_NAME = "snapshot.lock"
PID_NAME = "snapshot.pid"
COMPLETE_MARKER = "COMPLETE"
"""File inside a staged store saying it was fully verified and synced (see :func:`write_complete_marker`)."""
JOURNAL_VERSION = 1


class JournalError(SnapshotError):
    """Raised when the restore journal cannot be written or read, or a store is in a state no crash can produce."""

    default_check = "restore journal"


class SnapshotLockedError(SnapshotError):
    """Raised when another snapshot operation holds the node's snapshot lock."""

    default_check = "snapshot lock"

    def __init__(self, detail: str, *, file: str | None = None, holder_pid: int | None = None) -> None:
        super().__init__(detail, file=file)
        self.holder_pid = holder_pid


class Phase(enum.StrEnum):
    """Where a restore stands; see the module docstring."""

    PREPARE = "prepare"
    COMMIT = "commit"
    DONE = "done"


class RecoveryAction(enum.StrEnum):
    """What :func:`recover_store` did to a store at start-up."""

    NOTHING = "nothing"
    ROLLED_BACK = "rolled back"
    ROLLED_FORWARD = "rolled forward"
    KEPT_STAGED = "kept staged"


@dataclass(frozen=True)
class JournalEntry:
    """The content of ``run/restore.journal``.

    ``height``, ``block_hash``, ``state_root`` and ``proof`` (the chain's
    ``last_proof``: content bytes and ProofType) are those the chain and
    executor RestoreAcks agreed on; they are zero/empty in a ``"prepare"``
    entry. ``files`` are the snapshot file names, ``directory`` the
    snapshot directory, ``time`` seconds since the epoch.
    """

    request_id: str
    phase: Phase
    height: int = 0
    block_hash: bytes = b""
    state_root: bytes = b""
    proof: bytes = b""
    proof_type: int = 0
    files: tuple[str, ...] = ()
    directory: str = ""
    time: float = field(default_factory=time.time)

    @property
    def committed(self) -> bool:
        return self.phase is Phase.COMMIT

    def to_json(self) -> dict[str, Any]:
        return {
            "version": JOURNAL_VERSION,
            "request_id": self.request_id,
            "phase": self.phase.value,
            "height": self.height,
            "block_hash": "0x" + self.block_hash.hex(),
            "state_root": "0x" + self.state_root.hex(),
            "proof": "0x" + self.proof.hex(),
            "proof_type": self.proof_type,
            "files": list(self.files),
            "directory": self.directory,
            "time": self.time,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> JournalEntry:
        """Parse :meth:`to_json` output; raise :class:`JournalError` naming ``where`` on any defect."""
        if not isinstance(data, dict):
            raise JournalError("not a JSON object", file=where)
        try:
            return cls(
                request_id=str(data["request_id"]),
                phase=Phase(data["phase"]),
                height=int(data.get("height", 0)),
                block_hash=_unhex(data.get("block_hash", "")),
                state_root=_unhex(data.get("state_root", "")),
                proof=_unhex(data.get("proof", "")),
                proof_type=int(data.get("proof_type", 0)),
                files=tuple(str(f) for f in data.get("files", ())),
                directory=str(data.get("directory", "")),
                time=float(data.get("time", 0.0)),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise JournalError(f"malformed entry: {exc!r}", file=where) from exc


def _unhex(value: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"expected a hex string, got {type(value).__name__}")
    return bytes.fromhex(value.removeprefix("0x"))


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` durably: temp file, fsync, rename, fsync of the directory."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


class RestoreJournal:
    """``<run_dir>/restore.journal``: written by snapshot_tool, read by chain and executor at start-up."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / JOURNAL_NAME

    def __repr__(self) -> str:
        return f"RestoreJournal({str(self.run_dir)!r})"

    def _write(self, entry: JournalEntry) -> JournalEntry:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.path, (json.dumps(entry.to_json(), indent=1) + "\n").encode())
        except OSError as exc:
            raise JournalError(f"cannot write the journal: {exc}", file=str(self.path)) from exc
        log.info("restore journal %s: %s (request %s, height %d)", self.path, entry.phase.value,
                 entry.request_id, entry.height)
        return entry

    def write_prepare(self, request_id: str, files: Sequence[str] = (), directory: str = "") -> JournalEntry:
        """Record that a restore has started and may still be rolled back."""
        return self._write(JournalEntry(request_id=request_id, phase=Phase.PREPARE, files=tuple(files),
                                        directory=directory))

    def write_commit(self, request_id: str, *, height: int, block_hash: bytes, state_root: bytes,
                     proof: bytes = b"", proof_type: int = 0, files: Sequence[str] = (),
                     directory: str = "") -> JournalEntry:
        """The commit point: from now on every staged store is made live (rolled forward)."""
        if height <= 0 or not block_hash or not state_root:
            raise JournalError(f"refusing to commit without height, block hash and state root "
                               f"(height {height})", file=str(self.path))
        return self._write(JournalEntry(
            request_id=request_id, phase=Phase.COMMIT, height=height, block_hash=bytes(block_hash),
            state_root=bytes(state_root), proof=bytes(proof), proof_type=proof_type, files=tuple(files),
            directory=directory))

    def mark_done(self) -> None:
        """Record that every service acked End, then remove the journal."""
        current = self.read()
        if current is not None and current.phase is not Phase.DONE:
            self._write(JournalEntry(
                request_id=current.request_id, phase=Phase.DONE, height=current.height,
                block_hash=current.block_hash, state_root=current.state_root, proof=current.proof,
                proof_type=current.proof_type, files=current.files, directory=current.directory))
        self.remove()

    def remove(self) -> None:
        """Delete the journal (durably); absent is fine."""
        try:
            self.path.unlink(missing_ok=True)
            if self.run_dir.is_dir():
                fsync_dir(self.run_dir)
        except OSError as exc:
            raise JournalError(f"cannot remove the journal: {exc}", file=str(self.path)) from exc

    def read(self) -> JournalEntry | None:
        """The journal's entry, or ``None`` when there is none.

        Raises :class:`JournalError` when the file exists but is unreadable or
        malformed (never produced by a crash, since writes are atomic).
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise JournalError(f"cannot read the journal: {exc}", file=str(self.path)) from exc
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise JournalError(f"not JSON: {exc}", file=str(self.path)) from exc
        return JournalEntry.from_json(data, str(self.path))


# ------------------------------------------------------------------ stores


def store_paths(data_dir: str | os.PathLike[str], service: str) -> tuple[Path, Path, Path]:
    """``(live, staged, backup)`` directories of ``service``'s store under ``data_dir``."""
    base = Path(data_dir)
    return base / service, base / f"{service}.staged", base / f"{service}.backup"


def fsync_tree(path: Path) -> None:
    """fsync every file and directory under ``path`` (call on a staged store before RestoreAck)."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))
    if path.parent.exists():
        fsync_dir(path.parent)


def write_complete_marker(staged: Path, *, height: int, block_hash: bytes, state_root: bytes) -> None:
    """Mark ``staged`` complete (durably); call after the store is closed and :func:`fsync_tree`-d."""
    data = {"height": height, "block_hash": "0x" + bytes(block_hash).hex(),
            "state_root": "0x" + bytes(state_root).hex(), "time": time.time()}
    try:
        _write_atomic(staged / COMPLETE_MARKER, (json.dumps(data) + "\n").encode())
    except OSError as exc:
        raise JournalError(f"cannot write the complete marker: {exc}", file=str(staged)) from exc


def read_complete_marker(staged: Path) -> dict[str, Any] | None:
    """The marker of a complete staged store (``height`` int, ``block_hash``/``state_root`` bytes), or None."""
    try:
        data = json.loads((staged / COMPLETE_MARKER).read_bytes())
        return {"height": int(data["height"]), "block_hash": _unhex(data["block_hash"]),
                "state_root": _unhex(data["state_root"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _rmtree_durably(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path)
    fsync_dir(path.parent)


def discard_staged(staged: Path) -> bool:
    """Delete a staged store (Abort, roll back, or before staging anew); returns whether one existed."""
    if not (staged.exists() or staged.is_symlink()):
        return False
    _rmtree_durably(staged)
    return True


def remove_backup(backup: Path) -> bool:
    """Delete the pre-restore backup (at End); returns whether one existed."""
    if not (backup.exists() or backup.is_symlink()):
        return False
    _rmtree_durably(backup)
    return True


def commit_staged(live: Path, staged: Path, backup: Path) -> bool:
    """Make ``staged`` live, idempotently; returns True if a rename happened.

    Steps: (a stale ``backup`` beside an existing ``live`` is deleted),
    ``live -> backup``, ``staged -> live``, fsync of the parent directory after
    each rename. Re-running after a crash at any point finishes the job:

    * live, staged (backup or not)  -> full swap;
    * staged, no live               -> staged -> live (crash between renames,
      or a node that had no store);
    * live, no staged               -> already done, nothing changes.

    Raises :class:`JournalError` when neither live nor staged exists. The
    caller must hold the store closed, and must check after a ``False``
    return that ``live`` holds the height it expects (a staged store lost
    to a roll back is otherwise indistinguishable from a finished swap).
    """
    has_live, has_staged = live.exists(), staged.exists()
    if not has_staged:
        if has_live:
            return False
        raise JournalError(f"neither the live store {live} nor the staged store {staged} exists",
                           file=str(staged))
    if has_live:
        if backup.exists() or backup.is_symlink():
            log.warning("removing stale backup %s before swapping in %s", backup, staged)
            _rmtree_durably(backup)
        os.replace(live, backup)
        fsync_dir(live.parent)
    os.replace(staged, live)
    fsync_dir(live.parent)
    log.info("made %s live (previous store kept in %s)", staged, backup)
    return True


def recover_store(live: Path, staged: Path, backup: Path,
                  journal: RestoreJournal | JournalEntry | None) -> RecoveryAction:
    """Bring one store to a consistent state at service start-up; see the module docstring.

    ``journal`` is the node's :class:`RestoreJournal` (read here), an entry
    already read, or ``None`` (no journal). With a ``"commit"`` journal a
    staged store is rolled forward (it must be complete, else
    :class:`JournalError`); with a ``"prepare"`` journal a complete one is
    kept; otherwise it is deleted, and a live store missing beside a backup
    is restored from the backup. A backup beside a
    live store is left alone under a ``"commit"`` journal (End removes it).
    """
    entry = journal.read() if isinstance(journal, RestoreJournal) else journal
    has_live, has_staged, has_backup = live.exists(), staged.exists(), backup.exists()
    complete = has_staged and read_complete_marker(staged) is not None
    if entry is not None and entry.phase is Phase.COMMIT:
        if has_staged:
            if not complete:
                raise JournalError(
                    f"restore {entry.request_id} is committed but the staged store {staged} has no "
                    f"{COMPLETE_MARKER} marker (it was never fully verified); restore the snapshot again",
                    file=str(staged))
            commit_staged(live, staged, backup)
            log.warning("restore %s was committed: rolled %s forward to height %d",
                        entry.request_id, live, entry.height)
            return RecoveryAction.ROLLED_FORWARD
        if not has_live:
            raise JournalError(
                f"restore {entry.request_id} is committed but neither {live} nor {staged} exists "
                f"(backup present: {has_backup}); restore the snapshot again", file=str(live))
        return RecoveryAction.NOTHING
    # No restore in progress, or one that has not reached its commit point.
    action = RecoveryAction.NOTHING
    if has_staged and complete and entry is not None and entry.phase is Phase.PREPARE:
        log.warning("kept the complete staged store %s: restore %s may still be committed",
                    staged, entry.request_id)
        action = RecoveryAction.KEPT_STAGED
    elif has_staged:
        discard_staged(staged)
        log.warning("discarded uncommitted staged store %s (journal: %s)", staged,
                    entry.phase.value if entry else "none")
        action = RecoveryAction.ROLLED_BACK
    if not has_live and has_backup:
        os.replace(backup, live)
        fsync_dir(live.parent)
        log.warning("restored %s from its backup %s", live, backup)
        action = RecoveryAction.ROLLED_BACK
    return action


# -------------------------------------------------------------------- lock


class SnapshotLock:
    """One snapshot operation per node: ``fcntl.flock`` on ``run/snapshot.lock`` plus ``run/snapshot.pid``.

    Use as a context manager (or :meth:`acquire` / :meth:`release`). A second
    holder gets :class:`SnapshotLockedError` naming the holder's pid. The
    kernel drops the flock when the process exits, however it exits, so a
    crashed tool never leaves the node locked (a stale pid file is ignored).
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.pid_path = self.run_dir / PID_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder_pid(self) -> int | None:
        """The pid recorded by the current (or last) holder, if readable."""
        try:
            return int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def acquire(self) -> SnapshotLock:
        if self._fd is not None:
            return self
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SnapshotLockedError(f"cannot open the lock file: {exc}", file=str(self.path)) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = self.holder_pid()
            who = f"pid {pid}" if pid is not None else "a process whose pid is unknown"
            raise SnapshotLockedError(
                f"another snapshot operation is running on this node ({who}); wait for it to finish",
                file=str(self.path), holder_pid=pid) from None
        except OSError as exc:
            os.close(fd)
            raise SnapshotLockedError(f"cannot lock: {exc}", file=str(self.path)) from exc
        self._fd = fd
        try:
            _write_atomic(self.pid_path, f"{os.getpid()}\n".encode())
        except OSError as exc:
            log.warning("cannot write %s: %s", self.pid_path, exc)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if self.holder_pid() == os.getpid():
                self.pid_path.unlink(missing_ok=True)
        except OSError:
            pass
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> SnapshotLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

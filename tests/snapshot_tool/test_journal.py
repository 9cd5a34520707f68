"""The restore journal, start-up recovery of a store in every crash case, and the snapshot lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pycita.snapshot.journal import (
    JournalEntry,
    JournalError,
    Phase,
    RecoveryAction,
    RestoreJournal,
    SnapshotLock,
    SnapshotLockedError,
    commit_staged,
    discard_staged,
    read_complete_marker,
    recover_store,
    remove_backup,
    store_paths,
    write_complete_marker,
)

HASH = bytes(range(32))
ROOT = bytes(range(32, 64))


def make_store(path: Path, content: str) -> None:
    path.mkdir(parents=True)
    (path / "CURRENT").write_text(content)


def make_complete_staged(path: Path, content: str) -> None:
    """A staged store its service fully verified and marked (what exists after its RestoreAck)."""
    make_store(path, content)
    write_complete_marker(path, height=100, block_hash=HASH, state_root=ROOT)


def content_of(path: Path) -> str:
    return (path / "CURRENT").read_text()


@pytest.fixture
def stores(tmp_path: Path) -> tuple[Path, Path, Path]:
    (tmp_path / "data").mkdir()
    return store_paths(tmp_path / "data", "chain")


@pytest.fixture
def journal(tmp_path: Path) -> RestoreJournal:
    return RestoreJournal(tmp_path / "run")


def commit(journal: RestoreJournal) -> JournalEntry:
    return journal.write_commit("req-1", height=100, block_hash=HASH, state_root=ROOT, proof=b"proof",
                                proof_type=2, files=("s_chain.rlp", "s_executor.rlp"), directory="/n/snapshots")


# ------------------------------------------------------------------ journal


def test_no_journal_reads_as_none(journal: RestoreJournal) -> None:
    assert journal.read() is None


def test_a_prepare_journal_reads_back_as_prepare(journal: RestoreJournal) -> None:
    journal.write_prepare("req-1", ("s_chain.rlp", "s_executor.rlp"), "/n/snapshots")
    entry = journal.read()
    assert entry is not None
    assert entry.phase is Phase.PREPARE and entry.request_id == "req-1" and not entry.committed
    assert entry.files == ("s_chain.rlp", "s_executor.rlp")


def test_a_commit_journal_keeps_every_field(journal: RestoreJournal) -> None:
    written = commit(journal)
    entry = journal.read()
    assert entry == written
    assert entry.committed and entry.height == 100 and entry.block_hash == HASH and entry.state_root == ROOT
    assert entry.proof == b"proof" and entry.proof_type == 2 and entry.directory == "/n/snapshots"
    data = json.loads(journal.path.read_text())
    assert data["phase"] == "commit" and data["block_hash"] == "0x" + HASH.hex() and data["time"] > 0


def test_a_commit_without_height_hash_or_root_is_refused(journal: RestoreJournal) -> None:
    with pytest.raises(JournalError):
        journal.write_commit("req-1", height=0, block_hash=HASH, state_root=ROOT)
    with pytest.raises(JournalError):
        journal.write_commit("req-1", height=5, block_hash=b"", state_root=ROOT)
    assert journal.read() is None


def test_journal_writes_leave_no_temporary_file(journal: RestoreJournal) -> None:
    journal.write_prepare("req-1")
    commit(journal)
    assert sorted(p.name for p in journal.run_dir.iterdir()) == ["restore.journal"]


def test_mark_done_removes_the_journal(journal: RestoreJournal) -> None:
    commit(journal)
    journal.mark_done()
    assert journal.read() is None and not journal.path.exists()
    journal.mark_done()  # idempotent


def test_a_malformed_journal_raises_naming_the_file(journal: RestoreJournal) -> None:
    journal.run_dir.mkdir(parents=True)
    journal.path.write_text("{not json")
    with pytest.raises(JournalError, match="restore.journal"):
        journal.read()
    journal.path.write_text(json.dumps({"request_id": "x", "phase": "sideways"}))
    with pytest.raises(JournalError, match="malformed"):
        journal.read()


def test_a_crash_while_writing_the_commit_leaves_the_prepare_journal(journal: RestoreJournal) -> None:
    journal.write_prepare("req-1")
    # the commit was being written to the temporary file when the tool died
    (journal.run_dir / "restore.journal.tmp").write_text('{"request_id": "req-1", "phase": "comm')
    entry = journal.read()
    assert entry is not None and entry.phase is Phase.PREPARE


# ----------------------------------------------------- recovery, by crash case


def test_a_crash_before_the_commit_write_rolls_the_staged_store_back(
        stores: tuple[Path, Path, Path], journal: RestoreJournal) -> None:
    live, staged, backup = stores
    make_store(live, "old")
    make_store(staged, "new")
    journal.write_prepare("req-1")
    assert recover_store(live, staged, backup, journal) is RecoveryAction.ROLLED_BACK
    assert content_of(live) == "old" and not staged.exists() and not backup.exists()


def test_a_complete_staged_store_is_kept_while_the_journal_says_prepare(
        stores: tuple[Path, Path, Path], journal: RestoreJournal) -> None:
    # the service restarted between its RestoreAck and Clear: the tool may still commit
    live, staged, backup = stores
    make_store(live, "old")
    make_complete_staged(staged, "new")
    journal.write_prepare("req-1")
    assert recover_store(live, staged, backup, journal) is RecoveryAction.KEPT_STAGED
    assert content_of(live) == "old" and content_of(staged) == "new"
    assert read_complete_marker(staged) == {"height": 100, "block_hash": HASH, "state_root": ROOT}


def test_a_complete_staged_store_without_any_journal_is_rolled_back(stores: tuple[Path, Path, Path]) -> None:
    live, staged, backup = stores
    make_store(live, "old")
    make_complete_staged(staged, "new")
    assert recover_store(live, staged, backup, None) is RecoveryAction.ROLLED_BACK
    assert content_of(live) == "old" and not staged.exists()


def test_a_committed_journal_refuses_an_incomplete_staged_store(
        stores: tuple[Path, Path, Path], journal: RestoreJournal) -> None:
    live, staged, backup = stores
    make_store(live, "old")
    make_store(staged, "half-written")
    commit(journal)
    with pytest.raises(JournalError, match="COMPLETE"):
        recover_store(live, staged, backup, journal)
    assert content_of(live) == "old"


def test_a_staged_store_without_any_journal_is_rolled_back(stores: tuple[Path, Path, Path]) -> None:
    live, staged, backup = stores
    make_store(live, "old")
    make_store(staged, "half-written")
    assert recover_store(live, staged, backup, None) is RecoveryAction.ROLLED_BACK
    assert content_of(live) == "old" and not staged.exists()


def test_a_crash_after_the_commit_write_before_any_swap_rolls_forward(
        stores: tuple[Path, Path, Path], journal: RestoreJournal) -> None:
    live, staged, backup = stores
    make_store(live, "old")
    make_complete_staged(staged, "new")
    commit(journal)
    assert recover_store(live, staged, backup, journal) is RecoveryAction.ROLLED_FORWARD
    assert content_of(live) == "new" and content_of(backup) == "old" and not staged.exists()


def test_a_crash_between_the_two_renames_rolls_forward(
        stores: tuple[Path, Path, Path], journal: RestoreJournal) -> None:
    live, staged, backup = stores
    make_store(backup, "old")  # live -> backup happened, staged -> live did not
    make_complete_staged(staged, "new")
    commit(journal)
    assert recover_store(live, staged, backup, journal) is RecoveryAction.ROLLED_FORWARD
    assert content_of(live) == "new" and content_of(backup) == "old" and not staged.exists()


def test_a_crash_after_the_swap_before_end_changes_nothing(
        stores: tuple[Path, Path, Path], journal: RestoreJournal) -> None:
    live, staged, backup = stores
    make_store(live, "new")
    make_store(backup, "old")
    commit(journal)
    assert recover_store(live, staged, backup, journal) is RecoveryAction.NOTHING
    assert content_of(live) == "new" and content_of(backup) == "old"  # End removes the backup


def test_a_committed_restore_of_a_node_without_a_store_rolls_forward(
        stores: tuple[Path, Path, Path], journal: RestoreJournal) -> None:
    live, staged, backup = stores
    make_complete_staged(staged, "new")
    commit(journal)
    assert recover_store(live, staged, backup, journal) is RecoveryAction.ROLLED_FORWARD
    assert content_of(live) == "new" and not backup.exists()


def test_a_stale_backup_is_replaced_when_rolling_forward(
        stores: tuple[Path, Path, Path], journal: RestoreJournal) -> None:
    live, staged, backup = stores
    make_store(live, "old")
    make_complete_staged(staged, "new")
    make_store(backup, "older")
    entry = commit(journal)
    assert recover_store(live, staged, backup, entry) is RecoveryAction.ROLLED_FORWARD
    assert content_of(live) == "new" and content_of(backup) == "old"


def test_a_committed_journal_with_neither_live_nor_staged_store_is_an_error(
        stores: tuple[Path, Path, Path], journal: RestoreJournal) -> None:
    live, staged, backup = stores
    make_store(backup, "old")
    commit(journal)
    with pytest.raises(JournalError, match="neither"):
        recover_store(live, staged, backup, journal)


def test_a_live_store_lost_without_a_commit_is_restored_from_its_backup(
        stores: tuple[Path, Path, Path]) -> None:
    live, staged, backup = stores
    make_store(backup, "old")
    make_store(staged, "new")
    assert recover_store(live, staged, backup, None) is RecoveryAction.ROLLED_BACK
    assert content_of(live) == "old" and not staged.exists() and not backup.exists()


def test_a_tool_crash_after_the_done_mark_rolls_a_stray_staged_store_back(
        stores: tuple[Path, Path, Path], journal: RestoreJournal) -> None:
    live, staged, backup = stores
    make_store(live, "new")
    make_store(staged, "stray")
    entry = JournalEntry(request_id="req-1", phase=Phase.DONE, height=100, block_hash=HASH, state_root=ROOT)
    assert recover_store(live, staged, backup, entry) is RecoveryAction.ROLLED_BACK
    assert content_of(live) == "new" and not staged.exists()


def test_a_clean_store_needs_nothing(stores: tuple[Path, Path, Path], journal: RestoreJournal) -> None:
    live, staged, backup = stores
    make_store(live, "old")
    assert recover_store(live, staged, backup, journal) is RecoveryAction.NOTHING
    assert content_of(live) == "old"


def test_commit_staged_is_idempotent(stores: tuple[Path, Path, Path]) -> None:
    live, staged, backup = stores
    make_store(live, "old")
    make_store(staged, "new")
    assert commit_staged(live, staged, backup) is True
    assert commit_staged(live, staged, backup) is False
    assert content_of(live) == "new" and content_of(backup) == "old"


def test_discard_staged_and_remove_backup_report_whether_there_was_one(stores: tuple[Path, Path, Path]) -> None:
    live, staged, backup = stores
    make_store(staged, "new")
    make_store(backup, "old")
    assert discard_staged(staged) and not staged.exists() and not discard_staged(staged)
    assert remove_backup(backup) and not backup.exists() and not remove_backup(backup)


# --------------------------------------------------------------------- lock


def test_a_second_lock_names_the_holder_pid(tmp_path: Path) -> None:
    with SnapshotLock(tmp_path / "run"):
        with pytest.raises(SnapshotLockedError, match=f"pid {os.getpid()}") as info:
            SnapshotLock(tmp_path / "run").acquire()
        assert info.value.holder_pid == os.getpid()


def test_the_lock_is_released_on_exit(tmp_path: Path) -> None:
    lock = SnapshotLock(tmp_path / "run")
    with lock:
        assert lock.held and lock.pid_path.exists()
    assert not lock.held and not lock.pid_path.exists()
    with SnapshotLock(tmp_path / "run"):
        pass


def test_a_lock_held_by_a_killed_process_is_free_again(tmp_path: Path) -> None:
    run = tmp_path / "run"
    code = ("import sys, time; from pycita.snapshot.journal import SnapshotLock\n"
            f"SnapshotLock({str(run)!r}).acquire(); print('locked', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(SnapshotLockedError, match=f"pid {proc.pid}"):
            SnapshotLock(run).acquire()
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 5
    while True:
        try:
            SnapshotLock(run).acquire().release()
            break
        except SnapshotLockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)

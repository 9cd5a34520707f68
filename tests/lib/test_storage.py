"""LevelDB helpers used by the snapshot restore: flush_memtable and BackgroundWriter."""

from __future__ import annotations

from pathlib import Path

import pytest

from pycita.storage import BackgroundWriter, LevelDB


def _log_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.log"))


def test_flush_memtable_leaves_no_log_to_replay_and_keeps_every_key(tmp_path: Path) -> None:
    db = LevelDB(tmp_path / "db")
    db.write({i.to_bytes(4, "big"): b"v" * 100 for i in range(5000)})
    assert _log_bytes(tmp_path / "db") > 400_000
    db.flush_memtable()
    db.close()
    assert _log_bytes(tmp_path / "db") < 1000  # the table file holds the data now
    db = LevelDB(tmp_path / "db")
    assert all(db.get(i.to_bytes(4, "big")) == b"v" * 100 for i in range(5000))
    db.close()


def test_background_writer_writes_every_batch_in_order_and_the_last_one_synced(tmp_path: Path) -> None:
    db = LevelDB(tmp_path / "db")
    writer = BackgroundWriter(db, depth=1)
    for n in range(20):
        writer.submit({b"k": n.to_bytes(2, "big"), n.to_bytes(2, "big"): b"x"})
    writer.close({b"last": b"1"}, sync=True)
    assert db.get(b"k") == (19).to_bytes(2, "big")  # later batches win: submission order
    assert all(db.get(n.to_bytes(2, "big")) == b"x" for n in range(20))
    assert db.get(b"last") == b"1"
    db.close()


def test_background_writer_raises_a_failed_write_at_the_next_submit_or_close(tmp_path: Path) -> None:
    db = LevelDB(tmp_path / "db")
    writer = BackgroundWriter(db)
    writer.submit({b"a": "not bytes"})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        for _ in range(50):  # the failure surfaces once the thread has run the batch
            writer.submit({b"b": b"1"})
        writer.close()
    with pytest.raises(TypeError):
        writer.close()
    db.close()

"""The executor file's worker-process decoding path gives the sequential path's items and errors, and leaves
no process behind (forced on at tiny sizes; normally only above ``PARALLEL_MIN_BYTES``)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
from conftest import build_chain, default_specs

from pycita.snapshot import state_format
from pycita.snapshot.errors import ChunkDecodeError, ChunkHashMismatch, SnapshotError, StateRootMismatch
from pycita.snapshot.state_format import ExecutorFileReader
from pycita.snapshot.verify import verify_executor_file, verify_snapshot


def _children() -> set[int]:
    path = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


@pytest.fixture
def forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_format, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(state_format, "PARALLEL_DECODE", True)  # off by default


def _items(path: Path, parallel: bool) -> list[object]:
    with ExecutorFileReader(path) as r:
        return list(r.accounts(parallel=parallel))


def test_same_items_as_sequential(tmp_path: Path, forced: None) -> None:
    c = build_chain(5, history_blocks=2, specs=default_specs(40))
    chain_path, exec_path = c.write(tmp_path, chunk_limit=600)
    assert len(state_format.read_executor_manifest(exec_path).state_chunks) > 2
    before = _children()
    assert _items(exec_path, True) == _items(exec_path, False)
    seq = verify_snapshot(chain_path, exec_path, c.genesis)
    assert seq.accounts == 40
    assert _children() == before


def test_same_errors_as_sequential(tmp_path: Path, forced: None, monkeypatch: pytest.MonkeyPatch) -> None:
    c = build_chain(5, history_blocks=2, specs=default_specs(40))
    chain_path, exec_path = c.write(tmp_path, chunk_limit=600)
    data = exec_path.read_bytes()
    before = _children()
    seen = set()
    end = state_format.read_executor_manifest(exec_path).state_chunks[-1].offset + 40
    for pos in sorted({*range(0, end, max(1, end // 12)), 5, 600, 601, end - 41}):  # a worker start each: few
        mutated = bytearray(data)
        mutated[pos] ^= 0x01
        exec_path.write_bytes(bytes(mutated))
        errors = []
        for on in (True, False):
            monkeypatch.setattr(state_format, "PARALLEL_DECODE", on)
            with pytest.raises(SnapshotError) as e:
                verify_executor_file(exec_path, c.genesis, chain_path=chain_path)
            errors.append((type(e.value), str(e.value), e.value.file, e.value.chunk, e.value.check))
        assert errors[0] == errors[1]
        seen.add(errors[0][0])
    exec_path.write_bytes(data)
    assert ChunkHashMismatch in seen
    assert _children() == before


def test_worker_stopped_when_the_consumer_stops(tmp_path: Path, forced: None) -> None:
    c = build_chain(3, history_blocks=1, specs=default_specs(40))
    _chain_path, exec_path = c.write(tmp_path, chunk_limit=600)
    before = _children()
    with ExecutorFileReader(exec_path) as r:
        it = r.accounts()
        next(it)
        assert len(_children() - before) == 1
    assert _children() == before


def test_errors_pickle_with_their_fields() -> None:
    for exc in (ChunkDecodeError("x", file="f", chunk=3), StateRootMismatch("y", file="g", expected=b"\x01",
                                                                           actual=b"\x02")):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == str(exc)
        assert (back.file, back.chunk, back.check, back.expected, back.actual) == (
            exc.file, exc.chunk, exc.check, exc.expected, exc.actual)

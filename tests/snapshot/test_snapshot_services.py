"""The chain and executor services' side of the snapshot protocol, over a fake bus (no RabbitMQ).

Snapshot answers later (a worker thread) with height, hash, state root, file
and size; Begin/Restore/Clear/End swap a verified restore in; Abort cancels
and drops staged data; start-up recovery keeps a complete staged store while
the journal says "prepare", and a "commit" journal starts services in flight mode.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_snapshot_restore_domain import GENESIS
from test_snapshot_restore_domain import Node as DomainNode

from pycita.config import NodeConfig
from pycita.messages import pack, pb, unpack
from pycita.service import restore_committed
from pycita.snapshot.journal import RestoreJournal, read_complete_marker
from services.chain.service import ChainService
from services.consensus.service import ConsensusService
from services.executor.service import ExecutorService

pytestmark = pytest.mark.timeout(60)


class FakeBus:
    """Records publishes; ``call_later`` callbacks queue up for :meth:`run_later` (the 'loop thread')."""

    def __init__(self) -> None:
        self.published: list[tuple[str, pb.Message]] = []
        self.later: queue.Queue[Callable[[], object]] = queue.Queue()

    def publish(self, routing_key: str, body: bytes, **_kw: Any) -> None:
        self.published.append((routing_key, unpack(routing_key, body)))

    def call_every(self, *_a: Any, **_kw: Any) -> None:
        pass

    def call_later(self, _delay: float, fn: Callable[[], object]) -> None:
        self.later.put(fn)

    def run_later(self, timeout: float = 30.0) -> None:
        self.later.get(timeout=timeout)()

    def responses(self) -> list[pb.SnapshotResp]:
        return [env.snapshot_resp for key, env in self.published if key.endswith(".snapshot_resp")]

    def progress(self) -> list[pb.SnapshotProgress]:
        return [env.snapshot_progress for key, env in self.published if key.endswith(".snapshot_progress")]


def node_dir(path: Path) -> NodeConfig:
    path.mkdir(parents=True, exist_ok=True)
    GENESIS.save(path / "genesis.json")
    return NodeConfig(node_dir=path, amqp_url="amqp://unused")


def send(svc: Any, req: pb.SnapshotReq) -> None:
    svc.dispatch(*pack("snapshot", "snapshot_req", req))


def answer(svc: Any, bus: FakeBus, req: pb.SnapshotReq, *, later: bool = False) -> pb.SnapshotResp:
    before = len(bus.responses())
    send(svc, req)
    if later:
        assert len(bus.responses()) == before, "a long step must answer from its job, not at once"
        bus.run_later()
    resps = bus.responses()
    assert len(resps) == before + 1
    return resps[-1]


@pytest.fixture
def source(tmp_path: Path) -> Iterator[NodeConfig]:
    cfg = node_dir(tmp_path / "source")
    node = DomainNode.open(cfg.data_dir)
    for _ in range(12):
        node.produce()
    node.close()
    return cfg


@pytest.fixture
def snapshot(source: NodeConfig, tmp_path: Path) -> Iterator[tuple[Path, pb.SnapshotResp]]:
    """Snapshot at height 9 taken through both services; yields the directory and the chain's ack."""
    snaps = tmp_path / "snaps"
    acks = {}
    for cls in (ChainService, ExecutorService):
        bus = FakeBus()
        svc = cls(source, bus)
        try:
            req = pb.SnapshotReq(cmd=pb.Snapshot, end_height=9, file="s", directory=str(snaps), request_id="r1")
            acks[cls.name] = answer(svc, bus, req, later=True)
            # a redelivered request is answered again, nothing is exported twice
            again = answer(svc, bus, req)
            assert again == acks[cls.name]
        finally:
            svc.close()
    chain, executor = acks["chain"], acks["executor"]
    for ack in (chain, executor):
        assert ack.flag and ack.resp == pb.SnapshotAck and ack.height == 9, ack
        assert Path(ack.file).stat().st_size == ack.file_size > 0
    assert (chain.block_hash, chain.state_root) == (executor.block_hash, executor.state_root)
    yield snaps, chain


def test_a_snapshot_above_the_tip_is_refused_at_once(source: NodeConfig, tmp_path: Path) -> None:
    bus = FakeBus()
    svc = ChainService(source, bus)
    try:
        resp = answer(svc, bus, pb.SnapshotReq(cmd=pb.Snapshot, end_height=50, file="s",
                                               directory=str(tmp_path), request_id="r"))
        assert not resp.flag and "tip is 12" in resp.error
        assert not list(tmp_path.glob("s_*"))
    finally:
        svc.close()


def test_begin_restore_clear_end_make_the_verified_snapshot_live(
        snapshot: tuple[Path, pb.SnapshotResp], tmp_path: Path) -> None:
    snaps, ack = snapshot
    cfg = node_dir(tmp_path / "dest")
    buses = {"chain": FakeBus(), "executor": FakeBus()}
    chain = ChainService(cfg, buses["chain"])
    executor = ExecutorService(cfg, buses["executor"])
    services = {"chain": chain, "executor": executor}
    try:
        common = {"request_id": "r2", "file": "s", "directory": str(snaps)}
        for name, svc in services.items():
            assert answer(svc, buses[name], pb.SnapshotReq(cmd=pb.Begin, **common)).flag
            assert svc.flight_mode
        restored = {name: answer(svc, buses[name], pb.SnapshotReq(cmd=pb.Restore, **common), later=True)
                    for name, svc in services.items()}
        for name, resp in restored.items():
            assert resp.flag, resp.error
            assert (resp.height, resp.block_hash, resp.state_root) == (9, ack.block_hash, ack.state_root)
            assert read_complete_marker(cfg.data_dir / f"{name}.staged") is not None
            assert any(p.phase == "restore" for p in buses[name].progress())
        assert restored["chain"].proof.type == pb.Bft and restored["chain"].proof.content
        assert chain.chain.tip.height == 0 and executor.executor.tip.height == 0  # nothing live changed yet

        clear = pb.SnapshotReq(cmd=pb.Clear, end_height=9, block_hash=ack.block_hash, state_root=ack.state_root,
                               proof=restored["chain"].proof, **common)
        for name, svc in services.items():
            assert answer(svc, buses[name], clear).flag
            assert answer(svc, buses[name], clear).flag  # idempotent
        assert chain.chain.tip.height == 9 and chain.chain.tip.hash == ack.block_hash
        assert executor.executor.tip.height == 9 and executor.executor.tip.state_root == ack.state_root
        for name, svc in services.items():
            assert answer(svc, buses[name], pb.SnapshotReq(cmd=pb.End, **common)).flag
            assert not svc.flight_mode
            assert not (cfg.data_dir / f"{name}.backup").exists()
        assert "chain.new_block" in [k for k, _ in buses["chain"].published]
    finally:
        chain.close()
        executor.close()


def test_a_restore_with_a_wrong_trusted_hash_is_refused_and_abort_leaves_flight_mode(
        snapshot: tuple[Path, pb.SnapshotResp], tmp_path: Path) -> None:
    snaps, _ack = snapshot
    cfg = node_dir(tmp_path / "dest")
    bus = FakeBus()
    svc = ExecutorService(cfg, bus)
    try:
        common = {"request_id": "r3", "file": "s", "directory": str(snaps)}
        answer(svc, bus, pb.SnapshotReq(cmd=pb.Begin, **common))
        resp = answer(svc, bus, pb.SnapshotReq(cmd=pb.Restore, trusted_block_hash=b"\x01" * 32, **common),
                      later=True)
        assert not resp.flag and "trusted" in resp.error and "s_executor.rlp" in resp.error
        assert not (cfg.data_dir / "executor.staged").exists()
        assert answer(svc, bus, pb.SnapshotReq(cmd=pb.Abort, **common)).flag
        assert not svc.flight_mode and svc.executor.tip.height == 0
    finally:
        svc.close()


def test_abort_discards_a_complete_staged_store(snapshot: tuple[Path, pb.SnapshotResp], tmp_path: Path) -> None:
    snaps, _ack = snapshot
    cfg = node_dir(tmp_path / "dest")
    bus = FakeBus()
    svc = ChainService(cfg, bus)
    try:
        common = {"request_id": "r4", "file": "s", "directory": str(snaps)}
        assert answer(svc, bus, pb.SnapshotReq(cmd=pb.Restore, **common), later=True).flag
        assert (cfg.data_dir / "chain.staged").exists()
        assert answer(svc, bus, pb.SnapshotReq(cmd=pb.Abort, **common)).flag
        assert not (cfg.data_dir / "chain.staged").exists() and svc.chain.tip.height == 0
    finally:
        svc.close()


def test_a_restart_between_restore_ack_and_clear_keeps_the_staged_store_and_clear_still_works(
        snapshot: tuple[Path, pb.SnapshotResp], tmp_path: Path) -> None:
    snaps, ack = snapshot
    cfg = node_dir(tmp_path / "dest")
    journal = RestoreJournal(cfg.run_dir)
    journal.write_prepare("r5", ("s_chain.rlp", "s_executor.rlp"), str(snaps))
    common = {"request_id": "r5", "file": "s", "directory": str(snaps)}
    bus = FakeBus()
    svc = ChainService(cfg, bus)
    try:
        resp = answer(svc, bus, pb.SnapshotReq(cmd=pb.Restore, **common), later=True)
        assert resp.flag
    finally:
        svc.close()
    journal.write_commit("r5", height=9, block_hash=ack.block_hash, state_root=ack.state_root,
                         proof=resp.proof.content, proof_type=resp.proof.type)
    assert restore_committed(cfg)
    bus = FakeBus()
    svc = ChainService(cfg, bus)  # start-up recovery rolls the committed restore forward
    try:
        assert svc.flight_mode and svc.chain.tip.height == 9
        clear = pb.SnapshotReq(cmd=pb.Clear, end_height=9, block_hash=ack.block_hash, **common)
        assert answer(svc, bus, clear).flag
        assert answer(svc, bus, pb.SnapshotReq(cmd=pb.End, **common)).flag and not svc.flight_mode
    finally:
        svc.close()


def test_services_start_in_flight_mode_while_the_journal_says_commit(tmp_path: Path) -> None:
    cfg = node_dir(tmp_path / "node")
    (cfg.node_dir / "privkey").write_text("11" * 32 + "\n")
    RestoreJournal(cfg.run_dir).write_commit("r6", height=3, block_hash=b"\x01" * 32, state_root=b"\x02" * 32)
    svc = ConsensusService(cfg, FakeBus())
    assert svc.flight_mode and svc.engine.flight_mode
    RestoreJournal(cfg.run_dir).remove()
    assert not ConsensusService(cfg, FakeBus()).flight_mode


def test_a_cancelled_export_removes_its_partial_file_and_answers_false(source: NodeConfig, tmp_path: Path) -> None:
    bus = FakeBus()
    svc = ExecutorService(source, bus)
    try:
        req = pb.SnapshotReq(cmd=pb.Snapshot, end_height=12, file="c", directory=str(tmp_path), request_id="r7")
        send(svc, req)
        send(svc, pb.SnapshotReq(cmd=pb.Abort, request_id="r7"))
        bus.run_later()
        deadline = time.monotonic() + 5
        while svc._export is not None and svc._export.running and time.monotonic() < deadline:
            time.sleep(0.01)
        resps = {r.resp: r for r in bus.responses()}
        assert resps[pb.AbortAck].flag
        exported = resps[pb.SnapshotAck]
        # the export may have finished before the Abort landed; if not, it failed and left nothing
        if not exported.flag:
            assert "cancelled" in exported.error
            assert not list(tmp_path.glob("c_*"))
    finally:
        svc.close()


def test_the_executor_waits_for_a_block_it_has_not_committed_yet_then_refuses_clearly(
        source: NodeConfig, tmp_path: Path) -> None:
    bus = FakeBus()
    svc = ExecutorService(source, bus)
    try:
        req = pb.SnapshotReq(cmd=pb.Snapshot, end_height=13, file="w", directory=str(tmp_path), request_id="r8",
                             timeout_ms=1000)
        resp = answer(svc, bus, req, later=True)
        assert not resp.flag and "committed up to 12" in resp.error
        assert not list(tmp_path.glob("w_*"))
    finally:
        svc.close()

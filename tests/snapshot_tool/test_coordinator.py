"""The snapshot/restore coordinator against simulated services (no RabbitMQ, simulated time)."""

from __future__ import annotations

import heapq
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pycita.messages import pb
from pycita.snapshot.journal import Phase, RestoreJournal
from tools.snapshot_tool.coordinator import Coordinator, Incoming
from tools.snapshot_tool.errors import (
    AcksDisagree,
    PhaseTimeout,
    RollForwardIncomplete,
    ServiceRefused,
    SnapshotToolError,
    UsageError,
)

SERVICES = ("auth", "consensus", "chain", "executor", "jsonrpc")
HEIGHT = 100
HASH = b"\x11" * 32
ROOT = b"\x22" * 32
PROOF = b"quorum-cert-of-100"
TIMEOUT = 10.0

Reply = list[tuple[float, Incoming]]
"""Messages a simulated service sends in answer, each after a delay (simulated seconds)."""
Behaviour = Callable[[str, pb.SnapshotReq], Reply]


def ack(service: str, req: pb.SnapshotReq, flag: bool = True, error: str = "", **fields: Any) -> pb.SnapshotResp:
    resp = {pb.Begin: pb.BeginAck, pb.Restore: pb.RestoreAck, pb.Clear: pb.ClearAck, pb.End: pb.EndAck,
            pb.Snapshot: pb.SnapshotAck, pb.Abort: pb.AbortAck}[req.cmd]
    return pb.SnapshotResp(resp=resp, request_id=req.request_id, service=service, flag=flag, error=error,
                           **fields)  # type: ignore[arg-type]


class FakeNode:
    """Services that answer each request at once (or as a behaviour says), under a simulated clock."""

    def __init__(self, snapshot_dir: Path, tip: int = 120) -> None:
        self.snapshot_dir = snapshot_dir
        self.tip = tip
        self.now = 0.0
        self.sent: list[pb.SnapshotReq] = []
        self.behaviours: dict[tuple[str, int], Behaviour] = {}
        self.on_send: Callable[[pb.SnapshotReq], None] | None = None
        self._queue: list[tuple[float, int, Incoming]] = []
        self._seq = itertools.count()

    # the Transport protocol
    def send_request(self, req: pb.SnapshotReq) -> None:
        copy = pb.SnapshotReq()
        copy.CopyFrom(req)
        self.sent.append(copy)
        if self.on_send is not None:
            self.on_send(copy)
        for service in SERVICES:
            behaviour = self.behaviours.get((service, req.cmd), self.default)
            for delay, msg in behaviour_call(behaviour, service, copy):
                heapq.heappush(self._queue, (self.now + delay, next(self._seq), msg))

    def send_ping(self, nonce: str) -> None:
        status = json.dumps({"height": self.tip, "flight_mode": False})
        heapq.heappush(self._queue, (self.now + 0.01, next(self._seq),
                                     pb.Pong(nonce=nonce, service="chain", status_json=status)))

    def poll(self, timeout: float) -> Incoming | None:
        if self._queue and self._queue[0][0] <= self.now + timeout:
            due, _, msg = heapq.heappop(self._queue)
            self.now = max(self.now, due)
            return msg
        self.now += timeout
        return None

    def clock(self) -> float:
        return self.now

    # what well-behaved services answer
    def default(self, service: str, req: pb.SnapshotReq) -> Reply:
        fields: dict[str, Any] = {}
        if service in ("chain", "executor") and req.cmd == pb.Restore:
            fields = {"height": HEIGHT, "block_hash": HASH, "state_root": ROOT}
            if service == "chain":
                fields["proof"] = pb.Proof(content=PROOF, type=pb.Bft)
        if service in ("chain", "executor") and req.cmd == pb.Snapshot:
            path = Path(req.directory) / f"{req.file}_{service}.rlp"
            path.write_bytes(b"x" * 1000)
            fields = {"height": req.end_height, "block_hash": HASH, "state_root": ROOT, "file": str(path),
                      "file_size": 1000}
        return [(0.1, ack(service, req, **fields))]

    def cmds(self) -> list[str]:
        return [pb.Cmd.Name(r.cmd) for r in self.sent]


def behaviour_call(behaviour: Callable[..., Reply], service: str, req: pb.SnapshotReq) -> Reply:
    return behaviour(service, req)


def silent(service: str, req: pb.SnapshotReq) -> Reply:
    return []


def refusing(error: str) -> Callable[[str, pb.SnapshotReq], Reply]:
    def behaviour(service: str, req: pb.SnapshotReq) -> Reply:
        return [(0.1, ack(service, req, flag=False, error=error))]
    return behaviour


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    snapdir = tmp_path / "snapshots"
    snapdir.mkdir()
    for suffix in ("_chain.rlp", "_executor.rlp"):
        (snapdir / f"snapshot{suffix}").write_bytes(b"file")
    return FakeNode(snapdir)


@pytest.fixture
def journal(tmp_path: Path) -> RestoreJournal:
    return RestoreJournal(tmp_path / "run")


@pytest.fixture
def notices() -> list[str]:
    return []


@pytest.fixture
def coord(node: FakeNode, journal: RestoreJournal, notices: list[str]) -> Coordinator:
    ids = (f"req-{i}" for i in itertools.count(1))
    return Coordinator(node, SERVICES, phase_timeout=TIMEOUT, snapshot_dir=node.snapshot_dir, journal=journal,
                       clock=node.clock, new_request_id=lambda: next(ids), notify=notices.append)


# ------------------------------------------------------------------ restore


def test_a_restore_succeeds_when_every_service_acks_every_phase(
        coord: Coordinator, node: FakeNode, journal: RestoreJournal) -> None:
    result = coord.restore("snapshot")
    assert node.cmds() == ["Begin", "Restore", "Clear", "End"]
    assert (result.height, result.block_hash, result.state_root) == (HEIGHT, HASH, ROOT)
    assert {r.request_id for r in node.sent} == {"req-1"}
    restore_req = node.sent[1]
    assert restore_req.file == "snapshot" and restore_req.directory == str(node.snapshot_dir)
    assert journal.read() is None


def test_clear_carries_the_chains_height_hash_state_root_and_proof(coord: Coordinator, node: FakeNode) -> None:
    coord.restore("snapshot")
    clear = node.sent[2]
    assert (clear.end_height, clear.block_hash, clear.state_root) == (HEIGHT, HASH, ROOT)
    assert clear.proof.content == PROOF and clear.proof.type == pb.Bft


def test_the_commit_journal_is_on_disk_before_clear_is_sent(
        coord: Coordinator, node: FakeNode, journal: RestoreJournal) -> None:
    phases: dict[str, str | None] = {}

    def record(req: pb.SnapshotReq) -> None:
        entry = journal.read()
        phases[pb.Cmd.Name(req.cmd)] = entry.phase.value if entry else None

    node.on_send = record
    coord.restore("snapshot")
    assert phases == {"Begin": "prepare", "Restore": "prepare", "Clear": "commit", "End": "commit"}


def test_a_service_refusing_restore_aborts_every_service_and_is_named(
        coord: Coordinator, node: FakeNode, journal: RestoreJournal) -> None:
    node.behaviours[("executor", pb.Restore)] = refusing("snapshot_executor.rlp: chunk 3: state root check failed")
    with pytest.raises(ServiceRefused) as info:
        coord.restore("snapshot")
    assert info.value.services == ("executor",)
    assert "executor" in str(info.value) and "chunk 3: state root check failed" in str(info.value)
    assert node.cmds() == ["Begin", "Restore", "Abort"]
    assert journal.read() is None


def test_a_silent_service_fails_the_phase_within_the_timeout_and_is_named(
        coord: Coordinator, node: FakeNode, journal: RestoreJournal) -> None:
    node.behaviours[("consensus", pb.Begin)] = silent
    with pytest.raises(PhaseTimeout, match="consensus") as info:
        coord.restore("snapshot")
    assert info.value.services == ("consensus",) and info.value.phase == "Begin"
    assert node.cmds() == ["Begin", "Abort"]
    assert node.now <= TIMEOUT + 0.5  # Begin timed out at 10 s, the Abort round answered at once
    assert journal.read() is None


def test_a_frozen_service_silent_for_the_abort_too_fails_the_restore_within_one_timeout(
        coord: Coordinator, node: FakeNode, journal: RestoreJournal, notices: list[str]) -> None:
    node.behaviours[("consensus", pb.Begin)] = silent
    node.behaviours[("consensus", pb.Abort)] = silent  # SIGSTOPped: it answers nothing at all
    with pytest.raises(PhaseTimeout, match="consensus"):
        coord.restore("snapshot")
    assert node.cmds() == ["Begin", "Abort"]  # the Abort is still sent to everyone ...
    assert node.now <= TIMEOUT + 0.5  # ... but not waited for from the service already known silent
    assert any("consensus" in n and "AbortAck" in n for n in notices)
    assert journal.read() is None


def test_progress_from_the_request_extends_the_phase_timeout(coord: Coordinator, node: FakeNode) -> None:
    def slow_restore(service: str, req: pb.SnapshotReq) -> Reply:
        ticks: Reply = [(t, pb.SnapshotProgress(request_id=req.request_id, service=service, phase="state",
                                                chunks_done=int(t), chunks_total=40))
                        for t in range(6, 36, 6)]
        final = node.default(service, req)[0][1]
        return ticks + [(35.0, final)]

    node.behaviours[("executor", pb.Restore)] = slow_restore
    result = coord.restore("snapshot")
    assert result.height == HEIGHT and node.now >= 35.0


def test_progress_of_another_request_does_not_extend_the_timeout(coord: Coordinator, node: FakeNode) -> None:
    def stale_progress(service: str, req: pb.SnapshotReq) -> Reply:
        return [(t, pb.SnapshotProgress(request_id="someone-else", service=service, phase="state"))
                for t in range(5, 40, 5)]

    node.behaviours[("executor", pb.Restore)] = stale_progress
    with pytest.raises(PhaseTimeout, match="executor"):
        coord.restore("snapshot")


def test_disagreeing_chain_and_executor_acks_abort_the_restore(
        coord: Coordinator, node: FakeNode, journal: RestoreJournal) -> None:
    def other_root(service: str, req: pb.SnapshotReq) -> Reply:
        return [(0.1, ack(service, req, height=HEIGHT, block_hash=HASH, state_root=b"\x33" * 32))]

    node.behaviours[("executor", pb.Restore)] = other_root
    with pytest.raises(AcksDisagree, match="state root"):
        coord.restore("snapshot")
    assert node.cmds() == ["Begin", "Restore", "Abort"]
    assert journal.read() is None


def test_acks_at_different_heights_abort_the_restore(coord: Coordinator, node: FakeNode) -> None:
    def other_height(service: str, req: pb.SnapshotReq) -> Reply:
        return [(0.1, ack(service, req, height=HEIGHT - 1, block_hash=HASH, state_root=ROOT))]

    node.behaviours[("executor", pb.Restore)] = other_height
    with pytest.raises(AcksDisagree, match="height: chain 100, executor 99"):
        coord.restore("snapshot")


def test_a_trusted_block_hash_that_differs_aborts_the_restore(coord: Coordinator, node: FakeNode) -> None:
    with pytest.raises(AcksDisagree, match="trusted hash"):
        coord.restore("snapshot", trusted_block_hash=b"\x99" * 32)
    assert node.sent[1].trusted_block_hash == b"\x99" * 32
    assert node.cmds() == ["Begin", "Restore", "Abort"]


def test_a_trusted_block_hash_that_matches_is_accepted(coord: Coordinator, node: FakeNode) -> None:
    assert coord.restore("snapshot", trusted_block_hash=HASH).height == HEIGHT


def test_restore_refuses_missing_files_before_sending_anything(coord: Coordinator, node: FakeNode) -> None:
    (node.snapshot_dir / "snapshot_executor.rlp").unlink()
    with pytest.raises(SnapshotToolError, match="snapshot_executor.rlp does not exist"):
        coord.restore("snapshot")
    assert node.sent == []


def test_a_failure_after_the_commit_point_rolls_forward_by_resending(
        coord: Coordinator, node: FakeNode, journal: RestoreJournal, notices: list[str]) -> None:
    answered: list[int] = []

    def answers_second_time(service: str, req: pb.SnapshotReq) -> Reply:
        answered.append(1)
        return [] if len(answered) == 1 else node.default(service, req)

    node.behaviours[("auth", pb.Clear)] = answers_second_time
    result = coord.restore("snapshot")
    assert result.height == HEIGHT
    assert node.cmds() == ["Begin", "Restore", "Clear", "Clear", "End"]
    assert any("re-sending Clear" in n and "auth" in n for n in notices)
    assert journal.read() is None


def test_a_service_silent_after_the_commit_point_leaves_the_journal_committed(
        coord: Coordinator, node: FakeNode, journal: RestoreJournal) -> None:
    node.behaviours[("chain", pb.End)] = silent
    with pytest.raises(RollForwardIncomplete, match="chain") as info:
        coord.restore("snapshot")
    assert "restart the node" in str(info.value)
    assert "Abort" not in node.cmds()
    entry = journal.read()
    assert entry is not None and entry.phase is Phase.COMMIT and entry.height == HEIGHT


def test_acks_of_other_requests_and_phases_are_ignored(coord: Coordinator, node: FakeNode) -> None:
    def confusing(service: str, req: pb.SnapshotReq) -> Reply:
        stale = pb.SnapshotResp(resp=pb.BeginAck, request_id="old", service=service, flag=False, error="old")
        wrong_phase = pb.SnapshotResp(resp=pb.EndAck, request_id=req.request_id, service=service, flag=False)
        return [(0.1, stale), (0.2, wrong_phase), (0.3, ack(service, req))]

    node.behaviours[("auth", pb.Begin)] = confusing
    assert coord.restore("snapshot").height == HEIGHT


# --------------------------------------------------------- leftover journals


def test_a_leftover_commit_journal_is_completed_with_clear_and_end(
        coord: Coordinator, node: FakeNode, journal: RestoreJournal, notices: list[str]) -> None:
    journal.write_commit("crashed-run", height=HEIGHT, block_hash=HASH, state_root=ROOT, proof=PROOF,
                         proof_type=pb.Bft, files=("snapshot_chain.rlp", "snapshot_executor.rlp"),
                         directory=str(node.snapshot_dir))
    leftover = coord.recover_leftover()
    assert leftover is not None
    entry, result = leftover
    assert result is not None and result.completed_leftover and result.height == HEIGHT
    assert node.cmds() == ["Clear", "End"]
    assert {r.request_id for r in node.sent} == {"crashed-run"}
    assert node.sent[0].proof.content == PROOF and node.sent[0].file == "snapshot"
    assert journal.read() is None
    assert any("completing it" in n for n in notices)


def test_a_leftover_prepare_journal_is_aborted_and_removed(
        coord: Coordinator, node: FakeNode, journal: RestoreJournal, notices: list[str]) -> None:
    journal.write_prepare("crashed-run")
    leftover = coord.recover_leftover()
    assert leftover is not None and leftover[1] is None
    assert node.cmds() == ["Abort"] and node.sent[0].request_id == "crashed-run"
    assert journal.read() is None
    assert any("aborting it" in n for n in notices)


def test_no_leftover_journal_sends_nothing(coord: Coordinator, node: FakeNode) -> None:
    assert coord.recover_leftover() is None
    assert node.sent == []


# ----------------------------------------------------------------- snapshot


def test_a_snapshot_at_a_given_height_writes_both_files(coord: Coordinator, node: FakeNode) -> None:
    result = coord.snapshot("snap", 100)
    assert node.cmds() == ["Snapshot"]
    req = node.sent[0]
    assert req.end_height == 100 and req.file == "snap" and req.directory == str(node.snapshot_dir)
    assert (result.height, result.block_hash, result.state_root) == (100, HASH, ROOT)
    assert [(f.service, f.path.name, f.size) for f in result.files] == [
        ("chain", "snap_chain.rlp", 1000), ("executor", "snap_executor.rlp", 1000)]


def test_a_snapshot_defaults_to_the_current_height(coord: Coordinator, node: FakeNode) -> None:
    assert coord.snapshot("snap").height == node.tip


def test_a_snapshot_above_the_tip_is_refused_before_anything_is_sent(coord: Coordinator, node: FakeNode) -> None:
    with pytest.raises(SnapshotToolError, match="above the chain's tip 120"):
        coord.snapshot("snap", 121)
    assert node.sent == [] and not list(node.snapshot_dir.glob("snap_*"))


def test_a_snapshot_of_an_empty_chain_is_refused(coord: Coordinator, node: FakeNode) -> None:
    node.tip = 0
    with pytest.raises(UsageError, match="genesis"):
        coord.snapshot("snap")


def test_a_failed_snapshot_removes_the_files_it_wrote(coord: Coordinator, node: FakeNode) -> None:
    node.behaviours[("executor", pb.Snapshot)] = refusing("disk full")
    (node.snapshot_dir / "snap_executor.rlp.partial").write_bytes(b"half")
    with pytest.raises(ServiceRefused, match="executor: disk full"):
        coord.snapshot("snap", 100)
    assert node.cmds() == ["Snapshot", "Abort"]
    assert not list(node.snapshot_dir.glob("snap_*"))


def test_a_failed_snapshot_keeps_an_older_file_of_the_same_name(coord: Coordinator, node: FakeNode) -> None:
    node.behaviours[("chain", pb.Snapshot)] = refusing("block 7 missing")
    node.behaviours[("executor", pb.Snapshot)] = silent
    with pytest.raises(ServiceRefused):
        coord.snapshot("snapshot", 100)
    assert (node.snapshot_dir / "snapshot_chain.rlp").read_bytes() == b"file"
    assert (node.snapshot_dir / "snapshot_executor.rlp").read_bytes() == b"file"


def test_snapshot_acks_at_another_height_fail_the_snapshot(coord: Coordinator, node: FakeNode) -> None:
    def wrong_height(service: str, req: pb.SnapshotReq) -> Reply:
        msg = node.default(service, req)[0][1]
        assert isinstance(msg, pb.SnapshotResp)
        msg.height = 99
        return [(0.1, msg)]

    node.behaviours[("executor", pb.Snapshot)] = wrong_height
    with pytest.raises(AcksDisagree, match="executor exported height 99"):
        coord.snapshot("snap", 100)
    assert not list(node.snapshot_dir.glob("snap_*"))


def test_a_node_that_does_not_answer_ping_fails_naming_the_chain(coord: Coordinator, node: FakeNode) -> None:
    node.send_ping = lambda nonce: None  # type: ignore[method-assign]
    with pytest.raises(PhaseTimeout, match="chain.*is the node running"):
        coord.snapshot("snap")

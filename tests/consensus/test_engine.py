"""The consensus engine proposes, votes and commits blocks, fed with events and no bus."""

from __future__ import annotations

from pathlib import Path

import pytest
import rlp

from pycita.client import transfer
from pycita.crypto import PrivateKey, keccak
from pycita.messages import pb
from pycita.proof import QuorumCert, sign_vote, verify_proof
from pycita.types import BLANK_ROOT, EMPTY_BLOOM, ZERO_HASH, Block, Receipt, ordered_root
from services.consensus.engine import ConsensusError, Engine, EngineConfig, Outgoing, Phase, VoteCollector

CHAIN_ID = 7
INTERVAL = 1.0
KEY = PrivateKey(b"\x01" * 32)
GENESIS_HASH = b"\x42" * 32
GENESIS_TS = 1_700_000_000_000


def make_engine(validators: tuple[bytes, ...] | None = None, key: PrivateKey = KEY) -> Engine:
    cfg = EngineConfig(chain_id=CHAIN_ID, validators=validators or (KEY.address,), quota_limit=10**9,
                       block_interval=INTERVAL, max_block_txs=100)
    return Engine(cfg, key)


def status(height: int, block_hash: bytes, timestamp_ms: int, proof: bytes = b"") -> pb.RichStatus:
    msg = pb.RichStatus(height=height, hash=block_hash, timestamp=timestamp_ms, genesis_hash=GENESIS_HASH)
    if proof:
        msg.proof.ParseFromString(proof)
    return msg


def only(out: list[Outgoing], msg_type: str) -> Outgoing:
    assert [o.msg_type for o in out] == [msg_type]
    return out[0]


def result_for(proposal: Outgoing, n_receipts: int | None = None, error: str = "") -> pb.ExecutedResult:
    block = rlp.decode(proposal.content.block, Block)
    receipts = [rlp.encode(Receipt(tx.hash, KEY.address, 1, 21000, 21000 * (i + 1), b"", b""))
                for i, tx in enumerate(block.transactions)]
    if n_receipts is not None:
        receipts = receipts[:n_receipts]
    return pb.ExecutedResult(height=block.header.number, proposal_hash=keccak(proposal.content.block),
                             state_root=b"\x11" * 32, receipts_root=ordered_root(receipts),
                             quota_used=21000 * len(receipts), log_bloom=EMPTY_BLOOM, receipts=receipts, error=error)


def signed_txs(n: int) -> list[bytes]:
    return [rlp.encode(transfer(KEY, b"\x22" * 20, 1, i, 50, CHAIN_ID)) for i in range(n)]


def run_to_decision(engine: Engine, now: float, n_txs: int = 0) -> tuple[Outgoing, Outgoing]:
    req = only(engine.tick(now), "block_txs_req")
    proposal = only(engine.on_block_txs(pb.BlockTxs(height=req.content.height, raw_txs=signed_txs(n_txs)), now,
                                        wall_ms=GENESIS_TS + 5000), "block_proposal")
    commit = only(engine.on_executed_result(result_for(proposal), now), "block_with_proof")
    return proposal, commit


def test_nothing_is_proposed_before_the_chain_reports_its_tip() -> None:
    engine = make_engine()
    assert engine.tick(1000.0) == []


def test_the_first_proposal_waits_one_interval_after_a_fresh_tip() -> None:
    engine = make_engine()
    now = GENESIS_TS / 1000
    engine.on_rich_status(status(0, GENESIS_HASH, GENESIS_TS), now)
    assert engine.tick(now + 0.5) == []
    req = only(engine.tick(now + INTERVAL), "block_txs_req")
    assert (req.content.height, req.content.max_count, req.content.quota_limit) == (1, 100, 10**9)


def test_a_restarted_node_proposes_at_once_on_an_old_tip() -> None:
    engine = make_engine()
    engine.on_rich_status(status(0, GENESIS_HASH, GENESIS_TS), 2_000_000_000.0)
    assert only(engine.tick(2_000_000_000.0), "block_txs_req").content.height == 1


def test_the_proposal_follows_the_architecture_header_rules() -> None:
    engine = make_engine()
    engine.on_rich_status(status(0, GENESIS_HASH, GENESIS_TS), 0.0)
    engine.tick(100.0)
    raw = signed_txs(3)
    proposal = only(engine.on_block_txs(pb.BlockTxs(height=1, raw_txs=raw), 100.0, wall_ms=GENESIS_TS - 10),
                    "block_proposal")
    block = rlp.decode(proposal.content.block, Block)
    h = block.header
    assert h.parent_hash == GENESIS_HASH and h.number == 1 and h.proof == b""
    assert h.timestamp == GENESIS_TS + 1  # never earlier than the parent
    assert h.proposer == KEY.address and h.quota_limit == 10**9 and h.version == 0
    assert h.state_root == ZERO_HASH and h.receipts_root == ZERO_HASH and h.quota_used == 0
    assert h.transactions_root == ordered_root([keccak(r) for r in raw])
    assert engine.phase is Phase.WAIT_EXEC


def test_an_empty_block_is_proposed_when_the_pool_is_empty() -> None:
    engine = make_engine()
    engine.on_rich_status(status(0, GENESIS_HASH, GENESIS_TS), 0.0)
    proposal, commit = run_to_decision(engine, 100.0, n_txs=0)
    block = rlp.decode(commit.content.block, Block)
    assert block.transactions == () or list(block.transactions) == []
    assert block.header.transactions_root == BLANK_ROOT


def test_an_executed_result_yields_a_block_with_a_valid_quorum_proof() -> None:
    engine = make_engine()
    engine.on_rich_status(status(0, GENESIS_HASH, GENESIS_TS), 0.0)
    proposal, commit = run_to_decision(engine, 100.0, n_txs=2)
    assert commit.confirm is True
    block = rlp.decode(commit.content.block, Block)
    assert block.header.state_root == b"\x11" * 32 and block.header.quota_used == 42000
    assert len(commit.content.receipts) == 2
    qc = verify_proof(commit.content.proof.SerializeToString(), chain_id=CHAIN_ID, height=1,
                      block_hash=block.hash, validators=[KEY.address])
    assert qc.round == 0
    assert engine.phase is Phase.WAIT_COMMIT


def test_the_next_block_carries_the_proof_from_rich_status() -> None:
    engine = make_engine()
    engine.on_rich_status(status(0, GENESIS_HASH, GENESIS_TS), 0.0)
    _, commit = run_to_decision(engine, 100.0)
    block = rlp.decode(commit.content.block, Block)
    proof = commit.content.proof.SerializeToString()
    engine.on_rich_status(status(1, block.hash, block.header.timestamp, proof), 101.0)
    assert engine.phase is Phase.IDLE and engine.blocks_decided == 1
    assert engine.tick(101.5) == []
    req = only(engine.tick(101.0 + INTERVAL), "block_txs_req")
    assert req.content.height == 2
    proposal = only(engine.on_block_txs(pb.BlockTxs(height=2), 102.0, wall_ms=GENESIS_TS), "block_proposal")
    header = rlp.decode(proposal.content.block, Block).header
    assert header.parent_hash == block.hash and header.proof == proof


def test_results_for_another_proposal_are_ignored() -> None:
    engine = make_engine()
    engine.on_rich_status(status(0, GENESIS_HASH, GENESIS_TS), 0.0)
    engine.tick(100.0)
    proposal = engine.on_block_txs(pb.BlockTxs(height=1), 100.0)[0]
    res = result_for(proposal)
    res.proposal_hash = b"\x00" * 32
    assert engine.on_executed_result(res, 100.1) == []
    assert engine.phase is Phase.WAIT_EXEC


def test_block_txs_for_another_height_are_ignored() -> None:
    engine = make_engine()
    engine.on_rich_status(status(0, GENESIS_HASH, GENESIS_TS), 0.0)
    engine.tick(100.0)
    assert engine.on_block_txs(pb.BlockTxs(height=5), 100.0) == []


def test_an_executor_error_is_retried_next_interval_in_a_new_round() -> None:
    engine = make_engine()
    engine.on_rich_status(status(0, GENESIS_HASH, GENESIS_TS), 0.0)
    engine.tick(100.0)
    proposal = engine.on_block_txs(pb.BlockTxs(height=1), 100.0)[0]
    assert engine.on_executed_result(result_for(proposal, error="executor at 0, parent 3"), 100.2) == []
    assert engine.phase is Phase.IDLE and engine.round == 1
    assert engine.tick(100.5) == []
    assert only(engine.tick(100.2 + INTERVAL), "block_txs_req").content.height == 1


def test_a_result_with_the_wrong_receipt_count_is_refused() -> None:
    engine = make_engine()
    engine.on_rich_status(status(0, GENESIS_HASH, GENESIS_TS), 0.0)
    engine.tick(100.0)
    proposal = engine.on_block_txs(pb.BlockTxs(height=1, raw_txs=signed_txs(2)), 100.0)[0]
    assert engine.on_executed_result(result_for(proposal, n_receipts=1), 100.1) == []
    assert engine.phase is Phase.IDLE


def test_a_stuck_proposal_is_abandoned_and_retried() -> None:
    engine = make_engine()
    engine.on_rich_status(status(0, GENESIS_HASH, GENESIS_TS), 0.0)
    engine.tick(100.0)
    engine.on_block_txs(pb.BlockTxs(height=1), 100.0)
    assert engine.tick(104.0) == []  # timeout is max(3 * interval, 5 s)
    assert engine.tick(105.1) == [] and engine.phase is Phase.IDLE and engine.round == 1
    assert only(engine.tick(105.2), "block_txs_req").content.height == 1


def test_a_decided_block_that_is_not_committed_is_published_again() -> None:
    engine = make_engine()
    engine.on_rich_status(status(0, GENESIS_HASH, GENESIS_TS), 0.0)
    _, commit = run_to_decision(engine, 100.0)
    assert engine.tick(106.0) == [commit]
    assert engine.phase is Phase.WAIT_COMMIT


def test_heartbeats_of_the_same_tip_do_not_disturb_a_proposal() -> None:
    engine = make_engine()
    engine.on_rich_status(status(0, GENESIS_HASH, GENESIS_TS), 0.0)
    engine.tick(100.0)
    engine.on_rich_status(status(0, GENESIS_HASH, GENESIS_TS), 100.5)
    assert engine.phase is Phase.WAIT_TXS


def test_flight_mode_stops_proposals_and_drops_the_one_in_flight() -> None:
    engine = make_engine()
    engine.on_rich_status(status(0, GENESIS_HASH, GENESIS_TS), 0.0)
    engine.tick(100.0)
    engine.set_flight_mode(True)
    assert engine.phase is Phase.IDLE
    assert engine.tick(200.0) == []
    assert engine.on_block_txs(pb.BlockTxs(height=1), 200.0) == []
    engine.set_flight_mode(False)
    assert only(engine.tick(200.0), "block_txs_req").content.height == 1


def test_reset_to_restarts_from_a_restored_tip_and_its_proof() -> None:
    engine = make_engine()
    engine.on_rich_status(status(0, GENESIS_HASH, GENESIS_TS), 0.0)
    engine.tick(100.0)
    restored_hash = b"\x77" * 32
    proof = QuorumCert(40, 0, restored_hash,
                       ((KEY.address, sign_vote(KEY, CHAIN_ID, 40, 0, restored_hash)),)).to_proof_bytes()
    engine.reset_to(40, restored_hash, proof, timestamp_ms=GENESIS_TS + 40_000, now=200.0)
    assert engine.phase is Phase.IDLE
    assert only(engine.tick(200.0 + INTERVAL), "block_txs_req").content.height == 41
    proposal = only(engine.on_block_txs(pb.BlockTxs(height=41), 201.0), "block_proposal")
    header = rlp.decode(proposal.content.block, Block).header
    assert header.parent_hash == restored_hash and header.proof == proof and header.number == 41


def test_a_node_that_is_not_the_proposer_of_a_height_waits() -> None:
    other = PrivateKey(b"\x02" * 32)
    engine = make_engine(validators=(KEY.address, other.address))
    engine.on_rich_status(status(0, GENESIS_HASH, GENESIS_TS), 0.0)
    assert engine.tick(100.0) == []  # height 1 belongs to validators[1 % 2]


def test_with_four_validators_the_block_waits_for_a_quorum_of_votes() -> None:
    keys = [KEY] + [PrivateKey(bytes([i]) * 32) for i in (2, 3, 4)]
    validators = tuple(k.address for k in keys)
    engine = make_engine(validators=validators)
    engine.on_rich_status(status(3, b"\x33" * 32, GENESIS_TS, QuorumCert(3, 0, b"\x33" * 32, ()).to_proof_bytes()),
                          0.0)  # height 4: 4 % 4 == 0 -> KEY proposes
    engine.tick(100.0)
    proposal = engine.on_block_txs(pb.BlockTxs(height=4), 100.0)[0]
    assert engine.on_executed_result(result_for(proposal), 100.1) == []
    assert engine.phase is Phase.WAIT_VOTES
    block_hash = engine.attempt.votes.block_hash  # type: ignore[union-attr]
    assert engine.on_vote(4, 0, block_hash, keys[1].address, sign_vote(keys[1], CHAIN_ID, 4, 0, block_hash),
                          100.2) == []
    out = engine.on_vote(4, 0, block_hash, keys[2].address, sign_vote(keys[2], CHAIN_ID, 4, 0, block_hash), 100.3)
    commit = only(out, "block_with_proof")
    verify_proof(commit.content.proof.SerializeToString(), chain_id=CHAIN_ID, height=4, block_hash=block_hash,
                 validators=validators)


def test_the_vote_collector_refuses_votes_by_strangers_and_forgeries() -> None:
    stranger = PrivateKey(b"\x09" * 32)
    other = PrivateKey(b"\x02" * 32)
    votes = VoteCollector(CHAIN_ID, [KEY.address, other.address], 5, 0, b"\x55" * 32)
    with pytest.raises(ConsensusError, match="not a validator"):
        votes.add(stranger.address, sign_vote(stranger, CHAIN_ID, 5, 0, b"\x55" * 32))
    with pytest.raises(ConsensusError, match="signed by"):
        votes.add(other.address, sign_vote(KEY, CHAIN_ID, 5, 0, b"\x55" * 32))
    assert votes.add(KEY.address, sign_vote(KEY, CHAIN_ID, 5, 0, b"\x55" * 32))
    assert not votes.add(KEY.address, sign_vote(KEY, CHAIN_ID, 5, 0, b"\x55" * 32))
    assert not votes.has_quorum()  # 2 validators need both
    with pytest.raises(ConsensusError):
        votes.certificate()


# --------------------------------------------------------------- the service over a fake bus

class RecordingBus:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bool]] = []

    def publish(self, routing_key: str, body: bytes, confirm: bool = False) -> None:
        self.sent.append((routing_key, body, confirm))

    def call_every(self, interval: float, fn: object) -> None:
        pass


def test_the_service_turns_bus_messages_into_a_committed_block(tmp_path: Path) -> None:
    from pycita.config import NodeConfig
    from pycita.genesis import Genesis
    from pycita.messages import pack, unpack
    from services.consensus.service import ConsensusService

    Genesis(CHAIN_ID, GENESIS_TS, 10**9, (KEY.address,), ()).save(tmp_path / "genesis.json")
    (tmp_path / "privkey").write_text(KEY.hex())
    bus = RecordingBus()
    svc = ConsensusService(NodeConfig(node_dir=tmp_path, amqp_url="amqp://unused", block_interval=0.01), bus)
    svc.start()
    svc.dispatch(*pack("chain", "rich_status", status(0, GENESIS_HASH, GENESIS_TS)))
    svc._tick()
    assert [k for k, _, _ in bus.sent] == ["consensus.block_txs_req"]
    svc.dispatch(*pack("auth", "block_txs", pb.BlockTxs(height=1, raw_txs=signed_txs(1))))
    key, body, _ = bus.sent[-1]
    proposal = Outgoing("block_proposal", unpack(key, body).block_proposal)
    svc.dispatch(*pack("executor", "executed_result", result_for(proposal)))
    key, body, confirm = bus.sent[-1]
    assert key == "consensus.block_with_proof" and confirm
    assert svc.status()["phase"] == "wait_commit"
    begin = pb.SnapshotReq(cmd=pb.Begin, request_id="r1")
    svc.dispatch(*pack("snapshot", "snapshot_req", begin))
    assert svc.flight_mode and svc.engine.phase is Phase.IDLE
    assert bus.sent[-1][0] == "consensus.snapshot_resp"


def test_auth_senders_travel_with_the_proposal_only_when_complete() -> None:
    raws = signed_txs(2)
    senders = [KEY.address, KEY.address]
    engine = make_engine()
    engine.on_rich_status(status(0, GENESIS_HASH, GENESIS_TS), 0.0)
    req = only(engine.tick(100.0), "block_txs_req")
    msg = pb.BlockTxs(height=req.content.height, raw_txs=raws, senders=senders)
    proposal = only(engine.on_block_txs(msg, 100.0), "block_proposal")
    assert list(proposal.content.senders) == senders
    engine = make_engine()
    engine.on_rich_status(status(0, GENESIS_HASH, GENESIS_TS), 0.0)
    only(engine.tick(100.0), "block_txs_req")
    partial = pb.BlockTxs(height=1, raw_txs=raws, senders=senders[:1])
    assert list(only(engine.on_block_txs(partial, 100.0), "block_proposal").content.senders) == []

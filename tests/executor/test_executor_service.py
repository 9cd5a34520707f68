"""The executor domain object without RabbitMQ: proposals, commits, catch-up, halting, queries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rlp

from pycita.crypto import PrivateKey
from pycita.errors import DecodeError
from pycita.execution import StateRootMismatch, replay_blocks
from pycita.genesis import Genesis
from pycita.messages import pack, pb, unpack
from pycita.storage import LevelDB, MemoryKV
from pycita.types import (
    EMPTY_BLOOM,
    ZERO_HASH,
    Action,
    Block,
    Header,
    SignedTransaction,
    Transaction,
    contract_address,
    sign_transaction,
)
from services.executor import schema
from services.executor.executor import Executor, ExecutorError, SyncRange
from services.executor.rpc import INVALID_PARAMS, METHOD_NOT_FOUND, SERVER_ERROR, ExecutorRpc, RpcError
from services.executor.service import executed_result_message

CHAIN_ID = 3
ALICE = PrivateKey(b"\x11" * 32)
BOB = PrivateKey(b"\x22" * 32)
GENESIS = Genesis(CHAIN_ID, 1_700_000_000_000, 10**9, (ALICE.address,),
                  tuple(sorted([(ALICE.address, 10**20), (BOB.address, 10**20)])))
SINK = b"\x77" * 20


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def transfer(key: PrivateKey, value: int, nonce: int, to: bytes = SINK) -> SignedTransaction:
    return sign_transaction(Transaction(CHAIN_ID, nonce, 50, 10**6, to, value, 0, b""), key)


def proposal(executor: Executor, txs: list[SignedTransaction], parent_hash: bytes | None = None,
             number: int | None = None) -> bytes:
    tip = executor.tip
    header = Header(tip.block_hash if parent_hash is None else parent_hash, ZERO_HASH, ZERO_HASH, ZERO_HASH,
                    EMPTY_BLOOM, tip.height + 1 if number is None else number, GENESIS.quota_limit, 0,
                    GENESIS.timestamp + (number or tip.height + 1), 0, b"", ALICE.address)
    return rlp.encode(Block(header, txs))


def produce(executor: Executor, txs: list[SignedTransaction]) -> Block:
    """Propose, seal with the executed roots (as consensus does) and commit (as the chain announces)."""
    raw = proposal(executor, txs)
    outcome = executor.execute_proposal(raw)
    assert outcome.result is not None, outcome.error
    block = rlp.decode(raw, Block)
    header = block.header.copy(state_root=outcome.result.state_root, receipts_root=outcome.result.receipts_root,
                               quota_used=outcome.result.quota_used)
    sealed = Block(header, block.transactions)
    assert executor.on_chain_block(header.number, sealed.hash, header.state_root) is None
    return sealed


def test_a_fresh_executor_initialises_the_genesis_state_and_keeps_it_across_restarts(tmp_path: Path) -> None:
    kv = LevelDB(tmp_path / "executor")
    executor = Executor(kv, GENESIS)
    assert executor.tip.height == 0
    assert executor.tip.state_root == GENESIS.header().state_root
    assert executor.tip.block_hash == GENESIS.hash
    produce(executor, [transfer(ALICE, 5, 1)])
    tip = executor.tip
    kv.close()
    kv = LevelDB(tmp_path / "executor")
    again = Executor(kv, GENESIS)
    assert again.tip == tip
    assert again.state_at(tip.state_root).balance(SINK) == 5
    kv.close()


def test_a_store_of_another_genesis_is_refused() -> None:
    kv = MemoryKV()
    Executor(kv, GENESIS)
    other = Genesis(CHAIN_ID + 1, 0, 10**9, (ALICE.address,), ())
    with pytest.raises(ExecutorError):
        Executor(kv, other)


def test_a_proposal_at_the_tip_executes_without_committing_until_the_chain_confirms() -> None:
    kv = MemoryKV()
    executor = Executor(kv, GENESIS)
    raw = proposal(executor, [transfer(ALICE, 7, 1), transfer(BOB, 10**30, 1)])
    outcome = executor.execute_proposal(raw)
    assert outcome.error == "" and outcome.result is not None and outcome.height == 1
    assert [r.status for r in outcome.result.receipts] == [1, 0]
    assert executor.tip.height == 0
    assert kv.get(schema.height_key(1)) is None
    assert executor.on_chain_block(1, b"\xaa" * 32, outcome.result.state_root) is None
    assert executor.tip.height == 1 and executor.tip.block_hash == b"\xaa" * 32
    assert executor.tip.state_root == outcome.result.state_root
    assert executor.state_at(executor.tip.state_root).balance(SINK) == 7
    assert executor.status()["pending"] == 0


def test_senders_from_auth_are_used_when_complete_and_recovered_otherwise() -> None:
    txs = [transfer(ALICE, 7, 1), transfer(BOB, 3, 1)]
    plain = Executor(MemoryKV(), GENESIS).execute_proposal(proposal(Executor(MemoryKV(), GENESIS), txs))
    given = Executor(MemoryKV(), GENESIS)
    with_senders = given.execute_proposal(proposal(given, txs), [ALICE.address, BOB.address])
    assert plain.result is not None and with_senders.result is not None
    assert with_senders.result.state_root == plain.result.state_root
    assert with_senders.result.receipt_rlps == plain.result.receipt_rlps
    # a sender list that does not fit (wrong count or size) is ignored: every signature is recovered
    short = Executor(MemoryKV(), GENESIS)
    fallback = short.execute_proposal(proposal(short, txs), [ALICE.address])
    assert fallback.result is not None and fallback.result.state_root == plain.result.state_root


def test_the_executed_result_message_carries_the_roots_and_receipts() -> None:
    executor = Executor(MemoryKV(), GENESIS)
    raw = proposal(executor, [transfer(ALICE, 7, 1)])
    outcome = executor.execute_proposal(raw)
    msg = executed_result_message(outcome)
    assert outcome.result is not None
    assert msg.height == 1 and msg.proposal_hash == outcome.proposal_hash and msg.error == ""
    assert msg.state_root == outcome.result.state_root and msg.receipts_root == outcome.result.receipts_root
    assert list(msg.receipts) == list(outcome.result.receipt_rlps) and msg.quota_used == 21_000
    key, body = pack("executor", "executed_result", msg)
    assert unpack(key, body).executed_result == msg


def test_new_block_commits_only_when_one_pending_result_fits() -> None:
    executor = Executor(MemoryKV(), GENESIS)
    a = executor.execute_proposal(proposal(executor, [transfer(ALICE, 1, 1)]))
    b = executor.execute_proposal(proposal(executor, [transfer(ALICE, 2, 1)]))
    assert a.result is not None and b.result is not None
    assert executor.on_chain_block(1, b"\x01" * 32, None) is None  # ambiguous: wait for rich_status
    assert executor.tip.height == 0
    executor.on_chain_block(1, b"\x01" * 32, b.result.state_root)
    assert executor.state_at(executor.tip.state_root).balance(SINK) == 2

    single = Executor(MemoryKV(), GENESIS)
    c = single.execute_proposal(proposal(single, [transfer(ALICE, 3, 1)]))
    assert c.result is not None
    single.on_chain_block(1, b"\x02" * 32, None)
    assert single.tip.height == 1 and single.tip.state_root == c.result.state_root


def test_a_proposal_not_on_the_tip_is_answered_with_an_error_and_a_catch_up() -> None:
    executor = Executor(MemoryKV(), GENESIS, clock=Clock())
    ahead = executor.execute_proposal(proposal(executor, [], number=5))
    assert ahead.result is None and ahead.error == "executor at 0, parent 4"
    assert ahead.sync == SyncRange(1, 4)
    wrong_parent = executor.execute_proposal(proposal(executor, [], parent_hash=b"\x09" * 32))
    assert wrong_parent.result is None and "parent hash" in wrong_parent.error


def test_a_malformed_proposal_raises_decode_error() -> None:
    executor = Executor(MemoryKV(), GENESIS)
    with pytest.raises(DecodeError):
        executor.execute_proposal(b"\xc3not a block")


def test_a_chain_ahead_triggers_a_throttled_catch_up() -> None:
    clock = Clock()
    executor = Executor(MemoryKV(), GENESIS, clock=clock)
    assert executor.on_chain_block(3, b"\x03" * 32, b"\x04" * 32) == SyncRange(1, 3)
    assert executor.on_chain_block(3, b"\x03" * 32, b"\x04" * 32) is None  # asked moments ago
    assert executor.tick() is None
    clock.now += 10
    assert executor.tick() == SyncRange(1, 3)


def test_catch_up_re_executes_verifies_and_commits_synced_blocks() -> None:
    producer = Executor(MemoryKV(), GENESIS)
    blocks = [produce(producer, [transfer(ALICE, i, i), transfer(BOB, 2 * i, i)]) for i in range(1, 6)]
    follower = Executor(MemoryKV(), GENESIS, clock=Clock())
    assert follower.on_chain_block(5, blocks[-1].hash, blocks[-1].header.state_root) == SyncRange(1, 5)
    more = follower.apply_synced_blocks([rlp.encode(b) for b in blocks[:3]], chain_tip=5)
    assert follower.tip.height == 3 and more == SyncRange(4, 5)
    assert follower.apply_synced_blocks([rlp.encode(b) for b in blocks], chain_tip=5) is None
    assert follower.tip == producer.tip
    for h in range(6):
        assert follower.block_at(h) == producer.block_at(h)
    assert replay_blocks(GENESIS, blocks, verify=True) == [b.header.state_root for b in blocks]


def test_a_synced_block_with_a_wrong_state_root_halts_the_executor_without_committing() -> None:
    producer = Executor(MemoryKV(), GENESIS)
    good = produce(producer, [transfer(ALICE, 1, 1)])
    second = produce(producer, [transfer(ALICE, 2, 2)])
    bad = Block(second.header.copy(state_root=b"\x0b" * 32), second.transactions)
    follower = Executor(MemoryKV(), GENESIS, clock=Clock())
    with pytest.raises(StateRootMismatch) as info:
        follower.apply_synced_blocks([rlp.encode(good), rlp.encode(bad)], chain_tip=2)
    assert info.value.height == 2 and info.value.expected == b"\x0b" * 32
    assert follower.tip.height == 1 and follower.halted
    assert follower.status()["halted"]
    outcome = follower.execute_proposal(proposal(follower, []))
    assert outcome.result is None and "halted" in outcome.error
    assert follower.tick() is None


def test_proposal_and_catch_up_paths_reach_the_same_roots_as_replay() -> None:
    producer = Executor(MemoryKV(), GENESIS)
    addr = contract_address(ALICE.address, 0)
    txs = [
        [sign_transaction(Transaction(CHAIN_ID, 1, 50, 10**6, b"", 0, int(Action.DEPLOY), b"code"), ALICE)],
        [sign_transaction(Transaction(CHAIN_ID, 2, 50, 10**6, addr, 0, int(Action.STORE),
                                      rlp.encode([[b"k", b"v"]])), BOB)],
        [sign_transaction(Transaction(CHAIN_ID, 3, 50, 10**6, addr, 0, int(Action.SET_ABI), b"abi"), ALICE)],
    ]
    blocks = [produce(producer, t) for t in txs]
    assert replay_blocks(GENESIS, blocks) == [b.header.state_root for b in blocks]


# ----------------------------------------------------------------------------- queries

@pytest.fixture
def queried() -> tuple[Executor, ExecutorRpc]:
    executor = Executor(MemoryKV(), GENESIS)
    addr = contract_address(ALICE.address, 0)
    produce(executor, [sign_transaction(Transaction(CHAIN_ID, 1, 50, 10**6, b"", 0, int(Action.DEPLOY), b"\x60"),
                                        ALICE)])
    produce(executor, [sign_transaction(Transaction(CHAIN_ID, 2, 50, 10**6, addr, 0, int(Action.SET_ABI), b"[]"),
                                        ALICE),
                       sign_transaction(Transaction(CHAIN_ID, 1, 50, 10**6, addr, 0, int(Action.STORE),
                                                    rlp.encode([[b"\x01", b"\xff"]])), BOB),
                       transfer(BOB, 99, 2)])
    return executor, ExecutorRpc(executor)


def test_state_queries_answer_at_latest_and_at_past_heights(queried: tuple[Executor, ExecutorRpc]) -> None:
    _, rpc = queried
    addr = "0x" + contract_address(ALICE.address, 0).hex()
    bob = "0x" + BOB.address.hex()
    sink = "0x" + SINK.hex()

    def ask(method: str, *params: object) -> object:
        return rpc.handle(method, json.dumps(list(params)))

    assert ask("getBalance", sink) == hex(99)
    assert ask("getBalance", sink, "latest") == hex(99)
    assert ask("getBalance", sink, "0x1") == "0x0"
    assert ask("getBalance", bob, 0) == hex(10**20)
    assert ask("getTransactionCount", bob, "latest") == "0x2"
    assert ask("getTransactionCount", bob, "1") == "0x0"
    assert ask("getCode", addr, "latest") == "0x60"
    assert ask("getAbi", addr, "latest") == "0x" + b"[]".hex()
    assert ask("getAbi", addr, 1) == "0x"
    assert ask("getStorageAt", addr, "0x01", "latest") == "0xff"
    assert ask("getStorageAt", addr, "0x01", 1) == "0x"
    assert ask("getCode", sink, "earliest") == "0x"


@pytest.mark.parametrize(("method", "params", "code"), [
    ("getNothing", "[]", METHOD_NOT_FOUND),
    ("getBalance", "not json", INVALID_PARAMS),
    ("getBalance", "{}", INVALID_PARAMS),
    ("getBalance", "[]", INVALID_PARAMS),
    ("getBalance", '["0x1234"]', INVALID_PARAMS),
    ("getBalance", '["nothex"]', INVALID_PARAMS),
    ("getBalance", '["0x' + "00" * 20 + '", "soon"]', INVALID_PARAMS),
    ("getBalance", '["0x' + "00" * 20 + '", 99]', SERVER_ERROR),
    ("getStorageAt", '["0x' + "00" * 20 + '", "0x"]', INVALID_PARAMS),
])
def test_bad_queries_get_json_rpc_error_codes(queried: tuple[Executor, ExecutorRpc], method: str, params: str,
                                             code: int) -> None:
    _, rpc = queried
    with pytest.raises(RpcError) as info:
        rpc.handle(method, params)
    assert info.value.code == code


def test_pong_status_reports_height_and_state_root(queried: tuple[Executor, ExecutorRpc]) -> None:
    executor, _ = queried
    status = executor.status()
    assert status["height"] == 2
    assert status["state_root"] == "0x" + executor.tip.state_root.hex()
    assert status["halted"] is None
    json.dumps(status)


def test_a_pb_rpc_request_round_trips() -> None:
    key, body = pack("jsonrpc", "executor_query", pb.RpcRequest(method="getBalance", params_json="[]"), "r1")
    env = unpack(key, body)
    assert env.request_id == "r1" and env.executor_query.method == "getBalance"


# ----------------------------------------------------------------------------- the thin bus layer

class FakeBus:
    def __init__(self) -> None:
        self.published: list[tuple[str, pb.Message]] = []
        self.timers: list[object] = []

    def publish(self, routing_key: str, body: bytes, **_kw: object) -> None:
        self.published.append((routing_key, unpack(routing_key, body)))

    def call_every(self, interval: float, fn: object) -> None:
        self.timers.append(fn)


def test_the_service_wires_proposals_commits_catch_up_and_queries_through_the_bus(tmp_path: Path) -> None:
    from pycita.config import NodeConfig
    from services.executor.service import ExecutorService

    GENESIS.save(tmp_path / "genesis.json")
    bus = FakeBus()
    service = ExecutorService(NodeConfig(node_dir=tmp_path, amqp_url="amqp://unused"), bus)
    try:
        service.start()
        executor = service.executor
        key, body = pack("consensus", "block_proposal",
                         pb.BlockProposal(block=proposal(executor, [transfer(ALICE, 4, 1)])), "p1")
        service.dispatch(key, body)
        rk, env = bus.published[-1]
        assert rk == "executor.executed_result" and env.request_id == "p1"
        result = env.executed_result
        assert result.error == "" and result.height == 1

        service.dispatch(*pack("chain", "rich_status", pb.RichStatus(
            height=1, hash=b"\x01" * 32, state_root=result.state_root, genesis_hash=GENESIS.hash)))
        assert executor.tip.height == 1

        service.dispatch(*pack("chain", "rich_status", pb.RichStatus(
            height=4, hash=b"\x04" * 32, state_root=b"\x05" * 32, genesis_hash=GENESIS.hash)))
        rk, env = bus.published[-1]
        assert rk == "executor.sync_req" and (env.sync_req.start_height, env.sync_req.end_height) == (2, 4)

        service.dispatch(*pack("jsonrpc", "executor_query",
                               pb.RpcRequest(method="getBalance", params_json=json.dumps(["0x" + SINK.hex()])),
                               "q1"))
        rk, env = bus.published[-1]
        assert rk == "executor.rpc_response" and env.request_id == "q1"
        assert env.rpc_response.code == 0 and json.loads(env.rpc_response.result_json) == "0x4"

        service.dispatch(*pack("jsonrpc", "executor_query", pb.RpcRequest(method="nope"), "q2"))
        assert bus.published[-1][1].rpc_response.code == METHOD_NOT_FOUND

        service.dispatch(*pack("cli", "ping", pb.Ping(nonce="n")))
        status = json.loads(bus.published[-1][1].pong.status_json)
        assert status["height"] == 1 and status["state_root"] == "0x" + executor.tip.state_root.hex()

        with pytest.raises(DecodeError):
            service.dispatch("consensus.block_proposal", b"\xff\xfe garbage")
        with pytest.raises(DecodeError):
            service.dispatch(*pack("consensus", "block_proposal", pb.BlockProposal(block=b"\x01\x02")))
        with pytest.raises(DecodeError):
            service.dispatch(*pack("chain", "sync_resp", pb.SyncResp(blocks=[b"junk"], tip=9)))
    finally:
        service.close()

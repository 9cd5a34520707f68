"""The chain's block store: verification, idempotent commits, sync, recent txs, JSON-RPC, the service."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import rlp

from pycita.config import NodeConfig
from pycita.crypto import PrivateKey, keccak
from pycita.errors import ConfigError, DecodeError
from pycita.genesis import Genesis
from pycita.messages import pack, pb, unpack
from pycita.proof import QuorumCert, sign_vote
from pycita.types import (
    EMPTY_BLOOM,
    Block,
    Header,
    Receipt,
    SignedTransaction,
    Transaction,
    ordered_root,
    sign_transaction,
)
from services.chain.chain import BlockRejected, Chain
from services.chain.rpc import INVALID_PARAMS, METHOD_NOT_FOUND, ChainRpc
from services.chain.service import ChainService
from services.chain.store import ChainStore

CHAIN_ID = 7
QUOTA_LIMIT = 1_000_000_000
VALIDATOR = PrivateKey(bytes(range(1, 33)))
SENDER = PrivateKey(bytes(range(2, 34)))
OUTSIDER = PrivateKey(bytes(range(3, 35)))
RECIPIENT = b"\x22" * 20


def make_genesis(validators: Sequence[PrivateKey] = (VALIDATOR,)) -> Genesis:
    return Genesis(CHAIN_ID, 1_700_000_000_000, QUOTA_LIMIT, tuple(k.address for k in validators),
                   ((SENDER.address, 10**21),))


def transfer(nonce: int, until: int = 100, key: PrivateKey = SENDER) -> SignedTransaction:
    return sign_transaction(Transaction(CHAIN_ID, nonce, until, 21_000, RECIPIENT, 1, 0, b""), key)


def quorum_cert(height: int, block_hash: bytes, signers: Sequence[PrivateKey] = (VALIDATOR,)) -> bytes:
    sigs = tuple((k.address, sign_vote(k, CHAIN_ID, height, 0, block_hash)) for k in signers)
    return QuorumCert(height, 0, block_hash, sigs).to_proof_bytes()


@dataclass(frozen=True)
class Offer:
    """A block as consensus would deliver it: block RLP, its proof, its receipts."""

    header: Header
    block: bytes
    proof: bytes
    receipts: list[bytes]

    @property
    def hash(self) -> bytes:
        return keccak(rlp.encode(self.header))


def build_block(chain: Chain, txs: Sequence[SignedTransaction] = (), *, signers: Sequence[PrivateKey] = (VALIDATOR,),
                **overrides: Any) -> Offer:
    """The next block on ``chain``'s tip, correct unless ``overrides`` say otherwise."""
    tip = chain.tip
    raws = [rlp.encode(tx) for tx in txs]
    receipts = [rlp.encode(Receipt(keccak(raw), SENDER.address, 1, 21_000, 21_000 * (i + 1), b"", b""))
                for i, raw in enumerate(raws)]
    fields = dict(
        parent_hash=tip.hash, state_root=b"\x05" * 32, transactions_root=ordered_root([keccak(r) for r in raws]),
        receipts_root=ordered_root(receipts), log_bloom=EMPTY_BLOOM, number=tip.height + 1,
        quota_limit=QUOTA_LIMIT, quota_used=21_000 * len(raws), timestamp=tip.timestamp + 1, version=0,
        proof=tip.proof if tip.height > 0 else b"", proposer=VALIDATOR.address)
    fields.update({k: v for k, v in overrides.items() if k in dict(Header._meta.fields)})
    header = Header(**fields)
    proof = overrides.get("block_proof") or quorum_cert(header.number, header.hash, signers)
    return Offer(header, rlp.encode(Block(header, list(txs))), proof, overrides.get("receipts", receipts))


def accept(chain: Chain, offer: Offer) -> Any:
    return chain.accept(offer.block, offer.proof, offer.receipts)


def grow(chain: Chain, n: int, txs_per_block: int = 0) -> None:
    nonce = 0
    for _ in range(n):
        txs = [transfer(nonce + i, until=chain.tip.height + 50) for i in range(txs_per_block)]
        nonce += txs_per_block
        accept(chain, build_block(chain, txs))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ChainStore]:
    s = ChainStore(tmp_path / "chain")
    yield s
    s.close()


@pytest.fixture
def chain(store: ChainStore) -> Chain:
    return Chain(store, make_genesis())


# -- genesis and reopening ------------------------------------------------------------


def test_a_fresh_store_starts_at_the_genesis_block(chain: Chain) -> None:
    genesis = make_genesis()
    assert chain.tip.height == 0
    assert chain.tip.hash == genesis.hash
    assert chain.tip.state_root == genesis.state_root()
    assert chain.store.height_of(genesis.hash) == 0
    assert chain.store.proof(0) == b""


def test_reopening_the_store_keeps_the_tip(tmp_path: Path) -> None:
    store = ChainStore(tmp_path / "chain")
    grow(Chain(store, make_genesis()), 3)
    tip_hash = store.tip()
    store.close()
    reopened = ChainStore(tmp_path / "chain")
    try:
        chain = Chain(reopened, make_genesis())
        assert (chain.tip.height, chain.tip.hash) == tip_hash
        assert chain.tip.proof == reopened.proof(3)
    finally:
        reopened.close()


def test_a_store_of_another_genesis_is_refused(store: ChainStore) -> None:
    Chain(store, make_genesis())
    other = Genesis(CHAIN_ID, 1_800_000_000_000, QUOTA_LIMIT, (VALIDATOR.address,), ())
    with pytest.raises(ConfigError, match="belongs to genesis"):
        Chain(store, other)


# -- accepting blocks -------------------------------------------------------------------


def test_a_valid_block_with_a_one_validator_quorum_cert_is_stored(chain: Chain) -> None:
    txs = [transfer(0), transfer(1)]
    offer = build_block(chain, txs)
    committed = accept(chain, offer)
    assert committed.height == 1 and committed.hash == offer.hash
    assert chain.tip.height == 1 and chain.tip.hash == offer.hash and chain.tip.proof == offer.proof
    assert chain.tip.state_root == b"\x05" * 32
    assert chain.store.block_rlp(1) == offer.block
    assert chain.store.receipts(1) == offer.receipts
    assert chain.store.height_of(offer.hash) == 1
    assert chain.store.tx_location(txs[1].hash) == (1, 1)


def test_the_new_block_announcement_lists_hash_sender_nonce_and_expiry_of_each_tx(chain: Chain) -> None:
    txs = [transfer(5, until=60), transfer(9, until=70)]
    committed = accept(chain, build_block(chain, txs))
    keys = [(k.hash, k.sender, k.nonce, k.valid_until_block) for k in committed.new_block.txs]
    assert keys == [(txs[0].hash, SENDER.address, 5, 60), (txs[1].hash, SENDER.address, 9, 70)]
    assert committed.new_block.height == 1 and committed.new_block.hash == committed.hash


def test_a_second_block_must_carry_the_proof_of_its_parent_in_its_header(chain: Chain) -> None:
    accept(chain, build_block(chain))
    with pytest.raises(BlockRejected, match="header proof does not prove the parent"):
        accept(chain, build_block(chain, proof=b""))
    with pytest.raises(BlockRejected, match="header proof does not prove the parent"):
        accept(chain, build_block(chain, proof=quorum_cert(1, b"\x01" * 32)))
    assert accept(chain, build_block(chain)).height == 2


def test_a_block_with_the_wrong_parent_hash_is_rejected(chain: Chain) -> None:
    with pytest.raises(BlockRejected, match="parent hash") as info:
        accept(chain, build_block(chain, parent_hash=b"\x09" * 32))
    assert info.value.height == 1


def test_a_block_beyond_the_next_height_is_rejected_as_out_of_order(chain: Chain) -> None:
    with pytest.raises(BlockRejected, match="out of order"):
        accept(chain, build_block(chain, number=2))


def test_a_different_block_at_a_stored_height_is_rejected(chain: Chain) -> None:
    accept(chain, build_block(chain))
    grow(chain, 1)
    rival = build_block(chain, number=1, parent_hash=make_genesis().hash, timestamp=5)
    with pytest.raises(BlockRejected, match="conflicts with stored block 1"):
        accept(chain, rival)


def test_a_proof_signed_by_a_non_validator_is_rejected(chain: Chain) -> None:
    with pytest.raises(BlockRejected, match="not a validator"):
        accept(chain, build_block(chain, signers=(OUTSIDER,)))


def test_a_forged_signature_is_rejected(chain: Chain) -> None:
    offer = build_block(chain)
    forged_sig = sign_vote(OUTSIDER, CHAIN_ID, 1, 0, offer.hash)
    forged = QuorumCert(1, 0, offer.hash, ((VALIDATOR.address, forged_sig),)).to_proof_bytes()
    with pytest.raises(BlockRejected, match="was made by"):
        chain.accept(offer.block, forged, offer.receipts)


def test_a_proof_of_another_block_is_rejected(chain: Chain) -> None:
    with pytest.raises(BlockRejected, match="proof does not prove this block"):
        accept(chain, build_block(chain, block_proof=quorum_cert(1, b"\x07" * 32)))


def test_a_missing_or_garbage_proof_is_rejected(chain: Chain) -> None:
    offer = build_block(chain)
    for proof in (b"", b"\xff\xff\xff"):
        with pytest.raises(BlockRejected, match="proof does not prove this block"):
            chain.accept(offer.block, proof, offer.receipts)


def test_a_proof_without_a_quorum_of_validators_is_rejected(store: ChainStore) -> None:
    others = [PrivateKey(bytes([9]) * 31 + bytes([i])) for i in range(3)]
    chain = Chain(store, make_genesis((VALIDATOR, *others)))
    with pytest.raises(BlockRejected, match="quorum is 3 of 4"):
        accept(chain, build_block(chain, signers=(VALIDATOR, others[0])))
    assert accept(chain, build_block(chain, signers=(VALIDATOR, others[0], others[1]))).height == 1


def test_a_wrong_transactions_root_is_rejected(chain: Chain) -> None:
    with pytest.raises(BlockRejected, match="transactions_root"):
        accept(chain, build_block(chain, [transfer(0)], transactions_root=b"\x01" * 32))


def test_a_wrong_receipts_root_is_rejected(chain: Chain) -> None:
    with pytest.raises(BlockRejected, match="receipts_root"):
        accept(chain, build_block(chain, [transfer(0)], receipts_root=b"\x01" * 32))


def test_receipts_that_do_not_match_the_transactions_are_rejected(chain: Chain) -> None:
    with pytest.raises(BlockRejected, match="1 receipts for 2 transactions"):
        offer = build_block(chain, [transfer(0), transfer(1)])
        chain.accept(offer.block, offer.proof, offer.receipts[:1])
    other = rlp.encode(Receipt(b"\x03" * 32, SENDER.address, 1, 21_000, 21_000, b"", b""))
    with pytest.raises(BlockRejected, match="receipt 0 is for tx"):
        accept(chain, build_block(chain, [transfer(0)], receipts=[other],
                                  receipts_root=ordered_root([other])))


def test_a_block_that_is_not_rlp_is_rejected(chain: Chain) -> None:
    with pytest.raises(BlockRejected, match="cannot decode"):
        chain.accept(b"\xff\x00garbage", b"", [])


def test_a_rejected_block_leaves_the_store_untouched(chain: Chain) -> None:
    before = dict(chain.store.db.iterate())
    with pytest.raises(BlockRejected):
        accept(chain, build_block(chain, [transfer(0)], signers=(OUTSIDER,)))
    assert dict(chain.store.db.iterate()) == before
    assert chain.tip.height == 0


def test_redelivering_a_stored_block_is_ignored(chain: Chain) -> None:
    offer = build_block(chain, [transfer(0)])
    accept(chain, offer)
    grow(chain, 1)
    assert accept(chain, offer) is None
    assert chain.tip.height == 2


def test_a_block_of_3000_transactions_commits_quickly(chain: Chain) -> None:
    txs = [transfer(i) for i in range(3000)]
    offer = build_block(chain, txs)
    started = time.perf_counter()
    committed = accept(chain, offer)
    elapsed = time.perf_counter() - started
    assert committed is not None and len(committed.new_block.txs) == 3000
    assert elapsed < 2.0, f"committing 3000 txs took {elapsed:.2f} s"


# -- sync and recent txs ------------------------------------------------------------------


def test_sync_returns_full_blocks_from_start_to_end(chain: Chain) -> None:
    grow(chain, 5, txs_per_block=1)
    resp = chain.sync_blocks(2, 4)
    assert resp.tip == 5
    assert list(resp.blocks) == [chain.store.block_rlp(h) for h in (2, 3, 4)]
    block: Block = rlp.decode(resp.blocks[0], Block)
    assert block.header.number == 2 and len(block.transactions) == 1


def test_sync_stops_at_the_tip_when_end_is_zero_or_beyond_it(chain: Chain) -> None:
    grow(chain, 3)
    assert len(chain.sync_blocks(1, 0).blocks) == 3
    assert len(chain.sync_blocks(2, 99).blocks) == 2
    assert len(chain.sync_blocks(4, 10).blocks) == 0


def test_sync_replies_are_capped_at_100_blocks(chain: Chain) -> None:
    grow(chain, 105)
    resp = chain.sync_blocks(1, 105)
    assert len(resp.blocks) == 100
    assert rlp.decode(resp.blocks[-1], Block).header.number == 100


def test_sync_replies_are_capped_in_bytes_but_carry_at_least_one_block(chain: Chain) -> None:
    grow(chain, 4, txs_per_block=3)
    two_blocks = sum(len(chain.store.block_rlp(h) or b"") for h in (1, 2))
    assert len(chain.sync_blocks(1, 4, max_bytes=two_blocks).blocks) == 2
    assert len(chain.sync_blocks(1, 4, max_bytes=1).blocks) == 1


def test_recent_txs_lists_the_tx_keys_of_the_newest_blocks(chain: Chain) -> None:
    grow(chain, 4, txs_per_block=2)
    recent = chain.recent_txs(2)
    assert recent.height == 4
    hashes = [k.hash for k in recent.txs]
    expected = [keccak(tx) for h in (3, 4) for tx in chain.store.transactions(h)]
    assert hashes == expected
    assert {k.sender for k in recent.txs} == {SENDER.address}
    assert len(chain.recent_txs(100).txs) == 8


def test_a_snapshot_view_keeps_seeing_the_cut_it_was_opened_at(chain: Chain) -> None:
    grow(chain, 2)
    with chain.store.view() as view:
        grow(chain, 2)
        assert view.tip() is not None and view.tip()[0] == 2  # type: ignore[index]
        assert [h for h, _ in view.iter_headers(0, 10)] == [0, 1, 2]
        assert [b.height for b in view.iter_blocks(1, 2)] == [1, 2]
        assert next(iter(view.iter_blocks(2, 2))).proof == chain.store.proof(2)
    assert [h for h, _ in chain.store.iter_headers(3, 4)] == [3, 4]


# -- JSON-RPC -------------------------------------------------------------------------------


def query(chain: Chain, method: str, *params: Any) -> Any:
    resp = ChainRpc(chain.store).handle(pb.RpcRequest(method=method, params_json=json.dumps(list(params))))
    assert resp.code == 0, resp.error
    return json.loads(resp.result_json)


def test_block_number_is_the_tip_in_hex(chain: Chain) -> None:
    grow(chain, 11)
    assert query(chain, "blockNumber") == "0xb"


def test_get_block_by_number_returns_the_header_fields_and_tx_hashes(chain: Chain) -> None:
    txs = [transfer(0)]
    offer = build_block(chain, txs)
    accept(chain, offer)
    for number in ("latest", "0x1", 1, "1"):
        block = query(chain, "getBlockByNumber", number, False)
        assert block["number"] == "0x1"
        assert block["hash"] == "0x" + offer.hash.hex()
        assert block["parentHash"] == "0x" + make_genesis().hash.hex()
        assert block["stateRoot"] == "0x" + "05" * 32
        assert block["quotaUsed"] == hex(21_000) and block["quotaLimit"] == hex(QUOTA_LIMIT)
        assert block["proposer"] == "0x" + VALIDATOR.address.hex()
        assert block["proof"] == "0x"
        assert block["transactions"] == ["0x" + txs[0].hash.hex()]
    assert query(chain, "getBlockByNumber", "earliest", False)["number"] == "0x0"
    assert query(chain, "getBlockByNumber", "0x2", False) is None


def test_get_block_by_hash_with_full_transactions_returns_tx_objects(chain: Chain) -> None:
    offer = build_block(chain, [transfer(3)])
    accept(chain, offer)
    block = query(chain, "getBlockByHash", "0x" + offer.hash.hex(), True)
    tx = block["transactions"][0]
    assert tx["from"] == "0x" + SENDER.address.hex() and tx["nonce"] == "0x3" and tx["index"] == "0x0"
    assert query(chain, "getBlockByHash", "0x" + "00" * 32, True) is None


def test_get_transaction_returns_the_transaction_object(chain: Chain) -> None:
    tx = transfer(4, until=77)
    accept(chain, build_block(chain, [transfer(3), tx]))
    assert query(chain, "getTransaction", "0x" + tx.hash.hex()) == {
        "hash": "0x" + tx.hash.hex(), "blockNumber": "0x1", "index": "0x1",
        "from": "0x" + SENDER.address.hex(), "to": "0x" + RECIPIENT.hex(), "nonce": "0x4", "value": "0x1",
        "action": "0x0", "data": "0x", "validUntilBlock": hex(77), "quota": hex(21_000), "chainId": "0x7",
    }
    assert query(chain, "getTransaction", "0x" + "ab" * 32) is None


def test_get_transaction_receipt_returns_the_receipt_object(chain: Chain) -> None:
    tx = transfer(0)
    offer = build_block(chain, [tx])
    accept(chain, offer)
    assert query(chain, "getTransactionReceipt", "0x" + tx.hash.hex()) == {
        "transactionHash": "0x" + tx.hash.hex(), "blockNumber": "0x1", "blockHash": "0x" + offer.hash.hex(),
        "index": "0x0", "from": "0x" + SENDER.address.hex(), "status": "0x1", "quotaUsed": hex(21_000),
        "cumulativeQuotaUsed": hex(21_000), "contractAddress": None, "errorMessage": None,
    }
    assert query(chain, "getTransactionReceipt", "0x" + "ab" * 32) is None


@pytest.mark.parametrize(("method", "params", "code"), [
    ("getBalance", "[]", METHOD_NOT_FOUND),
    ("getBlockByNumber", '["soon", false]', INVALID_PARAMS),
    ("getBlockByNumber", "[]", INVALID_PARAMS),
    ("getTransaction", '["0x1234"]', INVALID_PARAMS),
    ("getBlockByHash", '{"hash": 1}', INVALID_PARAMS),
])
def test_bad_queries_get_json_rpc_error_codes(chain: Chain, method: str, params: str, code: int) -> None:
    resp = ChainRpc(chain.store).handle(pb.RpcRequest(method=method, params_json=params))
    assert resp.code == code and resp.error


# -- the service over a fake bus ------------------------------------------------------------


class FakeBus:
    def __init__(self) -> None:
        self.published: list[tuple[str, pb.Message, dict[str, Any]]] = []
        self.timers: list[tuple[float, Any]] = []

    def publish(self, routing_key: str, body: bytes, **kwargs: Any) -> None:
        self.published.append((routing_key, unpack(routing_key, body), kwargs))

    def call_every(self, interval: float, fn: Any, **_kw: Any) -> None:
        self.timers.append((interval, fn))

    def keys(self) -> list[str]:
        return [key for key, _, _ in self.published]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[ChainService, FakeBus]]:
    make_genesis().save(tmp_path / "genesis.json")
    bus = FakeBus()
    svc = ChainService(NodeConfig(node_dir=tmp_path, amqp_url="amqp://unused"), bus)
    svc.start()
    bus.published.clear()
    yield svc, bus
    svc.close()


def test_the_service_commits_a_block_then_announces_new_block_and_rich_status(
        service: tuple[ChainService, FakeBus]) -> None:
    svc, bus = service
    offer = build_block(svc.chain, [transfer(0)])
    msg = pb.BlockWithProof(block=offer.block, receipts=offer.receipts)
    msg.proof.ParseFromString(offer.proof)
    svc.dispatch(*pack("consensus", "block_with_proof", msg))
    assert bus.keys() == ["chain.new_block", "chain.rich_status"]
    status = bus.published[1][1].rich_status
    assert status.height == 1 and status.hash == offer.hash
    assert status.genesis_hash == make_genesis().hash
    assert status.proof.SerializeToString() == offer.proof


def test_the_service_heartbeat_publishes_rich_status_every_second(service: tuple[ChainService, FakeBus]) -> None:
    svc, bus = service
    [(interval, beat)] = bus.timers
    assert interval == 1.0
    beat()
    assert bus.keys() == ["chain.rich_status"]


def test_the_service_drops_a_rejected_block_without_announcing(service: tuple[ChainService, FakeBus]) -> None:
    svc, bus = service
    offer = build_block(svc.chain, signers=(OUTSIDER,))
    msg = pb.BlockWithProof(block=offer.block, receipts=offer.receipts)
    msg.proof.ParseFromString(offer.proof)
    svc.dispatch(*pack("consensus", "block_with_proof", msg))
    assert bus.published == [] and svc.chain.tip.height == 0


def test_the_service_raises_decode_error_on_a_malformed_body(service: tuple[ChainService, FakeBus]) -> None:
    svc, _bus = service
    with pytest.raises(DecodeError):
        svc.dispatch("consensus.block_with_proof", b"\xff\xfe not protobuf")


def test_the_service_answers_queries_with_the_request_id_and_correlation_id(
        service: tuple[ChainService, FakeBus]) -> None:
    svc, bus = service

    @dataclass
    class Props:
        correlation_id: str

    key, body = pack("jsonrpc", "chain_query", pb.RpcRequest(method="blockNumber"), request_id="r-1")
    svc.dispatch(key, body, Props("c-9"))
    [(rkey, env, kwargs)] = bus.published
    assert rkey == "chain.rpc_response" and env.request_id == "r-1" and kwargs["correlation_id"] == "c-9"
    assert json.loads(env.rpc_response.result_json) == "0x0"


def test_the_service_answers_sync_and_recent_txs_requests(service: tuple[ChainService, FakeBus]) -> None:
    svc, bus = service
    grow(svc.chain, 3, txs_per_block=1)
    svc.dispatch(*pack("executor", "sync_req", pb.SyncReq(start_height=2, end_height=3), request_id="s"))
    svc.dispatch(*pack("auth", "recent_txs_req", pb.RecentTxsReq(blocks=100)))
    assert bus.keys() == ["chain.sync_resp", "chain.recent_txs"]
    assert len(bus.published[0][1].sync_resp.blocks) == 2 and bus.published[0][1].request_id == "s"
    assert len(bus.published[1][1].recent_txs.txs) == 3


def test_the_service_status_reports_height_block_hash_and_state_root(service: tuple[ChainService, FakeBus]) -> None:
    svc, bus = service
    svc.dispatch(*pack("cli", "ping", pb.Ping(nonce="n")))
    status = json.loads(bus.published[0][1].pong.status_json)
    assert status["height"] == 0
    assert status["block_hash"] == "0x" + make_genesis().hash.hex()
    assert status["state_root"] == "0x" + make_genesis().state_root().hex()

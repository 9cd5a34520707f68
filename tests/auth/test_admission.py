"""Transaction admission: every TxResult code, batch semantics, speed, and the service's replies."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import rlp

from pycita.config import NodeConfig
from pycita.crypto import PrivateKey, keccak
from pycita.errors import DecodeError
from pycita.genesis import Genesis
from pycita.messages import pack, pb, unpack
from pycita.storage import LevelDB
from pycita.types import Action, SignedTransaction, Transaction, sign_transaction
from services.auth.admission import Admitter, Rules, Verdict
from services.auth.pool import RecentWindow, TxKeyView, TxPool
from services.auth.service import AuthService
from services.auth.txcheck import MAX_TX_BYTES, Code, parse_tx

CHAIN_ID = 5
QUOTA_LIMIT = 10_000_000
KEY = PrivateKey(bytes(range(1, 33)))
OTHER = PrivateKey(bytes(range(5, 37)))
TO = b"\x44" * 20
TIP = 10


def make_tx(nonce: int = 0, *, key: PrivateKey = KEY, chain_id: int = CHAIN_ID, until: int = TIP + 50,
            quota: int = 21_000, to: bytes = TO, action: int = Action.TRANSFER, data: bytes = b"",
            value: int = 1) -> bytes:
    return rlp.encode(sign_transaction(Transaction(chain_id, nonce, until, quota, to, value, action, data), key))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[LevelDB]:
    store = LevelDB(tmp_path / "auth")
    yield store
    store.close()


def make_admitter(db: LevelDB, capacity: int = 1000, ready: bool = True) -> Admitter:
    admitter = Admitter(Rules(CHAIN_ID, QUOTA_LIMIT), TxPool(db, capacity), RecentWindow())
    if ready:
        admitter.on_recent_txs(TIP, [])
    return admitter


@pytest.fixture
def admitter(db: LevelDB) -> Admitter:
    return make_admitter(db)


def admit_one(admitter: Admitter, raw: bytes, **kw: Any) -> Verdict:
    [verdict] = admitter.admit_batch([raw], **kw)
    return verdict


def test_a_well_formed_signed_transaction_is_accepted_with_code_ok(admitter: Admitter) -> None:
    raw = make_tx()
    verdict = admit_one(admitter, raw)
    assert verdict == Verdict(keccak(raw), Code.OK, "")
    assert verdict.ok and keccak(raw) in admitter.pool
    assert admitter.pool.get(keccak(raw)).sender == KEY.address  # type: ignore[union-attr]


def test_bytes_that_are_not_rlp_are_malformed(admitter: Admitter) -> None:
    verdict = admit_one(admitter, b"\xf8\xff\x01")
    assert verdict.code == Code.MALFORMED and "not canonical RLP" in verdict.error


@pytest.mark.parametrize(("raw", "message"), [
    (rlp.encode([b"\x05", b"", b"\x10"]), "expected the list"),
    (rlp.encode(b"just a string"), "expected the list"),
    (rlp.encode([b"\x05", b"", b"\x10", b"\x52\x08", TO, b"\x01", b"", b"", [b"nested"]]), "expected the list"),
    (rlp.encode([b"\x00\x05", b"", b"\x10", b"\x52\x08", TO, b"\x01", b"", b"", b"s" * 65]), "leading zero"),
    (rlp.encode([b"\x05", b"\x01" * 9, b"\x10", b"\x52\x08", TO, b"\x01", b"", b"", b"s" * 65]), "exceeds 64 bits"),
    (rlp.encode([b"\x05", b"", b"\x10", b"\x52\x08", TO, b"\x01", b"\x09", b"", b"s" * 65]), "unknown action"),
    (rlp.encode([b"\x05", b"", b"\x10", b"\x52\x08", b"\x01" * 5, b"\x01", b"", b"", b"s" * 65]), "'to' must be 20"),
    (rlp.encode([b"\x05", b"", b"\x10", b"\x52\x08", TO, b"\x01", b"\x01", b"", b"s" * 65]), "DEPLOY must have"),
    (rlp.encode([b"\x05", b"", b"\x10", b"\x52\x08", TO, b"\x01", b"", b"", b"s" * 64]), "signature must be 65"),
    (make_tx() + b"\x00", "not canonical RLP"),
])
def test_a_transaction_of_the_wrong_shape_is_malformed(admitter: Admitter, raw: bytes, message: str) -> None:
    verdict = admit_one(admitter, raw)
    assert verdict.code == Code.MALFORMED
    assert message in verdict.error


def test_a_signature_that_does_not_recover_is_refused(admitter: Admitter) -> None:
    fields = rlp.decode(make_tx())
    fields[8] = b"\xff" * 64 + b"\x00"
    verdict = admit_one(admitter, rlp.encode(fields))
    assert verdict.code == Code.BAD_SIGNATURE and "bad signature" in verdict.error


def test_a_bad_recovery_id_is_a_bad_signature(admitter: Admitter) -> None:
    fields = rlp.decode(make_tx())
    fields[8] = fields[8][:64] + b"\x07"
    assert admit_one(admitter, rlp.encode(fields)).code == Code.BAD_SIGNATURE


def test_a_transaction_for_another_chain_is_refused(admitter: Admitter) -> None:
    verdict = admit_one(admitter, make_tx(chain_id=CHAIN_ID + 1))
    assert verdict.code == Code.WRONG_CHAIN_ID and "this chain is 5" in verdict.error


def test_resubmitting_a_pooled_transaction_is_a_duplicate(admitter: Admitter) -> None:
    raw = make_tx()
    assert admit_one(admitter, raw).ok
    verdict = admit_one(admitter, raw)
    assert verdict.code == Code.DUPLICATE and "already in the pool" in verdict.error


def test_a_transaction_in_a_recent_block_is_a_duplicate(admitter: Admitter) -> None:
    raw = make_tx()
    admitter.on_new_block(TIP + 1, [TxKeyView(keccak(raw), KEY.address, 0)])
    verdict = admit_one(admitter, raw)
    assert verdict.code == Code.DUPLICATE and "recent block" in verdict.error


def test_the_same_transaction_twice_in_one_batch_is_a_duplicate_the_second_time(admitter: Admitter) -> None:
    raw = make_tx()
    first, second = admitter.admit_batch([raw, raw])
    assert first.ok
    assert second.code == Code.DUPLICATE and "this batch" in second.error


def test_a_nonce_already_used_by_the_sender_in_the_pool_is_refused(admitter: Admitter) -> None:
    assert admit_one(admitter, make_tx(nonce=3)).ok
    verdict = admit_one(admitter, make_tx(nonce=3, value=2))
    assert verdict.code == Code.REUSED_NONCE and "nonce 3" in verdict.error
    assert admit_one(admitter, make_tx(nonce=3, key=OTHER)).ok


def test_a_nonce_used_in_a_recent_block_is_refused(admitter: Admitter) -> None:
    admitter.on_new_block(TIP + 1, [TxKeyView(b"\x01" * 32, KEY.address, 8)])
    assert admit_one(admitter, make_tx(nonce=8)).code == Code.REUSED_NONCE


def test_the_same_nonce_twice_in_one_batch_is_refused_the_second_time(admitter: Admitter) -> None:
    first, second = admitter.admit_batch([make_tx(nonce=1), make_tx(nonce=1, value=9)])
    assert first.ok and second.code == Code.REUSED_NONCE


@pytest.mark.parametrize("until", [0, TIP, TIP + 101, 2**40])
def test_valid_until_block_outside_the_next_hundred_blocks_is_refused(admitter: Admitter, until: int) -> None:
    verdict = admit_one(admitter, make_tx(until=until))
    assert verdict.code == Code.INVALID_UNTIL_BLOCK
    assert f"not in ({TIP}, {TIP + 100}]" in verdict.error


@pytest.mark.parametrize("until", [TIP + 1, TIP + 100])
def test_valid_until_block_at_either_end_of_the_window_is_accepted(admitter: Admitter, until: int) -> None:
    assert admit_one(admitter, make_tx(until=until)).ok


def test_a_quota_below_the_intrinsic_cost_is_refused(admitter: Admitter) -> None:
    verdict = admit_one(admitter, make_tx(quota=20_999))
    assert verdict.code == Code.QUOTA and "below the intrinsic 21000" in verdict.error
    deploy = make_tx(nonce=1, action=Action.DEPLOY, to=b"", data=b"\x60" * 10, quota=21_000 + 1_999)
    assert admit_one(admitter, deploy).code == Code.QUOTA
    store = make_tx(nonce=2, action=Action.STORE, data=rlp.encode([[b"k", b"vv"]]), quota=21_000 + 20_000 + 19)
    assert admit_one(admitter, store).code == Code.QUOTA
    assert admit_one(admitter, make_tx(nonce=3, action=Action.STORE, data=rlp.encode([[b"k", b"vv"]]),
                                       quota=21_000 + 20_000 + 20)).ok


def test_a_quota_above_the_block_quota_limit_is_refused(admitter: Admitter) -> None:
    verdict = admit_one(admitter, make_tx(quota=QUOTA_LIMIT + 1))
    assert verdict.code == Code.QUOTA and "above the block quota limit" in verdict.error


def test_a_full_pool_refuses_new_transactions(db: LevelDB) -> None:
    admitter = make_admitter(db, capacity=2)
    verdicts = admitter.admit_batch([make_tx(nonce=n) for n in range(3)])
    assert [v.code for v in verdicts] == [Code.OK, Code.OK, Code.POOL_FULL]
    assert "pool is full (2 transactions)" in verdicts[2].error


def test_transactions_are_not_ready_until_the_chain_has_answered(db: LevelDB) -> None:
    admitter = make_admitter(db, ready=False)
    verdict = admit_one(admitter, make_tx())
    assert verdict.code == Code.NOT_READY and "waiting for the chain" in verdict.error
    admitter.on_recent_txs(TIP, [])
    assert admit_one(admitter, make_tx()).ok


def test_transactions_are_not_ready_in_flight_mode(admitter: Admitter) -> None:
    verdict = admit_one(admitter, make_tx(), flight_mode=True)
    assert verdict.code == Code.NOT_READY and "flight mode" in verdict.error
    assert len(admitter.pool) == 0


def test_a_transaction_over_one_mebibyte_is_too_large(admitter: Admitter) -> None:
    raw = make_tx(action=Action.DEPLOY, to=b"", data=b"\x00" * MAX_TX_BYTES, quota=QUOTA_LIMIT)
    verdict = admit_one(admitter, raw)
    assert verdict.code == Code.TOO_LARGE and str(MAX_TX_BYTES) in verdict.error
    assert verdict.tx_hash == keccak(raw)


def test_a_batch_gets_one_verdict_per_transaction_in_order(admitter: Admitter) -> None:
    raws = [make_tx(nonce=0), b"junk", make_tx(nonce=1, chain_id=9), make_tx(nonce=2)]
    codes = [v.code for v in admitter.admit_batch(raws)]
    assert codes == [Code.OK, Code.MALFORMED, Code.WRONG_CHAIN_ID, Code.OK]
    assert [v.tx_hash for v in admitter.admit_batch(raws)] == [keccak(r) for r in raws]


def test_the_signing_hash_read_from_raw_bytes_equals_the_transaction_signing_hash() -> None:
    tx = Transaction(CHAIN_ID, 7, 99, 50_000, b"", 0, Action.DEPLOY, b"\x01" * 300)
    raw = rlp.encode(sign_transaction(tx, KEY))
    parsed = parse_tx(raw)
    assert parsed.signing_hash == tx.signing_hash
    assert parsed.sender() == KEY.address


def test_admitting_a_batch_of_1000_transactions_takes_well_under_half_a_second(db: LevelDB) -> None:
    admitter = make_admitter(db, capacity=10_000)
    raws = [make_tx(nonce=n) for n in range(1000)]
    started = time.process_time()
    verdicts = admitter.admit_batch(raws)
    cpu = time.process_time() - started
    assert all(v.ok for v in verdicts)
    assert cpu < 0.4, f"admitting 1000 txs took {cpu:.3f} s CPU"


# -- the service over a fake bus --------------------------------------------------------------


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
def service(tmp_path: Path) -> Iterator[tuple[AuthService, FakeBus]]:
    Genesis(CHAIN_ID, 0, QUOTA_LIMIT, (KEY.address,), ()).save(tmp_path / "genesis.json")
    bus = FakeBus()
    svc = AuthService(NodeConfig(node_dir=tmp_path, amqp_url="amqp://unused", pool_size=100), bus)
    svc.start()
    yield svc, bus
    svc.close()


def submit(svc: AuthService, bus: FakeBus, raws: list[bytes], request_id: str = "req") -> pb.Message:
    bus.published.clear()
    svc.dispatch(*pack("jsonrpc", "new_tx_batch", pb.NewTxBatch(raw_txs=raws), request_id=request_id))
    [(key, env, _kw)] = bus.published
    assert key == "auth.tx_response"
    return env


def test_the_service_asks_the_chain_for_recent_txs_at_start_and_refuses_txs_until_answered(
        service: tuple[AuthService, FakeBus]) -> None:
    svc, bus = service
    assert bus.keys() == ["auth.recent_txs_req"]
    assert bus.published[0][1].recent_txs_req.blocks == 100
    env = submit(svc, bus, [make_tx()])
    assert env.tx_response.results[0].code == Code.NOT_READY
    svc.dispatch(*pack("chain", "recent_txs", pb.RecentTxs(height=TIP)))
    env = submit(svc, bus, [make_tx(), b"junk"], request_id="r-7")
    assert env.request_id == "r-7"
    assert [(r.ok, r.code) for r in env.tx_response.results] == [(True, 0), (False, Code.MALFORMED)]
    assert env.tx_response.results[0].tx_hash == keccak(make_tx())


def test_the_service_retries_the_recent_txs_request_until_answered(service: tuple[AuthService, FakeBus]) -> None:
    svc, bus = service
    [(_interval, retry)] = bus.timers
    bus.published.clear()
    retry()
    assert bus.keys() == ["auth.recent_txs_req"]
    svc.dispatch(*pack("chain", "recent_txs", pb.RecentTxs(height=TIP)))
    bus.published.clear()
    retry()
    assert bus.published == []


def test_the_service_refuses_txs_between_snapshot_begin_and_end_and_clears_at_clear(
        service: tuple[AuthService, FakeBus]) -> None:
    svc, bus = service
    svc.dispatch(*pack("chain", "recent_txs", pb.RecentTxs(height=TIP)))
    assert submit(svc, bus, [make_tx()]).tx_response.results[0].ok
    for cmd in (pb.Begin, pb.Restore, pb.Clear):
        svc.dispatch(*pack("snapshot", "snapshot_req", pb.SnapshotReq(cmd=cmd, request_id="s")))
    assert submit(svc, bus, [make_tx(nonce=1)]).tx_response.results[0].code == Code.NOT_READY
    assert len(svc.admitter.pool) == 0
    bus.published.clear()
    svc.dispatch(*pack("snapshot", "snapshot_req", pb.SnapshotReq(cmd=pb.End, request_id="s")))
    assert bus.keys() == ["auth.recent_txs_req", "auth.snapshot_resp"]
    assert svc.flight_mode is False
    svc.dispatch(*pack("chain", "recent_txs", pb.RecentTxs(height=TIP)))
    assert submit(svc, bus, [make_tx(nonce=1)]).tx_response.results[0].ok


def test_the_service_replies_with_the_correlation_id_of_a_bus_request(service: tuple[AuthService, FakeBus]) -> None:
    svc, bus = service
    bus.published.clear()

    @dataclass
    class Props:
        correlation_id: str

    svc.dispatch(*pack("jsonrpc", "new_tx_batch", pb.NewTxBatch(raw_txs=[make_tx()])), Props("c-1"))
    assert bus.published[0][2]["correlation_id"] == "c-1"


def test_the_service_answers_block_txs_requests(service: tuple[AuthService, FakeBus]) -> None:
    svc, bus = service
    svc.dispatch(*pack("chain", "recent_txs", pb.RecentTxs(height=TIP)))
    raws = [make_tx(nonce=n) for n in range(3)]
    submit(svc, bus, raws)
    bus.published.clear()
    svc.dispatch(*pack("consensus", "block_txs_req", pb.BlockTxsReq(height=TIP + 1, max_count=2,
                                                                   quota_limit=QUOTA_LIMIT)))
    [(key, env, _kw)] = bus.published
    assert key == "auth.block_txs" and env.block_txs.height == TIP + 1
    assert list(env.block_txs.raw_txs) == raws[:2]
    senders = [rlp.decode(r, SignedTransaction).sender() for r in raws[:2]]
    assert list(env.block_txs.senders) == senders  # recovered at admission, one per raw tx


def test_the_service_follows_new_blocks_and_reports_its_status(service: tuple[AuthService, FakeBus]) -> None:
    svc, bus = service
    svc.dispatch(*pack("chain", "recent_txs", pb.RecentTxs(height=TIP)))
    raw = make_tx()
    submit(svc, bus, [raw])
    nb = pb.NewBlock(height=TIP + 1, hash=b"\x01" * 32,
                     txs=[pb.TxKey(hash=keccak(raw), sender=KEY.address, nonce=0, valid_until_block=TIP + 50)])
    svc.dispatch(*pack("chain", "new_block", nb))
    svc.dispatch(*pack("chain", "rich_status", pb.RichStatus(height=TIP + 1)))
    bus.published.clear()
    svc.dispatch(*pack("cli", "ping", pb.Ping(nonce="x")))
    status = json.loads(bus.published[0][1].pong.status_json)
    assert status == {"flight_mode": False, "ready": True, "tip": TIP + 1, "pool": 0, "recent_window": 1}


def test_the_service_raises_decode_error_on_a_malformed_body(service: tuple[AuthService, FakeBus]) -> None:
    svc, _bus = service
    with pytest.raises(DecodeError):
        svc.dispatch("jsonrpc.new_tx_batch", b"\x0a\xff\xff")

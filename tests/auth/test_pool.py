"""The persistent pool, block filling, the recent window and following the chain."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import rlp

from pycita.crypto import PrivateKey, keccak
from pycita.storage import LevelDB
from pycita.types import Transaction, sign_transaction
from services.auth import schema
from services.auth.admission import Admitter, Rules
from services.auth.pool import PoolTx, RecentWindow, TxKeyView, TxPool

CHAIN_ID = 5
QUOTA_LIMIT = 10_000_000
KEY = PrivateKey(bytes(range(1, 33)))
TO = b"\x44" * 20
TIP = 10


def make_tx(nonce: int, until: int = TIP + 50, quota: int = 21_000) -> bytes:
    return rlp.encode(sign_transaction(Transaction(CHAIN_ID, nonce, until, quota, TO, 1, 0, b""), KEY))


def key_of(raw: bytes, nonce: int) -> TxKeyView:
    return TxKeyView(keccak(raw), KEY.address, nonce)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "auth"


@pytest.fixture
def db(path: Path) -> Iterator[LevelDB]:
    store = LevelDB(path)
    yield store
    store.close()


def make_admitter(db: LevelDB, tip: int = TIP) -> Admitter:
    admitter = Admitter(Rules(CHAIN_ID, QUOTA_LIMIT), TxPool(db, 1000), RecentWindow())
    admitter.pool.load()
    admitter.on_recent_txs(tip, [])
    return admitter


@pytest.fixture
def admitter(db: LevelDB) -> Admitter:
    return make_admitter(db)


# -- persistence ------------------------------------------------------------------------------


def test_accepted_transactions_survive_reopening_the_store_in_arrival_order(path: Path) -> None:
    raws = [make_tx(n) for n in (5, 1, 3)]
    db = LevelDB(path)
    assert all(v.ok for v in make_admitter(db).admit_batch(raws))
    db.close()  # a SIGKILL loses nothing either: the batch was written before the reply
    reopened = LevelDB(path)
    try:
        pool = TxPool(reopened, 1000)
        assert pool.load() == 3
        assert [tx.raw for tx in pool] == raws
        assert [(tx.sender, tx.nonce, tx.valid_until_block, tx.quota) for tx in pool] == \
            [(KEY.address, n, TIP + 50, 21_000) for n in (5, 1, 3)]
        assert pool.has_sender_nonce(KEY.address, 1)
    finally:
        reopened.close()


def test_removed_transactions_stay_removed_after_reopening(path: Path) -> None:
    raws = [make_tx(n) for n in range(3)]
    db = LevelDB(path)
    admitter = make_admitter(db)
    admitter.admit_batch(raws)
    admitter.on_new_block(TIP + 1, [key_of(raws[1], 1)])
    db.close()
    reopened = LevelDB(path)
    try:
        pool = TxPool(reopened, 1000)
        pool.load()
        assert [tx.raw for tx in pool] == [raws[0], raws[2]]
    finally:
        reopened.close()


def test_new_transactions_after_a_reload_keep_arriving_after_the_old_ones(path: Path) -> None:
    db = LevelDB(path)
    make_admitter(db).admit_batch([make_tx(0)])
    db.close()
    db = LevelDB(path)
    try:
        admitter = make_admitter(db)
        admitter.admit_batch([make_tx(1)])
        assert [tx.nonce for tx in admitter.pool] == [0, 1]
        assert [schema.pool_seq(k) for k, _ in db.iterate(prefix=schema.POOL)] == [0, 1]
    finally:
        db.close()


def test_an_unreadable_pool_entry_is_dropped_at_load(db: LevelDB) -> None:
    db.put(schema.pool_key(0), b"\xff garbage")
    db.put(schema.pool_key(1), PoolTx(keccak(make_tx(0)), make_tx(0), KEY.address, 0, TIP + 50, 21_000).encode())
    pool = TxPool(db, 10)
    assert pool.load() == 1
    assert db.get(schema.pool_key(0)) is None


# -- block filling ------------------------------------------------------------------------------


def test_block_txs_are_pool_transactions_in_arrival_order(admitter: Admitter) -> None:
    raws = [make_tx(n) for n in (3, 1, 2)]
    admitter.admit_batch(raws)
    assert admitter.block_txs(TIP + 1, 10, QUOTA_LIMIT) == raws


def test_block_txs_stop_at_max_count(admitter: Admitter) -> None:
    raws = [make_tx(n) for n in range(5)]
    admitter.admit_batch(raws)
    assert admitter.block_txs(TIP + 1, 2, QUOTA_LIMIT) == raws[:2]


def test_block_txs_stay_within_the_quota_limit(admitter: Admitter) -> None:
    raws = [make_tx(0, quota=50_000), make_tx(1, quota=60_000), make_tx(2, quota=30_000)]
    admitter.admit_batch(raws)
    assert admitter.block_txs(TIP + 1, 10, 100_000) == [raws[0], raws[2]]


def test_block_txs_skip_transactions_expired_at_that_height(admitter: Admitter) -> None:
    raws = [make_tx(0, until=TIP + 1), make_tx(1, until=TIP + 2)]
    admitter.admit_batch(raws)
    assert admitter.block_txs(TIP + 2, 10, QUOTA_LIMIT) == [raws[1]]


def test_block_txs_leave_the_pool_untouched(admitter: Admitter) -> None:
    raws = [make_tx(n) for n in range(2)]
    admitter.admit_batch(raws)
    admitter.block_txs(TIP + 1, 10, QUOTA_LIMIT)
    assert admitter.block_txs(TIP + 1, 10, QUOTA_LIMIT) == raws
    assert len(admitter.pool) == 2


def test_block_txs_are_empty_until_auth_is_ready(db: LevelDB) -> None:
    admitter = Admitter(Rules(CHAIN_ID, QUOTA_LIMIT), TxPool(db, 10), RecentWindow())
    admitter.pool.add_many([PoolTx(keccak(make_tx(0)), make_tx(0), KEY.address, 0, TIP + 50, 21_000)])
    assert admitter.block_txs(TIP + 1, 10, QUOTA_LIMIT) == []


# -- following the chain ------------------------------------------------------------------------


def test_a_new_block_removes_its_transactions_from_the_pool_and_remembers_them(admitter: Admitter) -> None:
    raws = [make_tx(n) for n in range(3)]
    admitter.admit_batch(raws)
    admitter.on_new_block(TIP + 1, [key_of(raws[0], 0), key_of(raws[2], 2)])
    assert [tx.raw for tx in admitter.pool] == [raws[1]]
    assert admitter.window.has_hash(keccak(raws[0])) and admitter.window.has_sender_nonce(KEY.address, 2)
    assert admitter.tip == TIP + 1


def test_a_new_block_evicts_pool_transactions_reusing_its_sender_nonces(admitter: Admitter) -> None:
    pooled = make_tx(4)
    admitter.admit_batch([pooled])
    admitter.on_new_block(TIP + 1, [TxKeyView(b"\x09" * 32, KEY.address, 4)])
    assert keccak(pooled) not in admitter.pool


def test_a_redelivered_new_block_changes_nothing(admitter: Admitter) -> None:
    raw = make_tx(0)
    admitter.on_new_block(TIP + 1, [key_of(raw, 0)])
    admitter.on_new_block(TIP + 1, [key_of(raw, 0)])
    assert len(admitter.window) == 1 and admitter.tip == TIP + 1


def test_the_recent_window_forgets_blocks_older_than_the_last_hundred() -> None:
    window = RecentWindow(100)
    for height in range(1, 151):
        window.add_block(height, [TxKeyView(height.to_bytes(32, "big"), KEY.address, height)])
        window.prune(height)
    assert not window.has_block(50) and not window.has_hash((50).to_bytes(32, "big"))
    assert window.has_block(51) and window.has_hash((51).to_bytes(32, "big"))
    assert not window.has_sender_nonce(KEY.address, 50) and window.has_sender_nonce(KEY.address, 51)
    assert len(window) == 100


def test_a_pair_seen_again_in_a_newer_block_outlives_the_older_block() -> None:
    window = RecentWindow(2)
    window.add_block(1, [TxKeyView(b"\x01" * 32, KEY.address, 7)])
    window.add_block(2, [TxKeyView(b"\x02" * 32, KEY.address, 7)])
    window.prune(3)
    assert window.has_sender_nonce(KEY.address, 7)
    window.prune(4)
    assert not window.has_sender_nonce(KEY.address, 7)


def test_after_pruning_a_nonce_from_an_old_block_can_be_used_again(admitter: Admitter) -> None:
    admitter.on_new_block(TIP + 1, [TxKeyView(b"\x01" * 32, KEY.address, 0)])
    assert admitter.admit_batch([make_tx(0, until=TIP + 60)])[0].code == 5
    admitter.on_tip(TIP + 101)
    assert admitter.admit_batch([make_tx(0, until=TIP + 150)])[0].ok


def test_a_new_tip_evicts_expired_transactions(admitter: Admitter) -> None:
    raws = [make_tx(0, until=TIP + 1), make_tx(1, until=TIP + 3)]
    admitter.admit_batch(raws)
    admitter.on_tip(TIP)
    assert [tx.raw for tx in admitter.pool] == raws
    admitter.on_tip(TIP + 1)  # the next block is TIP + 2: the first can no longer enter one
    assert [tx.raw for tx in admitter.pool] == [raws[1]]


def test_a_tip_past_the_window_reports_missed_blocks(admitter: Admitter) -> None:
    assert admitter.on_tip(TIP) is False
    admitter.on_new_block(TIP + 1, [])
    assert admitter.on_tip(TIP + 1) is False
    assert admitter.on_tip(TIP + 2) is True


def test_the_chains_recent_txs_rebuild_the_window_and_purge_the_reloaded_pool(path: Path) -> None:
    raws = [make_tx(n) for n in range(3)]
    db = LevelDB(path)
    make_admitter(db).admit_batch(raws)
    db.close()
    db = LevelDB(path)
    try:
        admitter = Admitter(Rules(CHAIN_ID, QUOTA_LIMIT), TxPool(db, 100), RecentWindow())
        admitter.pool.load()
        admitter.on_recent_txs(TIP + 5, [key_of(raws[0], 0)])
        assert admitter.ready and admitter.tip == TIP + 5
        assert [tx.raw for tx in admitter.pool] == raws[1:]
        assert admitter.window.has_hash(keccak(raws[0]))
    finally:
        db.close()


def test_clearing_forgets_the_pool_and_the_window(admitter: Admitter, db: LevelDB) -> None:
    raw = make_tx(0)
    admitter.admit_batch([raw, make_tx(1)])
    admitter.on_new_block(TIP + 1, [key_of(raw, 0)])
    admitter.clear()
    assert len(admitter.pool) == 0 and len(admitter.window) == 0 and not admitter.ready
    assert list(db.iterate(prefix=schema.POOL)) == []

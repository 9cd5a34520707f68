"""Chain and executor snapshot export -> restore round trip at the domain level (no RabbitMQ).

A real :class:`Chain` and :class:`Executor` produce blocks (transfers, deploys,
ABIs, storage writes) as consensus would; the export runs from a view while
more blocks are committed; the restore stages fresh stores that must hold
exactly what the source held at H, and carry on from there.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import rlp

from pycita.client import Wallet
from pycita.crypto import PrivateKey, keccak
from pycita.genesis import Genesis
from pycita.messages import pb
from pycita.proof import QuorumCert, sign_vote
from pycita.snapshot.errors import SnapshotError
from pycita.snapshot.journal import read_complete_marker
from pycita.storage import LevelDB
from pycita.types import (
    EMPTY_BLOOM,
    ZERO_HASH,
    Block,
    Header,
    SignedTransaction,
    contract_address,
    ordered_root,
)
from services.chain.chain import Chain
from services.chain.snapshot import export_chain, restore_chain
from services.chain.store import ChainStore
from services.executor import schema as exec_schema
from services.executor.executor import Executor
from services.executor.snapshot import export_state, restore_state

pytestmark = pytest.mark.timeout(60)

CHAIN_ID = 11
VALIDATOR = PrivateKey(keccak(b"domain round trip validator"))
ALICE = PrivateKey(keccak(b"domain round trip alice"))
GENESIS = Genesis(CHAIN_ID, 1_700_000_000_000, 10**9, (VALIDATOR.address,),
                  tuple(sorted([(ALICE.address, 10**24), (VALIDATOR.address, 10**20)])))
HISTORY = 4
CODE = b"\x60\x01\x60\x02" * 30
ABI = b'[{"name": "f", "type": "function"}]'


def quorum_cert(height: int, block_hash: bytes) -> bytes:
    sig = sign_vote(VALIDATOR, CHAIN_ID, height, 0, block_hash)
    return QuorumCert(height, 0, block_hash, ((VALIDATOR.address, sig),)).to_proof_bytes()


@dataclass
class Node:
    """A chain store and an executor store driven like consensus drives them."""

    chain_store: ChainStore
    chain: Chain
    kv: LevelDB
    executor: Executor

    @classmethod
    def open(cls, directory: Path) -> Node:
        store = ChainStore(directory / "chain")
        kv = LevelDB(directory / "executor")
        return cls(store, Chain(store, GENESIS), kv, Executor(kv, GENESIS))

    def close(self) -> None:
        self.chain_store.close()
        self.kv.close()

    def produce(self, txs: Sequence[SignedTransaction] = ()) -> bytes:
        tip = self.chain.tip
        header = Header(tip.hash, ZERO_HASH, ordered_root([tx.hash for tx in txs]), ZERO_HASH, EMPTY_BLOOM,
                        tip.height + 1, GENESIS.quota_limit, 0, tip.timestamp + 1000, 0, tip.proof,
                        VALIDATOR.address)
        outcome = self.executor.execute_proposal(rlp.encode(Block(header, list(txs))))
        assert outcome.result is not None, outcome.error
        res = outcome.result
        sealed = header.copy(state_root=res.state_root, receipts_root=res.receipts_root, quota_used=res.quota_used,
                             log_bloom=res.log_bloom)
        committed = self.chain.accept(rlp.encode(Block(sealed, list(txs))), quorum_cert(sealed.number, sealed.hash),
                                      list(res.receipt_rlps))
        assert committed is not None
        assert self.executor.on_chain_block(committed.height, committed.hash, res.state_root) is None
        return committed.hash


@pytest.fixture
def source(tmp_path: Path) -> Iterator[tuple[Node, Wallet, list[bytes], list[bytes]]]:
    """A node at height 12 with accounts, contracts (code, ABI, storage); returns the txs' raw RLPs."""
    node = Node.open(tmp_path / "source")
    wallet = Wallet(ALICE, CHAIN_ID)
    raws: list[bytes] = []
    contracts: list[bytes] = []
    for n in range(12):
        until = node.chain.tip.height + 50
        txs = [wallet.transfer(keccak(b"acct%d" % n)[:20], 1000 + n, until)]
        if n % 3 == 0:
            nonce = wallet.nonces.peek(ALICE.address)
            txs.append(wallet.deploy(CODE + bytes([n]), until))
            contract = contract_address(ALICE.address, nonce)
            contracts.append(contract)
            txs.append(wallet.set_abi(contract, ABI, until))
            txs.append(wallet.store(contract, [(b"k%d" % i, b"v%d-%d" % (n, i)) for i in range(5)], until))
        raws.extend(rlp.encode(tx) for tx in txs)
        node.produce(txs)
    try:
        yield node, wallet, raws, contracts
    finally:
        node.close()


def test_a_chain_and_state_exported_at_h_restore_into_staged_stores_equal_to_the_source_at_h(
        tmp_path: Path, source: tuple[Node, Wallet, list[bytes], list[bytes]]) -> None:
    node, _wallet, _raws, contracts = source
    height = 9
    chain_file = tmp_path / "snaps" / "s_chain.rlp"
    exec_file = tmp_path / "snaps" / "s_executor.rlp"
    with node.chain_store.view() as view:
        node.produce()  # committed after the view was opened: not in the export
        chain_result = export_chain(view, GENESIS, chain_file, height, history_blocks=HISTORY, fsync=False)
    exec_result = export_state(node.kv, GENESIS, exec_file, height, fsync=False)
    src_hash, src_root = node.executor.block_at(height)
    assert (chain_result.height, chain_result.block_hash, chain_result.state_root) == (height, src_hash, src_root)
    assert (exec_result.height, exec_result.block_hash, exec_result.state_root) == (height, src_hash, src_root)
    assert chain_result.last_proof == node.chain_store.proof(height)

    staged_chain = tmp_path / "dest" / "chain.staged"
    staged_exec = tmp_path / "dest" / "executor.staged"
    restored = restore_chain(chain_file, GENESIS, staged_chain, executor_path=exec_file)
    assert (restored.height, restored.block_hash, restored.last_proof) == (height, src_hash,
                                                                          node.chain_store.proof(height))
    restore_state(exec_file, chain_file, GENESIS, staged_exec)
    for staged in (staged_chain, staged_exec):
        assert read_complete_marker(staged) == {"height": height, "block_hash": src_hash, "state_root": src_root}

    store = ChainStore(staged_chain)
    kv = LevelDB(staged_exec)
    try:
        chain = Chain(store, GENESIS)
        assert chain.tip.height == height and chain.tip.hash == src_hash and chain.tip.state_root == src_root
        for h in range(0, height + 1):
            assert store.header_rlp(h) == node.chain_store.header_rlp(h)
            assert store.proof(h) == node.chain_store.proof(h)
            assert store.height_of(node.chain_store.block_hash(h)) == h
            full = h > height - HISTORY
            assert (store.body_rlp(h) == node.chain_store.body_rlp(h)) if full or h == 0 else \
                store.body_rlp(h) is None
            if full:
                assert store.receipts_rlp(h) == node.chain_store.receipts_rlp(h)
                assert store.new_block_msg(h) == node.chain_store.new_block_msg(h)
                for tx in store.transactions(h):
                    assert store.tx_location(keccak(tx)) == node.chain_store.tx_location(keccak(tx))
        assert store.genesis_hash() == GENESIS.hash

        executor = Executor(kv, GENESIS)
        assert (executor.tip.height, executor.tip.block_hash, executor.tip.state_root) == (height, src_hash, src_root)
        for h in range(1, height + 1):
            assert kv.get(exec_schema.header_key(h)) == node.chain_store.header_rlp(h)
            assert executor.block_at(h) == node.executor.block_at(h)
        mine, theirs = executor.state_at(src_root), node.executor.state_at(src_root)
        src_accounts = list(theirs.account_items())
        assert list(mine.account_items()) == src_accounts and len(src_accounts) > 10
        for contract in contracts[:3]:  # deployed in blocks 1, 4 and 7 (the fourth in block 10)
            assert mine.code(contract) == theirs.code(contract) != b""
            assert mine.abi(contract) == theirs.abi(contract) == ABI
            assert list(mine.storage_items(contract)) == list(theirs.storage_items(contract))
            assert mine.storage(contract, b"k1") != b""

        # the restored stores carry on: the source's blocks 10.. apply on top of them
        for h in range(height + 1, node.chain.tip.height + 1):
            blk = node.chain_store.block(h)
            assert blk is not None
            assert chain.accept(blk.block_rlp(), blk.proof, node.chain_store.receipts(h)) is not None
            executor.apply_synced_blocks([blk.block_rlp()], h)
            assert executor.tip.block_hash == blk.hash and executor.tip.state_root == node.executor.block_at(h)[1]
    finally:
        store.close()
        kv.close()


def test_a_restored_chain_exports_again_from_its_restored_height(
        tmp_path: Path, source: tuple[Node, Wallet, list[bytes], list[bytes]]) -> None:
    node = source[0]
    chain_file, exec_file = tmp_path / "a_chain.rlp", tmp_path / "a_executor.rlp"
    with node.chain_store.view() as view:
        export_chain(view, GENESIS, chain_file, 12, history_blocks=HISTORY, fsync=False)
    export_state(node.kv, GENESIS, exec_file, 12, fsync=False)
    restore_chain(chain_file, GENESIS, tmp_path / "c")
    restore_state(exec_file, chain_file, GENESIS, tmp_path / "e")
    store, kv = ChainStore(tmp_path / "c"), LevelDB(tmp_path / "e")
    try:
        with store.view() as view:
            again = export_chain(view, GENESIS, tmp_path / "b_chain.rlp", 12, history_blocks=HISTORY, fsync=False)
        assert again.block_hash == node.chain.tip.hash
        assert export_state(kv, GENESIS, tmp_path / "b_executor.rlp", 12, fsync=False).block_hash == again.block_hash
    finally:
        store.close()
        kv.close()


def test_a_height_above_the_tip_is_refused_and_writes_no_file(
        tmp_path: Path, source: tuple[Node, Wallet, list[bytes], list[bytes]]) -> None:
    node = source[0]
    with node.chain_store.view() as view, pytest.raises(SnapshotError, match="above the chain's tip"):
        export_chain(view, GENESIS, tmp_path / "x_chain.rlp", 99, fsync=False)
    with pytest.raises(SnapshotError, match="has not committed block 99"):
        export_state(node.kv, GENESIS, tmp_path / "x_executor.rlp", 99, fsync=False)
    assert list(tmp_path.glob("x_*")) == []


def test_a_corrupted_chunk_fails_the_restore_naming_file_and_chunk_and_leaves_nothing_staged(
        tmp_path: Path, source: tuple[Node, Wallet, list[bytes], list[bytes]]) -> None:
    node = source[0]
    chain_file, exec_file = tmp_path / "s_chain.rlp", tmp_path / "s_executor.rlp"
    with node.chain_store.view() as view:
        export_chain(view, GENESIS, chain_file, 10, history_blocks=HISTORY, fsync=False)
    export_state(node.kv, GENESIS, exec_file, 10, fsync=False)
    for path in (chain_file, exec_file):
        data = bytearray(path.read_bytes())
        data[5] ^= 0xFF
        path.write_bytes(bytes(data))
    with pytest.raises(SnapshotError) as info:
        restore_chain(chain_file, GENESIS, tmp_path / "c")
    assert "s_chain.rlp" in str(info.value) and "chunk 0" in str(info.value)
    assert not (tmp_path / "c").exists()
    with pytest.raises(SnapshotError) as info:
        restore_state(exec_file, chain_file, GENESIS, tmp_path / "e")
    assert "s_executor.rlp" in str(info.value)
    assert not (tmp_path / "e").exists()


def test_a_trusted_hash_that_differs_and_files_of_different_heights_are_refused(
        tmp_path: Path, source: tuple[Node, Wallet, list[bytes], list[bytes]]) -> None:
    node = source[0]
    chain_file = tmp_path / "s_chain.rlp"
    with node.chain_store.view() as view:
        export_chain(view, GENESIS, chain_file, 10, history_blocks=HISTORY, fsync=False)
    export_state(node.kv, GENESIS, tmp_path / "s_executor.rlp", 11, fsync=False)
    with pytest.raises(SnapshotError, match="trusted"):
        restore_chain(chain_file, GENESIS, tmp_path / "c", trusted_hash=b"\x01" * 32)
    with pytest.raises(SnapshotError, match="differs between"):
        restore_state(tmp_path / "s_executor.rlp", chain_file, GENESIS, tmp_path / "e")
    assert not (tmp_path / "c").exists() and not (tmp_path / "e").exists()


def test_a_cancelled_export_removes_its_partial_file(
        tmp_path: Path, source: tuple[Node, Wallet, list[bytes], list[bytes]]) -> None:
    node = source[0]

    class Cancelled(Exception):
        pass

    def check() -> None:
        raise Cancelled

    with node.chain_store.view() as view, pytest.raises(Cancelled):
        export_chain(view, GENESIS, tmp_path / "s_chain.rlp", 10, check=check, fsync=False)
    with pytest.raises(Cancelled):
        export_state(node.kv, GENESIS, tmp_path / "s_executor.rlp", 10, check=check, fsync=False)
    assert list(tmp_path.glob("s_*")) == []


def test_the_executor_stores_the_sealed_header_of_each_committed_block(
        source: tuple[Node, Wallet, list[bytes], list[bytes]]) -> None:
    node = source[0]
    for h in range(1, node.chain.tip.height + 1):
        assert node.kv.get(exec_schema.header_key(h)) == node.chain_store.header_rlp(h)
    nb = pb.NewBlock()
    nb.ParseFromString(node.chain_store.new_block_msg(3) or b"")
    assert nb.height == 3

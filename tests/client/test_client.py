"""The client's builders sign recoverable transactions with the right quota; the load drives a fake node."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rlp

from pycita.client import (
    Client,
    NonceAllocator,
    RpcError,
    RpcTransportError,
    Wallet,
    deploy,
    encode_store_data,
    set_abi,
    store,
    transfer,
)
from pycita.config import NodeConfig, write_node_config
from pycita.crypto import PrivateKey, keccak
from pycita.genesis import Genesis
from pycita.load import MIX, LoadReport, kind_cycle, run_load, signing_rate
from pycita.quota import intrinsic_quota
from pycita.types import Action, SignedTransaction, contract_address, decode_as
from services.jsonrpc.server import JsonRpcApp, JsonRpcFailure, Query, RpcHttpServer, TxOutcome

KEY = PrivateKey(b"\x05" * 32)
CONTRACT = b"\x33" * 20


def roundtrip(tx: SignedTransaction) -> SignedTransaction:
    return decode_as(rlp.encode(tx), SignedTransaction, "tx")  # type: ignore[return-value]


def test_a_transfer_recovers_to_its_signer_and_costs_the_base_quota() -> None:
    tx = roundtrip(transfer(KEY, b"\x22" * 20, 10, nonce=3, valid_until_block=90, chain_id=5))
    assert tx.sender() == KEY.address
    assert (tx.chain_id, tx.nonce, tx.valid_until_block, tx.to, tx.value) == (5, 3, 90, b"\x22" * 20, 10)
    assert tx.action == Action.TRANSFER and tx.quota == 21_000


def test_a_deploy_has_no_recipient_and_pays_200_per_code_byte() -> None:
    tx = roundtrip(deploy(KEY, b"\x60" * 100, nonce=0, valid_until_block=9, chain_id=1))
    assert tx.sender() == KEY.address and tx.to == b"" and tx.action == Action.DEPLOY
    assert tx.quota == 21_000 + 200 * 100


def test_set_abi_pays_10_per_abi_byte() -> None:
    tx = roundtrip(set_abi(KEY, CONTRACT, b"[]" * 10, nonce=0, valid_until_block=9, chain_id=1))
    assert tx.sender() == KEY.address and tx.to == CONTRACT and tx.action == Action.SET_ABI
    assert tx.quota == 21_000 + 10 * 20


def test_store_pays_per_pair_and_per_value_byte() -> None:
    pairs = [(b"k1", b"v" * 32), (b"k2", b"")]
    tx = roundtrip(store(KEY, CONTRACT, pairs, nonce=0, valid_until_block=9, chain_id=1))
    assert tx.sender() == KEY.address and tx.action == Action.STORE
    assert rlp.decode(tx.data) == [[b"k1", b"v" * 32], [b"k2", b""]]
    assert tx.quota == 21_000 + 2 * 20_000 + 10 * 32


def test_an_explicit_quota_overrides_the_intrinsic_one() -> None:
    assert transfer(KEY, b"\x22" * 20, 1, 0, 9, 1, quota=5).quota == 5


def test_malformed_store_data_costs_only_the_base_quota() -> None:
    assert intrinsic_quota(Action.STORE, b"\xff\x00") == 21_000
    assert intrinsic_quota(Action.STORE, encode_store_data([(b"a", b"bc")])) == 41_020


def test_the_tx_hash_is_keccak_of_the_signed_rlp() -> None:
    tx = transfer(KEY, b"\x22" * 20, 1, 0, 9, 1)
    assert tx.hash == keccak(rlp.encode(tx))


def test_a_wallet_numbers_its_transactions_from_its_start_nonce() -> None:
    wallet = Wallet(KEY, chain_id=1, next_nonce=7)
    txs = [wallet.transfer(b"\x22" * 20, 1, 50), wallet.deploy(b"\x01", 50), wallet.store(CONTRACT, [], 50)]
    assert [t.nonce for t in txs] == [7, 8, 9]
    assert all(t.sender() == KEY.address for t in txs)


def test_the_nonce_allocator_never_hands_out_a_nonce_twice_across_threads() -> None:
    nonces = NonceAllocator()
    got: list[int] = []
    lock = threading.Lock()

    def grab() -> None:
        mine = [nonces.allocate(KEY.address) for _ in range(500)]
        with lock:
            got.extend(mine)

    threads = [threading.Thread(target=grab) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(2000))
    assert nonces.allocate(b"\x01" * 20, count=3) == 0 and nonces.peek(b"\x01" * 20) == 3


def test_rpc_error_exposes_the_auth_code() -> None:
    err = RpcError(-32003, "transaction rejected", {"code": 4, "reason": "duplicate"})
    assert err.auth_code == 4 and err.code == -32003
    assert RpcError(-32000, "timeout").auth_code is None


def test_an_unreachable_node_raises_a_transport_error() -> None:
    with pytest.raises(RpcTransportError):
        Client("http://127.0.0.1:1", timeout=2).block_number()


def test_the_load_mix_cycle_has_the_documented_shares() -> None:
    cycle = kind_cycle()
    assert len(cycle) == 20
    assert {k: cycle.count(k) for k, _ in MIX} == dict(MIX)


def test_signing_is_fast_enough_for_a_thousand_tx_per_second() -> None:
    assert signing_rate(500) > 1000


# --------------------------------------------------------------- the load against a fake node

class FakeChain:
    """A node behind JsonRpcApp: each sendRawTransaction batch becomes the next block at once."""

    def __init__(self) -> None:
        self.flight_mode = False
        self.blocks: list[list[bytes]] = [[]]
        self.receipts: dict[bytes, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.account_nonce: dict[bytes, int] = {}
        self.actions: list[int] = []

    def send_txs(self, raw_txs: list[bytes], timeout: float) -> list[TxOutcome]:
        out = []
        with self.lock:
            block: list[bytes] = []
            for raw in raw_txs:
                tx: SignedTransaction = rlp.decode(raw, SignedTransaction)
                sender = tx.sender()
                n = self.account_nonce.get(sender, 0)
                self.account_nonce[sender] = n + 1
                assert tx.quota >= intrinsic_quota(tx.action, tx.data)
                self.actions.append(tx.action)
                h = keccak(raw)
                addr = contract_address(sender, n) if tx.action == Action.DEPLOY else b""
                self.receipts[h] = {"transactionHash": "0x" + h.hex(),
                                    "contractAddress": "0x" + addr.hex() if addr else None}
                block.append(h)
                out.append(TxOutcome(True, 0, "", h))
            self.blocks.append(block)
        return out

    def query_many(self, queries: list[Query], timeout: float) -> list[Any]:
        out: list[Any] = []
        with self.lock:
            for q in queries:
                if q.method == "blockNumber":
                    out.append(hex(len(self.blocks) - 1))
                elif q.method == "getTransactionCount":
                    out.append("0x0")
                elif q.method == "getBlockByNumber":
                    n = int(q.params[0], 16)
                    out.append({"number": hex(n), "transactions": ["0x" + h.hex() for h in self.blocks[n]]}
                               if n < len(self.blocks) else None)
                elif q.method == "getTransactionReceipt":
                    out.append(self.receipts.get(bytes.fromhex(q.params[0][2:])))
                else:
                    out.append(JsonRpcFailure(-32601, q.method))
        return out

    def health(self) -> dict[str, Any]:
        return {"status": "ok"}


@pytest.fixture
def fake_node(tmp_path: Path) -> Iterator[tuple[Path, FakeChain, int]]:
    chain = FakeChain()
    srv = RpcHttpServer("127.0.0.1", 0, JsonRpcApp(chain))
    srv.start()
    node = tmp_path / "0"
    node.mkdir()
    write_node_config(NodeConfig(node_dir=node, amqp_url="amqp://unused", jsonrpc_port=srv.port, block_interval=0.2))
    Genesis(chain_id=3, timestamp=0, quota_limit=10**9, validators=(KEY.address,), alloc=()).save(node / "genesis.json")
    yield node, chain, srv.port
    srv.stop()


def test_the_load_sends_the_mix_and_waits_for_every_transaction_to_commit(
        fake_node: tuple[Path, FakeChain, int]) -> None:
    node, chain, _ = fake_node
    keys = [PrivateKey(bytes([i]) * 32) for i in range(1, 5)]
    report = run_load(node, tps=400, duration=1.0, progress=False, seed=1, keys=keys, receipt_timeout=10)
    assert isinstance(report, LoadReport)
    assert report.sent == 400 and report.accepted == 400 and report.rejected == {}
    assert report.committed == 400 and report.pending == 0 and report.blocks >= 1
    assert report.by_kind["deploy"] == 40 and report.by_kind["store"] == 80
    assert report.substituted < 80 + 20  # contracts get known during the run
    assert sum(len(b) for b in chain.blocks) == 400
    assert {Action.TRANSFER, Action.DEPLOY, Action.SET_ABI, Action.STORE} <= set(chain.actions)

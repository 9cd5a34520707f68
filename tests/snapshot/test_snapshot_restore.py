"""Snapshot and restore of a real node (real RabbitMQ, real services, the real snapshot_tool).

A node with traffic (transfers to new accounts, contracts with code, ABI and
storage) is snapshotted at height 20 while blocks keep coming; a fresh node
of the same chain is started from that snapshot and must hold exactly the
source's block 20 and state, produce new blocks, accept new transactions and
refuse the replay of a recent one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import rlp

from pycita.client import Client, RpcError, Wallet
from pycita.crypto import keccak
from pycita.genesis import Genesis
from pycita.testtools import Network, Node, Snapshot
from pycita.types import contract_address

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SNAPSHOT_HEIGHT = 20
DUPLICATE = 4
NOT_READY = 9
CODE = b"\x60\x80\x60\x40\x52" * 20
ABI = b'[{"type": "function", "name": "get", "inputs": []}]'


@dataclass
class Traffic:
    """What the source node was sent: raw txs, the accounts and contracts they touched."""

    raws: list[bytes] = field(default_factory=list)
    accounts: list[bytes] = field(default_factory=list)
    contracts: list[bytes] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)


def _send(client: Client, traffic: Traffic, txs: list) -> None:  # type: ignore[type-arg]
    hashes = client.send_raw_transactions(txs)
    for tx, result in zip(txs, hashes, strict=True):
        if isinstance(result, RpcError):
            raise result
        traffic.raws.append(rlp.encode(tx))


def _seed_state(client: Client, wallet: Wallet, traffic: Traffic) -> None:
    """Three contracts with code, ABI and storage, and a few funded accounts, all executed."""
    until = client.block_number() + 90
    txs = []
    for i in range(3):
        nonce = wallet.nonces.peek(wallet.address)
        txs.append(wallet.deploy(CODE + bytes([i]), until))
        contract = contract_address(wallet.address, nonce)
        traffic.contracts.append(contract)
        txs.append(wallet.set_abi(contract, ABI + bytes([0x20] * i), until))
        txs.append(wallet.store(contract, [(b"slot%d" % j, b"value-%d-%d" % (i, j)) for j in range(6)], until))
    for i in range(5):
        addr = keccak(b"snapshot test account %d" % i)[:20]
        traffic.accounts.append(addr)
        txs.append(wallet.transfer(addr, 10**15 + i, until))
    _send(client, traffic, txs)
    client.wait_for_receipt(txs[-1].hash, timeout=30)
    for tx in txs:
        receipt = client.get_receipt(tx.hash)
        assert receipt is not None and receipt["status"] in (1, "0x1"), receipt


def _keep_sending(client: Client, wallet: Wallet, traffic: Traffic) -> None:
    """Transfers and storage writes every ~0.2 s until stopped (blocks keep changing the state)."""
    n = 0
    try:
        while not traffic.stop.wait(0.2):
            until = client.block_number() + 90
            txs = [wallet.transfer(traffic.accounts[n % len(traffic.accounts)], 1 + n, until),
                   wallet.store(traffic.contracts[n % 3], [(b"slot%d" % (n % 6), b"later-%d" % n)], until)]
            _send(client, traffic, txs)
            n += 1
    except BaseException as exc:  # reported by the test
        traffic.errors.append(exc)


def _raw_tx_of_block_near(client: Client, traffic: Traffic, height: int) -> bytes:
    """A raw transaction the source executed in one of the blocks ``height``, ``height - 1``, ..."""
    by_hash = {keccak(raw): raw for raw in traffic.raws}
    for h in range(height, 0, -1):
        block = client.get_block(h)
        assert block is not None
        for tx_hash in block["transactions"]:
            raw = by_hash.get(bytes.fromhex(tx_hash.removeprefix("0x")))
            if raw is not None:
                return raw
    raise AssertionError(f"no block up to {height} holds a transaction of the test")


def _send_refused(client: Client, raw: bytes, timeout: float = 10.0) -> int | None:
    """The auth code refusing ``raw`` (waiting out NOT_READY while auth reloads its window)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.send_raw_transaction(raw)
        except RpcError as exc:
            if exc.auth_code == NOT_READY and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            return exc.auth_code
        return None


@pytest.fixture
def source(network: Network) -> Iterator[tuple[Node, Traffic, Wallet]]:
    node = network.node
    chain_id = Genesis.load(node.directory / "genesis.json").chain_id
    wallet = Wallet.from_node(node.api, node.accounts()[0].key(), chain_id)
    traffic = Traffic()
    _seed_state(node.api, wallet, traffic)
    sender = threading.Thread(target=_keep_sending, args=(Client(node.jsonrpc_url), wallet, traffic), daemon=True)
    sender.start()
    try:
        yield node, traffic, wallet
    finally:
        traffic.stop.set()
        sender.join(10)


def test_a_fresh_node_restored_from_a_snapshot_taken_under_traffic_holds_the_same_block_and_state(
        source: tuple[Node, Traffic, Wallet], tmp_path: Path) -> None:
    node, traffic, wallet = source
    node.wait_for_block(SNAPSHOT_HEIGHT + 10, timeout=60)

    snapshot = node.dump_snapshot(height=SNAPSHOT_HEIGHT)  # blocks and traffic keep coming meanwhile
    assert snapshot.height == SNAPSHOT_HEIGHT
    assert snapshot.info["files_agree"] is True
    assert node.wait_for_blocks(2) > SNAPSHOT_HEIGHT + 10
    traffic.stop.set()
    assert not traffic.errors, traffic.errors

    fresh = node.fresh_copy(tmp_path / "fresh")
    try:
        fresh.run(load_snapshot_from=snapshot.copy_to(tmp_path / "elsewhere"))
        assert fresh.get_height() >= SNAPSHOT_HEIGHT

        mine, theirs = fresh.api, node.api
        src_block = theirs.get_block(SNAPSHOT_HEIGHT)
        block = mine.get_block(SNAPSHOT_HEIGHT)
        assert src_block is not None and block is not None
        assert block["hash"] == src_block["hash"] == snapshot.block_hash
        assert block["stateRoot"] == src_block["stateRoot"] == snapshot.state_root
        assert block["transactions"] == src_block["transactions"]

        h = SNAPSHOT_HEIGHT
        for addr in [wallet.address, *traffic.accounts, *traffic.contracts]:
            assert mine.get_balance(addr, h) == theirs.get_balance(addr, h)
            assert mine.get_transaction_count(addr, h) == theirs.get_transaction_count(addr, h)
        for contract in traffic.contracts:
            assert mine.get_code(contract, h) == theirs.get_code(contract, h) != b""
            assert mine.get_abi(contract, h) == theirs.get_abi(contract, h) != b""
            for j in range(6):
                key = b"slot%d" % j
                assert mine.get_storage_at(contract, key, h) == theirs.get_storage_at(contract, key, h) != b""

        # it refuses the replay of a transaction of its last 100 blocks (auth reloaded them at End) ...
        raw = _raw_tx_of_block_near(theirs, traffic, SNAPSHOT_HEIGHT)
        assert _send_refused(mine, raw) == DUPLICATE

        # ... carries on with new blocks (the chain accepts only blocks with valid proofs) ...
        fresh.wait_for_block(SNAPSHOT_HEIGHT + 3, timeout=30)
        nxt = mine.get_block(SNAPSHOT_HEIGHT + 1)
        assert nxt is not None and nxt["parentHash"] == snapshot.block_hash and nxt["proof"] not in ("", "0x")

        # ... and accepts and executes a new transaction
        fresh_wallet = Wallet.from_node(mine, wallet.key, wallet.chain_id)
        tx = fresh_wallet.transfer(b"\x42" * 20, 777, mine.block_number() + 50)
        mine.send_raw_transaction(tx)
        receipt = mine.wait_for_receipt(tx.hash, timeout=30)
        assert receipt["status"] in (1, "0x1")
        assert mine.get_balance(b"\x42" * 20) == 777

        st = fresh.status()
        assert not any((svc["status"] or {}).get("flight_mode") for svc in st["services"].values()), st
    finally:
        fresh.close()


def test_a_snapshot_can_be_loaded_from_a_path_prefix(source: tuple[Node, Traffic, Wallet], tmp_path: Path) -> None:
    node = source[0]
    node.wait_for_block(8, timeout=60)
    snapshot = node.dump_snapshot(name="early", height=5)
    copy = snapshot.copy_to(tmp_path / "copies", name="snap")
    assert isinstance(Snapshot.from_prefix(tmp_path / "copies" / "snap"), Snapshot)
    fresh = node.fresh_copy(tmp_path / "fresh")
    try:
        fresh.run(load_snapshot_from=tmp_path / "copies" / "snap")
        assert fresh.api.get_block(5)["hash"] == copy.block_hash  # type: ignore[index]
        fresh.wait_for_block(7, timeout=30)
    finally:
        fresh.close()

"""End to end on a real node: every kind of transaction, 200 of each, over JSON-RPC.

Transfers to new accounts, deploys, SET_ABIs and STOREs are submitted in
JSON-RPC batches; every one must land in a block with a successful receipt,
and balances, nonces, code, ABI and storage must read back as sent. Finally
the node is stopped and a fresh executor replays the chain's stored blocks
from genesis: it must reach the state root of the header at every height.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
import rlp

from pycita.client import Client, RpcError, Wallet, from_hex, to_hex
from pycita.execution import replay_blocks
from pycita.genesis import Genesis
from pycita.testtools import Node
from pycita.types import Block, SignedTransaction, contract_address, decode_as
from services.chain.store import ChainStore

pytestmark = pytest.mark.slow

N = 200
BATCH = 100
NOT_READY = 9
FUNDED = 10**30  # pycita.node.DEFAULT_FUNDED_BALANCE


def _send_all(api: Client, txs: list[SignedTransaction]) -> list[bytes]:
    """Send ``txs`` in JSON-RPC batches; every one must be accepted. Returns their hashes."""
    hashes: list[bytes] = []
    for start in range(0, len(txs), BATCH):
        chunk = txs[start:start + BATCH]
        results = api.send_raw_transactions(chunk)
        for tx, result in zip(chunk, results, strict=True):
            assert not isinstance(result, RpcError), f"tx 0x{tx.hash.hex()} refused: {result}"
            assert result == tx.hash
            hashes.append(result)
    return hashes


def _wait_receipts(api: Client, hashes: list[bytes], timeout: float) -> list[dict[str, Any]]:
    """Poll (in batches) until every receipt exists; returns them in the order of ``hashes``."""
    receipts: dict[bytes, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while True:
        missing = [h for h in hashes if h not in receipts]
        for start in range(0, len(missing), BATCH):
            chunk = missing[start:start + BATCH]
            for h, r in zip(chunk, api.batch([("getTransactionReceipt", [to_hex(h)]) for h in chunk]), strict=True):
                assert not isinstance(r, RpcError), r
                if r is not None:
                    receipts[h] = r
        if len(receipts) == len(hashes):
            return [receipts[h] for h in hashes]
        assert time.monotonic() < deadline, (
            f"{len(hashes) - len(receipts)} of {len(hashes)} transactions not in a block after {timeout} s")
        time.sleep(0.3)


def _batch_ok(api: Client, calls: list[tuple[str, list[Any]]]) -> list[Any]:
    out: list[Any] = []
    for start in range(0, len(calls), BATCH):
        results = api.batch(calls[start:start + BATCH])
        for call, r in zip(calls[start:start + BATCH], results, strict=True):
            assert not isinstance(r, RpcError), f"{call}: {r}"
        out.extend(results)
    return out


def _assert_success(receipts: list[dict[str, Any]], sender: bytes) -> None:
    for r in receipts:
        assert r["status"] == "0x1", r
        assert r["errorMessage"] is None, r
        assert r["from"] == to_hex(sender), r


@pytest.mark.timeout(150)
def test_two_hundred_transactions_of_every_kind_land_and_replay_to_the_same_state_roots(node: Node) -> None:
    api = node.api
    genesis = Genesis.load(node.config.genesis_path)
    payer, deployer, writer = (a.key() for a in node.accounts()[:3])
    wallets = {name: Wallet.from_node(api, key, genesis.chain_id)
               for name, key in (("payer", payer), ("deployer", deployer), ("writer", writer))}
    assert all(w.nonces.peek(w.address) == 0 for w in wallets.values())

    # -- phase 1: transfers to new accounts and deploys --------------------------------
    until = api.block_number() + 90
    recipients = [os.urandom(20) for _ in range(N)]
    values = [1_000 + i for i in range(N)]
    codes = [b"\x60\x80\x60\x40" + i.to_bytes(2, "big") + os.urandom(26) for i in range(N)]
    transfers = [wallets["payer"].transfer(to, v, until) for to, v in zip(recipients, values, strict=True)]
    deploys = [wallets["deployer"].deploy(code, until) for code in codes]
    # interleave the kinds so that blocks mix them
    phase1 = [tx for pair in zip(transfers, deploys, strict=True) for tx in pair]
    hashes1 = _send_all(api, phase1)
    receipts1 = _wait_receipts(api, hashes1, timeout=40)
    transfer_receipts, deploy_receipts = receipts1[0::2], receipts1[1::2]
    _assert_success(transfer_receipts, wallets["payer"].address)
    _assert_success(deploy_receipts, wallets["deployer"].address)
    for r in transfer_receipts:
        assert r["contractAddress"] is None, r
    contracts = [from_hex(r["contractAddress"]) for r in deploy_receipts]
    # the deployer sent nothing before: deploy k saw account nonce k
    assert contracts == [contract_address(wallets["deployer"].address, k) for k in range(N)]

    # -- phase 2: SET_ABI (by the deployer) and STORE (by another account) -------------
    until = api.block_number() + 90
    abis = [b'[{"type":"function","name":"f%d","inputs":[]}]' % i for i in range(N)]
    slots = [[(b"key-%d" % i, b"value-%d" % i), (b"\x01", i.to_bytes(4, "big")), (b"gone", b"")]
             for i in range(N)]
    set_abis = [wallets["deployer"].set_abi(c, abi, until) for c, abi in zip(contracts, abis, strict=True)]
    stores = [wallets["writer"].store(c, pairs, until) for c, pairs in zip(contracts, slots, strict=True)]
    phase2 = [tx for pair in zip(set_abis, stores, strict=True) for tx in pair]
    hashes2 = _send_all(api, phase2)
    receipts2 = _wait_receipts(api, hashes2, timeout=40)
    _assert_success(receipts2[0::2], wallets["deployer"].address)
    _assert_success(receipts2[1::2], wallets["writer"].address)
    for r in receipts2:
        assert r["contractAddress"] is None, r

    # every transaction is in exactly one block, where getTransaction says it is
    all_hashes = hashes1 + hashes2
    assert len(set(all_hashes)) == 4 * N
    txs = _batch_ok(api, [("getTransaction", [to_hex(h)]) for h in all_hashes])
    for h, tx, r in zip(all_hashes, txs, receipts1 + receipts2, strict=True):
        assert tx is not None and tx["hash"] == to_hex(h)
        assert tx["blockNumber"] == r["blockNumber"] and tx["index"] == r["index"]

    # -- state read back over JSON-RPC ---------------------------------------------------
    tip = api.block_number()
    balances = _batch_ok(api, [("getBalance", [to_hex(a), "latest"]) for a in recipients])
    assert [int(b, 16) for b in balances] == values
    assert api.get_balance(wallets["payer"].address) == FUNDED - sum(values)
    assert api.get_balance(wallets["deployer"].address) == FUNDED
    assert api.get_balance(wallets["writer"].address) == FUNDED
    assert api.get_transaction_count(wallets["payer"].address) == N
    assert api.get_transaction_count(wallets["deployer"].address) == 2 * N
    assert api.get_transaction_count(wallets["writer"].address) == N
    recipient_nonces = _batch_ok(api, [("getTransactionCount", [to_hex(a), "latest"]) for a in recipients])
    assert set(recipient_nonces) == {"0x0"}
    contract_nonces = _batch_ok(api, [("getTransactionCount", [to_hex(c), "latest"]) for c in contracts])
    assert [int(n, 16) for n in contract_nonces] == [k + 1 for k in range(N)]
    got_codes = _batch_ok(api, [("getCode", [to_hex(c), "latest"]) for c in contracts])
    assert [from_hex(c) for c in got_codes] == codes
    got_abis = _batch_ok(api, [("getAbi", [to_hex(c), "latest"]) for c in contracts])
    assert [from_hex(a) for a in got_abis] == abis
    storage_calls = [("getStorageAt", [to_hex(c), to_hex(k), "latest"])
                     for c, pairs in zip(contracts, slots, strict=True) for k, _v in pairs]
    got_storage = _batch_ok(api, storage_calls)
    assert [from_hex(v) for v in got_storage] == [v for pairs in slots for _k, v in pairs]
    # the state before phase 2 (at the block of the first deploy) had no ABI and no storage yet
    first = int(deploy_receipts[0]["blockNumber"], 16)
    assert api.get_abi(contracts[0], first) == b""
    assert api.get_storage_at(contracts[0], b"key-0", first) == b""
    assert api.get_code(contracts[0], first) == codes[0]

    rpc_headers = _batch_ok(api, [("getBlockByNumber", [hex(h), False]) for h in range(tip + 1)])

    # -- replay the stored chain from genesis with a fresh executor ----------------------
    node.stop()
    store = ChainStore(node.config.service_data("chain"))
    try:
        stored_tip = store.tip()
        assert stored_tip is not None and stored_tip[0] >= tip
        stored = list(store.iter_blocks(0, stored_tip[0]))
    finally:
        store.close()
    assert [b.height for b in stored] == list(range(stored_tip[0] + 1))
    blocks: list[Block] = [decode_as(b.block_rlp(), Block, f"stored block {b.height}")  # type: ignore[misc]
                           for b in stored[1:]]
    assert blocks[0].header.parent_hash == genesis.hash
    # what JSON-RPC served is what the store holds
    for rpc_block, b in zip(rpc_headers, stored, strict=False):
        assert rpc_block["hash"] == to_hex(b.hash)
        assert rpc_block["stateRoot"] == to_hex(rlp.decode(b.header)[1])
    in_blocks = {tx.hash for block in blocks for tx in block.transactions}
    assert set(all_hashes) <= in_blocks

    roots = replay_blocks(genesis, blocks, verify=True)
    assert len(roots) == len(blocks)
    for block, root in zip(blocks, roots, strict=True):
        assert root == block.header.state_root, f"state root differs at height {block.header.number}"

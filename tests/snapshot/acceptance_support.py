"""The source chain shared by ``test_acceptance_restore.py`` and ``test_acceptance_cli.py``.

One session-scoped fixture, ``acceptance_chain`` (declared in this directory's
``conftest.py`` so that both modules share one instance; its body is
:func:`build_acceptance_chain`), builds:

* a running one-node network (block interval 0.3 s) whose chain reaches
  height >= 121 with, all executed by block 100:

  - 504 contracts, each with its own code (7 distinct codes, so the blob
    dedupe of the executor file is exercised), an ABI and 3 storage slots,
    deployed by 7 funded senders through JSON-RPC batches;
  - one *big* contract whose storage holds 22 random values of 200 KiB
    (4.4 MiB: more than a chunk, so its fat RLP must be split);
  - two "hot" contracts and a stream of new accounts written by a background
    sender every ~0.25 s (which keeps running while the snapshot is taken);

* ``snapshot_tool -m snapshot -e 100 -f at100`` taken on it while blocks keep
  coming (the heights before and after the export are recorded);

* a *rival* node: another node of the same genesis (same validator key, its
  own vhost and data) that produces its own chain from genesis, with its own
  transactions (a deployer and recipients that the source never uses), for
  the restore-over-another-chain test.

Funded accounts: 0 the big contract, 1..7 the 504 contracts, 8 the rival's
deployer (never used on the source), 9 the background sender.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import rlp

from pycita.client import Client, RpcError, Wallet, to_hex
from pycita.crypto import keccak
from pycita.genesis import Genesis
from pycita.testtools import CleanupPolicy, Network, Node, Snapshot
from pycita.types import SignedTransaction, contract_address

SNAPSHOT_HEIGHT = 100
SOURCE_MIN_HEIGHT = 121
CONTRACT_SENDERS = (1, 2, 3, 4, 5, 6, 7)
CONTRACTS_PER_SENDER = 72  # 7 * 72 = 504 contracts
SLOTS_PER_CONTRACT = 3
BIG_VALUES = 22
BIG_VALUE_SIZE = 200 * 1024  # 22 * 200 KiB = 4.4 MiB > the 4 MiB chunk bound
BIG_SENDER = 0
RIVAL_SENDER = 8
TRAFFIC_SENDER = 9
VALID_AHEAD = 80
CODES = tuple(b"\x60\x80\x60\x40\x52" * 8 + bytes([i]) * 16 for i in range(7))


def hexq(n: int) -> str:
    return hex(n)


@dataclass
class ContractSpec:
    """A contract the test made, with what it wrote (``storage`` may be partial for hot contracts)."""

    address: bytes
    deployer: bytes
    code: bytes
    abi: bytes
    storage: dict[bytes, bytes] = field(default_factory=dict)


class Traffic(threading.Thread):
    """Background sender: a transfer to a new account and a STORE into a hot contract every ~0.25 s."""

    def __init__(self, url: str, wallet: Wallet, hot: Sequence[ContractSpec]) -> None:
        super().__init__(name="acceptance-traffic", daemon=True)
        self.client = Client(url)
        self.wallet = wallet
        self.hot = list(hot)
        self.raws: dict[bytes, bytes] = {}
        self.new_accounts: list[bytes] = []
        self.errors: list[BaseException] = []
        self.stop_event = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        n = 0
        try:
            while not self.stop_event.wait(0.25):
                until = self.client.block_number() + VALID_AHEAD
                addr = keccak(b"acceptance new account %d" % n)[:20]
                txs = [self.wallet.transfer(addr, 10**12 + n, until),
                       self.wallet.store(self.hot[n % len(self.hot)].address,
                                         [(b"hot%d" % (n % 4), b"hot value %d" % n)], until)]
                results = self.client.send_raw_transactions(txs)
                for tx, result in zip(txs, results, strict=True):
                    if isinstance(result, RpcError):
                        raise result
                    with self._lock:
                        self.raws[tx.hash] = rlp.encode(tx)
                with self._lock:
                    self.new_accounts.append(addr)
                n += 1
        except BaseException as exc:  # reported by the tests
            self.errors.append(exc)

    def snapshot_raws(self) -> dict[bytes, bytes]:
        with self._lock:
            return dict(self.raws)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(15)


@dataclass
class AcceptanceChain:
    network: Network
    node: Node
    genesis: Genesis
    genesis_hash: str
    contracts: list[ContractSpec]
    big: ContractSpec
    hot: list[ContractSpec]
    funded: list[bytes]
    traffic: Traffic
    setup_receipts: dict[bytes, dict[str, Any]]
    snapshot: Snapshot
    export_heights: tuple[int, int]
    rival: Node
    rival_contracts: list[ContractSpec]
    rival_accounts: list[bytes]

    @property
    def known_accounts(self) -> list[bytes]:
        """Every account the test created or used on the source (some may postdate block 100)."""
        out = list(self.funded) + [c.address for c in (*self.contracts, self.big, *self.hot)]
        out += self.traffic.new_accounts
        return list(dict.fromkeys(out))


# ------------------------------------------------------------------ helpers


def send_all(client: Client, txs: Sequence[SignedTransaction], per_request: int = 200) -> list[bytes]:
    """Send ``txs`` in JSON-RPC batches; every one must be accepted. Returns their hashes."""
    hashes: list[bytes] = []
    for i in range(0, len(txs), per_request):
        part = txs[i:i + per_request]
        results = client.send_raw_transactions(part)
        for tx, result in zip(part, results, strict=True):
            if isinstance(result, RpcError):
                raise AssertionError(f"tx 0x{tx.hash.hex()} (action {tx.action}) refused: {result}")
            assert result == tx.hash
            hashes.append(tx.hash)
    return hashes


def batch_call(client: Client, calls: Sequence[tuple[str, Sequence[Any]]], per_request: int = 400) -> list[Any]:
    """``client.batch`` in slices; an error item raises."""
    out: list[Any] = []
    for i in range(0, len(calls), per_request):
        results = client.batch(calls[i:i + per_request])
        for call, result in zip(calls[i:i + per_request], results, strict=True):
            if isinstance(result, RpcError):
                raise AssertionError(f"{call[0]}{tuple(call[1])} failed: {result}")
        out.extend(results)
    return out


def wait_for_receipts(client: Client, hashes: Sequence[bytes], timeout: float) -> dict[bytes, dict[str, Any]]:
    """Poll (in batches) until every tx has a receipt; returns them by hash."""
    deadline = time.monotonic() + timeout
    found: dict[bytes, dict[str, Any]] = {}
    while True:
        missing = [h for h in hashes if h not in found]
        if not missing:
            return found
        results = batch_call(client, [("getTransactionReceipt", [to_hex(h)]) for h in missing])
        for h, r in zip(missing, results, strict=True):
            if r is not None:
                found[h] = r
        if len(found) == len(hashes):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(hashes) - len(found)} of {len(hashes)} txs have no receipt after "
                                 f"{timeout:.0f} s, e.g. 0x{missing[0].hex()}")
        time.sleep(0.5)


def status_ok(receipt: dict[str, Any]) -> bool:
    return receipt.get("status") in (1, "0x1")


def block_hashes(client: Client, heights: Sequence[int]) -> list[str]:
    blocks = batch_call(client, [("getBlockByNumber", [hexq(h), False]) for h in heights], per_request=200)
    assert all(b is not None for b in blocks), "a block is missing"
    return [b["hash"] for b in blocks]


def _deploy_contracts(wallet: Wallet, count: int, until: int, tag: bytes,
                      slots: int = SLOTS_PER_CONTRACT) -> tuple[list[SignedTransaction], list[ContractSpec]]:
    txs: list[SignedTransaction] = []
    specs: list[ContractSpec] = []
    for i in range(count):
        nonce = wallet.nonces.peek(wallet.address)
        address = contract_address(wallet.address, nonce)
        code = CODES[i % len(CODES)]
        abi = b'[{"type":"function","name":"f%d","tag":"%s"}]' % (i, tag)
        storage = {b"%s-slot-%d" % (tag, j): keccak(b"%s %d %d" % (tag, i, j)) + bytes([j]) * j
                   for j in range(slots)}
        txs.append(wallet.deploy(code, until))
        txs.append(wallet.set_abi(address, abi, until))
        txs.append(wallet.store(address, sorted(storage.items()), until))
        specs.append(ContractSpec(address, wallet.address, code, abi, storage))
    return txs, specs


def _build_source(node: Node, genesis: Genesis) -> tuple[list[bytes], list[ContractSpec], ContractSpec,
                                                      dict[bytes, dict[str, Any]]]:
    client = node.api
    keys = [a.key() for a in node.accounts()]
    wallets = {i: Wallet.from_node(client, keys[i], genesis.chain_id) for i in (BIG_SENDER, *CONTRACT_SENDERS)}
    until = client.block_number() + VALID_AHEAD
    all_hashes: list[bytes] = []
    contracts: list[ContractSpec] = []
    for i in CONTRACT_SENDERS:
        txs, specs = _deploy_contracts(wallets[i], CONTRACTS_PER_SENDER, until, b"s%d" % i)
        all_hashes += send_all(client, txs)
        contracts += specs

    # the big contract: code, ABI, then 22 STOREs of one 200 KiB random value each
    w = wallets[BIG_SENDER]
    nonce = w.nonces.peek(w.address)
    big = ContractSpec(contract_address(w.address, nonce), w.address, b"\xfe" * 300 + b"big", b'[{"big":true}]')
    big_txs = [w.deploy(big.code, until), w.set_abi(big.address, big.abi, until)]
    for j in range(BIG_VALUES):
        key, value = b"big-%02d" % j, os.urandom(BIG_VALUE_SIZE)
        big.storage[key] = value
        big_txs.append(w.store(big.address, [(key, value)], until))
    all_hashes += send_all(client, big_txs, per_request=4)  # < 8 MiB of hex per HTTP request
    receipts = wait_for_receipts(client, all_hashes, timeout=120)
    return [k.address for k in keys], contracts, big, receipts


def _build_rival(rival: Node, genesis: Genesis, keys: list[Any]) -> tuple[list[ContractSpec], list[bytes]]:
    """Transactions only the rival chain has: account 8 deploys, transfers to rival-only addresses."""
    client = rival.api
    deployer = Wallet.from_node(client, keys[RIVAL_SENDER], genesis.chain_id)
    other = Wallet.from_node(client, keys[BIG_SENDER], genesis.chain_id)
    until = client.block_number() + VALID_AHEAD
    txs, specs = _deploy_contracts(deployer, 3, until, b"rival")
    accounts = [keccak(b"rival-only account %d" % i)[:20] for i in range(5)]
    txs += [deployer.transfer(a, 10**15 + i, until) for i, a in enumerate(accounts)]
    txs += [other.transfer(accounts[0], 12345, until)]
    receipts = wait_for_receipts(client, send_all(client, txs), timeout=60)
    assert all(status_ok(r) for r in receipts.values()), receipts
    return specs, accounts


def build_acceptance_chain(request: pytest.FixtureRequest,
                           tmp_path_factory: pytest.TempPathFactory) -> Iterator[AcceptanceChain]:
    """The body of the session fixture ``acceptance_chain`` (``conftest.py``)."""
    base = tmp_path_factory.mktemp("acceptance")
    network = Network(base / "chain", nodes=1, block_interval=0.3, name="acceptance")
    node = network.node
    rival = node.fresh_copy(base / "rival" / "0")
    traffic: Traffic | None = None
    try:
        genesis = Genesis.load(node.directory / "genesis.json")
        network.run()
        rival.run()
        keys = [a.key() for a in node.accounts()]

        # hot contracts of the background sender, then the background sender itself
        tw = Wallet.from_node(node.api, keys[TRAFFIC_SENDER], genesis.chain_id)
        hot_txs, hot = _deploy_contracts(tw, 2, node.api.block_number() + VALID_AHEAD, b"hot", slots=1)
        hot_receipts = wait_for_receipts(node.api, send_all(node.api, hot_txs), timeout=60)
        assert all(status_ok(r) for r in hot_receipts.values()), hot_receipts
        traffic = Traffic(node.jsonrpc_url, tw, hot)
        traffic.start()

        rival_contracts, rival_accounts = _build_rival(rival, genesis, keys)
        funded, contracts, big, receipts = _build_source(node, genesis)
        node.wait_for_block(SOURCE_MIN_HEIGHT, timeout=150)

        before = node.get_height()
        snapshot = node.dump_snapshot(name="at100", height=SNAPSHOT_HEIGHT)
        after = node.get_height()
        node.wait_for_blocks(2, timeout=30)  # a few more blocks of traffic after the cut
        traffic.stop()
        genesis_block = node.api.get_block(0)
        assert genesis_block is not None
        chain = AcceptanceChain(network, node, genesis, genesis_block["hash"], contracts, big, hot, funded,
                                traffic, receipts, snapshot, (before, after), rival, rival_contracts,
                                rival_accounts)
    except BaseException:
        if traffic is not None:
            traffic.stop()
        for closing in (rival, network):
            try:
                closing.close(CleanupPolicy.DO_NOT_REMOVE_FILES)
            except Exception:  # keep the original error
                pass
        raise
    try:
        yield chain
    finally:
        policy = CleanupPolicy.DO_NOT_REMOVE_FILES if request.session.testsfailed \
            else CleanupPolicy.REMOVE_ONLY_UNNEEDED_FILES
        try:
            rival.close(policy)
        finally:
            network.close(policy)


def tree_state(root: Path) -> dict[str, tuple[bool, int, int]]:
    """Every path under ``root`` with (is_dir, size, mtime_ns): to prove nothing was written."""
    out: dict[str, tuple[bool, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            path = Path(dirpath) / name
            st = path.lstat()
            out[str(path.relative_to(root))] = (path.is_dir(), st.st_size, st.st_mtime_ns)
    return out

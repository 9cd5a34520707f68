"""Shared helpers of the snapshot acceptance tests (real RabbitMQ, real nodes, the real snapshot_tool).

* :func:`run_tool` runs ``snapshot_tool`` as a subprocess inside a node directory;
* :func:`node_state` reads the chain's and the executor's tips over the bus;
* :func:`assert_accepts_a_transaction_and_produces_blocks` checks a node left flight mode;
* :class:`Container` reads and rewrites the raw container of a snapshot file
  (chunks, manifest RLP, trailer) so a test can craft exactly one defect.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycita import node as nodelib
from pycita.client import Client, RpcError, Wallet
from pycita.crypto import keccak
from pycita.genesis import Genesis
from pycita.snapshot.container import decode_rlp, encode_raw
from pycita.testtools import Node
from pycita.types import contract_address

REPO = Path(__file__).resolve().parents[2]
NOT_READY = 9
CODE = b"\x60\x80\x60\x40\x52" * 20
ABI = b'[{"type": "function", "name": "get", "inputs": []}]'


# ------------------------------------------------------------------ the tool


def tool_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tools.snapshot_tool", *args]


def tool_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}


def run_tool(node_dir: Path, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """``snapshot_tool ARGS`` in ``node_dir`` (exit code and output, never raises on failure)."""
    return subprocess.run(tool_command(*args), cwd=node_dir, capture_output=True, text=True, timeout=timeout,
                          check=False, stdin=subprocess.DEVNULL, env=tool_env())


# ------------------------------------------------------------------ node state


@dataclass(frozen=True)
class Tip:
    """What chain and executor say over the bus (their pong status)."""

    chain_height: int
    chain_hash: str
    chain_root: str
    executor_height: int
    executor_hash: str
    executor_root: str
    flight: dict[str, bool]


def node_state(node: Node, timeout: float = 3.0) -> Tip:
    answers = nodelib.ping_services(node.directory, timeout=timeout)
    missing = [s for s in ("chain", "executor") if s not in answers]
    assert not missing, f"{missing} do not answer pings: {answers}"
    c, e = answers["chain"], answers["executor"]
    return Tip(int(c["height"]), c["block_hash"], c["state_root"], int(e["height"]), e["block_hash"],
               e["state_root"], {s: bool(st.get("flight_mode")) for s, st in answers.items()})


def wait_settled(node: Node, timeout: float = 20.0) -> Tip:
    """Wait until the executor has caught up with the chain's tip (same height, hash and state root)."""
    deadline = time.monotonic() + timeout
    tip = node_state(node)
    while time.monotonic() < deadline:
        tip = node_state(node)
        if (tip.chain_height, tip.chain_hash, tip.chain_root) == \
                (tip.executor_height, tip.executor_hash, tip.executor_root):
            return tip
        time.sleep(0.2)
    raise AssertionError(f"{node}: executor never caught up with the chain: {tip}")


def block_summary(client: Client, height: int) -> tuple[str, str] | None:
    block = client.get_block(height)
    return None if block is None else (block["hash"], block["stateRoot"])


def wallet_of(node: Node) -> Wallet:
    chain_id = Genesis.load(node.directory / "genesis.json").chain_id
    return Wallet.from_node(node.api, node.accounts()[0].key(), chain_id)


def assert_accepts_a_transaction_and_produces_blocks(node: Node, timeout: float = 20.0) -> None:
    """auth/jsonrpc accept a transfer (not NOT_READY), it is executed, and blocks keep coming."""
    client = node.api
    wallet = wallet_of(node)
    to = keccak(b"acceptance %f" % time.time())[:20]
    tx = wallet.transfer(to, 12345, client.block_number() + 50)
    deadline = time.monotonic() + 5.0
    while True:
        try:
            client.send_raw_transaction(tx)
            break
        except RpcError as exc:
            # auth reloads its dedupe window after End/start-up: NOT_READY for a moment at most
            assert exc.auth_code == NOT_READY and time.monotonic() < deadline, \
                f"{node} refuses a transaction: {exc}"
            time.sleep(0.2)
    receipt = client.wait_for_receipt(tx.hash, timeout=timeout)
    assert receipt["status"] in (1, "0x1"), receipt
    assert client.get_balance(to) == 12345
    node.wait_for_blocks(2, timeout=timeout)


# ------------------------------------------------------------------ traffic


@dataclass
class Traffic:
    accounts: list[bytes] = field(default_factory=list)
    contracts: list[bytes] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)


def seed_state(node: Node, *, accounts: int = 5, contracts: int = 2, slots: int = 6,
               tag: bytes = b"acceptance") -> Traffic:
    """Contracts (code, ABI, storage) and funded accounts, all executed; returns what was made."""
    client = node.api
    wallet = wallet_of(node)
    traffic = Traffic()
    until = client.block_number() + 90
    txs = []
    for i in range(contracts):
        nonce = wallet.nonces.peek(wallet.address)
        txs.append(wallet.deploy(CODE + bytes([i]), until))
        contract = contract_address(wallet.address, nonce)
        traffic.contracts.append(contract)
        txs.append(wallet.set_abi(contract, ABI + b" " * i, until))
        for first in range(0, slots, 100):
            pairs = [(b"slot%d" % j, b"value-%d-%d" % (i, j)) for j in range(first, min(slots, first + 100))]
            txs.append(wallet.store(contract, pairs, until))
    for i in range(accounts):
        addr = keccak(tag + b" account %d" % i)[:20]
        traffic.accounts.append(addr)
        txs.append(wallet.transfer(addr, 10**15 + i, until))
    for start in range(0, len(txs), 500):
        results = client.send_raw_transactions(txs[start:start + 500])
        for result in results:
            if isinstance(result, RpcError):
                raise result
    client.wait_for_receipt(txs[-1].hash, timeout=60)
    for tx in txs[::max(1, len(txs) // 20)]:
        receipt = client.get_receipt(tx.hash)
        assert receipt is not None and receipt["status"] in (1, "0x1"), receipt
    return traffic


# ------------------------------------------------------------------ container surgery


@dataclass
class Container:
    """A snapshot file split into its chunk area, its manifest (decoded RLP) and trailer."""

    chunk_area: bytes
    manifest: list[Any]

    @classmethod
    def read(cls, path: Path) -> Container:
        data = path.read_bytes()
        (offset,) = struct.unpack("<Q", data[-8:])
        manifest = decode_rlp(data[offset:-8])
        assert isinstance(manifest, list)
        return cls(data[:offset], manifest)

    def encode(self) -> bytes:
        raw = encode_raw(self.manifest)
        return self.chunk_area + raw + struct.pack("<Q", len(self.chunk_area))

    def write(self, path: Path) -> None:
        path.write_bytes(self.encode())

    def tables(self, executor: bool) -> list[list[Any]]:
        """The ChunkInfo tables in file order (chain: [chunks]; executor: [state chunks, block chunks])."""
        return [self.manifest[1], self.manifest[2]] if executor else [self.manifest[1]]

    def chunk_infos(self, executor: bool) -> list[list[Any]]:
        return [info for table in self.tables(executor) for info in table]

    def chunks(self, executor: bool) -> list[bytes]:
        out = []
        for _h, length, offset in self.chunk_infos(executor):
            o, n = int.from_bytes(offset, "big"), int.from_bytes(length, "big")
            out.append(self.chunk_area[o:o + n])
        return out

    def replace_chunk(self, executor: bool, index: int, new: bytes) -> None:
        """Put ``new`` in place of chunk ``index`` with a matching ChunkInfo (hash, len); later offsets shift."""
        chunks = self.chunks(executor)
        chunks[index] = new
        area = b""
        infos: list[tuple[bytes, int, int]] = []
        for c in chunks:
            infos.append((keccak(c), len(c), len(area)))
            area += c
        self.chunk_area = area
        i = 0
        for table in self.tables(executor):
            for j in range(len(table)):
                table[j] = [infos[i][0], _uint(infos[i][1]), _uint(infos[i][2])]
                i += 1


def _uint(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""


def uint(value: int) -> bytes:
    """An RLP integer as the raw bytes of a decoded manifest item."""
    return _uint(value)


def flip_bit(data: bytes, offset: int, bit: int = 0) -> bytes:
    b = bytearray(data)
    b[offset] ^= 1 << bit
    return bytes(b)

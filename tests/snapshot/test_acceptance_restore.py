"""Acceptance: a snapshot taken under traffic restores a fresh node, and replaces another chain entirely.

Real RabbitMQ, real nodes, the real ``snapshot_tool``. The source chain
(``acceptance_support.py``) holds 504 contracts with code, ABI and storage,
one contract with 4.4 MiB of storage, and a background sender; its snapshot at
height 100 is taken while blocks keep coming.

The files are read here by a minimal reader written from DESIGN.md section 5
alone (plain ``rlp``, ``snappy`` and pycryptodome's keccak, ``py-trie`` for
the state root) -- not by :mod:`pycita.snapshot` -- so the format is checked
independently of the code that wrote it.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import rlp
import snappy
from acceptance_support import (
    SNAPSHOT_HEIGHT,
    AcceptanceChain,
    batch_call,
    block_hashes,
    hexq,
    status_ok,
)
from Crypto.Hash import keccak as _keccak_mod
from trie import HexaryTrie

from pycita.client import Client, RpcError, Wallet
from pycita.proof import verify_proof
from pycita.testtools.snapshot import run_snapshot_tool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

H = SNAPSHOT_HEIGHT
MIB4 = 4 * 1024 * 1024
DUPLICATE = 4
NOT_READY = 9


# ----------------------------------------------------------- a minimal reader (DESIGN.md section 5)


def keccak256(data: bytes) -> bytes:
    return _keccak_mod.new(digest_bits=256, data=data).digest()


EMPTY_KECCAK = keccak256(b"")


def as_int(raw: bytes) -> int:
    assert isinstance(raw, bytes) and not raw.startswith(b"\x00"), f"not a canonical RLP integer: {raw!r}"
    return int.from_bytes(raw, "big")


def snappy_declared_length(compressed: bytes) -> int:
    """The uncompressed length a raw snappy block declares (its leading varint)."""
    value = shift = 0
    for i, byte in enumerate(compressed[:10]):
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value
        shift += 7
        assert i < 9
    raise AssertionError("truncated snappy length varint")


@dataclass
class Chunk:
    index: int
    offset: int
    length: int
    payload_size: int
    items: list[Any]


@dataclass
class Container:
    path: Path
    size: int
    manifest_offset: int
    manifest: list[Any]
    data: bytes = field(repr=False)

    @classmethod
    def open(cls, path: Path) -> Container:
        data = path.read_bytes()
        (offset,) = struct.unpack("<Q", data[-8:])
        assert 0 <= offset <= len(data) - 8, f"{path.name}: manifest offset {offset} outside the file"
        manifest = rlp.decode(data[offset:-8])
        assert isinstance(manifest, list) and as_int(manifest[0]) == 1, f"{path.name}: version"
        return cls(path, len(data), offset, manifest, data)

    def chunks(self, table: Sequence[Any], start: int) -> list[Chunk]:
        """Read every chunk of a ChunkInfo table, checking layout, hash and size bound first."""
        out = []
        pos = start
        for index, info in enumerate(table):
            assert isinstance(info, list) and len(info) == 3, f"{self.path.name}: ChunkInfo {index}"
            digest, length, offset = info[0], as_int(info[1]), as_int(info[2])
            assert offset == pos, f"{self.path.name}: chunk {index} at {offset}, expected {pos} (contiguous)"
            compressed = self.data[offset:offset + length]
            assert len(compressed) == length
            assert keccak256(compressed) == digest, f"{self.path.name}: chunk {index} hash"
            declared = snappy_declared_length(compressed)
            payload = snappy.uncompress(compressed)
            assert len(payload) == declared
            items = rlp.decode(payload)
            assert isinstance(items, list)
            out.append(Chunk(index, offset, length, len(payload), items))
            pos = offset + length
        return out


def check_bound(chunk: Chunk, entries: int, what: str) -> None:
    assert chunk.payload_size <= MIB4 or entries == 1, \
        f"{what} chunk {chunk.index}: {chunk.payload_size} bytes uncompressed with {entries} entries"


@dataclass
class ChainFileContent:
    manifest: list[Any]
    headers: list[list[Any]]            # heights 1..H in order
    hashes: list[bytes]
    bodies: dict[int, list[Any]]        # height -> list of raw signed txs (full entries)
    receipts: dict[int, list[Any]]
    chunk_sizes: list[int]
    chunk_entries: list[int]


def check_header_chunks(chunks: list[Chunk], genesis_hash: bytes, what: str,
                        entry_header: Any) -> tuple[list[list[Any]], list[bytes], list[Any]]:
    """Chunks ``[parent_number, parent_hash, entry...]``: heights ascending and contiguous from 1,
    each chunk's parent fields naming the previous block, parent hashes chaining."""
    headers: list[list[Any]] = []
    hashes: list[bytes] = []
    entries: list[Any] = []
    prev_number, prev_hash = 0, genesis_hash
    for chunk in chunks:
        assert len(chunk.items) >= 3, f"{what} chunk {chunk.index}: no entry"
        parent_number = as_int(chunk.items[0]) if chunk.items[0] else 0
        parent_hash = chunk.items[1]
        assert (parent_number, parent_hash) == (prev_number, prev_hash), \
            f"{what} chunk {chunk.index}: parent {parent_number}, expected {prev_number}"
        check_bound(chunk, len(chunk.items) - 2, what)
        for entry in chunk.items[2:]:
            header = entry_header(entry)
            assert isinstance(header, list) and len(header) == 12
            number = as_int(header[5])
            assert number == prev_number + 1, f"{what}: height {number} after {prev_number}"
            assert header[0] == prev_hash, f"{what}: block {number} parent hash"
            prev_number, prev_hash = number, keccak256(rlp.encode(header))
            headers.append(header)
            hashes.append(prev_hash)
            entries.append(entry)
    return headers, hashes, entries


def read_chain_file(path: Path, genesis_hash: bytes) -> ChainFileContent:
    c = Container.open(path)
    m = c.manifest
    chunks = c.chunks(m[1], 0)
    last_end = chunks[-1].offset + chunks[-1].length if chunks else 0
    assert last_end == c.manifest_offset, "chain chunks must end where the manifest starts"
    headers, hashes, entries = check_header_chunks(chunks, genesis_hash, "chain", lambda e: e[0])
    bodies, receipts = {}, {}
    for header, entry in zip(headers, entries, strict=True):
        assert len(entry) in (1, 3)
        if len(entry) == 3:
            receipts[as_int(header[5])] = entry[1]
            bodies[as_int(header[5])] = entry[2]
    return ChainFileContent(m, headers, hashes, bodies, receipts, [ch.payload_size for ch in chunks],
                            [len(ch.items) - 2 for ch in chunks])


@dataclass
class AccountContent:
    nonce: int
    balance: int
    code: bytes
    abi: bytes
    storage: dict[bytes, bytes]
    pieces: int = 1


@dataclass
class ExecutorFileContent:
    manifest: list[Any]
    accounts: dict[bytes, AccountContent]
    headers: list[list[Any]]
    hashes: list[bytes]
    state_chunk_sizes: list[tuple[int, int]]   # (payload size, pieces)
    state_end: int
    header_start: int


def read_executor_file(path: Path, genesis_hash: bytes) -> ExecutorFileContent:
    c = Container.open(path)
    m = c.manifest
    state_chunks = c.chunks(m[1], 0)
    state_end = state_chunks[-1].offset + state_chunks[-1].length if state_chunks else 0
    header_chunks = c.chunks(m[2], state_end)  # state chunks first, then header chunks
    end = header_chunks[-1].offset + header_chunks[-1].length if header_chunks else state_end
    assert end == c.manifest_offset

    blobs: dict[bytes, bytes] = {}

    def blob(state: bytes, value: bytes) -> bytes:
        kind = as_int(state) if state else 0
        if kind == 0:
            assert value == b""
            return b""
        if kind == 1:
            assert value != b""
            blobs[keccak256(value)] = value
            return value
        assert kind == 2 and value in blobs, "a by-hash blob must have been emitted inline earlier"
        return blobs[value]

    accounts: dict[bytes, AccountContent] = {}
    last: bytes | None = None
    for chunk in state_chunks:
        check_bound(chunk, len(chunk.items), "state")
        for piece in chunk.items:
            address, (nonce, balance, code_state, code, abi_state, abi, storage) = piece
            assert len(address) == 20
            pairs = {k: v for k, v in storage}
            assert all(v for v in pairs.values()), "storage values are non-empty"
            acc = AccountContent(as_int(nonce) if nonce else 0, as_int(balance) if balance else 0,
                                 blob(code_state, code), blob(abi_state, abi), pairs)
            if address == last:  # a continuation piece of a split account
                prev = accounts[address]
                assert (prev.nonce, prev.balance) == (acc.nonce, acc.balance)
                assert acc.code in (b"", prev.code) and acc.abi in (b"", prev.abi)
                assert pairs and min(pairs) > max(prev.storage), "storage keys keep ascending across pieces"
                prev.storage.update(pairs)
                prev.pieces += 1
            else:
                assert last is None or address > last, "accounts ascend by address"
                assert list(pairs) == sorted(pairs)
                accounts[address] = acc
                last = address
    headers, hashes, _ = check_header_chunks(header_chunks, genesis_hash, "executor", lambda e: e)
    return ExecutorFileContent(m, accounts, headers, hashes,
                               [(ch.payload_size, len(ch.items)) for ch in state_chunks], state_end,
                               header_chunks[0].offset if header_chunks else state_end)


def state_root(accounts: dict[bytes, AccountContent]) -> bytes:
    """The state root recomputed with py-trie (DESIGN.md section 6)."""
    t = HexaryTrie({})
    with t.squash_changes() as batch:
        for address, acc in accounts.items():
            st = HexaryTrie({})
            with st.squash_changes() as sb:
                for k, v in acc.storage.items():
                    sb[k] = v
            code_hash = keccak256(acc.code) if acc.code else EMPTY_KECCAK
            abi_hash = keccak256(acc.abi) if acc.abi else EMPTY_KECCAK
            batch[address] = rlp.encode([acc.nonce, acc.balance, st.root_hash, code_hash, abi_hash])
    return t.root_hash


# ------------------------------------------------------------------ helpers


def b2h(b: bytes) -> str:
    return "0x" + b.hex()


def h2b(text: str) -> bytes:
    return bytes.fromhex(text.removeprefix("0x"))


def account_views(client: Client, addresses: Sequence[bytes], block: int | str) -> list[tuple[Any, ...]]:
    """(balance, nonce, code, abi) of each address at ``block``, as the node answers them."""
    tag = hexq(block) if isinstance(block, int) else block
    calls = []
    for a in addresses:
        for method in ("getBalance", "getTransactionCount", "getCode", "getAbi"):
            calls.append((method, [b2h(a), tag]))
    flat = batch_call(client, calls)
    return [tuple(flat[i:i + 4]) for i in range(0, len(flat), 4)]


def storage_views(client: Client, slots: Sequence[tuple[bytes, bytes]], block: int,
                  per_request: int = 400) -> list[str]:
    return batch_call(client, [("getStorageAt", [b2h(a), b2h(k), hexq(block)]) for a, k in slots],
                      per_request=per_request)


def send_refused(client: Client, raw: bytes, timeout: float = 15.0) -> int | None:
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


def check_new_blocks_have_valid_proofs(client: Client, chain: AcceptanceChain, first: int, last: int) -> None:
    """Header h+1's proof proves block h by a quorum of the genesis validators, for h in first..last-1."""
    blocks = batch_call(client, [("getBlockByNumber", [hexq(h), False]) for h in range(first, last + 1)])
    for parent, child in zip(blocks, blocks[1:], strict=False):
        assert child["parentHash"] == parent["hash"]
        verify_proof(h2b(child["proof"]), chain_id=chain.genesis.chain_id, height=int(parent["number"], 16),
                     block_hash=h2b(parent["hash"]), validators=chain.genesis.validators)


# ------------------------------------------------------------------- tests


def test_the_snapshot_files_follow_the_documented_format_and_hold_the_source_chain_and_state(
        acceptance_chain: AcceptanceChain) -> None:
    chain = acceptance_chain
    src = chain.node.api
    genesis_hash = h2b(chain.genesis_hash)

    # the source really had the traffic we asked for, all executed by block 100
    assert all(status_ok(r) for r in chain.setup_receipts.values())
    last_setup_block = max(int(r["blockNumber"], 16) for r in chain.setup_receipts.values())
    assert last_setup_block <= H, f"setup transactions executed up to block {last_setup_block}, after {H}"
    for spec in chain.contracts[:5] + [chain.big]:
        receipt_addresses = {r.get("contractAddress") for r in chain.setup_receipts.values()}
        assert b2h(spec.address) in receipt_addresses
    assert chain.export_heights[1] > chain.export_heights[0] >= 121, \
        f"the chain did not advance during the export: {chain.export_heights}"
    assert not chain.traffic.errors, chain.traffic.errors

    cf = read_chain_file(chain.snapshot.chain_file, genesis_hash)
    ef = read_executor_file(chain.snapshot.executor_file, genesis_hash)
    src_hashes = block_hashes(src, range(1, H + 1))
    block_100 = src.get_block(H)
    assert block_100 is not None

    # chain file: heights 1..H, every hash the source's, bodies and receipts of the newest 100 blocks
    assert [as_int(hd[5]) for hd in cf.headers] == list(range(1, H + 1))
    assert [b2h(x) for x in cf.hashes] == src_hashes
    assert as_int(cf.manifest[3]) == H and cf.manifest[4] == cf.hashes[-1] == h2b(block_100["hash"])
    assert cf.manifest[2] == cf.headers[-1][1] == h2b(block_100["stateRoot"])
    verify_proof(cf.manifest[5], chain_id=chain.genesis.chain_id, height=H, block_hash=cf.hashes[-1],
                 validators=chain.genesis.validators)
    assert sorted(cf.bodies) == list(range(1, H + 1))
    blocks = batch_call(src, [("getBlockByNumber", [hexq(h), False]) for h in range(1, H + 1)], per_request=100)
    for h, block in zip(range(1, H + 1), blocks, strict=True):
        assert [b2h(keccak256(rlp.encode(tx))) for tx in cf.bodies[h]] == block["transactions"]
        assert len(cf.receipts[h]) == len(cf.bodies[h])
    # the block carrying the 4.4 MiB of STOREs (or its biggest part) stands in a chunk of its own
    assert any(size > 1024 * 1024 for size in cf.chunk_sizes)
    assert all(size <= MIB4 or n == 1 for size, n in zip(cf.chunk_sizes, cf.chunk_entries, strict=True))

    # executor file: state chunks, then header chunks 1..H equal to the chain file's
    assert ef.header_start == ef.state_end and len(ef.manifest[1]) >= 2 and len(ef.manifest[2]) >= 1
    assert ef.hashes == cf.hashes
    assert ef.manifest[3] == cf.manifest[2] and as_int(ef.manifest[4]) == H and ef.manifest[5] == cf.manifest[4]
    assert as_int(ef.manifest[8]) == len(ef.accounts)
    assert state_root(ef.accounts) == cf.manifest[2], "py-trie's root of the file's accounts is not header H's"

    with_everything = [a for a in ef.accounts.values() if a.code and a.abi and a.storage]
    assert len(with_everything) >= 500
    big = ef.accounts[chain.big.address]
    assert big.storage == chain.big.storage and sum(map(len, big.storage.values())) > MIB4
    assert big.pieces >= 2, "a 4.4 MiB account must be split into several fat RLPs"
    assert all(size <= MIB4 or pieces == 1 for size, pieces in ef.state_chunk_sizes)
    for spec in chain.contracts:
        acc = ef.accounts[spec.address]
        assert (acc.code, acc.abi, acc.storage) == (spec.code, spec.abi, spec.storage)

    # every account of the file is the source's at block 100
    addresses = sorted(ef.accounts)
    views = account_views(src, addresses, H)
    for address, (balance, nonce, code, abi) in zip(addresses, views, strict=True):
        acc = ef.accounts[address]
        assert (int(balance, 16), int(nonce, 16), h2b(code), h2b(abi)) == \
            (acc.balance, acc.nonce, acc.code, acc.abi), b2h(address)
    small_slots = [(a, k) for a in addresses if a != chain.big.address for k in ef.accounts[a].storage]
    for (a, k), value in zip(small_slots, storage_views(src, small_slots, H), strict=True):
        assert h2b(value) == ef.accounts[a].storage[k], (b2h(a), k)
    # and every account the test touched that existed at block 100 is in the file
    known = chain.known_accounts
    for address, (balance, nonce, code, _abi) in zip(known, account_views(src, known, H), strict=True):
        if int(balance, 16) or int(nonce, 16) or code != "0x":
            assert address in ef.accounts, f"{b2h(address)} exists at block {H} but is not in the file"


def test_a_fresh_node_restored_at_100_holds_every_account_then_extends_the_chain_and_refuses_replays(
        acceptance_chain: AcceptanceChain, tmp_path: Path) -> None:
    chain = acceptance_chain
    src = chain.node.api
    genesis_hash = h2b(chain.genesis_hash)
    ef = read_executor_file(chain.snapshot.executor_file, genesis_hash)
    block_100 = src.get_block(H)
    assert block_100 is not None

    fresh = chain.node.fresh_copy(tmp_path / "fresh")
    started = time.time()
    try:
        fresh.run(load_snapshot_from=chain.snapshot.copy_to(tmp_path / "copy"))
        mine = fresh.api
        restored = mine.get_block(H)
        assert restored is not None
        assert restored["hash"] == block_100["hash"] == chain.snapshot.block_hash
        assert restored["stateRoot"] == block_100["stateRoot"] == chain.snapshot.state_root
        assert block_hashes(mine, range(1, H + 1)) == block_hashes(src, range(1, H + 1))
        above = mine.get_block(H + 1)
        assert above is None or above["hash"] != src.get_block(H + 1)["hash"]  # type: ignore[index]

        # it refuses the replay of a transaction of its last 100 blocks (one included at height >= 90;
        # checked first, while its valid_until_block is still ahead of the restored node's tip)
        raws = chain.traffic.snapshot_raws()
        replay = None
        for block in reversed(batch_call(src, [("getBlockByNumber", [hexq(h), False]) for h in range(90, H + 1)])):
            replay = next((raws[h2b(t)] for t in block["transactions"] if h2b(t) in raws), None)
            if replay is not None:
                break
        assert replay is not None, "no background transaction was included in blocks 90..100"
        assert send_refused(mine, replay) == DUPLICATE

        # every account at block 100, account by account, on both nodes
        addresses = sorted(set(ef.accounts) | set(chain.known_accounts))
        assert account_views(mine, addresses, H) == account_views(src, addresses, H)
        slots = [(a, k) for a in sorted(ef.accounts) if a != chain.big.address for k in ef.accounts[a].storage]
        slots += [(c.address, k) for c in chain.contracts for k in c.storage]
        assert storage_views(mine, slots, H) == storage_views(src, slots, H)
        big_slots = [(chain.big.address, k) for k in sorted(chain.big.storage)]
        big_mine = storage_views(mine, big_slots, H, per_request=4)
        assert big_mine == storage_views(src, big_slots, H, per_request=4)
        assert [h2b(v) for v in big_mine] == [chain.big.storage[k] for _, k in big_slots]

        # it produces blocks 101 and later, each proved by a quorum of the genesis validators
        fresh.wait_for_block(H + 4, timeout=60)
        new_101 = mine.get_block(H + 1)
        assert new_101 is not None and new_101["parentHash"] == block_100["hash"]
        assert int(new_101["timestamp"], 16) >= int(started * 1000), "block 101 predates the restore"
        check_new_blocks_have_valid_proofs(mine, chain, H, H + 4)

        # and it accepts and executes new transactions (a deployer still owns its restored contract)
        key = next(a.key() for a in chain.node.accounts() if a.key().address == chain.contracts[0].deployer)
        wallet = Wallet.from_node(mine, key, chain.genesis.chain_id)
        until = mine.block_number() + 50
        txs = [wallet.transfer(b"\x42" * 20, 777, until),
               wallet.set_abi(chain.contracts[0].address, b'["after restore"]', until),
               wallet.store(chain.contracts[0].address, [(b"after", b"restore")], until)]
        for tx in txs:
            mine.send_raw_transaction(tx)
        for tx in txs:
            assert status_ok(mine.wait_for_receipt(tx.hash, timeout=30))
        assert mine.get_balance(b"\x42" * 20) == 777
        assert mine.get_abi(chain.contracts[0].address) == b'["after restore"]'
        assert mine.get_storage_at(chain.contracts[0].address, b"after") == b"restore"

        st = fresh.status()
        assert not any((svc["status"] or {}).get("flight_mode") for svc in st["services"].values()), st
    finally:
        fresh.close()


def test_a_restore_replaces_a_longer_different_chain_of_the_same_genesis_entirely(
        acceptance_chain: AcceptanceChain) -> None:
    chain = acceptance_chain
    src, rival = chain.node.api, chain.rival
    rapi = rival.api
    old_tip = rival.get_height()
    assert old_tip > H + 5, f"the rival chain is only at {old_tip}"
    old_hashes = block_hashes(rapi, range(1, old_tip + 1))
    src_hashes = block_hashes(src, range(1, H + 1))
    assert not set(old_hashes) & set(src_hashes), "the two chains must differ from block 1"
    rival_only = chain.rival_accounts + [c.address for c in chain.rival_contracts]
    before = account_views(rapi, rival_only, "latest")
    assert all(int(balance, 16) or code != "0x" for balance, _n, code, _a in before)

    snap = chain.snapshot.copy_to(rival.snapshot_dir(), name="from_source")
    started = time.time()
    out = run_snapshot_tool(["-m", "restore", "-f", snap.name, "--json"], cwd=rival.directory)
    result = json.loads(out)
    assert (result["height"], result["block_hash"], result["state_root"]) == \
        (H, chain.snapshot.block_hash, chain.snapshot.state_root)

    # right after the restore: exactly the snapshot's chain up to H, and above H nothing but blocks
    # produced since the restore began (none of the old chain's)
    tip = rapi.block_number()
    assert block_hashes(rapi, range(1, H + 1)) == src_hashes
    assert all(int(b["timestamp"], 16) >= int(started * 1000) for b in
               batch_call(rapi, [("getBlockByNumber", [hexq(h), False]) for h in range(H + 1, tip + 1)]))
    # none of its old blocks can be found any more
    found = batch_call(rapi, [("getBlockByHash", [x, False]) for x in old_hashes])
    assert [x for x, b in zip(old_hashes, found, strict=True) if b is not None] == []
    # accounts only the old chain had are gone; the ones it shared are the snapshot's at H
    gone = account_views(rapi, rival_only, "latest")
    assert gone == [("0x0", "0x0", "0x", "0x")] * len(rival_only)
    shared = [chain.funded[0], chain.funded[8]]
    assert account_views(rapi, shared, "latest") == account_views(src, shared, H)

    # then it carries on from the snapshot's block H with new, properly proved blocks
    rival.wait_for_block(max(tip, H) + 3, timeout=60)
    tip = rival.get_height()
    new_blocks = batch_call(rapi, [("getBlockByNumber", [hexq(h), False]) for h in range(H + 1, tip + 1)])
    assert new_blocks[0]["parentHash"] == chain.snapshot.block_hash
    for b in new_blocks:
        assert b["hash"] not in old_hashes and int(b["timestamp"], 16) >= int(started * 1000)
    check_new_blocks_have_valid_proofs(rapi, chain, H, tip)
    assert block_hashes(rapi, range(1, H + 1)) == src_hashes

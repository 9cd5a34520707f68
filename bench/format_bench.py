"""Throughput of the snapshot file format: write, read and verify a synthetic snapshot.

    .venv/bin/python bench/format_bench.py [--accounts 100000] [--blocks 2000] [--dir DIR]

The state: ``--accounts`` accounts ascending by address; 70 % plain accounts,
30 % contracts with 1..8 storage slots and code/ABI drawn from a pool of 64
(so dedupe applies), plus one large contract with ``--big-slots`` slots (split
over several chunks). The chain: ``--blocks`` blocks with one-validator
quorum proofs, the newest 100 carrying a transaction and receipt.
Prints MB/s (file bytes) and items/s for each phase.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import rlp

from pycita.crypto import EMPTY_KECCAK, Address, PrivateKey, keccak
from pycita.genesis import Genesis
from pycita.proof import QuorumCert, sign_vote
from pycita.snapshot.chain_format import ChainFileReader, write_chain_file
from pycita.snapshot.state_format import AccountSource, ExecutorFileReader, write_state_file
from pycita.snapshot.verify import verify_chain_file, verify_executor_file
from pycita.trie import build_from_sorted
from pycita.types import EMPTY_BLOOM, Account, Header, Receipt, Transaction, ordered_root, sign_transaction

KEY = PrivateKey(keccak(b"bench validator"))
CODES = [keccak(b"code %d" % i) * (20 + i * 4) for i in range(64)]
ABIS = [b'[{"name":"f%d"}]' % i * 10 for i in range(64)]


def _discard(_h: bytes, _n: bytes) -> None:
    return None


def accounts(n: int, big_slots: int) -> Iterator[AccountSource]:  # storage as a list here
    """Deterministic synthetic state, ascending by address."""
    addresses = sorted(keccak(i.to_bytes(8, "big"))[:20] for i in range(n))
    big = addresses[len(addresses) // 2]
    for idx, address in enumerate(addresses):
        seed = address[0]
        storage: list[tuple[bytes, bytes]]
        if address == big:
            storage = [(i.to_bytes(32, "big"), keccak(i.to_bytes(4, "big"))) for i in range(big_slots)]
            code, abi = CODES[0], ABIS[0]
        elif seed % 10 < 3:
            storage = sorted((keccak(address + bytes([j])), (idx + j + 1).to_bytes(8, "big"))
                             for j in range(1 + seed % 8))
            code, abi = CODES[seed % 64], ABIS[seed % 64] if seed % 2 else b""
        else:
            storage, code, abi = [], b"", b""
        root = build_from_sorted(storage, _discard)
        account = Account(idx % 1000, 10**18 + idx, root, keccak(code) if code else EMPTY_KECCAK,
                          keccak(abi) if abi else EMPTY_KECCAK)
        yield Address(address), account, code, abi, iter(storage)


def chain(genesis: Genesis, n: int, state_root: bytes) -> tuple[list[tuple[Header, list[Receipt] | None, list | None]], bytes]:
    parent = genesis.hash
    proof = b""
    blocks: list[tuple[Header, list[Receipt] | None, list | None]] = []
    for number in range(1, n + 1):
        full = number > n - 100
        txs = [sign_transaction(Transaction(genesis.chain_id, number, number + 10, 30000, b"\x01" * 20, 1, 0, b""),
                                KEY)] if full else []
        receipts = [Receipt(t.hash, KEY.address, 1, 21000, 21000, b"", b"") for t in txs]
        header = Header(parent, state_root if number == n else keccak(b"%d" % number),
                        ordered_root([t.hash for t in txs]), ordered_root([rlp.encode(r) for r in receipts]),
                        EMPTY_BLOOM, number, genesis.quota_limit, 21000 * len(txs), genesis.timestamp + number, 0,
                        proof, KEY.address)
        parent = header.hash
        proof = QuorumCert(number, 0, parent, ((KEY.address, sign_vote(KEY, genesis.chain_id, number, 0, parent)),)
                           ).to_proof_bytes()
        blocks.append((header, receipts if full else None, txs if full else None))
    return blocks, proof


def rate(label: str, seconds: float, size: int, items: int, unit: str) -> None:
    print(f"  {label:<28} {seconds:7.2f} s  {size / seconds / 1e6:8.2f} MB/s  {items / seconds:11,.0f} {unit}/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--big-slots", type=int, default=100_000)
    parser.add_argument("--blocks", type=int, default=10_000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    directory = args.dir or Path(tempfile.mkdtemp(prefix="format_bench-"))
    genesis = Genesis(1, 1_700_000_000_000, 10**9, (KEY.address,), ())

    t = time.perf_counter()
    state = [(a, acc, c, b, list(st)) for a, acc, c, b, st in accounts(args.accounts, args.big_slots)]
    state_root = build_from_sorted(((a, rlp.encode(acc)) for a, acc, *_ in state), _discard)
    blocks, last_proof = chain(genesis, args.blocks, state_root)
    print(f"synthetic data: {args.accounts:,} accounts (+{args.big_slots:,}-slot contract), {args.blocks:,} blocks, "
          f"prepared in {time.perf_counter() - t:.1f} s")
    chain_path, exec_path = directory / "bench_chain.rlp", directory / "bench_executor.rlp"

    # the write rebuilds every storage root and the state root (check_roots=True) as it goes
    t = time.perf_counter()
    em = write_state_file(exec_path, ((a, acc, c, b, iter(st)) for a, acc, c, b, st in state),
                          (b[0] for b in blocks), genesis=genesis)
    t_write_state = time.perf_counter() - t
    t = time.perf_counter()
    write_chain_file(chain_path, iter(blocks), genesis=genesis, last_proof=last_proof)
    t_write_chain = time.perf_counter() - t
    exec_size, chain_size = exec_path.stat().st_size, chain_path.stat().st_size
    print(f"executor file {exec_size / 1e6:.2f} MB ({len(em.state_chunks)} state + {len(em.block_chunks)} header "
          f"chunks), chain file {chain_size / 1e6:.2f} MB")

    t = time.perf_counter()
    with ExecutorFileReader(exec_path) as r:
        pieces = sum(1 for _ in r.accounts())
        headers = sum(1 for _ in r.headers())
    t_read_state = time.perf_counter() - t
    t = time.perf_counter()
    with ChainFileReader(chain_path) as cr:
        entries = sum(1 for _ in cr.entries())
    t_read_chain = time.perf_counter() - t

    t = time.perf_counter()
    nodes = 0

    def count(_h: bytes, _n: bytes) -> None:
        nonlocal nodes
        nodes += 1

    er = verify_executor_file(exec_path, genesis, chain_path=chain_path, node_sink=count)
    t_verify_state = time.perf_counter() - t
    t = time.perf_counter()
    cr_report = verify_chain_file(chain_path, genesis, executor_path=exec_path)
    t_verify_chain = time.perf_counter() - t

    print("executor file:")
    rate("write (checks roots)", t_write_state, exec_size, args.accounts, "accounts")
    rate("read", t_read_state, exec_size, args.accounts, "accounts")
    rate("verify (+node sink)", t_verify_state, exec_size, er.accounts, "accounts")
    print(f"  {pieces:,} fat RLPs, {headers:,} headers, {er.storage_slots:,} slots, {er.blobs} blobs, "
          f"{nodes:,} trie nodes")
    print("chain file:")
    rate("write", t_write_chain, chain_size, args.blocks, "blocks")
    rate("read", t_read_chain, chain_size, entries, "blocks")
    rate("verify", t_verify_chain, chain_size, cr_report.blocks, "blocks")
    if args.dir is None:
        for p in (chain_path, exec_path):
            p.unlink()
        directory.rmdir()


if __name__ == "__main__":
    main()

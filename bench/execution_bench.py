"""Throughput of block execution: signed transfers among many accounts.

Runs blocks of ``--txs`` signed TRANSFERs among ``--accounts`` funded accounts
through :func:`pycita.execution.execute_block` plus the store write of the
commit, and reports transfers per second:

* ``pre-recovered``: senders recovered beforehand (excludes signature recovery);
* ``with recovery``: ``execute_block`` recovers every sender itself.

Usage: ``.venv/bin/python bench/execution_bench.py [--blocks 5] [--txs 3000]
[--accounts 10000] [--leveldb DIR]`` (default store: a LevelDB in a temp dir).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from pycita.crypto import PrivateKey
from pycita.execution import execute_block, init_genesis_state, recover_senders
from pycita.genesis import Genesis
from pycita.state import AccountCache, NodeStore, StateDB
from pycita.storage import KV, LevelDB, MemoryKV
from pycita.types import EMPTY_BLOOM, ZERO_ADDRESS, ZERO_HASH, Block, Header, Transaction, sign_transaction

CHAIN_ID = 1


def make_keys(n: int, seed: int) -> list[PrivateKey]:
    rng = random.Random(seed)
    return [PrivateKey(rng.randbytes(31) + b"\x01") for _ in range(n)]


def make_block(number: int, keys: list[PrivateKey], addrs: Sequence[bytes], n_txs: int, rng: random.Random,
               nonces: dict[int, int]) -> Block:
    txs = []
    for _ in range(n_txs):
        i = rng.randrange(len(keys))
        j = rng.randrange(len(addrs))
        nonces[i] = nonces.get(i, 0) + 1
        tx = Transaction(CHAIN_ID, nonces[i], number + 50, 21_000, addrs[j], rng.randrange(1, 1000), 0, b"")
        txs.append(sign_transaction(tx, keys[i]))
    header = Header(ZERO_HASH, ZERO_HASH, ZERO_HASH, ZERO_HASH, EMPTY_BLOOM, number, 10**12, 0, 0, 0, b"",
                    ZERO_ADDRESS)
    return Block(header, txs)


def run(kv: KV, blocks: list[Block], genesis: Genesis, recover: bool) -> tuple[float, int]:
    commit = init_genesis_state(kv, genesis)
    state = StateDB(kv, commit.state_root, nodes=NodeStore(kv), cache=AccountCache(commit.state_root))
    senders = None if recover else [recover_senders(b.transactions) for b in blocks]
    total = 0
    start = time.perf_counter()
    for i, block in enumerate(blocks):
        result = execute_block(state, block, None if senders is None else senders[i], chain_id=CHAIN_ID)
        kv.write(result.commit.puts)
        state.after_write(result.commit)
        total += len(block.transactions)
    return time.perf_counter() - start, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--txs", type=int, default=3000)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--memory", action="store_true", help="use a MemoryKV instead of LevelDB")
    args = parser.parse_args()

    t0 = time.perf_counter()
    keys = make_keys(args.accounts, 7)
    addrs = [k.address for k in keys]
    genesis = Genesis(CHAIN_ID, 0, 10**12, (addrs[0],), tuple(sorted((a, 10**18) for a in addrs)))
    rng = random.Random(1)
    nonces: dict[int, int] = {}
    blocks = [make_block(h, keys, addrs, args.txs, rng, nonces) for h in range(1, args.blocks + 1)]
    print(f"setup: {args.accounts} accounts, {args.blocks} blocks x {args.txs} signed transfers "
          f"in {time.perf_counter() - t0:.1f}s")

    for label, recover in (("pre-recovered", False), ("with recovery", True)):
        with tempfile.TemporaryDirectory() as tmp:
            kv: KV = MemoryKV() if args.memory else LevelDB(Path(tmp) / "state")
            elapsed, total = run(kv, blocks, genesis, recover)
            kv.close()
        print(f"{label:>14}: {total} tx in {elapsed:.2f}s = {total / elapsed:,.0f} tx/s "
              f"({elapsed / len(blocks) * 1000:.0f} ms/block, store {'memory' if args.memory else 'leveldb'})")


if __name__ == "__main__":
    main()

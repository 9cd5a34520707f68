"""Throughput of pycita.trie against py-trie's HexaryTrie (a plain script, not a test).

Run: ``.venv/bin/python bench/trie_bench.py [--scale 0.1] [--profile build|insert|update]``.
Prints one row per measurement, as a rate per second of wall-clock time and per
second of this process's CPU time (steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trie import HexaryTrie  # noqa: E402

from pycita.trie import Trie, build_from_sorted  # noqa: E402

T = TypeVar("T")


def _items(count: int, key_size: int = 20, value_size: int = 100, seed: int = 1) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    return [(rng.randbytes(key_size), rng.randbytes(value_size)) for _ in range(count)]


class _Clock:
    """Accumulates wall-clock and process CPU seconds over timed sections."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def time(self, fn: Callable[[], T]) -> T:
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu
        return result


Result = tuple[_Clock, int]  # (time spent, operations done)


def bench_insert(count: int) -> Result:
    items = _items(count)
    trie = Trie({})
    clock = _Clock()

    def run() -> None:
        trie.update_many(items)
        trie.commit()

    clock.time(run)
    return clock, count


def bench_py_trie_insert(count: int) -> Result:
    items = _items(count)
    reference = HexaryTrie({})
    clock = _Clock()

    def run() -> None:
        for key, value in items:
            reference.set(key, value)

    clock.time(run)
    return clock, count


def bench_update(size: int, batch: int, rounds: int) -> Result:
    db: dict[bytes, bytes] = {}
    items = _items(size)
    root = build_from_sorted(sorted(items), db.__setitem__)
    keys = [key for key, _ in items]
    rng = random.Random(2)
    trie = Trie(db, root)
    clock = _Clock()
    for _ in range(rounds):
        # Half overwrite existing keys, half insert new ones.
        updates = [
            (rng.choice(keys) if i % 2 else rng.randbytes(20), rng.randbytes(100)) for i in range(batch)
        ]
        db.update(clock.time(partial(_update_and_commit, trie, updates)))
    return clock, batch * rounds


def _update_and_commit(trie: Trie, updates: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    trie.update_many(updates)
    return trie.commit()[1]


def bench_build(count: int) -> Result:
    items = sorted(_items(count))
    sink: dict[bytes, bytes] = {}
    clock = _Clock()
    clock.time(lambda: build_from_sorted(items, sink.__setitem__))
    return clock, count


def bench_items(count: int) -> Result:
    db: dict[bytes, bytes] = {}
    root = build_from_sorted(sorted(_items(count)), db.__setitem__)
    trie = Trie(db, root)
    seen = 0

    def run() -> None:
        nonlocal seen
        for _ in trie.items():
            seen += 1

    clock = _Clock()
    clock.time(run)
    assert seen == count
    return clock, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every size by this")
    parser.add_argument("--profile", choices=["build", "insert", "update", "items"], default=None)
    args = parser.parse_args()

    def n(count: int) -> int:
        return max(1, int(count * args.scale))

    runs: dict[str, Callable[[], Result]] = {
        "insert": lambda: bench_insert(n(100_000)),
        "update": lambda: bench_update(n(100_000), n(3_000), 10),
        "build": lambda: bench_build(n(200_000)),
        "items": lambda: bench_items(n(200_000)),
    }
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(runs[args.profile])
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
        return

    rows = [
        ("pycita Trie: update_many + one commit, random 20-byte keys, 100-byte values", "inserts/s", runs["insert"]),
        ("py-trie HexaryTrie: set one by one (5k keys, rate per second)", "inserts/s",
         lambda: bench_py_trie_insert(n(5_000))),
        ("pycita Trie: 3k random updates + commit on a 100k-key trie, x10", "updates/s", runs["update"]),
        ("pycita build_from_sorted, 200k sorted keys", "keys/s", runs["build"]),
        ("pycita Trie.items() over 200k keys from a dict db", "items/s", runs["items"]),
    ]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}")
    print(f"{'measurement':<78} {'count':>7} {'wall rate':>10} {'cpu rate':>10}  unit")
    for label, unit, run in rows:
        clock, count = run()
        print(f"{label:<78} {count:>7} {count / clock.wall:>10,.0f} {count / clock.cpu:>10,.0f}  {unit}", flush=True)


if __name__ == "__main__":
    main()

"""End-to-end transfer throughput of a one-node pycita chain (a benchmark, not a test).

Usage::

    .venv/bin/python bench/throughput_bench.py --tps 1500 --duration 30      # paced at 1500 tx/s
    .venv/bin/python bench/throughput_bench.py --tps 0 --count 30000         # as fast as the node accepts

What it does:

1. creates a one-node chain in a temp dir (:func:`pycita.node.create_chain`,
   ``--interval`` block interval, default 1 s, ``--accounts`` funded accounts)
   and starts it under supervisord (RabbitMQ must be running:
   ``scripts/ensure_rabbitmq.sh``);
2. pre-signs ``tps * duration`` (or ``--count``) TRANSFERs from the funded
   accounts to ``--recipients`` fresh addresses (signing is outside the
   measured window);
3. submits them over JSON-RPC (``sendRawTransaction`` batches of ``--batch``,
   ``--threads`` HTTP connections), paced at ``--tps`` (0: as fast as accepted);
4. watches the chain (``getBlockByNumber``, every 50 ms) until every accepted
   tx is committed (or ``--drain-timeout``), and reports:

   * **sustained committed tx/s**: transfers of the blocks whose header
     timestamp lies in the steady-state window (``--warmup`` seconds after the
     first submit .. the end of submission), divided by the timestamp span of
     those blocks (from the parent of the first one to the last one);
   * overall committed tx/s (all committed txs / first submit .. last commit);
   * auth acceptance rate (accepted / sent, rejections by code) and submit rate;
   * submit -> commit latency p50/p95/max (commit = when the watcher first saw
     the block; the watcher adds <= 50 ms);
   * per-block proposal -> commit (consensus "proposing block" log line to
     chain "committed block" log line) and block period;
   * CPU seconds per service process during the submit+drain window (from
     ``/proc/<pid>/stat``, pids from supervisord), peak RSS (VmHWM), and the
     same for RabbitMQ (``beam.smp``) and this benchmark process;
   * the machine (nproc, CPU model, RAM, Python).

Prints a table and writes JSON to ``bench/results/throughput.json`` (``--out``).
The chain dir is removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import coincurve
import rlp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pycita import node as nodelib  # noqa: E402
from pycita.client import Client, RpcError, to_hex  # noqa: E402
from pycita.crypto import PrivateKey, keccak  # noqa: E402
from pycita.types import Action, SignedTransaction, Transaction  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
TRANSFER_QUOTA = 21_000


# ------------------------------------------------------------------ machine / procs

def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    return {"nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "cpu_model": model,
            "ram_gib": round(mem_kb / 1024 / 1024, 1), "python": platform.python_version(),
            "platform": platform.platform(), "loadavg_at_start": [round(x, 2) for x in load]}


def proc_cpu(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds (None if gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_hwm_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def system_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    vals = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return float(sum(vals) - idle), float(sum(vals))


def find_rabbit_pid() -> int | None:
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if b"beam.smp" in cmd and b"rabbit" in cmd:
            return int(d.name)
    return None


def service_pids(node_dir: Path) -> dict[str, int]:
    cfg = nodelib.node_config(node_dir)
    info = nodelib._process_info(cfg) or {}  # supervisord's view: name -> {pid, ...}
    return {name: int(i.get("pid") or 0) for name, i in info.items() if i.get("pid")}


# ------------------------------------------------------------------ signing

def sign_transfers(keys: list[PrivateKey], count: int, recipients: int, chain_id: int, valid_until: int,
                   seed: int) -> list[tuple[str, bytes]]:
    """``count`` signed TRANSFERs round-robin over ``keys`` (nonces from 0): (0x-raw, tx hash)."""
    rng = random.Random(seed)
    to_addrs = [rng.randbytes(20) for _ in range(recipients)]
    signers = [coincurve.PrivateKey(k.secret) for k in keys]
    nonces = [0] * len(keys)
    out: list[tuple[str, bytes]] = []
    for n in range(count):
        i = n % len(keys)
        to = to_addrs[rng.randrange(recipients)]
        value = rng.randrange(1, 1000)
        tx = Transaction(chain_id, nonces[i], valid_until, TRANSFER_QUOTA, to, value, int(Action.TRANSFER), b"")
        sig = bytes(signers[i].sign_recoverable(tx.signing_hash, hasher=None))
        stx = SignedTransaction(chain_id, nonces[i], valid_until, TRANSFER_QUOTA, to, value,
                                int(Action.TRANSFER), b"", sig)
        nonces[i] += 1
        raw = rlp.encode(stx)
        out.append((to_hex(raw), keccak(raw)))
    return out


# ------------------------------------------------------------------ chain watcher

class Watcher(threading.Thread):
    """Polls the chain for new blocks; records (number, header ts, tx hashes, first-seen time)."""

    def __init__(self, url: str, start_height: int) -> None:
        super().__init__(daemon=True, name="watcher")
        self.client = Client(url, timeout=30)
        self.next = start_height + 1
        self.blocks: list[dict[str, Any]] = []
        self.seen_at: dict[bytes, float] = {}
        self.stop_evt = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stop_evt.is_set():
            try:
                tip = self.client.block_number()
            except RpcError:
                time.sleep(0.1)
                continue
            while self.next <= tip:
                try:
                    blk = self.client.get_block(self.next, False)
                except RpcError:
                    break
                if blk is None:
                    break
                now = time.time()
                hashes = [bytes.fromhex(h[2:]) for h in blk["transactions"]]
                with self.lock:
                    for h in hashes:
                        self.seen_at.setdefault(h, now)
                    self.blocks.append({"number": int(blk["number"], 16), "timestamp_ms": int(blk["timestamp"], 16),
                                        "txs": len(hashes), "seen_at": now})
                self.next += 1
            self.stop_evt.wait(0.05)

    def committed(self) -> int:
        with self.lock:
            return len(self.seen_at)


# ------------------------------------------------------------------ submitter

def submit(url: str, txs: list[tuple[str, bytes]], tps: float, batch: int, threads: int
           ) -> tuple[dict[bytes, float], Counter[int], float, float]:
    """Send all ``txs``; returns (accepted hash -> submit time, rejections by code, t_start, t_end)."""
    batches = [txs[i:i + batch] for i in range(0, len(txs), batch)]
    accepted: dict[bytes, float] = {}
    rejected: Counter[int] = Counter()
    lock = threading.Lock()
    next_idx = [0]
    t_start = time.time()

    def worker() -> None:
        client = Client(url, timeout=60)
        while True:
            with lock:
                k = next_idx[0]
                next_idx[0] += 1
            if k >= len(batches):
                return
            if tps > 0:
                due = t_start + k * batch / tps
                delay = due - time.time()
                if delay > 0:
                    time.sleep(delay)
            items = batches[k]
            sent_at = time.time()
            try:
                results = client.batch([("sendRawTransaction", (raw,)) for raw, _h in items])
            except RpcError as exc:
                results = [exc] * len(items)
            with lock:
                for (_raw, h), r in zip(items, results, strict=True):
                    if isinstance(r, RpcError):
                        code = r.auth_code
                        rejected[code if code is not None else r.code] += 1
                    else:
                        accepted[h] = sent_at

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return accepted, rejected, t_start, time.time()


# ------------------------------------------------------------------ logs

_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _log_times(path: Path, pattern: str) -> dict[int, float]:
    rx = re.compile(pattern)
    out: dict[int, float] = {}
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        m = rx.search(line)
        t = _TS.match(line)
        if m and t:
            ts = datetime.strptime(t.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.setdefault(int(m.group(1)), ts)
    return out


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


# ------------------------------------------------------------------ main

def run(args: argparse.Namespace) -> dict[str, Any]:
    info_machine = machine()
    tmp = Path(tempfile.mkdtemp(prefix="pycita-bench-"))
    chain_dir = tmp / "chain"
    options: dict[str, Any] = {"max_block_txs": args.max_block_txs}
    chain = nodelib.create_chain(chain_dir, 1, args.interval, funded_accounts=args.accounts, jsonrpc_port=None,
                                 node_options=options)
    nd = chain.node_dirs[0]
    url = f"http://127.0.0.1:{chain.jsonrpc_ports[0]}"
    keys = [a.key() for a in chain.accounts]
    try:
        print(f"chain in {chain_dir}; starting node ...", flush=True)
        nodelib.start(nd)
        client = Client(url, timeout=30)
        deadline = time.time() + 60
        while True:
            try:
                tip = client.block_number()
                break
            except RpcError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        count = args.count or int(args.tps * args.duration)
        valid_until = tip + 100
        t0 = time.time()
        txs = sign_transfers(keys, count, args.recipients, 1, valid_until, args.seed)
        sign_s = time.time() - t0
        print(f"signed {count} transfers in {sign_s:.1f} s ({count / sign_s:.0f}/s); submitting ...", flush=True)
        tip = client.block_number()
        watcher = Watcher(url, tip)
        watcher.start()
        pids = service_pids(nd)
        rabbit = find_rabbit_pid()
        tracked = dict(pids)
        if rabbit:
            tracked["rabbitmq"] = rabbit
        cpu0 = {n: proc_cpu(p) for n, p in tracked.items()}
        self0 = os.times()
        sys0 = system_cpu()

        accepted, rejected, t_start, t_end = submit(url, txs, args.tps, args.batch, args.threads)
        n_acc = len(accepted)
        print(f"submitted {count} in {t_end - t_start:.1f} s: accepted {n_acc}; waiting for commits ...", flush=True)
        drain_deadline = time.time() + args.drain_timeout
        while time.time() < drain_deadline:
            with watcher.lock:
                done = sum(1 for h in accepted if h in watcher.seen_at)
            if done >= n_acc:
                break
            time.sleep(0.2)
        t_drained = time.time()
        cpu1 = {n: proc_cpu(p) for n, p in tracked.items()}
        self1 = os.times()
        sys1 = system_cpu()
        hwm = {n: proc_hwm_mib(p) for n, p in tracked.items()}
        watcher.stop_evt.set()
        watcher.join(5)

        with watcher.lock:
            blocks = list(watcher.blocks)
            seen = dict(watcher.seen_at)
        committed = [h for h in accepted if h in seen]
        lat = [seen[h] - accepted[h] for h in committed]

        # steady state: blocks stamped in [t_start + warmup, t_end]
        lo_ms, hi_ms = (t_start + args.warmup) * 1000, t_end * 1000
        window = [b for b in blocks if lo_ms <= b["timestamp_ms"] <= hi_ms]
        sustained = None
        if len(window) >= 2:
            span = (window[-1]["timestamp_ms"] - window[0]["timestamp_ms"]) / 1000
            sustained = sum(b["txs"] for b in window[1:]) / span if span > 0 else None
        last_commit = max((seen[h] for h in committed), default=t_end)
        overall = len(committed) / (last_commit - t_start) if committed else 0.0
        busy = [b for b in blocks if b["txs"]]
        periods = [(b["timestamp_ms"] - a["timestamp_ms"]) / 1000 for a, b in zip(blocks, blocks[1:], strict=False)
                   if b["txs"]]

        logs = nd / "logs"
        proposed = _log_times(logs / "consensus.log", r"proposing block (\d+) ")
        chain_commit = _log_times(logs / "chain.log", r"chain: committed block (\d+) ")
        exec_commit = _log_times(logs / "executor.log", r"executor: committed block (\d+) ")
        p2c = [chain_commit[b["number"]] - proposed[b["number"]] for b in busy
               if b["number"] in proposed and b["number"] in chain_commit]
        p2ec = [exec_commit[b["number"]] - proposed[b["number"]] for b in busy
                if b["number"] in proposed and b["number"] in exec_commit]

        wall = t_drained - t_start
        cpu = {}
        for n in tracked:
            a, b = cpu0.get(n), cpu1.get(n)
            cpu[n] = {"cpu_s": round(b - a, 2) if a is not None and b is not None else None,
                      "cpu_pct": round(100 * (b - a) / wall, 1) if a is not None and b is not None else None,
                      "peak_rss_mib": round(peak, 1) if (peak := hwm.get(n)) else None}
        bench_cpu = (self1.user - self0.user) + (self1.system - self0.system)
        cpu["bench(client)"] = {"cpu_s": round(bench_cpu, 2), "cpu_pct": round(100 * bench_cpu / wall, 1),
                                "peak_rss_mib": None}
        ours = sum(c["cpu_s"] or 0 for c in cpu.values())
        sys_busy = (sys1[0] - sys0[0]) / CLK_TCK
        system = {"busy_cpu_s": round(sys_busy, 2), "capacity_cpu_s": round((sys1[1] - sys0[1]) / CLK_TCK, 2),
                  "ours_cpu_s": round(ours, 2), "others_cpu_s": round(sys_busy - ours, 2)}

        def r(x: float | None, nd_: int = 3) -> float | None:
            return None if x is None else round(x, nd_)

        return {
            "machine": info_machine,
            "params": {"tps": args.tps, "duration": args.duration, "count": count, "interval": args.interval,
                       "batch": args.batch, "threads": args.threads, "accounts": args.accounts,
                       "recipients": args.recipients, "max_block_txs": args.max_block_txs, "warmup": args.warmup},
            "signing_s": round(sign_s, 2),
            "sent": count,
            "accepted": n_acc,
            "acceptance_rate": round(n_acc / count, 4) if count else None,
            "rejected": {str(k): v for k, v in sorted(rejected.items())},
            "submit_s": round(t_end - t_start, 2),
            "submit_tps": round(count / (t_end - t_start), 1),
            "accepted_tps": round(n_acc / (t_end - t_start), 1),
            "committed": len(committed),
            "uncommitted": n_acc - len(committed),
            "sustained_committed_tps": r(sustained, 1),
            "steady_blocks": len(window),
            "overall_committed_tps": round(overall, 1),
            "latency_s": {"p50": r(pct(lat, 0.5)), "p95": r(pct(lat, 0.95)), "max": r(max(lat) if lat else None)},
            "blocks_with_txs": len(busy),
            "txs_per_block": {"mean": r(statistics.mean(b["txs"] for b in busy) if busy else None, 1),
                              "max": max((b["txs"] for b in busy), default=0)},
            "block_period_s": {"p50": r(pct(periods, 0.5)), "p95": r(pct(periods, 0.95))},
            "proposal_to_chain_commit_s": {"p50": r(pct(p2c, 0.5)), "p95": r(pct(p2c, 0.95)),
                                           "max": r(max(p2c) if p2c else None)},
            "proposal_to_executor_commit_s": {"p50": r(pct(p2ec, 0.5)), "p95": r(pct(p2ec, 0.95))},
            "wall_s": round(wall, 2),
            "cpu": cpu,
            "system_cpu": system,
            "blocks": blocks,
        }
    finally:
        try:
            nodelib.stop(nd)
        except Exception as exc:  # noqa: BLE001
            print(f"warning: stopping the node failed: {exc}", file=sys.stderr)
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def print_table(res: dict[str, Any]) -> None:
    m = res["machine"]
    print(f"\nmachine: {m['nproc']} cpus ({m['cpu_model']}), {m['ram_gib']} GiB RAM, Python {m['python']}, "
          f"load at start {m['loadavg_at_start']}")
    p = res["params"]
    print(f"params: tps={p['tps']} count={p['count']} interval={p['interval']} s batch={p['batch']} "
          f"threads={p['threads']} accounts={p['accounts']} max_block_txs={p['max_block_txs']}")
    rows = [
        ("sent / accepted", f"{res['sent']} / {res['accepted']} ({100 * (res['acceptance_rate'] or 0):.1f} %)"
                            f" rejected {res['rejected'] or 'none'}"),
        ("submit time / rate", f"{res['submit_s']} s, {res['submit_tps']} tx/s offered, "
                               f"{res['accepted_tps']} tx/s accepted"),
        ("committed", f"{res['committed']} (uncommitted {res['uncommitted']})"),
        ("SUSTAINED committed tx/s", f"{res['sustained_committed_tps']} ({res['steady_blocks']} blocks)"),
        ("overall committed tx/s", f"{res['overall_committed_tps']}"),
        ("submit->commit latency", f"p50 {res['latency_s']['p50']} s, p95 {res['latency_s']['p95']} s, "
                                   f"max {res['latency_s']['max']} s"),
        ("blocks with txs", f"{res['blocks_with_txs']}, txs/block mean {res['txs_per_block']['mean']} "
                            f"max {res['txs_per_block']['max']}"),
        ("block period", f"p50 {res['block_period_s']['p50']} s, p95 {res['block_period_s']['p95']} s"),
        ("proposal->chain commit", f"p50 {res['proposal_to_chain_commit_s']['p50']} s, "
                                   f"p95 {res['proposal_to_chain_commit_s']['p95']} s"),
        ("proposal->executor commit", f"p50 {res['proposal_to_executor_commit_s']['p50']} s"),
    ]
    for k, v in rows:
        print(f"  {k:<28} {v}")
    print(f"  CPU over {res['wall_s']} s (submit + drain):")
    print(f"    {'process':<16} {'cpu s':>8} {'% of 1 core':>12} {'peak RSS MiB':>13}")
    for n, c in res["cpu"].items():
        print(f"    {n:<16} {c['cpu_s']!s:>8} {c['cpu_pct']!s:>12} {c['peak_rss_mib']!s:>13}")
    sc = res["system_cpu"]
    print(f"  whole machine: {sc['busy_cpu_s']} of {sc['capacity_cpu_s']} cpu s busy; ours {sc['ours_cpu_s']}, "
          f"other processes (other engineers' tests) {sc['others_cpu_s']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tps", type=float, default=1500, help="target submit rate (0: as fast as accepted)")
    ap.add_argument("--duration", type=float, default=30, help="seconds of load at --tps")
    ap.add_argument("--count", type=int, default=0, help="number of txs (default tps*duration)")
    ap.add_argument("--interval", type=float, default=1.0, help="block interval, seconds")
    ap.add_argument("--batch", type=int, default=200, help="sendRawTransaction calls per HTTP request")
    ap.add_argument("--threads", type=int, default=2, help="HTTP submitter threads")
    ap.add_argument("--accounts", type=int, default=200, help="funded sender accounts")
    ap.add_argument("--recipients", type=int, default=20_000, help="distinct recipient addresses")
    ap.add_argument("--max-block-txs", type=int, default=5000)
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds excluded at the start of the window")
    ap.add_argument("--drain-timeout", type=float, default=120.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "throughput.json"))
    ap.add_argument("--keep", action="store_true", help="keep the chain dir (logs) afterwards")
    args = ap.parse_args(argv)
    if args.tps <= 0 and not args.count:
        ap.error("--tps 0 needs --count")
    res = run(args)
    print_table(res)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

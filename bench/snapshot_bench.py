"""Snapshot performance at scale, side by side (not a test).

One command::

    .venv/bin/python bench/snapshot_bench.py --sizes 10000,100000,1000000 --blocks 1000

For each size (number of generated accounts) it creates a one-node chain,
fills it with ``pycita generate`` (``--blocks`` blocks, ``accounts/1000``
contracts, ``accounts/10`` storage slots), and on that same node measures:

* ``tar | zstd -3`` of the node's ``data`` directory (node stopped) and its unpacking;
* with the node running: its block rate without an export (``--rate-window`` s),
  then ``snapshot_tool -m snapshot`` (wall, CPU of the tool and of every
  service, file sizes, peak RSS and private RSS of every service sampled from
  ``/proc`` every 20 ms) and the block rate while exports run back to back for the same window;
* ``snapshot_tool -m verify`` (wall, CPU);
* ``snapshot_tool -m restore`` on the running node (full verification; wall,
  CPU, peak RSS), then that the node produces a block on top of it;
* replay: a fresh chain + executor (in a subprocess) accepting and
  re-executing every generated block from genesis with the services' code
  (:meth:`Chain.accept`, :meth:`Executor.apply_synced_blocks`: every signature
  recovered, every root checked); skipped above ``--replay-max-accounts``
  (reported as not measured, never extrapolated);
* ``--profile``: cProfile of the offline restore path (restore_chain +
  restore_state into a scratch dir), top functions by cumulative time.

Prints a table with ratios, writes ``bench/results/snapshot_bench.json`` and
``bench/results/snapshot_bench.png`` (times and peak RSS against accounts).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

TARGETS = {
    "restore_vs_replay_speedup": (">=", 50.0),
    "snapshot_size_vs_tar_zstd": ("<=", 0.5),
    "export_vs_tar_time": ("<=", 2.0),
    "restore_vs_untar_time": ("<=", 2.0),
    "state_rebuild_accounts_per_s": (">=", 30_000.0),
    "export_accounts_per_s": (">=", 50_000.0),
    "peak_rss_chain_mib": ("<", 512.0),
    "peak_rss_executor_mib": ("<", 512.0),
    "production_during_export_ratio": (">=", 0.9),
}


# ------------------------------------------------------------------ /proc helpers


def proc_cpu(pid: int) -> float:
    """utime + stime of ``pid`` and of its reaped children (the snapshot decode worker) in seconds (0 when gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def proc_rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def proc_rss_anon(pid: int) -> int:
    """The private (anonymous) part of ``pid``'s RSS: ``RssAnon`` of /proc/<pid>/status, in bytes. The rest of
    RSS is file-backed: pages of files the process maps (LevelDB maps its table files), shared and
    reclaimable page cache."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


class RssSampler:
    """Peak RSS (total and private) of some pids, sampled from /proc every ``interval`` seconds in a thread."""

    def __init__(self, pids: dict[str, int], interval: float = 0.02) -> None:
        self.pids = pids
        self.peak = {name: proc_rss(pid) for name, pid in pids.items()}
        self.peak_anon = {name: proc_rss_anon(pid) for name, pid in pids.items()}
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], proc_rss(pid))
                self.peak_anon[name] = max(self.peak_anon[name], proc_rss_anon(pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def mib(self) -> dict[str, float]:
        return {k: round(v / 2**20, 1) for k, v in self.peak.items()}

    def anon_mib(self) -> dict[str, float]:
        return {k: round(v / 2**20, 1) for k, v in self.peak_anon.items()}


def run_timed(cmd: list[str] | str, *, cwd: Path | None = None, pids: dict[str, int] | None = None,
              shell: bool = False, check: bool = True) -> dict[str, Any]:
    """Run ``cmd``; wall, CPU (children + ``pids``), peak RSS of ``pids`` during it."""
    pids = pids or {}
    cpu0 = {n: proc_cpu(p) for n, p in pids.items()}
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with RssSampler(pids) as sampler:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, shell=shell, capture_output=True, text=True,
                              executable="/bin/bash" if shell else None)
        wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    child_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    svc_cpu = {n: round(proc_cpu(p) - cpu0[n], 3) for n, p in pids.items()}
    if check and proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return {"wall_s": round(wall, 3), "cpu_s": round(child_cpu + sum(svc_cpu.values()), 3),
            "tool_cpu_s": round(child_cpu, 3), "service_cpu_s": svc_cpu, "peak_rss_mib": sampler.mib(),
            "peak_rss_anon_mib": sampler.anon_mib(),
            "returncode": proc.returncode, "stdout": proc.stdout[-4000:], "stderr": proc.stderr[-4000:]}


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ------------------------------------------------------------------ node helpers


def service_pids(node_dir: Path) -> dict[str, int]:
    from pycita import node as nodelib

    st = nodelib.status(node_dir)
    return {n: int(s["pid"]) for n, s in st["services"].items() if s.get("pid")}


def height(node_dir: Path) -> int:
    from pycita.client import Client
    from pycita.config import load_node_config

    cfg = load_node_config(node_dir)
    client = Client(f"http://{cfg.jsonrpc_host}:{cfg.jsonrpc_port}")
    try:
        return client.block_number()
    finally:
        client.close()


def wait_height(node_dir: Path, target: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        try:
            last = height(node_dir)
            if last >= target:
                return last
        except Exception:  # noqa: BLE001 - jsonrpc may be starting or in flight mode
            pass
        time.sleep(0.1)
    raise RuntimeError(f"node {node_dir} did not reach height {target} in {timeout} s (at {last})")


def block_rate(node_dir: Path, seconds: float) -> dict[str, float]:
    h0, t0 = height(node_dir), time.perf_counter()
    time.sleep(seconds)
    h1, t1 = height(node_dir), time.perf_counter()
    return {"blocks": h1 - h0, "seconds": round(t1 - t0, 3), "blocks_per_s": round((h1 - h0) / (t1 - t0), 4)}


# ------------------------------------------------------------------ replay worker


def replay_worker(src: Path, dst: Path) -> dict[str, Any]:
    """A fresh chain + executor accepting and re-executing every block of the node in ``src``."""
    from pycita.config import load_node_config
    from pycita.genesis import Genesis
    from pycita.storage import LevelDB
    from services.chain.chain import Chain
    from services.chain.store import ChainStore
    from services.executor.executor import Executor

    cfg = load_node_config(src)
    genesis = Genesis.load(cfg.genesis_path)
    source = ChainStore(cfg.service_data("chain"))
    if dst.exists():
        shutil.rmtree(dst)
    chain = Chain(ChainStore(dst / "chain"), genesis)
    kv = LevelDB(dst / "executor")
    executor = Executor(kv, genesis)
    tip = source.tip()
    assert tip is not None
    top = tip[0]
    t0 = time.perf_counter()
    txs = 0
    h = 1
    while h <= top:
        batch = list(source.iter_blocks(h, min(top, h + 99)))
        raws = []
        for b in batch:
            raw = b.block_rlp()
            chain.accept(raw, b.proof, source.receipts(b.height))
            raws.append(raw)
            txs += len(source.transactions(b.height))
        executor.apply_synced_blocks(raws, top)
        h += len(batch)
    wall = time.perf_counter() - t0
    ok = executor.tip.height == top and executor.tip.block_hash == tip[1]
    source.close()
    chain.store.close()
    kv.close()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"blocks": top, "transactions": txs, "wall_s": round(wall, 3), "ok": ok,
            "peak_rss_mib": round(ru.ru_maxrss / 1024, 1)}


# ------------------------------------------------------------------ restore profile


def profile_restore(node_dir: Path, name: str, scratch: Path, top: int = 25) -> dict[str, Any]:
    """cProfile of restore_chain + restore_state (the services' restore code) into ``scratch``."""
    from pycita.genesis import Genesis
    from services.chain.snapshot import restore_chain
    from services.executor.snapshot import restore_state

    genesis = Genesis.load(node_dir / "genesis.json")
    chain_file = node_dir / "snapshots" / f"{name}_chain.rlp"
    exec_file = node_dir / "snapshots" / f"{name}_executor.rlp"
    if scratch.exists():
        shutil.rmtree(scratch)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    restore_chain(chain_file, genesis, scratch / "chain")
    t1 = time.perf_counter()
    restore_state(exec_file, chain_file, genesis, scratch / "executor")
    prof.disable()
    t2 = time.perf_counter()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(top)
    tt = io.StringIO()
    pstats.Stats(prof, stream=tt).sort_stats("tottime").print_stats(top)
    shutil.rmtree(scratch, ignore_errors=True)
    return {"chain_s": round(t1 - t0, 3), "state_s": round(t2 - t1, 3), "cumulative": out.getvalue(),
            "tottime": tt.getvalue()}


# ------------------------------------------------------------------ one size


def parse_sizes(spec: str, default_blocks: int) -> list[tuple[int, int]]:
    """``"10000,100000,1000000:100000"`` -> [(accounts, blocks), ...]; blocks default to ``--blocks``."""
    out: list[tuple[int, int]] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        acc, _, blk = part.partition(":")
        try:
            out.append((int(acc), int(blk) if blk else default_blocks))
        except ValueError:
            raise SystemExit(f"snapshot_bench: bad size {part!r} in --sizes (expected ACCOUNTS or ACCOUNTS:BLOCKS)") from None
    if not out:
        raise SystemExit("snapshot_bench: --sizes names no size")
    return out


def bench_size(accounts: int, blocks: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from pycita import node as nodelib
    from pycita.generate import GenerateParams, GenerateReport, generate

    root = work / f"acc{accounts}-b{blocks}"
    contracts = max(1, accounts // 1000)
    slots = accounts // 10
    res: dict[str, Any] = {"accounts": accounts, "blocks": blocks, "contracts": contracts, "slots": slots}
    saved = root / "generate.json"  # written after a complete generation, for --reuse
    replay_saved = root / "replay.json"  # the replay of that generated chain, for --reuse
    nd = root / "0"
    if args.reuse and saved.is_file() and json.loads(saved.read_text()).get("params") == [blocks,
                                                                                           args.block_interval]:
        if nodelib.is_running(nd):
            nodelib.stop(nd)
        gen = GenerateReport(**json.loads(saved.read_text())["report"])
        log(f"[{accounts}] reusing the node generated in {root}")
    else:
        if root.exists():
            if (root / "0" / "node.json").exists() and nodelib.is_running(root / "0"):
                nodelib.stop(root / "0")
            shutil.rmtree(root)
        info = nodelib.create_chain(root, 1, args.block_interval, jsonrpc_port=None)
        nd = info.node_dirs[0]
        log(f"[{accounts}] generating {blocks} blocks, {contracts} contracts, {slots} slots")
        gen = generate(nd, GenerateParams(accounts=accounts, blocks=blocks, contracts=contracts, slots=slots,
                                          txs_per_block=max(5000, -(-accounts // blocks) + 10)))
        saved.write_text(json.dumps({"params": [blocks, args.block_interval], "report": gen.to_json()}))
    res["generate"] = gen.to_json()
    res["data_dir_bytes"] = dir_size(nd / "data")
    log(f"[{accounts}] generated in {gen.seconds:.1f} s; data {res['data_dir_bytes'] / 2**20:.1f} MiB")

    # replay (a fresh node re-executing the chain from genesis), in a subprocess; it depends only on the
    # generated chain, so a --generate-only run measures it once and --reuse runs take it from replay.json
    if accounts > args.replay_max_accounts:
        res["replay"] = {"skipped": f"accounts > --replay-max-accounts {args.replay_max_accounts}"}
    elif args.reuse and replay_saved.is_file():
        res["replay"] = {**json.loads(replay_saved.read_text()), "reused_from": str(replay_saved)}
        log(f"[{accounts}] replay {res['replay']['wall_s']} s (measured earlier on this node, {replay_saved})")
    else:
        rep = run_timed([sys.executable, __file__, "--replay-worker", str(nd), str(work / f"acc{accounts}-replay")])
        if rep["returncode"] != 0:
            raise SystemExit(f"snapshot_bench: replay of {nd} failed: {rep['stderr'][-2000:]}")
        res["replay"] = {**json.loads(rep["stdout"].strip().splitlines()[-1]), "cpu_s": rep["cpu_s"],
                         "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                         "loadavg_after": list(os.getloadavg())}
        shutil.rmtree(work / f"acc{accounts}-replay", ignore_errors=True)
        replay_saved.write_text(json.dumps(res["replay"]))
        log(f"[{accounts}] replay {res['replay']['wall_s']} s ({res['replay']['transactions']} txs)")
    if args.generate_only:
        return res

    # tar | zstd -3 of the data dirs, and unpacking (node stopped: a consistent copy)
    tarball = work / f"acc{accounts}.tar.zst"
    res["tar_zstd"] = run_timed(f"tar -C {nd} -cf - data | zstd -3 -q -f -o {tarball}", shell=True)
    res["tar_zstd"]["bytes"] = tarball.stat().st_size
    untar_dir = work / f"acc{accounts}-untar"
    shutil.rmtree(untar_dir, ignore_errors=True)
    untar_dir.mkdir()
    res["untar"] = run_timed(f"zstd -d -q -c {tarball} | tar -C {untar_dir} -xf -", shell=True)
    shutil.rmtree(untar_dir, ignore_errors=True)
    tarball.unlink()
    log(f"[{accounts}] tar|zstd {res['tar_zstd']['wall_s']} s {res['tar_zstd']['bytes']} B; "
        f"untar {res['untar']['wall_s']} s")

    tool = str(BIN / "snapshot_tool")
    # from here on the node changes (new blocks, then a restore): it is no longer the generated one
    for f in (saved, replay_saved):
        if f.exists():
            f.replace(f.with_suffix(".used.json"))
    nodelib.start(nd, timeout=120)
    try:
        h0 = wait_height(nd, gen.height + 1, 120)
        pids = service_pids(nd)
        res["service_pids"] = pids
        res["rate_without_export"] = block_rate(nd, args.rate_window)
        # one measured export
        exp = run_timed([tool, "-m", "snapshot", "-f", "bench"], cwd=nd, pids=pids)
        chain_file, exec_file = nd / "snapshots" / "bench_chain.rlp", nd / "snapshots" / "bench_executor.rlp"
        exp["chain_bytes"], exp["executor_bytes"] = chain_file.stat().st_size, exec_file.stat().st_size
        exp["bytes"] = exp["chain_bytes"] + exp["executor_bytes"]
        res["snapshot"] = exp
        log(f"[{accounts}] snapshot {exp['wall_s']} s, {exp['bytes']} B, rss {exp['peak_rss_mib']}")
        # production while exports run back to back
        ha, ta, n = height(nd), time.perf_counter(), 0
        while time.perf_counter() - ta < args.rate_window or n == 0:
            run_timed([tool, "-m", "snapshot", "-f", "ratebench"], cwd=nd)
            n += 1
        hb, tb = height(nd), time.perf_counter()
        res["rate_during_export"] = {"blocks": hb - ha, "seconds": round(tb - ta, 3), "exports": n,
                                     "blocks_per_s": round((hb - ha) / (tb - ta), 4)}
        for f in (nd / "snapshots").glob("ratebench_*"):
            f.unlink()
        # offline verification
        res["verify"] = run_timed([tool, "-m", "verify", "-f", "bench"], cwd=nd)
        log(f"[{accounts}] verify {res['verify']['wall_s']} s")
        # restore with full verification, on the running node
        res["restore"] = run_timed([tool, "-m", "restore", "-f", "bench"], cwd=nd, pids=pids)
        log(f"[{accounts}] restore {res['restore']['wall_s']} s, rss {res['restore']['peak_rss_mib']}")
        hr = height(nd)
        res["after_restore"] = {"height": hr, "produced_next": wait_height(nd, hr + 1, 60) > hr}
        res["heights"] = {"generated": gen.height, "at_start": h0}
        res["vm_hwm_mib"] = {n: _vm_hwm(p) for n, p in pids.items()}
    finally:
        nodelib.stop(nd)
    if args.profile:
        res["restore_profile"] = profile_restore(nd, "bench", work / f"acc{accounts}-profile")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return res


def _others_peak(step: dict[str, Any]) -> str:
    """The largest peak RSS of the services other than chain and executor during ``step``, with its name."""
    others = {n: v for n, v in step.get("peak_rss_mib", {}).items() if n not in ("chain", "executor")}
    if not others:
        return "-"
    name = max(others, key=lambda n: others[n])
    return f"{others[name]} ({name})"


def _vm_hwm(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


# ------------------------------------------------------------------ summary


def derive(r: dict[str, Any]) -> dict[str, Any]:
    """Ratios and rates of one size against the targets."""
    acc_total = r["generate"]["accounts_created"] + r["contracts"]
    snap, rest, tar, untar = r["snapshot"], r["restore"], r["tar_zstd"], r["untar"]
    rep = r.get("replay", {})
    d: dict[str, Any] = {
        "state_accounts": acc_total,
        "snapshot_size_vs_tar_zstd": round(snap["bytes"] / tar["bytes"], 3),
        "export_vs_tar_time": round(snap["wall_s"] / tar["wall_s"], 3),
        "restore_vs_untar_time": round(rest["wall_s"] / untar["wall_s"], 3),
        "state_rebuild_accounts_per_s": round(acc_total / rest["wall_s"]),
        "export_accounts_per_s": round(acc_total / snap["wall_s"]),
        "peak_rss_chain_mib": max(snap["peak_rss_mib"].get("chain", 0), rest["peak_rss_mib"].get("chain", 0)),
        "peak_rss_executor_mib": max(snap["peak_rss_mib"].get("executor", 0),
                                     rest["peak_rss_mib"].get("executor", 0)),
        "production_during_export_ratio": round(r["rate_during_export"]["blocks_per_s"]
                                                 / max(r["rate_without_export"]["blocks_per_s"], 1e-9), 3),
        "restore_vs_replay_speedup": round(rep["wall_s"] / rest["wall_s"], 2) if "wall_s" in rep else None,
    }
    d["targets"] = {}
    for key, (op, goal) in TARGETS.items():
        v = d.get(key)
        met = None if v is None else {">=": v >= goal, "<=": v <= goal, "<": v < goal}[op]
        d["targets"][key] = {"value": v, "target": f"{op} {goal:g}", "met": met}
    return d


def table(results: list[dict[str, Any]]) -> str:
    rows = [("accounts", lambda r: f"{r['accounts']:,}"),
            ("blocks / txs", lambda r: f"{r['generate']['height']} / {r['generate']['transactions']:,}"),
            ("generate s", lambda r: f"{r['generate']['seconds']:.1f}"),
            ("data dir MiB", lambda r: f"{r['data_dir_bytes'] / 2**20:.1f}"),
            ("snapshot s (cpu s)", lambda r: f"{r['snapshot']['wall_s']:.2f} ({r['snapshot']['cpu_s']:.1f})"),
            ("tar|zstd -3 s (cpu s)", lambda r: f"{r['tar_zstd']['wall_s']:.2f} ({r['tar_zstd']['cpu_s']:.1f})"),
            ("snapshot MiB", lambda r: f"{r['snapshot']['bytes'] / 2**20:.2f}"),
            ("tar.zst MiB", lambda r: f"{r['tar_zstd']['bytes'] / 2**20:.2f}"),
            ("restore s (cpu s)", lambda r: f"{r['restore']['wall_s']:.2f} ({r['restore']['cpu_s']:.1f})"),
            ("verify s", lambda r: f"{r['verify']['wall_s']:.2f}"),
            ("untar s", lambda r: f"{r['untar']['wall_s']:.2f}"),
            ("replay s", lambda r: f"{r['replay']['wall_s']:.1f}" if "wall_s" in r["replay"] else "not run"),
            ("peak RSS chain exp/rest MiB",
             lambda r: f"{r['snapshot']['peak_rss_mib'].get('chain')} / {r['restore']['peak_rss_mib'].get('chain')}"),
            ("peak RSS executor exp/rest MiB",
             lambda r: f"{r['snapshot']['peak_rss_mib'].get('executor')} / "
                       f"{r['restore']['peak_rss_mib'].get('executor')}"),
            ("peak private RSS chain exp/rest MiB",
             lambda r: f"{r['snapshot'].get('peak_rss_anon_mib', {}).get('chain')} / "
                       f"{r['restore'].get('peak_rss_anon_mib', {}).get('chain')}"),
            ("peak private RSS executor exp/rest MiB",
             lambda r: f"{r['snapshot'].get('peak_rss_anon_mib', {}).get('executor')} / "
                       f"{r['restore'].get('peak_rss_anon_mib', {}).get('executor')}"),
            ("peak RSS other services exp/rest MiB",
             lambda r: f"{_others_peak(r['snapshot'])} / {_others_peak(r['restore'])}"),
            ("blocks/s idle / exporting",
             lambda r: f"{r['rate_without_export']['blocks_per_s']:.2f} / "
                       f"{r['rate_during_export']['blocks_per_s']:.2f}")]
    def target_cell(key: str) -> Callable[[dict[str, Any]], str]:
        return lambda r: _fmt_target(r["derived"]["targets"][key])

    for key, (op, goal) in TARGETS.items():
        rows.append((f"{key} ({op}{goal:g})", target_cell(key)))
    width = max(len(n) for n, _ in rows) + 2
    lines = ["| " + "metric".ljust(width) + " | " + " | ".join(f"{r['accounts']:>14,}" for r in results) + " |",
             "|" + "-" * (width + 2) + "|" + "|".join("-" * 16 for _ in results) + "|"]
    for name, fn in rows:
        lines.append("| " + name.ljust(width) + " | " + " | ".join(f"{fn(r):>14}" for r in results) + " |")
    return "\n".join(lines)


def _fmt_target(t: dict[str, Any]) -> str:
    if t["value"] is None:
        return "n/a"
    return f"{t['value']:g} {'ok' if t['met'] else 'MISS'}"


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["derived"]["state_accounts"] for r in results]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, label in (("snapshot", "export (snapshot_tool)"), ("restore", "restore (full verification)"),
                       ("tar_zstd", "tar | zstd -3"), ("untar", "zstd -d | tar x")):
        a1.plot(xs, [r[key]["wall_s"] for r in results], marker="o", label=label)
    reps = [(x, r["replay"]["wall_s"]) for x, r in zip(xs, results, strict=True) if "wall_s" in r["replay"]]
    if reps:
        a1.plot([x for x, _ in reps], [y for _, y in reps], marker="x", linestyle="--", label="replay from genesis")
    a1.set_xscale("log")
    a1.set_yscale("log")
    a1.set_xlabel("accounts in state")
    a1.set_ylabel("wall time (s)")
    a1.set_title("time vs state size")
    a1.legend(fontsize=8)
    a1.grid(True, which="both", alpha=0.3)
    for op in ("snapshot", "restore"):
        for svc in ("chain", "executor"):
            what = f"{svc} during {'export' if op == 'snapshot' else 'restore'}"
            line = a2.plot(xs, [r[op]["peak_rss_mib"].get(svc, 0) for r in results], marker="o",
                           label=f"{what} (RSS)")[0]
            a2.plot(xs, [r[op].get("peak_rss_anon_mib", {}).get(svc, 0) for r in results], marker=".",
                    linestyle="--", color=line.get_color(), label=f"{what} (private)")
    a2.axhline(512, color="red", linestyle=":", label="512 MiB target")
    a2.set_xscale("log")
    a2.set_xlabel("accounts in state")
    a2.set_ylabel("peak RSS (MiB)")
    a2.set_title("peak RSS vs state size")
    a2.legend(fontsize=7)
    a2.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0.0
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    except (OSError, ValueError):
        pass
    zstd = subprocess.run(["zstd", "--version"], capture_output=True, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu_model": cpu, "ram_gib": round(mem, 1), "python": platform.python_version(),
            "platform": platform.platform(), "zstd": zstd, "loadavg_at_start": list(os.getloadavg())}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,3000,10000",
                   help="comma-separated ACCOUNTS or ACCOUNTS:BLOCKS (default: quick; blocks from --blocks)")
    p.add_argument("--blocks", type=int, default=200, help="generated blocks per size (default: 200)")
    p.add_argument("--block-interval", type=float, default=1.0, help="node block interval, s (default: 1)")
    p.add_argument("--rate-window", type=float, default=10.0, help="seconds per block-rate measurement")
    p.add_argument("--replay-max-accounts", type=int, default=10**9, help="skip replay above this size")
    p.add_argument("--workdir", default="/tmp/pycita-snapshot-bench")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "snapshot_bench.json"))
    p.add_argument("--plot", default=str(REPO / "bench" / "results" / "snapshot_bench.png"))
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--profile", action="store_true", help="cProfile the offline restore path")
    p.add_argument("--keep", action="store_true", help="keep the generated nodes")
    p.add_argument("--generate-only", action="store_true",
                   help="only generate the nodes (kept in --workdir) for a later --reuse run")
    p.add_argument("--reuse", action="store_true",
                   help="reuse a node left in --workdir by --generate-only (same accounts, blocks and "
                        "--block-interval) and its measured replay instead of generating it again; a node a "
                        "full run has used (started, restored into) is regenerated")
    p.add_argument("--replay-worker", nargs=2, metavar=("NODE_DIR", "DST"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.replay_worker:
        print(json.dumps(replay_worker(Path(args.replay_worker[0]), Path(args.replay_worker[1]))))
        return 0
    sizes = parse_sizes(args.sizes, args.blocks)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"machine": machine(), "params": {k: v for k, v in vars(args).items()
                                                             if k != "replay_worker"},
                           "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sizes": []}
    if args.generate_only:
        for n, b in sizes:
            log(f"[{n}] generated: {json.dumps(bench_size(n, b, args, work)['generate'])}")
        return 0
    for n, b in sizes:
        r = bench_size(n, b, args, work)
        r["derived"] = derive(r)
        out["sizes"].append(r)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")  # partial results survive a later failure
    out["table"] = table(out["sizes"])
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(out["table"])
    if not args.no_plot:
        plot(out["sizes"], Path(args.plot))
        print(f"wrote {args.out} and {args.plot}")
    else:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

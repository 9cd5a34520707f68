"""``pycita load <node dir> --tps N --duration S``: mixed signed traffic against a node.

The funded keys come from ``<node dir>/../accounts.json`` (a JSON list of
``{"address", "private_key"}`` written by ``pycita create``) or from an
explicit ``keys`` argument. Every transaction is signed here and sent through
the node's JSON-RPC (``sendRawTransaction`` batches of up to 50 per HTTP
request, several sender threads).

Traffic mix, a fixed cycle of 20 transactions (:data:`MIX`):

* 4 **new accounts**: transfers of a small value to a fresh random address;
* 9 **transfers** between the funded accounts;
* 2 **deploys** of 32..256 random code bytes;
* 1 **set ABI** on a contract the sender deployed earlier in this run;
* 4 **storage writes** of 1..4 32-byte pairs into such a contract.

Set-ABI and storage writes are sent by a sender that deployed a contract in
this run, to one of its contracts (only the deployer may set an ABI). A
contract is usable once the deploy's receipt (seen by the block watcher)
names its address; until some sender has one, a set-ABI or storage write is
sent as a plain transfer instead (still counted under its own kind in
``LoadReport.by_kind``, with ``substituted`` telling how many).

Pacing: batch ``k`` is due at ``start + k * batch / tps``; the producer signs
ahead and sleeps until a batch is due, catching up without sleeping when
behind. Nonces: each sender's counter starts at its ``getTransactionCount``.
``valid_until_block`` is the latest known tip + 80.

At the end the load waits (bounded by ``receipt_timeout``) until every
accepted transaction appears in a block, then returns a :class:`LoadReport`.
Rejections are counted by auth code (``data.code`` of JSON-RPC error -32003),
other failures by their JSON-RPC error code (negative; -32000 is a timeout,
-32098 a transport failure).
"""

from __future__ import annotations

import json
import logging
import queue
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import coincurve
import rlp

from pycita.client import Client, RpcError, build_transaction, encode_store_data, from_hex
from pycita.config import load_node_config
from pycita.crypto import PrivateKey, keccak
from pycita.errors import ConfigError, PycitaError
from pycita.genesis import Genesis
from pycita.types import Action

log = logging.getLogger(__name__)

MIX: tuple[tuple[str, int], ...] = (
    ("new_account", 4), ("transfer", 9), ("deploy", 2), ("set_abi", 1), ("store", 4),
)
"""Kinds and their share in each cycle of 20 transactions."""

VALID_BLOCKS_AHEAD = 80
MAX_BATCH = 50


class LoadError(PycitaError):
    """Raised when a load run cannot start (no funded keys, node unreachable, bad arguments)."""


@dataclass(frozen=True)
class LoadReport:
    sent: int
    accepted: int
    rejected: dict[int, int]
    committed: int
    pending: int
    elapsed: float
    send_elapsed: float
    achieved_tps: float
    offered_tps: float
    blocks: int
    start_height: int
    end_height: int
    by_kind: dict[str, int] = field(default_factory=dict)
    substituted: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "sent": self.sent, "accepted": self.accepted,
            "rejected": {str(k): v for k, v in sorted(self.rejected.items())},
            "committed": self.committed, "pending": self.pending,
            "elapsed": round(self.elapsed, 3), "send_elapsed": round(self.send_elapsed, 3),
            "achieved_tps": round(self.achieved_tps, 1), "offered_tps": round(self.offered_tps, 1),
            "blocks": self.blocks, "start_height": self.start_height, "end_height": self.end_height,
            "by_kind": dict(self.by_kind), "substituted": self.substituted,
        }

    def summary(self) -> str:
        rej = ", ".join(f"code {k}: {v}" for k, v in sorted(self.rejected.items())) or "none"
        return (f"sent {self.sent}, accepted {self.accepted}, rejected {sum(self.rejected.values())} ({rej}), "
                f"committed {self.committed}, pending {self.pending}; {self.blocks} blocks "
                f"({self.start_height}..{self.end_height}); offered {self.offered_tps:.0f} tx/s, "
                f"achieved {self.achieved_tps:.0f} tx/s over {self.elapsed:.1f} s")


def kind_cycle() -> list[str]:
    """The 20-slot cycle of kinds, spread evenly (smooth weighted round robin)."""
    total = sum(w for _, w in MIX)
    current = dict.fromkeys((k for k, _ in MIX), 0)
    out: list[str] = []
    for _ in range(total):
        for k, w in MIX:
            current[k] += w
        best = max(current, key=lambda k: current[k])
        current[best] -= total
        out.append(best)
    return out


def load_keys(node_dir: Path) -> list[PrivateKey]:
    """The funded keys of ``<node dir>/../accounts.json``."""
    path = node_dir.resolve().parent / "accounts.json"
    try:
        raw = json.loads(path.read_text())
        items = raw["accounts"] if isinstance(raw, dict) else raw
        return [PrivateKey.from_hex(a["private_key"]) for a in items]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LoadError(f"cannot read funded accounts from {path}: {exc}") from exc


@dataclass
class _Sender:
    key: coincurve.PrivateKey
    address: bytes
    next_nonce: int
    contracts: list[bytes] = field(default_factory=list)


class _Run:
    """Shared state of one load run (threads: producer, senders, block watcher)."""

    def __init__(self, client: Client, senders: list[_Sender], chain_id: int, rng: random.Random) -> None:
        self.client = client
        self.senders = senders
        self.chain_id = chain_id
        self.rng = rng
        self.lock = threading.Lock()
        self.sent = 0
        self.accepted: set[bytes] = set()
        self.rejected: Counter[int] = Counter()
        self.seen: set[bytes] = set()  # tx hashes in blocks since the start
        self.ours: set[bytes] = set()  # every hash we built
        self.committed = 0
        self.deploys: dict[bytes, _Sender] = {}
        self.owners: list[_Sender] = []  # senders with at least one committed contract
        self.by_kind: Counter[str] = Counter()
        self.substituted = 0
        self.tip = 0
        self.start_height = 0
        self.watched_to = 0
        self.last_commit_at = 0.0
        self.stop = threading.Event()
        self.errors: list[str] = []

    # -- building ------------------------------------------------------------
    def build(self, kind: str, index: int) -> tuple[bytes, bytes]:
        """Sign one transaction of ``kind``; returns (raw, hash)."""
        rng = self.rng
        s = self.senders[index % len(self.senders)]
        self.by_kind[kind] += 1
        contract = None
        if kind in ("set_abi", "store"):
            with self.lock:
                if self.owners:
                    s = rng.choice(self.owners)
                    contract = rng.choice(s.contracts)
            if contract is None:
                self.substituted += 1
                kind = "transfer"
        action, to, value, data = Action.TRANSFER, b"", 0, b""
        if kind == "new_account":
            to, value = rng.randbytes(20), rng.randint(1, 1000)
        elif kind == "transfer":
            to, value = self.senders[rng.randrange(len(self.senders))].address, rng.randint(1, 1000)
        elif kind == "deploy":
            action, data = Action.DEPLOY, rng.randbytes(rng.randint(32, 256))
        elif kind == "set_abi":
            assert contract is not None
            action, to = Action.SET_ABI, contract
            data = json.dumps([{"name": f"f{rng.randrange(1000)}", "type": "function",
                                "inputs": [{"type": "uint256"}] * rng.randint(0, 4)}]).encode()
        else:
            assert contract is not None
            action, to = Action.STORE, contract
            data = encode_store_data([(rng.randbytes(32), rng.randbytes(32)) for _ in range(rng.randint(1, 4))])
        nonce = s.next_nonce
        s.next_nonce += 1
        tx = build_transaction(s.key, action=action, to=to, value=value, data=data, nonce=nonce,
                               valid_until_block=self.tip + VALID_BLOCKS_AHEAD, chain_id=self.chain_id)
        raw = rlp.encode(tx)
        h = keccak(raw)
        with self.lock:
            self.ours.add(h)
            if action == Action.DEPLOY:
                self.deploys[h] = s
        return raw, h

    # -- sending -------------------------------------------------------------
    def send(self, batch: list[tuple[bytes, bytes]]) -> None:
        try:
            results: list[bytes | RpcError] = self.client.send_raw_transactions([raw for raw, _ in batch])
        except RpcError as exc:
            results = [exc] * len(batch)
        with self.lock:
            self.sent += len(batch)
            for (_raw, h), r in zip(batch, results, strict=False):
                if isinstance(r, RpcError):
                    self.rejected[r.auth_code if r.auth_code is not None else r.code] += 1
                    if len(self.errors) < 5:
                        self.errors.append(str(r))
                else:
                    self.accepted.add(h)
                    if h in self.seen:
                        self.committed += 1

    # -- watching blocks ---------------------------------------------------------
    def watch_once(self) -> None:
        height = self.client.block_number()
        with self.lock:
            self.tip = max(self.tip, height)
        start = self.watched_to + 1
        while start <= height and not self.stop.is_set():
            end = min(height, start + 19)
            blocks = self.client.batch([("getBlockByNumber", [hex(n), False]) for n in range(start, end + 1)])
            deploy_hashes: list[bytes] = []
            for n, b in zip(range(start, end + 1), blocks, strict=True):
                if isinstance(b, RpcError) or b is None:
                    log.debug("load: block %s not readable: %s", n, b)
                    return
                with self.lock:
                    for t in b.get("transactions", []):
                        h = from_hex(t if isinstance(t, str) else t.get("hash", ""))
                        if h in self.ours and h not in self.seen:
                            self.seen.add(h)
                            self.last_commit_at = time.monotonic()
                            if h in self.accepted:
                                self.committed += 1
                            if h in self.deploys:
                                deploy_hashes.append(h)
                    self.watched_to = n
            if deploy_hashes:
                self._learn_contracts(deploy_hashes)
            start = end + 1

    def _learn_contracts(self, hashes: list[bytes]) -> None:
        receipts = self.client.batch([("getTransactionReceipt", ["0x" + h.hex()]) for h in hashes])
        with self.lock:
            for h, r in zip(hashes, receipts, strict=True):
                if isinstance(r, dict) and r.get("contractAddress"):
                    owner = self.deploys[h]
                    owner.contracts.append(from_hex(r["contractAddress"]))
                    if len(owner.contracts) == 1:
                        self.owners.append(owner)

    def watcher(self, poll: float) -> None:
        while not self.stop.wait(poll):
            try:
                self.watch_once()
            except (RpcError, ValueError, TypeError, AttributeError) as exc:
                log.debug("load: block watcher: %s", exc)


class _Progress:
    def __init__(self, enabled: bool, stream: TextIO) -> None:
        self.enabled = enabled
        self.stream = stream
        self.tty = enabled and stream.isatty()
        self.last = 0.0

    def show(self, run: _Run, t0: float, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self.last < (0.5 if self.tty else 5.0):
            return
        self.last = now
        el = max(now - t0, 1e-9)
        with run.lock:
            line = (f"load {el:6.1f}s  sent {run.sent}  accepted {len(run.accepted)}  "
                    f"rejected {sum(run.rejected.values())}  committed {run.committed}  "
                    f"height {run.tip}  ({run.committed / el:.0f} tx/s committed)")
        if self.tty:
            self.stream.write("\r" + line.ljust(100) + ("\n" if final else ""))
        else:
            self.stream.write(time.strftime("%H:%M:%S ") + line + "\n")
        self.stream.flush()


def run_load(node_dir: str | Path, tps: float, duration: float, progress: bool = True, seed: int | None = None,
             *, keys: Sequence[PrivateKey] | None = None, url: str | None = None, batch_size: int = MAX_BATCH,
             threads: int | None = None, receipt_timeout: float | None = None,
             stream: TextIO | None = None) -> LoadReport:
    """Send ``tps`` signed transactions per second for ``duration`` seconds; see the module docstring."""
    if tps <= 0 or duration <= 0:
        raise LoadError("--tps and --duration must be positive")
    nd = Path(node_dir)
    try:
        cfg = load_node_config(nd)
        chain_id = Genesis.load(cfg.genesis_path).chain_id
    except ConfigError as exc:
        raise LoadError(str(exc)) from exc
    if url is None:
        host = "127.0.0.1" if cfg.jsonrpc_host in ("0.0.0.0", "") else cfg.jsonrpc_host
        url = f"http://{host}:{cfg.jsonrpc_port}"
    funded = list(keys) if keys is not None else load_keys(nd)
    if not funded:
        raise LoadError("no funded keys to send from")
    if receipt_timeout is None:
        receipt_timeout = max(30.0, 10 * float(cfg.block_interval))
    client = Client(url)
    try:
        height = client.block_number()
        counts = client.batch([("getTransactionCount", ["0x" + k.address.hex(), "latest"]) for k in funded])
    except RpcError as exc:
        raise LoadError(f"node at {url} does not answer: {exc}") from exc
    senders = [_Sender(coincurve.PrivateKey(k.secret), k.address, int(c, 16) if isinstance(c, str) else 0)
               for k, c in zip(funded, counts, strict=True)]
    run = _Run(client, senders, chain_id, random.Random(seed))
    run.tip = run.start_height = run.watched_to = height

    total = max(1, round(tps * duration))
    batch = max(1, min(batch_size, MAX_BATCH, int(tps // 20) or 1))
    n_threads = threads or max(2, min(8, int(tps // 250) + 2))
    work: queue.Queue[list[tuple[bytes, bytes]] | None] = queue.Queue(maxsize=n_threads * 4)
    bar = _Progress(progress, stream or sys.stderr)

    def sender_loop() -> None:
        while True:
            item = work.get()
            if item is None:
                return
            run.send(item)

    workers = [threading.Thread(target=sender_loop, name=f"load-send-{i}", daemon=True) for i in range(n_threads)]
    for w in workers:
        w.start()
    watcher = threading.Thread(target=run.watcher, args=(max(0.1, min(0.5, float(cfg.block_interval) / 4)),),
                               name="load-watch", daemon=True)
    watcher.start()

    cycle = kind_cycle()
    t0 = time.monotonic()
    built = 0
    try:
        while built < total:
            due = t0 + built / tps
            delay = due - time.monotonic()
            if delay > 0:
                bar.show(run, t0)
                time.sleep(min(delay, 0.25))
                continue
            n = min(batch, total - built)
            work.put([run.build(cycle[(built + i) % len(cycle)], built + i) for i in range(n)])
            built += n
            bar.show(run, t0)
    finally:
        for _ in workers:
            work.put(None)
        for w in workers:
            w.join()
    send_elapsed = time.monotonic() - t0

    deadline = time.monotonic() + receipt_timeout
    while time.monotonic() < deadline:
        with run.lock:
            if run.accepted <= run.seen:
                break
        bar.show(run, t0)
        time.sleep(0.2)
    run.stop.set()
    watcher.join(timeout=5)
    try:
        run.watch_once()
    except RpcError as exc:
        log.debug("load: final block scan: %s", exc)
    end = time.monotonic()
    bar.show(run, t0, final=True)
    for err in run.errors:
        log.debug("load: sample rejection: %s", err)

    with run.lock:
        committed = len(run.accepted & run.seen)
        last = run.last_commit_at if run.last_commit_at else end
        elapsed = max(last - t0, 1e-9)
        return LoadReport(
            sent=run.sent, accepted=len(run.accepted), rejected=dict(run.rejected), committed=committed,
            pending=len(run.accepted - run.seen), elapsed=end - t0, send_elapsed=send_elapsed,
            achieved_tps=committed / elapsed, offered_tps=run.sent / max(send_elapsed, 1e-9),
            blocks=run.watched_to - run.start_height, start_height=run.start_height, end_height=run.watched_to,
            by_kind=dict(run.by_kind), substituted=run.substituted,
        )


def signing_rate(n: int = 2000, seed: int = 0) -> float:
    """Transactions per second this machine signs and encodes (the load's producer cost)."""
    rng = random.Random(seed)
    key = coincurve.PrivateKey(rng.randbytes(32))
    t = time.perf_counter()
    for i in range(n):
        tx = build_transaction(key, action=Action.TRANSFER, to=rng.randbytes(20), value=1, data=b"", nonce=i,
                               valid_until_block=100, chain_id=1)
        keccak(rlp.encode(tx))
    return n / (time.perf_counter() - t)

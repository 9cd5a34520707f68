"""Fault acceptance tests: a real node under steady signed traffic survives
the SIGKILL of any one service and a RabbitMQ stop/start.

For every fault the tests check that

* the node keeps (or resumes) producing blocks within a bounded time;
* no committed block is lost or duplicated: the block hashes at every height
  committed before the fault are unchanged afterwards, heights are
  contiguous, parent hashes chain, and each tx hash is in at most one block;
* no transaction auth accepted is lost: every accepted hash ends up in a
  block and has a receipt (bounded wait).

The traffic is a background thread sending signed transfers over JSON-RPC
(batches of :data:`BATCH` every :data:`PERIOD` seconds, ~50 tx/s). A batch
that fails in transport, times out, or is answered NOT_READY / POOL_FULL is
sent again unchanged (same raw bytes, same hash) until auth gives a verdict.
Every tx is unique, so a DUPLICATE answer to a re-sent tx means auth had
accepted it before (that answer was lost, or a restarted auth answered the
redelivered batch NOT_READY after pooling it): it counts as accepted, and so
must reach a block like any other.

The broker test stops the RabbitMQ *application* shared with other test runs
for a few seconds only; run it sparingly.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import rlp

from pycita import rabbit
from pycita.client import Client, RpcError, to_hex, transfer
from pycita.config import DEFAULT_SERVICES
from pycita.errors import PycitaError
from pycita.genesis import Genesis
from pycita.testtools import Node

pytestmark = pytest.mark.slow

BATCH = 10
PERIOD = 0.2
"""Traffic: BATCH transfers every PERIOD seconds (~50 tx/s)."""
VALID_AHEAD = 80
"""valid_until_block = last known tip + VALID_AHEAD (auth allows up to tip + 100)."""
RETRY_CODES = {8, 9}
"""Auth codes meaning "not now, send again": POOL_FULL, NOT_READY."""
DUPLICATE = 4
INCLUDE_TIMEOUT = 45.0
"""Bound on the wait for every accepted transaction to be in a block once traffic stopped."""


# ------------------------------------------------------------------ helpers


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait(predicate, timeout: float, what: str, poll: float = 0.3):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except PycitaError as exc:  # the node is recovering: keep polling
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


@dataclass
class _Pending:
    raw: bytes
    tx_hash: str
    uncertain: bool = False
    """An earlier send of this tx got no verdict (transport error, timeout): auth may have it."""


@dataclass
class Traffic:
    """A background thread sending signed transfers to a node over JSON-RPC and recording verdicts."""

    node: Node
    batch: int = BATCH
    period: float = PERIOD
    accepted: set[str] = field(default_factory=set)
    rejected: Counter[int] = field(default_factory=Counter)
    rejections: list[str] = field(default_factory=list)
    retries: Counter[str] = field(default_factory=Counter)
    sent: int = 0

    def __post_init__(self) -> None:
        self.client = Client(self.node.jsonrpc_url, timeout=20)
        self.chain_id = Genesis.load(self.node.directory / "genesis.json").chain_id
        self.keys = [a.key() for a in self.node.accounts()]
        self.nonces = [0] * len(self.keys)
        self.tip = 0
        self._pending: list[_Pending] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        self._turn = 0

    # -- lifecycle --------------------------------------------------------
    def start(self) -> Traffic:
        self.tip = self.client.block_number()
        self._thread.start()
        return self

    def stop(self, drain_timeout: float = 40.0) -> None:
        """Stop making new transactions; keep re-sending undecided ones until auth answered (bounded)."""
        self._stop.set()
        self._thread.join(drain_timeout)
        assert not self._thread.is_alive(), f"traffic did not drain within {drain_timeout} s: {self.report()}"
        self.client.close()
        if self.error is not None:
            raise AssertionError(f"traffic thread failed: {self.error!r}") from self.error

    def snapshot_accepted(self) -> set[str]:
        with self._lock:
            return set(self.accepted)

    def report(self) -> str:
        return (f"sent {self.sent}, accepted {len(self.accepted)}, undecided {len(self._pending)}, "
                f"rejected {dict(self.rejected)}, retries {dict(self.retries)}")

    # -- the thread -------------------------------------------------------
    def _new_tx(self) -> _Pending:
        i = self._turn % len(self.keys)
        self._turn += 1
        nonce = self.nonces[i]
        self.nonces[i] += 1
        tx = transfer(self.keys[i], secrets.token_bytes(20), 1, nonce, self.tip + VALID_AHEAD, self.chain_id)
        raw = rlp.encode(tx)
        return _Pending(raw, to_hex(tx.hash))

    def _run(self) -> None:
        try:
            next_at = time.monotonic()
            while True:
                stopping = self._stop.is_set()
                if stopping and not self._pending:
                    return
                if not stopping:
                    self._pending.extend(self._new_tx() for _ in range(self.batch))
                self._send_pending()
                next_at += self.period
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_at = time.monotonic()
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def _send_pending(self) -> None:
        batch = self._pending
        self._pending = []
        self.sent += len(batch)
        try:
            results: list[Any] = self.client.send_raw_transactions(p.raw for p in batch)
        except RpcError as exc:  # transport: jsonrpc down or restarting
            self.retries[f"transport {exc.code}"] += 1
            for p in batch:
                p.uncertain = True
            self._pending = batch + self._pending
            self.client.close()
            return
        retry: list[_Pending] = []
        for p, res in zip(batch, results, strict=True):
            if isinstance(res, bytes):
                assert to_hex(res) == p.tx_hash, (to_hex(res), p.tx_hash)
                with self._lock:
                    self.accepted.add(p.tx_hash)
                continue
            code = res.auth_code
            if code is None:  # timeout waiting for auth, auth unreachable...: outcome unknown
                self.retries[f"rpc {res.code}"] += 1
                p.uncertain = True
                retry.append(p)
            elif code in RETRY_CODES:
                self.retries[f"auth {code}"] += 1
                retry.append(p)
            elif code == DUPLICATE:
                # Every tx here is unique, so auth already has this one: its earlier verdict was
                # lost in transit (p.uncertain), or a restarted auth answered a redelivered batch
                # NOT_READY after having pooled it. Either way it must end up in a block.
                self.retries["auth 4 after lost verdict" if p.uncertain else "auth 4 after retry code"] += 1
                with self._lock:
                    self.accepted.add(p.tx_hash)
            else:
                self.rejected[code] += 1
                self.rejections.append(f"{p.tx_hash}: {res}")
        self._pending = retry + self._pending
        try:
            self.tip = max(self.tip, self.client.block_number())
        except RpcError:
            pass


def _fetch_blocks(client: Client, start: int, end: int) -> list[dict[str, Any]]:
    """Blocks start..end (inclusive) over JSON-RPC in batches; every one must exist."""
    out: list[dict[str, Any]] = []
    for lo in range(start, end + 1, 100):
        hi = min(end, lo + 99)
        answers = client.batch([("getBlockByNumber", [hex(n), False]) for n in range(lo, hi + 1)])
        for n, b in zip(range(lo, hi + 1), answers, strict=True):
            assert not isinstance(b, RpcError), f"block {n}: {b}"
            assert b is not None, f"block {n} missing (chain claimed height >= {end})"
            out.append(b)
    return out


def _block_hashes(client: Client) -> dict[int, str]:
    height = client.block_number()
    return {int(b["number"], 16): b["hash"] for b in _fetch_blocks(client, 0, height)}


def _check_chain(client: Client, before: dict[int, str]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Check the whole chain; return its blocks and {tx hash: height}."""
    height = client.block_number()
    blocks = _fetch_blocks(client, 0, height)
    where: dict[str, int] = {}
    for n, b in enumerate(blocks):
        assert int(b["number"], 16) == n, (n, b["number"])
        if n > 0:
            assert b["parentHash"] == blocks[n - 1]["hash"], f"block {n} does not chain onto block {n - 1}"
        for h in b["transactions"]:
            assert h not in where, f"tx {h} is in block {where[h]} and in block {n}"
            where[h] = n
    assert len({b["hash"] for b in blocks}) == len(blocks), "two heights share a block hash"
    changed = {n: (h, blocks[n]["hash"]) for n, h in before.items() if n >= len(blocks) or blocks[n]["hash"] != h}
    assert not changed, f"committed blocks changed or vanished (height: (before, after)): {changed}"
    return blocks, where


def _check_no_accepted_tx_lost(node: Node, traffic: Traffic, before: dict[int, str]) -> None:
    """Wait (bounded) until every accepted tx is in a block; check the chain and every receipt."""
    client = Client(node.jsonrpc_url, timeout=20)
    try:
        accepted = traffic.snapshot_accepted()
        assert accepted, f"auth accepted nothing: {traffic.report()}"
        deadline = time.monotonic() + INCLUDE_TIMEOUT
        while True:
            blocks, where = _check_chain(client, before)
            missing = accepted - where.keys()
            if not missing:
                break
            if time.monotonic() >= deadline:
                pytest.fail(f"{len(missing)} of {len(accepted)} accepted txs are in no block "
                            f"{INCLUDE_TIMEOUT} s after the traffic stopped (chain at {len(blocks) - 1}); "
                            f"e.g. {sorted(missing)[:5]}; {traffic.report()}; see {node.directory}/logs")
            time.sleep(1.0)
        hashes = sorted(accepted)
        for lo in range(0, len(hashes), 200):
            chunk = hashes[lo:lo + 200]
            receipts = client.batch([("getTransactionReceipt", [h]) for h in chunk])
            for h, r in zip(chunk, receipts, strict=True):
                assert isinstance(r, dict), f"no receipt for accepted tx {h}: {r!r}"
                assert r["transactionHash"] == h
                assert int(r["blockNumber"], 16) == where[h], (h, r["blockNumber"], where[h])
                assert r["blockHash"] == blocks[where[h]]["hash"]
    finally:
        client.close()


def _assert_no_service_failed(node: Node) -> None:
    """No service halted (CRITICAL), dead-lettered a message, or logged a traceback."""
    for name in DEFAULT_SERVICES:
        bad = [line for line in node.read_log(name).splitlines()
               if re.search(r"CRITICAL|dead-letters message|Traceback", line)]
        assert not bad, f"{name}: {bad[:5]}; see {node.log_path(name)}"


def _pids(node: Node) -> dict[str, int | None]:
    return {name: svc["pid"] for name, svc in node.status()["services"].items()}


def _all_answer(node: Node) -> dict[str, Any] | None:
    services = node.status()["services"]
    ok = all(s["state"] == "RUNNING" and s["answering"] for s in services.values())
    return services if ok else None


# -------------------------------------------------------------------- tests


@pytest.mark.timeout(150)
@pytest.mark.parametrize("service", DEFAULT_SERVICES)
def test_sigkill_of_any_service_under_traffic_loses_no_block_and_no_accepted_tx(node: Node, service: str) -> None:
    node.wait_for_block(2, timeout=30)
    traffic = Traffic(node).start()
    try:
        node.wait_for_blocks(5, timeout=30)
        _wait(lambda: len(traffic.snapshot_accepted()) >= 150, 20, f"traffic before the kill ({traffic.report()})")
        before = _block_hashes(node.api)
        old_pid = node.kill_service(service)  # SIGKILL via supervisord

        def restarted() -> dict[str, Any] | None:
            svc = node.status()["services"][service]
            ok = svc["state"] == "RUNNING" and svc["pid"] not in (None, old_pid) and svc["answering"]
            return svc if ok else None

        svc = _wait(restarted, 40, f"{service} to be restarted by supervisord and answer again")
        assert not _alive(old_pid)
        log = node.read_log("supervisord")
        exited = f"exited: {service} (terminated by SIGKILL"
        assert exited in log, log[-3000:]
        assert f"spawned: '{service}' with pid {svc['pid']}" in log[log.rindex(exited):], log[-3000:]

        h = node.get_height()
        assert node.wait_for_block(h + 5, timeout=40) >= h + 5, node.read_log(service)[-3000:]
        accepted_after_kill = len(traffic.snapshot_accepted())
        _wait(lambda: len(traffic.snapshot_accepted()) >= accepted_after_kill + 150, 20,
              f"auth to accept traffic after the restart ({traffic.report()})")
        node.wait_for_blocks(3, timeout=30)
    finally:
        traffic.stop()
    print(f"traffic: {traffic.report()}")
    assert not traffic.rejected, f"unexpected rejections: {traffic.rejections[:5]}; {traffic.report()}"
    _check_no_accepted_tx_lost(node, traffic, before)
    assert _wait(lambda: _all_answer(node), 20, "every service to answer")
    _assert_no_service_failed(node)


@pytest.mark.timeout(150)
def test_rabbitmq_stop_and_start_under_traffic_resumes_blocks_and_loses_no_accepted_tx(node: Node) -> None:
    node.wait_for_block(2, timeout=30)
    pids = _pids(node)
    assert all(pids.values()), pids
    traffic = Traffic(node).start()
    try:
        node.wait_for_blocks(5, timeout=30)
        _wait(lambda: len(traffic.snapshot_accepted()) >= 150, 20,
              f"traffic before the broker stop ({traffic.report()})")
        before = _block_hashes(node.api)
        try:
            rabbit.stop_broker()
            time.sleep(2.0)  # keep the window short: other test runs share this broker
        finally:
            started = time.monotonic()
            rabbit.start_broker()
        h = _wait(node.get_height, 20, "the chain to answer on the bus again", poll=0.2)
        # a block committed after start_app (none can be while the broker is down)
        node.wait_for_block(h + 1, timeout=max(1.0, 30 - (time.monotonic() - started)))
        resumed_after = time.monotonic() - started
        assert resumed_after <= 30, resumed_after
        services = _wait(lambda: _all_answer(node), 20, "every service to answer after the broker restart")
        after = {name: svc["pid"] for name, svc in services.items()}
        assert after == pids, f"services were restarted instead of reconnecting: {pids} -> {after}"
        for name in DEFAULT_SERVICES:
            connects = re.findall(rf"service {name} connected to", node.read_log(name))
            assert len(connects) >= 2, f"{name} did not reconnect: {connects}"  # start-up + reconnect
        accepted_at = len(traffic.snapshot_accepted())
        _wait(lambda: len(traffic.snapshot_accepted()) >= accepted_at + 150, 30,
              f"auth to accept traffic after the broker restart ({traffic.report()})")
        node.wait_for_blocks(3, timeout=30)
    finally:
        traffic.stop()
    print(f"traffic: {traffic.report()}")
    assert not traffic.rejected, f"unexpected rejections: {traffic.rejections[:5]}; {traffic.report()}"
    _check_no_accepted_tx_lost(node, traffic, before)
    supervisord = node.read_log("supervisord")
    assert "exited:" not in supervisord, supervisord[-3000:]
    _assert_no_service_failed(node)

"""Acceptance: a service that does not answer fails a restore within the timeout, and nothing stays frozen.

A running node snapshots its own chain; then one (or two) of its services is
frozen with SIGSTOP and ``snapshot_tool -m restore --timeout 5`` is run. The
tool must fail (exit 1) within its timeout plus a margin, naming the silent
service; every other service must leave flight mode at once (jsonrpc and
consensus, chain and executor; auth accepts transactions again when it is
not the frozen one); the node keeps its data (no block of the restore, its
old blocks intact, nothing staged, no journal). After SIGCONT the frozen
service catches up with the Abort it missed and the node accepts a
transaction and produces blocks.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
from _acceptance import (
    NOT_READY,
    assert_accepts_a_transaction_and_produces_blocks,
    block_summary,
    run_tool,
    wait_settled,
    wallet_of,
)

from pycita import node as nodelib
from pycita.client import RpcError, Wallet
from pycita.config import load_node_config
from pycita.crypto import keccak
from pycita.testtools import CleanupPolicy, Network, Node

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TIMEOUT = 5.0
MARGIN = 4.0  # the tool's start-up, its connection to RabbitMQ and the Abort it sends on the way out
NAME = "self"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest,
         rabbitmq_broker: None) -> Iterator[Node]:
    failed_before = request.session.testsfailed
    network = Network(tmp_path_factory.mktemp("unresponsive") / "chain", block_interval=0.3, name="unresponsive")
    try:
        network.run()
        node = network.node
        node.wait_for_block(6, timeout=60)
        node.dump_snapshot(NAME, height=4)
        yield node
    finally:
        for svc in ("auth", "executor"):  # never leave a frozen process behind
            try:
                network.node.kill_service(svc, signal.SIGCONT)
            except Exception:
                pass
        network.close(CleanupPolicy.DO_NOT_REMOVE_FILES if request.session.testsfailed > failed_before
                      else CleanupPolicy.REMOVE_ONLY_UNNEEDED_FILES)


def flight_modes(node: Node, services: list[str]) -> dict[str, bool]:
    answers = nodelib.ping_services(node.directory, timeout=3.0, services=services)
    assert set(answers) == set(services), f"not answering: {set(services) - set(answers)}"
    return {s: bool(answers[s].get("flight_mode")) for s in services}


def assert_tx_accepted(node: Node, wallet: Wallet) -> bytes:
    """auth (through jsonrpc) takes a transaction: it is not refused as NOT_READY (flight mode)."""
    tx = wallet.transfer(keccak(b"unresponsive %f" % time.time())[:20], 7, node.api.block_number() + 50)
    try:
        node.api.send_raw_transaction(tx)
    except RpcError as exc:
        raise AssertionError(f"the transaction was refused{' (flight mode)' if exc.auth_code == NOT_READY else ''}: "
                             f"{exc}") from exc
    return bytes(tx.hash)


@pytest.mark.parametrize("frozen", [["auth"], ["executor"], ["auth", "executor"]],
                         ids=["auth", "executor", "auth-and-executor"])
def test_a_restore_with_a_silent_service_fails_in_time_naming_it_and_nothing_stays_in_flight_mode(
        node: Node, frozen: list[str]) -> None:
    cfg = load_node_config(node.directory)
    tip = wait_settled(node)
    was = (tip.chain_height, block_summary(node.api, tip.chain_height))
    snapshot_hash = node.api.get_block(4)["hash"]  # type: ignore[index]

    wallet = wallet_of(node)  # its nonce comes from the executor, which may be frozen next
    for svc in frozen:
        node.kill_service(svc, signal.SIGSTOP)
    try:
        started = time.monotonic()
        proc = run_tool(node.directory, "-m", "restore", "-f", NAME, "--timeout", str(TIMEOUT), "-q",
                        timeout=120)
        elapsed = time.monotonic() - started
        print(f"{frozen}: exit {proc.returncode} after {elapsed:.1f} s\n{proc.stderr}")
        assert proc.returncode == 1, proc.stderr
        assert elapsed <= TIMEOUT + MARGIN, f"the tool took {elapsed:.1f} s with --timeout {TIMEOUT:g}"
        error = proc.stderr.strip().splitlines()[-1]
        assert f"no answer within {TIMEOUT:g} s from {', '.join(frozen)}" in proc.stderr, proc.stderr
        assert error.startswith("snapshot_tool: error: Begin failed at " + ", ".join(frozen)), proc.stderr

        # every service that answers has left flight mode already, with the other one still frozen
        others = [s for s in cfg.services if s not in frozen]
        assert flight_modes(node, others) == {s: False for s in others}
        accepted = assert_tx_accepted(node, wallet) if "auth" not in frozen else None
        for leftover in (cfg.run_dir / "restore.journal", cfg.data_dir / "chain.staged",
                         cfg.data_dir / "executor.staged"):
            assert not leftover.exists(), f"{leftover} left behind"
    finally:
        for svc in frozen:
            node.kill_service(svc, signal.SIGCONT)

    # the frozen services wake up, process the Begin and the Abort they missed, and leave flight mode
    deadline = time.monotonic() + 15
    while True:
        modes = flight_modes(node, list(cfg.services))
        if not any(modes.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert modes == {s: False for s in cfg.services}, modes

    # the node kept its data: its old blocks, none of the restore (it would be back at block 4)
    settled = wait_settled(node)
    assert settled.chain_height >= was[0]
    assert block_summary(node.api, was[0]) == was[1]
    assert node.api.get_block(4)["hash"] == snapshot_hash  # type: ignore[index]
    if accepted is not None:  # the transaction auth took while the executor was frozen is executed now
        assert node.api.wait_for_receipt(accepted, timeout=20)["status"] in (1, "0x1")
    assert_accepts_a_transaction_and_produces_blocks(node)

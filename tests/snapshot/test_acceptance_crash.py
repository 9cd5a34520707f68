"""Acceptance: a restore is crash safe -- whatever dies, whenever, the node is never left mixed.

A source chain is generated big enough (thousands of accounts, contracts
with storage, 30 blocks of many transactions) that a restore takes a few
seconds, and snapshotted. A target node of the same genesis runs its own
chain (a snapshot of it brings the target back to that chain between
cases). Each case starts
``snapshot_tool -m restore`` on the target and SIGKILLs the chain service,
the executor service or the tool itself at one point -- after a delay, or
when a phase is observed (the journal appearing, a ``.staged`` store
appearing, an ack line in the tool's output, the journal turning
``"commit"``, the live store being swapped out). Then the node is restarted
(``pycita stop`` + ``pycita start``) and, if a journal was left behind,
``snapshot_tool -m restore`` is run again (it must finish or roll back the
leftover). At each of these points chain and executor must be on the same
side: both the target's old chain (its baseline blocks, the executor at the
chain's tip hash and state root) or both the restored snapshot (block H with
the snapshot's hash and state root, the executor agreeing) -- never one of
each. Finally the node is out of flight mode, accepts a transaction and
produces blocks.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from _acceptance import (
    assert_accepts_a_transaction_and_produces_blocks,
    block_summary,
    node_state,
    run_tool,
    tool_command,
    tool_env,
    wait_settled,
)

from pycita.config import load_node_config
from pycita.generate import GenerateParams, account_address, generate
from pycita.snapshot.journal import RestoreJournal
from pycita.testtools import CleanupPolicy, Network, Node, Snapshot

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

NAME = "big"
OWN = "own"
GENERATE = GenerateParams(accounts=6000, blocks=30, contracts=3, slots=1000, seed=7)
PHASE_TIMEOUT = "5"


@dataclass
class World:
    snapshot: Snapshot
    target: Node
    base_height: int  # a height of the baseline chain, with its block (hash, state root)
    base_block: tuple[str, str]
    probe: bytes  # an account that exists only in the snapshot's state
    restored: bool = False  # the target currently holds the snapshot: reset it to the baseline first
    outcomes: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest,
          rabbitmq_broker: None) -> Iterator[World]:
    base = tmp_path_factory.mktemp("crash")
    failed_before = request.session.testsfailed
    source = Network(base / "source", block_interval=0.3, name="crash-source")
    target: Node | None = None
    try:
        generate(source.node.directory, GENERATE)
        source.run()
        snapshot = source.node.dump_snapshot(NAME).copy_to(base / "keep")
        target = source.node.fresh_copy(base / "target")
        source.close()
        target.run()
        target.wait_for_block(8, timeout=60)
        base_height = 6
        base_block = block_summary(target.api, base_height)
        assert base_block is not None and base_block != block_summary(target.api, 0)
        own = target.dump_snapshot(OWN)  # the target's own chain: restoring it resets the target between cases
        assert own.height >= base_height
        snapshot.copy_to(target.snapshot_dir())
        world = World(snapshot, target, base_height, base_block, account_address(GENERATE.seed, 1))
        yield world
        print("outcomes:", world.outcomes)
    finally:
        policy = (CleanupPolicy.DO_NOT_REMOVE_FILES if request.session.testsfailed > failed_before
                  else CleanupPolicy.REMOVE_ONLY_UNNEEDED_FILES)
        source.close(policy)
        if target is not None:
            target.close(policy)


# ------------------------------------------------------------------ the target's two possible states


def classify(world: World, *, serving: bool = True) -> str:
    """``"old"`` or ``"restored"``; fails when chain and executor are on different sides (or neither).

    ``serving``: JSON-RPC answers queries (not the case before a leftover journal is completed,
    when the services start in flight mode); otherwise only the bus status is used.
    """
    node = world.target
    snap = world.snapshot
    api = node.api
    if serving:
        tip = wait_settled(node)  # chain and executor at the same height, block hash and state root
    else:
        # in flight mode the executor does not catch up: it may be a block or two behind the chain,
        # but its tip must be a block of the chain's chain, with that block's state root
        tip = node_state(node)
        assert tip.executor_height <= tip.chain_height, f"the executor is ahead of the chain: {tip}"
        assert block_summary(api, tip.executor_height) == (tip.executor_hash, tip.executor_root), \
            f"the executor's tip is not a block of the chain: {tip}"
    old = block_summary(api, world.base_height) == world.base_block
    restored = block_summary(api, snap.height) == (snap.block_hash, snap.state_root)
    assert old != restored, f"the chain is {'both' if old else 'neither'} old and restored: {tip}"
    if restored:
        assert api.get_block_by_hash(world.base_block[0]) is None
        assert api.get_balance(world.probe, snap.height) > 0, "the executor lacks the snapshot's state"
        return "restored"
    assert api.get_block_by_hash(snap.block_hash) is None
    assert api.get_balance(world.probe) == 0, "the executor holds the snapshot's state on the old chain"
    return "old"


def reset_to_baseline(world: World) -> None:
    """Bring the target back to its own chain (a plain restore of its own earlier snapshot)."""
    proc = run_tool(world.target.directory, "-m", "restore", "-f", OWN, "-q")
    assert proc.returncode == 0, proc.stderr
    assert classify(world) == "old"
    world.restored = False


# ------------------------------------------------------------------ triggers


@dataclass
class Run:
    """A running ``snapshot_tool -m restore`` and the lines it printed so far."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))


Trigger = Callable[[World, Run], bool]


def after(seconds: float) -> Trigger:
    def fire(_w: World, run: Run) -> bool:
        return time.monotonic() - run.started >= seconds
    fire.__name__ = f"after {seconds} s"
    return fire


def path_exists(what: str, rel: Callable[[World], Path]) -> Trigger:
    def fire(w: World, _r: Run) -> bool:
        return rel(w).exists()
    fire.__name__ = what
    return fire


def line_seen(text: str) -> Trigger:
    def fire(_w: World, run: Run) -> bool:
        return any(text in line for line in run.lines)
    fire.__name__ = f"output {text!r}"
    return fire


def journal_committed(w: World, _r: Run) -> bool:
    try:
        entry = RestoreJournal(load_node_config(w.target.directory).run_dir).read()
    except Exception:  # being replaced right now
        return False
    return entry is not None and entry.committed


def _data(w: World) -> Path:
    return load_node_config(w.target.directory).data_dir


def _run(w: World) -> Path:
    return load_node_config(w.target.directory).run_dir


JOURNAL = path_exists("journal written", lambda w: _run(w) / "restore.journal")
CHAIN_STAGED = path_exists("data/chain.staged appears", lambda w: _data(w) / "chain.staged")
EXECUTOR_STAGED = path_exists("data/executor.staged appears", lambda w: _data(w) / "executor.staged")
EXECUTOR_COMPLETE = path_exists("executor staged store complete",
                                lambda w: _data(w) / "executor.staged" / "COMPLETE")
CHAIN_BACKUP = path_exists("chain store swapped out", lambda w: _data(w) / "chain.backup")
EXECUTOR_BACKUP = path_exists("executor store swapped out", lambda w: _data(w) / "executor.backup")
COMMITTED = journal_committed
COMMITTED.__name__ = "journal commit"


# ------------------------------------------------------------------ one crash


def crash_once(world: World, victim: str, trigger: Trigger) -> str:
    """Restore, SIGKILL ``victim`` when ``trigger`` fires, restart, finish; return the final state."""
    if world.restored:
        reset_to_baseline(world)
    node = world.target
    cfg = load_node_config(node.directory)
    proc = subprocess.Popen(tool_command("-m", "restore", "-f", NAME, "--timeout", PHASE_TIMEOUT),
                            cwd=node.directory, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=tool_env())
    run = Run(proc)
    reader = threading.Thread(target=run.read, daemon=True)
    reader.start()
    fired = False
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if trigger(world, run):
            fired = True
            break
        time.sleep(0.005)
    where = f"{victim} killed at {trigger.__name__}"
    if fired:
        if victim == "tool":
            proc.send_signal(signal.SIGKILL)
        else:
            node.kill_service(victim, signal.SIGKILL)
    else:
        where = f"{victim} not killed: the restore ended before {trigger.__name__}"
    try:
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(5)
    out = "\n".join(run.lines)
    print(f"--- {where}: tool exit {proc.returncode}\n{out}")
    if victim != "tool" or not fired:
        assert proc.returncode in (0, 1), f"{where}: tool exit {proc.returncode}\n{out}"

    node.stop()  # pycita stop
    node.run()   # pycita start
    leftover = RestoreJournal(cfg.run_dir).read()
    if leftover is not None:
        # the services rolled their stores forward (commit) or back (prepare) at start-up: never mixed
        mid = classify(world, serving=False)
        if leftover.committed:
            assert mid == "restored", f"{where}: a committed restore was rolled back at start-up"
        else:
            assert mid == "old", f"{where}: an uncommitted restore went live at start-up"
        again = subprocess.run(tool_command("-m", "restore", "-f", NAME, "--timeout", PHASE_TIMEOUT),
                               cwd=node.directory, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               env=tool_env(), timeout=120, check=False)
        print(f"re-run: exit {again.returncode}\n{again.stdout}{again.stderr}")
        assert again.returncode == 0, f"{where}: the re-run could not finish:\n{again.stdout}{again.stderr}"
        assert RestoreJournal(cfg.run_dir).read() is None
    for stale in ("chain.staged", "executor.staged"):
        assert not (cfg.data_dir / stale).exists(), f"{where}: {stale} left behind"
    state = classify(world)
    if proc.returncode == 0 or (leftover is not None):
        assert state == "restored", f"{where}: the tool reported success but the node is old"
    tip = node_state(node)
    assert not any(tip.flight.values()), f"{where}: still in flight mode: {tip.flight}"
    assert_accepts_a_transaction_and_produces_blocks(node)
    classify(world)  # still on the same side after new blocks
    world.restored = state == "restored"
    world.outcomes.append(f"{where}: {state}")
    return state


# ------------------------------------------------------------------ tests


def test_killing_the_chain_service_at_any_point_of_a_restore_never_leaves_a_mixed_node(world: World) -> None:
    for trigger in (after(1.0), CHAIN_STAGED, COMMITTED, CHAIN_BACKUP):
        crash_once(world, "chain", trigger)


def test_killing_the_executor_service_at_any_point_of_a_restore_never_leaves_a_mixed_node(world: World) -> None:
    for trigger in (after(1.0), EXECUTOR_STAGED, EXECUTOR_BACKUP):
        crash_once(world, "executor", trigger)


def test_killing_snapshot_tool_at_any_point_of_a_restore_is_finished_or_rolled_back_by_a_rerun(
        world: World) -> None:
    for trigger in (JOURNAL, after(0.5), line_seen("Restore: executor done"), after(1.5), COMMITTED,
                    line_seen("End: waiting")):
        crash_once(world, "tool", trigger)

"""A real node: real RabbitMQ, real service processes under supervisord.

start -> every service answers; blocks are produced; ``status --json``;
SIGKILL of a service -> supervisord restarts it (logged), blocks continue;
stop/start keeps the chain.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from pycita import node as nodelib
from pycita.cli import main
from pycita.config import DEFAULT_SERVICES
from pycita.testtools import Network, Node

pytestmark = pytest.mark.slow

HASH_RE = re.compile(r"^0x[0-9a-f]{64}$")


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
        last = predicate()
        if last:
            return last
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def test_start_every_service_answers(node: Node) -> None:
    st = node.status()
    assert st["running"] is True
    assert set(st["services"]) == set(DEFAULT_SERVICES)
    for name, svc in st["services"].items():
        assert svc["state"] == "RUNNING", (name, svc, node.read_log(name)[-2000:])
        assert svc["answering"] is True, (name, node.read_log(name)[-2000:])
        assert isinstance(svc["pid"], int) and _alive(svc["pid"])
    assert isinstance(st["height"], int)


def test_blocks_are_produced(node: Node) -> None:
    h0 = node.get_height()
    h = node.wait_for_block(h0 + 3, timeout=30)
    assert h >= h0 + 3
    rpc_height = node.api.block_number()
    assert rpc_height >= h0 + 3
    hashes = {node.api.get_block(n)["hash"] for n in range(h0 + 1, h0 + 4)}  # type: ignore[index]
    assert len(hashes) == 3


def test_status_json_fields(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    node.wait_for_block(1, timeout=30)
    capsys.readouterr()
    assert main(["status", str(node.directory), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert isinstance(st["height"], int) and st["height"] >= 1
    assert HASH_RE.match(st["block_hash"]), st["block_hash"]
    assert HASH_RE.match(st["state_root"]), st["state_root"]
    assert set(st["services"]) == set(DEFAULT_SERVICES)
    for name, svc in st["services"].items():
        assert svc["state"] == "RUNNING", name
        assert svc["answering"] is True, name
        assert isinstance(svc["pid"], int), name
    block = node.api.get_block(st["height"])
    assert block is not None and block["hash"] == st["block_hash"]
    assert block["stateRoot"] == st["state_root"]
    assert main(["status", str(node.directory)]) == 0
    human = capsys.readouterr().out
    assert "running" in human and st["block_hash"] in human


@pytest.mark.parametrize("service", ["executor", "chain"])
def test_sigkill_service_is_restarted_and_blocks_continue(node: Node, service: str) -> None:
    node.wait_for_block(2, timeout=30)
    old_pid = node.kill_service(service)  # SIGKILL via supervisord

    def restarted() -> dict | None:  # type: ignore[type-arg]
        svc = node.status()["services"][service]
        ok = svc["state"] == "RUNNING" and svc["pid"] not in (None, old_pid) and svc["answering"]
        return svc if ok else None

    _wait(restarted, 40, f"{service} to be restarted and answer again")
    assert not _alive(old_pid)
    log = node.read_log("supervisord")
    assert re.search(rf"exited: {service} \(terminated by SIGKILL", log), log[-3000:]
    after_kill = log[log.index(f"exited: {service} (terminated by SIGKILL"):]
    assert f"spawned: '{service}'" in after_kill, log[-3000:]
    h = node.get_height()
    assert node.wait_for_block(h + 3, timeout=40) >= h + 3, node.read_log(service)[-3000:]
    for name, svc in node.status()["services"].items():
        assert svc["state"] == "RUNNING" and svc["answering"], (name, svc)


def test_stop_start_keeps_chain(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    h = node.wait_for_block(3, timeout=30)
    block = node.api.get_block(h)
    assert block is not None
    pids = [s["pid"] for s in node.status()["services"].values()]
    nd = str(node.directory)

    assert main(["stop", nd]) == 0
    assert "stopped" in capsys.readouterr().out
    assert not any(_alive(p) for p in pids)
    assert main(["status", nd, "--json"]) == 3
    assert json.loads(capsys.readouterr().out)["running"] is False

    assert main(["start", nd]) == 0
    assert "started" in capsys.readouterr().out
    assert node.get_height() >= h
    node.api.close()
    again = node.api.get_block(h)
    assert again is not None and again["hash"] == block["hash"]
    assert again["stateRoot"] == block["stateRoot"]
    assert node.wait_for_block(h + 3, timeout=40) >= h + 3


def test_start_names_services_that_do_not_answer(tmp_path: Path, rabbitmq_broker: None) -> None:
    net = Network(tmp_path / "chain", services=("chain", "nosuch"))
    nd = net.node.directory
    try:
        with pytest.raises(nodelib.ServicesNotAnswering) as exc_info:
            nodelib.start(nd, timeout=8)
        assert exc_info.value.names == ("nosuch",)
        assert str(nd / "logs" / "nosuch.log") in str(exc_info.value)
        assert nodelib.is_running(nd)  # left running for inspection
    finally:
        net.close()
    assert not nodelib.is_running(nd)


def test_cli_send_and_load(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    nd = str(node.directory)
    capsys.readouterr()
    assert main(["send", "deploy", nd, "--code", "0x" + "ab" * 40]) == 0
    out = capsys.readouterr().out
    receipt = json.loads(out[out.index("{"):])
    contract = receipt["contractAddress"]
    assert contract and receipt["status"] in ("0x1", 1)
    assert main(["send", "abi", nd, "--to", contract, "--abi", '[{"name":"f"}]', "--no-wait"]) == 0
    # the ABI tx may still be in the pool: the store must take the next free nonce, not reuse it
    assert main(["send", "store", nd, "--to", contract, "--set", "0x01=0xff"]) == 0
    assert main(["send", "transfer", nd, "--account", "1", "--to", "0x" + "22" * 20, "--value", "7"]) == 0
    capsys.readouterr()
    assert node.api.get_code(contract) == b"\xab" * 40
    assert node.api.get_storage_at(contract, "0x01") == b"\xff"
    node.wait_for_blocks(2, timeout=20)
    assert node.api.get_abi(contract) == b'[{"name":"f"}]'
    assert node.api.get_balance("0x" + "22" * 20) == 7

    assert main(["load", nd, "--tps", "20", "--duration", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sent"] == 40 and report["committed"] == 40 and report["pending"] == 0

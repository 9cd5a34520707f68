"""snapshot_tool end to end over a real RabbitMQ vhost, with minimal stand-in services."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pycita.config import NodeConfig, load_node_config
from pycita.messages import pb
from pycita.mq import Bus
from pycita.service import Service, SnapshotStepFailed
from tools.snapshot_tool.cli import EXIT_FAILED, EXIT_OK, main

HASH = b"\x11" * 32
ROOT = b"\x22" * 32


class Recorder(Service):
    """A service with the default snapshot answers that records the commands it got."""

    def __init__(self, cfg: NodeConfig, bus: Any) -> None:
        super().__init__(cfg, bus)
        self.cmds: list[str] = []

    def on_snapshot(self, req: pb.SnapshotReq, resp: pb.SnapshotResp) -> None:
        self.cmds.append(pb.Cmd.Name(req.cmd))
        super().on_snapshot(req, resp)


class DataService(Recorder):
    """Chain or executor: writes its file at Snapshot, reports H/hash/root at Restore."""

    refuse_restore = ""

    def on_snapshot(self, req: pb.SnapshotReq, resp: pb.SnapshotResp) -> None:
        super().on_snapshot(req, resp)
        if req.cmd == pb.Snapshot:
            path = Path(req.directory) / f"{req.file}_{self.name}.rlp"
            path.write_bytes(b"data" * 100)
            resp.height, resp.block_hash, resp.state_root = req.end_height, HASH, ROOT
            resp.file, resp.file_size = str(path), 400
        elif req.cmd == pb.Restore:
            if self.refuse_restore:
                raise SnapshotStepFailed(self.refuse_restore)
            resp.height, resp.block_hash, resp.state_root = 100, HASH, ROOT
            if self.name == "chain":
                resp.proof.CopyFrom(pb.Proof(content=b"proof", type=pb.Bft))

    def status(self) -> dict[str, Any]:
        return {"height": 120, **super().status()}


def make_service(name: str, cfg: NodeConfig) -> Recorder:
    base = DataService if name in ("chain", "executor") else Recorder
    cls = type(f"{name.title()}Stub", (base,), {"name": name})
    return cls(cfg, None)


@pytest.fixture
def node(tmp_path: Path, amqp_url: str) -> Iterator[tuple[Path, dict[str, Recorder]]]:
    nd = tmp_path / "node"
    nd.mkdir()
    (nd / ".env").write_text(f"AMQP_URL={amqp_url}\n")
    names = ["auth", "consensus", "chain", "executor", "jsonrpc"]
    # "network" is listed but never started: only tests that need every service to answer avoid it
    listed = names + ["network"] if "silent" in tmp_path.name else names
    (nd / "node.json").write_text(json.dumps({"services": listed, "snapshot_phase_timeout": 10}))
    cfg = load_node_config(nd)
    services: dict[str, Recorder] = {}
    buses = []
    for name in names:
        svc = make_service(name, cfg)
        bus = Bus(amqp_url, name, svc.all_bindings())
        svc.bus = bus
        bus.on_message(svc.dispatch)
        bus.start()
        assert bus.wait_connected(10)
        services[name] = svc
        buses.append(bus)
    try:
        yield nd, services
    finally:
        for bus in buses:
            bus.stop()


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    return main(list(argv), out=out, err=err), out.getvalue(), err.getvalue()


def test_a_snapshot_then_a_restore_run_every_phase_over_the_bus(node: tuple[Path, dict[str, Recorder]]) -> None:
    nd, services = node
    code, out, err = run("-m", "snapshot", "-f", "s", "--node-dir", str(nd), "--quiet", "--json")
    assert code == EXIT_OK, err
    result = json.loads(out)
    assert result["height"] == 120 and result["files"]["chain"]["size"] == 400
    code, out, err = run("-m", "restore", "-f", "s", "--node-dir", str(nd), "--quiet")
    assert code == EXIT_OK, err
    assert "height 100" in out
    assert services["auth"].cmds == ["Snapshot", "Begin", "Restore", "Clear", "End"]
    assert not (nd / "run" / "restore.journal").exists()


def test_a_refused_restore_aborts_and_leaves_flight_mode(node: tuple[Path, dict[str, Recorder]]) -> None:
    nd, services = node
    for suffix in ("_chain.rlp", "_executor.rlp"):
        (nd / "snapshots").mkdir(exist_ok=True)
        (nd / "snapshots" / f"snapshot{suffix}").write_bytes(b"x")
    executor = services["executor"]
    assert isinstance(executor, DataService)
    executor.refuse_restore = "snapshot_executor.rlp: chunk 2: state root check failed"
    code, _, err = run("-m", "restore", "--node-dir", str(nd), "--quiet", "--timeout", "5")
    assert code == EXIT_FAILED
    assert "Restore failed at executor" in err and "chunk 2: state root check failed" in err
    assert services["consensus"].cmds == ["Begin", "Restore", "Abort"]
    assert not services["consensus"].flight_mode


def test_a_silent_service_fails_the_restore_within_the_timeout_naming_it(
        node: tuple[Path, dict[str, Recorder]]) -> None:
    nd, services = node
    (nd / "snapshots").mkdir(exist_ok=True)
    for suffix in ("_chain.rlp", "_executor.rlp"):
        (nd / "snapshots" / f"snapshot{suffix}").write_bytes(b"x")
    code, _, err = run("-m", "restore", "--node-dir", str(nd), "--quiet", "--timeout", "1.5")
    assert code == EXIT_FAILED
    assert "Begin failed at network: no answer within 1.5 s" in err
    assert services["auth"].cmds == ["Begin", "Abort"] and not services["auth"].flight_mode

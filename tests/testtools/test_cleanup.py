"""Clean-up policies of pycita.testtools and the plugin's failed-test detection (no services run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pycita import node as nodelib
from pycita import rabbit
from pycita.errors import PycitaError
from pycita.testtools import CleanupPolicy, Network, Node
from pycita.testtools.cleanup import default_policy

pytestmark = pytest.mark.usefixtures("rabbitmq_broker")  # closing deletes the node's vhost

KEPT_CONFIG = ("privkey", "genesis.json", "node.json", ".env")


def _populate(network: Network) -> Path:
    """Make the (not running) node look used: a database, a snapshot, run files, a log, a vhost."""
    nd = network.node.directory
    (nd / "data" / "chain").mkdir(parents=True)
    (nd / "data" / "chain" / "000001.ldb").write_bytes(b"\0" * 100)
    (nd / "snapshots" / "snapshot_chain.rlp").write_bytes(b"snap")
    (nd / "run" / "supervisord.conf").write_text("[supervisord]\n")
    (nd / "logs" / "chain.log").write_text("chain log\n")
    rabbit.ensure_vhost(nodelib.vhost_of(network.node.config.amqp_url))
    return nd


def _vhost(network: Network) -> str:
    return nodelib.vhost_name(network.directory, 0)


def test_remove_only_unneeded_files_keeps_logs_and_config(tmp_path: Path) -> None:
    net = Network(tmp_path / "chain")
    nd = _populate(net)
    net.close(CleanupPolicy.REMOVE_ONLY_UNNEEDED_FILES)
    assert not (nd / "data").exists()
    assert not (nd / "snapshots").exists()
    assert not (nd / "run").exists()
    assert (nd / "logs" / "chain.log").read_text() == "chain log\n"
    for f in KEPT_CONFIG:
        assert (nd / f).is_file(), f
    assert (net.directory / "accounts.json").is_file()
    assert _vhost(net) not in rabbit.list_vhosts()


def test_remove_everything(tmp_path: Path) -> None:
    net = Network(tmp_path / "chain")
    _populate(net)
    net.close(CleanupPolicy.REMOVE_EVERYTHING)
    assert not net.directory.exists()
    assert _vhost(net) not in rabbit.list_vhosts()


def test_do_not_remove_files(tmp_path: Path) -> None:
    net = Network(tmp_path / "chain")
    nd = _populate(net)
    try:
        net.close(CleanupPolicy.DO_NOT_REMOVE_FILES)
        for rel in ("data/chain/000001.ldb", "snapshots/snapshot_chain.rlp", "run/supervisord.conf",
                    "logs/chain.log", *KEPT_CONFIG):
            assert (nd / rel).exists(), rel
        assert _vhost(net) in rabbit.list_vhosts()  # kept for inspection (dead-lettered messages)
    finally:
        rabbit.delete_vhost(_vhost(net))


def test_network_policy_is_used_when_close_gets_none(tmp_path: Path) -> None:
    net = Network(tmp_path / "chain", cleanup_policy=CleanupPolicy.REMOVE_EVERYTHING)
    _populate(net)
    net.close()
    assert not net.directory.exists()


def test_close_is_idempotent(tmp_path: Path) -> None:
    net = Network(tmp_path / "chain")
    net.close(CleanupPolicy.REMOVE_EVERYTHING)
    net.close(CleanupPolicy.REMOVE_EVERYTHING)


def test_default_policy_depends_on_pytest(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_policy() is CleanupPolicy.REMOVE_ONLY_UNNEEDED_FILES
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    assert default_policy() is CleanupPolicy.DO_NOT_REMOVE_FILES


def test_node_wraps_an_existing_node_dir(tmp_path: Path) -> None:
    info = nodelib.create_chain(tmp_path / "c", 1, 1.0, jsonrpc_port=None)
    node = Node(info.node_dirs[0])
    assert node.directory == info.node_dirs[0]
    assert node.jsonrpc_url == f"http://127.0.0.1:{info.jsonrpc_ports[0]}"
    assert [a.address for a in node.accounts()] == [a.address for a in info.accounts]
    assert not node.is_running()
    node.close(CleanupPolicy.REMOVE_EVERYTHING)
    assert not info.node_dirs[0].exists()


def test_loading_a_snapshot_that_does_not_exist_fails_before_starting_the_node(tmp_path: Path) -> None:
    net = Network(tmp_path / "chain")
    try:
        with pytest.raises(PycitaError, match="snapshot_chain.rlp does not exist"):
            net.node.run(load_snapshot_from=tmp_path / "snapshot")
        assert not net.node.is_running()
    finally:
        net.close(CleanupPolicy.REMOVE_EVERYTHING)


def test_plugin_keeps_everything_for_a_failed_test(tmp_path: Path) -> None:
    """Run a small pytest session: the passing test's databases go, the failing test's stay."""
    out = tmp_path / "out"
    out.mkdir()
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_inner.py").write_text(textwrap.dedent(f"""
        import json, os
        from pathlib import Path
        import pytest
        from pycita.testtools import Network
        from pycita.testtools.plugin import cleanup_policy_for

        OUT = Path({str(out)!r})

        @pytest.fixture
        def idle_network(request, tmp_path):
            net = Network(tmp_path / "chain")
            (net.node.directory / "data" / "db").write_text("db")
            (OUT / (request.node.name + ".json")).write_text(json.dumps(str(net.node.directory)))
            yield net
            net.close(cleanup_policy_for(request))

        def test_passes(idle_network):
            assert True

        def test_fails(idle_network):
            assert False, "deliberate failure"
    """))
    env = dict(os.environ)
    env.pop("PYTEST_CURRENT_TEST", None)
    env["PYCITA_SKIP_ENSURE_RABBITMQ"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",  # the plugin loads by its entry point
         "--rootdir", str(suite), "--basetemp", str(tmp_path / "inner-tmp"), str(suite)],
        capture_output=True, text=True, timeout=240, check=False, env=env, cwd=suite)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # exactly: some test failed
    assert "1 failed, 1 passed" in proc.stdout, proc.stdout
    passed_dir = Path(json.loads((out / "test_passes.json").read_text()))
    failed_dir = Path(json.loads((out / "test_fails.json").read_text()))
    assert not (passed_dir / "data").exists()
    assert (passed_dir / "node.json").exists()
    assert (failed_dir / "data" / "db").read_text() == "db"
    for d in (passed_dir, failed_dir):
        rabbit.delete_vhost(nodelib.vhost_of(nodelib.node_config(d).amqp_url))

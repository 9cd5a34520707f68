"""``pycita create|status|stop|logs|clean|send|load`` without running services (clean needs the broker)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycita import node as nodelib
from pycita.cli import main
from pycita.config import DEFAULT_SERVICES, load_node_config
from pycita.crypto import PrivateKey
from pycita.genesis import Genesis

NODE_FILES = ("privkey", "genesis.json", "node.json", ".env")
NODE_SUBDIRS = ("data", "logs", "snapshots", "run")


def _create(tmp_path: Path, *extra: str, nodes: int = 3, name: str = "chain") -> Path:
    chain = tmp_path / name
    rc = main(["create", "--nodes", str(nodes), "--dir", str(chain), *extra])
    assert rc == 0
    return chain


def test_create_layout_keys_and_genesis(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chain = _create(tmp_path, "--block-interval", "0.5", "--jsonrpc-port", "0")
    out = capsys.readouterr().out
    assert str(chain / "0") in out and "accounts.json" in out

    genesis = Genesis.load(chain / "genesis.json")
    accounts = json.loads((chain / "accounts.json").read_text())
    assert len(accounts) == nodelib.DEFAULT_FUNDED_ACCOUNTS
    assert stat.S_IMODE((chain / "accounts.json").stat().st_mode) == 0o600
    alloc = {"0x" + a.hex(): balance for a, balance in genesis.alloc}
    for acc in accounts:
        assert set(acc) == {"address", "private_key"}
        assert "0x" + PrivateKey.from_hex(acc["private_key"]).address.hex() == acc["address"]
        assert alloc[acc["address"]] > 0

    addresses, vhosts, ports = [], set(), set()
    for i in range(3):
        nd = chain / str(i)
        for f in NODE_FILES:
            assert (nd / f).is_file(), f
        for d in NODE_SUBDIRS:
            assert (nd / d).is_dir(), d
        assert stat.S_IMODE((nd / "privkey").stat().st_mode) == 0o600
        assert (nd / "genesis.json").read_bytes() == (chain / "genesis.json").read_bytes()
        addresses.append(PrivateKey.from_hex((nd / "privkey").read_text().strip()).address)
        cfg = load_node_config(nd)
        assert cfg.node_id == i
        assert cfg.block_interval == 0.5
        assert cfg.services == DEFAULT_SERVICES
        assert cfg.amqp_url.startswith("amqp://")
        vhosts.add(nodelib.vhost_of(cfg.amqp_url))
        ports.add(cfg.jsonrpc_port)
    assert list(genesis.validators) == addresses  # every node is a validator, in node order
    assert len(set(addresses)) == 3
    assert len(vhosts) == 3 and all(v.startswith("pycita-") for v in vhosts)
    assert len(ports) == 3 and all(p > 0 for p in ports)


def test_create_explicit_port_gives_consecutive_ports(tmp_path: Path) -> None:
    chain = _create(tmp_path, "--jsonrpc-port", "21000")
    assert [load_node_config(chain / str(i)).jsonrpc_port for i in range(3)] == [21000, 21001, 21002]


def test_default_port_is_1337(tmp_path: Path) -> None:
    chain = _create(tmp_path, nodes=2)
    assert [load_node_config(chain / str(i)).jsonrpc_port for i in range(2)] == [1337, 1338]


def test_vhosts_differ_between_chain_dirs(tmp_path: Path) -> None:
    a = _create(tmp_path, nodes=1, name="a")
    b = _create(tmp_path, nodes=1, name="b")
    va = nodelib.vhost_of(load_node_config(a / "0").amqp_url)
    vb = nodelib.vhost_of(load_node_config(b / "0").amqp_url)
    assert va != vb
    assert va == nodelib.vhost_name(a, 0)


def test_create_refuses_existing_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chain = _create(tmp_path, nodes=1)
    key_before = (chain / "0" / "privkey").read_bytes()
    capsys.readouterr()
    assert main(["create", "--nodes", "1", "--dir", str(chain)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "Traceback" not in err
    assert (chain / "0" / "privkey").read_bytes() == key_before


@pytest.fixture
def chain(tmp_path: Path) -> Path:
    return _create(tmp_path, nodes=1)


BAD_ARGS = [
    (["create"], "--nodes"),
    (["create", "--nodes", "0"], "--nodes"),
    (["create", "--nodes", "x"], "invalid int"),
    (["create", "--nodes", "1", "--block-interval", "0"], "--block-interval"),
    (["status", "{missing}"], "does not exist"),
    (["start", "{missing}"], "does not exist"),
    (["stop", "{missing}"], "does not exist"),
    (["clean", "{missing}"], "does not exist"),
    (["logs", "{missing}"], "does not exist"),
    (["load", "{missing}", "--tps", "1", "--duration", "1"], "does not exist"),
    (["start", "{chain}"], "not a node directory"),
    (["logs", "{node}", "--service", "nosuch"], "unknown service"),
    (["load", "{node}", "--tps", "1", "--duration", "1"], "not running"),
    (["send", "transfer", "{node}", "--to", "0x12", "--value", "1"], "20-byte address"),
    (["send", "transfer", "{node}", "--to", "0x" + "11" * 20, "--value", "1"], "not running"),
    (["send", "store", "{node}", "--to", "0x" + "11" * 20, "--set", "nothex"], "KEY=VALUE"),
    (["frobnicate"], "invalid choice"),
    ([], "required"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_ARGS, ids=[" ".join(a) or "no-args" for a, _ in BAD_ARGS])
def test_user_errors_exit_2_with_one_line(argv: list[str], message: str, chain: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    subs = {"missing": str(chain / "nowhere"), "chain": str(chain), "node": str(chain / "0")}
    capsys.readouterr()
    rc = _run([a.format(**subs) for a in argv])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err


def _run(argv: list[str]) -> int:
    """main(), with argparse's own exits turned into return codes as the console script sees them."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def test_console_script_reports_without_traceback(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "pycita"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pycita.cli"]
    proc = subprocess.run([*cmd, "status", str(tmp_path / "nowhere")], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_status_of_stopped_node(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nd = chain / "0"
    assert main(["status", str(nd)]) == 3
    assert "not running" in capsys.readouterr().out
    assert main(["status", str(nd), "--json"]) == 3
    st = json.loads(capsys.readouterr().out)
    assert st["running"] is False
    assert {"height", "block_hash", "state_root", "services"} <= st.keys()
    assert st["height"] is None
    assert set(st["services"]) == set(DEFAULT_SERVICES)
    assert all(s["state"] == "STOPPED" and s["answering"] is False and s["pid"] is None
               for s in st["services"].values())


def test_stop_of_stopped_node_is_fine(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stop", str(chain / "0")]) == 0
    assert "was not running" in capsys.readouterr().out


def test_logs_tail_and_service_filter(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nd = chain / "0"
    (nd / "logs" / "chain.log").write_text("".join(f"chain line {i}\n" for i in range(100)))
    (nd / "logs" / "supervisord.log").write_text("spawned: 'chain'\n")
    assert main(["logs", str(nd), "--service", "chain", "-n", "3"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"chain line {i}" for i in (97, 98, 99)]
    assert main(["logs", str(nd), "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert f"==> {nd.resolve() / 'logs' / 'supervisord.log'} <==" in out
    assert "spawned: 'chain'" in out and "chain line 99" in out and "chain line 98" not in out


def test_supervisord_conf(chain: Path) -> None:
    cfg = load_node_config(chain / "0")
    conf = nodelib.render_supervisord_conf(cfg)
    for svc in cfg.services:
        assert f"[program:{svc}]" in conf
        assert f"command={sys.executable} -m services.{svc} --node-dir {cfg.node_dir}" in conf
        assert f"stdout_logfile={cfg.node_dir / 'logs' / (svc + '.log')}" in conf
    assert conf.count("autorestart=true") == len(cfg.services)
    assert conf.count("startsecs=1") == len(cfg.services)
    assert f"logfile={cfg.node_dir / 'logs' / 'supervisord.log'}" in conf
    assert f"file={cfg.node_dir / 'run' / 'supervisor.sock'}" in conf


def test_supervisord_conf_long_path_moves_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    chain = _create(deep, nodes=1)
    conf = nodelib.render_supervisord_conf(load_node_config(chain / "0"))
    sock_line = next(line for line in conf.splitlines() if line.startswith("file="))
    assert len(sock_line) - len("file=") <= 100


@pytest.fixture
def fake_supervisord(chain: Path) -> Iterator[None]:
    """A process whose command line says supervisord, recorded as the node's supervisord."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "supervisord"])
    (chain / "0" / "run" / "supervisord.pid").write_text(f"{proc.pid}\n")
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.usefixtures("fake_supervisord")
def test_clean_refuses_while_running(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nd = chain / "0"
    (nd / "data" / "x").write_text("keep me")
    assert main(["clean", str(nd)]) == 2
    err = capsys.readouterr().err
    assert "running" in err and "pycita stop" in err
    assert (nd / "data" / "x").exists()


@pytest.mark.usefixtures("rabbitmq_broker")
def test_clean_keeps_keys_and_genesis(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pycita import rabbit

    nd = chain / "0"
    kept = {f: (nd / f).read_bytes() for f in NODE_FILES}
    (nd / "data" / "chain").mkdir(parents=True)
    (nd / "data" / "chain" / "CURRENT").write_text("db")
    (nd / "logs" / "chain.log").write_text("log")
    (nd / "snapshots" / "snapshot_chain.rlp").write_text("snap")
    (nd / "run" / "supervisord.pid").write_text("999999\n")
    vhost = nodelib.vhost_of(load_node_config(nd).amqp_url)
    try:
        assert main(["clean", str(nd)]) == 0
        assert "cleaned" in capsys.readouterr().out
        for d in NODE_SUBDIRS:
            assert (nd / d).is_dir() and not any((nd / d).iterdir()), d
        assert {f: (nd / f).read_bytes() for f in NODE_FILES} == kept
        assert (chain / "accounts.json").exists() and (chain / "genesis.json").exists()
        assert vhost in rabbit.list_vhosts()
    finally:
        rabbit.delete_vhost(vhost)


def test_is_not_running_with_stale_pidfile(chain: Path) -> None:
    nd = chain / "0"
    (nd / "run" / "supervisord.pid").write_text(f"{os.getpid()}\n")  # alive, but not a supervisord
    assert nodelib.is_running(nd) is False

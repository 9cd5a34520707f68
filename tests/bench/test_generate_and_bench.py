"""The chain generator and the snapshot benchmark at a tiny size: correctness only, no timings."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from pycita import node as nodelib
from pycita.generate import GenerateError, GenerateParams, generate

REPO = Path(__file__).resolve().parents[2]
TOOL = str(Path(sys.executable).parent / "snapshot_tool")


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("snapshot_bench", REPO / "bench" / "snapshot_bench.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def chain_dir(tmp_path: Path) -> Path:
    info = nodelib.create_chain(tmp_path / "chain", 1, 0.5, jsonrpc_port=None)
    return info.node_dirs[0]


def test_generated_chain_replays_from_genesis(chain_dir: Path, tmp_path: Path) -> None:
    """Every generated block is accepted by a fresh chain and re-executes (signatures recovered) to its roots."""
    rep = generate(chain_dir, GenerateParams(accounts=200, blocks=30, contracts=3, slots=450, txs_per_block=50))
    assert rep.height == 30 and rep.transactions == 200 + 2 * 3 + 3
    more = generate(chain_dir, GenerateParams(accounts=20, blocks=5, seed=2, verify_senders=True))
    assert more.start_height == 30 and more.height == 35
    out = _bench().replay_worker(chain_dir, tmp_path / "replay")
    assert out["ok"] and out["blocks"] == 35


def test_generate_refuses_bad_sizes(chain_dir: Path) -> None:
    with pytest.raises(GenerateError):
        generate(chain_dir, GenerateParams(accounts=1000, blocks=2, txs_per_block=10))
    with pytest.raises(GenerateError):
        generate(chain_dir, GenerateParams(accounts=10, blocks=2, slots=5))


def test_cli_generate(chain_dir: Path) -> None:
    proc = subprocess.run([str(Path(sys.executable).parent / "pycita"), "generate", str(chain_dir), "--accounts",
                           "50", "--blocks", "5", "--contracts", "1", "--slots", "10", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["height"] == 5


def test_snapshot_of_generated_node_verifies_and_node_keeps_producing(chain_dir: Path,
                                                                      rabbitmq_broker: None) -> None:
    rep = generate(chain_dir, GenerateParams(accounts=200, blocks=30, contracts=2, slots=100))
    nodelib.start(chain_dir, timeout=120)
    try:
        bench = _bench()
        assert bench.wait_height(chain_dir, rep.height + 1, 60) > rep.height  # produces on top of it
        snap = subprocess.run([TOOL, "-m", "snapshot", "-f", "gen"], cwd=chain_dir, capture_output=True, text=True,
                              timeout=120)
        assert snap.returncode == 0, snap.stderr
    finally:
        nodelib.stop(chain_dir)
    ver = subprocess.run([TOOL, "-m", "verify", "-f", "gen", "--json"], cwd=chain_dir, capture_output=True,
                         text=True, timeout=120)
    assert ver.returncode == 0, ver.stdout + ver.stderr
    assert json.loads(ver.stdout)["ok"]


def test_bench_code_path_writes_json(tmp_path: Path, rabbitmq_broker: None) -> None:
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    rc = _bench().main(["--sizes", "200", "--blocks", "10", "--block-interval", "0.5", "--rate-window", "1",
                        "--workdir", str(tmp_path / "work"), "--out", str(out), "--plot", str(png)])
    assert rc == 0
    data = json.loads(out.read_text())
    size = data["sizes"][0]
    assert size["accounts"] == 200
    assert size["replay"]["ok"]
    assert size["after_restore"]["produced_next"]
    assert size["snapshot"]["bytes"] > 0 and size["tar_zstd"]["bytes"] > 0
    assert set(size["derived"]["targets"]) >= {"restore_vs_replay_speedup", "snapshot_size_vs_tar_zstd"}
    assert png.stat().st_size > 0

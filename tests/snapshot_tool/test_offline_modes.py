"""``-m info`` and ``-m verify`` on real snapshot files (built with the format tests' chain builder)."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tools.snapshot_tool.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main


def _format_helpers() -> ModuleType:
    name = "snapshot_format_helpers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "snapshot" / "conftest.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def node_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    helpers = _format_helpers()
    nd = tmp_path_factory.mktemp("node")
    (nd / "snapshots").mkdir()
    chain = helpers.build_chain(6)
    chain.genesis.save(nd / "genesis.json")
    chain.write(nd / "snapshots", "s")
    return nd


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    return main(list(argv), out=out, err=err), out.getvalue(), err.getvalue()


def test_info_shows_both_manifests_and_that_they_agree(node_dir: Path) -> None:
    code, out, _ = run("-m", "info", "-f", "s", "--node-dir", str(node_dir), "--json")
    data = json.loads(out)
    assert code == EXIT_OK and data["ok"] and data["files_agree"]
    assert data["chain"]["height"] == data["executor"]["height"] == 6


def test_verify_passes_on_intact_files(node_dir: Path) -> None:
    code, out, _ = run("-m", "verify", "-f", "s", "--node-dir", str(node_dir), "-q")
    assert code == EXIT_OK and "height       6" in out


def test_verify_accepts_a_path_prefix_with_an_explicit_genesis(node_dir: Path) -> None:
    code, out, _ = run("-m", "verify", "-f", str(node_dir / "snapshots" / "s"), "--node-dir", "/nonexistent",
                       "--genesis", str(node_dir / "genesis.json"), "-q", "--json")
    assert code == EXIT_OK and json.loads(out)["cross_checked"] is True


def test_verify_of_a_corrupt_chunk_names_file_chunk_and_check(node_dir: Path, tmp_path: Path) -> None:
    snapdir = tmp_path / "snapshots"
    snapdir.mkdir()
    for suffix in ("_chain.rlp", "_executor.rlp"):
        data = bytearray((node_dir / "snapshots" / f"s{suffix}").read_bytes())
        if suffix == "_executor.rlp":
            data[100] ^= 0xFF
        (snapdir / f"s{suffix}").write_bytes(bytes(data))
    code, out, err = run("-m", "verify", "-f", str(snapdir / "s"), "--genesis", str(node_dir / "genesis.json"), "-q")
    assert code == EXIT_FAILED and out == ""
    assert err.count("\n") == 1 and "s_executor.rlp: chunk 0: chunk hash check failed" in err


def test_verify_without_a_genesis_is_a_usage_error(node_dir: Path, tmp_path: Path) -> None:
    code, _, err = run("-m", "verify", "-f", str(node_dir / "snapshots" / "s"), "--node-dir", str(tmp_path))
    assert code == EXIT_USAGE and "genesis" in err

"""snapshot_tool's command line: heights, -f confinement, and exit codes (no RabbitMQ needed)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from pycita.snapshot.journal import SnapshotLock
from tools.snapshot_tool.cli import (
    EXIT_FAILED,
    EXIT_USAGE,
    locate_files,
    main,
    parse_block_hash,
    parse_height,
    resolve_snapshot_name,
)
from tools.snapshot_tool.errors import UsageError


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    nd = tmp_path / "node"
    nd.mkdir()
    # port 1 on localhost: nothing listens, connecting fails at once
    (nd / ".env").write_text("AMQP_URL=amqp://guest:guest@127.0.0.1:1/%2F\n")
    (nd / "node.json").write_text(json.dumps({"node_id": 0, "snapshot_phase_timeout": 5}))
    (nd / "snapshots").mkdir()
    return nd


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------- heights


@pytest.mark.parametrize(("text", "value"), [("100", 100), ("0x64", 100), ("0X64", 100), (" 7 ", 7),
                                             ("0", 0), ("0xffffffffffffffff", 2**64 - 1)])
def test_heights_are_decimal_or_hex(text: str, value: int) -> None:
    assert parse_height(text) == value


@pytest.mark.parametrize("text", ["", "abc", "-1", "+5", "0x", "1e3", "1_000", "0x1g", "18446744073709551616"])
def test_malformed_heights_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_height(text)


def test_a_block_hash_needs_32_bytes_of_hex() -> None:
    assert parse_block_hash("0x" + "ab" * 32) == b"\xab" * 32
    assert parse_block_hash("AB" * 32) == b"\xab" * 32
    with pytest.raises(UsageError, match="32 bytes"):
        parse_block_hash("0x1234")


# ------------------------------------------------------------------ -f names


def test_a_plain_name_stays_inside_the_snapshot_directory(tmp_path: Path) -> None:
    snapdir = tmp_path / "snapshots"
    snapdir.mkdir()
    assert resolve_snapshot_name(snapdir, "snapshot") == "snapshot"
    assert resolve_snapshot_name(snapdir, "./a/../b") == "b"
    assert resolve_snapshot_name(snapdir, str(snapdir / "abs")) == "abs"


@pytest.mark.parametrize("value", ["../x", "../../etc/passwd", "/tmp/elsewhere", "a/../../x", ".", ""])
def test_a_name_leaving_the_snapshot_directory_is_refused(tmp_path: Path, value: str) -> None:
    snapdir = tmp_path / "snapshots"
    snapdir.mkdir()
    with pytest.raises(UsageError):
        resolve_snapshot_name(snapdir, value)


def test_a_symlinked_directory_pointing_outside_is_refused(tmp_path: Path) -> None:
    snapdir = tmp_path / "snapshots"
    snapdir.mkdir()
    (tmp_path / "outside").mkdir()
    (snapdir / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(UsageError, match="would leave the snapshot directory"):
        resolve_snapshot_name(snapdir, "link/x")


def test_a_symlinked_file_pointing_outside_is_refused(tmp_path: Path) -> None:
    snapdir = tmp_path / "snapshots"
    snapdir.mkdir()
    (tmp_path / "victim").write_text("precious")
    (snapdir / "x_executor.rlp").symlink_to(tmp_path / "victim")
    with pytest.raises(UsageError):
        resolve_snapshot_name(snapdir, "x")


def test_a_symlinked_snapshot_directory_itself_is_allowed(tmp_path: Path) -> None:
    (tmp_path / "big-disk").mkdir()
    snapdir = tmp_path / "snapshots"
    snapdir.symlink_to(tmp_path / "big-disk")
    assert resolve_snapshot_name(snapdir, "snapshot") == "snapshot"


def test_info_files_are_found_by_name_by_prefix_or_as_one_file(tmp_path: Path) -> None:
    snapdir = tmp_path / "snapshots"
    snapdir.mkdir()
    (snapdir / "s_chain.rlp").write_bytes(b"c")
    (snapdir / "s_executor.rlp").write_bytes(b"e")
    by_name = locate_files("s", snapdir)
    assert by_name.chain == snapdir / "s_chain.rlp" and by_name.executor == snapdir / "s_executor.rlp"
    by_prefix = locate_files(str(snapdir / "s"), None)
    assert by_prefix.chain is not None and by_prefix.executor is not None
    one = locate_files(str(snapdir / "s_executor.rlp"), None)
    assert one.chain is None and one.executor == snapdir / "s_executor.rlp"
    with pytest.raises(UsageError, match="no snapshot files"):
        locate_files("missing", snapdir)


# ---------------------------------------------------------------- exit codes


def test_a_missing_mode_is_a_usage_error() -> None:
    code, _, err = run("-f", "x")
    assert code == EXIT_USAGE and "-m" in err


def test_an_unknown_mode_is_a_usage_error() -> None:
    assert run("-m", "explode")[0] == EXIT_USAGE


def test_an_escaping_file_name_exits_2_with_one_line(node_dir: Path) -> None:
    code, out, err = run("-m", "snapshot", "-f", "../x", "--node-dir", str(node_dir))
    assert code == EXIT_USAGE and out == ""
    assert err.count("\n") == 1 and "leave the snapshot directory" in err and "Traceback" not in err


def test_height_zero_is_refused_as_genesis(node_dir: Path) -> None:
    code, _, err = run("-m", "snapshot", "-e", "0x0", "--node-dir", str(node_dir))
    assert code == EXIT_USAGE and "genesis" in err


def test_a_malformed_height_exits_2(node_dir: Path) -> None:
    code, _, err = run("-m", "snapshot", "-e", "ten", "--node-dir", str(node_dir))
    assert code == EXIT_USAGE and "invalid height 'ten'" in err


def test_a_height_is_only_for_snapshot(node_dir: Path) -> None:
    assert run("-m", "restore", "-e", "5", "--node-dir", str(node_dir))[0] == EXIT_USAGE


def test_a_directory_without_env_is_not_a_node(tmp_path: Path) -> None:
    code, _, err = run("-m", "restore", "--node-dir", str(tmp_path))
    assert code == EXIT_USAGE and "not a node directory" in err


def test_an_unreachable_broker_fails_with_exit_1(node_dir: Path) -> None:
    code, _, err = run("-m", "snapshot", "-e", "0x64", "--node-dir", str(node_dir), "--quiet")
    assert code == EXIT_FAILED and "cannot connect to RabbitMQ" in err and "Traceback" not in err


def test_a_second_operation_on_a_locked_node_fails_naming_the_holder(node_dir: Path) -> None:
    with SnapshotLock(node_dir / "run"):
        code, _, err = run("-m", "restore", "--node-dir", str(node_dir))
    assert code == EXIT_FAILED and f"pid {os.getpid()}" in err


def test_info_on_missing_files_exits_2(node_dir: Path) -> None:
    code, _, err = run("-m", "info", "-f", "nothing", "--node-dir", str(node_dir))
    assert code == EXIT_USAGE and "no snapshot files" in err

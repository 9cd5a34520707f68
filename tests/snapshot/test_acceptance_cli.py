"""Acceptance: ``snapshot_tool`` heights (-e), ``-m info`` and ``-m verify`` on a real node's snapshots.

The source chain is the shared one of ``acceptance_support.py`` (height > 120,
504 contracts, 4.4 MiB of storage in one contract, snapshot ``at100``).

How ``info`` is shown to read only the manifest, without timing anything:
``info`` runs in a separate Python process that counts the bytes the process
reads through read(2)-family system calls (``rchar`` of ``/proc/self/io``,
which counts every ``read``/``readinto``/``os.read``/``pread`` of any file)
around each ``cli.main`` call, with ``mmap.mmap`` replaced by a function that
fails (a mapped file would be read without syscalls). It is run on the real
``at100`` files and on copies padded to ~400 MB each: the real chunks
followed by six 64 MiB chunks that are holes of a sparse file (their
ChunkInfo hashes are the true keccak of 64 MiB of zeros, so the manifest
describes the bytes truthfully and the layout stays contiguous). ``info`` must
read about the manifests' size on both, while ``verify`` on the padded copy
reads past the real chunks into the padding (proving the counter sees chunk
reads) and fails there.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import rlp
from acceptance_support import SNAPSHOT_HEIGHT, AcceptanceChain, tree_state
from Crypto.Hash import keccak as _keccak_mod

from pycita.testtools import Snapshot

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

H = SNAPSHOT_HEIGHT
REPO = Path(__file__).resolve().parents[2]
PAD_CHUNK = 64 * 1024 * 1024
PAD_CHUNKS = 6


def tool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.snapshot_tool", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, check=False, stdin=subprocess.DEVNULL)


def block(chain: AcceptanceChain, height: int) -> dict[str, Any]:
    b = chain.node.api.get_block(height)
    assert b is not None
    return b


def listing(directory: Path) -> dict[str, tuple[bool, int, int]]:
    return tree_state(directory)


# --------------------------------------------------------------------- -e


def test_a_snapshot_without_e_is_taken_at_the_current_height(acceptance_chain: AcceptanceChain) -> None:
    node = acceptance_chain.node
    before = node.get_height()
    proc = tool("-m", "snapshot", "--json", "-q", cwd=node.directory)
    after = node.get_height()
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert before <= result["height"] <= after
    b = block(acceptance_chain, result["height"])
    assert (result["block_hash"], result["state_root"]) == (b["hash"], b["stateRoot"])
    snap = Snapshot.from_prefix(node.snapshot_dir() / "snapshot")  # -f defaults to "snapshot"
    assert (snap.height, snap.block_hash) == (result["height"], b["hash"])


@pytest.mark.parametrize(("arg", "height"), [("1", 1), ("0x64", 100)])
def test_a_snapshot_is_taken_at_a_decimal_or_hex_height(acceptance_chain: AcceptanceChain, arg: str,
                                                         height: int) -> None:
    node = acceptance_chain.node
    name = f"e_{arg}"
    proc = tool("-m", "snapshot", "-e", arg, "-f", name, "--json", "-q", cwd=node.directory)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    b = block(acceptance_chain, height)
    assert (result["height"], result["block_hash"], result["state_root"]) == (height, b["hash"], b["stateRoot"])
    snap = Snapshot.from_prefix(node.snapshot_dir() / name)
    assert snap.info["files_agree"] is True
    assert (snap.height, snap.block_hash, snap.state_root) == (height, b["hash"], b["stateRoot"])
    if height == H:
        assert snap.block_hash == acceptance_chain.snapshot.block_hash


def test_a_snapshot_above_the_tip_fails_clearly_and_leaves_no_file(acceptance_chain: AcceptanceChain) -> None:
    node = acceptance_chain.node
    before = listing(node.snapshot_dir())
    target = node.get_height() + 10_000
    proc = tool("-m", "snapshot", "-e", str(target), "-f", "too_high", cwd=node.directory)
    assert proc.returncode != 0
    message = proc.stderr.strip()
    assert str(target) in message and "snapshot_tool" in message, message
    assert len(message.splitlines()) == 1, message
    assert "Traceback" not in proc.stderr
    assert listing(node.snapshot_dir()) == before


# ----------------------------------------------------------- info, verify


def _read_manifest(path: Path) -> tuple[bytes, int, list[Any]]:
    data = path.read_bytes()
    (offset,) = struct.unpack("<Q", data[-8:])
    return data[:offset], offset, rlp.decode(data[offset:-8])


def pad_with_sparse_chunks(src: Path, dst: Path, table: int) -> None:
    """Copy ``src`` adding PAD_CHUNKS chunks of PAD_CHUNK zero bytes (a sparse hole) after its last
    chunk, listed at the end of manifest table ``table`` (the last table in file order)."""
    chunk_area, offset, manifest = _read_manifest(src)
    zero_hash = _zero_chunk_hash()
    for i in range(PAD_CHUNKS):
        manifest[table].append([zero_hash, PAD_CHUNK, offset + i * PAD_CHUNK])
    new_offset = offset + PAD_CHUNKS * PAD_CHUNK
    with open(dst, "wb") as f:
        f.write(chunk_area)
        f.seek(new_offset)  # the padding chunks are a hole: no disk, no time
        f.write(rlp.encode(manifest))
        f.write(struct.pack("<Q", new_offset))


_ZERO_HASH: list[bytes] = []


def _zero_chunk_hash() -> bytes:
    if not _ZERO_HASH:
        _ZERO_HASH.append(_keccak_mod.new(digest_bits=256, data=bytes(PAD_CHUNK)).digest())
    return _ZERO_HASH[0]


MEASURE = r"""
import io, json, mmap, sys

def _no_mmap(*args, **kwargs):
    raise AssertionError("snapshot files must be read with read calls (mmap would escape the count)")

mmap.mmap = _no_mmap
from tools.snapshot_tool import cli, offline  # noqa: F401  (imported before measuring)

def rchar():
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])

out = []
for args in json.loads(sys.argv[1]):
    o, e = io.StringIO(), io.StringIO()
    before = rchar()
    code = cli.main(args, out=o, err=e)
    out.append({"bytes": rchar() - before, "code": code, "out": o.getvalue(), "err": e.getvalue()})
print(json.dumps(out))
"""


def measure(runs: list[list[str]], cwd: Path) -> list[dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(runs)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, check=False, env={"PYTHONPATH": str(REPO),
                                                                     "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_info_reads_only_the_manifests_even_of_a_file_of_hundreds_of_megabytes(
        acceptance_chain: AcceptanceChain, tmp_path: Path) -> None:
    snap = acceptance_chain.snapshot
    big = tmp_path / "padded"
    pad_with_sparse_chunks(snap.chain_file, Path(f"{big}_chain.rlp"), table=1)
    pad_with_sparse_chunks(snap.executor_file, Path(f"{big}_executor.rlp"), table=2)
    big_size = sum(Path(f"{big}{s}").stat().st_size for s in ("_chain.rlp", "_executor.rlp"))
    assert big_size > 2 * PAD_CHUNKS * PAD_CHUNK > 700 * 1024 * 1024
    manifests = sum(p.stat().st_size - _read_manifest(p)[1]
                    for p in (Path(f"{big}_chain.rlp"), Path(f"{big}_executor.rlp")))
    genesis = str(acceptance_chain.node.directory / "genesis.json")
    small_prefix = str(snap.chain_file)[: -len("_chain.rlp")]

    warmup, small, large, large_verify = measure([
        ["-m", "info", "-f", small_prefix, "--json"],
        ["-m", "info", "-f", small_prefix, "--json"],
        ["-m", "info", "-f", str(big), "--json"],
        ["-m", "verify", "-f", str(big), "--genesis", genesis, "--json", "-q"],
    ], cwd=tmp_path)

    assert warmup["code"] == small["code"] == large["code"] == 0, (small["err"], large["err"])
    info = json.loads(large["out"])
    assert info["ok"] and info["files_agree"]
    for role in ("chain", "executor"):
        assert (info[role]["height"], info[role]["block_hash"], info[role]["state_root"]) == \
            (H, snap.block_hash, snap.state_root)
    assert info["chain"]["chunks"] == json.loads(small["out"])["chain"]["chunks"] + PAD_CHUNKS
    # the manifests and trailers plus at most a few read buffers -- never the chunks
    slack = 64 * 1024
    assert large["bytes"] <= manifests + 16 + slack, (large["bytes"], manifests)
    assert small["bytes"] <= large["bytes"] + slack
    real_size = snap.chain_file.stat().st_size + snap.executor_file.stat().st_size
    assert real_size > 4 * 1024 * 1024 and small["bytes"] < real_size / 10
    # the counter does see chunk reads: verify reads the real chunks and into the padding, then fails
    assert large_verify["code"] == 1
    assert json.loads(large_verify["out"])["ok"] is False
    assert large_verify["bytes"] >= PAD_CHUNK


def test_verify_checks_both_files_offline_with_the_node_stopped_and_writes_nothing(
        acceptance_chain: AcceptanceChain, tmp_path: Path) -> None:
    chain = acceptance_chain
    stopped = chain.node.fresh_copy(tmp_path / "stopped")
    try:
        stopped.run()
        stopped.wait_for_block(3, timeout=30)
        stopped.stop()
        assert not stopped.is_running()
        chain.snapshot.copy_to(stopped.snapshot_dir(), name="at100")
        corrupt = chain.snapshot.copy_to(stopped.snapshot_dir(), name="corrupt")
        data = bytearray(corrupt.executor_file.read_bytes())
        data[len(data) // 3] ^= 0x01  # inside a state chunk
        corrupt.executor_file.write_bytes(bytes(data))
        b100 = block(chain, H)
        before = tree_state(stopped.directory)

        ok = tool("-m", "verify", "-f", "at100", "--json", "-q", cwd=stopped.directory)
        assert ok.returncode == 0, ok.stderr
        report = json.loads(ok.stdout)
        assert report["ok"] and report["cross_checked"]
        assert (report["height"], report["block_hash"], report["state_root"]) == \
            (H, b100["hash"], b100["stateRoot"])
        assert report["blocks"] == H and report["full_blocks"] == H
        assert report["accounts"] >= 500 + 10 and report["storage_slots"] >= 500 * 3 + 22

        info = tool("-m", "info", "-f", "at100", "--json", cwd=stopped.directory)
        assert info.returncode == 0, info.stderr
        manifest = json.loads(info.stdout)
        assert manifest["ok"] and manifest["files_agree"]
        for role in ("chain", "executor"):
            assert (manifest[role]["height"], manifest[role]["block_hash"], manifest[role]["state_root"]) == \
                (H, b100["hash"], b100["stateRoot"])
        assert manifest["executor"]["accounts"] == report["accounts"]

        bad = tool("-m", "verify", "-f", "corrupt", cwd=stopped.directory)
        assert bad.returncode == 1
        assert "corrupt_executor.rlp" in bad.stderr and "chunk" in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr

        assert tree_state(stopped.directory) == before, "verify or info wrote into the node directory"
        assert not stopped.is_running()
    finally:
        stopped.close()

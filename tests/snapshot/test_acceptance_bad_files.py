"""Acceptance: a restore from bad snapshot files is refused and leaves the node exactly as it was.

One valid snapshot pair (a source node with transfers, a contract deploy
with ABI and storage; H = 20, plus one at H = 22 and one of another chain)
and one running target node with its own chain of the same genesis. Every
bad input is handed to ``snapshot_tool -m restore`` on the target, which
must exit 1 with one message naming the file, the chunk (where one applies)
and the failed check; afterwards the target still has its old blocks (the
old tip's hash and state root, no block of the snapshot), its executor
agrees with its chain, nothing is staged, no journal is left, and it is out
of flight mode: it accepts a transaction and keeps producing blocks.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _acceptance import (
    Container,
    Tip,
    assert_accepts_a_transaction_and_produces_blocks,
    block_summary,
    flip_bit,
    run_tool,
    seed_state,
    uint,
    wait_settled,
)

from pycita.config import load_node_config
from pycita.crypto import PrivateKey, keccak
from pycita.genesis import Genesis
from pycita.proof import QuorumCert, sign_vote
from pycita.testtools import CleanupPolicy, Network, Node, Snapshot

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

H = 20
CHAIN = "_chain.rlp"
EXECUTOR = "_executor.rlp"
HUGE_SNAPPY = bytes([0xFF, 0xFF, 0xFF, 0xFF, 0x0F]) + b"\x00" * 64  # declares 4 GiB - 1 decompressed


@dataclass
class World:
    good: Snapshot  # H = 20
    later: Snapshot  # H = 22, same chain
    foreign: Snapshot  # another genesis
    target: Node
    workdir: Path
    validator: PrivateKey
    chain_id: int
    cases: int = 0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest,
          rabbitmq_broker: None) -> Iterator[World]:
    base = tmp_path_factory.mktemp("bad-files")
    failed_before = request.session.testsfailed
    source = Network(base / "source", block_interval=0.3, name="source")
    other = Network(base / "other", block_interval=0.3, name="other")
    target: Node | None = None
    try:
        source.run()
        target = source.node.fresh_copy(base / "target")
        target.run()
        seed_state(source.node, accounts=5, contracts=1, slots=6)
        source.node.wait_for_block(H + 3, timeout=60)
        keep = base / "snapshots"
        good = source.node.dump_snapshot("h20", height=H).copy_to(keep)
        later = source.node.dump_snapshot("h22", height=H + 2).copy_to(keep)
        source.close()
        other.run()
        other.node.wait_for_block(3, timeout=30)
        foreign = other.node.dump_snapshot("foreign", height=2).copy_to(keep)
        other.close()
        assert good.info["files_agree"] is True and good.height == H and later.height == H + 2
        target.wait_for_block(H + 5, timeout=60)  # its own chain, taller than the snapshot
        cfg = load_node_config(target.directory)
        world = World(good, later, foreign, target, base / "work", cfg.private_key(),
                      Genesis.load(cfg.genesis_path).chain_id)
        world.workdir.mkdir()
        yield world
    finally:
        policy = (CleanupPolicy.DO_NOT_REMOVE_FILES if request.session.testsfailed > failed_before
                  else CleanupPolicy.REMOVE_ONLY_UNNEEDED_FILES)
        for closing in (source.close, other.close, *([target.close] if target is not None else [])):
            try:
                closing(policy)
            except Exception as exc:  # close the others anyway
                print(f"close failed: {exc}")


# ------------------------------------------------------------------ helpers


@dataclass(frozen=True)
class Before:
    height: int
    block: tuple[str, str]


def before(world: World) -> Before:
    tip = wait_settled(world.target)
    summary = block_summary(world.target.api, tip.chain_height)
    assert summary is not None
    assert summary == (tip.chain_hash, tip.chain_root)
    return Before(tip.chain_height, summary)


def put_files(world: World, chain: bytes | None, executor: bytes | None) -> str:
    """Write a bad pair into the target's snapshots directory under a fresh name; return the name."""
    world.cases += 1
    name = f"bad{world.cases}"
    directory = world.target.snapshot_dir()
    directory.mkdir(parents=True, exist_ok=True)
    if chain is not None:
        (directory / f"{name}{CHAIN}").write_bytes(chain)
    if executor is not None:
        (directory / f"{name}{EXECUTOR}").write_bytes(executor)
    return name


def restore(world: World, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_tool(world.target.directory, "-m", "restore", "-f", name, "--timeout", "30", "-q", *extra)


def assert_refused(proc: subprocess.CompletedProcess[str], *, file: str, check: str | tuple[str, ...],
                   chunk: int | None = None, code: int = 1) -> None:
    text = proc.stderr
    print(f"refused: {text.strip()}")  # shown with -s, and in the report of a failed test
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}:\n{proc.stderr}\n{proc.stdout}"
    assert file in text, f"the message does not name {file}:\n{text}"
    checks = (check,) if isinstance(check, str) else check
    assert any(f"{c} check failed" in text for c in checks), f"the message names none of {checks}:\n{text}"
    if chunk is not None:
        assert f"{file}: chunk {chunk}:" in text, f"the message does not name chunk {chunk} of {file}:\n{text}"
    assert len(text.strip().splitlines()) == 1, f"expected one line:\n{text}"


def assert_unharmed(world: World, was: Before) -> Tip:
    """The target kept its old chain and state, staged nothing, and is out of flight mode."""
    node = world.target
    cfg = load_node_config(node.directory)
    for leftover in (cfg.run_dir / "restore.journal", cfg.data_dir / "chain.staged",
                     cfg.data_dir / "executor.staged", cfg.data_dir / "chain.backup",
                     cfg.data_dir / "executor.backup"):
        assert not leftover.exists(), f"{leftover} was left behind"
    tip = wait_settled(node)
    assert tip.chain_height >= was.height
    assert block_summary(node.api, was.height) == was.block, "the old tip block changed"
    for snap in (world.good, world.later):
        assert node.api.get_block_by_hash(snap.block_hash) is None, "a block of the snapshot is present"
    assert block_summary(node.api, H) != (world.good.block_hash, world.good.state_root)
    assert not any(tip.flight.values()), f"services still in flight mode: {tip.flight}"
    assert_accepts_a_transaction_and_produces_blocks(node)
    return tip


def good_bytes(world: World) -> tuple[bytes, bytes]:
    return world.good.chain_file.read_bytes(), world.good.executor_file.read_bytes()


def proof_for(world: World, height: int, block_hash: bytes, key: PrivateKey | None = None,
              signed: bool = True) -> bytes:
    key = key or world.validator
    sigs = ((key.address, sign_vote(key, world.chain_id, height, 0, block_hash)),) if signed else ()
    return QuorumCert(height, 0, block_hash, sigs).to_proof_bytes()


# ------------------------------------------------------------------ tests


def test_a_bit_flip_in_any_chunk_of_either_file_is_refused_naming_file_chunk_and_hash_check(world: World) -> None:
    chain, executor = good_bytes(world)
    for is_executor, data in ((False, chain), (True, executor)):
        container = Container.read(world.good.executor_file if is_executor else world.good.chain_file)
        infos = container.chunk_infos(is_executor)
        assert infos, "the snapshot has no chunks"
        for index, (_h, length, offset) in enumerate(infos):
            o, n = int.from_bytes(offset, "big"), int.from_bytes(length, "big")
            for where in (o + n // 2,):
                was = before(world)
                bad = flip_bit(data, where, bit=3)
                name = put_files(world, bad if not is_executor else chain, bad if is_executor else executor)
                proc = restore(world, name)
                suffix = EXECUTOR if is_executor else CHAIN
                assert_refused(proc, file=f"{name}{suffix}", chunk=index, check="chunk hash")
                assert_unharmed(world, was)


def test_a_truncated_file_or_a_wrong_trailing_offset_is_refused_naming_file_and_check(world: World) -> None:
    chain, executor = good_bytes(world)
    container_checks = ("file length", "trailing offset", "manifest")
    cases: list[tuple[str, bytes, bytes, str]] = []
    for suffix, data in ((CHAIN, chain), (EXECUTOR, executor)):
        manifest_at = int.from_bytes(data[-8:], "little")
        cuts = (5, manifest_at // 2, manifest_at, len(data) - 3) if suffix == CHAIN else (manifest_at // 2,
                                                                                       len(data) - 1)
        for cut in cuts:
            cases.append((suffix, data[:cut], data, f"truncated at {cut}"))
        offsets = (manifest_at + 1, len(data) + 100) if suffix == CHAIN else (manifest_at - 1,)
        for offset in offsets:
            cases.append((suffix, data[:-8] + offset.to_bytes(8, "little"), data, f"trailer says {offset}"))
    for suffix, bad, _good, why in cases:
        was = before(world)
        name = put_files(world, bad if suffix == CHAIN else chain, bad if suffix == EXECUTOR else executor)
        proc = restore(world, name)
        assert proc.returncode == 1, why
        assert_refused(proc, file=f"{name}{suffix}", check=container_checks)
        assert_unharmed(world, was)


def test_a_manifest_naming_another_height_hash_or_state_root_is_refused_by_that_check(world: World) -> None:
    chain, executor = good_bytes(world)
    good_hash = bytes.fromhex(world.good.block_hash[2:])
    other_hash = keccak(b"another block")
    other_root = keccak(b"another state root")
    # (what, chain manifest edits, executor manifest edits, the check that must trip)
    # Both manifests are changed consistently (and last_proof re-signed by the real validator for the
    # new height/hash) so that the files agree and the proof holds: only the named check can trip.
    cases: list[tuple[str, dict[int, bytes], dict[int, bytes], str | tuple[str, ...]]] = [
        ("height", {3: uint(H + 1), 5: proof_for(world, H + 1, good_hash), 8: uint(H + 1)}, {4: uint(H + 1)},
         "block hash"),
        ("block hash", {4: other_hash, 5: proof_for(world, H, other_hash)}, {5: other_hash}, "block hash"),
        ("state root", {2: other_root}, {3: other_root}, "state root"),
        # only the executor's manifest differs: the cross-check of the two files trips
        # only the executor's manifest differs: the chain's cross-check of the two files trips (or, if the
        # executor answers first, its own check of that field against its headers / rebuilt trie)
        ("executor height only", {}, {4: uint(H + 1)}, ("files agree", "block hash")),
        ("executor hash only", {}, {5: other_hash}, ("files agree", "block hash")),
        ("executor state root only", {}, {3: other_root}, ("files agree", "state root")),
    ]
    for what, chain_edits, executor_edits, check in cases:
        c, e = Container.read(world.good.chain_file), Container.read(world.good.executor_file)
        for index, value in chain_edits.items():
            c.manifest[index] = value
        for index, value in executor_edits.items():
            e.manifest[index] = value
        was = before(world)
        name = put_files(world, c.encode() if chain_edits else chain, e.encode() if executor_edits else executor)
        proc = restore(world, name)
        files = [f"{name}{CHAIN}"] if chain_edits else []
        files += [f"{name}{EXECUTOR}"] if executor_edits else []
        assert proc.returncode == 1, f"{what}: {proc.stderr}"
        assert any(f in proc.stderr for f in files), f"{what}: names none of {files}: {proc.stderr}"
        assert_refused(proc, file=name, check=check)
        assert_unharmed(world, was)


def test_a_chunk_declaring_a_huge_decompressed_size_is_refused_before_decompressing(world: World) -> None:
    chain, executor = good_bytes(world)
    for is_executor in (False, True):
        container = Container.read(world.good.executor_file if is_executor else world.good.chain_file)
        container.replace_chunk(is_executor, 0, HUGE_SNAPPY)  # ChunkInfo hash and len fixed: the hash passes
        was = before(world)
        bad = container.encode()
        name = put_files(world, bad if not is_executor else chain, bad if is_executor else executor)
        proc = restore(world, name)
        assert_refused(proc, file=f"{name}{EXECUTOR if is_executor else CHAIN}", chunk=0, check="chunk size")
        assert_unharmed(world, was)


def test_chain_and_executor_files_of_two_different_snapshots_are_refused(world: World) -> None:
    for chain_of, executor_of in ((world.good, world.later), (world.later, world.good)):
        was = before(world)
        name = put_files(world, chain_of.chain_file.read_bytes(), executor_of.executor_file.read_bytes())
        proc = restore(world, name)
        assert_refused(proc, file=name, check="files agree")
        assert_unharmed(world, was)


def test_a_forged_or_non_quorum_last_proof_is_refused(world: World) -> None:
    chain, executor = good_bytes(world)
    good_hash = bytes.fromhex(world.good.block_hash[2:])
    outsider = PrivateKey(keccak(b"not a validator of this chain"))
    forged = [
        ("signed by a non-validator", proof_for(world, H, good_hash, key=outsider)),
        ("no signatures", proof_for(world, H, good_hash, signed=False)),
        ("a non-validator's signature listed under the validator's address",
         QuorumCert(H, 0, good_hash, ((world.validator.address,
                                        sign_vote(outsider, world.chain_id, H, 0, good_hash)),)).to_proof_bytes()),
        ("the validator's proof of another block", proof_for(world, H, keccak(b"another block"))),
        ("no proof at all", b""),
    ]
    for what, proof in forged:
        c = Container.read(world.good.chain_file)
        c.manifest[5] = proof  # the rest of the manifest stays consistent with the executor file
        was = before(world)
        name = put_files(world, c.encode(), executor)
        proc = restore(world, name)
        assert proc.returncode == 1, f"{what}: {proc.stderr}"
        assert_refused(proc, file=f"{name}{CHAIN}", check="last proof")
        assert_unharmed(world, was)
    assert chain  # the untouched pair is still the valid one


def test_a_snapshot_of_another_chain_is_refused(world: World) -> None:
    was = before(world)
    name = put_files(world, world.foreign.chain_file.read_bytes(), world.foreign.executor_file.read_bytes())
    proc = restore(world, name)
    assert_refused(proc, file=name, check="genesis")
    assert "another chain" in proc.stderr
    assert_unharmed(world, was)


def test_a_missing_executor_file_is_refused_naming_it(world: World) -> None:
    chain, _ = good_bytes(world)
    was = before(world)
    name = put_files(world, chain, None)
    proc = restore(world, name)
    assert proc.returncode == 1, proc.stderr
    assert f"{name}{EXECUTOR}" in proc.stderr and "does not exist" in proc.stderr, proc.stderr
    assert_unharmed(world, was)


def test_a_file_name_leaving_the_snapshot_directory_is_refused_as_a_usage_error(world: World) -> None:
    # Put a valid pair where ../../x points, so only the path check can refuse it.
    escape = world.target.snapshot_dir().parent.parent / "x"
    for src, suffix in ((world.good.chain_file, CHAIN), (world.good.executor_file, EXECUTOR)):
        shutil.copyfile(src, f"{escape}{suffix}")
    was = before(world)
    proc = restore(world, "../../x")
    # the CLI contract (tools/snapshot_tool/cli.py): a bad command line is a usage error, exit 2
    assert proc.returncode == 2, proc.stderr
    assert "../../x" in proc.stderr and "would leave the snapshot directory" in proc.stderr, proc.stderr
    assert_unharmed(world, was)


def test_a_trusted_block_hash_that_is_not_that_of_block_h_is_refused(world: World) -> None:
    chain, executor = good_bytes(world)
    for wrong in (keccak(b"not block 20"), bytes.fromhex(world.later.block_hash[2:])):
        was = before(world)
        name = put_files(world, chain, executor)
        proc = restore(world, name, "--block", "0x" + wrong.hex())
        assert_refused(proc, file=name, check="trusted hash")
        assert "0x" + wrong.hex() in proc.stderr
        assert_unharmed(world, was)

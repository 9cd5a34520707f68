"""Offline verification of a snapshot file pair: every check of DESIGN.md section 7."""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path
from typing import Any

import pytest
import rlp
from conftest import (
    CHAIN_ID,
    VALIDATOR,
    AccountSpec,
    ChainFixture,
    build_chain,
    default_specs,
    make_genesis,
    proof_of,
)

from pycita.crypto import Address, Hash32, PrivateKey, keccak
from pycita.snapshot.chain_format import CHAIN_INFORMATIONAL_FIELDS, ChainManifest
from pycita.snapshot.container import Chunker, ChunkWriter, encode_bytes, encode_list, encode_uint
from pycita.snapshot.errors import (
    BlockHashMismatch,
    BodyRootMismatch,
    ChunkDecodeError,
    ChunkHashMismatch,
    FilesDisagree,
    HeaderChainBroken,
    MissingCodeOrAbi,
    ProofInvalid,
    SnapshotError,
    StateRootMismatch,
    TrustedHashMismatch,
    WrongChain,
)
from pycita.snapshot.state_format import EXECUTOR_INFORMATIONAL_FIELDS, ExecutorManifest
from pycita.snapshot.verify import verify_chain_file, verify_executor_file, verify_snapshot
from pycita.trie import Trie
from pycita.types import Header, Height


def split_specs() -> list[AccountSpec]:
    specs = default_specs(4)
    specs.append(AccountSpec(b"\xee" * 20, 9, 99, b"\x60\x00" * 40, b"[abi]",
                             {i.to_bytes(2, "big"): b"w" * 40 for i in range(30)}))
    return specs


def test_valid_pair_with_sinks(tmp_path: Path) -> None:
    c = build_chain(9, history_blocks=4, specs=split_specs())
    chain_path, exec_path = c.write(tmp_path, chunk_limit=700)
    nodes: dict[bytes, bytes] = {}
    blobs: dict[bytes, bytes] = {}
    blocks: list[Any] = []
    headers: list[Any] = []
    progress: list[Any] = []

    def blob_sink(h: bytes, b: bytes) -> None:
        assert h not in blobs
        blobs[h] = b

    r = verify_snapshot(chain_path, exec_path, c.genesis, trusted_hash=c.tip_hash, node_sink=nodes.__setitem__,
                        blob_sink=blob_sink, block_sink=blocks.append, header_sink=headers.append,
                        progress=progress.append)
    assert (r.height, r.block_hash, r.state_root) == (9, c.tip_hash, c.state_root)
    assert r.blocks == r.headers == 9 and r.full_blocks == 4 and r.accounts == 5
    assert r.account_pieces > r.accounts  # the big account was split
    assert r.storage_slots == sum(len(s.storage) for s in c.specs)
    assert r.blobs == 2 and set(blobs.values()) == {b"\x60\x00" * 40, b"[abi]"}
    assert r.bytes == chain_path.stat().st_size + exec_path.stat().st_size
    assert [b.header for b in blocks] == c.headers == [h.header for h in headers]
    assert progress and progress[-1].bytes_done == progress[-1].bytes_total
    # the node sink holds the whole state: walk it back
    state = dict(Trie(nodes, c.state_root).items())
    assert sorted(state) == sorted(s.address for s in c.specs)
    big = rlp.decode(state[b"\xee" * 20])
    assert dict(Trie(nodes, big[2]).items()) == c.specs[-1].storage


def test_single_file_verifiers(tmp_path: Path) -> None:
    c = build_chain(4, history_blocks=2)
    chain_path, exec_path = c.write(tmp_path)
    r = verify_chain_file(chain_path, c.genesis)
    assert not r.cross_checked and r.blocks == 4
    r = verify_executor_file(exec_path, c.genesis, chain_path=chain_path)
    assert r.cross_checked and r.headers == 4 and r.accounts == len(c.specs)


# --------------------------------------------------------------------------- mutations


def informational_ranges(path: Path, fields: dict[int, str]) -> list[range]:
    """Byte ranges of the payloads of the manifest's informational items (parsed independently)."""
    data = path.read_bytes()
    (offset,) = struct.unpack("<Q", data[-8:])
    manifest = rlp.decode(data[offset:-8])
    ranges = []
    # the informational items are last: walk back from the trailer
    end = len(data) - 8
    for index in range(len(manifest) - 1, -1, -1):
        encoded = rlp.encode(manifest[index])
        if index in fields:
            payload = manifest[index]
            ranges.append(range(end - len(payload), end))
        else:
            assert index < min(fields)
            break
        end -= len(encoded)
    return ranges


def test_every_single_byte_mutation_is_detected(tmp_path: Path) -> None:
    c = build_chain(4, history_blocks=2, specs=split_specs(), txs_per_block=1)
    chain_path, exec_path = c.write(tmp_path, chunk_limit=500)
    originals = {chain_path: chain_path.read_bytes(), exec_path: exec_path.read_bytes()}
    assert sum(len(d) for d in originals.values()) < 20_000
    verify_snapshot(chain_path, exec_path, c.genesis)
    skipped = 0
    for path, fields in ((chain_path, CHAIN_INFORMATIONAL_FIELDS), (exec_path, EXECUTOR_INFORMATIONAL_FIELDS)):
        assert set(fields.values()) == {"created_at"}
        info = informational_ranges(path, fields)
        data = originals[path]
        for pos in range(len(data)):
            for flip in (0x01, 0x80):
                mutated = bytearray(data)
                mutated[pos] ^= flip
                path.write_bytes(bytes(mutated))
                if any(pos in r for r in info):
                    verify_snapshot(chain_path, exec_path, c.genesis)  # informational: still fine
                    skipped += 1
                    continue
                try:
                    verify_snapshot(chain_path, exec_path, c.genesis)
                except SnapshotError:
                    continue
                raise AssertionError(f"{path.name}: byte {pos} ^ {flip:#x} not detected")
        path.write_bytes(data)
    assert skipped == 2 * 2 * 3  # created_at=1234567 has a 3-byte payload in each file


def test_truncations(tmp_path: Path) -> None:
    c = build_chain(4, history_blocks=2)
    chain_path, exec_path = c.write(tmp_path, chunk_limit=600)
    for path in (chain_path, exec_path):
        data = path.read_bytes()
        for n in list(range(0, len(data), 29)) + [len(data) - 1]:
            path.write_bytes(data[:n])
            with pytest.raises(SnapshotError):
                verify_snapshot(chain_path, exec_path, c.genesis)
        path.write_bytes(data)


# --------------------------------------------------------------------------- mismatched inputs


def test_files_from_different_snapshots(tmp_path: Path) -> None:
    a = build_chain(5, history_blocks=2)
    b = build_chain(6, history_blocks=2)
    a_chain, a_exec = a.write(tmp_path, "a")
    b_chain, b_exec = b.write(tmp_path, "b")
    with pytest.raises(FilesDisagree) as e:
        verify_snapshot(a_chain, b_exec, a.genesis)
    assert "block_number" in str(e.value) and e.value.expected == 5 and e.value.actual == 6
    other = build_chain(5, history_blocks=2, specs=default_specs(3))
    o_chain, o_exec = other.write(tmp_path, "o")
    with pytest.raises(FilesDisagree):
        verify_snapshot(a_chain, o_exec, a.genesis)
    with pytest.raises(FilesDisagree):
        verify_executor_file(o_exec, a.genesis, chain_path=a_chain)


def test_wrong_genesis(tmp_path: Path) -> None:
    c = build_chain(3, history_blocks=1)
    chain_path, exec_path = c.write(tmp_path)
    with pytest.raises(WrongChain) as e:
        verify_snapshot(chain_path, exec_path, make_genesis(chain_id=CHAIN_ID + 1))
    assert e.value.check == "genesis"
    other_alloc = dataclasses.replace(c.genesis, alloc=((Address(b"\x0b" * 20), 5),))
    with pytest.raises(WrongChain):
        verify_snapshot(chain_path, exec_path, other_alloc)
    # another validator set: a different genesis (its header carries the set), and the proof fails anyway
    other_validators = make_genesis(validator=PrivateKey(keccak(b"someone else")))
    with pytest.raises((WrongChain, ProofInvalid)):
        verify_snapshot(chain_path, exec_path, other_validators)
    same_hash = dataclasses.replace(c.genesis, validators=other_validators.validators)
    if same_hash.hash == c.genesis.hash:  # only if the genesis hash ignores validators
        with pytest.raises(ProofInvalid):
            verify_snapshot(chain_path, exec_path, same_hash)


def test_trusted_hash(tmp_path: Path) -> None:
    c = build_chain(3, history_blocks=1)
    chain_path, exec_path = c.write(tmp_path)
    verify_snapshot(chain_path, exec_path, c.genesis, trusted_hash=c.tip_hash)
    with pytest.raises(TrustedHashMismatch) as e:
        verify_snapshot(chain_path, exec_path, c.genesis, trusted_hash=b"\x01" * 32)
    assert e.value.expected == b"\x01" * 32 and e.value.actual == c.tip_hash
    assert "0x" + "01" * 32 in str(e.value)


@pytest.mark.parametrize("forgery", ["outsider", "wrong hash", "wrong height", "wrong chain id", "lies about signer",
                                     "garbage", "empty"])
def test_forged_or_non_quorum_proof(tmp_path: Path, forgery: str) -> None:
    c = build_chain(3, history_blocks=1)
    outsider = PrivateKey(keccak(b"outsider"))
    proof = {
        "outsider": lambda: proof_of(3, c.tip_hash, key=outsider),
        "wrong hash": lambda: proof_of(3, b"\x05" * 32),
        "wrong height": lambda: proof_of(2, c.tip_hash),
        "wrong chain id": lambda: proof_of(3, c.tip_hash, chain_id=CHAIN_ID + 1),
        "lies about signer": lambda: proof_of(3, c.tip_hash, key=outsider, signer_address=VALIDATOR.address),
        "garbage": lambda: b"\xff\x00garbage",
        "empty": lambda: b"",
    }[forgery]()
    c.last_proof = proof
    chain_path, exec_path = c.write(tmp_path)
    with pytest.raises(ProofInvalid) as e:
        verify_snapshot(chain_path, exec_path, c.genesis)
    assert e.value.file == str(chain_path)
    with pytest.raises(ProofInvalid):  # the executor's own restore checks it too
        verify_executor_file(exec_path, c.genesis, chain_path=chain_path)


def test_body_and_receipts_must_match_roots(tmp_path: Path) -> None:
    c = build_chain(3, history_blocks=2)
    header, receipts, body = c.blocks[2]
    assert receipts is not None and body is not None
    c.blocks[2] = (header, [receipts[0].copy(status=0), *receipts[1:]], body)
    chain_path, exec_path = c.write(tmp_path)
    with pytest.raises(BodyRootMismatch) as e:
        verify_snapshot(chain_path, exec_path, c.genesis)
    assert "receipts_root" in str(e.value)
    c.blocks[2] = (header, receipts, body[:1])
    c.write(tmp_path)
    with pytest.raises(BodyRootMismatch):
        verify_snapshot(chain_path, exec_path, c.genesis)


def test_state_root_mismatch(tmp_path: Path) -> None:
    c = build_chain(3, history_blocks=1)
    c.specs[2].balance += 1  # the headers still carry the old root
    chain_path, exec_path = c.write(tmp_path, check_roots=False)
    verify_chain_file(chain_path, c.genesis)
    with pytest.raises(StateRootMismatch) as e:
        verify_snapshot(chain_path, exec_path, c.genesis)
    assert e.value.expected == c.state_root


# --------------------------------------------------------------------------- hand-crafted files


def raw_chain_file(path: Path, c: ChainFixture, headers: list[Header], chunk_prefix: dict[int, tuple[int, bytes]],
                   last_proof: bytes) -> None:
    """A chain file of header-only entries, one block per chunk, without the writer's checks."""
    with ChunkWriter(path, fsync=False) as w:
        ch = Chunker(w)
        prev = (0, c.genesis.hash)
        for h in headers:
            number, parent = chunk_prefix.get(h.number, prev)
            ch.add(encode_list([rlp.encode(h)]), (encode_uint(number), encode_bytes(parent)))
            ch.flush()
            prev = (h.number, h.hash)
        m = ChainManifest(1, tuple(w.chunks), headers[-1].state_root, headers[-1].number, headers[-1].hash,
                          last_proof, c.genesis.chain_id, c.genesis.hash, 0, 0)
        w.finish(m.to_rlp())


def relink(c: ChainFixture, headers: list[Header], start: int) -> list[Header]:
    out = headers[:start]
    for h in headers[start:]:
        out.append(h.copy(parent_hash=out[-1].hash) if out else h)
    return out


def test_broken_header_chain(tmp_path: Path) -> None:
    c = build_chain(5, history_blocks=0)
    path = tmp_path / "x_chain.rlp"
    headers = list(c.headers)
    headers[2] = headers[2].copy(parent_hash=b"\x07" * 32)
    headers = relink(c, headers, 3)
    raw_chain_file(path, c, headers, {3: (2, b"\x07" * 32)}, proof_of(5, headers[-1].hash))
    with pytest.raises(HeaderChainBroken) as e:
        verify_chain_file(path, c.genesis)
    assert e.value.chunk == 2 and "chunk 2" in str(e.value)

    # consistent hashes but a chunk whose declared parent lies
    raw_chain_file(path, c, c.headers, {4: (3, b"\x09" * 32)}, c.last_proof)
    with pytest.raises(HeaderChainBroken) as e:
        verify_chain_file(path, c.genesis)
    assert e.value.chunk == 3

    # a skipped height
    headers = relink(c, [c.headers[0], c.headers[2].copy(number=2)], 1)
    raw_chain_file(path, c, headers, {}, proof_of(2, headers[-1].hash))
    verify_chain_file(path, c.genesis)  # renumbered and relinked: fine
    headers = relink(c, [c.headers[0], c.headers[2]], 1)
    raw_chain_file(path, c, headers, {}, proof_of(3, headers[-1].hash))
    with pytest.raises(HeaderChainBroken):
        verify_chain_file(path, c.genesis)

    # first block not on our genesis
    headers = relink(c, [c.headers[0].copy(parent_hash=b"\x01" * 32), *c.headers[1:]], 1)
    raw_chain_file(path, c, headers, {1: (0, b"\x01" * 32)}, proof_of(5, headers[-1].hash))
    with pytest.raises(WrongChain):
        verify_chain_file(path, c.genesis)


def test_headers_must_reach_manifest_hash(tmp_path: Path) -> None:
    c = build_chain(4, history_blocks=0)
    path = tmp_path / "x_chain.rlp"
    raw_chain_file(path, c, c.headers[:3], {}, proof_of(3, c.headers[2].hash))
    data = path.read_bytes()
    # claim H=4 with block 4's hash and proof, but ship only 3 headers
    (offset,) = struct.unpack("<Q", data[-8:])
    m = rlp.decode(data[offset:-8])
    m[3], m[4], m[5] = b"\x04", c.tip_hash, c.last_proof
    manifest = rlp.encode(m)
    path.write_bytes(data[:offset] + manifest + struct.pack("<Q", offset))
    with pytest.raises(BlockHashMismatch):
        verify_chain_file(path, c.genesis)


def raw_executor_file(path: Path, c: ChainFixture, fat: list[Any]) -> None:
    with ChunkWriter(path, fsync=False) as w:
        ch = Chunker(w)
        for item in fat:
            ch.add(rlp.encode(item))
        ch.flush()
        n_state = len(w.chunks)
        ch = Chunker(w)
        prev = (0, c.genesis.hash)
        for h in c.headers:
            ch.add(rlp.encode(h), (encode_uint(prev[0]), encode_bytes(prev[1])))
            prev = (h.number, h.hash)
        ch.flush()
        m = ExecutorManifest(1, tuple(w.chunks[:n_state]), tuple(w.chunks[n_state:]), Hash32(c.state_root),
                             Height(c.height), Hash32(c.tip_hash), c.genesis.chain_id, c.genesis.hash, len(fat), 0)
        w.finish(m.to_rlp())


def test_code_reference_must_be_delivered(tmp_path: Path) -> None:
    c = build_chain(2, history_blocks=1)
    chain_path, _ = c.write(tmp_path)
    path = tmp_path / "x_executor.rlp"
    code = b"\x60\x00" * 10
    raw_executor_file(path, c, [[b"\x01" * 20, [1, 2, 2, keccak(code), 0, b"", []]],
                                [b"\x02" * 20, [1, 2, 1, code, 0, b"", []]]])
    with pytest.raises(MissingCodeOrAbi) as e:
        verify_executor_file(path, c.genesis, chain_path=chain_path)
    assert e.value.chunk == 0 and e.value.actual == keccak(code)
    # the other order is fine up to the (deliberately wrong) state root
    raw_executor_file(path, c, [[b"\x01" * 20, [1, 2, 1, code, 0, b"", []]],
                                [b"\x02" * 20, [1, 2, 2, keccak(code), 2, keccak(code), []]]])
    with pytest.raises(StateRootMismatch):
        verify_executor_file(path, c.genesis, chain_path=chain_path)


@pytest.mark.parametrize("bad", ["balance", "code", "no storage", "keys", "order"])
def test_split_pieces_must_agree(tmp_path: Path, bad: str) -> None:
    c = build_chain(2, history_blocks=1)
    chain_path, _ = c.write(tmp_path)
    path = tmp_path / "x_executor.rlp"
    a = b"\x01" * 20
    first = [a, [1, 2, 1, b"code", 0, b"", [[b"k1", b"v"]]]]
    cont: list[Any] = [a, [1, 2, 2, keccak(b"code"), 0, b"", [[b"k2", b"v"]]]]
    if bad == "balance":
        cont[1][1] = 3
    elif bad == "code":
        cont[1][2], cont[1][3] = 0, b""
    elif bad == "no storage":
        cont[1][6] = []
    elif bad == "keys":
        cont[1][6] = [[b"k1", b"v"]]
    fat = [first, cont] if bad != "order" else [cont, [b"\x00" * 20, [0, 0, 0, b"", 0, b"", []]]]
    if bad == "order":
        cont[1][2], cont[1][3] = 1, b"code"
    raw_executor_file(path, c, fat)
    with pytest.raises(SnapshotError) as e:
        verify_executor_file(path, c.genesis, chain_path=chain_path)
    expected_check = {"balance": "split account", "code": "split account", "no storage": "split account",
                      "keys": "order", "order": "order"}[bad]
    assert e.value.check == expected_check and e.value.chunk == 0


def test_errors_name_file_chunk_and_check(tmp_path: Path) -> None:
    c = build_chain(4, history_blocks=1)
    chain_path, exec_path = c.write(tmp_path, chunk_limit=600)
    data = bytearray(exec_path.read_bytes())
    data[5] ^= 1
    exec_path.write_bytes(bytes(data))
    with pytest.raises(ChunkHashMismatch) as e:
        verify_snapshot(chain_path, exec_path, c.genesis)
    text = str(e.value)
    assert str(exec_path) in text and "chunk 0" in text and "chunk hash" in text and "expected 0x" in text


def test_height_zero_snapshot(tmp_path: Path) -> None:
    g = make_genesis()
    c = build_chain(0, history_blocks=0, genesis=g,
                    specs=[AccountSpec(a, 0, b) for a, b in g.alloc])
    chain_path, exec_path = c.write(tmp_path)
    r = verify_snapshot(chain_path, exec_path, g)
    assert r.height == 0 and r.block_hash == g.hash and r.accounts == 1


def test_history_rule(tmp_path: Path) -> None:
    c = build_chain(4, history_blocks=2)
    chain_path, exec_path = c.write(tmp_path)
    verify_snapshot(chain_path, exec_path, c.genesis)
    # a hand-made file whose entries carry no bodies while the manifest promises 2
    path = tmp_path / "h_chain.rlp"
    raw_chain_file(path, c, c.headers, {}, c.last_proof)
    data = path.read_bytes()
    (offset,) = struct.unpack("<Q", data[-8:])
    m = rlp.decode(data[offset:-8])
    m[8] = b"\x02"
    path.write_bytes(data[:offset] + rlp.encode(m) + struct.pack("<Q", offset))
    with pytest.raises(ChunkDecodeError) as e:
        verify_chain_file(path, c.genesis)
    assert e.value.check == "history"

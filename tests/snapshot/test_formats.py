"""Chain and executor file formats: writer -> reader round trips, an independent reader, writer refusals."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rlp
import snappy
from conftest import (
    AccountSpec,
    account_sources,
    build_chain,
    default_specs,
    state_root_of,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trie import HexaryTrie

from pycita.crypto import EMPTY_KECCAK, keccak
from pycita.snapshot.chain_format import ChainFileReader, read_chain_manifest, write_chain_file
from pycita.snapshot.container import CHUNK_PAYLOAD_LIMIT, MAX_CHUNK_PAYLOAD
from pycita.snapshot.errors import HeaderChainBroken, OrderError, SnapshotError, StateRootMismatch
from pycita.snapshot.state_format import (
    BlobState,
    ExecutorFileReader,
    PlainRun,
    plain_run,
    read_executor_manifest,
    write_state_file,
)
from pycita.trie import BLANK_ROOT
from pycita.types import Account, Header, Receipt, SignedTransaction

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# --------------------------------------------------------------------------- chain file


@FAST
@given(n=st.integers(0, 12), history=st.integers(0, 15), limit=st.sampled_from([300, 1500, CHUNK_PAYLOAD_LIMIT]))
def test_chain_round_trip(tmp_path: Path, n: int, history: int, limit: int) -> None:
    c = build_chain(n, history_blocks=history, specs=[], txs_per_block=1)
    path = tmp_path / "x_chain.rlp"
    m = write_chain_file(path, iter(c.blocks), genesis=c.genesis, last_proof=c.last_proof,
                         history_blocks=history, chunk_limit=limit, fsync=False, created_at=5)
    assert read_chain_manifest(path) == m
    assert m.block_number == n and m.block_hash == c.tip_hash and m.full_blocks == min(history, n)
    with ChainFileReader(path) as r:
        entries = list(r.entries())
    assert [e.header for e in entries] == [b[0] for b in c.blocks]
    for e, (header, receipts, body) in zip(entries, c.blocks, strict=True):
        assert e.hash == header.hash
        assert (e.receipts is None) == (receipts is None)
        if receipts is not None and body is not None:
            assert list(e.receipts or ()) == receipts and list(e.body or ()) == body
    starts = [e for e in entries if e.chunk_parent is not None]
    assert len(starts) == len(m.chunks)
    for e in starts:
        assert e.chunk_parent == (e.number - 1, e.header.parent_hash)


def test_chain_writer_refuses_bad_input(tmp_path: Path) -> None:
    c = build_chain(5, history_blocks=2)
    path = tmp_path / "x_chain.rlp"
    swapped = [c.blocks[1], c.blocks[0], *c.blocks[2:]]
    with pytest.raises(HeaderChainBroken):
        write_chain_file(path, iter(swapped), genesis=c.genesis, last_proof=c.last_proof, history_blocks=2,
                         fsync=False)
    with pytest.raises(SnapshotError, match="newest 3"):
        write_chain_file(path, iter(c.blocks), genesis=c.genesis, last_proof=c.last_proof, history_blocks=3,
                         fsync=False)
    holes = [c.blocks[0], c.blocks[1], c.blocks[2], (c.blocks[3][0], None, None), c.blocks[4]]
    with pytest.raises(SnapshotError):
        write_chain_file(path, iter(holes), genesis=c.genesis, last_proof=c.last_proof, history_blocks=2,
                         fsync=False)
    assert not path.exists() and not Path(str(path) + ".partial").exists()


# --------------------------------------------------------------------------- executor file

blobs = st.sampled_from([b"", b"\x60\x01" * 30, b"code-B" * 50, b"[abi-1]", b"x" * 700])
specs_strategy = st.lists(
    st.builds(
        AccountSpec,
        address=st.binary(min_size=20, max_size=20),
        nonce=st.integers(0, 2**64),
        balance=st.integers(0, 2**200),
        code=blobs,
        abi=blobs,
        storage=st.dictionaries(st.binary(min_size=0, max_size=33), st.binary(min_size=1, max_size=120),
                                max_size=60),
    ),
    max_size=8,
    unique_by=lambda s: s.address,
)


def regroup(pieces: list[Any]) -> dict[bytes, dict[str, Any]]:
    out: dict[bytes, dict[str, Any]] = {}
    for p in pieces:
        acc = out.setdefault(p.address, {"pieces": [], "storage": []})
        acc["pieces"].append(p)
        acc["storage"].extend(p.storage)
    return out


@FAST
@given(specs=specs_strategy, limit=st.sampled_from([400, 2000, CHUNK_PAYLOAD_LIMIT]))
def test_state_round_trip_with_splits_and_dedupe(tmp_path: Path, specs: list[AccountSpec], limit: int) -> None:
    c = build_chain(3, history_blocks=1, specs=specs, txs_per_block=0)
    path = tmp_path / "x_executor.rlp"
    m = write_state_file(path, account_sources(specs), iter(c.headers), genesis=c.genesis, chunk_limit=limit,
                         fsync=False)
    assert read_executor_manifest(path) == m
    assert m.account_count == len(specs) and m.state_root == c.state_root
    with ExecutorFileReader(path) as r:
        pieces = list(r.accounts())
        headers = [h.header for h in r.headers()]
        n_state = len(m.state_chunks)
        for i in range(len(r.reader.chunks)):  # over the limit only as a lone entry
            payload = r.reader.read_payload(i)
            assert len(payload) <= limit or len(rlp.decode(payload)) == (1 if i < n_state else 3)
    assert headers == c.headers
    assert [p.address for p in pieces] == sorted(p.address for p in pieces)
    grouped = regroup(pieces)
    assert sorted(grouped) == sorted(s.address for s in specs)
    inline_seen: set[bytes] = set()
    for p in pieces:  # each distinct blob inline exactly once, first use
        for state, data in ((p.code_state, p.code), (p.abi_state, p.abi)):
            if state == BlobState.INLINE:
                assert keccak(data) not in inline_seen
                inline_seen.add(keccak(data))
            elif state == BlobState.HASH:
                assert data in inline_seen
    for s in specs:
        g = grouped[s.address]
        assert g["storage"] == s.storage_items()
        first, *rest = g["pieces"]
        for p in g["pieces"]:
            assert (p.nonce, p.balance) == (s.nonce, s.balance)
        for p in rest:  # continuations: by hash or empty, and carry storage
            assert p.storage
            assert p.code_state == (BlobState.HASH if s.code else BlobState.EMPTY)
            assert p.abi_state == (BlobState.HASH if s.abi else BlobState.EMPTY)


def test_large_account_is_split(tmp_path: Path) -> None:
    storage = {i.to_bytes(4, "big"): b"v" * 100 for i in range(200)}
    specs = [AccountSpec(b"\x01" * 20, 1, 2, b"code", b"abi", storage), AccountSpec(b"\x02" * 20, 0, 5)]
    c = build_chain(2, history_blocks=1, specs=specs, txs_per_block=0)
    path = tmp_path / "x_executor.rlp"
    write_state_file(path, account_sources(specs), iter(c.headers), genesis=c.genesis, chunk_limit=2048,
                     fsync=False)
    with ExecutorFileReader(path) as r:
        pieces = list(r.accounts())
    big = [p for p in pieces if p.address == b"\x01" * 20]
    assert len(big) >= 10
    assert big[0].code_state == BlobState.INLINE and all(p.code_state == BlobState.HASH for p in big[1:])


def test_oversize_single_pair_stands_alone(tmp_path: Path) -> None:
    value = bytes(range(256)) * (CHUNK_PAYLOAD_LIMIT // 256 + 10)  # one pair above 4 MiB
    specs = [AccountSpec(b"\x01" * 20, 1, 2, storage={b"a": b"1", b"b": value, b"c": b"3"})]
    c = build_chain(1, history_blocks=1, specs=specs, txs_per_block=0)
    path = tmp_path / "x_executor.rlp"
    write_state_file(path, account_sources(specs), iter(c.headers), genesis=c.genesis, fsync=False)
    with ExecutorFileReader(path) as r:
        pieces = list(r.accounts())
        sizes = [len(r.reader.read_payload(i)) for i in range(len(r.manifest.state_chunks))]
    assert [len(p.storage) for p in pieces] == [1, 1, 1]
    assert max(sizes) > CHUNK_PAYLOAD_LIMIT and max(sizes) <= MAX_CHUNK_PAYLOAD


def test_state_writer_refuses_bad_input(tmp_path: Path) -> None:
    specs = default_specs()
    c = build_chain(2, history_blocks=1, specs=specs)
    path = tmp_path / "x_executor.rlp"
    sources = list(account_sources(specs))
    with pytest.raises(OrderError):
        write_state_file(path, iter([sources[1], sources[0]]), iter(c.headers), genesis=c.genesis, fsync=False)
    a, acc, code, abi, st_ = sources[1]
    with pytest.raises(SnapshotError, match="code hash"):
        write_state_file(path, iter([(a, acc.copy(code_hash=EMPTY_KECCAK), b"zz", abi, st_)]), iter(c.headers),
                         genesis=c.genesis, fsync=False)
    a, acc, code, abi, _ = list(account_sources(specs))[3]
    with pytest.raises(StateRootMismatch):
        write_state_file(path, iter([(a, acc, code, abi, iter([(b"k", b"v")]))]), iter(c.headers),
                         genesis=c.genesis, fsync=False)
    with pytest.raises(StateRootMismatch):  # the accounts are not header H's state
        write_state_file(path, account_sources(specs[:-1]), iter(c.headers), genesis=c.genesis, fsync=False)
    a, acc, code, abi, _ = list(account_sources(specs))[4]
    with pytest.raises(OrderError):
        write_state_file(path, iter([(a, acc, code, abi, iter([(b"k2", b"v"), (b"k1", b"v")]))]),
                         iter(c.headers), genesis=c.genesis, fsync=False, check_roots=False)
    assert not path.exists() and not Path(str(path) + ".partial").exists()


def runs_and_sources(specs: list[AccountSpec], run_size: int) -> Iterator[Any]:
    """The accounts of ``specs`` as an export gives them: the plain ones in PlainRuns of up to
    ``run_size`` (from their (address, account RLP) trie pairs), the others as AccountSources."""
    pending: list[tuple[bytes, bytes]] = []
    prev: bytes | None = None

    def flush() -> Iterator[PlainRun]:
        nonlocal prev
        i = 0
        while i < len(pending):
            run, stop = plain_run(pending[: i + run_size], i, prev)
            assert run is not None and stop > i
            prev = pending[stop - 1][0]
            i = stop
            yield run
        pending.clear()

    for source in account_sources(specs):
        address, account, code, abi, _ = source
        if not code and not abi and account.storage_root == BLANK_ROOT:
            pending.append((address, rlp.encode(account)))
            continue
        yield from flush()
        prev = address
        yield source
    yield from flush()


plain_specs_strategy = st.lists(
    st.builds(AccountSpec, address=st.binary(min_size=20, max_size=20), nonce=st.integers(0, 2**64),
              balance=st.integers(0, 2**256 - 1)),
    max_size=40,
    unique_by=lambda s: s.address,
)


@FAST
@given(plain=plain_specs_strategy, others=specs_strategy, run_size=st.integers(1, 7),
       limit=st.sampled_from([300, 2000, CHUNK_PAYLOAD_LIMIT]))
def test_plain_runs_write_the_same_file_as_one_account_source_each(
    tmp_path: Path, plain: list[AccountSpec], others: list[AccountSpec], run_size: int, limit: int
) -> None:
    seen = {s.address for s in plain}
    specs = plain + [s for s in others if s.address not in seen]
    c = build_chain(2, history_blocks=1, specs=specs, txs_per_block=0)
    one, runs = tmp_path / "one_executor.rlp", tmp_path / "runs_executor.rlp"
    m1 = write_state_file(one, account_sources(specs), iter(c.headers), genesis=c.genesis, chunk_limit=limit,
                          created_at=1, fsync=False)
    m2 = write_state_file(runs, runs_and_sources(specs, run_size), iter(c.headers), genesis=c.genesis,
                          chunk_limit=limit, created_at=1, fsync=False)
    assert m2 == m1 and m1.account_count == len(specs)
    assert runs.read_bytes() == one.read_bytes()


def test_a_plain_run_that_does_not_ascend_from_the_previous_account_is_refused(tmp_path: Path) -> None:
    specs = [AccountSpec(bytes([i]) * 20, i, 10 * i) for i in range(1, 5)]
    c = build_chain(2, history_blocks=1, specs=specs, txs_per_block=0)
    pairs = [(s.address, rlp.encode(s.account())) for s in specs]
    run_low, _ = plain_run(pairs[:2], 0, None)
    run_high, _ = plain_run(pairs[2:], 0, None)
    assert run_low is not None and run_high is not None
    path = tmp_path / "x_executor.rlp"
    with pytest.raises(OrderError, match="ascending"):
        write_state_file(path, iter([run_high, run_low]), iter(c.headers), genesis=c.genesis, fsync=False)
    with pytest.raises(OrderError, match="ascending"):
        write_state_file(path, iter([next(account_sources(specs[1:])), run_low]), iter(c.headers),
                         genesis=c.genesis, fsync=False)
    with pytest.raises(StateRootMismatch):  # a run that leaves accounts out is not header H's state
        write_state_file(path, iter([run_high]), iter(c.headers), genesis=c.genesis, fsync=False)
    assert not path.exists()


def test_plain_run_stops_at_the_first_account_with_code_abi_or_storage() -> None:
    specs = [AccountSpec(bytes([i]) * 20, i, 1) for i in range(1, 4)]
    specs.insert(1, AccountSpec(b"\x01\x05" + bytes(18), 0, 0, code=b"code"))
    pairs = [(s.address, rlp.encode(s.account())) for s in specs]
    run, stop = plain_run(pairs, 0, None)
    assert run is not None and stop == 1 and run.pairs == pairs[:1]
    assert plain_run(pairs, 1, pairs[0][0]) == (None, 1)
    run, stop = plain_run(pairs, 2, pairs[1][0])
    assert run is not None and stop == 4 and run.pairs == pairs[2:]


@pytest.mark.parametrize("limit", [700, 2000, CHUNK_PAYLOAD_LIMIT])
def test_headers_given_as_their_rlp_write_the_same_file_as_header_objects(tmp_path: Path, limit: int) -> None:
    c = build_chain(12, history_blocks=1, txs_per_block=0)
    objects, raws = tmp_path / "obj_executor.rlp", tmp_path / "raw_executor.rlp"
    m1 = write_state_file(objects, account_sources(c.specs), iter(c.headers), genesis=c.genesis,
                          chunk_limit=limit, created_at=1, fsync=False)
    mixed = [rlp.encode(h) if i % 3 else h for i, h in enumerate(c.headers)]
    m2 = write_state_file(raws, account_sources(c.specs), iter(mixed), genesis=c.genesis, chunk_limit=limit,
                          created_at=1, fsync=False)
    assert m2 == m1 and len(m1.block_chunks) >= (2 if limit < 2000 else 1)
    assert raws.read_bytes() == objects.read_bytes()


def test_a_header_rlp_that_is_not_a_header_or_does_not_chain_is_refused(tmp_path: Path) -> None:
    c = build_chain(3, history_blocks=1, txs_per_block=0)
    path = tmp_path / "x_executor.rlp"
    raws = [rlp.encode(h) for h in c.headers]
    fields = rlp.decode(raws[1])
    bad_shapes = {
        "not RLP": raws[1][:-1],
        "eleven fields": rlp.encode(fields[:11]),
        "a short state root": rlp.encode(fields[:1] + [b"\x01" * 31] + fields[2:]),
        "a non-canonical number": rlp.encode(fields[:5] + [b"\x00\x02"] + fields[6:]),
    }
    for what, raw in bad_shapes.items():
        with pytest.raises(SnapshotError, match="header 2") as info:
            write_state_file(path, account_sources(c.specs), iter([raws[0], raw, raws[2]]), genesis=c.genesis,
                             fsync=False)
        assert info.value.check == "headers", what
    with pytest.raises(HeaderChainBroken):
        write_state_file(path, account_sources(c.specs), iter([raws[0], raws[2]]), genesis=c.genesis, fsync=False)
    assert not path.exists()


# --------------------------------------------------------------------------- independent reader


def independent_read(path: Path) -> tuple[list[Any], list[list[Any]]]:
    """Parse a snapshot file per DESIGN.md section 5 with plain rlp + snappy + keccak."""
    data = path.read_bytes()
    (offset,) = struct.unpack("<Q", data[-8:])
    assert offset < len(data) - 8
    manifest = rlp.decode(data[offset:-8])  # raises unless exactly one item fills the gap
    assert int.from_bytes(manifest[0], "big") == 1
    tables = [manifest[1], manifest[2]] if path.name.endswith("_executor.rlp") else [manifest[1]]
    position = 0
    chunks = []
    for table in tables:
        section = []
        for h, length_raw, off_raw in table:
            length, off = int.from_bytes(length_raw, "big"), int.from_bytes(off_raw, "big")
            assert off == position and length > 0
            raw = data[off : off + length]
            assert keccak(raw) == h
            payload = snappy.uncompress(raw)
            items = rlp.decode(payload)
            assert len(payload) <= 4 * 1024 * 1024 or len(items) in (1, 3)
            section.append(items)
            position += length
        chunks.append(section)
    assert position == offset
    return manifest, chunks


def check_header_chunks(chunks: list[Any], genesis_hash: bytes, unwrap: bool) -> tuple[int, bytes, bytes]:
    number, parent = 0, genesis_hash
    state_root = b""
    for items in chunks:
        assert int.from_bytes(items[0], "big") == number and items[1] == parent
        for entry in items[2:]:
            header = entry[0] if unwrap else entry
            assert header[0] == parent
            assert int.from_bytes(header[5], "big") == number + 1  # ascending heights
            number, parent, state_root = number + 1, keccak(rlp.encode(header)), header[1]
    return number, parent, state_root


def test_independent_reader(tmp_path: Path) -> None:
    specs = default_specs(8)
    specs.append(AccountSpec(b"\xff" * 20, 3, 4, b"code", b"", {bytes([i]): b"v" * 50 for i in range(60)}))
    c = build_chain(9, history_blocks=4, specs=specs)
    chain_path, exec_path = c.write(tmp_path, chunk_limit=900)
    g = c.genesis.hash

    manifest, (chunks,) = independent_read(chain_path)
    number, tip, root = check_header_chunks(chunks, g, unwrap=True)
    assert (number, tip, root) == (int.from_bytes(manifest[3], "big"), manifest[4], manifest[2])
    full = [e for items in chunks for e in items[2:] if len(e) == 3]
    assert len(full) == 4
    for entry in full:
        header = Header.deserialize(entry[0])
        txs = [SignedTransaction.deserialize(t) for t in entry[2]]
        receipts = [Receipt.deserialize(r) for r in entry[1]]
        assert [r.tx_hash for r in receipts] == [t.hash for t in txs]
        assert header.transactions_root == c.blocks[header.number - 1][0].transactions_root

    manifest, (state_chunks, header_chunks) = independent_read(exec_path)
    number, tip, root = check_header_chunks(header_chunks, g, unwrap=False)
    assert (number, tip, root) == (int.from_bytes(manifest[4], "big"), manifest[5], manifest[3])
    # recompute the state root with py-trie alone
    blobs: dict[bytes, bytes] = {}
    accounts: dict[bytes, list[Any]] = {}
    for items in state_chunks:
        for address, (nonce, balance, cs, code, abi_s, abi, storage) in items:
            hashes: list[bytes] = []
            for state, blob in ((cs, code), (abi_s, abi)):
                if state == b"\x01":
                    blobs[keccak(blob)] = blob
                    hashes.append(keccak(blob))
                elif state == b"\x02":
                    assert blob in blobs
                    hashes.append(blob)
                else:
                    assert state == b"" and blob == b""
                    hashes.append(EMPTY_KECCAK)
            acc = accounts.setdefault(address, [nonce, balance, hashes, []])
            assert acc[:3] == [nonce, balance, hashes]
            acc[3].extend(storage)
    state = HexaryTrie({})
    for address, (nonce, balance, (code_hash, abi_hash), storage) in accounts.items():
        st_trie = HexaryTrie({})
        for k, v in storage:
            st_trie[k] = v
        account = Account(int.from_bytes(nonce, "big"), int.from_bytes(balance, "big"), st_trie.root_hash,
                          code_hash, abi_hash)
        state[address] = rlp.encode(account)
    assert state.root_hash == manifest[3] == c.state_root == state_root_of(specs)
    assert len(accounts) == int.from_bytes(manifest[8], "big") == len(specs)

"""Builders for snapshot tests: a one-validator genesis, a chain of N blocks with quorum proofs, a state."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import rlp

from pycita.crypto import EMPTY_KECCAK, Address, PrivateKey, keccak
from pycita.genesis import Genesis
from pycita.proof import QuorumCert, sign_vote
from pycita.snapshot.chain_format import write_chain_file
from pycita.snapshot.state_format import AccountSource, write_state_file
from pycita.trie import build_from_sorted
from pycita.types import (
    EMPTY_BLOOM,
    Account,
    Header,
    Receipt,
    SignedTransaction,
    Transaction,
    ordered_root,
    sign_transaction,
)

CHAIN_ID = 7
VALIDATOR = PrivateKey(keccak(b"pycita snapshot test validator"))
SENDER = PrivateKey(keccak(b"pycita snapshot test sender"))


def make_genesis(chain_id: int = CHAIN_ID, validator: PrivateKey = VALIDATOR) -> Genesis:
    return Genesis(chain_id, 1_700_000_000_000, 10**9, (validator.address,),
                   ((Address(b"\x0a" * 20), 10**21),))


def proof_of(number: int, block_hash: bytes, *, key: PrivateKey = VALIDATOR, chain_id: int = CHAIN_ID,
             signer_address: bytes | None = None) -> bytes:
    sig = sign_vote(key, chain_id, number, 0, block_hash)
    addr = key.address if signer_address is None else signer_address
    return QuorumCert(number, 0, block_hash, ((addr, sig),)).to_proof_bytes()


@dataclass
class AccountSpec:
    address: bytes
    nonce: int
    balance: int
    code: bytes = b""
    abi: bytes = b""
    storage: dict[bytes, bytes] = field(default_factory=dict)

    def storage_items(self) -> list[tuple[bytes, bytes]]:
        return sorted(self.storage.items())

    def account(self) -> Account:
        root = build_from_sorted(self.storage_items(), lambda _h, _n: None)
        return Account(self.nonce, self.balance, root, keccak(self.code) if self.code else EMPTY_KECCAK,
                       keccak(self.abi) if self.abi else EMPTY_KECCAK)


def state_root_of(specs: list[AccountSpec]) -> bytes:
    items = [(s.address, rlp.encode(s.account())) for s in sorted(specs, key=lambda s: s.address)]
    return build_from_sorted(items, lambda _h, _n: None)


def account_sources(specs: list[AccountSpec]) -> Iterator[AccountSource]:
    for s in sorted(specs, key=lambda s: s.address):
        yield Address(s.address), s.account(), s.code, s.abi, iter(s.storage_items())


def default_specs(n: int = 6) -> list[AccountSpec]:
    code = b"\x60\x00" * 40
    specs = []
    for i in range(n):
        storage = {bytes([i, j]): bytes([j + 1]) * (j % 5 + 1) for j in range(i * 3)}
        specs.append(AccountSpec(keccak(bytes([i]))[:20], i, 10**18 + i, code if i % 2 else b"",
                                 b"[abi]" if i % 3 == 0 else b"", storage))
    return specs


@dataclass
class ChainFixture:
    genesis: Genesis
    blocks: list[tuple[Header, list[Receipt] | None, list[SignedTransaction] | None]]
    last_proof: bytes
    specs: list[AccountSpec]
    state_root: bytes
    history_blocks: int

    @property
    def headers(self) -> list[Header]:
        return [b[0] for b in self.blocks]

    @property
    def height(self) -> int:
        return len(self.blocks)

    @property
    def tip_hash(self) -> bytes:
        return self.blocks[-1][0].hash if self.blocks else self.genesis.hash

    def write(self, directory: Path, name: str = "snapshot", chunk_limit: int = 4 * 1024 * 1024,
              check_roots: bool = True) -> tuple[Path, Path]:
        chain_path = directory / f"{name}_chain.rlp"
        exec_path = directory / f"{name}_executor.rlp"
        write_chain_file(chain_path, iter(self.blocks), genesis=self.genesis, last_proof=self.last_proof,
                         history_blocks=self.history_blocks, created_at=1234567, chunk_limit=chunk_limit,
                         fsync=False)
        write_state_file(exec_path, account_sources(self.specs), iter(self.headers), genesis=self.genesis,
                         created_at=1234567, chunk_limit=chunk_limit, fsync=False, check_roots=check_roots)
        return chain_path, exec_path


def build_chain(n_blocks: int = 5, *, history_blocks: int = 3, specs: list[AccountSpec] | None = None,
                genesis: Genesis | None = None, txs_per_block: int = 2) -> ChainFixture:
    genesis = genesis or make_genesis()
    specs = default_specs() if specs is None else specs
    root = state_root_of(specs)
    parent = genesis.header()
    parent_hash = parent.hash
    blocks: list[tuple[Header, list[Receipt] | None, list[SignedTransaction] | None]] = []
    prev_proof = b""
    for n in range(1, n_blocks + 1):
        full = n > n_blocks - history_blocks
        body: list[SignedTransaction] = []
        receipts: list[Receipt] = []
        for i in range(txs_per_block):
            tx = sign_transaction(Transaction(genesis.chain_id, n * 100 + i, n + 50, 30_000, b"\x0b" * 20, 5, 0,
                                              b""), SENDER)
            body.append(tx)
            receipts.append(Receipt(tx.hash, SENDER.address, 1, 21_000, 21_000 * (i + 1), b"", b""))
        header = Header(
            parent_hash=parent_hash,
            state_root=root if n == n_blocks else keccak(b"state %d" % n),
            transactions_root=ordered_root([tx.hash for tx in body]),
            receipts_root=ordered_root([rlp.encode(r) for r in receipts]),
            log_bloom=EMPTY_BLOOM,
            number=n,
            quota_limit=genesis.quota_limit,
            quota_used=21_000 * txs_per_block,
            timestamp=genesis.timestamp + n * 3000,
            version=0,
            proof=prev_proof,
            proposer=VALIDATOR.address,
        )
        block_hash = header.hash
        prev_proof = proof_of(n, block_hash, chain_id=genesis.chain_id)
        blocks.append((header, receipts if full else None, body if full else None))
        parent_hash = block_hash
    if n_blocks == 0:
        prev_proof = b""
        root = genesis.state_root()
    return ChainFixture(genesis, blocks, prev_proof, specs, root, history_blocks)


@pytest.fixture
def chain() -> ChainFixture:
    return build_chain()


@pytest.fixture(scope="session")
def acceptance_chain(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                     rabbitmq_broker: None) -> Iterator[object]:
    """The running source chain shared by the acceptance tests (``acceptance_support.py``)."""
    from acceptance_support import build_acceptance_chain  # imported lazily: only those tests need it

    yield from build_acceptance_chain(request, tmp_path_factory)

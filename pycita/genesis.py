"""Genesis: the chain's fixed starting point, identical on every node.

``genesis.json``::

    {"chain_id": 1, "timestamp": 1700000000000, "quota_limit": 1000000000,
     "validators": ["0x<20-byte address>", ...],
     "alloc": {"0x<address>": {"balance": "1000000000000000000000"}, ...}}

The genesis block has number 0, an all-zero parent hash and proposer zero;
its ``state_root`` is the root of the allocated accounts, and its ``proof``
field (no block precedes genesis) carries
``rlp([b"pycita-genesis", chain_id, [validator, ...]])``, so the genesis hash
commits to the chain id and the validator set as well as the state.
The genesis hash identifies the chain: a snapshot of another chain is refused
because its headers do not chain down to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rlp

from pycita.crypto import Address, Hash32
from pycita.errors import ConfigError
from pycita.types import (
    BLANK_ROOT,
    EMPTY_ACCOUNT,
    EMPTY_BLOOM,
    ZERO_ADDRESS,
    ZERO_HASH,
    Account,
    Block,
    Header,
)


@dataclass(frozen=True)
class Genesis:
    chain_id: int
    timestamp: int
    quota_limit: int
    validators: tuple[Address, ...]
    alloc: tuple[tuple[Address, int], ...]

    @classmethod
    def load(cls, path: str | Path) -> Genesis:
        try:
            raw = json.loads(Path(path).read_text())
            return cls.from_json(raw)
        except (OSError, json.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
            raise ConfigError(f"invalid genesis {path}: {exc}") from exc

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Genesis:
        validators = tuple(Address(bytes.fromhex(v.removeprefix("0x"))) for v in raw["validators"])
        if not validators or any(len(v) != 20 for v in validators):
            raise ValueError("validators must be a non-empty list of 20-byte hex addresses")
        alloc = tuple(sorted(
            (Address(bytes.fromhex(a.removeprefix("0x"))), int(v["balance"])) for a, v in raw.get("alloc", {}).items()
        ))
        return cls(int(raw["chain_id"]), int(raw["timestamp"]), int(raw["quota_limit"]), validators, alloc)

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "timestamp": self.timestamp,
            "quota_limit": self.quota_limit,
            "validators": ["0x" + v.hex() for v in self.validators],
            "alloc": {"0x" + a.hex(): {"balance": str(b)} for a, b in self.alloc},
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    def state_items(self) -> list[tuple[bytes, bytes]]:
        """Sorted (address, account RLP) pairs of the genesis state."""
        return [
            (addr, rlp.encode(EMPTY_ACCOUNT.copy(balance=balance)))
            for addr, balance in self.alloc
        ]

    def state_root(self) -> Hash32:
        from pycita.trie import build_from_sorted

        items = self.state_items()
        if not items:
            return BLANK_ROOT
        return Hash32(build_from_sorted(items, lambda _h, _n: None))

    def header(self) -> Header:
        return Header(
            parent_hash=ZERO_HASH,
            state_root=self.state_root(),
            transactions_root=BLANK_ROOT,
            receipts_root=BLANK_ROOT,
            log_bloom=EMPTY_BLOOM,
            number=0,
            quota_limit=self.quota_limit,
            quota_used=0,
            timestamp=self.timestamp,
            version=0,
            proof=self.params_rlp(),
            proposer=ZERO_ADDRESS,
        )

    def params_rlp(self) -> bytes:
        """What the genesis header's ``proof`` field carries: chain id and validator set."""
        return rlp.encode([b"pycita-genesis", self.chain_id, list(self.validators)])

    def block(self) -> Block:
        return Block(self.header(), [])

    @property
    def hash(self) -> Hash32:
        return self.header().hash  # type: ignore[no-any-return]


__all__ = ["Genesis", "Account"]

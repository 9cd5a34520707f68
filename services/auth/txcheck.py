"""Stateless checks of one raw transaction: size, RLP shape, signature.

:func:`parse_tx` decodes the RLP as a plain list (about five times faster
than a ``SignedTransaction`` sedes) and checks the shape by hand: nine
fields, canonical integers, 64-bit chain id / nonce / valid_until_block, a
0- or 20-byte ``to`` fitting the action, a 65-byte signature. The signing
hash is computed from the raw bytes (the signature is always the last 67
bytes), so nothing is re-encoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import rlp
from rlp.codec import consume_length_prefix, length_prefix

from pycita.crypto import Address, Hash32, SignatureError, keccak, recover_address
from pycita.errors import PycitaError
from pycita.types import Action

MAX_TX_BYTES = 1024 * 1024
_UINT64_BYTES = 8
_SIG_ITEM_BYTES = 67  # b"\xb8\x41" + 65 signature bytes


class Code(IntEnum):
    """``TxResult.code`` values (ARCHITECTURE.md "Transaction admission")."""

    OK = 0
    MALFORMED = 1
    BAD_SIGNATURE = 2
    WRONG_CHAIN_ID = 3
    DUPLICATE = 4
    REUSED_NONCE = 5
    INVALID_UNTIL_BLOCK = 6
    QUOTA = 7
    POOL_FULL = 8
    NOT_READY = 9
    TOO_LARGE = 10


class AdmissionError(PycitaError):
    """Raised when a transaction is refused; ``code`` is its :class:`Code`, the message says why."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class ParsedTx:
    """A well-formed signed transaction, not yet checked against chain state."""

    hash: Hash32
    raw: bytes
    chain_id: int
    nonce: int
    valid_until_block: int
    quota: int
    to: bytes
    action: int
    data: bytes
    signing_hash: Hash32
    signature: bytes

    def sender(self) -> Address:
        """Recover the signer; raises :class:`AdmissionError` (BAD_SIGNATURE)."""
        try:
            return recover_address(self.signing_hash, self.signature)
        except SignatureError as exc:
            raise AdmissionError(Code.BAD_SIGNATURE, f"bad signature: {exc}") from exc


_INT_FIELDS = ("chain_id", "nonce", "valid_until_block", "quota", "value", "action")
_BOUNDED = ("chain_id", "nonce", "valid_until_block", "action")


def _malformed(reason: str) -> AdmissionError:
    return AdmissionError(Code.MALFORMED, f"malformed transaction: {reason}")


def parse_tx(raw: bytes, max_bytes: int = MAX_TX_BYTES) -> ParsedTx:
    """Check size and shape of ``raw``; raises :class:`AdmissionError` (TOO_LARGE or MALFORMED)."""
    if len(raw) > max_bytes:
        raise AdmissionError(Code.TOO_LARGE, f"transaction is {len(raw)} bytes, limit is {max_bytes}")
    try:
        fields = rlp.decode(raw)
    except (rlp.exceptions.DecodingError, IndexError, RecursionError) as exc:
        raise _malformed(f"not canonical RLP: {exc}") from exc
    if not isinstance(fields, list) or len(fields) != 9 or not all(isinstance(f, bytes) for f in fields):
        raise _malformed("expected the list [chain_id, nonce, valid_until_block, quota, to, value, "
                         "action, data, signature] of byte strings")
    chain_id_b, nonce_b, until_b, quota_b, to, value_b, action_b, data, signature = fields
    for name, field in zip(_INT_FIELDS, (chain_id_b, nonce_b, until_b, quota_b, value_b, action_b), strict=True):
        if field[:1] == b"\x00":
            raise _malformed(f"{name} has a leading zero byte")
        if name in _BOUNDED and len(field) > _UINT64_BYTES:
            raise _malformed(f"{name} exceeds 64 bits")
    action = int.from_bytes(action_b, "big")
    if action not in Action._value2member_map_:
        raise _malformed(f"unknown action {action}")
    if action == Action.DEPLOY:
        if to:
            raise _malformed("a DEPLOY must have an empty 'to'")
    elif len(to) != 20:
        raise _malformed(f"'to' must be 20 bytes for action {Action(action).name}, got {len(to)}")
    if len(signature) != 65:
        raise _malformed(f"signature must be 65 bytes, got {len(signature)}")
    _prefix, _kind, _length, start = consume_length_prefix(raw, 0)
    unsigned = raw[start:len(raw) - _SIG_ITEM_BYTES]
    signing_hash = keccak(bytes(length_prefix(len(unsigned), 0xC0)) + unsigned)
    return ParsedTx(
        hash=keccak(raw), raw=raw, chain_id=int.from_bytes(chain_id_b, "big"),
        nonce=int.from_bytes(nonce_b, "big"), valid_until_block=int.from_bytes(until_b, "big"),
        quota=int.from_bytes(quota_b, "big"), to=to, action=action, data=data,
        signing_hash=signing_hash, signature=signature)

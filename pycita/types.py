"""Chain data types and their RLP codecs (DESIGN.md section 6).

Header RLP, in CITA's field order::

    [parent_hash, state_root, transactions_root, receipts_root, log_bloom,
     number, quota_limit, quota_used, timestamp, version, proof, proposer]

``proof`` is the protobuf-encoded :class:`pycita.proto.cita_pb2.Proof` of the
*parent* block (the proof of block H travels in header H+1); genesis has an
empty proof. Block hash = keccak-256(header RLP).

Transaction model (not an EVM)::

    SignedTransaction = [chain_id, nonce, valid_until_block, quota, to, value,
                         action, data, signature]

* ``signature`` is 65 bytes (r, s, v) over keccak(rlp of the first eight
  fields); the sender is recovered from it. tx hash = keccak(rlp(signed tx)).
* ``action``: 0 TRANSFER (value to ``to``), 1 DEPLOY (``data`` is the code;
  ``to`` empty; the contract address is keccak(rlp([sender, sender_nonce]))[12:]),
  2 SET_ABI (``data`` is the ABI of contract ``to``; only its deployer may set
  it), 3 STORE (``data`` is RLP ``[[key, value], ...]`` written into the
  storage of contract ``to``; an empty value deletes the key).
* ``nonce`` is chosen by the sender (as in CITA, clients use a counter): a
  (sender, nonce) pair may appear once within the replay window; auth refuses
  a reused one. ``valid_until_block`` must lie in (tip, tip + 100], so a
  transaction older than 100 blocks can never be replayed, and the window of
  the last 100 blocks is all auth must remember.
* The account ``nonce`` in state counts the sender's executed transactions
  (``getTransactionCount``); a DEPLOY's contract address is
  keccak(rlp([sender, account_nonce_before_the_tx]))[12:].
* Intrinsic quota: TRANSFER 21,000; DEPLOY 21,000 + 200 per code byte;
  SET_ABI 21,000 + 10 per ABI byte; STORE 21,000 + 20,000 per pair + 10 per
  value byte. A transaction whose ``quota`` is below it fails (status 0).
  There are no fees.

Receipt RLP::

    [tx_hash, sender, status, quota_used, cumulative_quota_used, contract_address, error]

``status`` 1 success, 0 failure (``error`` says why; the account nonce still
advances and the state is otherwise unchanged).

Account RLP: ``[nonce, balance, storage_root, code_hash, abi_hash]``.

Roots: ``transactions_root`` and ``receipts_root`` are the roots of hexary
Merkle Patricia tries mapping rlp(index) to the tx hash / receipt RLP (as
Ethereum does), computed by :func:`ordered_root`.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, Final, NewType

import rlp
from rlp.sedes import Binary, CountableList, big_endian_int, binary

from pycita.crypto import EMPTY_KECCAK, Address, Hash32, keccak, recover_address
from pycita.errors import DecodeError
from pycita.native import native as _native

Height = NewType("Height", int)

hash32 = Binary.fixed_length(32)
address20 = Binary.fixed_length(20)
bloom256 = Binary.fixed_length(256)
maybe_address = Binary(min_length=0, max_length=20)  # empty or 20 bytes, checked in validate()
signature65 = Binary.fixed_length(65)

ZERO_HASH = Hash32(b"\x00" * 32)
ZERO_ADDRESS = Address(b"\x00" * 20)
EMPTY_BLOOM = b"\x00" * 256
BLANK_ROOT = Hash32(keccak(rlp.encode(b"")))


class Action(IntEnum):
    TRANSFER = 0
    DEPLOY = 1
    SET_ABI = 2
    STORE = 3


class Header(rlp.Serializable):  # type: ignore[misc]
    fields = [
        ("parent_hash", hash32),
        ("state_root", hash32),
        ("transactions_root", hash32),
        ("receipts_root", hash32),
        ("log_bloom", bloom256),
        ("number", big_endian_int),
        ("quota_limit", big_endian_int),
        ("quota_used", big_endian_int),
        ("timestamp", big_endian_int),
        ("version", big_endian_int),
        ("proof", binary),
        ("proposer", address20),
    ]

    @property
    def hash(self) -> Hash32:
        return keccak(rlp.encode(self))


class Transaction(rlp.Serializable):  # type: ignore[misc]
    """The signed part of a transaction."""

    fields = [
        ("chain_id", big_endian_int),
        ("nonce", big_endian_int),
        ("valid_until_block", big_endian_int),
        ("quota", big_endian_int),
        ("to", maybe_address),
        ("value", big_endian_int),
        ("action", big_endian_int),
        ("data", binary),
    ]

    @property
    def signing_hash(self) -> Hash32:
        return keccak(rlp.encode(self))


class SignedTransaction(rlp.Serializable):  # type: ignore[misc]
    fields = list(Transaction._meta.fields) + [("signature", signature65)]

    @property
    def unsigned(self) -> Transaction:
        return Transaction(*[getattr(self, name) for name, _ in Transaction._meta.fields])

    @property
    def hash(self) -> Hash32:
        return keccak(rlp.encode(self))

    def sender(self) -> Address:
        """Recover the sender; raises :class:`pycita.crypto.SignatureError`."""
        return recover_address(self.unsigned.signing_hash, self.signature)


class Receipt(rlp.Serializable):  # type: ignore[misc]
    fields = [
        ("tx_hash", hash32),
        ("sender", address20),
        ("status", big_endian_int),
        ("quota_used", big_endian_int),
        ("cumulative_quota_used", big_endian_int),
        ("contract_address", maybe_address),
        ("error", binary),
    ]


class Account(rlp.Serializable):  # type: ignore[misc]
    fields = [
        ("nonce", big_endian_int),
        ("balance", big_endian_int),
        ("storage_root", hash32),
        ("code_hash", hash32),
        ("abi_hash", hash32),
    ]


EMPTY_ACCOUNT = Account(0, 0, BLANK_ROOT, EMPTY_KECCAK, EMPTY_KECCAK)


class Block(rlp.Serializable):  # type: ignore[misc]
    fields = [
        ("header", Header),
        ("transactions", CountableList(SignedTransaction)),
    ]

    @property
    def hash(self) -> Hash32:
        return self.header.hash  # type: ignore[no-any-return]


_HEADER_ATTRS: Final[tuple[str, ...]] = tuple(Header._meta.field_attrs)


def header_values(fields: object) -> tuple[Any, ...] | None:
    """The 12 field values of a :class:`Header` (``int`` for the integers) from its decoded RLP list
    ``fields``, checked without pyrlp's per-field machinery (snapshots handle headers by the hundred
    thousand); ``None`` unless ``fields`` is the plain valid shape (then ``Header.deserialize`` decides and
    names the problem): 12 byte strings, the four hashes of 32 bytes, the bloom of 256, the proposer of 20,
    the five integers canonical (no leading zero byte), the proof any bytes."""
    if type(fields) is not list or len(fields) != 12:
        return None
    for raw in fields:
        if type(raw) is not bytes:
            return None
    parent, state, txs, receipts, bloom, number, quota_limit, quota_used, timestamp, version, proof, proposer = (
        fields)
    if (len(parent) != 32 or len(state) != 32 or len(txs) != 32 or len(receipts) != 32 or len(bloom) != 256
            or len(proposer) != 20):
        return None
    if (number[:1] == b"\0" or quota_limit[:1] == b"\0" or quota_used[:1] == b"\0" or timestamp[:1] == b"\0"
            or version[:1] == b"\0"):
        return None
    return (parent, state, txs, receipts, bloom, int.from_bytes(number, "big"), int.from_bytes(quota_limit, "big"),
            int.from_bytes(quota_used, "big"), int.from_bytes(timestamp, "big"), int.from_bytes(version, "big"),
            proof, proposer)


def header_from_fields(fields: object, encoded: bytes) -> Header | None:
    """A :class:`Header` from its decoded RLP list ``fields`` and its encoding (see :func:`header_values`;
    ``None`` for another shape). ``rlp.encode`` of the result returns ``encoded`` (pyrlp's cache), so the
    caller must pass the encoding of ``fields``."""
    values = header_values(fields)
    if values is None:
        return None
    header = Header.__new__(Header)
    header.__dict__.update(zip(_HEADER_ATTRS, values, strict=True))
    header._cached_rlp = encoded
    return header


def decode_header_rlp(data: bytes, what: str) -> Header:
    """``decode_as(data, Header, what)``, fast for the plain valid shape (see :func:`header_from_fields`)."""
    if _native is not None:
        try:
            fields = _native.rlp_decode(data, 2)
        except ValueError:
            fields = None
        header = header_from_fields(fields, data) if fields is not None else None
        if header is not None:
            return header
    return decode_as(data, Header, what)  # type: ignore[return-value]


def decode_as(data: bytes, sedes: type, what: str) -> rlp.Serializable:
    """Decode RLP ``data`` as ``sedes`` or raise :class:`DecodeError` naming ``what``."""
    try:
        return rlp.decode(data, sedes)
    except (rlp.exceptions.DecodingError, rlp.exceptions.DeserializationError, TypeError, ValueError) as exc:
        # pyrlp raises TypeError for a list where an integer is expected
        raise DecodeError(what, str(exc)) from exc


def sign_transaction(tx: Transaction, key: object) -> SignedTransaction:
    """Sign ``tx`` with a :class:`pycita.crypto.PrivateKey`."""
    sig = key.sign(tx.signing_hash)  # type: ignore[attr-defined]
    return SignedTransaction(*[getattr(tx, name) for name, _ in Transaction._meta.fields], sig)


def contract_address(sender: bytes, nonce: int) -> Address:
    return Address(keccak(rlp.encode([sender, nonce]))[12:])


def ordered_root(items: list[bytes]) -> Hash32:
    """Root of the trie mapping rlp(index) -> item (Ethereum's ordered trie)."""
    from pycita.trie import build_from_sorted

    if not items:
        return BLANK_ROOT
    pairs = sorted((rlp.encode(i), item) for i, item in enumerate(items))
    return Hash32(build_from_sorted(pairs, lambda _h, _n: None))

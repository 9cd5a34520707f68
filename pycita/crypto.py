"""Hashing, keys and recoverable secp256k1 signatures.

* ``keccak(data)``: keccak-256 (the Ethereum variant, not SHA3-256).
* Addresses are the last 20 bytes of keccak(uncompressed public key without the 0x04 prefix).
* Signatures are 65 bytes ``r || s || v`` with ``v`` in {0, 1} (coincurve's recoverable format)
  over a 32-byte message hash.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NewType, cast

import coincurve
from Crypto.Hash import keccak as _keccak

from pycita.errors import PycitaError
from pycita.native import native as _native

Hash32 = NewType("Hash32", bytes)
Address = NewType("Address", bytes)

EMPTY_KECCAK = bytes.fromhex("c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470")
SIGNATURE_LENGTH = 65


class SignatureError(PycitaError):
    """Raised when a signature is malformed or does not recover to a public key."""


def keccak_reference(data: bytes) -> Hash32:
    """Keccak-256 of ``data`` by pycryptodome (the reference the C extension is tested against)."""
    return Hash32(_keccak.new(digest_bits=256, data=data).digest())


keccak: Callable[[bytes], Hash32] = (cast(Callable[[bytes], Hash32], _native.keccak256) if _native is not None
                                     else keccak_reference)
"""Return keccak-256 of ``data`` (the C extension's when built, else :func:`keccak_reference`)."""


def pubkey_to_address(pubkey_uncompressed: bytes) -> Address:
    """Address of a 65-byte uncompressed (0x04-prefixed) public key."""
    return Address(keccak(pubkey_uncompressed[1:])[12:])


@dataclass(frozen=True)
class PrivateKey:
    """A secp256k1 private key with its address."""

    secret: bytes

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(coincurve.PrivateKey().secret)

    @classmethod
    def from_hex(cls, text: str) -> PrivateKey:
        raw = bytes.fromhex(text.removeprefix("0x"))
        if len(raw) != 32:
            raise SignatureError(f"private key must be 32 bytes, got {len(raw)}")
        return cls(raw)

    def hex(self) -> str:
        return "0x" + self.secret.hex()

    @property
    def _key(self) -> coincurve.PrivateKey:
        return coincurve.PrivateKey(self.secret)

    @property
    def public_key(self) -> bytes:
        return bytes(self._key.public_key.format(compressed=False))

    @property
    def address(self) -> Address:
        return pubkey_to_address(self.public_key)

    def sign(self, message_hash: bytes) -> bytes:
        """Sign a 32-byte hash; returns a 65-byte recoverable signature."""
        if len(message_hash) != 32:
            raise SignatureError("message hash must be 32 bytes")
        return bytes(self._key.sign_recoverable(message_hash, hasher=None))


def recover_address(message_hash: bytes, signature: bytes) -> Address:
    """Recover the signer's address; raises :class:`SignatureError` on a bad signature."""
    if len(signature) != SIGNATURE_LENGTH:
        raise SignatureError(f"signature must be {SIGNATURE_LENGTH} bytes, got {len(signature)}")
    if len(message_hash) != 32:
        raise SignatureError("message hash must be 32 bytes")
    if signature[64] > 1:
        raise SignatureError(f"signature recovery id must be 0 or 1, got {signature[64]}")
    try:
        pub = coincurve.PublicKey.from_signature_and_message(signature, message_hash, hasher=None)
    except Exception as exc:  # coincurve raises ValueError/Exception on bad points
        raise SignatureError(f"signature does not recover: {exc}") from exc
    return pubkey_to_address(bytes(pub.format(compressed=False)))

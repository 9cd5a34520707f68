"""Block proofs: BFT quorum certificates, verifiable by anyone holding genesis.

A proof of block ``H`` is a protobuf ``Proof{type=Bft, content=QC}`` where QC
is the RLP::

    [height, round, block_hash, [[validator_address, signature], ...]]

and each signature is a 65-byte recoverable secp256k1 signature over::

    keccak(rlp([b"pycita-vote", chain_id, height, round, block_hash]))

A proof is valid when more than 2/3 of the genesis validators (by count,
each counted once) signed that exact (height, round, block_hash), and every
listed signature recovers to the address it is listed under.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import rlp
from google.protobuf.message import DecodeError as _PbDecodeError
from rlp.sedes import big_endian_int

from pycita.crypto import Hash32, PrivateKey, SignatureError, keccak, recover_address
from pycita.errors import PycitaError
from pycita.proto import cita_pb2 as pb

VOTE_DOMAIN = b"pycita-vote"


class ProofError(PycitaError):
    """Raised when a block proof is malformed, for another block, or not signed by a quorum.

    ``height`` and ``block_hash`` name the block the proof was checked against.
    """

    def __init__(self, message: str, height: int | None = None, block_hash: bytes | None = None) -> None:
        where = ""
        if height is not None:
            where = f" (block {height}" + (f" 0x{block_hash.hex()}" if block_hash else "") + ")"
        super().__init__(message + where)
        self.height = height
        self.block_hash = block_hash


@dataclass(frozen=True)
class QuorumCert:
    height: int
    round: int
    block_hash: bytes
    signatures: tuple[tuple[bytes, bytes], ...]

    def encode(self) -> bytes:
        return rlp.encode([self.height, self.round, self.block_hash, [list(s) for s in self.signatures]])

    def to_proof(self) -> pb.Proof:
        return pb.Proof(content=self.encode(), type=pb.Bft)

    def to_proof_bytes(self) -> bytes:
        return self.to_proof().SerializeToString()


def vote_hash(chain_id: int, height: int, round_: int, block_hash: bytes) -> Hash32:
    return keccak(rlp.encode([VOTE_DOMAIN, chain_id, height, round_, block_hash]))


def sign_vote(key: PrivateKey, chain_id: int, height: int, round_: int, block_hash: bytes) -> bytes:
    return key.sign(vote_hash(chain_id, height, round_, block_hash))


def quorum_size(n_validators: int) -> int:
    """Smallest count strictly greater than 2/3 of ``n_validators``."""
    return (2 * n_validators) // 3 + 1


def decode_qc(content: bytes) -> QuorumCert:
    try:
        raw = rlp.decode(content)
    except rlp.exceptions.DecodingError as exc:
        raise ProofError(f"proof content is not RLP: {exc}") from exc
    if not isinstance(raw, list) or len(raw) != 4 or not isinstance(raw[3], list):
        raise ProofError("proof content must be [height, round, block_hash, [[address, signature], ...]]")
    h, r, bh, sigs = raw
    if not all(isinstance(x, bytes) for x in (h, r, bh)) or len(bh) != 32:
        raise ProofError("proof height/round/block_hash malformed")
    try:  # canonical integers only: one proof has exactly one encoding
        height = big_endian_int.deserialize(h)
        round_ = big_endian_int.deserialize(r)
    except rlp.exceptions.DeserializationError as exc:
        raise ProofError(f"proof height/round is not a canonical integer: {exc}") from exc
    pairs: list[tuple[bytes, bytes]] = []
    for item in sigs:
        if not isinstance(item, list) or len(item) != 2 or not all(isinstance(x, bytes) for x in item):
            raise ProofError("proof signature entry must be [address, signature]")
        if len(item[0]) != 20 or len(item[1]) != 65:
            raise ProofError("proof signature entry has wrong lengths")
        pairs.append((item[0], item[1]))
    qc = QuorumCert(height, round_, bh, tuple(pairs))
    if qc.encode() != content:
        raise ProofError("proof content is not in canonical form")
    return qc


def parse_proof(proof_bytes: bytes) -> QuorumCert:
    """Decode a protobuf-encoded Proof into its quorum certificate."""
    p = pb.Proof()
    try:
        p.ParseFromString(proof_bytes)
    except (_PbDecodeError, ValueError) as exc:
        raise ProofError(f"proof is not a protobuf Proof: {exc}") from exc
    if p.type != pb.Bft:
        raise ProofError(f"proof type {p.type} is not Bft")
    return decode_qc(p.content)


def verify_proof(
    proof_bytes: bytes, *, chain_id: int, height: int, block_hash: bytes, validators: Sequence[bytes]
) -> QuorumCert:
    """Check that ``proof_bytes`` proves block (height, block_hash) by a quorum of ``validators``.

    Raises :class:`ProofError` saying what is wrong; returns the certificate.
    """
    qc = parse_proof(proof_bytes)
    if qc.height != height:
        raise ProofError(f"proof is for height {qc.height}", height, block_hash)
    if qc.block_hash != block_hash:
        raise ProofError(f"proof is for block 0x{qc.block_hash.hex()}", height, block_hash)
    valset = set(validators)
    msg = vote_hash(chain_id, qc.height, qc.round, qc.block_hash)
    signers: set[bytes] = set()
    for addr, sig in qc.signatures:
        if addr not in valset:
            raise ProofError(f"proof signer 0x{addr.hex()} is not a validator", height, block_hash)
        try:
            recovered = recover_address(msg, sig)
        except SignatureError as exc:
            raise ProofError(f"bad signature of 0x{addr.hex()}: {exc}", height, block_hash) from exc
        if recovered != addr:
            raise ProofError(f"signature listed for 0x{addr.hex()} was made by 0x{recovered.hex()}", height, block_hash)
        signers.add(addr)
    need = quorum_size(len(valset))
    if len(signers) < need:
        raise ProofError(f"proof has {len(signers)} validator signatures, quorum is {need} of {len(valset)}",
                         height, block_hash)
    return qc

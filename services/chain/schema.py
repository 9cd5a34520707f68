"""Every key of the chain service's LevelDB (``<node>/data/chain``).

=====================  ==========================================================
key                    value
=====================  ==========================================================
``h`` + be64(height)   header RLP, exactly as received (its keccak is the block hash)
``b`` + be64(height)   body: RLP list of the signed transactions, exactly as received
``r`` + be64(height)   RLP list of the block's receipts (index i belongs to tx i)
``p`` + be64(height)   protobuf ``Proof`` of the block (quorum certificate)
``k`` + be64(height)   protobuf ``NewBlock`` (height, hash, one ``TxKey`` per tx)
``n`` + block hash     be64(height)
``x`` + tx hash        be64(height) + be32(index in the block)
``m:tip``              be64(height) + block hash of the tip
``m:genesis``          hash of the genesis block this store belongs to
=====================  ==========================================================

Heights are big-endian so a prefix iteration visits blocks in ascending order.
The genesis block (height 0) is stored like any other block, with an empty
proof, empty body and empty receipt list. All keys of one block and the tip
are written in one batch, so the store never holds half a block.
"""

from __future__ import annotations

HEADER = b"h"
BODY = b"b"
RECEIPTS = b"r"
PROOF = b"p"
TXKEYS = b"k"
HASH_TO_HEIGHT = b"n"
TX_INDEX = b"x"
TIP = b"m:tip"
GENESIS = b"m:genesis"


def _be64(height: int) -> bytes:
    return height.to_bytes(8, "big")


def header_key(height: int) -> bytes:
    return HEADER + _be64(height)


def body_key(height: int) -> bytes:
    return BODY + _be64(height)


def receipts_key(height: int) -> bytes:
    return RECEIPTS + _be64(height)


def proof_key(height: int) -> bytes:
    return PROOF + _be64(height)


def txkeys_key(height: int) -> bytes:
    return TXKEYS + _be64(height)


def hash_key(block_hash: bytes) -> bytes:
    return HASH_TO_HEIGHT + block_hash


def tx_key(tx_hash: bytes) -> bytes:
    return TX_INDEX + tx_hash


def encode_height(height: int) -> bytes:
    return _be64(height)


def decode_height(value: bytes) -> int:
    return int.from_bytes(value[:8], "big")


def encode_tx_location(height: int, index: int) -> bytes:
    return _be64(height) + index.to_bytes(4, "big")


def decode_tx_location(value: bytes) -> tuple[int, int]:
    return int.from_bytes(value[:8], "big"), int.from_bytes(value[8:12], "big")


def encode_tip(height: int, block_hash: bytes) -> bytes:
    return _be64(height) + block_hash


def decode_tip(value: bytes) -> tuple[int, bytes]:
    return int.from_bytes(value[:8], "big"), value[8:]

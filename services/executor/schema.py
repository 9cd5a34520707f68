"""Every key of the executor service's LevelDB (``<node>/data/executor``).

=========================  ==========================================================
key                        value
=========================  ==========================================================
``t`` + node hash          trie node RLP (state and storage tries), see
                           :mod:`pycita.state_schema`
``c`` + code hash          contract code
``a`` + abi hash           contract ABI
``e`` + be64(height)       block hash (32 bytes) + state root (32 bytes) of the
                           committed block at ``height``
``h`` + be64(height)       header RLP of the committed block at ``height`` (its keccak
                           is the block hash; the snapshot's header chunks)
``m:tip``                  be64(height) of the newest committed block
``m:genesis``              hash of the genesis block this store belongs to
=========================  ==========================================================

A restored store holds the state of the snapshot height H only (plus the
genesis state), headers and height entries 1..H, and each code/ABI blob of
the snapshot under both ``c`` and ``a`` (content-addressed, so an unused
copy is harmless).

Trie nodes, code and ABIs are content-addressed and never deleted, so the
state of every height in ``e`` stays readable (historical queries, snapshots
of a past height) while newer blocks are committed. A block's state puts, its
``e`` key and ``m:tip`` are written in one batch.
"""

from __future__ import annotations

from pycita.state_schema import ABI_PREFIX, CODE_PREFIX, NODE_PREFIX, abi_key, code_key, node_key

__all__ = [
    "ABI_PREFIX",
    "CODE_PREFIX",
    "GENESIS",
    "HEADER_PREFIX",
    "HEIGHT_PREFIX",
    "NODE_PREFIX",
    "TIP",
    "abi_key",
    "code_key",
    "decode_height_entry",
    "decode_tip",
    "encode_height_entry",
    "encode_tip",
    "header_key",
    "height_key",
    "node_key",
]

HEIGHT_PREFIX = b"e"
HEADER_PREFIX = b"h"
TIP = b"m:tip"
GENESIS = b"m:genesis"


def height_key(height: int) -> bytes:
    """Key of the (block hash, state root) of the committed block at ``height``."""
    return HEIGHT_PREFIX + height.to_bytes(8, "big")


def header_key(height: int) -> bytes:
    """Key of the header RLP of the committed block at ``height``."""
    return HEADER_PREFIX + height.to_bytes(8, "big")


def encode_height_entry(block_hash: bytes, state_root: bytes) -> bytes:
    return bytes(block_hash) + bytes(state_root)


def decode_height_entry(value: bytes) -> tuple[bytes, bytes]:
    """(block hash, state root); raises ValueError on a malformed value."""
    if len(value) != 64:
        raise ValueError(f"height entry must be 64 bytes, got {len(value)}")
    return value[:32], value[32:]


def encode_tip(height: int) -> bytes:
    return height.to_bytes(8, "big")


def decode_tip(value: bytes) -> int:
    if len(value) != 8:
        raise ValueError(f"tip must be 8 bytes, got {len(value)}")
    return int.from_bytes(value, "big")

"""Keys of the account-state data in a node store (the executor's LevelDB).

State is content-addressed: trie nodes, code and ABIs are stored under their
keccak hash and never deleted, so the state of any committed height stays
readable (by opening its state root) while newer heights are committed. The
snapshot exporter and restorer use these same keys.

=============================  ==========================================
key                            value
=============================  ==========================================
``b"t" + node_hash``           RLP of a trie node (state and storage tries)
``b"c" + code_hash``           contract code (``code_hash = keccak(code)``)
``b"a" + abi_hash``            contract ABI (``abi_hash = keccak(abi)``)
=============================  ==========================================

Empty code and ABI (hash ``keccak(b"")``) are never stored.
"""

from __future__ import annotations

NODE_PREFIX = b"t"
CODE_PREFIX = b"c"
ABI_PREFIX = b"a"


def node_key(node_hash: bytes) -> bytes:
    """Key of the trie node whose RLP hashes to ``node_hash``."""
    return NODE_PREFIX + node_hash


def code_key(code_hash: bytes) -> bytes:
    """Key of the contract code whose keccak is ``code_hash``."""
    return CODE_PREFIX + code_hash


def abi_key(abi_hash: bytes) -> bytes:
    """Key of the contract ABI whose keccak is ``abi_hash``."""
    return ABI_PREFIX + abi_hash

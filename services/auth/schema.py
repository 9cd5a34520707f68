"""Every key of the auth service's LevelDB (``<node>/data/auth``).

===================  ==============================================================
key                  value
===================  ==============================================================
``p`` + be64(seq)    a pooled transaction: RLP ``[sender, nonce, valid_until_block,
                     quota, raw_tx]``; ``seq`` grows with arrival, so iterating
                     the prefix reloads the pool in arrival order
===================  ==============================================================

The recent window is not stored: it is rebuilt from the chain at start-up
(``auth.recent_txs_req``).
"""

from __future__ import annotations

POOL = b"p"


def pool_key(seq: int) -> bytes:
    return POOL + seq.to_bytes(8, "big")


def pool_seq(key: bytes) -> int:
    return int.from_bytes(key[len(POOL):], "big")

"""Intrinsic quota of a transaction: the single source of truth for auth and execution.

TRANSFER 21,000; DEPLOY 21,000 + 200 per code byte; SET_ABI 21,000 + 10 per
ABI byte; STORE 21,000 + 20,000 per pair + 10 per value byte. For STORE the
pair count comes from the data (RLP ``[[key, value], ...]``); data that does
not decode costs as if it held no pair (execution then fails it).
"""

from __future__ import annotations

import rlp

from pycita.types import Action

BASE = 21_000
DEPLOY_PER_BYTE = 200
ABI_PER_BYTE = 10
STORE_PER_PAIR = 20_000
STORE_PER_BYTE = 10


def intrinsic_quota(action: int, data: bytes) -> int:
    """Quota a transaction of ``action`` carrying ``data`` needs at least."""
    if action == Action.DEPLOY:
        return BASE + DEPLOY_PER_BYTE * len(data)
    if action == Action.SET_ABI:
        return BASE + ABI_PER_BYTE * len(data)
    if action == Action.STORE:
        try:
            pairs = rlp.decode(data)
        except rlp.exceptions.DecodingError:
            return BASE
        if not isinstance(pairs, list):
            return BASE
        n = len(pairs)
        size = sum(len(p[1]) for p in pairs if isinstance(p, list) and len(p) == 2 and isinstance(p[1], bytes))
        return BASE + STORE_PER_PAIR * n + STORE_PER_BYTE * size
    return BASE

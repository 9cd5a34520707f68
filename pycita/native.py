"""The optional C extension :mod:`pycita._native`, or ``None``.

``pycita/_native.c`` holds the per-item hot loops of snapshot export and
restore: Keccak-256, strict RLP decoding, the bulk trie builder and the trie
walker. Each has a pure-Python reference (:func:`pycita.crypto.keccak` via
pycryptodome, :func:`pycita.snapshot.container.decode_rlp`,
:func:`pycita.trie.build_from_sorted`, :meth:`pycita.trie.Trie.items`) that
the callers use when the extension is missing, so results never depend on
it; ``tests/lib/test_native.py`` checks both against each other.

The extension is built by ``pip install -e .`` (``setup.py``, optional: a
machine without a C compiler installs pycita without it). Set
``PYCITA_NATIVE=0`` to run without it (the reference code paths).
"""

from __future__ import annotations

import logging
import os
from types import ModuleType

log = logging.getLogger(__name__)


def _load() -> ModuleType | None:
    if os.environ.get("PYCITA_NATIVE", "1") == "0":
        return None
    try:
        import pycita._native as _native
    except ImportError as exc:  # not built (no compiler): the pure-Python paths
        log.warning("pycita._native is not built (%s): snapshot export and restore run the slower "
                    "pure-Python code; run 'pip install -e .' with a C compiler to build it", exc)
        return None
    return _native


native: ModuleType | None = _load()
AVAILABLE: bool = native is not None
"""Whether the C extension is loaded."""

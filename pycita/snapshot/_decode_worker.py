"""Entry point of the state-chunk decoding worker process (see :class:`pycita.snapshot.state_format._DecodeWorker`).

``python -m pycita.snapshot._decode_worker FILE COUNT``: pickled results on stdout. A module of its own so
the pickled classes are named by their real module, not ``__main__``.
"""

from __future__ import annotations

import sys

from pycita.snapshot.state_format import _decode_chunks

if __name__ == "__main__":
    _decode_chunks(sys.argv[1], int(sys.argv[2]), sys.stdout.buffer)

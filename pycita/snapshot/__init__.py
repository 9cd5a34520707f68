"""The snapshot file format (DESIGN.md section 5) and its offline verification (section 7).

* :mod:`pycita.snapshot.container`: chunks + manifest + trailing offset, bounds;
* :mod:`pycita.snapshot.chain_format`: ``FILE_chain.rlp`` writer and reader;
* :mod:`pycita.snapshot.state_format`: ``FILE_executor.rlp`` writer and reader;
* :mod:`pycita.snapshot.verify`: every check a restore must pass;
* :mod:`pycita.snapshot.errors`: :class:`SnapshotError` and its subclasses.
"""

from pycita.snapshot.errors import SnapshotError

__all__ = ["SnapshotError"]

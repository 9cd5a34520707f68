"""Errors raised while writing, reading or verifying snapshot files.

Every error derives from :class:`SnapshotError` and carries, both as
attributes and in its message, what a user needs to locate the problem:

* ``file``: the snapshot file (path as given);
* ``chunk``: the index of the chunk in that file (file order, 0-based; in the
  executor file state chunks come first, then header chunks), or ``None``
  when the problem is in the trailer or the manifest;
* ``check``: the name of the check that failed (each subclass has a default);
* ``expected`` / ``actual``: the values compared, when there are two.

Bytes values are shown as ``0x``-hex in messages.
"""

from __future__ import annotations

from pycita.errors import PycitaError

__all__ = [
    "BadTrailingOffset",
    "BlockHashMismatch",
    "BodyRootMismatch",
    "ChunkDecodeError",
    "ChunkHashMismatch",
    "ChunkTooLarge",
    "FilesDisagree",
    "HeaderChainBroken",
    "ManifestError",
    "MissingCodeOrAbi",
    "OrderError",
    "ProofInvalid",
    "SnapshotError",
    "StateRootMismatch",
    "TruncatedFile",
    "TrustedHashMismatch",
    "UnsupportedVersion",
    "WrongChain",
]


def _show(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    return str(value)


class SnapshotError(PycitaError):
    """Raised when a snapshot file cannot be written, read or verified.

    Subclasses name the failed check; catch this class to handle them all.
    """

    default_check = "snapshot"

    def __init__(
        self,
        detail: str,
        *,
        file: str | None = None,
        chunk: int | None = None,
        check: str | None = None,
        expected: object = None,
        actual: object = None,
    ) -> None:
        self.detail = detail
        self.file = file
        self.chunk = chunk
        self.check = check or self.default_check
        self.expected = expected
        self.actual = actual
        where = []
        if file is not None:
            where.append(str(file))
        if chunk is not None:
            where.append(f"chunk {chunk}")
        text = (": ".join(where) + ": " if where else "") + f"{self.check} check failed: {detail}"
        if expected is not None or actual is not None:
            text += f" (expected {_show(expected)}, actual {_show(actual)})"
        super().__init__(text)

    def __reduce__(self) -> tuple[object, ...]:
        # pickled across the snapshot worker processes: rebuild from the fields, not from the message
        return (_rebuild, (type(self), self.detail, self.file, self.chunk, self.check, self.expected,
                           self.actual))


class ManifestError(SnapshotError):
    """Raised when the manifest is not RLP, has the wrong shape, or its chunk table is inconsistent."""

    default_check = "manifest"


class UnsupportedVersion(ManifestError):
    """Raised when the manifest's format version is not one this code reads."""

    default_check = "version"


class TruncatedFile(SnapshotError):
    """Raised when the file is too short for its trailer, or ends inside a chunk being read."""

    default_check = "file length"


class BadTrailingOffset(SnapshotError):
    """Raised when the trailing u64 manifest offset does not point at a manifest that ends exactly at the trailer."""

    default_check = "trailing offset"


class ChunkHashMismatch(SnapshotError):
    """Raised when keccak-256 of a chunk's compressed bytes differs from its ChunkInfo hash."""

    default_check = "chunk hash"


class ChunkTooLarge(SnapshotError):
    """Raised when a chunk's declared (or compressed) size exceeds the format's bound.

    The declared decompressed length is read from the snappy header before
    anything is decompressed. Also raised by writers for an entry too large
    for any chunk.
    """

    default_check = "chunk size"


class ChunkDecodeError(SnapshotError):
    """Raised when a chunk does not decompress, is not RLP, or its items do not have the format's shape."""

    default_check = "chunk decode"


class OrderError(SnapshotError):
    """Raised when items are not in the required order (accounts/storage keys ascending, split pieces consecutive)."""

    default_check = "order"


class HeaderChainBroken(SnapshotError):
    """Raised when a header's number or parent hash does not follow the previous header (or a chunk's declared parent)."""

    default_check = "header chain"


class WrongChain(SnapshotError):
    """Raised when the snapshot does not chain to the local genesis (genesis hash or chain id differ)."""

    default_check = "genesis"


class BlockHashMismatch(SnapshotError):
    """Raised when the hash of header H differs from the manifest's block_hash (or H is missing)."""

    default_check = "block hash"


class StateRootMismatch(SnapshotError):
    """Raised when a rebuilt state/storage root differs from the one it must equal."""

    default_check = "state root"


class BodyRootMismatch(SnapshotError):
    """Raised when a block's transactions or receipts do not hash to its header's roots."""

    default_check = "body root"


class ProofInvalid(SnapshotError):
    """Raised when ``last_proof`` is not a valid quorum proof of block H by the genesis validators."""

    default_check = "last proof"


class FilesDisagree(SnapshotError):
    """Raised when the chain and executor files name different heights, hashes, state roots or chains."""

    default_check = "files agree"


class MissingCodeOrAbi(SnapshotError):
    """Raised when a code/ABI hash reference (state 2) names bytes not emitted inline earlier in the snapshot."""

    default_check = "code/abi reference"


class TrustedHashMismatch(SnapshotError):
    """Raised when the snapshot's block H hash differs from the trusted block hash the user gave."""

    default_check = "trusted hash"


def _rebuild(cls: type[SnapshotError], detail: str, file: str | None, chunk: int | None, check: str | None,
             expected: object, actual: object) -> SnapshotError:
    return cls(detail, file=file, chunk=chunk, check=check, expected=expected, actual=actual)

"""The root of pycita's exception hierarchy.

Each subsystem defines its own subclasses beside its code (for example
:class:`pycita.snapshot.errors.SnapshotError`), all deriving from
:class:`PycitaError` so a caller can catch everything pycita raises.
"""

from __future__ import annotations


class PycitaError(Exception):
    """Raised when anything in pycita fails in a way the caller should handle."""


class DecodeError(PycitaError):
    """Raised when bytes from outside (bus, file, RPC) do not decode to the expected shape.

    ``what`` names the thing being decoded, ``reason`` says what is wrong.
    """

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"cannot decode {what}: {reason}")
        self.what = what
        self.reason = reason


class ConfigError(PycitaError):
    """Raised when a node directory, genesis or configuration file is missing or invalid."""

"""Errors of snapshot_tool; the CLI prints each as one line and exits 1 (2 for :class:`UsageError`)."""

from __future__ import annotations

from collections.abc import Sequence

from pycita.errors import PycitaError


class SnapshotToolError(PycitaError):
    """Raised when a snapshot_tool operation fails; the message is the one line shown to the user."""


class UsageError(SnapshotToolError):
    """Raised when the command line is invalid (bad height, a -f that leaves the snapshot directory, ...)."""


class TransportError(SnapshotToolError):
    """Raised when the tool cannot reach the node's RabbitMQ (connect, publish or receive)."""


class StepFailed(SnapshotToolError):
    """Raised when a phase of a snapshot operation fails: a service refused it, was silent, or acks disagree.

    ``phase`` is the command name (``Begin``, ``Restore`` ...), ``services``
    the services at fault (empty when the fault is a cross-check), and
    ``reason`` the explanation (a service's ``error`` text, or the check).
    """

    def __init__(self, phase: str, services: Sequence[str], reason: str) -> None:
        self.phase = phase
        self.services = tuple(services)
        self.reason = reason
        who = ", ".join(self.services)
        super().__init__(f"{phase} failed" + (f" at {who}" if who else "") + f": {reason}")


class ServiceRefused(StepFailed):
    """Raised when a service answers a snapshot command with flag=false; ``reason`` is its error text."""


class PhaseTimeout(StepFailed):
    """Raised when services do not answer a snapshot command within the phase timeout; ``services`` names them."""


class AcksDisagree(StepFailed):
    """Raised when chain and executor acks name different heights, hashes or state roots, or miss a trusted hash."""


class RollForwardIncomplete(SnapshotToolError):
    """Raised when a committed restore could not be finished (Clear or End unanswered or refused).

    The journal stays ``"commit"``: restarting the node rolls its stores
    forward and re-running ``snapshot_tool -m restore`` completes Clear/End.
    """

    def __init__(self, cause: StepFailed, hint: str) -> None:
        self.cause = cause
        super().__init__(f"{cause}; the restore is committed and must be completed: {hint}")

"""Where a service reads or writes the files of snapshot ``FILE`` (DESIGN.md section 2).

snapshot_tool sends ``SnapshotReq.file`` (the name, e.g. ``snapshot``) and
``SnapshotReq.directory`` (the node's absolute ``snapshots/`` directory); the
chain uses ``<directory>/<file>_chain.rlp``, the executor
``<directory>/<file>_executor.rlp``.
"""

from __future__ import annotations

from pathlib import Path

from pycita.snapshot.errors import SnapshotError

CHAIN_SUFFIX = "_chain.rlp"
EXECUTOR_SUFFIX = "_executor.rlp"

__all__ = ["CHAIN_SUFFIX", "EXECUTOR_SUFFIX", "snapshot_files"]


def snapshot_files(directory: str, default_directory: Path, name: str) -> tuple[Path, Path]:
    """``(chain file, executor file)`` of snapshot ``name``; raises :class:`SnapshotError` on a bad name.

    ``directory`` must be absolute (empty: ``default_directory``); ``name`` is
    relative to it (snapshot_tool allows ``sub/x``) and may not leave it.
    """
    name = name or "snapshot"
    parts = Path(name).parts
    if Path(name).is_absolute() or ".." in parts or "\0" in name or not parts or name.endswith("/"):
        raise SnapshotError(f"snapshot name {name!r} must be a name inside the snapshot directory",
                            check="file name")
    base = Path(directory) if directory else Path(default_directory)
    if not base.is_absolute():
        raise SnapshotError(f"snapshot directory {directory!r} must be absolute", check="file name")
    return base / f"{name}{CHAIN_SUFFIX}", base / f"{name}{EXECUTOR_SUFFIX}"

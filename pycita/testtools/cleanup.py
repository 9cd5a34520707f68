"""Clean-up policies: what :class:`~pycita.testtools.Node` and :class:`~pycita.testtools.Network`
leave behind when they are closed (modelled on Hive's TestTools)."""

from __future__ import annotations

import enum
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


class CleanupPolicy(enum.Enum):
    """What to remove from a node's directory (and the broker) when it is closed.

    * ``REMOVE_EVERYTHING`` -- the whole directory and the node's RabbitMQ vhost.
    * ``REMOVE_ONLY_UNNEEDED_FILES`` -- databases (``data/``), snapshots,
      run files and the vhost; keeps logs, keys, genesis and configuration, so
      a passed test still leaves its logs to read. The default under pytest.
    * ``DO_NOT_REMOVE_FILES`` -- nothing (the vhost too is kept, with any
      dead-lettered messages). Used for a failed test, and outside pytest.
    """

    REMOVE_EVERYTHING = "remove_everything"
    REMOVE_ONLY_UNNEEDED_FILES = "remove_only_unneeded_files"
    DO_NOT_REMOVE_FILES = "do_not_remove_files"


UNNEEDED_DIRS = ("data", "snapshots", "run")
"""Sub-directories of a node directory that REMOVE_ONLY_UNNEEDED_FILES deletes."""


def default_policy() -> CleanupPolicy:
    """REMOVE_ONLY_UNNEEDED_FILES under pytest, DO_NOT_REMOVE_FILES otherwise."""
    if "PYTEST_CURRENT_TEST" in os.environ:
        return CleanupPolicy.REMOVE_ONLY_UNNEEDED_FILES
    return CleanupPolicy.DO_NOT_REMOVE_FILES


def _rm(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def clean_node_dir(node_dir: Path, policy: CleanupPolicy) -> None:
    """Apply ``policy`` to the files of a stopped node (not to its vhost)."""
    if policy is CleanupPolicy.DO_NOT_REMOVE_FILES or not node_dir.exists():
        return
    if policy is CleanupPolicy.REMOVE_EVERYTHING:
        shutil.rmtree(node_dir)
    else:
        for sub in UNNEEDED_DIRS:
            _rm(node_dir / sub)
    log.info("applied %s to %s", policy.name, node_dir)


def clean_chain_dir(chain_dir: Path, policy: CleanupPolicy) -> None:
    """Apply ``policy`` to the chain directory itself (after its nodes were cleaned)."""
    if policy is CleanupPolicy.REMOVE_EVERYTHING and chain_dir.exists():
        shutil.rmtree(chain_dir)
        log.info("removed chain directory %s", chain_dir)

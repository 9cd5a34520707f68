"""A chain of pycita nodes under test (one node for now)."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

from pycita import node as nodelib
from pycita.testtools.cleanup import CleanupPolicy, clean_chain_dir, default_policy
from pycita.testtools.node import Node

log = logging.getLogger(__name__)

DEFAULT_BLOCK_INTERVAL = 0.3


def _default_directory(name: str) -> Path:
    base = Path(os.environ.get("PYCITA_TESTTOOLS_DIR", Path.cwd() / ".testtools"))
    return base / f"{name}-{uuid.uuid4().hex[:8]}"


class Network:
    """A chain directory with ``nodes`` nodes, made with :func:`pycita.node.create_chain`.

    ``directory`` defaults to ``./.testtools/<name>-<random>`` (the pytest
    fixtures put it under ``tmp_path``). JSON-RPC ports are picked free.
    """

    def __init__(self, directory: str | Path | None = None, nodes: int = 1, *,
                 block_interval: float = DEFAULT_BLOCK_INTERVAL, name: str = "network",
                 cleanup_policy: CleanupPolicy | None = None, funded_accounts: int = 10,
                 **create_options: Any) -> None:
        if nodes != 1:
            raise NotImplementedError("networks of more than one node arrive with the network service")
        self.directory = Path(directory).resolve() if directory is not None else _default_directory(name)
        self.name = name
        self.cleanup_policy = cleanup_policy
        self.info = nodelib.create_chain(self.directory, nodes, block_interval, funded_accounts=funded_accounts,
                                         jsonrpc_port=None, **create_options)
        self.nodes = [Node(self, i) for i in range(nodes)]
        self._closed = False

    def __repr__(self) -> str:
        return f"Network({str(self.directory)!r}, nodes={len(self.nodes)})"

    @property
    def node(self) -> Node:
        """The first node."""
        return self.nodes[0]

    def accounts(self) -> list[nodelib.TestAccount]:
        return nodelib.load_accounts(self.directory)

    def run(self, timeout: float = nodelib.DEFAULT_START_TIMEOUT) -> None:
        """Start every node; return once all their services answer."""
        for n in self.nodes:
            n.run(timeout=timeout)

    def close(self, policy: CleanupPolicy | None = None) -> None:
        """Stop every node and apply ``policy`` (default: the network's, else the default policy)."""
        if self._closed:
            return
        policy = policy or self.cleanup_policy or default_policy()
        errors: list[BaseException] = []
        for n in self.nodes:
            try:
                n.close(policy)
            except Exception as exc:  # close the others anyway
                log.error("%s: close failed: %s", n, exc)
                errors.append(exc)
        if errors:
            raise errors[0]
        self._closed = True
        clean_chain_dir(self.directory, policy)

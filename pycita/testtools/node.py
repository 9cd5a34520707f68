"""A pycita node under test: start it, wait for blocks, kill services, close it."""

from __future__ import annotations

import atexit
import logging
import signal as _signal
import time
import urllib.parse
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pycita import node as nodelib
from pycita.config import NodeConfig
from pycita.errors import PycitaError
from pycita.testtools.cleanup import CleanupPolicy, clean_node_dir, default_policy
from pycita.testtools.snapshot import Snapshot, as_snapshot, run_snapshot_tool

if TYPE_CHECKING:
    from pycita.client import Client
    from pycita.testtools.network import Network

log = logging.getLogger(__name__)

_live_nodes: weakref.WeakSet[Node] = weakref.WeakSet()


class WaitTimeout(PycitaError):
    """Raised when a node does not reach a block height (or a condition) within the given time."""


class Node:
    """One node of a :class:`~pycita.testtools.Network`, or an existing node directory.

    ``Node(network, index)`` is node ``index`` of the network's chain;
    ``Node("test-chain/0")`` wraps a node directory made by ``pycita create``.
    Nothing runs until :meth:`run`; :meth:`close` stops it and applies the
    clean-up policy.
    """

    def __init__(self, network_or_dir: Network | str | Path, index: int = 0, *,
                 cleanup_policy: CleanupPolicy | None = None) -> None:
        from pycita.testtools.network import Network

        if isinstance(network_or_dir, Network):
            self.network: Network | None = network_or_dir
            self.directory = network_or_dir.directory / str(index)
        else:
            self.network = None
            self.directory = Path(network_or_dir).resolve()
        self.index = index
        self.cleanup_policy = cleanup_policy
        self._api: Client | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"Node({str(self.directory)!r})"

    # ------------------------------------------------------------ config
    @property
    def config(self) -> NodeConfig:
        return nodelib.node_config(self.directory)

    @property
    def name(self) -> str:
        return f"node{self.index}" if self.network is not None else self.directory.name

    @property
    def jsonrpc_url(self) -> str:
        cfg = self.config
        return f"http://{cfg.jsonrpc_host}:{cfg.jsonrpc_port}"

    @property
    def api(self) -> Client:
        """A JSON-RPC client of this node (:class:`pycita.client.Client`)."""
        if self._api is None:
            from pycita.client import Client

            self._api = Client(self.jsonrpc_url)
        return self._api

    def accounts(self) -> list[nodelib.TestAccount]:
        """The funded genesis accounts of the chain, with their keys."""
        return nodelib.load_accounts(self.directory)

    def log_path(self, service: str) -> Path:
        """The log file of ``service`` (or ``"supervisord"``)."""
        return nodelib.log_path(self.directory, service)

    def read_log(self, service: str) -> str:
        path = self.log_path(service)
        return path.read_text(errors="replace") if path.exists() else ""

    # --------------------------------------------------------- lifecycle
    def run(self, load_snapshot_from: Snapshot | str | Path | None = None,
            timeout: float = nodelib.DEFAULT_START_TIMEOUT) -> None:
        """Start the node; return once every service answers on the bus.

        With ``load_snapshot_from`` (a :class:`~pycita.testtools.snapshot.Snapshot`,
        or a path: the prefix ``/x/snap`` of ``/x/snap_chain.rlp`` and
        ``/x/snap_executor.rlp``, or either file) the files are copied into the
        node's ``snapshots/`` directory and ``snapshot_tool -m restore`` brings
        the started node to the snapshot's height.
        On failure the node is stopped again (its logs stay) and the error is raised.
        """
        snapshot = as_snapshot(load_snapshot_from) if load_snapshot_from is not None else None
        self._closed = False
        _live_nodes.add(self)
        try:
            nodelib.start(self.directory, timeout=timeout)
            if snapshot is not None:
                self.load_snapshot(snapshot)
        except BaseException:
            self._stop_quietly()
            raise

    # ---------------------------------------------------------- snapshots
    def fresh_copy(self, directory: str | Path, *, cleanup_policy: CleanupPolicy | None = None) -> Node:
        """A new, empty node directory of the same chain: this node's key, genesis and settings,
        its own RabbitMQ vhost and JSON-RPC port, no data (e.g. to restore a snapshot into)."""
        import dataclasses
        import shutil

        from pycita.config import write_node_config
        from pycita.rabbit import amqp_url

        target = Path(directory).resolve()
        if target.exists() and any(target.iterdir()):
            raise PycitaError(f"{target} exists and is not empty")
        target.mkdir(parents=True, exist_ok=True)
        for sub in nodelib.NODE_DIRS:
            (target / sub).mkdir()
        for name in ("privkey", "genesis.json"):
            shutil.copy2(self.directory / name, target / name)
        accounts = self.directory.parent / "accounts.json"
        if self.network is not None and accounts.exists() and not (target.parent / "accounts.json").exists():
            shutil.copy2(accounts, target.parent / "accounts.json")
        cfg = self.config
        parsed = urllib.parse.urlsplit(cfg.amqp_url)
        new_cfg = dataclasses.replace(
            cfg, node_dir=target, jsonrpc_port=nodelib.free_ports(1)[0],
            amqp_url=amqp_url(nodelib.vhost_name(target, 0), host=parsed.hostname or "127.0.0.1",
                              port=parsed.port or 5672))
        write_node_config(new_cfg)
        return Node(target, cleanup_policy=cleanup_policy or self.cleanup_policy)

    def snapshot_dir(self) -> Path:
        return self.config.snapshot_dir

    def dump_snapshot(self, name: str = "snapshot", height: int | None = None) -> Snapshot:
        """Run ``snapshot_tool -m snapshot [-e height] -f name`` in the node directory; return the snapshot."""
        args = ["-m", "snapshot", "-f", name, "-q"]
        if height is not None:
            args += ["-e", str(height)]
        run_snapshot_tool(args, cwd=self.directory)
        directory = self.snapshot_dir()
        return Snapshot.from_files(directory / f"{name}_chain.rlp", directory / f"{name}_executor.rlp")

    def load_snapshot(self, snapshot: Snapshot | str | Path, block_hash: str | None = None) -> None:
        """Copy ``snapshot`` into this running node's snapshots directory and run ``snapshot_tool -m restore``."""
        snap = as_snapshot(snapshot).copy_to(self.snapshot_dir())
        args = ["-m", "restore", "-f", snap.name, "-q"]
        if block_hash is not None:
            args += ["--block", block_hash]
        run_snapshot_tool(args, cwd=self.directory)

    def is_running(self) -> bool:
        return nodelib.is_running(self.directory)

    def stop(self, timeout: float = nodelib.DEFAULT_STOP_TIMEOUT) -> None:
        """Stop the node's processes, keeping every file (it can :meth:`run` again)."""
        nodelib.stop(self.directory, timeout=timeout)
        if self._api is not None:
            self._api.close()
            self._api = None

    def restart(self, timeout: float = nodelib.DEFAULT_START_TIMEOUT) -> None:
        self.stop()
        self.run(timeout=timeout)

    def close(self, policy: CleanupPolicy | None = None) -> None:
        """Stop the node and apply ``policy`` (default: the node's, else the network's, else
        :func:`~pycita.testtools.cleanup.default_policy`). Idempotent."""
        if self._closed:
            return
        policy = policy or self.cleanup_policy or (self.network.cleanup_policy if self.network else None) \
            or default_policy()
        self.stop()
        self._closed = True
        _live_nodes.discard(self)
        if policy is not CleanupPolicy.DO_NOT_REMOVE_FILES:
            self._delete_vhost()
        clean_node_dir(self.directory, policy)

    def _delete_vhost(self) -> None:
        from pycita import rabbit

        try:
            rabbit.delete_vhost(nodelib.vhost_of(self.config.amqp_url))
        except PycitaError as exc:
            log.warning("%s: could not delete its vhost: %s", self, exc)

    def _stop_quietly(self) -> None:
        try:
            nodelib.stop(self.directory)
        except PycitaError as exc:
            log.warning("%s: stop failed: %s", self, exc)

    # ------------------------------------------------------------ queries
    def status(self) -> dict[str, Any]:
        """``pycita status --json`` of this node (see :func:`pycita.node.status`)."""
        return nodelib.status(self.directory)

    def get_height(self) -> int:
        """The chain service's height, asked over the bus (independent of JSON-RPC)."""
        answers = nodelib.ping_services(self.directory, timeout=3.0, services=["chain"])
        chain = answers.get("chain")
        if chain is None or chain.get("height") is None:
            raise nodelib.ServicesNotAnswering(["chain"], {"chain": self.log_path("chain")}, 3.0)
        return int(chain["height"])

    def wait_for_block(self, number: int, timeout: float = 30.0, poll: float = 0.2) -> int:
        """Wait until the chain has block ``number``; return the height seen."""
        deadline = time.monotonic() + timeout
        height: int | None = None
        last_error: Exception | None = None
        while True:
            try:
                height = self.get_height()
                if height >= number:
                    return height
            except PycitaError as exc:
                last_error = exc
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"{self}: chain at {height}, not at block {number} within {timeout:.1f} s"
                                  + (f" (last error: {last_error})" if last_error else "")
                                  + f"; see {self.log_path('chain')} and {self.log_path('consensus')}")
            time.sleep(poll)

    def wait_for_blocks(self, count: int, timeout: float = 30.0) -> int:
        """Wait for ``count`` more blocks than now."""
        return self.wait_for_block(self.get_height() + count, timeout)

    # ------------------------------------------------------------ faults
    def service_pid(self, service: str) -> int | None:
        return self.status()["services"][service]["pid"]  # type: ignore[no-any-return]

    def kill_service(self, service: str, sig: int | str = _signal.SIGKILL) -> int:
        """Send ``sig`` to a service through supervisord (which restarts it); return the killed pid."""
        return nodelib.kill_service(self.directory, service, sig)


@atexit.register
def _stop_leftover_nodes() -> None:
    """Never leave supervisord trees behind when a test process exits without closing its nodes."""
    for n in list(_live_nodes):
        if not n._closed:
            n._stop_quietly()

"""Node directory management: create a chain, start/stop/inspect/clean a node.

This is the library behind ``pycita create|start|stop|status|logs|clean`` and
behind :mod:`pycita.testtools`.

A *chain directory* (made by :func:`create_chain`, like CITA's
``create_cita_config``) holds ``accounts.json`` (the funded test accounts and
their keys) and one node directory per node, ``0`` .. ``N-1`` (layout in
:mod:`pycita.config`). Each node runs its services under its own
``supervisord`` (``run/supervisord.conf``), talks over its own RabbitMQ vhost
(``.env``), and is *started* only once every service answers a ``cli.ping`` on
the bus.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal as _signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
import xmlrpc.client
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycita.config import DEFAULT_SERVICES, NodeConfig, load_node_config, write_node_config
from pycita.crypto import PrivateKey
from pycita.errors import ConfigError, PycitaError
from pycita.genesis import Genesis

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The source tree the services are imported from (put on their PYTHONPATH)."""

DEFAULT_JSONRPC_PORT = 1337
DEFAULT_CHAIN_ID = 1
DEFAULT_QUOTA_LIMIT = 1_000_000_000
DEFAULT_FUNDED_ACCOUNTS = 10
DEFAULT_FUNDED_BALANCE = 10**30
DEFAULT_START_TIMEOUT = 60.0
DEFAULT_STOP_TIMEOUT = 30.0
PING_EXPIRATION_MS = 10_000
"""A ping nobody consumes (service down) expires from its queue after this many ms."""
NODE_DIRS = ("data", "logs", "snapshots", "run")
"""Sub-directories of a node directory; all but ``logs`` and ``run`` hold state."""
_MAX_SOCKET_PATH = 100
"""AF_UNIX paths are limited to ~108 bytes; longer socket paths move to the temp dir."""


# ----------------------------------------------------------------- errors


class NodeError(PycitaError):
    """Raised when a node cannot be created, started, stopped, inspected or cleaned."""


class NodeUsageError(NodeError):
    """Raised when the caller asked for something its arguments make impossible (the CLI exits 2).

    For example: the node directory is missing or is not one, the chain
    directory already exists, an unknown service is named.
    """


class NodeNotRunning(NodeUsageError):
    """Raised when an operation needs a running node (its supervisord) and there is none."""

    def __init__(self, node_dir: Path) -> None:
        super().__init__(f"node {node_dir} is not running (start it with: pycita start {node_dir})")
        self.node_dir = node_dir


class NodeRunning(NodeUsageError):
    """Raised when an operation needs a stopped node (e.g. clean) but its supervisord is running."""

    def __init__(self, node_dir: Path, what: str) -> None:
        super().__init__(f"node {node_dir} is running; stop it first (pycita stop {node_dir}) before {what}")
        self.node_dir = node_dir


class ServicesNotAnswering(NodeError):
    """Raised when some services do not answer a ``cli.ping`` on the bus within the timeout.

    ``names`` are the silent services; ``logs`` maps each to its log file.
    """

    def __init__(self, names: Sequence[str], logs: dict[str, Path], timeout: float,
                 states: dict[str, str] | None = None) -> None:
        states = states or {}
        parts = [f"{n} ({states[n]}; see {logs[n]})" if n in states else f"{n} (see {logs[n]})" for n in names]
        super().__init__(f"services not answering on the bus after {timeout:.0f} s: " + ", ".join(parts))
        self.names = tuple(names)
        self.logs = logs


class BusUnavailable(NodeError):
    """Raised when the node's RabbitMQ vhost cannot be reached (broker down, vhost missing)."""


# ----------------------------------------------------------- chain creation


@dataclass(frozen=True)
class TestAccount:
    """A funded genesis account with its private key (``accounts.json``)."""

    address: str
    private_key: str

    def key(self) -> PrivateKey:
        return PrivateKey.from_hex(self.private_key)


@dataclass(frozen=True)
class ChainInfo:
    """What :func:`create_chain` made."""

    chain_dir: Path
    node_dirs: tuple[Path, ...]
    validators: tuple[str, ...]
    accounts: tuple[TestAccount, ...]
    genesis_hash: str = ""
    jsonrpc_ports: tuple[int, ...] = field(default_factory=tuple)


def vhost_name(chain_dir: str | Path, index: int) -> str:
    """The RabbitMQ vhost of node ``index`` of the chain in ``chain_dir`` (unique per absolute path)."""
    digest = hashlib.sha256(str(Path(chain_dir).resolve()).encode()).hexdigest()[:12]
    return f"pycita-{digest}-{index}"


def vhost_of(amqp_url: str) -> str:
    """The (decoded) vhost named by an AMQP URL's path."""
    path = urllib.parse.urlsplit(amqp_url).path
    return urllib.parse.unquote(path[1:]) if path.startswith("/") else "/"


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now (chosen by the kernel)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def create_chain(chain_dir: str | Path, nodes: int = 1, block_interval: float = 3.0, *,
                 chain_id: int = DEFAULT_CHAIN_ID, funded_accounts: int = DEFAULT_FUNDED_ACCOUNTS,
                 funded_balance: int = DEFAULT_FUNDED_BALANCE,
                 jsonrpc_port: int | None = DEFAULT_JSONRPC_PORT,
                 services: Sequence[str] = DEFAULT_SERVICES,
                 quota_limit: int = DEFAULT_QUOTA_LIMIT,
                 amqp_host: str = "127.0.0.1", amqp_port: int = 5672,
                 node_options: dict[str, Any] | None = None) -> ChainInfo:
    """Create a chain directory with ``nodes`` node directories ``0..nodes-1``.

    One key per node; all node addresses are validators. ``funded_accounts``
    fresh accounts get ``funded_balance`` each in the genesis alloc, and their
    keys go to ``<chain_dir>/accounts.json``. Node ``i`` serves JSON-RPC on
    ``jsonrpc_port + i``; ``jsonrpc_port=None`` (or 0) picks free ports.
    ``node_options`` are extra ``node.json`` fields (e.g. ``max_block_txs``).
    Refuses a ``chain_dir`` that exists and is not empty.
    """
    from pycita.rabbit import amqp_url as make_amqp_url

    if nodes < 1:
        raise NodeUsageError(f"a chain needs at least one node, got {nodes}")
    if block_interval <= 0:
        raise NodeUsageError(f"block interval must be positive, got {block_interval}")
    if funded_accounts < 0:
        raise NodeUsageError(f"funded account count must not be negative, got {funded_accounts}")
    root = Path(chain_dir).resolve()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise NodeUsageError(f"{root} already exists and is not an empty directory; choose another --dir")
    root.mkdir(parents=True, exist_ok=True)

    node_keys = [PrivateKey.generate() for _ in range(nodes)]
    account_keys = [PrivateKey.generate() for _ in range(funded_accounts)]
    validators = tuple("0x" + k.address.hex() for k in node_keys)
    accounts = tuple(TestAccount("0x" + k.address.hex(), k.hex()) for k in account_keys)
    genesis = Genesis.from_json({
        "chain_id": chain_id,
        "timestamp": int(time.time() * 1000),
        "quota_limit": quota_limit,
        "validators": list(validators),
        "alloc": {a.address: {"balance": str(funded_balance)} for a in accounts},
    })
    ports = free_ports(nodes) if not jsonrpc_port else [jsonrpc_port + i for i in range(nodes)]

    (root / "accounts.json").write_text(json.dumps(
        [{"address": a.address, "private_key": a.private_key} for a in accounts], indent=2) + "\n")
    os.chmod(root / "accounts.json", 0o600)
    genesis.save(root / "genesis.json")

    node_dirs: list[Path] = []
    for i, key in enumerate(node_keys):
        nd = root / str(i)
        nd.mkdir()
        for sub in NODE_DIRS:
            (nd / sub).mkdir()
        (nd / "privkey").write_text(key.hex() + "\n")
        os.chmod(nd / "privkey", 0o600)
        genesis.save(nd / "genesis.json")
        cfg = NodeConfig(node_dir=nd, amqp_url=make_amqp_url(vhost_name(root, i), host=amqp_host, port=amqp_port),
                         node_id=i, services=tuple(services), block_interval=float(block_interval),
                         jsonrpc_port=ports[i], extra=dict(node_options or {}))
        write_node_config(cfg)
        node_dirs.append(nd)
    log.info("created chain %s: %d node(s), %d funded account(s), genesis %s",
             root, nodes, funded_accounts, genesis.hash.hex())
    return ChainInfo(root, tuple(node_dirs), validators, accounts, "0x" + genesis.hash.hex(), tuple(ports))


def load_accounts(node_or_chain_dir: str | Path) -> list[TestAccount]:
    """The funded test accounts of a chain (``accounts.json`` of the chain dir, or of a node dir's parent)."""
    d = Path(node_or_chain_dir).resolve()
    for candidate in (d / "accounts.json", d.parent / "accounts.json"):
        if candidate.is_file():
            try:
                raw = json.loads(candidate.read_text())
                return [TestAccount(str(a["address"]), str(a["private_key"])) for a in raw]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"invalid accounts file {candidate}: {exc}") from exc
    raise ConfigError(f"no accounts.json in {d} or {d.parent}")


# ---------------------------------------------------------- node paths/config


def node_config(node_dir: str | Path) -> NodeConfig:
    """Load a node directory's configuration; :class:`NodeError` with a clear message if it is not one."""
    nd = Path(node_dir)
    if not nd.is_dir():
        raise NodeUsageError(f"node directory {nd} does not exist")
    if not (nd / "node.json").is_file():
        raise NodeUsageError(f"{nd} is not a node directory (no node.json); create one with: pycita create")
    try:
        return load_node_config(nd)
    except ConfigError as exc:
        raise NodeUsageError(str(exc)) from exc


def _socket_path(cfg: NodeConfig) -> Path:
    sock = cfg.run_dir / "supervisor.sock"
    if len(str(sock)) <= _MAX_SOCKET_PATH:
        return sock
    digest = hashlib.sha256(str(cfg.node_dir).encode()).hexdigest()[:16]
    return Path("/tmp") / f"pycita-supervisor-{digest}.sock"


def supervisord_conf_path(node_dir: str | Path) -> Path:
    return Path(node_dir).resolve() / "run" / "supervisord.conf"


def log_path(node_dir: str | Path, service: str) -> Path:
    """The log file of ``service`` (or ``supervisord``) of a node."""
    return Path(node_dir).resolve() / "logs" / f"{service}.log"


def _bin(name: str) -> str:
    """An executable from the venv of the running interpreter, else from PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise NodeError(f"{name} not found next to {sys.executable} nor on PATH; run scripts/setup.sh")
    return found


def _q(value: str | Path) -> str:
    """Escape a value for supervisord's ``%(name)s`` expansion."""
    return str(value).replace("%", "%%")


def render_supervisord_conf(cfg: NodeConfig) -> str:
    """The ``run/supervisord.conf`` of a node: one ``[program:<service>]`` per service."""
    nd = cfg.node_dir
    env = f'PYTHONUNBUFFERED="1",PYTHONPATH="{_q(REPO_ROOT)}",PYCITA_NODE_DIR="{_q(nd)}"'
    lines = [
        "; written by pycita start; regenerated on every start",
        "[unix_http_server]",
        f"file={_q(_socket_path(cfg))}",
        "chmod=0700",
        "",
        "[supervisord]",
        f"logfile={_q(cfg.log_dir / 'supervisord.log')}",
        "logfile_maxbytes=10MB",
        "logfile_backups=3",
        "loglevel=info",
        f"pidfile={_q(cfg.run_dir / 'supervisord.pid')}",
        f"directory={_q(nd)}",
        f"childlogdir={_q(cfg.log_dir)}",
        f"identifier=pycita-{_q(vhost_of(cfg.amqp_url))}",
        "nodaemon=false",
        "minfds=1024",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{_q(_socket_path(cfg))}",
        "",
    ]
    for name in cfg.services:
        lines += [
            f"[program:{name}]",
            f"command={_q(sys.executable)} -m services.{name} --node-dir {_q(nd)}",
            f"directory={_q(nd)}",
            "autostart=true",
            "autorestart=true",
            "startsecs=1",
            "startretries=5",
            "stopsignal=TERM",
            "stopwaitsecs=15",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={_q(cfg.log_dir / (name + '.log'))}",
            "stdout_logfile_maxbytes=50MB",
            "stdout_logfile_backups=3",
            f"environment={env}",
            "",
        ]
    return "\n".join(lines)


# ------------------------------------------------------------- supervisord


def _rpc(cfg: NodeConfig) -> Any:
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, f"unix://{_socket_path(cfg)}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def _supervisord_pid(cfg: NodeConfig) -> int | None:
    """The pid of this node's live supervisord, or None."""
    pidfile = cfg.run_dir / "supervisord.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    try:  # guard against a recycled pid
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid
    return pid if b"supervisord" in cmdline else None


def _process_info(cfg: NodeConfig) -> dict[str, dict[str, Any]] | None:
    """supervisord's view of every program, or None when supervisord does not answer."""
    try:
        infos = _rpc(cfg).supervisor.getAllProcessInfo()
    except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError) as exc:
        log.debug("supervisord of %s does not answer: %r", cfg.node_dir, exc)
        return None
    return {str(i["name"]): i for i in infos}


def is_running(node_dir: str | Path) -> bool:
    """Whether the node's supervisord is running (its services may still be starting)."""
    cfg = node_config(node_dir)
    return _supervisord_pid(cfg) is not None or _process_info(cfg) is not None


def _wait_pids_gone(pids: Iterable[int], deadline: float) -> list[int]:
    left = [p for p in pids if p > 0]
    while left and time.monotonic() < deadline:
        still = []
        for pid in left:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            except PermissionError:
                pass
            if _is_zombie(pid):
                continue
            still.append(pid)
        left = still
        if left:
            time.sleep(0.1)
    return left


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


# ------------------------------------------------------------------ the bus


def _amqp_errors() -> tuple[type[BaseException], ...]:
    import pika.exceptions

    return (pika.exceptions.AMQPError, OSError, AssertionError)


_AMQP_ERRORS = _amqp_errors()
"""What pika raises when the broker or the connection goes away (pika asserts on some broken states)."""


class _Pinger:
    """A short-lived AMQP client that pings the node's services and collects their pongs.

    It consumes from an exclusive (per-connection) queue bound to ``*.pong`` so
    that concurrent ``pycita status`` calls never steal each other's answers.
    """

    def __init__(self, amqp_url: str, connect_timeout: float = 5.0) -> None:
        import pika

        params = pika.URLParameters(amqp_url)
        params.socket_timeout = connect_timeout
        params.blocked_connection_timeout = connect_timeout
        params.connection_attempts = 1
        params.heartbeat = 30
        try:
            self._conn = pika.BlockingConnection(params)
        except _AMQP_ERRORS as exc:
            raise BusUnavailable(
                f"cannot connect to RabbitMQ vhost {vhost_of(amqp_url)!r} at {params.host}:{params.port}: "
                f"{exc!r} (is the broker running? scripts/ensure_rabbitmq.sh starts it)") from exc
        from pycita.mq import EXCHANGE

        self._exchange = EXCHANGE
        try:
            self._chan = self._conn.channel()
            # Same arguments as pycita.mq.Bus declares, so it is idempotent either way.
            self._chan.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)
            # Exclusive: deleted with the connection. Not auto_delete: that would delete it when
            # collect() cancels its consumer, and the next ping round would find no queue.
            result = self._chan.queue_declare("", exclusive=True)
            self._queue = result.method.queue
            self._chan.queue_bind(self._queue, EXCHANGE, routing_key="*.pong")
        except _AMQP_ERRORS as exc:
            self.close()
            raise BusUnavailable(f"cannot set up a reply queue in vhost {vhost_of(amqp_url)!r}: {exc!r}") from exc
        self.answers: dict[str, dict[str, Any]] = {}
        self._nonce = ""

    def ping(self) -> None:
        import pika

        from pycita.messages import pack, pb

        self._nonce = uuid.uuid4().hex
        key, body = pack("cli", "ping", pb.Ping(nonce=self._nonce), request_id=self._nonce)
        try:
            self._chan.basic_publish(self._exchange, key, body, pika.BasicProperties(
                delivery_mode=1, expiration=str(PING_EXPIRATION_MS), app_id="cli"))
        except _AMQP_ERRORS as exc:
            raise BusUnavailable(f"lost the connection to RabbitMQ while pinging: {exc!r}") from exc

    def collect(self, expected: Iterable[str], seconds: float) -> None:
        """Read pongs for up to ``seconds``, returning early once every ``expected`` service answered."""

        wanted = set(expected)
        deadline = time.monotonic() + seconds
        if wanted <= self.answers.keys() or seconds <= 0:
            return
        try:
            for method, _props, body in self._chan.consume(self._queue, auto_ack=True, inactivity_timeout=0.1):
                if method is not None:
                    self._record(method.routing_key, body)
                if wanted <= self.answers.keys() or time.monotonic() >= deadline:
                    break
            self._chan.cancel()
        except _AMQP_ERRORS as exc:
            raise BusUnavailable(f"lost the connection to RabbitMQ while waiting for pongs: {exc!r}") from exc

    def _record(self, routing_key: str, body: bytes) -> None:
        from pycita.errors import DecodeError
        from pycita.messages import content_of, unpack

        try:
            pong = content_of(unpack(routing_key, body))
        except DecodeError as exc:
            log.debug("ignoring %s: %s", routing_key, exc)
            return
        if pong.nonce != self._nonce:
            return  # an answer to an older ping
        try:
            status = json.loads(pong.status_json) if pong.status_json else {}
        except ValueError:
            status = {"raw": pong.status_json}
        self.answers[pong.service or routing_key.partition(".")[0]] = (
            status if isinstance(status, dict) else {"value": status})

    def close(self) -> None:
        try:
            self._conn.close()
        except Exception as exc:  # closing a broken connection: nothing left to do
            log.debug("closing pinger connection: %r", exc)


def ping_services(node_dir: str | Path, timeout: float = 3.0,
                  services: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Ping the node's services once; return ``{service: status}`` of those answering within ``timeout``."""
    cfg = node_config(node_dir)
    pinger = _Pinger(cfg.amqp_url)
    try:
        pinger.ping()
        pinger.collect(services if services is not None else cfg.services, timeout)
        return dict(pinger.answers)
    finally:
        pinger.close()


def _is_ready(status: dict[str, Any]) -> bool:
    """A service is ready unless its pong status says ``"ready": false`` (e.g. auth during start-up).

    A service in flight mode counts as ready: it is up and waits for snapshot_tool (a node restarted
    while ``run/restore.journal`` says ``"commit"`` starts in flight mode, and auth only becomes ready
    once the re-run tool sent End), so ``pycita start`` must not wait for it.
    """
    return status.get("ready", True) is not False or status.get("flight_mode") is True


def wait_answering(node_dir: str | Path, timeout: float = DEFAULT_START_TIMEOUT) -> dict[str, dict[str, Any]]:
    """Ping until every service of the node answers and none reports ``"ready": false``;
    raise :class:`ServicesNotAnswering` after ``timeout``.

    Re-pings every half second: a service's queue exists only once it has
    connected, and a ping published before that reaches nobody.
    """
    cfg = node_config(node_dir)
    deadline = time.monotonic() + timeout
    answered: dict[str, dict[str, Any]] = {}
    ready: set[str] = set()
    pinger: _Pinger | None = None
    try:
        while True:
            if pinger is None:
                try:
                    pinger = _Pinger(cfg.amqp_url)
                except BusUnavailable:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.5)
                    continue
            pinger.answers = {}
            try:
                pinger.ping()
                pinger.collect(cfg.services, min(0.5, max(0.0, deadline - time.monotonic())))
                answered.update(pinger.answers)
                for name, st in pinger.answers.items():
                    if _is_ready(st):
                        ready.add(name)
                    else:
                        ready.discard(name)
            except BusUnavailable as exc:
                log.info("node %s: %s; reconnecting", cfg.node_dir, exc)
                pinger.close()
                pinger = None
                time.sleep(0.2)
            missing = [s for s in cfg.services if s not in ready]
            if not missing:
                return answered
            if time.monotonic() >= deadline:
                info = _process_info(cfg) or {}
                states = {n: str(info[n].get("statename", "?")) for n in missing if n in info}
                for n in missing:
                    if n in answered:
                        states[n] = f"{states.get(n, '?')}, answers but reports ready=false"
                raise ServicesNotAnswering(missing, {n: log_path(cfg.node_dir, n) for n in missing},
                                           timeout, states)
    finally:
        if pinger is not None:
            pinger.close()


# ---------------------------------------------------------------- lifecycle


def start(node_dir: str | Path, timeout: float = DEFAULT_START_TIMEOUT) -> dict[str, dict[str, Any]]:
    """Start the node's services under supervisord; return once every service answers a ping.

    Idempotent: on a running node it only waits for the services. Creates the
    node's vhost if needed. Returns each service's pong status. Raises
    :class:`ServicesNotAnswering` (the node is left running, so its logs and
    ``pycita status`` can be inspected; ``stop`` it) or :class:`NodeError`.
    """
    from pycita.rabbit import BrokerError, ensure_vhost

    cfg = node_config(node_dir)
    nd = cfg.node_dir
    for sub in NODE_DIRS:
        (nd / sub).mkdir(exist_ok=True)
    for svc in cfg.services:
        cfg.service_data(svc).mkdir(parents=True, exist_ok=True)
    vhost = vhost_of(cfg.amqp_url)
    try:
        ensure_vhost(vhost)
    except BrokerError as exc:
        raise NodeError(f"cannot prepare RabbitMQ vhost {vhost!r}: {exc}") from exc

    if _supervisord_pid(cfg) is not None:
        log.info("node %s: supervisord already running; waiting for its services", nd)
        _rpc_call(cfg, "startAllProcesses")
    else:
        conf = supervisord_conf_path(nd)
        conf.write_text(render_supervisord_conf(cfg))
        sock = _socket_path(cfg)
        if sock.exists():
            sock.unlink()  # stale socket of a killed supervisord
        cmd = [_bin("supervisord"), "-c", str(conf)]
        log.info("node %s: starting %s", nd, " ".join(cmd))
        try:
            proc = subprocess.run(cmd, cwd=nd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=30, check=False)
        except subprocess.TimeoutExpired as exc:
            raise NodeError(f"supervisord of {nd} did not daemonize within 30 s") from exc
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip()
            raise NodeError(f"supervisord of {nd} failed to start (exit {proc.returncode}): {detail}; "
                            f"see {log_path(nd, 'supervisord')}")
    answers = wait_answering(nd, timeout)
    log.info("node %s: all %d services answer", nd, len(answers))
    return answers


def _rpc_call(cfg: NodeConfig, method: str, *args: Any) -> Any:
    try:
        return getattr(_rpc(cfg).supervisor, method)(*args)
    except xmlrpc.client.Fault as exc:
        raise NodeError(f"supervisord of {cfg.node_dir}: {method}{args}: {exc.faultString}") from exc
    except (OSError, xmlrpc.client.ProtocolError) as exc:
        raise NodeNotRunning(cfg.node_dir) from exc


def stop(node_dir: str | Path, timeout: float = DEFAULT_STOP_TIMEOUT) -> bool:
    """Stop every service and supervisord; wait until all of them have exited.

    Returns False if the node was not running. Raises :class:`NodeError` if
    processes are still alive after ``timeout`` seconds.
    """
    cfg = node_config(node_dir)
    pid = _supervisord_pid(cfg)
    info = _process_info(cfg)
    if pid is None and info is None:
        return False
    child_pids = [int(i.get("pid") or 0) for i in (info or {}).values()]
    if info is not None:
        try:
            _rpc(cfg).supervisor.shutdown()
        except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError) as exc:
            log.warning("node %s: supervisord shutdown call failed (%r); sending SIGTERM", cfg.node_dir, exc)
            if pid is not None:
                _kill(pid, _signal.SIGTERM)
    elif pid is not None:
        _kill(pid, _signal.SIGTERM)
    deadline = time.monotonic() + timeout
    left = _wait_pids_gone([*(p for p in [pid] if p), *child_pids], deadline)
    if left:
        raise NodeError(f"node {cfg.node_dir}: processes {left} still alive {timeout:.0f} s after shutdown; "
                        f"see {log_path(cfg.node_dir, 'supervisord')}")
    log.info("node %s stopped", cfg.node_dir)
    return True


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def kill_service(node_dir: str | Path, service: str, sig: int | str = _signal.SIGKILL) -> int:
    """Send ``sig`` to a service's process through supervisord (which restarts it); return the old pid."""
    cfg = node_config(node_dir)
    if service not in cfg.services:
        raise NodeUsageError(f"node {cfg.node_dir} has no service {service!r} (it runs {', '.join(cfg.services)})")
    info = _rpc_call(cfg, "getProcessInfo", service)
    pid = int(info.get("pid") or 0)
    if not pid:
        raise NodeError(f"service {service} of {cfg.node_dir} has no process (state {info.get('statename')})")
    name = _signal.Signals(sig).name.removeprefix("SIG") if isinstance(sig, int) else str(sig).removeprefix("SIG")
    _rpc_call(cfg, "signalProcess", service, name)
    log.info("node %s: sent SIG%s to %s (pid %d)", cfg.node_dir, name, service, pid)
    return pid


def status(node_dir: str | Path, ping_timeout: float = 3.0) -> dict[str, Any]:
    """The node's state: ``height``, ``block_hash``, ``state_root`` (from the chain's pong) and per service
    ``state``, ``pid``, ``uptime``, ``answering`` and its pong ``status``.

    A stopped node gives ``running: False`` and null chain fields (not an error).
    """
    cfg = node_config(node_dir)
    info = _process_info(cfg)
    running = info is not None
    answers: dict[str, dict[str, Any]] = {}
    bus_error: str | None = None
    if running:
        try:
            answers = ping_services(cfg.node_dir, ping_timeout)
        except BusUnavailable as exc:
            bus_error = str(exc)
    services: dict[str, dict[str, Any]] = {}
    for name in cfg.services:
        pi = (info or {}).get(name, {})
        state = str(pi.get("statename", "STOPPED" if not running else "UNKNOWN"))
        pid = int(pi.get("pid") or 0) or None
        uptime = (int(pi["now"]) - int(pi["start"])) if state == "RUNNING" and pi.get("start") else None
        services[name] = {
            "state": state,
            "pid": pid,
            "uptime": uptime,
            "answering": name in answers,
            "ready": name in answers and _is_ready(answers[name]),
            "status": answers.get(name),
            "log": str(log_path(cfg.node_dir, name)),
        }
        if pi.get("spawnerr"):
            services[name]["spawnerr"] = pi["spawnerr"]
    chain = answers.get("chain") or {}
    out: dict[str, Any] = {
        "node_dir": str(cfg.node_dir),
        "running": running,
        "height": chain.get("height"),
        "block_hash": chain.get("block_hash"),
        "state_root": chain.get("state_root"),
        "vhost": vhost_of(cfg.amqp_url),
        "jsonrpc": f"http://{cfg.jsonrpc_host}:{cfg.jsonrpc_port}",
        "services": services,
    }
    if bus_error:
        out["bus_error"] = bus_error
    return out


def clean(node_dir: str | Path) -> None:
    """Wipe a stopped node's data, logs, run files and snapshots; delete and recreate its vhost.

    Keeps ``privkey``, ``genesis.json``, ``node.json`` and ``.env``.
    """
    from pycita.rabbit import BrokerError, delete_vhost, ensure_vhost

    cfg = node_config(node_dir)
    if is_running(cfg.node_dir):
        raise NodeRunning(cfg.node_dir, "cleaning it")
    for sub in NODE_DIRS:
        path = cfg.node_dir / sub
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)
        path.mkdir()
    sock = _socket_path(cfg)
    if sock.exists() and not str(sock).startswith(str(cfg.node_dir)):
        sock.unlink()
    vhost = vhost_of(cfg.amqp_url)
    try:
        delete_vhost(vhost)
        ensure_vhost(vhost)
    except BrokerError as exc:
        raise NodeError(f"cleaned {cfg.node_dir} but could not reset RabbitMQ vhost {vhost!r}: {exc}") from exc
    log.info("node %s cleaned", cfg.node_dir)


# --------------------------------------------------------------------- logs


def _tail(path: Path, lines: int) -> list[str]:
    if lines <= 0:
        return []
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            block = 8192
            data = b""
            pos = end
            while pos > 0 and data.count(b"\n") <= lines:
                step = min(block, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
    except OSError:
        return []
    return data.decode(errors="replace").splitlines()[-lines:]


def log_files(node_dir: str | Path, service: str | None = None) -> list[Path]:
    """The log files ``logs`` shows: one service's, or supervisord's plus every service's."""
    cfg = node_config(node_dir)
    if service is not None:
        if service not in cfg.services and service != "supervisord":
            raise NodeUsageError(f"unknown service {service!r}; node {cfg.node_dir} runs "
                            f"{', '.join(cfg.services)} (and supervisord)")
        return [log_path(cfg.node_dir, service)]
    return [log_path(cfg.node_dir, "supervisord"), *(log_path(cfg.node_dir, s) for s in cfg.services)]


def logs(node_dir: str | Path, service: str | None = None, follow: bool = False, lines: int = 50,
         poll_interval: float = 0.25) -> Iterator[str]:
    """Yield the last ``lines`` lines of the node's logs (each file headed ``==> path <==`` when several),
    then, with ``follow``, new lines as they are written (until the caller stops iterating)."""
    files = log_files(node_dir, service)
    several = len(files) > 1
    for path in files:
        if several:
            yield f"==> {path} <=="
        yield from _tail(path, lines)
    if not follow:
        return
    offsets = {p: (p.stat().st_size if p.exists() else 0) for p in files}
    partial: dict[Path, str] = {p: "" for p in files}
    last_header: Path | None = files[-1]
    while True:
        got = False
        for path in files:
            try:
                size = path.stat().st_size
            except OSError:
                continue
            if size < offsets[path]:
                offsets[path] = 0  # rotated or truncated
            if size == offsets[path]:
                continue
            with path.open("rb") as f:
                f.seek(offsets[path])
                chunk = f.read(size - offsets[path])
            offsets[path] = size
            text = partial[path] + chunk.decode(errors="replace")
            *complete, partial[path] = text.split("\n")
            if complete and several and last_header != path:
                yield f"==> {path} <=="
                last_header = path
            for line in complete:
                got = True
                yield line
        if not got:
            time.sleep(poll_interval)

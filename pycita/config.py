"""Node directory layout and configuration.

A node directory (made by ``pycita create``)::

    <node>/
      .env            AMQP_URL=amqp://guest:guest@127.0.0.1:5672/<vhost>
      node.json       this node's configuration (see NodeConfig)
      genesis.json    the chain's genesis (identical on every node)
      privkey         the validator/node key, hex
      data/<service>/ each service's LevelDB
      logs/           one log per service, plus supervisord.log
      snapshots/      snapshot files (snapshot_tool -f names are relative to it)
      run/            supervisord socket and pid, restore journal, locks

``node.json`` keys: ``node_id``, ``services`` (the services this node runs;
snapshot_tool waits for exactly these), ``block_interval`` (seconds),
``jsonrpc_host``, ``jsonrpc_port``, ``pool_size``, ``max_block_txs``,
``snapshot_phase_timeout`` (seconds), ``history_blocks`` (how many newest
blocks keep bodies/receipts in snapshots).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycita.crypto import PrivateKey
from pycita.errors import ConfigError

DEFAULT_SERVICES = ("auth", "consensus", "chain", "executor", "jsonrpc")


def read_env(path: Path) -> dict[str, str]:
    """Parse a ``KEY=VALUE`` .env file (``#`` comments, optional quotes)."""
    out: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"{path}:{lineno}: expected KEY=VALUE, got {line!r}")
        out[key.strip()] = value.strip().strip("'\"")
    return out


@dataclass(frozen=True)
class NodeConfig:
    node_dir: Path
    amqp_url: str
    node_id: int = 0
    services: tuple[str, ...] = DEFAULT_SERVICES
    block_interval: float = 3.0
    jsonrpc_host: str = "127.0.0.1"
    jsonrpc_port: int = 1337
    pool_size: int = 200_000
    max_block_txs: int = 5_000
    snapshot_phase_timeout: float = 120.0
    history_blocks: int = 100
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.node_dir / "data"

    @property
    def log_dir(self) -> Path:
        return self.node_dir / "logs"

    @property
    def snapshot_dir(self) -> Path:
        return self.node_dir / "snapshots"

    @property
    def run_dir(self) -> Path:
        return self.node_dir / "run"

    @property
    def genesis_path(self) -> Path:
        return self.node_dir / "genesis.json"

    def service_data(self, service: str) -> Path:
        return self.data_dir / service

    def private_key(self) -> PrivateKey:
        path = self.node_dir / "privkey"
        try:
            return PrivateKey.from_hex(path.read_text().strip())
        except OSError as exc:
            raise ConfigError(f"cannot read node key {path}: {exc}") from exc


_KNOWN = {f for f in NodeConfig.__dataclass_fields__ if f not in ("node_dir", "amqp_url", "extra")}


def load_node_config(node_dir: str | Path) -> NodeConfig:
    """Read ``.env`` and ``node.json`` of a node directory."""
    nd = Path(node_dir).resolve()
    if not nd.is_dir():
        raise ConfigError(f"node directory {nd} does not exist")
    env = read_env(nd / ".env")
    if "AMQP_URL" not in env:
        raise ConfigError(f"{nd / '.env'} has no AMQP_URL")
    try:
        raw = json.loads((nd / "node.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {nd / 'node.json'}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{nd / 'node.json'} must hold a JSON object")
    kwargs: dict[str, Any] = {k: v for k, v in raw.items() if k in _KNOWN}
    if "services" in kwargs:
        kwargs["services"] = tuple(kwargs["services"])
    extra = {k: v for k, v in raw.items() if k not in _KNOWN}
    try:
        return NodeConfig(node_dir=nd, amqp_url=env["AMQP_URL"], extra=extra, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"{nd / 'node.json'}: {exc}") from exc


def write_node_config(cfg: NodeConfig) -> None:
    data = {k: getattr(cfg, k) for k in sorted(_KNOWN)}
    data["services"] = list(cfg.services)
    data.update(cfg.extra)
    (cfg.node_dir / "node.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    (cfg.node_dir / ".env").write_text(f"AMQP_URL={cfg.amqp_url}\n")

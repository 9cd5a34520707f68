"""The ``pycita`` command: create a chain, run and inspect its nodes, send traffic.

Exit codes: 0 success; 1 the operation failed (e.g. services did not answer,
the broker is down); 2 a usage error (bad arguments, missing node directory,
node not running, ...), reported as one line without a traceback; 3 from
``status`` when the node is not running.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from pycita import node as nodelib
from pycita.errors import ConfigError, PycitaError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
AUTH_REUSED_NONCE = 5
"""Auth's TxResult code for a (sender, nonce) pair already in the pool or the recent window."""
REUSED_NONCE_RETRIES = 200


class UsageError(PycitaError):
    """Raised when command-line arguments are invalid in a way argparse cannot check."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``pycita: error: ...``) with exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ------------------------------------------------------------------ helpers


def _out(text: str = "") -> None:
    print(text, flush=True)


def _node_dir(path: str) -> Path:
    """Validate a node-directory argument early, so every command reports it the same way."""
    nodelib.node_config(path)
    return Path(path)


def _short(value: Any, n: int = 18) -> str:
    if value is None:
        return "-"
    text = str(value)
    return text if len(text) <= n else text[:n] + "…"


def _uptime(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    h, rest = divmod(int(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, Path):
        return str(value)
    return value


# ----------------------------------------------------------------- commands


def cmd_create(args: argparse.Namespace) -> int:
    if args.nodes < 1:
        raise UsageError(f"--nodes must be at least 1, got {args.nodes}")
    if args.block_interval <= 0:
        raise UsageError(f"--block-interval must be positive, got {args.block_interval}")
    if args.jsonrpc_port is not None and not 0 <= args.jsonrpc_port <= 65535 - args.nodes:
        raise UsageError(f"--jsonrpc-port out of range: {args.jsonrpc_port}")
    info = nodelib.create_chain(args.dir, args.nodes, args.block_interval, chain_id=args.chain_id,
                                funded_accounts=args.accounts, jsonrpc_port=args.jsonrpc_port)
    _out(f"created chain {info.chain_dir} (genesis {info.genesis_hash})")
    for nd, port, validator in zip(info.node_dirs, info.jsonrpc_ports, info.validators, strict=True):
        _out(f"  node {nd}  validator {validator}  jsonrpc 127.0.0.1:{port}")
    _out(f"  {len(info.accounts)} funded accounts in {info.chain_dir / 'accounts.json'}")
    _out(f"start a node with: pycita start {info.node_dirs[0]}")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    nd = _node_dir(args.node_dir)
    answers = nodelib.start(nd, timeout=args.timeout)
    height = (answers.get("chain") or {}).get("height")
    _out(f"node {nd} started: {len(answers)} services answer"
         + (f", height {height}" if height is not None else ""))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    nd = _node_dir(args.node_dir)
    if nodelib.stop(nd, timeout=args.timeout):
        _out(f"node {nd} stopped")
    else:
        _out(f"node {nd} was not running")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    nd = _node_dir(args.node_dir)
    st = nodelib.status(nd, ping_timeout=args.ping_timeout)
    all_answer = all(s["answering"] for s in st["services"].values())
    code = 0 if st["running"] and all_answer else (EXIT_NOT_RUNNING if not st["running"] else EXIT_FAILED)
    if args.json:
        _out(json.dumps(_jsonable(st), indent=2, sort_keys=True))
        return code
    if not st["running"]:
        _out(f"node {nd}: not running")
        return code
    _out(f"node {nd}: running  (vhost {st['vhost']}, jsonrpc {st['jsonrpc']})")
    _out(f"  height      {st['height'] if st['height'] is not None else '-'}")
    _out(f"  block hash  {st['block_hash'] or '-'}")
    _out(f"  state root  {st['state_root'] or '-'}")
    if st.get("bus_error"):
        _out(f"  bus         {st['bus_error']}")
    _out(f"  {'SERVICE':<11}{'STATE':<10}{'PID':>8}  {'UPTIME':>9}  BUS")
    for name, svc in st["services"].items():
        bus = "answering" if svc["answering"] else f"silent (see {svc['log']})"
        _out(f"  {name:<11}{svc['state']:<10}{svc['pid'] or '-':>8}  {_uptime(svc['uptime']):>9}  {bus}")
    return code


def cmd_logs(args: argparse.Namespace) -> int:
    nd = _node_dir(args.node_dir)
    if args.lines < 0:
        raise UsageError(f"--lines must not be negative, got {args.lines}")
    try:
        for line in nodelib.logs(nd, args.service, follow=args.follow, lines=args.lines):
            _out(line)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    nd = _node_dir(args.node_dir)
    nodelib.clean(nd)
    _out(f"node {nd} cleaned (data, logs, snapshots and message queues wiped; keys and genesis kept)")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    nd = _node_dir(args.node_dir)
    if args.tps <= 0 or args.duration <= 0:
        raise UsageError("--tps and --duration must be positive")
    if not nodelib.is_running(nd):
        raise nodelib.NodeNotRunning(nd.resolve())
    from pycita.load import run_load

    report = run_load(nd, args.tps, args.duration, progress=not args.json)
    if args.json:
        _out(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        _out(report.summary())
    return 0 if report.pending == 0 else EXIT_FAILED


# --------------------------------------------------------------------- send


def cmd_generate(args: argparse.Namespace) -> int:
    from pycita.generate import GenerateParams, generate

    nd = _node_dir(args.node_dir)
    params = GenerateParams(accounts=args.accounts, blocks=args.blocks, contracts=args.contracts, slots=args.slots,
                            txs_per_block=args.txs_per_block, seed=args.seed, verify_senders=args.verify_senders)
    every = max(1, args.blocks // 20)

    def progress(height: int, done: int, txs: int) -> None:
        if not args.json and (done % every == 0 or done == args.blocks):
            print(f"  block {height} ({done}/{args.blocks}), {txs} txs", file=sys.stderr, flush=True)

    report = generate(nd, params, progress)
    if args.json:
        _out(json.dumps(report.to_json()))
    else:
        _out(f"generated {report.blocks} blocks ({report.transactions} txs) in {report.seconds:.1f} s: "
             f"height {report.height} {report.block_hash} state {report.state_root}")
    return 0


def _parse_int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _parse_hex(text: str) -> bytes:
    try:
        return bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not hex bytes: {text!r}") from None


def _parse_address(text: str) -> bytes:
    raw = _parse_hex(text)
    if len(raw) != 20:
        raise argparse.ArgumentTypeError(f"not a 20-byte address: {text!r}")
    return raw


def _parse_pair(text: str) -> tuple[bytes, bytes]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (hex), got {text!r}")
    return _parse_hex(key), _parse_hex(value)


def _sender_key(args: argparse.Namespace, nd: Path) -> Any:
    from pycita.crypto import PrivateKey

    if args.key:
        try:
            return PrivateKey.from_hex(args.key)
        except Exception as exc:
            raise UsageError(f"--key is not a valid private key: {exc}") from exc
    accounts = nodelib.load_accounts(nd)
    if not 0 <= args.account < len(accounts):
        raise UsageError(f"--account {args.account} out of range: the chain has {len(accounts)} funded accounts")
    return accounts[args.account].key()


def cmd_send(args: argparse.Namespace) -> int:
    nd = _node_dir(args.node_dir)
    cfg = nodelib.node_config(nd)
    if not 1 <= args.valid_blocks <= 100:
        raise UsageError(f"--valid-blocks must be within 1..100, got {args.valid_blocks}")
    if not nodelib.is_running(nd):
        raise nodelib.NodeNotRunning(cfg.node_dir)
    from pycita import client as clientlib
    from pycita.genesis import Genesis

    key = _sender_key(args, nd)
    chain_id = Genesis.load(cfg.genesis_path).chain_id
    cl = clientlib.Client(f"http://{cfg.jsonrpc_host}:{cfg.jsonrpc_port}")
    wallet = clientlib.Wallet.from_node(cl, key, chain_id)
    if args.nonce is not None:
        wallet.nonces.set(wallet.address, args.nonce)
    until = cl.block_number() + args.valid_blocks
    kind = args.kind
    for _attempt in range(REUSED_NONCE_RETRIES):
        if kind == "transfer":
            tx = wallet.transfer(args.to, args.value, until, args.quota)
        elif kind == "deploy":
            tx = wallet.deploy(args.code, until, args.quota)
        elif kind == "abi":
            tx = wallet.set_abi(args.to, args.abi.encode(), until, args.quota)
        else:
            tx = wallet.store(args.to, list(args.set), until, args.quota)
        try:
            tx_hash = cl.send_raw_transaction(tx)
            break
        except clientlib.RpcError as exc:
            # The counter starts at the executed-transaction count; txs of this sender still in
            # the pool (or sent with explicit nonces) hold the next ones: take the next free nonce.
            if exc.auth_code != AUTH_REUSED_NONCE or args.nonce is not None:
                raise
    else:
        raise UsageError(f"no free nonce for 0x{wallet.address.hex()} after {REUSED_NONCE_RETRIES} tries; "
                         "pass --nonce")
    tx_hex = tx_hash if isinstance(tx_hash, str) else "0x" + bytes(tx_hash).hex()
    _out(f"sent {kind} transaction {tx_hex} from 0x{wallet.address.hex()} (nonce {tx.nonce})")
    if args.no_wait:
        return 0
    receipt = cl.wait_for_receipt(tx_hex, timeout=args.timeout)
    _out(json.dumps(_jsonable(receipt), indent=2, sort_keys=True))
    ok = str((receipt or {}).get("status", "0x1")) in ("1", "0x1", "True")
    return 0 if ok else EXIT_FAILED


# ------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pycita", description="Create and run pycita chains and nodes.",
                epilog="Exit codes: 0 ok, 1 failed, 2 usage error, 3 status of a stopped node.")
    p.add_argument("-v", "--verbose", action="store_true", help="log library progress to stderr")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    c = sub.add_parser("create", help="create a chain directory with N nodes (keys, genesis, node dirs)")
    c.add_argument("--nodes", type=int, required=True, help="number of nodes (validators)")
    c.add_argument("--dir", default="test-chain", help="chain directory to create (default: test-chain)")
    c.add_argument("--block-interval", type=float, default=3.0, metavar="SECONDS",
                   help="seconds between blocks (default: 3)")
    c.add_argument("--jsonrpc-port", type=int, default=nodelib.DEFAULT_JSONRPC_PORT, metavar="PORT",
                   help="JSON-RPC port of node 0; node i gets PORT+i; 0 picks free ports (default: 1337)")
    c.add_argument("--accounts", type=int, default=nodelib.DEFAULT_FUNDED_ACCOUNTS,
                   help="funded test accounts in the genesis (default: 10)")
    c.add_argument("--chain-id", type=int, default=nodelib.DEFAULT_CHAIN_ID)
    c.set_defaults(func=cmd_create)

    def node_cmd(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("node_dir", help="node directory, e.g. test-chain/0")
        return sp

    s = node_cmd("start", "start a node; returns once every service answers on the bus")
    s.add_argument("--timeout", type=float, default=nodelib.DEFAULT_START_TIMEOUT, metavar="SECONDS")
    s.set_defaults(func=cmd_start)
    s = node_cmd("stop", "stop a node and wait for its processes to exit")
    s.add_argument("--timeout", type=float, default=nodelib.DEFAULT_STOP_TIMEOUT, metavar="SECONDS")
    s.set_defaults(func=cmd_stop)
    s = node_cmd("status", "show height, block hash, state root and every service's state")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--ping-timeout", type=float, default=3.0, metavar="SECONDS")
    s.set_defaults(func=cmd_status)
    s = node_cmd("logs", "show (and follow) a node's logs")
    s.add_argument("--service", help="one service (or supervisord); default: all")
    s.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    s.add_argument("-n", "--lines", type=int, default=50, help="last lines of each file (default: 50)")
    s.set_defaults(func=cmd_logs)
    s = node_cmd("clean", "wipe a stopped node's data, logs and queues; keep keys and genesis")
    s.set_defaults(func=cmd_clean)
    s = node_cmd("load", "send mixed signed traffic to a running node")
    s.add_argument("--tps", type=float, required=True, help="transactions per second")
    s.add_argument("--duration", type=float, required=True, metavar="SECONDS")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(func=cmd_load)

    g = sub.add_parser("generate", help="append a generated, valid chain (signed blocks, state) to a stopped node")
    g.add_argument("node_dir", help="node directory made by pycita create, e.g. test-chain/0")
    g.add_argument("--accounts", type=int, default=1000, help="new accounts, one TRANSFER each (default: 1000)")
    g.add_argument("--blocks", type=int, default=100, help="blocks to append (default: 100)")
    g.add_argument("--contracts", type=int, default=0, help="contracts to deploy, each with an ABI (default: 0)")
    g.add_argument("--slots", type=int, default=0, help="storage slots written over the contracts (default: 0)")
    g.add_argument("--txs-per-block", type=int, default=5000, help="most transactions a block (default: 5000)")
    g.add_argument("--seed", type=int, default=1, help="seed of the generated addresses and slots (default: 1)")
    g.add_argument("--verify-senders", action="store_true", help="recover every signature while executing")
    g.add_argument("--json", action="store_true", help="print the report as JSON")
    g.set_defaults(func=cmd_generate)

    send = sub.add_parser("send", help="send one signed transaction through a node's JSON-RPC")
    kinds = send.add_subparsers(dest="kind", required=True, metavar="KIND", parser_class=_Parser)

    def send_cmd(kind: str, help_: str) -> argparse.ArgumentParser:
        sp = kinds.add_parser(kind, help=help_)
        sp.add_argument("node_dir", help="node directory, e.g. test-chain/0")
        who = sp.add_mutually_exclusive_group()
        who.add_argument("--account", type=int, default=0,
                         help="index of the funded account in accounts.json that signs (default: 0)")
        who.add_argument("--key", help="hex private key that signs instead")
        sp.add_argument("--no-wait", action="store_true", help="do not wait for the receipt")
        sp.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS", help="receipt wait")
        sp.add_argument("--nonce", type=_parse_int, default=None,
                        help="transaction nonce (default: the first free one from the sender's tx count)")
        sp.add_argument("--quota", type=_parse_int, default=None, help="quota (default: the intrinsic quota)")
        sp.add_argument("--valid-blocks", type=int, default=50, metavar="N",
                        help="valid until the current height + N (1..100, default: 50)")
        sp.set_defaults(func=cmd_send)
        return sp

    t = send_cmd("transfer", "transfer value to an address")
    t.add_argument("--to", type=_parse_address, required=True)
    t.add_argument("--value", type=_parse_int, required=True)
    d = send_cmd("deploy", "deploy a contract (code as hex)")
    d.add_argument("--code", type=_parse_hex, required=True)
    a = send_cmd("abi", "set the ABI of a contract you deployed")
    a.add_argument("--to", type=_parse_address, required=True, help="contract address")
    a.add_argument("--abi", required=True, help="ABI text")
    st = send_cmd("store", "write storage pairs into a contract")
    st.add_argument("--to", type=_parse_address, required=True, help="contract address")
    st.add_argument("--set", type=_parse_pair, action="append", required=True, metavar="KEY=VALUE",
                    help="hex key and value; repeatable; an empty value deletes the key")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    started = time.monotonic()
    try:
        code: int = args.func(args)
    except (UsageError, nodelib.NodeUsageError, ConfigError) as exc:
        print(f"pycita: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PycitaError as exc:
        print(f"pycita: {args.command} failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"pycita: {args.command} interrupted after {time.monotonic() - started:.1f} s", file=sys.stderr)
        return 130
    return code


def run() -> None:
    """Console-script entry point: ``pycita ...`` as a process.

    Only here (not in :func:`main`, which tests call in-process) is SIGPIPE
    restored to its default, so that ``pycita logs | head`` ends quietly; in a
    long-lived process it would turn a write to any closed socket into death.
    """
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())


if __name__ == "__main__":
    run()

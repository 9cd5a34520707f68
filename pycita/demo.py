"""``python -m pycita.demo`` (run by ``scripts/demo.sh``): a one-node chain producing blocks under load.

Creates a chain (1 s blocks) in a fresh directory, starts the node, deploys a
demo contract (with an ABI and storage) from a funded account the load does not
use, runs mixed traffic (:func:`pycita.load.run_load`, 100 tx/s for 20 s by
default) from the other funded accounts, and meanwhile prints every new
block's height, hash and state root and, every few blocks, a few accounts
(balance, nonce, code size, ABI size, storage slots). Then it snapshots the
source at a height below its tip while it keeps producing blocks, stops it,
restores the snapshot into a fresh node of the same chain (which takes over
the validator key), shows both nodes' block hash, state root and accounts at
that height side by side, and shows the restored node producing new blocks
with valid proofs. Stops everything at the end.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pycita import node as nodelib
from pycita.client import Client, RpcError, Wallet, from_hex
from pycita.errors import PycitaError
from pycita.genesis import Genesis


def _p(text: str = "") -> None:
    print(text, flush=True)


class _DemoContract:
    """A contract the demo deploys and writes known storage keys into, so its slots can be counted."""

    def __init__(self, client: Client, wallet: Wallet) -> None:
        self.client = client
        self.wallet = wallet
        self.address: bytes | None = None
        self.keys: list[bytes] = []
        self.pending: list[bytes] = []

    def setup(self, timeout: float) -> None:
        until = self.client.block_number() + 50
        code = bytes(range(64)) * 2
        h = self.client.send_raw_transaction(self.wallet.deploy(code, until))
        receipt = self.client.wait_for_receipt(h, timeout=timeout)
        if not receipt.get("contractAddress"):
            raise PycitaError(f"demo contract deploy failed: {receipt}")
        self.address = from_hex(receipt["contractAddress"])
        abi = b'[{"name":"greet","type":"function","inputs":[{"type":"string"}]}]'
        self.client.send_raw_transaction(self.wallet.set_abi(self.address, abi, until))
        self.store_more(3)

    def store_more(self, count: int = 1) -> None:
        """Write ``count`` new storage slots (without waiting for them)."""
        if self.address is None:
            return
        pairs = []
        for _ in range(count):
            key = len(self.keys).to_bytes(32, "big")
            self.keys.append(key)
            pairs.append((key, f"value {len(self.keys)}".encode()))
        until = self.client.block_number() + 50
        try:
            self.client.send_raw_transaction(self.wallet.store(self.address, pairs, until))
        except RpcError as exc:
            _p(f"  (demo store rejected: {exc})")

    def slots(self) -> int:
        assert self.address is not None
        calls = [("getStorageAt", ["0x" + self.address.hex(), "0x" + k.hex(), "latest"]) for k in self.keys]
        values = self.client.batch(calls) if calls else []
        return sum(1 for v in values if isinstance(v, str) and from_hex(v))


def _account_row(client: Client, label: str, address: bytes, slots: str = "-") -> str:
    addr = "0x" + address.hex()
    balance = client.get_balance(addr)
    nonce = client.get_transaction_count(addr)
    code = len(client.get_code(addr))
    abi = len(client.get_abi(addr))
    return f"    {label:<16} {addr}  balance {balance:<32} nonce {nonce:<6} code {code:<5} abi {abi:<5} slots {slots}"


def _print_accounts(client: Client, funded: list[nodelib.TestAccount], contract: _DemoContract,
                    load_contract: bytes | None) -> None:
    _p("  accounts:")
    for i, acc in enumerate(funded[:2]):
        _p(_account_row(client, f"funded #{i}", from_hex(acc.address)))
    if contract.address is not None:
        _p(_account_row(client, "demo contract", contract.address, str(contract.slots())))
    if load_contract is not None:
        _p(_account_row(client, "load contract", load_contract, "?"))


def _find_load_contract(client: Client, height: int, skip: bytes | None) -> bytes | None:
    """A contract deployed by the load in block ``height`` (from its receipts), if any."""
    block = client.get_block(height, False)
    for tx_hash in (block or {}).get("transactions", [])[:50]:
        receipt = client.get_receipt(tx_hash)
        addr = (receipt or {}).get("contractAddress")
        if addr and from_hex(addr) != skip:
            return from_hex(addr)
    return None


def run_demo(directory: Path, tps: float, duration: float, block_interval: float, keep: bool) -> int:
    from pycita.load import run_load

    chain_dir = directory / "demo-chain"
    _p(f"== creating a one-node chain in {chain_dir} (block interval {block_interval} s)")
    info = nodelib.create_chain(chain_dir, 1, block_interval, jsonrpc_port=None)
    nd = info.node_dirs[0]
    _p(f"   genesis {info.genesis_hash}, {len(info.accounts)} funded accounts")
    _p(f"== starting {nd} (auth, consensus, chain, executor, jsonrpc under supervisord)")
    t0 = time.monotonic()
    try:
        nodelib.start(nd)
        _p(f"   all services answer after {time.monotonic() - t0:.1f} s")
        cfg = nodelib.node_config(nd)
        client = Client(f"http://{cfg.jsonrpc_host}:{cfg.jsonrpc_port}")
        chain_id = Genesis.load(cfg.genesis_path).chain_id
        funded = list(info.accounts)
        demo_account = funded[-1]
        wallet = Wallet.from_node(client, demo_account.key(), chain_id)
        contract = _DemoContract(client, wallet)
        _p("== deploying the demo contract, setting its ABI and 3 storage slots")
        contract.setup(timeout=max(30.0, 20 * block_interval))
        _p(f"   demo contract at 0x{contract.address.hex() if contract.address else '?'}")

        _p(f"== running mixed load: {tps:g} tx/s for {duration:g} s "
           "(new accounts, transfers, deploys, ABIs, storage writes)")
        result: dict[str, Any] = {}

        def _load() -> None:
            try:
                result["report"] = run_load(nd, tps, duration, progress=False,
                                            keys=[a.key() for a in funded[:-1]])
            except BaseException as exc:  # reported by the main thread
                result["error"] = exc

        loader = threading.Thread(target=_load, name="demo-load", daemon=True)
        loader.start()
        last = -1
        load_contract: bytes | None = None
        while loader.is_alive() or last < 0:
            st = nodelib.status(nd, ping_timeout=2.0)
            height = st["height"]
            if height is not None and height != last:
                silent = [n for n, s in st["services"].items() if not s["answering"]]
                _p(f"  block {height:>5}  hash {st['block_hash']}  state root {st['state_root']}"
                   + (f"  (silent: {', '.join(silent)})" if silent else ""))
                if load_contract is None and height > 0:
                    load_contract = _find_load_contract(client, height, contract.address)
                if height % 5 == 0:
                    contract.store_more()
                    _print_accounts(client, funded, contract, load_contract)
                last = height
            time.sleep(min(0.5, block_interval / 2))
        loader.join()
        if "error" in result:
            raise result["error"]
        report = result["report"]
        _p(f"== load done: {report.summary()}")
        time.sleep(block_interval * 2)
        st = nodelib.status(nd)
        _p(f"== source node: height {st['height']}  hash {st['block_hash']}  state root {st['state_root']}")
        _print_accounts(client, funded, contract, load_contract)
        if report.pending != 0:
            return 1
        restored = _snapshot_and_restore(nd, chain_dir, client, funded, contract, load_contract, block_interval)
        return 0 if restored else 1
    finally:
        _p(f"== stopping {nd}")
        nodelib.stop(nd)
        restored_dir = chain_dir / "restored"
        if (restored_dir / "node.json").exists():
            _p(f"== stopping {restored_dir}")
            nodelib.stop(restored_dir)
            if not keep:
                try:
                    from pycita import rabbit

                    rabbit.delete_vhost(nodelib.vhost_of(nodelib.node_config(restored_dir).amqp_url))
                except PycitaError as exc:
                    _p(f"   could not delete the vhost: {exc}")
        if keep:
            _p(f"   kept {chain_dir} (logs in {nd / 'logs'})")
        else:
            from pycita.testtools.cleanup import CleanupPolicy, clean_chain_dir

            try:
                from pycita import rabbit

                rabbit.delete_vhost(nodelib.vhost_of(nodelib.node_config(nd).amqp_url))
            except PycitaError as exc:
                _p(f"   could not delete the vhost: {exc}")
            clean_chain_dir(chain_dir, CleanupPolicy.REMOVE_EVERYTHING)


def _snapshot_and_restore(nd: Path, chain_dir: Path, client: Client, funded: list[nodelib.TestAccount],
                          contract: _DemoContract, load_contract: bytes | None, block_interval: float) -> bool:
    """Snapshot the running source at a height below its tip, restore it into a fresh node, compare."""
    import subprocess

    from pycita.proof import verify_proof
    from pycita.testtools import Node
    from pycita.testtools.snapshot import Snapshot

    height = max(1, client.block_number() - 2)
    _p(f"== snapshot_tool -m snapshot -e {height} -f demo   (in {nd}; the node keeps producing blocks)")
    proc = subprocess.run([sys.executable, "-m", "tools.snapshot_tool", "-m", "snapshot", "-e", str(height),
                           "-f", "demo", "-q"], cwd=nd, stdin=subprocess.DEVNULL, text=True,
                          capture_output=True, check=False)
    for line in (proc.stdout + proc.stderr).splitlines():
        _p(f"   {line}")
    if proc.returncode != 0:
        return False
    snapshot = Snapshot.from_prefix(nd / "snapshots" / "demo")
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 1024:.1f} KiB" for p in (snapshot.chain_file, snapshot.executor_file))
    _p(f"   files: {sizes}; tip of the source is now {client.block_number()}")
    source_block = client.get_block(height, False) or {}
    source_rows = {}
    for label, addr in _demo_accounts(funded, contract, load_contract):
        source_rows[label] = _account_at(client, addr, height)
    _p("== stopping the source node: the fresh node of the same chain takes over its validator key")
    nodelib.stop(nd)
    target = Node(nd).fresh_copy(chain_dir / "restored")
    _p(f"== restoring into the fresh node {target.directory}: Begin -> Restore (verify + stage) -> Clear -> End")
    t0 = time.monotonic()
    target.run(load_snapshot_from=snapshot)
    _p(f"   restored and running after {time.monotonic() - t0:.1f} s")
    rclient = target.api
    restored_block = rclient.get_block(height, False) or {}
    _p(f"== block {height}, side by side")
    _p(f"   {'':<14} {'source':<68} restored")
    same = True
    for key in ("hash", "stateRoot", "receiptsRoot"):
        a, b = source_block.get(key), restored_block.get(key)
        same &= a == b
        _p(f"   {key:<14} {a!s:<68} {b}  {'same' if a == b else 'DIFFERENT'}")
    for label, addr in _demo_accounts(funded, contract, load_contract):
        a, b = source_rows[label], _account_at(rclient, addr, height)
        same &= a == b
        _p(f"   {label:<14} {a:<68} {b}  {'same' if a == b else 'DIFFERENT'}")
    _p("== the restored node produces new blocks (each header carries the quorum proof of its parent)")
    genesis = Genesis.load(target.config.genesis_path)
    start = rclient.block_number()
    target.wait_for_block(start + 3, timeout=max(30.0, 20 * block_interval))
    for h in range(max(height + 1, start - 1), rclient.block_number() + 1):
        blk = rclient.get_block(h, False) or {}
        parent = rclient.get_block(h - 1, False) or {}
        proof_ok = "-"
        if h - 1 > 0 and blk.get("proof"):
            verify_proof(bytes.fromhex(blk["proof"][2:]), chain_id=genesis.chain_id, height=h - 1,
                         block_hash=bytes.fromhex(parent["hash"][2:]), validators=genesis.validators)
            proof_ok = f"proof of {h - 1} valid"
        _p(f"   block {h:>5}  hash {blk.get('hash')}  state root {blk.get('stateRoot')}  {proof_ok}")
    _p("== " + ("restored node matches the source at the snapshot height and goes on producing blocks"
               if same else "MISMATCH between source and restored node"))
    return same


def _demo_accounts(funded: list[nodelib.TestAccount], contract: _DemoContract,
                   load_contract: bytes | None) -> list[tuple[str, bytes]]:
    rows = [(f"funded #{i}", from_hex(acc.address)) for i, acc in enumerate(funded[:2])]
    if contract.address is not None:
        rows.append(("demo contract", contract.address))
    if load_contract is not None:
        rows.append(("load contract", load_contract))
    return rows


def _account_at(client: Client, addr: bytes, height: int) -> str:
    """A compact view of an account at ``height``: balance, nonce, code/abi sizes."""
    try:
        return (f"bal {client.get_balance(addr, height)} nonce {client.get_transaction_count(addr, height)} "
                f"code {len(client.get_code(addr, height))} abi {len(client.get_abi(addr, height))}")
    except RpcError as exc:
        return f"error {exc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pycita-demo", description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--dir", type=Path, default=None, help="parent directory of demo-chain (default: a temp dir)")
    parser.add_argument("--tps", type=float, default=100.0)
    parser.add_argument("--duration", type=float, default=20.0, metavar="SECONDS")
    parser.add_argument("--block-interval", type=float, default=1.0, metavar="SECONDS")
    parser.add_argument("--keep", action="store_true", help="keep the chain directory afterwards")
    args = parser.parse_args(argv)
    own_dir = args.dir is None
    directory = args.dir.resolve() if args.dir else Path(tempfile.mkdtemp(prefix="pycita-demo-"))
    try:
        rc = run_demo(directory, args.tps, args.duration, args.block_interval, args.keep)
        if own_dir and not args.keep:
            directory.rmdir()
        return rc
    except PycitaError as exc:
        print(f"pycita-demo: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pycita-demo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

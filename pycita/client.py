"""Python client of a pycita node: JSON-RPC calls, transaction builders and nonce helpers.

::

    from pycita.client import Client, Wallet
    c = Client("http://127.0.0.1:1337")
    w = Wallet(key, chain_id=1, next_nonce=c.get_transaction_count(key.address))
    tx = w.transfer(to=b"\\x11" * 20, value=5, valid_until_block=c.block_number() + 50)
    receipt = c.wait_for_receipt(c.send_raw_transaction(tx), timeout=30)

Methods mirror the JSON-RPC API of docs/ARCHITECTURE.md: quantities come
back as ``int``, data (code, ABI, storage values, hashes) as ``bytes``,
blocks, transactions and receipts as the node's JSON objects (``dict``).
Addresses and hashes may be passed as ``bytes`` or ``0x``-hex strings.

A failed call raises :class:`RpcError` carrying the JSON-RPC ``code``,
``message`` and ``data`` (an auth rejection is code -32003 with
``data = {"code": <auth code>, "reason": ...}``); a node that cannot be
reached raises :class:`RpcTransportError`.

The builders (:func:`transfer`, :func:`deploy`, :func:`set_abi`,
:func:`store`) sign and return a :class:`pycita.types.SignedTransaction`;
``quota`` defaults to the intrinsic quota (:func:`pycita.quota.intrinsic_quota`).
"""

from __future__ import annotations

import http.client
import itertools
import json
import threading
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Any

import coincurve
import rlp

from pycita.crypto import Address, Hash32, PrivateKey
from pycita.errors import PycitaError
from pycita.quota import intrinsic_quota
from pycita.types import Action, SignedTransaction, Transaction

__all__ = [
    "Client", "RpcError", "RpcTransportError", "WaitTimeout", "NonceAllocator", "Wallet",
    "build_transaction", "transfer", "deploy", "set_abi", "store", "encode_store_data",
    "intrinsic_quota", "to_hex", "from_hex", "quantity",
]

DEFAULT_TIMEOUT = 30.0


class RpcError(PycitaError):
    """Raised when a JSON-RPC call returns an error object (``code``, ``message``, ``data``)."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"JSON-RPC error {code}: {message}" + (f" ({data})" if data is not None else ""))
        self.code = code
        self.message = message
        self.data = data

    @property
    def auth_code(self) -> int | None:
        """The auth rejection code (docs/ARCHITECTURE.md) when auth refused a transaction."""
        if isinstance(self.data, dict) and isinstance(self.data.get("code"), int):
            return int(self.data["code"])
        return None


class RpcTransportError(RpcError):
    """Raised when the node cannot be reached or answers something that is not JSON-RPC."""

    def __init__(self, message: str) -> None:
        super().__init__(-32098, message)


class WaitTimeout(PycitaError):
    """Raised when a receipt or a block height does not appear within the given timeout."""


# ----------------------------------------------------------------- encoding

def to_hex(data: bytes) -> str:
    return "0x" + bytes(data).hex()


def quantity(n: int) -> str:
    return hex(int(n))


def from_hex(text: str | bytes) -> bytes:
    """Bytes of a ``0x``-hex string (bytes are passed through)."""
    if isinstance(text, bytes | bytearray):
        return bytes(text)
    return bytes.fromhex(text.removeprefix("0x").removeprefix("0X"))


def _block_param(block: int | str) -> str:
    if isinstance(block, int):
        return quantity(block)
    return block


def _hex_param(value: str | bytes) -> str:
    return to_hex(value) if isinstance(value, bytes | bytearray) else value


# ----------------------------------------------------------------- client

class Client:
    """A JSON-RPC 2.0 client over HTTP (one keep-alive connection per thread)."""

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        parsed = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise RpcTransportError(f"unsupported JSON-RPC url {url!r} (expected http://host:port)")
        self.url = url
        self.host = parsed.hostname
        self.port = parsed.port or 80
        self.path = parsed.path or "/"
        self.timeout = timeout
        self._local = threading.local()
        self._ids = itertools.count(1)

    # -- transport ---------------------------------------------------------
    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def post(self, payload: Any) -> Any:
        """POST one JSON document and return the decoded JSON answer."""
        body = json.dumps(payload).encode()
        last: Exception | None = None
        for _attempt in range(2):  # a kept-alive connection may have been closed by the server
            conn = self._conn()
            try:
                conn.request("POST", self.path, body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                last = exc
                continue
            if resp.getheader("Connection", "").lower() == "close":
                self.close()
            try:
                return json.loads(data)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise RpcTransportError(f"HTTP {resp.status} from {self.url} is not JSON: {data[:200]!r}") from exc
        raise RpcTransportError(f"cannot reach {self.url}: {last}")

    def call(self, method: str, *params: Any) -> Any:
        """Call one method; returns its result or raises :class:`RpcError`."""
        reply = self.post({"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)})
        return _result_of(reply)

    def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Call several methods in one HTTP request; each item is a result or an :class:`RpcError`."""
        if not calls:
            return []
        first = next(self._ids)
        ids = list(range(first, first + len(calls)))
        self._ids = itertools.count(first + len(calls))
        reply = self.post([{"jsonrpc": "2.0", "id": i, "method": m, "params": list(p)}
                           for i, (m, p) in zip(ids, calls, strict=True)])
        if isinstance(reply, dict):  # the whole batch was refused
            err = _error_of(reply)
            return [err] * len(calls)
        if not isinstance(reply, list):
            raise RpcTransportError(f"batch answer is not a list: {str(reply)[:200]}")
        by_id = {item.get("id"): item for item in reply if isinstance(item, dict)}
        out: list[Any] = []
        for i in ids:
            item = by_id.get(i)
            if item is None:
                out.append(RpcError(-32603, f"no answer for batch item {i}"))
            elif "error" in item:
                out.append(_error_of(item))
            else:
                out.append(item.get("result"))
        return out

    # -- chain -------------------------------------------------------------
    def block_number(self) -> int:
        return int(self.call("blockNumber"), 16)

    def get_block(self, number: int | str = "latest", full: bool = False) -> dict[str, Any] | None:
        return self.call("getBlockByNumber", _block_param(number), full)  # type: ignore[no-any-return]

    def get_block_by_hash(self, block_hash: str | bytes, full: bool = False) -> dict[str, Any] | None:
        return self.call("getBlockByHash", _hex_param(block_hash), full)  # type: ignore[no-any-return]

    def get_transaction(self, tx_hash: str | bytes) -> dict[str, Any] | None:
        return self.call("getTransaction", _hex_param(tx_hash))  # type: ignore[no-any-return]

    def get_receipt(self, tx_hash: str | bytes) -> dict[str, Any] | None:
        return self.call("getTransactionReceipt", _hex_param(tx_hash))  # type: ignore[no-any-return]

    get_transaction_receipt = get_receipt

    # -- state -------------------------------------------------------------
    def get_balance(self, address: str | bytes, block: int | str = "latest") -> int:
        return int(self.call("getBalance", _hex_param(address), _block_param(block)), 16)

    def get_transaction_count(self, address: str | bytes, block: int | str = "latest") -> int:
        return int(self.call("getTransactionCount", _hex_param(address), _block_param(block)), 16)

    def get_code(self, address: str | bytes, block: int | str = "latest") -> bytes:
        return from_hex(self.call("getCode", _hex_param(address), _block_param(block)))

    def get_abi(self, address: str | bytes, block: int | str = "latest") -> bytes:
        return from_hex(self.call("getAbi", _hex_param(address), _block_param(block)))

    def get_storage_at(self, address: str | bytes, key: str | bytes, block: int | str = "latest") -> bytes:
        return from_hex(self.call("getStorageAt", _hex_param(address), _hex_param(key), _block_param(block)))

    # -- transactions ------------------------------------------------------
    def send_raw_transaction(self, tx: SignedTransaction | bytes) -> bytes:
        """Send one signed transaction; returns its hash or raises :class:`RpcError`."""
        raw = tx if isinstance(tx, bytes) else rlp.encode(tx)
        return from_hex(self.call("sendRawTransaction", to_hex(raw)))

    def send_raw_transactions(self, txs: Iterable[SignedTransaction | bytes]) -> list[bytes | RpcError]:
        """Send many transactions in one JSON-RPC batch; each item is a tx hash or an :class:`RpcError`."""
        calls = [("sendRawTransaction", [to_hex(tx if isinstance(tx, bytes) else rlp.encode(tx))]) for tx in txs]
        return [r if isinstance(r, RpcError) else from_hex(r) for r in self.batch(calls)]

    # -- waiting -----------------------------------------------------------
    def wait_for_receipt(self, tx_hash: str | bytes, timeout: float = 30.0, poll: float = 0.2) -> dict[str, Any]:
        """Poll until the receipt of ``tx_hash`` exists; raises :class:`WaitTimeout`."""
        deadline = time.monotonic() + timeout
        while True:
            receipt = self.get_receipt(tx_hash)
            if receipt is not None:
                return receipt
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"no receipt for {_hex_param(tx_hash)} within {timeout:.1f} s")
            time.sleep(poll)

    def wait_for_block(self, number: int, timeout: float = 30.0, poll: float = 0.2) -> int:
        """Poll until the chain reaches height ``number``; returns the height seen."""
        deadline = time.monotonic() + timeout
        while True:
            height = self.block_number()
            if height >= number:
                return height
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"chain at {height}, not at {number} within {timeout:.1f} s")
            time.sleep(poll)


def _error_of(reply: dict[str, Any]) -> RpcError:
    err = reply.get("error")
    if not isinstance(err, dict):
        return RpcTransportError(f"malformed JSON-RPC answer: {str(reply)[:200]}")
    code = err.get("code")
    return RpcError(code if isinstance(code, int) else -32603, str(err.get("message", "")), err.get("data"))


def _result_of(reply: Any) -> Any:
    if not isinstance(reply, dict):
        raise RpcTransportError(f"malformed JSON-RPC answer: {str(reply)[:200]}")
    if "error" in reply:
        raise _error_of(reply)
    if "result" not in reply:
        raise RpcTransportError(f"JSON-RPC answer has neither result nor error: {str(reply)[:200]}")
    return reply["result"]


# ----------------------------------------------------------------- builders

def _signer(key: PrivateKey | coincurve.PrivateKey) -> coincurve.PrivateKey:
    return key if isinstance(key, coincurve.PrivateKey) else coincurve.PrivateKey(key.secret)


def build_transaction(key: PrivateKey | coincurve.PrivateKey, *, action: int, to: bytes, value: int, data: bytes,
                      nonce: int, valid_until_block: int, chain_id: int,
                      quota: int | None = None) -> SignedTransaction:
    """Sign a transaction (see the tx model in :mod:`pycita.types`); ``quota`` defaults to the intrinsic one."""
    if quota is None:
        quota = intrinsic_quota(action, data)
    tx = Transaction(chain_id, nonce, valid_until_block, quota, bytes(to), value, int(action), bytes(data))
    sig = bytes(_signer(key).sign_recoverable(tx.signing_hash, hasher=None))
    return SignedTransaction(chain_id, nonce, valid_until_block, quota, bytes(to), value, int(action),
                             bytes(data), sig)


def transfer(key: PrivateKey | coincurve.PrivateKey, to: bytes, value: int, nonce: int, valid_until_block: int,
             chain_id: int, quota: int | None = None) -> SignedTransaction:
    """A signed TRANSFER of ``value`` to ``to`` (creates the account when new)."""
    return build_transaction(key, action=Action.TRANSFER, to=to, value=value, data=b"", nonce=nonce,
                             valid_until_block=valid_until_block, chain_id=chain_id, quota=quota)


def deploy(key: PrivateKey | coincurve.PrivateKey, code: bytes, nonce: int, valid_until_block: int, chain_id: int,
           quota: int | None = None) -> SignedTransaction:
    """A signed DEPLOY of ``code``; the contract address is in the receipt (``contractAddress``)."""
    return build_transaction(key, action=Action.DEPLOY, to=b"", value=0, data=code, nonce=nonce,
                             valid_until_block=valid_until_block, chain_id=chain_id, quota=quota)


def set_abi(key: PrivateKey | coincurve.PrivateKey, contract: bytes, abi: bytes, nonce: int,
            valid_until_block: int, chain_id: int, quota: int | None = None) -> SignedTransaction:
    """A signed SET_ABI for ``contract`` (only its deployer may set it)."""
    return build_transaction(key, action=Action.SET_ABI, to=contract, value=0, data=abi, nonce=nonce,
                             valid_until_block=valid_until_block, chain_id=chain_id, quota=quota)


def encode_store_data(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The data of a STORE: RLP ``[[key, value], ...]`` (an empty value deletes the key)."""
    return rlp.encode([[bytes(k), bytes(v)] for k, v in pairs])


def store(key: PrivateKey | coincurve.PrivateKey, contract: bytes, pairs: Iterable[tuple[bytes, bytes]],
          nonce: int, valid_until_block: int, chain_id: int, quota: int | None = None) -> SignedTransaction:
    """A signed STORE writing ``pairs`` into the storage of ``contract``."""
    return build_transaction(key, action=Action.STORE, to=contract, value=0, data=encode_store_data(pairs),
                             nonce=nonce, valid_until_block=valid_until_block, chain_id=chain_id, quota=quota)


# ----------------------------------------------------------------- nonces

class NonceAllocator:
    """Hands out per-sender transaction nonces (a counter per address), thread-safe.

    A (sender, nonce) pair may be used once within the replay window; start a
    sender's counter above anything it used recently (e.g. its
    ``getTransactionCount`` when all its earlier transactions were executed).
    """

    def __init__(self) -> None:
        self._next: dict[bytes, int] = {}
        self._lock = threading.Lock()

    def set(self, sender: bytes, next_nonce: int) -> None:
        with self._lock:
            self._next[bytes(sender)] = next_nonce

    def peek(self, sender: bytes) -> int:
        with self._lock:
            return self._next.get(bytes(sender), 0)

    def allocate(self, sender: bytes, count: int = 1) -> int:
        """Reserve ``count`` consecutive nonces of ``sender``; returns the first."""
        with self._lock:
            first = self._next.get(bytes(sender), 0)
            self._next[bytes(sender)] = first + count
            return first


class Wallet:
    """One key with its chain id and nonce counter; its builders fill in the nonce."""

    def __init__(self, key: PrivateKey, chain_id: int, next_nonce: int = 0,
                 nonces: NonceAllocator | None = None) -> None:
        self.key = key
        self.address: Address = key.address
        self.chain_id = chain_id
        self.nonces = nonces if nonces is not None else NonceAllocator()
        if nonces is None or next_nonce:
            self.nonces.set(self.address, next_nonce)
        self._signer = coincurve.PrivateKey(key.secret)

    @classmethod
    def from_node(cls, client: Client, key: PrivateKey, chain_id: int,
                  nonces: NonceAllocator | None = None) -> Wallet:
        """A wallet whose counter starts at the account's executed-transaction count."""
        return cls(key, chain_id, client.get_transaction_count(key.address), nonces)

    def next_nonce(self) -> int:
        return self.nonces.allocate(self.address)

    def transfer(self, to: bytes, value: int, valid_until_block: int, quota: int | None = None) -> SignedTransaction:
        return transfer(self._signer, to, value, self.next_nonce(), valid_until_block, self.chain_id, quota)

    def deploy(self, code: bytes, valid_until_block: int, quota: int | None = None) -> SignedTransaction:
        return deploy(self._signer, code, self.next_nonce(), valid_until_block, self.chain_id, quota)

    def set_abi(self, contract: bytes, abi: bytes, valid_until_block: int,
                quota: int | None = None) -> SignedTransaction:
        return set_abi(self._signer, contract, abi, self.next_nonce(), valid_until_block, self.chain_id, quota)

    def store(self, contract: bytes, pairs: Iterable[tuple[bytes, bytes]], valid_until_block: int,
              quota: int | None = None) -> SignedTransaction:
        return store(self._signer, contract, pairs, self.next_nonce(), valid_until_block, self.chain_id, quota)


def tx_hash_hex(tx: SignedTransaction) -> str:
    return to_hex(Hash32(tx.hash))

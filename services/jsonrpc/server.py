"""The JSON-RPC 2.0 gateway: request validation, dispatch to a backend, and the HTTP server.

:class:`JsonRpcApp` turns an HTTP body into an HTTP answer and knows nothing of
the bus: it validates each call, normalises its params and hands them to a
:class:`Backend` (the service's bus adapter, or a fake in tests):

* ``sendRawTransaction`` calls of one HTTP request (a single call or a whole
  batch) go to auth together, as one ``new_tx_batch``;
* chain methods (``blockNumber``, ``getBlockByNumber``, ``getBlockByHash``,
  ``getTransaction``, ``getTransactionReceipt``) become ``chain_query``;
* state methods (``getBalance``, ``getTransactionCount``, ``getCode``,
  ``getAbi``, ``getStorageAt``) become ``executor_query``.

Queries are forwarded as ``RpcRequest{method, params_json}`` with the
JSON-RPC method name and the *normalised* params: hashes, addresses and data
as lowercase ``0x``-hex, block numbers as ``0x``-hex quantities or
``"latest"`` (``"pending"`` is read as ``"latest"``, ``"earliest"`` as
``"0x0"``), optional params filled in with their defaults (``full`` false,
block ``"latest"``). The answer's ``result_json`` is returned as the result;
a non-zero ``code`` becomes a JSON-RPC error with that code.

Error codes: -32700 parse error, -32600 invalid request (also for a body over
8 MiB, answered with HTTP 413), -32601 method not found, -32602 invalid params
(the message names the param), -32603 internal error, -32000 timeout waiting
for a service, -32003 transaction rejected (``data = {"code": <auth code>,
"reason": ...}``; also in flight mode, with code 9 NOT_READY).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from pycita.crypto import keccak
from pycita.errors import PycitaError

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024
DRAIN_LIMIT = 64 * 1024 * 1024  # an oversized body up to this size is read and dropped before the 413
DEFAULT_TIMEOUT = 10.0

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
TIMEOUT = -32000
TX_REJECTED = -32003
NOT_READY = 9  # auth code (docs/ARCHITECTURE.md)


class JsonRpcFailure(PycitaError):
    """Raised when a JSON-RPC call fails; carries the error object's ``code``, ``message`` and ``data``."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


@dataclass(frozen=True)
class TxOutcome:
    """Auth's verdict on one transaction."""

    ok: bool
    code: int
    error: str = ""
    tx_hash: bytes = b""


@dataclass(frozen=True)
class Query:
    """One query for the chain or the executor."""

    target: str  # "chain" | "executor"
    method: str
    params: list[Any]


class Backend(Protocol):
    """What the gateway needs from the node (the bus adapter in service.py, fakes in tests)."""

    @property
    def flight_mode(self) -> bool: ...

    def send_txs(self, raw_txs: list[bytes], timeout: float) -> list[TxOutcome]:
        """Submit transactions to auth as one batch; raises JsonRpcFailure on timeout."""
        ...

    def query_many(self, queries: list[Query], timeout: float) -> list[Any]:
        """Run queries concurrently; each item is the decoded result or a JsonRpcFailure."""
        ...

    def health(self) -> dict[str, Any]: ...


# ------------------------------------------------------------------ params

_HEX = re.compile(r"^0x[0-9a-fA-F]*$")
_QTY = re.compile(r"^0x[0-9a-fA-F]+$")


def _bad(name: str, why: str) -> JsonRpcFailure:
    return JsonRpcFailure(INVALID_PARAMS, f"invalid params: '{name}' {why}")


def p_block(name: str, value: Any) -> str:
    if isinstance(value, bool):
        raise _bad(name, "must be a block number or \"latest\"")
    if isinstance(value, int):
        if value < 0:
            raise _bad(name, "must not be negative")
        return hex(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("latest", "pending"):
            return "latest"
        if v == "earliest":
            return "0x0"
        if _QTY.match(v) and len(v) <= 18:
            return hex(int(v, 16))
        if v.isdigit() and len(v) <= 20:
            return hex(int(v))
    raise _bad(name, "must be a 0x-hex block number, \"latest\" or \"earliest\"")


def _p_hex(name: str, value: Any, length: int | None, what: str) -> str:
    if not isinstance(value, str) or not _HEX.match(value) or len(value) % 2:
        raise _bad(name, f"must be {what} as 0x-hex")
    if length is not None and len(value) != 2 + 2 * length:
        raise _bad(name, f"must be {what} ({length} bytes as 0x-hex)")
    return value.lower()


def p_hash(name: str, value: Any) -> str:
    return _p_hex(name, value, 32, "a 32-byte hash")


def p_address(name: str, value: Any) -> str:
    return _p_hex(name, value, 20, "a 20-byte address")


def p_data(name: str, value: Any) -> str:
    return _p_hex(name, value, None, "data")


def p_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad(name, "must be true or false")
    return value


ParamSpec = tuple[str, Callable[[str, Any], Any], Any]  # (name, validator, default or _REQUIRED)
_REQUIRED = object()


@dataclass(frozen=True)
class MethodSpec:
    target: str  # "auth" | "chain" | "executor"
    params: tuple[ParamSpec, ...]


_ADDR_BLOCK = (("address", p_address, _REQUIRED), ("block", p_block, "latest"))

METHODS: dict[str, MethodSpec] = {
    "blockNumber": MethodSpec("chain", ()),
    "getBlockByNumber": MethodSpec("chain", (("number", p_block, _REQUIRED), ("full", p_bool, False))),
    "getBlockByHash": MethodSpec("chain", (("hash", p_hash, _REQUIRED), ("full", p_bool, False))),
    "getTransaction": MethodSpec("chain", (("hash", p_hash, _REQUIRED),)),
    "getTransactionReceipt": MethodSpec("chain", (("hash", p_hash, _REQUIRED),)),
    "getBalance": MethodSpec("executor", _ADDR_BLOCK),
    "getTransactionCount": MethodSpec("executor", _ADDR_BLOCK),
    "getCode": MethodSpec("executor", _ADDR_BLOCK),
    "getAbi": MethodSpec("executor", _ADDR_BLOCK),
    "getStorageAt": MethodSpec("executor", (("address", p_address, _REQUIRED), ("key", p_data, _REQUIRED),
                                            ("block", p_block, "latest"))),
    "sendRawTransaction": MethodSpec("auth", (("data", p_data, _REQUIRED),)),
}


def normalise_params(method: str, spec: MethodSpec, params: Any) -> list[Any]:
    """Validated, normalised positional params; raises JsonRpcFailure(-32602) naming the bad one."""
    if params is None:
        params = []
    if not isinstance(params, list):
        raise JsonRpcFailure(INVALID_PARAMS, "invalid params: params must be an array")
    if len(params) > len(spec.params):
        raise JsonRpcFailure(INVALID_PARAMS,
                             f"invalid params: {method} takes at most {len(spec.params)} params, got {len(params)}")
    out: list[Any] = []
    for i, (name, check, default) in enumerate(spec.params):
        if i < len(params) and params[i] is not None:
            out.append(check(name, params[i]))
        elif default is _REQUIRED:
            raise _bad(name, "is required")
        else:
            out.append(default)
    return out


# ------------------------------------------------------------------ the app

@dataclass
class _Call:
    id: Any
    has_id: bool
    method: str = ""
    params: list[Any] | None = None
    error: JsonRpcFailure | None = None
    result: Any = None
    done: bool = False


class JsonRpcApp:
    """Turns a JSON-RPC HTTP body into an answer, using a :class:`Backend` for the work."""

    def __init__(self, backend: Backend, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.backend = backend
        self.timeout = timeout

    def handle(self, body: bytes) -> bytes | None:
        """The JSON answer to ``body``; None when there is nothing to answer (only notifications)."""
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return _dump(_error_response(None, JsonRpcFailure(PARSE_ERROR, f"parse error: {exc}")))
        if isinstance(doc, list):
            if not doc:
                return _dump(_error_response(None, JsonRpcFailure(INVALID_REQUEST, "invalid request: empty batch")))
            calls = [self._parse_call(item) for item in doc]
            self._run(calls)
            answers = [self._response(c) for c in calls if c.has_id]
            return _dump(answers) if answers else None
        call = self._parse_call(doc)
        self._run([call])
        return _dump(self._response(call)) if call.has_id else None

    # -- steps ------------------------------------------------------------
    @staticmethod
    def _parse_call(item: Any) -> _Call:
        if not isinstance(item, dict):
            return _Call(None, True, error=JsonRpcFailure(INVALID_REQUEST, "invalid request: not an object"))
        has_id = "id" in item
        call_id = item.get("id")
        if call_id is not None and (isinstance(call_id, bool) or not isinstance(call_id, str | int | float)):
            return _Call(None, True, error=JsonRpcFailure(INVALID_REQUEST, "invalid request: bad id"))
        call = _Call(call_id, has_id)
        method = item.get("method")
        if item.get("jsonrpc") != "2.0":
            call.error = JsonRpcFailure(INVALID_REQUEST, "invalid request: jsonrpc must be \"2.0\"")
            call.has_id = True
        elif not isinstance(method, str):
            call.error = JsonRpcFailure(INVALID_REQUEST, "invalid request: method must be a string")
            call.has_id = True
        elif method not in METHODS:
            call.error = JsonRpcFailure(METHOD_NOT_FOUND, f"method not found: {method[:100]}")
        else:
            call.method = method
            try:
                call.params = normalise_params(method, METHODS[method], item.get("params"))
            except JsonRpcFailure as exc:
                call.error = exc
        return call

    def _run(self, calls: list[_Call]) -> None:
        todo = [c for c in calls if c.error is None]
        self._run_txs([c for c in todo if METHODS[c.method].target == "auth"])
        self._run_queries([c for c in todo if METHODS[c.method].target != "auth"])

    def _run_txs(self, calls: list[_Call]) -> None:
        if not calls:
            return
        if self.backend.flight_mode:
            for c in calls:
                c.error = JsonRpcFailure(TX_REJECTED, "node is in flight mode (snapshot restore in progress)",
                                         {"code": NOT_READY, "reason": "node is in flight mode"})
            return
        raws: list[bytes] = []
        for c in calls:
            assert c.params is not None
            raw = bytes.fromhex(c.params[0][2:])
            if not raw:
                c.error = _bad("data", "must not be empty")
                continue
            raws.append(raw)
        sent = [c for c in calls if c.error is None]
        if not sent:
            return
        try:
            outcomes = self.backend.send_txs(raws, self.timeout)
        except JsonRpcFailure as exc:
            for c in sent:
                c.error = exc
            return
        for i, c in enumerate(sent):
            if i >= len(outcomes):
                c.error = JsonRpcFailure(INTERNAL_ERROR, f"auth answered {len(outcomes)} results for {len(sent)} txs")
                continue
            o = outcomes[i]
            if o.ok:
                c.result = "0x" + (o.tx_hash or keccak(raws[i])).hex()
            else:
                reason = o.error or f"code {o.code}"
                c.error = JsonRpcFailure(TX_REJECTED, f"transaction rejected: {reason}",
                                         {"code": o.code, "reason": o.error})

    def _run_queries(self, calls: list[_Call]) -> None:
        if not calls:
            return
        queries = [Query(METHODS[c.method].target, c.method, c.params or []) for c in calls]
        try:
            results = self.backend.query_many(queries, self.timeout)
        except JsonRpcFailure as exc:
            results = [exc] * len(calls)
        for c, r in zip(calls, results, strict=False):
            if isinstance(r, JsonRpcFailure):
                c.error = r
            else:
                c.result = r

    @staticmethod
    def _response(call: _Call) -> dict[str, Any]:
        if call.error is not None:
            return _error_response(call.id, call.error)
        return {"jsonrpc": "2.0", "id": call.id, "result": call.result}


def _error_response(call_id: Any, err: JsonRpcFailure) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": call_id, "error": err.to_json()}


def _dump(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


# ------------------------------------------------------------------ HTTP

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pycita-jsonrpc/0.1"
    timeout = 60  # seconds a client may take to send its request

    server: RpcHttpServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        log.debug("jsonrpc http: " + format, *args)

    def _send(self, status: int, body: bytes, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, status: int, err: JsonRpcFailure, close: bool = False) -> None:
        self._send(status, _dump(_error_response(None, err)), close=close)

    def _discard(self, length: int) -> None:
        try:
            while length > 0:
                chunk = self.rfile.read(min(length, 1 << 16))
                if not chunk:
                    return
                length -= len(chunk)
        except OSError:
            return

    def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
        try:
            if self.path.split("?", 1)[0].rstrip("/") == "/health":
                self._send(200, _dump(self.server.app.backend.health()))
            else:
                self._send(404, _dump({"error": f"not found: {self.path[:100]}", "hint": "POST JSON-RPC to /"}))
        except Exception:  # never let a request kill the server
            log.exception("jsonrpc: GET %s failed", self.path[:100])
            self._send(500, _dump({"error": "internal error"}), close=True)

    def do_POST(self) -> None:  # noqa: N802 (stdlib naming)
        length_text = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked" or length_text is None:
            self._send_error(411, JsonRpcFailure(INVALID_REQUEST, "invalid request: Content-Length required"),
                             close=True)
            return
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError(length_text)
        except ValueError:
            self._send_error(400, JsonRpcFailure(INVALID_REQUEST, "invalid request: bad Content-Length"), close=True)
            return
        if length > MAX_BODY:
            if length <= DRAIN_LIMIT:  # read and discard, so the client sees the answer, not a reset
                self._discard(length)
            self._send_error(413, JsonRpcFailure(
                INVALID_REQUEST, f"invalid request: body of {length} bytes exceeds {MAX_BODY} bytes"), close=True)
            return
        try:
            body = self.rfile.read(length)
        except OSError as exc:
            log.debug("jsonrpc: reading request body failed: %s", exc)
            self.close_connection = True
            return
        if len(body) != length:
            self.close_connection = True
            return
        try:
            answer = self.server.app.handle(body)
        except Exception:  # never let a request kill the server
            log.exception("jsonrpc: request failed")
            self._send_error(500, JsonRpcFailure(INTERNAL_ERROR, "internal error"))
            return
        if answer is None:
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(200, answer)


class RpcHttpServer(ThreadingHTTPServer):
    """The HTTP side: a thread per connection, serving :class:`JsonRpcApp` on POST and ``/health`` on GET."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, host: str, port: int, app: JsonRpcApp) -> None:
        self.app = app
        super().__init__((host, port), _Handler)
        self._thread: threading.Thread | None = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("jsonrpc: connection from %s failed", client_address, exc_info=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> threading.Thread:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="jsonrpc-http", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def method_names() -> Sequence[str]:
    return sorted(METHODS)

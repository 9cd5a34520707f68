"""State queries of ``jsonrpc.executor_query`` (ARCHITECTURE.md, JSON-RPC section).

``params_json`` is the JSON-RPC params array; the block parameter is
``"latest"`` (also ``"pending"``), ``"earliest"``, a number or a 0x-hex /
decimal string, and defaults to ``"latest"``. Results are JSON values:
quantities as 0x-hex (``"0x0"``), data as 0x-hex (``"0x"`` when empty).

==========================================  =================================
method(params)                              result
==========================================  =================================
``getBalance(addr, block)``                 quantity
``getTransactionCount(addr, block)``        quantity (the account nonce)
``getCode(addr, block)``                    data
``getAbi(addr, block)``                     data
``getStorageAt(addr, key, block)``          data (the raw value, ``0x`` if unset)
==========================================  =================================

Errors raise :class:`RpcError` with a JSON-RPC code: -32601 unknown method,
-32602 invalid params, -32000 block not (yet) known or state unreadable.
"""

from __future__ import annotations

import json
from typing import Any

from pycita.errors import PycitaError
from pycita.state import StateDB, StateError
from services.executor.executor import Executor

METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
SERVER_ERROR = -32000


class RpcError(PycitaError):
    """Raised when a state query cannot be answered; ``code`` is the JSON-RPC error code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _hex_bytes(value: Any, what: str, length: int | None = None) -> bytes:
    if not isinstance(value, str) or not value.startswith(("0x", "0X")):
        raise RpcError(INVALID_PARAMS, f"{what} must be a 0x-hex string")
    try:
        raw = bytes.fromhex(value[2:])
    except ValueError as exc:
        raise RpcError(INVALID_PARAMS, f"{what} is not valid hex") from exc
    if length is not None and len(raw) != length:
        raise RpcError(INVALID_PARAMS, f"{what} must be {length} bytes, got {len(raw)}")
    return raw


def parse_block_param(value: Any, tip: int) -> int:
    """The height a block parameter names (``tip`` for latest); raises RpcError on a bad one."""
    if value is None or value in ("latest", "pending"):
        return tip
    if value == "earliest":
        return 0
    if isinstance(value, bool):
        raise RpcError(INVALID_PARAMS, f"invalid block parameter {value!r}")
    if isinstance(value, int):
        height = value
    elif isinstance(value, str):
        try:
            height = int(value, 16) if value.lower().startswith("0x") else int(value, 10)
        except ValueError as exc:
            raise RpcError(INVALID_PARAMS, f"invalid block parameter {value!r}") from exc
    else:
        raise RpcError(INVALID_PARAMS, f"invalid block parameter {value!r}")
    if height < 0:
        raise RpcError(INVALID_PARAMS, f"invalid block parameter {value!r}")
    return height


def _quantity(n: int) -> str:
    return hex(n)


def _data(b: bytes) -> str:
    return "0x" + b.hex()


class ExecutorRpc:
    """Answers state queries from the executor's committed heights (any of them, not only the tip)."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    def handle(self, method: str, params_json: str) -> Any:
        """The JSON-able result of ``method``; raises :class:`RpcError`."""
        try:
            params = json.loads(params_json) if params_json else []
        except json.JSONDecodeError as exc:
            raise RpcError(INVALID_PARAMS, f"params are not JSON: {exc}") from exc
        if not isinstance(params, list):
            raise RpcError(INVALID_PARAMS, "params must be an array")
        if method == "getStorageAt":
            self._arity(method, params, 2, 3)
            state = self._state(params[2] if len(params) > 2 else None)
            key = _hex_bytes(params[1], "key")
            if not key:
                raise RpcError(INVALID_PARAMS, "key must not be empty")
            return _data(self._read(lambda: state.storage(_hex_bytes(params[0], "address", 20), key)))
        readers = {
            "getBalance": lambda s, a: _quantity(s.balance(a)),
            "getTransactionCount": lambda s, a: _quantity(s.nonce(a)),
            "getCode": lambda s, a: _data(s.code(a)),
            "getAbi": lambda s, a: _data(s.abi(a)),
        }
        reader = readers.get(method)
        if reader is None:
            raise RpcError(METHOD_NOT_FOUND, f"method {method!r} not found")
        self._arity(method, params, 1, 2)
        addr = _hex_bytes(params[0], "address", 20)
        state = self._state(params[1] if len(params) > 1 else None)
        return self._read(lambda: reader(state, addr))

    @staticmethod
    def _arity(method: str, params: list[Any], low: int, high: int) -> None:
        if not low <= len(params) <= high:
            raise RpcError(INVALID_PARAMS, f"{method} takes {low} to {high} params, got {len(params)}")

    def _state(self, block_param: Any) -> StateDB:
        tip = self.executor.tip
        height = parse_block_param(block_param, tip.height)
        entry = self.executor.block_at(height) if height <= tip.height else None
        if entry is None:
            raise RpcError(SERVER_ERROR, f"block {height} not found (executor at {tip.height})")
        return self.executor.state_at(entry[1])

    @staticmethod
    def _read(fn: Any) -> Any:
        try:
            return fn()
        except StateError as exc:
            raise RpcError(SERVER_ERROR, f"state unreadable: {exc}") from exc

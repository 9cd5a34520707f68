"""The chain's JSON-RPC methods (ARCHITECTURE.md "JSON-RPC"), answered from one store view.

==========================  =====================================================
method                      result
==========================  =====================================================
``blockNumber``             tip height, ``"0x.."``
``getBlockByNumber(n, f)``  block object or ``null``; ``n`` a number, 0x-hex,
                            decimal string, ``"latest"`` or ``"earliest"``
``getBlockByHash(h, f)``    block object or ``null``
``getTransaction(h)``       transaction object or ``null``
``getTransactionReceipt``   receipt object or ``null``
==========================  =====================================================

Quantities are 0x-hex (``"0x0"`` for zero), data 0x-hex (``"0x"`` when empty);
an empty ``to`` / ``contractAddress`` / error message is ``null``. With
``full`` true a block lists transaction objects, otherwise their hashes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import rlp

from pycita.crypto import keccak
from pycita.errors import DecodeError, PycitaError
from pycita.messages import pb
from pycita.types import Header, SignedTransaction, decode_as
from services.chain.store import ChainReader

PARSE_ERROR = -32700
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

Json = Any


class RpcError(PycitaError):
    """Raised when a JSON-RPC query cannot be answered; ``code`` is the JSON-RPC error code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def qty(value: int) -> str:
    return hex(value)


def data(value: bytes) -> str:
    return "0x" + value.hex()


def _nullable(value: bytes) -> str | None:
    return data(value) if value else None


def parse_height(value: Json, tip: int) -> int:
    """A block number param: int, 0x-hex or decimal string, ``latest``/``pending`` or ``earliest``."""
    if isinstance(value, bool):
        raise RpcError(INVALID_PARAMS, f"invalid block number {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise RpcError(INVALID_PARAMS, f"invalid block number {value}")
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("latest", "pending"):
            return tip
        if text == "earliest":
            return 0
        try:
            number = int(text, 16) if text.startswith("0x") else int(text, 10)
        except ValueError:
            number = -1
        if number >= 0:
            return number
    raise RpcError(INVALID_PARAMS, f"invalid block number {value!r}")


def parse_hash(value: Json) -> bytes:
    if isinstance(value, str):
        text = value.removeprefix("0x").removeprefix("0X")
        if len(text) == 64:
            try:
                return bytes.fromhex(text)
            except ValueError:
                pass
    raise RpcError(INVALID_PARAMS, f"invalid 32-byte hash {value!r}")


def _param(params: list[Json], index: int, name: str, default: Json = None, required: bool = True) -> Json:
    if index < len(params):
        return params[index]
    if required:
        raise RpcError(INVALID_PARAMS, f"missing parameter {name}")
    return default


def _receipt_fields(raw: bytes) -> list[bytes]:
    fields = rlp.decode(raw)
    if not isinstance(fields, list) or len(fields) != 7:
        raise DecodeError("stored receipt", "not a 7-field list")
    return fields


def tx_object(raw: bytes, sender: bytes, height: int, index: int) -> dict[str, Json]:
    tx: SignedTransaction = decode_as(raw, SignedTransaction, "stored transaction")  # type: ignore[assignment]
    return {
        "hash": data(tx.hash),
        "blockNumber": qty(height),
        "index": qty(index),
        "from": data(sender),
        "to": _nullable(tx.to),
        "nonce": qty(tx.nonce),
        "value": qty(tx.value),
        "action": qty(tx.action),
        "data": data(tx.data),
        "validUntilBlock": qty(tx.valid_until_block),
        "quota": qty(tx.quota),
        "chainId": qty(tx.chain_id),
    }


class ChainRpc:
    """Answers the chain's JSON-RPC methods from a :class:`ChainReader`."""

    def __init__(self, reader: ChainReader) -> None:
        self.reader = reader
        self.methods: dict[str, Callable[[list[Json]], Json]] = {
            "blockNumber": self.block_number,
            "getBlockByNumber": self.get_block_by_number,
            "getBlockByHash": self.get_block_by_hash,
            "getTransaction": self.get_transaction,
            "getTransactionReceipt": self.get_transaction_receipt,
        }

    def handle(self, request: pb.RpcRequest) -> pb.RpcResponse:
        """Answer one request; errors become ``code``/``error``, never exceptions."""
        try:
            method = self.methods.get(request.method)
            if method is None:
                raise RpcError(METHOD_NOT_FOUND, f"method {request.method!r} not found on chain")
            try:
                params = json.loads(request.params_json) if request.params_json else []
            except (json.JSONDecodeError, RecursionError) as exc:
                raise RpcError(PARSE_ERROR, f"params are not JSON: {exc}") from exc
            if not isinstance(params, list):
                raise RpcError(INVALID_PARAMS, "params must be an array")
            return pb.RpcResponse(code=0, result_json=json.dumps(method(params)))
        except RpcError as exc:
            return pb.RpcResponse(code=exc.code, error=exc.message)
        except (DecodeError, rlp.exceptions.DecodingError) as exc:
            return pb.RpcResponse(code=INTERNAL_ERROR, error=f"corrupt stored data: {exc}")

    # -- methods ------------------------------------------------------------
    def _tip(self) -> int:
        tip = self.reader.tip()
        return tip[0] if tip else 0

    def block_number(self, params: list[Json]) -> Json:
        return qty(self._tip())

    def get_block_by_number(self, params: list[Json]) -> Json:
        height = parse_height(_param(params, 0, "block number"), self._tip())
        return self.block_object(height, bool(_param(params, 1, "full", False, required=False)))

    def get_block_by_hash(self, params: list[Json]) -> Json:
        height = self.reader.height_of(parse_hash(_param(params, 0, "block hash")))
        if height is None:
            return None
        return self.block_object(height, bool(_param(params, 1, "full", False, required=False)))

    def block_object(self, height: int, full: bool) -> Json:
        header_rlp = self.reader.header_rlp(height)
        if header_rlp is None:
            return None
        header: Header = decode_as(header_rlp, Header, f"stored header {height}")  # type: ignore[assignment]
        txs = self.reader.transactions(height)
        transactions: list[Json]
        if full:
            receipts = self.reader.receipts(height)
            transactions = [tx_object(tx, _receipt_fields(receipts[i])[1] if i < len(receipts) else b"", height, i)
                            for i, tx in enumerate(txs)]
        else:
            transactions = [data(keccak(tx)) for tx in txs]
        return {
            "number": qty(header.number),
            "hash": data(header.hash),
            "parentHash": data(header.parent_hash),
            "stateRoot": data(header.state_root),
            "transactionsRoot": data(header.transactions_root),
            "receiptsRoot": data(header.receipts_root),
            "quotaUsed": qty(header.quota_used),
            "quotaLimit": qty(header.quota_limit),
            "timestamp": qty(header.timestamp),
            "proposer": data(header.proposer),
            "proof": data(header.proof),
            "transactions": transactions,
        }

    def _locate(self, params: list[Json]) -> tuple[int, int, bytes, bytes] | None:
        """(height, index, raw tx, raw receipt) of the tx hash in params[0], or None."""
        loc = self.reader.tx_location(parse_hash(_param(params, 0, "transaction hash")))
        if loc is None:
            return None
        height, index = loc
        txs = self.reader.transactions(height)
        receipts = self.reader.receipts(height)
        if index >= len(txs) or index >= len(receipts):
            raise DecodeError("stored block", f"tx index {index} beyond block {height}")
        return height, index, txs[index], receipts[index]

    def get_transaction(self, params: list[Json]) -> Json:
        found = self._locate(params)
        if found is None:
            return None
        height, index, tx, receipt = found
        return tx_object(tx, _receipt_fields(receipt)[1], height, index)

    def get_transaction_receipt(self, params: list[Json]) -> Json:
        found = self._locate(params)
        if found is None:
            return None
        height, index, _tx, receipt = found
        tx_hash, sender, status, quota_used, cumulative, contract, error = _receipt_fields(receipt)
        block_hash = self.reader.block_hash(height) or b""
        return {
            "transactionHash": data(tx_hash),
            "blockNumber": qty(height),
            "blockHash": data(block_hash),
            "index": qty(index),
            "from": data(sender),
            "status": qty(int.from_bytes(status, "big")),
            "quotaUsed": qty(int.from_bytes(quota_used, "big")),
            "cumulativeQuotaUsed": qty(int.from_bytes(cumulative, "big")),
            "contractAddress": _nullable(contract),
            "errorMessage": error.decode("utf-8", "replace") if error else None,
        }

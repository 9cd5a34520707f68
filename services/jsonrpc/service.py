"""The jsonrpc service: an HTTP JSON-RPC server (server.py) beside the bus loop.

=============================  ==========  =================================================
routing key                    direction   meaning
=============================  ==========  =================================================
``auth.tx_response``           consumed    auth's verdicts on a ``new_tx_batch`` (by request_id)
``chain.rpc_response``         consumed    answer to a ``chain_query`` (by request_id)
``executor.rpc_response``      consumed    answer to an ``executor_query`` (by request_id)
``chain.rich_status``          consumed    the tip, shown by ``GET /health``
``snapshot.snapshot_req``      consumed    flight mode at Begin, off at End/Abort (base Service)
``cli.ping``                   consumed    liveness (base Service)
``jsonrpc.new_tx_batch``       published   every sendRawTransaction of one HTTP request
``jsonrpc.chain_query``        published   block / transaction / receipt queries
``jsonrpc.executor_query``     published   balance / nonce / code / abi / storage queries
``jsonrpc.snapshot_resp``      published   snapshot protocol answers (base Service)
``jsonrpc.pong``               published   status for ``pycita status`` (base Service)
=============================  ==========  =================================================

HTTP threads publish (``Bus.publish`` is thread-safe) with a fresh uuid as
the envelope request_id and block on a future; the bus handlers resolve the
future whose request_id the reply carries. A reply after its timeout is
dropped.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from pycita.config import NodeConfig
from pycita.errors import DecodeError, PycitaError
from pycita.messages import pb
from pycita.service import Service
from services.jsonrpc.server import (
    INTERNAL_ERROR,
    TIMEOUT,
    JsonRpcApp,
    JsonRpcFailure,
    Query,
    RpcHttpServer,
    TxOutcome,
)

log = logging.getLogger(__name__)


class PendingReplies:
    """Futures of outstanding requests, keyed by envelope request_id (thread-safe)."""

    def __init__(self) -> None:
        self._futures: dict[str, Future[Any]] = {}
        self._lock = threading.Lock()

    def open(self) -> tuple[str, Future[Any]]:
        rid = uuid.uuid4().hex
        fut: Future[Any] = Future()
        with self._lock:
            self._futures[rid] = fut
        return rid, fut

    def drop(self, rid: str) -> None:
        with self._lock:
            self._futures.pop(rid, None)

    def resolve(self, rid: str, value: Any) -> bool:
        with self._lock:
            fut = self._futures.pop(rid, None)
        if fut is None:
            return False
        fut.set_result(value)
        return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._futures)


class JsonRpcService(Service):
    name = "jsonrpc"
    bindings = ("auth.tx_response", "chain.rpc_response", "executor.rpc_response", "chain.rich_status")

    def __init__(self, cfg: NodeConfig, bus: Any) -> None:
        super().__init__(cfg, bus)
        self.pending = PendingReplies()
        self.tip_height: int | None = None
        self.tip_hash = b""
        self.started_at = time.time()
        self.timeout = float(cfg.extra.get("jsonrpc_timeout", 10.0))
        self.app = JsonRpcApp(self, timeout=self.timeout)
        self.http: RpcHttpServer | None = None
        self.handlers.update({
            "tx_response": self._on_tx_response,
            "rpc_response": self._on_rpc_response,
            "rich_status": self._on_rich_status,
        })

    # -- lifecycle ---------------------------------------------------
    def start(self) -> None:
        self.http = RpcHttpServer(self.cfg.jsonrpc_host, self.cfg.jsonrpc_port, self.app)
        self.http.start()
        log.info("jsonrpc: listening on http://%s:%s", self.cfg.jsonrpc_host, self.http.port)

    def close(self) -> None:
        if self.http is not None:
            self.http.stop()
            self.http = None

    def status(self) -> dict[str, Any]:
        return {**super().status(), "height": self.tip_height, "pending_requests": len(self.pending),
                "port": self.http.port if self.http else self.cfg.jsonrpc_port}

    # -- Backend (called from HTTP threads) --------------------------------
    def health(self) -> dict[str, Any]:
        return {"status": "ok", "service": self.name, "flight_mode": self.flight_mode,
                "height": self.tip_height, "block_hash": "0x" + self.tip_hash.hex() if self.tip_hash else None,
                "uptime": round(time.time() - self.started_at, 1)}

    def send_txs(self, raw_txs: list[bytes], timeout: float) -> list[TxOutcome]:
        rid, fut = self.pending.open()
        try:
            self.publish("new_tx_batch", pb.NewTxBatch(raw_txs=raw_txs), request_id=rid)
            resp: pb.TxResponse = fut.result(timeout)
        except FutureTimeout:
            raise JsonRpcFailure(TIMEOUT, "timeout waiting for auth") from None
        except PycitaError as exc:
            raise JsonRpcFailure(INTERNAL_ERROR, f"cannot reach auth: {exc}") from exc
        finally:
            self.pending.drop(rid)
        return [TxOutcome(r.ok, r.code, r.error, bytes(r.tx_hash)) for r in resp.results]

    def query_many(self, queries: list[Query], timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        waits: list[tuple[str, Query, Future[Any] | JsonRpcFailure]] = []
        for q in queries:
            rid, future = self.pending.open()
            try:
                self.publish(f"{q.target}_query", pb.RpcRequest(method=q.method, params_json=json.dumps(q.params)),
                             request_id=rid)
                waits.append((rid, q, future))
            except PycitaError as exc:
                self.pending.drop(rid)
                waits.append((rid, q, JsonRpcFailure(INTERNAL_ERROR, f"cannot reach {q.target}: {exc}")))
        results: list[Any] = []
        for rid, q, fut in waits:
            if isinstance(fut, JsonRpcFailure):
                results.append(fut)
                continue
            try:
                resp: pb.RpcResponse = fut.result(max(0.0, deadline - time.monotonic()))
                results.append(_decode_rpc_response(resp, q.target))
            except FutureTimeout:
                results.append(JsonRpcFailure(TIMEOUT, f"timeout waiting for {q.target}"))
            finally:
                self.pending.drop(rid)
        return results

    # -- bus handlers (loop thread) -------------------------------------
    def _on_tx_response(self, env: pb.Message, msg: pb.TxResponse) -> None:
        self._resolve("tx_response", env, msg)

    def _on_rpc_response(self, env: pb.Message, msg: pb.RpcResponse) -> None:
        self._resolve("rpc_response", env, msg)

    def _resolve(self, what: str, env: pb.Message, msg: Any) -> None:
        if not env.request_id:
            raise DecodeError(what, "no request_id: it answers no request")
        if not self.pending.resolve(env.request_id, msg):
            log.info("jsonrpc: dropping late or unknown %s %.64r", what, env.request_id)

    def _on_rich_status(self, env: pb.Message, msg: pb.RichStatus) -> None:
        self.tip_height = msg.height
        self.tip_hash = bytes(msg.hash)


def _decode_rpc_response(resp: pb.RpcResponse, target: str) -> Any:
    if resp.code != 0:
        return JsonRpcFailure(resp.code, resp.error or f"{target} error {resp.code}")
    if not resp.result_json:
        return None
    try:
        return json.loads(resp.result_json)
    except ValueError:
        return JsonRpcFailure(INTERNAL_ERROR, f"{target} answered malformed JSON")

"""The JSON-RPC gateway answers every request, good or bad, over real HTTP with fake backends."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rlp

from pycita.client import Client, RpcError, transfer
from pycita.config import NodeConfig
from pycita.crypto import PrivateKey, keccak
from pycita.messages import pack, pb, unpack
from services.jsonrpc.server import (
    DRAIN_LIMIT,
    MAX_BODY,
    JsonRpcApp,
    JsonRpcFailure,
    Query,
    RpcHttpServer,
    TxOutcome,
)
from services.jsonrpc.service import JsonRpcService

KEY = PrivateKey(b"\x01" * 32)
ADDR = "0x" + "ab" * 20
HASH = "0x" + "cd" * 32


class FakeBackend:
    def __init__(self) -> None:
        self.flight_mode = False
        self.tx_batches: list[list[bytes]] = []
        self.queries: list[Query] = []
        self.reject_code = 0
        self.fail_with: JsonRpcFailure | None = None

    def send_txs(self, raw_txs: list[bytes], timeout: float) -> list[TxOutcome]:
        if self.fail_with:
            raise self.fail_with
        self.tx_batches.append(raw_txs)
        if self.reject_code:
            return [TxOutcome(False, self.reject_code, "nonce reused") for _ in raw_txs]
        return [TxOutcome(True, 0, "", keccak(r)) for r in raw_txs]

    def query_many(self, queries: list[Query], timeout: float) -> list[Any]:
        self.queries.extend(queries)
        out: list[Any] = []
        for q in queries:
            if q.method == "blockNumber":
                out.append("0x2a")
            elif q.method == "getBalance":
                out.append("0x64")
            elif q.method == "getTransaction":
                out.append(None)
            else:
                out.append(JsonRpcFailure(-32001, f"{q.target} cannot {q.method}"))
        return out

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "height": 42}


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def server(backend: FakeBackend) -> Iterator[RpcHttpServer]:
    srv = RpcHttpServer("127.0.0.1", 0, JsonRpcApp(backend, timeout=2.0))
    srv.start()
    yield srv
    srv.stop()


def post(srv: RpcHttpServer, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request("POST", "/", body, headers or {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if data else None
    finally:
        conn.close()


def call(srv: RpcHttpServer, method: str, params: Any = None, id_: Any = 1) -> dict[str, Any]:
    doc: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params is not None:
        doc["params"] = params
    status, answer = post(srv, json.dumps(doc).encode())
    assert status == 200
    return answer  # type: ignore[no-any-return]


def raw_tx(nonce: int) -> str:
    return "0x" + rlp.encode(transfer(KEY, b"\x22" * 20, 1, nonce, 50, 1)).hex()


def test_malformed_json_is_a_parse_error(server: RpcHttpServer) -> None:
    status, answer = post(server, b"{not json")
    assert status == 200
    assert answer["error"]["code"] == -32700 and answer["id"] is None


def test_non_utf8_bytes_are_a_parse_error(server: RpcHttpServer) -> None:
    assert post(server, b"\xff\xfe\x00")[1]["error"]["code"] == -32700


def test_a_request_without_jsonrpc_2_is_an_invalid_request(server: RpcHttpServer) -> None:
    _, answer = post(server, json.dumps({"id": 3, "method": "blockNumber"}).encode())
    assert answer["error"]["code"] == -32600 and answer["id"] == 3


def test_a_json_scalar_is_an_invalid_request(server: RpcHttpServer) -> None:
    assert post(server, b"42")[1]["error"]["code"] == -32600


def test_an_empty_batch_is_an_invalid_request(server: RpcHttpServer) -> None:
    assert post(server, b"[]")[1]["error"]["code"] == -32600


def test_an_unknown_method_is_method_not_found(server: RpcHttpServer) -> None:
    assert call(server, "eth_mine")["error"]["code"] == -32601


def test_bad_params_name_the_offending_param(server: RpcHttpServer) -> None:
    err = call(server, "getBalance", ["0x1234"])["error"]
    assert err["code"] == -32602 and "'address'" in err["message"]
    err = call(server, "getBlockByNumber", ["tomorrow"])["error"]
    assert err["code"] == -32602 and "'number'" in err["message"]
    err = call(server, "getBlockByHash", [HASH, "yes"])["error"]
    assert err["code"] == -32602 and "'full'" in err["message"]
    err = call(server, "getTransaction", [])["error"]
    assert err["code"] == -32602 and "'hash'" in err["message"]
    err = call(server, "blockNumber", [1])["error"]
    assert err["code"] == -32602
    err = call(server, "getBalance", {"address": ADDR})["error"]
    assert err["code"] == -32602 and "array" in err["message"]
    err = call(server, "sendRawTransaction", ["0xabc"])["error"]
    assert err["code"] == -32602 and "'data'" in err["message"]


def test_queries_reach_the_right_service_with_normalised_params(server: RpcHttpServer,
                                                                backend: FakeBackend) -> None:
    assert call(server, "blockNumber")["result"] == "0x2a"
    assert call(server, "getBalance", [ADDR.upper().replace("0X", "0x"), 16])["result"] == "0x64"
    call(server, "getBlockByNumber", ["pending"])
    call(server, "getStorageAt", [ADDR, "0x01"])
    assert backend.queries == [
        Query("chain", "blockNumber", []),
        Query("executor", "getBalance", [ADDR, "0x10"]),
        Query("chain", "getBlockByNumber", ["latest", False]),
        Query("executor", "getStorageAt", [ADDR, "0x01", "latest"]),
    ]


def test_a_null_result_is_returned_as_null(server: RpcHttpServer) -> None:
    answer = call(server, "getTransaction", [HASH])
    assert "result" in answer and answer["result"] is None


def test_a_backend_error_becomes_a_json_rpc_error(server: RpcHttpServer) -> None:
    err = call(server, "getCode", [ADDR])["error"]
    assert err == {"code": -32001, "message": "executor cannot getCode"}


def test_a_transaction_is_sent_to_auth_and_its_hash_returned(server: RpcHttpServer, backend: FakeBackend) -> None:
    tx = raw_tx(0)
    assert call(server, "sendRawTransaction", [tx])["result"] == "0x" + keccak(bytes.fromhex(tx[2:])).hex()
    assert backend.tx_batches == [[bytes.fromhex(tx[2:])]]


def test_all_transactions_of_one_batch_go_to_auth_together(server: RpcHttpServer, backend: FakeBackend) -> None:
    batch = [{"jsonrpc": "2.0", "id": i, "method": "sendRawTransaction", "params": [raw_tx(i)]} for i in range(5)]
    batch.insert(2, {"jsonrpc": "2.0", "id": "q", "method": "blockNumber"})
    batch.append({"jsonrpc": "2.0", "id": "bad", "method": "sendRawTransaction", "params": ["zz"]})
    status, answer = post(server, json.dumps(batch).encode())
    assert status == 200 and len(answer) == 7
    assert len(backend.tx_batches) == 1 and len(backend.tx_batches[0]) == 5
    by_id = {a["id"]: a for a in answer}
    assert by_id["q"]["result"] == "0x2a"
    assert by_id["bad"]["error"]["code"] == -32602
    assert all(by_id[i]["result"].startswith("0x") for i in range(5))


def test_an_auth_rejection_carries_the_auth_code(server: RpcHttpServer, backend: FakeBackend) -> None:
    backend.reject_code = 5
    err = call(server, "sendRawTransaction", [raw_tx(0)])["error"]
    assert err["code"] == -32003 and err["data"] == {"code": 5, "reason": "nonce reused"}


def test_a_timeout_waiting_for_auth_is_reported(server: RpcHttpServer, backend: FakeBackend) -> None:
    backend.fail_with = JsonRpcFailure(-32000, "timeout waiting for auth")
    err = call(server, "sendRawTransaction", [raw_tx(0)])["error"]
    assert err == {"code": -32000, "message": "timeout waiting for auth"}


def test_flight_mode_refuses_transactions_with_not_ready(server: RpcHttpServer, backend: FakeBackend) -> None:
    backend.flight_mode = True
    err = call(server, "sendRawTransaction", [raw_tx(0)])["error"]
    assert err["code"] == -32003 and err["data"]["code"] == 9
    assert backend.tx_batches == []
    assert call(server, "blockNumber")["result"] == "0x2a"  # queries still work


def test_notifications_get_no_answer(server: RpcHttpServer) -> None:
    status, answer = post(server, json.dumps({"jsonrpc": "2.0", "method": "blockNumber"}).encode())
    assert status == 204 and answer is None


def test_a_huge_declared_body_gets_413_without_being_read(server: RpcHttpServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("POST", "/")
    conn.putheader("Content-Length", str(DRAIN_LIMIT + 1))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413
    assert json.loads(resp.read())["error"]["code"] == -32600
    conn.close()


def test_a_body_just_under_the_limit_is_parsed(server: RpcHttpServer) -> None:
    body = b" " * (MAX_BODY - 40) + b'{"jsonrpc":"2.0","id":1,"method":"blockNumber"}'[:40]
    status, answer = post(server, body)
    assert status == 200 and answer["error"]["code"] == -32700


def test_a_missing_content_length_is_refused(server: RpcHttpServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("POST", "/")
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 411
    conn.close()


def test_health_answers_200_json(server: RpcHttpServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/health")
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["status"] == "ok"
    conn.request("GET", "/nope")
    assert conn.getresponse().status == 404
    conn.close()


def test_a_keep_alive_connection_serves_many_requests(server: RpcHttpServer) -> None:
    client = Client(f"http://127.0.0.1:{server.port}")
    assert [client.block_number() for _ in range(5)] == [42] * 5
    assert client.get_balance(ADDR) == 100
    with pytest.raises(RpcError) as info:
        client.get_code(ADDR)
    assert info.value.code == -32001


# --------------------------------------------------------------- the real service over a fake bus

class EchoBus:
    """Answers the service's publishes like auth/chain would, from another thread."""

    def __init__(self) -> None:
        self.service: JsonRpcService | None = None
        self.published: list[str] = []
        self.silent = False

    def publish(self, routing_key: str, body: bytes, confirm: bool = False) -> None:
        self.published.append(routing_key)
        env = unpack(routing_key, body)
        if self.silent:
            return
        if routing_key == "jsonrpc.new_tx_batch":
            results = [pb.TxResult(tx_hash=keccak(r), ok=True) for r in env.new_tx_batch.raw_txs]
            reply = pack("auth", "tx_response", pb.TxResponse(results=results), env.request_id)
        else:
            req = env.chain_query if routing_key == "jsonrpc.chain_query" else env.executor_query
            result = {"method": req.method, "params": json.loads(req.params_json)}
            reply = pack(routing_key.split(".")[1].replace("_query", ""), "rpc_response",
                         pb.RpcResponse(code=0, result_json=json.dumps(result)), env.request_id)
        assert self.service is not None
        threading.Timer(0.01, self.service.dispatch, reply).start()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[JsonRpcService, EchoBus]]:
    bus = EchoBus()
    cfg = NodeConfig(node_dir=tmp_path, amqp_url="amqp://unused", jsonrpc_port=0, extra={"jsonrpc_timeout": 0.5})
    svc = JsonRpcService(cfg, bus)
    bus.service = svc
    svc.start()
    yield svc, bus
    svc.close()


def test_the_service_matches_replies_to_requests_by_request_id(service: tuple[JsonRpcService, EchoBus]) -> None:
    svc, bus = service
    assert svc.http is not None
    client = Client(f"http://127.0.0.1:{svc.http.port}")
    results = client.batch([("getBlockByNumber", [7, True]), ("getBalance", [ADDR])])
    assert results == [{"method": "getBlockByNumber", "params": ["0x7", True]},
                       {"method": "getBalance", "params": [ADDR, "latest"]}]
    txs = [transfer(KEY, b"\x22" * 20, 1, n, 50, 1) for n in range(3)]
    assert client.send_raw_transactions(txs) == [tx.hash for tx in txs]
    assert bus.published.count("jsonrpc.new_tx_batch") == 1


def test_the_service_times_out_when_nobody_answers(service: tuple[JsonRpcService, EchoBus]) -> None:
    svc, bus = service
    bus.silent = True
    assert svc.http is not None
    client = Client(f"http://127.0.0.1:{svc.http.port}")
    with pytest.raises(RpcError) as info:
        client.send_raw_transaction(transfer(KEY, b"\x22" * 20, 1, 0, 50, 1))
    assert (info.value.code, info.value.message) == (-32000, "timeout waiting for auth")
    with pytest.raises(RpcError, match="timeout waiting for chain"):
        client.block_number()
    assert len(svc.pending) == 0


def test_the_service_refuses_transactions_in_flight_mode(service: tuple[JsonRpcService, EchoBus]) -> None:
    svc, bus = service
    svc.flight_mode = True
    assert svc.http is not None
    with pytest.raises(RpcError) as info:
        Client(f"http://127.0.0.1:{svc.http.port}").send_raw_transaction(transfer(KEY, b"\x22" * 20, 1, 0, 50, 1))
    assert info.value.auth_code == 9
    assert "jsonrpc.new_tx_batch" not in bus.published


def test_a_client_sending_an_oversized_body_still_reads_the_413(server: RpcHttpServer) -> None:
    import urllib.error
    import urllib.request

    body = b"[" + b" " * (MAX_BODY + 1024) + b"]"
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}/", data=body,
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=30)
    assert info.value.code == 413
    assert json.loads(info.value.read())["error"]["code"] == -32600

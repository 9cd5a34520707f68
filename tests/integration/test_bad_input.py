"""Bad input on a real node: nothing malformed may stop a service or the chain.

(a) Malformed bus messages on every service's queue are dead-lettered (the
    ``<service>.dead`` queue grows) or answered with an error, the service logs
    them, and no service exits: supervisor pids stay the same and blocks keep
    coming.
(b) Transactions auth must refuse each get a JSON-RPC error carrying the auth
    code and a message saying why; none of them ever lands in a block.
(c) Malformed JSON-RPC requests get JSON-RPC errors (HTTP 413 for a body over
    8 MiB) and the node keeps serving.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pika
import pytest
import rlp

from pycita.client import Client, RpcError, Wallet, build_transaction, from_hex, to_hex, transfer
from pycita.errors import DecodeError
from pycita.genesis import Genesis
from pycita.messages import pack, pb, unpack
from pycita.mq import EXCHANGE
from pycita.quota import intrinsic_quota
from pycita.testtools import Node
from pycita.types import Action, SignedTransaction

pytestmark = pytest.mark.slow

SERVICES = ("auth", "consensus", "chain", "executor", "jsonrpc")
TX_REJECTED = -32003
MAX_BODY = 8 * 1024 * 1024


def _wait(predicate: Callable[[], Any], timeout: float, what: str, poll: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def _running_pids(node: Node) -> dict[str, int]:
    services = node.status()["services"]
    assert set(services) == set(SERVICES)
    for name, svc in services.items():
        assert svc["state"] == "RUNNING" and svc["answering"], (name, svc, node.read_log(name)[-3000:])
    return {name: svc["pid"] for name, svc in services.items()}


# ---------------------------------------------------------------------------- (a) bus


class BusProbe:
    """A test-side AMQP client in the node's vhost: publish raw bodies, read replies, count dead letters."""

    REPLY_KEYS = ("auth.tx_response", "chain.rpc_response", "executor.rpc_response", "chain.sync_resp")

    def __init__(self, amqp_url: str) -> None:
        self.conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        self.chan = self.conn.channel()
        self.replies_queue = self.chan.queue_declare("", exclusive=True).method.queue
        for key in self.REPLY_KEYS:
            self.chan.queue_bind(self.replies_queue, EXCHANGE, routing_key=key)
        self.replies: dict[str, tuple[str, pb.Message]] = {}

    def close(self) -> None:
        if self.conn.is_open:
            self.conn.close()

    def publish(self, key: str, body: bytes, content_encoding: str | None = None) -> None:
        self.chan.basic_publish(EXCHANGE, key, body, pika.BasicProperties(
            delivery_mode=2, content_encoding=content_encoding, app_id="test_bad_input"))

    def dead_count(self, service: str) -> int:
        return int(self.chan.queue_declare(f"{service}.dead", passive=True).method.message_count)

    def dead_messages(self, service: str) -> list[tuple[str, bytes]]:
        """(original routing key, body) of every message in ``<service>.dead`` (left in the queue)."""
        out: list[tuple[str, bytes]] = []
        tags = []
        while True:
            method, props, body = self.chan.basic_get(f"{service}.dead", auto_ack=False)
            if method is None:
                break
            tags.append(method.delivery_tag)
            deaths = (props.headers or {}).get("x-death") or [{}]
            keys = deaths[0].get("routing-keys") or [method.routing_key]
            out.append((keys[0].decode() if isinstance(keys[0], bytes) else keys[0], body))
        for tag in tags:
            self.chan.basic_nack(tag, requeue=True)
        return out

    def collect_replies(self, request_ids: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for method, _props, body in self.chan.consume(self.replies_queue, auto_ack=True, inactivity_timeout=0.2):
            if method is not None:
                try:
                    env = unpack(method.routing_key, body)
                except DecodeError:
                    continue
                if env.request_id:
                    self.replies[env.request_id] = (method.routing_key, env)
            if request_ids <= self.replies.keys() or time.monotonic() >= deadline:
                break
        self.chan.cancel()


@dataclass(frozen=True)
class Case:
    service: str
    what: str
    key: str
    body: bytes
    content_encoding: str | None = None
    dead: bool = True  # else: answered with an error (see `check`)
    request_id: str = ""
    check: Callable[[str, pb.Message], None] | None = None
    log_text: str = ""  # what the service's log must mention (besides the dead-letter line)


def _envelope(key: str, content: Any, request_id: str = "") -> bytes:
    sender, _, msg_type = key.partition(".")
    packed_key, body = pack(sender, msg_type, content, request_id)
    assert packed_key == key
    return body


# A routing key each service alone consumes, with a valid content for it.
GENERIC = {
    "auth": ("jsonrpc.new_tx_batch", pb.NewTxBatch(raw_txs=[b"\xc0"])),
    "consensus": ("executor.executed_result", pb.ExecutedResult(height=1, proposal_hash=b"\x11" * 32)),
    "chain": ("jsonrpc.chain_query", pb.RpcRequest(method="blockNumber", params_json="[]")),
    "executor": ("jsonrpc.executor_query", pb.RpcRequest(method="getBalance", params_json='["0x' + "00" * 20 + '"]')),
    "jsonrpc": ("chain.rpc_response", pb.RpcResponse(code=0, result_json='"0x1"')),
}


def _generic_cases(service: str) -> list[Case]:
    key, content = GENERIC[service]
    valid = _envelope(key, content, request_id="generic-" + service)
    truncated = valid[: len(valid) // 2]
    with pytest.raises(DecodeError):  # the cut really breaks the protobuf
        unpack(key, truncated)
    other = _envelope("cli.ping", pb.Ping(nonce="not what the key says"))
    return [
        Case(service, "garbage bytes", key, b"\x00this is not a protobuf \xff\xfe" * 4),
        Case(service, "content disagrees with the routing key", key, other),
        Case(service, "empty body", key, b""),
        Case(service, "bogus content_encoding", key, valid, content_encoding="x-bogus-zip"),
        Case(service, "snappy encoding of a body that is not snappy", key, valid, content_encoding="snappy"),
        Case(service, "truncated protobuf", key, truncated),
    ]


def _answer_code(expected: int) -> Callable[[str, pb.Message], None]:
    def check(key: str, env: pb.Message) -> None:
        assert env.WhichOneof("content") == "rpc_response", env
        assert env.rpc_response.code == expected, env.rpc_response
        assert env.rpc_response.error, env.rpc_response

    return check


def _all_malformed(key: str, env: pb.Message) -> None:
    assert key == "auth.tx_response", key
    results = env.tx_response.results
    assert len(results) == 3, env
    for r in results:
        assert not r.ok and r.code == 1 and "malformed" in r.error, r  # 1 = MALFORMED


def _nonsense_cases() -> list[Case]:
    nonsense_tx = rlp.encode([b"\x01"] * 9)  # 9 fields, but action 1 (DEPLOY) with a 1-byte 'to' etc.
    return [
        # auth: a batch of raw txs that are not transactions -> answered, every one MALFORMED
        Case("auth", "new_tx_batch of non-transactions", "jsonrpc.new_tx_batch",
             _envelope("jsonrpc.new_tx_batch", pb.NewTxBatch(raw_txs=[b"\xf0garbage", b"", nonsense_tx]),
                       "rid-auth-batch"),
             dead=False, request_id="rid-auth-batch", check=_all_malformed, log_text="rejected"),
        # consensus: results and transactions for height 0 (never proposed), hashes of the wrong size
        Case("consensus", "executed_result for height 0 with 5-byte hashes", "executor.executed_result",
             _envelope("executor.executed_result", pb.ExecutedResult(
                 height=0, proposal_hash=b"\x01" * 5, state_root=b"\x02" * 5, receipts=[b"junk"]))),
        Case("consensus", "block_txs for height 0 with garbage txs", "auth.block_txs",
             _envelope("auth.block_txs", pb.BlockTxs(height=0, raw_txs=[b"\xf0garbage"]))),
        # chain
        Case("chain", "block_with_proof whose block is garbage RLP", "consensus.block_with_proof",
             _envelope("consensus.block_with_proof", pb.BlockWithProof(
                 block=b"\xf9\xff\xffgarbage", proof=pb.Proof(content=b"\x01\x02"), receipts=[b"junk"]))),
        Case("chain", "sync_req with end < start", "executor.sync_req",
             _envelope("executor.sync_req", pb.SyncReq(start_height=10, end_height=3), "rid-chain-sync"),
             request_id="rid-chain-sync"),
        Case("chain", "chain_query with an unknown method", "jsonrpc.chain_query",
             _envelope("jsonrpc.chain_query", pb.RpcRequest(method="noSuchMethod", params_json="[]"),
                       "rid-chain-unknown"),
             dead=False, request_id="rid-chain-unknown", check=_answer_code(-32601), log_text="noSuchMethod"),
        Case("chain", "chain_query with non-JSON params", "jsonrpc.chain_query",
             _envelope("jsonrpc.chain_query", pb.RpcRequest(method="getBlockByNumber", params_json="{not json"),
                       "rid-chain-params"),
             dead=False, request_id="rid-chain-params", check=_answer_code(-32700), log_text="not JSON"),
        # executor
        Case("executor", "block_proposal whose block is garbage RLP", "consensus.block_proposal",
             _envelope("consensus.block_proposal", pb.BlockProposal(block=b"\xf9\xff\xffgarbage"))),
        Case("executor", "sync_resp with a garbage block", "chain.sync_resp",
             _envelope("chain.sync_resp", pb.SyncResp(blocks=[b"\xf0garbage"], tip=0))),
        Case("executor", "executor_query with an unknown method", "jsonrpc.executor_query",
             _envelope("jsonrpc.executor_query", pb.RpcRequest(method="noSuchMethod", params_json="[]"),
                       "rid-exec-unknown"),
             dead=False, request_id="rid-exec-unknown", check=_answer_code(-32601), log_text="noSuchMethod"),
        Case("executor", "executor_query with non-JSON params", "jsonrpc.executor_query",
             _envelope("jsonrpc.executor_query", pb.RpcRequest(method="getBalance", params_json="{not json"),
                       "rid-exec-params"),
             dead=False, request_id="rid-exec-params", check=_answer_code(-32602), log_text="not JSON"),
        # jsonrpc: replies nobody can have asked for
        Case("jsonrpc", "tx_response without a request id", "auth.tx_response",
             _envelope("auth.tx_response", pb.TxResponse(results=[pb.TxResult(ok=True)]))),
        Case("jsonrpc", "rpc_response to a request nobody made", "executor.rpc_response",
             _envelope("executor.rpc_response", pb.RpcResponse(code=0, result_json="{{{"),
                       "rid-nobody-asked-for-this"),
             dead=False, log_text="rid-nobody-asked-for-this"),
    ]


@pytest.mark.timeout(120)
def test_malformed_bus_messages_are_dead_lettered_or_answered_and_no_service_exits(node: Node) -> None:
    node.wait_for_block(1, timeout=30)
    pids = _running_pids(node)
    cases = [c for s in SERVICES for c in _generic_cases(s)] + _nonsense_cases()
    assert {c.service for c in cases} == set(SERVICES)

    probe = BusProbe(node.config.amqp_url)
    try:
        dead_before = {s: probe.dead_count(s) for s in SERVICES}
        logs_before = {s: len(node.read_log(s)) for s in SERVICES}
        for c in cases:
            probe.publish(c.key, c.body, c.content_encoding)

        # -- dead letters: exactly the messages expected, per service and routing key
        expected_dead = {s: [c for c in cases if c.service == s and c.dead] for s in SERVICES}

        def dead_counts() -> dict[str, tuple[int, int]]:
            return {s: (probe.dead_count(s) - dead_before[s], len(expected_dead[s])) for s in SERVICES}

        try:
            _wait(lambda: all(got >= want for got, want in dead_counts().values()), 20,
                  "the malformed messages in the dead-letter queues")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: (dead-lettered, expected) per service: {dead_counts()}") from None
        time.sleep(1.0)  # anything dead-lettered by mistake would show up by now
        for s in SERVICES:
            got = probe.dead_count(s) - dead_before[s]
            assert got == len(expected_dead[s]), (
                s, got, [c.what for c in expected_dead[s]], node.read_log(s)[logs_before[s]:][-4000:])
            dead_keys = sorted(k for k, _body in probe.dead_messages(s)[dead_before[s]:])
            assert dead_keys == sorted(c.key for c in expected_dead[s]), s

        # -- answers with an error
        answered = [c for c in cases if not c.dead and c.request_id]
        probe.collect_replies({c.request_id for c in answered}, timeout=15)
        for c in answered:
            assert c.request_id in probe.replies, f"{c.service}: no answer to {c.what}"
            assert c.check is not None
            c.check(*probe.replies[c.request_id])
        for c in cases:
            if c.dead and c.request_id:
                assert c.request_id not in probe.replies, f"{c.service} answered {c.what} but dead-lettered it too"
    finally:
        probe.close()

    # -- every one is logged
    def logged() -> dict[str, list[str]]:
        missing: dict[str, list[str]] = {}
        for s in SERVICES:
            text = node.read_log(s)[logs_before[s]:]
            for key in {c.key for c in expected_dead[s]}:
                want = sum(1 for c in expected_dead[s] if c.key == key)
                if text.count(f"dead-letters message {key}") < want:
                    missing.setdefault(s, []).append(f"{want} x dead-letters {key}")
            for c in cases:
                if c.service == s and c.log_text and c.log_text not in text:
                    missing.setdefault(s, []).append(c.log_text)
        return missing

    _wait(lambda: not logged(), 10, "every bad message to be logged")

    # -- nobody exited, the chain goes on and still takes transactions
    assert _running_pids(node) == pids
    h = node.get_height()
    assert node.wait_for_block(h + 3, timeout=30) >= h + 3
    account = node.accounts()[0]
    genesis = Genesis.load(node.config.genesis_path)
    wallet = Wallet.from_node(node.api, account.key(), genesis.chain_id)
    tx_hash = node.api.send_raw_transaction(wallet.transfer(b"\x42" * 20, 7, node.api.block_number() + 50))
    assert node.api.wait_for_receipt(tx_hash, timeout=20)["status"] == "0x1"
    assert _running_pids(node) == pids


# ---------------------------------------------------------------------------- (b) transactions


def _reject(api: Client, tx: SignedTransaction | bytes, code: int, *words: str) -> RpcError:
    with pytest.raises(RpcError) as info:
        api.send_raw_transaction(tx)
    err = info.value
    assert err.code == TX_REJECTED, err
    assert err.auth_code == code, err
    text = err.message.lower()
    for w in words:
        assert w in text, (w, err.message)
    assert err.data["reason"], err
    return err


@pytest.mark.timeout(90)
def test_transactions_auth_refuses_get_the_auth_code_and_a_clear_message(node: Node) -> None:
    api = node.api
    genesis = Genesis.load(node.config.genesis_path)
    chain_id = genesis.chain_id
    key = node.accounts()[0].key()
    wallet = Wallet.from_node(api, key, chain_id)
    tip = api.block_number()
    until = tip + 50
    to = b"\x33" * 20

    # accepted: the reference transaction
    good = wallet.transfer(to, 1, until)
    good_hash = api.send_raw_transaction(good)
    assert good_hash == good.hash

    rejected: list[bytes] = []

    # bad signature: an invalid recovery id, and an (r, s) that recovers nothing
    base = wallet.transfer(to, 2, until)
    for sig in (base.signature[:64] + b"\x07", b"\x00" * 65):
        bad = base.copy(signature=sig)
        _reject(api, bad, 2, "signature")
        rejected.append(bad.hash)
    # wrong chain id
    other_chain = transfer(key, to, 3, wallet.next_nonce(), until, chain_id + 1)
    _reject(api, other_chain, 3, "chain id", str(chain_id + 1))
    rejected.append(other_chain.hash)
    # the same transaction again: duplicate hash
    _reject(api, good, 4, "already")
    # another transaction reusing the nonce of the accepted one
    reuse = transfer(key, to, 4, good.nonce, until, chain_id)
    assert reuse.hash != good.hash
    _reject(api, reuse, 5, "nonce", str(good.nonce))
    rejected.append(reuse.hash)
    # valid_until_block already passed, and too far in the future
    tip = api.block_number()
    for bad_until in (tip, max(tip - 1, 0), tip + 1000):
        stale = transfer(key, to, 5, wallet.next_nonce(), bad_until, chain_id)
        _reject(api, stale, 6, "valid_until_block", str(bad_until))
        rejected.append(stale.hash)
    # quota below the intrinsic quota, and above the block quota limit
    low = transfer(key, to, 6, wallet.next_nonce(), until, chain_id, quota=intrinsic_quota(Action.TRANSFER, b"") - 1)
    _reject(api, low, 7, "quota", "intrinsic")
    rejected.append(low.hash)
    high = build_transaction(key, action=Action.STORE, to=to, value=0, data=rlp.encode([[b"k", b"v"]]),
                             nonce=wallet.next_nonce(), valid_until_block=until, chain_id=chain_id,
                             quota=genesis.quota_limit + 1)
    _reject(api, high, 7, "quota", "limit")
    rejected.append(high.hash)
    # not a transaction at all, and one over 1 MiB
    _reject(api, b"\xc3\x01\x02\x03", 1, "malformed")
    huge = build_transaction(key, action=Action.DEPLOY, to=b"", value=0, data=b"\x00" * (1024 * 1024 + 1),
                             nonce=wallet.next_nonce(), valid_until_block=until, chain_id=chain_id, quota=1)
    _reject(api, huge, 10, "limit")

    # the same verdicts inside one batch, in order, next to an accepted transaction
    ok2 = wallet.transfer(to, 8, until)
    results = api.send_raw_transactions([good, ok2, other_chain, reuse])
    assert isinstance(results[0], RpcError) and results[0].auth_code == 4
    assert results[1] == ok2.hash
    assert isinstance(results[2], RpcError) and results[2].auth_code == 3
    assert isinstance(results[3], RpcError) and results[3].auth_code == 5

    # the accepted ones land, the refused ones never do, and auth is still serving
    for h in (good_hash, ok2.hash):
        assert api.wait_for_receipt(h, timeout=20)["status"] == "0x1"
    node.wait_for_blocks(2, timeout=20)
    receipts = api.batch([("getTransactionReceipt", [to_hex(h)]) for h in rejected])
    assert receipts == [None] * len(rejected)
    assert api.get_balance(to) == 1 + 8
    assert node.read_log("auth").count("Traceback") == 0


# ---------------------------------------------------------------------------- (c) JSON-RPC


def _post(node: Node, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
    cfg = node.config
    conn = http.client.HTTPConnection(cfg.jsonrpc_host, cfg.jsonrpc_port, timeout=30)
    try:
        conn.request("POST", "/", body, {"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw else None), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def _error_of(doc: Any, code: int, *words: str) -> dict[str, Any]:
    assert isinstance(doc, dict) and doc.get("jsonrpc") == "2.0", doc
    assert "result" not in doc, doc
    err = doc["error"]
    assert err["code"] == code, doc
    for w in words:
        assert w.lower() in err["message"].lower(), (w, doc)
    return err


@pytest.mark.timeout(90)
def test_malformed_json_rpc_gets_clear_errors_and_the_node_keeps_serving(node: Node) -> None:
    api = node.api
    pid = _running_pids(node)["jsonrpc"]
    call = {"jsonrpc": "2.0", "id": 1, "method": "blockNumber", "params": []}

    # not JSON at all, and not UTF-8
    for body in (b"{this is not json", b"\xff\xfe\x00garbage", b""):
        status, doc, _ = _post(node, body)
        assert status == 200
        _error_of(doc, -32700, "parse error")
        assert doc["id"] is None
    # wrong jsonrpc version, missing version, method not a string, not an object
    for bad in ({**call, "jsonrpc": "1.0"}, {k: v for k, v in call.items() if k != "jsonrpc"}):
        _status, doc, _ = _post(node, json.dumps(bad).encode())
        _error_of(doc, -32600, "jsonrpc")
    _status, doc, _ = _post(node, json.dumps({**call, "method": 5}).encode())
    _error_of(doc, -32600, "method")
    _status, doc, _ = _post(node, b"42")
    _error_of(doc, -32600, "not an object")
    _status, doc, _ = _post(node, b"[]")
    _error_of(doc, -32600, "empty batch")
    # unknown method
    _status, doc, _ = _post(node, json.dumps({**call, "method": "eth_mine"}).encode())
    assert _error_of(doc, -32601, "eth_mine") and doc["id"] == 1
    # bad params: each names the param
    bad_params = [
        ("getBalance", ["0x1234", "latest"], "address"),
        ("getBalance", ["0x" + "zz" * 20], "address"),
        ("getBlockByNumber", ["nope", False], "number"),
        ("getBlockByNumber", [-1], "number"),
        ("getBlockByNumber", ["latest", "yes"], "full"),
        ("getBlockByHash", [], "hash"),
        ("getStorageAt", ["0x" + "11" * 20, "0x1"], "key"),
        ("getTransactionReceipt", ["0x" + "ab" * 31], "hash"),
        ("sendRawTransaction", ["not hex"], "data"),
        ("sendRawTransaction", ["0x"], "data"),
        ("blockNumber", {"named": "params"}, "array"),
        ("getCode", ["0x" + "11" * 20, "latest", "extra"], "at most"),
    ]
    for method, params, word in bad_params:
        _status, doc, _ = _post(node, json.dumps({**call, "method": method, "params": params}).encode())
        _error_of(doc, -32602, word)

    # a batch mixing good and bad calls: every call answered under its own id
    batch = [
        {"jsonrpc": "2.0", "id": "good", "method": "blockNumber", "params": []},
        {"jsonrpc": "2.0", "id": "unknown", "method": "noSuchMethod", "params": []},
        {"jsonrpc": "2.0", "id": "params", "method": "getBalance", "params": ["0x12"]},
        {"jsonrpc": "1.0", "id": "version", "method": "blockNumber"},
        {"jsonrpc": "2.0", "id": "tx", "method": "sendRawTransaction", "params": ["0xc3010203"]},
        {"jsonrpc": "2.0", "id": "balance", "method": "getBalance", "params": [node.accounts()[0].address]},
        {"jsonrpc": "2.0", "method": "blockNumber"},  # a notification: no answer
        17,
    ]
    status, doc, _ = _post(node, json.dumps(batch).encode())
    assert status == 200 and isinstance(doc, list), doc
    assert len(doc) == 7, doc
    by_id = {item["id"]: item for item in doc if item["id"] is not None}
    assert int(by_id["good"]["result"], 16) >= 0
    _error_of(by_id["unknown"], -32601)
    _error_of(by_id["params"], -32602, "address")
    _error_of(by_id["version"], -32600, "jsonrpc")
    tx_err = _error_of(by_id["tx"], TX_REJECTED, "malformed")
    assert tx_err["data"]["code"] == 1
    assert int(by_id["balance"]["result"], 16) == 10**30
    nulls = [item for item in doc if item["id"] is None]
    assert len(nulls) == 1
    _error_of(nulls[0], -32600, "not an object")

    # an oversized body: HTTP 413 with a JSON-RPC error, connection closed
    big = b'{"jsonrpc":"2.0","id":1,"method":"sendRawTransaction","params":["0x' + b"00" * (MAX_BODY // 2) + b'"]}'
    assert len(big) > MAX_BODY
    status, doc, headers = _post(node, big)
    assert status == 413
    _error_of(doc, -32600, "exceeds")
    assert headers.get("connection", "").lower() == "close"
    # a body of exactly the limit is still served
    just = b'{"jsonrpc":"2.0","id":2,"method":"getBalance","params":["0x' + b"00" * 20 + b'"]}'
    just = just + b" " * (MAX_BODY - len(just))
    status, doc, _ = _post(node, just)
    assert status == 200 and doc["result"] == "0x0", doc

    # the node keeps serving: same process, JSON-RPC answers, blocks keep coming
    assert _running_pids(node)["jsonrpc"] == pid
    h = api.block_number()
    assert api.wait_for_block(h + 2, timeout=20) >= h + 2
    assert from_hex(api.call("getCode", "0x" + "00" * 20)) == b""
    assert node.read_log("jsonrpc").count("Traceback") == 0

"""pycita.mq against a real RabbitMQ broker (one fresh vhost per test, see conftest.amqp_url)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator

import pika
import pytest

from pycita import mq, rabbit
from pycita.errors import DecodeError
from pycita.mq import Bus, BusClosedError, BusError, MessageProps


class Inbox:
    """Collects deliveries of one bus; lets the test wait for them."""

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes, MessageProps, int]] = []
        self.cond = threading.Condition()

    def __call__(self, routing_key: str, body: bytes, props: MessageProps) -> None:
        with self.cond:
            self.items.append((routing_key, body, props, threading.get_ident()))
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[list[tuple[str, bytes, MessageProps, int]]], bool],
                 timeout: float = 20.0) -> list[tuple[str, bytes, MessageProps, int]]:
        with self.cond:
            if not self.cond.wait_for(lambda: predicate(self.items), timeout):
                raise AssertionError(f"timed out; got {len(self.items)} messages: "
                                     f"{[(rk, b[:20]) for rk, b, _, _ in self.items[:10]]}")
            return list(self.items)

    def wait_count(self, n: int, timeout: float = 20.0) -> list[tuple[str, bytes, MessageProps, int]]:
        return self.wait_for(lambda items: len(items) >= n, timeout)

    def bodies(self) -> list[bytes]:
        with self.cond:
            return [b for _, b, _, _ in self.items]


@pytest.fixture
def make_bus(amqp_url: str) -> Iterator[Callable[..., Bus]]:
    """Create and start buses on the test's vhost; stop them all afterwards."""
    buses: list[Bus] = []

    def factory(service: str, bindings: list[str], handler: mq.Handler | None = None,
                start: bool = True, **kwargs: object) -> Bus:
        bus = Bus(amqp_url, service, bindings, **kwargs)  # type: ignore[arg-type]
        if handler is not None:
            bus.on_message(handler)
        buses.append(bus)
        if start:
            bus.start()
            assert bus.wait_connected(30), f"bus {service} did not connect"
        return bus

    yield factory
    for bus in buses:
        bus.stop()


def raw_channel(amqp_url: str) -> tuple[pika.BlockingConnection, pika.adapters.blocking_connection.BlockingChannel]:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    return conn, conn.channel()


def drain_queue(amqp_url: str, queue: str, expect: int, timeout: float = 20.0
                ) -> list[tuple[pika.BasicProperties, bytes]]:
    """basic_get messages from ``queue`` until ``expect`` arrived (acking them)."""
    conn, ch = raw_channel(amqp_url)
    got: list[tuple[pika.BasicProperties, bytes]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < expect and time.monotonic() < deadline:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                time.sleep(0.05)
                continue
            got.append((props, body))
    finally:
        conn.close()
    assert len(got) >= expect, f"only {len(got)} of {expect} messages in {queue}"
    return got


# ----------------------------------------------------------------- basics


def test_a_published_message_reaches_every_service_bound_to_its_routing_key(make_bus: Callable[..., Bus]) -> None:
    chain_inbox, auth_inbox = Inbox(), Inbox()
    make_bus("chain", ["consensus.*"], chain_inbox)
    make_bus("auth", ["*.block"], auth_inbox)
    consensus = make_bus("consensus", [])

    consensus.publish("consensus.block", b"block-1", confirm=True, correlation_id="c-1",
                      reply_to="consensus", headers={"height": 7})
    consensus.publish("consensus.vote", b"vote-1")

    rk, body, props, _ = chain_inbox.wait_count(2)[0]
    assert (rk, body) == ("consensus.block", b"block-1")
    assert props.correlation_id == "c-1"
    assert props.reply_to == "consensus"
    assert props.headers == {"height": 7}
    assert props.app_id == "consensus"
    assert props.message_id
    assert props.content_encoding is None
    assert chain_inbox.bodies() == [b"block-1", b"vote-1"]
    assert [b for _, b, _, _ in auth_inbox.wait_count(1)] == [b"block-1"]


def test_the_topology_is_durable_with_a_dead_letter_queue_per_service(make_bus: Callable[..., Bus],
                                                                     amqp_url: str) -> None:
    make_bus("executor", ["chain.*"], Inbox())
    conn, ch = raw_channel(amqp_url)
    try:
        # passive declares fail (closing the channel) if the entity is missing
        ch.exchange_declare("cita", exchange_type="topic", durable=True, passive=True)
        ch.exchange_declare("cita.dlx", exchange_type="topic", durable=True, passive=True)
        ch.queue_declare("executor", passive=True)
        ch.queue_declare("executor.dead", passive=True)
        # re-declaring with the same arguments is accepted: proves durable + DLX arguments
        ch.queue_declare("executor", durable=True, arguments={
            "x-dead-letter-exchange": "cita.dlx", "x-dead-letter-routing-key": "executor"})
    finally:
        conn.close()


def test_handlers_and_timers_run_in_the_loop_thread_and_may_publish_directly(
        make_bus: Callable[..., Bus]) -> None:
    sink = Inbox()
    make_bus("network", ["chain.forwarded", "chain.tick"], sink)
    chain_box: dict[str, Bus] = {}
    loop_threads: set[int] = set()

    def forward(routing_key: str, body: bytes, props: MessageProps) -> None:
        loop_threads.add(threading.get_ident())
        chain_box["bus"].publish("chain.forwarded", body + b"!", confirm=True)

    chain = make_bus("chain", ["auth.*"], forward)
    chain_box["bus"] = chain

    def tick() -> None:
        loop_threads.add(threading.get_ident())
        chain.publish("chain.tick", b"tick")

    chain.call_later(0.05, tick)
    make_bus("auth", []).publish("auth.tx", b"tx")

    items = sink.wait_count(2)
    assert sorted(b for _, b, _, _ in items) == [b"tick", b"tx!"]
    assert len(loop_threads) == 1
    assert threading.get_ident() not in loop_threads


# ------------------------------------------------------------ dead letters


def test_a_handler_exception_dead_letters_the_message_and_consumption_continues(
        make_bus: Callable[..., Bus], amqp_url: str) -> None:
    seen: list[bytes] = []
    done = threading.Event()

    def handler(routing_key: str, body: bytes, props: MessageProps) -> None:
        seen.append(body)
        if body == b"poison":
            raise ValueError("cannot handle this")
        if body == b"undecodable":
            raise DecodeError("Block", "truncated")
        if body == b"good":
            done.set()

    make_bus("chain", ["consensus.*"], handler)
    sender = make_bus("consensus", [])
    for body in (b"poison", b"undecodable", b"good"):
        sender.publish("consensus.block", body, confirm=True)

    assert done.wait(20)
    dead = drain_queue(amqp_url, "chain.dead", 2)
    assert sorted(body for _, body in dead) == [b"poison", b"undecodable"]
    props = dead[0][0]
    assert props.headers["x-death"][0]["routing-keys"] == ["consensus.block"]
    assert props.headers["x-death"][0]["reason"] == "rejected"
    # acked messages are gone, rejected ones were not requeued
    assert seen == [b"poison", b"undecodable", b"good"]
    time.sleep(0.3)
    assert seen == [b"poison", b"undecodable", b"good"]


def test_a_garbage_snappy_body_or_unknown_content_encoding_is_dead_lettered_without_calling_the_handler(
        make_bus: Callable[..., Bus], amqp_url: str) -> None:
    inbox = Inbox()
    make_bus("chain", ["raw.*"], inbox)
    huge_claim = bytes([0xFF, 0xFF, 0xFF, 0xFF, 0x0F]) + b"\x00" * 16  # claims 4 GiB uncompressed
    conn, ch = raw_channel(amqp_url)
    try:
        for encoding, body in (("snappy", b"\xff\xfe definitely not snappy"),
                               ("snappy", huge_claim),
                               ("snappy", b""),
                               ("gzip", b"\x1f\x8b whatever"),
                               (None, b"plain")):
            ch.basic_publish("cita", "raw.msg", body, pika.BasicProperties(content_encoding=encoding))
    finally:
        conn.close()

    inbox.wait_count(1)
    assert inbox.bodies() == [b"plain"]
    dead = drain_queue(amqp_url, "chain.dead", 4)
    assert sorted(p.content_encoding for p, _ in dead) == ["gzip", "snappy", "snappy", "snappy"]
    time.sleep(0.2)
    assert inbox.bodies() == [b"plain"]


# ----------------------------------------------------------- compression


def test_large_bodies_are_snappy_compressed_and_flagged_and_arrive_intact(make_bus: Callable[..., Bus]) -> None:
    inbox = Inbox()
    make_bus("snapshot", ["chain.*"], inbox)
    chain = make_bus("chain", [])
    five_mb = (b"state-chunk " * 200_000 + os.urandom(1_000_000))[:5 * 1024 * 1024]
    small = b"tiny body"
    incompressible = os.urandom(mq.COMPRESS_THRESHOLD + 1)

    chain.publish("chain.snapshot_chunk", five_mb, confirm=True)
    chain.publish("chain.small_forced", small, compress=True, confirm=True)
    chain.publish("chain.big_plain", five_mb, compress=False, confirm=True)
    chain.publish("chain.random", incompressible, confirm=True)

    items = {rk: (body, props) for rk, body, props, _ in inbox.wait_count(4, timeout=60)}
    assert items["chain.snapshot_chunk"][0] == five_mb
    assert items["chain.snapshot_chunk"][1].content_encoding == "snappy"
    assert items["chain.small_forced"] == (small, items["chain.small_forced"][1])
    assert items["chain.small_forced"][1].content_encoding == "snappy"
    assert items["chain.big_plain"][0] == five_mb
    assert items["chain.big_plain"][1].content_encoding is None
    # auto mode does not compress when snappy would not make the body smaller
    assert items["chain.random"][0] == incompressible
    assert items["chain.random"][1].content_encoding is None


def test_the_compressed_wire_form_is_raw_snappy_decided_by_the_content_encoding_property() -> None:
    body = b"x" * (mq.COMPRESS_THRESHOLD + 1)
    payload, encoding = mq.encode_body(body)
    assert encoding == "snappy" and len(payload) < len(body)
    assert mq.decode_body(payload, "snappy") == body
    # never decompress by guessing: without the property the bytes are passed through
    assert mq.decode_body(payload, None) == payload
    assert mq.encode_body(b"small") == (b"small", None)
    with pytest.raises(DecodeError):
        mq.decode_body(b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80", "snappy")
    with pytest.raises(DecodeError):
        mq.decode_body(payload, "zstd")


# ------------------------------------------------------------- threading


@pytest.mark.timeout(120)
def test_eight_threads_can_publish_with_confirms_concurrently_while_the_loop_consumes(
        make_bus: Callable[..., Bus]) -> None:
    inbox = Inbox()
    publisher = make_bus("jsonrpc", ["jsonrpc.*"], inbox)
    per_thread = 60
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(per_thread):
                publisher.publish("jsonrpc.call", f"{n}:{i}".encode(), confirm=True, timeout=30)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    inbox.wait_count(8 * per_thread, timeout=30)
    bodies = inbox.bodies()
    assert set(bodies) == {f"{n}:{i}".encode() for n in range(8) for i in range(per_thread)}
    # per-thread order is preserved
    for n in range(8):
        mine = [b for b in bodies if b.startswith(f"{n}:".encode())]
        assert mine == [f"{n}:{i}".encode() for i in range(per_thread)]


def test_a_request_from_a_foreign_thread_gets_the_reply_with_the_same_correlation_id(
        make_bus: Callable[..., Bus]) -> None:
    def responder(routing_key: str, body: bytes, props: MessageProps) -> None:
        chain.reply(props, "chain.pong", body.upper())

    chain = make_bus("chain", ["jsonrpc.ping"], responder)
    gateway = make_bus("jsonrpc", [], Inbox())

    results: list[tuple[str, bytes]] = []

    def call(n: int) -> None:
        results.append(gateway.request("jsonrpc.ping", f"hello {n}".encode(),
                                       reply_binding="chain.pong", timeout=20))

    threads = [threading.Thread(target=call, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == sorted(("chain.pong", f"HELLO {n}".encode()) for n in range(4))
    assert "chain.pong" in gateway.bindings


def test_request_cannot_be_called_from_the_loop_thread_and_times_out_without_a_responder(
        make_bus: Callable[..., Bus]) -> None:
    failures: list[BaseException] = []

    def handler(routing_key: str, body: bytes, props: MessageProps) -> None:
        try:
            bus.request("nobody.ping", b"x", timeout=1)
        except BusError as exc:
            failures.append(exc)

    bus = make_bus("jsonrpc", ["self.*"], handler)
    bus.publish("self.go", b"go", confirm=True)
    deadline = time.monotonic() + 10
    while not failures and time.monotonic() < deadline:
        time.sleep(0.02)
    assert failures and "loop thread" in str(failures[0])
    with pytest.raises(mq.BusTimeoutError):
        bus.request("nobody.ping", b"x", reply_binding="nobody.pong", timeout=0.5)


# ---------------------------------------------------------------- timers


def test_timers_fire_in_the_loop_thread_repeat_survive_exceptions_and_can_be_cancelled(
        make_bus: Callable[..., Bus]) -> None:
    bus = make_bus("consensus", [], Inbox())
    once: list[int] = []
    ticks: list[float] = []
    failing: list[int] = []

    def boom() -> None:
        failing.append(1)
        raise RuntimeError("timer failure is logged, not fatal")

    bus.call_later(0.05, lambda: once.append(threading.get_ident()))
    ticker = bus.call_every(0.05, lambda: ticks.append(time.monotonic()))
    bad = bus.call_every(0.05, boom)
    cancelled = bus.call_later(0.2, lambda: once.append(-1))
    cancelled.cancel()
    time.sleep(0.6)
    ticker.cancel()
    bad.cancel()
    n_ticks = len(ticks)
    time.sleep(0.2)

    assert len(once) == 1 and once[0] != threading.get_ident()
    assert 5 <= n_ticks <= 14
    assert len(ticks) == n_ticks
    assert len(failing) >= 5


# ------------------------------------------------------------ lifecycle


def test_stop_from_another_thread_ends_the_loop_and_later_publishes_raise(make_bus: Callable[..., Bus]) -> None:
    bus = make_bus("auth", ["x.*"], Inbox())
    thread = bus._thread
    assert thread is not None
    bus.stop()
    assert not thread.is_alive()
    assert not bus.is_connected
    with pytest.raises(BusClosedError):
        bus.publish("auth.tx", b"late")


def test_messages_published_before_the_loop_starts_are_sent_once_it_connects(
        make_bus: Callable[..., Bus]) -> None:
    inbox = Inbox()
    make_bus("chain", ["early.*"], inbox)
    early = make_bus("early", [], start=False)
    early.publish("early.msg", b"queued before start")
    early.start()
    assert inbox.wait_count(1)[0][1] == b"queued before start"


# ---------------------------------------------------------- reconnection


@pytest.mark.timeout(120)
def test_consumers_get_every_message_after_the_broker_is_stopped_and_started_during_traffic(
        make_bus: Callable[..., Bus]) -> None:
    inbox = Inbox()
    consumer = make_bus("chain", ["consensus.*"], inbox)
    producer = make_bus("consensus", [])
    ticks: list[float] = []
    consumer.call_every(0.1, lambda: ticks.append(time.monotonic()))
    total = 200
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for i in range(total):
                producer.publish("consensus.block", f"block {i}".encode(), confirm=True, timeout=60)
                time.sleep(0.01)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=produce)
    thread.start()
    inbox.wait_count(20)
    rabbit.stop_broker()
    try:
        time.sleep(1.0)
        assert not consumer.is_connected and not producer.is_connected
        ticks_while_down = len(ticks)
        time.sleep(0.5)
        assert len(ticks) > ticks_while_down, "timers must keep firing while disconnected"
    finally:
        rabbit.start_broker()
    thread.join(90)
    assert not thread.is_alive() and not errors, errors

    expected = {f"block {i}".encode() for i in range(total)}
    inbox.wait_for(lambda items: expected <= {b for _, b, _, _ in items}, timeout=60)
    assert consumer.is_connected and producer.is_connected


# ------------------------------------------------------------ broker admin


def test_amqp_urls_encode_the_vhost_and_rabbitmqctl_failures_carry_its_stderr(rabbitmq_broker: None) -> None:
    assert rabbit.amqp_url("node/0") == "amqp://guest:guest@127.0.0.1:5672/node%2F0"
    assert rabbit.amqp_url("n 1", port=5673).endswith(":5673/n%201")
    with pytest.raises(rabbit.BrokerError) as info:
        rabbit.rabbitmqctl("clear_permissions", "-p", "no-such-vhost-for-pycita", "guest")
    assert "no-such-vhost-for-pycita" in str(info.value)
    assert info.value.returncode not in (None, 0)


def test_a_vhost_with_a_slash_in_its_name_works_end_to_end(rabbitmq_broker: None) -> None:
    vhost = f"node/{os.getpid()}-{time.monotonic_ns()}"
    rabbit.ensure_vhost(vhost)
    rabbit.ensure_vhost(vhost)  # idempotent
    try:
        assert vhost in rabbit.list_vhosts()
        inbox = Inbox()
        bus = Bus(rabbit.amqp_url(vhost), "chain", ["chain.*"])
        bus.on_message(inbox)
        bus.start()
        try:
            bus.publish("chain.hello", b"hi", confirm=True)
            assert inbox.wait_count(1)[0][1] == b"hi"
        finally:
            bus.stop()
    finally:
        rabbit.delete_vhost(vhost)
        rabbit.delete_vhost(vhost)  # absent: no error
    assert vhost not in rabbit.list_vhosts()

"""The message-bus client every pycita service uses (RabbitMQ via pika).

Topology (DESIGN.md §3), all inside the node's own vhost (the AMQP URL's path):

* ``cita`` -- durable **topic** exchange every service publishes to.  Routing
  keys are ``<sender>.<msg_type>``, e.g. ``chain.snapshot_resp``.
* ``<service>`` -- one durable queue per service, named after the service,
  bound to ``cita`` with the service's routing-key patterns (``auth.*``,
  ``*.snapshot_req`` ...).  Declared with ``x-dead-letter-exchange=cita.dlx``
  and ``x-dead-letter-routing-key=<service>``.
* ``cita.dlx`` -- durable topic exchange receiving every message a service
  rejects; ``<service>.dead`` -- durable queue bound to it with key
  ``<service>``.  The original routing key of a dead message is kept by
  RabbitMQ in its ``x-death`` header.

Delivery semantics:

* A handler ``handler(routing_key, body, props)`` runs for each delivery in the
  bus's loop thread.  The message is **acked after the handler returns**.  If
  the handler raises (``DecodeError`` or any other ``Exception``) the message
  is logged (routing key, error, first bytes of the body) and rejected without
  requeue, i.e. dead-lettered; the service keeps consuming.
* Delivery is at-least-once: deliveries unacked when a connection drops are
  redelivered by the broker after reconnecting (``props.redelivered`` is then
  true), and a publish interrupted by a connection loss is sent again.
  **Handlers must therefore be idempotent.**
* Messages are persistent (``delivery_mode=2``).  Bodies over
  :data:`COMPRESS_THRESHOLD` bytes (or with ``compress=True``) are compressed
  with raw snappy and carry the AMQP property ``content_encoding="snappy"``; the
  receiver decompresses based on that property only, never by guessing.  An
  unknown content encoding, a body that does not decompress, or one that would
  decompress to more than :data:`MAX_DECOMPRESSED_SIZE` bytes is dead-lettered.

Threading: a pika ``BlockingConnection`` is not thread-safe, so one thread -- the
*loop thread*, running :meth:`Bus.run_forever` (or started with
:meth:`Bus.start`) -- owns the connection.  Handlers and timers
(:meth:`Bus.call_later`, :meth:`Bus.call_every`) run in it and may publish
directly.  :meth:`Bus.publish` may be called from any thread: other threads put
the message in a bounded outbox and wake the loop with
``connection.add_callback_threadsafe``; with ``confirm=True`` the caller blocks
until the broker confirmed it (or :class:`BusTimeoutError`).  Messages
published by one thread reach the broker in order.

Reconnection: when the connection drops (broker stopped or restarted), the loop
logs it and reconnects with exponential backoff (0.2 s doubling up to 5 s),
re-declaring the topology.  Meanwhile publishes are queued (bounded by
``max_outbox``) and sent after reconnecting; timers keep firing.  A handler or
timer that publishes with ``confirm=True`` while the connection is down gets a
:class:`BusNotConnectedError` (a handler raising it has its message
dead-lettered only if the connection is still up, otherwise the message is
simply redelivered).

Request/response (for threads other than the loop thread, e.g. the JSON-RPC
gateway): :meth:`Bus.request` publishes with a fresh ``correlation_id`` and
``reply_to=<service>`` and blocks until a message carrying the same
``correlation_id`` arrives on this service's queue (it is then consumed by
``request`` and not passed to the handler).  The responder answers with
:meth:`Bus.reply`, which copies the correlation id, to a routing key the
requester's queue is bound to (pass it as ``reply_binding``).

Keep handlers short: the loop thread also services AMQP heartbeats (30 s by
default), so a handler blocking for a minute gets the connection closed.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.channel
import pika.exceptions
import pika.spec
import snappy
from pika.adapters.blocking_connection import BlockingChannel

from pycita.errors import DecodeError, PycitaError

log = logging.getLogger(__name__)

EXCHANGE = "cita"
"""The topic exchange all services publish to."""
DLX_EXCHANGE = "cita.dlx"
"""The exchange rejected messages are dead-lettered to."""
SNAPPY = "snappy"
"""The ``content_encoding`` value marking a raw-snappy-compressed body."""
COMPRESS_THRESHOLD = 64 * 1024
"""Bodies larger than this many bytes are compressed unless ``compress=False``."""
MAX_DECOMPRESSED_SIZE = 256 * 1024 * 1024
"""A compressed body claiming to be larger than this is rejected before decompressing."""
DEFAULT_TIMEOUT = 30.0
"""Default seconds a foreign-thread ``publish(confirm=True)`` or ``request`` waits."""
BACKOFF_INITIAL = 0.2
BACKOFF_MAX = 5.0
_MAX_BLOCK = 0.5
"""Longest time the loop blocks in I/O, bounding how late a ``stop()`` from a signal handler takes effect."""
_DRAIN_BATCH = 1000
_NACK_RETRIES = 3
_LOG_BODY_BYTES = 64

# Errors meaning "this connection is unusable": reconnect.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ChannelClosed,
    pika.exceptions.ChannelWrongStateError,
    pika.exceptions.ConsumerCancelled,
    pika.exceptions.StreamLostError,
    OSError,
)


# --------------------------------------------------------------------- errors


class BusError(PycitaError):
    """Raised when the message bus cannot do what was asked (base of all bus errors)."""


class BusClosedError(BusError):
    """Raised when publishing on, or waiting for, a bus that has been stopped."""


class BusTimeoutError(BusError):
    """Raised when a confirmed publish or a request does not complete within its timeout.

    Typically the broker is down; a timed-out publish may still be delivered
    later if the loop was already sending it.
    """


class BusNotConnectedError(BusError):
    """Raised when the loop thread publishes with ``confirm=True`` while the connection is down."""


class BusOverflowError(BusError):
    """Raised when the outbox of messages waiting for the connection is full."""


class PublishNackedError(BusError):
    """Raised when the broker refuses (nacks) a confirmed publish on every retry."""


class TopologyError(BusError):
    """Raised when the exchanges/queues cannot be declared, e.g. a queue exists with other arguments."""


# -------------------------------------------------------------- message bodies


@dataclass(frozen=True)
class MessageProps:
    """The AMQP properties of a delivery that handlers may need."""

    correlation_id: str | None = None
    reply_to: str | None = None
    message_id: str | None = None
    content_encoding: str | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)
    redelivered: bool = False
    app_id: str | None = None


Handler = Callable[[str, bytes, MessageProps], None]


def encode_body(body: bytes, compress: bool | None = None) -> tuple[bytes, str | None]:
    """Return ``(payload, content_encoding)`` for ``body``.

    ``compress=None`` compresses bodies over :data:`COMPRESS_THRESHOLD` bytes
    when that makes them smaller; ``True`` always compresses; ``False`` never.
    """
    if not isinstance(body, bytes | bytearray | memoryview):
        raise TypeError(f"message body must be bytes, not {type(body).__name__}")
    raw = bytes(body)
    if compress is False or (compress is None and len(raw) <= COMPRESS_THRESHOLD):
        return raw, None
    packed = snappy.compress(raw)
    if compress is None and len(packed) >= len(raw):
        return raw, None
    return packed, SNAPPY


def _snappy_uncompressed_length(data: bytes) -> int:
    """Read the varint length preamble of a raw snappy block."""
    result = 0
    for i, byte in enumerate(data[:10]):
        result |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return result
    raise DecodeError("snappy body", "truncated or invalid length preamble")


def decode_body(payload: bytes, content_encoding: str | None) -> bytes:
    """Undo :func:`encode_body` according to ``content_encoding``; raise :class:`DecodeError` on bad input."""
    if content_encoding in (None, "", "identity"):
        return payload
    if content_encoding != SNAPPY:
        raise DecodeError("message body", f"unsupported content_encoding {content_encoding!r}")
    size = _snappy_uncompressed_length(payload)
    if size > MAX_DECOMPRESSED_SIZE:
        raise DecodeError("snappy body", f"claims {size} bytes uncompressed, limit is {MAX_DECOMPRESSED_SIZE}")
    try:
        out = snappy.uncompress(payload)
    except Exception as exc:  # python-snappy raises its own UncompressError and others
        raise DecodeError("snappy body", f"does not decompress: {exc or type(exc).__name__}") from exc
    return bytes(out)


# ---------------------------------------------------------------- internals


class Timer:
    """A handle for a callback scheduled with :meth:`Bus.call_later` or :meth:`Bus.call_every`."""

    __slots__ = ("fn", "interval", "due", "cancelled")

    def __init__(self, fn: Callable[[], object], due: float, interval: float | None) -> None:
        self.fn = fn
        self.due = due
        self.interval = interval
        self.cancelled = False

    def cancel(self) -> None:
        """Stop the timer; a call already running finishes.  Safe from any thread."""
        self.cancelled = True


class _Outgoing:
    __slots__ = ("routing_key", "payload", "properties", "confirm", "done", "error", "cancelled")

    def __init__(self, routing_key: str, payload: bytes, properties: pika.BasicProperties,
                 confirm: bool) -> None:
        self.routing_key = routing_key
        self.payload = payload
        self.properties = properties
        self.confirm = confirm
        self.done: threading.Event | None = threading.Event() if confirm else None
        self.error: BaseException | None = None
        self.cancelled = False

    def finish(self, error: BaseException | None = None) -> None:
        self.error = error
        if self.done is not None:
            self.done.set()


class _PendingRequest:
    __slots__ = ("message_id", "event", "result")

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        self.event = threading.Event()
        self.result: tuple[str, bytes] | None = None


def _connection_parameters(amqp_url: str) -> pika.URLParameters:
    params = pika.URLParameters(amqp_url)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(amqp_url).query)
    if "heartbeat" not in query:
        params.heartbeat = 30
    if "blocked_connection_timeout" not in query:
        params.blocked_connection_timeout = 60
    if "socket_timeout" not in query:
        params.socket_timeout = 5
    if "connection_attempts" not in query:
        params.connection_attempts = 1
    return params


def _noop() -> None:
    return None


def quiet_pika_logging(level: int = logging.CRITICAL) -> None:
    """Raise the level of pika's own loggers (call once from a service's ``main``).

    pika logs every failed connection attempt at ERROR with a traceback-like
    dump; the bus already logs one WARNING per attempt, so services normally
    silence pika.
    """
    logging.getLogger("pika").setLevel(level)


# --------------------------------------------------------------------- the bus


class Bus:
    """A service's connection to its node's message bus.  See the module docstring.

    ``amqp_url`` selects the broker and the node's vhost (see
    :func:`pycita.rabbit.amqp_url`); ``service`` names the queue; ``bindings``
    are routing-key patterns on the ``cita`` exchange; ``prefetch`` bounds
    unacked deliveries.  Nothing touches the network until the loop runs.
    """

    def __init__(self, amqp_url: str, service: str, bindings: Sequence[str], prefetch: int = 200, *,
                 max_outbox: int = 10_000, default_timeout: float = DEFAULT_TIMEOUT) -> None:
        if not service or "#" in service or "*" in service:
            raise ValueError(f"invalid service name {service!r}")
        self.service = service
        self.queue = service
        self.dead_queue = f"{service}.dead"
        self.prefetch = prefetch
        self.max_outbox = max_outbox
        self.default_timeout = default_timeout
        self._params = _connection_parameters(amqp_url)
        self._url_for_logs = f"{self._params.host}:{self._params.port}/{self._params.virtual_host}"

        self._lock = threading.RLock()
        self._outbox_space = threading.Condition(self._lock)
        self._outbox: collections.deque[_Outgoing] = collections.deque()
        self._bindings: list[str] = list(dict.fromkeys(bindings))
        self._bindings_dirty = False
        self._timers: list[tuple[float, int, Timer]] = []
        self._timer_seq = itertools.count()
        self._handler: Handler | None = None
        self._pending: dict[str, _PendingRequest] = {}

        # Owned by the loop thread.
        self._conn: pika.BlockingConnection | None = None
        self._chan: BlockingChannel | None = None
        self._confirm_chan: BlockingChannel | None = None
        self._bound: set[str] = set()
        self._consumer_tag: str | None = None
        self._broken = False
        self._backoff = BACKOFF_INITIAL
        self._next_attempt = 0.0

        self._loop_ident: int | None = None
        self._thread: threading.Thread | None = None
        self._wakeup = threading.Event()
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self.fatal_error: BaseException | None = None
        """The exception that ended a loop started with :meth:`start`, if any."""

    # ------------------------------------------------------------ public API

    def on_message(self, handler: Handler) -> None:
        """Set the function called as ``handler(routing_key, body, props)`` for each delivery.

        Consumption starts once a handler is set and the bus is connected.
        """
        with self._lock:
            self._handler = handler
        self._wake()

    def bind(self, pattern: str) -> None:
        """Add a routing-key binding to this service's queue (from any thread; kept across reconnects).

        Messages published after ``bind`` returns (from the same thread) are
        routed with the binding in place.
        """
        with self._lock:
            if pattern in self._bindings:
                return
            self._bindings.append(pattern)
            self._bindings_dirty = True
        self._wake()

    @property
    def bindings(self) -> list[str]:
        """The routing-key patterns the service queue is bound to."""
        with self._lock:
            return list(self._bindings)

    @property
    def is_connected(self) -> bool:
        """Whether the loop currently holds an open connection."""
        return self._connected.is_set()

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Block until the bus is connected (topology declared); return False on timeout."""
        return self._connected.wait(timeout)

    def publish(self, routing_key: str, body: bytes, *, confirm: bool = False,
                correlation_id: str | None = None, reply_to: str | None = None,
                headers: Mapping[str, Any] | None = None, compress: bool | None = None,
                timeout: float | None = None) -> None:
        """Publish ``body`` to the ``cita`` exchange with ``routing_key`` (``<sender>.<msg_type>``).

        Callable from any thread.  Without ``confirm`` the message is handed to
        the loop (or sent at once from the loop thread) and the call returns;
        if the connection is down it is queued and sent after reconnecting.
        With ``confirm=True`` the call returns only once the broker confirmed
        the message (retrying nacks), raising :class:`BusTimeoutError` after
        ``timeout`` seconds (default :attr:`default_timeout`),
        :class:`PublishNackedError`, :class:`BusClosedError`, or -- from the
        loop thread while disconnected -- :class:`BusNotConnectedError`.
        ``compress``: see :func:`encode_body`.
        """
        if self._stopped.is_set() or (self._stopping.is_set() and not self._in_loop_thread()):
            raise BusClosedError(f"bus of service {self.service} is stopped; cannot publish {routing_key}")
        timeout = self.default_timeout if timeout is None else timeout
        payload, encoding = encode_body(body, compress)
        props = pika.BasicProperties(
            delivery_mode=2,
            content_type="application/octet-stream",
            content_encoding=encoding,
            correlation_id=correlation_id,
            reply_to=reply_to,
            message_id=uuid.uuid4().hex,
            headers=dict(headers) if headers else None,
            app_id=self.service,
            timestamp=int(time.time()),
        )
        item = _Outgoing(routing_key, payload, props, confirm)
        if self._in_loop_thread():
            self._publish_from_loop(item)
            return
        self._enqueue(item, timeout)
        self._wake()
        if item.done is None:
            return
        if not item.done.wait(timeout):
            item.cancelled = True
            if not item.done.is_set():
                raise BusTimeoutError(
                    f"publish of {routing_key} not confirmed within {timeout:.1f} s "
                    f"(connected: {self.is_connected})")
        if item.error is not None:
            raise item.error

    def reply(self, request: MessageProps, routing_key: str, body: bytes, *,
              confirm: bool = False, headers: Mapping[str, Any] | None = None,
              compress: bool | None = None) -> None:
        """Publish a response to a :meth:`request`, copying its ``correlation_id``."""
        self.publish(routing_key, body, confirm=confirm, correlation_id=request.correlation_id,
                     headers=headers, compress=compress)

    def request(self, routing_key: str, body: bytes, reply_binding: str | None = None,
                timeout: float | None = None, *, headers: Mapping[str, Any] | None = None,
                compress: bool | None = None) -> tuple[str, bytes]:
        """Publish a request and block until its response arrives; return ``(routing_key, body)``.

        Not callable from the loop thread (it would wait for itself).  The
        request carries a fresh ``correlation_id`` and ``reply_to=<service>``;
        the first delivery on this service's queue with the same correlation id
        (other than the request itself) is the response.  ``reply_binding``, if
        given, is bound first so the response is routed here.  Raises
        :class:`BusTimeoutError` after ``timeout`` seconds.
        """
        if self._in_loop_thread():
            raise BusError("Bus.request() cannot be called from the loop thread (a handler or timer); "
                           "publish the request and handle the response in the handler instead")
        timeout = self.default_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        if reply_binding is not None:
            self.bind(reply_binding)
        cid = uuid.uuid4().hex
        payload, encoding = encode_body(body, compress)
        props = pika.BasicProperties(
            delivery_mode=2, content_type="application/octet-stream", content_encoding=encoding,
            correlation_id=cid, reply_to=self.service, message_id=uuid.uuid4().hex,
            headers=dict(headers) if headers else None, app_id=self.service, timestamp=int(time.time()))
        pending = _PendingRequest(props.message_id)
        with self._lock:
            self._pending[cid] = pending
        try:
            if self._stopping.is_set():
                raise BusClosedError(f"bus of service {self.service} is stopped")
            item = _Outgoing(routing_key, payload, props, True)
            self._enqueue(item, timeout)
            self._wake()
            assert item.done is not None
            if not item.done.wait(max(0.0, deadline - time.monotonic())):
                item.cancelled = True
                raise BusTimeoutError(f"request {routing_key} not confirmed within {timeout:.1f} s")
            if item.error is not None:
                raise item.error
            if not pending.event.wait(max(0.0, deadline - time.monotonic())):
                raise BusTimeoutError(f"no response to request {routing_key} within {timeout:.1f} s")
            if pending.result is None:
                raise BusClosedError(f"bus of service {self.service} stopped while waiting for a response")
            return pending.result
        finally:
            with self._lock:
                self._pending.pop(cid, None)

    def call_later(self, delay: float, fn: Callable[[], object]) -> Timer:
        """Run ``fn()`` once in the loop thread after ``delay`` seconds; callable from any thread."""
        return self._add_timer(Timer(fn, time.monotonic() + max(0.0, delay), None))

    def call_every(self, interval: float, fn: Callable[[], object], *,
                   first_delay: float | None = None) -> Timer:
        """Run ``fn()`` in the loop thread every ``interval`` seconds (first after ``first_delay``).

        Fixed rate; if the loop falls behind, missed ticks are skipped rather
        than run back to back.  An exception in ``fn`` is logged and the timer
        keeps running.  Timers fire whether or not the bus is connected.
        """
        if interval <= 0:
            raise ValueError("interval must be positive")
        first = interval if first_delay is None else max(0.0, first_delay)
        return self._add_timer(Timer(fn, time.monotonic() + first, interval))

    def start(self) -> threading.Thread:
        """Run :meth:`run_forever` in a new daemon thread and return it."""
        with self._lock:
            if self._thread is not None:
                raise BusError("bus already started")
            self._thread = threading.Thread(target=self._thread_main, name=f"bus-{self.service}",
                                            daemon=True)
        self._thread.start()
        return self._thread

    def run_forever(self) -> None:
        """Run the bus loop in the calling thread until :meth:`stop`.

        Raises :class:`TopologyError` if the topology cannot be declared;
        connection failures are retried forever.
        """
        with self._lock:
            if self._loop_ident is not None or self._stopped.is_set():
                raise BusError("bus loop already running or finished")
            self._loop_ident = threading.get_ident()
        try:
            while not self._stopping.is_set():
                self._wakeup.clear()
                if self._conn is None and time.monotonic() >= self._next_attempt:
                    self._connect()
                if self._conn is not None:
                    try:
                        self._service_connection()
                        if not self._broken:
                            self._conn.process_data_events(time_limit=self._block_time())
                    except _CONNECTION_ERRORS as exc:
                        self._connection_lost(exc)
                    if self._broken:
                        self._connection_lost(None)
                else:
                    wait = min(self._block_time(), max(0.0, self._next_attempt - time.monotonic()))
                    self._wakeup.wait(wait)
                self._run_due_timers()
        finally:
            self._shutdown()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop: flush the outbox if connected, close the connection; from any thread.

        From another thread it waits (up to ``timeout``) for a loop started
        with :meth:`start` to finish.  From the loop thread -- a handler, a
        timer, or a SIGTERM handler of a process running :meth:`run_forever`
        in its main thread (the recommended service layout) -- it only sets a
        flag, and the loop ends within half a second.
        """
        self._stopping.set()
        if self._in_loop_thread():
            return  # the loop notices within _MAX_BLOCK seconds
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("bus loop of %s did not stop within %.1f s", self.service, timeout)

    # ------------------------------------------------------------- internals

    def _thread_main(self) -> None:
        try:
            self.run_forever()
        except BaseException as exc:
            self.fatal_error = exc
            log.exception("bus loop of service %s died", self.service)

    def _in_loop_thread(self) -> bool:
        return self._loop_ident == threading.get_ident()

    def _wake(self) -> None:
        if self._in_loop_thread():
            return
        self._wakeup.set()
        conn = self._conn
        if conn is not None:
            try:
                conn.add_callback_threadsafe(_noop)
            except Exception:  # closed or closing: the loop will notice by itself
                pass

    def _enqueue(self, item: _Outgoing, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._outbox_space:
            while len(self._outbox) >= self.max_outbox:
                remaining = deadline - time.monotonic()
                if self._in_loop_thread() or remaining <= 0:
                    raise BusOverflowError(
                        f"outbox of service {self.service} is full ({self.max_outbox} messages waiting "
                        f"for the broker); cannot publish {item.routing_key}")
                self._outbox_space.wait(remaining)
            self._outbox.append(item)

    def _add_timer(self, timer: Timer) -> Timer:
        with self._lock:
            heapq.heappush(self._timers, (timer.due, next(self._timer_seq), timer))
        self._wake()
        return timer

    def _block_time(self) -> float:
        with self._lock:
            if self._outbox and self._conn is not None and not self._broken:
                return 0.0
            if self._timers:
                return max(0.0, min(_MAX_BLOCK, self._timers[0][0] - time.monotonic()))
        return _MAX_BLOCK

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        due: list[Timer] = []
        with self._lock:
            while self._timers and self._timers[0][0] <= now:
                due.append(heapq.heappop(self._timers)[2])
        for timer in due:
            if timer.cancelled:
                continue
            try:
                timer.fn()
            except Exception:
                log.exception("timer %r of service %s failed", timer.fn, self.service)
            if timer.interval is not None and not timer.cancelled:
                timer.due += timer.interval
                now = time.monotonic()
                if timer.due < now:  # fell behind: skip missed ticks
                    timer.due = now + timer.interval - ((now - timer.due) % timer.interval)
                with self._lock:
                    heapq.heappush(self._timers, (timer.due, next(self._timer_seq), timer))

    # connection management (loop thread only)

    def _connect(self) -> None:
        try:
            conn = pika.BlockingConnection(self._params)
        except (pika.exceptions.AMQPError, OSError) as exc:
            self._schedule_retry(f"cannot connect to {self._url_for_logs}: {exc!r}")
            return
        try:
            chan = conn.channel()
            chan.basic_qos(prefetch_count=self.prefetch)
            with self._lock:
                bindings = list(self._bindings)
                self._bindings_dirty = False
            self._declare(chan, bindings)
            confirm_chan = conn.channel()
            confirm_chan.confirm_delivery()
        except pika.exceptions.ChannelClosedByBroker as exc:
            self._close_quietly(conn)
            raise TopologyError(
                f"cannot declare the topology of service {self.service} on {self._url_for_logs}: "
                f"{exc.reply_code} {exc.reply_text}") from exc
        except _CONNECTION_ERRORS as exc:
            self._close_quietly(conn)
            self._schedule_retry(f"lost connection to {self._url_for_logs} while declaring: {exc!r}")
            return
        self._conn, self._chan, self._confirm_chan = conn, chan, confirm_chan
        self._bound = set(bindings)
        self._consumer_tag = None
        self._broken = False
        self._backoff = BACKOFF_INITIAL
        self._connected.set()
        log.info("service %s connected to %s", self.service, self._url_for_logs)

    def _declare(self, chan: BlockingChannel, bindings: Sequence[str]) -> None:
        chan.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)
        chan.exchange_declare(DLX_EXCHANGE, exchange_type="topic", durable=True)
        chan.queue_declare(self.dead_queue, durable=True)
        chan.queue_bind(self.dead_queue, DLX_EXCHANGE, routing_key=self.service)
        chan.queue_declare(self.queue, durable=True, arguments={
            "x-dead-letter-exchange": DLX_EXCHANGE,
            "x-dead-letter-routing-key": self.service,
        })
        for pattern in bindings:
            chan.queue_bind(self.queue, EXCHANGE, routing_key=pattern)

    def _schedule_retry(self, reason: str) -> None:
        log.warning("service %s: %s; retrying in %.1f s", self.service, reason, self._backoff)
        self._next_attempt = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    def _connection_lost(self, exc: BaseException | None) -> None:
        conn = self._conn
        self._conn = self._chan = self._confirm_chan = None
        self._consumer_tag = None
        self._broken = False
        self._connected.clear()
        if conn is not None:
            self._close_quietly(conn)
        self._schedule_retry(f"connection to {self._url_for_logs} lost ({exc!r})")

    @staticmethod
    def _close_quietly(conn: pika.BlockingConnection) -> None:
        try:
            if conn.is_open:
                conn.close()
        except Exception:
            pass

    def _service_connection(self) -> None:
        """Bring bindings and consumption up to date and send queued messages."""
        self._sync_bindings()
        self._drain_outbox(_DRAIN_BATCH)
        if self._broken:
            return
        with self._lock:
            handler = self._handler
            outbox_empty = not self._outbox
        # Start consuming only once the backlog from a disconnection is out, so
        # that responses keep their order relative to queued messages.
        if handler is not None and self._consumer_tag is None and outbox_empty:
            assert self._chan is not None
            self._consumer_tag = self._chan.basic_consume(self.queue, self._on_delivery)
            log.debug("service %s consuming from queue %s", self.service, self.queue)

    def _sync_bindings(self) -> None:
        with self._lock:
            if not self._bindings_dirty:
                return
            missing = [b for b in self._bindings if b not in self._bound]
            self._bindings_dirty = False
        assert self._chan is not None
        for pattern in missing:
            try:
                self._chan.queue_bind(self.queue, EXCHANGE, routing_key=pattern)
            except BaseException:
                with self._lock:
                    self._bindings_dirty = True
                raise
            self._bound.add(pattern)

    def _drain_outbox(self, limit: int | None) -> None:
        sent = 0
        while limit is None or sent < limit:
            if self._bindings_dirty:
                self._sync_bindings()
            with self._outbox_space:
                if not self._outbox:
                    return
                item = self._outbox.popleft()
                self._outbox_space.notify_all()
            if item.cancelled:
                continue
            try:
                self._send(item)
            except _CONNECTION_ERRORS:
                with self._lock:
                    self._outbox.appendleft(item)
                raise
            except BusError as exc:
                item.finish(exc)
            else:
                item.finish()
            sent += 1

    def _send(self, item: _Outgoing) -> None:
        chan = self._confirm_chan if item.confirm else self._chan
        if chan is None:
            raise BusNotConnectedError(f"not connected; cannot publish {item.routing_key}")
        for attempt in range(1, _NACK_RETRIES + 1):
            try:
                chan.basic_publish(EXCHANGE, item.routing_key, item.payload, item.properties)
                return
            except pika.exceptions.NackError:
                log.warning("broker nacked %s (attempt %d of %d)", item.routing_key, attempt, _NACK_RETRIES)
        raise PublishNackedError(f"broker nacked {item.routing_key} {_NACK_RETRIES} times")

    def _publish_from_loop(self, item: _Outgoing) -> None:
        if self._conn is not None and not self._broken:
            try:
                with self._lock:
                    backlog = bool(self._outbox)
                if backlog:
                    self._drain_outbox(None)
                self._send(item)
                return
            except _CONNECTION_ERRORS as exc:
                self._broken = True  # the loop reconnects once the current callback returns
                if item.confirm:
                    raise BusNotConnectedError(
                        f"connection lost while publishing {item.routing_key}: {exc!r}") from exc
                log.info("connection lost while publishing %s; queued for resending", item.routing_key)
        elif item.confirm:
            raise BusNotConnectedError(
                f"service {self.service} is not connected; cannot publish {item.routing_key} with confirm")
        self._enqueue(item, 0.0)

    def _on_delivery(self, chan: BlockingChannel, method: pika.spec.Basic.Deliver,
                     properties: pika.BasicProperties, body: bytes) -> None:
        routing_key = method.routing_key
        tag = method.delivery_tag
        try:
            data = decode_body(body, properties.content_encoding)
            cid = properties.correlation_id
            if cid is not None:
                with self._lock:
                    pending = self._pending.get(cid)
                if pending is not None and properties.message_id != pending.message_id:
                    pending.result = (routing_key, data)
                    pending.event.set()
                    self._settle(chan, tag, ack=True)
                    return
            handler = self._handler
            if handler is None:
                raise BusError("no handler registered")
            msg_props = MessageProps(
                correlation_id=cid,
                reply_to=properties.reply_to,
                message_id=properties.message_id,
                content_encoding=properties.content_encoding,
                headers=dict(properties.headers or {}),
                redelivered=bool(method.redelivered),
                app_id=properties.app_id,
            )
            handler(routing_key, data, msg_props)
        except Exception as exc:
            log.warning("service %s dead-letters message %s: %s; body starts %r",
                        self.service, routing_key, exc, bytes(body[:_LOG_BODY_BYTES]),
                        exc_info=not isinstance(exc, DecodeError))
            self._settle(chan, tag, ack=False)
            return
        self._settle(chan, tag, ack=True)

    def _settle(self, chan: BlockingChannel, tag: int, *, ack: bool) -> None:
        if self._broken:
            return  # the delivery tag is dead with the connection; the broker redelivers
        try:
            if ack:
                chan.basic_ack(tag)
            else:
                chan.basic_nack(tag, requeue=False)
        except _CONNECTION_ERRORS as exc:
            log.info("cannot %s delivery %d (%r); the broker will redeliver it",
                     "ack" if ack else "reject", tag, exc)
            self._broken = True

    def _shutdown(self) -> None:
        conn = self._conn
        if conn is not None and not self._broken:
            try:
                self._drain_outbox(None)
            except Exception as exc:
                log.warning("service %s could not flush its outbox on stop: %r", self.service, exc)
        self._stopped.set()
        self._conn = self._chan = self._confirm_chan = None
        self._connected.clear()
        if conn is not None:
            self._close_quietly(conn)
        with self._outbox_space:
            left = list(self._outbox)
            self._outbox.clear()
            self._outbox_space.notify_all()
            pending = list(self._pending.values())
        dropped = 0
        for item in left:
            if item.confirm:
                item.finish(BusClosedError(f"bus of service {self.service} stopped before "
                                           f"{item.routing_key} was published"))
            elif not item.cancelled:
                dropped += 1
        if dropped:
            log.warning("service %s stopped with %d unsent messages", self.service, dropped)
        for req in pending:
            req.event.set()
        with self._lock:
            self._loop_ident = None
        log.info("bus of service %s stopped", self.service)

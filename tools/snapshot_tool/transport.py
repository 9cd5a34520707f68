"""The RabbitMQ side of snapshot_tool: a thin :class:`~tools.snapshot_tool.coordinator.Transport`.

The tool does not use a durable service queue (a crashed tool would leave
one collecting messages). It declares the node's durable topic exchange
``cita`` (same arguments as :mod:`pycita.mq`) and an exclusive, auto-delete,
server-named queue bound to ``*.snapshot_resp``, ``*.snapshot_progress`` and
``*.pong``. Requests go out as ``snapshot.snapshot_req`` and ``cli.ping``
(persistent, publisher-confirmed). Undecodable messages are logged and dropped.
"""

from __future__ import annotations

import collections
import logging
import time
import uuid
from types import TracebackType
from typing import Any

import pika
import pika.exceptions

from pycita.errors import DecodeError
from pycita.messages import content_of, msg_type_of, pack, pb, unpack
from pycita.mq import EXCHANGE, decode_body
from tools.snapshot_tool.coordinator import Incoming
from tools.snapshot_tool.errors import TransportError

log = logging.getLogger(__name__)

SENDER = "snapshot"
PING_SENDER = "cli"
BINDINGS = ("*.snapshot_resp", "*.snapshot_progress", "*.pong")
_ERRORS = (pika.exceptions.AMQPError, OSError)


class PikaTransport:
    """Connects on construction; use as a context manager (closes the connection)."""

    def __init__(self, amqp_url: str) -> None:
        self.amqp_url = amqp_url
        self._params = pika.URLParameters(amqp_url)
        self._params.socket_timeout = 5
        self._params.connection_attempts = 1
        self._where = f"{self._params.host}:{self._params.port}/{self._params.virtual_host}"
        self._inbox: collections.deque[Incoming] = collections.deque()
        self._conn: Any = None
        self._chan: Any = None
        self._connect()

    # -------------------------------------------------------- connection

    def _connect(self) -> None:
        try:
            conn = pika.BlockingConnection(self._params)
        except _ERRORS as exc:
            raise TransportError(f"cannot connect to RabbitMQ at {self._where}: {exc!r} "
                                 f"(is the broker running and the node created?)") from exc
        try:
            chan = conn.channel()
            chan.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)
            queue = chan.queue_declare(f"snapshot_tool.{uuid.uuid4().hex[:12]}", exclusive=True,
                                       auto_delete=True).method.queue
            for pattern in BINDINGS:
                chan.queue_bind(queue, EXCHANGE, routing_key=pattern)
            chan.confirm_delivery()
            chan.basic_consume(queue, self._on_delivery, auto_ack=True, exclusive=True)
        except _ERRORS as exc:
            try:
                conn.close()
            except Exception:
                pass
            raise TransportError(f"cannot set up the reply queue on {self._where}: {exc!r}") from exc
        self._conn, self._chan = conn, chan

    def _reconnect(self) -> bool:
        self.close()
        try:
            self._connect()
        except TransportError as exc:
            log.warning("%s", exc)
            return False
        log.info("reconnected to %s (answers sent meanwhile are lost)", self._where)
        return True

    def close(self) -> None:
        conn, self._conn, self._chan = self._conn, None, None
        if conn is not None:
            try:
                if conn.is_open:
                    conn.close()
            except Exception:
                pass

    def __enter__(self) -> PikaTransport:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------- I/O

    def _publish(self, sender: str, msg_type: str, content: Any, request_id: str = "") -> None:
        key, body = pack(sender, msg_type, content, request_id)
        props = pika.BasicProperties(delivery_mode=2, content_type="application/octet-stream",
                                     message_id=uuid.uuid4().hex, app_id="snapshot_tool",
                                     timestamp=int(time.time()))
        for attempt in (1, 2):
            if self._chan is None and not self._reconnect():
                break
            try:
                self._chan.basic_publish(EXCHANGE, key, body, props, mandatory=True)
                return
            except pika.exceptions.UnroutableError as exc:
                raise TransportError(f"{key} reached no queue on {self._where}: no service of this node "
                                     f"has ever started (run pycita start)") from exc
            except _ERRORS as exc:
                log.warning("publishing %s failed (attempt %d): %r", key, attempt, exc)
                self.close()
        raise TransportError(f"cannot publish {key} to {self._where}")

    def send_request(self, req: pb.SnapshotReq) -> None:
        self._publish(SENDER, "snapshot_req", req, req.request_id)

    def send_ping(self, nonce: str) -> None:
        self._publish(PING_SENDER, "ping", pb.Ping(nonce=nonce))

    def poll(self, timeout: float) -> Incoming | None:
        deadline = time.monotonic() + max(0.0, timeout)
        while not self._inbox:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if self._conn is None and not self._reconnect():
                time.sleep(min(remaining, 1.0))
                continue
            try:
                self._conn.process_data_events(time_limit=min(remaining, 0.5))
            except _ERRORS as exc:
                log.warning("connection to %s lost: %r", self._where, exc)
                self.close()
        return self._inbox.popleft()

    def _on_delivery(self, _chan: Any, method: Any, props: Any, body: bytes) -> None:
        key = method.routing_key
        try:
            env = unpack(key, decode_body(body, props.content_encoding))
            content = content_of(env)
        except DecodeError as exc:
            log.warning("dropping undecodable %s: %s", key, exc)
            return
        if not isinstance(content, pb.SnapshotResp | pb.SnapshotProgress | pb.Pong):
            return
        if not content.service:
            content.service = key.partition(".")[0]
        if isinstance(content, pb.SnapshotResp | pb.SnapshotProgress) and not content.request_id:
            content.request_id = env.request_id
        log.debug("received %s (%s)", key, msg_type_of(key))
        self._inbox.append(content)

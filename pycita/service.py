"""The common frame of every service process: config, logging, bus, dispatch.

A service subclasses :class:`Service`, sets ``name`` and ``bindings`` (the
routing-key patterns it consumes), and fills ``handlers`` (msg_type ->
method). :meth:`Service.dispatch` decodes the envelope (a body that fails is
dead-lettered by the bus), checks the routing key agrees with the content and
calls the handler. Handlers must be idempotent: a message is acked only after
its handler returns, so a crash means redelivery.

Every service takes part in the snapshot protocol: it answers each
``snapshot.snapshot_req`` with a ``<service>.snapshot_resp`` carrying the
matching ``Resp``. The default answers (flight mode on at Begin, off at End
and Abort) suit a service that holds no chain data; services with work to do
override :meth:`Service.on_snapshot`. Any service listed in ``node.json``
thus joins the protocol with no change to snapshot_tool.

Every service also answers ``cli.ping`` with ``<service>.pong`` carrying
:meth:`Service.status` as JSON (used by ``pycita start`` and ``status``).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any, ClassVar

from pycita.config import NodeConfig, load_node_config
from pycita.errors import DecodeError
from pycita.messages import content_of, msg_type_of, pack, pb, unpack

log = logging.getLogger(__name__)

Handler = Callable[[pb.Message, Any], None]

RESP_FOR_CMD = {
    pb.Begin: pb.BeginAck,
    pb.Restore: pb.RestoreAck,
    pb.Clear: pb.ClearAck,
    pb.End: pb.EndAck,
    pb.Snapshot: pb.SnapshotAck,
    pb.Abort: pb.AbortAck,
}


class SnapshotStepFailed(Exception):
    """Raised by a service's snapshot step to report failure to snapshot_tool (message is shown to the user)."""


class Service:
    name: ClassVar[str] = "service"
    bindings: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: NodeConfig, bus: Any) -> None:
        self.cfg = cfg
        self.bus = bus
        self.flight_mode = False
        self.handlers: dict[str, Handler] = {
            "ping": self._on_ping,
            "snapshot_req": self._on_snapshot_req,
        }

    # -- bus plumbing -------------------------------------------------
    def all_bindings(self) -> list[str]:
        return sorted(set(self.bindings) | {"cli.ping", "snapshot.snapshot_req"})

    def dispatch(self, routing_key: str, body: bytes, props: Any = None) -> None:
        env = unpack(routing_key, body)
        handler = self.handlers.get(msg_type_of(routing_key))
        if handler is None:
            raise DecodeError(f"message {routing_key!r}", f"{self.name} has no handler for it")
        handler(env, content_of(env))

    def publish(self, msg_type: str, content: Any, request_id: str = "", confirm: bool = False) -> None:
        key, body = pack(self.name, msg_type, content, request_id)
        self.bus.publish(key, body, confirm=confirm)

    # -- status -------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """What ``pycita status`` shows for this service."""
        return {"flight_mode": self.flight_mode}

    def _on_ping(self, env: pb.Message, ping: pb.Ping) -> None:
        self.publish("pong", pb.Pong(nonce=ping.nonce, service=self.name, status_json=json.dumps(self.status())),
                     request_id=env.request_id)

    # -- snapshot protocol -------------------------------------------
    def _on_snapshot_req(self, env: pb.Message, req: pb.SnapshotReq) -> None:
        resp = pb.SnapshotResp(resp=RESP_FOR_CMD.get(req.cmd, pb.AbortAck), request_id=req.request_id,
                               service=self.name, flag=True)
        try:
            self.on_snapshot(req, resp)
        except SnapshotStepFailed as exc:
            resp.flag = False
            resp.error = str(exc)
        except Exception as exc:  # a failed step must still be answered
            log.exception("%s: snapshot step %s failed", self.name, pb.Cmd.Name(req.cmd))
            resp.flag = False
            resp.error = f"{type(exc).__name__}: {exc}"
        if resp.flag is not None:
            self.publish("snapshot_resp", resp, request_id=req.request_id, confirm=True)

    def on_snapshot(self, req: pb.SnapshotReq, resp: pb.SnapshotResp) -> None:
        """Handle one snapshot command and fill ``resp``; raise SnapshotStepFailed to fail it.

        Default: flight mode on at Begin, off at End and Abort; other commands acked.
        """
        if req.cmd == pb.Begin:
            self.flight_mode = True
        elif req.cmd in (pb.End, pb.Abort):
            self.flight_mode = False

    # -- lifecycle ----------------------------------------------------
    def start(self) -> None:
        """Called once the bus is connected, before consuming; set timers here."""

    def close(self) -> None:
        """Release stores; called on shutdown."""


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_service(cls: type[Service], argv: list[str] | None = None) -> int:
    """Entry point of ``python -m services.<name> --node-dir DIR``."""
    from pycita.mq import Bus

    parser = argparse.ArgumentParser(prog=f"services.{cls.name}")
    parser.add_argument("--node-dir", required=True)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    cfg = load_node_config(args.node_dir)
    service = cls(cfg, None)
    bus = Bus(cfg.amqp_url, cls.name, service.all_bindings())
    service.bus = bus
    bus.on_message(service.dispatch)

    def _stop(signum: int, _frame: Any) -> None:
        log.info("%s: signal %s, stopping", cls.name, signum)
        bus.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    service.start()
    log.info("%s: running for node %s", cls.name, cfg.node_dir)
    try:
        bus.run_forever()
    finally:
        service.close()
        log.info("%s: stopped", cls.name)
    return 0

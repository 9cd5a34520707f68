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

A step that takes long (chain and executor export and restore) runs in a
worker thread: ``on_snapshot`` returns :data:`ANSWER_LATER` from
:meth:`Service.start_snapshot_job`, the job publishes
``<service>.snapshot_progress`` while it works, and the response is published
from the loop thread when it ends. A service starting while
``run/restore.journal`` says ``"commit"`` starts in flight mode
(:func:`restore_committed`): a committed restore is still being completed.

Every service also answers ``cli.ping`` with ``<service>.pong`` carrying
:meth:`Service.status` as JSON (used by ``pycita start`` and ``status``).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
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


class SnapshotCancelled(SnapshotStepFailed):
    """Raised inside a snapshot job when an Abort (or shutdown) cancelled it."""


ANSWER_LATER: Any = object()
"""Returned by :meth:`Service.on_snapshot` when the response will be published later (by a job)."""

PROGRESS_INTERVAL = 1.0
"""Seconds between two ``snapshot_progress`` messages of one job."""


def restore_committed(cfg: Any) -> bool:
    """Whether ``<node>/run/restore.journal`` says ``"commit"`` (a restore is being completed).

    A journal that cannot be read counts as committed: the node must not serve
    or produce anything until snapshot_tool sorted it out.
    """
    from pycita.snapshot.journal import JournalError, Phase, RestoreJournal

    run_dir = getattr(cfg, "run_dir", None)
    if run_dir is None:
        return False
    try:
        entry = RestoreJournal(run_dir).read()
    except JournalError as exc:
        log.error("cannot read the restore journal (%s): starting in flight mode", exc)
        return True
    return entry is not None and entry.phase is Phase.COMMIT


class SnapshotJob:
    """One long snapshot step (export or restore) running in a worker thread.

    ``work(job)`` fills ``job.resp`` (raise :class:`SnapshotStepFailed` to
    fail); it should call :meth:`check` often (raises
    :class:`SnapshotCancelled` once cancelled) and :meth:`progress` (throttled
    to one message per :data:`PROGRESS_INTERVAL`). ``finish(job)`` (optional)
    runs in the worker thread after ``work`` under :attr:`lock`, success or
    not (``job.resp.flag`` tells); the response is then published from the
    loop thread. :attr:`lock` lets the loop thread take decisions (Abort)
    atomically with the job's end.
    """

    def __init__(self, service: Service, req: pb.SnapshotReq, resp: pb.SnapshotResp,
                 work: Callable[[SnapshotJob], None],
                 finish: Callable[[SnapshotJob], None] | None = None) -> None:
        self.service = service
        self.req = req
        self.resp = resp
        self.request_id = req.request_id
        self.cmd = req.cmd
        self._work = work
        self._finish = finish
        self.lock = threading.Lock()
        self.cancelled = threading.Event()
        self.done = False
        self._last_progress = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"{service.name}-{pb.Cmd.Name(req.cmd).lower()}")

    @property
    def running(self) -> bool:
        return not self.done

    def start(self) -> None:
        self.thread.start()

    def cancel(self) -> None:
        self.cancelled.set()

    def check(self) -> None:
        if self.cancelled.is_set():
            raise SnapshotCancelled(f"{self.service.name}: {pb.Cmd.Name(self.cmd)} cancelled")

    def progress(self, phase: str, *, force: bool = False, **counts: int) -> None:
        """Publish ``<service>.snapshot_progress`` (at most once a second unless ``force``)."""
        self.check()
        now = time.monotonic()
        if not force and now - self._last_progress < PROGRESS_INTERVAL:
            return
        self._last_progress = now
        try:
            self.service.publish("snapshot_progress", pb.SnapshotProgress(
                request_id=self.request_id, service=self.service.name, phase=phase, **counts),
                request_id=self.request_id)
        except Exception as exc:  # progress is best effort
            log.warning("%s: could not publish progress: %s", self.service.name, exc)

    def _run(self) -> None:
        name = self.service.name
        try:
            self._work(self)
        except SnapshotStepFailed as exc:
            self.resp.flag = False
            self.resp.error = str(exc)
        except Exception as exc:
            log.exception("%s: snapshot step %s failed", name, pb.Cmd.Name(self.cmd))
            self.resp.flag = False
            self.resp.error = f"{type(exc).__name__}: {exc}"
        with self.lock:
            if self.resp.flag and self.cancelled.is_set():
                self.resp.flag = False
                self.resp.error = f"{name}: {pb.Cmd.Name(self.cmd)} cancelled"
            try:
                if self._finish is not None:
                    self._finish(self)
            except Exception as exc:
                log.exception("%s: finishing snapshot step %s failed", name, pb.Cmd.Name(self.cmd))
                if self.resp.flag:
                    self.resp.flag = False
                    self.resp.error = f"{type(exc).__name__}: {exc}"
            self.done = True
        if self.resp.flag:
            log.info("%s: snapshot step %s done", name, pb.Cmd.Name(self.cmd))
        else:
            log.warning("%s: snapshot step %s failed: %s", name, pb.Cmd.Name(self.cmd), self.resp.error)
        try:
            self.service.bus.call_later(0, lambda: self.service.answer_snapshot(self.resp))
        except Exception:  # the bus is stopping: the tool times out and aborts
            log.exception("%s: cannot publish the answer to %s", name, pb.Cmd.Name(self.cmd))

    def join(self, timeout: float | None = None) -> None:
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout)


class Service:
    name: ClassVar[str] = "service"
    bindings: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: NodeConfig, bus: Any) -> None:
        self.cfg = cfg
        self.bus = bus
        self.flight_mode = restore_committed(cfg)
        if self.flight_mode:
            log.warning("%s: a committed restore is being completed (run/restore.journal): "
                        "starting in flight mode", self.name)
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
        self._props = props  # the delivery being handled, so reply() can answer a Bus.request
        try:
            handler(env, content_of(env))
        finally:
            self._props = None

    def reply(self, msg_type: str, content: Any, env: pb.Message) -> None:
        """Answer the message being handled: same request_id, and its AMQP correlation id if it had one."""
        key, body = pack(self.name, msg_type, content, env.request_id)
        correlation_id = getattr(self._props, "correlation_id", None)
        if correlation_id:
            self.bus.publish(key, body, correlation_id=correlation_id)
        else:
            self.bus.publish(key, body)

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
        answer: Any = None
        try:
            answer = self.on_snapshot(req, resp)
        except SnapshotStepFailed as exc:
            resp.flag = False
            resp.error = str(exc)
        except Exception as exc:  # a failed step must still be answered
            log.exception("%s: snapshot step %s failed", self.name, pb.Cmd.Name(req.cmd))
            resp.flag = False
            resp.error = f"{type(exc).__name__}: {exc}"
        if answer is ANSWER_LATER:
            return
        self.answer_snapshot(resp)

    def answer_snapshot(self, resp: pb.SnapshotResp) -> None:
        """Publish ``<service>.snapshot_resp`` (confirmed)."""
        self.publish("snapshot_resp", resp, request_id=resp.request_id, confirm=True)

    def swap_in_staged(self, paths: tuple[Path, Path, Path], end_height: int, block_hash: bytes,
                       close: Callable[[], None], reopen: Callable[[], None]) -> bool:
        """Clear's store swap for a service with a staged store: ``(live, staged, backup)`` paths.

        Checks the staged store's COMPLETE marker names (``end_height``,
        ``block_hash``), closes the live store, swaps staged -> live (live ->
        backup) and reopens it. Returns False when nothing is staged (a re-sent
        Clear); raises :class:`SnapshotStepFailed` when the staged store is
        incomplete or holds another block.
        """
        from pycita.snapshot.journal import commit_staged, read_complete_marker

        live, staged, backup = paths
        if not staged.exists():
            return False
        marker = read_complete_marker(staged)
        if marker is None:
            raise SnapshotStepFailed(f"{self.name}: the staged store {staged} is incomplete; restore again")
        if end_height and (marker["height"], marker["block_hash"]) != (end_height, block_hash):
            raise SnapshotStepFailed(
                f"{self.name}: the staged store holds block {marker['height']} "
                f"0x{marker['block_hash'].hex()}, Clear names {end_height} 0x{block_hash.hex()}")
        close()
        try:
            commit_staged(live, staged, backup)
        finally:
            reopen()
        return True

    def start_snapshot_job(self, req: pb.SnapshotReq, resp: pb.SnapshotResp,
                           work: Callable[[SnapshotJob], None],
                           finish: Callable[[SnapshotJob], None] | None = None) -> SnapshotJob:
        """Run ``work`` in a worker thread (see :class:`SnapshotJob`); return ANSWER_LATER from on_snapshot."""
        job = SnapshotJob(self, req, resp, work, finish)
        job.start()
        return job

    def on_snapshot(self, req: pb.SnapshotReq, resp: pb.SnapshotResp) -> Any:
        """Handle one snapshot command and fill ``resp``; raise SnapshotStepFailed to fail it.

        Return :data:`ANSWER_LATER` when a job will publish the response.
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
    from pycita.mq import Bus, quiet_pika_logging

    parser = argparse.ArgumentParser(prog=f"services.{cls.name}")
    parser.add_argument("--node-dir", required=True)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    quiet_pika_logging()  # the bus logs one WARNING per lost connection / failed attempt
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

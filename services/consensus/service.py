"""The consensus service: a thin bus adapter over :class:`services.consensus.engine.Engine`.

=============================  ==========  =================================================
routing key                    direction   meaning
=============================  ==========  =================================================
``chain.rich_status``          consumed    the committed tip (and proof); moves to the next height
``auth.block_txs``             consumed    pool transactions for the proposal
``executor.executed_result``   consumed    execution result of our proposal
``snapshot.snapshot_req``      consumed    flight mode at Begin, reset at Clear (base Service)
``cli.ping``                   consumed    liveness (base Service)
``consensus.block_txs_req``    published   ask auth for the next block's transactions
``consensus.block_proposal``   published   the proposal for the executor
``consensus.block_with_proof`` published   the decided block, proof and receipts (confirmed)
``consensus.snapshot_resp``    published   snapshot protocol answers (base Service)
``consensus.pong``             published   status for ``pycita status`` (base Service)
=============================  ==========  =================================================

The engine is driven by a clock tick (``call_every``) and by the messages
above; every handler runs in the bus loop thread, so the engine needs no lock.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pycita.config import NodeConfig
from pycita.errors import DecodeError, PycitaError
from pycita.genesis import Genesis
from pycita.messages import pb
from pycita.service import Service
from services.consensus.engine import Engine, EngineConfig, Outgoing

log = logging.getLogger(__name__)


class ConsensusService(Service):
    name = "consensus"
    bindings = ("chain.rich_status", "auth.block_txs", "executor.executed_result")

    def __init__(self, cfg: NodeConfig, bus: Any) -> None:
        super().__init__(cfg, bus)
        genesis = Genesis.load(cfg.genesis_path)
        self.engine = Engine(
            EngineConfig(
                chain_id=genesis.chain_id,
                validators=genesis.validators,
                quota_limit=genesis.quota_limit,
                block_interval=float(cfg.block_interval),
                max_block_txs=cfg.max_block_txs,
                stuck_timeout=cfg.extra.get("consensus_stuck_timeout"),
            ),
            cfg.private_key(),
        )
        self.handlers.update({
            "rich_status": self._on_rich_status,
            "block_txs": self._on_block_txs,
            "executed_result": self._on_executed_result,
        })
        if self.flight_mode:  # a committed restore is being completed (pycita.service.restore_committed)
            self.engine.set_flight_mode(True)
        if not self.engine.is_validator:
            log.warning("consensus: node key 0x%s is not a genesis validator; it will not propose",
                        self.engine.address.hex())

    # -- lifecycle ---------------------------------------------------
    def start(self) -> None:
        tick = max(0.02, min(0.1, float(self.cfg.block_interval) / 10))
        self.bus.call_every(tick, self._tick)

    def status(self) -> dict[str, Any]:
        return {**super().status(), **self.engine.status()}

    # -- handlers ----------------------------------------------------
    def _tick(self) -> None:
        self._send(self.engine.tick(time.time()))

    def _on_rich_status(self, env: pb.Message, msg: pb.RichStatus) -> None:
        self._send(self.engine.on_rich_status(msg, time.time()))

    def _on_block_txs(self, env: pb.Message, msg: pb.BlockTxs) -> None:
        if msg.height == 0:
            raise DecodeError("block_txs", "height 0 (genesis) is never proposed")
        self._send(self.engine.on_block_txs(msg, time.time()))

    def _on_executed_result(self, env: pb.Message, msg: pb.ExecutedResult) -> None:
        if msg.height == 0 or len(msg.proposal_hash) != 32:
            raise DecodeError("executed_result", f"height {msg.height} with a {len(msg.proposal_hash)}-byte "
                              "proposal hash names no proposal")
        self._send(self.engine.on_executed_result(msg, time.time()))

    def on_snapshot(self, req: pb.SnapshotReq, resp: pb.SnapshotResp) -> None:
        super().on_snapshot(req, resp)
        if req.cmd == pb.Begin:
            self.engine.set_flight_mode(True)
        elif req.cmd == pb.Clear:
            self.engine.set_flight_mode(True)  # drop whatever is in flight
            if len(req.block_hash) == 32 and req.HasField("proof"):
                self.engine.reset_to(req.end_height, req.block_hash, req.proof.SerializeToString())
        elif req.cmd in (pb.End, pb.Abort):
            self.engine.set_flight_mode(False)

    def _send(self, out: list[Outgoing]) -> None:
        for item in out:
            try:
                self.publish(item.msg_type, item.content, confirm=item.confirm)
            except PycitaError as exc:  # the engine's stuck timer retries
                log.warning("consensus: could not publish %s: %s", item.msg_type, exc)

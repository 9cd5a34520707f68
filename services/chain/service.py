"""The chain service: the node's block store (thin bus layer over :mod:`services.chain.chain`).

================================  ========================  ==============================================
consumes                          publishes                 what
================================  ========================  ==============================================
``consensus.block_with_proof``    ``chain.new_block``,      verify (ARCHITECTURE step 6), store in one
                                  ``chain.rich_status``     batch, announce; a bad block is logged, dropped
``*.sync_req``                    ``chain.sync_resp``       full block RLPs (<= 100 blocks / ~8 MiB)
``auth.recent_txs_req``           ``chain.recent_txs``      TxKeys of the newest N blocks
``jsonrpc.chain_query``           ``chain.rpc_response``    blockNumber, getBlockBy*, getTransaction*
``cli.ping``                      ``chain.pong``            height, block_hash, state_root
``snapshot.snapshot_req``         ``chain.snapshot_resp``   snapshot protocol (default handling for now)
(timer, every second)             ``chain.rich_status``     heartbeat
================================  ========================  ==============================================

Replies carry the request's envelope ``request_id`` and, when the request came
through :meth:`pycita.mq.Bus.request`, its AMQP ``correlation_id``.
"""

from __future__ import annotations

import logging
from typing import Any

from pycita.config import NodeConfig
from pycita.genesis import Genesis
from pycita.messages import pack, pb
from pycita.service import Service, run_service
from services.chain.chain import BlockRejected, Chain
from services.chain.rpc import ChainRpc
from services.chain.store import ChainStore

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0


class ChainService(Service):
    name = "chain"
    bindings = ("consensus.block_with_proof", "*.sync_req", "auth.recent_txs_req", "jsonrpc.chain_query")

    def __init__(self, cfg: NodeConfig, bus: Any) -> None:
        super().__init__(cfg, bus)
        self.store = ChainStore(cfg.service_data("chain"))
        try:
            self.chain = Chain(self.store, Genesis.load(cfg.genesis_path))
        except Exception:
            self.store.close()
            raise
        self.rpc = ChainRpc(self.store)
        self._props: Any = None
        self.handlers.update({
            "block_with_proof": self._on_block_with_proof,
            "sync_req": self._on_sync_req,
            "recent_txs_req": self._on_recent_txs_req,
            "chain_query": self._on_chain_query,
        })

    # -- plumbing -------------------------------------------------------------
    def dispatch(self, routing_key: str, body: bytes, props: Any = None) -> None:
        self._props = props
        try:
            super().dispatch(routing_key, body, props)
        finally:
            self._props = None

    def _reply(self, msg_type: str, content: Any, env: pb.Message) -> None:
        key, body = pack(self.name, msg_type, content, env.request_id)
        correlation_id = getattr(self._props, "correlation_id", None)
        if correlation_id:
            self.bus.publish(key, body, correlation_id=correlation_id)
        else:
            self.bus.publish(key, body)

    def start(self) -> None:
        self.publish_status()
        self.bus.call_every(HEARTBEAT_SECONDS, self.publish_status)

    def close(self) -> None:
        self.store.close()

    def status(self) -> dict[str, Any]:
        return {**super().status(), **self.chain.status()}

    def publish_status(self) -> None:
        self.publish("rich_status", self.chain.rich_status(self.flight_mode))

    # -- handlers ---------------------------------------------------------------
    def _on_block_with_proof(self, env: pb.Message, msg: pb.BlockWithProof) -> None:
        proof = msg.proof.SerializeToString() if msg.HasField("proof") else b""
        try:
            committed = self.chain.accept(msg.block, proof, list(msg.receipts))
        except BlockRejected as exc:
            log.warning("chain: %s", exc)
            return
        if committed is None:
            tip = self.chain.tip
            log.debug("chain: block already stored, re-announcing tip %s", tip.height)
            raw = self.store.new_block_msg(tip.height)
            if raw is not None:
                nb = pb.NewBlock()
                nb.ParseFromString(raw)
                self.publish("new_block", nb)
            self.publish_status()
            return
        log.info("chain: committed block %s 0x%s (%s txs)", committed.height, committed.hash.hex()[:16],
                 len(committed.new_block.txs))
        self.publish("new_block", committed.new_block)
        self.publish_status()

    def _on_sync_req(self, env: pb.Message, req: pb.SyncReq) -> None:
        self._reply("sync_resp", self.chain.sync_blocks(req.start_height, req.end_height), env)

    def _on_recent_txs_req(self, env: pb.Message, req: pb.RecentTxsReq) -> None:
        self._reply("recent_txs", self.chain.recent_txs(req.blocks), env)

    def _on_chain_query(self, env: pb.Message, req: pb.RpcRequest) -> None:
        self._reply("rpc_response", self.rpc.handle(req), env)


def main(argv: list[str] | None = None) -> int:
    return run_service(ChainService, argv)

"""The executor service: a thin bus layer over :mod:`services.executor.executor`.

==============================  ============================  ==================================================
consumes                        publishes                     what
==============================  ============================  ==================================================
``consensus.block_proposal``    ``executor.executed_result``  execute on the tip if it is the parent, keep the
                                (``executor.sync_req``)       result pending; else an error (and a catch-up)
``chain.rich_status``           (``executor.sync_req``)       commit the pending result of that height and
                                                              state root, or catch up
``chain.new_block``             (``executor.sync_req``)       commit when exactly one pending result fits
``chain.sync_resp``             (``executor.sync_req``)       re-execute, verify state_root/receipts_root,
                                                              commit; a mismatch halts execution (critical log)
``jsonrpc.executor_query``      ``executor.rpc_response``     getBalance, getTransactionCount, getCode, getAbi,
                                                              getStorageAt at "latest" or a height
``cli.ping``                    ``executor.pong``             height, block_hash, state_root, halted
``snapshot.snapshot_req``       ``executor.snapshot_resp``    snapshot protocol (default handling for now)
(timer, every second)           (``executor.sync_req``)       retry a catch-up the chain has not answered
==============================  ============================  ==================================================

Replies carry the request's envelope ``request_id`` and, when the request came
through :meth:`pycita.mq.Bus.request`, its AMQP ``correlation_id``. On its
first start the service writes the genesis state (checked against the genesis
header's state root).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pycita.config import NodeConfig
from pycita.errors import PycitaError
from pycita.execution import BlockMismatch, ExecutionError
from pycita.genesis import Genesis
from pycita.messages import pack, pb
from pycita.service import Service, run_service
from pycita.storage import LevelDB
from services.executor.executor import Executor, ProposalOutcome, SyncRange
from services.executor.rpc import ExecutorRpc, RpcError

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0


class ExecutorService(Service):
    name = "executor"
    bindings = ("consensus.block_proposal", "chain.rich_status", "chain.new_block", "chain.sync_resp",
                "jsonrpc.executor_query")

    def __init__(self, cfg: NodeConfig, bus: Any) -> None:
        super().__init__(cfg, bus)
        self.store = LevelDB(cfg.service_data("executor"))
        try:
            self.genesis = Genesis.load(cfg.genesis_path)
            self.executor = Executor(self.store, self.genesis)
        except Exception:
            self.store.close()
            raise
        self.rpc = ExecutorRpc(self.executor)
        self._props: Any = None
        self.handlers.update({
            "block_proposal": self._on_block_proposal,
            "rich_status": self._on_rich_status,
            "new_block": self._on_new_block,
            "sync_resp": self._on_sync_resp,
            "executor_query": self._on_executor_query,
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

    def _request_sync(self, rng: SyncRange | None) -> None:
        if rng is not None:
            log.info("executor: catching up: asking chain for blocks %s..%s", rng.start, rng.end)
            self.publish("sync_req", pb.SyncReq(start_height=rng.start, end_height=rng.end))

    def start(self) -> None:
        self.bus.call_every(TICK_SECONDS, self._tick)

    def close(self) -> None:
        self.store.close()

    def status(self) -> dict[str, Any]:
        return {**super().status(), **self.executor.status()}

    def _tick(self) -> None:
        try:
            self._request_sync(self.executor.tick())
        except PycitaError:
            log.exception("executor: tick failed")

    # -- handlers -------------------------------------------------------------
    def _on_block_proposal(self, env: pb.Message, msg: pb.BlockProposal) -> None:
        outcome = self.executor.execute_proposal(msg.block)
        self._reply("executed_result", executed_result_message(outcome), env)
        self._request_sync(outcome.sync)

    def _on_rich_status(self, env: pb.Message, msg: pb.RichStatus) -> None:
        if msg.genesis_hash and msg.genesis_hash != self.genesis.hash:
            log.error("executor: rich_status of genesis 0x%s ignored (ours is 0x%s)", msg.genesis_hash.hex(),
                      self.genesis.hash.hex())
            return
        state_root = bytes(msg.state_root) if len(msg.state_root) == 32 else None
        self._request_sync(self.executor.on_chain_block(msg.height, bytes(msg.hash), state_root))

    def _on_new_block(self, env: pb.Message, msg: pb.NewBlock) -> None:
        self._request_sync(self.executor.on_chain_block(msg.height, bytes(msg.hash), None))

    def _on_sync_resp(self, env: pb.Message, msg: pb.SyncResp) -> None:
        try:
            rng = self.executor.apply_synced_blocks(list(msg.blocks), msg.tip)
        except (BlockMismatch, ExecutionError):
            return  # logged as critical by the executor, which is now halted
        self._request_sync(rng)

    def _on_executor_query(self, env: pb.Message, msg: pb.RpcRequest) -> None:
        try:
            result = self.rpc.handle(msg.method, msg.params_json)
            resp = pb.RpcResponse(code=0, result_json=json.dumps(result))
        except RpcError as exc:
            resp = pb.RpcResponse(code=exc.code, error=exc.message)
        self._reply("rpc_response", resp, env)


def executed_result_message(outcome: ProposalOutcome) -> pb.ExecutedResult:
    """The ``executor.executed_result`` message of a proposal outcome."""
    msg = pb.ExecutedResult(height=outcome.height, proposal_hash=outcome.proposal_hash, error=outcome.error)
    result = outcome.result
    if result is not None:
        msg.state_root = result.state_root
        msg.receipts_root = result.receipts_root
        msg.quota_used = result.quota_used
        msg.log_bloom = result.log_bloom
        msg.receipts.extend(result.receipt_rlps)
    return msg


def main(argv: list[str] | None = None) -> int:
    return run_service(ExecutorService, argv)

"""The auth service: transaction admission and the pool (thin bus layer over :mod:`services.auth.admission`).

============================  =========================  ================================================
consumes                      publishes                  what
============================  =========================  ================================================
``jsonrpc.new_tx_batch``      ``auth.tx_response``       one TxResult per raw tx, same order (codes 0-10)
``consensus.block_txs_req``   ``auth.block_txs``         pool txs valid at the height, within limits
``chain.new_block``           --                         drop listed txs from the pool, extend window
``chain.rich_status``         (``auth.recent_txs_req``)  follow the tip; evict expired txs; re-sync window
``chain.recent_txs``          --                         rebuild the recent window; ready from then on
(start, snapshot End, timer)  ``auth.recent_txs_req``    ask for the txs of the newest 100 blocks
``cli.ping``                  ``auth.pong``              ready, tip, pool size, window size
``snapshot.snapshot_req``     ``auth.snapshot_resp``     Begin: flight mode; Clear: drop pool and window;
                                                         End/Abort: leave flight mode, reload the window
============================  =========================  ================================================

Replies carry the request's envelope ``request_id`` and, when the request came
through :meth:`pycita.mq.Bus.request`, its AMQP ``correlation_id``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pycita.config import NodeConfig
from pycita.genesis import Genesis
from pycita.messages import pb
from pycita.service import Service, run_service
from pycita.storage import LevelDB
from services.auth.admission import Admitter, Rules
from services.auth.pool import WINDOW_BLOCKS, RecentWindow, TxKeyView, TxPool

log = logging.getLogger(__name__)

RECENT_RETRY_SECONDS = 2.0


def _keys(txs: Any) -> list[TxKeyView]:
    return [TxKeyView(k.hash, k.sender, k.nonce) for k in txs]


class AuthService(Service):
    name = "auth"
    bindings = ("jsonrpc.new_tx_batch", "consensus.block_txs_req", "chain.new_block", "chain.rich_status",
                "chain.recent_txs")

    def __init__(self, cfg: NodeConfig, bus: Any) -> None:
        super().__init__(cfg, bus)
        genesis = Genesis.load(cfg.genesis_path)
        self.db = LevelDB(cfg.service_data("auth"))
        pool = TxPool(self.db, cfg.pool_size)
        loaded = pool.load()
        log.info("auth: reloaded %s pooled transactions", loaded)
        self.admitter = Admitter(Rules(genesis.chain_id, genesis.quota_limit), pool, RecentWindow(WINDOW_BLOCKS))
        self._recent_asked = 0.0
        self.handlers.update({
            "new_tx_batch": self._on_new_tx_batch,
            "block_txs_req": self._on_block_txs_req,
            "new_block": self._on_new_block,
            "rich_status": self._on_rich_status,
            "recent_txs": self._on_recent_txs,
        })

    # -- plumbing -------------------------------------------------------------

    def start(self) -> None:
        self.request_recent()
        self.bus.call_every(RECENT_RETRY_SECONDS, self._retry_recent)

    def close(self) -> None:
        self.db.close()

    def status(self) -> dict[str, Any]:
        return {**super().status(), **self.admitter.status()}

    def request_recent(self) -> None:
        self._recent_asked = time.monotonic()
        self.publish("recent_txs_req", pb.RecentTxsReq(blocks=WINDOW_BLOCKS))

    def _retry_recent(self) -> None:
        if not self.admitter.ready and not self.flight_mode:
            log.info("auth: still waiting for the chain's recent transactions; asking again")
            self.request_recent()

    # -- handlers ---------------------------------------------------------------
    def _on_new_tx_batch(self, env: pb.Message, batch: pb.NewTxBatch) -> None:
        verdicts = self.admitter.admit_batch(list(batch.raw_txs), flight_mode=self.flight_mode)
        refused = [v for v in verdicts if not v.ok]
        if refused:
            log.info("auth: rejected %d of %d transactions, e.g. 0x%s: code %d %s", len(refused), len(verdicts),
                     refused[0].tx_hash.hex(), int(refused[0].code), refused[0].error[:200])
        resp = pb.TxResponse(results=[pb.TxResult(tx_hash=v.tx_hash, ok=v.ok, code=int(v.code), error=v.error)
                                      for v in verdicts])
        self.reply("tx_response", resp, env)

    def _on_block_txs_req(self, env: pb.Message, req: pb.BlockTxsReq) -> None:
        raw_txs, senders = ([], []) if self.flight_mode else \
            self.admitter.block_txs_with_senders(req.height, req.max_count, req.quota_limit)
        # senders: recovered from each tx's signature at admission (the pool keeps them with the raw tx)
        self.reply("block_txs", pb.BlockTxs(height=req.height, raw_txs=raw_txs, senders=senders), env)

    def _on_new_block(self, env: pb.Message, nb: pb.NewBlock) -> None:
        self.admitter.on_new_block(nb.height, _keys(nb.txs))

    def _on_rich_status(self, env: pb.Message, status: pb.RichStatus) -> None:
        if self.admitter.on_tip(status.height) and time.monotonic() - self._recent_asked > RECENT_RETRY_SECONDS:
            log.warning("auth: tip %s is past the window's newest block %s; reloading the window",
                        status.height, self.admitter.window.height)
            self.request_recent()

    def _on_recent_txs(self, env: pb.Message, recent: pb.RecentTxs) -> None:
        if self.flight_mode:
            return
        self.admitter.on_recent_txs(recent.height, _keys(recent.txs))

    # -- snapshot protocol ---------------------------------------------------------
    def on_snapshot(self, req: pb.SnapshotReq, resp: pb.SnapshotResp) -> None:
        if req.cmd == pb.Begin:
            self.flight_mode = True
        elif req.cmd == pb.Clear:
            self.admitter.clear()
        elif req.cmd in (pb.End, pb.Abort):
            self.flight_mode = False
            self.admitter.ready = False
            self.request_recent()


def main(argv: list[str] | None = None) -> int:
    return run_service(AuthService, argv)

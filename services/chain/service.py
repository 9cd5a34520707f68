"""The chain service: the node's block store (thin bus layer over :mod:`services.chain.chain`).

================================  ========================  ==============================================
consumes                          publishes                 what
================================  ========================  ==============================================
``consensus.block_with_proof``    ``chain.new_block``,      verify (ARCHITECTURE step 6), store in one
                                  ``chain.rich_status``     batch, announce; a bad block is logged, dropped
                                                            (one that is not RLP at all is dead-lettered)
``*.sync_req``                    ``chain.sync_resp``       full block RLPs (<= 100 blocks / ~8 MiB);
                                                            end < start (end != 0) is dead-lettered
``auth.recent_txs_req``           ``chain.recent_txs``      TxKeys of the newest N blocks
``jsonrpc.chain_query``           ``chain.rpc_response``    blockNumber, getBlockBy*, getTransaction*
``cli.ping``                      ``chain.pong``            height, block_hash, state_root
``snapshot.snapshot_req``         ``chain.snapshot_resp``,  snapshot protocol (below)
                                  ``chain.snapshot_progress``
(timer, every second)             ``chain.rich_status``     heartbeat
================================  ========================  ==============================================

Snapshot protocol (domain in :mod:`services.chain.snapshot`):

* Snapshot(H): export blocks 1..H in a worker thread from one consistent view
  (blocks keep being committed), progress every second, SnapshotAck with
  height, block_hash, state_root, file, file_size when done.
* Begin: flight mode. Restore: verify the file into ``data/chain.staged`` in a
  worker thread; RestoreAck with height, block_hash, state_root and proof
  (``last_proof``). Clear: swap the staged store live (or check the live tip
  is the restored one). End: drop the backup, leave flight mode, announce the
  tip. Abort: cancel a running export or restore, drop staged data, leave
  flight mode. Each command is idempotent (a repeated request id is answered
  again).
* Start-up: :func:`pycita.snapshot.journal.recover_store` before opening the store.

Replies carry the request's envelope ``request_id`` and, when the request came
through :meth:`pycita.mq.Bus.request`, its AMQP ``correlation_id``.
"""

from __future__ import annotations

import logging
from typing import Any

from pycita.config import NodeConfig
from pycita.errors import DecodeError, PycitaError
from pycita.genesis import Genesis
from pycita.messages import pb
from pycita.service import ANSWER_LATER, Service, SnapshotJob, SnapshotStepFailed, run_service
from pycita.snapshot.files import snapshot_files
from pycita.snapshot.journal import (
    RestoreJournal,
    discard_staged,
    read_complete_marker,
    recover_store,
    remove_backup,
    store_paths,
)
from services.chain.chain import BlockRejected, Chain
from services.chain.rpc import ChainRpc
from services.chain.snapshot import export_chain, restore_chain
from services.chain.store import ChainStore

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0


class ChainService(Service):
    name = "chain"
    bindings = ("consensus.block_with_proof", "*.sync_req", "auth.recent_txs_req", "jsonrpc.chain_query")

    def __init__(self, cfg: NodeConfig, bus: Any) -> None:
        super().__init__(cfg, bus)
        self.genesis = Genesis.load(cfg.genesis_path)
        self.paths = store_paths(cfg.data_dir, "chain")
        action = recover_store(*self.paths, RestoreJournal(cfg.run_dir))
        log.info("chain: start-up recovery of %s: %s", self.paths[0], action.value)
        self._open_store()
        self._export: SnapshotJob | None = None
        self._restore: SnapshotJob | None = None
        self.handlers.update({
            "block_with_proof": self._on_block_with_proof,
            "sync_req": self._on_sync_req,
            "recent_txs_req": self._on_recent_txs_req,
            "chain_query": self._on_chain_query,
        })

    # -- plumbing -------------------------------------------------------------

    def start(self) -> None:
        self.publish_status()
        self.bus.call_every(HEARTBEAT_SECONDS, self.publish_status)

    def _open_store(self) -> None:
        self.store = ChainStore(self.paths[0])
        try:
            self.chain = Chain(self.store, self.genesis)
        except Exception:
            self.store.close()
            raise
        self.rpc = ChainRpc(self.store)

    def close(self) -> None:
        for job in (self._export, self._restore):
            if job is not None and job.running:
                job.cancel()
                job.join(10.0)
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
            if isinstance(exc.__cause__, DecodeError):
                # not a block at all: the bus dead-letters (and logs) the message
                raise exc.__cause__ from None
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
        if req.end_height and req.end_height < req.start_height:  # end 0 means "up to the tip"
            raise DecodeError("sync_req", f"end height {req.end_height} is below start height {req.start_height}")
        self.reply("sync_resp", self.chain.sync_blocks(req.start_height, req.end_height), env)

    def _on_recent_txs_req(self, env: pb.Message, req: pb.RecentTxsReq) -> None:
        self.reply("recent_txs", self.chain.recent_txs(req.blocks), env)

    def _on_chain_query(self, env: pb.Message, req: pb.RpcRequest) -> None:
        resp = self.rpc.handle(req)
        if resp.code:
            log.info("chain: query %.64r failed: %s %s", req.method, resp.code, resp.error[:200])
        self.reply("rpc_response", resp, env)

    # -- snapshot protocol --------------------------------------------------------
    def on_snapshot(self, req: pb.SnapshotReq, resp: pb.SnapshotResp) -> Any:
        cmd = req.cmd
        if cmd == pb.Snapshot:
            return self._snapshot(req, resp)
        if cmd == pb.Begin:
            self.flight_mode = True
        elif cmd == pb.Restore:
            return self._stage(req, resp)
        elif cmd == pb.Clear:
            self._clear(req, resp)
        elif cmd == pb.End:
            self._end()
        elif cmd == pb.Abort:
            self._abort()
        return None

    def _same_job(self, job: SnapshotJob | None, req: pb.SnapshotReq) -> SnapshotJob | None:
        if job is not None and req.request_id and job.request_id == req.request_id and job.cmd == req.cmd:
            return job
        return None

    def _snapshot(self, req: pb.SnapshotReq, resp: pb.SnapshotResp) -> Any:
        again = self._same_job(self._export, req)
        if again is not None:  # a redelivered request: the job answers (again)
            if not again.running:
                self.answer_snapshot(again.resp)
            return ANSWER_LATER
        if self._export is not None and self._export.running:
            raise SnapshotStepFailed(f"chain: another snapshot (request {self._export.request_id}) is running")
        if self._restore is not None and self._restore.running:
            raise SnapshotStepFailed("chain: a restore is running")
        try:
            path, _ = snapshot_files(req.directory, self.cfg.snapshot_dir, req.file)
        except PycitaError as exc:
            raise SnapshotStepFailed(f"chain: {exc}") from exc
        height = req.end_height
        tip = self.chain.tip.height
        if height == 0 or height > tip:
            raise SnapshotStepFailed(f"chain: cannot export height {height}: the chain's tip is {tip} "
                                     f"(heights 1..{tip} can be exported)")
        resp.file = str(path)
        history = self.cfg.history_blocks

        def work(job: SnapshotJob) -> None:
            def progress(blocks: int, _chunks: int, _bytes: int) -> None:
                job.progress("export", blocks=blocks)

            try:
                with self.store.view() as view:
                    result = export_chain(view, self.genesis, path, height, history_blocks=history,
                                          check=job.check, progress=progress)
            except PycitaError as exc:
                raise SnapshotStepFailed(f"chain: {exc}") from exc
            job.resp.height = result.height
            job.resp.block_hash = result.block_hash
            job.resp.state_root = result.state_root
            job.resp.file_size = result.file_size
            log.info("chain: exported blocks 1..%d to %s (%d bytes)", result.height, path, result.file_size)

        self._export = self.start_snapshot_job(req, resp, work)
        return ANSWER_LATER

    def _stage(self, req: pb.SnapshotReq, resp: pb.SnapshotResp) -> Any:
        again = self._same_job(self._restore, req)
        if again is not None:
            if not again.running:
                if again.resp.flag and read_complete_marker(self.paths[1]) is None:
                    raise SnapshotStepFailed("chain: the staged store of this restore was discarded")
                self.answer_snapshot(again.resp)
            return ANSWER_LATER
        for job in (self._export, self._restore):
            if job is not None and job.running:
                raise SnapshotStepFailed(f"chain: another snapshot operation (request {job.request_id}) "
                                         f"is running")
        try:
            chain_path, executor_path = snapshot_files(req.directory, self.cfg.snapshot_dir, req.file)
        except PycitaError as exc:
            raise SnapshotStepFailed(f"chain: {exc}") from exc
        resp.file = str(chain_path)
        staged = self.paths[1]
        trusted = bytes(req.trusted_block_hash) or None

        def work(job: SnapshotJob) -> None:
            def progress(blocks: int, chunks: int, done: int) -> None:
                job.progress("restore", blocks=blocks, chunks_done=chunks, bytes_done=done)

            try:
                result = restore_chain(chain_path, self.genesis, staged, trusted_hash=trusted,
                                       executor_path=executor_path, check=job.check, progress=progress)
            except PycitaError as exc:
                raise SnapshotStepFailed(f"chain: restore refused: {exc}") from exc
            job.resp.height = result.height
            job.resp.block_hash = result.block_hash
            job.resp.state_root = result.state_root
            job.resp.file_size = result.file_size
            job.resp.proof.CopyFrom(_proof_message(result.last_proof))

        def finish(job: SnapshotJob) -> None:
            if not job.resp.flag:  # cancelled or failed: nothing may stay staged
                discard_staged(staged)

        self._restore = self.start_snapshot_job(req, resp, work, finish)
        return ANSWER_LATER

    def _clear(self, req: pb.SnapshotReq, resp: pb.SnapshotResp) -> None:
        if self._restore is not None and self._restore.running:
            raise SnapshotStepFailed("chain: Clear while the restore is still verifying")
        self.flight_mode = True
        want_hash = bytes(req.block_hash)
        if self.swap_in_staged(self.paths, req.end_height, want_hash, self.store.close, self._open_store):
            log.info("chain: restored store is live at block %s", self.chain.tip.height)
        tip = self.chain.tip
        # A re-sent Clear (the tool died after some services had already processed End) may find the
        # restored chain live and already grown past the restored block: that is the restore, done.
        if req.end_height and (tip.height < req.end_height
                               or (want_hash and self.store.block_hash(req.end_height) != want_hash)):
            raise SnapshotStepFailed(f"chain: nothing staged and the live tip is {tip.height} 0x{tip.hash.hex()}, "
                                     f"which does not hold the restored {req.end_height} 0x{want_hash.hex()}")
        resp.height = tip.height
        resp.block_hash = tip.hash
        resp.state_root = tip.state_root

    def _end(self) -> None:
        remove_backup(self.paths[2])
        self.flight_mode = False
        tip = self.chain.tip
        raw = self.store.new_block_msg(tip.height)
        if raw is not None:
            nb = pb.NewBlock()
            nb.ParseFromString(raw)
            self.publish("new_block", nb)
        self.publish_status()

    def _abort(self) -> None:
        if self._export is not None and self._export.running:
            self._export.cancel()  # the writer removes its partial file
        job = self._restore
        if job is not None:
            with job.lock:
                job.cancel()
                if job.done:
                    discard_staged(self.paths[1])
            # a running job discards its staged store itself when it ends (cancelled)
        else:
            discard_staged(self.paths[1])
        self.flight_mode = False
        self.publish_status()


def _proof_message(proof: bytes) -> pb.Proof:
    msg = pb.Proof()
    if proof:
        msg.ParseFromString(proof)
    return msg


def main(argv: list[str] | None = None) -> int:
    return run_service(ChainService, argv)

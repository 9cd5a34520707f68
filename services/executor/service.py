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
``snapshot.snapshot_req``       ``executor.snapshot_resp``,   snapshot protocol (below)
                                ``executor.snapshot_progress``
(timer, every second)           (``executor.sync_req``)       retry a catch-up the chain has not answered
==============================  ============================  ==================================================

Snapshot protocol (domain in :mod:`services.executor.snapshot`): Snapshot(H)
exports the state of H and headers 1..H in a worker thread (SnapshotAck with
height, block_hash, state_root, file, file_size); Begin: flight mode (no
catch-up, no commits from chain announcements); Restore: verify the file,
cross-checked with the chain file's manifest, into ``data/executor.staged``
in a worker thread (RestoreAck with height, block_hash, state_root); Clear:
swap it live; End: drop the backup, leave flight mode; Abort: cancel, drop
staged data, leave flight mode. Start-up runs
:func:`pycita.snapshot.journal.recover_store` before opening the store.

Replies carry the request's envelope ``request_id`` and, when the request came
through :meth:`pycita.mq.Bus.request`, its AMQP ``correlation_id``. On its
first start the service writes the genesis state (checked against the genesis
header's state root).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from pycita.config import NodeConfig
from pycita.errors import PycitaError
from pycita.execution import BlockMismatch, ExecutionError
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
from pycita.storage import LevelDB
from services.executor.executor import Executor, ProposalOutcome, SyncRange
from services.executor.rpc import ExecutorRpc, RpcError
from services.executor.snapshot import export_state, restore_state

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0


class ExecutorService(Service):
    name = "executor"
    bindings = ("consensus.block_proposal", "chain.rich_status", "chain.new_block", "chain.sync_resp",
                "jsonrpc.executor_query")

    def __init__(self, cfg: NodeConfig, bus: Any) -> None:
        super().__init__(cfg, bus)
        self.genesis = Genesis.load(cfg.genesis_path)
        self.paths = store_paths(cfg.data_dir, "executor")
        action = recover_store(*self.paths, RestoreJournal(cfg.run_dir))
        log.info("executor: start-up recovery of %s: %s", self.paths[0], action.value)
        self._open_store()
        self._export: SnapshotJob | None = None
        self._restore: SnapshotJob | None = None
        self.handlers.update({
            "block_proposal": self._on_block_proposal,
            "rich_status": self._on_rich_status,
            "new_block": self._on_new_block,
            "sync_resp": self._on_sync_resp,
            "executor_query": self._on_executor_query,
        })

    # -- plumbing -------------------------------------------------------------

    def _request_sync(self, rng: SyncRange | None) -> None:
        if rng is not None:
            log.info("executor: catching up: asking chain for blocks %s..%s", rng.start, rng.end)
            self.publish("sync_req", pb.SyncReq(start_height=rng.start, end_height=rng.end))

    def start(self) -> None:
        self.bus.call_every(TICK_SECONDS, self._tick)

    def _open_store(self) -> None:
        self.store = LevelDB(self.paths[0])
        try:
            self.executor = Executor(self.store, self.genesis)
        except Exception:
            self.store.close()
            raise
        self.rpc = ExecutorRpc(self.executor)

    def close(self) -> None:
        for job in (self._export, self._restore):
            if job is not None and job.running:
                job.cancel()
                job.join(10.0)
        self.store.close()

    def status(self) -> dict[str, Any]:
        return {**super().status(), **self.executor.status()}

    def _tick(self) -> None:
        if self.flight_mode:
            return
        try:
            self._request_sync(self.executor.tick())
        except PycitaError:
            log.exception("executor: tick failed")

    # -- handlers -------------------------------------------------------------
    def _on_block_proposal(self, env: pb.Message, msg: pb.BlockProposal) -> None:
        outcome = self.executor.execute_proposal(msg.block, list(msg.senders))
        self.reply("executed_result", executed_result_message(outcome), env)
        self._request_sync(outcome.sync)

    def _on_rich_status(self, env: pb.Message, msg: pb.RichStatus) -> None:
        if msg.genesis_hash and msg.genesis_hash != self.genesis.hash:
            log.error("executor: rich_status of genesis 0x%s ignored (ours is 0x%s)", msg.genesis_hash.hex(),
                      self.genesis.hash.hex())
            return
        if self.flight_mode:  # the chain may already serve a restored store this executor has not swapped in
            return
        state_root = bytes(msg.state_root) if len(msg.state_root) == 32 else None
        self._request_sync(self.executor.on_chain_block(msg.height, bytes(msg.hash), state_root))

    def _on_new_block(self, env: pb.Message, msg: pb.NewBlock) -> None:
        if self.flight_mode:
            return
        self._request_sync(self.executor.on_chain_block(msg.height, bytes(msg.hash), None))

    def _on_sync_resp(self, env: pb.Message, msg: pb.SyncResp) -> None:
        if self.flight_mode:
            return
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
            log.info("executor: query %.64r failed: %s %s", msg.method, exc.code, exc.message[:200])
            resp = pb.RpcResponse(code=exc.code, error=exc.message)
        self.reply("rpc_response", resp, env)


    # -- snapshot protocol ----------------------------------------------------------
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
            remove_backup(self.paths[2])
            self.flight_mode = False
        elif cmd == pb.Abort:
            self._abort()
        return None

    def _same_job(self, job: SnapshotJob | None, req: pb.SnapshotReq) -> SnapshotJob | None:
        if job is not None and req.request_id and job.request_id == req.request_id and job.cmd == req.cmd:
            return job
        return None

    def _snapshot(self, req: pb.SnapshotReq, resp: pb.SnapshotResp) -> Any:
        again = self._same_job(self._export, req)
        if again is not None:
            if not again.running:
                self.answer_snapshot(again.resp)
            return ANSWER_LATER
        for job in (self._export, self._restore):
            if job is not None and job.running:
                raise SnapshotStepFailed(f"executor: another snapshot operation (request {job.request_id}) "
                                         f"is running")
        try:
            _, path = snapshot_files(req.directory, self.cfg.snapshot_dir, req.file)
        except PycitaError as exc:
            raise SnapshotStepFailed(f"executor: {exc}") from exc
        height = req.end_height
        if height == 0:
            raise SnapshotStepFailed("executor: height 0 is the genesis block, which is not exported")
        if self.executor.halted:
            raise SnapshotStepFailed(f"executor: halted ({self.executor.halted}); no snapshot")
        resp.file = str(path)
        kv = self.store
        wait = min(max(req.timeout_ms / 1000.0, 1.0), 60.0) if req.timeout_ms else 30.0

        def work(job: SnapshotJob) -> None:
            def progress(accounts: int, blocks: int, _chunks: int, _bytes: int) -> None:
                job.progress("export", accounts=accounts, blocks=blocks)

            # the chain's tip (which the tool snapshots by default) may be a block ahead of the executor
            deadline = time.monotonic() + wait
            while self.executor.tip.height < height:
                if self.executor.halted or time.monotonic() > deadline:
                    raise SnapshotStepFailed(f"executor: cannot export height {height}: the executor has "
                                             f"committed up to {self.executor.tip.height}")
                job.progress("waiting for block", blocks=self.executor.tip.height)
                time.sleep(0.05)
            try:
                result = export_state(kv, self.genesis, path, height, check=job.check, progress=progress)
            except PycitaError as exc:
                raise SnapshotStepFailed(f"executor: {exc}") from exc
            job.resp.height = result.height
            job.resp.block_hash = result.block_hash
            job.resp.state_root = result.state_root
            job.resp.file_size = result.file_size
            log.info("executor: exported the state of block %d (%d accounts) to %s (%d bytes)", result.height,
                     result.accounts, path, result.file_size)

        self._export = self.start_snapshot_job(req, resp, work)
        return ANSWER_LATER

    def _stage(self, req: pb.SnapshotReq, resp: pb.SnapshotResp) -> Any:
        again = self._same_job(self._restore, req)
        if again is not None:
            if not again.running:
                if again.resp.flag and read_complete_marker(self.paths[1]) is None:
                    raise SnapshotStepFailed("executor: the staged store of this restore was discarded")
                self.answer_snapshot(again.resp)
            return ANSWER_LATER
        for job in (self._export, self._restore):
            if job is not None and job.running:
                raise SnapshotStepFailed(f"executor: another snapshot operation (request {job.request_id}) "
                                         f"is running")
        try:
            chain_path, path = snapshot_files(req.directory, self.cfg.snapshot_dir, req.file)
        except PycitaError as exc:
            raise SnapshotStepFailed(f"executor: {exc}") from exc
        resp.file = str(path)
        staged = self.paths[1]
        trusted = bytes(req.trusted_block_hash) or None

        def work(job: SnapshotJob) -> None:
            def progress(accounts: int, blocks: int, chunks: int, done: int) -> None:
                job.progress("restore", accounts=accounts, blocks=blocks, chunks_done=chunks, bytes_done=done)

            try:
                result = restore_state(path, chain_path, self.genesis, staged, trusted_hash=trusted,
                                       check=job.check, progress=progress)
            except PycitaError as exc:
                raise SnapshotStepFailed(f"executor: restore refused: {exc}") from exc
            job.resp.height = result.height
            job.resp.block_hash = result.block_hash
            job.resp.state_root = result.state_root
            job.resp.file_size = result.file_size

        def finish(job: SnapshotJob) -> None:
            if not job.resp.flag:
                discard_staged(staged)

        self._restore = self.start_snapshot_job(req, resp, work, finish)
        return ANSWER_LATER

    def _clear(self, req: pb.SnapshotReq, resp: pb.SnapshotResp) -> None:
        if self._restore is not None and self._restore.running:
            raise SnapshotStepFailed("executor: Clear while the restore is still verifying")
        self.flight_mode = True
        want_hash = bytes(req.block_hash)
        if self.swap_in_staged(self.paths, req.end_height, want_hash, self.store.close, self._open_store):
            log.info("executor: restored state is live at block %s", self.executor.tip.height)
        tip = self.executor.tip
        # A re-sent Clear (the tool died after some services had already processed End) may find the
        # restored state live and already executed past the restored block: that is the restore, done.
        restored = self.executor.block_at(req.end_height) if req.end_height else None
        if req.end_height and (tip.height < req.end_height or restored is None
                               or (want_hash and restored[0] != want_hash)):
            raise SnapshotStepFailed(f"executor: nothing staged and the live tip is {tip.height} "
                                     f"0x{tip.block_hash.hex()}, which does not hold the restored "
                                     f"{req.end_height} 0x{want_hash.hex()}")
        resp.height = tip.height
        resp.block_hash = tip.block_hash
        resp.state_root = tip.state_root

    def _abort(self) -> None:
        if self._export is not None and self._export.running:
            self._export.cancel()
        job = self._restore
        if job is not None:
            with job.lock:
                job.cancel()
                if job.done:
                    discard_staged(self.paths[1])
        else:
            discard_staged(self.paths[1])
        self.flight_mode = False


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

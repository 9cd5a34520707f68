"""The snapshot_tool side of the snapshot protocol, as a plain class over a transport.

:class:`Coordinator` publishes ``SnapshotReq`` messages through a
:class:`Transport` and consumes the ``SnapshotResp`` / ``SnapshotProgress``
/ ``Pong`` messages it returns; it never touches RabbitMQ itself, so tests
drive it with a fake transport and a fake clock (see
``tests/snapshot_tool/test_coordinator.py``). The RabbitMQ transport is in
:mod:`tools.snapshot_tool.transport`.

Snapshot (one round)::

    Snapshot(end_height=H, file, directory, request_id) -> SnapshotAck from every service

Restore (DESIGN.md section 4, with the commit point of pycita.snapshot.journal)::

    journal "prepare"
    Begin   -> BeginAck   from every service            any failure: Abort, journal removed
    Restore -> RestoreAck from every service            any failure: Abort, journal removed
    cross-check chain vs executor (height, hash, state root, proof, --block)
    journal "commit"                                    -- the commit point --
    Clear   -> ClearAck   from every service            failures: re-send (roll forward)
    End     -> EndAck     from every service            failures: re-send (roll forward)
    journal "done", removed

Each round fails when a service answers ``flag=false`` (its ``error`` text is
reported) or when some service has not answered within the phase timeout (it
is named). The deadline moves to ``now + timeout`` whenever a
``SnapshotProgress`` of the request arrives.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pycita.errors import PycitaError
from pycita.messages import pb
from pycita.snapshot.journal import JournalEntry, Phase, RestoreJournal
from tools.snapshot_tool.errors import (
    AcksDisagree,
    PhaseTimeout,
    RollForwardIncomplete,
    ServiceRefused,
    SnapshotToolError,
    StepFailed,
    UsageError,
)

log = logging.getLogger(__name__)

CHAIN = "chain"
EXECUTOR = "executor"
CHAIN_SUFFIX = "_chain.rlp"
EXECUTOR_SUFFIX = "_executor.rlp"
PARTIAL_SUFFIXES = (".partial", ".tmp")
"""Temporary names a service may write a snapshot file under before renaming it (removed on failure)."""

Incoming = pb.SnapshotResp | pb.SnapshotProgress | pb.Pong

_ACK_FOR = {
    pb.Begin: pb.BeginAck,
    pb.Restore: pb.RestoreAck,
    pb.Clear: pb.ClearAck,
    pb.End: pb.EndAck,
    pb.Snapshot: pb.SnapshotAck,
    pb.Abort: pb.AbortAck,
}


class Transport(Protocol):
    """What the coordinator needs from the bus."""

    def send_request(self, req: pb.SnapshotReq) -> None:
        """Publish ``snapshot.snapshot_req`` to every service."""

    def send_ping(self, nonce: str) -> None:
        """Publish ``cli.ping`` to every service."""

    def poll(self, timeout: float) -> Incoming | None:
        """Return the next response/progress/pong (with ``service`` filled in), or None after ``timeout`` s."""


class ProgressSink(Protocol):
    """Where the coordinator reports what it is doing (the CLI draws a bar or logs lines)."""

    def phase_started(self, phase: str, services: Sequence[str]) -> None: ...

    def progress(self, msg: pb.SnapshotProgress) -> None: ...

    def service_acked(self, phase: str, service: str) -> None: ...

    def finish(self) -> None: ...


class NullProgress:
    """A :class:`ProgressSink` that shows nothing."""

    def phase_started(self, phase: str, services: Sequence[str]) -> None:
        pass

    def progress(self, msg: pb.SnapshotProgress) -> None:
        pass

    def service_acked(self, phase: str, service: str) -> None:
        pass

    def finish(self) -> None:
        pass


@dataclass(frozen=True)
class SnapshotFiles:
    """The two files of snapshot ``name`` in ``directory``."""

    directory: Path
    name: str

    @property
    def chain(self) -> Path:
        return self.directory / f"{self.name}{CHAIN_SUFFIX}"

    @property
    def executor(self) -> Path:
        return self.directory / f"{self.name}{EXECUTOR_SUFFIX}"

    def paths(self) -> tuple[Path, Path]:
        return self.chain, self.executor

    def file_names(self) -> tuple[str, str]:
        return self.chain.name, self.executor.name


@dataclass(frozen=True)
class WrittenFile:
    service: str
    path: Path
    size: int


@dataclass(frozen=True)
class SnapshotResult:
    request_id: str
    height: int
    block_hash: bytes
    state_root: bytes
    files: tuple[WrittenFile, ...]
    seconds: float


@dataclass(frozen=True)
class RestoreResult:
    request_id: str
    height: int
    block_hash: bytes
    state_root: bytes
    seconds: float
    completed_leftover: bool = False
    """True when this result finished a restore an earlier (crashed) run had committed."""


@dataclass
class _Round:
    """Answers collected for one command."""

    phase: str
    acks: dict[str, pb.SnapshotResp] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    silent: tuple[str, ...] = ()

    def failure(self, timeout: float) -> StepFailed | None:
        if self.refused:
            reason = "; ".join(err if err.startswith(f"{svc}: ") else f"{svc}: {err or 'refused (no reason given)'}"
                               for svc, err in sorted(self.refused.items()))  # services often name themselves
            return ServiceRefused(self.phase, sorted(self.refused), reason)
        if self.silent:
            return PhaseTimeout(self.phase, self.silent,
                                f"no answer within {timeout:g} s from {', '.join(self.silent)} "
                                f"(is the service running?)")
        return None


def _hex(value: bytes) -> str:
    return "0x" + value.hex() if value else "(none)"


def _cmd_name(cmd: int) -> str:
    return str(pb.Cmd.Name(cmd))


class Coordinator:
    """Runs snapshot and restore over a :class:`Transport`; see the module docstring.

    ``services`` are the node's services (node.json), every one of which must
    answer each command. ``phase_timeout`` bounds each round (extended by
    progress), ``abort_timeout`` the Abort round (default: the smaller of the
    phase timeout and 30 s). ``roll_forward_attempts`` is how many times Clear
    and End are sent after the commit point before giving up. ``notify``
    receives warnings for the user (one line each).
    """

    def __init__(self, transport: Transport, services: Iterable[str], *, phase_timeout: float,
                 snapshot_dir: Path, journal: RestoreJournal, progress: ProgressSink | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 new_request_id: Callable[[], str] = lambda: uuid.uuid4().hex,
                 abort_timeout: float | None = None, roll_forward_attempts: int = 2,
                 notify: Callable[[str], None] | None = None) -> None:
        self.transport = transport
        self.services: tuple[str, ...] = tuple(dict.fromkeys(services))
        if phase_timeout <= 0:
            raise UsageError(f"the phase timeout must be positive, got {phase_timeout:g}")
        self.phase_timeout = float(phase_timeout)
        self.abort_timeout = float(abort_timeout) if abort_timeout is not None else min(self.phase_timeout, 30.0)
        self.snapshot_dir = Path(snapshot_dir)
        self.journal = journal
        self.progress: ProgressSink = progress or NullProgress()
        self.clock = clock
        self.new_request_id = new_request_id
        self.roll_forward_attempts = max(1, roll_forward_attempts)
        self.notify: Callable[[str], None] = notify or (lambda text: log.warning("%s", text))

    # ------------------------------------------------------------ helpers

    def _require_data_services(self) -> None:
        missing = [s for s in (CHAIN, EXECUTOR) if s not in self.services]
        if missing:
            raise SnapshotToolError(f"node.json 'services' does not list {' and '.join(missing)}; "
                                    f"snapshots need both chain and executor")

    def _timeout_ms(self) -> int:
        return int(self.phase_timeout * 1000)

    def _collect(self, req: pb.SnapshotReq, *, services: Sequence[str], timeout: float,
                 fail_fast: bool, already: _Round | None = None) -> _Round:
        """Publish ``req`` and gather the matching acks of ``services`` until all answered or time is up.

        With ``fail_fast`` the first refusal ends the round. ``already`` carries
        acks from an earlier attempt (roll forward re-sends): only services
        without a successful ack are waited for.
        """
        phase = _cmd_name(req.cmd)
        expected = _ACK_FOR[req.cmd]
        rnd = _Round(phase, acks=dict(already.acks) if already else {})
        pending = [s for s in services if s not in rnd.acks]
        self.progress.phase_started(phase, pending)
        self.transport.send_request(req)
        deadline = self.clock() + timeout
        while pending:
            remaining = deadline - self.clock()
            if remaining <= 0:
                rnd.silent = tuple(pending)
                return rnd
            msg = self.transport.poll(remaining)
            if msg is None:
                continue
            if isinstance(msg, pb.SnapshotProgress):
                if msg.request_id == req.request_id and msg.service in services:
                    deadline = max(deadline, self.clock() + timeout)
                    self.progress.progress(msg)
                continue
            if not isinstance(msg, pb.SnapshotResp):
                continue  # a late pong
            if msg.request_id != req.request_id or msg.resp != expected:
                log.debug("ignoring %s from %s for request %r", pb.Resp.Name(msg.resp), msg.service,
                          msg.request_id)
                continue
            if msg.service not in pending:
                if msg.service not in services:
                    log.info("ignoring %s from %s, which node.json does not list",
                             pb.Resp.Name(msg.resp), msg.service)
                continue  # a duplicate (redelivery) or an ack to an earlier attempt
            pending.remove(msg.service)
            if msg.flag:
                rnd.acks[msg.service] = msg
                self.progress.service_acked(phase, msg.service)
            else:
                rnd.refused[msg.service] = msg.error
                if fail_fast:
                    return rnd
        return rnd

    def _round(self, req: pb.SnapshotReq) -> dict[str, pb.SnapshotResp]:
        """One fail-fast round over every service; raises :class:`StepFailed`."""
        rnd = self._collect(req, services=self.services, timeout=self.phase_timeout, fail_fast=True)
        failure = rnd.failure(self.phase_timeout)
        if failure is not None:
            raise failure
        return rnd.acks

    def _abort(self, request_id: str, why: str | BaseException) -> None:
        """Send Abort and wait (bounded) for AbortAcks; problems become notices, never exceptions.

        When ``why`` is a :class:`PhaseTimeout`, the services it names were just
        silent for a whole phase: the Abort is published to them too (it waits
        in their queues), but the tool does not wait for their AbortAck, so a
        frozen service fails the command within one phase timeout, not two.
        """
        req = pb.SnapshotReq(cmd=pb.Abort, request_id=request_id, timeout_ms=int(self.abort_timeout * 1000))
        log.info("aborting request %s: %s", request_id, why)
        silent = set(why.services) if isinstance(why, PhaseTimeout) else set()
        waited = [s for s in self.services if s not in silent]
        try:
            rnd = self._collect(req, services=waited, timeout=self.abort_timeout, fail_fast=False)
        except SnapshotToolError as exc:
            self.notify(f"could not send Abort: {exc}; restart the node to leave flight mode")
            return
        if silent:
            self.notify(f"not waiting for the AbortAck of {', '.join(sorted(silent))}, which did not answer: "
                        f"the Abort waits in its queue; if it stays in flight mode, restart it")
        for svc, err in sorted(rnd.refused.items()):
            self.notify(f"{svc} refused Abort: {err}")
        if rnd.silent:
            self.notify(f"no AbortAck within {self.abort_timeout:g} s from {', '.join(rnd.silent)}: "
                        f"if it stays in flight mode, restart it")

    def _roll_forward(self, req: pb.SnapshotReq) -> dict[str, pb.SnapshotResp]:
        """Send a post-commit command until every service acked it; raise :class:`RollForwardIncomplete`."""
        rnd: _Round | None = None
        for attempt in range(1, self.roll_forward_attempts + 1):
            if attempt > 1:
                assert rnd is not None
                self.notify(f"re-sending {rnd.phase} (attempt {attempt} of {self.roll_forward_attempts}): "
                            f"{rnd.failure(self.phase_timeout)}")
            rnd = self._collect(req, services=self.services, timeout=self.phase_timeout, fail_fast=False,
                                already=rnd)
            failure = rnd.failure(self.phase_timeout)
            if failure is None:
                return rnd.acks
        assert rnd is not None
        failure = rnd.failure(self.phase_timeout)
        assert failure is not None
        if isinstance(failure, PhaseTimeout):
            hint = ("restart the node (pycita stop, then pycita start: chain and executor finish the swap "
                    "at start-up from run/restore.journal), then run snapshot_tool -m restore again to "
                    "finish Clear and End")
        else:
            hint = ("fix the cause, restart the node, then run snapshot_tool -m restore again to finish "
                    "Clear and End")
        raise RollForwardIncomplete(failure, hint)

    # ------------------------------------------------------------- status

    def current_height(self, timeout: float | None = None) -> int:
        """The chain's tip height, from the status JSON of its pong."""
        timeout = self.phase_timeout if timeout is None else timeout
        nonce = uuid.uuid4().hex
        self.transport.send_ping(nonce)
        deadline = self.clock() + timeout
        while (remaining := deadline - self.clock()) > 0:
            msg = self.transport.poll(remaining)
            if not isinstance(msg, pb.Pong) or msg.nonce != nonce or msg.service != CHAIN:
                continue
            try:
                status = json.loads(msg.status_json)
                height = status["height"]
            except (ValueError, KeyError, TypeError) as exc:
                raise SnapshotToolError(f"the chain's status has no height: {msg.status_json[:200]!r}") from exc
            if isinstance(height, str):
                height = int(height, 0)
            if not isinstance(height, int) or height < 0:
                raise SnapshotToolError(f"the chain's status has an invalid height {height!r}")
            return height
        raise PhaseTimeout("status", [CHAIN], f"no answer to ping within {timeout:g} s (is the node running?)")

    # ----------------------------------------------------------- snapshot

    def snapshot(self, name: str, height: int | None = None) -> SnapshotResult:
        """Write ``<snapshot_dir>/<name>_chain.rlp`` and ``_executor.rlp`` at ``height`` (default: the tip)."""
        self._require_data_services()
        started = self.clock()
        tip = self.current_height()
        target = tip if height is None else height
        if target == 0:
            raise UsageError("height 0 is the genesis block, which is not exported"
                             + (" (the chain has no blocks yet)" if height is None else ""))
        if target > tip:
            raise SnapshotToolError(f"height {target} is above the chain's tip {tip}; no files written")
        files = SnapshotFiles(self.snapshot_dir, name)
        before = {p: _stat_key(p) for p in files.paths()}
        request_id = self.new_request_id()
        req = pb.SnapshotReq(cmd=pb.Snapshot, end_height=target, file=name,
                             directory=str(self.snapshot_dir), request_id=request_id,
                             timeout_ms=self._timeout_ms())
        try:
            acks = self._round(req)
            result = self._check_snapshot(acks, files, target, request_id, self.clock() - started)
        except StepFailed as exc:
            self._abort(request_id, exc)
            self._remove_partial(files, before)
            raise
        finally:
            self.progress.finish()
        return result

    def _check_snapshot(self, acks: dict[str, pb.SnapshotResp], files: SnapshotFiles, height: int,
                        request_id: str, seconds: float) -> SnapshotResult:
        chain, executor = acks[CHAIN], acks[EXECUTOR]
        for svc, ack in ((CHAIN, chain), (EXECUTOR, executor)):
            if ack.height != height:
                raise AcksDisagree("Snapshot", [svc], f"{svc} exported height {ack.height}, not {height}")
            if not ack.block_hash or not ack.state_root:
                raise AcksDisagree("Snapshot", [svc], f"{svc}'s SnapshotAck carries no block hash or state root")
        _check_agree("Snapshot", chain, executor, None)
        written = []
        for svc, path in ((CHAIN, files.chain), (EXECUTOR, files.executor)):
            try:
                size = path.stat().st_size
            except OSError as exc:
                raise StepFailed("Snapshot", [svc], f"{svc} acked but {path} is missing: {exc.strerror}") from exc
            if size == 0 or (acks[svc].file_size and acks[svc].file_size != size):
                raise StepFailed("Snapshot", [svc], f"{path} has {size} bytes, {svc} reported "
                                 f"{acks[svc].file_size}")
            written.append(WrittenFile(svc, path, size))
        return SnapshotResult(request_id, height, bytes(chain.block_hash), bytes(chain.state_root),
                              tuple(written), seconds)

    def _remove_partial(self, files: SnapshotFiles, before: dict[Path, tuple[int, int] | None]) -> None:
        for path in files.paths():
            for partial in (path.with_name(path.name + s) for s in PARTIAL_SUFFIXES):
                _unlink_quietly(partial)
            key = _stat_key(path)
            if key is not None and key != before.get(path):
                _unlink_quietly(path)  # written (or rewritten) by this failed run

    # ------------------------------------------------------------ restore

    def recover_leftover(self) -> tuple[JournalEntry, RestoreResult | None] | None:
        """Deal with a journal an earlier run left behind; returns it (and the result if it was completed).

        ``"commit"``: the restore is finished (Clear + End, journal removed).
        ``"prepare"`` or ``"done"``: Abort is sent and the journal removed.
        """
        entry = self.journal.read()
        if entry is None:
            return None
        if entry.phase is Phase.COMMIT:
            self.notify(f"found a committed restore (request {entry.request_id}, height {entry.height}) "
                        f"left by an earlier run; completing it")
            started = self.clock()
            try:
                self._clear_and_end(entry)
            finally:
                self.progress.finish()
            return entry, RestoreResult(entry.request_id, entry.height, entry.block_hash, entry.state_root,
                                        self.clock() - started, completed_leftover=True)
        if entry.phase is Phase.PREPARE:
            self.notify(f"found an unfinished restore (request {entry.request_id}) left by an earlier run "
                        f"before its commit point; aborting it")
            try:
                self._abort(entry.request_id, "leftover prepare journal")
            finally:
                self.progress.finish()
        self.journal.remove()
        return entry, None

    def restore(self, name: str, trusted_block_hash: bytes | None = None) -> RestoreResult:
        """Restore the node from ``<snapshot_dir>/<name>_chain.rlp`` and ``_executor.rlp``."""
        self._require_data_services()
        files = SnapshotFiles(self.snapshot_dir, name)
        for path in files.paths():
            if not path.is_file():
                raise SnapshotToolError(f"snapshot file {path} does not exist")
        started = self.clock()
        request_id = self.new_request_id()
        common: dict[str, Any] = {"request_id": request_id, "file": name, "directory": str(self.snapshot_dir),
                  "timeout_ms": self._timeout_ms()}
        self.journal.write_prepare(request_id, files.file_names(), str(self.snapshot_dir))
        try:
            try:
                self._round(pb.SnapshotReq(cmd=pb.Begin, **common))
                acks = self._round(pb.SnapshotReq(cmd=pb.Restore, trusted_block_hash=trusted_block_hash or b"",
                                                  **common))
                chain, executor = acks[CHAIN], acks[EXECUTOR]
                _check_agree("Restore", chain, executor, trusted_block_hash)
                entry = self.journal.write_commit(
                    request_id, height=chain.height, block_hash=bytes(chain.block_hash),
                    state_root=bytes(chain.state_root), proof=bytes(chain.proof.content),
                    proof_type=int(chain.proof.type), files=files.file_names(),
                    directory=str(self.snapshot_dir))
            except BaseException as exc:
                # A refusal, a timeout, a failed cross-check, a transport failure or Ctrl-C
                # before the commit point: roll back. (The journal is re-read: an interrupt
                # landing just after the commit write must not abort a committed restore.)
                if self._is_committed(request_id):
                    raise
                self._abort(request_id, exc if str(exc) else type(exc).__name__)
                self.journal.remove()
                raise
            self._clear_and_end(entry)
        finally:
            self.progress.finish()
        return RestoreResult(request_id, entry.height, entry.block_hash, entry.state_root,
                             self.clock() - started)

    def _is_committed(self, request_id: str) -> bool:
        try:
            entry = self.journal.read()
        except PycitaError as exc:  # cannot tell: never abort what may be committed
            self.notify(f"cannot read the restore journal ({exc}); not aborting")
            return True
        return entry is not None and entry.request_id == request_id and entry.phase is Phase.COMMIT

    def _clear_and_end(self, entry: JournalEntry) -> None:
        """The post-commit half: Clear then End, each rolled forward; then the journal is done."""
        common: dict[str, Any] = {"request_id": entry.request_id, "end_height": entry.height, "block_hash": entry.block_hash,
                  "state_root": entry.state_root, "timeout_ms": self._timeout_ms()}
        proof = pb.Proof(content=entry.proof, type=entry.proof_type)  # type: ignore[arg-type]
        first = entry.files[0] if entry.files else ""
        name = first[: -len(CHAIN_SUFFIX)] if first.endswith(CHAIN_SUFFIX) else ""
        self._roll_forward(pb.SnapshotReq(cmd=pb.Clear, proof=proof, file=name, directory=entry.directory,
                                          **common))
        self._roll_forward(pb.SnapshotReq(cmd=pb.End, **common))
        self.journal.mark_done()


def _check_agree(phase: str, chain: pb.SnapshotResp, executor: pb.SnapshotResp,
                 trusted_block_hash: bytes | None) -> None:
    """Chain and executor must name the same H, hash and state root (and the trusted hash, if given)."""
    problems = []
    if chain.height == 0:
        problems.append("chain reports height 0")
    if chain.height != executor.height:
        problems.append(f"height: chain {chain.height}, executor {executor.height}")
    if len(chain.block_hash) != 32 or chain.block_hash != executor.block_hash:
        problems.append(f"block hash: chain {_hex(chain.block_hash)}, executor {_hex(executor.block_hash)}")
    if len(chain.state_root) != 32 or chain.state_root != executor.state_root:
        problems.append(f"state root: chain {_hex(chain.state_root)}, executor {_hex(executor.state_root)}")
    if phase == "Restore" and not chain.proof.content:
        problems.append("chain's RestoreAck carries no last_proof")
    if problems:
        raise AcksDisagree(phase, [], "chain and executor disagree: " + "; ".join(problems))
    if trusted_block_hash and chain.block_hash != trusted_block_hash:
        raise AcksDisagree(phase, [], f"trusted hash check failed: block {chain.height} of the snapshot is "
                                      f"{_hex(chain.block_hash)}, --block says {_hex(trusted_block_hash)}")


def _stat_key(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _unlink_quietly(path: Path) -> None:
    if not (path.exists() or path.is_symlink()):
        return
    try:
        path.unlink()
        log.info("removed %s", path)
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, exc)

"""The consensus engine: block proposal, voting and quorum certificates, without a bus.

The engine is a state machine fed with events (chain status, the pool's
transactions, the executor's result, votes, clock ticks); each call returns
the messages to publish as :class:`Outgoing` values. The service only moves
messages between the bus and the engine, so everything here is testable
without RabbitMQ.

One height goes through these phases (ARCHITECTURE.md steps 1, 3, 5, 8)::

    IDLE --tick, our turn, interval elapsed--> WAIT_TXS      (block_txs_req published)
    WAIT_TXS --block_txs--> WAIT_EXEC                         (block_proposal published)
    WAIT_EXEC --executed_result, quorum--> WAIT_COMMIT        (block_with_proof published)
    WAIT_EXEC --executed_result, no quorum yet--> WAIT_VOTES  (multi-validator, later)
    WAIT_COMMIT --rich_status of the new height--> IDLE

* The proposer of height ``h`` is ``validators[h % n]`` (genesis order).
* A proposal is built ``block_interval`` seconds after the engine learned of
  the current tip (at start-up: after the tip's own timestamp plus the
  interval, so a restarted node goes on at once).
* An executor error abandons the attempt; it is retried one interval later
  in the next round.
* A phase that sees no progress for ``stuck_timeout`` seconds (default
  ``max(3 * interval, 5 s)`` plus ``PER_TX_TIMEOUT`` per transaction of the
  proposal, so a big block on a busy machine is not thrown away) is abandoned and retried in the next round;
  except WAIT_COMMIT: a block with a quorum certificate is decided, so the
  same ``block_with_proof`` is published again instead (the chain ignores
  a block it already has).
* Each new attempt at the same height uses the next ``round``, so a validator
  never signs two different blocks for one (height, round).
* Flight mode (snapshot restore) stops all proposing and voting;
  :meth:`Engine.reset_to` restarts from a restored tip.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import rlp

from pycita.crypto import PrivateKey, SignatureError, keccak, recover_address
from pycita.errors import DecodeError, PycitaError
from pycita.messages import pb
from pycita.proof import QuorumCert, quorum_size, sign_vote, vote_hash
from pycita.types import EMPTY_BLOOM, ZERO_HASH, Block, Header, SignedTransaction, decode_as, ordered_root

log = logging.getLogger(__name__)

MIN_STUCK_TIMEOUT = 5.0
PER_TX_TIMEOUT = 0.004  # seconds of extra patience per transaction in the proposal


class ConsensusError(PycitaError):
    """Raised when consensus input is inconsistent (e.g. a vote by a non-validator or a bad signature)."""


class Phase(enum.Enum):
    IDLE = "idle"
    WAIT_TXS = "wait_txs"
    WAIT_EXEC = "wait_exec"
    WAIT_VOTES = "wait_votes"
    WAIT_COMMIT = "wait_commit"


@dataclass(frozen=True)
class Outgoing:
    """A message the engine wants published as ``consensus.<msg_type>``."""

    msg_type: str
    content: Any
    confirm: bool = False


@dataclass(frozen=True)
class EngineConfig:
    chain_id: int
    validators: tuple[bytes, ...]
    quota_limit: int
    block_interval: float
    max_block_txs: int
    stuck_timeout: float | None = None

    @property
    def timeout(self) -> float:
        if self.stuck_timeout is not None:
            return self.stuck_timeout
        return max(3 * self.block_interval, MIN_STUCK_TIMEOUT)

    def timeout_for(self, tx_count: int) -> float:
        """How long an attempt carrying ``tx_count`` transactions may make no progress."""
        if self.stuck_timeout is not None:
            return self.stuck_timeout
        return self.timeout + PER_TX_TIMEOUT * tx_count

    def proposer_of(self, height: int) -> bytes:
        return self.validators[height % len(self.validators)]


@dataclass(frozen=True)
class Tip:
    """The chain's committed tip as told by ``chain.rich_status``."""

    height: int
    hash: bytes
    timestamp_ms: int
    proof: bytes  # serialized pb.Proof of block `height`; b"" for genesis


class VoteCollector:
    """Collects signed votes for one (height, round, block_hash) until more than 2/3 of the validators agree."""

    def __init__(self, chain_id: int, validators: Sequence[bytes], height: int, round_: int,
                 block_hash: bytes) -> None:
        self.chain_id = chain_id
        self.validators = tuple(validators)
        self.height = height
        self.round = round_
        self.block_hash = block_hash
        self._message = vote_hash(chain_id, height, round_, block_hash)
        self._votes: dict[bytes, bytes] = {}

    @property
    def needed(self) -> int:
        return quorum_size(len(set(self.validators)))

    @property
    def count(self) -> int:
        return len(self._votes)

    def add(self, validator: bytes, signature: bytes) -> bool:
        """Add one vote; returns True when it is new. Raises :class:`ConsensusError` on a bad vote."""
        if validator not in self.validators:
            raise ConsensusError(f"vote by 0x{validator.hex()}, who is not a validator")
        try:
            signer = recover_address(self._message, signature)
        except SignatureError as exc:
            raise ConsensusError(f"vote of 0x{validator.hex()} has a bad signature: {exc}") from exc
        if signer != validator:
            raise ConsensusError(f"vote listed for 0x{validator.hex()} was signed by 0x{signer.hex()}")
        if validator in self._votes:
            return False
        self._votes[validator] = signature
        return True

    def has_quorum(self) -> bool:
        return self.count >= self.needed

    def certificate(self) -> QuorumCert:
        """The quorum certificate (signatures in genesis validator order); raises if no quorum yet."""
        if not self.has_quorum():
            raise ConsensusError(f"only {self.count} of {self.needed} votes for block {self.height}")
        sigs = tuple((v, self._votes[v]) for v in dict.fromkeys(self.validators) if v in self._votes)
        return QuorumCert(self.height, self.round, self.block_hash, sigs)


@dataclass
class _Attempt:
    """The proposal in flight for height ``tip.height + 1``."""

    height: int
    round: int
    phase: Phase
    since: float
    block: Block | None = None
    proposal_hash: bytes = b""
    final_block: Block | None = None
    receipts: tuple[bytes, ...] = ()
    votes: VoteCollector | None = None
    commit_msg: Outgoing | None = None


class Engine:
    """Single-node BFT-style proposer; see the module docstring for the life of a height."""

    def __init__(self, config: EngineConfig, key: PrivateKey) -> None:
        if not config.validators:
            raise ConsensusError("the validator set is empty")
        self.config = config
        self.key = key
        self.address = key.address
        self.tip: Tip | None = None
        self.flight_mode = False
        self.chain_flight_mode = False
        self.attempt: _Attempt | None = None
        self.next_propose_at: float | None = None
        self.round = 0
        self.blocks_proposed = 0
        self.blocks_decided = 0

    # -- queries -------------------------------------------------------
    @property
    def phase(self) -> Phase:
        return self.attempt.phase if self.attempt else Phase.IDLE

    @property
    def is_validator(self) -> bool:
        return self.address in self.config.validators

    def is_proposer(self, height: int) -> bool:
        return self.config.proposer_of(height) == self.address

    def status(self) -> dict[str, Any]:
        return {
            "height": self.tip.height if self.tip else None,
            "phase": self.phase.value,
            "round": self.round,
            "validator": "0x" + self.address.hex(),
            "is_validator": self.is_validator,
            "blocks_proposed": self.blocks_proposed,
            "blocks_decided": self.blocks_decided,
        }

    # -- events --------------------------------------------------------
    def on_rich_status(self, status: pb.RichStatus, now: float) -> list[Outgoing]:
        """The chain's tip; a new tip ends the current height and schedules the next proposal."""
        self.chain_flight_mode = status.flight_mode
        if len(status.hash) != 32:
            log.warning("consensus: ignoring rich_status with a %d-byte hash", len(status.hash))
            return []
        proof = status.proof.SerializeToString() if status.HasField("proof") else b""
        new = Tip(status.height, bytes(status.hash), status.timestamp, proof)
        old = self.tip
        if old is not None and (old.height, old.hash) == (new.height, new.hash):
            if not old.proof and new.proof:
                self.tip = new
            return []
        if old is not None and new.height < old.height:
            log.warning("consensus: chain tip went back from %s to %s; following the chain",
                        old.height, new.height)
        self.tip = new
        self.round = 0
        if self.attempt is not None:
            if self.attempt.phase == Phase.WAIT_COMMIT and new.height == self.attempt.height:
                self.blocks_decided += 1
                log.info("consensus: block %s committed (0x%s)", new.height, new.hash.hex()[:16])
            elif new.height >= self.attempt.height:
                log.info("consensus: height %s reached elsewhere; dropping our attempt", new.height)
            self.attempt = None
        if old is None:
            # start-up: go on right away if the tip is older than one interval
            self.next_propose_at = min(now + self.config.block_interval,
                                       max(now, new.timestamp_ms / 1000 + self.config.block_interval))
        else:
            self.next_propose_at = now + self.config.block_interval
        return []

    def tick(self, now: float) -> list[Outgoing]:
        """The clock: start a proposal when due, abandon a stuck one."""
        if self.flight_mode or self.tip is None:
            return []
        att = self.attempt
        if att is not None:
            if now - att.since < self.config.timeout_for(len(att.block.transactions) if att.block else 0):
                return []
            if att.phase == Phase.WAIT_COMMIT and att.commit_msg is not None:
                log.warning("consensus: block %s not committed after %.1f s; publishing it again",
                            att.height, now - att.since)
                att.since = now
                return [att.commit_msg]
            log.warning("consensus: height %s round %s stuck in %s for %.1f s; abandoning it",
                        att.height, att.round, att.phase.value, now - att.since)
            self._abandon(retry_at=now)
            return []
        if self.chain_flight_mode or self.next_propose_at is None or now < self.next_propose_at:
            return []
        height = self.tip.height + 1
        if not self.is_proposer(height):
            return []  # multi-validator: wait for the proposer's block from the network
        if height > 1 and not self.tip.proof:
            log.warning("consensus: tip %s came without its proof; waiting for one", self.tip.height)
            self.next_propose_at = now + self.config.block_interval
            return []
        self.attempt = _Attempt(height=height, round=self.round, phase=Phase.WAIT_TXS, since=now)
        return [Outgoing("block_txs_req", pb.BlockTxsReq(
            height=height, max_count=self.config.max_block_txs, quota_limit=self.config.quota_limit))]

    def on_block_txs(self, msg: pb.BlockTxs, now: float, wall_ms: int | None = None) -> list[Outgoing]:
        """The pool's transactions for our height: build and publish the proposal."""
        att = self.attempt
        if self.flight_mode or att is None or att.phase != Phase.WAIT_TXS or msg.height != att.height:
            log.debug("consensus: ignoring block_txs for height %s", msg.height)
            return []
        assert self.tip is not None
        # auth's senders (recovered at admission) travel with the proposal so the executor
        # need not recover them again; forwarded only when there is exactly one 20-byte
        # sender per raw tx, else the executor recovers every signature itself.
        raw_senders = list(msg.senders)
        with_senders = len(raw_senders) == len(msg.raw_txs) and all(len(s) == 20 for s in raw_senders)
        txs: list[SignedTransaction] = []
        senders: list[bytes] = []
        for i, raw in enumerate(msg.raw_txs):
            try:
                txs.append(decode_as(raw, SignedTransaction, f"transaction {i} of block_txs"))
            except DecodeError as exc:
                log.warning("consensus: dropping undecodable tx from auth: %s", exc)
                continue
            if with_senders:
                senders.append(raw_senders[i])
        block = self.build_proposal(txs, wall_ms if wall_ms is not None else int(time.time() * 1000))
        proposal = rlp.encode(block)
        att.block = block
        att.proposal_hash = keccak(proposal)
        att.phase = Phase.WAIT_EXEC
        att.since = now
        self.blocks_proposed += 1
        log.info("consensus: proposing block %s round %s with %d txs", att.height, att.round, len(txs))
        return [Outgoing("block_proposal", pb.BlockProposal(block=proposal, senders=senders))]

    def build_proposal(self, txs: Sequence[SignedTransaction], wall_ms: int) -> Block:
        """The proposal block on top of the tip (ARCHITECTURE.md step 3)."""
        assert self.tip is not None
        tip = self.tip
        header = Header(
            parent_hash=tip.hash,
            state_root=ZERO_HASH,
            transactions_root=ordered_root([tx.hash for tx in txs]),
            receipts_root=ZERO_HASH,
            log_bloom=EMPTY_BLOOM,
            number=tip.height + 1,
            quota_limit=self.config.quota_limit,
            quota_used=0,
            timestamp=max(wall_ms, tip.timestamp_ms + 1),
            version=0,
            proof=b"" if tip.height == 0 else tip.proof,
            proposer=self.address,
        )
        return Block(header, list(txs))

    def on_executed_result(self, res: pb.ExecutedResult, now: float) -> list[Outgoing]:
        """The executor's result for our proposal: complete the header, vote, and commit on a quorum."""
        att = self.attempt
        if (self.flight_mode or att is None or att.phase != Phase.WAIT_EXEC or res.height != att.height
                or res.proposal_hash != att.proposal_hash):
            log.debug("consensus: ignoring executed_result for height %s", res.height)
            return []
        assert att.block is not None
        if res.error:
            log.warning("consensus: executor could not run block %s: %s; retrying next interval",
                        att.height, res.error)
            self._abandon(retry_at=now + self.config.block_interval)
            return []
        problem = _check_result(res, len(att.block.transactions))
        if problem:
            log.error("consensus: executed_result for block %s is malformed (%s); retrying", att.height, problem)
            self._abandon(retry_at=now + self.config.block_interval)
            return []
        header = att.block.header.copy(
            state_root=res.state_root, receipts_root=res.receipts_root,
            quota_used=res.quota_used, log_bloom=res.log_bloom or EMPTY_BLOOM)
        final = Block(header, list(att.block.transactions))
        att.final_block = final
        att.receipts = tuple(res.receipts)
        block_hash = header.hash
        att.votes = VoteCollector(self.config.chain_id, self.config.validators, att.height, att.round, block_hash)
        if self.is_validator:
            att.votes.add(self.address, sign_vote(self.key, self.config.chain_id, att.height, att.round, block_hash))
        att.phase = Phase.WAIT_VOTES
        att.since = now
        return self._maybe_commit(now)

    def on_vote(self, height: int, round_: int, block_hash: bytes, validator: bytes, signature: bytes,
                now: float) -> list[Outgoing]:
        """A peer's vote (multi-validator rounds, delivered later by the network service)."""
        att = self.attempt
        if (self.flight_mode or att is None or att.votes is None or att.phase != Phase.WAIT_VOTES
                or (height, round_, block_hash) != (att.height, att.round, att.votes.block_hash)):
            return []
        try:
            att.votes.add(validator, signature)
        except ConsensusError as exc:
            log.warning("consensus: rejecting vote: %s", exc)
            return []
        return self._maybe_commit(now)

    # -- restore and flight mode ----------------------------------------
    def set_flight_mode(self, on: bool) -> None:
        """Flight mode: no proposal, no vote; the attempt in flight is dropped."""
        self.flight_mode = on
        if on and self.attempt is not None:
            log.info("consensus: flight mode; dropping the attempt at height %s", self.attempt.height)
            self.attempt = None

    def reset_to(self, height: int, block_hash: bytes, proof: bytes, timestamp_ms: int = 0,
                 now: float | None = None) -> None:
        """Drop votes and proposals and restart from a restored tip (snapshot Clear).

        ``proof`` is the serialized Proof of block ``height`` (the chain's last_proof).
        The next ``chain.rich_status`` completes the picture (e.g. the timestamp).
        """
        now = time.time() if now is None else now
        self.attempt = None
        self.round = 0
        self.tip = Tip(height, bytes(block_hash), timestamp_ms, bytes(proof))
        self.next_propose_at = now + self.config.block_interval
        log.info("consensus: reset to height %s (0x%s)", height, bytes(block_hash).hex()[:16])

    # -- internals ------------------------------------------------------
    def _maybe_commit(self, now: float) -> list[Outgoing]:
        att = self.attempt
        assert att is not None and att.votes is not None and att.final_block is not None
        if not att.votes.has_quorum():
            return []
        qc = att.votes.certificate()
        msg = Outgoing("block_with_proof", pb.BlockWithProof(
            block=rlp.encode(att.final_block), proof=qc.to_proof(), receipts=list(att.receipts)), confirm=True)
        att.commit_msg = msg
        att.phase = Phase.WAIT_COMMIT
        att.since = now
        log.info("consensus: block %s decided (0x%s, %d txs)", att.height, qc.block_hash.hex()[:16],
                 len(att.final_block.transactions))
        return [msg]

    def _abandon(self, retry_at: float) -> None:
        self.attempt = None
        self.round += 1
        self.next_propose_at = retry_at


def _check_result(res: pb.ExecutedResult, n_txs: int) -> str:
    if len(res.state_root) != 32:
        return f"state_root has {len(res.state_root)} bytes"
    if len(res.receipts_root) != 32:
        return f"receipts_root has {len(res.receipts_root)} bytes"
    if res.log_bloom and len(res.log_bloom) != len(EMPTY_BLOOM):
        return f"log_bloom has {len(res.log_bloom)} bytes"
    if len(res.receipts) != n_txs:
        return f"{len(res.receipts)} receipts for {n_txs} transactions"
    return ""


__all__ = ["ConsensusError", "Engine", "EngineConfig", "Outgoing", "Phase", "Tip", "VoteCollector"]

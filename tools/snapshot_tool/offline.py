"""``-m info`` (manifests only) and ``-m verify`` (every check of DESIGN.md section 7): offline, read-only.

Both return a report with ``ok``, ``text()`` and ``to_json()``; a
:class:`~pycita.snapshot.errors.SnapshotError` becomes a failed report (its
message names the file, chunk and check), never a traceback.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycita.errors import PycitaError
from pycita.genesis import Genesis
from pycita.messages import pb
from pycita.snapshot.chain_format import ChainManifest, read_chain_manifest
from pycita.snapshot.container import ReadProgress
from pycita.snapshot.errors import SnapshotError
from pycita.snapshot.state_format import ExecutorManifest, read_executor_manifest
from pycita.snapshot.verify import VerifyReport, verify_chain_file, verify_snapshot
from tools.snapshot_tool.coordinator import NullProgress, ProgressSink
from tools.snapshot_tool.errors import UsageError


def _hex(b: bytes) -> str:
    return "0x" + bytes(b).hex()


def _error_json(exc: PycitaError) -> dict[str, Any]:
    out: dict[str, Any] = {"message": str(exc)}
    if isinstance(exc, SnapshotError):
        out.update(file=exc.file, chunk=exc.chunk, check=exc.check)
    return out


@dataclass(frozen=True)
class InfoReport:
    chain_file: Path | None
    executor_file: Path | None
    chain: dict[str, Any] | None = None
    executor: dict[str, Any] | None = None
    disagreements: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    error_details: tuple[dict[str, Any], ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.errors and not self.disagreements

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "chain": self.chain, "executor": self.executor,
                "files_agree": None if self.chain is None or self.executor is None else not self.disagreements,
                "disagreements": list(self.disagreements), "errors": list(self.error_details)}

    def text(self) -> str:
        lines = []
        for role, data in (("chain", self.chain), ("executor", self.executor)):
            if data is None:
                continue
            lines.append(f"{role} file {data['path']} ({data['file_size']} bytes)")
            for key, value in data.items():
                if key not in ("path", "file_size"):
                    lines.append(f"  {key:<14} {value}")
        if self.chain is not None and self.executor is not None:
            lines.append("files agree: " + ("yes" if not self.disagreements else
                                            "NO: " + "; ".join(self.disagreements)))
        lines.extend(f"error: {e}" for e in self.errors)
        return "\n".join(lines) + "\n"


def _chain_info(path: Path, m: ChainManifest) -> dict[str, Any]:
    return {"path": str(path), "file_size": path.stat().st_size, "version": m.version, "height": m.block_number,
            "block_hash": _hex(m.block_hash), "state_root": _hex(m.state_root), "chain_id": m.chain_id,
            "genesis_hash": _hex(m.genesis_hash), "chunks": len(m.chunks), "full_blocks": m.full_blocks,
            "last_proof_bytes": len(m.last_proof), "created_at": m.created_at}


def _executor_info(path: Path, m: ExecutorManifest) -> dict[str, Any]:
    return {"path": str(path), "file_size": path.stat().st_size, "version": m.version, "height": m.block_number,
            "block_hash": _hex(m.block_hash), "state_root": _hex(m.state_root), "chain_id": m.chain_id,
            "genesis_hash": _hex(m.genesis_hash), "state_chunks": len(m.state_chunks),
            "header_chunks": len(m.block_chunks), "accounts": m.account_count, "created_at": m.created_at}


def info(chain_file: Path | None, executor_file: Path | None) -> InfoReport:
    """Read the manifests only (no chunk is read) and compare them."""
    errors: list[PycitaError] = []
    chain = executor = None
    if chain_file is not None:
        try:
            chain = _chain_info(chain_file, read_chain_manifest(chain_file))
        except (PycitaError, OSError) as exc:
            errors.append(exc if isinstance(exc, PycitaError) else SnapshotError(str(exc), file=str(chain_file)))
    if executor_file is not None:
        try:
            executor = _executor_info(executor_file, read_executor_manifest(executor_file))
        except (PycitaError, OSError) as exc:
            errors.append(exc if isinstance(exc, PycitaError)
                          else SnapshotError(str(exc), file=str(executor_file)))
    disagreements = []
    if chain is not None and executor is not None:
        for key in ("height", "block_hash", "state_root", "chain_id", "genesis_hash"):
            if chain[key] != executor[key]:
                disagreements.append(f"{key}: chain {chain[key]}, executor {executor[key]}")
    return InfoReport(chain_file, executor_file, chain, executor, tuple(disagreements),
                      tuple(str(e) for e in errors), tuple(_error_json(e) for e in errors))


@dataclass(frozen=True)
class VerifyOutcome:
    chain_file: Path | None
    executor_file: Path | None
    report: VerifyReport | None = None
    error: str | None = None
    error_detail: dict[str, Any] | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.report is not None and self.error is None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, "chain_file": str(self.chain_file) if self.chain_file else None,
                               "executor_file": str(self.executor_file) if self.executor_file else None,
                               "seconds": round(self.seconds, 3)}
        if self.report is not None:
            r = self.report
            out.update(height=r.height, block_hash=_hex(r.block_hash), state_root=_hex(r.state_root),
                       cross_checked=r.cross_checked, chunks=r.chunks, blocks=r.blocks, full_blocks=r.full_blocks,
                       headers=r.headers, accounts=r.accounts, storage_slots=r.storage_slots, blobs=r.blobs,
                       bytes=r.bytes)
        if self.error_detail is not None:
            out["error"] = self.error_detail
        return out

    def text(self) -> str:
        if not self.ok:
            return f"verification FAILED: {self.error}\n"
        assert self.report is not None
        r = self.report
        files = ", ".join(str(p) for p in (self.chain_file, self.executor_file) if p is not None)
        lines = [f"verified {files} in {self.seconds:.1f} s",
                 f"  height       {r.height}", f"  block hash   {_hex(r.block_hash)}",
                 f"  state root   {_hex(r.state_root)}",
                 f"  chunks {r.chunks}, blocks {r.blocks} ({r.full_blocks} with bodies), headers {r.headers}, "
                 f"accounts {r.accounts}, storage slots {r.storage_slots}, code/abi blobs {r.blobs}"]
        if not r.cross_checked:
            lines.append("  (executor file not given: only the chain file was verified)")
        return "\n".join(lines) + "\n"


def load_genesis(node_dir: Path, genesis_path: Path | None) -> Genesis:
    path = genesis_path or node_dir / "genesis.json"
    if not path.is_file():
        raise UsageError(f"verify needs the local genesis: {path} does not exist "
                         f"(run inside a node dir, or pass --node-dir or --genesis)")
    try:
        return Genesis.load(path)
    except (PycitaError, OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"cannot load the genesis {path}: {exc}") from exc


def verify(chain_file: Path | None, executor_file: Path | None, *, node_dir: Path,
           genesis_path: Path | None = None, progress: ProgressSink | None = None) -> VerifyOutcome:
    """Run every offline check on the files (writes nothing)."""
    if chain_file is None:
        raise UsageError(f"the executor file {executor_file} is verified against its chain file's manifest, "
                         f"which was not found")
    genesis = load_genesis(node_dir, genesis_path)
    sink = progress or NullProgress()
    sink.phase_started("verify", [p.name for p in (chain_file, executor_file) if p is not None])

    def on_read(p: ReadProgress) -> None:
        sink.progress(pb.SnapshotProgress(service=Path(p.file).name, phase="verify", chunks_done=p.chunk + 1,
                                          chunks_total=p.chunks, bytes_done=p.bytes_done))

    start = time.monotonic()
    try:
        if executor_file is None:
            report = verify_chain_file(chain_file, genesis, progress=on_read)
        else:
            report = verify_snapshot(chain_file, executor_file, genesis, progress=on_read)
    except PycitaError as exc:
        return VerifyOutcome(chain_file, executor_file, None, str(exc), _error_json(exc),
                             time.monotonic() - start)
    except OSError as exc:
        return VerifyOutcome(chain_file, executor_file, None, f"cannot read: {exc}", {"message": str(exc)},
                             time.monotonic() - start)
    finally:
        sink.finish()
    return VerifyOutcome(chain_file, executor_file, report, seconds=time.monotonic() - start)

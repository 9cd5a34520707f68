"""``snapshot_tool``: take, restore, inspect and verify a node's snapshots.

::

    snapshot_tool -m snapshot [-e HEIGHT] [-f FILE]    # inside a node dir (reads .env and node.json)
    snapshot_tool -m restore [-f FILE] [--block HASH]
    snapshot_tool -m info -f FILE [--json]             # manifests only
    snapshot_tool -m verify -f FILE [--json]           # full offline verification, writes nothing

``-f FILE`` (default ``snapshot``) names files inside the node's
``snapshots/`` directory: the chain writes ``FILE_chain.rlp``, the executor
``FILE_executor.rlp``; a value leaving that directory is refused. For
``info`` and ``verify`` it may also be a path (a prefix, or either file).

Exit codes: 0 success, 1 the operation failed, 2 usage error. Errors are one
line on stderr; ``-v`` adds logs (and tracebacks of unexpected errors).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

from pycita.config import load_node_config
from pycita.errors import PycitaError
from pycita.messages import pb
from pycita.snapshot.journal import RestoreJournal, SnapshotLock
from tools.snapshot_tool.coordinator import (
    CHAIN_SUFFIX,
    EXECUTOR_SUFFIX,
    Coordinator,
    NullProgress,
    ProgressSink,
    RestoreResult,
    SnapshotResult,
)
from tools.snapshot_tool.errors import RollForwardIncomplete, SnapshotToolError, UsageError

log = logging.getLogger(__name__)

PROG = "snapshot_tool"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
MAX_HEIGHT = 2**64 - 1
_DEC = re.compile(r"[0-9]+")
_HEX = re.compile(r"0[xX][0-9a-fA-F]+")


# ------------------------------------------------------------------ parsing


def parse_height(text: str) -> int:
    """A block height in decimal or ``0x``-hex (``100`` or ``0x64``); raises :class:`UsageError`."""
    s = text.strip()
    if _HEX.fullmatch(s):
        value = int(s[2:], 16)
    elif _DEC.fullmatch(s):
        value = int(s, 10)
    else:
        raise UsageError(f"invalid height {text!r}: expected a decimal number or 0x-hex")
    if value > MAX_HEIGHT:
        raise UsageError(f"height {text} is larger than 2^64-1")
    return value


def parse_block_hash(text: str) -> bytes:
    """A 32-byte block hash as (``0x``-)hex; raises :class:`UsageError`."""
    s = text.strip()
    s = s[2:] if s[:2] in ("0x", "0X") else s
    if not re.fullmatch(r"[0-9a-fA-F]{64}", s):
        raise UsageError(f"invalid block hash {text!r}: expected 32 bytes as 0x-hex (66 characters)")
    return bytes.fromhex(s)


def resolve_snapshot_name(snapshot_dir: Path, value: str) -> str:
    """Normalize ``-f`` to a name inside ``snapshot_dir``; refuse anything that would leave it.

    Relative names are taken inside the directory; an absolute path is
    accepted only if it lies inside. ``..`` components and symbolic links
    (of the directory or of the files) are resolved before the check, so
    ``../x``, ``/tmp/x`` and a link pointing elsewhere are all refused.
    Returns the name relative to the directory (e.g. ``"snapshot"``, ``"sub/x"``).
    """
    if not value or value != value.strip() or any(c in value for c in "\x00\n\r"):
        raise UsageError(f"invalid snapshot name {value!r}")
    base = snapshot_dir.resolve()
    raw = Path(value)
    candidate = raw if raw.is_absolute() else snapshot_dir / raw
    resolved: list[Path] = []
    for suffix in (CHAIN_SUFFIX, EXECUTOR_SUFFIX):
        full = Path(str(candidate) + suffix).resolve()
        if not full.is_relative_to(base):
            raise UsageError(f"-f {value!r} would leave the snapshot directory {snapshot_dir} "
                             f"({full}); give a name inside it")
        resolved.append(full)
    chain_rel = resolved[0].relative_to(base).as_posix()
    name = chain_rel[: -len(CHAIN_SUFFIX)]
    if not name or name.endswith("/"):
        raise UsageError(f"invalid snapshot name {value!r}")
    return name


@dataclass(frozen=True)
class LocatedFiles:
    """The snapshot files ``info``/``verify`` work on (either may be absent)."""

    chain: Path | None
    executor: Path | None


def locate_files(value: str, snapshot_dir: Path | None) -> LocatedFiles:
    """Find the files named by ``-f`` for info/verify; raises :class:`UsageError` if there are none.

    Tried in order: ``value`` as a name inside ``snapshot_dir``; ``value`` as
    a path prefix (``value_chain.rlp`` / ``value_executor.rlp``); ``value`` as
    one file (its role from its suffix, else ``chain`` unless it contains
    ``executor``).
    """
    prefixes: list[Path] = []
    if snapshot_dir is not None:
        try:
            prefixes.append(snapshot_dir / resolve_snapshot_name(snapshot_dir, value))
        except UsageError:
            pass
    prefixes.append(Path(value))
    for prefix in prefixes:
        chain = Path(str(prefix) + CHAIN_SUFFIX)
        executor = Path(str(prefix) + EXECUTOR_SUFFIX)
        if chain.is_file() or executor.is_file():
            return LocatedFiles(chain if chain.is_file() else None, executor if executor.is_file() else None)
    single = Path(value)
    if single.is_file():
        if single.name.endswith(EXECUTOR_SUFFIX) or (not single.name.endswith(CHAIN_SUFFIX)
                                                     and "executor" in single.name):
            return LocatedFiles(None, single)
        return LocatedFiles(single, None)
    where = f" (in {snapshot_dir} or as a path)" if snapshot_dir is not None else ""
    raise UsageError(f"no snapshot files found for -f {value!r}{where}")


class _Parser(argparse.ArgumentParser):
    err: TextIO | None = None

    def error(self, message: str) -> NoReturn:
        (self.err or sys.stderr).write(f"{PROG}: error: {message} (see {PROG} --help)\n")
        raise SystemExit(EXIT_USAGE)


def build_parser(err: TextIO | None = None) -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Take, restore, inspect and verify pycita snapshots.")
    p.err = err
    p.add_argument("-m", "--mode", required=True, choices=("snapshot", "restore", "info", "verify"))
    p.add_argument("-e", "--end-height", metavar="HEIGHT",
                   help="height to snapshot (decimal or 0x-hex; default: the current height)")
    p.add_argument("-f", "--file", default="snapshot", metavar="FILE",
                   help="snapshot name inside the node's snapshots/ directory (default: snapshot)")
    p.add_argument("--block", metavar="HASH", help="restore: the hash block H must have (trusted checkpoint)")
    p.add_argument("--node-dir", default=".", metavar="DIR", help="the node directory (default: current dir)")
    p.add_argument("--genesis", metavar="FILE", help="verify: the local genesis (default: <node-dir>/genesis.json)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="per-phase timeout (default: node.json snapshot_phase_timeout)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--verbose", "-v", action="count", default=0, help="log what happens (-vv: debug)")
    return p


# ----------------------------------------------------------------- progress


class TerminalProgress:
    """A one-line progress display on a TTY (redrawn in place)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.phase = ""
        self.waiting: list[str] = []
        self.lines: dict[str, str] = {}
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._width = 0

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        parts = [f"{self.phase}"] + [self.lines[s] for s in sorted(self.lines)]
        if self.waiting:
            parts.append("waiting for " + ", ".join(self.waiting))
        text = f"[{now - self.started:6.1f}s] " + " | ".join(parts)
        text = text[:150]
        self.stream.write("\r" + text.ljust(self._width))
        self._width = len(text)
        self.stream.flush()

    def phase_started(self, phase: str, services: Sequence[str]) -> None:
        self.phase = phase
        self.waiting = list(services)
        self.lines = {}
        self._draw(force=True)

    def progress(self, msg: pb.SnapshotProgress) -> None:
        self.lines[msg.service] = _progress_text(msg, bar=True)
        self._draw()

    def service_acked(self, phase: str, service: str) -> None:
        if service in self.waiting:
            self.waiting.remove(service)
        self.lines.pop(service, None)
        self._draw(force=True)

    def finish(self) -> None:
        if self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


class LogProgress:
    """Progress as log lines (not a TTY): phase starts, acks, and progress at most every ``interval`` s."""

    def __init__(self, stream: TextIO, interval: float = 5.0) -> None:
        self.stream = stream
        self.interval = interval
        self._last: dict[str, float] = {}

    def _line(self, text: str) -> None:
        self.stream.write(f"{time.strftime('%H:%M:%S')} {text}\n")
        self.stream.flush()

    def phase_started(self, phase: str, services: Sequence[str]) -> None:
        self._line(f"{phase}: waiting for {', '.join(services)}")

    def progress(self, msg: pb.SnapshotProgress) -> None:
        now = time.monotonic()
        if now - self._last.get(msg.service, 0.0) >= self.interval:
            self._last[msg.service] = now
            self._line(_progress_text(msg, bar=False))

    def service_acked(self, phase: str, service: str) -> None:
        self._line(f"{phase}: {service} done")

    def finish(self) -> None:
        pass


def _progress_text(msg: pb.SnapshotProgress, *, bar: bool) -> str:
    text = f"{msg.service} {msg.phase}".strip()
    if msg.chunks_total:
        frac = min(1.0, msg.chunks_done / msg.chunks_total)
        if bar:
            filled = int(frac * 20)
            text += f" [{'#' * filled}{'.' * (20 - filled)}]"
        text += f" {msg.chunks_done}/{msg.chunks_total} chunks"
    elif msg.chunks_done:
        text += f" {msg.chunks_done} chunks"
    if msg.blocks:
        text += f" {msg.blocks} blocks"
    if msg.accounts:
        text += f" {msg.accounts} accounts"
    if msg.bytes_done:
        text += f" {_size(msg.bytes_done)}"
    return text


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def make_progress(quiet: bool, stream: TextIO) -> ProgressSink:
    if quiet:
        return NullProgress()
    if stream.isatty():
        return TerminalProgress(stream)
    return LogProgress(stream)


# ------------------------------------------------------------------ output


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


def _snapshot_json(r: SnapshotResult) -> dict[str, Any]:
    return {"mode": "snapshot", "request_id": r.request_id, "height": r.height, "block_hash": _hex(r.block_hash),
            "state_root": _hex(r.state_root), "seconds": round(r.seconds, 3),
            "files": {f.service: {"path": str(f.path), "size": f.size} for f in r.files}}


def _restore_json(r: RestoreResult) -> dict[str, Any]:
    return {"mode": "restore", "request_id": r.request_id, "height": r.height, "block_hash": _hex(r.block_hash),
            "state_root": _hex(r.state_root), "seconds": round(r.seconds, 3),
            "completed_leftover": r.completed_leftover}


def _print_snapshot(r: SnapshotResult, out: TextIO) -> None:
    out.write(f"snapshot of height {r.height} written in {r.seconds:.1f} s\n"
              f"  block hash  {_hex(r.block_hash)}\n  state root  {_hex(r.state_root)}\n")
    for f in r.files:
        out.write(f"  {f.service:<9} {f.path}  {_size(f.size)} ({f.size} bytes)\n")


def _print_restore(r: RestoreResult, out: TextIO) -> None:
    what = "completed the interrupted restore" if r.completed_leftover else "restored"
    out.write(f"{what}: the node is at height {r.height} ({r.seconds:.1f} s)\n"
              f"  block hash  {_hex(r.block_hash)}\n  state root  {_hex(r.state_root)}\n")


# -------------------------------------------------------------------- modes


@dataclass(frozen=True)
class _Options:
    mode: str
    node_dir: Path
    file: str
    height: int | None
    block: bytes | None
    timeout: float | None
    quiet: bool
    json: bool
    genesis: Path | None = None


def _options(args: argparse.Namespace) -> _Options:
    height = parse_height(args.end_height) if args.end_height is not None else None
    if height is not None and args.mode != "snapshot":
        raise UsageError("-e is only for -m snapshot")
    if height == 0:
        raise UsageError("-e 0 is the genesis block, which is not exported (the restoring node has it)")
    block = parse_block_hash(args.block) if args.block is not None else None
    if block is not None and args.mode != "restore":
        raise UsageError("--block is only for -m restore")
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError(f"--timeout must be positive, got {args.timeout:g}")
    genesis = Path(args.genesis) if args.genesis is not None else None
    if genesis is not None and args.mode != "verify":
        raise UsageError("--genesis is only for -m verify")
    return _Options(args.mode, Path(args.node_dir), args.file, height, block, args.timeout, args.quiet,
                    args.json, genesis)


def _run_bus_mode(opts: _Options, out: TextIO, err: TextIO) -> int:
    """snapshot / restore: talk to the node's services."""
    from tools.snapshot_tool.transport import PikaTransport

    if not (opts.node_dir / ".env").is_file():
        raise UsageError(f"{opts.node_dir.resolve()} is not a node directory (no .env); "
                         f"run inside one or pass --node-dir")
    cfg = load_node_config(opts.node_dir)
    name = resolve_snapshot_name(cfg.snapshot_dir, opts.file)
    if opts.mode == "snapshot":
        cfg.snapshot_dir.mkdir(parents=True, exist_ok=True)

    def notify(text: str) -> None:
        progress.finish()
        err.write(f"{PROG}: warning: {text}\n")
        err.flush()

    progress = make_progress(opts.quiet or opts.json and not err.isatty(), err)
    with SnapshotLock(cfg.run_dir), PikaTransport(cfg.amqp_url) as transport:
        coord = Coordinator(transport, cfg.services,
                            phase_timeout=opts.timeout or cfg.snapshot_phase_timeout,
                            snapshot_dir=cfg.snapshot_dir, journal=RestoreJournal(cfg.run_dir),
                            progress=progress, notify=notify)
        leftover = coord.recover_leftover()
        entry, done = leftover if leftover is not None else (None, None)
        if entry is not None and done is not None:
            if not opts.json:
                _print_restore(done, out)
            if (opts.mode == "restore" and entry.directory == str(cfg.snapshot_dir)
                    and entry.files[:1] == (Path(name + CHAIN_SUFFIX).name,)):
                if opts.json:
                    out.write(json.dumps(_restore_json(done)) + "\n")
                return EXIT_OK  # the restore asked for was the one completed
        if opts.mode == "snapshot":
            snap = coord.snapshot(name, opts.height)
            if opts.json:
                out.write(json.dumps(_snapshot_json(snap)) + "\n")
            else:
                _print_snapshot(snap, out)
        else:
            res = coord.restore(name, opts.block)
            if opts.json:
                out.write(json.dumps(_restore_json(res)) + "\n")
            else:
                _print_restore(res, out)
    return EXIT_OK


def _snapshot_dir_of(node_dir: Path) -> Path | None:
    try:
        if (node_dir / ".env").is_file():
            return load_node_config(node_dir).snapshot_dir
    except PycitaError:
        pass
    candidate = node_dir / "snapshots"
    return candidate if candidate.is_dir() else None


def _run_file_mode(opts: _Options, out: TextIO, err: TextIO) -> int:
    """info / verify: offline, read-only."""
    from tools.snapshot_tool import offline

    files = locate_files(opts.file, _snapshot_dir_of(opts.node_dir))
    report: offline.InfoReport | offline.VerifyOutcome
    if opts.mode == "info":
        report = offline.info(files.chain, files.executor)
    else:
        progress = make_progress(opts.quiet or opts.json and not err.isatty(), err)
        report = offline.verify(files.chain, files.executor, node_dir=opts.node_dir, genesis_path=opts.genesis,
                                progress=progress)
    if opts.json:
        out.write(json.dumps(report.to_json(), indent=2) + "\n")
    elif report.ok:
        out.write(report.text())
    else:
        err.write(f"{PROG}: " + report.text())
    return EXIT_OK if report.ok else EXIT_FAILED


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run snapshot_tool; returns the exit code (0 ok, 1 failed, 2 usage)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = build_parser(err).parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=err)
    try:
        opts = _options(args)
        if opts.mode in ("snapshot", "restore"):
            return _run_bus_mode(opts, out, err)
        return _run_file_mode(opts, out, err)
    except UsageError as exc:
        err.write(f"{PROG}: error: {exc}\n")
        return EXIT_USAGE
    except RollForwardIncomplete as exc:
        err.write(f"{PROG}: error: {exc}\n")
        return EXIT_FAILED
    except PycitaError as exc:
        err.write(f"{PROG}: error: {exc}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        err.write(f"\n{PROG}: interrupted; if a restore had passed its commit point, run "
                  f"{PROG} -m restore again to complete it\n")
        return 130
    except Exception as exc:  # a bug: one line, the traceback only with -v
        log.debug("unexpected error", exc_info=True)
        err.write(f"{PROG}: internal error: {type(exc).__name__}: {exc} (run with -v for details)\n")
        if args.verbose:
            import traceback

            traceback.print_exc(file=err)
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["main", "build_parser", "parse_height", "parse_block_hash", "resolve_snapshot_name",
           "locate_files", "LocatedFiles", "SnapshotToolError"]

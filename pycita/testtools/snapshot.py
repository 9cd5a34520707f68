"""Snapshots in tests: :meth:`Node.dump_snapshot` makes one, ``Node.run(load_snapshot_from=...)`` loads one.

Both drive the real ``snapshot_tool`` as a subprocess in the node directory,
exactly as a user would::

    snapshot = node.dump_snapshot(height=20)        # snapshot_tool -m snapshot -e 20 -f snapshot
    snapshot.info["chain"]["height"]                 # snapshot_tool -m info --json
    fresh.run(load_snapshot_from=snapshot)           # start, copy files, snapshot_tool -m restore
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycita.errors import PycitaError

CHAIN_SUFFIX = "_chain.rlp"
EXECUTOR_SUFFIX = "_executor.rlp"
TOOL_TIMEOUT = 300.0


class SnapshotToolFailed(PycitaError):
    """Raised when a ``snapshot_tool`` run exits with an error; carries its output."""

    def __init__(self, args: list[str], returncode: int, stdout: str, stderr: str) -> None:
        super().__init__(f"snapshot_tool {' '.join(args)} exited with {returncode}:\n{stderr.strip()}\n"
                         f"{stdout.strip()}".rstrip())
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


def run_snapshot_tool(args: list[str], *, cwd: Path, timeout: float = TOOL_TIMEOUT) -> str:
    """Run ``snapshot_tool ARGS`` in ``cwd``; return its stdout or raise :class:`SnapshotToolFailed`."""
    cmd = [sys.executable, "-m", "tools.snapshot_tool", *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        raise SnapshotToolFailed(args, proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


@dataclass(frozen=True)
class Snapshot:
    """The two files of one snapshot and its manifest summary (``snapshot_tool -m info --json``)."""

    chain_file: Path
    executor_file: Path
    info: dict[str, Any] = field(compare=False, hash=False, repr=False)

    @classmethod
    def from_prefix(cls, prefix: str | os.PathLike[str]) -> Snapshot:
        """The snapshot whose files are ``<prefix>_chain.rlp`` and ``<prefix>_executor.rlp``."""
        chain = Path(f"{os.fspath(prefix)}{CHAIN_SUFFIX}").resolve()
        executor = Path(f"{os.fspath(prefix)}{EXECUTOR_SUFFIX}").resolve()
        return cls.from_files(chain, executor)

    @classmethod
    def from_files(cls, chain_file: Path, executor_file: Path) -> Snapshot:
        for path in (chain_file, executor_file):
            if not path.is_file():
                raise PycitaError(f"snapshot file {path} does not exist")
        prefix = str(chain_file)[: -len(CHAIN_SUFFIX)]
        out = run_snapshot_tool(["-m", "info", "-f", prefix, "--json"], cwd=chain_file.parent)
        return cls(chain_file, executor_file, json.loads(out))

    @property
    def name(self) -> str:
        """The ``-f`` name: the chain file's name without ``_chain.rlp``."""
        return self.chain_file.name[: -len(CHAIN_SUFFIX)]

    @property
    def height(self) -> int:
        return int(self.info["chain"]["height"])

    @property
    def block_hash(self) -> str:
        return str(self.info["chain"]["block_hash"])

    @property
    def state_root(self) -> str:
        return str(self.info["chain"]["state_root"])

    def copy_to(self, directory: str | os.PathLike[str], name: str | None = None) -> Snapshot:
        """Copy both files into ``directory`` (as ``<name or self.name>_*.rlp``); returns the copy."""
        target = Path(directory).resolve()
        target.mkdir(parents=True, exist_ok=True)
        name = name or self.name
        chain = target / f"{name}{CHAIN_SUFFIX}"
        executor = target / f"{name}{EXECUTOR_SUFFIX}"
        for src, dst in ((self.chain_file, chain), (self.executor_file, executor)):
            if src.resolve() != dst:
                shutil.copyfile(src, dst)
        return Snapshot(chain, executor, self.info)


def as_snapshot(source: Snapshot | str | os.PathLike[str]) -> Snapshot:
    """A :class:`Snapshot`, or a path: a prefix (``/x/snap``) or either of its two files."""
    if isinstance(source, Snapshot):
        return source
    text = os.fspath(source)
    for suffix in (CHAIN_SUFFIX, EXECUTOR_SUFFIX):
        if text.endswith(suffix):
            return Snapshot.from_prefix(text[: -len(suffix)])
    return Snapshot.from_prefix(text)

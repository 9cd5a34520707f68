"""The tool's progress display: a redrawn bar on a terminal, log lines otherwise, nothing with --quiet."""

from __future__ import annotations

import io

from pycita.proto import cita_pb2 as pb
from tools.snapshot_tool.cli import LogProgress, NullProgress, TerminalProgress, make_progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _msg(service: str, done: int, total: int) -> pb.SnapshotProgress:
    return pb.SnapshotProgress(request_id="r", service=service, phase="restore", chunks_done=done,
                               chunks_total=total, bytes_done=3 << 20, accounts=1200, blocks=40)


def test_a_terminal_gets_a_bar_redrawn_in_place_and_cleared_at_the_end() -> None:
    out = _Tty()
    sink = make_progress(False, out)
    assert isinstance(sink, TerminalProgress)
    sink.phase_started("Restore", ["chain", "executor"])
    sink.progress(_msg("executor", 5, 10))
    sink.service_acked("Restore", "chain")
    text = out.getvalue()
    assert "\r" in text and "\n" not in text
    assert "executor restore [##########..........] 5/10 chunks" in text
    assert "1200 accounts" in text and "3.0 MiB" in text
    assert "waiting for executor" in text
    sink.finish()
    assert out.getvalue().endswith("\r")


def test_without_a_terminal_progress_is_periodic_log_lines() -> None:
    out = io.StringIO()
    sink = make_progress(False, out)
    assert isinstance(sink, LogProgress)
    sink.phase_started("Snapshot", ["chain", "executor"])
    sink.progress(_msg("chain", 1, 4))
    sink.progress(_msg("chain", 2, 4))  # within the interval: not repeated
    sink.service_acked("Snapshot", "chain")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].endswith("Snapshot: waiting for chain, executor")
    assert lines[1].endswith("chain restore 1/4 chunks 40 blocks 1200 accounts 3.0 MiB")
    assert lines[2].endswith("Snapshot: chain done")


def test_quiet_shows_nothing() -> None:
    out = _Tty()
    sink = make_progress(True, out)
    assert isinstance(sink, NullProgress)
    sink.phase_started("Restore", ["chain"])
    sink.progress(_msg("chain", 1, 2))
    sink.finish()
    assert out.getvalue() == ""

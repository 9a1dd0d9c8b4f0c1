"""Benchmarks keep every measurement: rows are on disk as soon as they are measured, a failing
peer becomes a row saying why, and rsync daemons can read what the benchmark wrote."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.peers import rsync_daemon_config
from benchmarks.report import RowLog


@dataclass(frozen=True)
class Row:
    peer: str
    seconds: float
    note: str = ""


def records(log: RowLog[Row]) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.path.read_text().splitlines()]


def test_rows_are_on_disk_when_measured_and_failures_become_rows(tmp_path: Path) -> None:
    printed: list[str] = []
    log: RowLog[Row] = RowLog("unit", tmp_path, echo=printed.append)
    log.add(Row("first", 1.5))
    assert records(log)[-1] == {"row": {"peer": "first", "seconds": 1.5, "note": ""}}
    with log.guard("second", lambda why: Row("second", 0.0, f"FAILED: {why}")):
        raise RuntimeError("rsync exited 23")
    with log.guard("third"):  # no row shape: a failure record
        raise OSError("no such tool")
    log.add(Row("fourth", 2.0))  # the run went on
    assert [r.peer for r in log.rows] == ["first", "second", "fourth"]
    assert log.rows[1].note == "FAILED: RuntimeError: rsync exited 23"
    assert log.failures == [("second", "RuntimeError: rsync exited 23"),
                            ("third", "OSError: no such tool")]
    assert any(r.get("failed") == "third" for r in records(log))
    assert any("row: peer=first" in line for line in printed)
    assert any("FAILED third" in line for line in printed)


def test_guard_does_not_swallow_interrupts(tmp_path: Path) -> None:
    log: RowLog[Row] = RowLog("unit", tmp_path, echo=lambda _: None)
    with pytest.raises(KeyboardInterrupt), log.guard("x"):
        raise KeyboardInterrupt


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_rsync_daemon_reads_a_private_directory(tmp_path: Path) -> None:
    """As root, a daemon without uid/gid would run as nobody and fail with exit 23 here."""
    work = Path(tempfile.mkdtemp(dir=tmp_path))  # mode 0700, like every benchmark work dir
    src = work / "src"
    src.mkdir(mode=0o700)
    (src / "file").write_bytes(os.urandom(10_000))
    conf = rsync_daemon_config(work, "data", src)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    daemon = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={conf}",
                               f"--port={port}", "--address=127.0.0.1"])
    try:
        for _ in range(100):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        proc = subprocess.run(["rsync", f"rsync://127.0.0.1:{port}/data/file",
                               str(work / "copy")], capture_output=True, text=True, timeout=60)
    finally:
        daemon.terminate()
        daemon.wait(10)
    assert proc.returncode == 0, proc.stderr
    assert (work / "copy").read_bytes() == (src / "file").read_bytes()

"""Smoke test of `python -m bench.throughput`: it runs end to end and cleans up.

Tiny durations, one repetition: the figures mean nothing here and nothing checks
them. What is checked: every row of the comparison is produced (measured, or failed
with a message), lockgate's rows caused no outer IP fragments, the control-plane
section has its rows, and no namespace, process or temporary directory of the run is
left behind, also when it is stopped midway.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.interop, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
CASES = ("none", "swan-swan", "lockgate-swan", "lockgate-lockgate", "lockgate-lockgate-raw")
SUITES = ("aes128gcm16", "chacha20poly1305")


def _namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.startswith(prefix)]


def _leftovers(pid: int) -> list[str]:
    # The lab names everything after the creating process: lg<pid>x<n>.
    prefix = f"lg{pid}x"
    return _namespaces(prefix) + [str(p) for p in Path(tempfile.gettempdir()).glob(f"{prefix}*")]


def test_every_row_is_produced_and_everything_removed(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    args = [sys.executable, "-m", "bench.throughput", "--duration", "1", "--repeat", "1",
            "--ping-count", "3", "--json", str(report),
            "--control-plane", "--sa-counts", "4"]  # fmt: skip
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    data = json.loads(report.read_text())
    rows = {(row["case"], row["suite"]): row for row in data["rows"]}
    expected = {("none", "-")} | {(c, s) for c in CASES[1:] for s in SUITES}
    assert set(rows) == expected, text
    for key, row in rows.items():
        if row["error"]:
            continue  # a failed row is still a row: it says why
        measured = set(row["samples"]) | set(row["test_errors"])
        assert measured == {"tcp1", "tcp4", "udp"}, (key, row)
        assert isinstance(row["median"]["outer_fragments"], int), (key, row)
        if key[0].startswith("lockgate"):
            # lockgate's ESP packets never exceed the path MTU: an outer fragment would
            # cost the peer a reassembly and lose the packet with either fragment.
            assert row["median"]["outer_fragments"] == 0, (key, row)
    control = {(r["implementation"], r["count"]) for r in data["control_plane"]}
    assert control == {("charon", 4), ("lockgate", 4)}, text
    assert "Ratios against strongSwan" in text
    assert _leftovers(proc.pid) == []


def test_sigterm_midway_removes_everything() -> None:
    args = [sys.executable, "-m", "bench.throughput", "--duration", "5", "--repeat", "1",
            "--cases", "none,swan-swan", "--suites", "aes128gcm16"]  # fmt: skip
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not _namespaces(f"lg{proc.pid}x") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _namespaces(f"lg{proc.pid}x"), "the benchmark never built its namespaces"
        time.sleep(2)  # into the measurements
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out.decode(errors="replace")
    assert _leftovers(proc.pid) == []

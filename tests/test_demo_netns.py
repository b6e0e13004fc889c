"""`make demo` as a test: `lockgate demo` succeeds and leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def _demo(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _demo_namespaces(pid: int) -> set[str]:
    return {name for name in _namespaces() if name.startswith(f"lgdemo{pid}-")}


def test_demo_succeeds_and_cleans_up() -> None:
    proc = _demo("--timeout", "90", "--file-size", "4")
    try:
        out, _ = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out
    assert "tunnel up" in out
    assert "0% packet loss" in out
    assert "hashes match" in out
    assert "CHILD SAs (" in out and "CHILD SAs (0)" not in out
    assert "The demo succeeded." in out
    assert "Removed the demo's namespaces" in out
    assert _demo_namespaces(proc.pid) == set()


def test_interrupted_demo_still_cleans_up() -> None:
    proc = _demo("--timeout", "90")
    try:
        assert proc.stdout is not None
        # Interrupt once the daemons run: the moment with the most to clean up.
        deadline = time.monotonic() + 60
        seen = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen += line
            if "Starting `lockgate daemon`" in line or not line:
                break
        time.sleep(1.0)
        assert _demo_namespaces(proc.pid), "the demo made no namespaces:\n" + seen
        os.kill(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, seen + rest
    assert "Interrupted" in rest
    assert "Removed the demo's namespaces" in rest
    assert _demo_namespaces(proc.pid) == set()

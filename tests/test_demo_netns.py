"""`make demo` as a test: `lockgate demo` succeeds and leaves nothing behind."""

from __future__ import annotations

import os
import shutil
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


def _output(proc: subprocess.Popen[str], *, timeout: float) -> str:
    """The demo's whole output once it exits; killed (its group) if it overruns."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return out


def _demo_namespaces(pid: int) -> set[str]:
    return {name for name in _namespaces() if name.startswith(f"lgdemo{pid}-")}


def test_demo_succeeds_and_cleans_up() -> None:
    proc = _demo("--timeout", "90", "--file-size", "4")
    out = _output(proc, timeout=150)
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


@pytest.mark.skipif(shutil.which("bird") is None, reason="BIRD is not installed (bird2)")
def test_demo_bgp_succeeds_and_cleans_up() -> None:
    """`lockgate demo --bgp`: the route-based and BIRD examples, unchanged."""
    proc = _demo("--bgp", "--timeout", "90", "--file-size", "4")
    out = _output(proc, timeout=150)
    assert proc.returncode == 0, out
    assert "BGP sessions established" in out
    for learned in (
        "dc: 203.0.113.0/24 via 198.51.100.254 on lg-cloud",
        "cloud: 192.0.2.0/24 via 198.51.100.253 on lg-dc",
        "dc: 2001:db8:b::/64 via 2001:db8:ff::2 on lg-cloud",
    ):
        assert learned in out
    assert "0% packet loss" in out and " 100% packet loss" not in out
    assert "dc learned 203.0.113.128/25 over BGP" in out
    assert "dc withdrew 203.0.113.128/25" in out
    assert "hashes match" in out
    assert "route mode on lg-cloud (up)" in out
    assert "Removed the demo's namespaces" in out
    assert _demo_namespaces(proc.pid) == set()

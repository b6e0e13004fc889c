"""`bench.measure`: `realtime`, what `bench.throughput` does to put strongSwan at its
best, and `udp_receive_overflows`, which tells a receiver's full socket from a loss."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys

import pytest

from bench.measure import FIFO_PRIORITY, pin, realtime, udp_receive_overflows
from daemon.lab.netns import Lab, in_namespace

DATAGRAMS = 200

# A child with a second thread started before `realtime` and a third started after.
_CHILD = """
import sys, threading, time
threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
sys.stdout.write("again\\n"); sys.stdout.flush()
sys.stdin.readline()
"""


def _policies(pid: int) -> list[int]:
    return [os.sched_getscheduler(int(tid)) for tid in sorted(os.listdir(f"/proc/{pid}/task"))]


@pytest.mark.skipif(os.geteuid() != 0, reason="SCHED_FIFO needs root (CAP_SYS_NICE)")
def test_every_thread_and_those_started_later_run_under_sched_fifo() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline() == "ready\n"
        assert _policies(child.pid) == [os.SCHED_OTHER] * 2
        assert realtime(child.pid) == 2
        assert _policies(child.pid) == [os.SCHED_FIFO] * 2
        tid = sorted(os.listdir(f"/proc/{child.pid}/task"))[0]
        assert os.sched_getparam(int(tid)).sched_priority == FIFO_PRIORITY
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline() == "again\n"
        # Started by a thread under SCHED_FIFO, the new one inherits the policy.
        assert _policies(child.pid) == [os.SCHED_FIFO] * 3
    finally:
        child.kill()
        child.wait()


def _cpus(pid: int) -> list[set[int]]:
    return [os.sched_getaffinity(int(tid)) for tid in sorted(os.listdir(f"/proc/{pid}/task"))]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning needs two CPUs to tell")
def test_every_thread_and_those_started_later_stay_on_the_pinned_cpu() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    cpu = max(os.sched_getaffinity(0))
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline() == "ready\n"
        assert all(len(cpus) > 1 for cpus in _cpus(child.pid))
        assert pin(child.pid, cpu) == 2
        assert _cpus(child.pid) == [{cpu}] * 2
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline() == "again\n"
        assert _cpus(child.pid) == [{cpu}] * 3
    finally:
        child.kill()
        child.wait()


def test_a_process_that_is_gone_moves_no_thread() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert realtime(child.pid) == 0
    assert pin(child.pid, 0) == 0


@pytest.mark.netns
@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_udp_receive_overflows_counts_what_a_full_socket_dropped(family: int) -> None:
    """A socket nobody reads, with a small buffer: every datagram past what it holds
    is counted, in its own namespace only."""
    address = "127.0.0.1" if family == socket.AF_INET else "::1"
    with Lab() as lab:
        ns, other = lab.namespace("rcv"), lab.namespace("other")
        with in_namespace(ns.name):
            receiver = socket.socket(family, socket.SOCK_DGRAM)
            sender = socket.socket(family, socket.SOCK_DGRAM)
        with receiver, sender:
            receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            receiver.bind((address, 0))
            before = udp_receive_overflows(ns)
            for _ in range(DATAGRAMS):
                sender.sendto(bytes(100), receiver.getsockname()[:2])
            held = 0
            receiver.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while receiver.recv(2048):
                    held += 1
            dropped = udp_receive_overflows(ns) - before
        assert 0 < held < DATAGRAMS
        assert dropped == DATAGRAMS - held
        assert udp_receive_overflows(other) == 0

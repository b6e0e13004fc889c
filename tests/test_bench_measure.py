"""`bench.measure.realtime`: what `bench.throughput` does to put strongSwan at its best."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.measure import FIFO_PRIORITY, realtime

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


def test_a_process_that_is_gone_moves_no_thread() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert realtime(child.pid) == 0

"""daemon.netlink.LinkWorker: calls on the netlink thread, in order, errors kept apart.

Only reads the kernel (no namespace needed): the calls given to the worker are ours.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from daemon.netlink import LinkWorker
from tun import LinkError, LinkManager


def test_calls_run_in_order_on_one_thread_and_errors_reach_the_caller() -> None:
    worker = LinkWorker()
    try:
        seen: list[tuple[int, str]] = []

        def recorder(i: int) -> Callable[[LinkManager], None]:
            def record(_lm: LinkManager) -> None:
                seen.append((i, threading.current_thread().name))

            return record

        for i in range(50):
            worker.run(recorder(i))
        assert [i for i, _ in seen] == list(range(50))
        assert {name for _, name in seen} == {"netlink"}

        def broken(_lm: LinkManager) -> None:
            raise LinkError("no such interface 'nope0'")

        # A failing call raises in the caller; the thread goes on.
        with pytest.raises(LinkError, match="nope0"):
            worker.run(broken)
        assert worker.run(lambda lm: lm.exists("lo")) is True
    finally:
        worker.close()
    assert not worker._thread.is_alive()

"""Netlink calls from inside the daemon's event loop, on a thread of their own.

`tun.LinkManager` uses pyroute2's synchronous `IPRoute`, which runs a private asyncio
loop for every call and so cannot be used from a thread whose loop is already running
(the daemon's). One worker thread owns the netlink session; the daemon hands it short
calls (add a route, set the MTU) and waits for each, which costs a few hundred
microseconds and happens only when SAs come and go.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from tun import LinkManager

T = TypeVar("T")

CALL_TIMEOUT = 10.0
"""Seconds one netlink call may take before the daemon gives up waiting for it."""


class LinkWorker:
    """A `LinkManager` living on its own thread."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")
        try:
            self._links = self._pool.submit(LinkManager).result(CALL_TIMEOUT)
        except BaseException:
            self._pool.shutdown(wait=False)
            raise

    def run(self, call: Callable[[LinkManager], T]) -> T:
        """Run ``call(links)`` on the netlink thread and return its result (or raise
        its exception, e.g. `tun.LinkError`)."""
        return self._pool.submit(call, self._links).result(CALL_TIMEOUT)

    def close(self) -> None:
        """Close the netlink session and stop the thread."""
        try:
            self.run(lambda links: links.close())
        finally:
            self._pool.shutdown(wait=True)

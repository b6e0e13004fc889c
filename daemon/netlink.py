"""Netlink calls from inside the daemon's event loop, on a thread of their own.

`tun.LinkManager` uses pyroute2's synchronous `IPRoute`, which runs a private asyncio
loop for every call and so cannot be used from a thread whose loop is already running
(the daemon's). One worker thread owns the netlink session; the daemon hands it short
calls (add a route, set the MTU) and waits for each, which costs a few hundred
microseconds and happens only when SAs come and go.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from ipaddress import IPv4Interface, IPv6Interface
from typing import TypeVar

from tun import LinkManager

T = TypeVar("T")

log = logging.getLogger(__name__)

CALL_TIMEOUT = 10.0
"""Seconds one netlink call may take before the daemon gives up waiting for it."""

ADDRESS_TTL = 2.0
"""Seconds the host's address list is reused before it is read again: long enough that
a thousand CHILD SAs set up together share a few reads, short enough that an address
an operator adds or removes is seen almost at once."""


def _log_failure(future: Future[object]) -> None:
    exc = future.exception()
    if exc is not None:
        log.error("netlink call failed: %s", exc, exc_info=exc)


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

    def submit(self, call: Callable[[LinkManager], object]) -> None:
        """Queue ``call(links)`` on the netlink thread without waiting for it. Calls
        run one at a time in the order given, so a later `run` sees its effect; the
        call reports its own failures (an exception escaping it is logged here)."""
        self._pool.submit(call, self._links).add_done_callback(_log_failure)

    def close(self) -> None:
        """Close the netlink session and stop the thread."""
        try:
            self.run(lambda links: links.close())
        finally:
            self._pool.shutdown(wait=True)


class LocalAddresses:
    """The host's addresses (every interface), read through a `LinkWorker` and reused
    for `ttl` seconds.

    Choosing a route's source address needs them for every CHILD SA installed; reading
    them each time listed every address of every link per SA.
    """

    def __init__(
        self,
        links: LinkWorker,
        *,
        ttl: float = ADDRESS_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._links = links
        self._ttl = ttl
        self._clock = clock
        self._addresses: list[IPv4Interface | IPv6Interface] = []
        self._read_at: float | None = None
        self.reads = 0
        """How many times the kernel was asked (for tests and diagnostics)."""

    def get(self) -> list[IPv4Interface | IPv6Interface]:
        """The addresses, read again if the last read is older than the TTL (raises
        `tun.LinkError` if the kernel cannot be asked)."""
        now = self._clock()
        if self._read_at is None or now - self._read_at >= self._ttl:
            self._addresses = self._links.run(lambda lm: lm.all_addresses())
            self._read_at = now
            self.reads += 1
        return self._addresses

    def invalidate(self) -> None:
        """Read again on the next `get` (an address we rely on may have changed)."""
        self._read_at = None

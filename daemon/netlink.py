"""Netlink calls from inside the daemon's event loop, on a thread of their own.

`tun.LinkManager` uses pyroute2's synchronous `IPRoute`, which runs a private asyncio
loop for every call and so cannot be used from a thread whose loop is already running
(the daemon's). One worker thread owns the netlink session; the daemon hands it short
calls (set the MTU, read the host's addresses) and waits for each, which costs a few
hundred microseconds. The routes of CHILD SAs do not come here: the gateway adds and
removes them itself through a `tun.RouteSocket`, without a thread hand-over per route.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from ipaddress import IPv4Interface, IPv6Interface
from typing import TypeVar

from tun import LinkManager

T = TypeVar("T")

CALL_TIMEOUT = 10.0
"""Seconds one netlink call may take before the daemon gives up waiting for it."""

ADDRESS_TTL = 2.0
"""Seconds the host's address list is reused before it is read again: long enough that
a thousand CHILD SAs set up together share a few reads, short enough that an address
an operator adds or removes is seen almost at once."""


Work = tuple[Callable[[LinkManager], object], "Future[object]"]
"""A call for the netlink thread, with the Future its caller waits on."""


class LinkWorker:
    """A `LinkManager` living on its own thread; calls run one at a time in the order
    given (a `queue.SimpleQueue` feeds the thread, None stops it)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Work | None] = queue.SimpleQueue()
        started: Future[LinkManager] = Future()
        self._thread = threading.Thread(
            target=self._serve, args=(started,), name="netlink", daemon=True
        )
        self._thread.start()
        try:
            self._links = started.result(CALL_TIMEOUT)
        except BaseException:
            self._queue.put(None)
            raise

    def _serve(self, started: Future[LinkManager]) -> None:
        # pyroute2's session belongs to the thread that made it: make it here.
        try:
            links = LinkManager()
        except BaseException as exc:
            started.set_exception(exc)
            return
        started.set_result(links)
        get = self._queue.get
        while (work := get()) is not None:
            call, future = work
            try:
                result = call(links)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

    def run(self, call: Callable[[LinkManager], T]) -> T:
        """Run ``call(links)`` on the netlink thread and return its result (or raise
        its exception, e.g. `tun.LinkError`; TimeoutError after `CALL_TIMEOUT`)."""
        future: Future[object] = Future()
        self._queue.put((call, future))
        return future.result(CALL_TIMEOUT)  # type: ignore[return-value]

    def close(self) -> None:
        """Close the netlink session and stop the thread."""
        try:
            self.run(lambda links: links.close())
        finally:
            self._queue.put(None)
            self._thread.join(CALL_TIMEOUT)


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
        self._numbered: list[tuple[int, int, str]] = []
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
            self._numbered = [(a.version, int(a.ip), str(a.ip)) for a in self._addresses]
        return self._addresses

    def numbered(self) -> list[tuple[int, int, str]]:
        """`get` as (IP version, address as an integer, address as text): the form a
        route's source is chosen from for every CHILD SA, converted once per read."""
        self.get()
        return self._numbered

    def invalidate(self) -> None:
        """Read again on the next `get` (an address we rely on may have changed)."""
        self._read_at = None

"""The asyncio adapter of the sans-I/O IKE endpoint: feed, service, re-arm.

`IkeDriver` owns no socket. The pump reads IKE messages from UDP 500 and from behind
the non-ESP marker on 4500 and hands them to `message_received`; `service` then runs
the endpoint's due timers, sends what it wants sent through the `send` callback (the
pump, which puts the marker in front of what leaves from 4500), gives its events to
`on_event`, and re-arms one loop timer for the endpoint's next deadline. While no IKE
datagram comes, it makes key exchange pairs ahead of need, a short step per turn of
the loop.

Received IKE messages wait in a backlog (`IkeBacklog`) and are processed for at most
`IKE_TURN_BUDGET` per turn of the loop: a setup costs milliseconds of key exchange,
signing and EAP, and a burst of logins read in one batch (`daemon.pump.BATCH` per
socket) used to run back to back while connected clients' ESP and TUN packets waited
for the loop. Between two slices the loop reads and forwards the data plane's packets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from ikev2.endpoint import Endpoint
from ikev2.events import Address, Event
from ikev2.sa_types import IkeDropReason

log = logging.getLogger(__name__)

KEY_POOL_STEP = 0.002
"""Seconds of making key exchange pairs ahead (Endpoint.prepare_keys) per turn of the
event loop, so datagrams arriving meanwhile wait little: some 40 X25519 pairs, or one
MODP pair (a millisecond or two each)."""
KEY_POOL_IDLE = 0.2
"""Seconds without an IKE datagram before key pairs are made ahead: during a burst of
setups they would only compete with it."""

IKE_TURN_BUDGET = 0.002
"""Seconds of processing received IKE messages per turn of the event loop (at least
one message each turn): an IKE_SA_INIT or IKE_AUTH costs a millisecond or a few (key
exchange, signature, MSCHAPv2), so connected clients' packets wait about one of them
rather than a whole read batch of them."""
BACKLOG_BYTES = 4 * 1024 * 1024
"""Most octets of received IKE messages waiting (the size of one socket's receive
buffer, `daemon.pump.SOCKET_BUFFER`): beyond it a message is dropped and counted
(`IkeDropReason.BACKLOG_FULL`), as the kernel would drop it from a full socket."""


class IkeBacklog:
    """Received IKE messages waiting for their turn: first in, first out, bounded in
    octets. Sans-I/O, and no clock of its own: `take` is given `now` and a deadline."""

    def __init__(self, limit: int = BACKLOG_BYTES) -> None:
        self.limit = limit
        self._queue: deque[tuple[bytes, Address, Address]] = deque()
        self.size = 0
        """Octets of the messages waiting."""

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, message: bytes, local: Address, remote: Address) -> bool:
        """Queue a message; False (not queued) when it would pass `limit`."""
        if self.size + len(message) > self.limit:
            return False
        self._queue.append((message, local, remote))
        self.size += len(message)
        return True

    def take(self) -> tuple[bytes, Address, Address] | None:
        """The oldest message, or None."""
        if not self._queue:
            return None
        item = self._queue.popleft()
        self.size -= len(item[0])
        return item

    def clear(self) -> None:
        self._queue.clear()
        self.size = 0


def drain(
    backlog: IkeBacklog,
    process: Callable[[bytes, Address, Address], None],
    clock: Callable[[], float],
    budget: float,
) -> int:
    """Process messages of `backlog` until it is empty or `budget` seconds of `clock`
    have passed since the start (one message at least); how many were processed."""
    deadline = clock() + budget
    done = 0
    while (item := backlog.take()) is not None:
        process(*item)
        done += 1
        if clock() >= deadline:
            break
    return done


SendCallback = Callable[[bytes, Address, Address], object]
"""send(IKE message, local address, remote address): the pump frames it for its port
(`Pump.send_datagram`) and counts what fails."""
EventCallback = Callable[[Event], None]


class IkeDriver:
    """Runs an `Endpoint` on an asyncio loop: input, timers, events and sending."""

    def __init__(
        self,
        endpoint: Endpoint,
        send: SendCallback,
        on_event: EventCallback,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.loop = loop
        """Where the timer and the key refill run (without one: neither runs)."""
        self._send = send
        self._on_event = on_event
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        """The endpoint timer `_timer` is armed for (meaningful while `_timer` is set)."""
        self.last_ike_at = 0.0
        """When the last IKE datagram arrived (monotonic): key pairs are made ahead
        only after KEY_POOL_IDLE of quiet."""
        self._key_refill: asyncio.Handle | None = None
        self._service_soon: asyncio.Handle | None = None
        """A `service` scheduled for the next turn of the loop."""
        self.closing = False
        """Set by `close`: no more key pairs are made ahead."""
        self.backlog = IkeBacklog()
        self._drain: asyncio.Handle | None = None
        """The next slice of the backlog, scheduled for the next turn of the loop."""
        self.turn_budget = IKE_TURN_BUDGET

    def message_received(self, message: bytes, local: Address, remote: Address) -> None:
        """A bare IKE message (the pump took it out from behind the non-ESP marker):
        queued for `_drain_backlog` (processed at once without a loop)."""
        self.last_ike_at = time.monotonic()
        loop = self.loop
        if loop is None:
            self._process(message, local, remote)
            return
        if not self.backlog.put(message, local, remote):
            self.endpoint.count_drop(IkeDropReason.BACKLOG_FULL)
            return
        if self._drain is None:
            self._drain = loop.call_soon(self._drain_backlog)

    def _drain_backlog(self) -> None:
        """One slice of the backlog (`drain`); the rest waits for the next turn, after
        the loop has read and forwarded what the data plane has."""
        self._drain = None
        drain(self.backlog, self._process, time.monotonic, self.turn_budget)
        if self.backlog and self.loop is not None:
            self._drain = self.loop.call_soon(self._drain_backlog)

    def _process(self, message: bytes, local: Address, remote: Address) -> None:
        # Quiet is counted from the last message processed, not the last received: a
        # backlog being worked through is a burst still on.
        self.last_ike_at = now = time.monotonic()
        try:
            self.endpoint.receive_message(message, local, remote, now)
        except Exception:
            # The core turns bad input into typed errors itself; anything escaping is
            # a bug, and one hostile datagram must not stop the gateway for everyone.
            log.exception("IKE message from %s[%d] caused an internal error", *remote)
        self.service()

    def esp_spi_unknown(self, spi: int, local: Address, remote: Address) -> None:
        """The data plane dropped ESP of an unknown SPI from `remote` (we may have
        restarted; `Endpoint.esp_spi_unknown` decides whether to answer). Whatever it
        queues leaves in one `service` at the next turn of the loop, however many
        such packets one read brought."""
        try:
            self.endpoint.esp_spi_unknown(spi, local, remote, time.monotonic())
        except Exception:
            log.exception(
                "ESP of unknown SPI %08x from %s[%d] caused an internal error", spi, *remote
            )
        if self.loop is None:
            self.service()
        elif self._service_soon is None:
            self._service_soon = self.loop.call_soon(self._serve_soon)

    def _serve_soon(self) -> None:
        self._service_soon = None
        self.service()

    def service(self) -> None:
        """Run due timers, send what the endpoint wants sent, handle its events, and
        re-arm the timer: the whole asyncio adapter of a sans-I/O core."""
        endpoint, send = self.endpoint, self._send
        now = time.monotonic()
        timer = endpoint.get_timer()
        if timer is not None and timer <= now:
            endpoint.handle_timer(now)
        for message, local, remote in endpoint.datagrams_to_send(now):
            send(message, local, remote)
        for event in endpoint.events():
            self._on_event(event)
        # Handling events may have produced more to send (a retry, a delete).
        for message, local, remote in endpoint.datagrams_to_send(now):
            send(message, local, remote)
        self._arm_timer()

    def _arm_timer(self) -> None:
        loop = self.loop
        timer = self.endpoint.get_timer() if loop is not None else None
        if self._timer is not None:
            if timer is None or timer >= self._timer_at:
                # Armed for that time or earlier: most datagrams leave the timer where
                # it was or move it later (an answer stops a retransmission timer), and
                # an early wake-up only runs `service`, which arms for what is then
                # due. A burst of setups paid a cancel and a new handle per datagram.
                return
            self._timer.cancel()
            self._timer = None
        if timer is not None and loop is not None:
            delay = max(0.0, timer - time.monotonic())
            self._timer = loop.call_later(delay, self._on_timer)
            self._timer_at = timer

    def _on_timer(self) -> None:
        self._timer = None  # fired: the next `_arm_timer` must arm again, same time or not
        self.service()

    @property
    def refilling(self) -> bool:
        """True while key pairs are being made ahead (a step is scheduled)."""
        return self._key_refill is not None

    def refill_keys(self) -> None:
        """Make key exchange pairs ahead of need, for KEY_POOL_STEP per turn of the
        loop, while no IKE datagram came for KEY_POOL_IDLE (housekeeping starts it
        again)."""
        self._key_refill = None
        endpoint, loop = self.endpoint, self.loop
        if loop is None or self.closing:
            return
        now = time.monotonic()
        if now - self.last_ike_at < KEY_POOL_IDLE or self.backlog:
            return
        deadline = now + KEY_POOL_STEP
        while (missing := endpoint.prepare_keys(1)) > 0 and time.monotonic() < deadline:
            pass
        if missing > 0:
            self._key_refill = loop.call_soon(self.refill_keys)

    async def close(self, timeout: float) -> int:
        """Delete every IKE SA and wait (bounded by `timeout` seconds) for the peers to
        acknowledge, retransmitting meanwhile; how many IKE SAs are still there."""
        self.closing = True
        endpoint = self.endpoint
        endpoint.close(time.monotonic())
        self.service()
        deadline = time.monotonic() + timeout
        while endpoint.ike_sas() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            self.service()
        return len(endpoint.ike_sas())

    def stop(self) -> None:
        """Cancel the timer and the key refill (the loop is going away)."""
        if self._timer is not None:
            self._timer.cancel()
        if self._key_refill is not None:
            self._key_refill.cancel()
        if self._service_soon is not None:
            self._service_soon.cancel()
        if self._drain is not None:
            self._drain.cancel()
        self.backlog.clear()

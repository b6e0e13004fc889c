"""The asyncio adapter of the IKE endpoint: feed, drain events, transmit, re-arm.

`IkeDriver` owns no socket. Whoever owns them (the daemon, which also needs ESP on
port 4500) calls `datagram_received` with whole UDP payloads, or `message_received`
with a bare IKE message it already took out from behind the non-ESP marker, and hands
in a `send(data, local, remote)` callback. Events go to an `on_event` callback; they
are delivered before the datagrams that follow them (see `ikev2.endpoint`).

`open_udp_sockets` is for users without a daemon (tests, small tools): it binds UDP
500 and 4500 on given addresses and wires them to a driver.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ikev2.constants import NON_ESP_MARKER
from ikev2.endpoint import Endpoint
from ikev2.errors import IkeError
from ikev2.events import Address, Event

logger = logging.getLogger(__name__)

SendCallback = Callable[[bytes, Address, Address], None]
"""send(UDP payload, local address, remote address)."""
EventCallback = Callable[[Event], None]


class IkeDriver:
    """Runs an `Endpoint` on an asyncio loop: timers, events and sending."""

    def __init__(
        self,
        endpoint: Endpoint,
        send: SendCallback,
        on_event: EventCallback,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self._send = send
        self._on_event = on_event
        self._loop = loop
        self._clock = clock
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    # --- input --------------------------------------------------------------------------

    def datagram_received(self, data: bytes, local: Address, remote: Address) -> None:
        """A UDP payload from port 500 or 4500, for a driver with no data plane beside it.

        On port 4500 only what follows the non-ESP marker is IKE (RFC 7296 §2.23); the
        rest (NAT keepalives, ESP) has no taker here and is ignored. A daemon sorts the
        port with `esp.udpencap.classify` and calls `message_received` instead.
        """
        if local[1] == self.endpoint.config.nat_port:
            if not data.startswith(NON_ESP_MARKER):
                return
            data = data[len(NON_ESP_MARKER) :]
        self.message_received(data, local, remote)

    def message_received(self, data: bytes, local: Address, remote: Address) -> None:
        """A bare IKE message (the caller stripped the non-ESP marker)."""
        self.endpoint.receive_message(data, local, remote, self._clock())
        self.service()

    # --- API ----------------------------------------------------------------------------

    def initiate(self, connection: str) -> int:
        """Start a connection; returns the IKE SA's unique number."""
        sa = self.endpoint.initiate(connection, self._clock())
        self.service()
        return sa.ike_sa_id

    def delete(self, ike_sa_id: int, reason: str = "deleted by operator") -> None:
        """Delete an IKE SA."""
        self.endpoint.delete(ike_sa_id, self._clock(), reason)
        self.service()

    def delete_child(self, unique_id: int, reason: str = "deleted by operator") -> None:
        """Delete a CHILD SA."""
        self.endpoint.delete_child(unique_id, self._clock(), reason)
        self.service()

    def rekey_child(self, unique_id: int) -> None:
        """Rekey a CHILD SA (make-before-break)."""
        self.endpoint.rekey_child(unique_id, self._clock())
        self.service()

    async def close(self, timeout: float = 3.0) -> None:
        """Delete every IKE SA and wait (bounded) until the peers answered or gave up."""
        self.endpoint.close(self._clock())
        self.service()
        deadline = self._clock() + timeout
        while self.endpoint.ike_sas() and self._clock() < deadline:
            await asyncio.sleep(0.05)
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- the loop -----------------------------------------------------------------------

    def service(self) -> None:
        """Run due timers, deliver events, send datagrams and re-arm the timer."""
        now = self._clock()
        timer = self.endpoint.get_timer()
        if timer is not None and timer <= now:
            self.endpoint.handle_timer(now)
        # Events first: an inbound CHILD SA must exist before the message that completes it.
        while (event := self.endpoint.next_event()) is not None:
            try:
                self._on_event(event)
            except Exception:
                logger.exception("event handler failed for %s", type(event).__name__)
        for data, local, remote in self.endpoint.datagrams_to_send(now):
            try:
                self._send(data, local, remote)
            except OSError as exc:
                logger.warning("cannot send IKE datagram to %s:%d: %s", remote[0], remote[1], exc)
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._closed:
            return
        timer = self.endpoint.get_timer()
        if timer is not None:
            delay = max(0.0, timer - self._clock())
            self._timer = self._get_loop().call_later(delay, self.service)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, driver: IkeDriver, local: Address) -> None:
        self.driver = driver
        self.local = local

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        remote = (str(addr[0]), int(addr[1]))
        try:
            self.driver.datagram_received(data, self.local, remote)
        except IkeError as exc:
            logger.info("dropping datagram from %s: %s", remote, exc)

    def error_received(self, exc: Exception) -> None:
        logger.debug("UDP error on %s: %s", self.local, exc)


@dataclass
class UdpSockets:
    """UDP sockets opened by `open_udp_sockets`, by local (address, port)."""

    transports: dict[Address, asyncio.DatagramTransport] = field(default_factory=dict)

    def send(self, data: bytes, local: Address, remote: Address) -> None:
        """Send from the socket bound to `local`."""
        transport = self.transports.get(local)
        if transport is None:
            raise OSError(f"no socket bound to {local[0]}:{local[1]}")
        transport.sendto(data, remote)

    def close(self) -> None:
        """Close every socket."""
        for transport in self.transports.values():
            transport.close()
        self.transports.clear()


async def open_udp_sockets(
    endpoint: Endpoint,
    addresses: list[str],
    on_event: EventCallback,
    *,
    ike_port: int | None = None,
    nat_port: int | None = None,
) -> tuple[IkeDriver, UdpSockets]:
    """Bind UDP `ike_port` and `nat_port` on each address and drive `endpoint` with them."""
    loop = asyncio.get_running_loop()
    sockets = UdpSockets()
    driver = IkeDriver(endpoint, sockets.send, on_event, loop=loop)
    ports = (ike_port or endpoint.config.ike_port, nat_port or endpoint.config.nat_port)
    for address in addresses:
        for port in ports:
            local = (address, port)
            transport, _ = await loop.create_datagram_endpoint(
                lambda local=local: _UdpProtocol(driver, local),  # type: ignore[misc]
                local_addr=local,
            )
            sockets.transports[local] = transport
    return driver, sockets

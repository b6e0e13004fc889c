"""The daemon's `IkeDriver` on plain UDP sockets, for tests that run an IKE endpoint
without the daemon (against charon, or two endpoints wired to each other).

`SocketDriver` adds what such a test calls: whole UDP payloads in (sorted by port as the
daemon sorts them, `testkit.ikev2_pair.deliver`), and the operator's actions, each
followed by a `service`. `open_udp_sockets` binds UDP 500 and 4500 on given addresses
and wires them to a driver; like the daemon's pump, its `UdpSockets.send` puts the
non-ESP marker in front of the IKE messages that leave from the NAT port
(`testkit.ikev2_pair.on_wire`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from daemon.ike import EventCallback, IkeDriver
from ikev2.endpoint import Endpoint
from ikev2.errors import IkeError
from ikev2.events import Address
from ikev2.sa_types import Datagram
from testkit.ikev2_pair import deliver, on_wire

log = logging.getLogger(__name__)


class SocketDriver(IkeDriver):
    """An `IkeDriver` fed whole UDP payloads, with the operator's actions."""

    def datagram_received(self, data: bytes, local: Address, remote: Address) -> None:
        """A UDP payload from port 500 or 4500: on 4500 only what follows the non-ESP
        marker reaches the endpoint, as in the daemon."""
        deliver(self.endpoint, data, local, remote, time.monotonic())
        self.service()

    def initiate(self, connection: str) -> int:
        """Start a connection; returns the IKE SA's unique number."""
        sa = self.endpoint.initiate(connection, time.monotonic())
        self.service()
        return sa.ike_sa_id

    def delete(self, ike_sa_id: int, reason: str = "deleted by operator") -> None:
        """Delete an IKE SA."""
        self.endpoint.delete(ike_sa_id, time.monotonic(), reason)
        self.service()

    def delete_child(self, unique_id: int, reason: str = "deleted by operator") -> None:
        """Delete a CHILD SA."""
        self.endpoint.delete_child(unique_id, time.monotonic(), reason)
        self.service()

    def rekey_child(self, unique_id: int) -> None:
        """Rekey a CHILD SA (make-before-break)."""
        self.endpoint.rekey_child(unique_id, time.monotonic())
        self.service()

    async def close(self, timeout: float = 3.0) -> int:
        """Delete every IKE SA, wait (bounded) for the peers, and stop the timers."""
        left = await super().close(timeout)
        self.stop()
        return left


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, driver: SocketDriver, local: Address) -> None:
        self.driver = driver
        self.local = local

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        remote = (str(addr[0]), int(addr[1]))
        try:
            self.driver.datagram_received(data, self.local, remote)
        except IkeError as exc:
            log.info("dropping datagram from %s: %s", remote, exc)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error on %s: %s", self.local, exc)


@dataclass
class UdpSockets:
    """UDP sockets opened by `open_udp_sockets`, by local (address, port)."""

    nat_port: int
    """The port whose IKE messages go behind the non-ESP marker."""
    transports: dict[Address, asyncio.DatagramTransport] = field(default_factory=dict)

    def send(self, message: bytes, local: Address, remote: Address) -> None:
        """Send an IKE message from the socket bound to `local`, framed for its port as
        the daemon's pump frames it (a failure is logged, not raised)."""
        data = on_wire(Datagram(message, local, remote), self.nat_port)
        transport = self.transports.get(local)
        if transport is None:
            log.warning("cannot send IKE datagram to %s:%d: no socket bound to %s:%d",
                        remote[0], remote[1], local[0], local[1])  # fmt: skip
            return
        try:
            transport.sendto(data, remote)
        except OSError as exc:
            log.warning("cannot send IKE datagram to %s:%d: %s", remote[0], remote[1], exc)

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
) -> tuple[SocketDriver, UdpSockets]:
    """Bind UDP `ike_port` and `nat_port` on each address and drive `endpoint` with them."""
    loop = asyncio.get_running_loop()
    ports = (ike_port or endpoint.config.ike_port, nat_port or endpoint.config.nat_port)
    sockets = UdpSockets(ports[1])
    driver = SocketDriver(endpoint, sockets.send, on_event, loop=loop)
    for address in addresses:
        for port in ports:
            local = (address, port)
            transport, _ = await loop.create_datagram_endpoint(
                lambda local=local: _UdpProtocol(driver, local),  # type: ignore[misc]
                local_addr=local,
            )
            sockets.transports[local] = transport
    return driver, sockets

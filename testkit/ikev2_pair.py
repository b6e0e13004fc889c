"""Two lockgate IKE endpoints in memory: fake network, fake clock, seeded randomness.

Shared by the in-memory IKE SA and endpoint tests. The network can drop datagrams
(by predicate), rewrite one side's address like a NAT, and records everything sent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from esp.udpencap import NAT_T_PORT, DatagramKind, classify, frame_ike, strip_marker
from ikev2.certs import TrustAnchors
from ikev2.codec import (
    Message,
    decode_header,
    decode_message,
    encode_message,
)
from ikev2.config import ChildConfig, ConnectionConfig, Identity, RemoteAccessClient
from ikev2.constants import ExchangeType
from ikev2.crypto.rng import DeterministicRandom
from ikev2.endpoint import Endpoint
from ikev2.events import Address, ChildSaInstalled, Event
from ikev2.sa_types import Datagram
from ikev2.ts import TrafficSelector


def deliver(endpoint: Endpoint, data: bytes, local: Address, remote: Address, now: float) -> None:
    """Hand a UDP payload received on `local` to `endpoint` as the daemon does: on the
    NAT port `esp.udpencap.classify` sorts IKE (behind the non-ESP marker, which it
    strips) from NAT keepalives and ESP, which never reach the IKE endpoint."""
    if local[1] == endpoint.config.nat_port:
        if classify(data) is not DatagramKind.IKE:
            return
        data = strip_marker(data)
    endpoint.receive_message(data, local, remote, now)


def on_wire(datagram: Datagram, nat_port: int = NAT_T_PORT) -> bytes:
    """The UDP payload the daemon sends for one of the endpoint's datagrams, as
    `daemon.pump.Pump.send_datagram` frames it: from the NAT port behind the non-ESP
    marker (RFC 3948 §2.2), from the IKE port the bare message."""
    return frame_ike(datagram.data) if datagram.local[1] == nat_port else datagram.data


A_ADDR = "198.51.100.1"
B_ADDR = "198.51.100.2"
NAT_ADDR = "203.0.113.99"
A_NET = "192.0.2.0/24"
B_NET = "203.0.113.0/26"
PSK = b"in-memory-test-psk-not-secret"


def child(name: str = "net", local: str = A_NET, remote: str = B_NET, **kw: Any) -> ChildConfig:
    return ChildConfig(
        name,
        (TrafficSelector.from_network(local),),
        (TrafficSelector.from_network(remote),),
        **kw,
    )


def connection(
    local: str = A_ADDR,
    remote: str | None = B_ADDR,
    children: tuple[ChildConfig, ...] | None = None,
    *,
    name: str = "conn",
    remote_id: str | None = None,
    **kw: Any,
) -> ConnectionConfig:
    peer = remote_id if remote_id is not None else remote
    return ConnectionConfig(
        name=name,
        local_addresses=(local,),
        remote_address=remote,
        local_id=Identity.parse(local),
        remote_id=Identity.parse(peer) if peer else None,
        children=children or (child(),),
        psk=kw.pop("psk", PSK),
        **kw,
    )


def mirrored(conn: ConnectionConfig, **kw: Any) -> ConnectionConfig:
    """The peer's view of `conn`: addresses, identities and selectors swapped."""
    remote = conn.remote_address or B_ADDR
    children = tuple(
        dataclasses.replace(c, local_ts=c.remote_ts, remote_ts=c.local_ts) for c in conn.children
    )
    base = connection(
        local=remote,
        remote=conn.local_addresses[0],
        children=children,
        name=conn.name,
        psk=conn.psk,
        ike_proposals=conn.ike_proposals,
    )
    return dataclasses.replace(base, **kw)


@dataclass
class Sent:
    """One datagram on the fake wire."""

    sender: str
    datagram: Datagram
    """As the sender's endpoint gave it: the bare IKE message."""
    dropped: bool
    time: float

    @property
    def ike(self) -> bytes:
        """The IKE message (the endpoint's output carries no non-ESP marker)."""
        return self.datagram.data

    @property
    def payload(self) -> bytes:
        """The UDP payload on the wire (`on_wire`)."""
        return on_wire(self.datagram)


def check_timer_heap(ep: Endpoint) -> None:
    """The endpoint's timer (a heap it keeps from `IkeSa.on_change`) must not be later
    than the earliest of its IKE SAs' own timers: a change an SA did not report would
    leave it late, and that SA's retransmission or rekey would never run. Earlier is
    allowed: a timer that moved later unreported (the peer was heard from) only costs
    one wake-up that finds nothing due."""
    own = [t for sa in ep.ike_sas() if (t := sa.get_timer()) is not None]
    if own:
        timer = ep.get_timer()
        assert timer is not None and timer <= min(own)


@dataclass
class Pair:
    """Endpoint `a` (usually the initiator) and `b`, wired together."""

    a: Endpoint
    b: Endpoint
    clock: float = 0.0
    events: dict[str, list[Event]] = field(default_factory=lambda: {"a": [], "b": []})
    wire: list[Sent] = field(default_factory=list)
    drop: Callable[[Sent], bool] | None = None
    nat: bool = False
    """Rewrite a's address to NAT_ADDR (ports + nat_offset) on the way to b, and back."""
    nat_offset: int = 30000
    """Port shift of the fake NAT; change it to move the mapping."""

    @classmethod
    def make(
        cls, conn_a: ConnectionConfig, conn_b: ConnectionConfig | None = None, **kw: Any
    ) -> Pair:
        seeds = kw.pop("seeds", (b"side-a", b"side-b"))
        configs = kw.pop("configs", (None, None))
        conn_b = conn_b or mirrored(conn_a)
        a = Endpoint([conn_a], rng=DeterministicRandom(seeds[0]), config=configs[0])
        b = Endpoint([conn_b], rng=DeterministicRandom(seeds[1]), config=configs[1])
        return cls(a, b, **kw)

    def side(self, name: str) -> Endpoint:
        return self.a if name == "a" else self.b

    def _translate(self, sender: str, d: Datagram) -> tuple[tuple[str, int], tuple[str, int]]:
        """(local as seen by the receiver, remote as seen by the receiver)."""
        src, dst = d.local, d.remote
        if self.nat and sender == "a":
            src = (NAT_ADDR, src[1] + self.nat_offset)
        if self.nat and sender == "b" and dst[0] == NAT_ADDR:
            dst = (A_ADDR, dst[1] - self.nat_offset)
        return dst, src

    def pump(self, max_rounds: int = 50) -> None:
        """Exchange events and datagrams until nothing moves."""
        for _ in range(max_rounds):
            moved = False
            for name, other in (("a", "b"), ("b", "a")):
                ep = self.side(name)
                self.events[name].extend(ep.events())
                for d in ep.datagrams_to_send(self.clock):
                    moved = True
                    sent = Sent(name, d, False, self.clock)
                    sent.dropped = bool(self.drop and self.drop(sent))
                    self.wire.append(sent)
                    if not sent.dropped:
                        local, remote = self._translate(name, d)
                        deliver(self.side(other), sent.payload, local, remote, self.clock)
            if not moved:
                for name in ("a", "b"):
                    self.events[name].extend(self.side(name).events())
                return
        raise AssertionError("the two endpoints never stopped talking")

    def advance(self, seconds: float) -> None:
        """Move the clock, firing every timer that falls due on the way."""
        end = self.clock + seconds
        while True:
            for ep in (self.a, self.b):
                check_timer_heap(ep)
            timers = [t for ep in (self.a, self.b) if (t := ep.get_timer()) is not None]
            due = min(timers) if timers else None
            if due is None or due > end:
                break
            self.clock = max(self.clock, due)
            for ep in (self.a, self.b):
                ep.handle_timer(self.clock)
            self.pump()
        self.clock = end
        self.pump()

    def take(self, name: str) -> list[Datagram]:
        """Collect one side's events and the datagrams it sends now, without delivering."""
        ep = self.side(name)
        self.events[name].extend(ep.events())
        out = ep.datagrams_to_send(self.clock)
        self.wire.extend(Sent(name, d, False, self.clock) for d in out)
        return out

    def deliver(self, sender: str, datagram: Datagram) -> None:
        """Hand one datagram (from `take`) to the other side, in the order the test wants."""
        local, remote = self._translate(sender, datagram)
        receiver = "b" if sender == "a" else "a"
        deliver(self.side(receiver), on_wire(datagram), local, remote, self.clock)

    def of(self, name: str, kind: type[Any]) -> list[Any]:
        return [e for e in self.events[name] if isinstance(e, kind)]

    def requests(self, sender: str, exchange: int) -> list[Sent]:
        out = []
        for s in self.wire:
            header = decode_header(s.ike)
            if s.sender == sender and header.exchange_type == exchange and not header.response:
                out.append(s)
        return out

    def responses(self, sender: str, exchange: int) -> list[Sent]:
        out = []
        for s in self.wire:
            header = decode_header(s.ike)
            if s.sender == sender and header.exchange_type == exchange and header.response:
                out.append(s)
        return out


def ra_client(
    server_name: str, remote: str, trust_anchors: TrustAnchors, client: RemoteAccessClient
) -> ConnectionConfig:
    """A remote-access client "conn" at A_ADDR of a server at B_ADDR named `server_name`:
    like Windows, its IKE identity is its address and EAP names the user."""
    return ConnectionConfig(
        name="conn",
        local_addresses=(A_ADDR,),
        remote_address=B_ADDR,
        local_id=Identity.parse(A_ADDR),
        remote_id=Identity.parse(server_name),
        children=(child("conn", local="0.0.0.0/0", remote=remote),),
        auth="pubkey",
        trust_anchors=trust_anchors,
        ra_client=client,
    )


def ra_login(client: ConnectionConfig, server: ConnectionConfig) -> Pair:
    """`client` ("conn") dials `server` and the pair runs until nothing moves."""
    pair = Pair(
        Endpoint([client], rng=DeterministicRandom(b"client")),
        Endpoint([server], rng=DeterministicRandom(b"server")),
    )
    pair.a.initiate("conn", 0.0)
    pair.pump()
    return pair


def establish(pair: Pair) -> tuple[ChildSaInstalled, ChildSaInstalled]:
    pair.a.initiate("conn", pair.clock)
    pair.pump()
    (ia,) = pair.of("a", ChildSaInstalled)
    (ib,) = pair.of("b", ChildSaInstalled)
    return ia, ib


def init_request(spi_i: bytes, seed: bytes = b"x") -> bytes:
    """An IKE_SA_INIT request from `a`'s configuration with a chosen SPI."""
    a = Endpoint([connection()], rng=DeterministicRandom(seed))
    a.initiate("conn", 0.0)
    (d,) = a.datagrams_to_send(0.0)
    message = decode_message(d.data)
    return encode_message(
        Message(spi_i, message.spi_r, ExchangeType.IKE_SA_INIT, 0, True, False, message.payloads)
    )

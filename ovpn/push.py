"""The text messages of the control channel once keys are exchanged.

PUSH_REPLY carries the client's configuration as comma-separated options
(draft-openvpntech-openvpn-wire-protocol, "PUSH_REPLY"; OpenVPN push.c). Options must
not contain commas themselves; every value here is built from typed addresses.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class PushOptions:
    """What one client is told in PUSH_REPLY."""

    address: ipaddress.IPv4Interface
    """The client's virtual address with the pool's prefix (`topology subnet`)."""
    gateway: ipaddress.IPv4Address
    """The server's address inside the pool: `route-gateway` for the pushed routes."""
    routes: tuple[ipaddress.IPv4Network, ...] = ()
    """The local subnets the client reaches through the tunnel (split tunnel)."""
    dns: tuple[IPAddress, ...] = ()
    """DNS servers (`dhcp-option DNS`)."""
    address6: ipaddress.IPv6Interface | None = None
    """The client's IPv6 virtual address with the pool's prefix (`ifconfig-ipv6`)."""
    gateway6: ipaddress.IPv6Address | None = None
    """The server's IPv6 address inside the pool: the other end of `ifconfig-ipv6`,
    which the client routes `route-ipv6` through."""
    routes6: tuple[ipaddress.IPv6Network, ...] = ()
    """The IPv6 local subnets (`route-ipv6`), pushed only with `address6`."""


def push_reply(
    options: PushOptions,
    *,
    cipher: str,
    peer_id: int,
    ping: int,
    ping_restart: int,
    cc_exit: bool,
    tcp: bool = False,
) -> str:
    """The PUSH_REPLY message (without the terminating NUL); `tcp` for a client that
    came over TCP."""
    parts = [
        "PUSH_REPLY",
        "topology subnet",
        f"route-gateway {options.gateway}",
        f"ifconfig {options.address.ip} {options.address.netmask}",
    ]
    parts += [f"route {net.network_address} {net.netmask}" for net in options.routes]
    if options.address6 is not None and options.gateway6 is not None:
        # OpenVPN's `ifconfig-ipv6 ADDRESS/BITS REMOTE`: with `topology subnet` the
        # client puts the address with the pool's prefix on its TUN; `route-ipv6
        # NETWORK/BITS` without a gateway goes through REMOTE.
        parts.append(f"ifconfig-ipv6 {options.address6} {options.gateway6}")
        parts += [f"route-ipv6 {net}" for net in options.routes6]
    parts += [f"dhcp-option DNS {server}" for server in options.dns]
    parts += [
        f"ping {ping}",
        f"ping-restart {ping_restart}",
        f"peer-id {peer_id}",
        f"cipher {cipher}",
    ]
    if cc_exit:
        # The client then says goodbye with an EXIT control message.
        parts.append("protocol-flags cc-exit")
    if tcp:
        # OpenVPN clients before 2.7.6 leave Nagle's algorithm on their TCP socket
        # (the server's `--tcp-nodelay` pushes this): a small packet then waits for
        # the ACK of the last one, which the server's kernel may delay by 40 ms, and
        # every renegotiation stalled the tunnel for 30-45 ms. The client applies it to
        # its connected socket when it reads the reply (OpenVPN init.c,
        # do_deferred_options); newer clients accept and ignore it.
        parts.append("socket-flags TCP_NODELAY")
    return ",".join(parts)


def split_messages(record: bytes) -> list[str]:
    """The NUL-terminated text messages in one TLS record's plaintext."""
    return [m.decode("utf-8", errors="replace") for m in record.split(b"\0") if m]


def encode_message(text: str) -> bytes:
    """One control message as sent: its text and a NUL, in a TLS record of its own."""
    return text.encode() + b"\0"

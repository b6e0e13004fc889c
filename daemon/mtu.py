"""The MTU arithmetic of the TUN device: path MTU towards each peer, minus the
outer headers and the most expensive configured ESP suite's overhead.

An ESP packet must never exceed the path MTU (outer fragments are slow and often
dropped), so the TUN device offers the inner MTU that still fits; the data plane
answers bigger packets with ICMP "too big" (RFC 1191, RFC 8201).
"""

from __future__ import annotations

import contextlib
import socket

from conf.model import Config
from daemon.childsa import inner_mtu
from esp.suites import SUITES, EspSuite

DEFAULT_PATH_MTU = 1500
IP_MTU = 14  # <linux/in.h>: the route's path MTU of a connected socket
IPV6_MTU = 24  # <linux/in6.h>


def proposal_suites(proposals: tuple[str, ...]) -> list[EspSuite]:
    """The ESP suites named by proposals such as ``aes256gcm16-x25519``."""
    suites: list[EspSuite] = []
    for proposal in proposals:
        tokens = proposal.strip().lower().split("-")
        for split in range(len(tokens), 0, -1):
            suite = SUITES.get("-".join(tokens[:split]))
            if suite is not None:
                suites.append(suite)
                break
    return suites


def path_mtu(peer: str | None) -> int:
    """The kernel's path MTU towards ``peer`` (the route's MTU), or 1500 if unknown.

    A connected UDP socket reports it with IP_MTU / IPV6_MTU without sending anything.
    """
    if peer is None:
        return DEFAULT_PATH_MTU
    family = socket.AF_INET6 if ":" in peer else socket.AF_INET
    with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((peer, 4500))
        if family == socket.AF_INET:
            return int(sock.getsockopt(socket.IPPROTO_IP, IP_MTU))
        return int(sock.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU))
    return DEFAULT_PATH_MTU


def tun_mtu(config: Config, path_mtus: dict[str, int] | None = None) -> int:
    """The TUN device's MTU: the configured one, else the largest inner packet every
    connection can carry with its most expensive suite, in UDP (a NAT may appear)."""
    if config.gateway.mtu is not None:
        return config.gateway.mtu
    best: int | None = None
    for conn in config.connections.values():
        peer = config.peers[conn.peer].address
        peer_text = None if peer is None else str(peer)
        mtu_path = (path_mtus or {}).get(peer_text or "", 0) or path_mtu(peer_text)
        version = 4 if peer is None else peer.version
        for suite in proposal_suites(conn.esp_proposals) or list(SUITES.values()):
            mtu = inner_mtu(suite, mtu_path, version, udp_encap=True)
            best = mtu if best is None else min(best, mtu)
    return max(best or DEFAULT_PATH_MTU - 80, 576)

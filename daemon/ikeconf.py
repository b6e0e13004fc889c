"""From the file's shape (`conf.model.Config`) to what the IKEv2 core runs
(`ikev2.config.ConnectionConfig`), plus the path-MTU arithmetic of the TUN device.

Each `[connections.NAME]` becomes one IKE connection named NAME with one CHILD SA of
the same name, so `lockgate up NAME`, the logs and `lockgate status` all speak of the
names the operator wrote.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket

from conf.model import Config, ConnectionConfig, PeerConfig
from daemon.childsa import inner_mtu
from esp.suites import SUITES, EspSuite
from ikev2.config import ChildConfig, Identity
from ikev2.config import ConnectionConfig as IkeConnection
from ikev2.ts import TrafficSelector

DEFAULT_PATH_MTU = 1500
IP_MTU = 14  # <linux/in.h>: the route's path MTU of a connected socket
IPV6_MTU = 24  # <linux/in6.h>


def ike_connection(config: Config, conn: ConnectionConfig) -> IkeConnection:
    """The IKE connection the core runs for one `[connections.NAME]` section."""
    gateway = config.gateway
    peer: PeerConfig = config.peers[conn.peer]
    addresses = [str(a) for a in gateway.addresses]
    if peer.address is not None:
        # The core initiates from the first address: put one of the peer's family first.
        version = peer.address.version
        addresses.sort(key=lambda a: ipaddress.ip_address(a).version != version)
    child = ChildConfig(
        name=conn.name,
        local_ts=tuple(TrafficSelector.from_network(n) for n in conn.local_subnets),
        remote_ts=tuple(TrafficSelector.from_network(n) for n in conn.remote_subnets),
        esp_proposals=conn.esp_proposals,
        lifetime=conn.child_lifetime,
        rekey_margin=min(conn.rekey_margin, conn.child_lifetime / 2),
        life_bytes=conn.life_bytes,
        life_packets=conn.life_packets,
        start=conn.start,
        replay_window=conn.replay_window,
    )
    return IkeConnection(
        name=conn.name,
        local_addresses=tuple(addresses),
        remote_address=None if peer.address is None else str(peer.address),
        local_id=Identity.parse(gateway.id),
        remote_id=None if peer.id is None else Identity.parse(peer.id),
        children=(child,),
        auth=peer.auth,
        psk=None if peer.psk is None else peer.psk.reveal(),
        ike_proposals=conn.ike_proposals,
        ike_port=gateway.ike_port,
        nat_port=gateway.nat_port,
        ike_lifetime=conn.ike_lifetime,
        rekey_margin=min(conn.rekey_margin, conn.ike_lifetime / 2),
        dpd_interval=conn.dpd_interval,
        dpd_action=conn.dpd_action,
        encap=conn.encap,
    )


def ike_connections(config: Config) -> list[IkeConnection]:
    """Every connection of the file, in file order."""
    return [ike_connection(config, conn) for conn in config.connections.values()]


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

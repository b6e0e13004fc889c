"""From the file's shape (`conf.model.Config`) to the IKE core's settings
(`ikev2.config.ConnectionConfig`).

Connections to one peer share one IKE SA (RFC 7296 §1.3: an IKE SA carries any
number of CHILD SAs), so each peer with connections becomes one IKE connection named
after the peer, and each of its `[connections.NAME]` one CHILD SA named NAME. The
loader has already checked that such connections agree on their IKE-level settings
(proposals, lifetime, DPD, encapsulation), so they are taken from the first.
"""

from __future__ import annotations

from conf.errors import ConfigError, Problem
from conf.model import Config, ConnectionConfig, PeerConfig
from ikev2.config import ChildConfig, Identity
from ikev2.config import ConfigError as IkeConfigError
from ikev2.config import ConnectionConfig as IkeConnection
from ikev2.ts import TrafficSelector


def child_config(conn: ConnectionConfig) -> ChildConfig:
    """The CHILD SA settings of one `[connections.NAME]`."""
    return ChildConfig(
        name=conn.name,
        local_ts=tuple(TrafficSelector.from_network(n) for n in conn.local_subnets),
        remote_ts=tuple(TrafficSelector.from_network(n) for n in conn.remote_subnets),
        esp_proposals=conn.esp_proposals,
        lifetime=conn.child_lifetime,
        rekey_margin=conn.rekey_margin,
        life_bytes=conn.life_bytes,
        life_packets=conn.life_packets,
        start=conn.start,
        replay_window=conn.replay_window,
    )


def ike_connection(config: Config, peer: PeerConfig) -> IkeConnection:
    """The IKE connection to `peer`, carrying every connection that names it."""
    conns = config.connections_of(peer.name)
    if not conns:
        raise ConfigError([Problem(f"peers.{peer.name}", "no connection uses this peer")])
    lead = conns[0]
    gateway = config.gateway
    addresses = list(gateway.addresses)
    if peer.address is not None:
        # The core initiates from the first local address: one of the peer's family.
        version = peer.address.version
        addresses.sort(key=lambda a: a.version != version)
    try:
        return IkeConnection(
            name=peer.name,
            local_addresses=tuple(str(a) for a in addresses),
            remote_address=None if peer.address is None else str(peer.address),
            local_id=Identity.parse(gateway.id),
            remote_id=None if peer.id is None else Identity.parse(peer.id),
            children=tuple(child_config(c) for c in conns),
            auth=peer.auth,
            psk=None if peer.psk is None else peer.psk.reveal(),
            ike_proposals=lead.ike_proposals,
            ike_port=gateway.ike_port,
            nat_port=gateway.nat_port,
            ike_lifetime=lead.ike_lifetime,
            rekey_margin=lead.rekey_margin,
            dpd_interval=lead.dpd_interval,
            dpd_action=lead.dpd_action,
            encap=lead.encap,
        )
    except IkeConfigError as exc:
        # The loader validates the same rules; this only fires if they drift apart.
        raise ConfigError([Problem(f"peers.{peer.name}", str(exc))]) from exc


def ike_connections(config: Config) -> tuple[IkeConnection, ...]:
    """One IKE connection per peer that has connections, in file order of the peers."""
    return tuple(
        ike_connection(config, peer)
        for peer in config.peers.values()
        if config.connections_of(peer.name)
    )

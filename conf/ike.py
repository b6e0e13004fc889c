"""From the file's shape (`conf.model.Config`) to the IKE core's settings
(`ikev2.config.ConnectionConfig`).

Connections to one peer share one IKE SA (RFC 7296 §1.3: an IKE SA carries any
number of CHILD SAs), so each peer with connections becomes one IKE connection named
after the peer, and each of its `[connections.NAME]` one CHILD SA named NAME. The
loader has already checked that such connections agree on their IKE-level settings
(proposals, lifetime, DPD, encapsulation, fragmentation), so they are taken from the
first. Certificates and CAs are read here again (the loader checked them) so that
the IKE core gets the files' contents as they are now.
"""

from __future__ import annotations

import hashlib

from conf.model import Config, ConnectionConfig, GatewayConfig, IpAddress, PeerConfig
from ikev2.certs import CredentialError, LocalCredentials, TrustAnchors
from ikev2.config import ChildConfig, ConfigError, Identity, PostQuantumKey, Problem
from ikev2.config import ConnectionConfig as IkeConnection
from ikev2.cookies import CookiePolicy
from ikev2.endpoint import EndpointConfig
from ikev2.ts import TrafficSelector

# Loaded credentials by the digest of their files' contents. Private key objects do not
# compare equal across loads, so without this every reload would see every "pubkey"
# peer as changed and renegotiate it; with it, unchanged files give the same object.
_CREDENTIALS: dict[bytes, LocalCredentials] = {}
_CREDENTIALS_KEPT = 8


def esp_proposals(conn: ConnectionConfig) -> tuple[str, ...]:
    """The ESP proposals to offer: with `esn = true`, "-esn" is added to each proposal
    that does not choose itself (RFC 4303 §2.2.1 ESN is a transform of the proposal)."""
    if not conn.esn:
        return conn.esp_proposals
    return tuple(
        p if {"esn", "noesn"} & set(p.split("-")) else f"{p}-esn" for p in conn.esp_proposals
    )


def local_credentials(gateway: GatewayConfig) -> LocalCredentials | None:
    """Our certificate (chain) and key from `gateway.certificate`/`private_key`."""
    if gateway.certificate is None or gateway.private_key is None:
        return None
    try:
        cert_pem = gateway.certificate.read_bytes()
        key_pem = gateway.private_key.read_bytes()
    except OSError as exc:
        raise ConfigError([Problem("gateway.certificate", f"cannot read: {exc.strerror}")]) from exc
    digest = hashlib.sha256(hashlib.sha256(cert_pem).digest() + key_pem).digest()
    cached = _CREDENTIALS.get(digest)
    if cached is not None:
        return cached
    try:
        creds = LocalCredentials.from_pem(cert_pem, key_pem)
    except CredentialError as exc:
        raise ConfigError([Problem("gateway.private_key", str(exc))]) from exc
    if len(_CREDENTIALS) >= _CREDENTIALS_KEPT:
        _CREDENTIALS.clear()
    _CREDENTIALS[digest] = creds
    return creds


def trust_anchors(gateway: GatewayConfig) -> TrustAnchors | None:
    """The CA certificates of `gateway.ca`, or None when there are none."""
    if not gateway.ca:
        return None
    try:
        return TrustAnchors.from_files(list(gateway.ca))
    except CredentialError as exc:
        raise ConfigError([Problem("gateway.ca", str(exc))]) from exc


def endpoint_config(config: Config) -> EndpointConfig:
    """The IKE endpoint's own settings: ports, half-open cap and COOKIE threshold."""
    gateway = config.gateway
    return EndpointConfig(
        ike_port=gateway.ike_port,
        nat_port=gateway.nat_port,
        max_half_open=gateway.max_half_open,
        cookies=CookiePolicy(demand_above=gateway.cookie_threshold),
    )


def child_config(conn: ConnectionConfig) -> ChildConfig:
    """The CHILD SA settings of one `[connections.NAME]`."""
    return ChildConfig(
        name=conn.name,
        local_ts=tuple(TrafficSelector.from_network(n) for n in conn.local_subnets),
        remote_ts=tuple(TrafficSelector.from_network(n) for n in conn.remote_subnets),
        esp_proposals=esp_proposals(conn),
        lifetime=conn.child_lifetime,
        rekey_margin=conn.rekey_margin,
        life_bytes=conn.life_bytes,
        life_packets=conn.life_packets,
        start=conn.start,
        replay_window=conn.replay_window,
    )


def _shared_prefix(a: IpAddress, b: IpAddress) -> int:
    """How many leading bits two addresses share (0 across families)."""
    if a.version != b.version:
        return 0
    return a.max_prefixlen - (int(a) ^ int(b)).bit_length()


def ike_connection(
    config: Config, peer: PeerConfig, conns: tuple[ConnectionConfig, ...] | None = None
) -> IkeConnection:
    """The IKE connection to `peer`, carrying every connection that names it (`conns`,
    when the caller has already grouped them)."""
    if conns is None:
        conns = config.connections_of(peer.name)
    if not conns:
        raise ConfigError([Problem(f"peers.{peer.name}", "no connection uses this peer")])
    lead = conns[0]
    gateway = config.gateway
    pubkey = peer.auth == "pubkey"
    addresses = list(gateway.addresses)
    if peer.address is not None:
        # The core initiates from the first local address: one of the peer's family,
        # and of those the one sharing the longest prefix with the peer (a gateway
        # with a WAN link per peer, as two route-based tunnels to two addresses of
        # one site have, reaches each over its own link); else in configured order.
        target = peer.address
        addresses.sort(key=lambda a: (a.version != target.version, -_shared_prefix(a, target)))
    try:
        return IkeConnection(
            name=peer.name,
            local_addresses=tuple(str(a) for a in addresses),
            remote_address=None if peer.address is None else str(peer.address),
            local_id=Identity.parse(peer.local_id or gateway.id),
            remote_id=None if peer.id is None else Identity.parse(peer.id),
            children=tuple(child_config(c) for c in conns),
            auth=peer.auth,
            psk=None if peer.psk is None else peer.psk.reveal(),
            ppk=_ppk(peer),
            credentials=local_credentials(gateway) if pubkey else None,
            trust_anchors=trust_anchors(gateway) if pubkey else None,
            ike_proposals=lead.ike_proposals,
            ike_port=gateway.ike_port,
            nat_port=gateway.nat_port,
            ike_lifetime=lead.ike_lifetime,
            rekey_margin=lead.rekey_margin,
            dpd_interval=lead.dpd_interval,
            dpd_action=lead.dpd_action,
            encap=lead.encap,
            fragmentation=lead.fragmentation,
            fragment_size=lead.fragment_size,
            retransmit_timeout=gateway.retransmit_timeout,
            retransmit_tries=gateway.retransmit_tries,
            initial_contact=peer.initial_contact,
        )
    except ConfigError as exc:
        # The loader validates the same rules; this only fires if they drift apart. The
        # problem gets the peer's key path.
        raise ConfigError([Problem(f"peers.{peer.name}", str(exc))]) from exc


def _ppk(peer: PeerConfig) -> PostQuantumKey | None:
    if peer.ppk is None or peer.ppk_id is None:
        return None
    return PostQuantumKey(peer.ppk_id.encode(), peer.ppk.reveal(), peer.ppk_required)


def ike_connections(config: Config) -> tuple[IkeConnection, ...]:
    """One IKE connection per peer that has connections, in file order of the peers."""
    # Grouped in one pass: asking each of thousands of peers for its connections
    # would read every connection once per peer.
    by_peer: dict[str, list[ConnectionConfig]] = {}
    for conn in config.connections.values():
        by_peer.setdefault(conn.peer, []).append(conn)
    return tuple(
        ike_connection(config, peer, tuple(by_peer[peer.name]))
        for peer in config.peers.values()
        if peer.name in by_peer
    )

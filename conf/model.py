"""The configuration as typed, frozen dataclasses, shaped like the TOML file.

```toml
[gateway]              -> GatewayConfig
[peers.NAME]           -> PeerConfig
[connections.NAME]     -> ConnectionConfig
[remote_access.NAME]   -> RemoteAccessConfig (point-to-cloud servers)
[remote_access.NAME.groups.GROUP] -> GroupConfig
[console]              -> ConsoleConfig (the web console; off when absent)
```

The key names are a user-facing contract: documentation, examples, operators'
files and other tools rely on them. Defaults live here, next to each field.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ikev2.config import Problem

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
AuthMethod = Literal["psk", "pubkey"]
StartAction = Literal["initiate", "trap", "wait"]
DpdAction = Literal["clear", "restart", "trap"]
ConnectionMode = Literal["policy", "route"]
EncapMode = Literal["auto", "force", "nat"]
LogLevel = Literal["debug", "info", "warning", "error"]
RemoteAccessProtocol = Literal["ssl", "ikev2"]
Transport = Literal["tcp", "udp"]
ClientAuth = Literal["password", "certificate", "any"]

DEFAULT_CONTROL_SOCKET = Path("/run/lockgate/lockgate.sock")
DEFAULT_IKE_PROPOSALS = ("aes256gcm16-prfsha384-x25519",)
DEFAULT_ROUTE_METRIC = 100
"""The metric of a route-mode connection's static `routes` (lower wins)."""
ROUTE_INTERFACE_PREFIX = "lg-"
"""A route-mode connection's interface defaults to this + its name, cut to 15 chars."""
ANY_SUBNETS = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
"""A route-mode connection's selectors when it names none: everything (routing, not
the selectors, decides what enters the tunnel)."""
DEFAULT_ESP_PROPOSALS = ("aes256gcm16",)
DEFAULT_RA_IKE_PROPOSALS = (
    "aes256gcm16-prfsha384-ecp384",
    "aes256-sha384-ecp384",
    "aes256gcm16-prfsha384-x25519",
    "aes256-sha256-modp2048",
)
"""An IKEv2 server's IKE proposals: the strongest each built-in client can be set to
(Windows through Set-VpnConnectionIPsecConfiguration: GCMAES256 or AES256 with SHA384
and ECP384, or AES256/SHA256/Group14; Apple profiles: AES-256-GCM, SHA2-384, group 20;
strongSwan: any). Never DES, 3DES, MD5 or modp1024."""
DEFAULT_RA_ESP_PROPOSALS = ("aes256gcm16", "aes256-sha256")
"""An IKEv2 server's ESP proposals (Windows GCMAES256 or AES256/SHA256128; Apple
AES-256-GCM or AES-256 with SHA2-256)."""
DEFAULT_SSL_CIPHERS = ("AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305")
SSL_CIPHERS = frozenset(DEFAULT_SSL_CIPHERS)
"""The data-channel ciphers of the SSL server (OpenVPN's names; AEAD only)."""


class Secret:
    """A secret value (a PSK) that never shows itself in repr, str or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = value

    def reveal(self) -> bytes:
        """The secret itself, for the one place that needs it (the AUTH computation)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        # Equality lets a reload see that a connection did not change; compared in
        # constant time all the same.
        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(len(self._value))


@dataclass(frozen=True)
class GatewayConfig:
    """`[gateway]`: this VPN gateway."""

    addresses: tuple[IpAddress, ...]
    """Local public addresses (IPv4 and/or IPv6) IKE and ESP use."""
    id: str
    """IKE identity: an address, FQDN, email address or DN (as strongSwan writes them)."""
    control_socket: Path = DEFAULT_CONTROL_SOCKET
    """Unix socket of `lockgate status/up/down/...` (root only)."""
    ike_port: int = 500
    """UDP port for IKE (RFC 7296 §2)."""
    nat_port: int = 4500
    """UDP port for IKE and ESP after NAT detection (RFC 3948, RFC 7296 §2.23)."""
    certificate: Path | None = None
    """PEM certificate of this gateway, for peers with auth = "pubkey"."""
    private_key: Path | None = None
    """PEM private key of `certificate`; must not be readable by group or others."""
    ca: tuple[Path, ...] = ()
    """PEM CA certificates that peers' certificates must chain to."""
    interface: str = "lockgate0"
    """Name of the TUN interface the daemon creates."""
    mtu: int | None = None
    """TUN MTU; None derives it from the path MTU and the suite's overhead."""
    log_level: LogLevel = "info"
    """Logging threshold: debug, info, warning or error."""
    cookie_threshold: int = 32
    """Half-open IKE SAs (IKE_SA_INIT answered, IKE_AUTH not yet) above which a new
    IKE_SA_INIT must first return our COOKIE (RFC 7296 §2.6); 0: as soon as one is."""
    max_half_open: int = 1000
    """Half-open IKE SAs kept at once; IKE_SA_INIT requests beyond it are dropped."""
    retransmit_timeout: float = 4.0
    """Seconds before an unanswered IKE request is sent again; each further wait is
    1.8 times longer (RFC 7296 §2.1). Also paces liveness checks of a silent peer."""
    retransmit_tries: int = 5
    """Retransmissions before the peer counts as gone: for a liveness check that means
    dead, and the connection's dpd_action applies."""
    workers: int = 1
    """Data-plane worker processes ("auto" in the file: one per usable core). With more
    than one, each takes one queue of the TUN and the inbound ESP whose SPI it owns
    (SPI % workers), and a lockgate peer gets one CHILD SA pair per worker (RFC 9611);
    the IKE endpoint stays in the main process."""


@dataclass(frozen=True)
class PeerConfig:
    """`[peers.NAME]`: a remote gateway."""

    name: str
    """The NAME of the section; connections refer to it."""
    address: IpAddress | None
    """The peer's address, or None for "%any" (accept it from anywhere, never initiate)."""
    id: str | None
    """The identity the peer must prove; defaults to its address, None accepts any."""
    auth: AuthMethod = "psk"
    """How both sides authenticate: "psk" or "pubkey" (certificates)."""
    psk: Secret | None = field(default=None, repr=False)
    """The pre-shared key (from `psk` or `psk_file`); hidden from repr and logs."""
    psk_file: Path | None = None
    """Where the key was read from, if it came from a file."""
    local_id: str | None = None
    """Our IKE identity towards this peer; None uses `gateway.id`. Distinct identities
    let several peer sections reach one gateway with IKE SAs it keeps apart."""
    initial_contact: bool = True
    """Send INITIAL_CONTACT (RFC 7296 §2.4) in IKE_AUTH when we hold no other IKE SA
    with this peer under the same identity, so it drops state from our previous run;
    false never sends it."""
    ppk_id: str | None = None
    """The identity of our post-quantum preshared key with this peer (RFC 8784 §3),
    sent in PPK_IDENTITY; set together with `ppk_file`."""
    ppk: Secret | None = field(default=None, repr=False)
    """The post-quantum preshared key read from `ppk_file`; hidden from repr and logs."""
    ppk_file: Path | None = None
    """Where the PPK was read from."""
    ppk_required: bool = False
    """Refuse an IKE SA with this peer that does not use the PPK (RFC 8784 §3)."""


@dataclass(frozen=True)
class ConnectionConfig:
    """`[connections.NAME]`: one pair of subnets tunnelled to a peer (a CHILD SA).

    Connections to the same peer share one IKE SA, so their IKE-level settings
    (ike_proposals, ike_lifetime, dpd_*, encap, fragmentation, fragment_size) must agree.
    """

    name: str
    """The NAME of the section; `lockgate up/down NAME` use it."""
    peer: str
    """Name of the `[peers.X]` section this connection goes to."""
    local_subnets: tuple[IpNetwork, ...]
    """Subnets behind this gateway."""
    remote_subnets: tuple[IpNetwork, ...]
    """Subnets behind the peer."""
    ike_proposals: tuple[str, ...] = DEFAULT_IKE_PROPOSALS
    """IKE proposals, most preferred first (strongSwan syntax)."""
    esp_proposals: tuple[str, ...] = DEFAULT_ESP_PROPOSALS
    """ESP proposals, most preferred first; a key exchange part ("-x25519") means PFS."""
    start: StartAction = "initiate"
    """"initiate" at start, "trap" on the first packet, "wait" for the peer."""
    ike_lifetime: float = 14400.0
    """IKE SA lifetime in seconds."""
    child_lifetime: float = 3600.0
    """CHILD SA lifetime in seconds."""
    rekey_margin: float = 540.0
    """Rekeying starts this many seconds before a lifetime ends (IKE and CHILD)."""
    dpd_interval: float = 30.0
    """Seconds of silence before a liveness check (RFC 7296 §2.4); 0 disables it."""
    dpd_action: DpdAction = "clear"
    """When the peer stops answering liveness checks: "clear" (remove the SAs and leave
    the connection down), "restart" (initiate again, with back-off, until the peer is
    back) or "trap" (re-arm: the next outbound packet initiates)."""
    encap: EncapMode = "auto"
    """"auto": ESP in UDP (RFC 3948) behind a NAT or when the peer is a lockgate too
    (they agree by Vendor ID: UDP moves many packets per system call, raw ESP one);
    "force": always; "nat": only behind a NAT, raw ESP otherwise."""
    replay_window: int = 128
    """Anti-replay window in packets (RFC 4303 §3.4.3); 0 disables the check."""
    life_bytes: int = 0
    """Hard volume limit of a CHILD SA in octets per direction: the SA is deleted when
    it is reached, and rekeyed (soft limit) at 90% of it, so traffic moves to a new SA
    first (RFC 4301 §4.4.2.1); 0: no limit."""
    life_packets: int = 0
    """Hard volume limit in packets per direction, with the same 90% rekey; 0: no limit."""
    esn: bool = False
    """Offer 64-bit extended sequence numbers (RFC 4303 §2.2.1) in every ESP proposal
    that does not name "esn"/"noesn" itself; needed above ~2^32 packets per SA."""
    fragmentation: bool = True
    """Offer IKE fragmentation (RFC 7383), used when the peer offers it too: large
    IKE_AUTH messages (certificate chains) then cross paths that drop IP fragments."""
    fragment_size: int = 1232
    """Largest IKE message sent whole once fragmentation is agreed (octets, from the IKE
    header): IPv6's minimum MTU 1280 less IP and UDP headers and the non-ESP marker."""
    # ---- route-based connections ----
    mode: ConnectionMode = "policy"
    """"policy": the subnets are the selectors and the gateway routes them into its
    TUN; "route": the connection is an interface of its own (`interface`), its
    selectors default to everything, and routing decides what enters the tunnel."""
    interface: str | None = None
    """Route mode: this connection's TUN device (default "lg-" + the name, 15 chars)."""
    inside_address: ipaddress.IPv4Interface | None = None
    """Route mode: the interface's IPv4 address (with its prefix), e.g. for BGP."""
    inside_address6: ipaddress.IPv6Interface | None = None
    """Route mode: the interface's IPv6 address."""
    routes: tuple[IpNetwork, ...] = ()
    """Route mode: prefixes routed into the interface while the CHILD SA is up."""
    route_metric: int = DEFAULT_ROUTE_METRIC
    """Route mode: the metric of `routes`; a lower one wins (active/standby pairs)."""


@dataclass(frozen=True)
class GroupConfig:
    """A `[remote_access.SERVER.groups.NAME]` section: an access policy."""

    name: str
    """The group's name, as `lockgate user add --group` names it."""
    destinations: tuple[IpNetwork, ...]
    """What members reach (1-10 prefixes); nothing else is forwarded for them."""


@dataclass(frozen=True)
class RemoteAccessConfig:
    """A `[remote_access.NAME]` section: one point-to-cloud server."""

    name: str
    """The server's name (the NAME of the section)."""
    protocol: RemoteAccessProtocol
    """"ssl": OpenVPN-compatible; "ikev2": the clients built into operating systems."""
    client_pool: ipaddress.IPv4Network
    """Virtual addresses handed to clients (the server keeps the first for itself)."""
    local_subnets: tuple[IpNetwork, ...]
    """What clients reach: pushed to them as routes (1-20)."""
    users: Path | None
    """The users file (`lockgate user`), mode 0600; None: certificate auth without
    one (every certificate of client_ca, by its CN, no groups or static addresses)."""
    address: str
    """What profiles tell clients to dial (default: the gateway's first address)."""
    transport: Transport = "tcp"
    """SSL only: "tcp" or "udp"."""
    port: int = 443
    """SSL only: the port the server listens on (default 443 for tcp, 1194 for udp)."""
    ciphers: tuple[str, ...] = DEFAULT_SSL_CIPHERS
    """SSL only: data-channel ciphers, preferred first."""
    client_pool6: ipaddress.IPv6Network | None = None
    """Optional IPv6 pool."""
    dns: tuple[IpAddress, ...] = ()
    """DNS servers pushed to clients (at most 2)."""
    auth: ClientAuth = "password"
    """"password" (the users file), "certificate" (client_ca), or, for IKEv2, "any"."""
    client_ca: Path | None = None
    """PEM file of the CAs (up to 10) that client certificates must chain to."""
    max_connections: int = 500
    """Concurrent clients on this server."""
    connections_per_user: int = 5
    """Concurrent sessions of one user."""
    certificate: Path | None = None
    """The server's certificate chain (default: the gateway's)."""
    private_key: Path | None = None
    """Its key, mode 0600 (default: the gateway's)."""
    tls_crypt_key: Path | None = None
    """SSL only: an OpenVPN tls-crypt key file that wraps the control channel."""
    client_to_client: bool = False
    """Whether clients of this server reach each other."""
    groups: Mapping[str, GroupConfig] = field(default_factory=dict)
    """Access policies by group name; with any defined, a user in none reaches nothing."""
    dns_domains: tuple[str, ...] = ()
    """IKEv2 only: split-DNS domains (INTERNAL_DNS_DOMAIN, RFC 8598)."""
    ike_proposals: tuple[str, ...] = DEFAULT_RA_IKE_PROPOSALS
    """IKEv2 only: IKE proposals, most preferred first (strongSwan syntax)."""
    esp_proposals: tuple[str, ...] = DEFAULT_RA_ESP_PROPOSALS
    """IKEv2 only: ESP proposals, most preferred first."""


@dataclass(frozen=True)
class MetricsConfig:
    """`[metrics]`: the Prometheus endpoint (`daemon.metrics`)."""

    host: str
    """The address to listen on (an IP address, not a name)."""
    port: int
    """The TCP port."""


@dataclass(frozen=True)
class ConsoleConfig:
    """`[console]`: the web console (HTTPS only), off when the section is absent."""

    host: IpAddress
    """The address it listens on (`listen = "198.51.100.2:8443"`)."""
    port: int
    admins: Path
    """The admins file (`lockgate admin add`): names and scrypt hashes, mode 0600."""
    certificate: Path | None = None
    """PEM certificate; None: [gateway]'s, else a self-signed one beside the file."""
    private_key: Path | None = None
    """PEM private key of `certificate`, owner-only."""


@dataclass(frozen=True)
class Config:
    """A whole configuration file."""

    gateway: GatewayConfig
    """The `[gateway]` section."""
    peers: Mapping[str, PeerConfig]
    """`[peers.NAME]` sections by NAME (read-only)."""
    connections: Mapping[str, ConnectionConfig]
    """`[connections.NAME]` sections by NAME, in file order (read-only)."""
    source: Path | None = None
    """The file it was loaded from, if any."""
    remote_access: Mapping[str, RemoteAccessConfig] = field(default_factory=dict)
    """`[remote_access.NAME]` sections (point-to-cloud servers) by NAME, in file order."""
    console: ConsoleConfig | None = None
    """`[console]`: the web console, if configured."""
    warnings: tuple[Problem, ...] = ()
    """Legal settings that are probably not what was meant; `check-config` prints them
    and the daemon logs them at start and on reload."""
    metrics: MetricsConfig | None = None
    """`[metrics]`: where Prometheus scrapes /metrics; None (absent): no endpoint."""

    def connections_of(self, peer: str) -> tuple[ConnectionConfig, ...]:
        """The connections going to `peer`, in file order."""
        return tuple(c for c in self.connections.values() if c.peer == peer)

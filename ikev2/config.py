"""Typed settings of IKE connections and their CHILD SAs.

`conf/` builds these from the TOML file (the names here mirror the configuration's
keys, which are a user-facing contract); the IKE SA only reads them. All are frozen: a reload
builds new objects instead of changing live ones.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from ikev2.addresses import address_or_none
from ikev2.certs import LocalCredentials, TrustAnchors
from ikev2.errors import ConfigError as ConfigError
from ikev2.errors import Problem as Problem
from ikev2.identity import Identity as Identity
from ikev2.identity import IdKind as IdKind
from ikev2.ts import TrafficSelector

StartAction = Literal["initiate", "trap", "wait"]
DpdAction = Literal["clear", "restart", "trap"]
EncapMode = Literal["auto", "force", "nat"]
AuthMethod = Literal["psk", "pubkey"]
ClientAuth = Literal["eap", "pubkey", "any"]
IpInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NtHashLookup = Callable[[str], bytes | None]
"""EAP identity -> the user's NT hash (MD4 of the UTF-16LE password), None: unknown."""
LoginGate = Callable[[str, str, bool, int], str | None]
"""(EAP identity, the client's IP address, whether its IKE_AUTH request carries
INITIAL_CONTACT, the login's IKE SA number) -> why its login is refused before the
password is checked ("rate limited"), or None. With INITIAL_CONTACT the login replaces
that user's IKE SAs from the same address (RFC 7296 §2.4), so a session limit does not
count them, and their virtual addresses may go to this IKE SA."""
UserReach = Callable[[str], tuple[IpNetwork, ...]]
"""user -> the networks that user may reach (the CHILD SA's local selectors are
narrowed to them; () refuses the CHILD SA)."""
AddressAllocator = Callable[[str, int, int], IpInterface | None]
"""(user, IKE SA number, IP version 4 or 6) -> the client's virtual address with the
pool's prefix (for INTERNAL_IP4_NETMASK), or None when none is free. The caller frees
it when that IKE SA is deleted or fails."""


@dataclass(frozen=True)
class ChildConfig:
    """One CHILD SA a connection negotiates (a pair of ESP SAs between two subnets)."""

    name: str
    """Name of the CHILD SA, shown in logs and status (the TOML connection name)."""
    local_ts: tuple[TrafficSelector, ...]
    """Our side's traffic selectors (TOML `local_subnets`)."""
    remote_ts: tuple[TrafficSelector, ...]
    """The peer's side's traffic selectors (TOML `remote_subnets`)."""
    esp_proposals: tuple[str, ...] = ("aes128gcm16", "aes256gcm16")
    """ESP proposals in strongSwan syntax, most preferred first; a key-exchange part
    ("aes256gcm16-x25519") asks for PFS on rekeys."""
    lifetime: float = 3600.0
    """Hard lifetime in seconds (TOML `child_lifetime`); the SA is deleted after it."""
    rekey_margin: float = 540.0
    """Rekeying starts this many seconds before `lifetime` ends (randomised downwards
    a little so both ends do not rekey at once)."""
    life_bytes: int = 0
    """Hard byte limit per direction; 0 means none."""
    life_packets: int = 0
    """Hard packet limit per direction; 0 means none."""
    start: StartAction = "initiate"
    """"initiate" at start-up, "trap" on the first matching packet, or "wait" for the peer."""
    mode: Literal["tunnel"] = "tunnel"
    """IPsec mode; lockgate implements tunnel mode only."""
    replay_window: int = 128
    """Anti-replay window in packets (RFC 4303 §3.4.3); 0 disables the check."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("a CHILD SA needs a name")
        if not self.local_ts or not self.remote_ts:
            raise ConfigError(f"{self.name}: local and remote traffic selectors are required")
        if not self.esp_proposals:
            raise ConfigError(f"{self.name}: at least one ESP proposal is required")
        if self.lifetime <= 0 or not 0 <= self.rekey_margin < self.lifetime:
            raise ConfigError(f"{self.name}: rekey_margin must be below the lifetime")
        if self.life_bytes < 0 or self.life_packets < 0 or self.replay_window < 0:
            raise ConfigError(f"{self.name}: limits must not be negative")
        if self.start not in ("initiate", "trap", "wait"):
            raise ConfigError(f"{self.name}: unknown start action {self.start!r}")

    @property
    def rekey_time(self) -> float:
        """Seconds after installation when rekeying is due (before randomisation)."""
        return self.lifetime - self.rekey_margin


@dataclass(frozen=True)
class RemoteAccess:
    """A remote-access server's settings for its clients (RFC 7296 §2.16, §3.15).

    The daemon fills it from a `[remote_access.NAME]` section with `protocol = "ikev2"`;
    the users file and the address pool stay with the daemon, behind the callbacks.
    """

    client_auth: ClientAuth = "eap"
    """How clients prove who they are: "eap" (EAP-MSCHAPv2, TOML auth "password"),
    "pubkey" (certificates: RFC 7427 signatures, or EAP-TLS; TOML "certificate") or
    "any"."""
    nt_hash: NtHashLookup | None = field(default=None, repr=False)
    """The user check of EAP-MSCHAPv2 (needed unless client_auth is "pubkey")."""
    allocate: AddressAllocator | None = field(default=None, repr=False)
    """Hands out virtual addresses (TOML client_pool, client_pool6)."""
    dns: tuple[IpAddress, ...] = ()
    """DNS servers (INTERNAL_IP4_DNS, INTERNAL_IP6_DNS; TOML dns)."""
    dns_domains: tuple[str, ...] = ()
    """Split-DNS domains (INTERNAL_DNS_DOMAIN, RFC 8598; TOML dns_domains)."""
    subnets: tuple[IpNetwork, ...] = ()
    """The networks clients reach, sent as INTERNAL_IP4_SUBNET / INTERNAL_IP6_SUBNET
    (macOS routes by them; TOML local_subnets)."""
    gate: LoginGate | None = field(default=None, repr=False)
    """Asked before an EAP password is checked (login rate limits)."""
    reach: UserReach | None = field(default=None, repr=False)
    """Per-user destinations (group policies); None: the CHILD's local_ts for all."""

    def __post_init__(self) -> None:
        if self.client_auth not in ("eap", "pubkey", "any"):
            raise ConfigError(f"unknown client authentication {self.client_auth!r}")
        if self.client_auth != "pubkey" and self.nt_hash is None:
            raise ConfigError("EAP-MSCHAPv2 needs a user check (nt_hash)")

    @property
    def accepts_eap(self) -> bool:
        """Clients may log in with EAP-MSCHAPv2."""
        return self.client_auth in ("eap", "any")

    @property
    def accepts_certificates(self) -> bool:
        """Clients may authenticate with certificates."""
        return self.client_auth in ("pubkey", "any")


@dataclass(frozen=True)
class RemoteAccessClient:
    """We dial a remote-access server as one of its clients (tests, a load generator)."""

    eap_identity: str | None = None
    """Log in with EAP as this user (EAP-MSCHAPv2, or EAP-TLS with `eap_tls`); None:
    with our certificate (RFC 7427)."""
    nt_hash: bytes | None = field(default=None, repr=False)
    """The user's NT hash, for EAP-MSCHAPv2."""
    eap_tls: LocalCredentials | None = None
    """Log in with EAP-TLS (RFC 5216, RFC 9190) with this user certificate, as Windows
    does with a user certificate."""
    request_ip4: bool = True
    """Ask for an IPv4 virtual address (CFG_REQUEST)."""
    request_ip6: bool = False
    """Ask for an IPv6 virtual address."""

    def __post_init__(self) -> None:
        if (
            self.eap_identity is not None
            and self.eap_tls is None
            and (self.nt_hash is None or len(self.nt_hash) != 16)
        ):
            raise ConfigError("an EAP-MSCHAPv2 client needs a 16-octet NT hash")


@dataclass(frozen=True, eq=False)
class PostQuantumKey:
    """A post-quantum preshared key (PPK) and its identity (RFC 8784 §3)."""

    ppk_id: bytes
    """The PPK_ID's value (after its type octet), as both sides configured it."""
    key: bytes = field(repr=False)
    """The PPK itself; never shown in repr or logs."""
    required: bool = False
    """Refuse an IKE SA that does not use it (the peer's NO_PPK_AUTH is not enough)."""

    def __post_init__(self) -> None:
        if not self.ppk_id or not self.key:
            raise ConfigError("a PPK needs an identity and a key")

    def __eq__(self, other: object) -> bool:
        # A reload compares configurations; the key in constant time all the same.
        return (
            isinstance(other, PostQuantumKey)
            and (self.ppk_id, self.required) == (other.ppk_id, other.required)
            and hmac.compare_digest(self.key, other.key)
        )

    def __hash__(self) -> int:
        return hash(self.ppk_id)


@dataclass(frozen=True)
class ConnectionConfig:
    """One IKE connection to a peer gateway and the CHILD SAs negotiated under it."""

    name: str
    """Connection name, shown in logs and status."""
    local_addresses: tuple[str, ...]
    """Our public addresses (TOML `gateway.addresses`); the first is used to initiate."""
    remote_address: str | None
    """The peer's address (TOML `peers.X.address`), or None for "%any" (responder only)."""
    local_id: Identity
    """Our IKE identity (TOML `peers.X.local_id`, by default `gateway.id`)."""
    remote_id: Identity | None
    """The identity the peer must prove (TOML `peers.X.id`); None accepts any."""
    children: tuple[ChildConfig, ...]
    """CHILD SAs of this connection; the first is set up with IKE_AUTH."""
    auth: AuthMethod = "psk"
    """Authentication method: "psk" (shared key) or "pubkey" (certificates)."""
    psk: bytes | None = field(default=None, repr=False)
    """The pre-shared key for auth "psk"; never shown in repr or logs."""
    ppk: PostQuantumKey | None = None
    """Our post-quantum preshared key with this peer (RFC 8784), or None."""
    credentials: LocalCredentials | None = None
    """Our certificate (chain) and private key for auth "pubkey" (TOML
    `gateway.certificate`, `gateway.private_key`); the key never shows in repr."""
    trust_anchors: TrustAnchors | None = None
    """CA certificates the peer's certificate must chain to, for auth "pubkey"
    (TOML `gateway.ca`)."""
    ike_proposals: tuple[str, ...] = ("aes256gcm16-prfsha384-x25519",)
    """IKE proposals in strongSwan syntax, most preferred first."""
    ike_port: int = 500
    """UDP port IKE starts on (RFC 7296 §2)."""
    nat_port: int = 4500
    """UDP port IKE moves to when a NAT is detected or encapsulation is forced (§2.23)."""
    ike_lifetime: float = 14400.0
    """Hard lifetime of the IKE SA in seconds."""
    rekey_margin: float = 540.0
    """IKE rekeying starts this many seconds before `ike_lifetime` ends."""
    dpd_interval: float = 30.0
    """Seconds of silence from the peer before a liveness check; 0 disables DPD."""
    dpd_action: DpdAction = "clear"
    """What to do when the peer stops answering: "clear", "restart" or "trap"."""
    encap: EncapMode = "auto"
    """"auto": ESP in UDP behind a NAT or with a lockgate peer (Vendor ID, see
    tasks.ike_natd); "force": always (fakes NAT-D as strongSwan's `encap = yes` does,
    RFC 7296 §2.23); "nat": only behind a NAT."""
    retransmit_timeout: float = 4.0
    """Seconds before the first retransmission of a request."""
    retransmit_tries: int = 5
    """Retransmissions before giving up on the peer."""
    retransmit_base: float = 1.8
    """Back-off factor: retransmission n waits timeout * base**n."""
    initial_contact: bool = True
    """Send INITIAL_CONTACT in IKE_AUTH so the peer drops stale SAs from us (§2.4)."""
    fragmentation: bool = True
    """Offer IKE fragmentation (RFC 7383); used when the peer offers it too."""
    fragment_size: int = 1232
    """Largest UDP payload of an IKE message sent whole once fragmentation is agreed
    (on port 4500 it includes the 4-octet non-ESP marker): 1280 octets of IPv6
    minimum MTU less the IP and UDP headers."""
    mobike: bool = True
    """As responder, answer an initiator's MOBIKE_SUPPORTED (RFC 4555 §3.3): its
    UPDATE_SA_ADDRESSES then moves the IKE SA and its CHILD SAs to a new address."""
    remote_access: RemoteAccess | None = None
    """We are a remote-access server for %any clients on this connection: they may log
    in with EAP (§2.16) and get virtual addresses (§3.15). Our own AUTH is "pubkey"."""
    ra_client: RemoteAccessClient | None = None
    """We are a client of a remote-access server (EAP login, virtual address)."""

    def __post_init__(self) -> None:
        where = f"connection {self.name!r}"
        if not self.name:
            raise ConfigError("a connection needs a name")
        if not self.local_addresses:
            raise ConfigError(f"{where}: no local address")
        for addr in (
            *self.local_addresses,
            *([self.remote_address] if self.remote_address else []),
        ):
            if address_or_none(addr) is None:
                raise ConfigError(f"{where}: {addr!r} is not an IP address")
        if not self.children:
            raise ConfigError(f"{where}: no CHILD SA configured")
        if self.auth == "psk" and not self.psk:
            raise ConfigError(f"{where}: auth is psk but no psk is set")
        if self.auth == "pubkey":
            eap_client = self.ra_client is not None and self.ra_client.eap_identity is not None
            eap_only = (
                self.remote_access is not None and not self.remote_access.accepts_certificates
            )
            if (self.credentials is None and not eap_client) or (
                self.trust_anchors is None and not eap_only
            ):
                raise ConfigError(
                    f"{where}: auth is pubkey but a certificate, key or CA is missing"
                )
        if self.remote_access is not None and (self.auth != "pubkey" or self.remote_address):
            raise ConfigError(
                f"{where}: a remote-access server signs with its certificate for %any"
            )
        if self.auth not in ("psk", "pubkey"):
            raise ConfigError(f"{where}: unknown auth method {self.auth!r}")
        if not self.ike_proposals:
            raise ConfigError(f"{where}: at least one IKE proposal is required")
        if self.ike_lifetime <= 0 or not 0 <= self.rekey_margin < self.ike_lifetime:
            raise ConfigError(f"{where}: rekey_margin must be below ike_lifetime")
        if self.encap not in ("auto", "force", "nat"):
            raise ConfigError(f"{where}: encap must be 'auto', 'force' or 'nat'")
        if self.dpd_action not in ("clear", "restart", "trap"):
            raise ConfigError(f"{where}: unknown dpd_action {self.dpd_action!r}")
        if self.retransmit_timeout <= 0 or self.retransmit_tries < 0 or self.retransmit_base < 1:
            raise ConfigError(f"{where}: invalid retransmission settings")
        if not 200 <= self.fragment_size <= 65000:
            raise ConfigError(f"{where}: fragment_size must be 200..65000")
        for port in (self.ike_port, self.nat_port):
            if not 0 < port < 65536:
                raise ConfigError(f"{where}: port {port} out of range")

    @property
    def is_responder_only(self) -> bool:
        """True when the peer address is %any: we cannot initiate, only answer."""
        return self.remote_address is None

    def child(self, name: str) -> ChildConfig:
        """The CHILD configuration by name; KeyError if there is none."""
        for child in self.children:
            if child.name == name:
                return child
        raise KeyError(name)

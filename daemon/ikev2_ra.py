"""The IKEv2 remote-access server: a `[remote_access.NAME]` with `protocol = "ikev2"`.

The IKE core does the protocol (EAP-MSCHAPv2 in IKE_AUTH, RFC 7296 §2.16; configuration
payloads, §3.15) on the gateway's own endpoint, and the client's CHILD SA is an
ordinary one in the gateway's data plane: its remote selector is the client's virtual
address (the data plane drops inner packets from any other source, RFC 4301 §5.2) and
its local selectors what the user may reach. This module answers the core's callbacks
from the server's state, shared in kind with the SSL server (`daemon.p2c_*`):
- `nt_hash`: the users file (`UsersFile`, re-read when it changes);
- `gate`: before a password is checked, or once a client certificate verified, the
  login rate limits (`LoginLimiter`), the users file and the server's and the user's
  session limits;
- `allocate`: the address pool (`AddressPool`: a user's static address, else the one
  the user had last, else the lowest free), an address per IKE SA, freed with it;
- `reach`: the user's group's destinations within `local_subnets` (nothing for a user
  in no group when the server has groups).
It follows the core's events for its client list and its one log line per connect,
refusal and disconnect, and deletes (with a Delete) the IKE SAs of a client that got
no CHILD SA, of a deleted user or one whose password changed, and of `lockgate
disconnect`.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conf.ike import local_credentials, trust_anchors
from conf.model import Config, RemoteAccessConfig
from daemon.p2c_auth import UsersFile
from daemon.p2c_limits import LoginLimiter
from daemon.p2c_pool import AddressPool
from ikev2.config import ChildConfig, ConfigError, Identity, IpInterface, IpNetwork, Problem
from ikev2.config import ConnectionConfig as IkeConnection
from ikev2.config import RemoteAccess as RaSettings
from ikev2.constants import NotifyType
from ikev2.events import (
    ChildSaFailed,
    ChildSaInstalled,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
)
from ikev2.ts import TrafficSelector

if TYPE_CHECKING:
    from daemon.gateway import Gateway

log = logging.getLogger(__name__)

CHILD_LIFETIME = 10800.0
"""Clients' CHILD SAs live 3 hours: Windows and strongSwan clients rekey after 1 hour
(the server does not start rekeys towards a client behind a NAT)."""
IKE_LIFETIME = 86400.0
_AUTH = {"password": "eap", "certificate": "pubkey", "any": "any"}
_EAP_FAILURES = frozenset({"wrong password", "unknown user"})


@dataclass
class IkeClient:
    """One client's IKE SA: who, from where, with which addresses."""

    user: str
    ike_sa_id: int
    remote: tuple[str, int] = ("", 0)
    addresses: list[ipaddress.IPv4Address] = field(default_factory=list)
    since: float = field(default_factory=time.time)
    established: bool = False
    connected: bool = False
    """Its first CHILD SA is installed (the connect was logged)."""


class IkeRaServer:
    """One ikev2 server's users, pool, limits and clients."""

    def __init__(
        self, config: RemoteAccessConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self.name = config.name
        self.users = UsersFile(config.users)
        self.pool = AddressPool(config.client_pool)
        self.limiter = LoginLimiter()
        self.clients: dict[int, IkeClient] = {}
        """By IKE SA id, from the first address handed out (or the establishment)."""
        self.refusals: Counter[str] = Counter()
        self._clock = clock
        self._gateway: Gateway | None = None
        self._statics()

    def attach(self, gateway: Gateway) -> None:
        """The running gateway whose endpoint deletes IKE SAs for this server."""
        self._gateway = gateway

    # -- the IKE connection -----------------------------------------------------------

    def connection(self, config: Config) -> IkeConnection:
        """The IKE core's remote-access connection for this server (%any clients)."""
        ra = self.config
        gateway = config.gateway
        # The server's own certificate (conf.load defaults it to the gateway's).
        own = dataclasses.replace(gateway, certificate=ra.certificate, private_key=ra.private_key)
        anchors = None
        if ra.auth != "password" and ra.client_ca is not None:
            anchors = trust_anchors(dataclasses.replace(gateway, ca=(ra.client_ca,)))
        settings = RaSettings(
            client_auth=_AUTH[ra.auth],  # type: ignore[arg-type]
            nt_hash=self.nt_hash,
            allocate=self.allocate,
            dns=ra.dns,
            dns_domains=ra.dns_domains,
            subnets=ra.local_subnets,
            gate=self.gate,
            reach=self.reach,
        )
        child = ChildConfig(
            name=ra.name,
            local_ts=tuple(TrafficSelector.from_network(str(n)) for n in ra.local_subnets),
            remote_ts=(
                TrafficSelector.from_network("0.0.0.0/0"),
                TrafficSelector.from_network("::/0"),
            ),
            esp_proposals=ra.esp_proposals,
            lifetime=CHILD_LIFETIME,
            start="wait",
        )
        try:
            return IkeConnection(
                name=ra.name,
                local_addresses=tuple(str(a) for a in gateway.addresses),
                remote_address=None,
                local_id=Identity.parse(ra.address),
                remote_id=None,
                children=(child,),
                auth="pubkey",
                credentials=local_credentials(own),
                trust_anchors=anchors,
                ike_proposals=ra.ike_proposals,
                ike_port=gateway.ike_port,
                nat_port=gateway.nat_port,
                ike_lifetime=IKE_LIFETIME,
                retransmit_timeout=gateway.retransmit_timeout,
                retransmit_tries=gateway.retransmit_tries,
                initial_contact=False,
                remote_access=settings,
            )
        except ConfigError as exc:
            raise ConfigError([Problem(f"remote_access.{ra.name}", str(exc))]) from exc

    # -- the core's callbacks -----------------------------------------------------------

    def nt_hash(self, user: str) -> bytes | None:
        found = self.users.users.get(user)
        return None if found is None else found.nt_hash

    def gate(self, user: str, address: str) -> str | None:
        if self.limiter.blocked(user, address, self._clock()):
            return "rate limited"
        if self.config.users is not None and user not in self.users.users:
            # A certificate of the client CA names a user the users file does not
            # list (an EAP login of an unknown user is refused here just the same).
            return "unknown user"
        established = [c for c in self.clients.values() if c.established]
        if len(established) >= self.config.max_connections:
            return "server full"
        if sum(1 for c in established if c.user == user) >= self.config.connections_per_user:
            return "too many sessions"
        return None

    def allocate(self, user: str, ike_sa_id: int, version: int) -> IpInterface | None:
        if version != 4:
            return None  # IPv6 pools are not served yet
        found = self.users.users.get(user)
        static = found.static_ip if found is not None else None
        static4 = static if isinstance(static, ipaddress.IPv4Address) else None
        if static4 is not None:
            # A static address is one session at a time: the older one goes.
            for other in list(self.clients.values()):
                if static4 in other.addresses and other.ike_sa_id != ike_sa_id:
                    other.addresses.remove(static4)
                    self._delete_later(other.ike_sa_id, "its static address went to a new login")
        address = self.pool.allocate(user, ike_sa_id, static4)
        if address is None:
            return None
        client = self.clients.setdefault(ike_sa_id, IkeClient(user, ike_sa_id))
        client.addresses.append(address)
        return ipaddress.IPv4Interface((address, self.config.client_pool.prefixlen))

    def reach(self, user: str) -> tuple[IpNetwork, ...]:
        groups = self.config.groups
        if not groups:
            return self.config.local_subnets
        found = self.users.users.get(user)
        group = groups.get(found.group) if found is not None and found.group else None
        return group.destinations if group is not None else ()

    # -- events -------------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """Follow one of the core's events (those of other connections are ignored)."""
        if getattr(event, "connection", None) != self.name:
            return
        client: IkeClient | None
        if isinstance(event, IkeSaEstablished):
            user = event.eap_identity or _cert_user(event.remote_id)
            entry = self.clients.setdefault(event.ike_sa_id, IkeClient(user, event.ike_sa_id))
            entry.user, entry.remote, entry.established = user, event.remote, True
            if event.eap_identity:
                self.limiter.succeeded(user, event.remote[0])
        elif isinstance(event, IkeSaRekeyed):
            client = self.clients.pop(event.ike_sa_id, None)
            if client is not None:
                client.ike_sa_id = event.new_ike_sa_id
                self.clients[event.new_ike_sa_id] = client
                for address in client.addresses:
                    self.pool.release(address, event.ike_sa_id)
                    self.pool.allocate(client.user, event.new_ike_sa_id, address)
        elif isinstance(event, ChildSaInstalled):
            client = self.clients.get(event.ike_sa_id)
            if client is not None and not client.connected:
                client.connected = True
                log.info(
                    "ikev2 %s: %s connected from %s[%d], virtual address %s",
                    self.name,
                    client.user,
                    event.remote[0],
                    event.remote[1],
                    ", ".join(str(a) for a in client.addresses) or "none",
                )
        elif isinstance(event, ChildSaFailed):
            self._child_failed(event)
        elif isinstance(event, IkeSaFailed):
            self._release(event.ike_sa_id)
            reason = event.refusal or event.reason
            if event.refusal in _EAP_FAILURES:
                self.limiter.failed(event.user, event.remote[0], self._clock())
            if event.refusal:
                self.refusals[event.refusal] += 1
            log.warning(
                "ikev2 %s: login of %s from %s refused: %s",
                self.name,
                event.user or "?",
                event.remote[0] or "?",
                reason,
            )
        elif isinstance(event, IkeSaDeleted):
            client = self._release(event.ike_sa_id)
            # A client refused after its IKE SA was up (policy, pool) had its line.
            if client is not None and client.connected:
                log.info(
                    "ikev2 %s: %s (%s) from %s disconnected: %s, after %s",
                    self.name,
                    client.user,
                    ", ".join(str(a) for a in client.addresses) or "no address",
                    client.remote[0],
                    event.reason,
                    _duration(time.time() - client.since),
                )

    def _child_failed(self, event: ChildSaFailed) -> None:
        client = self.clients.get(event.ike_sa_id)
        detail = ""
        if event.notify == NotifyType.INTERNAL_ADDRESS_FAILURE:
            reason = "pool exhausted"
            # One line per refusal: the pool's state goes on it.
            detail = f" (client pool {self.config.client_pool}, {self.pool.in_use} in use)"
        elif event.notify == NotifyType.TS_UNACCEPTABLE:
            reason = "policy"
        else:
            reason = event.reason
        if client is not None and client.connected:
            return  # a later CHILD SA of a connected client: the gateway logged it
        self.refusals[reason] += 1
        log.warning(
            "ikev2 %s: %s from %s refused: %s%s",
            self.name,
            client.user if client is not None else "?",
            client.remote[0] if client is not None else "?",
            reason,
            detail,
        )
        self._delete_later(event.ike_sa_id, f"refused: {reason}")

    def _release(self, ike_sa_id: int) -> IkeClient | None:
        client = self.clients.pop(ike_sa_id, None)
        if client is not None:
            for address in client.addresses:
                self.pool.release(address, ike_sa_id)
        return client

    def _delete_later(self, ike_sa_id: int, reason: str) -> None:
        """Delete an IKE SA (with a Delete) once the events being handled are done."""
        gateway = self._gateway
        if gateway is None or gateway.endpoint is None:
            return

        def delete() -> None:
            endpoint = gateway.endpoint
            if endpoint is None or endpoint.ike_sa(ike_sa_id) is None:
                log.info("ikev2 %s: IKE SA #%d already gone (%s)", self.name, ike_sa_id, reason)
                return
            log.info("ikev2 %s: deleting IKE SA #%d: %s", self.name, ike_sa_id, reason)
            endpoint.delete(ike_sa_id, time.monotonic(), reason)
            gateway.service()

        if gateway.loop is not None:
            gateway.loop.call_soon(delete)
        else:
            delete()

    # -- operations ---------------------------------------------------------------------

    def poll_users(self) -> None:
        """Re-read a changed users file: a deleted user's IKE SAs, and those of a user
        whose password changed, are deleted."""
        old = dict(self.users.users)
        if not self.users.poll():
            return
        self._statics()
        for client in list(self.clients.values()):
            user, before = self.users.users.get(client.user), old.get(client.user)
            if self.config.users is not None and user is None:
                self._delete_later(client.ike_sa_id, "user deleted")
            elif user is not None and before is not None and user.nt_hash != before.nt_hash:
                self._delete_later(client.ike_sa_id, "password changed")

    def disconnect(self, user: str) -> int:
        mine = [c for c in self.clients.values() if c.user == user and c.established]
        for client in mine:
            self._delete_later(client.ike_sa_id, "disconnected by operator")
        return len(mine)

    def client_rows(self, gateway: Gateway) -> list[dict[str, Any]]:
        out = []
        for client in self.clients.values():
            if not client.connected:
                continue
            entries = gateway.plane.entries_of_ike_sa(client.ike_sa_id) if gateway.plane else []
            out.append(
                {
                    "server": self.name,
                    "protocol": "ikev2",
                    "user": client.user,
                    "virtual_ip": ", ".join(str(a) for a in client.addresses),
                    "remote": f"{client.remote[0]}:{client.remote[1]}",
                    "since": datetime.datetime.fromtimestamp(client.since, datetime.UTC)
                    .isoformat(timespec="seconds")
                    .replace("+00:00", "Z"),
                    "bytes_in": sum(e.inbound.byte_count for e in entries),
                    "bytes_out": sum(e.outbound.byte_count for e in entries),
                }
            )
        return out

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "protocol": "ikev2",
            "transport": "udp",
            "port": None,
            "interface": None,
            "pool": str(self.config.client_pool),
            "clients": sum(1 for c in self.clients.values() if c.connected),
            "max_connections": self.config.max_connections,
            "handshaking": sum(1 for c in self.clients.values() if not c.connected),
            "users": len(self.users.users),
            "refusals": dict(sorted(self.refusals.items())),
            "drops": {},
        }

    def _statics(self) -> None:
        self.pool.set_static(
            {
                name: user.static_ip
                for name, user in self.users.users.items()
                if isinstance(user.static_ip, ipaddress.IPv4Address)
            }
        )


def _cert_user(remote_id: str) -> str:
    """A certificate client's user name: the CN of a DN identity, else the identity."""
    for part in remote_id.split(","):
        key, _, value = part.strip().partition("=")
        if key.upper() == "CN" and value:
            return value
    return remote_id


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s"


def servers(config: Config) -> list[IkeRaServer]:
    """The ikev2 servers of a configuration (at most one, `conf.load` checks)."""
    return [IkeRaServer(ra) for ra in config.remote_access.values() if ra.protocol == "ikev2"]

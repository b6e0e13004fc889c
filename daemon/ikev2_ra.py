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
  session limits (not counting the sessions a login with INITIAL_CONTACT replaces);
- `allocate`: the address pools (`AddressPool`: a user's static address, else the one
  the user had last, else the lowest free), an address per IKE SA and family the
  client asked for (`client_pool`, and `client_pool6` for INTERNAL_IP6_ADDRESS), freed
  with it;
- `reach`: the user's group's destinations within `local_subnets` (nothing for a user
  in no group when the server has groups).
It follows the core's events for its client list and its one log line per connect,
refusal and disconnect, and deletes (with a Delete) the IKE SAs of a client that got
no CHILD SA, of a deleted user or one whose password changed, and of `lockgate
disconnect`.

A reload that changes the server's section is applied in place (`plan_change`,
`IkeRaServer.reconfigure`): what only new logins or new SAs use (DNS, domains,
proposals, limits, the server's identity and certificate) takes effect for them; access
that a connected client loses (a narrower group or `local_subnets`) ends its IKE SA at
once, access it gains is its at its next login; a changed pool keeps every client whose
address is still in it and ends the others; a change of who may log in (`auth`,
`client_ca`, `users`) restarts the server: every client's IKE SA is deleted, and they
log in again under the new rules.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conf.ike import local_credentials, trust_anchors
from conf.model import Config, RemoteAccessConfig
from conf.users import User
from daemon.p2c_auth import UsersFile
from daemon.p2c_limits import LoginLimiter
from daemon.p2c_pool import A, AddressPool, occupancy
from ikev2.certs import user_name as _cert_user
from ikev2.config import ChildConfig, ConfigError, Identity, IpInterface, IpNetwork, Problem
from ikev2.config import ConnectionConfig as IkeConnection
from ikev2.config import RemoteAccess as RaSettings
from ikev2.constants import NotifyType
from ikev2.eap_mschapv2 import EapCause
from ikev2.events import (
    ChildSaFailed,
    ChildSaInstalled,
    Event,
    IkeSaAddressChanged,
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
_DETAILED = frozenset({EapCause.CERTIFICATE.value, EapCause.TLS.value})
"""Refusals whose words alone do not say what was wrong (which certificate, which CA,
which TLS alert): the log line gives the whole reason; the counters keep the words."""


LIVE_KEYS = frozenset(
    {
        "dns",
        "dns_domains",
        "local_subnets",
        "groups",
        "max_connections",
        "connections_per_user",
        "ike_proposals",
        "esp_proposals",
        "address",
        "certificate",
        "private_key",
        "client_to_client",
    }
)
"""Keys a reload applies without a restart (see `plan_change`)."""
POOL_KEYS = ("client_pool", "client_pool6")


@dataclass(frozen=True)
class RaChange:
    """What a reload does to the running ikev2 server (`plan_change`)."""

    restart: tuple[str, ...] = ()
    """Changed keys that restart the server: every client's IKE SA is deleted."""
    live: tuple[str, ...] = ()
    """Changed keys applied in place (new logins and new SAs use them)."""
    pools: tuple[str, ...] = ()
    """Changed pools: clients whose address is outside the new one are deleted."""

    @property
    def changed(self) -> bool:
        return bool(self.restart or self.live or self.pools)


def plan_change(old: RemoteAccessConfig, new: RemoteAccessConfig) -> RaChange:
    """How a reload applies `new` over the running `old` section of one ikev2 server.

    Who may log in (`auth`, `client_ca`, `users`, and any key this does not know)
    restarts it: a session that logged in under other rules must not outlive them.
    The pools keep the clients that still fit. The rest applies in place; access
    that connected clients lose is taken from them by `IkeRaServer.reconfigure`."""
    changed = [
        f.name
        for f in dataclasses.fields(old)
        if f.name != "name" and getattr(old, f.name) != getattr(new, f.name)
    ]
    return RaChange(
        restart=tuple(k for k in changed if k not in LIVE_KEYS and k not in POOL_KEYS),
        live=tuple(k for k in changed if k in LIVE_KEYS),
        pools=tuple(k for k in changed if k in POOL_KEYS),
    )


@dataclass
class IkeClient:
    """One client's IKE SA: who, from where, with which addresses."""

    user: str
    ike_sa_id: int
    remote: tuple[str, int] = ("", 0)
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = field(default_factory=list)
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
        self.pool: AddressPool[ipaddress.IPv4Address] = AddressPool(config.client_pool)
        self.pool6: AddressPool[ipaddress.IPv6Address] | None = None
        if config.client_pool6 is not None:
            self.pool6 = AddressPool(config.client_pool6)
        self.limiter = LoginLimiter()
        self.clients: dict[int, IkeClient] = {}
        """By IKE SA id, from the first address handed out (or the establishment)."""
        self._replacing: dict[int, list[int]] = {}
        """A login with INITIAL_CONTACT -> the stale sessions it replaces (their IKE SA
        ids), until it has its addresses."""
        self.refusals: Counter[str] = Counter()
        self._clock = clock
        self._gateway: Gateway | None = None
        self._statics()

    def attach(self, gateway: Gateway) -> None:
        """The running gateway whose endpoint deletes IKE SAs for this server."""
        self._gateway = gateway

    # -- the IKE connection -----------------------------------------------------------

    def connection(
        self, config: Config, section: RemoteAccessConfig | None = None
    ) -> IkeConnection:
        """The IKE core's remote-access connection for this server (%any clients), of
        its section or of `section` (a reload's, checked before it is applied)."""
        ra = section or self.config
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

    def gate(
        self, user: str, address: str, initial_contact: bool = False, ike_sa_id: int = 0
    ) -> str | None:
        # A login sees the users file as it is now: a user added a moment ago (between
        # two housekeeping polls) is not refused as unknown. A stat per login.
        self.poll_users()
        if self.limiter.blocked(user, address, self._clock()):
            return "rate limited"
        if self.config.users is not None and user not in self.users.users:
            # A certificate of the client CA names a user the users file does not
            # list (an EAP login of an unknown user is refused here just the same).
            return "unknown user"
        established = [c for c in self.clients.values() if c.established]
        stale = [
            c.ike_sa_id for c in established if initial_contact and _replaced(c, user, address)
        ]
        if stale:
            established = [c for c in established if c.ike_sa_id not in stale]
        if len(established) >= self.config.max_connections:
            return "server full"
        if sum(1 for c in established if c.user == user) >= self.config.connections_per_user:
            return "too many sessions"
        if stale:
            self._replacing[ike_sa_id] = stale
        return None

    def allocate(self, user: str, ike_sa_id: int, version: int) -> IpInterface | None:
        pool = self._pool(version)
        if pool is None:
            return None  # no client_pool6: an IPv6 request goes unanswered (§3.15.4)
        found = self.users.users.get(user)
        static = found.static_ip if found is not None else None
        if static is not None and static in pool:
            # A static address is one session at a time: the older one goes.
            for other in list(self.clients.values()):
                if static in other.addresses and other.ike_sa_id != ike_sa_id:
                    other.addresses.remove(static)
                    self._delete_later(other.ike_sa_id, "its static address went to a new login")
        address = self._take_over(pool, user, ike_sa_id) if static is None else None
        if address is None:
            address = pool.allocate(user, ike_sa_id, static)
        if address is None:
            return None
        client = self.clients.setdefault(ike_sa_id, IkeClient(user, ike_sa_id))
        client.addresses.append(address)
        # The pool's prefix length goes with the address (INTERNAL_IP4_NETMASK, and the
        # prefix octet of INTERNAL_IP6_ADDRESS, §3.15.1), as strongSwan's server sends
        # one; clients install the address alone, and the CHILD SA's selector on their
        # side is the single address (`child_create`), so no neighbour is reachable
        # through the prefix.
        return ipaddress.ip_interface((address, pool.network.prefixlen))

    def _take_over(
        self,
        pool: AddressPool[ipaddress.IPv4Address] | AddressPool[ipaddress.IPv6Address],
        user: str,
        ike_sa_id: int,
    ) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The address of this family that a stale session of the user held, moved to
        the login that replaces it. The client that sent INITIAL_CONTACT holds no other
        IKE SA with us (RFC 7296 §2.4), so that address is its own: it gets it back, and a
        full pool does not refuse it while the stale session is still being deleted."""
        for stale_id in self._replacing.get(ike_sa_id, ()):
            stale = self.clients.get(stale_id)
            if stale is None:
                continue
            for address in stale.addresses:
                if address in pool:
                    stale.addresses.remove(address)
                    pool.release(address, stale_id)
                    return pool.allocate(user, ike_sa_id, address)
        return None

    def _pool(
        self, version: int
    ) -> AddressPool[ipaddress.IPv4Address] | AddressPool[ipaddress.IPv6Address] | None:
        return self.pool if version == 4 else self.pool6

    def _pools(
        self,
    ) -> list[AddressPool[ipaddress.IPv4Address] | AddressPool[ipaddress.IPv6Address]]:
        return [self.pool] if self.pool6 is None else [self.pool, self.pool6]

    def reach(self, user: str) -> tuple[IpNetwork, ...]:
        return self._reach(self.config, user)

    def _reach(
        self, config: RemoteAccessConfig, user: str, users: Mapping[str, User] | None = None
    ) -> tuple[IpNetwork, ...]:
        """What `user` may reach under `config`, with the users file as read now or as
        `users` (the file as it was)."""
        groups = config.groups
        if not groups:
            return config.local_subnets
        found = (self.users.users if users is None else users).get(user)
        group = groups.get(found.group) if found is not None and found.group else None
        return group.destinations if group is not None else ()

    # -- events -------------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """Follow one of the core's events (those of other connections are ignored)."""
        if getattr(event, "connection", None) != self.name:
            return
        client: IkeClient | None
        if isinstance(event, IkeSaEstablished):
            self._replacing.pop(event.ike_sa_id, None)
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
                    pool = self._pool(address.version)
                    if pool is not None:
                        pool.release(address, event.ike_sa_id)
                        pool.allocate(client.user, event.new_ike_sa_id, address)
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
        elif isinstance(event, IkeSaAddressChanged):
            client = self.clients.get(event.ike_sa_id)
            if client is not None:
                # MOBIKE (RFC 4555) or a NAT mapping that moved: same IKE SA, new path.
                log.info(
                    "ikev2 %s: client %s moved from %s[%d] to %s[%d]%s",
                    self.name,
                    client.user,
                    event.old_remote[0],
                    event.old_remote[1],
                    event.remote[0],
                    event.remote[1],
                    " (MOBIKE)" if event.mobike else "",
                )
                client.remote = event.remote
        elif isinstance(event, ChildSaFailed):
            self._child_failed(event)
        elif isinstance(event, IkeSaFailed):
            self._release(event.ike_sa_id)
            reason = event.refusal or event.reason
            if event.refusal in _DETAILED:
                reason = event.reason
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
            # One line per refusal: the pools' state goes on it.
            detail = f" ({occupancy(self._pools())})"
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
        self._replacing.pop(ike_sa_id, None)
        client = self.clients.pop(ike_sa_id, None)
        if client is not None:
            for address in client.addresses:
                for pool in self._pools():
                    pool.release(address, ike_sa_id)
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

    # -- reload -------------------------------------------------------------------------

    def reconfigure(self, new: RemoteAccessConfig, change: RaChange) -> int:
        """Apply a reloaded section (`plan_change`); the caller gives the IKE endpoint
        the new `connection`. Returns how many clients' IKE SAs are deleted, each with
        a Delete and a log line saying why."""
        old = self.config
        ending: dict[int, str] = {}
        if change.restart:
            reason = f"server restarted by a reload ({', '.join(change.restart)} changed)"
            ending = {c.ike_sa_id: reason for c in self.clients.values()}
        if change.pools:
            pool4, stranded4 = _new_pool(self.pool, new.client_pool)
            self.pool6, stranded6 = _new_pool(self.pool6, new.client_pool6)
            if pool4 is not None:
                self.pool = pool4
            for key, stranded in (("client_pool", stranded4), ("client_pool6", stranded6)):
                for address, owner in stranded:
                    if isinstance(owner, int):
                        ending.setdefault(owner, f"its address {address} is not in the new {key}")
        if change.restart and "users" in change.restart:
            self.users = UsersFile(new.users)
        self.config = new
        self._statics()
        # Access is taken from connected clients at once; what they gain is theirs at
        # their next login (their CHILD SAs' selectors were narrowed at this one).
        for client in self.clients.values():
            if client.ike_sa_id in ending or not client.established:
                continue
            lost = _lost(self._reach(old, client.user), self._reach(new, client.user))
            if lost:
                ending[client.ike_sa_id] = (
                    f"access to {', '.join(str(n) for n in lost)} removed by a reload"
                )
        for ike_sa_id, reason in ending.items():
            self._delete_later(ike_sa_id, reason)
        log.info(
            "ikev2 %s: reloaded: %s; %d client(s) disconnected",
            self.name,
            "; ".join(
                f"{what} {', '.join(keys)}"
                for what, keys in (
                    ("restarted for", change.restart),
                    ("applied", change.live),
                    ("new pool", change.pools),
                )
                if keys
            ),
            len(ending),
        )
        return len(ending)

    def stop(self, reason: str) -> int:
        """The server is gone from the configuration: delete every client's IKE SA."""
        for client in self.clients.values():
            self._delete_later(client.ike_sa_id, reason)
        return len(self.clients)

    # -- operations ---------------------------------------------------------------------

    def poll_users(self) -> None:
        """Re-read a changed users file: a deleted user's IKE SAs, those of a user
        whose password changed, and those of a user whose new group reaches less, are
        deleted (the CHILD SAs' selectors were narrowed at the login; what a user
        gains is theirs at the next one, as with a reload)."""
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
            elif client.established and user is not None and before is not None:
                lost = _lost(
                    self._reach(self.config, client.user, old),
                    self._reach(self.config, client.user),
                )
                if lost:
                    self._delete_later(
                        client.ike_sa_id,
                        f"access to {', '.join(str(n) for n in lost)} removed by the users file",
                    )

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
            "pool": ", ".join(str(p.network) for p in self._pools()),
            "clients": sum(1 for c in self.clients.values() if c.connected),
            "max_connections": self.config.max_connections,
            "handshaking": sum(1 for c in self.clients.values() if not c.connected),
            "users": len(self.users.users),
            "refusals": dict(sorted(self.refusals.items())),
            "drops": {},
        }

    def _statics(self) -> None:
        statics = {
            name: user.static_ip
            for name, user in self.users.users.items()
            if user.static_ip is not None
        }
        for pool in self._pools():
            pool.set_static(statics)


def _replaced(client: IkeClient, user: str, address: str) -> bool:
    """A login with INITIAL_CONTACT replaces `client` when it is the same user at the
    same address, as the IKE core keys the IKE SAs it then drops (RFC 7296 §2.4): a
    client that restarted is not refused by the session it lost."""
    return client.user == user and client.remote[0] == address


def _new_pool(
    old: AddressPool[A] | None, network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
) -> tuple[AddressPool[A] | None, list[tuple[A, object]]]:
    """A reload's pool for `network`, with `old`'s leases that fit, and the leases
    that do not (all of them when the pool is gone)."""
    if network is None:
        return None, [] if old is None else old.leases()
    fresh: AddressPool[A] = AddressPool(network)
    return fresh, [] if old is None else fresh.carry_over(old)


def _lost(before: tuple[IpNetwork, ...], after: tuple[IpNetwork, ...]) -> list[IpNetwork]:
    """The networks of `before` that `after` does not cover."""
    return [
        net
        for net in before
        if not any(
            net.version == other.version and net.subnet_of(other)  # type: ignore[arg-type]
            for other in after
        )
    ]


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s"


def servers(config: Config) -> list[IkeRaServer]:
    """The ikev2 servers of a configuration (at most one, `conf.load` checks)."""
    return [IkeRaServer(ra) for ra in config.remote_access.values() if ra.protocol == "ikev2"]

"""Who may connect to one point-to-cloud server, with which address, reaching what.

The ovpn core asks `P2cAuthenticator` about every key method 2 it receives:
- password servers check the password against the users file's scrypt hash in a
  worker thread (some 50 ms each: never on the event loop) and answer later through
  `deliver`; an unknown user costs the same check against a dummy hash, so the time
  taken does not tell which names exist. Failed logins feed `LoginLimiter`;
- certificate servers take the user name from the verified client certificate's
  common name, which must name a user of the users file: `lockgate user del` revokes
  a certificate holder too, and groups, static addresses and session limits apply.
  A certificate server without a users file (`users` not set) admits every
  certificate that chains to `client_ca`, by its common name, with no group and no
  static address.

An accepted session gets a `Lease`: its user, its address from the pool (and one from
`client_pool6` when the server has it: every client is then dual-stack) and the
prefixes it may reach (its group's destinations when the server has groups, nothing
for a user in none; the server's local subnets otherwise).

Renegotiation (a soft reset, every `reneg-sec`): the client sends its password again;
it must be the one of the first login, compared with a keyed digest kept in memory
(never the password), so a client whose password is unchanged stays connected with no
hashing cost, and someone who hijacked the control channel cannot renegotiate without
the password. A certificate client must present a certificate of the same user.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from conf.model import RemoteAccessConfig
from conf.users import User, hash_password, load_users, verify_password
from daemon.p2c_limits import LoginLimiter
from daemon.p2c_pool import AddressPool, IPv4, IPv6, occupancy
from ikev2.config import ConfigError
from ovpn.push import PushOptions
from ovpn.session import AUTH_PENDING, AuthDecision, AuthPending, AuthRequest

log = logging.getLogger(__name__)

Submit = Callable[[Callable[[], bool], Callable[[bool], None]], None]
"""Run the first callable off the loop, then the second with its result on the loop."""
Deliver = Callable[[object, bytes, int, AuthDecision], None]
"""A deferred decision for (remote, session id, key id)."""

Prefix = tuple[int, int]
"""A prefix as (network, mask) integers: the data path tests a destination with one
AND and one comparison (128-bit integers for IPv6)."""


def prefixes(
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...], version: int = 4
) -> tuple[Prefix, ...]:
    """The prefixes of one IP version among `networks`."""
    return tuple((int(n.network_address), int(n.netmask)) for n in networks if n.version == version)


def common_name(der: bytes) -> str | None:
    """The subject common name of a DER certificate, if it has one."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
            NameOID.COMMON_NAME
        )
    except ValueError:
        return None
    value = names[0].value if names else None
    return value if isinstance(value, str) else None


def host_of(remote: object) -> str:
    return str(getattr(remote, "host", remote))


@dataclass
class Lease:
    """An accepted session's identity, address and policy."""

    user: str
    address: ipaddress.IPv4Address
    session_id: bytes
    remote: object
    since: float = field(default_factory=time.time)
    """Wall-clock time of the login (for `lockgate clients`)."""
    password_digest: bytes | None = field(default=None, repr=False)
    allowed: tuple[Prefix, ...] = ()
    group: str | None = None
    address6: ipaddress.IPv6Address | None = None
    """From client_pool6, when the server has one."""
    allowed6: tuple[Prefix, ...] = ()


class UsersFile:
    """The users file, re-read when its modification time, size or inode change."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        """None: a certificate server without a users file, which has no users."""
        self._signature = self._stat()
        # ConfigError: cannot start.
        self.users: dict[str, User] = {} if path is None else load_users(path)

    def _stat(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def poll(self) -> bool:
        """Re-read the file if it changed; True when `users` did. A broken file is
        logged and the users as last read stay."""
        signature = self._stat()
        if self.path is None or signature == self._signature:
            return False
        self._signature = signature
        try:
            users = load_users(self.path)
        except ConfigError as exc:
            log.error("users file %s not re-read, the previous users stay: %s", self.path, exc)
            return False
        changed = users != self.users
        self.users = users
        return changed


class P2cAuthenticator:
    def __init__(
        self,
        config: RemoteAccessConfig,
        users: Mapping[str, User],
        *,
        submit: Submit,
        deliver: Deliver,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.users: Mapping[str, User] = users
        self.pool: AddressPool[ipaddress.IPv4Address] = AddressPool(config.client_pool)
        self.pool6: AddressPool[ipaddress.IPv6Address] | None = None
        if config.client_pool6 is not None:
            self.pool6 = AddressPool(config.client_pool6)
        self.limiter = LoginLimiter()
        self.leases: dict[bytes, Lease] = {}
        """Accepted sessions by session id."""
        self._per_user: Counter[str] = Counter()
        self._submit, self._deliver, self._clock = submit, deliver, clock
        self._digest_key = secrets.token_bytes(32)
        self._dummy: User | None = None
        self._routes = tuple(
            n for n in config.local_subnets if isinstance(n, ipaddress.IPv4Network)
        )
        self._routes6 = tuple(
            n for n in config.local_subnets if isinstance(n, ipaddress.IPv6Network)
        )
        self.refusals: Counter[str] = Counter()
        self._statics()

    # -- the core's callback -------------------------------------------------------

    def __call__(self, request: AuthRequest) -> AuthDecision | AuthPending:
        if request.renegotiation:
            return self._renegotiate(request)
        if self.config.auth == "certificate":
            return self._certificate_login(request)
        name, address = request.username, host_of(request.remote)
        if self.limiter.blocked(name, address, self._clock()):
            return self._refuse(name, "rate limited")
        user = self.users.get(name)
        candidate = user if user is not None and user.password is not None else self._dummy_user()
        password = request.password

        def check() -> bool:
            return verify_password(candidate, password)

        def done(ok: bool) -> None:
            decision = self._after_check(request, user, ok)
            self._deliver(request.remote, request.session_id, request.key_id, decision)

        self._submit(check, done)
        return AUTH_PENDING

    def _dummy_user(self) -> User:
        if self._dummy is None:
            self._dummy = User("", password=hash_password(secrets.token_urlsafe(16)))
        return self._dummy

    def _after_check(self, request: AuthRequest, user: User | None, ok: bool) -> AuthDecision:
        name, address = request.username, host_of(request.remote)
        current = self.users.get(name)
        if user is None or current is None or user.password is None:
            self.limiter.failed(name, address, self._clock())
            return self._refuse(name, "unknown user")
        if not ok:
            self.limiter.failed(name, address, self._clock())
            return self._refuse(name, "wrong password")
        if current.password != user.password:
            return self._refuse(name, "password changed meanwhile")
        self.limiter.succeeded(name, address)
        return self._admit(current, request, self._digest(request.password))

    def _certificate_login(self, request: AuthRequest) -> AuthDecision:
        der = request.client_certificate
        if der is None:
            return self._refuse(request.username, "no client certificate")
        name = common_name(der)
        if name is None:
            return self._refuse("?", "certificate without a common name")
        if self.config.users is None:
            return self._admit(User(name), request, None)
        user = self.users.get(name)
        if user is None:
            return self._refuse(name, "unknown user")
        return self._admit(user, request, None)

    def _renegotiate(self, request: AuthRequest) -> AuthDecision:
        lease = self.leases.get(request.session_id)
        if lease is None:
            return self._refuse(request.username, "no session")
        if self.config.users is not None and lease.user not in self.users:
            return self._refuse(lease.user, "unknown user")
        if self.config.auth == "certificate":
            der = request.client_certificate
            if der is None or common_name(der) != lease.user:
                return self._refuse(lease.user, "certificate changed on renegotiation")
            return AuthDecision(True, username=lease.user)
        digest = lease.password_digest or b""
        if hmac.compare_digest(self._digest(request.password), digest):
            return AuthDecision(True, username=lease.user)
        self.limiter.failed(lease.user, host_of(request.remote), self._clock())
        return self._refuse(lease.user, "wrong password")

    def _admit(self, user: User, request: AuthRequest, digest: bytes | None) -> AuthDecision:
        config = self.config
        if len(self.leases) >= config.max_connections:
            return self._refuse(user.name, "server full")
        if self._per_user[user.name] >= config.connections_per_user:
            return self._refuse(user.name, "too many sessions")
        address = self.pool.allocate(user.name, request.session_id, user.static_ip)
        address6 = None
        if address is not None and self.pool6 is not None:
            address6 = self.pool6.allocate(user.name, request.session_id, user.static_ip)
            if address6 is None:
                self.pool.release(address, request.session_id)
                address = None
        if address is None:
            pools: list[AddressPool[IPv4] | AddressPool[IPv6]] = [self.pool]
            if self.pool6 is not None:
                pools.append(self.pool6)
            log.warning("ssl-vpn %s: %s", config.name, occupancy(pools))
            return self._refuse(user.name, "pool exhausted")
        self.leases[request.session_id] = Lease(
            user.name,
            address,
            request.session_id,
            request.remote,
            password_digest=digest,
            allowed=self._allowed(user),
            group=user.group,
            address6=address6,
            allowed6=self._allowed(user, 6),
        )
        self._per_user[user.name] += 1
        push = PushOptions(
            ipaddress.IPv4Interface((address, config.client_pool.prefixlen)),
            self.pool.server,
            self._routes,
            config.dns,
        )
        if address6 is not None and self.pool6 is not None:
            push = dataclasses.replace(
                push,
                address6=ipaddress.IPv6Interface((address6, self.pool6.network.prefixlen)),
                gateway6=self.pool6.server,
                routes6=self._routes6,
            )
        return AuthDecision(True, push=push, username=user.name)

    def _refuse(self, name: str, reason: str) -> AuthDecision:
        self.refusals[reason] += 1
        return AuthDecision(False, reason, username=name)

    def _digest(self, password: str) -> bytes:
        return hmac.new(self._digest_key, password.encode(), hashlib.sha256).digest()

    def _allowed(self, user: User, version: int = 4) -> tuple[Prefix, ...]:
        groups = self.config.groups
        if not groups:
            return prefixes(self.config.local_subnets, version)
        group = groups.get(user.group) if user.group is not None else None
        return prefixes(group.destinations, version) if group is not None else ()

    def _static_moved(self, user: User, lease: Lease) -> bool:
        """The user's static address (of either pool) is not the one the lease has."""
        static = user.static_ip
        if static in self.pool:
            return static != lease.address
        if self.pool6 is not None and static in self.pool6:
            return static != lease.address6
        return False

    def _statics(self) -> None:
        statics = {
            name: user.static_ip for name, user in self.users.items() if user.static_ip is not None
        }
        self.pool.set_static(statics)
        if self.pool6 is not None:
            self.pool6.set_static(statics)

    # -- the adapter's calls ---------------------------------------------------------

    def release(self, session_id: bytes) -> Lease | None:
        """The session ended (or never took its lease): its address goes back."""
        lease = self.leases.pop(session_id, None)
        if lease is not None:
            self._per_user[lease.user] -= 1
            if self._per_user[lease.user] <= 0:
                del self._per_user[lease.user]
            self.pool.release(lease.address, session_id)
            if lease.address6 is not None and self.pool6 is not None:
                self.pool6.release(lease.address6, session_id)
        return lease

    def sessions_of(self, user: str) -> list[Lease]:
        return [lease for lease in self.leases.values() if lease.user == user]

    def users_changed(self, users: Mapping[str, User]) -> list[tuple[Lease, bool, str]]:
        """Take the users file's new content; returns the sessions to end, each with
        whether the client may come back (RESTART) or must stay away (HALT), and why.
        A changed group takes effect at once, on the live sessions."""
        old, self.users = self.users, users
        self._statics()
        ends: list[tuple[Lease, bool, str]] = []
        for lease in self.leases.values():
            user, before = users.get(lease.user), old.get(lease.user)
            if user is None:
                ends.append((lease, False, "user deleted"))
            elif (
                self.config.auth != "certificate"
                and before is not None
                and (user.password != before.password)
            ):
                ends.append((lease, False, "password changed"))
            elif self._static_moved(user, lease):
                ends.append((lease, True, "static address changed"))
            else:
                lease.allowed, lease.group = self._allowed(user), user.group
                lease.allowed6 = self._allowed(user, 6)
        return ends

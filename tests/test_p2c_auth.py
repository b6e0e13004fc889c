"""The point-to-cloud server's decisions: address pool, login limits, authentication,
policy and the users file's changes (no sockets: the ovpn core's callback alone)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path

from conf.model import GroupConfig, RemoteAccessConfig
from conf.users import User, hash_password, save_users
from daemon.p2c_auth import P2cAuthenticator, UsersFile, prefixes
from daemon.p2c_limits import LoginLimiter
from daemon.p2c_pool import AddressPool
from ovpn.session import AUTH_PENDING, AuthDecision, AuthRequest
from testkit.p2c_config import config

IP = ipaddress.IPv4Address
NET = ipaddress.IPv4Network
PASSWORD = "right-Pass1"
HASH = hash_password(PASSWORD)


def test_pool_static_sticky_lowest_and_exhausted() -> None:
    pool = AddressPool(NET("192.0.2.0/29"))  # server .1, clients .2-.6
    assert pool.server == IP("192.0.2.1")
    pool.set_static({"sam": IP("192.0.2.2")})
    assert pool.allocate("ann", "a1") == IP("192.0.2.3")  # .2 is sam's
    assert pool.allocate("sam", "s1", IP("192.0.2.2")) == IP("192.0.2.2")
    assert pool.allocate("bob", "b1") == IP("192.0.2.4")
    pool.release(IP("192.0.2.3"), "a1")
    assert pool.allocate("cid", "c1") == IP("192.0.2.3")  # lowest free
    pool.release(IP("192.0.2.4"), "b1")
    pool.release(IP("192.0.2.3"), "not-the-owner")  # no effect
    assert pool.allocate("ann", "a2") == IP("192.0.2.4")  # her .3 is taken: lowest free
    pool.allocate("cid", "c2")  # .5
    pool.release(IP("192.0.2.4"), "a2")
    assert pool.allocate("dan", "d1") == IP("192.0.2.4")
    pool.release(IP("192.0.2.4"), "d1")
    assert pool.allocate("bob", "b2") == IP("192.0.2.4")  # his own again
    assert pool.allocate("eve", "e1") == IP("192.0.2.6")
    assert pool.allocate("fay", "f1") is None
    assert pool.in_use == 5


def test_login_limits_per_user_and_address() -> None:
    limiter = LoginLimiter()
    now = 100.0
    for _ in range(3):  # three typos: free
        assert not limiter.blocked("alice", "203.0.113.5", now)
        limiter.failed("alice", "203.0.113.5", now)
    assert not limiter.blocked("alice", "203.0.113.5", now)
    limiter.failed("alice", "203.0.113.5", now)  # the fourth closes the door 2 s
    assert limiter.blocked("alice", "198.51.100.9", now + 1)  # whatever the address
    assert not limiter.blocked("alice", "203.0.113.5", now + 2.1)
    limiter.failed("alice", "203.0.113.5", now + 3)
    assert limiter.blocked("alice", "203.0.113.5", now + 6)  # then 4 s
    assert not limiter.blocked("alice", "203.0.113.5", now + 7.1)
    # Others behind the same address are not held back yet...
    assert not limiter.blocked("bob", "203.0.113.5", now + 7.1)
    for i in range(6):  # ...until the address has more than 10 failures
        limiter.failed(f"u{i}", "203.0.113.5", now + 8)
    assert limiter.blocked("carol", "203.0.113.5", now + 8)
    # ...except users who logged in from there before.
    limiter.succeeded("bob", "203.0.113.5")
    assert not limiter.blocked("bob", "203.0.113.5", now + 8)
    assert not limiter.blocked("carol", "203.0.113.5", now + 9.1)
    # A success clears the user's count; old failures are forgotten.
    limiter.succeeded("alice", "203.0.113.5")
    assert not limiter.blocked("alice", "203.0.113.5", now + 9.1)


class Harness:
    def __init__(self, cfg: RemoteAccessConfig, users: dict[str, User]) -> None:
        self.delivered: list[tuple[object, bytes, int, AuthDecision]] = []
        self.auth = P2cAuthenticator(
            cfg, users, submit=self.submit, deliver=self.deliver, clock=lambda: self.now
        )
        self.now = 1000.0
        self.count = 0

    @staticmethod
    def submit(check: Callable[[], bool], done: Callable[[bool], None]) -> None:
        done(check())

    def deliver(self, remote: object, sid: bytes, key_id: int, decision: AuthDecision) -> None:
        self.delivered.append((remote, sid, key_id, decision))

    def login(
        self,
        user: str,
        password: str = PASSWORD,
        *,
        sid: bytes | None = None,
        renegotiation: bool = False,
        host: str = "198.51.100.1",
    ) -> AuthDecision:
        self.count += 1
        request = AuthRequest(
            user,
            password,
            None,
            {},
            f"{host}:{self.count}",
            renegotiation,
            sid or self.count.to_bytes(8, "big"),
            1 if renegotiation else 0,
        )
        result = self.auth(request)
        if result is AUTH_PENDING:
            return self.delivered.pop()[3]
        assert isinstance(result, AuthDecision)
        return result


def test_password_logins_and_their_refusals(tmp_path: Path) -> None:
    users = {
        "alice": User("alice", password=HASH),
        "sam": User("sam", password=HASH, static_ip=IP("192.0.2.77")),
    }
    h = Harness(config(tmp_path, connections_per_user=2), users)
    first = h.login("alice")
    assert first.accepted and first.push is not None and first.username == "alice"
    assert first.push.address == ipaddress.IPv4Interface("192.0.2.2/24")
    assert first.push.gateway == IP("192.0.2.1")
    assert first.push.routes == (NET("203.0.113.0/24"),)
    assert first.push.dns == (IP("203.0.113.53"),)
    assert h.login("sam").push.address.ip == IP("192.0.2.77")  # type: ignore[union-attr]
    assert h.login("alice").accepted
    assert h.login("alice").reason == "too many sessions"
    assert h.login("alice", "wrong-Pass1").reason == "wrong password"
    assert h.login("mallory").reason == "unknown user"
    assert dict(h.auth.refusals) == {
        "too many sessions": 1,
        "wrong password": 1,
        "unknown user": 1,
    }
    lease = h.auth.leases[(1).to_bytes(8, "big")]
    assert lease.allowed == prefixes((NET("203.0.113.0/24"),))
    # Renegotiation: the same password passes without hashing, another does not.
    assert h.login("alice", sid=lease.session_id, renegotiation=True).accepted
    again = h.login("alice", "other-Pass1", sid=lease.session_id, renegotiation=True)
    assert again.reason == "wrong password"
    assert h.auth.release(lease.session_id) is lease
    assert h.login("alice").accepted  # room again


def test_rate_limited_then_allowed(tmp_path: Path) -> None:
    h = Harness(config(tmp_path), {"alice": User("alice", password=HASH)})
    for _ in range(4):
        assert h.login("alice", "wrong-Pass1").reason == "wrong password"
    assert h.login("alice").reason == "rate limited"
    h.now += 2.5
    assert h.login("alice").accepted


def test_pool_exhausted_and_server_full(tmp_path: Path) -> None:
    users = {n: User(n, password=HASH) for n in ("a1", "a2", "a3")}
    h = Harness(config(tmp_path, client_pool=NET("192.0.2.0/30")), users)  # one client
    assert h.login("a1").accepted
    assert h.login("a2").reason == "pool exhausted"
    h = Harness(config(tmp_path, max_connections=1), users)
    assert h.login("a1").accepted
    assert h.login("a3").reason == "server full"


IP6 = ipaddress.IPv6Address
NET6 = ipaddress.IPv6Network


def test_with_client_pool6_every_client_is_dual_stack(tmp_path: Path) -> None:
    users = {
        "alice": User("alice", password=HASH),
        "lee": User("lee", password=HASH, static_ip=IP6("2001:db8:c::77")),
        "bob": User("bob", password=HASH, group="eng"),
    }
    cfg = config(
        tmp_path,
        client_pool6=NET6("2001:db8:c::/64"),
        local_subnets=(NET("203.0.113.0/24"), NET6("2001:db8:b::/64")),
        groups={"eng": GroupConfig("eng", (NET6("2001:db8:b::/80"),))},
    )
    h = Harness(cfg, users)
    alice = h.login("alice")
    assert alice.push is not None
    assert alice.push.address == ipaddress.IPv4Interface("192.0.2.2/24")
    assert alice.push.address6 == ipaddress.IPv6Interface("2001:db8:c::2/64")
    assert alice.push.gateway6 == IP6("2001:db8:c::1")
    assert alice.push.routes == (NET("203.0.113.0/24"),)
    assert alice.push.routes6 == (NET6("2001:db8:b::/64"),)
    # An IPv6 static address: the IPv4 one comes from the pool as usual.
    lee = h.login("lee")
    assert lee.push is not None and lee.push.address6 == ipaddress.IPv6Interface(
        "2001:db8:c::77/64"
    )
    assert lee.push.address.ip == IP("192.0.2.3")
    # A group's IPv6 destinations are its IPv6 prefixes; it has no IPv4 ones.
    h.login("bob")
    bob = next(lease for lease in h.auth.leases.values() if lease.user == "bob")
    assert bob.allowed == () and bob.allowed6 == prefixes((NET6("2001:db8:b::/80"),), 6)
    # The addresses of both families go back together.
    assert h.auth.pool6 is not None and h.auth.pool6.in_use == 3
    h.auth.release(bob.session_id)
    assert (h.auth.pool.in_use, h.auth.pool6.in_use) == (2, 2)
    # lee's static IPv6 address moved: his session ends to come back with it;
    # alice is untouched by an unchanged users file entry.
    ends = h.auth.users_changed(
        {**users, "lee": User("lee", password=HASH, static_ip=IP6("2001:db8:c::78"))}
    )
    assert [(lease.user, restart, why) for lease, restart, why in ends] == [
        ("lee", True, "static address changed")
    ]


def test_a_full_client_pool6_refuses_the_login_and_frees_its_ipv4_address(
    tmp_path: Path,
) -> None:
    users = {n: User(n, password=HASH) for n in ("a1", "a2")}
    h = Harness(config(tmp_path, client_pool6=NET6("2001:db8:c::/126")), users)  # one client
    assert h.login("a1").accepted
    assert h.login("a2").reason == "pool exhausted"
    assert h.auth.pool.in_use == 1 and len(h.auth.leases) == 1


def test_groups_decide_what_a_user_reaches(tmp_path: Path) -> None:
    groups = {"eng": GroupConfig("eng", (NET("203.0.113.0/25"),))}
    users = {
        "eng1": User("eng1", group="eng", password=HASH),
        "loner": User("loner", password=HASH),
    }
    h = Harness(config(tmp_path, groups=groups), users)
    assert h.login("eng1").accepted and h.login("loner").accepted
    by_user = {lease.user: lease for lease in h.auth.leases.values()}
    assert by_user["eng1"].allowed == prefixes((NET("203.0.113.0/25"),))
    assert by_user["loner"].allowed == ()  # in no group: reaches nothing
    # The users file changes: loner joins eng (live), eng1 is deleted (HALT).
    ends = h.auth.users_changed({"loner": User("loner", group="eng", password=HASH)})
    assert [(lease.user, restart, why) for lease, restart, why in ends] == [
        ("eng1", False, "user deleted")
    ]
    assert by_user["loner"].allowed == prefixes((NET("203.0.113.0/25"),))
    h.auth.release(ends[0][0].session_id)  # the session ended
    ends = h.auth.users_changed({"loner": User("loner", group="eng", password="scrypt$other")})
    assert [(lease.user, restart, why) for lease, restart, why in ends] == [
        ("loner", False, "password changed")
    ]


def test_certificate_login_needs_a_user_of_that_name(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from testkit.pki import Pki

    pki = Pki()
    cert_pem = pki.issue_client("alice").cert_pem
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(Encoding.DER)
    h = Harness(config(tmp_path, auth="certificate"), {"alice": User("alice")})
    decision = h.auth(AuthRequest("", "", der, {}, "198.51.100.1:1", False, b"s" * 8, 0))
    assert isinstance(decision, AuthDecision) and decision.accepted
    assert decision.username == "alice"
    again = h.auth(AuthRequest("", "", der, {}, "198.51.100.1:1", True, b"s" * 8, 1))
    assert isinstance(again, AuthDecision) and again.accepted
    h.auth.users = {}
    refused = h.auth(AuthRequest("", "", der, {}, "198.51.100.1:2", False, b"t" * 8, 0))
    assert isinstance(refused, AuthDecision) and refused.reason == "unknown user"
    missing = h.auth(AuthRequest("", "", None, {}, "198.51.100.1:3", False, b"u" * 8, 0))
    assert isinstance(missing, AuthDecision) and missing.reason == "no client certificate"


def test_users_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "office.users"
    save_users(path, {"alice": User("alice", password=HASH)})
    users = UsersFile(path)
    assert not users.poll()
    save_users(path, {"alice": User("alice", password=HASH), "bob": User("bob")})
    assert users.poll() and set(users.users) == {"alice", "bob"}
    path.write_text("not json")
    path.chmod(0o600)
    assert not users.poll() and set(users.users) == {"alice", "bob"}  # the old stay


def test_a_certificate_server_without_users_file_admits_any_ca_signed_name(
    tmp_path: Path,
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from testkit.pki import Pki

    pki = Pki()
    cert_pem = pki.issue_client("dave").cert_pem
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(Encoding.DER)
    h = Harness(config(tmp_path, auth="certificate", users=None), {})
    decision = h.auth(AuthRequest("", "", der, {}, "198.51.100.1:1", False, b"s" * 8, 0))
    assert isinstance(decision, AuthDecision) and decision.accepted
    assert decision.username == "dave"
    # Its renegotiation keeps working though no users file names dave.
    again = h.auth(AuthRequest("", "", der, {}, "198.51.100.1:1", True, b"s" * 8, 1))
    assert isinstance(again, AuthDecision) and again.accepted
    assert not UsersFile(None).poll() and UsersFile(None).users == {}

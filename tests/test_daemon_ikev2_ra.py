"""The IKEv2 remote-access server's decisions in memory (`daemon.ikev2_ra`).

An `IkeRaServer` answers the callbacks of a real responder (test_ikev2_eap's server
connection) and follows its events; each client is our initiator with its own address,
its datagrams carried with `testkit.ikev2_pair.deliver`. Covered: the login
gate (max_connections, connections_per_user, the rate limiter after failed logins, the
reasons "unknown user" and "wrong password"); address allocation (a static address, the
user's last one, the lowest free, an exhausted pool refused with a log line); release on
IkeSaDeleted and IkeSaFailed, and the address following an IKE SA rekey (RFC 7296
§2.18); the users file's changes (a deleted user, a changed password: the IKE SA goes);
group reach (RFC 7296 §2.9 narrowing; a user in no group reaches nothing); the client
rows and `disconnect`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from strongswan import Pki
from test_ikev2_eap import Pool, _client, _server

from conf.model import GroupConfig, RemoteAccessConfig
from conf.users import User, save_users
from daemon.ikev2_ra import _AUTH, IkeRaServer
from ikev2.certs import LocalCredentials, TrustAnchors
from ikev2.config import Identity, RemoteAccessClient
from ikev2.constants import NotifyType
from ikev2.crypto.mschapv2 import nt_password_hash
from ikev2.crypto.rng import DeterministicRandom
from ikev2.endpoint import Endpoint
from ikev2.events import (
    ChildSaFailed,
    ChildSaInstalled,
    Event,
    IkeSaDeleted,
    IkeSaFailed,
    IkeSaRekeyed,
)
from ikev2.ts import TrafficSelector
from testkit.ikev2_pair import deliver, on_wire

IP = ipaddress.IPv4Address
NET = ipaddress.IPv4Network
PASSWORD = "correct horse battery"
NT = nt_password_hash(PASSWORD)


def _users(**extra: User) -> dict[str, User]:
    users = {
        "alice": User("alice", group="staff", nt_hash=NT),
        "bob": User("bob", nt_hash=NT),
        "sam": User("sam", group="staff", static_ip=IP("192.0.2.6"), nt_hash=NT),
    }
    users.update(extra)
    return users


@dataclasses.dataclass
class Client:
    """One client: our initiator and the events it emitted."""

    endpoint: Endpoint
    events: list[Event] = dataclasses.field(default_factory=list)

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def ike_sa_id(self, server: Server) -> int:
        """The server's id of this client's IKE SA (the client holds one)."""
        (sa,) = self.endpoint.ike_sas()
        (found,) = [s for s in server.endpoint.ike_sas() if s.spi_i == sa.spi_i]
        return found.ike_sa_id


class Server:
    """One IkeRaServer on a real responder endpoint, standing in for the gateway as far
    as the server uses it (its endpoint and event loop, no data plane); the server's
    datagrams go to the client at their destination address."""

    plane = None

    def __init__(self, tmp_path: Path, users: dict[str, User] | None = None, **kw: Any) -> None:
        self.path = tmp_path / "laptops.users"
        save_users(self.path, _users() if users is None else users)
        values: dict[str, Any] = {
            "name": "laptops",
            "protocol": "ikev2",
            "client_pool": NET("192.0.2.0/29"),  # server .1, clients .2-.6
            "local_subnets": (NET("203.0.113.0/24"),),
            "users": self.path,
            "address": "vpn.example.net",
        }
        values.update(kw)
        self.now = 1000.0
        self.ra = IkeRaServer(RemoteAccessConfig(**values), clock=lambda: self.now)
        self.pki = Pki()
        server = _server(
            self.pki,
            Pool(),
            nt_hash=self.ra.nt_hash,
            allocate=self.ra.allocate,
            gate=self.ra.gate,
            reach=self.ra.reach,
        )
        if self.ra.config.auth != "password" and server.remote_access is not None:
            server = dataclasses.replace(
                server,
                trust_anchors=TrustAnchors.from_pem(self.pki.chain()[-1]),
                remote_access=dataclasses.replace(
                    server.remote_access,
                    client_auth=_AUTH[self.ra.config.auth],  # type: ignore[arg-type]
                ),
            )
        self.endpoint = Endpoint([server], rng=DeterministicRandom(b"server"))
        self.clients: dict[str, Client] = {}
        self.soon: list[Callable[[], None]] = []
        self.loop = self
        self.ra.attach(self)  # type: ignore[arg-type]

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.soon.append(callback)

    def service(self) -> None:
        """The gateway would send the endpoint's datagrams now; `pump` does."""

    def login(self, user: str, password: str = PASSWORD, *, certificate: bool = False) -> Client:
        """A client from its own address (198.51.100.1N) logs in as `user`: with its
        password (EAP-MSCHAPv2), or with a certificate whose CN is `user` (RFC 7427)."""
        address = f"198.51.100.{11 + len(self.clients)}"
        config = dataclasses.replace(
            _client(self.pki, user, password),
            local_addresses=(address,),
            local_id=Identity.parse(address),
        )
        if certificate:
            cred = self.pki.issue_client(user)
            config = dataclasses.replace(
                config,
                local_id=Identity.parse(cred.dn),
                credentials=LocalCredentials.from_pem(cred.cert_pem, cred.key_pem),
                ra_client=RemoteAccessClient(),
            )
        client = Client(Endpoint([config], rng=DeterministicRandom(address.encode())))
        self.clients[address] = client
        client.endpoint.initiate("conn", 0.0)
        self.pump()
        return client

    def pump(self) -> list[Any]:
        """Exchange messages and hand the server's events to the IkeRaServer (and run
        what it deferred) until nothing moves; the events handed."""
        handed: list[Any] = []
        for _ in range(100):
            moved = False
            for client in self.clients.values():
                client.events.extend(client.endpoint.events())
                for d in client.endpoint.datagrams_to_send(0.0):
                    moved = True
                    deliver(self.endpoint, on_wire(d), d.remote, d.local, 0.0)
            for d in self.endpoint.datagrams_to_send(0.0):
                moved = True
                client = self.clients[d.remote[0]]
                deliver(client.endpoint, on_wire(d), d.remote, d.local, 0.0)
            for event in self.endpoint.events():
                moved = True
                self.ra.on_event(event)
                handed.append(event)
            soon, self.soon = self.soon, []
            for callback in soon:
                moved = True
                callback()
            if not moved:
                return handed
        raise AssertionError("the endpoints never stopped talking")


def _deleted(handed: list[Any]) -> list[str]:
    return [e.reason for e in handed if isinstance(e, IkeSaDeleted)]


def _addresses(server: Server) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for client in server.ra.clients.values():
        out.setdefault(client.user, []).extend(str(a) for a in client.addresses)
    return out


def _refused(client: Client) -> IkeSaFailed:
    (failed,) = client.of(IkeSaFailed)
    return failed


def test_a_login_is_a_client_row_until_disconnect_deletes_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "daemon.ikev2_ra")
    server = Server(tmp_path)
    pair = server.login("alice")
    assert pair.of(ChildSaInstalled)
    assert "laptops: alice connected from 198.51.100.11[4500], virtual address 192.0.2.2" in (
        caplog.text
    )
    (row,) = server.ra.client_rows(server)  # type: ignore[arg-type]
    assert row["user"] == "alice" and row["virtual_ip"] == "192.0.2.2"
    assert row["remote"] == "198.51.100.11:4500" and row["protocol"] == "ikev2"
    assert row["since"].endswith("Z") and (row["bytes_in"], row["bytes_out"]) == (0, 0)
    status = server.ra.status()
    assert (status["clients"], status["handshaking"], status["users"]) == (1, 0, 3)

    assert server.ra.disconnect("bob") == 0
    assert server.ra.disconnect("alice") == 1
    assert _deleted(server.pump()) == ["disconnected by operator"]
    assert pair.of(IkeSaDeleted) and not server.endpoint.ike_sas()
    assert server.ra.clients == {} and server.ra.pool.in_use == 0
    assert server.ra.client_rows(server) == []  # type: ignore[arg-type]
    assert "alice (192.0.2.2) from 198.51.100.11 disconnected: disconnected by operator" in (
        caplog.text
    )


def test_max_connections_and_connections_per_user(tmp_path: Path) -> None:
    server = Server(tmp_path, max_connections=2, connections_per_user=1)
    assert server.login("alice").of(ChildSaInstalled)
    assert _refused(server.login("alice")).notify == NotifyType.AUTHENTICATION_FAILED
    assert server.ra.refusals == {"too many sessions": 1}
    assert server.login("bob").of(ChildSaInstalled)
    server.login("sam")
    assert server.ra.refusals == {"too many sessions": 1, "server full": 1}
    assert _addresses(server) == {"alice": ["192.0.2.2"], "bob": ["192.0.2.3"]}
    assert server.ra.pool.in_use == 2


def test_failed_logins_are_told_apart_and_then_rate_limited(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = Server(tmp_path)
    server.login("mallory")
    assert "login of mallory from 198.51.100.11 refused: unknown user" in caplog.text
    for _ in range(4):  # three typos are free, the fourth closes the door 2 s
        server.login("alice", "wrong horse battery")
    assert server.ra.refusals == {"unknown user": 1, "wrong password": 4}
    # Even the right password waits, from any address.
    server.login("alice")
    assert server.ra.refusals["rate limited"] == 1
    assert server.ra.clients == {} and server.ra.pool.in_use == 0
    server.now += 2.1
    pair = server.login("alice")
    assert pair.of(ChildSaInstalled) and _addresses(server) == {"alice": ["192.0.2.2"]}
    # The success cleared alice's count: one more typo is free again.
    server.login("alice", "wrong horse battery")
    assert server.login("alice").of(ChildSaInstalled)


def test_static_sticky_and_lowest_free_addresses(tmp_path: Path) -> None:
    server = Server(tmp_path)
    sam = server.login("sam")
    alice = server.login("alice")
    bob = server.login("bob")
    assert _addresses(server) == {
        "sam": ["192.0.2.6"],
        "alice": ["192.0.2.2"],
        "bob": ["192.0.2.3"],
    }
    for user in ("alice", "bob"):
        server.ra.disconnect(user)
    assert _deleted(server.pump()) == ["disconnected by operator"] * 2
    assert alice.of(IkeSaDeleted) and bob.of(IkeSaDeleted)
    assert _addresses(server) == {"sam": ["192.0.2.6"]}
    # Bob first: he gets his .3 again, not the lowest free .2.
    server.login("bob")
    assert _addresses(server)["bob"] == ["192.0.2.3"]
    # A second login of sam takes his static address: the older IKE SA goes.
    second = server.login("sam")
    assert second.of(ChildSaInstalled)
    assert sam.of(IkeSaDeleted) and len(server.endpoint.ike_sas()) == 2
    assert _addresses(server) == {"bob": ["192.0.2.3"], "sam": ["192.0.2.6"]}
    assert server.ra.pool.owner(IP("192.0.2.6")) == second.ike_sa_id(server)


def test_an_exhausted_pool_refuses_the_client_and_deletes_its_ike_sa(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "daemon.ikev2_ra")
    server = Server(tmp_path, client_pool=NET("192.0.2.0/30"))  # one client: .2
    server.login("alice")
    pair = server.login("bob")
    (failed,) = pair.of(ChildSaFailed)
    assert failed.notify == NotifyType.INTERNAL_ADDRESS_FAILURE
    assert (
        "laptops: bob from 198.51.100.12 refused: pool exhausted (client pool 192.0.2.0/30, "
        "1 in use)" in caplog.text
    )
    # One line for the refusal (and no "disconnected" for a client that never was).
    mine = [r for r in caplog.records if r.name == "daemon.ikev2_ra" and r.levelno > logging.INFO]
    assert sum("exhausted" in r.getMessage() for r in mine) == 1, caplog.text
    assert "bob (no address) from 198.51.100.12 disconnected" not in caplog.text
    assert server.ra.refusals == {"pool exhausted": 1}
    # Its IKE SA was deleted (with a Delete) and is no client any more.
    assert pair.of(IkeSaDeleted)
    assert _addresses(server) == {"alice": ["192.0.2.2"]}
    assert server.ra.status()["handshaking"] == 0


def test_an_ike_failure_releases_the_address(tmp_path: Path) -> None:
    server = Server(tmp_path)
    # What the core does for a login that got its address and then failed.
    assert server.ra.allocate("alice", 77, 4) == ipaddress.IPv4Interface("192.0.2.2/29")
    assert server.ra.allocate("alice", 77, 6) is None
    server.ra.on_event(IkeSaFailed("laptops", 77, "gone", None, "alice", ("198.51.100.9", 500)))
    assert server.ra.clients == {} and server.ra.pool.in_use == 0
    assert server.ra.refusals == {}  # no refusal word: a failure, not a refusal
    # Another connection's events are not this server's.
    server.ra.allocate("alice", 78, 4)
    server.ra.on_event(IkeSaDeleted("site", 78, "gone", False))
    assert server.ra.pool.in_use == 1


def test_the_address_follows_an_ike_sa_rekey(tmp_path: Path) -> None:
    server = Server(tmp_path)
    pair = server.login("alice")
    old = pair.ike_sa_id(server)
    (client_sa,) = pair.endpoint.ike_sas()
    pair.endpoint.rekey_ike_sa(client_sa.ike_sa_id, 1.0)
    handed = server.pump()
    (rekeyed,) = [e for e in handed if isinstance(e, IkeSaRekeyed)]
    new = rekeyed.new_ike_sa_id
    assert rekeyed.ike_sa_id == old and new != old and pair.ike_sa_id(server) == new
    assert list(server.ra.clients) == [new]
    assert server.ra.pool.owner(IP("192.0.2.2")) == new
    # The old IKE SA's deletion released nothing; the new one's releases the address.
    assert _addresses(server) == {"alice": ["192.0.2.2"]}
    assert server.ra.disconnect("alice") == 1
    assert _deleted(server.pump()) == ["disconnected by operator"]
    assert server.ra.clients == {} and server.ra.pool.in_use == 0


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda users: users.pop("alice"), "user deleted"),
        (
            lambda users: users.update(alice=User("alice", nt_hash=nt_password_hash("new"))),
            "password changed",
        ),
    ],
)
def test_a_users_file_change_deletes_the_ike_sa(tmp_path: Path, change: Any, reason: str) -> None:
    server = Server(tmp_path)
    alice, bob = server.login("alice"), server.login("bob")
    server.ra.poll_users()  # unchanged: nothing happens
    assert not server.pump()
    users = _users()
    change(users)
    save_users(server.path, users)
    server.ra.poll_users()
    assert _deleted(server.pump()) == [reason]
    assert alice.of(IkeSaDeleted) and not bob.of(IkeSaDeleted)
    assert _addresses(server) == {"bob": ["192.0.2.3"]}


def test_group_reach_narrows_and_a_user_in_no_group_reaches_nothing(tmp_path: Path) -> None:
    staff = GroupConfig("staff", (NET("203.0.113.0/26"),))
    server = Server(tmp_path, groups={"staff": staff})
    assert server.ra.reach("alice") == (NET("203.0.113.0/26"),)
    assert server.ra.reach("bob") == () and server.ra.reach("nobody") == ()
    alice = server.login("alice")
    (installed,) = alice.of(ChildSaInstalled)
    assert installed.remote_ts == (TrafficSelector.from_network("203.0.113.0/26"),)
    bob = server.login("bob")
    (failed,) = bob.of(ChildSaFailed)
    assert failed.notify == NotifyType.TS_UNACCEPTABLE
    assert server.ra.refusals == {"policy": 1}
    assert bob.of(IkeSaDeleted) and _addresses(server) == {"alice": ["192.0.2.2"]}
    # Without groups every user reaches local_subnets.
    plain = Server(tmp_path / "plain")
    assert plain.ra.reach("bob") == (NET("203.0.113.0/24"),)


def test_a_certificate_login_is_the_user_of_its_cn_in_the_users_file(tmp_path: Path) -> None:
    staff = GroupConfig("staff", (NET("203.0.113.0/26"),))
    server = Server(tmp_path, auth="any", connections_per_user=1, groups={"staff": staff})
    (installed,) = server.login("alice", certificate=True).of(ChildSaInstalled)
    # The CN names the user: alice's group narrows, the users file's limits apply.
    assert installed.remote_ts == (TrafficSelector.from_network("203.0.113.0/26"),)
    assert _addresses(server) == {"alice": ["192.0.2.2"]}
    again = _refused(server.login("alice", certificate=True))
    assert again.notify == NotifyType.AUTHENTICATION_FAILED
    # A certificate of the client CA for a user the users file does not list.
    mallory = _refused(server.login("mallory", certificate=True))
    assert mallory.notify == NotifyType.AUTHENTICATION_FAILED
    assert server.ra.refusals == {"too many sessions": 1, "unknown user": 1}
    assert _addresses(server) == {"alice": ["192.0.2.2"]}
    # A password login beside it, on the same server.
    assert server.login("sam").of(ChildSaInstalled)
    assert _addresses(server) == {"alice": ["192.0.2.2"], "sam": ["192.0.2.6"]}


def test_a_certificate_clients_user_is_its_cn() -> None:
    from daemon.ikev2_ra import _cert_user

    assert _cert_user("C=CH, O=Example, CN=carol@example.net") == "carol@example.net"
    assert _cert_user("carol@example.net") == "carol@example.net"

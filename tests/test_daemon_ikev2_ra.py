"""The IKEv2 remote-access server's decisions in memory (`daemon.ikev2_ra`).

An `IkeRaServer` answers the callbacks of a real responder (test_ikev2_eap's server
connection) and follows its events; each client is our initiator with its own address,
its datagrams carried with `testkit.ikev2_pair.deliver`. Covered: the login
gate (max_connections, connections_per_user, the rate limiter after failed logins, the
reasons "unknown user" and "wrong password"; a restarted client's INITIAL_CONTACT login
is not refused by the session it replaces); address allocation (a static address, the
user's last one, the lowest free, an exhausted pool refused with a log line; the same
from client_pool6 for INTERNAL_IP6_ADDRESS, alone or dual-stack); release on
IkeSaDeleted and IkeSaFailed, and the address following an IKE SA rekey (RFC 7296
§2.18); the users file's changes (a deleted user, a changed password: the IKE SA goes);
group reach (RFC 7296 §2.9 narrowing; a user in no group reaches nothing); the client
rows and `disconnect`; a client that moved with MOBIKE (its row, the log line, and its
reconnect from the new address replacing the IKE SA that followed it); a reload's
changed section (`plan_change`, `reconfigure`): live keys, a new pool, lost and gained
access, a restart.
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

from conf.model import Config, GatewayConfig, GroupConfig, RemoteAccessConfig
from conf.users import User, save_users
from daemon.ikev2_ra import _AUTH, IkeRaServer, RaChange, plan_change
from ikev2.certs import LocalCredentials, TrustAnchors
from ikev2.config import ConfigError, Identity, RemoteAccessClient
from ikev2.constants import NotifyType
from ikev2.crypto.mschapv2 import nt_password_hash
from ikev2.crypto.rng import DeterministicRandom
from ikev2.endpoint import Endpoint
from ikev2.events import (
    ChildSaFailed,
    ChildSaInstalled,
    Event,
    IkeSaAddressChanged,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
    VirtualIpAssigned,
)
from ikev2.ts import TrafficSelector
from testkit.eap_login import Pool, eap_client, eap_server
from testkit.ikev2_pair import deliver, on_wire
from testkit.mobike import Update, move, offer_mobike

IP = ipaddress.IPv4Address
NET = ipaddress.IPv4Network
PASSWORD = "correct horse battery"
NT = nt_password_hash(PASSWORD)
LOCAL6 = "2001:db8:1::/64"


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
        server = eap_server(
            self.pki,
            Pool(),
            nt_hash=self.ra.nt_hash,
            allocate=self.ra.allocate,
            gate=self.ra.gate,
            reach=self.ra.reach,
        )
        if self.ra.config.client_pool6 is not None:
            # Dual-stack: our side carries the IPv6 local subnet too.
            (only,) = server.children
            dual = dataclasses.replace(
                only,
                local_ts=(*only.local_ts, TrafficSelector.from_network(LOCAL6)),
                remote_ts=(*only.remote_ts, TrafficSelector.from_network("::/0")),
            )
            server = dataclasses.replace(server, children=(dual,))
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

    def login(
        self,
        user: str,
        password: str = PASSWORD,
        *,
        address: str = "",
        mobike: bool = False,
        certificate: bool = False,
        initial_contact: bool = True,
        **ask: bool,
    ) -> Client:
        """A client from its own address (198.51.100.1N, or `address`) logs in as
        `user`: with its password (EAP-MSCHAPv2), or with a certificate whose CN is
        `user` (RFC 7427); with INITIAL_CONTACT unless told not to (a fresh client
        sends it, RFC 7296 §2.4); offering MOBIKE (RFC 4555) if asked to (`ask`: request_ip4,
        request_ip6 of its CFG_REQUEST)."""
        address = address or f"198.51.100.{11 + len(self.clients)}"
        config = dataclasses.replace(
            eap_client(self.pki, user, password, **ask),
            local_addresses=(address,),
            local_id=Identity.parse(address),
            initial_contact=initial_contact,
        )
        if ask.get("request_ip6"):
            (only,) = config.children
            ours = () if ask.get("request_ip4") is False else only.local_ts
            theirs = () if ask.get("request_ip4") is False else only.remote_ts
            dual = dataclasses.replace(
                only,
                local_ts=(*ours, TrafficSelector.from_network("::/0")),
                remote_ts=(*theirs, TrafficSelector.from_network(LOCAL6)),
            )
            config = dataclasses.replace(config, children=(dual,))
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
        if mobike:
            offer_mobike(client.endpoint.ike_sas()[0])
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


@pytest.mark.parametrize("certificate", [False, True])
def test_a_restarted_client_with_initial_contact_is_not_refused_by_its_stale_session(
    tmp_path: Path, certificate: bool
) -> None:
    server = Server(tmp_path, auth="any", max_connections=2, connections_per_user=1)
    home = "198.51.100.11"
    assert server.login("alice", address=home, certificate=certificate).of(ChildSaInstalled)
    (stale,) = server.endpoint.ike_sas()
    # Without INITIAL_CONTACT a second login of alice is another session: refused.
    _refused(server.login("alice", address=home, certificate=certificate, initial_contact=False))
    # From elsewhere with INITIAL_CONTACT, it replaces nothing (§2.4 speaks for one
    # address), so her session counts: refused too.
    _refused(server.login("alice", address="198.51.100.12", certificate=certificate))
    assert server.ra.refusals == {"too many sessions": 2}
    # bob fills the server; sam finds it full.
    assert server.login("bob", address="198.51.100.13").of(ChildSaInstalled)
    _refused(server.login("sam", address="198.51.100.14"))
    assert server.ra.refusals == {"too many sessions": 2, "server full": 1}
    # alice's client restarted (no Delete) and logs in again from its address with
    # INITIAL_CONTACT: the session it replaces counts against neither limit.
    again = server.login("alice", address=home, certificate=certificate)
    assert again.of(ChildSaInstalled)
    assert server.ra.refusals == {"too many sessions": 2, "server full": 1}
    assert stale not in server.endpoint.ike_sas()
    assert sorted(sa.remote[0] for sa in server.endpoint.ike_sas()) == [home, "198.51.100.13"]
    assert sorted(c.user for c in server.ra.clients.values()) == ["alice", "bob"]
    # The stale session's address went back to the pool with it.
    assert server.ra.pool.in_use == 2 and len(_addresses(server)["alice"]) == 1


@pytest.mark.parametrize("certificate", [False, True])
def test_a_restarted_client_gets_its_address_back_from_a_full_pool(
    tmp_path: Path, certificate: bool
) -> None:
    # 192.0.2.0/30: the server has .1, one client .2.
    server = Server(tmp_path, auth="any", client_pool=NET("192.0.2.0/30"))
    home = "198.51.100.11"
    first = server.login("alice", address=home, certificate=certificate)
    assert first.of(ChildSaInstalled) and _addresses(server) == {"alice": ["192.0.2.2"]}
    # Without INITIAL_CONTACT, a second session finds the pool full.
    second = server.login("alice", address=home, certificate=certificate, initial_contact=False)
    (failed,) = second.of(ChildSaFailed)
    assert failed.notify == NotifyType.INTERNAL_ADDRESS_FAILURE and second.of(IkeSaDeleted)
    assert server.ra.refusals == {"pool exhausted": 1}
    # The client restarted (no Delete) and logs in again with INITIAL_CONTACT: the
    # address of the session it replaces is its own (RFC 7296 §2.4).
    again = server.login("alice", address=home, certificate=certificate)
    assert again.of(ChildSaInstalled)
    assert server.ra.refusals == {"pool exhausted": 1}
    assert _addresses(server) == {"alice": ["192.0.2.2"]}
    assert server.ra.pool.owner(IP("192.0.2.2")) == again.ike_sa_id(server)
    assert first.of(IkeSaDeleted) or len(server.endpoint.ike_sas()) == 1
    assert [sa.remote[0] for sa in server.endpoint.ike_sas()] == [home]
    # The stale session's end leaves the new lease alone.
    server.pump()
    assert server.ra.pool.owner(IP("192.0.2.2")) == again.ike_sa_id(server)
    assert server.ra.pool.in_use == 1


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
        "laptops: bob from 198.51.100.12 refused: pool exhausted (client pool 192.0.2.0/30 "
        "exhausted (1 in use))" in caplog.text
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


POOL6 = ipaddress.IPv6Network("2001:db8:c::/64")


def test_dual_stack_clients_get_an_address_of_each_family(tmp_path: Path) -> None:
    users = _users(lee=User("lee", static_ip=ipaddress.IPv6Address("2001:db8:c::99"), nt_hash=NT))
    subnets = (NET("203.0.113.0/24"), ipaddress.IPv6Network(LOCAL6))
    server = Server(tmp_path, users, client_pool6=POOL6, local_subnets=subnets)
    alice = server.login("alice", request_ip6=True)
    assert alice.of(ChildSaInstalled)
    (got,) = alice.of(VirtualIpAssigned)
    # The IPv6 address carries the pool's prefix length (RFC 7296 §3.15.1).
    assert got.addresses == ("192.0.2.2/29", "2001:db8:c::2/64")
    # Only IPv4 asked for: no IPv6 address is taken from the pool.
    server.login("bob")
    v6only = server.login("sam", request_ip4=False, request_ip6=True)
    (got,) = v6only.of(VirtualIpAssigned)
    assert got.addresses == ("2001:db8:c::3/64",)
    # Its CHILD SA is narrowed to its address and the IPv6 local subnet (RFC 7296 §2.9),
    # which is what the ESP data plane lets through from it (anti-spoofing).
    (installed,) = v6only.of(ChildSaInstalled)
    assert installed.local_ts == (TrafficSelector.from_network("2001:db8:c::3/128"),)
    assert installed.remote_ts == (TrafficSelector.from_network(LOCAL6),)
    # An IPv6 static address is its user's, whichever client asks first.
    server.login("lee", request_ip6=True)
    assert _addresses(server) == {
        "alice": ["192.0.2.2", "2001:db8:c::2"],
        "bob": ["192.0.2.3"],
        "sam": ["2001:db8:c::3"],
        "lee": ["192.0.2.4", "2001:db8:c::99"],
    }
    assert server.ra.status()["pool"] == "192.0.2.0/29, 2001:db8:c::/64"
    # Sticky like IPv4: sam comes back to his 2001:db8:c::3, not the lowest free one.
    for user in ("alice", "sam"):
        server.ra.disconnect(user)
    assert _deleted(server.pump()) == ["disconnected by operator"] * 2
    assert server.ra.pool6 is not None and server.ra.pool6.in_use == 1
    server.login("sam", request_ip6=True)
    assert _addresses(server)["sam"] == ["192.0.2.6", "2001:db8:c::3"]  # .6: his static


def test_an_ipv6_request_without_client_pool6_gets_no_address(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = Server(tmp_path)
    dual = server.login("alice", request_ip6=True)
    (got,) = dual.of(VirtualIpAssigned)
    assert got.addresses == ("192.0.2.2/29",)
    v6only = server.login("bob", request_ip4=False, request_ip6=True)
    (failed,) = v6only.of(ChildSaFailed)
    assert failed.notify == NotifyType.INTERNAL_ADDRESS_FAILURE
    assert "client pool 192.0.2.0/29 has room (1 in use)" in caplog.text
    assert server.ra.refusals == {"pool exhausted": 1}


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


def test_a_group_change_in_the_users_file_ends_the_clients_that_reach_less(
    tmp_path: Path,
) -> None:
    staff = GroupConfig("staff", (NET("203.0.113.0/25"),))
    everyone = GroupConfig("everyone", (NET("203.0.113.0/24"),))
    guests = GroupConfig("guests", (NET("203.0.113.0/28"),))
    groups = {"staff": staff, "everyone": everyone, "guests": guests}
    server = Server(tmp_path, groups=groups)
    alice, sam = server.login("alice"), server.login("sam")  # both staff
    # sam moves to a group that reaches more: his tunnel stays, the rest waits for his
    # next login; alice moves to one that reaches less: her IKE SA goes at once.
    users = _users()
    users["sam"] = dataclasses.replace(users["sam"], group="everyone")
    users["alice"] = dataclasses.replace(users["alice"], group="guests")
    save_users(server.path, users)
    server.ra.poll_users()
    assert _deleted(server.pump()) == ["access to 203.0.113.0/25 removed by the users file"]
    assert alice.of(IkeSaDeleted) and not sam.of(IkeSaDeleted)
    again = server.login("alice")
    (installed,) = again.of(ChildSaInstalled)
    assert installed.remote_ts == (TrafficSelector.from_network("203.0.113.0/28"),)


def test_a_user_added_a_moment_ago_logs_in_before_the_next_poll(tmp_path: Path) -> None:
    server = Server(tmp_path)
    save_users(server.path, _users(carol=User("carol", nt_hash=NT)))
    # No poll_users() in between, as when the login comes before the housekeeping's.
    carol = server.login("carol")
    assert carol.of(IkeSaEstablished) and not carol.of(IkeSaFailed)
    assert "carol" in _addresses(server)


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


def test_a_client_that_moves_keeps_its_row_at_the_new_address(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "daemon.ikev2_ra")
    server = Server(tmp_path)
    server.login("alice")
    ike_sa_id = next(iter(server.ra.clients))
    # MOBIKE (RFC 4555 §3.5): the IKE core moved the SA; the row follows it.
    server.ra.on_event(
        IkeSaAddressChanged(
            "laptops",
            ike_sa_id,
            ("198.51.100.2", 4500),
            ("198.51.100.11", 4500),
            ("198.51.100.2", 4500),
            ("198.51.100.42", 4500),
            mobike=True,
        )
    )
    (row,) = server.ra.client_rows(server)  # type: ignore[arg-type]
    assert row["remote"] == "198.51.100.42:4500" and row["user"] == "alice"
    assert (
        "laptops: client alice moved from 198.51.100.11[4500] to 198.51.100.42[4500] (MOBIKE)"
        in caplog.text
    )
    assert server.ra.clients[ike_sa_id].addresses == [ipaddress.IPv4Address("192.0.2.2")]


def test_a_client_that_moved_and_reconnects_replaces_the_ike_sa_that_followed_it(
    tmp_path: Path,
) -> None:
    server = Server(tmp_path)
    phone = server.login("alice", mobike=True)
    (old,) = server.endpoint.ike_sas()
    assert old.mobike
    # Wi-Fi to LTE: the same IKE SA moves to the phone's new address (RFC 4555 §3.5).
    server.clients["198.51.100.42"] = phone
    move(phone.endpoint.ike_sas()[0], "198.51.100.42", Update(), 0.0)
    server.pump()
    assert old.remote[0] == "198.51.100.42"
    # The app restarts there and logs in again with INITIAL_CONTACT: the old IKE SA goes.
    again = server.login("alice", address="198.51.100.42")
    assert again.of(ChildSaInstalled)
    assert [sa.remote[0] for sa in server.endpoint.ike_sas()] == ["198.51.100.42"]
    assert server.endpoint.ike_sas()[0] is not old


def test_a_refused_certificate_is_logged_with_what_was_wrong(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "daemon.ikev2_ra")
    server = Server(tmp_path)
    why = "EAP-TLS: client certificate refused: certificate of alice expired on 2026-01-01"
    # More refusals than the per-user rate limit lets pass for wrong passwords.
    for _ in range(5):
        server.ra.on_event(
            IkeSaFailed(
                "laptops",
                7,
                why,
                NotifyType.AUTHENTICATION_FAILED,
                "alice",
                ("198.51.100.9", 4500),
                "certificate refused",
            )
        )
    # The log line says which certificate and why; the counter keeps the words, so
    # certificates with ever new names cannot grow it.
    assert f"login of alice from 198.51.100.9 refused: {why}" in caplog.text
    assert server.ra.refusals == {"certificate refused": 5}
    # Not a password guess: the rate limits stay open for the name and the address.
    assert server.ra.gate("alice", "198.51.100.9") is None


# -- reload ---------------------------------------------------------------------------


def _reconfigured(server: Server, **changes: Any) -> tuple[RaChange, list[str]]:
    """Apply a reloaded section with `changes`; the reasons of the IKE SAs deleted."""
    new = dataclasses.replace(server.ra.config, **changes)
    change = plan_change(server.ra.config, new)
    server.ra.reconfigure(new, change)
    return change, sorted(_deleted(server.pump()))


def test_a_reload_sorts_the_changed_keys_into_live_pool_and_restart(tmp_path: Path) -> None:
    old = Server(tmp_path).ra.config
    change = plan_change(
        old,
        dataclasses.replace(
            old,
            dns=(IP("203.0.113.54"),),
            max_connections=7,
            client_pool6=ipaddress.IPv6Network("2001:db8:c::/64"),
            client_ca=tmp_path / "ca.pem",
        ),
    )
    assert change == RaChange(
        restart=("client_ca",), live=("dns", "max_connections"), pools=("client_pool6",)
    )
    assert not plan_change(old, dataclasses.replace(old)).changed


def test_live_keys_keep_the_clients_and_apply_to_the_next_login(tmp_path: Path) -> None:
    server = Server(tmp_path)
    server.login("alice")
    change, deleted = _reconfigured(server, dns=(IP("203.0.113.54"),), connections_per_user=1)
    assert change.live == ("dns", "connections_per_user") and deleted == []
    assert _addresses(server) == {"alice": ["192.0.2.2"]}
    # The new limit holds at the next login; the client logged in stays.
    assert _refused(server.login("alice")).notify == NotifyType.AUTHENTICATION_FAILED
    assert server.ra.refusals == {"too many sessions": 1}


def test_a_new_pool_keeps_the_clients_that_fit_and_ends_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "daemon.ikev2_ra")
    server = Server(tmp_path)
    alice, bob = server.login("alice"), server.login("bob")
    _, deleted = _reconfigured(server, client_pool=NET("192.0.2.0/30"))  # .2 only
    assert deleted == ["its address 192.0.2.3 is not in the new client_pool"]
    assert bob.of(IkeSaDeleted) and not alice.of(IkeSaDeleted)
    assert _addresses(server) == {"alice": ["192.0.2.2"]}
    assert server.ra.pool.network == NET("192.0.2.0/30")
    assert server.ra.pool.owner(IP("192.0.2.2")) == alice.ike_sa_id(server)
    assert "new pool client_pool; 1 client(s) disconnected" in caplog.text
    # The new pool is full with alice in it.
    server.login("sam")
    assert server.ra.refusals == {"pool exhausted": 1}


def test_a_removed_client_pool6_ends_the_clients_with_an_ipv6_address(tmp_path: Path) -> None:
    subnets = (NET("203.0.113.0/24"), ipaddress.IPv6Network(LOCAL6))
    server = Server(tmp_path, client_pool6=POOL6, local_subnets=subnets)
    server.login("alice", request_ip6=True)
    server.login("bob")
    _, deleted = _reconfigured(server, client_pool6=None)
    assert deleted == ["its address 2001:db8:c::2 is not in the new client_pool6"]
    assert _addresses(server) == {"bob": ["192.0.2.3"]} and server.ra.pool6 is None


def test_lost_access_ends_the_clients_and_gained_access_waits_for_their_next_login(
    tmp_path: Path,
) -> None:
    staff = GroupConfig("staff", (NET("203.0.113.0/25"),))
    server = Server(tmp_path, groups={"staff": staff})
    alice, sam = server.login("alice"), server.login("sam")  # both staff
    wider = GroupConfig("staff", (NET("203.0.113.0/24"),))
    _, deleted = _reconfigured(server, groups={"staff": wider})
    assert deleted == [] and not alice.of(IkeSaDeleted)
    narrower = GroupConfig("staff", (NET("203.0.113.0/26"),))
    _, deleted = _reconfigured(server, groups={"staff": narrower})
    assert deleted == ["access to 203.0.113.0/24 removed by a reload"] * 2
    assert alice.of(IkeSaDeleted) and sam.of(IkeSaDeleted)
    # Logging in again gets the narrower reach.
    again = server.login("alice")
    (installed,) = again.of(ChildSaInstalled)
    assert installed.remote_ts == (TrafficSelector.from_network("203.0.113.0/26"),)


def test_a_change_of_who_may_log_in_restarts_the_server(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "daemon.ikev2_ra")
    server = Server(tmp_path)
    server.login("alice")
    server.login("bob")
    other = tmp_path / "other.users"
    save_users(other, {"bob": User("bob", nt_hash=NT)})
    change, deleted = _reconfigured(server, users=other, dns=(IP("203.0.113.54"),))
    assert change.restart == ("users",)
    assert deleted == ["server restarted by a reload (users changed)"] * 2
    assert server.ra.clients == {} and server.ra.pool.in_use == 0
    assert "restarted for users; applied dns; 2 client(s) disconnected" in caplog.text
    # The new users file is the one asked.
    assert server.ra.nt_hash("alice") is None and server.ra.nt_hash("bob") == NT


class ReloadGateway:
    """What `daemon.reload._reload_ikev2_server` uses of the gateway."""

    endpoint = None
    loop = None

    def __init__(self, server: IkeRaServer | None) -> None:
        self.ikev2_ra = server
        self.connection: object = None

    def use_ikev2_ra(self, server: IkeRaServer | None, connection: object) -> None:
        self.ikev2_ra, self.connection = server, connection


def _config(*sections: RemoteAccessConfig) -> Config:
    gateway = GatewayConfig(addresses=(), id="gw", interface="lg0")
    return Config(gateway, {}, {}, remote_access={s.name: s for s in sections})


def test_a_reload_adds_removes_renames_and_changes_the_ikev2_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from daemon.reload import _reload_ikev2_server

    def connection(self: IkeRaServer, config: Config, section: Any = None) -> str:
        ra = section or self.config
        if ra.address == "bad.example.net":
            raise ConfigError("remote_access.laptops: a certificate that cannot be read")
        return f"conn {ra.name} dns {','.join(map(str, ra.dns))}"

    monkeypatch.setattr(IkeRaServer, "connection", connection)
    section = Server(tmp_path).ra.config
    gateway = ReloadGateway(None)
    ssl = dataclasses.replace(section, name="office", protocol="ssl")
    assert _reload_ikev2_server(gateway, _config(ssl)) == ""  # type: ignore[arg-type]
    assert gateway.ikev2_ra is None
    # Added.
    words = _reload_ikev2_server(gateway, _config(section, ssl))  # type: ignore[arg-type]
    server = gateway.ikev2_ra
    assert words == "; ikev2 server laptops added" and server is not None
    assert gateway.connection == "conn laptops dns "
    # Unchanged: the same server; changed: the same server, reconfigured.
    assert _reload_ikev2_server(gateway, _config(section)) == ""  # type: ignore[arg-type]
    changed = dataclasses.replace(section, dns=(IP("203.0.113.54"),))
    words = _reload_ikev2_server(gateway, _config(changed))  # type: ignore[arg-type]
    assert words == "; ikev2 server laptops changed (0 client(s) disconnected)"
    assert gateway.ikev2_ra is server and server.config == changed
    assert gateway.connection == "conn laptops dns 203.0.113.54"
    # A section the core cannot use changes nothing.
    bad = dataclasses.replace(changed, address="bad.example.net", max_connections=3)
    with pytest.raises(ConfigError):
        _reload_ikev2_server(gateway, _config(bad))  # type: ignore[arg-type]
    assert server.config == changed and gateway.connection == "conn laptops dns 203.0.113.54"
    # Renamed: the old one goes, a new one comes.
    renamed = dataclasses.replace(changed, name="phones")
    words = _reload_ikev2_server(gateway, _config(renamed))  # type: ignore[arg-type]
    assert words == (
        "; ikev2 server laptops removed (0 client(s) disconnected); ikev2 server phones added"
    )
    assert gateway.ikev2_ra is not None and gateway.ikev2_ra.name == "phones"
    # Removed.
    words = _reload_ikev2_server(gateway, _config())  # type: ignore[arg-type]
    assert words == "; ikev2 server phones removed (0 client(s) disconnected)"
    assert gateway.ikev2_ra is None and gateway.connection is None

"""The gateway's bookkeeping without root: events in, data plane and status out.

The gateway is assembled by hand around an in-memory TUN (no sockets, no netlink,
no routes), so these run anywhere; the namespace tests run the real thing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import itertools
import logging
import os
import random
import socket
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import daemon.gateway as gateway_module
from conf import ConfigError, Problem, loads_config
from conf.ike import ike_connections
from conf.load import load_config
from daemon.childsa import entry_from_event
from daemon.control import ControlError
from daemon.dataplane import DataPlane
from daemon.diagnosis import explain
from daemon.gateway import Gateway
from daemon.ike import KEY_POOL_IDLE
from daemon.netlink import LocalAddresses
from daemon.peers import (
    CHILD_RESTART_DELAYS,
    CHILD_RESTART_WINDOW,
    RETRY_DELAYS,
    PeerChange,
    peer_change,
)
from daemon.routes import _network_of, forwarding_off
from daemon.status import format_status
from ikev2.codec import decode_header
from ikev2.config import ConnectionConfig as PeerConfig
from ikev2.events import (
    ChildSaDeleted,
    ChildSaFailed,
    ChildSaInstalled,
    DeleteCause,
    IkeSaAddressChanged,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
)
from ikev2.sa_types import Datagram, IkeSaState
from ikev2.ts import TrafficSelector as IkeTs
from testkit.daemon import memory_gateway
from testkit.dataplane import NoTransport, echo_request, events, ipv4
from testkit.ikev2_pair import Pair, child, connection, mirrored
from tun import LinkError

CONFIG = """
[gateway]
addresses = ["198.51.100.1"]
id = "198.51.100.1"

[peers.main]
address = "198.51.100.2"
psk = "gateway-test-psk-NOT-SECRET-0123"

[peers.spare]
address = "198.51.100.3"
psk = "gateway-test-psk-NOT-SECRET-4567"

[connections.site]
peer = "main"
local_subnets = ["192.0.2.0/24", "2001:db8:a::/64"]
remote_subnets = ["203.0.113.0/24", "2001:db8:b::/64"]
start = "wait"

[connections.spare-net]
peer = "spare"
local_subnets = ["192.0.2.0/25"]
remote_subnets = ["198.51.100.128/25"]
start = "wait"
"""


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    path = tmp_path / "gw.toml"
    path.write_text(CONFIG)
    with memory_gateway(path) as gw:
        yield gw


def established(peer: str = "main", ike_sa_id: int = 7) -> IkeSaEstablished:
    return IkeSaEstablished(
        connection=peer,
        ike_sa_id=ike_sa_id,
        initiator=True,
        spi_i=1,
        spi_r=2,
        local=("198.51.100.1", 500),
        remote=("198.51.100.2", 500),
        local_id="198.51.100.1",
        remote_id="198.51.100.2",
        suite="aes256gcm16-prfsha384-x25519",
        nat_local=False,
        nat_remote=False,
    )


def test_child_sa_events_install_and_remove_and_show_in_status(gateway: Gateway) -> None:
    [conn, _spare] = gateway.status()["connections"]
    assert conn["name"] == "site" and conn["state"] == "waiting for the peer"
    installed = dataclasses.replace(events("aes256gcm16", udp=False)[0], connection="main")
    gateway._handle_event(established())
    gateway._handle_event(installed)
    status = gateway.status()
    [conn, _spare] = status["connections"]
    assert conn["state"] == "up"
    assert conn["ike_sas"][0]["suite"] == "aes256gcm16-prfsha384-x25519"
    [sa] = status["sas"]
    assert sa["connection"] == "site" and sa["peer"] == "main"
    assert sa["suite"] == "aes256gcm16" and sa["encap"] == "esp"
    assert gateway.pump is not None
    assert installed.spi_in in gateway.plane.sad
    gateway._handle_event(
        ChildSaDeleted("main", "site", installed.unique_id, 7, installed.spi_in, 1, "test")
    )
    assert gateway.status()["sas"] == []
    # Packets already on their way are still decrypted for a moment, then not.
    assert installed.spi_in in gateway.plane.sad
    gateway.plane._clock = lambda: time.monotonic() + 60
    assert gateway.plane.expire_lingering() == 1
    assert installed.spi_in not in gateway.plane.sad


def _record_deletes(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[str, int, str]]:
    """What the IKE endpoint is asked to delete: ("child", unique id, reason) or
    ("ike", IKE SA id, reason)."""
    deleted: list[tuple[str, int, str]] = []
    assert gateway.endpoint is not None
    monkeypatch.setattr(
        gateway.endpoint,
        "delete_child",
        lambda unique_id, now, reason: deleted.append(("child", unique_id, reason)),
    )
    monkeypatch.setattr(
        gateway.endpoint,
        "delete",
        lambda ike_sa_id, now, reason: deleted.append(("ike", ike_sa_id, reason)),
    )
    return deleted


def test_a_child_sa_the_data_plane_refuses_is_deleted_not_left_half_up(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    deleted = _record_deletes(gateway, monkeypatch)
    gateway._handle_event(established())
    bad = dataclasses.replace(
        events("aes256gcm16", udp=False)[0], connection="main", encr_key_in=b"short"
    )
    loop = asyncio.new_event_loop()
    try:
        waiter: asyncio.Future[str] = loop.create_future()
        gateway.connections["site"].waiters.append(waiter)
        gateway._handle_event(bad)
        # Not in the data plane, deleted under its IKE SA so the peer drops its side,
        # and `lockgate up`, `status` and `explain` say why.
        assert bad.spi_in not in gateway.plane.sad and gateway.status()["sas"] == []
        [(kind, unique_id, reason)] = deleted
        assert (kind, unique_id) == ("child", bad.unique_id)
        assert reason.startswith(f"the data plane refused CHILD SA #{bad.unique_id}: ")
        with pytest.raises(ControlError, match="the data plane refused"):
            waiter.result()
    finally:
        loop.close()
    [conn, _spare] = gateway.status()["connections"]
    assert conn["state"] != "up" and conn["last_error"] == reason
    assert gateway.diagnosis.failures["site"].summary == reason
    assert reason in explain(gateway, "site")["text"]
    # start = "wait": the peer decides when to try again.
    assert gateway.connections["site"].restart is None


def test_an_initiate_connection_asks_again_after_a_refused_child_sa(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    deleted = _record_deletes(gateway, monkeypatch)
    ike = types.SimpleNamespace(state=IkeSaState.ESTABLISHED)
    monkeypatch.setattr(gateway, "established_ike_sa", lambda peer: ike)
    requested: list[str] = []
    monkeypatch.setattr(gateway, "create_child", lambda state, sa: requested.append(state.name))
    timers = Timers()
    gateway.loop = timers  # type: ignore[assignment]
    state = gateway.connections["site"]
    state.config = dataclasses.replace(state.config, start="initiate")
    state.wanted = True
    gateway._handle_event(established())
    bad = dataclasses.replace(
        events("aes256gcm16", udp=False)[0], connection="main", encr_key_in=b"short"
    )
    caplog.set_level(logging.INFO, "daemon.peers")
    gateway._handle_event(bad)
    assert [d[0] for d in deleted] == ["child"]
    # New keys and SPIs may well be taken: asked again after the peer-delete delay.
    assert timers.fire() == [CHILD_RESTART_DELAYS[0]] and requested == ["site"]
    assert f"the data plane refused CHILD SA #{bad.unique_id}; start = " in caplog.text
    # Refused again: asked more slowly, not in a loop.
    gateway._handle_event(dataclasses.replace(bad, unique_id=bad.unique_id + 1))
    assert timers.fire() == [CHILD_RESTART_DELAYS[1]]


def test_a_remote_access_client_whose_child_sa_is_refused_loses_its_ike_sa(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    deleted = _record_deletes(gateway, monkeypatch)
    client = dataclasses.replace(
        events("aes256gcm16", udp=False)[0], connection="laptops", child="laptops",
        ike_sa_id=41, encr_key_in=b"short",
    )  # fmt: skip
    gateway._handle_event(client)
    [(kind, ike_sa_id, reason)] = deleted
    assert (kind, ike_sa_id) == ("ike", 41) and "the data plane refused" in reason


def test_a_child_sa_a_worker_refuses_is_deleted_with_its_shadow_and_routes(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    deleted = _record_deletes(gateway, monkeypatch)
    serviced: list[int] = []
    monkeypatch.setattr(gateway, "service", lambda: serviced.append(len(deleted)))
    gateway._handle_event(established())
    installed = dataclasses.replace(events("aes256gcm16", udp=False)[0], connection="main")
    gateway._handle_event(installed)
    assert gateway.status()["connections"][0]["state"] == "up"
    serviced.clear()
    gateway._on_install_failed(1, installed.unique_id, "bad key")
    assert installed.unique_id not in gateway.plane.entries
    assert installed.spi_in not in gateway.plane.sad  # no linger: it never carried
    assert deleted == [
        ("child", installed.unique_id,
         f"the data plane refused CHILD SA #{installed.unique_id}: worker 1: bad key")
    ]  # fmt: skip
    # Outside the IKE driver's service: the Delete is sent at once, not with the next
    # IKE packet.
    assert serviced == [1]
    [conn, _spare] = gateway.status()["connections"]
    assert conn["state"] != "up" and "worker 1: bad key" in conn["last_error"]
    # A report for an SA that is gone meanwhile changes nothing.
    gateway._on_install_failed(1, installed.unique_id, "bad key")
    assert len(deleted) == 1


def test_ike_failure_is_reported_on_its_connections(gateway: Gateway) -> None:
    gateway._handle_event(IkeSaFailed("main", 3, "peer's PSK does not match ours", 24))
    by_name = {c["name"]: c for c in gateway.status()["connections"]}
    assert by_name["site"]["last_error"] == "peer's PSK does not match ours"
    assert by_name["spare-net"]["last_error"] == ""


def test_reload_touches_only_the_changed_peer(gateway: Gateway, tmp_path: Path) -> None:
    main_before = gateway.peers["main"]
    spare_before = gateway.peers["spare"]
    (tmp_path / "gw.toml").write_text(CONFIG.replace("198.51.100.128/25", "198.51.100.192/26"))
    summary = gateway.reload()
    assert summary == "reloaded: peers 0 added, 1 changed, 0 removed, 1 unchanged"
    assert gateway.status_summary()["reloads"] == 1  # what a client that sent SIGHUP polls
    assert gateway.peers["main"] is main_before
    # New selectors are applied under the peer's IKE SA: the peer is updated in place.
    assert gateway.peers["spare"] is spare_before
    assert gateway.peers["spare"].config.children[0].remote_ts == (
        IkeTs.from_network("198.51.100.192/26"),
    )
    assert [str(ts) for ts in gateway.connections["spare-net"].config.remote_ts] == [
        "198.51.100.192/26"
    ]
    # A broken file changes nothing and says why.
    (tmp_path / "gw.toml").write_text(CONFIG + "bogus = 1\n")
    with pytest.raises(ControlError, match="bogus"):
        gateway.reload()
    assert gateway.peers["main"] is main_before
    assert gateway.status_summary()["reloads"] == 2  # a failed reload has run as well


def test_control_requests(gateway: Gateway) -> None:
    async def ask(**request: str) -> object:
        return await gateway._handle_request(request)

    with pytest.raises(ControlError, match="no connection named 'nope'"):
        asyncio.run(ask(command="up", name="nope"))
    with pytest.raises(ControlError, match="no CHILD SA to rekey"):
        asyncio.run(ask(command="rekey", name="site"))
    with pytest.raises(ControlError, match="unknown command"):
        asyncio.run(ask(command="explode"))
    answer = asyncio.run(ask(command="down", name="site"))
    assert answer == "connection site: deleted (and 0 IKE SA(s) with main)"
    assert gateway.connections["site"].wanted is False
    assert isinstance(asyncio.run(ask(command="status")), dict)
    assert asyncio.run(ask(command="clients")) == []
    with pytest.raises(ControlError, match="no remote access server named 'office'"):
        asyncio.run(ask(command="disconnect", server="office", user="alice"))


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        ({"command": "rekey", "name": "site", "ike": "yes"}, "ike must be true or false"),
        ({"command": "status", "summary": 1}, "summary must be true or false"),
        ({"command": "up"}, "request needs a connection name"),
        ({"command": "down", "name": None}, "request needs a connection name"),
        ({"command": "rekey", "name": 7}, "request needs a connection name"),
        ({"command": "rekey", "ike": True}, "request needs a connection name"),
        ({"command": "up", "name": "site", "force": True}, "up takes no field 'force'"),
        ({"command": "reload", "now": True}, "reload takes no field 'now'"),
        ({"command": "disconnect", "server": "office"}, "request needs a user name"),
        ({"command": "disconnect", "user": 3, "server": "o"}, "request needs a user name"),
        ({"command": "clients", "all": True}, "clients takes no field 'all'"),
    ],
)
def test_control_request_fields_are_checked_like_the_configuration(
    gateway: Gateway, request_: dict[str, object], error: str
) -> None:
    with pytest.raises(ControlError) as caught:
        asyncio.run(gateway._handle_request(request_))
    assert str(caught.value).startswith(error), str(caught.value)
    assert gateway.reloads == 0


def test_a_failed_reload_is_logged_whoever_asked(
    gateway: Gateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "gw.toml").write_text(CONFIG + "bogus = 1\n")
    with caplog.at_level(logging.INFO, logger="daemon.gateway"):
        with pytest.raises(ControlError, match="bogus"):
            asyncio.run(gateway._handle_request({"command": "reload"}))
        gateway._reload_from_signal()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and errors[0] == errors[1], errors
    assert errors[0].startswith("reload failed, keeping the running configuration: ")
    assert "bogus" in errors[0]


def test_config_warnings_are_logged_at_every_reload(
    gateway: Gateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Two connections to one peer whose local subnets overlap: legal, but doubtful.
    overlap = (
        CONFIG
        + """
[connections.site-half]
peer = "main"
local_subnets = ["192.0.2.0/25"]
remote_subnets = ["203.0.113.0/24"]
start = "wait"
"""
    )
    (tmp_path / "gw.toml").write_text(overlap)
    config = load_config(tmp_path / "gw.toml")
    assert config.warnings
    with caplog.at_level(logging.WARNING, logger="daemon.gateway"):
        gateway.reload()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for problem in config.warnings:
        assert str(problem) in warned


def test_forwarding_off_for_a_carried_family_is_warned_and_shown(
    gateway: Gateway, tmp_path: Path
) -> None:
    proc = tmp_path / "proc"
    (proc / "net/ipv4").mkdir(parents=True)
    (proc / "net/ipv6/conf/all").mkdir(parents=True)
    (proc / "net/ipv4/ip_forward").write_text("0\n")
    (proc / "net/ipv6/conf/all/forwarding").write_text("1\n")
    gateway.proc_sys = str(proc)
    [warning] = gateway.forwarding_warnings()
    assert warning.startswith("IP forwarding is off for IPv4 (net.ipv4.ip_forward = 0)")
    status = gateway.status()
    assert status["daemon"]["warnings"] == [warning]
    assert f"  warning: {warning}\n" in format_status(status)
    (proc / "net/ipv4/ip_forward").write_text("1\n")
    assert gateway.forwarding_warnings() == []
    assert "warning" not in format_status(gateway.status())
    # A family no connection carries is not the gateway's concern.
    (proc / "net/ipv4/ip_forward").write_text("0\n")
    assert forwarding_off([6], str(proc)) == []
    assert forwarding_off([4, 6], str(tmp_path / "nowhere")) == []


def test_esp_in_udp_follows_the_ike_sa_when_the_peer_moves(gateway: Gateway) -> None:
    assert gateway.pump is not None
    gateway._handle_event(established())
    installed = dataclasses.replace(
        events("aes128gcm16", udp=True)[0], connection="main", ike_sa_id=7
    )
    gateway._handle_event(installed)
    [entry] = gateway.plane.entries.values()
    # A NAT in front of the peer picked a new port; the IKE SA saw it first (§2.23).
    gateway._handle_event(
        IkeSaAddressChanged(
            "main",
            7,
            old_local=installed.local,
            old_remote=installed.remote,
            local=("198.51.100.1", 4500),
            remote=("198.51.100.2", 31337),
        )
    )
    assert entry.remote == ("198.51.100.2", 31337)
    status = gateway.status()
    assert status["sas"][0]["remote"] == "198.51.100.2[31337]"
    assert status["connections"][0]["ike_sas"][0]["remote"] == "198.51.100.2[31337]"
    # Another IKE SA's move does not touch this CHILD SA.
    gateway._handle_event(
        IkeSaAddressChanged(
            "main", 8, entry.local, entry.remote, ("198.51.100.1", 4500), ("198.51.100.2", 9)
        )
    )
    assert entry.remote == ("198.51.100.2", 31337)


def test_mobike_moves_raw_esp_and_switches_udp_encapsulation(gateway: Gateway) -> None:
    gateway._handle_event(established())
    installed = dataclasses.replace(
        events("aes128gcm16", udp=False)[0], connection="main", ike_sa_id=7
    )
    gateway._handle_event(installed)
    [entry] = gateway.plane.entries.values()
    spis, raw_mtu = (entry.spi_in, entry.spi_out), entry.mtu
    # The peer's UPDATE_SA_ADDRESSES came from a new address, through a NAT (RFC 4555
    # §3.5): the same CHILD SA now sends ESP in UDP there, with less room inside.
    gateway._handle_event(
        IkeSaAddressChanged(
            "main",
            7,
            installed.local,
            installed.remote,
            ("198.51.100.1", 4500),
            ("198.51.100.9", 4500),
            udp_encap=True,
            udp_encap_reason="the peer is behind a NAT",
            nat_remote=True,
            mobike=True,
        )
    )
    assert entry.remote == ("198.51.100.9", 4500) and entry.udp_encap
    assert entry.mtu < raw_mtu and (entry.spi_in, entry.spi_out) == spis
    (ike,) = gateway.status()["connections"][0]["ike_sas"]
    assert ike["remote"] == "198.51.100.9[4500]" and ike["nat"]
    assert ike["udp_encap"] == "the peer is behind a NAT"
    # Back without a NAT: raw ESP again.
    gateway._handle_event(
        IkeSaAddressChanged(
            "main", 7, entry.local, entry.remote, ("198.51.100.1", 500), ("198.51.100.2", 500),
            udp_encap=False, mobike=True,
        )
    )  # fmt: skip
    assert entry.remote == ("198.51.100.2", 500) and not entry.udp_encap
    assert entry.mtu == raw_mtu


@pytest.fixture
def limit_calls(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """What the gateway tells the core of CHILD SAs at a volume limit: ("rekey", uid)
    at the soft limit, ("delete", uid) at the hard one."""
    assert gateway.endpoint is not None
    calls: list[tuple[str, int]] = []

    def limit(uid: int, now: float, *, hard: bool) -> None:
        calls.append(("delete" if hard else "rekey", uid))

    monkeypatch.setattr(gateway.endpoint, "child_limit_reached", limit)
    return calls


def test_volume_lifetime_rekeys_at_soft_and_deletes_at_hard(
    gateway: Gateway, limit_calls: list[tuple[str, int]]
) -> None:
    assert gateway.pump is not None
    calls = limit_calls
    # life_packets is the hard limit; the rekey (soft limit) comes at 90% of it.
    installed = dataclasses.replace(
        events("aes128gcm16", udp=False)[0], connection="main", life_packets=10
    )
    gateway._handle_event(installed)
    packet = ipv4("192.0.2.10", "203.0.113.10", echo_request(1), proto=1)
    plane = gateway.plane
    plane.from_tun([packet] * 8)
    gateway._enforce_volume_lifetimes()
    assert calls == []
    plane.from_tun([packet])  # 9 of 10: soft limit
    gateway._enforce_volume_lifetimes()
    gateway._enforce_volume_lifetimes()
    assert calls == [("rekey", installed.unique_id)]  # asked once, not every second
    plane.from_tun([packet])  # 10 of 10: hard limit
    gateway._enforce_volume_lifetimes()
    assert calls[-1] == ("delete", installed.unique_id)


def test_volume_checks_look_at_limited_sas_often_and_at_every_sa_for_the_sequence_end(
    gateway: Gateway, limit_calls: list[tuple[str, int]]
) -> None:
    assert gateway.pump is not None
    calls = limit_calls
    limited, _ = events("aes128gcm16", udp=False, uid=1)
    gateway._handle_event(dataclasses.replace(limited, connection="main", life_packets=10))
    plain, _ = events("aes128gcm16", udp=False, uid=2)
    gateway._handle_event(dataclasses.replace(plain, connection="main"))
    assert gateway.lifetimes.volume_limited == {1}
    # The unlimited SA's counter reaches the soft mark near the end of its sequence
    # space (15/16 of 2^32): the frequent pass does not look, the full one does.
    outbound = gateway.plane.entries[2].outbound
    outbound._seq = outbound._seq_soft + 1
    gateway._enforce_volume_lifetimes()
    assert calls == []
    gateway._enforce_volume_lifetimes(every=True)
    assert calls == [("rekey", 2)]
    # A removed SA leaves the limited set at the next look.
    gateway._handle_event(ChildSaDeleted("main", "site", 1, 7, 0xB0000001, 1, "test"))
    gateway._enforce_volume_lifetimes()
    assert gateway.lifetimes.volume_limited == set()


def test_ike_rekey_shows_the_new_ike_sa_and_moves_the_child_sas(gateway: Gateway) -> None:
    assert gateway.pump is not None
    gateway._handle_event(established())
    installed = dataclasses.replace(
        events("aes256gcm16", udp=False)[0], connection="main", ike_sa_id=7
    )
    gateway._handle_event(installed)
    gateway._handle_event(IkeSaRekeyed("main", 7, 9, spi_i=0xAB, spi_r=0xCD, suite="new-suite"))
    [conn, _spare] = gateway.status()["connections"]
    [ike] = conn["ike_sas"]
    assert (ike["id"], ike["rekeyed_from"], ike["suite"]) == (9, 7, "new-suite")
    assert (ike["spi_i"], ike["spi_r"]) == (f"{0xAB:016x}", f"{0xCD:016x}")
    assert conn["state"] == "up"
    [entry] = gateway.plane.entries.values()
    assert entry.ike_sa_id == 9  # liveness from ESP now reaches the new IKE SA
    assert gateway.plane.entries_of_ike_sa(9) == [entry]
    assert gateway.plane.entries_of_ike_sa(7) == []
    assert gateway.connections["site"].carried_by == 9


def test_per_peer_ike_sa_index_follows_establish_rekey_and_delete(gateway: Gateway) -> None:
    # `established_ike_sa`, `_connecting` and status read the IKE SAs of one peer from
    # an index: it must say what a scan of every announced IKE SA says at each step.
    def scan(peer: str) -> list[int]:
        return [i for i, info in gateway.ike_sas.items() if info.event.connection == peer]

    def agrees() -> None:
        for peer in ("main", "spare"):
            assert [i.event.ike_sa_id for i in gateway.ike_sa_infos(peer)] == scan(peer)

    gateway._handle_event(established("main", 7))
    gateway._handle_event(established("spare", 8))
    gateway._handle_event(established("main", 11))
    agrees()
    gateway._handle_event(IkeSaRekeyed("main", 7, 9, spi_i=1, spi_r=2, suite="s"))
    agrees()
    assert scan("main") == [11, 9]
    gateway._handle_event(IkeSaDeleted("main", 11, "test", True, DeleteCause.PEER_DELETED))
    gateway._handle_event(IkeSaDeleted("spare", 8, "test", True, DeleteCause.PEER_DELETED))
    agrees()
    assert gateway._ike_sas_of == {"main": {9: gateway.ike_sas[9]}}  # no empty groups


def test_status_summary_counts_without_listing(gateway: Gateway) -> None:
    gateway._handle_event(established())
    installed = dataclasses.replace(
        events("aes256gcm16", udp=False)[0], connection="main", ike_sa_id=7
    )
    gateway._handle_event(installed)
    summary = asyncio.run(gateway._handle_request({"command": "status", "summary": True}))
    assert summary == {
        "daemon": {"version": gateway_module.VERSION, "pid": os.getpid()},
        "connections": 2,
        "ike_sas": 1,
        "ike_sas_in_core": 0,  # the event was made up: the core holds no IKE SA
        "child_sas": 1,
        "reloads": 0,
    }


def _die(gateway: Gateway, action: str) -> None:
    """Bring `site` up under IKE SA #7, then let the core declare its peer dead."""
    peer = gateway.peers["main"]
    peer.config = dataclasses.replace(peer.config, dpd_action=action)  # type: ignore[arg-type]
    gateway._handle_event(established())
    installed = dataclasses.replace(
        events("aes256gcm16", udp=False)[0], connection="main", ike_sa_id=7
    )
    gateway._handle_event(installed)
    gateway._handle_event(
        ChildSaDeleted(
            "main",
            "site",
            installed.unique_id,
            7,
            installed.spi_in,
            1,
            "IKE SA deleted",
            DeleteCause.IKE_SA_DELETED,
        )
    )
    # The daemon goes by the cause, whatever the words.
    gateway._handle_event(
        IkeSaDeleted("main", 7, "no answer to 5 liveness checks", False, DeleteCause.DEAD_PEER)
    )


def test_dpd_action_clear_leaves_the_connection_down(gateway: Gateway) -> None:
    retries: list[str] = []
    gateway.schedule_retry = lambda peer: retries.append(peer.config.name)  # type: ignore[method-assign]
    _die(gateway, "clear")
    state = gateway.connections["site"]
    assert not state.wanted and not state.trapped and retries == []
    [conn, _spare] = gateway.status()["connections"]
    assert conn["state"] == "waiting for the peer"
    assert conn["last_error"] == "no answer to 5 liveness checks"


def test_dpd_action_restart_initiates_again_at_once_then_with_back_off(
    gateway: Gateway,
) -> None:
    async def run() -> None:
        loop = gateway.loop = asyncio.get_running_loop()
        started: list[str] = []
        gateway.initiate = lambda peer: started.append(peer.config.name)  # type: ignore[method-assign]
        _die(gateway, "restart")
        peer = gateway.peers["main"]
        assert gateway.connections["site"].wanted  # start = wait, but it was up
        # The verdict took the liveness checks' time: the first attempt goes at once,
        # on the loop's next turn, and counts as no failed attempt.
        assert peer.retry is not None and peer.attempts == 0
        assert peer.retry.when() <= loop.time()
        await asyncio.sleep(0.01)
        assert started == ["main"]
        peer.retry = None  # as `initiate` does
        # The attempt fails (peer still down): the back-off starts, and grows.
        gateway._handle_event(IkeSaFailed("main", 8, "peer did not answer", None))
        assert peer.retry is not None and peer.attempts == 1
        assert 1.0 < peer.retry.when() - loop.time() <= RETRY_DELAYS[0]
        gateway.cancel_retry(peer)
        gateway._handle_event(IkeSaFailed("main", 9, "peer did not answer", None))
        assert peer.retry is not None and peer.attempts == 2
        assert RETRY_DELAYS[0] < peer.retry.when() - loop.time() <= RETRY_DELAYS[1]
        gateway.cancel_retry(peer)

    asyncio.run(run())


def test_dpd_action_trap_re_arms_the_connection(gateway: Gateway) -> None:
    retries: list[str] = []
    gateway.schedule_retry = lambda peer: retries.append(peer.config.name)  # type: ignore[method-assign]
    _die(gateway, "trap")
    state = gateway.connections["site"]
    assert state.trapped and not state.wanted and retries == []
    [conn, _spare] = gateway.status()["connections"]
    assert conn["state"] == "trap (on traffic)"
    # The next packet to the remote subnet initiates again.
    started: list[str] = []
    gateway.initiate = lambda peer: started.append(peer.config.name)  # type: ignore[method-assign]
    gateway._on_acquire(ipv4("192.0.2.10", "203.0.113.10", echo_request(1), proto=1))
    assert started == ["main"] and state.wanted


def test_rekey_ike_without_an_ike_sa_is_refused(gateway: Gateway) -> None:
    async def ask(**request: object) -> object:
        return await gateway._handle_request(request)

    with pytest.raises(ControlError, match="peer main has no established IKE SA"):
        asyncio.run(ask(command="rekey", name="site", ike=True))
    with pytest.raises(ControlError, match="peer main has no established IKE SA"):
        asyncio.run(ask(command="rekey", name="main", ike=True))
    with pytest.raises(ControlError, match="no connection named 'nope'"):
        asyncio.run(ask(command="rekey", name="nope", ike=True))


@pytest.mark.parametrize(
    ("cause", "wanted", "renewed"),
    [
        (DeleteCause.LIMIT_REACHED, True, True),
        (DeleteCause.EXPIRED, True, True),
        (DeleteCause.PEER_DELETED, True, False),
        (DeleteCause.OTHER, True, False),
        (DeleteCause.LIMIT_REACHED, False, False),
    ],
)
def test_child_sa_expired_before_its_rekey_is_negotiated_again(
    gateway: Gateway,
    monkeypatch: pytest.MonkeyPatch,
    cause: DeleteCause,
    wanted: bool,
    renewed: bool,
) -> None:
    assert gateway.endpoint is not None
    ike = types.SimpleNamespace(state=IkeSaState.ESTABLISHED)
    monkeypatch.setattr(gateway.endpoint, "ike_sa", lambda ike_sa_id: ike)
    requested: list[str] = []
    monkeypatch.setattr(gateway, "create_child", lambda state, sa: requested.append(state.name))
    gateway.connections["site"].wanted = wanted
    gateway._handle_event(established())
    installed = dataclasses.replace(
        events("aes256gcm16", udp=False)[0], connection="main", ike_sa_id=7
    )
    gateway._handle_event(installed)
    gateway._handle_event(
        ChildSaDeleted("main", "site", installed.unique_id, 7, installed.spi_in, 1, "test", cause)
    )
    assert requested == (["site"] if renewed else [])


@dataclasses.dataclass
class Timer:
    delay: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class Timers:
    """The gateway's event loop as far as `call_later` goes: the timers, run by hand."""

    def __init__(self) -> None:
        self.pending: list[Timer] = []

    def call_later(self, delay: float, callback: Callable[..., None], *args: object) -> Timer:
        timer = Timer(delay, lambda: callback(*args))
        self.pending.append(timer)
        return timer

    def fire(self) -> list[float]:
        """Run the timers not cancelled; their delays."""
        due, self.pending = self.pending, []
        for timer in due:
            if not timer.cancelled:
                timer.callback()
        return [timer.delay for timer in due if not timer.cancelled]


def test_a_child_sa_the_peer_deleted_comes_back_with_back_off_for_an_initiate_connection(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert gateway.endpoint is not None
    ike = types.SimpleNamespace(state=IkeSaState.ESTABLISHED)
    monkeypatch.setattr(gateway.endpoint, "ike_sa", lambda ike_sa_id: ike)
    monkeypatch.setattr(gateway, "established_ike_sa", lambda peer: ike)
    requested: list[str] = []
    monkeypatch.setattr(gateway, "create_child", lambda state, sa: requested.append(state.name))
    timers = Timers()
    gateway.loop = timers  # type: ignore[assignment]
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    state = gateway.connections["site"]
    state.config = dataclasses.replace(state.config, start="initiate")
    state.wanted = True
    gateway._handle_event(established())
    caplog.set_level(logging.INFO, "daemon.peers")
    installed = dataclasses.replace(
        events("aes256gcm16", udp=False)[0], connection="main", ike_sa_id=7
    )

    fresh = itertools.count(1)

    def peer_deletes(cause: DeleteCause = DeleteCause.PEER_DELETED) -> None:
        # A new CHILD SA each time: the last one's inbound SPI still lingers in the
        # SAD, and the data plane refuses an SPI in use.
        n = next(fresh)
        sa = dataclasses.replace(
            installed, unique_id=installed.unique_id + n, spi_in=installed.spi_in + n
        )
        gateway._handle_event(sa)
        assert sa.unique_id in gateway.plane.entries
        gateway._handle_event(
            ChildSaDeleted("main", "site", sa.unique_id, 7, sa.spi_in, 1, "deleted by peer", cause)
        )

    # The peer deletes it: asked for again after a short delay, not at once; `lockgate
    # explain` names the peer's deletion and says so.
    peer_deletes()
    text = explain(gateway, "site")["text"]
    assert f"is not up: peer main deleted CHILD SA #{installed.unique_id + 1}" in text
    assert 'start = "initiate": a new CHILD SA is requested shortly' in text
    assert requested == [] and timers.fire() == [CHILD_RESTART_DELAYS[0]]
    assert requested == ["site"]
    assert (
        f"connection site: the peer deleted CHILD SA #{installed.unique_id + 1}; "
        f'start = "initiate": requesting a new one in {CHILD_RESTART_DELAYS[0]:.0f} s'
        in caplog.text
    )
    assert gateway.diagnosis.failures["site"].kind == "peer_deleted"
    # A peer that keeps deleting it is asked ever more slowly.
    delays = []
    for _ in range(len(CHILD_RESTART_DELAYS)):
        clock[0] += 1.0
        peer_deletes()
        delays += timers.fire()
    assert delays == [*CHILD_RESTART_DELAYS[1:], CHILD_RESTART_DELAYS[-1]]
    # Deletions older than the window no longer count.
    clock[0] += CHILD_RESTART_WINDOW
    peer_deletes()
    assert timers.fire() == [CHILD_RESTART_DELAYS[0]]
    # Taken down (`lockgate down`) before the timer: nothing is requested.
    requested.clear()
    peer_deletes()
    state.wanted = False
    assert timers.fire() == [CHILD_RESTART_DELAYS[1]] and requested == []
    # Our own deletion, and a connection that waits for its peer, do not come back.
    state.wanted = True
    peer_deletes(DeleteCause.LOCAL)
    state.config = dataclasses.replace(state.config, start="wait")
    peer_deletes()
    assert timers.pending == [] and requested == []


@pytest.mark.parametrize(
    ("problems", "line"),
    [
        (
            [Problem("peers.main", "certificate cannot be read")],
            "cannot start: peers.main: certificate cannot be read",
        ),
        (
            [Problem("peers.main", "no key"), Problem("peers.spare", "no CA")],
            "cannot start: peers.main: no key; peers.spare: no CA",
        ),
    ],
    ids=["one", "several"],
)
def test_config_error_from_the_ike_builder_is_one_line_and_exit_1(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    problems: list[Problem],
    line: str,
) -> None:
    # The file loads, but building the IKE settings refuses it (as conf.ike does when
    # a certificate changed after load): one error line naming the key, exit status 1,
    # nothing created (the builder runs before the TUN is opened).
    path = tmp_path / "gw.toml"
    path.write_text(CONFIG)

    def refuse(config: object) -> None:
        raise ConfigError(problems)

    opened: list[str] = []
    monkeypatch.setattr(gateway_module, "ike_connections", refuse)
    monkeypatch.setattr(gateway_module, "open_tun", lambda *a: opened.append("tun"))
    gw = Gateway(str(path), socket_path=str(tmp_path / "c.sock"))
    with caplog.at_level(logging.ERROR, logger="daemon.gateway"):
        assert asyncio.run(gw.run()) == 1
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.getMessage() == line
    assert record.exc_info is None
    assert opened == [] and not (tmp_path / "c.sock").exists()


def test_child_sa_matching_no_connection_names_the_peer_and_shows_in_status(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    # What the core reports when the peer proposes selectors none of ours match.
    conn = connection()
    peer = dataclasses.replace(
        mirrored(conn), children=(child(local="198.51.100.128/25", remote="192.0.2.0/24"),)
    )
    pair = Pair.make(conn, peer)
    pair.a.initiate("conn", 0.0)
    pair.pump()
    (refused,) = pair.of("b", ChildSaFailed)
    gateway._handle_event(established())
    with caplog.at_level(logging.WARNING, logger="daemon.events"):
        gateway._handle_event(dataclasses.replace(refused, connection="main", ike_sa_id=7))
    [line] = [r.getMessage() for r in caplog.records if r.name == "daemon.events"]
    assert line.startswith("peer main (198.51.100.2): CHILD SA refused: peer proposed")
    assert "match no CHILD SA" in line and "?" not in line.split(":")[0]
    by_name = {c["name"]: c for c in gateway.status()["connections"]}
    assert by_name["site"]["last_error"].startswith("CHILD SA refused: peer proposed")
    assert by_name["spare-net"]["last_error"] == ""


class _CountingDict(dict[int, object]):
    """A dict that counts the values handed out by iterating it."""

    visits = 0

    def values(self) -> Iterator[object]:  # type: ignore[override]
        for value in super().values():
            self.visits += 1
            yield value

    def items(self) -> Iterator[tuple[int, object]]:  # type: ignore[override]
        for item in super().items():
            self.visits += 1
            yield item

    def __iter__(self) -> Iterator[int]:
        for key in super().__iter__():
            self.visits += 1
            yield key


def test_status_of_n_connections_visits_each_sa_once(tmp_path: Path) -> None:
    count = 40
    text = '[gateway]\naddresses = ["198.51.100.1"]\nid = "198.51.100.1"\n'
    for i in range(count):
        text += (
            f'\n[peers.p{i}]\naddress = "198.51.100.2"\nlocal_id = "i{i}.example"\n'
            f'psk = "gateway-test-psk-NOT-SECRET-0123"\n'
            f'\n[connections.c{i}]\npeer = "p{i}"\nlocal_subnets = ["192.0.2.{i}/32"]\n'
            f'remote_subnets = ["203.0.113.{i}/32"]\nstart = "wait"\n'
        )
    path = tmp_path / "gw.toml"
    path.write_text(text)
    with memory_gateway(path) as gw:
        # Every other connection up (an IKE SA and its CHILD SA), the rest waiting.
        for i in range(0, count, 2):
            gw._handle_event(established(f"p{i}", ike_sa_id=100 + i))
            a, _ = events("aes128gcm16", udp=False, uid=1 + i)
            gw._handle_event(
                dataclasses.replace(a, connection=f"p{i}", child=f"c{i}", ike_sa_id=100 + i)
            )
        assert gw.pump is not None
        plane = gw.plane
        ike_sas = _CountingDict(gw.ike_sas)
        entries = _CountingDict(plane.entries)
        gw.ike_sas = ike_sas  # type: ignore[assignment]
        plane.entries = entries  # type: ignore[assignment]
        plane.status()
        by_plane = entries.visits  # the data plane's own list of SAs, whatever it costs
        entries.visits = 0
        status = gw.status()
        states = {c["name"]: (c["state"], len(c["ike_sas"])) for c in status["connections"]}
        for i in range(count):
            expected = ("up", 1) if i % 2 == 0 else ("waiting for the peer", 0)
            assert states[f"c{i}"] == expected
        assert len(status["sas"]) == count // 2
        # The connections' states and IKE SAs come from the per-peer and per-connection
        # indexes: besides the data plane's own list of SAs, no SA is visited at all.
        assert ike_sas.visits == 0
        assert entries.visits == by_plane


class _FakeLinks:
    """Stands in for the netlink worker: the host's addresses and the routes asked for."""

    def __init__(self) -> None:
        self.addresses = [ipaddress.ip_interface(a) for a in ("198.51.100.1/24", "192.0.2.1/24")]
        self.address_reads = 0
        self.routes: list[tuple[str, str | None]] = []
        self.refuse_source = False

    def run(self, call: object) -> object:
        return call(self)  # type: ignore[operator]

    def submit(self, call: object) -> None:
        call(self)  # type: ignore[operator]

    def all_addresses(self) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        self.address_reads += 1
        return list(self.addresses)

    def add_route(self, net: object, name: str, source: str | None = None) -> None:
        if source is not None and self.refuse_source:
            raise LinkError("no such address", 99)
        self.routes.append((str(net), source))

    def remove_route(self, net: object, name: str) -> None:
        self.routes.remove(next(r for r in self.routes if r[0] == str(net)))


def test_local_addresses_are_read_once_per_ttl_and_on_invalidation() -> None:
    fake = _FakeLinks()
    now = [100.0]
    local = LocalAddresses(fake, ttl=2.0, clock=lambda: now[0])  # type: ignore[arg-type]
    assert local.get() == fake.addresses and local.get() == fake.addresses
    assert fake.address_reads == 1
    now[0] += 1.9
    local.get()
    assert fake.address_reads == 1
    now[0] += 0.1
    fake.addresses.append(ipaddress.ip_interface("203.0.113.1/24"))
    assert ipaddress.ip_interface("203.0.113.1/24") in local.get()
    assert fake.address_reads == 2
    local.invalidate()
    local.get()
    assert fake.address_reads == local.reads == 3


def test_route_sources_share_one_address_read_until_a_source_is_refused(
    gateway: Gateway,
) -> None:
    fake = _FakeLinks()
    now = [0.0]
    gateway._links = fake  # type: ignore[assignment]
    gateway.routes.attach(fake, "lgtest0", LocalAddresses(fake, clock=lambda: now[0]))  # type: ignore[arg-type]
    gateway._handle_event(established())
    for uid in (1, 2, 3):
        a, _ = events("aes128gcm16", udp=False, uid=uid)
        gateway._handle_event(dataclasses.replace(a, connection="main", child="site", ike_sa_id=7))
    # The first CHILD SA routes both remote subnets; the source is our address inside
    # the local selectors (192.0.2.1 in 192.0.2.0/24; none in 2001:db8:a::/64).
    assert ("203.0.113.0/24", "192.0.2.1") in fake.routes
    assert ("2001:db8:b::/64", None) in fake.routes
    assert fake.address_reads == 1
    # A refused source address makes the next route read the addresses again.
    for uid in (1, 2, 3):
        gateway._handle_event(ChildSaDeleted("main", "site", uid, 7, 0xB0000000 + uid, 1, "test"))
    fake.refuse_source = True
    a, _ = events("aes128gcm16", udp=False, uid=4)
    gateway._handle_event(dataclasses.replace(a, connection="main", child="site", ike_sa_id=7))
    assert fake.routes[-2:] == [("203.0.113.0/24", None), ("2001:db8:b::/64", None)]
    assert fake.address_reads == 2


def test_status_shows_the_endpoints_ike_drops(gateway: Gateway) -> None:
    assert gateway.status()["ike_drops"] == {}
    assert gateway.endpoint is not None
    gateway.endpoint.receive_message(b"\x00" * 5, ("198.51.100.1", 500), ("203.0.113.9", 500), 0.0)
    assert gateway.status()["ike_drops"] == {"unparsable": 1}


def test_data_plane_indexes_agree_with_a_scan_through_installs_removals_and_ike_rekeys() -> None:
    # The gateway asks "which CHILD SAs has this connection / peer / IKE SA" per SA
    # set up; the indexes answer without a scan and must always say what a scan says.
    rng = random.Random(7)
    plane = DataPlane(NoTransport())
    uids = itertools.count(1)
    peers = [f"p{k}" for k in range(4)]
    children = [f"{p}-c{k}" for p in peers for k in range(3)]
    ike_ids = range(1, 8)
    checks = 0
    for _ in range(400):
        roll = rng.random()
        if roll < 0.5 or not plane.entries:
            uid = next(uids)
            child = rng.choice(children)
            a, _ = events("aes128gcm16", udp=False, uid=uid)
            event = dataclasses.replace(
                a, connection=child.split("-")[0], child=child, ike_sa_id=rng.choice(ike_ids)
            )
            plane.install(entry_from_event(event), preferred=rng.random() < 0.5)
        elif roll < 0.8:
            plane.remove(rng.choice(list(plane.entries)), linger=rng.choice((0.0, 2.0)))
        elif roll < 0.95:
            # An IKE rekey moves every CHILD SA of the old IKE SA to the new one.
            old = rng.choice([e.ike_sa_id for e in plane.entries.values()])
            new = rng.choice(ike_ids)
            expected = {u for u, e in plane.entries.items() if e.ike_sa_id == old}
            moved = plane.move_to_ike_sa(old, new)
            assert {e.unique_id for e in moved} == expected
            assert all(e.ike_sa_id == new for e in moved)
        else:
            peer = rng.choice(peers)
            expected = {u for u, e in plane.entries.items() if e.peer == peer}
            gone = plane.remove_peer(peer)
            assert {e.unique_id for e in gone} == expected
        entries = list(plane.entries.values())
        for child in children:
            scan = [e for e in entries if e.connection == child]
            assert plane.entries_of_connection(child) == scan
            assert plane.has_connection(child) == bool(scan)
        for peer in peers:
            assert plane.entries_of_peer(peer) == [e for e in entries if e.peer == peer]
        for ike in ike_ids:
            scan_ids = {e.unique_id for e in entries if e.ike_sa_id == ike}
            assert {e.unique_id for e in plane.entries_of_ike_sa(ike)} == scan_ids
            checks += bool(scan_ids)
    assert checks > 100  # the walk kept SAs installed, not an empty plane
    # Removing everything leaves no empty group behind.
    for uid in list(plane.entries):
        plane.remove(uid)
    assert not any(plane.has_connection(c) for c in children)
    assert not any(plane.entries_of_ike_sa(i) for i in ike_ids)


def test_routes_are_added_at_once_counted_per_network_and_removed_in_order(
    gateway: Gateway,
) -> None:
    links = _FakeLinks()
    gateway._links = links  # type: ignore[assignment]
    gateway.routes.attach(links, "lgtest0", LocalAddresses(links))  # type: ignore[arg-type]
    gateway._handle_event(established())
    # Three CHILD SAs of one connection: the same two remote networks each.
    for uid in (1, 2, 3):
        a, _ = events("aes128gcm16", udp=False, uid=uid)
        gateway._handle_event(dataclasses.replace(a, connection="main", child="site", ike_sa_id=7))
        # The first SA's routes are there as soon as it is installed, nothing twice.
        assert links.routes == [("203.0.113.0/24", "192.0.2.1"), ("2001:db8:b::/64", None)]
    for uid in (4, 5):
        a, _ = events("aes128gcm16", udp=False, uid=uid)
        event = dataclasses.replace(
            a,
            connection="spare",
            child="spare-net",
            ike_sa_id=8,
            local_ts=(IkeTs.from_network("192.0.2.0/25"),),
            remote_ts=(IkeTs.from_network("198.51.100.128/26"),),
        )
        gateway._handle_event(event)
    # One route per network, however many SAs use it, in the order they came.
    assert links.routes == [
        ("203.0.113.0/24", "192.0.2.1"),
        ("2001:db8:b::/64", None),
        ("198.51.100.128/26", "192.0.2.1"),
    ]
    a, _ = events("aes128gcm16", udp=False, uid=6)
    gateway._handle_event(
        dataclasses.replace(
            a,
            connection="main",
            child="site",
            ike_sa_id=7,
            remote_ts=(IkeTs.from_network("203.0.113.64/26"),),
        )
    )
    assert links.routes[-1] == ("203.0.113.64/26", "192.0.2.1")
    gateway._handle_event(ChildSaDeleted("main", "site", 6, 7, 0xB0000006, 1, "test"))
    assert ("203.0.113.64/26", "192.0.2.1") not in links.routes
    # A network's route goes when its last SA goes, not before.
    for uid in (1, 2):
        gateway._handle_event(ChildSaDeleted("main", "site", uid, 7, 0xB0000000 + uid, 1, "test"))
    assert ("203.0.113.0/24", "192.0.2.1") in links.routes
    gateway._handle_event(ChildSaDeleted("main", "site", 3, 7, 0xB0000003, 1, "test"))
    assert [r[0] for r in links.routes] == ["198.51.100.128/26"]
    assert gateway.routes.counts == {(4, int(ipaddress.ip_address("198.51.100.128")), 26): 2}


class _Handle:
    def __init__(self, when: float) -> None:
        self.when = when
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _FakeLoop:
    """Records the timers the gateway arms."""

    def __init__(self) -> None:
        self.armed: list[_Handle] = []

    def call_later(self, delay: float, callback: object) -> _Handle:
        handle = _Handle(time.monotonic() + delay)
        self.armed.append(handle)
        return handle


def test_endpoint_timer_is_armed_again_only_when_it_moves_or_fired(gateway: Gateway) -> None:
    # Every datagram runs `service`; re-arming an unchanged timer each time cost a
    # cancel and a new loop handle per datagram.
    loop = _FakeLoop()
    assert gateway.ike is not None
    gateway.ike.loop = loop  # type: ignore[assignment]
    assert gateway.endpoint is not None and gateway.pump is not None
    gateway.ike._send = lambda *args: True
    gateway.endpoint.initiate("main", time.monotonic())  # a retransmission timer
    gateway.service()
    assert len(loop.armed) == 1
    for _ in range(5):
        gateway.service()
    assert len(loop.armed) == 1 and not loop.armed[0].cancelled
    gateway.endpoint.initiate("spare", time.monotonic() - 1.0)  # an earlier timer
    gateway.service()
    assert len(loop.armed) == 2 and loop.armed[0].cancelled
    # Once it fired, it is armed again even for the same time.
    timer_at = gateway.ike._timer_at
    gateway.ike._on_timer()
    assert len(loop.armed) == 3 and gateway.ike._timer_at == timer_at


def test_a_timer_that_moves_later_is_left_armed_and_followed_once_it_fires(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = _FakeLoop()
    assert gateway.ike is not None
    gateway.ike.loop = loop  # type: ignore[assignment]
    assert gateway.endpoint is not None
    now = time.monotonic()
    due = [now + 5.0]
    monkeypatch.setattr(gateway.endpoint, "get_timer", lambda: due[0])
    gateway.ike._arm_timer()
    assert len(loop.armed) == 1
    due[0] = now + 9.0  # later (the SA with the earliest timer was answered)
    gateway.ike._arm_timer()
    due[0] = None  # type: ignore[call-overload]  # nothing pending at all
    gateway.ike._arm_timer()
    assert len(loop.armed) == 1 and not loop.armed[0].cancelled
    due[0] = now + 9.0
    gateway.ike._on_timer()  # the early wake-up: armed for what is due now
    assert len(loop.armed) == 2 and loop.armed[1].when == pytest.approx(now + 9.0, abs=0.5)
    due[0] = now + 1.0  # earlier: the armed timer is replaced
    gateway.ike._arm_timer()
    assert len(loop.armed) == 3 and loop.armed[1].cancelled


def test_liveness_reaches_the_ike_sa_of_sas_that_received_and_remembers_only_those(
    gateway: Gateway,
) -> None:
    # ESP from the peer tells its IKE SA the peer is alive (RFC 7296 §2.4); SAs that
    # never received anything are not remembered (at idle the map stays empty).
    assert gateway.pump is not None and gateway.endpoint is not None
    heard: list[int] = []
    gateway.endpoint.heard_from_peer = lambda ike, now: heard.append(ike)  # type: ignore[method-assign]
    peers = {}
    for uid, ike in ((1, 7), (2, 8)):
        ours, theirs = events("aes128gcm16", udp=False, uid=uid)
        gateway._handle_event(dataclasses.replace(ours, connection="main", ike_sa_id=ike))
        peers[uid] = entry_from_event(theirs)
    gateway._report_liveness(1.0)
    assert heard == [] and gateway.lifetimes.inbound_seen == {}
    inner = ipv4("203.0.113.5", "192.0.2.5", echo_request(1), proto=1)
    sealed = peers[1].outbound.encapsulate(inner)
    assert isinstance(sealed, bytes)
    gateway.plane.from_esp([sealed])
    gateway._report_liveness(2.0)
    assert heard == [7] and gateway.lifetimes.inbound_seen == {1: 1}
    gateway._report_liveness(3.0)  # nothing new: no news for the IKE SA
    assert heard == [7]


def test_key_pairs_are_made_ahead_only_while_no_ike_traffic_comes(gateway: Gateway) -> None:
    endpoint, ike = gateway.endpoint, gateway.ike
    assert endpoint is not None and ike is not None
    missing = endpoint.prepare_keys(0)
    assert missing > 0

    async def refill(last_ike_ago: float) -> int:
        ike.loop = asyncio.get_running_loop()
        ike.last_ike_at = time.monotonic() - last_ike_ago
        ike.refill_keys()
        for _ in range(missing):  # each step makes one pair at least, then yields
            await asyncio.sleep(0)
        return endpoint.prepare_keys(0)

    # An IKE datagram came just now: a burst may be on, nothing is made.
    assert asyncio.run(refill(0.0)) == missing and not ike.refilling
    # Quiet for longer than KEY_POOL_IDLE: the stock fills, a short step per turn.
    assert asyncio.run(refill(KEY_POOL_IDLE + 1)) == 0
    assert not ike.refilling


# --- rekeys between two gateways' data planes (RFC 7296 §2.8) ----------------------------

A_TO_B = ipv4("192.0.2.10", "203.0.113.10", echo_request(1), proto=1)
B_TO_A = ipv4("203.0.113.10", "192.0.2.10", echo_request(1), proto=1)


def _carry_across(planes: dict[str, DataPlane], step: str) -> None:
    """Gateway a (lockgate) sends on an SA that b has installed (a peer such as
    strongSwan keeps no deleted SA for stragglers), and takes what b sends: on an
    installed SA, or one it removed a moment ago (`INBOUND_LINGER`)."""
    for me, other, packet in (("a", "b", A_TO_B), ("b", "a", B_TO_A)):
        policy = planes[me].spd.lookup(packet)
        assert policy is not None, f"{step}: {me} has no outbound SA"
        spi = policy.target.spi_out
        if other == "b":
            live = {entry.spi_in for entry in planes[other].entries.values()}
            assert spi in live, f"{step}: a sends on {spi:08x}, b has only {live}"
        else:
            assert spi in planes[other].sad, f"{step}: b sends on {spi:08x}, a lacks it"


@pytest.mark.parametrize("rekeyer", ["peer", "we", "we, peer deletes too"])
def test_a_delete_right_behind_the_create_child_sa_response_never_leaves_a_gap(
    tmp_path: Path, rekeyer: str
) -> None:
    # Gateway a is lockgate initiating the IKE SA, b its peer; the CHILD SA has PFS. The
    # Delete of the old SA comes straight behind the CREATE_CHILD_SA response (from the
    # rekeyer, or from both): the new SA must already carry traffic both ways on both
    # sides, and the old one until it does.
    esp = ("aes128gcm16-ecp256",)
    conn = connection(children=(child(esp_proposals=esp),))
    pair = Pair.make(conn)
    gws: dict[str, Gateway] = {}
    with contextlib.ExitStack() as stack:
        for name in ("a", "b"):
            path = tmp_path / f"{name}.toml"
            path.write_text(CONFIG)
            gws[name] = stack.enter_context(memory_gateway(path))
            gws[name].endpoint = pair.side(name)
        planes = {name: gw.plane for name, gw in gws.items() if gw.plane is not None}
        fed = {"a": 0, "b": 0}

        def handle(name: str) -> None:
            for event in pair.events[name][fed[name] :]:
                gws[name]._handle_event(event)
            fed[name] = len(pair.events[name])

        def send(name: str, step: str) -> list[Datagram]:
            out = pair.take(name)
            handle(name)
            _carry_across(planes, step)
            return out

        def deliver(sender: str, datagrams: list[Datagram]) -> None:
            for datagram in datagrams:
                pair.deliver(sender, datagram)

        pair.a.initiate("conn", 0.0)
        pair.pump()
        handle("a")
        handle("b")
        _carry_across(planes, "up")
        old = {name: pair.of(name, ChildSaInstalled)[0] for name in ("a", "b")}
        starter, answerer = ("b", "a") if rekeyer == "peer" else ("a", "b")
        [sa] = pair.side(starter).ike_sas()
        sa.rekey_child(old[starter].unique_id, pair.clock)
        request = send(starter, "rekey requested")
        deliver(starter, request)
        response = send(answerer, "rekey answered")
        if rekeyer == "we, peer deletes too":
            # The peer deletes the old SA itself, right behind its answer.
            [peer_sa] = pair.side(answerer).ike_sas()
            peer_sa.delete_child(old[answerer].unique_id, pair.clock, "test")
            response += send(answerer, "peer deletes the old SA")
        deliver(answerer, response)
        delete = send(starter, "rekey complete")
        deliver(starter, delete)
        answer = send(answerer, "old SA deleted")
        deliver(answerer, answer)
        send(starter, "delete answered")
        pair.pump()
        handle("a")
        handle("b")
        _carry_across(planes, "settled")
        for name in ("a", "b"):
            [entry] = planes[name].entries.values()
            assert entry.unique_id == pair.of(name, ChildSaInstalled)[1].unique_id
            assert pair.of(name, ChildSaDeleted)[0].unique_id == old[name].unique_id


def test_a_taken_ike_port_refuses_the_start_before_anything_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Another process (a first daemon) holds the NAT-T port on our address: the start
    # fails on that port, named with its address, before the TUN device, the routes
    # and the control socket exist; the IKE port bound on the way is given back.
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    nat_port = other.getsockname()[1]
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    ike_port = probe.getsockname()[1]
    probe.close()
    path = tmp_path / "gw.toml"
    path.write_text(
        CONFIG.replace('addresses = ["198.51.100.1"]', 'addresses = ["127.0.0.1"]').replace(
            'id = "198.51.100.1"\n',
            f'id = "198.51.100.1"\nike_port = {ike_port}\nnat_port = {nat_port}\n',
        )
    )
    opened: list[str] = []
    monkeypatch.setattr(gateway_module, "open_tun", lambda *a: opened.append("tun"))
    monkeypatch.setattr(gateway_module, "RouteSocket", lambda: opened.append("routes"))
    gw = Gateway(str(path), socket_path=str(tmp_path / "c.sock"))
    try:
        with caplog.at_level(logging.ERROR, logger="daemon.gateway"):
            assert asyncio.run(gw.run()) == 1
    finally:
        other.close()
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.getMessage() == (
        f"cannot start: UDP port {nat_port} on 127.0.0.1 is in use by another process: "
        "another lockgate or IKE daemon (charon, pluto, iked) is probably running"
    )
    assert opened == [] and not (tmp_path / "c.sock").exists()
    # The IKE port it bound before failing on the NAT-T one is free again.
    again = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    again.bind(("127.0.0.1", ike_port))
    again.close()


# --- reloads that keep the IKE SA -------------------------------------------------------

PAIR_CONFIG = """
[gateway]
addresses = ["198.51.100.1"]
id = "198.51.100.1"

[peers.conn]
address = "198.51.100.2"
psk = "in-memory-test-psk-not-secret"

[connections.net]
peer = "conn"
local_subnets = ["192.0.2.0/24"]
remote_subnets = ["203.0.113.0/26"]
esp_proposals = ["aes128gcm16"]
start = "wait"
"""


def _pair_gateway(
    old_text: str,
    new_text: str,
    tmp_path: Path,
    peer: PeerConfig | None = None,
    *,
    up: bool = True,
) -> tuple[contextlib.ExitStack, Gateway, Pair, Callable[[], None]]:
    """Gateway a on `old_text`; its peer b the IKE core alone, on `peer` or else on the
    mirror of every connection of both files (so b accepts what a proposes before and
    after the reload); the IKE SA and a's CHILD SAs up (unless not `up`: nothing
    initiated yet). Also returns the function that carries the datagrams and gives
    a's events to the gateway until all is quiet."""
    path = tmp_path / "a.toml"
    path.write_text(old_text)
    stack = contextlib.ExitStack()
    gw = stack.enter_context(memory_gateway(path))
    [conn_old] = ike_connections(loads_config(old_text))
    if peer is None:
        [conn_new] = ike_connections(loads_config(new_text))
        names = {c.name for c in conn_new.children}
        children = conn_new.children + tuple(c for c in conn_old.children if c.name not in names)
        peer = mirrored(dataclasses.replace(conn_new, children=children))
    pair = Pair.make(conn_old, peer)
    gw.endpoint, gw.ike = pair.a, None  # the pair carries the datagrams
    fed = 0

    def settle() -> None:
        nonlocal fed
        # Twice: handling an event may send more (the Delete of a replaced CHILD SA).
        for _ in range(2):
            pair.pump()
            for event in pair.events["a"][fed:]:
                gw._handle_event(event)
            fed = len(pair.events["a"])

    if up:
        pair.a.initiate("conn", 0.0)
        settle()
    return stack, gw, pair, settle


@pytest.mark.parametrize(
    ("change", "child_rekeys", "ike_rekeys"),
    [
        ({'esp_proposals = ["aes128gcm16"]': 'esp_proposals = ["aes256gcm16"]'}, 1, 0),
        ({'start = "wait"': 'start = "wait"\nreplay_window = 1024'}, 1, 0),
        ({'start = "wait"': 'start = "wait"\nike_lifetime = "2h"'}, 0, 1),
        (
            {
                'esp_proposals = ["aes128gcm16"]': 'esp_proposals = ["aes256gcm16"]',
                'start = "wait"': (
                    'start = "wait"\nike_proposals = ["aes128gcm16-prfsha256-ecp256"]'
                ),
            },
            1,
            1,
        ),
    ],
    ids=["esp_proposals", "replay_window", "ike_lifetime", "esp-and-ike-proposals"],
)
def test_a_reload_of_a_connections_own_settings_rekeys_without_deleting_the_ike_sa(
    tmp_path: Path, change: dict[str, str], child_rekeys: int, ike_rekeys: int
) -> None:
    # Gateway a runs the configuration; its peer b (the IKE core alone) accepts both
    # the old and the new proposals. A reload of a's connection's own settings is
    # applied with CREATE_CHILD_SA: a new CHILD SA with the new settings, then the old
    # one deleted, under the same IKE SA (or one rekeyed from it, §2.8).
    [conn_a] = ike_connections(loads_config(PAIR_CONFIG))
    conn_b = mirrored(
        conn_a,
        children=(
            dataclasses.replace(
                mirrored(conn_a).children[0], esp_proposals=("aes128gcm16", "aes256gcm16")
            ),
        ),
        ike_proposals=("aes256gcm16-prfsha384-x25519", "aes128gcm16-prfsha256-ecp256"),
    )
    path = tmp_path / "a.toml"
    stack, gw, pair, settle = _pair_gateway(PAIR_CONFIG, PAIR_CONFIG, tmp_path, peer=conn_b)
    with stack:
        plane = gw.plane
        assert plane is not None
        [old] = plane.entries.values()
        assert old.inbound.suite.name == "aes128gcm16"
        text = PAIR_CONFIG
        for before, after in change.items():
            text = text.replace(before, after)
        path.write_text(text)
        assert gw.reload() == "reloaded: peers 0 added, 1 changed, 0 removed, 0 unchanged"
        settle()
        pair.advance(5.0)
        settle()
        create_child = 36
        assert len(pair.requests("a", create_child)) == child_rekeys + ike_rekeys
        assert pair.of("a", IkeSaDeleted) == [] and pair.of("b", IkeSaDeleted) == []
        assert len(pair.of("a", IkeSaRekeyed)) == ike_rekeys
        if "ike_proposals" in str(change):
            assert pair.of("a", IkeSaRekeyed)[0].suite == "aes128gcm16-prfsha256-ecp256"
        [entry] = plane.entries.values()
        if child_rekeys:
            assert entry.unique_id != old.unique_id
            assert pair.of("a", ChildSaDeleted)[0].unique_id == old.unique_id
            wanted = "aes256gcm16" if "esp_proposals" in str(change) else "aes128gcm16"
            assert entry.inbound.suite.name == wanted
            assert entry.inbound.replay.size == (1024 if "replay" in str(change) else 128)
        else:
            assert entry.unique_id == old.unique_id
        assert gw.is_up("net")
        [sa] = pair.a.ike_sas()
        assert sa.config == gw.peers["conn"].config
        assert gw.connections["net"].config is gw.peers["conn"].config.children[0]


NET2 = """
[connections.net2]
peer = "conn"
local_subnets = ["192.0.2.0/24"]
remote_subnets = ["203.0.113.128/25"]
esp_proposals = ["aes128gcm16"]
start = "initiate"
"""


@pytest.mark.parametrize(
    ("before", "after", "plan"),
    [
        ('address = "198.51.100.2"', 'address = "198.51.100.9"', {"renegotiate": True}),
        (
            'psk = "in-memory-test-psk-not-secret"',
            'psk = "another-test-psk-NOT-SECRET-01"',
            {"renegotiate": True},
        ),
        ('start = "wait"', 'start = "wait"\nid = "peer.example"', {"renegotiate": True}),
        (
            'remote_subnets = ["203.0.113.0/26"]',
            'remote_subnets = ["203.0.113.0/25"]',
            {"replace_children": ("net",)},
        ),
        ('start = "wait"', 'start = "trap"', {"new_start": ("net",)}),
        ('start = "wait"', 'start = "initiate"', {"new_start": ("net",)}),
        (
            '["203.0.113.0/26"]\nesp_proposals = ["aes128gcm16"]\nstart = "wait"',
            '["203.0.113.0/25"]\nesp_proposals = ["aes128gcm16"]\nstart = "trap"',
            {"new_start": ("net",), "replace_children": ("net",)},
        ),
        ('start = "wait"', 'start = "wait"\n' + NET2, {"added": ("net2",)}),
        ('start = "wait"', 'start = "wait"\ndpd_action = "restart"', {}),
        (
            'esp_proposals = ["aes128gcm16"]',
            'esp_proposals = ["aes256gcm16"]',
            {"rekey_children": ("net",)},
        ),
        ('start = "wait"', 'start = "wait"\nchild_lifetime = "30m"', {"rekey_children": ("net",)}),
        ('start = "wait"', 'start = "wait"\nlife_packets = 1000000', {"rekey_children": ("net",)}),
        ('start = "wait"', 'start = "wait"\ndpd_interval = "10s"', {"rekey_ike": True}),
        ('start = "wait"', 'start = "wait"\nfragmentation = false', {"rekey_ike": True}),
    ],
)
def test_only_a_new_peer_identity_or_credentials_deletes_the_ike_sa_on_reload(
    before: str, after: str, plan: dict[str, object]
) -> None:
    [old] = ike_connections(loads_config(PAIR_CONFIG))
    text = PAIR_CONFIG.replace(before, after)
    if "id = " in after:
        text = text.replace(after, 'start = "wait"').replace(
            'address = "198.51.100.2"', 'address = "198.51.100.2"\nid = "peer.example"'
        )
    [new] = ike_connections(loads_config(text))
    assert new != old
    assert peer_change(old, new) == PeerChange(**plan)  # type: ignore[arg-type]
    # A connection removed is the reverse of one added.
    if "added" in plan:
        assert peer_change(new, old) == PeerChange(removed=plan["added"])  # type: ignore[arg-type]


CREATE_CHILD_SA, INFORMATIONAL = 36, 37


@pytest.mark.parametrize("case", ["added", "removed", "remote_subnets", "start"])
def test_a_reload_of_a_peers_connections_keeps_its_ike_sa_and_the_other_connections(
    tmp_path: Path, case: str
) -> None:
    # Connections added to or removed from a peer, new selectors, a new start mode:
    # each is applied under the peer's IKE SA, whose other connections stay as they
    # are (RFC 7296 §1.3.1 CREATE_CHILD_SA, §1.4.1 Delete). No IKE SA is deleted on
    # either side.
    old_text = PAIR_CONFIG + (NET2 if case == "removed" else "")
    new_text = {
        "added": PAIR_CONFIG + NET2,
        "removed": PAIR_CONFIG,
        "remote_subnets": PAIR_CONFIG.replace("203.0.113.0/26", "203.0.113.0/25"),
        "start": PAIR_CONFIG.replace('start = "wait"', 'start = "trap"'),
    }[case]
    stack, gw, pair, settle = _pair_gateway(old_text, new_text, tmp_path)
    with stack:
        plane = gw.plane
        assert plane is not None
        [net_before] = gw.installed("net")
        [ike_sa] = pair.a.ike_sas()
        assert gw.is_up("net2") is (case == "removed")
        mark = len(pair.wire)
        installed = len(pair.of("a", ChildSaInstalled))
        (tmp_path / "a.toml").write_text(new_text)
        assert gw.reload() == "reloaded: peers 0 added, 1 changed, 0 removed, 0 unchanged"
        settle()
        pair.advance(5.0)
        settle()
        sent = pair.wire[mark:]

        def requests(exchange: int) -> int:
            return sum(
                1
                for s in sent
                if s.sender == "a"
                and (h := decode_header(s.ike)).exchange_type == exchange
                and not h.response
            )

        assert pair.of("a", IkeSaDeleted) == [] and pair.of("b", IkeSaDeleted) == []
        assert pair.a.ike_sas() == [ike_sa] and len(pair.b.ike_sas()) == 1
        assert not any(s.sender == "b" and not decode_header(s.ike).response for s in sent)
        new_children = pair.of("a", ChildSaInstalled)[installed:]
        deleted = pair.of("a", ChildSaDeleted)
        if case == "added":
            # One CREATE_CHILD_SA, for net2; net untouched.
            assert (requests(CREATE_CHILD_SA), requests(INFORMATIONAL)) == (1, 0)
            [new] = new_children
            assert (new.child, new.rekey_of) == ("net2", None)
            assert gw.is_up("net2") and deleted == []
        elif case == "removed":
            # One Delete, of net2's CHILD SA; the connection is gone.
            assert (requests(CREATE_CHILD_SA), requests(INFORMATIONAL)) == (0, 1)
            assert new_children == []
            [gone] = deleted
            assert gone.child == "net2" and pair.of("b", ChildSaDeleted)[0].child == "net2"
            assert "net2" not in gw.connections and not gw.is_up("net2")
            assert [c.name for c in gw.connections_of("conn")] == ["net"]
        elif case == "remote_subnets":
            # A new CHILD SA with the new selectors (not a rekey: §2.8 keeps them), then
            # the old one deleted; the route of the new network replaces the old one.
            assert (requests(CREATE_CHILD_SA), requests(INFORMATIONAL)) == (1, 1)
            [new] = new_children
            assert (new.child, new.rekey_of) == ("net", None)
            assert [str(ts) for ts in new.remote_ts] == ["203.0.113.0/25"]
            [b_new] = pair.of("b", ChildSaInstalled)[1:]
            assert b_new.rekey_of is None
            assert [d.unique_id for d in deleted] == [net_before.unique_id]
            [net_after] = gw.installed("net")
            assert net_after.unique_id == new.unique_id
            assert {str(_network_of(key)) for key in gw.routes.counts} == {"203.0.113.0/25"}
        else:
            # Nothing negotiated; the trap is armed for when the CHILD SA goes.
            assert (requests(CREATE_CHILD_SA), requests(INFORMATIONAL)) == (0, 0)
            assert new_children == [] and deleted == []
            assert gw.routes.traps == {ipaddress.ip_network("203.0.113.0/26")}
            (tmp_path / "a.toml").write_text(old_text)
            gw.reload()
            settle()
            assert gw.routes.traps == set() and len(pair.wire) == mark
        if case != "remote_subnets":
            assert gw.installed("net") == [net_before]
        assert gw.is_up("net")
        assert pair.a.ike_sas()[0].config == gw.peers["conn"].config


def test_new_selectors_move_the_traffic_to_the_new_child_sa_without_a_gap(
    tmp_path: Path,
) -> None:
    # Gateway a widens remote_subnets (203.0.113.0/26 to /25), b (another gateway,
    # already on /25) answers. At every step of the exchanges a packet of the
    # unchanged part (203.0.113.10) leaves each side on an SA the other one can open:
    # the old SA carries it until the new one is installed on both sides.
    new_text = PAIR_CONFIG.replace("203.0.113.0/26", "203.0.113.0/25")
    stack, gw, pair, _ = _pair_gateway(PAIR_CONFIG, new_text, tmp_path)
    with stack:
        path_b = tmp_path / "b.toml"
        path_b.write_text(CONFIG)
        gw_b = stack.enter_context(memory_gateway(path_b))
        gw_b.endpoint = pair.b
        for event in pair.events["b"]:
            gw_b._handle_event(event)
        planes = {"a": gw.plane, "b": gw_b.plane}
        assert planes["a"] is not None and planes["b"] is not None
        gateways = {"a": gw, "b": gw_b}
        fed = {"a": len(pair.events["a"]), "b": len(pair.events["b"])}
        _carry_across(planes, "up")  # type: ignore[arg-type]
        [old] = gw.installed("net")
        path = tmp_path / "a.toml"
        path.write_text(new_text)
        gw.reload()
        steps, quiet = 0, 0
        while quiet < 2:  # handling events may queue more: one more round to see it
            moved = False
            for name in ("a", "b"):
                out = pair.take(name)
                for event in pair.events[name][fed[name] :]:
                    gateways[name]._handle_event(event)
                fed[name] = len(pair.events[name])
                _carry_across(planes, f"step {steps} ({name})")  # type: ignore[arg-type]
                for datagram in out:
                    pair.deliver(name, datagram)
                moved = moved or bool(out)
                steps += 1
            quiet = 0 if moved else quiet + 1
        [new] = gw.installed("net")
        assert new.unique_id != old.unique_id
        assert [str(ts) for ts in new.remote_ts] == ["203.0.113.0/25"]
        assert len(planes["b"].entries) == 1  # type: ignore[union-attr]
        assert [d.unique_id for d in pair.of("a", ChildSaDeleted)] == [old.unique_id]
        assert len(pair.of("b", ChildSaDeleted)) == 1
        assert pair.of("a", IkeSaDeleted) == [] and pair.of("b", IkeSaDeleted) == []


def test_new_selectors_the_peer_refuses_leave_the_old_child_sa_up(tmp_path: Path) -> None:
    # b knows only the old selectors and answers TS_UNACCEPTABLE: a deletes nothing,
    # and the CHILD SA with the old selectors keeps the traffic.
    new_text = PAIR_CONFIG.replace("192.0.2.0/24", "203.0.113.128/25")
    [conn_old] = ike_connections(loads_config(PAIR_CONFIG))
    stack, gw, pair, settle = _pair_gateway(
        PAIR_CONFIG, new_text, tmp_path, peer=mirrored(conn_old)
    )
    with stack:
        [old] = gw.installed("net")
        mark = len(pair.wire)
        (tmp_path / "a.toml").write_text(new_text)
        gw.reload()
        settle()
        [failed] = pair.of("a", ChildSaFailed)
        assert failed.child == "net"
        assert [
            decode_header(s.ike).exchange_type
            for s in pair.wire[mark:]
            if s.sender == "a" and not decode_header(s.ike).response
        ] == [CREATE_CHILD_SA]
        assert gw.installed("net") == [old] and gw.connections["net"].replacing == set()
        assert pair.of("a", ChildSaDeleted) == [] and pair.of("a", IkeSaDeleted) == []


def test_every_command_the_cli_sends_passes_the_field_check() -> None:
    from daemon.commands import check_request

    for request_ in (
        {"command": "status", "summary": True},
        {"command": "reload"},
        {"command": "up", "name": "site"},
        {"command": "rekey", "name": "site", "ike": True},
        {"command": "clients"},
        {"command": "disconnect", "server": "office", "user": "alice"},
    ):
        check_request(request_)


def test_a_refused_remote_access_login_has_one_warning_its_servers(
    gateway: Gateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from daemon.ikev2_ra import IkeRaServer
    from testkit.p2c_config import config as ra_config

    gateway.ikev2_ra = IkeRaServer(ra_config(tmp_path, name="laptops", protocol="ikev2"))
    refused = IkeSaFailed(
        "laptops", 4, "EAP-MSCHAPv2: wrong password for user 'alice'", 24,
        remote=("198.51.100.11", 4500), user="alice", refusal="wrong password",
    )  # fmt: skip
    with caplog.at_level(logging.DEBUG):
        gateway._handle_event(refused)
        gateway._handle_event(IkeSaFailed("main", 5, "peer did not answer", None))
    warnings = [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]
    server_line = "ikev2 laptops: login of alice from 198.51.100.11 refused: wrong password"
    assert warnings == [
        ("daemon.ikev2_ra", server_line),
        ("daemon.events", "peer main: IKE SA #5 failed: peer did not answer"),
    ]
    # The server's own line is the one at warning; the generic one stays for debugging.
    assert any(r.name == "daemon.events" and "IKE SA #4" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("exchange", ["rekey", "request"])
def test_a_child_sa_negotiated_while_a_reload_removes_its_connection_is_deleted_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, exchange: str
) -> None:
    # a rekeys net2's CHILD SA (or asks for one more); b answers, but the answer is
    # held while a reload removes net2. a's Delete of the old SA waits behind the
    # CREATE_CHILD_SA (one exchange at a time, RFC 7296 §2.3), and the answer then
    # brings a new SA of a connection that no longer exists: it must not stay
    # installed, on either side.
    stack, gw, pair, settle = _pair_gateway(PAIR_CONFIG + NET2, PAIR_CONFIG, tmp_path)
    with stack:
        assert gw.endpoint is not None and gw.plane is not None
        [old] = gw.installed("net2")
        [net] = gw.installed("net")
        if exchange == "rekey":
            gw.endpoint.rekey_child(old.unique_id, pair.clock)
        else:
            [ike_sa] = pair.a.ike_sas()
            ike_sa.create_child(gw.connections["net2"].config, pair.clock)
        [request] = pair.take("a")
        pair.deliver("a", request)
        [answer] = pair.take("b")  # held while a reloads
        (tmp_path / "a.toml").write_text(PAIR_CONFIG)
        with caplog.at_level(logging.INFO, logger="daemon"):
            assert gw.reload() == "reloaded: peers 0 added, 1 changed, 0 removed, 0 unchanged"
            settle()
            pair.deliver("b", answer)
            settle()
        [*_, new] = pair.of("a", ChildSaInstalled)
        assert (new.child, new.rekey_of) == (
            "net2",
            old.unique_id if exchange == "rekey" else None,
        )
        # Both net2 SAs are gone from a's data plane and a's IKE SA, and b was told
        # of both (b's new SA as well as the old one).
        assert gw.installed("net2") == [] and not gw.is_up("net2")
        assert {d.unique_id for d in pair.of("a", ChildSaDeleted)} == {old.unique_id, new.unique_id}
        assert [e.unique_id for e in plane_entries(gw)] == [net.unique_id]
        for side in (pair.a, pair.b):
            [sa] = side.ike_sas()
            assert [c.config.name for c in sa.children.values()] == ["net"]
        assert [d.child for d in pair.of("b", ChildSaDeleted)] == ["net2", "net2"]
        assert pair.of("a", IkeSaDeleted) == [] and pair.of("b", IkeSaDeleted) == []
        origin = "a rekey" if exchange == "rekey" else "a request"
        assert f"CHILD SA #{new.unique_id} from {origin} of removed connection net2 deleted" in (
            caplog.text
        )


def plane_entries(gw: Gateway) -> list[object]:
    assert gw.plane is not None
    return list(gw.plane.entries.values())


IKE_SA_INIT, IKE_AUTH = 34, 35


def _hold_setup(gw: Gateway, pair: Pair, held: str) -> Datagram:
    """a initiates the peer (net alone); b's answer to IKE_SA_INIT, or to IKE_AUTH,
    is taken and returned, held."""
    gw.initiate(gw.peers["conn"])
    for _ in range(2 if held == "IKE_AUTH" else 1):
        [request] = pair.take("a")
        pair.deliver("a", request)
        [answer] = pair.take("b")
        if held == "IKE_AUTH" and decode_header(answer.data).exchange_type == IKE_SA_INIT:
            pair.deliver("b", answer)  # on to IKE_AUTH
    exchanges = {"IKE_SA_INIT": IKE_SA_INIT, "IKE_AUTH": IKE_AUTH}
    assert decode_header(answer.data).exchange_type == exchanges[held]
    return answer


@pytest.mark.parametrize("how", ["reload", "traffic"])
@pytest.mark.parametrize("held", ["IKE_SA_INIT", "IKE_AUTH"])
def test_a_connection_wanted_while_its_peers_ike_sa_is_set_up_is_requested_once_it_is_up(
    tmp_path: Path, held: str, how: str
) -> None:
    # a initiates the peer with net alone; while b's answer to IKE_SA_INIT (or to
    # IKE_AUTH) is held, a reload adds net2 (start = "initiate"), or a packet for
    # net2 (start = "trap") arrives. The IKE SA that comes up was begun without net2,
    # so net2's CREATE_CHILD_SA (RFC 7296 §1.3.1) must follow at once, not wait for a
    # retry or the traffic's next packet: the clock does not move here.
    old = PAIR_CONFIG if how == "reload" else PAIR_CONFIG + TRAP_NET2
    new = PAIR_CONFIG + NET2 if how == "reload" else old
    stack, gw, pair, settle = _pair_gateway(old, new, tmp_path, up=False)
    with stack:
        answer = _hold_setup(gw, pair, held)
        if how == "reload":
            (tmp_path / "a.toml").write_text(new)
            assert gw.reload() == "reloaded: peers 0 added, 1 changed, 0 removed, 0 unchanged"
        else:
            gw._on_acquire(ipv4("192.0.2.10", "203.0.113.200", echo_request(1), proto=1))
            assert gw.connections["net2"].wanted
        assert not gw.is_up("net2")
        pair.deliver("b", answer)
        settle()
        # No timer ran (the pair's clock never moved, and this gateway has no loop
        # to arm a retry on): the IKE SA's arrival alone brought net2 up.
        assert gw.peers["conn"].retry is None
        assert gw.is_up("net") and gw.is_up("net2")
        [sa] = pair.a.ike_sas()
        assert sorted(c.config.name for c in sa.children.values()) == ["net", "net2"]
        assert len(pair.requests("a", CREATE_CHILD_SA)) == 1
        assert pair.of("a", IkeSaFailed) == [] and pair.of("a", ChildSaFailed) == []


def test_a_child_sa_rekeyed_while_a_reload_changes_its_selectors_is_replaced_too(
    tmp_path: Path,
) -> None:
    # As above, but the reload widens net's remote_subnets: the rekey's answer comes
    # first (one exchange at a time), and its new SA, with the old selectors, is
    # among those the CHILD SA with the new selectors replaces. In the end net has
    # one CHILD SA, with the new selectors, on both sides.
    new_text = PAIR_CONFIG.replace("203.0.113.0/26", "203.0.113.0/25")
    stack, gw, pair, settle = _pair_gateway(PAIR_CONFIG, new_text, tmp_path)
    with stack:
        assert gw.endpoint is not None
        [old] = gw.installed("net")
        gw.endpoint.rekey_child(old.unique_id, pair.clock)
        [request] = pair.take("a")
        pair.deliver("a", request)
        [answer] = pair.take("b")  # held while a reloads
        (tmp_path / "a.toml").write_text(new_text)
        gw.reload()
        settle()
        pair.deliver("b", answer)
        settle()
        [rekeyed] = [e for e in pair.of("a", ChildSaInstalled) if e.rekey_of == old.unique_id]
        [widened] = [e for e in pair.of("a", ChildSaInstalled) if e.rekey_of is None][1:]
        assert [str(ts) for ts in widened.remote_ts] == ["203.0.113.0/25"]
        [entry] = gw.installed("net")
        assert entry.unique_id == widened.unique_id
        assert {d.unique_id for d in pair.of("a", ChildSaDeleted)} == {
            old.unique_id,
            rekeyed.unique_id,
        }
        for side in (pair.a, pair.b):
            [sa] = side.ike_sas()
            [net] = sa.children.values()
            theirs = net.remote_ts if side is pair.a else net.local_ts  # b is the mirror
            assert [str(ts) for ts in theirs] == ["203.0.113.0/25"]
        assert pair.of("a", IkeSaDeleted) == [] and pair.of("b", IkeSaDeleted) == []


TRAP_NET2 = NET2.replace('start = "initiate"', 'start = "trap"')


def test_traffic_for_the_connection_an_ike_sa_is_set_up_for_asks_for_nothing_more(
    tmp_path: Path,
) -> None:
    # net (start = "trap") is what the IKE SA's IKE_AUTH carries: more of its
    # traffic during the setup must not ask for a second CHILD SA.
    text = PAIR_CONFIG.replace('start = "wait"', 'start = "trap"')
    stack, gw, pair, settle = _pair_gateway(text, text, tmp_path, up=False)
    with stack:
        packet = ipv4("192.0.2.10", "203.0.113.10", echo_request(1), proto=1)
        gw._on_acquire(packet)  # initiates
        [request] = pair.take("a")
        pair.deliver("a", request)
        [answer] = pair.take("b")
        gw._on_acquire(packet)
        assert gw.connections["net"].awaiting == set()
        pair.deliver("b", answer)
        settle()
        [sa] = pair.a.ike_sas()
        assert [c.config.name for c in sa.children.values()] == ["net"]
        assert pair.requests("a", CREATE_CHILD_SA) == []


def test_up_while_its_peers_ike_sa_is_set_up_is_answered_once_that_is_established(
    tmp_path: Path,
) -> None:
    # `lockgate up net2` (start = "wait") while the IKE SA that began with net alone
    # waits for IKE_AUTH's answer: net2 comes up under it, and the command says so.
    text = PAIR_CONFIG + NET2.replace('start = "initiate"', 'start = "wait"')
    stack, gw, pair, settle = _pair_gateway(text, text, tmp_path, up=False)

    async def run() -> object:
        answer = _hold_setup(gw, pair, "IKE_AUTH")
        up = asyncio.ensure_future(gw._handle_request({"command": "up", "name": "net2"}))
        await asyncio.sleep(0)
        assert not up.done() and gw.connections["net2"].awaiting
        pair.deliver("b", answer)
        settle()
        return await asyncio.wait_for(up, 5)

    with stack:
        assert asyncio.run(run()) == "connection net2 is up"
        assert gw.is_up("net") and gw.is_up("net2")
        assert len(pair.requests("a", CREATE_CHILD_SA)) == 1

"""The gateway's bookkeeping without root: events in, data plane and status out.

The gateway is assembled by hand around an in-memory TUN (no sockets, no netlink,
no routes), so these run anywhere; the namespace tests run the real thing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_dataplane import echo_request, events, ipv4

from conf.ike import ike_connections
from conf.load import load_config
from daemon.control import ControlError
from daemon.gateway import Gateway
from daemon.pump import Pump
from ikev2.endpoint import Endpoint
from ikev2.events import ChildSaDeleted, IkeSaEstablished, IkeSaFailed
from tun import memory_tun_pair

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
    gw = Gateway(str(path), socket_path=str(tmp_path / "c.sock"))
    gw.config = load_config(path)
    ikes = ike_connections(gw.config)
    gw._endpoint = Endpoint(ikes)
    ours, kernel_side = memory_tun_pair()
    gw._pump = Pump(ours)
    for ike in ikes:
        gw._add_peer(ike)
    yield gw
    ours.close()
    kernel_side.close()


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
    assert gateway._pump is not None
    assert installed.spi_in in gateway._pump.plane.sad
    gateway._handle_event(
        ChildSaDeleted("main", "site", installed.unique_id, 7, installed.spi_in, 1, "test")
    )
    assert gateway.status()["sas"] == []
    # Packets already on their way are still decrypted for a moment, then not.
    assert installed.spi_in in gateway._pump.plane.sad
    gateway._pump.plane._clock = lambda: time.monotonic() + 60
    assert gateway._pump.plane.expire_lingering() == 1
    assert installed.spi_in not in gateway._pump.plane.sad


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
    assert gateway.peers["main"] is main_before
    assert gateway.peers["spare"] is not spare_before
    assert [str(ts) for ts in gateway.connections["spare-net"].child.remote_ts] == [
        "198.51.100.192/26"
    ]
    # A broken file changes nothing and says why.
    (tmp_path / "gw.toml").write_text(CONFIG + "bogus = 1\n")
    with pytest.raises(ControlError, match="bogus"):
        gateway.reload()
    assert gateway.peers["main"] is main_before


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


def test_esp_in_udp_follows_the_ike_sa_when_the_peer_moves(gateway: Gateway) -> None:
    assert gateway._endpoint is not None and gateway._pump is not None
    ike = gateway._endpoint.initiate("main", 0.0)
    installed = dataclasses.replace(
        events("aes128gcm16", udp=True)[0], connection="main", ike_sa_id=ike.ike_sa_id
    )
    gateway._handle_event(installed)
    [entry] = gateway._pump.plane.entries.values()
    # A NAT in front of the peer picked a new port; the IKE SA saw it first (§2.23).
    ike.local, ike.remote = ("198.51.100.1", 4500), ("198.51.100.2", 31337)
    gateway._follow_peer_addresses()
    assert entry.remote == ("198.51.100.2", 31337)
    assert gateway.status()["sas"][0]["remote"] == "198.51.100.2[31337]"


def test_volume_lifetime_rekeys_at_soft_and_deletes_at_hard(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert gateway._endpoint is not None and gateway._pump is not None
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(
        gateway._endpoint, "rekey_child", lambda uid, now: calls.append(("rekey", uid))
    )
    monkeypatch.setattr(
        gateway._endpoint, "delete_child", lambda uid, now, reason: calls.append(("delete", uid))
    )
    installed = dataclasses.replace(
        events("aes128gcm16", udp=False)[0], connection="main", life_packets=10
    )
    gateway._handle_event(installed)
    packet = ipv4("192.0.2.10", "203.0.113.10", echo_request(1), proto=1)
    plane = gateway._pump.plane
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

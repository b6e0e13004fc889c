"""daemon.route_mode: a route-mode connection's interface follows its CHILD SA."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from conf import parse_config
from daemon.route_mode import RouteLinks
from daemon.status import format_status
from tun import MemoryTun, memory_tun_pair

PSK = "test-psk-NOT-SECRET-0123456789"
BASE: dict[str, Any] = {
    "gateway": {"addresses": ["198.51.100.1"], "id": "198.51.100.1"},
    "peers": {"dc1": {"address": "198.51.100.2", "psk": PSK}},
    "connections": {
        "vpc": {
            "peer": "dc1",
            "mode": "route",
            "inside_address": "198.51.100.253/30",
            "inside_address6": "2001:db8:ff::1/126",
            "routes": ["203.0.113.0/24"],
        },
        "net": {
            "peer": "dc1",
            "local_subnets": ["192.0.2.0/24"],
            "remote_subnets": ["198.51.100.64/26"],
        },
    },
}


class FakeLinks:
    """Records the netlink calls (a `LinkManager` stand-in)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        def call(*args: Any, **kw: Any) -> None:
            self.calls.append((name, *map(str, args), *(f"{k}={v}" for k, v in kw.items())))

        return call


class Runner:
    def __init__(self) -> None:
        self.links = FakeLinks()

    def run(self, call: Callable[[Any], object]) -> object:
        return call(self.links)


def setup() -> tuple[RouteLinks, Runner, list[str], list[MemoryTun]]:
    links, runner = RouteLinks(), Runner()
    pump_events: list[str] = []
    ends: list[MemoryTun] = []

    def opener(name: str) -> MemoryTun:
        ours, theirs = memory_tun_pair(name, f"k-{name}")
        ends.extend((ours, theirs))
        return ours

    links.attach(
        opener,
        runner,
        mtu=1400,
        on_open=lambda tun: pump_events.append(f"open {tun.name}"),
        on_close=lambda name: pump_events.append(f"close {name}"),
    )
    return links, runner, pump_events, ends


def test_interfaces_are_created_down_and_follow_the_child_sa() -> None:
    links, runner, pump_events, ends = setup()
    links.sync(parse_config(BASE), lambda name: False)
    assert pump_events == ["open lg-vpc"]  # the policy connection has none
    assert links.interface_of("vpc") == "lg-vpc" and links.interface_of("net") is None
    assert runner.links.calls == [("quiet_ipv6", "lg-vpc"), ("set_mtu", "lg-vpc", "1400")]
    runner.links.calls.clear()
    links.follow("vpc", True)
    assert runner.links.calls == [
        ("set_up", "lg-vpc"),
        ("add_address", "lg-vpc", "198.51.100.253/30"),
        ("add_address", "lg-vpc", "2001:db8:ff::1/126"),
        ("add_route", "203.0.113.0/24", "lg-vpc", "metric=100"),
    ]
    runner.links.calls.clear()
    links.follow("vpc", True)  # already up (a rekey's second SA): nothing
    links.follow("net", True)  # policy mode: nothing
    assert runner.links.calls == []
    links.follow("vpc", False)
    assert runner.links.calls == [("set_down", "lg-vpc")]
    assert links.status("vpc") == {"interface": "lg-vpc", "interface_up": False}
    links.close_all()
    assert pump_events[-1] == "close lg-vpc"
    for end in ends:
        end.close()


def test_a_reload_applies_changed_routes_and_removes_gone_interfaces() -> None:
    links, runner, pump_events, ends = setup()
    links.sync(parse_config(BASE), lambda name: True)  # up at once: it has an SA
    assert ("set_up", "lg-vpc") in runner.links.calls
    runner.links.calls.clear()
    changed = copy.deepcopy(BASE)
    changed["connections"]["vpc"]["routes"] = ["198.51.100.128/25"]
    changed["connections"]["vpc"]["route_metric"] = 50
    links.sync(parse_config(changed), lambda name: True)
    assert runner.links.calls[0] == ("remove_route", "203.0.113.0/24", "lg-vpc")
    assert ("add_route", "198.51.100.128/25", "lg-vpc", "metric=50") in runner.links.calls
    renamed = copy.deepcopy(changed)
    renamed["connections"]["vpc"]["interface"] = "vti0"
    links.sync(parse_config(renamed), lambda name: True)
    assert pump_events[-2:] == ["close lg-vpc", "open vti0"]
    del renamed["connections"]["vpc"]
    links.sync(parse_config(renamed), lambda name: False)
    assert pump_events[-1] == "close vti0" and links.links == {}
    for end in ends:
        end.close()


def test_status_text_shows_mode_and_interface() -> None:
    status = {
        "connections": [
            {"name": "vpc", "state": "up", "remote": "198.51.100.2", "remote_id": "x",
             "start": "initiate", "mode": "route", "interface": "lg-vpc", "interface_up": True},
            {"name": "net", "state": "down", "remote": "198.51.100.2", "remote_id": "x",
             "start": "initiate", "mode": "policy", "interface": "lockgate0",
             "interface_up": None},
        ]
    }  # fmt: skip
    text = format_status(status)
    assert "vpc: up, peer 198.51.100.2 (x), start initiate, route mode on lg-vpc (up)" in text
    assert "net: down, peer 198.51.100.2 (x), start initiate, policy mode on lockgate0\n" in text

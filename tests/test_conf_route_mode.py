"""conf: route-based connections (mode = "route"), their defaults and their mistakes."""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import pytest

from conf import ConfigError, parse_config
from conf.ike import child_config

PSK = "test-psk-NOT-SECRET-0123456789"

BASE: dict[str, Any] = {
    "gateway": {"addresses": ["198.51.100.1"], "id": "198.51.100.1"},
    "peers": {
        "dc1": {"address": "198.51.100.2", "psk": PSK},
        "dc2": {"address": "198.51.100.3", "psk": PSK},
    },
    "connections": {
        "vpc": {
            "peer": "dc1",
            "mode": "route",
            "inside_address": "198.51.100.253/30",
            "inside_address6": "2001:db8:ff::1/126",
            "routes": ["203.0.113.0/24", "2001:db8:b::/48"],
        },
    },
}


def config(**connections: dict[str, Any] | None) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    for name, body in connections.items():
        if body is None:
            data["connections"].pop(name, None)
        else:
            data["connections"].setdefault(name, {}).update(body)
    return data


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    return [str(p) for p in err.value.problems]


def test_route_mode_defaults() -> None:
    conn = parse_config(config()).connections["vpc"]
    assert conn.mode == "route"
    assert conn.interface == "lg-vpc"
    assert conn.inside_address == ipaddress.ip_interface("198.51.100.253/30")
    assert conn.inside_address6 == ipaddress.ip_interface("2001:db8:ff::1/126")
    assert [str(n) for n in conn.routes] == ["203.0.113.0/24", "2001:db8:b::/48"]
    assert conn.route_metric == 100
    # The selectors are everything unless given.
    assert [str(n) for n in conn.local_subnets] == ["0.0.0.0/0", "::/0"]
    assert [str(n) for n in conn.remote_subnets] == ["0.0.0.0/0", "::/0"]
    child = child_config(conn)
    assert [str(ts) for ts in child.local_ts] == ["0.0.0.0/0", "::/0"]


def test_policy_mode_is_the_default_and_has_no_interface() -> None:
    data = config(vpc=None, net={"peer": "dc1", "local_subnets": ["192.0.2.0/24"],
                                 "remote_subnets": ["203.0.113.0/24"]})  # fmt: skip
    conn = parse_config(data).connections["net"]
    assert conn.mode == "policy"
    assert conn.interface is None and conn.routes == ()


def test_default_interface_is_cut_to_15_characters() -> None:
    data = config(vpc=None, **{"a-very-long-connection-name": {"peer": "dc1", "mode": "route"}})
    conn = parse_config(data).connections["a-very-long-connection-name"]
    assert conn.interface == "lg-a-very-long-"
    assert len(conn.interface) == 15


def test_explicit_settings_and_subnets() -> None:
    subnets = {"local_subnets": ["192.0.2.0/25"], "remote_subnets": ["203.0.113.128/25"]}
    data = config(vpc={"interface": "vti0", "route_metric": 200, **subnets})
    conn = parse_config(data).connections["vpc"]
    assert conn.interface == "vti0" and conn.route_metric == 200
    assert [str(n) for n in conn.remote_subnets] == ["203.0.113.128/25"]


def test_two_route_connections_with_default_selectors_are_no_duplicate_pair() -> None:
    data = config(standby={"peer": "dc2", "mode": "route", "routes": ["203.0.113.0/24"],
                           "route_metric": 200, "inside_address": "198.51.100.249/30"})  # fmt: skip
    loaded = parse_config(data)
    assert loaded.connections["standby"].interface == "lg-standby"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"interface": "a-name-longer-than-15"}, "connections.vpc.interface: 'a-name-longer"),
        (
            {"interface": "lockgate0"},
            "connections.vpc.interface: 'lockgate0' is already used by gateway.interface",
        ),
        (
            {"inside_address": "198.51.100.253"},
            "connections.vpc.inside_address: '198.51.100.253' needs its prefix length",
        ),
        (
            {"inside_address": "2001:db8::1/64"},
            "connections.vpc.inside_address: '2001:db8::1/64' is not an IPv4 address",
        ),
        ({"inside_address6": "192.0.2.1/30"}, "connections.vpc.inside_address6: "),
        (
            {"routes": ["203.0.113.1/24"]},
            "connections.vpc.routes[0]: '203.0.113.1/24' has host bits",
        ),
        (
            {"routes": ["203.0.113.0/24", "203.0.113.0/24"]},
            "connections.vpc.routes: lists a prefix twice",
        ),
        ({"route_metric": -1}, "connections.vpc.route_metric: "),
        ({"mode": "tunnel"}, "connections.vpc.mode: must be one of"),
        ({"start": "trap"}, 'connections.vpc.start: "trap" needs policy mode'),
        ({"dpd_action": "trap"}, 'connections.vpc.dpd_action: "trap" needs policy mode'),
    ],
)
def test_route_mode_mistakes_name_the_key(changes: dict[str, Any], expected: str) -> None:
    found = problems(config(vpc=changes))
    assert any(p.startswith(expected) for p in found), found


@pytest.mark.parametrize("key", ["routes", "interface", "inside_address", "route_metric"])
def test_route_keys_in_policy_mode_are_refused(key: str) -> None:
    value = {"routes": ["203.0.113.0/24"], "interface": "vti0",
             "inside_address": "198.51.100.253/30", "route_metric": 5}[key]  # fmt: skip
    data = config(vpc=None, net={"peer": "dc1", "local_subnets": ["192.0.2.0/24"],
                                 "remote_subnets": ["203.0.113.0/24"], key: value})  # fmt: skip
    assert problems(data) == [
        f'connections.net.{key}: only for mode = "route" (this connection is policy-based)'
    ]


def test_interface_used_by_another_connection_is_refused() -> None:
    data = config(standby={"peer": "dc2", "mode": "route", "interface": "lg-vpc"})
    assert problems(data) == [
        "connections.standby.interface: 'lg-vpc' is already used by connections.vpc.interface"
    ]


def test_default_interfaces_that_collide_are_refused() -> None:
    data = config(
        vpc=None,
        **{
            "long-name-number-1": {"peer": "dc1", "mode": "route"},
            "long-name-number-2": {"peer": "dc2", "mode": "route"},
        },
    )
    [problem] = problems(data)
    assert problem.startswith("connections.long-name-number-2.interface: 'lg-long-name-nu'")


def test_inside_addresses_of_two_connections_must_not_overlap() -> None:
    data = config(standby={"peer": "dc2", "mode": "route", "inside_address": "198.51.100.254/30",
                           "inside_address6": "2001:db8:ff::/120"})  # fmt: skip
    assert problems(data) == [
        "connections.standby.inside_address: 198.51.100.254/30 overlaps "
        "connections.vpc.inside_address (198.51.100.252/30)",
        "connections.standby.inside_address6: 2001:db8:ff::/120 overlaps "
        "connections.vpc.inside_address6 (2001:db8:ff::/126)",
    ]


def test_inside_address_must_not_overlap_a_subnet_of_another_connection() -> None:
    data = config(net={"peer": "dc2", "local_subnets": ["192.0.2.0/24"],
                       "remote_subnets": ["198.51.100.128/25"]})  # fmt: skip
    assert problems(data) == [
        "connections.vpc.inside_address: 198.51.100.253/30 overlaps "
        "connections.net.remote_subnets 198.51.100.128/25"
    ]


def test_policy_and_route_connections_live_side_by_side() -> None:
    data = config(net={"peer": "dc2", "local_subnets": ["192.0.2.0/24"],
                       "remote_subnets": ["198.51.100.64/26"]})  # fmt: skip
    loaded = parse_config(data)
    assert [c.mode for c in loaded.connections.values()] == ["route", "policy"]

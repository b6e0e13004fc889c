"""The namespace lab for the test suite: pytest fixtures over `daemon.lab.netns`.

The lab itself (namespaces, veth, site-to-site topology, ping, hashed TCP transfer,
clean-up by PID) ships in the package so the demo and the benchmarks use the same one;
test modules keep importing its names from here. Fixtures: `lab`, `topology`,
`nat_topology` (import them into the test module).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from daemon.lab.netns import (
    DEFAULT_TIMEOUT,
    NAT_IN4,
    NAT_IN6,
    NATTED_A4,
    NATTED_A6,
    SITE_A,
    SITE_B,
    WAN_A4,
    WAN_A6,
    WAN_B4,
    WAN_B6,
    HarnessError,
    Lab,
    Namespace,
    Process,
    Site,
    SiteToSite,
    TransferResult,
    build_site_to_site,
    delete_namespace,
    in_namespace,
    namespace_exists,
    ping,
    ping_every_one,
    run_command,
    site_to_site,
    tcp_transfer,
    unique_prefix,
    wait_for_ping,
)

_run = run_command

__all__ = [
    "DEFAULT_TIMEOUT",
    "NATTED_A4",
    "NATTED_A6",
    "NAT_IN4",
    "NAT_IN6",
    "SITE_A",
    "SITE_B",
    "WAN_A4",
    "WAN_A6",
    "WAN_B4",
    "WAN_B6",
    "HarnessError",
    "Lab",
    "Namespace",
    "Process",
    "Site",
    "SiteToSite",
    "TransferResult",
    "_run",
    "build_site_to_site",
    "delete_namespace",
    "in_namespace",
    "lab",
    "namespace_exists",
    "nat_topology",
    "ping",
    "ping_every_one",
    "run_command",
    "site_to_site",
    "tcp_transfer",
    "topology",
    "unique_prefix",
    "wait_for_ping",
]


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as the_lab:
        yield the_lab


@pytest.fixture
def topology() -> Iterator[SiteToSite]:
    with site_to_site() as topo:
        yield topo


@pytest.fixture
def nat_topology() -> Iterator[SiteToSite]:
    with site_to_site(nat=True) as topo:
        yield topo

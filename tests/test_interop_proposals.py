"""Interop matrix, proposals: every IKE proposal and every ESP suite, with and
without PFS, in both directions, against strongSwan with real traffic.

A covering set rather than the cross product: per direction each of the four IKE
proposals and each of the five ESP suites appears at least once, and each ESP suite
runs with PFS in one direction and without it in the other. PFS only shows in a
rekey (the first CHILD SA takes its keys from IKE_AUTH, RFC 7296 §1.3.1, §2.17), so
every case also rekeys its CHILD SA from the side that did not initiate and checks
charon's group for the new one and the traffic on it.
"""

from __future__ import annotations

import pytest
from interop_helpers import (
    Case,
    check_sa_agreement,
    check_traffic,
    installed_child,
    interop,
    pfs_group,
    rekey_child,
)
from netns import ping

pytestmark = [pytest.mark.netns, pytest.mark.interop]

GCM256_X25519 = "aes256gcm16-prfsha384-x25519"
GCM128_ECP256 = "aes128gcm16-prfsha256-ecp256"
CBC_MODP2048 = "aes256-sha256-modp2048"
CHACHA_X448 = "chacha20poly1305-prfsha256-x448"

# (lockgate initiates, IKE proposal, ESP proposal)
CASES = [
    (True, GCM256_X25519, "aes128gcm16-x25519"),
    (True, GCM128_ECP256, "aes256gcm16"),
    (True, CBC_MODP2048, "chacha20poly1305"),
    (True, CHACHA_X448, "aes256-sha256"),
    (True, GCM256_X25519, "aes128-sha512-ecp256"),
    (False, GCM128_ECP256, "aes128gcm16"),
    (False, CBC_MODP2048, "aes256gcm16-modp2048"),
    (False, CHACHA_X448, "chacha20poly1305-x448"),
    (False, GCM256_X25519, "aes256-sha256-x25519"),
    (False, CHACHA_X448, "aes128-sha512"),
]


def _id(case: tuple[bool, str, str]) -> str:
    initiates, ike, esp = case
    return f"{'lg' if initiates else 'swan'}-init/{ike}/{esp}"


@pytest.mark.parametrize("spec", CASES, ids=[_id(c) for c in CASES])
def test_proposals_carry_traffic_and_rekey(spec: tuple[bool, str, str]) -> None:
    initiates, ike, esp = spec
    case = Case(lockgate_initiates=initiates, ike=ike, esp=esp)
    with interop(case) as world:
        world.bring_up()
        check_sa_agreement(world)
        check_traffic(world)

        # The responder rekeys (lockgate for strongSwan's SA and vice versa).
        new = rekey_child(world, "net4", by_lockgate=not initiates)
        child = installed_child(world.charon_ike(), "net4")
        assert child.dh_group == pfs_group(esp), child.raw
        assert int(child.spi_in, 16) == int(new["spi_out"], 16)
        ping(world.topo.host_a, world.topo.site_b.host4, count=3)
        ping(world.topo.host_b, world.topo.site_a.host4, count=3)
        check_sa_agreement(world)

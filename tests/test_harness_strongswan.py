"""The strongSwan harness: two charons in namespaces carry real traffic over userspace ESP."""

from __future__ import annotations

import os

import pytest
from netns import HarnessError, namespace_exists, ping, site_to_site, tcp_transfer
from strongswan import (
    Charon,
    Pki,
    SwanChild,
    SwanConnection,
    SwanSecret,
    install_credentials,
    logs_on_failure,
)

pytestmark = [pytest.mark.netns, pytest.mark.interop]

PSK = "lockgate-harness-test-psk-NOT-SECRET"


def _connection(
    local: str, remote: str, local_ts: str, remote_ts: str, *, esp: str = "aes128gcm16"
) -> SwanConnection:
    return SwanConnection(
        name="s2s",
        local_addrs=local,
        remote_addrs=remote,
        local_id=local,
        remote_id=remote,
        proposals="aes256gcm16-prfsha384-x25519",
        children=[SwanChild("net", [local_ts], [remote_ts], esp_proposals=esp)],
    )


@pytest.mark.parametrize("outer", [4, 6])
def test_two_charons_establish_a_child_sa_and_carry_traffic(outer: int) -> None:
    with site_to_site() as topo:
        a, b = Charon(topo.gw_a, "gwA"), Charon(topo.gw_b, "gwB")
        with logs_on_failure(a, b):
            a.start()
            b.start()
            if outer == 4:
                a_wan, b_wan = topo.gw_a_wan4, topo.gw_b_wan4
            else:
                a_wan, b_wan = topo.gw_a_wan6, topo.gw_b_wan6
            a.load(
                [_connection(a_wan, b_wan, topo.site_a.subnet4, topo.site_b.subnet4)],
                [SwanSecret("s2s", [a_wan, b_wan], PSK)],
            )
            b.load(
                [_connection(b_wan, a_wan, topo.site_b.subnet4, topo.site_a.subnet4)],
                [SwanSecret("s2s", [a_wan, b_wan], PSK)],
            )
            a.initiate("net", ike="s2s")
            ike_b = b.wait_for_child("net")
            grown = a.grow_socket_buffers()
            assert any(addr.endswith(", 4500)") for _, addr in grown)  # ESP in UDP
            ping(topo.host_a, topo.site_b.host4, count=4)
            tcp_transfer(topo.host_a, topo.host_b, topo.site_b.host4, size=2 * 1024 * 1024)

            [ike_a] = a.list_sas()
            assert ike_a.state == "ESTABLISHED" and ike_a.initiator
            assert (ike_a.encr_alg, ike_a.encr_keysize, ike_a.dh_group) == (
                "AES_GCM_16",
                "256",
                "CURVE_25519",
            )
            assert ike_b.remote_host == a_wan and not ike_b.initiator
            child = ike_a.child("net")
            assert child.state == "INSTALLED"
            assert child.encap  # kernel-libipsec always UDP-encapsulates
            assert child.local_ts == [topo.site_a.subnet4]
            assert child.remote_ts == [topo.site_b.subnet4]
            assert child.packets_out >= 4 and child.bytes_out > 2 * 1024 * 1024
            pids = (a.pid(), b.pid())

            assert a.terminate(ike="s2s")
            with pytest.raises(HarnessError):
                ping(topo.host_a, topo.site_b.host4, count=1, deadline=1)
            assert b.list_sas() == []
        names = [ns.name for ns in topo.lab.namespaces]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not any(namespace_exists(name) for name in names)


def test_wrong_psk_fails_with_charon_log() -> None:
    with site_to_site() as topo:
        a, b = Charon(topo.gw_a, "gwA"), Charon(topo.gw_b, "gwB")
        a.start()
        b.start()
        a_wan, b_wan = topo.gw_a_wan4, topo.gw_b_wan4
        a.load(
            [_connection(a_wan, b_wan, topo.site_a.subnet4, topo.site_b.subnet4)],
            [SwanSecret("s2s", [a_wan, b_wan], PSK)],
        )
        b.load(
            [_connection(b_wan, a_wan, topo.site_b.subnet4, topo.site_a.subnet4)],
            [SwanSecret("s2s", [a_wan, b_wan], PSK + "-wrong")],
        )
        with pytest.raises(HarnessError, match="AUTHENTICATION_FAILED"):
            a.initiate("net", ike="s2s", timeout=10)
        assert not any(ike.state == "ESTABLISHED" for ike in b.list_sas())


def test_certificates_with_an_intermediate_ca_through_a_nat() -> None:
    root = Pki("lockgate test root", "ecdsa-p256")
    intermediate = Pki("lockgate test intermediate", "ecdsa-p384", parent=root)
    creds = {
        "A": intermediate.issue("gw-a.example.net"),
        "B": intermediate.issue("gw-b.example.net"),
    }
    with site_to_site(nat=True) as topo:
        a, b = Charon(topo.gw_a, "gwA"), Charon(topo.gw_b, "gwB")
        with logs_on_failure(a, b):
            a.start()
            b.start()
            sides = (
                (a, "A", creds["B"], topo.gw_a_wan4, topo.gw_b_wan4, topo.site_a, topo.site_b),
                (b, "B", creds["A"], topo.gw_b_wan4, topo.gw_a_public4, topo.site_b, topo.site_a),
            )
            for charon, me, peer, local, remote, here, there in sides:
                cert = install_credentials(charon, creds[me], intermediate)
                charon.load(
                    [
                        SwanConnection(
                            name="s2s",
                            local_addrs=local,
                            remote_addrs=remote,
                            local_id=creds[me].id,
                            remote_id=peer.id,
                            local_auth="pubkey",
                            remote_auth="pubkey",
                            local_certs=[cert],
                            proposals="aes128gcm16-prfsha256-ecp256",
                            children=[
                                SwanChild("v4", [here.subnet4], [there.subnet4]),
                                SwanChild("v6", [here.subnet6], [there.subnet6]),
                            ],
                        )
                    ]
                )
            a.initiate("v4", ike="s2s")
            a.initiate("v6", ike="s2s")
            ike_b = b.wait_for_child("v6")
            ping(topo.host_a, topo.site_b.host4, count=2)
            ping(topo.host_a, topo.site_b.host6, count=2)
            # B sees A through the router: the real NAT is detected, A's public address.
            assert ike_b.remote_host == topo.gw_a_public4 and ike_b.nat_remote
            assert ike_b.remote_id == "gw-a.example.net"
            assert {c.name for c in ike_b.children} == {"v4", "v6"}
            [ike_a] = a.list_sas()
            assert ike_a.nat_local and ike_a.remote_port == "4500"

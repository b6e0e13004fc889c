"""Many strongSwan clients on lockgate's ikev2 server at once: two behind one NAT
router, one user on several devices, and a full address pool.

The lab is `testkit.ra_lab` with a masquerading router (nftables) in front of two
client namespaces: both reach the server from 198.51.100.3, and charon moves each to
port 4500 (NAT-T, RFC 7296 §2.23), so the NAT gives them different source ports. The
pool is a /29 with three addresses reserved as static IPs of users who never connect:
the server takes .1, so clients get .2 and .3 and a third is refused with
INTERNAL_ADDRESS_FAILURE (§1.2, §3.15.4). With `connections_per_user = 1` (a reload),
a charon killed without a Delete logs in again: its INITIAL_CONTACT (§2.4) replaces
the stale session instead of being refused by it.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from netns import ping

from testkit.daemon import wait_until
from testkit.ra_lab import CLOUD, NAT_OUTSIDE, RaLab, missing_strongswan, ra_lab
from testkit.strongswan import HarnessError

pytestmark = [pytest.mark.netns, pytest.mark.interop]

POOL = "192.0.2.0/29"
DYNAMIC = {"192.0.2.2", "192.0.2.3"}
SERVER_SECTION = f"""
[remote_access.laptops]
protocol = "ikev2"
client_pool = "{POOL}"
local_subnets = ["203.0.113.0/24"]
users = "{{d}}/laptops.users"
address = "vpn.example.net"
max_connections = 5
connections_per_user = 2
"""


@pytest.fixture(scope="module")
def ra() -> Iterator[RaLab]:
    reason = missing_strongswan()
    if reason is not None:
        pytest.skip(reason)
    users = [(name, []) for name in ("alice", "bob", "carol")]
    users += [(f"away{i}", ["--static-ip", f"192.0.2.{4 + i}"]) for i in range(3)]
    with ra_lab(SERVER_SECTION, users, nat_clients=2) as lab:
        yield lab


def _rows(ra: RaLab) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(ra.lockgate("clients", "--json"))
    return rows


def test_two_clients_behind_one_nat_router(ra: RaLab) -> None:
    ra.wait_no_clients()
    (one, two) = ra.behind_nat
    charon_a, ike_a = ra.connected("alice", ns=one)
    charon_b, ike_b = ra.connected("bob", ns=two)
    try:
        # charon saw the NAT and floated to 4500; each has its own virtual IP.
        assert ike_a.nat_local and ike_b.nat_local, (ike_a.raw, ike_b.raw)
        assert ike_a.remote_port == ike_b.remote_port == "4500"
        vips = {ike.child("cloud").local_ts[0] for ike in (ike_a, ike_b)}
        assert vips == {f"{a}/32" for a in DYNAMIC}, vips
        with ThreadPoolExecutor(2) as pool:
            pings = [pool.submit(ping, ns, CLOUD, count=5, deadline=10) for ns in (one, two)]
            for done in pings:
                done.result()
        rows = _rows(ra)
        by_user = {r["user"]: r for r in rows}
        assert set(by_user) == {"alice", "bob"}, rows
        remotes = [str(by_user[u]["remote"]) for u in ("alice", "bob")]
        # The same outside address, two NAT mappings (ports) of it.
        assert all(r.startswith(f"{NAT_OUTSIDE}:") for r in remotes), remotes
        assert remotes[0] != remotes[1], remotes
        assert {by_user[u]["virtual_ip"] for u in by_user} == DYNAMIC
        assert all(int(str(by_user[u]["bytes_in"])) > 0 for u in by_user), rows
    finally:
        charon_a.stop()
        charon_b.stop()


def test_one_user_on_devices_up_to_connections_per_user(ra: RaLab) -> None:
    ra.wait_no_clients()
    laptop, _ = ra.connected("carol", ns=ra.behind_nat[0])
    phone, _ = ra.connected("carol")
    third = ra.charon("carol", ns=ra.another_client("tablet", "198.51.100.5"))
    try:
        with pytest.raises(HarnessError):
            third.initiate("cloud", "lockgate", timeout=10)
        ra.wait_log("login of carol from 198.51.100.5 refused: too many sessions")
        assert sorted(str(r["user"]) for r in _rows(ra)) == ["carol", "carol"]
        ping(ra.client, CLOUD, count=2)
        ping(ra.behind_nat[0], CLOUD, count=2)
    finally:
        for charon in (laptop, phone, third):
            charon.stop()


def test_a_full_pool_refuses_the_next_client(ra: RaLab) -> None:
    ra.wait_no_clients()
    (one, two) = ra.behind_nat
    charon_a, _ = ra.connected("alice", ns=one)
    charon_b, _ = ra.connected("bob", ns=two)
    late = ra.charon("carol")
    try:
        with pytest.raises(HarnessError):
            late.initiate("cloud", "lockgate", timeout=10)
        line = (
            f"ikev2 laptops: carol from 198.51.100.1 refused: pool exhausted (client pool "
            f"{POOL} exhausted (2 in use))"
        )
        ra.wait_log(line)
        # The server's one line says so (the IKE core and the generic event log have
        # their own lines about the CHILD SA; an info line records the deletion).
        ours = [
            x for x in ra.log().splitlines() if "WARNING daemon.ikev2_ra" in x and "exhausted" in x
        ]
        assert len(ours) == 1 and line in ours[0], ours
        # charon was told why (§3.15.4) and keeps no SA.
        assert "received INTERNAL_ADDRESS_FAILURE notify" in late.logs()
        assert not any(ike.children for ike in late.list_sas())
        # The clients that hold the pool are unharmed.
        ping(one, CLOUD, count=2)
    finally:
        for charon in (charon_a, charon_b, late):
            charon.stop()


def test_a_restarted_client_is_not_refused_by_its_stale_session(ra: RaLab) -> None:
    ra.wait_no_clients()
    one = SERVER_SECTION.replace("connections_per_user = 2", "connections_per_user = 1")
    ra.write_conf(one.replace("{d}", str(ra.dir)))
    ra.lockgate("reload")
    lost, _ = ra.connected("bob")
    again = None
    try:
        # The laptop crashes: no Delete, the server still holds bob's IKE SA.
        assert lost.process is not None
        lost.process.signal(signal.SIGKILL)
        lost.process.popen.wait(5)
        assert [r["user"] for r in _rows(ra)] == ["bob"]
        seen = len(ra.log())  # the module's daemon log: this test's part follows
        again, ike = ra.connected("bob")
        assert ike.child("cloud").state == "INSTALLED"
        wait_until(
            lambda: "replaced: the peer restarted (INITIAL_CONTACT)" in ra.log()[seen:],
            "the stale IKE SA to be replaced",
        )
        assert "too many sessions" not in ra.log()[seen:]
        (row,) = _rows(ra)
        assert row["user"] == "bob", row
        ping(ra.client, CLOUD, count=2)
    finally:
        for charon in (lost, again):
            if charon is not None:
                charon.stop()
        ra.write_conf(SERVER_SECTION.replace("{d}", str(ra.dir)))
        ra.lockgate("reload")

"""strongSwan's charon as an IKEv2 road-warrior client of lockgate's ikev2
point-to-cloud server, in namespaces, through the gateway daemon.

    client ns (charon, EAP-MSCHAPv2) --wan 198.51.100.0/25-- gateway ns (lockgate daemon)
                                                               | lan 203.0.113.0/24
                                                            cloud ns (203.0.113.10, .200)

The client is configured as a new user would configure it: EAP-MSCHAPv2 with the
user's password, the server authenticated by its certificate (the CA in x509ca/), a
virtual IP asked for (`vips = 0.0.0.0`; the pool is 192.0.2.0/24), the cloud subnet as
remote_ts (the lab is `testkit.ra_lab`). The daemon reads `[remote_access.laptops]
protocol = "ikev2"` from its TOML file; users are added with `lockgate user add ...
--password-stdin`. Processes are stopped by PID; the lab removes the namespaces.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from netns import ping

from testkit.daemon import wait_until
from testkit.ra_lab import CLOUD, CLOUD_OUTSIDE_GROUP, RaLab, missing_strongswan, ra_lab
from testkit.strongswan import HarnessError

pytestmark = [pytest.mark.netns, pytest.mark.interop]

SERVER_SECTION = """
[remote_access.laptops]
protocol = "ikev2"
client_pool = "192.0.2.0/24"
local_subnets = ["203.0.113.0/24"]
dns = ["203.0.113.53"]
dns_domains = ["corp.example.net"]
users = "{d}/laptops.users"
address = "vpn.example.net"
max_connections = 50

[remote_access.laptops.groups.eng]
destinations = ["203.0.113.0/25"]

[remote_access.laptops.groups.all]
destinations = ["203.0.113.0/24"]
"""


@pytest.fixture(scope="module")
def ra() -> Iterator[RaLab]:
    reason = missing_strongswan()
    if reason is not None:
        pytest.skip(reason)
    users = (
        ("alice", ["--group", "all"]),
        ("sam", ["--group", "all", "--static-ip", "192.0.2.77"]),
        ("bob", ["--group", "eng"]),
        ("nogroup", []),
    )
    with ra_lab(SERVER_SECTION, users) as lab:
        assert all("NT hash" in out for out in lab.added.values()), lab.added
        yield lab


def test_password_login_reaches_the_cloud_with_a_virtual_ip_dns_and_split_routes(
    ra: RaLab,
) -> None:
    charon, ike = ra.connected("alice")
    try:
        child = ike.child("cloud")
        # The virtual IP from the pool is the client's selector; only the cloud subnet
        # is routed (split tunnel).
        assert child.local_ts == ["192.0.2.2/32"], child.local_ts
        assert child.remote_ts == ["203.0.113.0/24"], child.remote_ts
        ping(ra.client, CLOUD, count=3)
        resolv = (charon.rundir / "resolv.conf").read_text()
        assert "nameserver 203.0.113.53" in resolv, resolv
        rows = json.loads(ra.lockgate("clients", "--json"))
        (row,) = [r for r in rows if r["protocol"] == "ikev2"]
        assert row["user"] == "alice" and row["virtual_ip"] == "192.0.2.2"
        assert row["remote"].startswith("198.51.100.1:") and row["bytes_in"] > 0
        status = json.loads(ra.lockgate("status", "--json"))
        (srv,) = [s for s in status["remote_access"] if s["name"] == "laptops"]
        assert srv["protocol"] == "ikev2" and srv["clients"] == 1
        assert "ikev2 laptops: alice connected from 198.51.100.1" in ra.log()
    finally:
        charon.stop()


def test_a_static_ip(ra: RaLab) -> None:
    charon, ike = ra.connected("sam")
    try:
        assert ike.child("cloud").local_ts == ["192.0.2.77/32"]
        ping(ra.client, CLOUD, count=2)
    finally:
        charon.stop()


def test_a_group_reaches_only_its_destinations(ra: RaLab) -> None:
    charon, ike = ra.connected("bob")
    try:
        # Narrowed to the group's destinations: the data plane carries nothing else.
        assert ike.child("cloud").remote_ts == ["203.0.113.0/25"]
        ping(ra.client, CLOUD, count=2)
        proc = ra.client.run("ping", "-c", "2", "-W", "1", CLOUD_OUTSIDE_GROUP, check=False)
        assert proc.returncode != 0
    finally:
        charon.stop()


def test_a_user_in_no_group_is_refused_by_policy(ra: RaLab) -> None:
    charon = ra.charon("nogroup")
    try:
        with pytest.raises(HarnessError):
            charon.initiate("cloud", "lockgate", timeout=10)
        wait_until(lambda: "nogroup from 198.51.100.1 refused: policy" in ra.log(), "refusal")
    finally:
        charon.stop()


def test_a_wrong_password_is_refused(ra: RaLab) -> None:
    charon = ra.charon("alice", "not-the-Pass1")
    try:
        with pytest.raises(HarnessError):
            charon.initiate("cloud", "lockgate", timeout=10)
        wait_until(
            lambda: "login of alice from 198.51.100.1 refused: wrong password" in ra.log(),
            "the refusal in the log",
        )
        assert "EAP" in charon.logs()
    finally:
        charon.stop()


def test_disconnect_sends_a_delete(ra: RaLab) -> None:
    charon, _ = ra.connected("alice")
    try:
        out = ra.lockgate("disconnect", "laptops", "alice")
        assert "1 IKE SA(s) of alice deleted" in out
        deadline = time.monotonic() + 10
        while charon.list_sas() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert charon.list_sas() == [], charon.logs()[-3000:] + ra.log()[-3000:]
        wait_until(lambda: "alice (192.0.2.2) from 198.51.100.1 disconnected" in ra.log(), "log")
    finally:
        charon.stop()

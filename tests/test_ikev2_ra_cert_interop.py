"""strongSwan's charon as a road-warrior client of lockgate's ikev2 server with client
certificates (RFC 7427), as the strongSwan and Android clients use them.

The lab is `testkit.ra_lab`: one client namespace straight on the WAN. The server has
`auth = "certificate"` with the lab CA as `client_ca`; the user name is the
certificate's CN, and the users file gives it a group. Then the same lab restarts the
daemon with `auth = "any"`: a password client and a certificate client side by side.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from netns import ping

from testkit.pki import Pki
from testkit.ra_lab import CLOUD, CLOUD_OUTSIDE_GROUP, RaLab, missing_strongswan, ra_lab
from testkit.strongswan import HarnessError

pytestmark = [pytest.mark.netns, pytest.mark.interop]

SERVER_SECTION = """
[remote_access.laptops]
protocol = "ikev2"
client_pool = "192.0.2.0/24"
local_subnets = ["203.0.113.0/24"]
auth = "{auth}"
client_ca = "{d}/ca.pem"
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
    users = (("carol", ["--certificate", "--group", "eng"]),)
    with ra_lab(SERVER_SECTION.replace("{auth}", "certificate"), users) as lab:
        yield lab


def test_a_client_certificate_logs_in_as_its_cn_with_its_group(ra: RaLab) -> None:
    cert = ra.pki.issue_client("carol")
    charon, ike = ra.connected("carol", certificate=cert)
    try:
        assert ike.local_id == cert.dn, ike.local_id
        child = ike.child("cloud")
        assert child.local_ts == ["192.0.2.2/32"], child.local_ts
        # carol's group (eng) narrows what she reaches: the users file applies by CN.
        assert child.remote_ts == ["203.0.113.0/25"], child.remote_ts
        ping(ra.client, CLOUD, count=2)
        proc = ra.client.run("ping", "-c", "2", "-W", "1", CLOUD_OUTSIDE_GROUP, check=False)
        assert proc.returncode != 0
        rows = [r for r in json.loads(ra.lockgate("clients", "--json")) if r["user"] == "carol"]
        assert [r["virtual_ip"] for r in rows] == ["192.0.2.2"], rows
        assert "ikev2 laptops: carol connected from 198.51.100.1" in ra.log()
    finally:
        charon.stop()


def test_a_certificate_of_an_untrusted_ca_is_refused(ra: RaLab) -> None:
    rogue = Pki("rogue CA").issue_client("carol")
    charon = ra.charon("carol", certificate=rogue)
    try:
        with pytest.raises(HarnessError):
            charon.initiate("cloud", "lockgate", timeout=10)
        # The one refusal line says why: the certificate's CA is not the client CA.
        ra.wait_log(
            "login of ? from 198.51.100.1 refused: certificate of carol is signed by an "
            "unknown CA 'CN=rogue CA,O=lockgate test,C=XX'"
        )
        assert "AUTHENTICATION_FAILED" in charon.logs()
    finally:
        charon.stop()


def test_a_certificate_of_an_unknown_user_is_refused(ra: RaLab) -> None:
    # The users file lists who may log in; the CA may have issued certificates to others.
    stranger = ra.pki.issue_client("mallory")
    charon = ra.charon("mallory", certificate=stranger)
    try:
        with pytest.raises(HarnessError):
            charon.initiate("cloud", "lockgate", timeout=10)
        ra.wait_log("login of mallory from 198.51.100.1 refused: unknown user")
        assert "AUTHENTICATION_FAILED" in charon.logs()
    finally:
        charon.stop()


def test_auth_any_serves_a_password_client_and_a_certificate_client(ra: RaLab) -> None:
    ra.write_conf(SERVER_SECTION.replace("{auth}", "any").replace("{d}", str(ra.dir)))
    ra.add_user("alice", "--group", "all")
    ra.start_daemon()
    other = ra.another_client("cli2", "198.51.100.4")
    with_password, _ = ra.connected("alice", ns=other)
    with_cert, ike = ra.connected("carol", certificate=ra.pki.issue_client("carol"))
    try:
        assert ike.child("cloud").remote_ts == ["203.0.113.0/25"]
        ping(other, CLOUD, count=2)
        ping(ra.client, CLOUD, count=2)
        rows = json.loads(ra.lockgate("clients", "--json"))
        assert sorted(r["user"] for r in rows) == ["alice", "carol"], rows
        log = ra.log()
        assert "alice connected from 198.51.100.4" in log and "carol connected from" in log
    finally:
        with_password.stop()
        with_cert.stop()

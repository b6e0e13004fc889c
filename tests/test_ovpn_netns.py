"""The stock OpenVPN 2.6 client against lockgate's SSL VPN server, in namespaces.

    client ns (openvpn) --wan 198.51.100.0/24-- gateway ns (python -m daemon.ssl_vpn)
                                                  | lan 203.0.113.0/24
                                               cloud ns (203.0.113.10)

The server hands out 192.0.2.0/24 and pushes the cloud subnet as a route. Each case
starts one client, waits for "Initialization Sequence Completed" (or AUTH_FAILED),
checks traffic and stops the client by its PID; the lab removes the namespaces.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from netns import Lab, Namespace, Process, ping, tcp_transfer
from test_ovpn_session import make_server_pki

pytestmark = pytest.mark.netns

SERVER = "198.51.100.2"
CLOUD_HOST = "203.0.113.10"
PORT = 1194
PASSWORD = "s3cret-Pass"
CONNECT_TIMEOUT = 20.0
REPO = Path(__file__).resolve().parent.parent


@dataclass
class OvpnLab:
    lab: Lab
    client: Namespace
    gateway: Namespace
    cloud: Namespace
    server: Process
    ca_pem: str

    def profile(self, proto: str, cipher: str, name: str, port: int = PORT) -> Path:
        path = self.lab.tmpdir / f"{name}.ovpn"
        path.write_text(
            f"""client
dev tun
proto {proto}
remote {SERVER} {port}
nobind
remote-cert-tls server
data-ciphers {cipher}
auth SHA256
auth-user-pass
auth-retry none
reneg-sec 0
pull-filter ignore dhcp-option
connect-retry-max 1
verb 3
<ca>
{self.ca_pem}</ca>
"""
        )
        return path

    def start_client(
        self,
        proto: str,
        cipher: str,
        password: str = PASSWORD,
        port: int = PORT,
        *extra: str,
    ) -> Process:
        name = f"client-{proto}-{cipher}-{time.monotonic_ns()}"
        creds = self.lab.tmpdir / f"{name}.creds"
        creds.write_text(f"alice\n{password}\n")
        creds.chmod(0o600)
        return self.client.spawn(
            [
                "openvpn",
                "--config",
                str(self.profile(proto, cipher, name, port)),
                "--auth-user-pass",
                str(creds),
                *extra,
            ],
            name="openvpn",
            log_path=self.lab.tmpdir / f"{name}.log",
        )


def wait_for_log(proc: Process, *needles: str, timeout: float = CONNECT_TIMEOUT) -> str:
    """The first of `needles` that shows up in the client's log within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = proc.log()
        for needle in needles:
            if needle in log:
                return needle
        if not proc.alive():
            break
        time.sleep(0.2)
    raise AssertionError(f"none of {needles} in the client log:\n{proc.log()[-3000:]}")


@pytest.fixture(scope="module")
def ovpn_lab() -> Iterator[OvpnLab]:
    if shutil.which("openvpn") is None:
        reason = "needs the 'openvpn' command (Debian package openvpn)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("CI must run this test but it " + reason, pytrace=False)
        pytest.skip(reason)
    with Lab(prefix=f"lgovpn-{os.getpid()}") as lab:
        client, gateway, cloud = lab.namespace("cli"), lab.namespace("gw"), lab.namespace("cloud")
        lab.veth(client, "wan0", gateway, "wan0")
        lab.veth(gateway, "lan0", cloud, "lan0")
        client.ip("addr", "add", "198.51.100.1/24", "dev", "wan0")
        gateway.ip("addr", "add", f"{SERVER}/24", "dev", "wan0")
        gateway.ip("addr", "add", "203.0.113.1/24", "dev", "lan0")
        cloud.ip("addr", "add", f"{CLOUD_HOST}/24", "dev", "lan0")
        cloud.ip("route", "add", "192.0.2.0/24", "via", "203.0.113.1")
        gateway.sysctl("net.ipv4.ip_forward", 1)

        pki = make_server_pki()
        pki.write(lab.tmpdir)
        users = lab.tmpdir / "users"
        users.write_text(f"alice:{PASSWORD}\n")
        users.chmod(0o600)
        server = start_server(lab, gateway, PORT, "192.0.2.0/25", "lgovpn0")
        yield OvpnLab(lab, client, gateway, cloud, server, pki.ca_pem.decode())
        server.stop()
        assert "Traceback" not in server.log(), server.log()


def start_server(
    lab: Lab, gateway: Namespace, port: int, pool: str, tun: str, *extra: str
) -> Process:
    """`python -m daemon.ssl_vpn` in the gateway, with the PKI and users in lab.tmpdir."""
    d = lab.tmpdir
    server = gateway.spawn(
        [
            sys.executable,
            "-m",
            "daemon.ssl_vpn",
            "--listen",
            SERVER,
            "--port",
            str(port),
            "--transport",
            "both",
            "--cert",
            str(d / "server.pem"),
            "--key",
            str(d / "server.key"),
            "--pool",
            pool,
            "--route",
            "203.0.113.0/24",
            "--users-file",
            str(d / "users"),
            "--tun",
            tun,
            *extra,
        ],
        name="ssl-vpn",
        log_path=d / f"server-{port}-{time.monotonic_ns()}.log",
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    deadline = time.monotonic() + 10
    while "listening on" not in server.log():
        assert server.alive(), server.log()
        assert time.monotonic() < deadline, "server did not start:\n" + server.log()
        time.sleep(0.1)
    return server


@pytest.mark.parametrize("proto", ["udp", "tcp"])
@pytest.mark.parametrize("cipher", ["AES-128-GCM", "AES-256-GCM", "CHACHA20-POLY1305"])
def test_stock_client_connects_and_reaches_the_cloud(
    ovpn_lab: OvpnLab, proto: str, cipher: str
) -> None:
    client = ovpn_lab.start_client(proto, cipher)
    try:
        found = wait_for_log(client, "Initialization Sequence Completed", "AUTH_FAILED")
        assert found == "Initialization Sequence Completed", client.log()[-3000:]
        assert f"Data Channel: cipher '{cipher}'" in client.log()
        ping(ovpn_lab.client, CLOUD_HOST, count=3)
        result = tcp_transfer(
            ovpn_lab.client, ovpn_lab.cloud, CLOUD_HOST, size=1024 * 1024, timeout=20
        )
        print(f"{proto} {cipher}: 1 MiB in {result.seconds:.2f} s")
        assert result.peer_address.endswith("192.0.2.2")
    finally:
        client.stop()


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_wrong_password_gets_auth_failed(ovpn_lab: OvpnLab, proto: str) -> None:
    client = ovpn_lab.start_client(proto, "AES-256-GCM", password="not-the-Password")
    try:
        assert wait_for_log(client, "AUTH_FAILED", "Initialization Sequence Completed") == (
            "AUTH_FAILED"
        )
    finally:
        client.stop()
    assert "refused: wrong user name or password" in ovpn_lab.server.log()
    assert "not-the-Password" not in ovpn_lab.server.log()


@pytest.mark.parametrize("initiator", ["server", "client"])
@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_renegotiation_under_a_ping_flood_loses_nothing(
    ovpn_lab: OvpnLab, proto: str, initiator: str
) -> None:
    port = 1195 if proto == "udp" else 1196
    server_args = ("--renegotiate", "3") if initiator == "server" else ()
    client_args = ("--reneg-sec", "3") if initiator == "client" else ()
    server = start_server(
        ovpn_lab.lab, ovpn_lab.gateway, port, "192.0.2.128/25", f"lgovpn{port - 1194}", *server_args
    )
    client = ovpn_lab.start_client(proto, "AES-128-GCM", PASSWORD, port, *client_args)
    try:
        wait_for_log(client, "Initialization Sequence Completed")
        # 400 pings 20 ms apart span about three renegotiations.
        proc = ping(ovpn_lab.client, CLOUD_HOST, count=400, interval=0.02, deadline=30)
        assert " 0% packet loss" in proc.stdout, proc.stdout
        renegotiations = client.log().count("Control Channel: TLS") - 1
        assert renegotiations >= 2, client.log()[-3000:]
    finally:
        client.stop()
        server.stop()
    assert "Traceback" not in server.log(), server.log()


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_tls_crypt(ovpn_lab: OvpnLab, proto: str) -> None:
    key = ovpn_lab.lab.tmpdir / "tls-crypt.key"
    if not key.exists():
        ovpn_lab.gateway.run("openvpn", "--genkey", "tls-crypt", str(key))
    port = 1197 if proto == "udp" else 1198
    server = start_server(
        ovpn_lab.lab,
        ovpn_lab.gateway,
        port,
        "192.0.2.128/25",
        f"lgovpn{port - 1194}",
        "--tls-crypt",
        str(key),
    )
    client = ovpn_lab.start_client(proto, "AES-256-GCM", PASSWORD, port, "--tls-crypt", str(key))
    try:
        wait_for_log(client, "Initialization Sequence Completed")
        ping(ovpn_lab.client, CLOUD_HOST, count=3)
    finally:
        client.stop()
    # A client without the key gets nowhere: its packets are dropped unanswered.
    stranger = ovpn_lab.start_client(proto, "AES-256-GCM", PASSWORD, port)
    try:
        time.sleep(3)
        assert "Initialization Sequence Completed" not in stranger.log()
        assert "Control Channel: TLS" not in stranger.log()
    finally:
        stranger.stop()
        server.stop()
    assert "Traceback" not in server.log(), server.log()

"""The stock OpenVPN 2.6 client against lockgate's point-to-cloud SSL servers, in
namespaces, through the gateway daemon (`lockgate daemon`).

    client ns (openvpn) --wan 198.51.100.0/24-- gateway ns (lockgate daemon)
                                                  | lan 203.0.113.0/24
                                               cloud ns (203.0.113.10 and .200)

One daemon serves four servers for the whole module (`p2c_setup` writes them):
- office (TCP 443, passwords), pool 192.0.2.0/25, sam has the static 192.0.2.77;
- field (UDP 1194, passwords), pool 192.0.2.128/25, a group "eng" that reaches only
  203.0.113.0/25: alice is in it, bob is in none (reaches nothing);
- certs (TCP 1443, client certificates), pool 198.51.100.128/26;
- wrapped (UDP 1195, passwords, tls-crypt), pool 198.51.100.192/26.
Each case starts its clients and stops them by PID; the lab removes the namespaces.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from netns import Lab, Namespace, Process, ping, tcp_transfer
from test_ovpn_session import make_server_pki
from test_p2c_auth import client_certificate

from conf.users import User, hash_password, save_users
from testkit.daemon import wait_until

pytestmark = pytest.mark.netns

SERVER = "198.51.100.2"
CLOUD = "203.0.113.10"
CLOUD_OUTSIDE_GROUP = "203.0.113.200"
PASSWORD = "s3cret-Pass"
CONNECT_TIMEOUT = 20.0
REPO = Path(__file__).resolve().parent.parent

SERVERS: dict[str, dict[str, Any]] = {
    "office": {"transport": "tcp", "port": 443, "client_pool": "192.0.2.0/25"},
    "field": {
        "transport": "udp",
        "port": 1194,
        "client_pool": "192.0.2.128/25",
        "groups": {"eng": ["203.0.113.0/25"]},
    },
    "certs": {"transport": "tcp", "port": 1443, "client_pool": "198.51.100.128/26",
              "auth": "certificate"},
    "wrapped": {"transport": "udp", "port": 1195, "client_pool": "198.51.100.192/26",
                "tls_crypt": True},
}  # fmt: skip
USERS: dict[str, dict[str, Any]] = {
    "office": {"alice": {}, "sam": {"static_ip": "192.0.2.77"}, "dave": {}},
    "field": {"alice": {"group": "eng"}, "bob": {}},
    "certs": {"carol": {}},
    "wrapped": {"alice": {}},
}


@dataclass
class P2cLab:
    lab: Lab
    client: Namespace
    gateway: Namespace
    cloud: Namespace
    ca_pem: str
    daemon: Process | None = None
    socket: str = ""
    profiles: dict[str, str] = field(default_factory=dict)

    @property
    def tmp(self) -> Path:
        return self.lab.tmpdir

    def lockgate(self, *args: str) -> str:
        proc = self.gateway.run(
            sys.executable, "-m", "daemon.cli", "-s", self.socket, *args, check=False
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    def clients(self) -> list[dict[str, Any]]:
        result = json.loads(self.lockgate("clients", "--json"))
        assert isinstance(result, list)
        return result

    def status(self) -> dict[str, Any]:
        result = json.loads(self.lockgate("status", "--json"))
        return {srv["name"]: srv for srv in result["remote_access"]}

    def log(self) -> str:
        assert self.daemon is not None
        return self.daemon.log()

    def start_client(
        self, server: str, user: str | None = "alice", password: str = PASSWORD, *extra: str
    ) -> Process:
        name = f"{server}-{user}-{time.monotonic_ns()}"
        profile = self.tmp / f"{name}.ovpn"
        profile.write_text(self.profiles[server])
        args = ["openvpn", "--config", str(profile), "--verb", "3", *extra]
        if user is not None and SERVERS[server].get("auth") != "certificate":
            creds = self.tmp / f"{name}.creds"
            creds.write_text(f"{user}\n{password}\n")
            creds.chmod(0o600)
            args += ["--auth-user-pass", str(creds), "--auth-retry", "none"]
        return self.client.spawn(args, name="openvpn", log_path=self.tmp / f"{name}.log")

    def connect(self, server: str, user: str = "alice", *extra: str) -> Process:
        client = self.start_client(server, user, PASSWORD, *extra)
        found = wait_for_log(client, "Initialization Sequence Completed", "AUTH_FAILED")
        assert found == "Initialization Sequence Completed", client.log()[-3000:]
        return client


def wait_for_log(proc: Process, *needles: str, timeout: float = CONNECT_TIMEOUT) -> str:
    """The first of `needles` that shows up in the process's log within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = proc.log()
        for needle in needles:
            if needle in log:
                return needle
        if not proc.alive():
            break
        time.sleep(0.2)
    raise AssertionError(f"none of {needles} in the log:\n{proc.log()[-3000:]}")


# ---- The one place that sets servers, users and profiles up ---------------------------


BRIDGE = """
import dataclasses, ipaddress, json, sys
from pathlib import Path
import daemon.gateway as gateway
from conf.model import GroupConfig, RemoteAccessConfig
spec = json.loads(Path(sys.argv[1]).read_text())
load = gateway.load_config
def servers():
    out = {}
    for name, s in json.loads(json.dumps(spec)).items():
        groups = {g: GroupConfig(g, tuple(ipaddress.ip_network(d) for d in ds))
                  for g, ds in s.pop("groups", {}).items()}
        for key in ("client_pool",):
            s[key] = ipaddress.ip_network(s[key])
        s["local_subnets"] = tuple(ipaddress.ip_network(n) for n in s["local_subnets"])
        s["dns"] = tuple(ipaddress.ip_address(a) for a in s.get("dns", ()))
        for key in ("users", "certificate", "private_key", "client_ca", "tls_crypt_key"):
            if s.get(key):
                s[key] = Path(s[key])
        out[name] = RemoteAccessConfig(name=name, protocol="ssl", groups=groups, **s)
    return out
def load_config(path, **kw):
    return dataclasses.replace(load(path, **kw), remote_access=servers())
gateway.load_config = load_config
from daemon.cli import main
sys.exit(main(sys.argv[2:]))
"""
"""Until the loader reads `[remote_access.NAME]`: the same servers, built from their
dataclass. The switch to the real path is local to `p2c_setup`: the TOML sections,
`lockgate user add --password-stdin` and `lockgate profile`."""


def p2c_setup(p2c: P2cLab) -> None:
    """Write the daemon's configuration, the users files and one profile per server."""
    d = p2c.tmp
    ca, cert, key = d / "ca.pem", d / "server.pem", d / "server.key"
    tls_crypt = d / "tls-crypt.key"
    p2c.gateway.run("openvpn", "--genkey", "tls-crypt", str(tls_crypt))
    (d / "gateway.toml").write_text(
        f"""
[gateway]
addresses = ["{SERVER}"]
id = "{SERVER}"
interface = "lgp2c0"

[peers.nobody]
address = "198.51.100.99"
psk = "unused-in-this-test-0123456789abcdef"

[connections.unused]
peer = "nobody"
local_subnets = ["203.0.113.0/24"]
remote_subnets = ["198.51.100.32/27"]
start = "wait"
"""
    )
    spec: dict[str, dict[str, Any]] = {}
    hashed = hash_password(PASSWORD)
    for name, server in SERVERS.items():
        users = {}
        for user, extra in USERS[name].items():
            password = None if server.get("auth") == "certificate" else hashed
            users[user] = User(
                user,
                group=extra.get("group"),
                static_ip=ipaddress.ip_address(extra["static_ip"])
                if "static_ip" in extra
                else None,
                password=password,
            )
        save_users(d / f"{name}.users", users)
        spec[name] = {
            "transport": server["transport"],
            "port": server["port"],
            "client_pool": server["client_pool"],
            "groups": server.get("groups", {}),
            "local_subnets": ["203.0.113.0/24"],
            "dns": ["203.0.113.53"],
            "users": str(d / f"{name}.users"),
            "address": SERVER,
            "certificate": str(cert),
            "private_key": str(key),
            "auth": server.get("auth", "password"),
            "client_ca": str(ca) if server.get("auth") == "certificate" else None,
            "tls_crypt_key": str(tls_crypt) if server.get("tls_crypt") else None,
        }
        lines = [
            "client",
            "dev tun",
            f"proto {server['transport']}",
            f"remote {SERVER} {server['port']}",
            "nobind",
            "remote-cert-tls server",
            "data-ciphers AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305",
            "auth SHA256",
            "reneg-sec 0",
            "pull-filter ignore dhcp-option",
            f"<ca>\n{p2c.ca_pem}</ca>",
        ]
        if server.get("auth") == "certificate":
            cert_pem, key_pem = client_certificate(
                p2c.ca_pem.encode(), (d / "ca.key").read_bytes(), "carol"
            )
            lines += [f"<cert>\n{cert_pem.decode()}</cert>", f"<key>\n{key_pem.decode()}</key>"]
        else:
            lines.append("auth-user-pass")
        if server["transport"] == "udp":
            lines.append("explicit-exit-notify 1")  # a stopped client frees its session
        if server.get("tls_crypt"):
            lines.append(f"<tls-crypt>\n{tls_crypt.read_text()}</tls-crypt>")
        p2c.profiles[name] = "\n".join(lines) + "\n"
    (d / "servers.json").write_text(json.dumps(spec))


def start_daemon(p2c: P2cLab) -> None:
    d = p2c.tmp
    p2c.socket = str(d / "lockgate.sock")
    p2c.daemon = p2c.gateway.spawn(
        [sys.executable, "-c", BRIDGE, str(d / "servers.json"), "-s", p2c.socket,
         "daemon", "-c", str(d / "gateway.toml")],
        name="lockgate",
        log_path=d / f"daemon-{time.monotonic_ns()}.log",
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        wait_until(lambda: "ready" in p2c.log(), "the daemon to start", timeout=20)
    except AssertionError:
        raise AssertionError(f"the daemon did not start:\n{p2c.log()}") from None


@pytest.fixture(scope="module")
def p2c() -> Iterator[P2cLab]:
    if shutil.which("openvpn") is None:
        reason = "needs the 'openvpn' command (Debian package openvpn)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("CI must run this test but it " + reason, pytrace=False)
        pytest.skip(reason)
    with Lab(prefix=f"lgp2c-{os.getpid()}") as lab:
        client, gateway, cloud = lab.namespace("cli"), lab.namespace("gw"), lab.namespace("cloud")
        lab.veth(client, "wan0", gateway, "wan0")
        lab.veth(gateway, "lan0", cloud, "lan0")
        client.ip("addr", "add", "198.51.100.1/24", "dev", "wan0")
        gateway.ip("addr", "add", f"{SERVER}/24", "dev", "wan0")
        gateway.ip("addr", "add", "203.0.113.1/24", "dev", "lan0")
        cloud.ip("addr", "add", f"{CLOUD}/24", "dev", "lan0")
        cloud.ip("addr", "add", f"{CLOUD_OUTSIDE_GROUP}/24", "dev", "lan0")
        for pool in ("192.0.2.0/24", "198.51.100.128/25"):
            cloud.ip("route", "add", pool, "via", "203.0.113.1")
        gateway.sysctl("net.ipv4.ip_forward", 1)
        pki = make_server_pki()
        pki.write(lab.tmpdir)
        (lab.tmpdir / "ca.key").write_bytes(pki.ca_key_pem)
        (lab.tmpdir / "ca.key").chmod(0o600)
        p2c = P2cLab(lab, client, gateway, cloud, pki.ca_pem.decode())
        p2c_setup(p2c)
        start_daemon(p2c)
        yield p2c
        assert p2c.daemon is not None
        p2c.daemon.stop()
        assert "Traceback" not in p2c.log(), p2c.log()


# ---- Real clients ---------------------------------------------------------------------


@pytest.mark.parametrize("server", ["office", "field"])
@pytest.mark.parametrize("cipher", ["AES-128-GCM", "AES-256-GCM", "CHACHA20-POLY1305"])
def test_stock_client_reaches_the_cloud(p2c: P2cLab, server: str, cipher: str) -> None:
    client = p2c.connect(server, "alice", "--data-ciphers", cipher)
    try:
        assert f"Data Channel: cipher '{cipher}'" in client.log()
        ping(p2c.client, CLOUD, count=3)
        size = 5 * 1024 * 1024 if cipher == "AES-256-GCM" else 512 * 1024
        there = tcp_transfer(p2c.client, p2c.cloud, CLOUD, size=size, timeout=30)
        back = tcp_transfer(p2c.cloud, p2c.client, there.peer_address, size=size, timeout=30)
        print(f"{server} {cipher}: {size} B in {there.seconds:.2f} s, back {back.seconds:.2f} s")
        assert there.peer_address.startswith("192.0.2.")
    finally:
        client.stop()


def test_clients_status_and_disconnect(p2c: P2cLab) -> None:
    client = p2c.connect("office")
    try:
        ping(p2c.client, CLOUD, count=2)
        (entry,) = [c for c in p2c.clients() if c["server"] == "office"]
        assert entry["user"] == "alice" and entry["protocol"] == "ssl"
        assert entry["virtual_ip"].startswith("192.0.2.")
        assert entry["remote"].startswith("198.51.100.1:")
        assert entry["bytes_in"] > 0 and entry["bytes_out"] > 0 and entry["since"]
        assert p2c.status()["office"]["clients"] == 1
        text = p2c.lockgate("status")
        assert "office: ssl tcp port 443" in text and "1/500 client(s)" in text
        assert "ended" in p2c.lockgate("disconnect", "office", "alice")
        wait_for_log(client, "server-pushed-halt")
        wait_until(lambda: not p2c.clients(), "the client list to empty", timeout=10)
    finally:
        client.stop()
    assert "ssl-vpn office: alice connected from 198.51.100.1:" in p2c.log()
    assert "disconnected by the operator" in p2c.log()


def test_wrong_password_and_unknown_user(p2c: P2cLab) -> None:
    for user, password in (("alice", "not-the-Pass1"), ("mallory", PASSWORD)):
        client = p2c.start_client("office", user, password)
        try:
            found = wait_for_log(client, "AUTH_FAILED", "Initialization Sequence Completed")
            assert found == "AUTH_FAILED"
        finally:
            client.stop()
    log = p2c.log()
    assert "login of 'alice' from 198.51.100.1:" in log and "refused: wrong password" in log
    assert "login of 'mallory'" in log and "refused: unknown user" in log
    assert "not-the-Pass1" not in log and PASSWORD not in log


def test_deleted_user_is_cut_off(p2c: P2cLab) -> None:
    client = p2c.connect("office", "dave")
    try:
        path = p2c.tmp / "office.users"
        from conf.users import load_users

        users = load_users(path)
        del users["dave"]
        save_users(path, users)
        wait_for_log(client, "server-pushed-halt", timeout=10)
    finally:
        client.stop()
    assert "ending the session of dave" in p2c.log() and "user deleted" in p2c.log()


def test_group_policy_and_no_group(p2c: P2cLab) -> None:
    before = p2c.status()["field"]["drops"].get("policy_destination", 0)
    alice = p2c.connect("field", "alice")
    try:
        ping(p2c.client, CLOUD, count=2)
        proc = ping(p2c.client, CLOUD_OUTSIDE_GROUP, count=2, deadline=3, check=False)
        assert " 0 received" in proc.stdout, proc.stdout
    finally:
        alice.stop()
    bob = p2c.connect("field", "bob")
    try:
        proc = ping(p2c.client, CLOUD, count=2, deadline=3, check=False)
        assert " 0 received" in proc.stdout, proc.stdout
    finally:
        bob.stop()
    assert p2c.status()["field"]["drops"]["policy_destination"] >= before + 4


def test_static_ip(p2c: P2cLab) -> None:
    client = p2c.connect("office", "sam")
    try:
        ping(p2c.client, CLOUD, count=2)
        assert any(c["virtual_ip"] == "192.0.2.77" for c in p2c.clients())
    finally:
        client.stop()


def test_certificate_auth(p2c: P2cLab) -> None:
    client = p2c.connect("certs", "carol")
    try:
        ping(p2c.client, CLOUD, count=2)
        assert any(c["user"] == "carol" and c["server"] == "certs" for c in p2c.clients())
    finally:
        client.stop()


def test_tls_crypt(p2c: P2cLab) -> None:
    client = p2c.connect("wrapped")
    try:
        ping(p2c.client, CLOUD, count=2)
    finally:
        client.stop()


@pytest.mark.parametrize(
    ("server", "seconds", "pings"), [("office", 3, 400), ("field", 3, 400), ("field", 10, 450)]
)
def test_renegotiation_under_a_ping_flood_loses_nothing(
    p2c: P2cLab, server: str, seconds: int, pings: int
) -> None:
    client = p2c.connect(server, "alice", "--reneg-sec", str(seconds))
    try:
        interval = 0.02 if seconds == 3 else 0.05
        proc = ping(p2c.client, CLOUD, count=pings, interval=interval, deadline=40)
        assert " 0% packet loss" in proc.stdout, proc.stdout
        renegotiations = client.log().count("Control Channel: TLS") - 1
        assert renegotiations >= 2, client.log()[-3000:]
    finally:
        client.stop()


def test_server_restart_client_reconnects(p2c: P2cLab) -> None:
    client = p2c.connect("field", "alice", "--connect-retry", "1", "1")
    try:
        ping(p2c.client, CLOUD, count=2)
        assert p2c.daemon is not None
        p2c.daemon.signal(signal.SIGTERM)
        wait_until(lambda: not p2c.daemon.alive(), "the daemon to stop", timeout=10)  # type: ignore[union-attr]
        start_daemon(p2c)
        deadline = time.monotonic() + 30
        while client.log().count("Initialization Sequence Completed") < 2:
            assert time.monotonic() < deadline, client.log()[-3000:]
            time.sleep(0.3)
        ping(p2c.client, CLOUD, count=2)
    finally:
        client.stop()


HOSTILE = """
import os, socket, sys
from ovpn.packet import ControlPacket, Opcode
server = sys.argv[1]
garbage = [b"", b"\\x00", b"\\x38", b"\\x48\\x00\\x00\\x01", os.urandom(60), os.urandom(1400)]
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for packet in garbage:
    udp.sendto(packet, (server, 1194))
reset = ControlPacket(Opcode.CONTROL_HARD_RESET_CLIENT_V2, 0, os.urandom(8), (), None, 0, b"")
full = reset.encode()
udp.sendto(full[:5], (server, 1194))  # truncated
tcp = socket.create_connection((server, 443))
tcp.sendall(b"\\xff\\xff" + os.urandom(100))  # a length beyond any packet
tcp.close()
held = []
for _ in range(200):  # handshakes that never finish
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    p = ControlPacket(Opcode.CONTROL_HARD_RESET_CLIENT_V2, 0, os.urandom(8), (), None, 0, b"")
    s.sendto(p.encode(), (server, 1194))
    held.append(s)
print("sent")
"""


def test_hostile_garbage_and_200_unfinished_handshakes(p2c: P2cLab) -> None:
    proc = p2c.client.run(sys.executable, "-c", HOSTILE, SERVER, check=False)
    assert "sent" in proc.stdout, proc.stdout + proc.stderr
    wait_until(
        lambda: p2c.status()["field"]["drops"].get("half_open_evicted", 0) >= 72,
        "the oldest unfinished handshakes to be evicted",
        timeout=10,
    )
    field = p2c.status()["field"]
    assert field["handshaking"] <= 128
    assert field["drops"].get("malformed_initial", 0) + field["drops"].get("no_session", 0) >= 3
    # The daemon answers, and a real client still connects and works.
    client = p2c.connect("field")
    try:
        ping(p2c.client, CLOUD, count=2)
    finally:
        client.stop()
    assert "Traceback" not in p2c.log()

"""The stock OpenVPN 2.6 client against lockgate's point-to-cloud SSL servers, in
namespaces, through the gateway daemon (`lockgate daemon`), set up as a user would:
`[remote_access.NAME]` sections in the TOML file, users added with `lockgate user add`,
and the profile that `lockgate profile` prints given as it is to `openvpn --config`.

    client ns (openvpn) --wan 198.51.100.0/24-- gateway ns (lockgate daemon)
                                                  | lan 203.0.113.0/24
                                               cloud ns (203.0.113.10 and .200,
                                                         2001:db8:b::10)

One daemon serves four servers for the whole module, and nothing else (no peers):
- office (TCP 443, passwords), pool 192.0.2.0/25, sam has the static 192.0.2.77;
- field (UDP 1194, passwords), pool 192.0.2.128/25, a group "eng" that reaches only
  203.0.113.0/25: alice is in it, bob is in none (reaches nothing);
- certs (TCP 1443, client certificates, no users file: any certificate of the CA),
  pool 198.51.100.128/26;
- wrapped (UDP 1195, passwords, tls-crypt), pool 198.51.100.192/26 and the IPv6 pool
  2001:db8:c::/64, with the IPv6 cloud subnet 2001:db8:b::/64 (dual-stack clients).
Each case starts its clients and stops them by PID; the lab removes the namespaces.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from netns import Lab, Namespace, Process, ping, ping_every_one, tcp_transfer

from testkit.daemon import wait_until
from testkit.pki import Credential, Pki

pytestmark = pytest.mark.netns

SERVER = "198.51.100.2"
SERVER_NAME = "vpn.example.net"
CLOUD = "203.0.113.10"
CLOUD_OUTSIDE_GROUP = "203.0.113.200"
CLOUD6 = "2001:db8:b::10"
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
                "tls_crypt": True, "client_pool6": "2001:db8:c::/64"},
}  # fmt: skip
USERS: dict[str, dict[str, list[str]]] = {
    "office": {"alice": [], "sam": ["--static-ip", "192.0.2.77"], "dave": []},
    "field": {"alice": ["--group", "eng"], "bob": []},
    "wrapped": {"alice": []},
}


@dataclass
class P2cLab:
    lab: Lab
    client: Namespace
    gateway: Namespace
    cloud: Namespace
    daemon: Process | None = None
    profiles: dict[str, str] = field(default_factory=dict)

    @property
    def tmp(self) -> Path:
        return self.lab.tmpdir

    @property
    def conf(self) -> Path:
        return self.tmp / "gateway.toml"

    def lockgate(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        """`lockgate ARGS` on the gateway host, as its administrator runs it (the
        client commands find the socket with `-c`, else in $LOCKGATE_SOCKET)."""
        proc = subprocess.run(
            [sys.executable, "-m", "daemon.cli", *args],
            env={**os.environ, "LOCKGATE_SOCKET": str(self.tmp / "lockgate.sock")},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
            cwd=self.tmp,
            check=False,
        )
        if check:
            assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout + proc.stderr

    def user(self, action: str, server: str, name: str, *extra: str, password: str = "") -> str:
        stdin = f"{password}\n" if password else None
        more = ["--password-stdin"] if password else []
        return self.lockgate("user", action, server, name, *extra, *more, "-c", str(self.conf),
                             stdin=stdin)  # fmt: skip

    def profile(self, server: str, user: str) -> str:
        args = ["profile", server, "--user", user]
        if SERVERS.get(server, {}).get("auth") == "certificate":
            args += [
                "--cert",
                str(self.tmp / f"{user}.pem"),
                "--key",
                str(self.tmp / f"{user}.key"),
            ]
        return self.lockgate(*args, "-c", str(self.conf))

    def clients(self) -> list[dict[str, Any]]:
        result = json.loads(self.lockgate("clients", "--json", "-c", str(self.conf)))
        assert isinstance(result, list)
        return result

    def status(self) -> dict[str, Any]:
        result = json.loads(self.lockgate("status", "--json", "-c", str(self.conf)))
        return {srv["name"]: srv for srv in result["remote_access"]}

    def log(self) -> str:
        assert self.daemon is not None
        return self.daemon.log()

    def start_client(
        self, server: str, user: str | None = "alice", password: str = PASSWORD, *extra: str
    ) -> Process:
        """The stock client with the server's profile as `lockgate profile` printed it,
        plus what the lab needs: the password from a file, no DNS changes on the host."""
        name = f"{server}-{user}-{time.monotonic_ns()}"
        profile = self.tmp / f"{name}.ovpn"
        profile.write_text(self.profiles[server])
        args = ["openvpn", "--config", str(profile), "--pull-filter", "ignore", "dhcp-option",
                "--verb", "3", *extra]  # fmt: skip
        if user is not None and "auth-user-pass" in self.profiles[server]:
            creds = self.tmp / f"{name}.creds"
            creds.write_text(f"{user}\n{password}\n")
            creds.chmod(0o600)
            args += ["--auth-user-pass", str(creds), "--auth-retry", "none"]
        return self.client.spawn(args, name="openvpn", log_path=self.tmp / f"{name}.log")

    def connect(
        self, server: str, user: str = "alice", *extra: str, password: str = PASSWORD
    ) -> Process:
        client = self.start_client(server, user, password, *extra)
        found = wait_for_log(client, "Initialization Sequence Completed", "AUTH_FAILED")
        assert found == "Initialization Sequence Completed", (
            client.log()[-2000:] + "\n---- the daemon:\n" + self.log()[-2000:]
        )
        return client

    def reload(self) -> str:
        return self.lockgate("reload", "-c", str(self.conf))


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


def tun_of(client: Process) -> str:
    """The TUN device that an OpenVPN client opened (from its log)."""
    for line in client.log().splitlines():
        if "TUN/TAP device " in line and " opened" in line:
            return line.split("TUN/TAP device ", 1)[1].split()[0]
    raise AssertionError(client.log()[-3000:])


# ---- The one place that sets servers, users and profiles up ---------------------------


def server_section(d: Path, name: str, server: dict[str, Any], **changes: Any) -> str:
    lines = [f"[remote_access.{name}]", 'protocol = "ssl"']
    settings: dict[str, Any] = {
        "transport": server["transport"],
        "port": server["port"],
        "client_pool": server["client_pool"],
        "local_subnets": ["203.0.113.0/24"],
        "dns": ["203.0.113.53"],
        # As many as the pool holds (less the network, the server and the broadcast
        # addresses), at most 100: the small documentation pools hold fewer.
        "max_connections": min(100, ipaddress.ip_network(server["client_pool"]).num_addresses - 3),
    }
    if server.get("auth") == "certificate":
        settings |= {"auth": "certificate", "client_ca": str(d / "ca.pem")}
    else:
        settings["users"] = str(d / f"{name}.users")
    if server.get("tls_crypt"):
        settings["tls_crypt_key"] = str(d / "tls-crypt.key")
    if server.get("client_pool6"):
        settings["client_pool6"] = server["client_pool6"]
        settings["local_subnets"] = [*settings["local_subnets"], "2001:db8:b::/64"]
    settings |= changes
    lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    for group, destinations in server.get("groups", {}).items():
        lines += [f"[remote_access.{name}.groups.{group}]",
                  f"destinations = {json.dumps(destinations)}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_config(p2c: P2cLab, servers: dict[str, dict[str, Any]], **changes: Any) -> None:
    """The daemon's file: [gateway] and one section per server, nothing else; `changes`
    maps a server's name to settings that replace its defaults."""
    d = p2c.tmp
    sections = [
        f"""[gateway]
addresses = ["{SERVER}"]
id = "{SERVER}"
interface = "lgp2c0"
control_socket = "{p2c.tmp / "lockgate.sock"}"
certificate = "{d / "server.pem"}"
private_key = "{d / "server.key"}"
ca = ["{d / "ca.pem"}"]
"""
    ]
    sections += [server_section(d, n, s, **changes.get(n, {})) for n, s in servers.items()]
    p2c.conf.write_text("\n".join(sections))


def p2c_setup(p2c: P2cLab, carol: Credential) -> None:
    """The configuration, the users (`lockgate user add`) and one profile per server
    (`lockgate profile`), as an administrator makes them; `carol` is the client
    certificate of the `certs` server's user."""
    d = p2c.tmp
    p2c.gateway.run("openvpn", "--genkey", "tls-crypt", str(d / "tls-crypt.key"))
    (d / "tls-crypt.key").chmod(0o600)
    (d / "carol.pem").write_bytes(carol.cert_pem)
    (d / "carol.key").write_bytes(carol.key_pem)
    for secret in ("server.key", "carol.key"):
        (d / secret).chmod(0o600)
    write_config(p2c, SERVERS)

    def users_and_profile(server: str) -> None:
        for user, options in USERS.get(server, {}).items():
            assert "added" in p2c.user("add", server, user, *options, password=PASSWORD)
        p2c.profiles[server] = p2c.profile(server, "carol" if server == "certs" else "alice")

    # One server's users one after the other (one file), the servers side by side.
    with ThreadPoolExecutor(len(SERVERS)) as pool:
        list(pool.map(users_and_profile, SERVERS))


def start_daemon(p2c: P2cLab) -> None:
    d = p2c.tmp
    p2c.daemon = p2c.gateway.spawn(
        [sys.executable, "-m", "daemon.cli", "daemon", "-c", str(p2c.conf)],
        name="lockgate",
        log_path=d / f"daemon-{time.monotonic_ns()}.log",
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
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
        gateway.ip("addr", "add", "2001:db8:b::1/64", "dev", "lan0", "nodad")
        cloud.ip("addr", "add", f"{CLOUD6}/64", "dev", "lan0", "nodad")
        cloud.ip("-6", "route", "add", "2001:db8:c::/64", "via", "2001:db8:b::1")
        gateway.sysctl("net.ipv4.ip_forward", 1)
        gateway.sysctl("net.ipv6.conf.all.forwarding", 1)
        # The server certificate carries what `remote-cert-tls server` checks: the
        # serverAuth EKU and a keyUsage extension.
        pki = Pki()
        server = pki.issue(SERVER_NAME, key_usage=True)
        for name, data in (("ca.pem", pki.ca.cert_pem), ("server.pem", server.cert_pem),
                           ("server.key", server.key_pem)):  # fmt: skip
            (lab.tmpdir / name).write_bytes(data)
        p2c = P2cLab(lab, client, gateway, cloud)
        p2c_setup(p2c, pki.issue_client("carol"))
        start_daemon(p2c)
        yield p2c
        assert p2c.daemon is not None
        p2c.daemon.stop()
        assert "Traceback" not in p2c.log(), p2c.log()


# ---- Real clients ---------------------------------------------------------------------


@pytest.mark.parametrize("server", ["office", "field"])
@pytest.mark.parametrize("cipher", ["AES-128-GCM", "AES-256-GCM", "CHACHA20-POLY1305"])
def test_stock_client_reaches_the_cloud(p2c: P2cLab, server: str, cipher: str) -> None:
    drops = p2c.status()[server]["drops"]
    spoofed, link_local = drops.get("data_spoofed_source", 0), drops.get("data_link_local", 0)
    client = p2c.connect(server, "alice", "--data-ciphers", cipher)
    try:
        assert f"Data Channel: cipher '{cipher}'" in client.log()
        # Over TCP, the pushed socket-flags turned Nagle's algorithm off on the
        # client's socket (OpenVPN 2.6 leaves it on by itself).
        nodelay = "Socket flags: TCP_NODELAY=1 succeeded" in client.log()
        assert nodelay is (SERVERS[server]["transport"] == "tcp"), client.log()[-3000:]
        ping(p2c.client, CLOUD, count=3)
        size = 5 * 1024 * 1024 if cipher == "AES-256-GCM" else 512 * 1024
        there = tcp_transfer(p2c.client, p2c.cloud, CLOUD, size=size, timeout=30)
        back = tcp_transfer(p2c.cloud, p2c.client, there.peer_address, size=size, timeout=30)
        print(f"{server} {cipher}: {size} B in {there.seconds:.2f} s, back {back.seconds:.2f} s")
        assert there.peer_address.startswith("192.0.2.")
        # The router solicitations the client's kernel sent from its TUN's link-local
        # address (within a second of the TUN coming up) were dropped as link-local
        # traffic, not counted as spoofing.
        drops = p2c.status()[server]["drops"]
        assert drops.get("data_spoofed_source", 0) == spoofed, drops
        assert drops.get("data_link_local", 0) > link_local, drops
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
        assert "office: ssl tcp port 443" in text and "1/100 client(s)" in text
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


def test_check_config_names_the_servers(p2c: P2cLab) -> None:
    out = p2c.lockgate("check-config", str(p2c.conf))
    assert out == (
        f"{p2c.conf}: OK (0 connection(s): none; "
        "4 remote-access server(s): office, field, certs, wrapped)\n"
    )


def test_a_new_user_adds_a_user_prints_a_profile_and_reaches_the_cloud(p2c: P2cLab) -> None:
    """The README's session: `lockgate user add`, `lockgate profile`, `openvpn
    --config`; then `lockgate user del` cuts the user off."""
    assert "added" in p2c.user("add", "office", "erin", password="erin-Pass-42")
    profile = p2c.profile("office", "erin")
    assert "remote 198.51.100.2 443" in profile and "auth-user-pass" in profile
    p2c.profiles["office-erin"] = profile
    client = p2c.connect("office-erin", "erin", password="erin-Pass-42")
    try:
        ping(p2c.client, CLOUD, count=2)
        there = tcp_transfer(p2c.client, p2c.cloud, CLOUD, size=256 * 1024, timeout=30)
        assert there.peer_address.startswith("192.0.2.")
        assert [c["user"] for c in p2c.clients() if c["server"] == "office"] == ["erin"]
        p2c.user("del", "office", "erin")
        wait_for_log(client, "server-pushed-halt", timeout=10)
        wait_until(lambda: not p2c.clients(), "erin's session to end", timeout=10)
    finally:
        client.stop()
    assert "ending the session of erin" in p2c.log() and "user deleted" in p2c.log()
    again = p2c.start_client("office-erin", "erin", "erin-Pass-42")
    try:
        assert wait_for_log(again, "AUTH_FAILED", "Initialization Sequence Completed") == (
            "AUTH_FAILED"
        )
    finally:
        again.stop()


def test_user_passwd_ends_the_users_sessions(p2c: P2cLab) -> None:
    dave = p2c.connect("office", "dave")
    alice = p2c.connect("office", "alice")
    try:
        p2c.user("passwd", "office", "dave", password="new-Pass-77")
        wait_for_log(dave, "server-pushed-halt", timeout=10)
        wait_until(
            lambda: [c["user"] for c in p2c.clients()] == ["alice"], "dave's end", timeout=10
        )
        assert "server-pushed-halt" not in alice.log()
    finally:
        dave.stop()
        alice.stop()
    assert "ending the session of dave" in p2c.log() and "password changed" in p2c.log()
    dave = p2c.connect("office", "dave", password="new-Pass-77")
    dave.stop()


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


def test_a_dual_stack_client_gets_an_ipv6_address_and_reaches_the_cloud_over_ipv6(
    p2c: P2cLab,
) -> None:
    """wrapped has client_pool6: the stock client takes `ifconfig-ipv6` and
    `route-ipv6` from PUSH_REPLY, pings the cloud's IPv6 address through the tunnel,
    and what it sends from another IPv6 address is dropped as spoofed."""
    client = p2c.connect("wrapped")
    try:
        log = client.log()
        assert "ifconfig-ipv6 2001:db8:c::2/64 2001:db8:c::1" in log, log[-3000:]
        assert "route-ipv6 2001:db8:b::/64" in log, log[-3000:]
        ping(p2c.client, CLOUD6, count=3)
        (row,) = [c for c in p2c.clients() if c["server"] == "wrapped"]
        assert row["virtual_ip"] == "198.51.100.194, 2001:db8:c::2"
        assert p2c.status()["wrapped"]["pool"] == "198.51.100.192/26, 2001:db8:c::/64"
        # Another address of the pool on the client's TUN: its packets go into the
        # tunnel (the pushed route) and the server drops them.
        before = p2c.status()["wrapped"]["drops"].get("data_spoofed_source", 0)
        tun = tun_of(client)
        p2c.client.ip("addr", "add", "2001:db8:c::99/128", "dev", tun, "nodad")
        proc = p2c.client.run(
            "ping", "-6", "-n", "-c", "3", "-i", "0.2", "-W", "1", "-I", "2001:db8:c::99", CLOUD6,
            check=False,
        )  # fmt: skip
        assert " 0 received" in proc.stdout, proc.stdout
        wait_until(
            lambda: p2c.status()["wrapped"]["drops"].get("data_spoofed_source", 0) >= before + 3,
            "the spoofed IPv6 packets to be counted",
            timeout=5,
        )
        # Its own address still works (without the other one, which the kernel would
        # now pick as the source).
        p2c.client.ip("addr", "del", "2001:db8:c::99/128", "dev", tun)
        ping(p2c.client, CLOUD6, count=2)
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
        lost, summary = ping_every_one(
            p2c.client, CLOUD, count=pings, interval=interval, deadline=40
        )
        assert lost == [], (lost, summary, p2c.status()[server]["drops"])
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


SNIFF = """
import json, socket, struct, sys, time
# The client's outgoing UDP datagrams to the server, whole Ethernet frames, by opcode.
server, port, out = socket.inet_aton(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL: outgoing too
s.bind(("wan0", 0))
s.settimeout(1.0)
seen = {}
deadline = time.monotonic() + 30
while time.monotonic() < deadline and not {4, 9} <= set(seen):
    try:
        frame, addr = s.recvfrom(65535)
    except TimeoutError:
        continue
    ip = frame[14:]
    if addr[2] != socket.PACKET_OUTGOING or ip[9] != 17 or ip[16:20] != server:
        continue
    udp = ip[(ip[0] & 15) * 4:]
    if struct.unpack("!H", udp[2:4])[0] == port and len(udp) > 8:
        seen.setdefault(udp[8] >> 3, frame.hex())  # the first of each opcode
with open(out, "w") as f:
    json.dump(seen, f)
"""

REPLAY = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("wan0", 0))
for captured in sys.argv[1:]:
    frame = bytearray.fromhex(captured)
    # Captured before the veth's checksum offload filled the UDP checksum in: sent as
    # 0, "no checksum" in IPv4 (RFC 768). The OpenVPN packet is the captured one.
    udp = 14 + (frame[14] & 15) * 4
    frame[udp + 6 : udp + 8] = bytes(2)
    for _ in range(3):
        s.send(frame)
print("replayed")
"""


def test_replayed_control_and_data_packets_are_dropped(p2c: P2cLab) -> None:
    """A P_CONTROL_V1 and a P_DATA_V2 packet of a live session, captured on the wire
    and sent again, whole: both are dropped and counted, and the session goes on."""
    captured = p2c.tmp / "captured.json"
    sniffer = p2c.client.spawn(
        [sys.executable, "-c", SNIFF, SERVER, "1194", str(captured)],
        name="sniff",
        log_path=p2c.tmp / "sniff.log",
    )
    time.sleep(0.5)  # the capture socket is bound before the client sends
    client = p2c.connect("field", "alice")
    try:
        ping(p2c.client, CLOUD, count=2)
        wait_until(lambda: not sniffer.alive(), "the capture", timeout=10)
        assert captured.exists(), sniffer.log()
        frames = json.loads(captured.read_text())
        assert {"4", "9"} <= set(frames), frames  # P_CONTROL_V1, P_DATA_V2
        before = p2c.status()["field"]["drops"]
        proc = p2c.client.run(sys.executable, "-c", REPLAY, frames["4"], frames["9"])
        assert "replayed" in proc.stdout
        ping(p2c.client, CLOUD, count=3)
        drops = p2c.status()["field"]["drops"]
        print("replay drops:", {k: drops.get(k, 0) - before.get(k, 0) for k in drops})
        assert drops.get("control_replay", 0) >= before.get("control_replay", 0) + 3
        assert drops.get("data_replay", 0) >= before.get("data_replay", 0) + 3
        (entry,) = [c for c in p2c.clients() if c["server"] == "field"]
        assert entry["user"] == "alice"
        assert "Initialization Sequence Completed" in client.log()
        assert client.log().count("Initialization Sequence Completed") == 1
    finally:
        client.stop()
        sniffer.stop()


SPOOF = """
import socket, struct, sys
# ICMP echo requests written into the second client's TUN with the first's address as
# the source: the OpenVPN client carries them to the server like its own.
tun, source, dest, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def checksum(data):
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
for seq in range(count):
    icmp = struct.pack("!BBHHH", 8, 0, 0, 0x5150, seq) + b"spoofed!" * 4
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), seq, 0, 64, 1, 0,
                         socket.inet_aton(source), socket.inet_aton(dest))
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    s.sendto(header + icmp, (tun, 0x0800))
print("sent")
"""


def test_a_client_that_claims_another_clients_address(p2c: P2cLab) -> None:
    """sam sends with alice's virtual address as the source: dropped and counted as
    spoofed, and alice's own traffic goes on."""
    alice = p2c.connect("office", "alice")
    sam = p2c.connect("office", "sam")
    try:
        by_user = {c["user"]: c for c in p2c.clients() if c["server"] == "office"}
        alice_ip = by_user["alice"]["virtual_ip"]
        assert by_user["sam"]["virtual_ip"] == "192.0.2.77"
        before = p2c.status()["office"]["drops"].get("data_spoofed_source", 0)
        sam_in = by_user["sam"]["bytes_in"]
        proc = p2c.client.run(sys.executable, "-c", SPOOF, tun_of(sam), alice_ip, CLOUD, "20")
        assert "sent" in proc.stdout, proc.stdout + proc.stderr
        wait_until(
            lambda: p2c.status()["office"]["drops"].get("data_spoofed_source", 0) >= before + 20,
            "the spoofed packets to be counted",
            timeout=5,
        )
        after = p2c.status()["office"]["drops"]["data_spoofed_source"]
        print("spoofed drops:", after - before)
        ping(p2c.client, CLOUD, count=3)  # alice's route and address
        by_user = {c["user"]: c for c in p2c.clients() if c["server"] == "office"}
        assert by_user["sam"]["bytes_in"] == sam_in  # nothing of it reached the cloud
        assert by_user["alice"]["virtual_ip"] == alice_ip
    finally:
        sam.stop()
        alice.stop()


def test_reload_starts_stops_and_restarts_only_the_changed_servers(p2c: P2cLab) -> None:
    """A reload with "wrapped" removed, "spare" added and "field" changed: wrapped's
    client is told to restart and finds nothing, field's reconnects by itself to the
    new settings, office's keeps its session; the spare server takes clients."""
    office = p2c.connect("office", "alice")
    field_client = p2c.connect("field", "alice", "--connect-retry", "1", "1")
    wrapped = p2c.connect("wrapped", "alice", "--connect-retry", "1", "1")
    original = p2c.conf.read_text()
    try:
        since = {c["server"]: c["since"] for c in p2c.clients()}
        servers = {k: v for k, v in SERVERS.items() if k != "wrapped"}
        servers["spare"] = {"transport": "udp", "port": 1196, "client_pool": "198.51.100.64/27"}
        write_config(p2c, servers, field={"dns": ["203.0.113.54"]})
        out = p2c.reload()
        assert "remote-access servers 1 added, 1 changed, 1 removed, 2 unchanged" in out, out
        wait_until(lambda: set(p2c.status()) == {"office", "field", "certs", "spare"},
                   "the servers to change", timeout=10)  # fmt: skip
        wait_for_log(wrapped, "server-pushed-connection-reset", timeout=10)
        deadline = time.monotonic() + 20
        while field_client.log().count("Initialization Sequence Completed") < 2:
            assert time.monotonic() < deadline, field_client.log()[-3000:]
            time.sleep(0.3)
        assert "203.0.113.54" in field_client.log().split("Initialization Sequence")[-2]
        ping(p2c.client, CLOUD, count=2)
        now = {c["server"]: c["since"] for c in p2c.clients()}
        assert now["office"] == since["office"] and "wrapped" not in now
        assert office.log().count("Initialization Sequence Completed") == 1
        assert "added" in p2c.user("add", "spare", "alice", password=PASSWORD)
        p2c.profiles["spare"] = p2c.profile("spare", "alice")
        spare = p2c.connect("spare", "alice")
        spare.stop()
    finally:
        wrapped.stop()
        field_client.stop()
        office.stop()
        p2c.conf.write_text(original)
        p2c.reload()
    wait_until(lambda: set(p2c.status()) == set(SERVERS), "the servers back", timeout=10)
    assert "reload: remote-access server wrapped removed" in p2c.log()

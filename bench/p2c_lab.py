"""What the point-to-cloud benchmarks share: the namespaces, the PKI, lockgate's SSL
server set up as a user would, the stock `openvpn` client, and Debian's `openvpn` as
the reference server.

    client ns(es) --wan-- gateway ns (lockgate daemon | openvpn server) --lan-- cloud ns
                                                                   203.0.113.10

The WAN is 198.51.100.0/24 with one client namespace (client 198.51.100.1, gateway
198.51.100.2), or 2001:db8:100::/64 on a bridge in the gateway namespace when there are
several (each client namespace gets 2001:db8:100::N): then the three IPv4 /24s of
RFC 5737 are free for two pools and the cloud. The cloud routes the pools back to the
gateway. Everything is created through a `daemon.lab.netns.Lab` (names unique to this
process, processes stopped by PID, namespaces deleted at the end).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from bench.throughput import _terminate_as_interrupt, say
from bench.tunnels import Lockgate, TunnelError
from daemon.lab.netns import HarnessError, Lab, Namespace, Process, run_command
from testkit.pki import Pki

CLOUD = "203.0.113.10"
CLOUD_NET = "203.0.113.0/24"
GATEWAY_LAN = "203.0.113.1"
WAN4_CLIENT, WAN4_GATEWAY = "198.51.100.1", "198.51.100.2"
WAN6_PREFIX = "2001:db8:100::"
WAN6_GATEWAY = "2001:db8:100::1"
SERVER_NAME = "vpn.example.net"
PASSWORD = "bench-Pass-0123"
"""Every benchmark user's password (they are throwaway users of a throwaway server)."""
CONNECT_TIMEOUT = 30.0
IFACE = "lgb"
"""The daemon's [gateway] interface; its SSL servers' TUNs are lgbp0, lgbp1, ..."""

T = TypeVar("T")


def run_in_lab(body: Callable[[Lab], T]) -> tuple[T | None, int]:
    """`body` with a fresh lab, which is removed afterwards whatever happens (SIGTERM
    unwinds like Ctrl-C). Returns body's result (None if interrupted) and the exit
    status."""
    lab = Lab()
    try:
        with _terminate_as_interrupt():
            return body(lab), 0
    except KeyboardInterrupt as exc:
        say(f"\nInterrupted ({exc or 'SIGINT'}): cleaning up.")
        return None, 130
    finally:
        old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            lab.close()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


@dataclass
class P2cTopology:
    lab: Lab
    clients: list[Namespace]
    gateway: Namespace
    cloud: Namespace
    server_address: str
    """Where clients dial the gateway (IPv4 with one client namespace, else IPv6)."""
    client_addresses: list[str] = field(default_factory=list)

    @property
    def tmp(self) -> Path:
        return self.lab.tmpdir


def build(lab: Lab, *, clients: int = 1, pools: tuple[str, ...] = ("192.0.2.0/24",)) -> P2cTopology:
    """The namespaces, links, addresses and routes (see the module's docstring)."""
    gateway, cloud = lab.namespace("gw"), lab.namespace("cloud")
    lab.veth(gateway, "lan0", cloud, "lan0")
    gateway.ip("addr", "add", f"{GATEWAY_LAN}/24", "dev", "lan0")
    cloud.ip("addr", "add", f"{CLOUD}/24", "dev", "lan0")
    for pool in pools:
        cloud.ip("route", "add", pool, "via", GATEWAY_LAN)
    gateway.sysctl("net.ipv4.ip_forward", 1)
    namespaces = [lab.namespace(f"c{i}") for i in range(clients)]
    if clients == 1:
        lab.veth(namespaces[0], "wan0", gateway, "wan0")
        namespaces[0].ip("addr", "add", f"{WAN4_CLIENT}/24", "dev", "wan0")
        gateway.ip("addr", "add", f"{WAN4_GATEWAY}/24", "dev", "wan0")
        return P2cTopology(lab, namespaces, gateway, cloud, WAN4_GATEWAY, [WAN4_CLIENT])
    gateway.ip("link", "add", "br0", "type", "bridge")
    gateway.ip("link", "set", "br0", "up")
    gateway.ip("addr", "add", f"{WAN6_GATEWAY}/64", "dev", "br0", "nodad")
    addresses = []
    for i, ns in enumerate(namespaces):
        port = f"c{i}"
        lab.veth(ns, "wan0", gateway, port)
        gateway.ip("link", "set", port, "master", "br0")
        address = f"{WAN6_PREFIX}{i + 2:x}"
        ns.ip("addr", "add", f"{address}/64", "dev", "wan0", "nodad")
        addresses.append(address)
    return P2cTopology(lab, namespaces, gateway, cloud, WAN6_GATEWAY, addresses)


def write_pki(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate that `remote-cert-tls server` accepts."""
    pki = Pki()
    server = pki.issue(SERVER_NAME, key_usage=True)
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    for path, data in zip(paths, (pki.ca.cert_pem, server.cert_pem, server.key_pem), strict=True):
        path.write_bytes(data)
    paths[2].chmod(0o600)
    return paths


# --- lockgate ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SslServer:
    """One `[remote_access.NAME]` section of the benchmark's gateway."""

    name: str
    transport: str
    port: int
    pool: str
    max_connections: int = 250
    ciphers: tuple[str, ...] = ("AES-128-GCM", "AES-256-GCM")

    def section(self) -> list[str]:
        return [
            'protocol = "ssl"',
            f"transport = {json.dumps(self.transport)}",
            f"port = {self.port}",
            f"ciphers = {json.dumps(list(self.ciphers))}",
        ]


@dataclass(frozen=True)
class Ikev2Server:
    """An ikev2 `[remote_access.NAME]` section: EAP-MSCHAPv2 against the users file,
    the gateway's certificate, the default proposals."""

    name: str
    pool: str
    max_connections: int = 250

    def section(self) -> list[str]:
        return ['protocol = "ikev2"', 'auth = "password"', f"address = {json.dumps(SERVER_NAME)}"]


def lockgate_toml(
    topo: P2cTopology,
    servers: Sequence[SslServer | Ikev2Server],
    socket: Path,
    gateway_extra: Sequence[str] = (),
) -> str:
    """The gateway's TOML; `gateway_extra` are more `[gateway]` lines."""
    cert, key = topo.tmp / "server.pem", topo.tmp / "server.key"
    lines = [
        "[gateway]",
        f"addresses = [{json.dumps(topo.server_address)}]",
        f"id = {json.dumps(SERVER_NAME)}",
        f"interface = {json.dumps(IFACE)}",
        f"control_socket = {json.dumps(str(socket))}",
        f"certificate = {json.dumps(str(cert))}",
        f"private_key = {json.dumps(str(key))}",
        f"ca = [{json.dumps(str(topo.tmp / 'ca.pem'))}]",
        'log_level = "warning"',
        *gateway_extra,
    ]
    for s in servers:
        lines += [
            "",
            f"[remote_access.{s.name}]",
            *s.section(),
            f"client_pool = {json.dumps(s.pool)}",
            f"local_subnets = [{json.dumps(CLOUD_NET)}]",
            f"users = {json.dumps(str(topo.tmp / f'{s.name}.users'))}",
            f"max_connections = {s.max_connections}",
            "connections_per_user = 5",
        ]
    return "\n".join(lines) + "\n"


def lockgate_cli(topo: P2cTopology, *args: str, stdin: str | None = None) -> str:
    """`lockgate ARGS` run in the gateway namespace (from this checkout)."""
    cmd = topo.gateway.exec_args([sys.executable, "-m", "daemon.cli", *args])
    proc = run_command(cmd, input=stdin.encode() if stdin is not None else None, timeout=60)
    return proc.stdout


class LockgateGateway:
    """`lockgate daemon` with the benchmark's servers, users and profiles."""

    def __init__(
        self,
        topo: P2cTopology,
        servers: Sequence[SslServer | Ikev2Server],
        tag: str,
        gateway_extra: Sequence[str] = (),
    ) -> None:
        self.topo = topo
        self.servers = {s.name: s for s in servers}
        socket = topo.tmp / f"{tag}.sock"
        toml = lockgate_toml(topo, servers, socket, gateway_extra)
        self.daemon = Lockgate(topo.gateway, tag, toml, socket)
        self.conf = self.daemon.config

    def add_user(self, server: str, user: str, password: str = PASSWORD) -> None:
        """`lockgate user add SERVER USER --password-stdin -c CONF`, as a user would."""
        lockgate_cli(self.topo, "user", "add", server, user, "--password-stdin",
                     "-c", str(self.conf), stdin=password + "\n")  # fmt: skip

    def profile(self, server: str) -> str:
        """`lockgate profile SERVER -c CONF`: the .ovpn the stock client is given."""
        return lockgate_cli(self.topo, "profile", server, "-c", str(self.conf))

    def start(self) -> None:
        self.daemon.start(timeout=30)

    def stop(self) -> None:
        self.daemon.stop()

    def pid(self) -> int:
        return self.daemon.pid()


# --- the stock client ------------------------------------------------------------------------

_COUNTER = iter(range(1, 1 << 30))


def start_client(
    ns: Namespace,
    profile: str,
    *,
    user: str,
    password: str = PASSWORD,
    extra: tuple[str, ...] = (),
    dev: str | None = None,
) -> Process:
    """`openvpn --config PROFILE --auth-user-pass CREDS` in `ns` (not waited for)."""
    tmp = ns.lab.tmpdir
    name = f"ovpn-client-{next(_COUNTER)}"
    (tmp / f"{name}.ovpn").write_text(profile)
    creds = tmp / f"{name}.creds"
    creds.write_text(f"{user}\n{password}\n")
    creds.chmod(0o600)
    args = ["openvpn", "--config", str(tmp / f"{name}.ovpn"), "--auth-user-pass", str(creds),
            "--auth-retry", "none", "--pull-filter", "ignore", "dhcp-option", "--verb", "3",
            *(("--dev", dev) if dev else ()), *extra]  # fmt: skip
    return ns.spawn(args, name=name, log_path=tmp / f"{name}.log")


def wait_connected(client: Process, timeout: float = CONNECT_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = client.log()
        if "Initialization Sequence Completed" in log:
            return
        if "AUTH_FAILED" in log or not client.alive():
            break
        time.sleep(0.1)
    tail = "\n".join("    " + line for line in client.log().splitlines()[-15:])
    raise TunnelError(f"openvpn client did not connect:\n{tail}")


# --- the reference server ----------------------------------------------------------------------

VERIFY_SCRIPT = """#!/bin/sh
# auth-user-pass-verify via-file: line 1 the user, line 2 the password.
[ "$(sed -n 2p "$1")" = "{password}" ]
"""


@dataclass(frozen=True)
class OpenvpnTuning:
    """What the reference server is given beyond the common settings."""

    buffers: int | None = None
    """sndbuf/rcvbuf in octets (pushed to the client too); None: the OS defaults."""
    fast_io: bool = False
    """`fast-io` (UDP only): write to the socket without waiting for poll()."""

    def describe(self) -> str:
        parts = [f"sndbuf/rcvbuf {self.buffers}" if self.buffers else "OS socket buffers"]
        if self.fast_io:
            parts.append("fast-io")
        return ", ".join(parts)


def openvpn_server_conf(
    topo: P2cTopology, transport: str, port: int, ciphers: str, tuning: OpenvpnTuning
) -> str:
    """The recipe of /work/shared/reference/peers.md, with the benchmark's pool."""
    tmp = topo.tmp
    script = tmp / "verify.sh"
    script.write_text(VERIFY_SCRIPT.format(password=PASSWORD))
    script.chmod(0o700)
    net = ipaddress.ip_network("192.0.2.0/24")
    lines = [
        f"port {port}",
        f"local {topo.server_address}",
        "proto tcp-server" if transport == "tcp" else "proto udp",
        "dev lgbref0",
        "dev-type tun",
        "topology subnet",
        f"server {net.network_address} {net.netmask}",
        f"ca {tmp / 'ca.pem'}",
        f"cert {tmp / 'server.pem'}",
        f"key {tmp / 'server.key'}",
        "dh none",
        f"data-ciphers {ciphers}",
        "auth SHA256",
        "verify-client-cert none",
        "username-as-common-name",
        "script-security 2",
        f"auth-user-pass-verify {script} via-file",
        f'push "route {CLOUD_NET.split("/")[0]} 255.255.255.0"',
        "keepalive 10 60",
        "disable-dco",
        "verb 3",
    ]
    if transport == "tcp":
        # TCP_NODELAY on the server's sockets and pushed to the client, as lockgate
        # pushes it: OpenVPN 2.6 clients otherwise keep Nagle's algorithm on.
        lines.append("tcp-nodelay")
    if tuning.buffers:
        b = tuning.buffers
        lines += [f"sndbuf {b}", f"rcvbuf {b}", f'push "sndbuf {b}"', f'push "rcvbuf {b}"']
    if tuning.fast_io and transport == "udp":
        lines.append("fast-io")
    return "\n".join(lines) + "\n"


class OpenvpnServer:
    """Debian's `openvpn` as the reference server, in the gateway namespace."""

    def __init__(
        self, topo: P2cTopology, transport: str, port: int, ciphers: str, tuning: OpenvpnTuning
    ) -> None:
        self.topo = topo
        tag = f"ovpn-server-{next(_COUNTER)}"
        self.conf = topo.tmp / f"{tag}.conf"
        self.conf.write_text(openvpn_server_conf(topo, transport, port, ciphers, tuning))
        self.log_path = topo.tmp / f"{tag}.log"
        self.process: Process | None = None

    def start(self, timeout: float = 15.0) -> None:
        self.process = self.topo.gateway.spawn(
            ["openvpn", "--config", str(self.conf)], name="openvpn-server", log_path=self.log_path
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "Initialization Sequence Completed" in self.process.log():
                return
            if not self.process.alive():
                break
            time.sleep(0.1)
        tail = "\n".join("    " + line for line in self.process.log().splitlines()[-15:])
        raise TunnelError(f"openvpn server did not start:\n{tail}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=10)

    def pid(self) -> int:
        if self.process is None:
            raise TunnelError("openvpn server not started")
        return self.process.pid


def stop_quietly(*things: LockgateGateway | OpenvpnServer | Process | None) -> None:
    """Stop each (by PID); the lab removes whatever is left at the end anyway."""
    for thing in things:
        if thing is not None:
            with contextlib.suppress(HarnessError, TunnelError, OSError):
                thing.stop()

"""The lab of the IKEv2 remote-access interop tests: strongSwan's charon as road-warrior
clients of lockgate's ikev2 point-to-cloud server, in namespaces, through the daemon.

    cli ns (charon) ----------------------+ wan 198.51.100.0/25
    nat ns (router, masquerade) .3 -------+-- gateway ns .2 (lockgate daemon)
      | 198.51.100.128/30, .132/30, ...             | lan 203.0.113.0/24, 2001:db8:b::/64
    behind0, behind1, ... (charons)              cloud ns (203.0.113.10, .200,
                                                           2001:db8:b::10)

A client is configured as a new user would configure it: EAP-MSCHAPv2 with the user's
password (or a client certificate, RFC 7427, or EAP-TLS), the server authenticated by its
certificate (the CA in x509ca/), a virtual IP asked for (`vips = 0.0.0.0`), the cloud
subnet as remote_ts. The daemon reads its `[remote_access.laptops]` section (the
caller's) from a TOML file; users are added with `lockgate user add`. Processes are
stopped by PID; the lab removes the namespaces.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from daemon.lab.netns import Lab, Namespace, Process, masquerade
from testkit.daemon import wait_until
from testkit.pki import Credential, Pki
from testkit.strongswan import PLUGINS, Charon, IkeSaInfo

SERVER = "198.51.100.2"
SERVER_NAME = "vpn.example.net"
DIRECT_CLIENT = "198.51.100.1"
NAT_OUTSIDE = "198.51.100.3"
CLOUD = "203.0.113.10"
CLOUD_OUTSIDE_GROUP = "203.0.113.200"
CLOUD6 = "2001:db8:b::10"
PASSWORD = "s3cret-Pass"
REPO = Path(__file__).resolve().parent.parent

GATEWAY_SECTION = """
[gateway]
addresses = ["{server}"]
id = "{name}"
interface = "lgra0"
certificate = "{d}/server.pem"
private_key = "{d}/server.key"
ca = ["{d}/ca.pem"]
"""


def missing_strongswan() -> str | None:
    """Why the lab cannot run here, or None."""
    if not Path("/usr/lib/ipsec/charon").exists() or shutil.which("swanctl") is None:
        return "needs strongSwan's charon and swanctl"
    if not Path("/usr/lib/ipsec/plugins/libstrongswan-eap-mschapv2.so").exists():
        return "needs the eap-mschapv2 plugin (Debian libcharon-extauth-plugins)"
    return None


def road_warrior_conf(
    local: str, secrets: str, *, vips: str = "0.0.0.0", remote_ts: str = "203.0.113.0/24"
) -> str:
    """swanctl.conf of a road warrior of the lab's server: `local` is its local auth
    block's lines, `secrets` the body of its secrets section."""
    return f"""connections {{
    lockgate {{
        version = 2
        remote_addrs = {SERVER}
        vips = {vips}
        proposals = aes256gcm16-prfsha384-ecp384
        local {{
            {local}
        }}
        remote {{
            auth = pubkey
            id = {SERVER_NAME}
        }}
        children {{
            cloud {{
                remote_ts = {remote_ts}
                esp_proposals = aes256gcm16
            }}
        }}
    }}
}}
secrets {{
{secrets}}}
"""


@dataclass
class RaLab:
    lab: Lab
    client: Namespace
    """The client directly on the WAN (198.51.100.1)."""
    gateway: Namespace
    cloud: Namespace
    pki: Pki
    behind_nat: list[Namespace] = field(default_factory=list)
    """Clients behind one masquerading router (all seen as 198.51.100.3)."""
    conf: Path = Path()
    socket: str = ""
    daemon: Process | None = None
    charons: list[Charon] = field(default_factory=list)
    added: dict[str, str] = field(default_factory=dict)
    """What `lockgate user add` printed, by user."""

    @property
    def dir(self) -> Path:
        return self.lab.tmpdir

    def lockgate(self, *args: str, stdin: str = "", socket: bool = True) -> str:
        """The CLI on the host: the users file and the control socket are files."""
        pre = ["-s", self.socket] if socket else []
        proc = subprocess.run(
            [sys.executable, "-m", "daemon.cli", *pre, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        if proc.returncode != 0:
            raise AssertionError(f"lockgate {' '.join(args)} failed: {proc.stdout}{proc.stderr}")
        return proc.stdout

    def add_user(self, user: str, *extra: str) -> str:
        """`lockgate user add laptops USER` with the lab's password (`--certificate` in
        `extra`: no password, for a server with certificate auth)."""
        password = "--certificate" not in extra
        options = [
            *(["--password-stdin"] if password else []),
            *(e for e in extra if e != "--certificate"),
        ]
        self.added[user] = self.lockgate(
            "user", "add", "laptops", user, *options, "-c", str(self.conf),
            stdin=PASSWORD + "\n" if password else "", socket=False,
        )  # fmt: skip
        return self.added[user]

    def log(self) -> str:
        return "" if self.daemon is None else self.daemon.log()

    def wait_log(self, text: str, timeout: float = 10.0) -> None:
        """Wait until the daemon's log has `text`; fail with the log's tail."""
        try:
            wait_until(lambda: text in self.log(), f"{text!r} in the log", timeout=timeout)
        except AssertionError:
            raise AssertionError(
                f"no {text!r} in the daemon's log:\n{self.log()[-4000:]}"
            ) from None

    def wait_no_clients(self, timeout: float = 10.0) -> None:
        """Wait until `lockgate clients` lists nobody (an earlier test's charons are
        stopped: their Deletes reached the daemon)."""
        wait_until(
            lambda: self.lockgate("clients", "--json").strip() in ("[]", ""),
            "no clients left",
            timeout=timeout,
        )

    def another_client(self, role: str, address: str) -> Namespace:
        """Another client namespace straight on the WAN (an address of
        198.51.100.0/25), for one more charon at once."""
        ns = self.lab.namespace(role)
        link = f"w{len(self.lab.namespaces)}"
        self.lab.veth(ns, "wan0", self.gateway, link)
        ns.ip("addr", "add", f"{address}/25", "dev", "wan0")
        self.gateway.ip("route", "add", f"{address}/32", "dev", link, "src", SERVER)
        return ns

    def write_conf(self, server_section: str) -> None:
        """The daemon's configuration: the lab's [gateway] and the caller's server."""
        gateway = GATEWAY_SECTION.format(server=SERVER, name=SERVER_NAME, d=self.dir)
        self.conf.write_text(gateway + server_section)

    def start_daemon(self) -> None:
        """Start (or restart) the daemon on the configuration file; wait until ready."""
        self.stop_daemon()
        log_path = self.dir / f"daemon{len(self.charons)}-{os.urandom(2).hex()}.log"
        self.daemon = self.gateway.spawn(
            [sys.executable, "-m", "daemon.cli", "-s", self.socket, "daemon", "-c", str(self.conf)],
            name="lockgate",
            log_path=log_path,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        try:
            wait_until(lambda: "ready" in self.log(), "the daemon to start", timeout=30)
        except AssertionError:
            raise AssertionError(f"the daemon did not start:\n{self.log()}") from None

    def stop_daemon(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
            if "Traceback" in self.log():
                raise AssertionError(self.log())
            self.daemon = None

    def charon(
        self,
        user: str,
        password: str = PASSWORD,
        *,
        ns: Namespace | None = None,
        certificate: Credential | None = None,
        tls: Pki | None = None,
        dual: bool = False,
    ) -> Charon:
        """A road-warrior charon in `ns` (the direct client by default), loaded, not
        yet connected: EAP-MSCHAPv2 as `user`, or with `certificate` (RFC 7427,
        its subject DN as IKE identity), or with `tls` EAP-TLS (TLS 1.2, charon's
        default) with a user certificate that CA issued; `dual`: it asks for an IPv6
        address too and routes the IPv6 cloud subnet."""
        vips, remote_ts = "0.0.0.0", "203.0.113.0/24"
        if dual:
            vips, remote_ts = "0.0.0.0, ::", "203.0.113.0/24, 2001:db8:b::/64"
        charon = Charon(ns or self.client, f"rw{len(self.charons)}")
        text = charon.conf_path.read_text()
        text = text.replace(
            f"load = {PLUGINS}", f"load = {PLUGINS} eap-mschapv2 eap-tls eap-identity resolve"
        )
        text = text.replace(
            "    plugins {\n",
            f"    plugins {{\n        resolve {{\n            file = {charon.rundir}/resolv.conf\n"
            "        }\n",
            1,
        )
        charon.conf_path.write_text(text)
        charon.write_credential("x509ca", "ca.crt", self.pki.ca.cert_pem)
        if certificate is not None:
            charon.write_credential("x509", "client.crt", certificate.cert_pem)
            charon.write_credential("private", "client.key", certificate.key_pem)
            local = "auth = pubkey\n            certs = client.crt"
            secrets = ""
        elif tls is not None:
            cred = tls.issue_client(user)
            charon.write_credential("x509", "user.crt", cred.cert_pem)
            charon.write_credential("private", "user.key", cred.key_pem)
            # Like Windows: the certificate goes in EAP-TLS, not in IKE_AUTH. charon
            # picks its TLS certificate by the EAP identity, so that is the subject DN.
            local = (
                f'auth = eap-tls\n            certs = user.crt\n            eap_id = "{cred.dn}"'
            )
            secrets = ""
        else:
            local = f"auth = eap-mschapv2\n            eap_id = {user}"
            secrets = (
                f'    eap-user {{\n        id = {user}\n        secret = "{password}"\n    }}\n'
            )
        (charon.swanctl_dir / "swanctl.conf").write_text(
            road_warrior_conf(local, secrets, vips=vips, remote_ts=remote_ts)
        )
        self.charons.append(charon)
        charon.start()
        charon.swanctl("--load-all")
        return charon

    def connected(
        self,
        user: str,
        *,
        ns: Namespace | None = None,
        certificate: Credential | None = None,
        tls: Pki | None = None,
        dual: bool = False,
    ) -> tuple[Charon, IkeSaInfo]:
        """A charon that connected, and its IKE SA as charon lists it."""
        charon = self.charon(user, ns=ns, certificate=certificate, tls=tls, dual=dual)
        charon.initiate("cloud", "lockgate", timeout=20)
        return charon, charon.wait_for_child("cloud")


def _nat_router(lab: Lab, wan_peer: Namespace, clients: int) -> list[Namespace]:
    """A masquerading router on the WAN with `clients` client namespaces behind it,
    each on its own /30 (198.51.100.128/30, .132/30, ...)."""
    router = lab.namespace("nat")
    lab.veth(router, "wan0", wan_peer, "wan1")
    router.ip("addr", "add", f"{NAT_OUTSIDE}/25", "dev", "wan0")
    router.sysctl("net.ipv4.ip_forward", 1)
    behind = []
    for i in range(clients):
        ns = lab.namespace(f"bh{i}")
        lab.veth(router, f"in{i}", ns, "eth0")
        base = 128 + 4 * i
        router.ip("addr", "add", f"198.51.100.{base + 1}/30", "dev", f"in{i}")
        ns.ip("addr", "add", f"198.51.100.{base + 2}/30", "dev", "eth0")
        ns.ip("route", "add", "default", "via", f"198.51.100.{base + 1}")
        behind.append(ns)
    masquerade(router, "wan0")
    return behind


@contextmanager
def ra_lab(
    server_section: str,
    users: Sequence[tuple[str, Sequence[str]]] = (),
    *,
    nat_clients: int = 0,
) -> Iterator[RaLab]:
    """The lab with the daemon running `server_section` (its text may use {d}, the
    lab's directory: ca.pem is the lab CA, `laptops.users` the users file) and these
    users added (name, `lockgate user add` options) before the daemon starts."""
    with Lab(prefix=f"lgra-{os.getpid()}") as lab:
        client, gateway, cloud = lab.namespace("cli"), lab.namespace("gw"), lab.namespace("cloud")
        lab.veth(client, "wan0", gateway, "wan0")
        lab.veth(gateway, "lan0", cloud, "lan0")
        client.ip("addr", "add", f"{DIRECT_CLIENT}/25", "dev", "wan0")
        gateway.ip("addr", "add", f"{SERVER}/25", "dev", "wan0")
        gateway.ip("addr", "add", "203.0.113.1/24", "dev", "lan0")
        cloud.ip("addr", "add", f"{CLOUD}/24", "dev", "lan0")
        cloud.ip("addr", "add", f"{CLOUD_OUTSIDE_GROUP}/24", "dev", "lan0")
        cloud.ip("route", "add", "192.0.2.0/24", "via", "203.0.113.1")
        gateway.ip("addr", "add", "2001:db8:b::1/64", "dev", "lan0", "nodad")
        cloud.ip("addr", "add", f"{CLOUD6}/64", "dev", "lan0", "nodad")
        cloud.ip("-6", "route", "add", "2001:db8:c::/64", "via", "2001:db8:b::1")
        gateway.sysctl("net.ipv4.ip_forward", 1)
        gateway.sysctl("net.ipv6.conf.all.forwarding", 1)
        behind: list[Namespace] = []
        if nat_clients:
            # The router's WAN leg shares the gateway's segment through a second veth
            # on the gateway, in the same /25 as wan0 (a host route picks the leg).
            behind = _nat_router(lab, gateway, nat_clients)
            gateway.ip("route", "add", f"{NAT_OUTSIDE}/32", "dev", "wan1", "src", SERVER)
        pki = Pki("laptops CA")
        cred = pki.issue(SERVER_NAME, "ecdsa-p256")
        d = lab.tmpdir
        (d / "server.pem").write_bytes(cred.cert_pem)
        (d / "server.key").write_bytes(cred.key_pem)
        (d / "server.key").chmod(0o600)
        (d / "ca.pem").write_bytes(pki.ca.cert_pem)
        ra = RaLab(lab, client, gateway, cloud, pki, behind)
        ra.conf = d / "gateway.toml"
        ra.socket = str(d / "lockgate.sock")
        ra.write_conf(server_section.replace("{d}", str(d)))
        for user, extra in users:
            ra.add_user(user, *extra)
        ra.start_daemon()
        try:
            yield ra
        finally:
            for charon in ra.charons:
                charon.stop()
            ra.stop_daemon()

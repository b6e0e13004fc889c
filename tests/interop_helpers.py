"""The lockgate-vs-strongSwan interop matrix's building blocks.

One case is: the site-to-site topology of `netns` (optionally with its NAT router),
the lockgate daemon (`lockgate daemon -c FILE`) in gateway A's namespace and charon
with userspace ESP (kernel-libipsec) in gateway B's, both configured from one
`Case`. `interop(case)` builds all of it and removes all of it (processes by PID,
then the namespaces), also when the case fails; a failing case prints both sides'
logs.

The checks every successful case makes: `check_sa_agreement` (lockgate's status and
charon's `list-sas` agree on the suites, the SPIs crosswise, ESP in UDP) and
`check_traffic` (ping across the tunnel both ways and a hashed TCP transfer of a few
MB, for each inner IP version). Failure cases use `attempt_and_fail`.

The matrix is `tests/test_interop_*.py`, marked `netns` and `interop` (the long
cases also `slow`); as root:

    .venv/bin/python -m pytest tests/test_interop_*.py

It took about 5 minutes on the 2-core development machine (42 cases).
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from netns import (
    HarnessError,
    Namespace,
    Process,
    SiteToSite,
    ping,
    site_to_site,
    tcp_transfer,
    wait_for_ping,
)
from strongswan import (
    Charon,
    ChildSaInfo,
    Credential,
    IkeSaInfo,
    Pki,
    SwanChild,
    SwanConnection,
    SwanSecret,
    install_credentials,
)

from daemon.control import ControlClientError, request

PSK = "lockgate-interop-matrix-psk-NOT-SECRET"
WRONG_PSK = "lockgate-interop-matrix-psk-WRONG-ONE"
IFACE = "lgmx0"
ESTABLISH_TIMEOUT = 20.0

# What charon's list-sas calls the algorithms of each proposal (strongSwan 5.9.8):
# (encryption, key size, PRF or integrity, DH group).
IKE_NAMES: Mapping[str, tuple[str, str, str, str]] = {
    "aes256gcm16-prfsha384-x25519": ("AES_GCM_16", "256", "PRF_HMAC_SHA2_384", "CURVE_25519"),
    "aes128gcm16-prfsha256-ecp256": ("AES_GCM_16", "128", "PRF_HMAC_SHA2_256", "ECP_256"),
    "aes256-sha256-modp2048": ("AES_CBC", "256", "PRF_HMAC_SHA2_256", "MODP_2048"),
    "chacha20poly1305-prfsha256-x448": (
        "CHACHA20_POLY1305",
        "256",
        "PRF_HMAC_SHA2_256",
        "CURVE_448",
    ),
}
# lockgate's status spells out the PRF a non-AEAD proposal takes from its integrity.
IKE_SPELLED: Mapping[str, str] = {
    "aes256-sha256-modp2048": "aes256-sha256-prfsha256-modp2048",
}
ESP_NAMES: Mapping[str, tuple[str, str, str]] = {
    "aes128gcm16": ("AES_GCM_16", "128", ""),
    "aes256gcm16": ("AES_GCM_16", "256", ""),
    "chacha20poly1305": ("CHACHA20_POLY1305", "256", ""),
    "aes256-sha256": ("AES_CBC", "256", "HMAC_SHA2_256_128"),
    "aes128-sha512": ("AES_CBC", "128", "HMAC_SHA2_512_256"),
}
DH_NAMES: Mapping[str, str] = {
    "x25519": "CURVE_25519",
    "x448": "CURVE_448",
    "ecp256": "ECP_256",
    "ecp384": "ECP_384",
    "modp2048": "MODP_2048",
    "modp3072": "MODP_3072",
}


def esp_suite(proposal: str) -> str:
    """The ESP suite of an ESP proposal, without its key-exchange (PFS) part."""
    for suffix in DH_NAMES:
        proposal = proposal.removesuffix(f"-{suffix}")
    return proposal


def pfs_group(proposal: str) -> str:
    """charon's name of the PFS group in an ESP proposal, or "" without PFS."""
    for suffix, name in DH_NAMES.items():
        if proposal.endswith(f"-{suffix}"):
            return name
    return ""


# --- one case ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One subnet pair, i.e. one lockgate connection and one charon child."""

    name: str
    a_nets: tuple[str, ...]
    """Subnets behind lockgate (gateway A)."""
    b_nets: tuple[str, ...]
    """Subnets behind charon (gateway B)."""


V4 = Pair("net4", ("192.0.2.0/24",), ("203.0.113.0/24",))
V6 = Pair("net6", ("2001:db8:a::/64",), ("2001:db8:b::/64",))
DUAL = Pair("dual", ("192.0.2.0/24", "2001:db8:a::/64"), ("203.0.113.0/24", "2001:db8:b::/64"))


@dataclass(frozen=True)
class Case:
    """Both sides' settings for one matrix case.

    charon's settings default to lockgate's; the `swan_*` fields override them for
    the cases whose point is a difference (failure cases, selector narrowing).
    """

    lockgate_initiates: bool = True
    ike: str = "aes256gcm16-prfsha384-x25519"
    esp: str = "aes128gcm16"
    lockgate_ike: tuple[str, ...] = ()
    """lockgate's IKE proposals when they differ from `ike` (e.g. hybrid, then classical)."""
    lockgate_esp: tuple[str, ...] = ()
    """lockgate's ESP proposals when they differ from `esp` (hybrid PFS, then classical)."""
    auth: str = "psk"
    """psk, or a key type of the test PKI (ecdsa-p256, rsa2048, ed25519, rsa4096)."""
    chain: bool = False
    """Issue the gateway certificates from an intermediate CA under the root."""
    outer: int = 4
    """IP version of the WAN (the IKE and ESP packets)."""
    nat: bool = False
    """A masquerading router in front of gateway A."""
    pairs: tuple[Pair, ...] = (V4,)
    lockgate_extra: Mapping[str, str] = field(default_factory=dict)
    """More `[connections.X]` keys for lockgate, as TOML values (`'"8s"'`)."""
    lockgate_gateway: Mapping[str, str] = field(default_factory=dict)
    """More `[gateway]` keys for lockgate, as TOML values."""
    lockgate_peer: Mapping[str, str] = field(default_factory=dict)
    """More `[peers.swan]` keys for lockgate, as TOML values (`ppk_id`, ...)."""
    swan_secrets: tuple[SwanSecret, ...] = ()
    """More `secrets` for charon (a `ppk` secret, ...)."""
    swan_pairs: tuple[Pair, ...] | None = None
    swan_ike: str | None = None
    swan_esp: str | None = None
    swan_auth: str | None = None
    swan_psk: str = PSK
    swan_foreign_ca: bool = False
    """charon's certificate comes from a CA lockgate does not trust."""
    swan_conn: Mapping[str, Any] = field(default_factory=dict)
    """Overrides of `SwanConnection` fields (rekey_time, dpd_delay, ...)."""
    swan_child: Mapping[str, Any] = field(default_factory=dict)
    """Overrides of every `SwanChild`'s fields (rekey_time, ...)."""
    swan_charon: tuple[str, ...] = ()
    """Extra lines for charon's strongswan.conf `charon { }` section."""
    swan_install_routes: bool = True
    """strongswan.conf `charon.install_routes`: off for a route-based peer, whose
    routes the test adds (kernel-libipsec installs its own regardless, in table 220)."""
    nat_udp_timeout: int | None = None
    """With `nat`: the router forgets a UDP mapping after this many idle seconds."""


# --- the lockgate side ------------------------------------------------------------------


@dataclass
class LockgateDaemon:
    """`lockgate daemon` running in a namespace with its own control socket."""

    ns: Namespace
    proc: Process
    socket: str
    config: Path

    def status(self) -> dict[str, Any]:
        result = request(self.socket, {"command": "status"}, timeout=5)
        if not isinstance(result, dict):
            raise AssertionError(f"status is not an object: {result!r}")
        return result

    def command(self, command: str, **kw: str | bool) -> Any:
        return request(self.socket, {"command": command, **kw}, timeout=30)

    def sas(self, connection: str | None = None) -> list[dict[str, Any]]:
        return [
            sa
            for sa in self.status()["sas"]
            if connection is None or sa["connection"] == connection
        ]

    def connection(self, name: str) -> dict[str, Any]:
        for conn in self.status()["connections"]:
            if conn["name"] == name:
                return dict(conn)
        raise KeyError(name)

    def log(self) -> str:
        return self.proc.log()


def wait_until(check: Callable[[], bool], what: str, timeout: float = ESTABLISH_TIMEOUT) -> None:
    """Poll `check` every 0.1 s; a control socket not answering yet counts as False."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ControlClientError, KeyError):
            if check():
                return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def render_lockgate(
    case: Case,
    *,
    me: str,
    my_id: str,
    peer: str,
    peer_id: str,
    credentials: Mapping[str, str] | None,
) -> str:
    """The daemon's TOML configuration for gateway A in this case."""
    gateway = [
        "[gateway]",
        f"addresses = [{json.dumps(me)}]",
        f"id = {json.dumps(my_id)}",
        f"interface = {json.dumps(IFACE)}",
        'log_level = "debug"',
    ]
    if credentials is not None:
        gateway += [f"{key} = {value}" for key, value in credentials.items()]
    gateway += [f"{key} = {value}" for key, value in case.lockgate_gateway.items()]
    peer_lines = [
        "[peers.swan]",
        f"address = {json.dumps(peer)}",
        f"id = {json.dumps(peer_id)}",
    ]
    if case.auth == "psk":
        peer_lines += ['auth = "psk"', f"psk = {json.dumps(PSK)}"]
    else:
        peer_lines.append('auth = "pubkey"')
    peer_lines += [f"{key} = {value}" for key, value in case.lockgate_peer.items()]
    out = [*gateway, "", *peer_lines, ""]
    for pair in case.pairs:
        out += [
            f"[connections.{pair.name}]",
            'peer = "swan"',
            f"local_subnets = {json.dumps(list(pair.a_nets))}",
            f"remote_subnets = {json.dumps(list(pair.b_nets))}",
            f"ike_proposals = {json.dumps(list(case.lockgate_ike or (case.ike,)))}",
            f"esp_proposals = {json.dumps(list(case.lockgate_esp or (case.esp,)))}",
            f"start = {json.dumps('initiate' if case.lockgate_initiates else 'wait')}",
            *(f"{key} = {value}" for key, value in case.lockgate_extra.items()),
            "",
        ]
    return "\n".join(out)


def start_lockgate(topo: SiteToSite, text: str, name: str = "lockgate") -> LockgateDaemon:
    """Write the configuration (mode 0600, it holds a PSK) and start the daemon."""
    path = topo.lab.tmpdir / f"{name}.toml"
    path.write_text(text)
    path.chmod(0o600)
    sock = str(topo.lab.tmpdir / f"{name}.sock")
    proc = topo.gw_a.spawn(
        [sys.executable, "-m", "daemon.cli", "-s", sock, "daemon", "-c", str(path),
         "--log-level", "debug"],
        name=name,
        log_path=topo.lab.tmpdir / f"{name}.log",
    )  # fmt: skip
    daemon = LockgateDaemon(topo.gw_a, proc, sock, path)

    def listening() -> bool:
        if not proc.alive():
            raise AssertionError(f"lockgate exited with {proc.popen.returncode}")
        return bool(daemon.status())

    try:
        wait_until(listening, "the daemon's control socket", timeout=15)
    except AssertionError:
        raise AssertionError(f"lockgate did not start:\n{proc.log()[-5000:]}") from None
    return daemon


# --- one case's world -------------------------------------------------------------------


@dataclass
class Interop:
    """A running case: topology, charon on B, lockgate on A (once started)."""

    case: Case
    topo: SiteToSite
    charon: Charon
    swan: SwanConnection
    secrets: list[SwanSecret]
    lockgate_text: str
    lockgate: LockgateDaemon | None = None

    @property
    def daemon(self) -> LockgateDaemon:
        if self.lockgate is None:
            raise AssertionError("lockgate is not running")
        return self.lockgate

    def start_lockgate(self) -> LockgateDaemon:
        self.lockgate = start_lockgate(self.topo, self.lockgate_text)
        return self.lockgate

    def restart_charon(self) -> None:
        """Start charon again (after it was killed) with the same configuration."""
        self.charon.start()
        self.charon.load([self.swan], self.secrets)

    def logs(self) -> str:
        parts = [self.charon.logs()]
        if self.lockgate is not None:
            parts.append(f"===== lockgate ({self.topo.gw_a.name}) log =====")
            parts.append(self.lockgate.log()[-30000:])
        return "\n".join(parts)

    def bring_up(self) -> IkeSaInfo:
        """Start lockgate; the case's initiator brings every pair up. charon's IKE SA."""
        daemon = self.start_lockgate()
        names = [pair.name for pair in self.case.swan_pairs or self.case.pairs]
        if not self.case.lockgate_initiates:
            for name in names:
                self.charon.initiate(name, ike="s2s")
        self.charon.wait_for_child(names[-1], timeout=ESTABLISH_TIMEOUT)
        wait_until(
            lambda: {sa["connection"] for sa in daemon.sas()} >= {p.name for p in self.case.pairs},
            "lockgate's CHILD SAs",
        )
        for name in names:
            self.charon.wait_for_child(name)
        return self.charon_ike()

    def charon_ike(self) -> IkeSaInfo:
        established = [ike for ike in self.charon.list_sas() if ike.state == "ESTABLISHED"]
        if len(established) != 1:
            raise AssertionError(f"charon has {len(established)} ESTABLISHED IKE SAs")
        return established[0]


@contextlib.contextmanager
def interop(case: Case) -> Iterator[Interop]:
    """Build the case's topology and charon, render lockgate's configuration; tear down.

    lockgate is not started yet (`Interop.bring_up` or `Interop.start_lockgate`), so a
    test can change charon first. Both logs are printed if the body fails.
    """
    with site_to_site(nat=case.nat) as topo, contextlib.ExitStack() as cleanup:
        if topo.nat is not None and case.nat_udp_timeout is not None:
            for key in ("nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream"):
                topo.nat.sysctl(f"net.netfilter.{key}", case.nat_udp_timeout)
        if case.outer == 6:
            a_wan, a_public, b_wan = topo.gw_a_wan6, topo.gw_a_public6, topo.gw_b_wan6
        else:
            a_wan, a_public, b_wan = topo.gw_a_wan4, topo.gw_a_public4, topo.gw_b_wan4
        charon = Charon(
            topo.gw_b,
            "gwB",
            extra_charon=case.swan_charon,
            install_routes=case.swan_install_routes,
        )
        charon.start()
        # Stopped by PID whatever fails from here on, the set-up below included.
        cleanup.callback(charon.stop)
        swan_auth = case.swan_auth or case.auth
        credentials: dict[str, str] | None = None
        # Behind the NAT, A's identity is the address B sees it come from.
        a_id, b_id = a_public, b_wan
        local_certs: list[str] = []
        if case.auth != "psk" or swan_auth != "psk":
            key_type = case.auth if case.auth != "psk" else swan_auth
            root = Pki("lockgate interop root", key_type=key_type)
            issuer = (
                Pki("lockgate interop sub", key_type=key_type, parent=root) if case.chain else root
            )
            own_a, own_b = issuer.issue("gw-a.example.net"), issuer.issue("gw-b.example.net")
            b_issuer = issuer
            if case.swan_foreign_ca:
                b_issuer = Pki("some other CA", key_type=key_type)
                own_b = b_issuer.issue("gw-b.example.net")
            if case.auth != "psk":
                a_id = own_a.id
                credentials = _write_lockgate_credentials(topo, own_a, issuer, root)
                # charon verifies lockgate's chain up to this root whatever it uses itself.
                charon.write_credential("x509ca", "lockgate-root.crt", root.ca.cert_pem)
            if swan_auth != "psk":
                b_id = own_b.id
                local_certs = [install_credentials(charon, own_b, b_issuer)]
        swan_pairs = case.swan_pairs or case.pairs
        child_overrides = dict(case.swan_child)
        swan = SwanConnection(
            name="s2s",
            local_addrs=b_wan,
            remote_addrs=a_public,
            local_id=b_id,
            remote_id=a_id,
            proposals=case.swan_ike or case.ike,
            local_auth="psk" if swan_auth == "psk" else "pubkey",
            remote_auth="psk" if case.auth == "psk" else "pubkey",
            local_certs=local_certs,
            children=[
                SwanChild(
                    pair.name,
                    list(pair.b_nets),
                    list(pair.a_nets),
                    esp_proposals=case.swan_esp or case.esp,
                    **child_overrides,
                )
                for pair in swan_pairs
            ],
        )
        swan = replace(swan, **dict(case.swan_conn))
        secrets = [SwanSecret("s2s", [a_id, b_id], case.swan_psk), *case.swan_secrets]
        charon.load([swan], secrets)
        text = render_lockgate(
            case, me=a_wan, my_id=a_id, peer=b_wan, peer_id=b_id, credentials=credentials
        )
        world = Interop(case, topo, charon, swan, secrets, text)
        try:
            yield world
            if world.lockgate is not None:
                # Every case ends with a clean stop: SIGTERM deletes the SAs, exits 0.
                rc = world.lockgate.proc.stop(timeout=10)
                log = world.lockgate.log()
                assert rc == 0, f"lockgate exited with {rc}"
                assert "Traceback" not in log, "lockgate logged a traceback"
        except BaseException:
            print(world.logs())  # test output: pytest shows it with the failure
            raise
        finally:
            if world.lockgate is not None:
                world.lockgate.proc.stop(timeout=10)


def _write_lockgate_credentials(
    topo: SiteToSite, own: Credential, issuer: Pki, root: Pki
) -> dict[str, str]:
    """lockgate's certificate (with any intermediate after it), key and trusted root."""
    tmp = topo.lab.tmpdir
    cert, key, ca = tmp / "gw-a.crt", tmp / "gw-a.key", tmp / "root.crt"
    intermediates = [pem for pem in issuer.chain() if pem != root.ca.cert_pem]
    cert.write_bytes(own.cert_pem + b"".join(intermediates))
    key.write_bytes(own.key_pem)
    key.chmod(0o600)
    ca.write_bytes(root.ca.cert_pem)
    return {
        "certificate": json.dumps(str(cert)),
        "private_key": json.dumps(str(key)),
        "ca": json.dumps([str(ca)]),
    }


# --- the checks -------------------------------------------------------------------------


def _inner_hosts(topo: SiteToSite, pairs: Sequence[Pair]) -> list[tuple[str, str]]:
    """(host A address, host B address) for each inner IP version the pairs carry."""
    versions = {6 if ":" in net else 4 for pair in pairs for net in pair.a_nets}
    out = []
    if 4 in versions:
        out.append((topo.site_a.host4, topo.site_b.host4))
    if 6 in versions:
        out.append((topo.site_a.host6, topo.site_b.host6))
    return out


def installed_child(ike: IkeSaInfo, name: str) -> ChildSaInfo:
    """charon's INSTALLED CHILD SA `name` (a rekeyed one may linger beside it)."""
    found = [c for c in ike.children if c.name == name and c.state == "INSTALLED"]
    if len(found) != 1:
        raise AssertionError(f"charon has {len(found)} INSTALLED CHILD SAs {name!r}: {ike.raw}")
    return found[0]


def check_sa_agreement(world: Interop) -> IkeSaInfo:
    """lockgate's status and charon's list-sas describe the same SAs (suites, SPIs)."""
    case = world.case
    ike = world.charon_ike()
    assert ike.initiator is not case.lockgate_initiates
    encr, keysize, prf, dh = IKE_NAMES[case.ike]
    assert (ike.encr_alg, ike.prf_alg, ike.dh_group) == (encr, prf, dh), ike.raw
    if encr != "CHACHA20_POLY1305":
        assert ike.encr_keysize == keysize, ike.raw
    sas = world.daemon.sas()
    conns = {c["name"]: c for c in world.daemon.status()["connections"]}
    # What an operator on the strongSwan side sees, too.
    listed = world.charon.swanctl("--list-sas")
    for pair in case.pairs:
        [sa] = [sa for sa in sas if sa["connection"] == pair.name]
        child = installed_child(ike, pair.name)
        assert child.encap and sa["encap"] == "udp"  # kernel-libipsec always encapsulates
        assert (int(child.spi_in, 16), int(child.spi_out, 16)) == (
            int(sa["spi_out"], 16),
            int(sa["spi_in"], 16),
        )
        suite = esp_suite(case.esp)
        assert sa["suite"] == suite
        encr, keysize, integ = ESP_NAMES[suite]
        assert (child.encr_alg, child.integ_alg) == (encr, integ), child.raw
        if encr != "CHACHA20_POLY1305":
            assert child.encr_keysize == keysize, child.raw
        entry = re.search(
            rf"^  {pair.name}: #\d+, reqid \d+, INSTALLED, TUNNEL-in-UDP, ESP:\S+\n"
            rf".*\n    in  {sa['spi_out']},.*\n    out {sa['spi_in']},",
            listed,
            re.MULTILINE,
        )
        assert entry is not None, listed
        [ike_entry] = conns[pair.name]["ike_sas"]
        assert ike_entry["initiator"] is case.lockgate_initiates
        assert ike_entry["suite"] == IKE_SPELLED.get(case.ike, case.ike), ike_entry
    return ike


def check_traffic(world: Interop, *, size: int = 3 << 20) -> None:
    """Ping both ways for every inner version, one hashed TCP transfer per version."""
    topo = world.topo
    before = {sa["unique_id"]: sa["bytes_in"] for sa in world.daemon.sas()}
    for index, (host_a, host_b) in enumerate(_inner_hosts(topo, world.case.pairs)):
        wait_for_ping(topo.host_a, host_b, timeout=10)
        ping(topo.host_a, host_b, count=3)
        ping(topo.host_b, host_a, count=3)
        # The first version moves `size`, any other a quarter of it: enough to fill
        # windows and cross several MTU-sized packets, without doubling the case's time.
        amount = size if index == 0 else size // 4
        result = tcp_transfer(topo.host_a, topo.host_b, host_b, size=amount)
        assert result.received_sha256 == result.sent_sha256
        assert result.received_bytes == amount
        assert result.peer_address == host_a  # no NAT inside the tunnel
    after = world.daemon.sas()
    moved = sum(sa["bytes_in"] - before.get(sa["unique_id"], 0) for sa in after)
    assert moved > 0, "lockgate counted no inbound ESP bytes"
    for sa in after:
        assert sa["drops"] == {}, sa
    ike = world.charon_ike()
    for pair in world.case.pairs:
        child = installed_child(ike, pair.name)
        assert child.packets_in > 0 and child.packets_out > 0, child.raw


def _installed(world: Interop, name: str) -> list[tuple[int, int]]:
    """charon's INSTALLED CHILD SAs called `name`: (SPI in, SPI out)."""
    return [
        (int(c.spi_in, 16), int(c.spi_out, 16))
        for ike in world.charon.list_sas()
        for c in ike.children
        if c.name == name and c.state == "INSTALLED"
    ]


def rekey_child(world: Interop, name: str, *, by_lockgate: bool) -> dict[str, Any]:
    """Rekey CHILD SA `name` from one side; wait until both sides hold only the new one.

    Returns lockgate's status entry of the new SA.
    """
    daemon = world.daemon
    [old] = daemon.sas(name)
    if by_lockgate:
        answer = daemon.command("rekey", name=name)
        assert f"connection {name}: rekeyed" in answer, answer
    else:
        world.charon.swanctl("--rekey", "--child", name)

    def replaced() -> bool:
        sas = daemon.sas(name)
        if len(sas) != 1 or sas[0]["unique_id"] == old["unique_id"]:
            return False
        new = sas[0]
        return _installed(world, name) == [(int(new["spi_out"], 16), int(new["spi_in"], 16))]

    wait_until(replaced, f"CHILD SA {name} to be replaced on both sides")
    [new] = daemon.sas(name)
    return new


def attempt_and_fail(
    world: Interop, connection: str, expect: str, *, charon_ike_may_stay: bool = False
) -> str:
    """Start lockgate, let the case's initiator try, wait for `expect` in lockgate's log.

    Then no CHILD SA may exist on either side, and (unless `charon_ike_may_stay`: a
    CHILD SA failing in IKE_AUTH leaves the IKE SA up, RFC 7296 §1.2) no IKE SA on
    charon's. Returns lockgate's log.
    """
    daemon = world.start_lockgate()
    if not world.case.lockgate_initiates:
        with contextlib.suppress(HarnessError):
            world.charon.initiate(connection, ike="s2s", timeout=10.0)
            raise AssertionError("charon's initiate succeeded; it must fail")
    wait_until(lambda: expect in daemon.log(), f"lockgate to log {expect!r}")
    assert daemon.sas() == []
    charon_sas = world.charon.list_sas()
    assert not [c for ike in charon_sas for c in ike.children if c.state == "INSTALLED"]
    if not charon_ike_may_stay:
        assert not [ike for ike in charon_sas if ike.state == "ESTABLISHED"], charon_sas
    log = daemon.log()
    assert "Traceback" not in log
    return log

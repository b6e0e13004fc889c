"""`lockgate demo`: a site-to-site VPN between network namespaces, end to end.

    host "dc" ── gateway "dc" ══ WAN ══ gateway "cloud" ── host "cloud"
    192.0.2.10     192.0.2.1   198.51.100.0/24  203.0.113.1    203.0.113.10

The namespaces are the shared lab's site-to-site topology (`daemon.lab.netns`, the
one the tests and benchmarks use: site A is the data centre, B the cloud), and the
daemons run the example configurations shipped in `conf/examples/` unchanged, so the
demo shows exactly what those files do; it first checks that they describe that
topology. It runs `lockgate daemon` on both gateways, waits for the tunnel, pings
across it, moves a file across it over TCP and compares SHA-256 hashes, prints
`lockgate status` of both gateways, and removes every namespace, process and file it
made (the lab stops processes by PID), also on Ctrl-C, SIGTERM or an error. Every
step is bounded in time.

`lockgate demo --bgp` runs the route-based examples instead (`route-dc.toml`,
`route-cloud.toml`: one tunnel interface per side, selectors 0.0.0.0/0 and ::/0, no
routes of lockgate's own) with BIRD 2 on both gateways (`bird-dc.conf`,
`bird-cloud.conf`, unchanged; `daemon.lab.bird` runs them): the two sites exchange
their LANs over BGP across the tunnel. It prints the routes each side learned, pings
and moves the file over them, adds a network at the cloud that the data centre learns
and reaches with no lockgate change, then removes it again.

It lives in the installed package (not in tests/) because `make demo` runs it from
the installed `lockgate` command. Run as a module, it is also the small TCP
sender/receiver of the file transfer (`python -m daemon.demo serve|send ...`).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Any

from daemon.control import ControlClientError, request
from daemon.lab.bird import Bird, bird_available, start_bird
from daemon.lab.netns import (
    SITE_A,
    SITE_B,
    WAN_A4,
    WAN_B4,
    HarnessError,
    Lab,
    Namespace,
    Process,
    Site,
    SiteToSite,
    add_network,
    build_site_to_site,
    ping,
    wait_for_ping,
)
from daemon.status import format_sa, format_status

EXAMPLES = ("dc.toml", "cloud.toml")
"""The two example configurations the demo runs, in `conf/examples/`."""
BGP_EXAMPLES = ("route-dc.toml", "route-cloud.toml")
"""What `--bgp` runs instead: route-based connections ..."""
BIRD_EXAMPLES = ("bird-dc.conf", "bird-cloud.conf")
"""... and BIRD 2 on each gateway, peering over the tunnel."""
LATE_NETWORK = ("net1", ("203.0.113.129/25", "2001:db8:b:1::1/64"))
"""The network that appears at the cloud during `--bgp` (an interface bird-cloud.conf
announces: "net*"), and its gateway addresses."""
TRANSFER_PORT = 5201
STEP_TIMEOUT = 30.0


class DemoError(RuntimeError):
    """A demo step failed; the message says which and why."""


class _Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: unwind through the clean-up."""


def say(text: str = "") -> None:
    """One line of the demo's narration, on stdout (this is a CLI command's output)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# ---- what the example configurations say -------------------------------------------


@dataclass(frozen=True)
class DemoSite:
    """One side of the demo, as its example configuration describes it."""

    role: str
    """"dc" or "cloud"."""
    config: Path
    """The example configuration file."""
    wan: tuple[str, ...]
    """The gateway's public addresses (`gateway.addresses`)."""
    subnets: tuple[str, ...]
    """The site's subnets (`local_subnets` of its connection; in route mode, the lab
    site's LAN, which BIRD announces)."""
    bird: Path | None = None
    """`--bgp`: the site's BIRD configuration."""

    @property
    def lab_site(self) -> Site:
        """The lab's addresses for this side: site A is the data centre, B the cloud."""
        return SITE_A if self.role == "dc" else SITE_B

    def host_address(self, subnet: str) -> str:
        """The lab's host in ``subnet`` (one of the site's two subnets)."""
        site = self.lab_site
        return site.host4 if subnet == site.subnet4 else site.host6


def _example(name: str) -> Path:
    path = Path(str(resources.files("conf") / "examples" / name))
    if not path.is_file():
        raise DemoError(f"example configuration {path} is missing")
    return path


def read_site(role: str, config: Path) -> DemoSite:
    """The addresses and subnets the demo needs from one example configuration."""
    with config.open("rb") as f:
        data: dict[str, Any] = tomllib.load(f)
    wan = tuple(str(a) for a in data.get("gateway", {}).get("addresses", []))
    subnets: list[str] = []
    connections = list(data.get("connections", {}).values())
    for conn in connections:
        for net in conn.get("local_subnets", []):
            if str(net) not in subnets:
                subnets.append(str(net))
    if not subnets and connections and all(c.get("mode") == "route" for c in connections):
        # Route mode: the selectors are 0.0.0.0/0 and ::/0; the site's LAN is what its
        # BIRD announces from the lab's lan0.
        lab_site = SITE_A if role == "dc" else SITE_B
        subnets = [lab_site.subnet4, lab_site.subnet6]
    if not wan or not subnets:
        raise DemoError(f"{config}: needs gateway.addresses and a connection's local_subnets")
    return DemoSite(role, config, wan, tuple(subnets))


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise `_Interrupted`, so every `finally` runs."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise _Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# ---- the demo ------------------------------------------------------------------------


@dataclass
class Demo:
    """The topology and daemons of one demo run (site A of the lab is "dc", B "cloud")."""

    lab: Lab
    dc: DemoSite
    cloud: DemoSite
    deadline: float
    file_mib: int = 8
    topo: SiteToSite | None = None
    sockets: dict[str, str] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    daemons: dict[str, Process] = field(default_factory=dict)
    birds: dict[str, Bird] = field(default_factory=dict)

    def left(self) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise DemoError("the demo ran out of time")
        return remaining

    def build(self) -> None:
        try:
            self.topo = build_site_to_site(self.lab)
        except HarnessError as exc:
            raise DemoError(f"cannot build the namespaces: {exc}") from None

    def gateway(self, role: str) -> Namespace:
        topo = self._topology()
        return topo.gw_a if role == "dc" else topo.gw_b

    def host(self, role: str) -> Namespace:
        topo = self._topology()
        return topo.host_a if role == "dc" else topo.host_b

    def _topology(self) -> SiteToSite:
        if self.topo is None:
            raise DemoError("the namespaces are not built yet")
        return self.topo

    def start_daemons(self) -> None:
        # The cloud side answers, the data centre initiates: start the responder first
        # so the first IKE_SA_INIT finds it listening instead of waiting for a retry.
        for site in (self.cloud, self.dc):
            sock = str(self.lab.tmpdir / f"{site.role}.sock")
            log = self.lab.tmpdir / f"{site.role}.log"
            self.sockets[site.role], self.logs[site.role] = sock, log
            args = [sys.executable, "-m", "daemon.cli", "-s", sock, "daemon", "-c",
                    str(site.config), "--log-level", "info"]  # fmt: skip
            self.daemons[site.role] = self.gateway(site.role).spawn(
                args, name=f"lockgate-{site.role}", log_path=log
            )
            self.wait_listening(site.role)

    def wait_listening(self, role: str) -> None:
        deadline = time.monotonic() + min(self.left(), STEP_TIMEOUT)
        while time.monotonic() < deadline:
            proc = self.daemons[role]
            if not proc.alive():
                raise DemoError(
                    f"the {role} gateway's daemon exited ({proc.popen.returncode}):\n"
                    + self.tail(role)
                )
            with contextlib.suppress(ControlClientError, DemoError):
                self.status(role)
                return
            time.sleep(0.1)
        raise DemoError(f"the {role} gateway's daemon did not start:\n" + self.tail(role))

    def status(self, role: str) -> dict[str, Any]:
        result = request(self.sockets[role], {"command": "status"}, timeout=5.0)
        if not isinstance(result, dict):
            raise DemoError(f"{role} gateway sent a malformed status")
        return result

    def wait_for_tunnel(self) -> float:
        start = time.monotonic()
        limit = min(self.left(), STEP_TIMEOUT)
        while True:
            for role, proc in self.daemons.items():
                if not proc.alive():
                    raise DemoError(
                        f"the {role} gateway's daemon exited ({proc.popen.returncode}):\n"
                        + self.tail(role)
                    )
            try:
                if all(self.status(role).get("sas") for role in self.daemons):
                    return time.monotonic() - start
            except ControlClientError:
                pass  # not listening yet
            if time.monotonic() - start > limit:
                raise DemoError("the tunnel did not come up in time:\n" + self.tail("dc"))
            time.sleep(0.2)

    def covered(self, address: str) -> bool:
        """True if an installed CHILD SA of the dc gateway carries traffic to ``address``."""
        addr = ipaddress.ip_address(address)
        for sa in self.status("dc").get("sas", []):
            for ts in sa["remote_ts"]:
                with contextlib.suppress(ValueError):
                    if addr in ipaddress.ip_network(ts.split("[")[0]):
                        return True
        return False

    def tail(self, role: str, lines: int = 15) -> str:
        try:
            text = self.logs[role].read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    def ping(self, source_role: str, dest: str) -> str:
        host = self.host(source_role)
        try:
            # Replies first: IPv6 neighbour discovery on the LANs holds the first
            # packets for about a second, which says nothing about the tunnel.
            wait_for_ping(host, dest, timeout=min(self.left(), 10))
            return ping(host, dest, count=3, interval=0.2, deadline=10).stdout
        except HarnessError as exc:
            raise DemoError(str(exc)) from None

    def transfer(self, dest: str) -> tuple[str, str, float]:
        """Send a random file from host-dc to ``dest``: (sent hash, receiver's report
        "hash octets seconds", seconds the receiver spent receiving)."""
        payload = self.lab.tmpdir / "payload.bin"
        with payload.open("wb") as f:
            for _ in range(self.file_mib):
                f.write(os.urandom(1 << 20))
        sent = hashlib.sha256(payload.read_bytes()).hexdigest()
        timeout = str(int(min(self.left(), 60)))
        receiver = self.host("cloud").spawn(
            [sys.executable, "-m", "daemon.demo", "serve", str(TRANSFER_PORT), timeout],
            name="file-receiver",
            stdout_pipe=True,
        )
        stdout = receiver.popen.stdout
        if stdout is None or stdout.readline().strip() != b"ready":
            raise DemoError("the file receiver did not start")
        try:
            self.host("dc").run(
                sys.executable, "-m", "daemon.demo", "send", dest, str(TRANSFER_PORT),
                str(payload), timeout=min(self.left(), 60),
            )  # fmt: skip
        except HarnessError as exc:
            raise DemoError(f"sending the file failed: {exc}") from None
        try:
            out, _ = receiver.popen.communicate(timeout=min(self.left(), 30))
        except subprocess.TimeoutExpired:
            raise DemoError("the file receiver did not finish") from None
        received = out.decode().strip()
        fields = received.split()
        seconds = float(fields[2]) if len(fields) == 3 else 0.0
        return sent, received, seconds

    def start_birds(self) -> None:
        """BIRD on both gateways, on the example configurations; wait for BGP."""
        for site in (self.cloud, self.dc):
            if site.bird is None:
                raise DemoError(f"no BIRD configuration for the {site.role} gateway")
            try:
                self.birds[site.role] = start_bird(
                    self.gateway(site.role), site.bird, self.lab.tmpdir, f"bird-{site.role}"
                )
            except HarnessError as exc:
                raise DemoError(str(exc)) from None

    def wait_for_bgp(self) -> float:
        """Wait until every BGP session of both BIRDs is Established; seconds waited."""
        start = time.monotonic()
        try:
            for bird in self.birds.values():
                sessions = [p.name for p in bird.protocols().values() if p.proto == "BGP"]
                bird.wait_established(*sessions, timeout=min(self.left(), STEP_TIMEOUT))
        except HarnessError as exc:
            raise DemoError(str(exc)) from None
        return time.monotonic() - start

    def wait_route(self, role: str, prefix: str, *, present: bool = True) -> float:
        try:
            return self.birds[role].wait_route(
                prefix, present=present, timeout=min(self.left(), STEP_TIMEOUT)
            )
        except HarnessError as exc:
            raise DemoError(str(exc)) from None

    def learned(self, role: str) -> list[str]:
        """What ``role``'s BIRD learned over BGP, one line per prefix."""
        lines = []
        for prefix, routes in sorted(self.birds[role].learned().items()):
            best = routes[0]
            via = ", ".join(best.via) or "?"
            lines.append(f"{prefix} via {via} (BGP session {best.protocol})")
        return lines


def check_matches_lab(dc: DemoSite, cloud: DemoSite) -> None:
    """The example configurations must describe the lab's site-to-site topology (site A
    is the data centre, B the cloud), or the tunnel would join the wrong networks."""
    for site, wan in ((dc, WAN_A4), (cloud, WAN_B4)):
        lab_site = site.lab_site
        if site.wan != (wan,):
            raise DemoError(
                f"{site.config}: gateway.addresses must be [{wan!r}] for the demo's lab"
            )
        extra = set(site.subnets) - {lab_site.subnet4, lab_site.subnet6}
        if extra:
            raise DemoError(
                f"{site.config}: subnets {sorted(extra)} are not in the demo's lab "
                f"({lab_site.subnet4}, {lab_site.subnet6})"
            )


def _check_requirements(bgp: bool) -> None:
    if os.geteuid() != 0:
        raise DemoError("the demo creates network namespaces: run it as root (make demo)")
    for tool in ("ip", "ping", "sysctl"):
        if shutil.which(tool) is None:
            raise DemoError(f"the '{tool}' command is missing (Debian: iproute2, iputils-ping)")
    if not Path("/dev/net/tun").exists():
        raise DemoError("/dev/net/tun is missing: this kernel or container has no TUN")
    if bgp and not bird_available():
        raise DemoError("--bgp runs BIRD: install it (Debian: apt-get install bird2)")


def run_demo(timeout: float = 120.0, file_mib: int = 8, bgp: bool = False) -> int:
    """Run the whole demo (``bgp``: the route-based one with BIRD); 0 if every check
    passed. Everything it made is removed."""
    try:
        _check_requirements(bgp)
        names = BGP_EXAMPLES if bgp else EXAMPLES
        dc = read_site("dc", _example(names[0]))
        cloud = read_site("cloud", _example(names[1]))
        if bgp:
            dc = replace(dc, bird=_example(BIRD_EXAMPLES[0]))
            cloud = replace(cloud, bird=_example(BIRD_EXAMPLES[1]))
        check_matches_lab(dc, cloud)
    except DemoError as exc:
        say(f"lockgate demo: {exc}")
        return 1
    # The shared lab (daemon.lab.netns): the same namespaces the tests use, named after
    # this process so that concurrent runs never collide.
    lab = Lab(prefix=f"lgdemo{os.getpid()}")
    demo = Demo(lab, dc, cloud, time.monotonic() + timeout, file_mib)
    status = 1
    try:
        with _signals_interrupt():
            status = _steps(demo)
    except _Interrupted as exc:
        say(f"\nInterrupted ({exc}): cleaning up.")
        status = 130
    except DemoError as exc:
        say(f"\nThe demo failed: {exc}")
        status = 1
    finally:
        # Signals during clean-up must not cut it short.
        old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            lab.close()
        except HarnessError as exc:
            say(f"Clean-up incomplete: {exc}")
            status = status or 1
        else:
            say("Removed the demo's namespaces, processes and files.")
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
    return status


def _steps(demo: Demo) -> int:
    dc, cloud = demo.dc, demo.cloud
    bgp = dc.bird is not None
    step = itertools.count(1)
    if bgp:
        say("lockgate demo --bgp: a route-based IPsec tunnel, routes exchanged by BIRD (BGP)")
    else:
        say("lockgate demo: a site-to-site IPsec VPN between network namespaces")
    say(f"  data centre: subnets {', '.join(dc.subnets)}, gateway {', '.join(dc.wan)}")
    say(f"  cloud:       subnets {', '.join(cloud.subnets)}, gateway {', '.join(cloud.wan)}")
    say(f"  configurations: {dc.config} and {cloud.config}")
    if dc.bird is not None and cloud.bird is not None:
        say(f"  BIRD:           {dc.bird} and {cloud.bird}")
    say()
    say(f"{next(step)}. Building the namespaces (hosts, gateways, WAN link) ...")
    demo.build()
    say(f"{next(step)}. Starting `lockgate daemon` on both gateways ...")
    demo.start_daemons()
    seconds = demo.wait_for_tunnel()
    say(f"   tunnel up after {seconds:.1f}s")
    for role in ("dc", "cloud"):
        for sa in demo.status(role).get("sas", []):
            say(f"   {role}: {format_sa(sa)}")
    if bgp:
        say(f"{next(step)}. Starting BIRD on both gateways, peering over the tunnel ...")
        demo.start_birds()
        seconds = demo.wait_for_bgp()
        for subnet in cloud.subnets:
            demo.wait_route("dc", subnet)
        for subnet in dc.subnets:
            demo.wait_route("cloud", subnet)
        say(f"   BGP sessions established after {seconds:.1f}s; routes learned:")
        for role in ("dc", "cloud"):
            for line in demo.learned(role):
                say(f"   {role}: {line}")
    say(f"{next(step)}. Pinging across the tunnel ...")
    for subnet in cloud.subnets:
        dest = cloud.host_address(subnet)
        if not demo.covered(dest):
            say(f"   (no CHILD SA covers {subnet} yet; see `lockgate status` below)")
            continue
        _ping_step(demo, dest)
    if bgp:
        name, cidrs = LATE_NETWORK
        nets = [str(ipaddress.ip_interface(c).network) for c in cidrs]
        say(f"{next(step)}. A new network appears at the cloud ({', '.join(nets)}) ...")
        add_network(demo.gateway("cloud"), name, cidrs)
        for net in nets:
            seconds = demo.wait_route("dc", net)
            say(f"   dc learned {net} over BGP after {seconds:.2f}s, with no lockgate change")
        for cidr in cidrs:
            _ping_step(demo, str(ipaddress.ip_interface(cidr).ip))
        demo.gateway("cloud").ip("link", "del", name)
        for net in nets:
            seconds = demo.wait_route("dc", net, present=False)
            say(f"   removed again: dc withdrew {net} after {seconds:.2f}s")
    say(f"{next(step)}. Moving a {demo.file_mib} MiB file from host-dc to host-cloud over TCP ...")
    dest = cloud.host_address(cloud.subnets[0])
    sent, received, seconds = demo.transfer(dest)
    say(f"   sent     sha256 {sent}")
    say(f"   received sha256 {received.split()[0] if received else '(nothing)'}")
    if not received or received.split()[0] != sent:
        raise DemoError("the file arrived corrupted or incomplete")
    rate = demo.file_mib * 8 / seconds if seconds > 0 else 0.0
    say(f"   hashes match ({seconds:.2f}s, {rate:.0f} Mbit/s)")
    say(f"{next(step)}. `lockgate status` on both gateways:")
    for role in ("dc", "cloud"):
        say(f"--- gateway {role} ---")
        for line in format_status(demo.status(role)).splitlines():
            say("   " + line)
    say()
    say("The demo succeeded.")
    return 0


def _ping_step(demo: Demo, dest: str) -> None:
    out = demo.ping("dc", dest)
    summary = [line for line in out.splitlines() if "packet loss" in line or "rtt" in line]
    say(f"   host-dc -> {dest}: " + " / ".join(s.strip() for s in summary))


# ---- the transfer's two ends (run inside the host namespaces) -----------------------


def _serve(port: int, timeout: int) -> None:
    with socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True) as srv:
        srv.settimeout(timeout)
        say("ready")
        conn, _ = srv.accept()
        start = time.monotonic()
        with conn:
            conn.settimeout(timeout)
            digest, total = hashlib.sha256(), 0
            while chunk := conn.recv(1 << 16):
                digest.update(chunk)
                total += len(chunk)
        say(f"{digest.hexdigest()} {total} {time.monotonic() - start:.6f}")


def _send(host: str, port: int, path: str) -> None:
    with socket.create_connection((host, port), timeout=20) as conn, open(path, "rb") as f:
        conn.sendfile(f)


def _main(argv: Sequence[str]) -> int:
    if len(argv) == 3 and argv[0] == "serve":
        _serve(int(argv[1]), int(argv[2]))
        return 0
    if len(argv) == 4 and argv[0] == "send":
        _send(argv[1], int(argv[2]), argv[3])
        return 0
    sys.stderr.write("usage: python -m daemon.demo serve PORT TIMEOUT | send HOST PORT FILE\n")
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

"""The namespace lab: namespaces, veth links, processes and traffic checks.

Tests, the demo and the benchmarks build their networks with it. Everything a run
creates goes through a `Lab`, which removes it again: processes are stopped by PID
(their own process group, never by name), then the namespaces are deleted. That
happens on normal exit, on failure, on KeyboardInterrupt, and as a last resort from an
`atexit` hook. Names include the creating process's PID and a counter so that runs at
the same time on one machine never collide.

Only documentation addresses are used (RFC 5737: 192.0.2.0/24, 198.51.100.0/24,
203.0.113.0/24; RFC 3849: 2001:db8::/32).

The traffic helpers are real: `ping` runs the system ping inside a namespace, and
`tcp_transfer` sends a few MB over TCP between namespaces with this very file run as a
small sender/receiver, comparing the SHA-256 the receiver saw with the sender's.

Use it as context managers (`with site_to_site(nat=True) as topo:`, `with Lab() as
lab:`; the test suite wraps them as pytest fixtures in `tests/netns.py`).
`in_namespace(name)` moves the calling thread into a namespace, for code that must run
in-process there (TUN devices, netlink).

Run as a script (`python netns.py serve|send ...`) it is that sender/receiver; it
imports only the standard library so that it runs from its path in any namespace.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

# Every namespace this process created and has not yet deleted: the atexit hook's list.
_LIVE_NAMESPACES: set[str] = set()
_LIVE_PROCESSES: dict[int, subprocess.Popen[bytes]] = {}
_COUNTER = itertools.count(1)

DEFAULT_TIMEOUT = 20.0


class HarnessError(RuntimeError):
    """A lab step failed (command error, timeout, traffic check mismatch)."""


def run_command(
    args: Sequence[str],
    *,
    check: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(args),
            input=input.decode() if input is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"timed out after {timeout}s: {' '.join(args)}") from exc
    if check and proc.returncode != 0:
        raise HarnessError(
            f"command failed ({proc.returncode}): {' '.join(args)}\n"
            f"stdout: {proc.stdout.strip()}\nstderr: {proc.stderr.strip()}"
        )
    return proc


_run = run_command  # the short name the lab's own modules use


def unique_prefix() -> str:
    """A short prefix unique to this process and call: `lg<pid>x<n>`."""
    return f"lg{os.getpid()}x{next(_COUNTER)}"


@dataclass
class Process:
    """A background process started in a namespace; stopped by its PID only."""

    pid: int
    popen: subprocess.Popen[bytes]
    name: str
    log_path: Path | None = None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL its process group. Returns rc."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                # The process leads its own group (start_new_session), so the group id is
                # its PID: this reaches its children too and nothing else.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        _LIVE_PROCESSES.pop(self.pid, None)
        return self.popen.returncode

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")


@dataclass
class Namespace:
    """One network namespace (`ip netns`), with helpers to run things inside it."""

    name: str
    lab: Lab

    def exec_args(self, args: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(
        self,
        *args: str,
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace and wait for it."""
        return _run(self.exec_args(args), check=check, timeout=timeout, env=env)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(["ip", "-n", self.name, *args], check=check)

    def sysctl(self, key: str, value: str | int) -> None:
        self.run("sysctl", "-q", "-w", f"{key}={value}")

    def spawn(
        self,
        args: Sequence[str],
        *,
        name: str | None = None,
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
        stdout_pipe: bool = False,
    ) -> Process:
        """Start a background process in the namespace; the Lab stops it by PID later."""
        return self.lab.spawn(
            self, args, name=name, log_path=log_path, env=env, stdout_pipe=stdout_pipe
        )

    def addresses(self, ifname: str) -> str:
        return self.ip("-br", "addr", "show", "dev", ifname).stdout


class Lab:
    """Owns every namespace and process a run creates, and removes them all on exit."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or unique_prefix()
        self.namespaces: list[Namespace] = []
        self.processes: list[Process] = []
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self._closed = False

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def namespace(self, role: str) -> Namespace:
        """Create namespace `<prefix>-<role>` with loopback up."""
        name = f"{self.prefix}-{role}"
        _run(["ip", "netns", "add", name])
        _LIVE_NAMESPACES.add(name)
        ns = Namespace(name, self)
        self.namespaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        return ns

    def spawn(
        self,
        ns: Namespace,
        args: Sequence[str],
        *,
        name: str | None = None,
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
        stdout_pipe: bool = False,
    ) -> Process:
        # stdout: a pipe for the caller to read, else the log file (with stderr), else
        # nowhere. A child's unread stderr pipe could fill and block it, so never a pipe.
        log_file = open(log_path, "ab") if log_path is not None else None  # noqa: SIM115
        stdout: int | IO[bytes] = subprocess.DEVNULL
        if stdout_pipe:
            stdout = subprocess.PIPE
        elif log_file is not None:
            stdout = log_file
        stderr: int | IO[bytes] = log_file if log_file is not None else subprocess.DEVNULL
        try:
            popen = subprocess.Popen(
                ns.exec_args(args),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=env,
                start_new_session=True,
            )
        finally:
            if log_file is not None:
                log_file.close()
        proc = Process(popen.pid, popen, name or args[0], log_path)
        _LIVE_PROCESSES[popen.pid] = popen
        self.processes.append(proc)
        return proc

    def veth(
        self, a: Namespace, a_if: str, b: Namespace, b_if: str, *, mtu: int | None = None
    ) -> None:
        """A veth pair created directly inside the namespaces (never in the host's)."""
        a.ip("link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name)
        for ns, ifname in ((a, a_if), (b, b_if)):
            if mtu is not None:
                ns.ip("link", "set", ifname, "mtu", str(mtu))
            ns.ip("link", "set", ifname, "up")

    def close(self) -> None:
        """Stop every process (by PID), then delete every namespace. Idempotent."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        for proc in reversed(self.processes):
            try:
                proc.stop()
            except Exception as exc:  # keep cleaning up whatever else is left
                errors.append(f"stop {proc.name} ({proc.pid}): {exc}")
        for ns in reversed(self.namespaces):
            try:
                delete_namespace(ns.name)
            except Exception as exc:
                errors.append(f"delete {ns.name}: {exc}")
        for path in sorted(self.tmpdir.rglob("*"), reverse=True):
            with contextlib.suppress(OSError):
                path.unlink() if not path.is_dir() or path.is_symlink() else path.rmdir()
        with contextlib.suppress(OSError):
            self.tmpdir.rmdir()
        if errors:
            raise HarnessError("cleanup incomplete: " + "; ".join(errors))


def delete_namespace(name: str) -> None:
    """Kill what still runs in the namespace (by PID), then delete it."""
    pids = _run(["ip", "netns", "pids", name], check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = _run(["ip", "netns", "pids", name], check=False).stdout.split()
        if pids:
            time.sleep(0.05)
    _run(["ip", "netns", "del", name], check=False)
    _LIVE_NAMESPACES.discard(name)


@atexit.register
def _cleanup_leftovers() -> None:
    # Last resort (e.g. a second KeyboardInterrupt during teardown).
    for pid, popen in list(_LIVE_PROCESSES.items()):
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    for name in list(_LIVE_NAMESPACES):
        with contextlib.suppress(Exception):
            delete_namespace(name)


_CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def in_namespace(name: str) -> Iterator[None]:
    """Move the calling thread (only) into namespace `name`, and back afterwards.

    Network namespaces are per thread on Linux, so sockets, netlink sessions and TUN
    devices opened inside the block belong to `name`; other threads are unaffected.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{name}") as target:
        if libc.setns(target.fileno(), _CLONE_NEWNET) != 0:
            raise HarnessError(f"setns({name}): {os.strerror(ctypes.get_errno())}")
        try:
            yield
        finally:
            if libc.setns(home.fileno(), _CLONE_NEWNET) != 0:
                raise HarnessError(f"cannot return from {name}: {os.strerror(ctypes.get_errno())}")


def namespace_exists(name: str) -> bool:
    return name in _run(["ip", "netns", "list"]).stdout.split()


# --- the site-to-site topology ------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """The addresses of one site: its host, its gateway's inside leg and the subnet."""

    subnet4: str
    subnet6: str
    host4: str
    host6: str
    gateway4: str
    gateway6: str


SITE_A = Site(
    "192.0.2.0/24", "2001:db8:a::/64", "192.0.2.10", "2001:db8:a::10", "192.0.2.1", "2001:db8:a::1"
)
SITE_B = Site(
    "203.0.113.0/24",
    "2001:db8:b::/64",
    "203.0.113.10",
    "2001:db8:b::10",
    "203.0.113.1",
    "2001:db8:b::1",
)

# WAN: gateway A's public address is 198.51.100.1, gateway B's 198.51.100.2. With a NAT
# router, gateway A sits behind it on 198.51.100.129/25 and the router's outside leg
# takes 198.51.100.1, so gateway B's view (and configuration) stays the same.
WAN_A4, WAN_B4 = "198.51.100.1", "198.51.100.2"
WAN_A6, WAN_B6 = "2001:db8:100::1", "2001:db8:100::2"
NATTED_A4, NAT_IN4 = "198.51.100.129", "198.51.100.254"
NATTED_A6, NAT_IN6 = "2001:db8:101::1", "2001:db8:101::fe"


@dataclass
class SiteToSite:
    """site host A - gateway A - WAN [- NAT router -] WAN - gateway B - site host B.

    Interface names: hosts and gateways use `lan0` on the site side, gateways `wan0` on
    the WAN side. The gateways have no route to the far site: only a tunnel (or
    `route_in_clear`, for testing the harness itself) gives them one.
    """

    lab: Lab
    host_a: Namespace
    gw_a: Namespace
    gw_b: Namespace
    host_b: Namespace
    nat: Namespace | None = None
    site_a: Site = SITE_A
    site_b: Site = SITE_B
    gw_a_wan4: str = WAN_A4  # gateway A's own WAN address (behind NAT: the inside one)
    gw_a_wan6: str = WAN_A6
    gw_a_public4: str = WAN_A4  # how gateway B sees gateway A
    gw_a_public6: str = WAN_A6
    gw_b_wan4: str = WAN_B4
    gw_b_wan6: str = WAN_B6
    extra: dict[str, str] = field(default_factory=dict)

    def route_in_clear(self) -> None:
        """Route the sites to each other over the WAN without a tunnel (lab tests, baselines)."""
        self.gw_a.ip("route", "add", self.site_b.subnet4, "via", self.gw_b_wan4)
        self.gw_a.ip("-6", "route", "add", self.site_b.subnet6, "via", self.gw_b_wan6)
        self.gw_b.ip("route", "add", self.site_a.subnet4, "via", self.gw_a_public4)
        self.gw_b.ip("-6", "route", "add", self.site_a.subnet6, "via", self.gw_a_public6)


def _addr(ns: Namespace, ifname: str, cidr: str) -> None:
    # nodad: an IPv6 address is usable at once instead of after duplicate detection.
    extra = ["nodad"] if ":" in cidr else []
    ns.ip("addr", "add", cidr, "dev", ifname, *extra)


def build_site_to_site(lab: Lab, *, nat: bool = False, wan_mtu: int | None = None) -> SiteToSite:
    """Create the five (six with NAT) namespaces, links, addresses and routes."""
    host_a, gw_a = lab.namespace("hostA"), lab.namespace("gwA")
    gw_b, host_b = lab.namespace("gwB"), lab.namespace("hostB")
    for ns, gw in ((host_a, gw_a), (host_b, gw_b)):
        lab.veth(ns, "lan0", gw, "lan0")
    for gw in (gw_a, gw_b):
        gw.sysctl("net.ipv4.ip_forward", 1)
        gw.sysctl("net.ipv6.conf.all.forwarding", 1)
    for site, host, gw in ((SITE_A, host_a, gw_a), (SITE_B, host_b, gw_b)):
        plen4, plen6 = site.subnet4.split("/")[1], site.subnet6.split("/")[1]
        _addr(host, "lan0", f"{site.host4}/{plen4}")
        _addr(host, "lan0", f"{site.host6}/{plen6}")
        _addr(gw, "lan0", f"{site.gateway4}/{plen4}")
        _addr(gw, "lan0", f"{site.gateway6}/{plen6}")
        host.ip("route", "add", "default", "via", site.gateway4)
        host.ip("-6", "route", "add", "default", "via", site.gateway6)

    topo = SiteToSite(lab, host_a, gw_a, gw_b, host_b)
    if not nat:
        lab.veth(gw_a, "wan0", gw_b, "wan0", mtu=wan_mtu)
        _addr(gw_a, "wan0", f"{WAN_A4}/24")
        _addr(gw_a, "wan0", f"{WAN_A6}/64")
        _addr(gw_b, "wan0", f"{WAN_B4}/24")
        _addr(gw_b, "wan0", f"{WAN_B6}/64")
        return topo

    router = lab.namespace("nat")
    topo.nat = router
    topo.gw_a_wan4, topo.gw_a_wan6 = NATTED_A4, NATTED_A6
    lab.veth(gw_a, "wan0", router, "in0", mtu=wan_mtu)
    lab.veth(router, "out0", gw_b, "wan0", mtu=wan_mtu)
    _addr(gw_a, "wan0", f"{NATTED_A4}/25")
    _addr(gw_a, "wan0", f"{NATTED_A6}/64")
    _addr(router, "in0", f"{NAT_IN4}/25")
    _addr(router, "in0", f"{NAT_IN6}/64")
    _addr(router, "out0", f"{WAN_A4}/25")
    _addr(router, "out0", f"{WAN_A6}/64")
    _addr(gw_b, "wan0", f"{WAN_B4}/25")
    _addr(gw_b, "wan0", f"{WAN_B6}/64")
    gw_a.ip("route", "add", "default", "via", NAT_IN4)
    gw_a.ip("-6", "route", "add", "default", "via", NAT_IN6)
    router.sysctl("net.ipv4.ip_forward", 1)
    router.sysctl("net.ipv6.conf.all.forwarding", 1)
    masquerade(router, "out0")
    return topo


def masquerade(router: Namespace, out_if: str) -> None:
    """Masquerade everything leaving `router` on `out_if`, IPv4 and IPv6 (nftables,
    family inet): the hosts behind it share its address, each flow its own port."""
    rules = (
        "table inet lgnat {\n"
        "  chain post { type nat hook postrouting priority srcnat; policy accept;\n"
        f'    oifname "{out_if}" masquerade\n'
        "  }\n"
        "}\n"
    )
    _run(router.exec_args(["nft", "-f", "-"]), input=rules.encode())


@contextlib.contextmanager
def site_to_site(*, nat: bool = False, wan_mtu: int | None = None) -> Iterator[SiteToSite]:
    """Context manager: a fresh topology, removed afterwards whatever happens."""
    with Lab() as lab:
        yield build_site_to_site(lab, nat=nat, wan_mtu=wan_mtu)


def add_network(ns: Namespace, ifname: str, cidrs: Sequence[str]) -> None:
    """A new network on a router, as if a LAN were plugged in: a veth pair inside
    ``ns`` (``ifname`` and ``ifname`` + "p"), ``cidrs`` on ``ifname``, both ends up.
    Works without the `dummy` module; remove it with `ns.ip("link", "del", ifname)`."""
    ns.ip("link", "add", ifname, "type", "veth", "peer", "name", f"{ifname}p")
    for cidr in cidrs:
        _addr(ns, ifname, cidr)
    ns.ip("link", "set", f"{ifname}p", "up")
    ns.ip("link", "set", ifname, "up")


# --- traffic checks -------------------------------------------------------------------


def ping(
    ns: Namespace,
    dest: str,
    *,
    count: int = 3,
    interval: float = 0.2,
    deadline: float = 10.0,
    size: int | None = None,
    check: bool = True,
    quiet: bool = True,
) -> subprocess.CompletedProcess[str]:
    """ping from inside `ns`; with `check`, raise unless every reply came back;
    without `quiet`, ping prints a line per reply (`unanswered_pings` reads them)."""
    args = ["ping", "-n", "-c", str(count), "-i", str(interval), "-w", str(int(deadline))]
    if quiet:
        args.append("-q")
    if size is not None:
        args += ["-s", str(size)]
    proc = ns.run(*args, dest, check=False, timeout=deadline + 5)
    # With -w, ping may send more than -c while early replies are slow (neighbour
    # discovery), so success is "at least count replies", as its exit status says.
    match = re.search(r"(\d+) received", proc.stdout)
    received = int(match.group(1)) if match else 0
    if check and (proc.returncode != 0 or received < count):
        raise HarnessError(f"ping {dest} from {ns.name} failed:\n{proc.stdout}{proc.stderr}")
    return proc


_ECHO_REPLY = re.compile(r"^\d+ bytes from .*?\bicmp_seq=(\d+)\b", re.MULTILINE)
"""An echo reply's line; an ICMP error's ("From ... icmp_seq=5 Destination Host
Unreachable") names a sequence number too, but answered nothing."""


def unanswered_pings(output: str, count: int) -> list[int]:
    """The sequence numbers 1..count with no reply line in ping's (non-quiet) output.

    With -w, ping sends past -c until it has -c replies, so "N+1 transmitted, N
    received" is not a loss: it is also what a last reply that came later than one
    interval gives. Only the replies of each sequence number tell the two apart."""
    answered = {int(m[1]) for m in _ECHO_REPLY.finditer(output)}
    return [seq for seq in range(1, count + 1) if seq not in answered]


def ping_every_one(
    ns: Namespace, dest: str, *, count: int, interval: float, deadline: float
) -> tuple[list[int], str]:
    """ping `count` times from inside `ns`: (the unanswered sequence numbers, ping's
    summary lines). A reply later than `interval` is not a loss; one that never came
    before the deadline is."""
    proc = ping(
        ns, dest, count=count, interval=interval, deadline=deadline, check=False, quiet=False
    )
    summary = proc.stdout[proc.stdout.find("---") :] if "---" in proc.stdout else proc.stdout
    return unanswered_pings(proc.stdout, count), summary + proc.stderr


def wait_for_ping(ns: Namespace, dest: str, *, timeout: float = 10.0) -> None:
    """Ping once a time until one reply comes back (e.g. while a tunnel comes up)."""
    deadline = time.monotonic() + timeout
    while True:
        proc = ping(ns, dest, count=1, deadline=1, check=False)
        if proc.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise HarnessError(f"no ping reply from {dest} in {ns.name} within {timeout}s")


@dataclass(frozen=True)
class TransferResult:
    """What a TCP transfer moved: both hashes, the byte count and the receiver's peer."""

    sent_sha256: str
    received_sha256: str
    received_bytes: int
    peer_address: str
    seconds: float


_HERE = Path(__file__).resolve()


def tcp_transfer(
    src: Namespace,
    dst: Namespace,
    dst_address: str,
    *,
    size: int = 4 * 1024 * 1024,
    port: int = 5201,
    timeout: float = 30.0,
    check: bool = True,
) -> TransferResult:
    """Send `size` pseudo-random bytes over TCP from `src` to `dst_address` inside `dst`.

    The receiver reports the SHA-256 of what it read and the address it saw the
    connection come from; with `check`, a mismatch raises.
    """
    server = dst.spawn(
        [sys.executable, str(_HERE), "serve", "::", str(port), str(int(timeout))],
        name="tcp-receiver",
        stdout_pipe=True,
    )
    try:
        if server.popen.stdout is None:
            raise HarnessError("receiver started without a stdout pipe")
        ready = server.popen.stdout.readline().decode().strip()
        if ready != "ready":
            raise HarnessError(f"receiver did not start: {ready!r}")
        start = time.monotonic()
        sent = src.run(
            sys.executable,
            str(_HERE),
            "send",
            dst_address,
            str(port),
            str(size),
            timeout=timeout,
        ).stdout.strip()
        try:
            out, _ = server.popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise HarnessError("receiver did not finish") from exc
        seconds = time.monotonic() - start
    finally:
        server.stop()
    fields = out.decode().split()
    if len(fields) != 3:
        raise HarnessError(f"receiver output unexpected: {out!r}")
    received_hash, received_bytes, peer = fields
    result = TransferResult(sent, received_hash, int(received_bytes), peer, seconds)
    if check and (result.sent_sha256 != result.received_sha256 or result.received_bytes != size):
        raise HarnessError(f"transfer corrupted: {result}")
    return result


def _say(line: str) -> None:
    # The sender/receiver's answer to the lab, read line by line from its stdout.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _serve(host: str, port: int, timeout: int) -> None:
    with socket.create_server((host, port), family=socket.AF_INET6, dualstack_ipv6=True) as srv:
        srv.settimeout(timeout)
        _say("ready")
        conn, addr = srv.accept()
        with conn:
            conn.settimeout(timeout)
            digest, total = hashlib.sha256(), 0
            while chunk := conn.recv(1 << 16):
                digest.update(chunk)
                total += len(chunk)
        peer = str(addr[0]).removeprefix("::ffff:")
        _say(f"{digest.hexdigest()} {total} {peer}")


def _send(host: str, port: int, size: int) -> None:
    # Deterministic but incompressible-looking payload: a SHA-256 counter stream.
    digest = hashlib.sha256()
    with socket.create_connection((host, port), timeout=20) as conn:
        block, n, left = b"", 0, size
        while left > 0:
            block = b"".join(hashlib.sha256(f"{n}:{i}".encode()).digest() for i in range(2048))
            n += 1
            piece = block[:left]
            conn.sendall(piece)
            digest.update(piece)
            left -= len(piece)
    _say(digest.hexdigest())


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        _serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif sys.argv[1] == "send":
        _send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        raise SystemExit(f"usage: {sys.argv[0]} serve HOST PORT TIMEOUT | send HOST PORT SIZE")

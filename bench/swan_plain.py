"""A plainly configured strongSwan pair, to check `bench.throughput`'s baseline against.

    python -m bench.swan_plain [--rounds 3] [--duration 3] [--suite aes128gcm16]
                               [--variant NAME ...]

Four namespaces (host A, gateway A, gateway B, host B) joined by veth pairs of MTU
1500, IPv4 only; charon (Debian's, kernel-libipsec: userspace ESP over a TUN) on
both gateways with a minimal plugin list, filelog at level 1 to a file and its
stdout/stderr to a file; then `iperf3 -t DURATION` with one TCP stream from host A
to host B, read from iperf3's text output. Nothing of `bench.tunnels` or
`testkit.strongswan` is used, so the figure is independent of them.

Each `--variant` changes one factor of that setup towards what `bench.throughput`
did, or away from it (see `VARIANTS`); the rounds are interleaved (plain, variant 1,
variant 2, ..., plain, ...) so that the load of a shared machine falls on all of
them alike. `--variant bench` measures `bench.throughput`'s own pair in the same
rounds. Before each run it waits (`--quiet-wait` seconds at most) until other work
leaves the CPUs idle enough, and prints how busy they were. What the factors cost is
written up in `bench.throughput`'s docstring. Every process is stopped by PID and
every namespace removed at the end. Not a test: nothing here asserts a figure. Root,
iperf3 and charon are needed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import median

from bench.measure import FIFO_PRIORITY, iperf, prioritize
from bench.tunnels import SwanPair
from daemon.lab.netns import Lab, Namespace, Process, SiteToSite, build_site_to_site, wait_for_ping
from testkit.strongswan import grow_udp_buffers

CHARON = "/usr/lib/ipsec/charon"
PSK = "lockgate-bench-psk-NOT-SECRET-0123456789"
PLUGINS = "random nonce openssl kdf kernel-libipsec kernel-netlink socket-default vici"
"""The fewest plugins a PSK site-to-site tunnel with kernel-libipsec needs here."""
NICE = ("nice", "-n", "-10")
"""A process's own nice value: it counts only within its autogroup (its session), not
against other sessions' work (see `bench.measure.prioritize`)."""
HOST_A, GW_A_LAN, GW_A_WAN = "192.0.2.10", "192.0.2.1", "198.51.100.1"
HOST_B, GW_B_LAN, GW_B_WAN = "203.0.113.10", "203.0.113.1", "198.51.100.2"


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


@dataclass(frozen=True)
class Setup:
    """Everything one measured configuration decides."""

    plugins: str = PLUGINS
    log_level: int = 1
    extra_charon: tuple[str, ...] = ()
    """Lines added to strongswan.conf's `charon { }` section."""
    grow_buffers: int = 0
    """Force charon's UDP socket buffers to this many octets (0: the kernel's default)."""
    iperf_args: tuple[str, ...] = ()
    """Added to the iperf3 client's command line."""
    priority: bool = False
    """Give the daemons' and iperf3's scheduling groups `bench.measure.prioritize`."""
    udp_flood_first: bool = False
    """Send iperf3's 1 Gbit/s UDP flood through the tunnel before the TCP run (as one
    repetition of `bench.throughput` does before the next one's TCP x1)."""
    wrap: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """A command prefix by role ("charon": both daemons, or "charon-A" and "charon-B";
    "iperf": client and server), e.g. `taskset -c 0` or `nice -n -10`."""


VARIANTS: dict[str, Callable[[Setup], Setup]] = {
    "plain": lambda s: s,
    "buffers-4M": lambda s: replace(s, grow_buffers=4 * 1024 * 1024),
    "testkit-plugins": lambda s: replace(
        s,
        plugins="random nonce openssl pem pkcs1 pkcs8 x509 pubkey constraints revocation "
        "kdf kernel-libipsec kernel-netlink socket-default vici",
    ),
    # AES-GCM from the aesni plugin, or from the portable aes and gcm plugins, before
    # openssl's (which stays for x25519: Debian builds no curve25519 plugin).
    "aesni-first": lambda s: replace(s, plugins=s.plugins.replace("openssl", "aesni openssl")),
    "aes-gcm-first": lambda s: replace(
        s, plugins=s.plugins.replace("openssl", "aes gcm sha1 sha2 hmac openssl")
    ),
    "log-2": lambda s: replace(s, log_level=2),
    "log-4": lambda s: replace(s, log_level=4),
    "json": lambda s: replace(s, iperf_args=("-J",)),
    "udp-flood-first": lambda s: replace(s, udp_flood_first=True),
    "threads-32": lambda s: replace(s, extra_charon=("threads = 32",)),
    "pin-charon-0": lambda s: replace(s, wrap={"charon": ("taskset", "-c", "0")}),
    "pin-split": lambda s: replace(
        s, wrap={"charon": ("taskset", "-c", "0"), "iperf": ("taskset", "-c", "1")}
    ),
    "pin-sides": lambda s: replace(
        s, wrap={"charon-A": ("taskset", "-c", "0"), "charon-B": ("taskset", "-c", "1")}
    ),
    "priority": lambda s: replace(s, priority=True),
    "nice-charon": lambda s: replace(s, wrap={"charon": NICE}),
    "nice-all": lambda s: replace(s, wrap={"charon": NICE, "iperf": NICE}),
    # Every charon thread under SCHED_FIFO (threads inherit it from `chrt`), as
    # `bench.throughput` runs its baseline.
    "fifo-charon": lambda s: replace(s, wrap={"charon": ("chrt", "-f", str(FIFO_PRIORITY))}),
}
"""One factor changed each against "plain"."""


# --- the topology and the daemons ---------------------------------------------------------


@dataclass
class Topology:
    host_a: Namespace
    gw_a: Namespace
    gw_b: Namespace
    host_b: Namespace


def build(lab: Lab) -> Topology:
    """host A - gateway A - gateway B - host B, veth MTU 1500, IPv4."""
    topo = Topology(*(lab.namespace(r) for r in ("pA", "pgA", "pgB", "pB")))
    lab.veth(topo.host_a, "lan0", topo.gw_a, "lan0")
    lab.veth(topo.gw_a, "wan0", topo.gw_b, "wan0")
    lab.veth(topo.gw_b, "lan0", topo.host_b, "lan0")
    for ns, ifname, cidr in (
        (topo.host_a, "lan0", f"{HOST_A}/24"),
        (topo.gw_a, "lan0", f"{GW_A_LAN}/24"),
        (topo.gw_a, "wan0", f"{GW_A_WAN}/24"),
        (topo.gw_b, "wan0", f"{GW_B_WAN}/24"),
        (topo.gw_b, "lan0", f"{GW_B_LAN}/24"),
        (topo.host_b, "lan0", f"{HOST_B}/24"),
    ):
        ns.ip("addr", "add", cidr, "dev", ifname)
    topo.host_a.ip("route", "add", "default", "via", GW_A_LAN)
    topo.host_b.ip("route", "add", "default", "via", GW_B_LAN)
    for gw in (topo.gw_a, topo.gw_b):
        gw.sysctl("net.ipv4.ip_forward", 1)
    return topo


def strongswan_conf(rundir: Path, setup: Setup) -> str:
    extra = "".join(f"    {line}\n" for line in setup.extra_charon)
    return f"""charon {{
    load_modular = no
    load = {setup.plugins}
{extra}    filelog {{
        main {{
            path = {rundir}/charon.log
            default = {setup.log_level}
        }}
    }}
    plugins {{
        vici {{
            socket = unix://{rundir}/charon.vici
        }}
    }}
}}
swanctl {{
    socket = unix://{rundir}/charon.vici
}}
"""


def swanctl_conf(me: str, peer: str, mine: str, theirs: str, suite: str) -> str:
    return f"""connections {{
    s2s {{
        local_addrs = {me}
        remote_addrs = {peer}
        proposals = aes128gcm16-prfsha256-x25519
        mobike = no
        local {{
            auth = psk
            id = {me}
        }}
        remote {{
            auth = psk
            id = {peer}
        }}
        children {{
            net {{
                local_ts = {mine}
                remote_ts = {theirs}
                esp_proposals = {suite}
            }}
        }}
    }}
}}
secrets {{
    ike-1 {{
        id-1 = {me}
        id-2 = {peer}
        secret = "{PSK}"
    }}
}}
"""


def _wrapped(args: Sequence[str], prefix: Sequence[str] = ()) -> list[str]:
    return [*prefix, *args]


class PlainCharon:
    """charon in a gateway namespace with its own /run, config, log and swanctl dir."""

    def __init__(self, ns: Namespace, tag: str, setup: Setup) -> None:
        self.ns = ns
        self.rundir = ns.lab.tmpdir / f"plain-{tag}-{time.monotonic_ns()}"
        self.swanctl_dir = self.rundir / "swanctl"
        self.swanctl_dir.mkdir(parents=True)
        self.conf = self.rundir / "strongswan.conf"
        self.conf.write_text(strongswan_conf(self.rundir, setup))
        self.env = {**os.environ, "STRONGSWAN_CONF": str(self.conf),
                    "SWANCTL_DIR": str(self.swanctl_dir)}  # fmt: skip
        prefix = setup.wrap.get(f"charon-{tag}", setup.wrap.get("charon", ()))
        cmd = " ".join(_wrapped([CHARON], prefix))
        self.process: Process = ns.spawn(
            ["sh", "-c", f"mount --bind {self.rundir} /run && exec {cmd}"],
            name=f"charon-{tag}",
            log_path=self.rundir / "charon.stdout",
            env=self.env,
        )
        vici = self.rundir / "charon.vici"
        deadline = time.monotonic() + 15
        while not vici.exists():
            if time.monotonic() > deadline or not self.process.alive():
                raise RuntimeError(f"charon {tag} did not start: {self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        path = self.rundir / "charon.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def swanctl(self, *args: str) -> str:
        uri = f"unix://{self.rundir}/charon.vici"
        proc = subprocess.run(["swanctl", *args, "--uri", uri], env=self.env,
                              capture_output=True, text=True, timeout=30)  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"swanctl {args}: {proc.stdout}{proc.stderr}\n{self.log()}")
        return proc.stdout

    def load(self, text: str) -> None:
        (self.swanctl_dir / "swanctl.conf").write_text(text)
        self.swanctl("--load-all")


# --- one measurement ----------------------------------------------------------------------


def _cpu_times() -> tuple[int, int]:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)  # idle + iowait, all


def busy_fraction(seconds: float = 1.0) -> float:
    """How busy the machine's CPUs were over `seconds` (0.0-1.0, all cores)."""
    idle0, total0 = _cpu_times()
    time.sleep(seconds)
    idle1, total1 = _cpu_times()
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_until_quiet(limit: float, most: float) -> float:
    """Wait (up to `most` seconds) until other work uses less than `limit` of the
    CPUs: on a shared machine a figure taken while another benchmark runs says
    little. Returns the last busy fraction seen."""
    deadline = time.monotonic() + most
    busy = busy_fraction()
    while busy > limit and time.monotonic() < deadline:
        busy = busy_fraction()
    return busy


_RECEIVER = re.compile(r"([\d.]+) ([KMG])bits/sec\s+receiver")
_RECEIVER_JSON = re.compile(r'"sum_received":\s*\{[^}]*?"bits_per_second":\s*([\d.e+]+)', re.S)
_SCALE = {"K": 1e-3, "M": 1.0, "G": 1e3}


def iperf_tcp(topo: Topology, setup: Setup, duration: float) -> float:
    """One iperf3 TCP run host A → host B; the receiver's Mbit/s."""
    pin = setup.wrap.get("iperf", ())
    server = topo.host_b.spawn(_wrapped(["iperf3", "-s", "-1"], pin), name="iperf3-s")
    if setup.priority:
        prioritize(server.pid)
    try:
        time.sleep(0.3)
        args = _wrapped(["iperf3", "-c", HOST_B, "-t", f"{duration:g}", *setup.iperf_args], pin)
        client = topo.host_a.spawn(args, name="iperf3-c", stdout_pipe=True)
        if setup.priority:
            prioritize(client.pid)
        out = client.popen.communicate(timeout=duration + 20)[0].decode(errors="replace")
    finally:
        server.stop(timeout=3)
    if "-J" in setup.iperf_args:
        found = _RECEIVER_JSON.search(out)
        if found is None:
            raise RuntimeError(f"iperf3: {out[-500:]}")
        return float(found.group(1)) / 1e6
    text = _RECEIVER.search(out)
    if text is None:
        raise RuntimeError(f"iperf3: {out[-500:]}")
    return float(text.group(1)) * _SCALE[text.group(2)]


def udp_flood(topo: Topology, duration: float) -> None:
    """iperf3's UDP at 1 Gbit/s, 1400-octet datagrams, as `bench.throughput` sends."""
    server = topo.host_b.spawn(["iperf3", "-s", "-1"], name="iperf3-s")
    try:
        time.sleep(0.3)
        args = ["iperf3", "-c", HOST_B, "-t", f"{duration:g}", "-u", "-l", "1400", "-b", "1G"]
        topo.host_a.run(*args, "-w", "4M", check=False, timeout=duration + 20)
    finally:
        server.stop(timeout=3)


def measure(topo: Topology, setup: Setup, suite: str, duration: float) -> float:
    """Start both charons, bring the tunnel up, measure once, stop them."""
    charons = [PlainCharon(topo.gw_b, "B", setup), PlainCharon(topo.gw_a, "A", setup)]
    try:
        charons[0].load(swanctl_conf(GW_B_WAN, GW_A_WAN, "203.0.113.0/24", "192.0.2.0/24", suite))
        charons[1].load(swanctl_conf(GW_A_WAN, GW_B_WAN, "192.0.2.0/24", "203.0.113.0/24", suite))
        if setup.grow_buffers:
            for charon in charons:
                grow_udp_buffers(charon.process.pid, setup.grow_buffers)
        if setup.priority:
            for charon in charons:
                prioritize(charon.process.pid)
        charons[1].swanctl("--initiate", "--child", "net", "--timeout", "20")
        wait_for_ping(topo.host_a, HOST_B, timeout=20)
        if setup.udp_flood_first:
            udp_flood(topo, duration)
        return iperf_tcp(topo, setup, duration)
    finally:
        for charon in charons:
            charon.process.stop(timeout=5)
        for ns in (topo.host_a, topo.host_b):
            ns.ip("-4", "route", "flush", "cache", check=False)


BENCH = "bench"
"""Not a variant of the plain setup: `bench.throughput`'s own strongSwan pair
(`bench.tunnels.SwanPair` on `daemon.lab.netns`'s topology, iperf3 as
`bench.measure` runs it), measured in the same rounds."""


def measure_bench(topo: SiteToSite, suite: str, duration: float) -> float:
    tunnel = SwanPair(topo, suite)
    try:
        tunnel.start()
        dest = topo.site_b.host4
        daemons = tunnel.daemons()
        return iperf(topo.host_a, topo.host_b, dest, duration=duration, daemons=daemons).mbps
    finally:
        tunnel.stop()
        for ns in (topo.host_a, topo.host_b):
            ns.ip("-4", "route", "flush", "cache", check=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.swan_plain", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--suite", default="aes128gcm16")
    parser.add_argument(
        "--variant", action="append", choices=sorted([*VARIANTS, BENCH]), default=[]
    )
    parser.add_argument(
        "--quiet",
        type=float,
        default=0.25,
        help="before each run, wait until the CPUs are less busy than this (0.25)",
    )
    parser.add_argument("--quiet-wait", type=float, default=10.0, help="for at most (10 s)")
    args = parser.parse_args(argv)
    names = ["plain", *(v for v in args.variant if v != "plain")]
    results: dict[str, list[float]] = {name: [] for name in names}
    with Lab() as lab:
        topo = build(lab)
        bench_topo = build_site_to_site(lab) if BENCH in names else None
        for rnd in range(args.rounds):
            for name in names:
                busy = wait_until_quiet(args.quiet, args.quiet_wait)
                try:
                    if bench_topo is not None and name == BENCH:
                        mbps = measure_bench(bench_topo, args.suite, args.duration)
                    else:
                        setup = VARIANTS[name](Setup())
                        mbps = measure(topo, setup, args.suite, args.duration)
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    say(f"  round {rnd + 1} {name}: FAILED {str(exc)[:500]}")
                    continue
                results[name].append(mbps)
                load = os.getloadavg()[0]
                say(f"  round {rnd + 1} {name:<16} {mbps:7.0f} Mbit/s  "
                    f"(busy before {busy:.0%}, load {load:.2f})")  # fmt: skip
    say()
    say(f"{'variant':<16} {'median':>7} {'min':>7} {'max':>7}  Mbit/s, TCP x1, {args.suite}")
    for name, values in results.items():
        if values:
            say(f"{name:<16} {median(values):7.0f} {min(values):7.0f} {max(values):7.0f}")
        else:
            say(f"{name:<16} failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

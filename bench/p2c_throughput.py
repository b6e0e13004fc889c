"""Point-to-cloud throughput: lockgate's SSL server against Debian's `openvpn` server.

    python -m bench.p2c_throughput [--repeat 3] [--duration 5] [--transports tcp,udp]
                                   [--ciphers AES-128-GCM,AES-256-GCM] [--json FILE]
                                   [--openvpn-tuning auto|default|buffers|fast-io|both]
                                   [--sched-fifo openvpn|all|none]

One client namespace, the gateway namespace and a cloud host (`bench.p2c_lab`). The
client is always the stock `openvpn` with the profile `lockgate profile` printed (the
same binary, profile, addresses and pool for both servers); only the server in the
gateway namespace changes: `lockgate daemon` with one `[remote_access]` section, or
`openvpn` configured as in the reference recipe (tun, topology subnet, the same pool,
`data-ciphers`, `auth SHA256`, password check by script, `keepalive 10 60`, no DCO,
no compression). For each transport and cipher: iperf3 TCP with one stream from the
client to the cloud host, the idle ping round trip, and the CPU of the server process
(and of the client). Repetitions are interleaved (lockgate, openvpn, openvpn,
lockgate, ...) so that the other load on the machine hits both alike; the table
shows medians with the min-max spread and the ratio lockgate/openvpn.

The reference server gets its best configuration: with `--openvpn-tuning auto` (the
default) a calibration pass first measures it with the OS socket buffers, with 1 MiB
`sndbuf`/`rcvbuf`, and (UDP) with `fast-io` and both, and keeps the fastest per
transport. Its process also runs under SCHED_FIFO (`bench.measure.realtime`, as
`bench.throughput` does for charon; `--sched-fifo none` measures without it, `all` puts
lockgate there too), while lockgate runs as its systemd unit runs it. Two rounds of the
three modes one after the other (`--repeat 2 --duration 4 --transports udp,tcp
--ciphers AES-128-GCM`, load 1.4-2): openvpn under SCHED_FIFO gave UDP 312 / 324
Mbit/s and TCP 236 / 252 against 306 / 281 and 206 / 186 without, so lockgate/openvpn
went from 1.30x / 1.43x (UDP) and 1.39x / 1.29x (TCP) to 1.26x / 1.15x and 1.14x /
1.13x; with `all`, 1.18x / 1.21x and 1.06x / 0.99x. Over TCP both servers turn
Nagle's algorithm off on the client's socket (lockgate pushes `socket-flags
TCP_NODELAY`, the reference server has `tcp-nodelay`; OpenVPN 2.6 clients leave it on
otherwise). Two rounds of `--repeat 3 --duration 4 --transports tcp --ciphers
AES-128-GCM`, the tree before and after, alternating (load 0.6-2.0): before, lockgate
322 / 288 Mbit/s and openvpn 326 / 267 (0.99x / 1.08x); after, 538 / 375 and 349 /
250 (1.54x / 1.50x).

Everything is bounded (iperf3 durations, connect timeouts), stopped by PID, and the
namespaces are removed at the end, also on Ctrl-C or SIGTERM. Not a test: nothing
here asserts a figure. Root, iperf3 and openvpn are needed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median

from bench.measure import IperfResult, MeasureError, PingResult, idle_ping, iperf, realtime
from bench.p2c_lab import (
    CLOUD,
    LockgateGateway,
    OpenvpnServer,
    OpenvpnTuning,
    P2cTopology,
    SslServer,
    build,
    run_in_lab,
    start_client,
    stop_quietly,
    wait_connected,
    write_pki,
)
from bench.throughput import say
from bench.tunnels import TunnelError
from daemon.lab.netns import HarnessError, Lab, Process

PORTS = {"tcp": 443, "udp": 1194}
FIFO_SAYS = {
    "openvpn": "the openvpn server (lockgate as its unit runs it)",
    "all": "both servers",
    "none": "neither server",
}
SERVERS = ("lockgate", "openvpn")
POOL = "192.0.2.0/24"
USER = "alice"
BUFFERS = 1 << 20
TUNINGS = {
    "default": OpenvpnTuning(),
    "buffers": OpenvpnTuning(buffers=BUFFERS),
    "fast-io": OpenvpnTuning(fast_io=True),
    "both": OpenvpnTuning(buffers=BUFFERS, fast_io=True),
}


@dataclass
class Cell:
    """One transport, cipher and server: every sample."""

    transport: str
    cipher: str
    server: str
    runs: list[IperfResult] = field(default_factory=list)
    pings: list[PingResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def mbps(self) -> list[float]:
        return [r.mbps for r in self.runs]

    def cpu(self, role: str) -> float | None:
        values = [r.cpu[role] for r in self.runs if role in r.cpu]
        return median(values) if values else None

    def rtt(self) -> float | None:
        return median(p.avg_ms for p in self.pings) if self.pings else None


@dataclass
class Bench:
    topo: P2cTopology
    repeat: int
    duration: float
    ping_count: int
    gateways: dict[str, LockgateGateway] = field(default_factory=dict)
    profiles: dict[str, str] = field(default_factory=dict)
    tuning: dict[str, str] = field(default_factory=dict)
    cells: dict[tuple[str, str, str], Cell] = field(default_factory=dict)
    calibration: dict[str, dict[str, float | str]] = field(default_factory=dict)
    fifo: str = "openvpn"
    """Whose server process runs under SCHED_FIFO: "openvpn" (the reference at its
    best, lockgate as its unit runs it), "all" or "none"."""
    direct_pings: list[PingResult] = field(default_factory=list)
    """The client pinging the gateway's WAN address, no tunnel: what a tunnel adds to."""

    def direct_rtt(self) -> float | None:
        return median(p.avg_ms for p in self.direct_pings) if self.direct_pings else None

    def setup(self, transports: Sequence[str]) -> None:
        """A lockgate configuration per transport, its user and its profile, as a user
        would make them (`lockgate user add --password-stdin`, `lockgate profile`)."""
        write_pki(self.topo.tmp)
        for transport in transports:
            server = SslServer(f"bench{transport}", transport, PORTS[transport], POOL)
            gateway = LockgateGateway(self.topo, [server], f"lockgate-{transport}")
            gateway.add_user(server.name, USER)
            self.gateways[transport] = gateway
            self.profiles[transport] = gateway.profile(server.name)

    def start_server(self, server: str, transport: str) -> LockgateGateway | OpenvpnServer:
        if server == "lockgate":
            gateway = self.gateways[transport]
            gateway.start()
            return gateway
        tuning = TUNINGS[self.tuning.get(transport, "default")]
        ref = OpenvpnServer(
            self.topo, transport, PORTS[transport], "AES-128-GCM:AES-256-GCM", tuning
        )
        ref.start()
        return ref

    def connect(self, transport: str, cipher: str) -> Process:
        client = start_client(
            self.topo.clients[0], self.profiles[transport], user=USER,
            extra=("--data-ciphers", cipher),
        )  # fmt: skip
        try:
            wait_connected(client)
        except TunnelError:
            stop_quietly(client)
            raise
        return client

    def measure(
        self, server: str, transport: str, ciphers: Sequence[str], *, ping: bool = True
    ) -> dict[str, IperfResult | str]:
        """Start `server`, take one sample per cipher, stop it."""
        out: dict[str, IperfResult | str] = {}
        ns, cloud = self.topo.clients[0], self.topo.cloud
        started = None
        try:
            started = self.start_server(server, transport)
            for cipher in ciphers:
                client = None
                try:
                    client = self.connect(transport, cipher)
                    cell = self.cells.setdefault(
                        (transport, cipher, server), Cell(transport, cipher, server)
                    )
                    if self.fifo in ("all", server) and not realtime(started.pid()):
                        say(f"  SCHED_FIFO refused for the {server} server: not at its best")
                    if ping:
                        cell.pings.append(idle_ping(ns, CLOUD, count=self.ping_count))
                    pids = {"server": started.pid(), "client": client.pid}
                    result = iperf(ns, cloud, CLOUD, duration=self.duration, daemons=pids)
                    out[cipher] = result
                except (MeasureError, TunnelError, HarnessError) as exc:
                    out[cipher] = str(exc)
                finally:
                    stop_quietly(client)
        except (TunnelError, HarnessError) as exc:
            for cipher in ciphers:
                out.setdefault(cipher, str(exc))
        finally:
            stop_quietly(started)
        return out

    def calibrate(self, transports: Sequence[str]) -> None:
        """One run per openvpn tuning and transport (AES-128-GCM); keep the fastest."""
        for transport in transports:
            names = ["default", "buffers"] + (["fast-io", "both"] if transport == "udp" else [])
            results: dict[str, float | str] = {}
            for name in names:
                self.tuning[transport] = name
                got = self.measure("openvpn", transport, ["AES-128-GCM"], ping=False)
                sample = got["AES-128-GCM"]
                results[name] = sample.mbps if isinstance(sample, IperfResult) else sample
                shown = f"{sample.mbps:,.0f} Mbit/s" if isinstance(sample, IperfResult) else sample
                say(f"  openvpn {transport} {TUNINGS[name].describe()}: {shown}")
            numeric = {k: v for k, v in results.items() if isinstance(v, float)}
            self.tuning[transport] = (
                max(numeric, key=lambda k: numeric[k]) if numeric else "default"
            )
            self.calibration[transport] = results
            say(f"  -> openvpn {transport}: {TUNINGS[self.tuning[transport]].describe()}")
        self.cells.clear()

    def run(self, transports: Sequence[str], ciphers: Sequence[str]) -> None:
        for rep in range(self.repeat):
            with contextlib.suppress(MeasureError):
                self.direct_pings.append(
                    idle_ping(self.topo.clients[0], self.topo.server_address, count=self.ping_count)
                )
            for transport in transports:
                # Interleaved, and the order flips every repetition: drifting load on the
                # machine hits both servers alike.
                order = SERVERS if (rep + transports.index(transport)) % 2 == 0 else SERVERS[::-1]
                for server in order:
                    got = self.measure(server, transport, ciphers)
                    for cipher, sample in got.items():
                        cell = self.cells.setdefault(
                            (transport, cipher, server), Cell(transport, cipher, server)
                        )
                        if isinstance(sample, IperfResult):
                            cell.runs.append(sample)
                            cpu = sample.cpu
                            say(f"  [{rep + 1}/{self.repeat}] {transport} {cipher} {server}: "
                                f"{sample.mbps:,.0f} Mbit/s, server cpu {cpu.get('server', 0):.0f}%"
                                f", client cpu {cpu.get('client', 0):.0f}%")  # fmt: skip
                        else:
                            cell.errors.append(sample)
                            say(f"  [{rep + 1}/{self.repeat}] {transport} {cipher} {server}: "
                                f"FAILED {sample.splitlines()[0]}")  # fmt: skip


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def table(bench: Bench, transports: Sequence[str], ciphers: Sequence[str]) -> str:
    head = (
        f"{'transport':<9} {'cipher':<12} {'server':<9} {'Mbit/s median (min-max)':>24} "
        f"{'server CPU %':>12} {'client CPU %':>12} {'RTT ms':>7} {'+RTT':>7} "
        f"{'lockgate/openvpn':>16}"
    )
    direct = bench.direct_rtt()
    lines = ["iperf3 TCP, one stream, client -> cloud host (medians)", head, "-" * len(head)]
    for transport in transports:
        for cipher in ciphers:
            medians: dict[str, float] = {}
            for server in SERVERS:
                cell = bench.cells.get((transport, cipher, server))
                if cell is None or not cell.runs:
                    error = cell.errors[0].splitlines()[0] if cell and cell.errors else "no data"
                    lines.append(f"{transport:<9} {cipher:<12} {server:<9} FAILED: {error}")
                    continue
                values = cell.mbps()
                medians[server] = median(values)
                rtt = cell.rtt()
                added = None if rtt is None or direct is None else rtt - direct
                spread = f"{median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"
                ratio = ""
                if server == SERVERS[-1] and len(medians) == 2 and medians["openvpn"]:
                    ratio = f"{medians['lockgate'] / medians['openvpn']:.2f}x"
                lines.append(
                    f"{transport:<9} {cipher:<12} {server:<9} {spread:>24} "
                    f"{_fmt(cell.cpu('server')):>12} {_fmt(cell.cpu('client')):>12} "
                    f"{_fmt(cell.rtt(), '.3f'):>7} {_fmt(added, '+.3f'):>7} {ratio:>16}"
                )
    lines.append("")
    lines.append(f"RTT: idle ping client -> cloud host through the tunnel; +RTT: what it adds to "
                 f"the direct ping client -> gateway ({_fmt(direct, '.3f')} ms)")  # fmt: skip
    lines.append(f"SCHED_FIFO: {FIFO_SAYS[bench.fifo]}")
    lines.append(
        "openvpn server tuning: "
        + "; ".join(
            f"{t}: {TUNINGS[bench.tuning.get(t, 'default')].describe()}" for t in transports
        )
    )
    failed = [(c, e) for c in bench.cells.values() for e in c.errors]
    if failed:
        lines += ["", "Failed runs:"]
        lines += [f"  {c.transport} {c.cipher} {c.server}: {e.splitlines()[0]}" for c, e in failed]
    return "\n".join(lines)


def to_json(bench: Bench, args: argparse.Namespace) -> dict[str, object]:
    return {
        "options": {k: str(v) for k, v in vars(args).items()},
        "openvpn_tuning": bench.tuning,
        "calibration": bench.calibration,
        "direct_pings": [asdict(p) for p in bench.direct_pings],
        "cells": [
            {
                "transport": c.transport,
                "cipher": c.cipher,
                "server": c.server,
                "runs": [asdict(r) for r in c.runs],
                "pings": [asdict(p) for p in c.pings],
                "errors": c.errors,
            }
            for c in bench.cells.values()
        ],
        "load": os.getloadavg(),
    }


def _missing() -> list[str]:
    missing = [] if os.geteuid() == 0 else ["root privileges"]
    return missing + [
        f"'{t}'" for t in ("ip", "ping", "iperf3", "ss", "openvpn") if not shutil.which(t)
    ]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.p2c_throughput", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per measurement (3)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per iperf3 run (5)")
    parser.add_argument("--transports", default="tcp,udp", help="tcp, udp or both (tcp,udp)")
    parser.add_argument("--ciphers", default="AES-128-GCM,AES-256-GCM", help="data ciphers")
    parser.add_argument("--ping-count", type=int, default=20, help="pings per repetition (20)")
    parser.add_argument(
        "--openvpn-tuning",
        default="auto",
        choices=["auto", *TUNINGS],
        help="the reference server's socket tuning; auto: calibrate and keep the fastest",
    )
    parser.add_argument(
        "--sched-fifo",
        choices=tuple(FIFO_SAYS),
        default="openvpn",
        help="whose server runs under SCHED_FIFO: openvpn (the default: the reference at "
        "its best here, lockgate as its unit runs it), all, or none",
    )
    parser.add_argument("--json", type=Path, help="write every sample as JSON")
    args = parser.parse_args(argv)
    args.transports = [t for t in args.transports.split(",") if t]
    args.ciphers = [c for c in args.ciphers.split(",") if c]
    if any(t not in PORTS for t in args.transports) or args.repeat < 1 or args.duration <= 0:
        parser.error("transports are tcp and udp; --repeat >= 1; --duration > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    missing = _missing()
    if missing:
        say("bench.p2c_throughput needs " + ", ".join(missing))
        return 2
    started = time.monotonic()
    say(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    def body(lab: Lab) -> Bench:
        bench = Bench(build(lab), args.repeat, args.duration, args.ping_count, fifo=args.sched_fifo)
        try:
            bench.setup(args.transports)
            if args.openvpn_tuning == "auto":
                say("Calibrating the openvpn server (one run each, AES-128-GCM):")
                bench.calibrate(args.transports)
            else:
                bench.tuning = dict.fromkeys(args.transports, args.openvpn_tuning)
            say(f"Measuring: {args.repeat} x {args.duration:g} s per server, transport, cipher")
            bench.run(args.transports, args.ciphers)
        except KeyboardInterrupt:
            holder.append(bench)  # print what was measured before the interruption
            raise
        return bench

    holder: list[Bench] = []
    bench, status = run_in_lab(body)
    bench = bench or (holder[0] if holder else None)
    if bench is not None:
        say()
        say(table(bench, args.transports, args.ciphers))
        if args.json is not None:
            args.json.write_text(json.dumps(to_json(bench, args), indent=1))
            say(f"JSON written to {args.json}")
    say(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    say(f"(total {time.monotonic() - started:.0f}s)")
    return status


if __name__ == "__main__":
    sys.exit(main())

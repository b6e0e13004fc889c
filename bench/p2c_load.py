"""Point-to-cloud load: many concurrent authenticated clients against one lockgate.

    python -m bench.p2c_load [--clients 500] [--real 20] [--concurrency 16]
                             [--hold 10] [--timeout 300] [--json FILE]

One `lockgate daemon` serves two SSL servers, TCP 443 (pool 192.0.2.0/24) and UDP
1194 (pool 198.51.100.0/24), each with `max_connections = 250`: 500 together, the
product's maximum per gateway (RFC 5737 has no documentation /23 for a single pool of
500). The WAN is IPv6 (`bench.p2c_lab`). The clients are split evenly between the
servers:
- `--real` stock `openvpn` processes, each in a namespace of its own, with the profile
  `lockgate profile` printed (half TCP, half UDP);
- the rest from the project's load generator (`testkit.ovpn_load`: TLS, key method
  2, PUSH, then keepalive pings), one process per transport in a namespace of its own.

The first real client connects before the ramp and pings the cloud host 10 times a
second through it for the whole ramp: its loss says whether the existing clients kept
their traffic. The ramp starts the other real clients and the load generators at
once; it ends when the daemon reports every client connected (or `--timeout`). The
report: connects per second over the ramp, the daemon's memory per client (VmRSS after
the ramp minus before it, divided by the clients), the ping loss, a ping through every
real client after the ramp, and the load generators' handshake times. Every password
check is a real scrypt check on the daemon's worker threads.

Bounded in count (`--clients` <= 500) and time (`--timeout` for the ramp, `--hold`
after it); every process is stopped by PID and the namespaces are removed at the end,
also on Ctrl-C or SIGTERM. Not a test: nothing here asserts a figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import IO, Any

from bench.measure import resident_kib
from bench.p2c_lab import (
    CLOUD,
    PASSWORD,
    LockgateGateway,
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
from conf.users import User, hash_password, save_users
from daemon.lab.netns import HarnessError, Lab, Process, ping

REPO = Path(__file__).resolve().parent.parent
SERVERS = {
    "tcp": SslServer("loadtcp", "tcp", 443, "192.0.2.0/24", max_connections=250),
    "udp": SslServer("loadudp", "udp", 1194, "198.51.100.0/24", max_connections=250),
}
RAMP_PING_INTERVAL = 0.1


@dataclass
class LoadGenerator:
    """One `testkit.ovpn_load` process and what it printed."""

    transport: str
    count: int
    process: Process
    records: list[dict[str, Any]] = field(default_factory=list)
    reader: threading.Thread | None = None

    def read(self, stream: IO[bytes]) -> None:
        for line in stream:
            with contextlib.suppress(ValueError):
                self.records.append(json.loads(line))

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in list(self.records) if r.get("event") == kind]


@dataclass
class Result:
    clients: int
    real: int
    ramp_seconds: float = 0.0
    connected_before_ramp: int = 0
    connected_at_end_of_ramp: int = 0
    rss_before_kib: int = 0
    rss_after_kib: int = 0
    ping_sent: int = 0
    ping_received: int = 0
    real_ok_after: int = 0
    handshake_seconds: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    daemon_cpu_seconds: float = 0.0
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def connects_per_second(self) -> float:
        new = self.connected_at_end_of_ramp - self.connected_before_ramp
        return new / self.ramp_seconds if self.ramp_seconds else 0.0

    def kib_per_client(self) -> float:
        n = self.connected_at_end_of_ramp
        return (self.rss_after_kib - self.rss_before_kib) / n if n else 0.0


def _connected(gateway: LockgateGateway) -> int:
    with contextlib.suppress(Exception):
        return sum(int(s.get("clients", 0)) for s in gateway.daemon.status()["remote_access"])
    return -1


def _cpu_seconds(pid: int) -> float:
    from bench.measure import _CLK_TCK, cpu_ticks

    return cpu_ticks(pid) / _CLK_TCK


def write_users(topo: P2cTopology, gateway: LockgateGateway, per_server: dict[str, int]) -> None:
    """`lockgate user add` for one user per server (the path a user takes); the bulk
    users (one per client, `connections_per_user` being 5) go straight into the users
    file with one scrypt hash computed once, which `lockgate user add` would compute
    500 times."""
    hashed = hash_password(PASSWORD)
    for transport, count in per_server.items():
        server = SERVERS[transport]
        path = topo.tmp / f"{server.name}.users"
        users = {f"u{i:04d}": User(f"u{i:04d}", password=hashed) for i in range(count)}
        save_users(path, users)
        gateway.add_user(server.name, "alice")


def start_generator(
    topo: P2cTopology, transport: str, count: int, first: int, concurrency: int, hold: float
) -> LoadGenerator:
    ns = topo.clients[-1]
    server = SERVERS[transport]
    args = [sys.executable, "-m", "testkit.ovpn_load", "--server", topo.server_address,
            "--port", str(server.port), "--transport", transport,
            "--ca", str(topo.tmp / "ca.pem"), "--users", "u%04d", "--first", str(first),
            "--count", str(count), "--password", PASSWORD,
            "--concurrency", str(concurrency), "--hold", str(hold),
            "--deadline", "900"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = ns.spawn(args, name=f"ovpn-load-{transport}", env=env, stdout_pipe=True)
    generator = LoadGenerator(transport, count, process)
    assert process.popen.stdout is not None
    generator.reader = threading.Thread(
        target=generator.read, args=(process.popen.stdout,), daemon=True
    )
    generator.reader.start()
    return generator


def _ping_counts(text: str) -> tuple[int, int]:
    match = re.search(r"(\d+) packets transmitted, (\d+) received", text)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def run(lab: Lab, args: argparse.Namespace) -> Result:
    real = min(args.real, args.clients)
    result = Result(args.clients, real)
    topo = build(lab, clients=real + 1, pools=tuple(s.pool for s in SERVERS.values()))
    write_pki(topo.tmp)
    transports = ["udp", "tcp"]
    # Client i goes to transports[i % 2]: the real ones and the generated ones alike.
    real_of = {t: [i for i in range(real) if transports[i % 2] == t] for t in transports}
    total_of = {t: len(range(transports.index(t), args.clients, 2)) for t in transports}
    generated_of = {t: total_of[t] - len(real_of[t]) for t in transports}
    gateway = LockgateGateway(topo, list(SERVERS.values()), "lockgate-load")
    write_users(topo, gateway, {t: total_of[t] for t in transports})
    profiles = {t: gateway.profile(SERVERS[t].name) for t in transports}
    gateway.start()
    pid = gateway.pid()
    time.sleep(1.0)
    result.rss_before_kib = resident_kib(pid)
    say(f"daemon up (pid {pid}), VmRSS {result.rss_before_kib / 1024:.1f} MiB; "
        f"{args.clients} clients: {real} openvpn, "
        f"{sum(generated_of.values())} generated ({generated_of})")  # fmt: skip

    user_of: dict[int, str] = {}
    for t in transports:
        for n, i in enumerate(real_of[t]):
            user_of[i] = f"u{n:04d}"
    clients: list[Process] = []
    first = start_client(
        topo.clients[0], profiles[transports[0]], user=user_of[0], extra=("--dev", "tun0")
    )
    clients.append(first)
    wait_connected(first)
    ping(topo.clients[0], CLOUD, count=3)
    count = int(args.timeout / RAMP_PING_INTERVAL) + 100
    pinger = topo.clients[0].spawn(
        ["ping", "-n", "-q", "-i", str(RAMP_PING_INTERVAL), "-c", str(count), CLOUD],
        name="ramp-ping",
        stdout_pipe=True,
    )
    cpu_before = _cpu_seconds(pid)
    result.connected_before_ramp = max(0, _connected(gateway))
    started = time.monotonic()
    for i in range(1, real):
        t = transports[i % 2]
        clients.append(start_client(topo.clients[i], profiles[t], user=user_of[i]))
    generators = [
        start_generator(topo, t, generated_of[t], len(real_of[t]), args.concurrency, args.timeout)
        for t in transports
        if generated_of[t] > 0
    ]
    expected = args.clients
    last_report = started
    deadline = started + args.timeout
    while time.monotonic() < deadline:
        connected = _connected(gateway)
        if connected >= expected:
            break
        failed = sum(len(g.events("failed")) for g in generators)
        if connected + failed >= expected and failed:
            break
        if time.monotonic() - last_report >= 5:
            last_report = time.monotonic()
            say(f"  {time.monotonic() - started:5.1f} s: {connected} connected, {failed} failed")
        time.sleep(0.2)
    result.ramp_seconds = time.monotonic() - started
    result.connected_at_end_of_ramp = max(0, _connected(gateway))
    result.daemon_cpu_seconds = _cpu_seconds(pid) - cpu_before
    time.sleep(1.0)
    result.rss_after_kib = resident_kib(pid)
    result.load = os.getloadavg()
    say(f"ramp: {result.connected_at_end_of_ramp}/{expected} connected in "
        f"{result.ramp_seconds:.1f} s; VmRSS {result.rss_after_kib / 1024:.1f} MiB")  # fmt: skip
    pinger.signal(signal.SIGINT)
    try:
        out, _ = pinger.popen.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        out = b""
    pinger.stop()
    result.ping_sent, result.ping_received = _ping_counts(out.decode(errors="replace"))
    # Every real client still reaches the cloud after the ramp.
    for i, client in enumerate(clients):
        try:
            wait_connected(client, timeout=5)
            ping(topo.clients[i], CLOUD, count=2, interval=0.2, deadline=5)
            result.real_ok_after += 1
        except (TunnelError, HarnessError):
            say(f"  openvpn client {i} ({transports[i % 2]}): no traffic after the ramp")
    if args.hold > 0:
        say(f"holding {args.hold:g} s ...")
        time.sleep(args.hold)
        still = _connected(gateway)
        say(f"after holding: {still} connected")
    for g in generators:
        result.handshake_seconds += [float(r["seconds"]) for r in g.events("connected")]
        for r in g.events("failed"):
            reason = str(r.get("reason", "?"))
            result.failures[reason] = result.failures.get(reason, 0) + 1
    for g in generators:
        stop_quietly(g.process)
    stop_quietly(*clients)
    stop_quietly(gateway)
    return result


def report(result: Result) -> str:
    lost = result.ping_sent - result.ping_received
    loss = 100.0 * lost / result.ping_sent if result.ping_sent else float("nan")
    hs = sorted(result.handshake_seconds)
    lines = [
        f"{'clients (openvpn + generated)':<44} {result.clients} "
        f"({result.real} + {result.clients - result.real})",
        f"{'connected at the end of the ramp':<44} {result.connected_at_end_of_ramp}",
        f"{'ramp':<44} {result.ramp_seconds:.1f} s",
        f"{'connects per second (during the ramp)':<44} {result.connects_per_second():.1f}",
        f"{'daemon CPU during the ramp':<44} {result.daemon_cpu_seconds:.1f} s",
        f"{'daemon VmRSS before / after':<44} {result.rss_before_kib / 1024:.1f} / "
        f"{result.rss_after_kib / 1024:.1f} MiB",
        f"{'memory per client':<44} {result.kib_per_client():.0f} KiB",
        f"{'ping through the first client during ramp':<44} {result.ping_received}/"
        f"{result.ping_sent} received, {loss:.1f}% loss",
        f"{'openvpn clients with traffic after the ramp':<44} {result.real_ok_after}/{result.real}",
    ]
    if hs:
        lines.append(
            f"{'generated handshakes: median / p95 / max':<44} {median(hs):.2f} / "
            f"{hs[int(0.95 * (len(hs) - 1))]:.2f} / {hs[-1]:.2f} s"
        )
    if result.failures:
        lines.append(f"{'generated clients that failed':<44} {result.failures}")
    lines.append(f"{'load average at the end of the ramp':<44} "
                 + " ".join(f"{x:.2f}" for x in result.load))  # fmt: skip
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.p2c_load", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--clients", type=int, default=500, help="clients in all (500, max)")
    parser.add_argument("--real", type=int, default=20, help="stock openvpn clients (20)")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="handshakes in flight per load generator (16)")  # fmt: skip
    parser.add_argument("--hold", type=float, default=10.0, help="seconds held after the ramp")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for the ramp")
    parser.add_argument("--json", type=Path, help="write the figures as JSON")
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= 500 or args.real < 1 or args.timeout <= 0:
        parser.error("1 <= --clients <= 500, --real >= 1, --timeout > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    missing = [] if os.geteuid() == 0 else ["root privileges"]
    missing += [f"'{t}'" for t in ("ip", "ping", "openvpn") if not shutil.which(t)]
    if missing:
        say("bench.p2c_load needs " + ", ".join(missing))
        return 2
    say(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    started = time.monotonic()

    def body(lab: Lab) -> Result | None:
        try:
            return run(lab, args)
        except (TunnelError, HarnessError) as exc:
            say(f"FAILED: {exc}")
            return None

    result, status = run_in_lab(body)
    status = status or (1 if result is None else 0)
    if result is not None:
        say()
        say(report(result))
        if args.json is not None:
            data = {**result.__dict__, "connects_per_second": result.connects_per_second(),
                    "kib_per_client": result.kib_per_client()}  # fmt: skip
            args.json.write_text(json.dumps(data, indent=1))
    say(f"(total {time.monotonic() - started:.0f}s)")
    return status


if __name__ == "__main__":
    sys.exit(main())

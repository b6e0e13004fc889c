"""What the throughput benchmark measures inside the lab: iperf3, ping and daemon CPU.

Every measurement is bounded: iperf3 runs for a fixed duration under a subprocess
timeout, its one-shot server (`iperf3 -s -1`) is stopped by PID afterwards, and ping
has a count and a deadline. Nothing here asserts a figure: a failed run raises
`MeasureError` with iperf3's or ping's own words, and the caller records it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.lab.netns import HarnessError, Namespace

IPERF_PORT = 5201
UDP_DATAGRAM = 1400
"""iperf3 UDP payload per datagram (octets): close to a full 1500-octet packet, as bulk
traffic sends, and the same for every tunnel so that the rows compare like with like."""
UDP_SOCKET_BUFFER = "4M"
"""iperf3 -w for UDP runs (SO_SNDBUF/SO_RCVBUF at both ends; the client passes it to
the server). With the default 208 KiB the receiving iperf3 itself overflowed
(UdpRcvbufErrors in host B's namespace: 20-50% of a 1 Gbit/s flood), and those
losses were reported as the tunnel's."""
_CLK_TCK = os.sysconf("SC_CLK_TCK")
AUTOGROUP_NICE = -10
"""The nice value `prioritize` gives a measured process's scheduling group: CFS then
weighs it at about nine times a group at nice 0."""


class MeasureError(RuntimeError):
    """One measurement could not be taken (tool failed, timed out, output unreadable)."""


@dataclass(frozen=True)
class IperfResult:
    """One iperf3 run, as the receiver saw it."""

    mbps: float
    """Delivered rate: what the receiver got, in Mbit/s (not the offered rate)."""
    loss_percent: float | None
    """UDP datagrams lost (None for TCP)."""
    retransmits: int | None
    """TCP retransmissions the sender counted (None for UDP)."""
    cpu: Mapping[str, float]
    """CPU each daemon used during the run, in percent of one core, by role."""


@dataclass(frozen=True)
class PingResult:
    """Round-trip times of one idle ping burst, in milliseconds."""

    avg_ms: float
    min_ms: float
    max_ms: float
    received: int
    sent: int


# --- CPU of a process tree from /proc ------------------------------------------------


def _descendants(pid: int) -> list[int]:
    """`pid` and every process below it (a daemon may run workers as children)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(child) for child in task.read_text().split()]
    return out


def cpu_ticks(pid: int) -> int:
    """utime + stime of `pid`'s process tree, in clock ticks (0 if it is gone)."""
    total = 0
    for proc in _descendants(pid):
        try:
            stat = Path(f"/proc/{proc}/stat").read_text()
        except OSError:
            continue
        # The command name (field 2) may hold spaces: split after its closing ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return total


@contextlib.contextmanager
def cpu_meter(pids: Mapping[str, int], into: dict[str, float]) -> Iterator[None]:
    """Fill `into` with each role's CPU use over the block, in percent of one core."""
    before = {role: cpu_ticks(pid) for role, pid in pids.items()}
    start = time.monotonic()
    try:
        yield
    finally:
        seconds = max(time.monotonic() - start, 1e-6)
        for role, pid in pids.items():
            used = (cpu_ticks(pid) - before[role]) / _CLK_TCK
            into[role] = round(100.0 * used / seconds, 1)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of `pid`'s process tree so far, in seconds."""
    return cpu_ticks(pid) / _CLK_TCK


def resident_kib(pid: int) -> int:
    """VmRSS of `pid` in KiB (0 if it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def prioritize(pid: int, nice: int = AUTOGROUP_NICE) -> bool:
    """Put `pid`'s autogroup ahead of other work on the machine; False if it cannot be.

    With `kernel.sched_autogroup_enabled` (Debian's default) every session is one
    scheduling group, and groups share the CPUs equally whatever their processes'
    own nice values: a daemon started in its own session competes with each test
    and benchmark that other users run as one equal. Measured here while others'
    work kept both cores busy: a strongSwan pair gave about 120 Mbit/s of TCP, 360
    when it ran ahead of that work (SCHED_FIFO), and the same 120 with `nice -n -20`
    on its processes. The group's own nice (sched(7), /proc/PID/autogroup) does
    count: 170-250 at -10.
    """
    try:
        Path(f"/proc/{pid}/autogroup").write_text(f"{nice}\n")
    except OSError:
        return False  # no autogroups (or not root): nothing to do
    return True


FIFO_PRIORITY = 10
"""The SCHED_FIFO priority `realtime` gives (1-99; the kernel's own threaded
interrupts run at 50, so they still come first)."""


def realtime(pid: int, priority: int = FIFO_PRIORITY) -> int:
    """Run every thread of `pid` under SCHED_FIFO; how many threads it could move.

    A thread under SCHED_FIFO runs as soon as it wakes, ahead of every normal
    (CFS) thread. charon's ESP path hands each packet across three threads per
    direction (kernel-libipsec's TUN reader, its processing queue, the socket
    sender), and with CFS each hand-off waited for a core behind iperf3 and the
    other charon: on this 2-core machine a pair ran at 160-180 Mbit/s of TCP under
    CFS and at 360-520 under SCHED_FIFO. Threads the process starts later inherit the
    policy from the thread that starts them. The kernel's real-time throttling
    (sched_rt_runtime_us, 95% by default) keeps a spinning thread from locking the
    machine up.
    """
    param = os.sched_param(priority)
    return _each_thread(pid, lambda tid: os.sched_setscheduler(tid, os.SCHED_FIFO, param))


def pin(pid: int, cpu: int) -> int:
    """Keep every thread of `pid` on CPU `cpu`; how many threads it could move.

    Threads the process starts later inherit the affinity of the thread that starts
    them."""
    return _each_thread(pid, lambda tid: os.sched_setaffinity(tid, {cpu}))


def _each_thread(pid: int, act: Callable[[int], None]) -> int:
    # `act` on every thread of `pid`; how many it succeeded on (a thread may be gone
    # meanwhile, or not ours to change; the whole process may be gone).
    moved = 0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                act(int(tid))
                moved += 1
    return moved


# --- iperf3 ---------------------------------------------------------------------------


def _wait_listening(ns: Namespace, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = ns.run("ss", "-Hltn", f"sport = :{port}", check=False, timeout=5).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise MeasureError(f"iperf3 server in {ns.name} not listening on {port} after {timeout}s")


def iperf(
    client: Namespace,
    server: Namespace,
    dest: str,
    *,
    duration: float,
    streams: int = 1,
    udp_rate: str | None = None,
    daemons: Mapping[str, int] | None = None,
) -> IperfResult:
    """One iperf3 run from `client` to `dest` (inside `server`); UDP if `udp_rate`.

    The server is a one-shot `iperf3 -s -1` per run, so a run that broke off can
    never leave a busy server behind for the next one. Both ends of iperf3 and the
    `daemons` are put ahead of other work on the machine (`prioritize`).
    """
    srv = server.spawn(["iperf3", "-s", "-1", "-p", str(IPERF_PORT)], name="iperf3-server")
    # Every process the run depends on goes ahead of other work on the machine: the
    # daemons and both ends of iperf3, the same for every tunnel.
    for pid in (*(daemons or {}).values(), srv.pid):
        prioritize(pid)
    cpu: dict[str, float] = {}
    try:
        _wait_listening(server, IPERF_PORT, timeout=10)
        args = ["iperf3", "-c", dest, "-p", str(IPERF_PORT), "-J", "-t", f"{duration:g}"]
        args += ["--connect-timeout", "5000", "-P", str(streams)]
        if udp_rate is not None:
            args += ["-u", "-l", str(UDP_DATAGRAM), "-b", udp_rate, "-w", UDP_SOCKET_BUFFER]
        # The client gets a session (so a scheduling group) of its own to prioritize.
        errors = client.lab.tmpdir / f"iperf3-client-{time.monotonic_ns()}.err"
        with cpu_meter(daemons or {}, cpu):
            proc = client.spawn(args, name="iperf3-client", log_path=errors, stdout_pipe=True)
            prioritize(proc.pid)
            try:
                out, _ = proc.popen.communicate(timeout=duration + 20)
            except subprocess.TimeoutExpired:
                proc.stop(timeout=3)
                raise MeasureError(f"iperf3 client timed out after {duration + 20:g}s") from None
    finally:
        srv.stop(timeout=3)
    stderr = errors.read_text(errors="replace") if errors.exists() else ""
    return _parse_iperf(out.decode(errors="replace"), stderr, udp=udp_rate is not None, cpu=cpu)


def _parse_iperf(stdout: str, stderr: str, *, udp: bool, cpu: Mapping[str, float]) -> IperfResult:
    try:
        data: dict[str, Any] = json.loads(stdout)
    except json.JSONDecodeError:
        raise MeasureError(f"iperf3 printed no JSON: {(stderr or stdout).strip()[:300]}") from None
    if "error" in data:
        raise MeasureError(f"iperf3: {data['error']}")
    end = data.get("end", {})
    received = end.get("sum_received")
    if not isinstance(received, dict) or "bits_per_second" not in received:
        raise MeasureError("iperf3 reported no receiver figures")
    mbps = float(received["bits_per_second"]) / 1e6
    if udp:
        return IperfResult(mbps, float(received.get("lost_percent", 0.0)), None, dict(cpu))
    retransmits = end.get("sum_sent", {}).get("retransmits")
    return IperfResult(mbps, None, int(retransmits) if retransmits is not None else None, dict(cpu))


# --- ping -------------------------------------------------------------------------------

_RTT = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/")
_COUNTS = re.compile(r"(\d+) packets transmitted, (\d+) received")


def idle_ping(ns: Namespace, dest: str, *, count: int = 20, interval: float = 0.05) -> PingResult:
    """`count` pings `interval` apart on an otherwise idle path; raise if none came back."""
    deadline = int(count * interval + 5)
    args = ["ping", "-n", "-q", "-c", str(count), "-i", f"{interval:g}", "-w", str(deadline)]
    try:
        proc = ns.run(*args, dest, check=False, timeout=deadline + 5)
    except HarnessError as exc:
        raise MeasureError(str(exc)) from exc
    rtt, counts = _RTT.search(proc.stdout), _COUNTS.search(proc.stdout)
    if rtt is None or counts is None:
        raise MeasureError(f"ping {dest}: no replies\n{proc.stdout}{proc.stderr}".strip())
    low, avg, high = (float(rtt.group(i)) for i in (1, 2, 3))
    return PingResult(avg, low, high, int(counts.group(2)), int(counts.group(1)))


def ping_summary(text: str) -> tuple[int, int, float | None, float | None]:
    """From `ping -q`'s summary: sent, received, and the average and largest round
    trip in ms (None without replies)."""
    rtt, counts = _RTT.search(text), _COUNTS.search(text)
    sent, received = (int(counts.group(1)), int(counts.group(2))) if counts else (0, 0)
    if rtt is None:
        return sent, received, None, None
    return sent, received, float(rtt.group(2)), float(rtt.group(3))


def _snmp_count(ns: Namespace, group: str, field: str, name6: str) -> int:
    # One counter of the namespace's IPv4 /proc/net/snmp (`group`: `field`) plus its
    # IPv6 twin of /proc/net/snmp6 (`name6`): both files are per namespace.
    lines = ns.run("cat", "/proc/net/snmp", "/proc/net/snmp6").stdout.splitlines()
    total = 0
    prefix = f"{group}: "
    for header, values in itertools.pairwise(lines):
        if header.startswith(prefix) and values.startswith(prefix):
            fields = dict(zip(header.split()[1:], values.split()[1:], strict=False))
            total += int(fields.get(field, "0"))
    for line in lines:
        name, _, value = line.partition(" ")
        if name == name6:
            total += int(value.strip() or "0")
    return total


def udp_receive_overflows(ns: Namespace) -> int:
    """UDP datagrams the namespace's stack dropped because the receiving socket's
    buffer was full (IPv4 `RcvbufErrors` plus `Udp6RcvbufErrors`)."""
    return _snmp_count(ns, "Udp", "RcvbufErrors", "Udp6RcvbufErrors")


def reassembly_requests(ns: Namespace) -> int:
    """IP fragments the namespace's stack was handed to reassemble (IPv4 `ReasmReqds`
    plus IPv6 `Ip6ReasmReqds`). On a gateway these are outer fragments: an ESP
    packet larger than the path MTU that the sender's kernel cut up. Inner packets
    travel inside ESP and are forwarded, never reassembled there."""
    return _snmp_count(ns, "Ip", "ReasmReqds", "Ip6ReasmReqds")

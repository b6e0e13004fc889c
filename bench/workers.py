"""Engine-only scaling of the data-plane workers: packets per second with 1 and 2
worker processes, generated and consumed in-process (no iperf, no namespaces).

Each worker process runs the data plane's real path on its own pair of CHILD SAs,
as a worker does on its own SAs (RFC 9611, one pair per worker): batches of
`--batch` inner packets go through `DataPlane.from_tun` (SPD lookup with its flow
cache, size check, `EspSA.encapsulate_parts`), a memory transport joins the ESP
packets, and the peer SA's `DataPlane.from_esp` (SAD lookup, replay window,
`decapsulate_batch`, selector check) writes them to a memory TUN that counts them.
The processes start together (each says it is ready, then all are told to go) and
run for `--duration` seconds; the figure is the packets all of them delivered, per
second.

Runs interleave (W=1, W=2, W=1, ...) over `--repeat` rounds so a change in the
machine's load hits both. The table gives the median and the spread (min-max) per
W and packet size, the ratio of the medians W=2/W=1, the load average before and
after, and the CPU count; and per W the cores the workers got (their CPU seconds per
second) and the packets per CPU second. On a machine with fewer idle cores than
workers the ratio says more about the machine than about the workers: packets per
CPU second that stay level from W=1 to W=2 say the workers share nothing. Each round
also runs the bare AES-GCM calls the same way (`bare-aead`, unless `--no-floor`): a
loop that shares nothing by construction, so its ratio is the most this machine gives
two processes at that moment, and the workers' ratio reads against it.

    python -m bench.workers [--sizes 1400,64] [--repeat 3] [--duration 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from daemon.childsa import ChildSaEntry, entry_from_event
from daemon.dataplane import DataPlane
from esp.sa import PARTS_PER_PACKET
from ikev2.events import Address
from testkit.dataplane import events, ipv4

WORKER_COUNTS = (1, 2)
GOAL = 1.7
"""The ratio W=2/W=1 the workers are to reach."""


class _Wire:
    """Transport of the sending data plane: keeps the ESP packets of one batch."""

    def __init__(self) -> None:
        self.esp: list[bytes] = []

    def send(self, entry: ChildSaEntry, parts: list[bytes]) -> int:
        step = PARTS_PER_PACKET
        join = b"".join
        self.esp += [join(parts[i : i + step]) for i in range(0, len(parts), step)]
        return len(parts) // step

    def send_keepalive(self, local: Address, remote: Address) -> bool:
        return True

    def write_tun(
        self, packets: list[bytes], interface: str | None = None, partial: Sequence[int] = ()
    ) -> int:
        return len(packets)


class _Tun:
    """Transport of the receiving data plane: counts what reaches its TUN."""

    def __init__(self) -> None:
        self.delivered = 0

    def send(self, entry: ChildSaEntry, parts: list[bytes]) -> int:
        return len(parts) // PARTS_PER_PACKET

    def send_keepalive(self, local: Address, remote: Address) -> bool:
        return True

    def write_tun(
        self, packets: list[bytes], interface: str | None = None, partial: Sequence[int] = ()
    ) -> int:
        self.delivered += len(packets)
        return len(packets)


def udp_header(source_port: int, length: bytes) -> bytes:
    """A UDP header to port 5201 (checksum 0: none, as IPv4 allows)."""
    return source_port.to_bytes(2, "big") + b"\x14\x51" + length + b"\x00\x00"


class Engine:
    """One worker's data path: its CHILD SA pair's two data planes, end to end."""

    def __init__(self, size: int, batch: int, uid: int = 1) -> None:
        ours, theirs = events(uid=uid)
        self.wire, self.tun = _Wire(), _Tun()
        self.sender, self.receiver = DataPlane(self.wire), DataPlane(self.tun)
        self.sender.install(entry_from_event(ours))
        self.receiver.install(entry_from_event(theirs))
        # UDP flows of one host to another, a few ports: the flow cache's common case.
        payload = bytes(max(0, size - 28))
        udp_length = (size - 20).to_bytes(2, "big")
        self.packets = [
            ipv4("192.0.2.10", "203.0.113.10", udp_header(40000 + i % 8, udp_length) + payload, 17)
            for i in range(batch)
        ]

    def step(self) -> None:
        """One TUN read's batch sealed, carried and opened."""
        wire = self.wire
        self.sender.from_tun(self.packets)
        self.receiver.from_esp(wire.esp)
        wire.esp = []


class BareEngine:
    """The machine's own scaling, for comparison: the bare AES-GCM calls the ESP
    engine makes per packet (seal, then open), on the same packets, nothing else.
    Processes running it share nothing either; what W=2 loses here, the machine
    loses (cores shared with other work, or hyperthreads behind the vCPUs)."""

    def __init__(self, size: int, batch: int, uid: int = 1) -> None:
        self.aead = AESGCM(bytes(range(16)))
        self.packets = Engine(size, batch, uid).packets
        self.tun = _Tun()

    def step(self) -> None:
        encrypt, decrypt = self.aead.encrypt, self.aead.decrypt
        nonce, aad = bytes(12), bytes(8)
        for packet in self.packets:
            decrypt(nonce, encrypt(nonce, packet, aad), aad)
        self.tun.delivered += len(self.packets)


ENGINES: dict[str, type[Engine] | type[BareEngine]] = {"engine": Engine, "bare-aead": BareEngine}


def run_engine(kind: str, size: int, batch: int, duration: float, uid: int) -> tuple[int, float]:
    """One worker's loop: packets delivered in `duration` seconds from the parent's
    "go" on stdin (after it read "ready" from every worker's stdout), and the CPU
    seconds it had for them."""
    engine = ENGINES[kind](size, batch, uid)
    print("ready", flush=True)
    sys.stdin.readline()
    step = engine.step
    cpu = time.process_time()
    end = time.perf_counter() + duration
    while time.perf_counter() < end:
        step()
    return engine.tun.delivered, time.process_time() - cpu


@dataclass(frozen=True)
class Round:
    kind: str
    workers: int
    size: int
    pps: float
    cores: float
    """CPU seconds the workers got per second: below W, the machine was busy."""


def measure(kind: str, workers: int, size: int, batch: int, duration: float) -> tuple[float, float]:
    """Packets per second of `workers` processes running together, and the cores
    they had (CPU seconds per second)."""
    procs = []
    for k in range(workers):
        command = [sys.executable, "-m", "bench.workers", "--child", "--sizes", str(size)]
        command += ["--batch", str(batch), "--duration", str(duration), "--uid", str(k + 1)]
        command += ["--kind", kind]
        procs.append(
            subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        )
    # Every interpreter up and its SAs installed before any starts the clock.
    for proc in procs:
        if proc.stdout is None or proc.stdout.readline().strip() != "ready":
            raise RuntimeError("a bench worker did not start")
    for proc in procs:
        if proc.stdin is not None:
            proc.stdin.write("go\n")
            proc.stdin.flush()
    total, cpu = 0, 0.0
    for proc in procs:
        out, _ = proc.communicate()
        out = out.strip().splitlines()[-1]
        if proc.returncode != 0:
            raise RuntimeError(f"a bench worker failed with status {proc.returncode}")
        result = json.loads(out)
        total += int(result["delivered"])
        cpu += float(result["cpu"])
    return total / duration, cpu / duration


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1400,64", help="inner packet sizes in octets")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per worker count")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per run")
    parser.add_argument("--batch", type=int, default=64, help="packets per TUN read")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--uid", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="engine", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument(
        "--no-floor", action="store_true", help="skip the bare AES-GCM comparison rounds"
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.child:
        delivered, cpu = run_engine(args.kind, sizes[0], args.batch, args.duration, args.uid)
        print(json.dumps({"delivered": delivered, "cpu": cpu}))
        return 0

    cpus = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0))
    load_before = os.getloadavg()
    print(f"CPUs: {cpus} ({usable} usable by this process); load average before: "
          + " ".join(f"{x:.2f}" for x in load_before), flush=True)  # fmt: skip
    kinds = ["engine"] if args.no_floor else list(ENGINES)
    rounds: list[Round] = []
    for size in sizes:
        for r in range(args.repeat):
            for kind in kinds:
                for workers in WORKER_COUNTS:
                    pps, cores = measure(kind, workers, size, args.batch, args.duration)
                    rounds.append(Round(kind, workers, size, pps, cores))
                    print(f"  {kind:9}  size {size:5d}  round {r + 1}  W={workers}: "
                          f"{pps:12,.0f} packets/s  ({cores:.2f} cores)", flush=True)  # fmt: skip
    load_after = os.getloadavg()
    print()
    print(f"{'what':9}  {'size':>5}  {'W':>2}  {'median packets/s':>17}  "
          f"{'spread (min-max)':>27}  ratio  {'cores':>5}  {'packets/CPU-s':>13}")  # fmt: skip
    for size in sizes:
        for kind in kinds:
            medians: dict[int, float] = {}
            for workers in WORKER_COUNTS:
                mine = [x for x in rounds if (x.kind, x.size, x.workers) == (kind, size, workers)]
                figures = [x.pps for x in mine]
                medians[workers] = statistics.median(figures)
                ratio = medians[workers] / medians[1] if medians.get(1) else 0.0
                cores = statistics.median(x.cores for x in mine)
                per_cpu = statistics.median(x.pps / x.cores for x in mine if x.cores > 0)
                print(f"{kind:9}  {size:5d}  {workers:2d}  {medians[workers]:17,.0f}  "
                      f"{min(figures):12,.0f}-{max(figures):<14,.0f}  {ratio:5.2f}"
                      f"  {cores:5.2f}  {per_cpu:13,.0f}")  # fmt: skip
    print()
    print("load average after: " + " ".join(f"{x:.2f}" for x in load_after))
    print(f"goal: W=2/W=1 >= {GOAL} (needs 2 idle cores: this machine has {usable} usable)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

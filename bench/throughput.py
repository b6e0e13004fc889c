"""Throughput benchmark: lockgate against strongSwan on one namespace topology, one run.

    python -m bench.throughput [--repeat 3] [--duration 3] [--json FILE] [--png FILE]
                               [--control-plane] [--sa-counts 100,1000] [--scrape]
                               [--sched-fifo strongswan|all|none] [--pin-gateways]

It builds the site-to-site topology of `daemon.lab.netns` once and measures on it,
one after another: no tunnel; strongSwan ↔ strongSwan (userspace ESP,
kernel-libipsec, its UDP sockets given lockgate's buffer size); lockgate ↔
strongSwan; lockgate ↔ lockgate as configured by default
(ESP in UDP, which two lockgates agree on: the UDP GSO/GRO path), and in raw ESP
(`encap = "nat"`, what lockgate sends to other peers when no NAT is in the way). For each tunnel and
each ESP suite (AES-GCM-128, ChaCha20-Poly1305): iperf3 TCP with one and with four
streams, UDP with 1400-octet datagrams (the delivered rate and the loss, not the
offered rate), the idle ping round trip (and what the tunnel adds to it), and the
CPU each daemon used (utime+stime from /proc over each iperf3 run). Every
measurement is repeated `--repeat` times; the table shows medians and the ratios
lockgate/strongSwan. `--scrape` measures lockgate ↔ lockgate without and with a
scrape of /metrics every second on both gateways, and prints the ratios.
`--control-plane` adds IKE SA + CHILD SA setup rates and the
responder's memory per SA (`bench.setup_rate`).

A row whose tunnel or tool fails prints the error and the run goes on. Everything is
bounded (iperf3 durations and timeouts), every process is stopped by PID and every
namespace removed at the end, also on Ctrl-C or SIGTERM. Not a test: nothing here
asserts a figure. Root, iperf3 and strongSwan (charon, swanctl) are needed.

The strongSwan baseline is strongSwan at its best here: charon's threads run under
SCHED_FIFO (`bench.measure.realtime`; `--sched-fifo none` measures without it, `all`
puts lockgate's daemons there too), and lockgate runs as its systemd unit runs it,
under the normal scheduler. What each factor costs the baseline
(`python -m bench.swan_plain` measures a plainly configured pair beside this one,
interleaved; TCP x1, aes128gcm16, on the 2-core lab machine):

- The scheduler is what costs most. charon's ESP path hands each packet across three
  threads per direction, and under CFS every hand-off waits for a core behind iperf3
  and the other charon. Two runs of this bench one after the other on a quiet
  machine (`--repeat 3`): strongSwan ↔ strongSwan aes128gcm16 gave 170 / 164 Mbit/s
  (TCP x1 / x4) under CFS and 407 / 422 with charon under SCHED_FIFO (other runs
  that hour: 468-522); lockgate ↔ lockgate 714 / 695 and 804 / 924, in both runs
  under CFS (with its daemons under SCHED_FIFO too, 760-910 in other runs: no clear
  gain for one thread per gateway). So lockgate ↔ lockgate went from 4.2x to 2.0x /
  2.2x of the baseline, and lockgate ↔ strongSwan from 1.4x to 0.8x / 0.7x, where
  charon answering on gateway B is the side at 95% CPU.
- lockgate ↔ strongSwan is bound by charon on gateway B in every mode, and what it
  gets is the CPU that charon finds. Two rounds of four modes, one after the other
  (`--repeat 2 --suites aes128gcm16 --cases swan-swan,lockgate-swan,lockgate-lockgate`),
  ratios TCP x1 / x4 against the same run's strongSwan pair: charon alone under
  SCHED_FIFO (the default) 0.86x / 0.79x and 0.88x / 1.03x, lockgate at 49-51% CPU:
  charon's real-time threads take the core lockgate on A would use, which two
  gateway machines would not share; every daemon under SCHED_FIFO (`all`) 1.27x /
  1.32x and 1.26x / 1.17x, charon at 110-113%; each gateway's daemons on a CPU of their
  own (`--pin-gateways`), charon alone under SCHED_FIFO 0.90x / 0.94x and 0.88x /
  0.97x, everything under it 1.00x / 1.01x and 1.05x / 1.09x. lockgate ↔ lockgate was
  1.76x-2.21x in all four. With `all`, lockgate's UDP flood delivered 118-161 Mbit/s
  instead of 400-473, with 0-0.3% loss: iperf3's sender, under CFS, then offers only
  that much, as it does to the strongSwan pair (93-138 Mbit/s) in every mode.
- Other work on the machine: with `kernel.sched_autogroup_enabled` every session is
  a scheduling group that gets an equal share whatever its processes' nice values,
  so the measured processes' groups go to nice -10 (`bench.measure.prioritize`,
  every row's daemons and iperf3 alike). Before that, while other users' tests kept
  both cores busy, the plain pair gave 106-122 Mbit/s and the ratio between the
  paths moved with the load. On a busy machine the figures are still low: compare
  rows of one run, and read its load.
- The crypto plugin: AES-GCM from `openssl` (used here); from the portable `aes`
  and `gcm` plugins 17 Mbit/s instead of 100; `aesni` first: no gain.
- charon's UDP socket buffers at 4 MiB instead of 208 KiB: retransmits 2,945 → 12 in
  one run, throughput equal or better (396 against 351 under SCHED_FIFO).
- Logging: level 1 (used here); level 2 everywhere cost 20-30%. The plugin list
  (`testkit.strongswan.PLUGINS` or the fewest that work), iperf3's `-J`, a UDP flood
  before the TCP run, `threads = 32` and pinning charon or iperf3 to cores made no
  difference beyond the noise; `threads = 8` leaves charon unable to load its
  configuration. The topology is the plain one already: four namespaces, veth MTU
  1500, no NAT.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median
from types import FrameType
from typing import Any

from bench import setup_rate
from bench.chart import draw
from bench.measure import (
    IperfResult,
    MeasureError,
    PingResult,
    idle_ping,
    iperf,
    pin,
    realtime,
    reassembly_requests,
)
from bench.tunnels import CASES, Tunnel, TunnelError
from daemon.lab.netns import HarnessError, Lab, SiteToSite, build_site_to_site

SUITES = ("aes128gcm16", "chacha20poly1305")
TESTS = ("tcp1", "tcp4", "udp")
TEST_LABELS = {"tcp1": "TCP x1", "tcp4": "TCP x4", "udp": "UDP 1400"}
BASELINE = "swan-swan"
SCRAPE_CASES = ("lockgate-lockgate", "lockgate-lockgate-scraped")
"""`--scrape`: the same tunnel without and with a scrape of /metrics every second."""
OPTIONAL_CASES = (SCRAPE_CASES[1], "lockgate-lockgate-workers")
"""Cases run only when named (`--scrape`, `--cases`): each takes minutes, and the
make target has ten."""
DEFAULT_CASES = tuple(c for c in CASES if c not in OPTIONAL_CASES)


def say(text: str = "") -> None:
    """A line of the benchmark's report on stdout (it is a command's output)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


@dataclass
class Row:
    """One tunnel with one suite: every sample taken, and the error if it failed."""

    case: str
    label: str
    suite: str
    framing: str = ""
    error: str = ""
    samples: dict[str, list[IperfResult]] = field(default_factory=dict)
    """iperf3 results per test ("tcp1", "tcp4", "udp"), one per repetition."""
    pings: list[PingResult] = field(default_factory=list)
    test_errors: dict[str, list[str]] = field(default_factory=dict)
    """Failed repetitions per test, with the tool's message."""
    outer_fragments: int | None = None
    """IP fragments both gateways received while the tunnel ran (`ReasmReqds`): ESP
    packets over the path MTU. lockgate should cause none: an outer fragment costs the
    peer a reassembly and loses the packet with either fragment."""

    def mbps(self, test: str) -> float | None:
        runs = self.samples.get(test, [])
        return median(r.mbps for r in runs) if runs else None

    def loss(self) -> float | None:
        runs = [r.loss_percent for r in self.samples.get("udp", []) if r.loss_percent is not None]
        return median(runs) if runs else None

    def rtt(self) -> float | None:
        return median(p.avg_ms for p in self.pings) if self.pings else None

    def cpu(self, test: str, role: str) -> float | None:
        values = [r.cpu[role] for r in self.samples.get(test, []) if role in r.cpu]
        return median(values) if values else None

    def summary(self) -> dict[str, Any]:
        """Medians, as the JSON output and the chart use them."""
        out: dict[str, Any] = {
            "rtt_ms": self.rtt(),
            "udp_loss_percent": self.loss(),
            "outer_fragments": self.outer_fragments,
        }
        for test in TESTS:
            out[f"{test}_mbps"] = self.mbps(test)
            for role in ("A", "B"):
                out[f"{test}_cpu_{role}_percent"] = self.cpu(test, role)
        return out


@dataclass
class Options:
    """The command line, parsed."""

    repeat: int
    duration: float
    udp_rate: str
    suites: tuple[str, ...]
    cases: tuple[str, ...]
    ping_count: int
    pin: bool = False
    """Each gateway's daemons on a CPU of their own (A on 0, B on 1), as on two
    one-core machines; iperf3 and the kernel's own work go where they may."""
    fifo: str = "strongswan"
    """Whose daemons run under SCHED_FIFO (`bench.measure.realtime`): "strongswan"
    (the baseline at its best, lockgate as its systemd unit runs it), "all" or
    "none"."""


FIFO_SAYS = {
    "strongswan": "charon's threads (lockgate as its unit runs it)",
    "all": "every daemon's threads",
    "none": "nothing",
}
PINNED_SAYS = "gateway A's daemons on CPU 0, B's on CPU 1"


def forget_path_mtus(topo: SiteToSite) -> None:
    """Drop every namespace's learned path MTUs (the route cache's exceptions), so a
    tunnel is measured from the same start as the others. charon's TUN has an MTU of
    1400: after its rows host A kept "mtu 1400" towards site B for 10 minutes and
    cut every 1428-octet UDP datagram of the later rows in two (lockgate ↔ lockgate
    UDP delivered 81 instead of 267 Mbit/s)."""
    for ns in (topo.host_a, topo.gw_a, topo.gw_b, topo.host_b):
        ns.ip("-4", "route", "flush", "cache", check=False)
        ns.ip("-6", "route", "flush", "cache", check=False)


def measure_row(tunnel: Tunnel, row: Row, opts: Options) -> None:
    """Start the tunnel, take every sample, stop it; failures go into `row`."""
    topo = tunnel.topo
    dest = topo.site_b.host4
    gateways = (topo.gw_a, topo.gw_b)
    try:
        forget_path_mtus(topo)
        fragments_before = sum(reassembly_requests(ns) for ns in gateways)
        tunnel.start()
        row.framing = tunnel.framing()
        pids = tunnel.daemons()
        charons = set(tunnel.charons())
        fifo = [
            pid
            for pid in pids.values()
            if opts.fifo == "all" or (opts.fifo == "strongswan" and pid in charons)
        ]
        for _ in range(opts.repeat):
            # Again before each repetition: the threads a daemon started meanwhile.
            for pid in fifo:
                if not realtime(pid):
                    say(f"    SCHED_FIFO refused for pid {pid}: this row is not at its best")
            if opts.pin:
                for role, pid in pids.items():
                    pin(pid, 0 if role.startswith("A") else 1)
            try:
                row.pings.append(idle_ping(topo.host_a, dest, count=opts.ping_count))
            except MeasureError as exc:
                row.test_errors.setdefault("ping", []).append(str(exc))
            for test in TESTS:
                try:
                    result = iperf(
                        topo.host_a,
                        topo.host_b,
                        dest,
                        duration=opts.duration,
                        streams=4 if test == "tcp4" else 1,
                        udp_rate=opts.udp_rate if test == "udp" else None,
                        daemons=pids,
                    )
                except MeasureError as exc:
                    row.test_errors.setdefault(test, []).append(str(exc))
                    say(f"    {TEST_LABELS[test]}: {exc}")
                    continue
                row.samples.setdefault(test, []).append(result)
                extra = (
                    f", loss {result.loss_percent:.1f}%" if result.loss_percent is not None else ""
                )
                cpu = " ".join(f"{role} {v:.0f}%" for role, v in sorted(result.cpu.items()))
                say(f"    {TEST_LABELS[test]}: {result.mbps:,.0f} Mbit/s{extra}  cpu {cpu}")
        row.outer_fragments = sum(reassembly_requests(ns) for ns in gateways) - fragments_before
    except (TunnelError, HarnessError) as exc:
        row.error = str(exc)
        say(f"  FAILED: {exc}")
    finally:
        try:
            tunnel.stop()
        except HarnessError as exc:  # the lab removes what is left at the end anyway
            say(f"  stopping {tunnel.label}: {exc}")


def run_data_plane(topo: SiteToSite, opts: Options) -> list[Row]:
    """Every case on one topology, one after another."""
    rows: list[Row] = []
    for case in opts.cases:
        cls = CASES[case]
        for suite in opts.suites if case != "none" else ("-",):
            tunnel = cls(topo, suite if suite != "-" else None)
            row = Row(case, cls.label, suite)
            say(f"  {cls.label} [{suite}] ...")
            started = time.monotonic()
            measure_row(tunnel, row, opts)
            # The load average says whether the figures are worth reading: on a
            # shared machine other work takes the cores iperf3 and the daemons need.
            say(f"  ({time.monotonic() - started:.0f}s, load {os.getloadavg()[0]:.2f})")
            rows.append(row)
    return rows


# --- the report -------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def _ratio(num: float | None, den: float | None) -> str:
    if num is None or den is None or den == 0:
        return "-"
    return f"{num / den:.2f}x"


def table(rows: Sequence[Row], fifo: str | None = None, pinned: bool = False) -> str:
    """The comparison table: medians per tunnel and suite, then the ratios; `fifo`
    (`Options.fifo`, None when unknown) says whose daemons ran under SCHED_FIFO,
    `pinned` whether each gateway's daemons had a CPU of their own."""
    baseline_rtt = next((r.rtt() for r in rows if r.case == "none"), None)
    head = (
        f"{'path':<24} {'suite':<17} {'wire':<4} {'TCP x1':>8} {'TCP x4':>8} "
        f"{'UDP':>8} {'loss':>6} {'RTT ms':>7} {'+tunnel':>8} {'CPU A/B % (TCP x1)':>19}"
        f" {'outer frags':>11}"
    )
    lines = ["Mbit/s delivered (medians)", head, "-" * len(head)]
    for row in rows:
        if row.error:
            lines.append(f"{row.label:<24} {row.suite:<17} FAILED: {row.error.splitlines()[0]}")
            continue
        rtt = row.rtt()
        added = (
            None
            if rtt is None or baseline_rtt is None or row.case == "none"
            else rtt - baseline_rtt
        )
        cpu = f"{_fmt(row.cpu('tcp1', 'A'))}/{_fmt(row.cpu('tcp1', 'B'))}"
        loss = row.loss()
        lines.append(
            f"{row.label:<24} {row.suite:<17} {row.framing or '-':<4} {_fmt(row.mbps('tcp1')):>8} "
            f"{_fmt(row.mbps('tcp4')):>8} {_fmt(row.mbps('udp')):>8} "
            f"{_fmt(loss, '.1f') + '%' if loss is not None else '-':>6} "
            f"{_fmt(rtt, '.3f'):>7} {_fmt(added, '+.3f'):>8} "
            f"{cpu if row.case != 'none' else '-':>19}"
            f" {_fmt(row.outer_fragments, ',d') if row.case != 'none' else '-':>11}"
        )
    by_key = {(r.case, r.suite): r for r in rows if not r.error}
    against: list[str] = []
    for case in (c for c in CASES if c not in {"none", BASELINE}):
        for suite in SUITES:
            ours, base = by_key.get((case, suite)), by_key.get((BASELINE, suite))
            if ours is None or base is None:
                continue
            ratios = [_ratio(ours.mbps(t), base.mbps(t)) for t in TESTS]
            against.append(f"{ours.label:<24} {suite:<17} " + " ".join(f"{r:>8}" for r in ratios))
    if against:
        lines += [
            "",
            "Ratios against strongSwan ↔ strongSwan (same suite; >1 means lockgate is ahead)",
        ]
        if fifo is not None:
            lines.append(f"SCHED_FIFO: {FIFO_SAYS[fifo]}")
        if pinned:
            lines.append(PINNED_SAYS)
        lines.append(f"{'path':<24} {'suite':<17} {'TCP x1':>8} {'TCP x4':>8} {'UDP':>8}")
        lines += against
    lines += scrape_ratios(by_key)
    failed = [(r, t, e) for r in rows for t, errs in r.test_errors.items() for e in errs]
    if failed:
        lines += ["", "Failed repetitions:"]
        lines += [f"  {r.label} [{r.suite}] {t}: {e.splitlines()[0]}" for r, t, e in failed]
    return "\n".join(lines)


def scrape_ratios(by_key: dict[tuple[str, str], Row]) -> list[str]:
    """Lines comparing the scraped tunnel with the same one unscraped (`--scrape`)."""
    plain_case, scraped_case = SCRAPE_CASES
    lines: list[str] = []
    for suite in SUITES:
        plain, scraped = by_key.get((plain_case, suite)), by_key.get((scraped_case, suite))
        if plain is None or scraped is None:
            continue
        if not lines:
            lines += ["", "Scraped every second against not (same tunnel; 1.00x: no cost)"]
            lines.append(f"{'suite':<17} {'TCP x1':>8} {'TCP x4':>8} {'UDP':>8}")
        ratios = [_ratio(scraped.mbps(t), plain.mbps(t)) for t in TESTS]
        lines.append(f"{suite:<17} " + " ".join(f"{r:>8}" for r in ratios))
    return lines


def to_json(rows: Sequence[Row], opts: Options, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "options": asdict(opts),
        "rows": [
            {
                "case": r.case,
                "label": r.label,
                "suite": r.suite,
                "framing": r.framing,
                "error": r.error,
                "median": r.summary(),
                "samples": {t: [asdict(s) for s in runs] for t, runs in r.samples.items()},
                "pings": [asdict(p) for p in r.pings],
                "test_errors": r.test_errors,
            }
            for r in rows
        ],
        **extra,
    }


def rows_from_json(data: dict[str, Any]) -> list[Row]:
    """The rows of a run `--json` wrote (to print or draw them again)."""
    rows = []
    for r in data["rows"]:
        row = Row(r["case"], r["label"], r["suite"], r["framing"], r["error"])
        row.samples = {t: [IperfResult(**s) for s in runs] for t, runs in r["samples"].items()}
        row.pings = [PingResult(**p) for p in r["pings"]]
        row.test_errors = dict(r["test_errors"])
        row.outer_fragments = r.get("median", {}).get("outer_fragments")  # older files: none
        rows.append(row)
    return rows


def replay(path: Path, png: Path | None) -> int:
    """Print the tables of a saved run again, and draw its chart."""
    data = json.loads(path.read_text())
    rows = rows_from_json(data)
    options = data.get("options", {})
    fifo = options.get("fifo")
    say(table(rows, fifo if fifo in FIFO_SAYS else None, bool(options.get("pin"))))
    control = [setup_rate.SetupResult(**_fields(r)) for r in data.get("control_plane", [])]
    if control:
        say()
        say(setup_rate.report(control))
    if png is not None:
        say(draw(rows, png))
    return 0


def _fields(record: dict[str, Any]) -> dict[str, Any]:
    # Derived figures (rate, kib_per_sa) are properties, not fields.
    return {k: v for k, v in record.items() if k not in {"rate", "kib_per_sa"}}


# --- running it ---------------------------------------------------------------------------


def _missing() -> list[str]:
    missing = [] if os.geteuid() == 0 else ["root privileges"]
    missing += [f"'{t}'" for t in ("ip", "ping", "iperf3", "ss", "swanctl") if not shutil.which(t)]
    if not Path("/usr/lib/ipsec/charon").exists():
        missing.append("/usr/lib/ipsec/charon (Debian: strongswan-charon)")
    return missing


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the clean-up in `finally` runs."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, Options]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.throughput", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per measurement (3)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per iperf3 run (3)")
    parser.add_argument("--udp-rate", default="1G", help="iperf3 -b offered UDP rate (1G)")
    parser.add_argument("--suites", default=",".join(SUITES), help="ESP suites, comma-separated")
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES), help="paths, comma-separated")
    parser.add_argument(
        "--scrape",
        action="store_true",
        help="lockgate ↔ lockgate with /metrics scraped every second against without "
        "(the only cases run, unless --cases names others)",
    )
    parser.add_argument("--ping-count", type=int, default=20, help="pings per repetition (20)")
    parser.add_argument("--json", type=Path, help="write every sample and median as JSON")
    parser.add_argument("--png", type=Path, help="draw the comparison (needs matplotlib)")
    parser.add_argument("--control-plane", action="store_true", help="also IKE setup rates")
    parser.add_argument("--from-json", type=Path, help="print (and --png) a saved run again")
    parser.add_argument("--sa-counts", default="100,1000", help="SAs initiated at once (100,1000)")
    parser.add_argument(
        "--sched-fifo",
        choices=("strongswan", "all", "none"),
        default="strongswan",
        help="whose daemons run under SCHED_FIFO: strongswan (the default: charon at its "
        "best here, lockgate as its unit runs it), all, or none",
    )
    parser.add_argument(
        "--pin-gateways",
        action="store_true",
        help="gateway A's daemons on CPU 0 and B's on CPU 1 (one core per gateway)",
    )
    args = parser.parse_args(argv)
    cases = tuple(c for c in args.cases.split(",") if c)
    if args.scrape:
        named = "--cases" in argv or any(a.startswith("--cases=") for a in argv)
        cases = (*(cases if named else ()), *SCRAPE_CASES)
        cases = tuple(dict.fromkeys(cases))
    unknown = [c for c in cases if c not in CASES]
    if unknown or args.repeat < 1 or args.duration <= 0:
        parser.error(f"cases are {', '.join(CASES)}; --repeat >= 1; --duration > 0")
    opts = Options(
        repeat=args.repeat,
        duration=args.duration,
        udp_rate=args.udp_rate,
        suites=tuple(s for s in args.suites.split(",") if s),
        cases=cases,
        ping_count=args.ping_count,
        fifo=args.sched_fifo,
        pin=args.pin_gateways,
    )
    return args, opts


def main(argv: Sequence[str] | None = None) -> int:
    args, opts = parse_args(sys.argv[1:] if argv is None else argv)
    if args.from_json is not None:
        return replay(args.from_json, args.png)
    missing = _missing()
    if missing:
        say("bench.throughput needs " + ", ".join(missing))
        return 2
    lab = Lab()
    rows: list[Row] = []
    control: list[setup_rate.SetupResult] = []
    status = 0
    started = time.monotonic()
    try:
        with _terminate_as_interrupt():
            say(f"Data plane: {', '.join(opts.cases)}; suites {', '.join(opts.suites)}; "
                f"{opts.repeat} x {opts.duration:g}s per measurement; SCHED_FIFO: "
                f"{FIFO_SAYS[opts.fifo]}{'; ' + PINNED_SAYS if opts.pin else ''}")  # fmt: skip
            topo = build_site_to_site(lab)
            rows = run_data_plane(topo, opts)
            if args.control_plane:
                say("Control plane: SAs initiated at once, " + args.sa_counts)
                counts = [int(n) for n in args.sa_counts.split(",") if n]
                control = setup_rate.run_control_plane(topo, counts, say)
    except KeyboardInterrupt as exc:
        say(f"\nInterrupted ({exc or 'SIGINT'}): cleaning up.")
        status = 130
    finally:
        old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            lab.close()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
    say()
    say(table(rows, opts.fifo, opts.pin))
    if control:
        say()
        say(setup_rate.report(control))
    say(f"\n(total {time.monotonic() - started:.0f}s)")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                to_json(rows, opts, {"control_plane": setup_rate.to_json(control)}), indent=1
            )
        )
        say(f"JSON written to {args.json}")
    if args.png is not None:
        say(draw(rows, args.png))
    return status


if __name__ == "__main__":
    sys.exit(main())

"""Control plane: IKE SA + CHILD SA setups per second, and the responder's memory per SA.

Gateway A initiates N IKE SAs at once to gateway B, each with one CHILD SA of its own
(selectors 2001:db8:a::i/128 === 2001:db8:b::i/128, narrowed by B from its /64s), for
each N of `--sa-counts`:

- charon ↔ charon (the baseline): A has N swanctl connections, each with its own
  identity (`iNNNN.bench.example`) and `start_action = start`, so `swanctl --load-all`
  initiates all of them as it loads them. B has one connection accepting any identity,
  with its DoS protection off (no COOKIEs, no per-IP half-open block). Done when A's
  `stats` shows N IKE SAs and none half-open; then `list-sas` counts installed CHILD SAs.
- lockgate ↔ lockgate: A starts with N peers (all to B) and one connection each,
  `start = "wait"`, each peer with its own `local_id` (`iNNNN.bench.example`, as on
  charon's side); the configuration is rewritten with `start = "initiate"` and A gets
  SIGHUP, so the reload initiates all N at once (the reload re-reads the file, as
  swanctl does). B has one `%any` peer. Done when A's status shows N CHILD SAs.

The clock starts at the load (swanctl) or the SIGHUP, so both include parsing the
configuration. The responder's resident memory is read before and after; the
difference over N is the memory per SA. Every wait is bounded; a case that times out
reports how far it got. Each row also shows the CPU both daemons used (percent of one
core) and the UDP datagrams the kernel dropped for a full receive buffer, since either
explains a slow row better than the rate alone.

`lockgate-mlkem768` is the lockgate case with a hybrid proposal (ML-KEM-768 in one
IKE_INTERMEDIATE exchange, RFC 9370) on both sides.

Run alone (no iperf3 runs): `python -m bench.setup_rate [--sa-counts 100,1000] [--who
charon,lockgate,lockgate-mlkem768] [--repeat N] [--profile DIR]`; `--profile` samples
both lockgates with py-spy into DIR (collapsed stacks per count, run and side).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.measure import cpu_meter, resident_kib, udp_receive_overflows
from bench.tunnels import PSK, Lockgate, TunnelError
from daemon.control import ControlClientError, request
from daemon.lab.netns import HarnessError, Lab, SiteToSite, build_site_to_site
from testkit.strongswan import Charon, SwanChild, SwanConnection, SwanSecret

IKE_PROPOSAL = "aes128gcm16-prfsha256-x25519"
HYBRID_PROPOSAL = IKE_PROPOSAL + "-ke1_mlkem768"
"""`--who lockgate-mlkem768`: the same, with ML-KEM-768 in IKE_INTERMEDIATE (RFC 9370)."""
LOCKGATE_CASES = {"lockgate": IKE_PROPOSAL, "lockgate-mlkem768": HYBRID_PROPOSAL}
ESP_PROPOSAL = "aes128gcm16"
CONTROL_IFACE = "lgsetup0"
_LOG_QUIET = {"default": 1, "ike": 1, "cfg": 1, "knl": 1, "net": 0}
# The responder's DoS protection off (strongswan.conf `charon` section): no COOKIE
# round trips and no blocking of many half-open IKE SAs from one address.
_NO_DOS = ("dos_protection = no", "block_threshold = 1000000", "cookie_threshold = 1000000")


@dataclass
class SetupResult:
    """One control-plane case: N SAs initiated at once."""

    implementation: str
    count: int
    seconds: float | None = None
    """From the load/SIGHUP until the last IKE SA was up (None if not all came up)."""
    established: int = 0
    """IKE SAs up when the clock stopped (or at the timeout)."""
    child_sas: int = 0
    """The initiator's CHILD SAs installed, counted after the clock stopped."""
    responder_sas: int = 0
    """The SAs the responder holds at the end (what its memory growth is divided by)."""
    responder_kib_before: int = 0
    responder_kib_after: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU each gateway's daemon used while the SAs came up, in percent of one core
    ("A" the initiator, "B" the responder): near 100 means that side was the limit."""
    udp_drops: int = 0
    """UDP datagrams both gateways' kernels dropped during the case because a socket's
    receive buffer was full (RcvbufErrors): each lost IKE message costs a
    retransmission timeout (4 s at first), which dominates any rate it hits."""
    busy_seconds: float | None = None
    """lockgate only: how long after the SIGHUP its control socket first answered with
    the reload done (the reload and the initiations run on the event loop and hold it
    that long)."""
    error: str = ""

    @property
    def rate(self) -> float | None:
        """IKE SA + CHILD SA setups per second."""
        if self.seconds is None or self.seconds <= 0:
            return None
        return self.count / self.seconds

    @property
    def kib_per_sa(self) -> float | None:
        """Responder's resident memory growth per SA it holds, KiB."""
        if not self.responder_sas or self.responder_sas < self.established:
            return None  # B dropped some: growth over what it holds would mislead
        return (self.responder_kib_after - self.responder_kib_before) / self.responder_sas


def _timeout(count: int) -> float:
    return 30.0 + count * 0.12


def _rcvbuf_errors(topo: SiteToSite) -> int:
    """UDP receive-buffer drops of both gateways' namespaces."""
    return sum(udp_receive_overflows(ns) for ns in (topo.gw_a, topo.gw_b))


# --- charon ↔ charon ----------------------------------------------------------------------


def charon_case(topo: SiteToSite, count: int) -> SetupResult:
    """N IKE SAs from charon A to charon B, initiated at once by loading them."""
    result = SetupResult("charon", count)
    tag = f"{count}-{int(time.monotonic() * 1000) % 100000}"
    responder = Charon(
        topo.gw_b, f"sr-B-{tag}", log_levels=_LOG_QUIET, extra_charon=_NO_DOS, install_routes=False
    )
    # No traffic crosses these SAs, so no routes: kernel-libipsec here refuses every
    # IPv6 /128 route on ipsec0 but the first, which would fail the CHILD SAs.
    initiator = Charon(topo.gw_a, f"sr-A-{tag}", log_levels=_LOG_QUIET, install_routes=False)
    try:
        responder.start()
        initiator.start()
        responder.load(
            [
                SwanConnection(
                    name="any",
                    local_addrs=topo.gw_b_wan4,
                    remote_addrs="%any",
                    local_id=topo.gw_b_wan4,
                    remote_id="%any",
                    proposals=IKE_PROPOSAL,
                    children=[
                        SwanChild(
                            "net",
                            [topo.site_b.subnet6],
                            [topo.site_a.subnet6],
                            esp_proposals=ESP_PROPOSAL,
                        )
                    ],
                )
            ],
            [SwanSecret("any", [], PSK)],
        )
        conns = [
            SwanConnection(
                name=f"c{i}",
                local_addrs=topo.gw_a_wan4,
                remote_addrs=topo.gw_b_wan4,
                local_id=f"i{i:04d}.bench.example",
                remote_id=topo.gw_b_wan4,
                proposals=IKE_PROPOSAL,
                children=[
                    SwanChild(
                        f"c{i}",
                        [topo.site_a.subnet6],
                        [topo.site_b.subnet6],
                        esp_proposals=ESP_PROPOSAL,
                        start_action="start",
                    )
                ],
            )
            for i in range(count)
        ]
        time.sleep(0.5)  # let both settle: the memory baseline is an idle responder
        result.responder_kib_before = resident_kib(responder.pid())
        drops_before = _rcvbuf_errors(topo)
        with cpu_meter({"A": initiator.pid(), "B": responder.pid()}, result.cpu):
            _measure_charon(initiator, conns, count, result)
        result.udp_drops = _rcvbuf_errors(topo) - drops_before
        result.responder_kib_after = resident_kib(responder.pid())
        result.responder_sas = responder.stats()["total"]
        result.child_sas = sum(
            1 for ike in initiator.list_sas() for c in ike.children if c.state == "INSTALLED"
        )
        if result.child_sas < count and not result.error:
            result.error = f"only {result.child_sas} of {count} CHILD SAs installed"
    except HarnessError as exc:
        result.error = str(exc).splitlines()[0]
    finally:
        initiator.stop(timeout=10)
        responder.stop(timeout=10)
    return result


def _measure_charon(
    initiator: Charon, conns: list[SwanConnection], count: int, result: SetupResult
) -> None:
    """Load the N connections into charon A (each initiates as it loads) and wait,
    bounded, until A's stats show N IKE SAs and none half open."""
    start = time.monotonic()
    initiator.load(conns, [SwanSecret("any", [], PSK)])
    deadline = start + _timeout(count)
    while True:
        stats = initiator.stats()
        up = stats["total"] - stats["half-open"]
        result.established = up
        if up >= count and stats["half-open"] == 0:
            result.seconds = time.monotonic() - start
            break
        if time.monotonic() > deadline:
            result.error = f"only {up} of {count} IKE SAs up after {_timeout(count):.0f}s"
            break
        time.sleep(0.02)


# --- lockgate ↔ lockgate ------------------------------------------------------------------


def _inner(side: str, i: int) -> str:
    return f"2001:db8:{side}::{i + 1:x}/128"


def _lockgate_responder(topo: SiteToSite, socket: str, ike: str = IKE_PROPOSAL) -> str:
    return "\n".join(
        [
            "[gateway]",
            f"addresses = [{json.dumps(topo.gw_b_wan4)}]",
            f"id = {json.dumps(topo.gw_b_wan4)}",
            f"interface = {json.dumps(CONTROL_IFACE)}",
            f"control_socket = {json.dumps(socket)}",
            'log_level = "warning"',
            # DoS protection off, as on charon's responder: no COOKIEs, no half-open cap.
            "cookie_threshold = 999999",
            "max_half_open = 1000000",
            "",
            "[peers.any]",
            'address = "%any"',
            'auth = "psk"',
            f"psk = {json.dumps(PSK)}",
            "",
            "[connections.net]",
            'peer = "any"',
            f"local_subnets = [{json.dumps(topo.site_b.subnet6)}]",
            f"remote_subnets = [{json.dumps(topo.site_a.subnet6)}]",
            f"ike_proposals = [{json.dumps(ike)}]",
            f"esp_proposals = [{json.dumps(ESP_PROPOSAL)}]",
            'start = "wait"',
            "",
        ]
    )


def _lockgate_initiator(
    topo: SiteToSite, socket: str, count: int, start: str, ike: str = IKE_PROPOSAL
) -> str:
    lines = [
        "[gateway]",
        f"addresses = [{json.dumps(topo.gw_a_wan4)}]",
        f"id = {json.dumps(topo.gw_a_public4)}",
        f"interface = {json.dumps(CONTROL_IFACE)}",
        f"control_socket = {json.dumps(socket)}",
        'log_level = "warning"',
        "",
    ]
    for i in range(count):
        lines += [
            f"[peers.p{i}]",
            f"address = {json.dumps(topo.gw_b_wan4)}",
            f"id = {json.dumps(topo.gw_b_wan4)}",
            # One identity per IKE SA, like charon's side: B keeps them apart.
            f'local_id = "i{i:04d}.bench.example"',
            'auth = "psk"',
            f"psk = {json.dumps(PSK)}",
            "",
            f"[connections.c{i}]",
            f'peer = "p{i}"',
            f"local_subnets = [{json.dumps(_inner('a', i))}]",
            f"remote_subnets = [{json.dumps(_inner('b', i))}]",
            f"ike_proposals = [{json.dumps(ike)}]",
            f"esp_proposals = [{json.dumps(ESP_PROPOSAL)}]",
            f"start = {json.dumps(start)}",
            "",
        ]
    return "\n".join(lines)


def _poll_interval(elapsed: float) -> float:
    """How long to wait before asking lockgate's status summary again, ``elapsed``
    seconds in: 2% of the time so far (0.02 to 0.5 s) bounds the timing error to
    about 2%. The summary is O(1) on the daemon's side (charon's `stats` is polled
    every 0.02 s)."""
    return min(0.5, max(0.02, elapsed * 0.02))


def _lockgate_summary(daemon: Lockgate, timeout: float = 5.0) -> dict[str, Any]:
    """The daemon's O(1) status summary: the full status lists every SA and would load
    the event loop being measured."""
    answer = request(str(daemon.socket), {"command": "status", "summary": True}, timeout=timeout)
    if (
        isinstance(answer, dict)
        and isinstance(answer.get("child_sas"), int)
        and isinstance(answer.get("reloads"), int)
    ):
        return answer
    raise TunnelError(f"lockgate {daemon.name}: malformed status {str(answer)[:200]}")


def _lockgate_children(daemon: Lockgate, timeout: float = 5.0) -> int:
    """CHILD SAs the daemon has installed."""
    return int(_lockgate_summary(daemon, timeout)["child_sas"])


@contextlib.contextmanager
def _profiled(pids: dict[str, int], out: Path | None, tag: str) -> Iterator[None]:
    """Sample each process with py-spy while the block runs (``--profile DIR``).

    `--nonblocking` reads the target's memory without pausing it, so the profile
    costs the daemons little; `--gil` samples only the thread holding the GIL, so the
    counts divide the process's CPU between the event loop and the netlink thread
    (a thread waiting for the GIL is not counted as busy). The collapsed stacks
    (`--format raw`, one line per stack and its count) read with grep as well as drawn."""
    spy = Path(sys.executable).with_name("py-spy")
    if out is None:
        yield
        return
    if not spy.exists():
        raise HarnessError(f"--profile needs {spy} (pip install py-spy)")
    out.mkdir(parents=True, exist_ok=True)
    # 1000 samples/s: a 100-SA burst lasts about 0.2 s, too short for fewer.
    record = [str(spy), "record", "--nonblocking", "--gil", "--format", "raw", "--rate", "1000"]
    run = 1
    while any((out / f"{tag}-{run}-{role}.txt").exists() for role in pids):
        run += 1  # one file per run, so --repeat adds samples instead of overwriting
    procs = [
        subprocess.Popen(
            [*record, "-p", str(pid), "-o", str(out / f"{tag}-{run}-{role}.txt")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for role, pid in pids.items()
    ]
    try:
        yield
    finally:
        for proc in procs:  # SIGINT: py-spy writes what it has and exits
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def lockgate_case(
    topo: SiteToSite, count: int, profile: Path | None = None, name: str = "lockgate"
) -> SetupResult:
    """N IKE SAs from lockgate A to lockgate B, initiated at once by a reload; with
    ``profile``, py-spy samples both daemons from the SIGHUP to the last SA. ``name``
    picks the IKE proposal (`LOCKGATE_CASES`)."""
    ike = LOCKGATE_CASES[name]
    result = SetupResult(name, count)
    tmp = topo.lab.tmpdir
    sock_a, sock_b = tmp / f"sr-A-{count}.sock", tmp / f"sr-B-{count}.sock"
    responder = Lockgate(
        topo.gw_b, f"sr-B-{count}", _lockgate_responder(topo, str(sock_b), ike), sock_b
    )
    initiator = Lockgate(
        topo.gw_a,
        f"sr-A-{count}",
        _lockgate_initiator(topo, str(sock_a), count, "wait", ike),
        sock_a,
    )
    try:
        responder.start()
        initiator.start(timeout=60)
        time.sleep(0.5)
        result.responder_kib_before = resident_kib(responder.pid())
        initiator.config.write_text(_lockgate_initiator(topo, str(sock_a), count, "initiate", ike))
        pids = {"A": initiator.pid(), "B": responder.pid()}
        drops_before = _rcvbuf_errors(topo)
        with _profiled(pids, profile, f"lockgate-{count}"), cpu_meter(pids, result.cpu):
            _measure_lockgate(initiator, count, result)
        result.udp_drops = _rcvbuf_errors(topo) - drops_before
        result.responder_kib_after = resident_kib(responder.pid())
        result.child_sas = result.established
        with contextlib.suppress(ControlClientError):
            result.responder_sas = _lockgate_children(responder)
        if result.responder_sas < result.established and not result.error:
            # B replaced some IKE SAs: e.g. INITIAL_CONTACT under one identity for
            # several of A's SAs (RFC 7296 §2.4).
            result.error = f"the responder holds only {result.responder_sas} of them"
    except (TunnelError, HarnessError) as exc:
        result.error = str(exc).splitlines()[0]
    finally:
        initiator.stop()
        responder.stop()
    if result.error and result.responder_sas >= result.established:
        result.error += _log_hint(initiator, responder)
    return result


def _measure_lockgate(initiator: Lockgate, count: int, result: SetupResult) -> None:
    """SIGHUP the initiator (its file now says start = "initiate") and wait, bounded,
    until it shows ``count`` CHILD SAs; the figures go into ``result``.

    The summary is polled from the signal on, as charon's `stats` is from the load: the
    daemon answers only between handlers, and the summary's count of reloads tells
    which answer came after the reload (``busy_seconds``). Waiting a fixed time before
    the first question instead put a floor under the time measured."""
    reloads = int(_lockgate_summary(initiator)["reloads"])
    start = time.monotonic()
    if initiator.process is not None:
        initiator.process.signal(signal.SIGHUP)
    deadline = start + _timeout(count)
    while True:
        with contextlib.suppress(ControlClientError):
            summary = _lockgate_summary(initiator, timeout=_timeout(count))
            if result.busy_seconds is None and summary["reloads"] > reloads:
                result.busy_seconds = time.monotonic() - start
            result.established = int(summary["child_sas"])
        if result.established >= count:
            result.seconds = time.monotonic() - start
            break
        if time.monotonic() > deadline:
            result.error = (
                f"only {result.established} of {count} SAs up after {_timeout(count):.0f}s"
            )
            break
        if initiator.process is not None and not initiator.process.alive():
            result.error = "the initiator exited"
            break
        time.sleep(_poll_interval(time.monotonic() - start))


def _log_hint(*daemons: Lockgate) -> str:
    for daemon in daemons:
        errors = [line for line in daemon.log().splitlines() if "ERROR" in line or "WARN" in line]
        if errors:
            return f" ({daemon.name}: {errors[-1].strip()[:200]})"
    return ""


# --- the section ----------------------------------------------------------------------------


def run_control_plane(
    topo: SiteToSite,
    counts: Sequence[int],
    say: Callable[[str], None],
    *,
    who: Sequence[str] = ("charon", "lockgate"),
    repeat: int = 1,
    profile: Path | None = None,
) -> list[SetupResult]:
    """Every count, charon first, then lockgate, on the (idle) data-plane topology;
    ``repeat`` times each (the table shows every run: the machine is noisy)."""
    results = []
    for count in counts:
        for _ in range(repeat):
            for name in who:
                say(f"  {name} x {count} SAs ...")
                if name == "charon":
                    result = charon_case(topo, count)
                else:
                    result = lockgate_case(topo, count, profile, name)
                say(f"    {_line(result)}")
                results.append(result)
    return results


def _line(r: SetupResult) -> str:
    rate = f"{r.rate:,.0f} setups/s" if r.rate is not None else "-"
    secs = f"{r.seconds:.2f}s" if r.seconds is not None else "-"
    kib = f"{r.kib_per_sa:.1f} KiB/SA" if r.kib_per_sa is not None else "-"
    err = f"  [{r.error}]" if r.error else ""
    if r.cpu:
        err = "  CPU " + " ".join(f"{k} {v:.0f}%" for k, v in sorted(r.cpu.items())) + err
    if r.udp_drops:
        err = f"  ({r.udp_drops} UDP drops: receive buffer full)" + err
    if r.busy_seconds is not None:
        err = f"  (A busy {r.busy_seconds:.2f}s after SIGHUP)" + err
    return (
        f"{r.implementation:<17} {r.count:>5} {secs:>8} {rate:>16} {r.established:>6} "
        f"{r.child_sas:>6} {r.responder_sas:>6} {kib:>14}{err}"
    )


def report(results: Sequence[SetupResult]) -> str:
    """The control-plane table and the lockgate/charon ratios."""
    lines = [
        "Control plane: IKE SA + CHILD SA setups initiated at once (responder DoS protection off)",
        f"{'who':<17} {'SAs':>5} {'time':>8} {'rate':>16} {'IKE up':>6} {'CHILD':>6} "
        f"{'B has':>6} {'B memory':>14}",
    ]
    lines += [_line(r) for r in results]
    for count in sorted({r.count for r in results}):
        ours = [r for r in results if r.implementation == "lockgate" and r.count == count]
        base = [r for r in results if r.implementation == "charon" and r.count == count]
        rates = _median([r.rate for r in ours]), _median([r.rate for r in base])
        kibs = _median([r.kib_per_sa for r in ours]), _median([r.kib_per_sa for r in base])
        runs = (
            f" (medians of {len(ours)} and {len(base)} runs)" if len(ours) + len(base) > 2 else ""
        )
        if rates[0] is not None and rates[1]:
            lines.append(
                f"lockgate/charon setup rate at {count}: {rates[0]:,.0f} / {rates[1]:,.0f} "
                f"setups/s = {rates[0] / rates[1]:.2f}x{runs}"
            )
        if kibs[0] is not None and kibs[1]:
            lines.append(
                f"lockgate/charon memory per SA at {count}: {kibs[0]:.1f} / {kibs[1]:.1f} "
                f"KiB = {kibs[0] / kibs[1]:.2f}x{runs}"
            )
        hybrid = [
            r for r in results if r.implementation == "lockgate-mlkem768" and r.count == count
        ]
        pq_rate = _median([r.rate for r in hybrid])
        if pq_rate is not None and rates[0]:
            lines.append(
                f"lockgate with/without ML-KEM-768 at {count}: {pq_rate:,.0f} / "
                f"{rates[0]:,.0f} setups/s = {pq_rate / rates[0]:.2f}x"
            )
    return "\n".join(lines)


def _median(values: Sequence[float | None]) -> float | None:
    """The median of the runs that produced a figure (None if none did)."""
    known = sorted(v for v in values if v is not None)
    return statistics.median(known) if known else None


def to_json(results: Sequence[SetupResult]) -> list[dict[str, Any]]:
    return [{**asdict(r), "rate": r.rate, "kib_per_sa": r.kib_per_sa} for r in results]


# --- run alone ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bench.setup_rate`: the control-plane section alone (no iperf3 runs),
    on a site-to-site topology of its own, removed again at the end."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.setup_rate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--sa-counts", default="100,1000", help="SAs initiated at once (100,1000)")
    parser.add_argument(
        "--who",
        default="charon,lockgate",
        help="charon, lockgate and/or lockgate-mlkem768 (hybrid ML-KEM-768)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each case (1)")
    parser.add_argument("--json", type=Path, help="write the results as JSON")
    parser.add_argument(
        "--profile", type=Path, help="py-spy both lockgates into DIR (collapsed stacks)"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    who = [w for w in args.who.split(",") if w]
    counts = [int(n) for n in args.sa_counts.split(",") if n]
    if any(w != "charon" and w not in LOCKGATE_CASES for w in who) or args.repeat < 1 or not counts:
        parser.error(
            "--who takes charon, lockgate, lockgate-mlkem768; --repeat >= 1; some --sa-counts"
        )
    if os.geteuid() != 0 or shutil.which("swanctl") is None:
        print("bench.setup_rate needs root and strongSwan (swanctl, charon)")
        return 2
    lab = Lab()
    results: list[SetupResult] = []
    try:
        topo = build_site_to_site(lab)
        print(f"load before: {os.getloadavg()[0]:.2f} (1-min average)", flush=True)
        results = run_control_plane(
            topo, counts, lambda text: print(text, flush=True),
            who=who, repeat=args.repeat, profile=args.profile,
        )  # fmt: skip
        print(f"load after: {os.getloadavg()[0]:.2f} (1-min average)")
    except KeyboardInterrupt:
        print("interrupted: cleaning up")
    finally:
        lab.close()
    print(report(results))
    if args.json is not None:
        args.json.write_text(json.dumps(to_json(results), indent=1))
    return 0 if results and not any(r.error for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

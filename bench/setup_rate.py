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
reports how far it got.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench.measure import resident_kib
from bench.tunnels import PSK, Lockgate, TunnelError
from daemon.control import ControlClientError
from daemon.lab.netns import HarnessError, SiteToSite
from daemon.lab.strongswan import Charon, SwanChild, SwanConnection, SwanSecret

IKE_PROPOSAL = "aes128gcm16-prfsha256-x25519"
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
    busy_seconds: float | None = None
    """lockgate only: how long after the SIGHUP its control socket first answered (the
    reload and the initiations run on the event loop and hold it that long)."""
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


# --- lockgate ↔ lockgate ------------------------------------------------------------------


def _inner(side: str, i: int) -> str:
    return f"2001:db8:{side}::{i + 1:x}/128"


def _lockgate_responder(topo: SiteToSite, socket: str) -> str:
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
            f"ike_proposals = [{json.dumps(IKE_PROPOSAL)}]",
            f"esp_proposals = [{json.dumps(ESP_PROPOSAL)}]",
            'start = "wait"',
            "",
        ]
    )


def _lockgate_initiator(topo: SiteToSite, socket: str, count: int, start: str) -> str:
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
            f"ike_proposals = [{json.dumps(IKE_PROPOSAL)}]",
            f"esp_proposals = [{json.dumps(ESP_PROPOSAL)}]",
            f"start = {json.dumps(start)}",
            "",
        ]
    return "\n".join(lines)


def _poll_interval(elapsed: float) -> float:
    """How long to wait before asking lockgate's status again, ``elapsed`` seconds in.

    A full status of N connections is O(N) work on the daemon's event loop, the loop
    that is setting the SAs up: asking every 0.1 s slowed the very thing measured. A
    pause of 2% of the time so far (0.05 to 0.5 s) bounds the timing error to about
    2% while asking a few dozen times per case rather than hundreds."""
    return min(0.5, max(0.05, elapsed * 0.02))


def _lockgate_children(daemon: Lockgate) -> int:
    return len(daemon.sas())


def lockgate_case(topo: SiteToSite, count: int) -> SetupResult:
    """N IKE SAs from lockgate A to lockgate B, initiated at once by a reload."""
    result = SetupResult("lockgate", count)
    tmp = topo.lab.tmpdir
    sock_a, sock_b = tmp / f"sr-A-{count}.sock", tmp / f"sr-B-{count}.sock"
    responder = Lockgate(topo.gw_b, f"sr-B-{count}", _lockgate_responder(topo, str(sock_b)), sock_b)
    initiator = Lockgate(
        topo.gw_a, f"sr-A-{count}", _lockgate_initiator(topo, str(sock_a), count, "wait"), sock_a
    )
    try:
        responder.start()
        initiator.start(timeout=60)
        time.sleep(0.5)
        result.responder_kib_before = resident_kib(responder.pid())
        initiator.config.write_text(_lockgate_initiator(topo, str(sock_a), count, "initiate"))
        start = time.monotonic()
        if initiator.process is not None:
            initiator.process.signal(signal.SIGHUP)
        time.sleep(0.2)  # the handler runs on the loop's next turn; ask after it
        with contextlib.suppress(ControlClientError):
            initiator.status(timeout=_timeout(count))
            result.busy_seconds = time.monotonic() - start
        deadline = start + _timeout(count)
        while True:
            with contextlib.suppress(ControlClientError):
                result.established = _lockgate_children(initiator)
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


def _log_hint(*daemons: Lockgate) -> str:
    for daemon in daemons:
        errors = [line for line in daemon.log().splitlines() if "ERROR" in line or "WARN" in line]
        if errors:
            return f" ({daemon.name}: {errors[-1].strip()[:200]})"
    return ""


# --- the section ----------------------------------------------------------------------------


def run_control_plane(
    topo: SiteToSite, counts: Sequence[int], say: Callable[[str], None]
) -> list[SetupResult]:
    """Every count, charon first, then lockgate, on the (idle) data-plane topology."""
    results = []
    for count in counts:
        for case in (charon_case, lockgate_case):
            say(f"  {case.__name__.split('_')[0]} x {count} SAs ...")
            result = case(topo, count)
            say(f"    {_line(result)}")
            results.append(result)
    return results


def _line(r: SetupResult) -> str:
    rate = f"{r.rate:,.0f} setups/s" if r.rate is not None else "-"
    secs = f"{r.seconds:.2f}s" if r.seconds is not None else "-"
    kib = f"{r.kib_per_sa:.1f} KiB/SA" if r.kib_per_sa is not None else "-"
    err = f"  [{r.error}]" if r.error else ""
    if r.busy_seconds is not None:
        err = f"  (A busy {r.busy_seconds:.1f}s after SIGHUP)" + err
    return (
        f"{r.implementation:<9} {r.count:>5} {secs:>8} {rate:>16} {r.established:>6} "
        f"{r.child_sas:>6} {r.responder_sas:>6} {kib:>14}{err}"
    )


def report(results: Sequence[SetupResult]) -> str:
    """The control-plane table and the lockgate/charon ratios."""
    lines = [
        "Control plane: IKE SA + CHILD SA setups initiated at once (responder DoS protection off)",
        f"{'who':<9} {'SAs':>5} {'time':>8} {'rate':>16} {'IKE up':>6} {'CHILD':>6} "
        f"{'B has':>6} {'B memory':>14}",
    ]
    lines += [_line(r) for r in results]
    by = {(r.implementation, r.count): r for r in results}
    for count in sorted({r.count for r in results}):
        ours, base = by.get(("lockgate", count)), by.get(("charon", count))
        if ours is None or base is None:
            continue
        if ours.rate is not None and base.rate is not None:
            lines.append(f"lockgate/charon setup rate at {count}: {ours.rate / base.rate:.2f}x")
        if ours.kib_per_sa is not None and base.kib_per_sa:
            ratio = ours.kib_per_sa / base.kib_per_sa
            lines.append(f"lockgate/charon memory per SA at {count}: {ratio:.2f}x")
    return "\n".join(lines)


def to_json(results: Sequence[SetupResult]) -> list[dict[str, Any]]:
    return [{**asdict(r), "rate": r.rate, "kib_per_sa": r.kib_per_sa} for r in results]

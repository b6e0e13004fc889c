"""The four paths the throughput benchmark compares, on one site-to-site topology.

    host A ── gateway A ══ WAN ══ gateway B ── host B       (daemon.lab.netns)

- `NoTunnel`: the gateways route the sites to each other in clear (the ceiling).
- `SwanPair`: charon on both gateways, userspace ESP (kernel-libipsec, ESP in UDP).
- `LockgateSwan`: `lockgate daemon` on gateway A initiating, charon answering on B.
- `LockgatePair`: `lockgate daemon` on both gateways as configured by default
  (`encap = "auto"`): the two agree on ESP in UDP by Vendor ID (RFC 7296 §2.23), the
  path with UDP GSO and GRO, and the one strongSwan's kernel-libipsec always takes.
- `LockgatePairRaw`: the same with `encap = "nat"`: raw ESP (IP protocol 50), what
  lockgate sends to a peer that is not a lockgate when no NAT is in the way.
- `LockgatePairScraped`: `LockgatePair` with /metrics scraped every second on both
  gateways (only with `bench.throughput --scrape`).

Each is started on the shared topology, measured, and stopped (by PID) before the next
one starts, so they never share a port or a route. `start` returns once a ping
crosses the tunnel; a setup that fails raises `TunnelError` with the logs' tail.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from daemon.control import ControlClientError, request
from daemon.lab.netns import HarnessError, Namespace, Process, SiteToSite, wait_for_ping
from testkit.strongswan import Charon, SwanChild, SwanConnection, SwanSecret

PSK = "lockgate-bench-psk-NOT-SECRET-0123456789"
METRICS_LISTEN = "127.0.0.1:9273"
IKE_PROPOSAL = "aes128gcm16-prfsha256-x25519"
LOCKGATE_IFACE = "lgbench0"
ESTABLISH_TIMEOUT = 30.0
CHARON_LOG_LEVELS = {"default": 1, "ike": 1, "cfg": 1}


class TunnelError(RuntimeError):
    """A tunnel did not come up; the message carries the daemons' log tails."""


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


class Tunnel(ABC):
    """One path between the sites: `start`, measure, `stop`."""

    label = "?"
    """How the table names it."""

    def __init__(self, topo: SiteToSite, suite: str | None) -> None:
        self.topo = topo
        self.suite = suite

    @abstractmethod
    def start(self) -> None:
        """Bring the path up; return once a ping crosses it."""

    @abstractmethod
    def stop(self) -> None:
        """Stop what `start` started (by PID) and undo its routes."""

    def daemons(self) -> dict[str, int]:
        """PIDs of the processes doing the ESP work, by role ("A", "B")."""
        return {}

    def charons(self) -> list[int]:
        """The PIDs in `daemons` that are strongSwan's (the others are lockgate's)."""
        return []

    def framing(self) -> str:
        """How ESP travels on the WAN ("udp", "esp", or "" without a tunnel)."""
        return ""

    def wait_for_traffic(self) -> None:
        try:
            wait_for_ping(self.topo.host_a, self.topo.site_b.host4, timeout=ESTABLISH_TIMEOUT)
        except HarnessError as exc:
            raise TunnelError(f"{self.label}: no ping across the tunnel: {exc}") from None


class NoTunnel(Tunnel):
    """The gateways forward between the sites in clear."""

    label = "no tunnel"

    def start(self) -> None:
        self.topo.route_in_clear()
        self.wait_for_traffic()

    def stop(self) -> None:
        topo = self.topo
        topo.gw_a.ip("route", "del", topo.site_b.subnet4, check=False)
        topo.gw_a.ip("-6", "route", "del", topo.site_b.subnet6, check=False)
        topo.gw_b.ip("route", "del", topo.site_a.subnet4, check=False)
        topo.gw_b.ip("-6", "route", "del", topo.site_a.subnet6, check=False)


# --- strongSwan -----------------------------------------------------------------------


def swan_connection(topo: SiteToSite, side: str, suite: str) -> SwanConnection:
    """charon's site-to-site connection on gateway `side` ("A" or "B")."""
    a, b = topo.gw_a_public4, topo.gw_b_wan4
    me, peer = (topo.gw_a_wan4, b) if side == "A" else (b, a)
    my_id, peer_id = (a, b) if side == "A" else (b, a)
    mine, theirs = (topo.site_a, topo.site_b) if side == "A" else (topo.site_b, topo.site_a)
    child = SwanChild("bench", [mine.subnet4], [theirs.subnet4], esp_proposals=suite)
    return SwanConnection(
        name="s2s",
        local_addrs=me,
        remote_addrs=peer,
        local_id=my_id,
        remote_id=peer_id,
        children=[child],
        proposals=IKE_PROPOSAL,
    )


def start_charon(topo: SiteToSite, ns: Namespace, side: str, suite: str) -> Charon:
    """charon on one gateway, loaded with the bench connection (not yet initiated)."""
    name = f"{side}-{suite}-{int(time.monotonic() * 1000) % 100000}"
    charon = Charon(ns, name, log_levels=CHARON_LOG_LEVELS)
    charon.start()
    # charon's UDP sockets get lockgate's buffer size: with the kernel's 208 KiB
    # default its receiving side dropped ESP under load and TCP backed off.
    charon.grow_socket_buffers()
    secret = SwanSecret("bench", [topo.gw_a_public4, topo.gw_b_wan4], PSK)
    charon.load([swan_connection(topo, side, suite)], [secret])
    return charon


class SwanPair(Tunnel):
    """charon ↔ charon, both with kernel-libipsec (userspace ESP over TUN)."""

    label = "strongSwan ↔ strongSwan"

    def __init__(self, topo: SiteToSite, suite: str | None) -> None:
        super().__init__(topo, suite)
        self.charon_by_side: dict[str, Charon] = {}

    def start(self) -> None:
        suite = self.suite or "aes128gcm16"
        self.charon_by_side["B"] = start_charon(self.topo, self.topo.gw_b, "B", suite)
        self.charon_by_side["A"] = start_charon(self.topo, self.topo.gw_a, "A", suite)
        try:
            self.charon_by_side["A"].initiate("bench", ike="s2s", timeout=ESTABLISH_TIMEOUT)
            self.charon_by_side["B"].wait_for_child("bench", timeout=ESTABLISH_TIMEOUT)
        except HarnessError as exc:
            raise TunnelError(f"{self.label}: {str(exc)[-3000:]}") from None
        self.wait_for_traffic()

    def stop(self) -> None:
        for charon in self.charon_by_side.values():
            charon.stop()

    def daemons(self) -> dict[str, int]:
        return {side: charon.pid() for side, charon in self.charon_by_side.items()}

    def charons(self) -> list[int]:
        return list(self.daemons().values())

    def framing(self) -> str:
        return "udp"  # kernel-libipsec always encapsulates (see reference/strongswan.md)


# --- lockgate ----------------------------------------------------------------------------


def lockgate_config(
    topo: SiteToSite,
    side: str,
    suite: str,
    *,
    socket: Path,
    start: str,
    encap: str = "auto",
    metrics: bool = False,
    workers: int = 1,
) -> str:
    """`lockgate daemon`'s TOML for gateway `side` ("A" or "B") of the topology;
    ``encap`` is the connection's `encap` key ("auto", "force" or "nat"); with
    ``metrics``, /metrics is served at `METRICS_LISTEN` in the gateway's namespace;
    ``workers`` is `[gateway] workers`."""
    a, b = topo.gw_a_public4, topo.gw_b_wan4
    me, peer = (topo.gw_a_wan4, b) if side == "A" else (b, a)
    my_id, peer_id = (a, b) if side == "A" else (b, a)
    mine, theirs = (topo.site_a, topo.site_b) if side == "A" else (topo.site_b, topo.site_a)
    return "\n".join(
        [
            "[gateway]",
            f"addresses = [{json.dumps(me)}]",
            f"id = {json.dumps(my_id)}",
            f"interface = {json.dumps(LOCKGATE_IFACE)}",
            f"control_socket = {json.dumps(str(socket))}",
            'log_level = "warning"',
            f"workers = {workers}",
            "",
            "[peers.far]",
            f"address = {json.dumps(peer)}",
            f"id = {json.dumps(peer_id)}",
            'auth = "psk"',
            f"psk = {json.dumps(PSK)}",
            "",
            "[connections.bench]",
            'peer = "far"',
            f"local_subnets = [{json.dumps(mine.subnet4)}]",
            f"remote_subnets = [{json.dumps(theirs.subnet4)}]",
            f"ike_proposals = [{json.dumps(IKE_PROPOSAL)}]",
            f"esp_proposals = [{json.dumps(suite)}]",
            f"start = {json.dumps(start)}",
            f"encap = {json.dumps(encap)}",
            "",
            *(["[metrics]", f"listen = {json.dumps(METRICS_LISTEN)}", ""] if metrics else []),
        ]
    )


class Lockgate:
    """`lockgate daemon -c FILE` in a namespace, with its own control socket."""

    def __init__(
        self, ns: Namespace, name: str, config_text: str, socket: Path, log_level: str = "warning"
    ) -> None:
        self.ns = ns
        self.log_level = log_level
        self.name = name
        tmp = ns.lab.tmpdir
        self.config = tmp / f"{name}.toml"
        self.config.write_text(config_text)
        self.config.chmod(0o600)  # it holds a PSK: lockgate refuses a readable one
        self.socket = socket
        self.log_path = tmp / f"{name}.log"
        self.process: Process | None = None

    def start(self, timeout: float = 15.0) -> None:
        args = [sys.executable, "-m", "daemon.cli", "-s", str(self.socket), "daemon",
                "-c", str(self.config), "--log-level", self.log_level]  # fmt: skip
        self.process = self.ns.spawn(args, name=self.name, log_path=self.log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.process.alive():
                raise TunnelError(f"lockgate {self.name} exited:\n{_tail(self.process.log())}")
            with contextlib.suppress(ControlClientError):
                self.status()
                return
            time.sleep(0.1)
        raise TunnelError(f"lockgate {self.name} did not start:\n{_tail(self.log())}")

    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        result = request(str(self.socket), {"command": "status"}, timeout=timeout)
        if not isinstance(result, dict):
            raise TunnelError(f"lockgate {self.name}: malformed status {result!r}")
        return result

    def sas(self) -> list[dict[str, Any]]:
        return list(self.status().get("sas", []))

    def wait_for_sa(self, timeout: float = ESTABLISH_TIMEOUT, count: int = 1) -> dict[str, Any]:
        """The first CHILD SA, once there are `count` (one per worker between two
        lockgates with workers)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and not self.process.alive():
                raise TunnelError(f"lockgate {self.name} exited:\n{_tail(self.log())}")
            with contextlib.suppress(ControlClientError):
                sas = self.sas()
                if len(sas) >= count:
                    return sas[0]
            time.sleep(0.1)
        raise TunnelError(f"lockgate {self.name}: no CHILD SA in {timeout:g}s\n{_tail(self.log())}")

    def pid(self) -> int:
        if self.process is None:
            raise TunnelError(f"lockgate {self.name} not started")
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=10)

    def log(self) -> str:
        return self.process.log() if self.process is not None else ""


def _start_lockgate(
    topo: SiteToSite,
    side: str,
    suite: str,
    start: str,
    encap: str = "auto",
    *,
    metrics: bool = False,
    workers: int = 1,
) -> Lockgate:
    ns = topo.gw_a if side == "A" else topo.gw_b
    name = f"lockgate-{side}-{suite}-{encap}{'-metrics' if metrics else ''}-w{workers}"
    socket = topo.lab.tmpdir / f"{name}.sock"
    config = lockgate_config(
        topo, side, suite, socket=socket, start=start, encap=encap, metrics=metrics,
        workers=workers,
    )  # fmt: skip
    daemon = Lockgate(ns, name, config, socket)
    daemon.start()
    return daemon


class LockgateSwan(Tunnel):
    """lockgate on gateway A initiates; charon (userspace ESP) answers on gateway B."""

    label = "lockgate ↔ strongSwan"

    def __init__(self, topo: SiteToSite, suite: str | None) -> None:
        super().__init__(topo, suite)
        self.charon: Charon | None = None
        self.lockgate: Lockgate | None = None
        self._framing = ""

    def start(self) -> None:
        suite = self.suite or "aes128gcm16"
        self.charon = start_charon(self.topo, self.topo.gw_b, "B", suite)
        self.lockgate = _start_lockgate(self.topo, "A", suite, "initiate")
        try:
            sa = self.lockgate.wait_for_sa()
            self.charon.wait_for_child("bench", timeout=ESTABLISH_TIMEOUT)
        except HarnessError as exc:
            raise TunnelError(f"{self.label}: {str(exc)[-3000:]}") from None
        self._framing = str(sa.get("encap", ""))
        self.wait_for_traffic()

    def stop(self) -> None:
        if self.lockgate is not None:
            self.lockgate.stop()
        if self.charon is not None:
            self.charon.stop()

    def daemons(self) -> dict[str, int]:
        out = {}
        if self.lockgate is not None and self.lockgate.process is not None:
            out["A"] = self.lockgate.pid()
        if self.charon is not None and self.charon.process is not None:
            out["B"] = self.charon.pid()
        return out

    def charons(self) -> list[int]:
        charon = self.charon
        return [charon.pid()] if charon is not None and charon.process is not None else []

    def framing(self) -> str:
        return self._framing

    def wait_for_traffic(self) -> None:
        try:
            super().wait_for_traffic()
        except TunnelError as exc:
            logs = self.lockgate.log() if self.lockgate is not None else ""
            raise TunnelError(f"{exc}\n  lockgate A:\n{_tail(logs)}") from None


class LockgatePair(Tunnel):
    """lockgate on both gateways: A initiates, B answers."""

    label = "lockgate ↔ lockgate"
    encap = "auto"
    """The connection's `encap` key: "auto", the default, gives ESP in UDP between two
    lockgates."""
    metrics = False
    """Serve /metrics (`[metrics]`) on both gateways."""
    workers = 1
    """`[gateway] workers` on both gateways."""

    def __init__(self, topo: SiteToSite, suite: str | None) -> None:
        super().__init__(topo, suite)
        self.daemon: dict[str, Lockgate] = {}
        self._framing = ""

    def start(self) -> None:
        suite = self.suite or "aes128gcm16"
        self.daemon["B"] = _start_lockgate(
            self.topo, "B", suite, "wait", self.encap, metrics=self.metrics, workers=self.workers
        )
        self.daemon["A"] = _start_lockgate(
            self.topo, "A", suite, "initiate", self.encap, metrics=self.metrics,
            workers=self.workers,
        )  # fmt: skip
        sa = self.daemon["A"].wait_for_sa(count=self.workers)
        self.daemon["B"].wait_for_sa(count=self.workers)
        self._framing = str(sa.get("encap", ""))
        try:
            self.wait_for_traffic()
        except TunnelError as exc:
            tails = "\n".join(
                f"  lockgate {side}:\n{_tail(d.log())}" for side, d in self.daemon.items()
            )
            raise TunnelError(f"{exc}\n{tails}") from None

    def stop(self) -> None:
        for daemon in self.daemon.values():
            daemon.stop()

    def daemons(self) -> dict[str, int]:
        pids = {s: d.pid() for s, d in self.daemon.items() if d.process is not None}
        for side, daemon in self.daemon.items():
            # Workers are processes of their own: their CPU time counts too.
            for worker in daemon.status().get("workers", []) if self.workers > 1 else ():
                pids[f"{side}-w{worker['index']}"] = int(worker["pid"])
        return pids

    def framing(self) -> str:
        return self._framing


class LockgatePairRaw(LockgatePair):
    """lockgate on both gateways with raw ESP (`encap = "nat"` on this NAT-free
    topology): one system call per packet each way, no GSO or GRO."""

    label = "lockgate ↔ lockgate raw"
    encap = "nat"


class LockgatePairWorkers(LockgatePair):
    """`LockgatePair` with `[gateway] workers = 2` on both gateways: a CHILD SA pair
    per worker (RFC 9611), inbound ESP steered by SPI, the TUN's flows spread over
    its queues (only with `bench.throughput --cases ...,lockgate-lockgate-workers`)."""

    label = "lockgate ↔ lockgate, 2 workers"
    workers = 2


SCRAPER = """
import sys, time, urllib.request
url, every = sys.argv[1], float(sys.argv[2])
while True:
    started = time.monotonic()
    try:
        urllib.request.urlopen(url, timeout=5).read()
    except OSError as exc:
        print("scrape failed:", exc, flush=True)
    time.sleep(max(0.0, every - (time.monotonic() - started)))
"""
"""A Prometheus stand-in: GET the URL every `every` seconds until stopped."""


class LockgatePairScraped(LockgatePair):
    """`LockgatePair` with /metrics served on both gateways and fetched every second
    on each while it is measured, as Prometheus would: what scraping costs the data
    plane (`python -m bench.throughput --scrape`)."""

    label = "lockgate ↔ lockgate scraped"
    metrics = True

    def __init__(self, topo: SiteToSite, suite: str | None) -> None:
        super().__init__(topo, suite)
        self.scrapers: list[Process] = []

    def start(self) -> None:
        super().start()
        url = f"http://{METRICS_LISTEN}/metrics"
        for side, ns in (("A", self.topo.gw_a), ("B", self.topo.gw_b)):
            args = [sys.executable, "-c", SCRAPER, url, "1"]
            log_path = ns.lab.tmpdir / f"scraper-{side}.log"
            self.scrapers.append(ns.spawn(args, name=f"scraper-{side}", log_path=log_path))

    def stop(self) -> None:
        for scraper in self.scrapers:
            scraper.stop(timeout=5)
        self.scrapers = []
        super().stop()


CASES: dict[str, type[Tunnel]] = {
    "none": NoTunnel,
    "swan-swan": SwanPair,
    "lockgate-swan": LockgateSwan,
    "lockgate-lockgate": LockgatePair,
    "lockgate-lockgate-raw": LockgatePairRaw,
    "lockgate-lockgate-scraped": LockgatePairScraped,
    "lockgate-lockgate-workers": LockgatePairWorkers,
}
"""The benchmark's cases, in the order it runs them."""

"""BIRD 2 in a lab namespace: start it by PID, ask it over its control socket.

lockgate runs no BGP code. Route-based connections give each tunnel an interface
that is up only while its CHILD SA is, and a routing daemon (BIRD here, Debian's `bird2`)
peers over the tunnels' inside addresses. `lockgate demo --bgp` and the tests run one
BIRD per gateway namespace with this module:

- `start_bird(ns, config, workdir, name)` writes nothing but its own control socket
  and log in ``workdir``; it runs `bird -f -c CONFIG -s SOCKET` in the namespace as a
  `Lab` process (stopped by PID with the lab) and waits until `birdc` answers.
- `Bird.protocols()` / `Bird.wait_established(...)` read `show protocols`.
- `Bird.routes()` reads `show route`: prefix -> the protocols it was learned from,
  best first. `Bird.wait_route(prefix, present=...)` waits for one to come or go.

The parsers read BIRD 2.0's plain `birdc` output, which is meant for people: they
take only the columns they need, and say what they saw when a wait times out.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from daemon.lab.netns import HarnessError, Namespace, Process

BIRD_TIMEOUT = 20.0


def bird_available() -> bool:
    """True if both `bird` and `birdc` are installed (Debian: bird2)."""
    return shutil.which("bird") is not None and shutil.which("birdc") is not None


@dataclass(frozen=True)
class ProtocolState:
    """One line of `birdc show protocols`."""

    name: str
    proto: str
    state: str
    """"up", "start", "down", ..."""
    info: str
    """For BGP: "Established", "Active", "Connect", ... (may be empty)."""


@dataclass(frozen=True)
class Route:
    """One route of `birdc show route`: what BIRD knows, not what the kernel uses."""

    prefix: str
    protocol: str
    best: bool
    via: tuple[str, ...]
    """The next hops ("198.51.100.254 on lg-cloud"), empty for a device route."""


_HEADER = re.compile(r"^Name\s+Proto\s+Table\s+State\s+Since\s+Info")
_ROUTE = re.compile(
    r"^(?P<prefix>\S+/\d+)?\s+(?P<kind>unicast|unreachable|blackhole|prohibited)\s+"
    r"\[(?P<proto>\S+)\s[^\]]*\](?P<rest>.*)$"
)
_VIA = re.compile(r"^\s+(?:via\s+(?P<via>.+)|dev\s+(?P<dev>\S+))\s*$")


def parse_protocols(text: str) -> dict[str, ProtocolState]:
    """`show protocols` output -> name -> state (the header and banner are skipped)."""
    found: dict[str, ProtocolState] = {}
    seen_header = False
    for line in text.splitlines():
        if _HEADER.match(line):
            seen_header = True
            continue
        if not seen_header or not line.strip():
            continue
        # Name Proto Table State Since(date and/or time: one or two words) Info...
        fields = line.split()
        if len(fields) < 5:
            continue
        name, proto, _table, state = fields[:4]
        rest = fields[4:]
        # "Since" is a time ("12:00:01.123") or a date and a time.
        while rest and re.match(r"^[\d:.\-]+$", rest[0]):
            rest = rest[1:]
        found[name] = ProtocolState(name, proto, state, " ".join(rest))
    return found


def parse_routes(text: str) -> list[Route]:
    """`show route` output -> its routes (every table printed, in order)."""
    routes: list[Route] = []
    prefix = ""
    for line in text.splitlines():
        if line.startswith("Table "):
            prefix = ""
            continue
        match = _ROUTE.match(line)
        if match:
            # A route line names its prefix; the further routes for it leave it out.
            prefix = match["prefix"] or prefix
            best = " * " in f"{match['rest']} "
            routes.append(Route(prefix, match["proto"], best, ()))
            continue
        via = _VIA.match(line)
        if via and routes:
            hop = (via["via"] or f"dev {via['dev']}").strip()
            last = routes[-1]
            routes[-1] = Route(last.prefix, last.protocol, last.best, (*last.via, hop))
    return routes


@dataclass
class Bird:
    """A running BIRD: its namespace, process and control socket."""

    ns: Namespace
    proc: Process
    socket: Path
    config: Path
    name: str

    def birdc(self, *command: str, timeout: float = 10.0) -> str:
        """Run one `birdc` command against this BIRD, in its namespace."""
        if not self.proc.alive():
            raise HarnessError(f"bird {self.name} exited:\n{self.log()}")
        proc = self.ns.run("birdc", "-s", str(self.socket), *command, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise HarnessError(
                f"birdc {' '.join(command)} ({self.name}) failed: {proc.stdout}{proc.stderr}"
            )
        return proc.stdout

    def protocols(self) -> dict[str, ProtocolState]:
        return parse_protocols(self.birdc("show", "protocols"))

    def established(self, protocol: str) -> bool:
        state = self.protocols().get(protocol)
        return state is not None and state.info.startswith("Established")

    def wait_established(self, *protocols: str, timeout: float = BIRD_TIMEOUT) -> float:
        """Wait until every named BGP session is Established; seconds waited."""
        start = time.monotonic()
        while True:
            states = self.protocols()
            if all(p in states and states[p].info.startswith("Established") for p in protocols):
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise HarnessError(
                    f"BGP sessions {', '.join(protocols)} of {self.name} not Established "
                    f"within {timeout}s:\n{self.birdc('show', 'protocols')}\n{self.log()}"
                )
            time.sleep(0.2)

    def routes(self, *filters: str) -> list[Route]:
        """`show route [filters]`, parsed (e.g. `routes("protocol", "peer1")`)."""
        return parse_routes(self.birdc("show", "route", *filters))

    def learned(self) -> dict[str, list[Route]]:
        """BIRD's routes by prefix, best first, for the prefixes BGP brought."""
        table: dict[str, list[Route]] = {}
        for route in self.routes():
            table.setdefault(route.prefix, []).append(route)
        protos = self.protocols()
        return {
            prefix: sorted(rs, key=lambda r: not r.best)
            for prefix, rs in table.items()
            if any(protos.get(r.protocol, _NONE).proto == "BGP" for r in rs)
        }

    def wait_route(
        self,
        prefix: str,
        *,
        present: bool = True,
        via: tuple[str, ...] = (),
        timeout: float = BIRD_TIMEOUT,
    ) -> float:
        """Wait until BIRD has (or no longer has) a route for ``prefix``; seconds waited.

        With ``via``, wait until every named protocol has brought its route for
        ``prefix``: BGP sessions come up one by one, and the first route to arrive
        is not yet the full table.
        """
        start = time.monotonic()
        while True:
            routes = [r for r in self.routes() if r.prefix == prefix]
            have = bool(routes) and set(via) <= {r.protocol for r in routes}
            if have == present:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                what = "learn" if present else "withdraw"
                raise HarnessError(
                    f"{self.name} did not {what} {prefix} within {timeout}s:\n"
                    f"{self.birdc('show', 'route')}\n{self.birdc('show', 'protocols')}"
                )
            time.sleep(0.2)

    def log(self) -> str:
        return self.proc.log()

    def stop(self) -> None:
        """SIGTERM by PID: BIRD withdraws its kernel routes and exits."""
        self.proc.stop()


_NONE = ProtocolState("", "", "", "")


def start_bird(
    ns: Namespace, config: Path, workdir: Path, name: str, *, timeout: float = BIRD_TIMEOUT
) -> Bird:
    """Run `bird -f -c config -s workdir/name.ctl` in ``ns``; return once it answers.

    The configuration is checked first (`bird -p`), so a mistake in it is reported
    with BIRD's own message rather than as a daemon that never answers.
    """
    if not bird_available():
        raise HarnessError("BIRD is not installed (Debian: apt-get install bird2)")
    socket = workdir / f"{name}.ctl"
    check = ns.run("bird", "-p", "-c", str(config), check=False)
    if check.returncode != 0:
        raise HarnessError(f"{config}: BIRD refuses it: {check.stdout}{check.stderr}".strip())
    proc = ns.spawn(
        ["bird", "-f", "-c", str(config), "-s", str(socket), "-P", str(workdir / f"{name}.pid")],
        name=f"bird-{name}",
        log_path=workdir / f"{name}.log",
    )
    bird = Bird(ns, proc, socket, config, name)
    deadline = time.monotonic() + timeout
    while True:
        if not proc.alive():
            raise HarnessError(f"bird {name} exited at start:\n{proc.log()}")
        if socket.exists():
            probe = ns.run("birdc", "-s", str(socket), "show", "status", check=False)
            if probe.returncode == 0 and "Daemon is up" in probe.stdout:
                return bird
        if time.monotonic() > deadline:
            raise HarnessError(f"bird {name} did not answer within {timeout}s:\n{proc.log()}")
        time.sleep(0.1)

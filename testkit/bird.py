"""BIRD 2 configurations for the route-based tests, and the lab's BIRD runner.

Running and querying BIRD (`start_bird`, `Bird`, the `birdc` parsers) ships in
`daemon.lab.bird`, because `lockgate demo --bgp` needs it; this module adds what
only tests need: `bird_config`, which writes an eBGP speaker with any number of
sessions, the LAN interfaces it announces, a local preference per session (to make
one of two tunnels the preferred one) and ECMP into the kernel on request.

The shape is the one of `conf/examples/bird-*.conf` (see there for why each part is
needed): eBGP in BIRD 2 exchanges nothing without explicit import and export filters;
each end announces only its directly connected LANs (`source = RTS_DEVICE`), so a
route learned over one tunnel is never passed on over another; the kernel protocols
install only what BGP learned.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from daemon.lab.bird import (
    BIRD_TIMEOUT,
    Bird,
    ProtocolState,
    Route,
    bird_available,
    parse_protocols,
    parse_routes,
    start_bird,
)
from daemon.lab.netns import Namespace

__all__ = [
    "BIRD_TIMEOUT",
    "Bird",
    "ProtocolState",
    "Route",
    "Session",
    "bird_available",
    "bird_config",
    "parse_protocols",
    "parse_routes",
    "run_bird",
    "start_bird",
]


@dataclass(frozen=True)
class Session:
    """One eBGP session: over a tunnel's inside addresses (or any directly connected
    link). The address family of ``local`` picks the channel (ipv4 or ipv6)."""

    name: str
    local: str
    local_as: int
    neighbor: str
    neighbor_as: int
    local_pref: int = 100
    """Given to every route learned over this session: the highest wins (BGP's first
    tie-breaker), so 200 on one session and 100 on another makes a preferred tunnel."""

    @property
    def channel(self) -> str:
        return "ipv6" if ipaddress.ip_address(self.local).version == 6 else "ipv4"


def bird_config(
    router_id: str,
    lan_interfaces: Sequence[str],
    sessions: Sequence[Session],
    *,
    hold: int = 3,
    keepalive: int = 1,
    merge_paths: bool = False,
) -> str:
    """A BIRD 2 configuration: announce the LANs on ``lan_interfaces`` (patterns such
    as "lan0" or "net*"), learn the far ones over ``sessions``, install them.

    ``hold``/``keepalive``: the BGP timers (3 s is BIRD's smallest hold time). The
    tunnel interface going down ends a session at once anyway; the hold time only
    bounds the case where the interface stays up but nothing gets through.
    """
    interfaces = ", ".join(f'"{name}"' for name in lan_interfaces)
    merge = " merge paths on;" if merge_paths else ""
    lines = [
        f"router id {router_id};",
        "log stderr all;",
        "protocol device { scan time 1; }",
        f"protocol direct {{ ipv4; ipv6; interface {interfaces}; }}",
        "protocol kernel { ipv4 { import none; export where source = RTS_BGP; };"
        f" scan time 1;{merge} }}",
        "protocol kernel { ipv6 { import none; export where source = RTS_BGP; };"
        f" scan time 1;{merge} }}",
    ]
    for s in sessions:
        lines += [
            f"protocol bgp {s.name} {{",
            f"  local {s.local} as {s.local_as};",
            f"  neighbor {s.neighbor} as {s.neighbor_as};",
            f"  hold time {hold}; keepalive time {keepalive}; connect retry time 1;",
            "  connect delay time 1; error wait time 1, 2;",
            f"  {s.channel} {{",
            f"    import filter {{ bgp_local_pref = {s.local_pref}; accept; }};",
            "    export where source = RTS_DEVICE;",
            "  };",
            "}",
        ]
    return "\n".join(lines) + "\n"


def run_bird(ns: Namespace, workdir: Path, name: str, text: str) -> Bird:
    """Write ``text`` as ``workdir/name.conf`` and start BIRD on it in ``ns``."""
    path = workdir / f"{name}.conf"
    path.write_text(text)
    return start_bird(ns, path, workdir, name)

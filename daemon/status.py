"""`lockgate status`: what the running gateway reports, and how people read it.

The daemon side (`gateway_status`, `status_summary`, `status_line`) turns the
gateway's peers, connections, IKE SAs and data plane into the JSON the control socket
sends; the client side (`format_status`, `format_summary`, `format_sa`) prints that
JSON for the `lockgate` command and the demo. Both halves live here so that a field
added to one is found beside the other.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.worker_gateway import status_totals

if TYPE_CHECKING:
    from conf.model import ConnectionConfig
    from daemon.gateway import Gateway

VERSION = "0.1.0"


# ---- from the gateway ----------------------------------------------------------------


def gateway_status(gateway: Gateway) -> dict[str, Any]:
    """Everything `lockgate status` shows, JSON-ready."""
    now = time.monotonic()
    if gateway.plane is None:
        plane: dict[str, Any] = {"sas": [], "drops": {}}
    elif gateway.workers is not None:
        gateway.mirror_counters()
        plane = status_totals(gateway.plane, gateway.workers)
    else:
        plane = gateway.plane.status()
    connections = []
    # The IKE SAs of a peer and whether a connection is up come from indexes, so
    # the status of N connections costs O(N), not a scan of every SA per connection
    # (a thousand-SA gateway answered status polls in seconds).
    for name, state in gateway.connections.items():
        peer = gateway.peers[state.peer]
        ikes = gateway.ike_sa_infos(state.peer)
        if gateway.is_up(name):
            phase = "up"
        elif gateway.ike_sa_count(state.peer) > len(ikes):
            # The core holds an IKE SA with the peer that it has not announced yet.
            phase = "connecting"
        elif peer.retry is not None and state.wanted:
            phase = "waiting to retry"
        elif state.config.start == "trap" or state.trapped:
            phase = "trap (on traffic)"
        elif state.config.start == "wait":
            phase = "waiting for the peer"
        else:
            phase = "down"
        remote_id = peer.config.remote_id
        conf = gateway.config.connections.get(name) if gateway.config is not None else None
        mode = conf.mode if conf is not None else "policy"
        link = gateway.route_links.links.get(name)
        connections.append(
            {
                "name": name,
                "peer": state.peer,
                "state": phase,
                "start": state.config.start,
                # Route mode: the connection's own interface, up while a CHILD SA is;
                # policy mode: the gateway's TUN.
                "mode": mode,
                "interface": _interface(gateway, conf),
                "interface_up": link.up if link is not None else None,
                "remote": peer.config.remote_address or "%any",
                "remote_id": str(remote_id) if remote_id is not None else "%any",
                "local_ts": [str(ts) for ts in state.config.local_ts],
                "remote_ts": [str(ts) for ts in state.config.remote_ts],
                "last_error": state.last_error or peer.last_error,
                "ike_sas": [
                    {
                        "id": info.event.ike_sa_id,
                        "spi_i": f"{info.event.spi_i:016x}",
                        "spi_r": f"{info.event.spi_r:016x}",
                        "rekeyed_from": info.rekeyed_from,
                        "suite": info.event.suite,
                        "quantum_safe": info.event.quantum_safe,
                        "local": f"{info.event.local[0]}[{info.event.local[1]}]",
                        "remote": f"{info.event.remote[0]}[{info.event.remote[1]}]",
                        "remote_id": info.event.remote_id,
                        "initiator": info.event.initiator,
                        "nat": info.event.nat_local or info.event.nat_remote,
                        "udp_encap": info.event.udp_encap_reason,
                        "ppk_used": info.event.ppk_used,
                        "age": round(now - info.established_at, 1),
                    }
                    for info in ikes
                ],
            }
        )
    return {
        "daemon": {
            "version": VERSION,
            "pid": os.getpid(),
            "uptime": round(now - gateway.started_at, 1),
            "config": str(Path(gateway.config_path).resolve()),
            "interface": gateway.tun.name if gateway.tun is not None else None,
            # What keeps the host from carrying the connections' traffic (forwarding).
            "warnings": gateway.forwarding_warnings(),
        },
        "connections": connections,
        **plane,
        # Received IKE datagrams dropped by the endpoint, by reason.
        "ike_drops": (
            {str(reason): count for reason, count in sorted(gateway.endpoint.drops.items())}
            if gateway.endpoint is not None
            else {}
        ),
        # The point-to-cloud servers, each with its client count (`daemon.ssl_vpn`).
        "remote_access": gateway.remote_access.status()
        + ([gateway.ikev2_ra.status()] if gateway.ikev2_ra is not None else []),
    }


def _interface(gateway: Gateway, conf: ConnectionConfig | None) -> str | None:
    """The TUN a connection's traffic enters: its own in route mode, else the
    gateway's."""
    if conf is not None and conf.mode == "route":
        return conf.interface
    return gateway.tun.name if gateway.tun is not None else None


def status_summary(gateway: Gateway) -> dict[str, Any]:
    """Counts only (`{"command": "status", "summary": true}`): what a monitor or a
    benchmark polls while thousands of SAs come up, at O(1) cost instead of the
    full status's O(N) (which would slow the very event loop setting them up)."""
    endpoint, plane = gateway.endpoint, gateway.plane
    return {
        "daemon": {"version": VERSION, "pid": os.getpid()},
        "connections": len(gateway.connections),
        "ike_sas": len(gateway.ike_sas),
        "ike_sas_in_core": endpoint.ike_sa_total() if endpoint is not None else 0,
        "child_sas": len(plane.entries) if plane is not None else 0,
        "reloads": gateway.reloads,
    }


def status_line(gateway: Gateway) -> str:
    """The one-line status systemd shows (sd_notify STATUS=)."""
    sas = len(gateway.plane.entries) if gateway.plane is not None else 0
    return f"{len(gateway.connections)} connection(s), {sas} CHILD SA(s) installed"


# ---- for people (the `lockgate` command and the demo) ------------------------------


def format_size(octets: int) -> str:
    """Bytes for people: "512 B", "1.5 MiB"."""
    value = float(octets)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{octets} B"  # pragma: no cover - the loop always returns


def format_age(seconds: float) -> str:
    """A duration for people: "42s", "3m05s", "2h10m"."""
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _drops(drops: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in sorted(drops.items())) or "none"


def _mode(conn: dict[str, Any]) -> str:
    """ ", route mode on lg-vpc (up)": a connection's mode and interface."""
    mode = conn.get("mode")
    if mode is None:
        return ""
    text = f", {mode} mode"
    if conn.get("interface"):
        text += f" on {conn['interface']}"
    if conn.get("interface_up") is not None:
        text += " (up)" if conn["interface_up"] else " (down)"
    return text


def format_summary(summary: dict[str, Any]) -> str:
    """`lockgate status --summary` for people: one line of counts."""
    daemon = summary.get("daemon", {})
    return (
        f"lockgate {daemon.get('version', '?')} pid {daemon.get('pid', '?')}: "
        f"{summary.get('connections', 0)} connection(s), {summary.get('ike_sas', 0)} IKE SA(s), "
        f"{summary.get('child_sas', 0)} CHILD SA(s)\n"
    )


def format_status(status: dict[str, Any]) -> str:
    """`lockgate status` for people: connections, their SAs and the drop counters."""
    lines: list[str] = []
    daemon = status.get("daemon", {})
    if daemon:
        lines.append(
            f"lockgate {daemon.get('version', '')}: pid {daemon.get('pid')}, "
            f"up {format_age(daemon.get('uptime', 0))}, config {daemon.get('config', '?')}"
        )
        lines.extend(f"  warning: {warning}" for warning in daemon.get("warnings", []))
    connections = status.get("connections", [])
    lines.append(f"Connections ({len(connections)}):")
    for conn in connections:
        lines.append(
            f"  {conn['name']}: {conn.get('state', '?')}, peer {conn.get('remote', '?')}"
            f" ({conn.get('remote_id', '?')}), start {conn.get('start', '?')}" + _mode(conn)
        )
        if conn.get("last_error") and conn.get("state") != "up":
            lines.append(f"    last error: {conn['last_error']}")
        for ike in conn.get("ike_sas", []):
            rekeyed = ike.get("rekeyed_from")
            lines.append(
                f"    IKE SA #{ike.get('id')}: {ike.get('suite', '?')}, "
                f"quantum-safe: {'yes' if ike.get('quantum_safe') else 'no'}, "
                f"{ike.get('local', '?')} <-> {ike.get('remote', '?')}, "
                f"age {format_age(ike.get('age', 0))}, "
                f"ppk: {'yes' if ike.get('ppk_used') else 'no'}"
                + (f", rekeyed from #{rekeyed}" if rekeyed is not None else "")
                + (f", ESP in UDP: {ike['udp_encap']}" if ike.get("udp_encap") else "")
            )
    sas = status.get("sas", [])
    lines.append(f"CHILD SAs ({len(sas)}):")
    for sa in sas:
        lines.append(
            f"  {sa['connection']} #{sa['unique_id']}: {sa['suite']}"
            f"{' esn' if sa.get('esn') else ''}, {sa['encap']} "
            f"{sa['local']} <-> {sa['remote']}, age {format_age(sa['age'])}, mtu {sa['mtu']}"
            + _pfs(sa)
        )
        lines.append(
            f"    {' '.join(sa['local_ts'])} === {' '.join(sa['remote_ts'])}"
            f"  spi in {sa['spi_in']} out {sa['spi_out']}"
        )
        lines.append(
            f"    in  {format_size(sa['bytes_in'])} / {sa['packets_in']} packets"
            f"   out {format_size(sa['bytes_out'])} / {sa['packets_out']} packets"
        )
        lines.append(f"    drops: {_drops(sa.get('drops', {}))}")
    workers = status.get("workers", [])
    if workers:
        lines.append(
            f"Data-plane workers ({len(workers)}): "
            + ", ".join(
                f"#{w['index']} "
                + (f"pid {w['pid']}" if w.get("pid") else "restarting")
                + f" ({w.get('owns', 0)} SA(s))"
                for w in workers
            )
        )
    servers = status.get("remote_access", [])
    if servers:
        lines.append(f"Remote access servers ({len(servers)}):")
        for srv in servers:
            where = (
                "on the IKE ports"
                if srv["protocol"] == "ikev2"
                else f"{srv['transport']} port {srv['port']}"
            )
            tun = "" if srv["protocol"] == "ikev2" else f" on {srv['interface']}"
            lines.append(
                f"  {srv['name']}: {srv['protocol']} {where}, pool {srv['pool']}{tun}, "
                f"{srv['clients']}/{srv['max_connections']} client(s), "
                f"{srv['handshaking']} connecting, {srv['users']} user(s)"
            )
            lines.append(f"    refused: {_drops(srv.get('refusals', {}))}")
            lines.append(f"    drops: {_drops(srv.get('drops', {}))}")
    lines.append(f"IKE drops: {_drops(status.get('ike_drops', {}))}")
    lines.append(f"Drops (all SAs and unmatched traffic): {_drops(status.get('drops', {}))}")
    # Lost before the daemon read them: full socket buffers or TUN queue (overload).
    lines.append(f"Kernel drops: {_drops(status.get('kernel_drops', {}))}")
    return "\n".join(lines) + "\n"


def format_clients(clients: list[dict[str, Any]]) -> str:
    """`lockgate clients` for people: one line per connected point-to-cloud client."""
    lines = [f"Clients ({len(clients)}):"]
    for c in clients:
        lines.append(
            f"  {c['server']} {c['user']} {c['virtual_ip']} from {c['remote']} "
            f"since {c['since']}, in {format_size(c['bytes_in'])}, "
            f"out {format_size(c['bytes_out'])}"
        )
    return "\n".join(lines) + "\n"


def format_sa(sa: dict[str, Any]) -> str:
    """One CHILD SA of `lockgate status --json` on one line: name, suite, framing,
    selectors."""
    return (
        f"CHILD SA {sa['connection']} {sa['suite']} ({sa['encap']}) "
        f"{' '.join(sa['local_ts'])} === {' '.join(sa['remote_ts'])}"
    )


def _pfs(sa: dict[str, Any]) -> str:
    """A CHILD SA's PFS for its status line: ", PFS x25519+mlkem768, quantum-safe: yes",
    or "" without PFS."""
    if not sa.get("pfs"):
        return ""
    return f", PFS {sa['pfs']}, quantum-safe: {'yes' if sa.get('quantum_safe') else 'no'}"

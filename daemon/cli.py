"""The `lockgate` command: run the daemon, check a configuration, talk to a daemon.

    lockgate [-s SOCKET] daemon -c FILE [--log-level LEVEL]
    lockgate check-config FILE
    lockgate [-s SOCKET] status [--json] [--summary]
    lockgate [-s SOCKET] up|down NAME
    lockgate [-s SOCKET] rekey [--ike] NAME
    lockgate [-s SOCKET] reload
    lockgate demo

Exit status: 0 on success, 1 when the daemon or the configuration refuses, 2 for a
usage error (argparse's convention).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from daemon.control import DEFAULT_SOCKET, ControlClientError, request

EXIT_OK = 0
EXIT_FAILED = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lockgate",
        description="A userspace IPsec/IKEv2 VPN gateway.",
    )
    parser.add_argument(
        "-s",
        "--socket",
        help="control socket of the daemon (default: the configuration's "
        f"control_socket for `daemon`, else $LOCKGATE_SOCKET or {DEFAULT_SOCKET})",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    daemon = sub.add_parser("daemon", help="run the gateway in the foreground")
    daemon.add_argument("-c", "--config", required=True, metavar="FILE", help="TOML file")
    daemon.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="log level (default: info, or $LOCKGATE_LOG_LEVEL)",
    )

    check = sub.add_parser("check-config", help="load a configuration and report mistakes")
    check.add_argument("file", metavar="FILE")

    status = sub.add_parser("status", help="connections and SAs of the running daemon")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--summary",
        action="store_true",
        help="counts only: cheap to poll on a gateway with thousands of SAs",
    )

    for name, text in (
        ("up", "initiate a connection"),
        ("down", "delete a connection's SAs"),
        ("rekey", "rekey a connection's CHILD SAs (with --ike: the IKE SA carrying it)"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("name", metavar="NAME", help="connection name")
        if name == "rekey":
            cmd.add_argument(
                "--ike",
                action="store_true",
                help="rekey the IKE SA of the connection's peer instead (NAME may also be "
                "the peer); its CHILD SAs move to the new IKE SA",
            )

    sub.add_parser("reload", help="re-read the configuration (like SIGHUP)")

    demo = sub.add_parser("demo", help="site-to-site demo in network namespaces (root)")
    demo.add_argument(
        "--timeout", type=float, default=120.0, help="give up after this many seconds"
    )
    demo.add_argument(
        "--file-size", type=int, default=8, metavar="MB", help="size of the file moved (MiB)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lockgate` console script."""
    args = _parser().parse_args(argv)
    command: str = args.command
    if command == "daemon":
        from daemon.gateway import run_daemon

        return run_daemon(args.config, socket_path=args.socket, log_level=args.log_level)
    if command == "check-config":
        return _check_config(args.file)
    if command == "demo":
        from daemon.demo import run_demo

        return run_demo(timeout=args.timeout, file_mib=args.file_size)
    path = args.socket or os.environ.get("LOCKGATE_SOCKET") or DEFAULT_SOCKET
    message: dict[str, Any] = {"command": command}
    if command in ("up", "down", "rekey"):
        message["name"] = args.name
    if command == "rekey" and args.ike:
        message["ike"] = True
    if command == "status" and args.summary:
        message["summary"] = True
    try:
        result = request(path, message, timeout=60.0)
    except ControlClientError as exc:
        print(f"lockgate {command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if command == "status":
        if args.json:
            print(json.dumps(result, indent=2, sort_keys=True))
        elif args.summary:
            print(format_summary(result), end="")
        else:
            print(format_status(result), end="")
    elif isinstance(result, str) and result:
        print(result)
    return EXIT_OK


def _check_config(path: str) -> int:
    from conf.ike import endpoint_config, ike_connections
    from daemon.gateway import ConfigLoadError, load_config

    try:
        config = load_config(path)
        # Build what the daemon would hand the IKE core too (credentials included), so
        # whatever the core refuses is reported here and not at start.
        ike_connections(config)
        endpoint_config(config)
    except ConfigLoadError as exc:
        # The message names the file and every key at fault.
        print(str(exc) if str(path) in str(exc) else f"{path}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    names = ", ".join(sorted(config.connections)) or "none"
    print(f"{path}: OK ({len(config.connections)} connection(s): {names})")
    return EXIT_OK


# ---- status formatting -------------------------------------------------------------


def _size(octets: int) -> str:
    value = float(octets)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{octets} B"  # pragma: no cover - the loop always returns


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _drops(drops: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in sorted(drops.items())) or "none"


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
            f"up {_age(daemon.get('uptime', 0))}, config {daemon.get('config', '?')}"
        )
    connections = status.get("connections", [])
    lines.append(f"Connections ({len(connections)}):")
    for conn in connections:
        lines.append(
            f"  {conn['name']}: {conn.get('state', '?')}, peer {conn.get('remote', '?')}"
            f" ({conn.get('remote_id', '?')}), start {conn.get('start', '?')}"
        )
        if conn.get("last_error") and conn.get("state") != "up":
            lines.append(f"    last error: {conn['last_error']}")
        for ike in conn.get("ike_sas", []):
            rekeyed = ike.get("rekeyed_from")
            lines.append(
                f"    IKE SA #{ike.get('id')}: {ike.get('suite', '?')}, "
                f"{ike.get('local', '?')} <-> {ike.get('remote', '?')}, "
                f"age {_age(ike.get('age', 0))}"
                + (f", rekeyed from #{rekeyed}" if rekeyed is not None else "")
                + (f", ESP in UDP: {ike['udp_encap']}" if ike.get("udp_encap") else "")
            )
    sas = status.get("sas", [])
    lines.append(f"CHILD SAs ({len(sas)}):")
    for sa in sas:
        lines.append(
            f"  {sa['connection']} #{sa['unique_id']}: {sa['suite']}"
            f"{' esn' if sa.get('esn') else ''}, {sa['encap']} "
            f"{sa['local']} <-> {sa['remote']}, age {_age(sa['age'])}, mtu {sa['mtu']}"
        )
        lines.append(
            f"    {' '.join(sa['local_ts'])} === {' '.join(sa['remote_ts'])}"
            f"  spi in {sa['spi_in']} out {sa['spi_out']}"
        )
        lines.append(
            f"    in  {_size(sa['bytes_in'])} / {sa['packets_in']} packets"
            f"   out {_size(sa['bytes_out'])} / {sa['packets_out']} packets"
        )
        lines.append(f"    drops: {_drops(sa.get('drops', {}))}")
    lines.append(f"IKE drops: {_drops(status.get('ike_drops', {}))}")
    lines.append(f"Drops (all SAs and unmatched traffic): {_drops(status.get('drops', {}))}")
    # Lost before the daemon read them: full socket buffers or TUN queue (overload).
    lines.append(f"Kernel drops: {_drops(status.get('kernel_drops', {}))}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

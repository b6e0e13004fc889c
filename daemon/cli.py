"""The `lockgate` command: run the daemon, check a configuration, talk to a daemon.

    lockgate [-s SOCKET] daemon -c FILE [--log-level LEVEL]
    lockgate check-config FILE
    lockgate [-s SOCKET] status [--json] [--summary]
    lockgate [-s SOCKET] up|down NAME
    lockgate [-s SOCKET] rekey [--ike] NAME
    lockgate [-s SOCKET] reload
    lockgate [-s SOCKET] clients [--json]
    lockgate [-s SOCKET] disconnect SERVER USER
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
from daemon.status import format_clients, format_status, format_summary

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

    clients = sub.add_parser("clients", help="the connected point-to-cloud clients")
    clients.add_argument("--json", action="store_true", help="machine-readable output")
    cut = sub.add_parser("disconnect", help="end every session of a point-to-cloud user")
    cut.add_argument("server", metavar="SERVER", help="remote_access server name")
    cut.add_argument("user", metavar="USER", help="user name")

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
    if command == "disconnect":
        message.update(server=args.server, user=args.user)
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
    elif command == "clients":
        print(
            json.dumps(result, indent=2) if args.json else format_clients(result),
            end="\n" if args.json else "",
        )
    elif isinstance(result, str) and result:
        print(result)
    return EXIT_OK


def _check_config(path: str) -> int:
    from conf import ConfigError
    from conf.ike import endpoint_config, ike_connections
    from conf.load import load_config

    try:
        config = load_config(path)
        # Build what the daemon would hand the IKE core too (credentials included), so
        # whatever the core refuses is reported here and not at start.
        ike_connections(config)
        endpoint_config(config)
    except ConfigError as exc:
        # The message names the file and every key at fault.
        print(str(exc) if str(path) in str(exc) else f"{path}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    names = ", ".join(sorted(config.connections)) or "none"
    print(f"{path}: OK ({len(config.connections)} connection(s): {names})")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

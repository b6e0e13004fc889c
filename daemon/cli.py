"""The `lockgate` command: run the daemon, check a configuration, talk to a daemon.

    lockgate [-s SOCKET] daemon -c FILE [--log-level LEVEL]
    lockgate check-config FILE
    lockgate [-s SOCKET] status [-c FILE] [--json] [--summary]
    lockgate [-s SOCKET] up|down [-c FILE] NAME
    lockgate [-s SOCKET] rekey [-c FILE] [--ike] NAME
    lockgate [-s SOCKET] reload [-c FILE]
    lockgate [-s SOCKET] clients [-c FILE] [--json]
    lockgate [-s SOCKET] disconnect [-c FILE] SERVER USER
    lockgate user add|del|passwd|list SERVER ... [-c FILE]
    lockgate profile SERVER [--user NAME] [--cert FILE --key FILE] [-c FILE]
    lockgate admin add|passwd|del NAME [--password-stdin] [-c FILE]
    lockgate demo [--bgp]

A client command finds the daemon's control socket with -s, else in the
configuration named with -c (its `control_socket`), else in $LOCKGATE_SOCKET, else at
the default path.

Exit status: 0 on success, 1 when the daemon or the configuration refuses, 2 for a
usage error (argparse's convention).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from daemon import admin_cli, remote_access_cli
from daemon.control import DEFAULT_SOCKET, ControlClientError, request
from daemon.status import format_clients, format_status, format_summary

if TYPE_CHECKING:
    from conf.model import Config

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
        "control_socket for `daemon`, and for the other commands with -c FILE, "
        f"else $LOCKGATE_SOCKET or {DEFAULT_SOCKET})",
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
    _config_option(status)
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
        _config_option(cmd)
        cmd.add_argument("name", metavar="NAME", help="connection name")
        if name == "rekey":
            cmd.add_argument(
                "--ike",
                action="store_true",
                help="rekey the IKE SA of the connection's peer instead (NAME may also be "
                "the peer); its CHILD SAs move to the new IKE SA",
            )

    _config_option(sub.add_parser("reload", help="re-read the configuration (like SIGHUP)"))

    why = sub.add_parser("explain", help="why a connection is not up, in words")
    _config_option(why)
    why.add_argument("name", metavar="CONNECTION", help="connection name")
    why.add_argument("--json", action="store_true", help="machine-readable output")

    # Remote access: users files and client profiles, from the configuration file.
    remote_access_cli.add_parsers(sub)
    # The web console's admins file.
    admin_cli.add_parser(sub)

    clients = sub.add_parser("clients", help="the connected point-to-cloud clients")
    clients.add_argument("--json", action="store_true", help="machine-readable output")
    _config_option(clients)
    cut = sub.add_parser("disconnect", help="end every session of a point-to-cloud user")
    _config_option(cut)
    cut.add_argument("server", metavar="SERVER", help="remote_access server name")
    cut.add_argument("user", metavar="USER", help="user name")

    demo = sub.add_parser("demo", help="site-to-site demo in network namespaces (root)")
    demo.add_argument(
        "--timeout", type=float, default=120.0, help="give up after this many seconds"
    )
    demo.add_argument(
        "--file-size", type=int, default=8, metavar="MB", help="size of the file moved (MiB)"
    )
    demo.add_argument(
        "--bgp",
        action="store_true",
        help="route-based tunnel with BIRD (BGP) on both gateways (needs bird2)",
    )
    return parser


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="the daemon's TOML file: its control_socket is the socket (-s wins)",
    )


def _socket_path(args: argparse.Namespace) -> str:
    """-s, else the control_socket of the configuration named by -c, else
    $LOCKGATE_SOCKET, else the default; a -c file that cannot be read raises ConfigError."""
    if args.socket:
        return str(args.socket)
    if args.config:
        from conf.load import load_config

        return str(load_config(args.config).gateway.control_socket)
    return os.environ.get("LOCKGATE_SOCKET") or DEFAULT_SOCKET


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lockgate` console script."""
    args = _parser().parse_args(argv)
    command: str = args.command
    if command == "daemon":
        from daemon.gateway import run_daemon

        return run_daemon(args.config, socket_path=args.socket, log_level=args.log_level)
    if command == "check-config":
        return _check_config(args.file)
    if command == "admin":
        return admin_cli.run(args)
    if command in remote_access_cli.COMMANDS:
        return remote_access_cli.run(args)
    if command == "demo":
        from daemon.demo import run_demo

        return run_demo(timeout=args.timeout, file_mib=args.file_size, bgp=args.bgp)
    from conf import ConfigError

    try:
        path = _socket_path(args)
    except ConfigError as exc:
        print(f"lockgate {command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    message: dict[str, Any] = {"command": command}
    if command in ("up", "down", "rekey", "explain"):
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
    elif command == "explain":
        print(
            json.dumps(result, indent=2) if args.json else result["text"],
            end="\n" if args.json else "",
        )
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
    # Legal but doubtful settings: said, each naming its key, without failing the check.
    for problem in config.warnings:
        print(f"warning: {problem}", file=sys.stderr)
    names = ", ".join(sorted(config.connections)) or "none"
    print(f"{path}: OK ({len(config.connections)} connection(s): {names}{_servers_line(config)})")
    return EXIT_OK


def _servers_line(config: Config) -> str:
    """The check-config words for the point-to-cloud servers, when there are any."""
    if not config.remote_access:
        return ""
    names = ", ".join(config.remote_access)
    return f"; {len(config.remote_access)} remote-access server(s): {names}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

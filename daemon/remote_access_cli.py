"""`lockgate user ...` and `lockgate profile`: the remote-access commands that work on
the configuration file and a server's users file, without a running daemon.

    lockgate user add SERVER NAME [--group G] [--static-ip A] [--password-stdin] [-c CONF]
    lockgate user del SERVER NAME [-c CONF]
    lockgate user passwd SERVER NAME [--password-stdin] [-c CONF]
    lockgate user list SERVER [--json] [-c CONF]
    lockgate profile SERVER [--user NAME] [--cert FILE --key FILE] [-c CONF]
    lockgate profile SERVER --user NAME --format mobileconfig|sswan|windows [-c CONF]

The users file is rewritten atomically with mode 0600 (`conf.users.save_users`), each
read-modify-write under the file's lock (`conf.users.users_lock`), so that concurrent
commands and the web console lose no change; a running daemon notices it by itself.
Nothing here prints a password or a hash.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import ipaddress
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

# The configuration packages load only when one of these commands runs: the
# daemon's client commands (`status`, ...) start without them.
if TYPE_CHECKING:
    from conf.model import Config, RemoteAccessConfig
    from conf.users import User

DEFAULT_CONFIG = "/etc/lockgate/lockgate.toml"
COMMANDS = ("user", "profile")
PROFILE_FORMATS = ("mobileconfig", "sswan", "windows")
"""The profile formats of an ikev2 server (`daemon.ikev2_profile.FORMATS`)."""


class Refused(Exception):
    """The command cannot do what was asked; the message says why (exit status 1)."""


def conf_option(cmd: argparse.ArgumentParser) -> None:
    """`-c CONF`, the configuration file (default: DEFAULT_CONFIG)."""
    cmd.add_argument(
        "-c",
        "--config",
        default=DEFAULT_CONFIG,
        metavar="CONF",
        help=f"configuration file (default: {DEFAULT_CONFIG})",
    )


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `user` and `profile` under the `lockgate` parser's subcommands."""

    user = sub.add_parser("user", help="manage the users of a remote-access server")
    actions = user.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="add a user")
    passwd = actions.add_parser("passwd", help="change a user's password")
    delete = actions.add_parser("del", help="delete a user (their sessions end)")
    listing = actions.add_parser("list", help="list the users")
    for cmd in (add, passwd, delete, listing):
        cmd.add_argument("server", metavar="SERVER", help="[remote_access.SERVER] name")
        conf_option(cmd)
    for cmd in (add, passwd, delete):
        cmd.add_argument("name", metavar="NAME", help="user name")
    for cmd in (add, passwd):
        cmd.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the password from one line of standard input instead of prompting",
        )
    add.add_argument("--group", metavar="G", help="access-policy group ([...groups.G])")
    add.add_argument("--static-ip", metavar="A", help="an address of the pool, always theirs")
    listing.add_argument("--json", action="store_true", help="machine-readable output")

    profile = sub.add_parser(
        "profile", help="print a client profile (.ovpn; .mobileconfig, .sswan or a script)"
    )
    profile.add_argument("server", metavar="SERVER", help="[remote_access.SERVER] name")
    profile.add_argument("--user", metavar="NAME", help="the user the profile is for")
    profile.add_argument(
        "--format",
        choices=("ovpn", *PROFILE_FORMATS),
        default="ovpn",
        help="ovpn (an SSL server's, the default); for an ikev2 server: mobileconfig "
        "(macOS, iOS), sswan (the strongSwan Android app) or windows (a PowerShell script)",
    )
    profile.add_argument("--cert", metavar="FILE", help="the user's certificate (PEM)")
    profile.add_argument("--key", metavar="FILE", help="the user's private key (PEM)")
    profile.add_argument(
        "--eap-tls",
        action="store_true",
        help="windows format of a certificate or any ikev2 server: log in with the "
        "user's certificate in EAP-TLS (instead of the computer's certificate or a password)",
    )
    conf_option(profile)


def run(args: argparse.Namespace) -> int:
    """Run `user ...` or `profile`; 0 on success, 1 when refused (the reason on stderr)."""
    from ikev2.config import ConfigError

    label = f"lockgate {args.command}" + (f" {args.action}" if args.command == "user" else "")
    try:
        if args.command == "profile":
            print(_profile(args), end="")
        elif args.action == "list":
            print(_list(args), end="")
        else:
            print({"add": _add, "del": _delete, "passwd": _passwd}[args.action](args))
    except Refused as exc:
        print(f"{label}: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"{label}: {exc}", file=sys.stderr)
        return 1
    return 0


# --- shared steps ----------------------------------------------------------------------


def _server(args: argparse.Namespace) -> tuple[Config, RemoteAccessConfig]:
    from conf.load import load_config

    config = load_config(args.config)
    server = config.remote_access.get(args.server)
    if server is None:
        known = ", ".join(config.remote_access) or "none configured"
        raise Refused(f"no remote-access server named {args.server!r} (servers: {known})")
    return config, server


def _users_file(server: RemoteAccessConfig) -> Path:
    if server.users is None:
        raise Refused(
            f"remote_access.{server.name} has no users file: set its `users` key to "
            "the file that `lockgate user` should write"
        )
    return server.users


def read_password(args: argparse.Namespace) -> str:
    """The new password: one line of stdin, or typed twice at a prompt; the rule applies."""
    from conf.users import password_problem

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"Password for {args.name}: ")
        if getpass.getpass("Again: ") != password:
            raise Refused("the passwords differ; nothing changed")
    problem = password_problem(args.name, password)
    if problem is not None:
        raise Refused(f"{problem}; nothing changed")
    return password


def _static_ip(
    server: RemoteAccessConfig, users: dict[str, User], text: str
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise Refused(f"--static-ip {text!r} is not an IP address") from None
    pool = server.client_pool if address.version == 4 else server.client_pool6
    pools = " or ".join(str(p) for p in (server.client_pool, server.client_pool6) if p)
    if pool is None or address not in pool:
        raise Refused(f"--static-ip {address} is outside the client pool ({pools})")
    if address in (pool.network_address, pool.broadcast_address):
        raise Refused(f"--static-ip {address} is not a host address of {pool}")
    first = next(pool.hosts())
    if address == first:
        raise Refused(f"--static-ip {address} is the server's own address in {pool}")
    for other in users.values():
        if other.static_ip == address:
            raise Refused(f"--static-ip {address} is already {other.name}'s")
    return address


def _with_password(server: RemoteAccessConfig, user: User, password: str) -> User:
    """`user` with `password` stored: always the scrypt hash; for an IKEv2 password
    server also the NT hash, which EAP-MSCHAPv2 works on (RFC 2759 §8.3) and which a
    salt cannot protect. Other servers' users never get one (and lose an old one)."""
    from conf.users import hash_password, needs_nt_hash
    from ikev2.crypto.mschapv2 import nt_password_hash

    nt_hash = nt_password_hash(password) if needs_nt_hash(server) else None
    return dataclasses.replace(user, password=hash_password(password), nt_hash=nt_hash)


NT_HASH_NOTE = (
    "the NT hash (MD4) of the password is stored too: EAP-MSCHAPv2 needs it; "
    "protect the users file like a password list"
)


# --- the commands ----------------------------------------------------------------------


def _add(args: argparse.Namespace) -> str:
    _, server = _server(args)
    return add_user(
        server,
        args.name,
        group=args.group,
        static_ip=args.static_ip,
        password=None
        if server.auth == "certificate" and not args.password_stdin
        else lambda: read_password(args),
    )


def _delete(args: argparse.Namespace) -> str:
    _, server = _server(args)
    return delete_user(server, args.name)


def _passwd(args: argparse.Namespace) -> str:
    _, server = _server(args)
    return set_password(server, args.name, lambda: read_password(args))


# --- the users file's changes (the CLI's and the web console's) -------------------------


def add_user(
    server: RemoteAccessConfig,
    name: str,
    *,
    group: str | None,
    static_ip: str | None,
    password: Callable[[], str] | None,
) -> str:
    """Add user `name` to `server`'s users file; `password` is asked for only once the
    rest is known to be acceptable (None: none given). Refused: `Refused`."""
    from conf.users import NAME_RE, load_users, save_users, users_lock

    path = _users_file(server)
    if not NAME_RE.match(name):
        raise Refused(
            f"{name!r} is not a valid user name (1-64 letters, digits and '._@-', "
            "starting with a letter or digit)"
        )
    # Checked before the prompt and the hashing, which happen outside the lock (a
    # prompt must not keep other writers waiting), then again under it.
    user = _new_user(server, load_users(path), name, group, static_ip)
    if server.auth == "certificate":
        if password is not None:
            raise Refused(
                f'remote_access.{server.name} has auth = "certificate": users log in with '
                "a certificate whose CN is their name, not a password"
            )
    else:
        if password is None:
            raise Refused(f"remote_access.{server.name}: a new user needs a password")
        user = _with_password(server, user, password())
    with users_lock(path):
        users = load_users(path)
        _new_user(server, users, name, group, static_ip)
        users[name] = user
        save_users(path, users)
    details = [f"group {user.group}"] if user.group else []
    if user.static_ip is not None:
        details.append(f"static IP {user.static_ip}")
    if server.auth == "certificate":
        details.append("certificate login (CN = user name)")
    suffix = f" ({', '.join(details)})" if details else ""
    note = f"\n{NT_HASH_NOTE}" if user.nt_hash is not None else ""
    return f"user {name} added to {server.name}{suffix}{note}"


def _new_user(
    server: RemoteAccessConfig,
    users: dict[str, User],
    name: str,
    group: str | None,
    static_ip: str | None,
) -> User:
    """User `name` (no password yet) if it may join `users`; else `Refused`."""
    from conf.users import User

    if name in users:
        raise Refused(f"user {name!r} already exists on {server.name}")
    if group is not None and group not in server.groups:
        known = ", ".join(server.groups) or "none defined"
        raise Refused(f"no group {group!r} in remote_access.{server.name} (groups: {known})")
    address = None if static_ip is None else _static_ip(server, users, static_ip)
    return User(name, group=group, static_ip=address)


def delete_user(server: RemoteAccessConfig, name: str) -> str:
    """Delete user `name` from `server`'s users file."""
    from conf.users import load_users, save_users, users_lock

    path = _users_file(server)
    with users_lock(path):
        users = load_users(path)
        if name not in users:
            raise Refused(f"no user {name!r} on {server.name}")
        del users[name]
        save_users(path, users)
    return f"user {name} deleted from {server.name}"


def set_password(server: RemoteAccessConfig, name: str, password: Callable[[], str]) -> str:
    """Give user `name` of `server` a new password (asked for once the user is found)."""
    from conf.users import load_users, save_users, users_lock

    path = _users_file(server)
    if server.auth == "certificate":
        raise Refused(
            f'remote_access.{server.name} has auth = "certificate": its users have no password'
        )
    users = load_users(path)
    if name not in users:
        raise Refused(f"no user {name!r} on {server.name}")
    # Prompted and hashed outside the lock; only the hashes go into the file read again.
    hashed = _with_password(server, users[name], password())
    with users_lock(path):
        users = load_users(path)
        if name not in users:
            raise Refused(f"no user {name!r} on {server.name}")
        user = dataclasses.replace(users[name], password=hashed.password, nt_hash=hashed.nt_hash)
        users[name] = user
        save_users(path, users)
    note = f"\n{NT_HASH_NOTE}" if user.nt_hash is not None else ""
    return f"password of {name} changed on {server.name}{note}"


def set_user(
    server: RemoteAccessConfig, name: str, *, group: str | None, static_ip: str | None
) -> str:
    """Set (or clear, with None) the group and the static IP of user `name` of `server`."""
    from conf.users import load_users, save_users, users_lock

    path = _users_file(server)
    with users_lock(path):
        users = load_users(path)
        if name not in users:
            raise Refused(f"no user {name!r} on {server.name}")
        if group is not None and group not in server.groups:
            known = ", ".join(server.groups) or "none defined"
            raise Refused(f"no group {group!r} in remote_access.{server.name} (groups: {known})")
        others = {n: u for n, u in users.items() if n != name}
        address = None if static_ip is None else _static_ip(server, others, static_ip)
        users[name] = dataclasses.replace(users[name], group=group, static_ip=address)
        save_users(path, users)
    return (
        f"user {name} on {server.name}: group {group or 'none'}, "
        f"static IP {address if address is not None else 'none'}"
    )


def _list(args: argparse.Namespace) -> str:
    from conf.users import load_users

    _, server = _server(args)
    users = load_users(_users_file(server))
    rows = [
        {
            "name": u.name,
            "group": u.group,
            "static_ip": None if u.static_ip is None else str(u.static_ip),
            "password": u.password is not None,
        }
        for u in sorted(users.values(), key=lambda u: u.name)
    ]
    if args.json:
        return json.dumps(rows, indent=2) + "\n"
    lines = [f"{server.name}: {len(rows)} user(s)"]
    for row in rows:
        parts = [f"  {row['name']}"]
        if row["group"]:
            parts.append(f"group {row['group']}")
        if row["static_ip"]:
            parts.append(f"static IP {row['static_ip']}")
        parts.append("password" if row["password"] else "no password")
        lines.append(", ".join(parts))
    return "\n".join(lines) + "\n"


def _profile(args: argparse.Namespace) -> str:
    config, server = _server(args)
    return render_profile(
        config,
        server,
        args.format,
        user=args.user,
        cert_file=args.cert,
        key_file=args.key,
        eap_tls=args.eap_tls,
    )


def render_profile(
    config: Config,
    server: RemoteAccessConfig,
    fmt: str,
    *,
    user: str | None,
    cert_file: str | None = None,
    key_file: str | None = None,
    eap_tls: bool = False,
) -> str:
    """A client profile of `server` in format `fmt` ("ovpn" or one of PROFILE_FORMATS)
    for `user`, with the client's own certificate and key files if given (the CLI's and
    the console's downloads); `eap_tls`: a Windows script logging in with EAP-TLS.
    Refused: `Refused`."""
    from conf.users import load_users
    from daemon import ovpn_profile
    from daemon.ovpn_profile import ProfileError, check_client_credential

    ikev2 = server.protocol == "ikev2"
    if ikev2 and fmt == "ovpn":
        raise Refused(
            f"remote_access.{server.name} is an ikev2 server: choose --format "
            f"{'|'.join(PROFILE_FORMATS)} (an .ovpn profile is for SSL servers)"
        )
    if not ikev2 and fmt != "ovpn":
        raise Refused(
            f"remote_access.{server.name} is an SSL server: its profile is an .ovpn "
            f"(drop --format {fmt}; that format is for ikev2 servers)"
        )
    if not ikev2 and eap_tls:
        raise Refused(
            f"remote_access.{server.name} is an SSL server: --eap-tls is for an ikev2 "
            "server's windows profile"
        )
    if ikev2 and user is None:
        raise Refused(f"a {fmt} profile is made for one user: give --user NAME")
    if user is not None and server.users is not None and user not in load_users(server.users):
        raise Refused(f"no user {user!r} on {server.name}")
    if (cert_file is None) != (key_file is None):
        raise Refused("--cert and --key go together")
    if not ikev2:
        try:
            check_client_credential(server, cert_file is not None)
        except ProfileError as exc:
            raise Refused(str(exc)) from None
    try:
        cert = None if cert_file is None else Path(cert_file).read_bytes()
        key = None if key_file is None else Path(key_file).read_bytes()
    except OSError as exc:
        raise Refused(f"cannot read {exc.filename}: {exc.strerror}") from None
    try:
        if ikev2 and user is not None:
            from daemon.ikev2_profile import render_ikev2_profile

            return render_ikev2_profile(
                config, server, fmt, user=user, client_cert=cert, client_key=key, eap_tls=eap_tls
            )
        return ovpn_profile.render_profile(
            config, server, user=user, client_cert=cert, client_key=key
        )
    except ProfileError as exc:
        raise Refused(str(exc)) from None

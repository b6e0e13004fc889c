"""`lockgate admin ...`: the web console's admin accounts, kept in the `[console]`
`admins` file without a running daemon.

    lockgate admin add NAME [--password-stdin] [-c CONF]
    lockgate admin passwd NAME [--password-stdin] [-c CONF]
    lockgate admin del NAME [-c CONF]

The admins file has the format of a remote-access users file (`conf.users`): names and
salted scrypt hashes, rewritten atomically with mode 0600. The console reads it at each
login, so a change needs no reload. Nothing here prints a password or a hash.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from daemon.remote_access_cli import Refused, conf_option, read_password


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `admin` under the `lockgate` parser's subcommands."""
    admin = sub.add_parser("admin", help="manage the web console's admin accounts")
    actions = admin.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="add an admin")
    passwd = actions.add_parser("passwd", help="change an admin's password")
    delete = actions.add_parser("del", help="delete an admin")
    for cmd in (add, passwd, delete):
        cmd.add_argument("name", metavar="NAME", help="admin name")
        conf_option(cmd)
    for cmd in (add, passwd):
        cmd.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the password from one line of standard input instead of prompting",
        )


def run(args: argparse.Namespace) -> int:
    """Run `admin ...`; 0 on success, 1 when refused (the reason on stderr)."""
    from ikev2.config import ConfigError

    try:
        print(_run(args))
    except (Refused, ConfigError) as exc:
        print(f"lockgate admin {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0


def _admins_file(config_path: str) -> Path:
    from conf.load import load_config

    console = load_config(config_path).console
    if console is None:
        raise Refused(
            f"{config_path} has no [console] section: add `listen` and `admins` to it first"
        )
    return console.admins


def _run(args: argparse.Namespace) -> str:
    from conf.users import NAME_RE, User, hash_password, load_users, save_users

    path = _admins_file(args.config)
    if not NAME_RE.match(args.name):
        raise Refused(
            f"{args.name!r} is not a valid admin name (1-64 letters, digits and '._@-', "
            "starting with a letter or digit)"
        )
    admins = load_users(path)
    if args.action == "add" and args.name in admins:
        raise Refused(f"admin {args.name!r} already exists (change the password: admin passwd)")
    if args.action != "add" and args.name not in admins:
        raise Refused(f"no admin {args.name!r} in {path}")
    if args.action == "del":
        del admins[args.name]
        save_users(path, admins)
        return f"admin {args.name} deleted"
    admins[args.name] = User(args.name, password=hash_password(read_password(args)))
    save_users(path, admins)
    verb = "added" if args.action == "add" else "has a new password"
    return f"admin {args.name} {verb} ({path})"

"""`lockgate admin ...`: the web console's admin accounts, kept in the `[console]`
`admins` file without a running daemon.

    lockgate admin add NAME [--password-stdin] [-c CONF]
    lockgate admin passwd NAME [--password-stdin] [-c CONF]
    lockgate admin del NAME [-c CONF]

The admins file has the format of a remote-access users file (`conf.users`): names and
salted scrypt hashes, rewritten atomically with mode 0600 under the file's lock
(`conf.users.users_lock`). The console reads it at each
login, so a change needs no reload. Nothing here prints a password or a hash.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.remote_access_cli import Refused, conf_option, read_password

if TYPE_CHECKING:
    from conf.users import User


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
    from conf.users import NAME_RE, User, hash_password, load_users, save_users, users_lock

    path = _admins_file(args.config)
    if not NAME_RE.match(args.name):
        raise Refused(
            f"{args.name!r} is not a valid admin name (1-64 letters, digits and '._@-', "
            "starting with a letter or digit)"
        )
    _check(args, path, load_users(path))
    admin = None
    if args.action != "del":
        # Prompted and hashed outside the lock, which a prompt must not hold.
        admin = User(args.name, password=hash_password(read_password(args)))
    with users_lock(path):
        admins = load_users(path)
        _check(args, path, admins)
        if admin is None:
            del admins[args.name]
        else:
            admins[args.name] = admin
        save_users(path, admins)
    if admin is None:
        return f"admin {args.name} deleted"
    verb = "added" if args.action == "add" else "has a new password"
    return f"admin {args.name} {verb} ({path})"


def _check(args: argparse.Namespace, path: Path, admins: dict[str, User]) -> None:
    if args.action == "add" and args.name in admins:
        raise Refused(f"admin {args.name!r} already exists (change the password: admin passwd)")
    if args.action != "add" and args.name not in admins:
        raise Refused(f"no admin {args.name!r} in {path}")

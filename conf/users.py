"""The users file of a point-to-cloud server: who may connect, and how they prove it.

One JSON document per server, written only by `lockgate user` and the web console
(atomically, mode 0600, each read-modify-write under `users_lock`) and read by the
daemon, which picks changes up while it runs:

```json
{"version": 1, "users": {"alice": {"group": "engineering", "static_ip": "192.0.2.50",
  "password": "scrypt$16384$8$1$<salt b64>$<hash b64>"}}}
```

Passwords are kept only as salted scrypt hashes (memory-hard: 16 MiB and some 50 ms a
try, so a stolen file is slow to attack). An IKEv2 server with password
authentication needs EAP-MSCHAPv2, which works on the NT hash (MD4 of the password);
only users of such a server have one (`nt_hash`), and `lockgate user add` says so.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import stat
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conf.model import RemoteAccessConfig
from ikev2.config import ConfigError, Problem

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
"""scrypt cost: 128 * N * r = 16 MiB of memory per try (RFC 7914 §2)."""
SCRYPT_MAXMEM = 64 * 1024 * 1024
SALT_BYTES = 16
HASH_BYTES = 32
FORMAT_VERSION = 1
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
"""User names: what fits a login prompt, an e-mail-like identity and a log line."""
PASSWORD_MIN, PASSWORD_MAX = 8, 32
LOCK_TIMEOUT = 10.0
"""Seconds a writer waits for another one's `users_lock` before giving up."""
LOCK_POLL = 0.05


@dataclass(frozen=True)
class User:
    """One entry of a users file."""

    name: str
    group: str | None = None
    """The access-policy group (`[remote_access.S.groups.G]`), if any."""
    static_ip: IpAddress | None = None
    """The virtual address this user always gets, if any."""
    password: str | None = None
    """The scrypt hash, `scrypt$N$r$p$salt$hash` (base64); None: no password login."""
    nt_hash: bytes | None = None
    """MD4 of the UTF-16LE password, kept only for IKEv2 EAP-MSCHAPv2 servers."""

    def __repr__(self) -> str:
        # Hashes stay out of logs and tracebacks too.
        return f"User(name={self.name!r}, group={self.group!r}, static_ip={self.static_ip!r})"


def needs_nt_hash(server: RemoteAccessConfig) -> bool:
    """Whether `server`'s users need an NT hash next to the scrypt one: only an IKEv2
    server that accepts passwords, whose EAP-MSCHAPv2 works on MD4 of the password
    (RFC 2759 §8.3) and so cannot use a salted hash."""
    return server.protocol == "ikev2" and server.auth in ("password", "any")


def password_problem(name: str, password: str) -> str | None:
    """Why `password` is refused for user `name`, or None: 8-32 characters, at least
    two character classes (lower, upper, digit, other), and not the user name."""
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        return f"a password has {PASSWORD_MIN} to {PASSWORD_MAX} characters"
    classes = sum(
        any(test(c) for c in password)
        for test in (str.islower, str.isupper, str.isdigit, lambda c: not c.isalnum())
    )
    if classes < 2:
        return "a password mixes at least two of: lower case, upper case, digits, others"
    if password.casefold() == name.casefold():
        return "the password must not be the user name"
    return None


def hash_password(password: str, salt: bytes | None = None) -> str:
    """The storable scrypt hash of `password` with a fresh (or given) salt."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.scrypt(
        password.encode(),
        salt=salt,
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        maxmem=SCRYPT_MAXMEM,
        dklen=HASH_BYTES,
    )
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(user: User, password: str) -> bool:
    """Whether `password` is `user`'s (constant-time comparison; False without one)."""
    if user.password is None:
        return False
    try:
        kind, n, r, p, salt, digest = user.password.split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(digest, validate=True)
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt, validate=True),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=SCRYPT_MAXMEM,
            dklen=len(expected),
        )
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


def load_users(path: Path) -> dict[str, User]:
    """The users of the file at `path`; a missing file has none. A file that is
    malformed or readable by others raises ConfigError naming the file and entry."""
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read the users file: {exc.strerror}", str(path)) from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(
            f"the users file holds password hashes and must not be readable by others "
            f"(mode {stat.S_IMODE(st.st_mode):o}; chmod 600 {path})",
            str(path),
        )
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"not a users file: {exc}", str(path)) from None
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        raise ConfigError(f"not a users file of version {FORMAT_VERSION}", str(path))
    entries = data.get("users")
    if not isinstance(entries, dict):
        raise ConfigError('"users" must be an object', str(path))
    users: dict[str, User] = {}
    problems: list[Problem] = []
    for name, body in entries.items():
        try:
            users[name] = _user(name, body)
        except ValueError as exc:
            problems.append(Problem(f"users.{name}", str(exc)))
    if problems:
        raise ConfigError(problems, str(path))
    return users


def _user(name: str, body: Any) -> User:
    if not NAME_RE.match(name):
        raise ValueError("not a valid user name")
    if not isinstance(body, dict):
        raise ValueError("must be an object")
    unknown = set(body) - {"group", "static_ip", "password", "nt_hash"}
    if unknown:
        raise ValueError(f"unknown field {sorted(unknown)[0]!r}")
    group, static_ip = body.get("group"), body.get("static_ip")
    password, nt_hash = body.get("password"), body.get("nt_hash")
    for key, value in (("group", group), ("static_ip", static_ip), ("password", password)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{key} must be a string")
    if nt_hash is not None and (not isinstance(nt_hash, str) or len(nt_hash) != 32):
        raise ValueError("nt_hash must be 32 hexadecimal digits")
    return User(
        name=name,
        group=group,
        static_ip=None if static_ip is None else ipaddress.ip_address(static_ip),
        password=password,
        nt_hash=None if nt_hash is None else bytes.fromhex(nt_hash),
    )


def save_users(path: Path, users: Mapping[str, User]) -> None:
    """Write `users` to `path` atomically (a temporary file renamed over it), mode 0600
    from its first byte, so that no reader ever sees half a file or a readable one."""
    entries: dict[str, dict[str, str]] = {}
    for name in sorted(users):
        user = users[name]
        body: dict[str, str] = {}
        if user.group is not None:
            body["group"] = user.group
        if user.static_ip is not None:
            body["static_ip"] = str(user.static_ip)
        if user.password is not None:
            body["password"] = user.password
        if user.nt_hash is not None:
            body["nt_hash"] = user.nt_hash.hex()
        entries[name] = body
    text = json.dumps({"version": FORMAT_VERSION, "users": entries}, indent=2) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def lock_file(path: Path) -> Path:
    """The lock file of the users (or admins) file `path`: `<path>.lock` beside it."""
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def users_lock(path: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold the exclusive lock of the users file `path` for a read-modify-write, so
    that two writers (two `lockgate user` commands, or one and the web console) cannot
    both read the old file and the later rename drop the other's change.

    The lock is an flock(2) on the sibling `lock_file(path)` (mode 0600), not on `path`
    itself: `save_users` replaces `path` by a rename, and a lock on the old inode would
    not stop a writer that opens the new one. Readers take no lock: the rename is atomic.
    A writer waits up to `timeout` seconds (`LOCK_TIMEOUT` by default), then raises
    ConfigError naming the file."""
    wait = LOCK_TIMEOUT if timeout is None else timeout
    lock = lock_file(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise ConfigError(
            f"cannot open the lock file {lock}: {exc.strerror or exc}", str(path)
        ) from None
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ConfigError(
                        f"another writer has held the lock {lock} for {wait:g} s; "
                        "nothing changed, try again",
                        str(path),
                    ) from None
                time.sleep(LOCK_POLL)
        yield
    finally:
        # Closing the descriptor releases the lock; the lock file stays for the next writer.
        os.close(fd)

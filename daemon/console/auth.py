"""Who may use the console: admin passwords, sessions, CSRF tokens and the login rate
limit. No I/O but reading the admins file; times are passed in.

A session is a random token in a cookie (`Secure; HttpOnly; SameSite=Strict`) that
names an entry kept in memory, so a restart logs everyone out. Each session has its own
CSRF token, which every form carries and every POST must present (compared in constant
time). The login form has one too, from a session that no admin is logged into yet.
"""

from __future__ import annotations

import hmac
import secrets
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from conf.users import User, hash_password, load_users, verify_password

SESSION_IDLE = 30 * 60.0
"""A session unused this long is over."""
SESSION_MAX = 12 * 3600.0
"""And any session this old, used or not."""
MAX_SESSIONS = 1000
"""Sessions kept at most (login pages fetched by anyone make some): the oldest go first."""
LOGIN_FAILURES = 5
"""Failed logins from one address within LOGIN_WINDOW before it must wait: a mistyped
password or two never locks anyone out."""
LOGIN_WINDOW = 300.0

_DUMMY = User("-", password=hash_password(secrets.token_urlsafe(16)))
"""Checked against when the name is unknown, so a wrong name costs as long as a wrong
password and the answer's timing does not tell which names exist."""


@dataclass
class Session:
    token: str
    csrf: str
    created: float
    used: float
    admin: str | None = None
    """The admin logged in, or None for a session that only carries the login's token."""
    notice: str | None = None
    """A message for the next page (an action's outcome)."""
    proof: str | None = None
    """The admin's password hash at login: when `lockgate admin passwd` or `del` changes
    it, the session ends."""


def check_admin(admins_file: Path, name: str, password: str) -> tuple[User | None, bool]:
    """The admin `name` (None: no such admin), and whether `password` is theirs (the
    file is read anew, so `lockgate admin` changes need no reload). Slow on purpose
    (scrypt): run it off the event loop."""
    user = load_users(admins_file).get(name)
    ok = verify_password(user if user is not None else _DUMMY, password)
    return user, ok and user is not None


@dataclass
class Admins:
    """The admins file's password hashes by name, read again only when the file changes
    (checked at every request: a deleted admin or a new password ends the sessions)."""

    path: Path
    _seen: tuple[int, int, int] | None = None
    _hashes: dict[str, str | None] = field(default_factory=dict)

    def proof(self, name: str) -> str | None:
        """`name`'s password hash now, or None if `name` is no admin (any more)."""
        try:
            st = self.path.stat()
            seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            return None
        if seen != self._seen:
            self._hashes = {n: u.password for n, u in load_users(self.path).items()}
            self._seen = seen
        return self._hashes.get(name)


@dataclass
class Sessions:
    """The sessions by token."""

    by_token: dict[str, Session] = field(default_factory=dict)

    def new(self, now: float) -> Session:
        if len(self.by_token) >= MAX_SESSIONS:
            self.expire(now)
        while len(self.by_token) >= MAX_SESSIONS:
            # Login forms fetched by anyone go first: a flood of them must not log the
            # admins out.
            anonymous = [s for s in self.by_token.values() if s.admin is None]
            oldest = min(anonymous or self.by_token.values(), key=lambda s: s.used)
            del self.by_token[oldest.token]
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now, now)
        self.by_token[session.token] = session
        return session

    def get(self, token: str | None, now: float) -> Session | None:
        """The live session of `token` (its use noted), or None."""
        if not token:
            return None
        session = self.by_token.get(token)
        if session is None:
            return None
        if now - session.used > SESSION_IDLE or now - session.created > SESSION_MAX:
            del self.by_token[token]
            return None
        session.used = now
        return session

    def login(self, session: Session, admin: str, proof: str | None, now: float) -> Session:
        """A new session for `admin` in place of `session`: a token known before the
        login (session fixation) is worth nothing after it."""
        self.by_token.pop(session.token, None)
        fresh = self.new(now)
        fresh.admin, fresh.proof = admin, proof
        return fresh

    def end(self, session: Session) -> None:
        self.by_token.pop(session.token, None)

    def expire(self, now: float) -> None:
        for token, s in list(self.by_token.items()):
            if now - s.used > SESSION_IDLE or now - s.created > SESSION_MAX:
                del self.by_token[token]


def csrf_ok(session: Session | None, presented: object) -> bool:
    """Whether `presented` is `session`'s CSRF token."""
    if session is None or not isinstance(presented, str) or not presented:
        return False
    return hmac.compare_digest(session.csrf.encode(), presented.encode())


@dataclass
class LoginLimit:
    """Failed logins per source address in a sliding window."""

    failures: dict[str, deque[float]] = field(default_factory=dict)

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self.failures.get(address, deque())
        while times and now - times[0] > LOGIN_WINDOW:
            times.popleft()
        if not times:
            self.failures.pop(address, None)
        return times

    def wait(self, address: str, now: float) -> float:
        """Seconds `address` must wait before trying again (0: it may try now)."""
        times = self._recent(address, now)
        if len(times) < LOGIN_FAILURES:
            return 0.0
        return LOGIN_WINDOW - (now - times[0])

    def failed(self, address: str, now: float) -> None:
        times = self._recent(address, now)
        times.append(now)
        self.failures[address] = times
        if len(self.failures) > 10 * MAX_SESSIONS:
            # Addresses that stopped trying: forget them rather than grow without end.
            for other in list(self.failures):
                self._recent(other, now)

    def succeeded(self, address: str) -> None:
        self.failures.pop(address, None)

"""Failed logins, limited per source address and per user name.

Every failed password login (wrong password, unknown user) counts against both the
address it came from and the name it tried. The first few failures of each cost
nothing; after that each further failure closes the door for a while, twice as long
each time, up to a ceiling. While a door is closed, a login is refused at once as
"rate limited" without its password being checked (and without being counted, so
waiting always helps). A success clears the user's count; a key's count is
forgotten after `FORGET_AFTER` seconds without a failure.

The figures:
- per user: 3 failures free, then 2, 4, 8, ... seconds, at most 5 minutes: after the
  first quarter hour an attacker gets some 12 guesses an hour at one account;
- per address: 10 failures free (several people behind one NAT may mistype), then
  1, 2, 4, ... seconds, at most 1 minute: some 60 guesses an hour across accounts;
- a user who has logged in from an address before is not held back by that address's
  closed door, so an attacker behind a NAT does not lock the NAT's other users out.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

USER_FREE, USER_BASE, USER_MAX = 3, 2.0, 300.0
ADDRESS_FREE, ADDRESS_BASE, ADDRESS_MAX = 10, 1.0, 60.0
FORGET_AFTER = 900.0
MAX_RECORDS = 10_000
"""Keys remembered per kind; beyond it the longest-quiet ones are forgotten."""
MAX_KNOWN = 10_000


@dataclass
class _Record:
    failures: int = 0
    last: float = 0.0
    closed_until: float = 0.0


class _Doors:
    def __init__(self, free: int, base: float, ceiling: float) -> None:
        self.free, self.base, self.ceiling = free, base, ceiling
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def closed(self, key: str, now: float) -> bool:
        record = self._records.get(key)
        return record is not None and now < record.closed_until

    def fail(self, key: str, now: float) -> None:
        record = self._records.pop(key, None)
        if record is None or now - record.last > FORGET_AFTER:
            record = _Record()
        record.failures += 1
        record.last = now
        beyond = record.failures - self.free
        if beyond > 0:
            record.closed_until = now + min(self.base * 2 ** min(beyond - 1, 30), self.ceiling)
        self._records[key] = record  # the most recent last
        while len(self._records) > MAX_RECORDS:
            self._records.popitem(last=False)

    def clear(self, key: str) -> None:
        self._records.pop(key, None)


class LoginLimiter:
    def __init__(self) -> None:
        self._users = _Doors(USER_FREE, USER_BASE, USER_MAX)
        self._addresses = _Doors(ADDRESS_FREE, ADDRESS_BASE, ADDRESS_MAX)
        self._known: OrderedDict[tuple[str, str], None] = OrderedDict()

    def blocked(self, user: str, address: str, now: float) -> bool:
        """Whether a login of `user` from `address` is refused without a check."""
        if self._users.closed(user, now):
            return True
        return self._addresses.closed(address, now) and (address, user) not in self._known

    def failed(self, user: str, address: str, now: float) -> None:
        self._users.fail(user, now)
        self._addresses.fail(address, now)

    def succeeded(self, user: str, address: str) -> None:
        self._users.clear(user)
        self._known[(address, user)] = None
        self._known.move_to_end((address, user))
        while len(self._known) > MAX_KNOWN:
            self._known.popitem(last=False)

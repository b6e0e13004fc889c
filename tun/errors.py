"""Errors of the tun package."""

from __future__ import annotations


class TunError(Exception):
    """A TUN device could not be opened, configured or used."""


class LinkError(TunError):
    """A netlink request (link, address, route, rule) failed.

    `errno` is the kernel's error number when it gave one (e.g. 17 EEXIST), so callers
    can tell "already there" from a real failure.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno

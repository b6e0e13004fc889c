"""Plain routes (prefix → interface) through one raw NETLINK_ROUTE socket.

One RTM_NEWROUTE or RTM_DELROUTE message per route and the kernel's answer to it,
without pyroute2's request machinery and private event loop (about 1.2 ms of CPU per
route there, a few hundredths of a millisecond here). rtnetlink handles a request
inside the `send` that carries it (rtnetlink(7): the kernel's answer is queued before
`send` returns), so a `RouteSocket` is safe to use from the daemon's event-loop thread:
the `recv` of the answer does not wait for anything. That matters: a thousand CHILD
SAs installing routes through a worker thread paid a GIL hand-over (up to the 5 ms
switch interval) per netlink call on the event loop.

Errors are `LinkError` with the kernel's errno; a removal may accept "already gone".
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

from tun.errors import LinkError

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAIN_TABLE = 254
"""The `main` routing table."""

GONE = frozenset({errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL, errno.ENODEV})
"""Errnos that mean "no such route/address/link": fine for a removal."""

# linux/netlink.h, linux/rtnetlink.h
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
_NLMSG_ERROR = 2
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_REPLACE, _NLM_F_EXCL, _NLM_F_CREATE = 1, 4, 0x100, 0x200, 0x400
_RTA_DST, _RTA_OIF, _RTA_PREFSRC, _RTA_TABLE = 1, 4, 7, 15
_RTPROT_STATIC, _RT_SCOPE_UNIVERSE, _RT_SCOPE_NOWHERE, _RTN_UNICAST = 4, 0, 255, 1
_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
_RTMSG = struct.Struct("=BBBBBBBBI")  # struct rtmsg
_RTA = struct.Struct("=HH")  # struct rtattr
_U32 = struct.Struct("=I")
_ERRNO = struct.Struct("=i")


def _rta(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return _RTA.pack(length, kind) + data + bytes(-length % 4)


def as_network(value: str | IpNetwork) -> IpNetwork:
    """`value` as a network object; a string is parsed as the family its text shows
    (`ipaddress.ip_network` tries IPv4 first and pays for an exception on every IPv6
    prefix). Raises ValueError for a malformed prefix."""
    if not isinstance(value, str):
        return value
    return ipaddress.IPv6Network(value) if ":" in value else ipaddress.IPv4Network(value)


def _packed_address(value: str | IpAddress) -> bytes:
    if not isinstance(value, str):
        return value.packed
    address = ipaddress.IPv6Address(value) if ":" in value else ipaddress.IPv4Address(value)
    return address.packed


class RouteSocket:
    """Adds and removes plain routes; interface indexes are looked up once by name
    and again when the kernel says the cached one is gone (the link was recreated)."""

    TIMEOUT = 5.0
    """Seconds to wait for the kernel's answer (it always sends one: NLM_F_ACK)."""

    def __init__(self) -> None:
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            self._sock.bind((0, 0))
        except OSError as exc:
            raise LinkError(f"cannot open a netlink socket: {exc}", exc.errno) from exc
        self._sock.settimeout(self.TIMEOUT)
        self._seq = 0
        self._indexes: dict[str, int] = {}

    def close(self) -> None:
        self._sock.close()

    def index(self, ifname: str) -> int:
        """The interface index of `ifname` (cached), or LinkError ENODEV."""
        cached = self._indexes.get(ifname)
        if cached is not None:
            return cached
        try:
            index = self._indexes[ifname] = socket.if_nametoindex(ifname)
        except OSError:
            raise LinkError(f"no such interface {ifname!r}", errno.ENODEV) from None
        return index

    def knows(self, ifname: str) -> bool:
        """True when an index for `ifname` is cached (it may belong to a link since gone)."""
        return ifname in self._indexes

    def forget(self, ifname: str) -> None:
        """Drop the cached index of `ifname`: the next use looks the name up again."""
        self._indexes.pop(ifname, None)

    def add_route(
        self,
        destination: str | IpNetwork,
        ifname: str,
        *,
        table: int = MAIN_TABLE,
        source: str | IpAddress | None = None,
        replace: bool = True,
    ) -> None:
        """Route `destination` out of `ifname` in `table`, preferring `source` as the
        source address of packets the host itself sends there. With `replace` an
        existing route to the same prefix is overwritten instead of failing (EEXIST)."""
        net = as_network(destination)
        flags = _NLM_F_CREATE | (_NLM_F_REPLACE if replace else _NLM_F_EXCL)
        packed = None if source is None else _packed_address(source)
        what = f"route {net} dev {ifname} table {table}"
        self._on_link(what, ifname, RTM_NEWROUTE, flags, net, table, packed)

    def remove_route(
        self,
        destination: str | IpNetwork,
        ifname: str,
        *,
        table: int = MAIN_TABLE,
        missing_ok: bool = True,
    ) -> None:
        """Remove the route to `destination` via `ifname`; with `missing_ok`, a route
        (or interface) that is already gone is not an error."""
        net = as_network(destination)
        what = f"remove route {net} dev {ifname} table {table}"
        try:
            self._on_link(what, ifname, RTM_DELROUTE, 0, net, table, None)
        except LinkError as exc:
            if not (missing_ok and exc.errno in GONE):
                raise

    def _on_link(
        self,
        what: str,
        ifname: str,
        kind: int,
        flags: int,
        net: IpNetwork,
        table: int,
        source: bytes | None,
    ) -> None:
        cached = self.knows(ifname)
        code = self._request(what, kind, flags, net, self.index(ifname), table, source)
        if code == errno.ENODEV and cached:
            # The index belonged to a link that is gone; the name may be back.
            self.forget(ifname)
            code = self._request(what, kind, flags, net, self.index(ifname), table, source)
        if code:
            raise LinkError(f"{what}: {os.strerror(code)}", code)

    def _request(
        self,
        what: str,
        kind: int,
        flags: int,
        net: IpNetwork,
        oif: int,
        table: int,
        source: bytes | None,
    ) -> int:
        # One message; returns the kernel's errno (0: done).
        self._seq = seq = (self._seq + 1) & 0xFFFFFFFF
        family = socket.AF_INET if net.version == 4 else socket.AF_INET6
        if kind == RTM_NEWROUTE:
            # The route pyroute2 made before: protocol static, scope universe.
            protocol, scope, rtype = _RTPROT_STATIC, _RT_SCOPE_UNIVERSE, _RTN_UNICAST
        else:
            # As `ip route del` asks: any protocol, scope and type, so a route that
            # someone else added to the prefix and interface goes too.
            protocol, scope, rtype = 0, _RT_SCOPE_NOWHERE, 0
        # Tables above 255 go in RTA_TABLE alone.
        body = _RTMSG.pack(
            family, net.prefixlen, 0, 0, table if table < 256 else 0, protocol, scope, rtype, 0
        )
        body += _rta(_RTA_DST, net.network_address.packed) + _rta(_RTA_OIF, _U32.pack(oif))
        body += _rta(_RTA_TABLE, _U32.pack(table))
        if source is not None:
            body += _rta(_RTA_PREFSRC, source)
        header = _HEADER.pack(16 + len(body), kind, flags | _NLM_F_REQUEST | _NLM_F_ACK, seq, 0)
        try:
            self._sock.send(header + body)
            while True:
                reply = self._sock.recv(65536)
                offset = 0
                while offset + 16 <= len(reply):
                    length, mtype, _, reply_seq, _ = _HEADER.unpack_from(reply, offset)
                    if mtype == _NLMSG_ERROR and reply_seq == seq:
                        code: int = _ERRNO.unpack_from(reply, offset + 16)[0]
                        return -code
                    offset += max(16, (length + 3) & ~3)
        except OSError as exc:  # includes the timeout
            raise LinkError(f"{what}: netlink: {exc}", exc.errno) from exc

"""What the data-plane worker tests share: waiting for a condition on the loop,
reading one datagram, and a CHILD SA pair whose one half a worker gets and whose
other half the test plays as the peer gateway."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import replace

from daemon.childsa import ChildSaEntry, entry_from_event
from ikev2.events import Address, ChildSaInstalled
from ikev2.ts import TrafficSelector as IkeTs
from testkit.dataplane import events

WAIT = 30.0
"""A generous bound on a shared machine: nothing waited for is timed."""


async def until(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Wait on the running loop until `check()` holds; AssertionError naming `what`
    after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def recv_datagram(sock: socket.socket, timeout: float = WAIT) -> tuple[bytes, Address]:
    """The next datagram on a non-blocking socket, and its sender."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[tuple[bytes, Address]] = loop.create_future()

    def ready() -> None:
        if not future.done():
            data, sender = sock.recvfrom(65535)
            future.set_result((data, (sender[0], sender[1])))

    loop.add_reader(sock.fileno(), ready)
    try:
        return await asyncio.wait_for(future, timeout)
    finally:
        loop.remove_reader(sock.fileno())


def sa_pair(
    uid: int,
    remote_net: str,
    local: Address,
    remote: Address,
    local_net: str = "192.0.2.0/24",
) -> tuple[ChildSaInstalled, ChildSaEntry]:
    """Our event for CHILD SA `uid` (`local_net` === `remote_net`, ESP in UDP from
    `local` to `remote`; its inbound SPI is 0xB0000000 + uid), and the peer's entry."""
    ours, theirs = events(uid=uid)
    remote_ts = (IkeTs.from_network(remote_net),)
    local_ts = (IkeTs.from_network(local_net),)
    ours = replace(
        ours,
        connection=f"c{uid}",
        child=f"c{uid}",
        local_ts=local_ts,
        remote_ts=remote_ts,
        local=local,
        remote=remote,
    )
    theirs = replace(theirs, local_ts=remote_ts, remote_ts=local_ts)
    return ours, entry_from_event(theirs)

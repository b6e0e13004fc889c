"""A data-plane worker in this process (its loop, its channel, an in-memory TUN
queue): what it answers and how it follows the main process's messages."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import replace

import pytest

from daemon.pump import open_udp
from daemon.worker import ACQUIRES_PER_SECOND, UNKNOWN_SPIS_PER_SECOND, Worker
from daemon.worker_protocol import (
    MAX_MESSAGE,
    AcquireNotice,
    CountersReply,
    CountersRequest,
    Install,
    InstallFailed,
    Message,
    Move,
    Ready,
    Setup,
    UdpSocket,
    UnknownSpiNotice,
    decode,
)
from testkit.dataplane import echo_request, events, ipv4
from tun.memory import MemoryTun

LOOPBACK = "127.0.0.1"


def _with_worker(index: int, body: Callable[[Worker, socket.socket], None]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # The worker takes the fds over (as it does those it inherits): detached here.
        queue, queue_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        tun_peer = MemoryTun(queue_peer, "tq")
        udp = open_udp(LOOPBACK, 0)
        port = udp.getsockname()[1]
        udp_socket = UdpSocket(udp.detach(), LOOPBACK, port)
        setup = Setup(index, 2, queue.detach(), "wq", 0, True, False, (udp_socket,), (), ())
        worker = Worker(setup, theirs, loop, clock=lambda: 5.0)
        worker.start()
        ours.settimeout(10)
        assert isinstance(decode(ours.recv(MAX_MESSAGE)), Ready)
        try:
            body(worker, ours)
            await asyncio.sleep(0)
        finally:
            worker.close()
            ours.close()
            tun_peer.close()

    asyncio.run(main())


def _answer(worker: Worker, control: socket.socket, request: int) -> CountersReply:
    worker._on_message(CountersRequest(request))
    reply = decode(control.recv(MAX_MESSAGE))
    assert isinstance(reply, CountersReply)
    return reply


@pytest.mark.parametrize(("index", "reported"), [(0, 3), (1, 0)])
def test_the_tun_devices_drops_are_reported_by_one_worker_only(index: int, reported: int) -> None:
    def body(worker: Worker, control: socket.socket) -> None:
        drops = {"tun_queue": 3, "udp_receive_buffer": 1}
        worker.pump.kernel_drops = lambda: dict(drops)  # type: ignore[method-assign]
        reply = _answer(worker, control, 1)
        assert reply.kernel_drops.get("tun_queue", 0) == reported
        assert reply.kernel_drops["udp_receive_buffer"] == 1

    _with_worker(index, body)


def test_an_sa_is_owned_or_forwarded_and_moves_with_its_addresses() -> None:
    def body(worker: Worker, control: socket.socket) -> None:
        own, _ = events(uid=2)
        other, _ = events(uid=3)
        worker._on_message(Install(own, owner=0))
        worker._on_message(Install(replace(other, encr_key_in=b"", encr_key_out=b""), owner=1))
        assert set(worker.plane.entries) == {2}
        assert set(worker.plane.forwards) == {3}
        assert worker.plane.forwards[3].forward_to == 1
        worker._on_message(Move(2, (LOOPBACK, 4500), ("198.51.100.7", 4501), True, 1300))
        entry = worker.plane.entries[2]
        assert (entry.remote, entry.mtu) == (("198.51.100.7", 4501), 1300)
        reply = _answer(worker, control, 2)
        assert [sa.unique_id for sa in reply.sas] == [2]  # forward entries have no counters

    _with_worker(0, body)


def test_an_sa_it_cannot_build_is_refused_with_the_reason() -> None:
    def body(worker: Worker, control: socket.socket) -> None:
        own, _ = events(uid=2)
        worker._on_message(Install(replace(own, encr_key_in=b"short"), owner=0))
        failed = decode(control.recv(MAX_MESSAGE))
        assert isinstance(failed, InstallFailed) and failed.unique_id == 2
        assert "key" in failed.reason
        assert worker.plane.entries == {}

    _with_worker(0, body)


def _drain(control: socket.socket) -> list[Message]:
    """Every message the worker sent, until half a second passes without one."""
    got: list[Message] = []
    control.settimeout(0.5)
    while True:
        try:
            got.append(decode(control.recv(MAX_MESSAGE)))
        except TimeoutError:
            return got


def test_acquires_are_limited_per_second() -> None:
    def body(worker: Worker, control: socket.socket) -> None:
        packet = ipv4("192.0.2.10", "203.0.113.10", echo_request(1), proto=1)
        worker.plane.from_tun([packet] * (ACQUIRES_PER_SECOND + 10))
        got = _drain(control)
        assert got == [AcquireNotice(packet)] * ACQUIRES_PER_SECOND
        assert worker.plane.counters["acquires_rate_limited"] == 10

    _with_worker(0, body)


def test_unknown_spi_notices_are_limited_per_second_whatever_their_sources() -> None:
    # Spoofed ESP from many sources passes the data plane's per-address limit; the
    # worker still sends at most its budget of control messages each second.
    def body(worker: Worker, control: socket.socket) -> None:
        for i in range(UNKNOWN_SPIS_PER_SECOND + 15):
            worker._on_unknown_spi(0x1000 + i, ("198.51.100.1", 4500), (f"203.0.113.{i}", 4500))
        got = _drain(control)
        assert len(got) == UNKNOWN_SPIS_PER_SECOND
        assert all(isinstance(m, UnknownSpiNotice) for m in got)
        assert worker.plane.counters["unknown_spi_reports_rate_limited"] == 15

    _with_worker(0, body)

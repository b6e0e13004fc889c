"""Two data-plane worker processes on the two queues of a real multi-queue TUN in a
namespace: the kernel spreads a host's flows over both queues, the SA's one owner
seals them all (the other worker hands its share over), and after a kill -9 the
restarted worker takes its queue again, once it is ready to read it."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
from netns import Lab, in_namespace

from daemon import worker_pool
from daemon.pump import open_udp
from daemon.worker_pool import WorkerPool
from esp.drops import DropReason
from testkit.dataplane import ipv4
from testkit.workers import recv_datagram, sa_pair, until
from tun import LinkManager, TunDevice

pytestmark = pytest.mark.netns

LOOPBACK = "127.0.0.1"
FLOWS = 32


def _send_flows(first_port: int) -> None:
    # One datagram from each of FLOWS source ports: the kernel picks a queue per flow.
    for i in range(FLOWS):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("192.0.2.1", first_port + i))
            sock.sendto(b"flow %d" % i, ("203.0.113.10", 9))


async def _scenario(queues: list[TunDevice]) -> None:
    loop = asyncio.get_running_loop()
    udp = [open_udp(LOOPBACK, 0) for _ in queues]
    ports = [s.getsockname()[1] for s in udp]
    peer = open_udp(LOOPBACK, 0)
    lost: list[tuple[int, list[int]]] = []
    pool = WorkerPool(
        2,
        tuns=queues,
        udp=[{(LOOPBACK, ports[k]): udp[k]} for k in range(2)],
        loop=loop,
        on_worker_lost=lambda k, uids: lost.append((k, uids)),
        poll_interval=None,
    )
    pool.start()
    # The queue each spawn leaves behind it: a restarted worker's goes back in use
    # only when the new process is ready to read it.
    spawned: list[tuple[int, bool]] = []
    spawn = pool._spawn

    def recording_spawn(worker: worker_pool._Worker) -> None:
        spawn(worker)
        spawned.append((worker.index, queues[worker.index].attached))

    pool._spawn = recording_spawn  # type: ignore[method-assign]
    try:
        await until(pool.ready, "both workers ready")
        # One SA pair, as a peer that is no lockgate negotiates: uid 2 has an even
        # inbound SPI, so worker 0 owns it; worker 1 holds a forward entry.
        event, theirs = sa_pair(2, "203.0.113.0/24", (LOOPBACK, ports[0]), peer.getsockname())
        assert pool.install(event) == 0
        assert await pool.refresh_counters()

        async def every_flow_arrives(first_port: int) -> None:
            _send_flows(first_port)
            seen = set()
            while len(seen) < FLOWS:
                data, sender = await recv_datagram(peer)
                assert sender == (LOOPBACK, ports[0])  # sealed by the owner only
                opened = theirs.inbound.decapsulate(data)
                assert not isinstance(opened, DropReason), opened
                inner = opened[0]
                assert inner[16:20] == socket.inet_aton("203.0.113.10")
                seen.add(int.from_bytes(inner[20:22], "big"))
            assert seen == set(range(first_port, first_port + FLOWS))

        await every_flow_arrives(40000)
        assert await pool.refresh_counters()
        handed = [t.counters["handed_off"] for t in pool.worker_totals()]
        assert handed[0] == 0 and handed[1] > 0  # the kernel used both queues
        assert pool.counters[2].packets_out == FLOWS

        # Back: ESP to the owner comes out of its queue to a socket on 192.0.2.1.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
            listener.bind(("192.0.2.1", 7000))
            listener.setblocking(False)
            inner = _udp4("203.0.113.10", "192.0.2.1", 9, 7000, b"back")
            esp = theirs.outbound.encapsulate(inner)
            assert isinstance(esp, bytes)
            peer.sendto(esp, (LOOPBACK, ports[0]))
            data, _ = await recv_datagram(listener)
            assert data == b"back"

        # kill -9 the forwarding worker: while it is down its queue is detached, so
        # the kernel gives every flow to the owner's queue (nothing handed over, none
        # stuck in a queue nobody reads); restarted, it takes its queue again.
        old = pool.pids()[1]
        os.kill(old, 9)
        await until(lambda: bool(lost), "the loss")
        assert lost == [(1, [])]
        assert not queues[1].attached and queues[0].attached
        await every_flow_arrives(42000)
        await until(lambda: pool.ready() and pool.pids()[1] not in (0, old), "the restart")
        assert spawned == [(1, False)]  # detached while Python started
        assert queues[1].attached
        await every_flow_arrives(41000)
    finally:
        pool.close()
        for sock in (*udp, peer):
            sock.close()


def _udp4(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    udp = sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
    udp += (8 + len(payload)).to_bytes(2, "big") + b"\x00\x00" + payload
    return ipv4(src, dst, udp, proto=17)


def test_two_workers_share_a_multi_queue_tun_and_one_owner_seals_every_flow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A restart slow enough to look at the dead worker's queue meanwhile.
    monkeypatch.setattr(worker_pool, "RESTART_DELAYS", (3.0,))
    with Lab() as lab:
        ns = lab.namespace("wq")
        with in_namespace(ns.name):
            first = TunDevice.open("lgwq%d", multi_queue=True)
            second = first.add_queue()
            try:
                with LinkManager() as links:
                    links.quiet_ipv6(first.name)
                    links.add_address(first.name, "192.0.2.1/24")
                    links.set_up(first.name)
                    links.add_route("203.0.113.0/24", first.name)
                asyncio.run(_scenario([first, second]))
            finally:
                second.close()
                first.close()

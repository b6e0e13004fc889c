"""The gateway's side of `[gateway] workers = N`: what it opens for its data-plane
workers, and how the rest of the daemon keeps working with them.

The main process keeps the IKE endpoint, port 500, the control socket and a
*shadow* data plane: every CHILD SA is installed there as with one process, so
routes, lifetimes, liveness, status, metrics and the console read the same
entries, but the main process never seals or opens ESP. Each worker reads one
queue of the multi-queue TUN and the ESP whose SPI it owns (`spi_in % N`,
`daemon/steering.py`); the counters it reports are mirrored into the shadow
entries (`mirror_counters`). A worker that dies takes its CHILD SAs with it (a new
process would restart their sequence numbers under the same keys): they are
rekeyed (`replace_lost`), and the rekey keeps each one's worker index (RFC 9611
per-resource SAs, `ikev2` chooses the new SPI), so the restarted worker gets the
successors.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from daemon.dataplane import DataPlane
from daemon.pump import open_raw_esp
from daemon.steering import attach_raw_esp_filter, open_steered_udp
from daemon.worker_pool import WorkerPool
from daemon.worker_protocol import SaCounters
from ikev2.endpoint import Endpoint
from ikev2.errors import IkeError
from ikev2.events import Address, ChildSaInstalled
from tun import TunDevice

log = logging.getLogger(__name__)


@dataclass
class WorkerFds:
    """What the main process opens for N workers and keeps open for the daemon's
    life: a steered socket group's index follows the order its sockets joined, and
    a socket that closed hands its index to the group's last one, so a worker that
    dies must not take its socket with it; the main process holds every fd and a
    restarted worker gets the same ones."""

    main_udp: dict[Address, socket.socket] = field(default_factory=dict)
    """Index 0 of each port-4500 group: IKE behind the non-ESP marker, keepalives."""
    udp: list[dict[Address, socket.socket]] = field(default_factory=list)
    """Per worker, its port-4500 socket on each local address."""
    raw: list[dict[str, socket.socket]] = field(default_factory=list)
    """Per worker, its raw ESP socket on each local address (filtered by SPI)."""
    queues: list[TunDevice] = field(default_factory=list)
    """Per worker, its queue of the gateway's TUN (queue 0 is the TUN itself)."""

    def close(self) -> None:
        """Close every socket and the added queues (the TUN itself is the gateway's)."""
        socks: list[socket.socket] = list(self.main_udp.values())
        for udp in self.udp:
            socks += udp.values()
        for raw in self.raw:
            socks += raw.values()
        for sock in socks:
            sock.close()
        for queue in self.queues[1:]:
            queue.close()


def open_worker_sockets(addresses: Sequence[str], nat_port: int, workers: int) -> WorkerFds:
    """Bind a steered port-4500 group on every local address (main first, then each
    worker) and each worker's filtered raw ESP socket; all or nothing. A raw socket
    refused (no CAP_NET_RAW) leaves raw ESP out, as with one process."""
    fds = WorkerFds(udp=[{} for _ in range(workers)], raw=[{} for _ in range(workers)])
    try:
        for address in addresses:
            main, *mine = open_steered_udp(address, nat_port, workers)
            fds.main_udp[(address, nat_port)] = main
            for k, sock in enumerate(mine):
                fds.udp[k][(address, nat_port)] = sock
            for k in range(workers):
                try:
                    raw = open_raw_esp(address)
                except PermissionError:
                    log.warning("no raw ESP socket on %s (needs CAP_NET_RAW): only "
                                "UDP-encapsulated ESP will work", address)  # fmt: skip
                    break
                fds.raw[k][address] = raw
                attach_raw_esp_filter(raw, k, workers)
    except OSError:
        fds.close()
        raise
    return fds


def shadow_event(event: ChildSaInstalled) -> ChildSaInstalled:
    """`event` with random keys of the same lengths, for the main process's shadow
    entry: the real keys go to the owning worker only, so no other process could
    ever seal under them (one key, one sequence counter: RFC 4106 §3)."""
    return dataclasses.replace(
        event,
        encr_key_in=os.urandom(len(event.encr_key_in)),
        integ_key_in=os.urandom(len(event.integ_key_in)),
        encr_key_out=os.urandom(len(event.encr_key_out)),
        integ_key_out=os.urandom(len(event.integ_key_out)),
    )


def add_queues(tun: TunDevice, fds: WorkerFds, workers: int) -> None:
    """One TUN queue per worker: the TUN itself for worker 0, new queues for the
    others. The kernel reads a flow out of the queue that last wrote a packet of it
    (the worker that opened its inbound ESP), else the queue its hash picks
    (tun_automq_select_queue); a flow changes queue only when that changes (its first
    answer, a rekey that moves it to another worker's SA, a dead worker's queue
    detached), and only then can packets still in the old queue come out late."""
    fds.queues = [tun]
    for _ in range(workers - 1):
        fds.queues.append(tun.add_queue())


class CounterMirror:
    """Copies the workers' last reported counters into the shadow entries."""

    def __init__(self, plane: DataPlane, pool: WorkerPool) -> None:
        self.plane = plane
        self.pool = pool
        self._copied: dict[int, SaCounters] | None = None

    def __call__(self) -> None:
        # The pool makes a new dict per round of answers (about one a second), and
        # the volume watcher asks ten times a second: copy each round once.
        counters = self.pool.counters
        if counters is self._copied:
            return
        self._copied = counters
        entries = self.plane.entries
        for unique_id, counted in counters.items():
            entry = entries.get(unique_id)
            if entry is None:
                continue
            entry.inbound.mirror(counted.packets_in, counted.bytes_in, 0)
            # Every sealed packet took a sequence number (RFC 4303 §3.3.3).
            entry.outbound.mirror(counted.packets_out, counted.bytes_out, counted.packets_out + 1)
            entry.drops = Counter(counted.drops)


def status_totals(plane: DataPlane, pool: WorkerPool) -> dict[str, Any]:
    """The data plane's part of `lockgate status` with workers: the shadow entries
    (mirrored first), and drops, counters and kernel drops added up over the main
    process (IKE and keepalives on port 4500) and every worker, dead ones' included."""
    totals = pool.totals()
    counters = Counter(plane.counters)
    counters.update(totals.counters)
    return {
        "sas": [entry.status() for entry in plane.entries.values()],
        "drops": dict(sorted(total_drops(plane, pool).items())),
        "counters": dict(sorted(counters.items())),
        "kernel_drops": dict(sorted(totals.kernel_drops.items())),
        "workers": [
            {"index": index, "pid": pid, "owns": owned}
            for index, (pid, owned) in enumerate(
                zip(pool.pids(), _owned_counts(pool, plane), strict=True)
            )
        ],
    }


def total_drops(plane: DataPlane, pool: WorkerPool) -> Counter[str]:
    """Drops by reason with workers: the main process's own (IKE and keepalives on
    port 4500; its shadow entries' are the workers' and not counted twice) and every
    worker's, dead ones' included."""
    drops = Counter(plane.drops)
    drops.update(pool.totals().drops)
    return drops


def _owned_counts(pool: WorkerPool, plane: DataPlane) -> list[int]:
    owned = [0] * pool.count
    for unique_id in plane.entries:
        owner = pool.owner(unique_id)
        if owner is not None:
            owned[owner] += 1
    return owned


def replace_lost(endpoint: Endpoint, index: int, unique_ids: list[int]) -> int:
    """Rekey the CHILD SAs a dead worker owned (RFC 7296 §2.8): the successors get
    new keys and SPIs of the same worker index; returns how many rekeys started."""
    started = 0
    now = time.monotonic()
    for unique_id in unique_ids:
        try:
            endpoint.rekey_child(unique_id, now)
        except IkeError as exc:
            log.warning("worker %d: CHILD SA #%d not rekeyed: %s", index, unique_id, exc)
        else:
            started += 1
    log.warning("data-plane worker %d lost %d CHILD SA(s); %d rekey(s) started",
                index, len(unique_ids), started)  # fmt: skip
    return started

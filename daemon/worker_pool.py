"""The main process's side of the data-plane workers (`[gateway] workers = N`).

`WorkerPool` starts N `daemon.worker` processes with `subprocess` (a fresh
interpreter each, ``sys.executable -m daemon.worker``, the file descriptors passed
at their numbers: never a fork of the running event loop), and keeps their control
channels on the main loop. It installs each CHILD SA in the worker that owns it
(`owner_of`: our inbound SPI modulo N, the rule the kernel's steering follows) and
a keyless forward entry in every other worker, removes them, and asks for counters
every `POLL_INTERVAL` (or on demand, `refresh_counters`).

A worker that dies is reported (`on_worker_lost`, with the CHILD SAs it owned) and
started again with the same file descriptors after a growing back-off. Its SAs are
never installed again: a new process would start their sequence counters at 1 with
the same keys, and AES-GCM would repeat nonces (RFC 4106 §3). The pool does not
even keep their keys: it keeps each SA's keyless form only, for the forward entries
a restarted worker gets. The gateway replaces the lost SAs by rekeying them.

The pool needs nothing of the systemd unit beyond what the daemon has: the workers
are plain child processes (fork and execve are in @system-service), talk over
AF_UNIX socket pairs (in RestrictAddressFamilies), need no capability (they get
their sockets and TUN queue open), and stay in the daemon's control group (systemd
kills what is left of them at a stop). They ignore the SIGTERM systemd sends the
whole group, so the data plane still carries the main process's Deletes; they exit
when their control socket closes (`close`, or the main process's death).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from daemon.childsa import DEFAULT_PATH_MTU
from daemon.pump import grow_buffers
from daemon.worker_protocol import (
    AcquireNotice,
    Channel,
    CountersReply,
    CountersRequest,
    HandoffSocket,
    IkeNotice,
    Install,
    InstallFailed,
    Message,
    Move,
    QueueAttached,
    RawSocket,
    Ready,
    Remove,
    SaCounters,
    Setup,
    UdpSocket,
    UnknownSpiNotice,
)
from ikev2.events import Address, ChildSaInstalled
from tun import PacketDevice, TunDevice, TunError
from tun.memory import MemoryTun

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0
"""Seconds between two counters requests to every worker."""
RESTART_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)
"""Back-off before restarting a worker that died: the next delay each time it dies
again within `STABLE_AFTER` seconds of its start."""
STABLE_AFTER = 30.0
"""A worker that ran this long starts its back-off over when it dies."""
STOP_TIMEOUT = 2.0
"""Seconds a worker has to exit once its control socket closed, before SIGKILL."""

IkeReceiver = Callable[[bytes, Address, Address], None]
UnknownSpiReceiver = Callable[[int, Address, Address], None]
AcquireReceiver = Callable[[bytes], None]
WorkerLost = Callable[[int, list[int]], None]
"""(worker index, unique ids of the CHILD SAs it owned)."""


def _signal_name(number: int) -> str:
    # Real-time signals (SIGRTMIN+n) have no member in signal.Signals.
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def owner_of(spi_in: int, count: int) -> int:
    """The worker that owns a CHILD SA: our inbound SPI modulo the worker count (the
    kernel's steering reads the same SPI)."""
    return spi_in % count


def without_keys(event: ChildSaInstalled) -> ChildSaInstalled:
    """``event`` with every key emptied: what a forward entry needs."""
    return dataclasses.replace(
        event, encr_key_in=b"", integ_key_in=b"", encr_key_out=b"", integ_key_out=b""
    )


@dataclass(slots=True)
class WorkerTotals:
    """A worker's data-plane totals (`DataPlane.total_drops`, `counters`, the
    pump's `kernel_drops`, `DataPlane.retired_traffic`), or their sum."""

    drops: Counter[str] = field(default_factory=Counter)
    counters: Counter[str] = field(default_factory=Counter)
    kernel_drops: Counter[str] = field(default_factory=Counter)
    retired_traffic: dict[str, list[int]] = field(default_factory=dict)

    def add(self, other: WorkerTotals) -> None:
        self.drops.update(other.drops)
        self.counters.update(other.counters)
        self.kernel_drops.update(other.kernel_drops)
        for name, counts in other.retired_traffic.items():
            total = self.retired_traffic.setdefault(name, [0, 0, 0, 0])
            for i, count in enumerate(counts[:4]):
                total[i] += count


@dataclass(slots=True)
class _Sa:
    """What the pool remembers of an installed CHILD SA: never its keys."""

    event: ChildSaInstalled
    """The event without keys (`without_keys`)."""
    owner: int
    preferred: bool
    path_mtu: int
    forward: bool
    lost: bool = False
    """Its owner died: only the forward entries are left, until it is removed."""


@dataclass(slots=True)
class _Worker:
    index: int
    process: subprocess.Popen[bytes] | None = None
    channel: Channel | None = None
    pid: int = 0
    ready: bool = False
    started_at: float = 0.0
    failures: int = 0
    """Deaths in a row, each within `STABLE_AFTER` of its start (the back-off step)."""
    restart: asyncio.TimerHandle | None = None
    counters: dict[int, SaCounters] = field(default_factory=dict)
    waiting: dict[int, Install] = field(default_factory=dict)
    """SAs installed while it was down, by unique id: its successor's first and only."""
    totals: WorkerTotals = field(default_factory=WorkerTotals)
    partial: dict[int, SaCounters] = field(default_factory=dict)
    """The parts of a counters answer read so far."""
    partial_request: int = 0
    """The request those parts answer."""
    answered: int = 0
    """The last counters request it answered in full."""


class WorkerPool:
    """N data-plane worker processes, driven from the main process's event loop.

    Per worker ``k``, ``tuns[k]`` is its TUN queue, ``udp[k]`` its port-4500 sockets
    by local (address, port) and ``raw[k]`` its raw ESP sockets by address. They
    stay the caller's (to close after `close`); the pool keeps them open in this
    process so that a restarted worker gets them again. The pool makes the
    hand-off socket pairs itself (AF_UNIX datagrams, one per pair of workers).
    """

    def __init__(
        self,
        count: int,
        *,
        tuns: Sequence[PacketDevice],
        udp: Sequence[dict[Address, socket.socket]],
        raw: Sequence[dict[str, socket.socket]] | None = None,
        loop: asyncio.AbstractEventLoop,
        on_ike: IkeReceiver | None = None,
        on_unknown_spi: UnknownSpiReceiver | None = None,
        on_acquire: AcquireReceiver | None = None,
        on_worker_lost: WorkerLost | None = None,
        on_install_failed: Callable[[int, int, str], None] | None = None,
        offload: bool = True,
        log_level: str = "info",
        python: str = sys.executable,
        poll_interval: float | None = POLL_INTERVAL,
    ) -> None:
        if count < 1:
            raise ValueError("a worker pool needs at least one worker")
        if len(tuns) != count or len(udp) != count or (raw is not None and len(raw) != count):
            raise ValueError("one TUN queue and one set of sockets per worker")
        self.count = count
        self.loop = loop
        self.tuns = list(tuns)
        self.udp = list(udp)
        self.raw = list(raw) if raw is not None else [{} for _ in range(count)]
        self.on_ike = on_ike
        self.on_unknown_spi = on_unknown_spi
        self.on_acquire = on_acquire
        self.on_worker_lost = on_worker_lost
        self.on_install_failed = on_install_failed
        self.offload = offload
        self.log_level = log_level
        self.python = python
        self.poll_interval = poll_interval
        self.counters: dict[int, SaCounters] = {}
        """Every live CHILD SA's counters by unique id, as last reported."""
        self.past = WorkerTotals()
        """What workers that died had counted (their SAs' traffic by connection in
        `retired_traffic`), so totals never go back."""
        self._sas: dict[int, _Sa] = {}
        self._workers = [_Worker(k) for k in range(count)]
        self._handoff: dict[tuple[int, int], socket.socket] = {}
        for i in range(count):
            for j in range(i + 1, count):
                a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
                for sock in (a, b):
                    grow_buffers(sock)
                self._handoff[(i, j)], self._handoff[(j, i)] = a, b
        self._request = 0
        self._poller: asyncio.TimerHandle | None = None
        self._answers: asyncio.Event = asyncio.Event()
        self._closing = False
        self._exiting: set[subprocess.Popen[bytes]] = set()
        """Workers whose control socket closed, not yet reaped."""

    # ---- life ----------------------------------------------------------------------

    def start(self) -> None:
        """Start every worker and the periodic counters requests."""
        for worker in self._workers:
            self._spawn(worker)
        if self.poll_interval is not None:
            self._poller = self.loop.call_later(self.poll_interval, self._poll_tick)

    def pids(self) -> list[int]:
        """The workers' process ids (0 for one being restarted)."""
        return [w.pid if w.process is not None else 0 for w in self._workers]

    def ready(self) -> bool:
        """Whether every worker said it reads its file descriptors."""
        return all(w.ready for w in self._workers)

    def _spawn(self, worker: _Worker) -> None:
        k = worker.index
        tun = self.tuns[k]
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        handoff = [HandoffSocket(s.fileno(), j) for (i, j), s in self._handoff.items() if i == k]
        setup = Setup(
            index=k,
            count=self.count,
            tun_fd=tun.fileno(),
            tun_name=tun.name,
            tun_flags=int(getattr(tun, "flags", 0)),
            tun_memory=isinstance(tun, MemoryTun),
            tun_uso=bool(getattr(tun, "uso_writes", False)),
            udp=tuple(UdpSocket(s.fileno(), a, p) for (a, p), s in self.udp[k].items()),
            raw=tuple(RawSocket(s.fileno(), a) for a, s in self.raw[k].items()),
            handoff=tuple(handoff),
            offload=self.offload,
            log_level=self.log_level,
            # Its predecessor's death took the queue out of use (`_lost`): it goes
            # back in use when the new process is ready to read it (`_on_ready`),
            # not during the half second Python takes to start, when the kernel
            # would steer flows into it for nobody.
            tun_attached=not isinstance(tun, TunDevice) or tun.attached,
        )
        fds = [child.fileno(), setup.tun_fd, *(u.fd for u in setup.udp)]
        fds += [r.fd for r in setup.raw] + [h.fd for h in setup.handoff]
        try:
            process = subprocess.Popen(
                [self.python, "-m", "daemon.worker", "--control", str(child.fileno())],
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                # Its own session: a terminal's signals are the main process's.
                start_new_session=True,
            )
        except OSError as exc:
            parent.close()
            child.close()
            log.error("cannot start data-plane worker %d: %s", k, exc)
            self._schedule_restart(worker)
            return
        child.close()
        worker.process, worker.pid, worker.ready = process, process.pid, False
        worker.started_at = time.monotonic()
        worker.channel = Channel(
            parent,
            self.loop,
            lambda message: self._on_message(worker, message),
            lambda: self._on_closed(worker),
            name=f"data-plane worker {k}",
        )
        worker.channel.send(setup)
        # Everything it must know: the forward entries of SAs other workers own. Its
        # own SAs of an earlier life are never sent again (see the module's doc).
        for sa in self._sas.values():
            if sa.owner != k and sa.forward:
                worker.channel.send(Install(sa.event, sa.owner, sa.preferred, sa.path_mtu))
        # And the SAs installed while it was down, each sent once, keys and all.
        waiting, worker.waiting = worker.waiting, {}
        for install in waiting.values():
            worker.channel.send(install)
        log.debug("data-plane worker %d started (pid %d)", k, process.pid)

    def _on_closed(self, worker: _Worker) -> None:
        process = worker.process
        worker.process, worker.channel, worker.ready = None, None, False
        if process is not None:
            self._await_exit(worker, process, time.monotonic() + STOP_TIMEOUT)

    def _await_exit(
        self, worker: _Worker, process: subprocess.Popen[bytes], deadline: float
    ) -> None:
        # Its control socket closed: it exited, or is about to; checked without
        # blocking the loop. One that closed it and lives on is not one we want.
        self._exiting.add(process)
        code = process.poll()
        if code is None:
            if self._closing:
                return  # `close` reaps it
            if time.monotonic() < deadline:
                self.loop.call_later(0.02, self._await_exit, worker, process, deadline)
                return
            process.kill()
            code = process.wait()
        self._exiting.discard(process)
        if not self._closing:
            self._lost(worker, code)

    def _detach_queue(self, k: int) -> None:
        # While nobody reads the queue, the kernel steers its flows to the other
        # queues (their workers' SAs, or forward entries) instead of filling it.
        tun = self.tuns[k]
        if self._closing or not isinstance(tun, TunDevice) or not tun.attached:
            return
        if sum(isinstance(t, TunDevice) and t.attached for t in self.tuns) <= 1:
            return  # the last queue in use: the interface would carry nothing at all
        try:
            tun.detach_queue()
        except TunError as exc:
            log.warning("data-plane worker %d: its TUN queue stays attached: %s", k, exc)

    def _lost(self, worker: _Worker, code: int) -> None:
        how = f"exit status {code}" if code >= 0 else f"signal {_signal_name(-code)}"
        lost = [
            uid
            for uid, sa in self._sas.items()
            if sa.owner == worker.index and not sa.lost and uid not in worker.waiting
        ]
        log.warning(
            "data-plane worker %d (pid %d) died (%s); %d CHILD SA(s) lost, to be rekeyed",
            worker.index,
            worker.pid,
            how,
            len(lost),
        )
        for uid in lost:
            sa = self._sas[uid]
            sa.lost = True
            seen = worker.counters.get(uid)
            if seen is not None:
                total = self.past.retired_traffic.setdefault(sa.event.child, [0, 0, 0, 0])
                for i, count in enumerate(
                    (seen.bytes_in, seen.bytes_out, seen.packets_in, seen.packets_out)
                ):
                    total[i] += count
        self._detach_queue(worker.index)
        # Kernel drops are the sockets' and the TUN's, which outlive the worker: its
        # successor reports the same running totals, so they do not go to `past`.
        worker.totals.kernel_drops.clear()
        self.past.add(worker.totals)
        worker.counters, worker.totals, worker.partial = {}, WorkerTotals(), {}
        # A new process answers requests from now on only.
        worker.answered = worker.partial_request = self._request
        self._merge_counters()
        if time.monotonic() - worker.started_at >= STABLE_AFTER:
            worker.failures = 0
        self._schedule_restart(worker)
        if self.on_worker_lost is not None:
            self.on_worker_lost(worker.index, lost)

    def _schedule_restart(self, worker: _Worker) -> None:
        delay = RESTART_DELAYS[min(worker.failures, len(RESTART_DELAYS) - 1)]
        worker.failures += 1
        worker.restart = self.loop.call_later(delay, self._restart, worker)

    def _restart(self, worker: _Worker) -> None:
        worker.restart = None
        if not self._closing and worker.process is None:
            log.info("restarting data-plane worker %d", worker.index)
            self._spawn(worker)

    @staticmethod
    def _reap(process: subprocess.Popen[bytes]) -> int:
        try:
            return process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def close(self) -> None:
        """Stop every worker and wait for each by its PID (a closed control socket
        ends a worker; SIGKILL after `STOP_TIMEOUT`). Blocks until they are gone."""
        self._closing = True
        if self._poller is not None:
            self._poller.cancel()
        for worker in self._workers:
            if worker.restart is not None:
                worker.restart.cancel()
            if worker.channel is not None:
                worker.channel.close()
        for worker in self._workers:
            if worker.process is not None:
                self._reap(worker.process)
                worker.process = None
            worker.ready = False
        for process in list(self._exiting):
            self._reap(process)
        self._exiting.clear()
        for sock in self._handoff.values():
            sock.close()
        self._handoff.clear()

    # ---- CHILD SAs -----------------------------------------------------------------

    def install(
        self,
        event: ChildSaInstalled,
        owner: int | None = None,
        *,
        preferred: bool = False,
        path_mtu: int = DEFAULT_PATH_MTU,
        forward: bool = True,
    ) -> int:
        """Install a CHILD SA in its owner (`owner_of` its inbound SPI unless given)
        and, with `forward`, a forward entry in every other worker; returns the
        owner. If the owner is down, the SA is reported lost at once
        (`on_worker_lost`), as if it had died with it. ValueError for an SA the
        pool holds already (until `remove`)."""
        k = owner_of(event.spi_in, self.count) if owner is None else owner
        if not 0 <= k < self.count:
            raise ValueError(f"no worker {k}")
        if event.unique_id in self._sas:
            # Installing an SA twice would hand its keys to a second process, or to
            # the restarted one of a dead owner: a sequence counter from 1 again.
            raise ValueError(f"CHILD SA #{event.unique_id} is installed already")
        keyless = without_keys(event)
        sa = _Sa(keyless, k, preferred, path_mtu, forward)
        self._sas[event.unique_id] = sa
        target = self._workers[k]
        install = Install(event, k, preferred, path_mtu)
        if target.channel is None:
            # Its worker is being restarted: the SA was never in any process, so its
            # successor may take it (the first and only copy). Reporting it lost
            # instead would rekey it into the same down worker, again and again.
            target.waiting[event.unique_id] = install
        elif not target.channel.send(install):
            sa.lost = True
            if self.on_worker_lost is not None:
                self.loop.call_soon(self.on_worker_lost, k, [event.unique_id])
        if forward:
            message = Install(keyless, k, preferred, path_mtu)
            for worker in self._workers:
                if worker.index != k and worker.channel is not None:
                    worker.channel.send(message)
        return k

    def remove(self, unique_id: int, linger: float = 0.0) -> bool:
        """Remove a CHILD SA from its owner (its inbound SA kept `linger` seconds)
        and its forward entries; False if the pool does not know it."""
        sa = self._sas.pop(unique_id, None)
        if sa is None:
            return False
        self._workers[sa.owner].waiting.pop(unique_id, None)
        message = Remove(unique_id, linger)
        for worker in self._workers:
            if worker.channel is not None and (worker.index == sa.owner or sa.forward):
                worker.channel.send(message)
        return True

    def move(
        self, unique_id: int, local: Address, remote: Address, udp_encap: bool, mtu: int
    ) -> None:
        """A CHILD SA's addresses changed (`events._on_address_changed`)."""
        sa = self._sas.get(unique_id)
        if sa is None:
            return
        sa.event = dataclasses.replace(sa.event, local=local, remote=remote, udp_encap=udp_encap)
        message = Move(unique_id, local, remote, udp_encap, mtu)
        for worker in self._workers:
            if worker.channel is not None:
                worker.channel.send(message)

    def owner(self, unique_id: int) -> int | None:
        """The worker that owns a CHILD SA the pool installed."""
        sa = self._sas.get(unique_id)
        return None if sa is None else sa.owner

    # ---- counters ------------------------------------------------------------------

    def poll_counters(self) -> int:
        """Ask every live worker for its counters; returns the request's number.
        The answers update `counters` and `worker_totals` as they come."""
        self._request += 1
        for worker in self._workers:
            if worker.channel is not None:
                worker.channel.send(CountersRequest(self._request))
        return self._request

    async def refresh_counters(self, timeout: float = 2.0) -> bool:
        """Poll now and wait until every live worker answered (False on timeout)."""
        request = self.poll_counters()
        deadline = self.loop.time() + timeout
        while any(w.channel is not None and w.answered < request for w in self._workers):
            remaining = deadline - self.loop.time()
            if remaining <= 0:
                return False
            self._answers.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._answers.wait(), remaining)
        return True

    def worker_totals(self) -> list[WorkerTotals]:
        """Each live worker's totals, as last reported."""
        return [w.totals for w in self._workers]

    def totals(self) -> WorkerTotals:
        """Every worker's totals added up, dead workers' included."""
        total = WorkerTotals()
        total.add(self.past)
        for worker in self._workers:
            total.add(worker.totals)
        return total

    def _poll_tick(self) -> None:
        self.poll_counters()
        if self.poll_interval is not None and not self._closing:
            self._poller = self.loop.call_later(self.poll_interval, self._poll_tick)

    def _merge_counters(self) -> None:
        merged: dict[int, SaCounters] = {}
        for worker in self._workers:
            merged.update(worker.counters)
        self.counters = merged

    # ---- messages ------------------------------------------------------------------

    def _on_message(self, worker: _Worker, message: Message) -> None:
        if isinstance(message, CountersReply):
            self._on_counters(worker, message)
        elif isinstance(message, IkeNotice):
            if self.on_ike is not None:
                self.on_ike(message.message, message.local, message.remote)
        elif isinstance(message, UnknownSpiNotice):
            if self.on_unknown_spi is not None:
                self.on_unknown_spi(message.spi, message.local, message.remote)
        elif isinstance(message, AcquireNotice):
            if self.on_acquire is not None:
                self.on_acquire(message.packet)
        elif isinstance(message, Ready):
            self._on_ready(worker, message)
        elif isinstance(message, InstallFailed):
            log.error("data-plane worker %d refused CHILD SA #%d: %s", worker.index,
                      message.unique_id, message.reason)  # fmt: skip
            if self.on_install_failed is not None:
                self.on_install_failed(worker.index, message.unique_id, message.reason)
        else:
            log.warning("data-plane worker %d sent an unexpected %s message", worker.index,
                        type(message).TYPE)  # fmt: skip

    def _on_ready(self, worker: _Worker, message: Ready) -> None:
        k = worker.index
        tun = self.tuns[k]
        if isinstance(tun, TunDevice) and not tun.attached:
            try:
                tun.attach_queue()
            except TunError as exc:
                # Without its queue it would take no outbound share: start over.
                log.error("data-plane worker %d: cannot attach its TUN queue again: %s", k, exc)
                if worker.channel is not None:
                    worker.channel.close()
                self._on_closed(worker)
                return
            if worker.channel is not None:
                worker.channel.send(QueueAttached())
        worker.ready = True
        log.info("data-plane worker %d ready (pid %d)", k, message.pid)

    def _on_counters(self, worker: _Worker, reply: CountersReply) -> None:
        # A worker answers in order; an answer to an older request still counts
        # (a busy worker slower than the poll interval is not starved of updates).
        if reply.request <= worker.answered:
            return
        if reply.request != worker.partial_request:
            worker.partial, worker.partial_request = {}, reply.request
        for sa in reply.sas:
            worker.partial[sa.unique_id] = sa
        if not reply.last:
            return
        worker.counters, worker.partial = worker.partial, {}
        worker.totals = WorkerTotals(
            Counter(reply.drops),
            Counter(reply.counters),
            Counter(reply.kernel_drops),
            {name: list(counts) for name, counts in reply.retired_traffic.items()},
        )
        worker.answered = reply.request
        self._merge_counters()
        self._answers.set()

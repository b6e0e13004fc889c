"""The control channel's reliability layer: packet ids, ACKs, retransmission, windows.

OpenVPN carries TLS over UDP by numbering control packets from 0 per key state and
direction, acknowledging each one explicitly (no cumulative ACK), delivering them in
order and retransmitting what stays unacknowledged with a growing timeout
(draft-openvpntech-openvpn-wire-protocol, "Reliability layer"). Over TCP the same
numbering and ACKs are used; retransmissions are then merely redundant.

Two small halves, one per direction, so each is tested on its own.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

SEND_WINDOW = 6
"""Packets in flight at once (OpenVPN's TLS_RELIABLE_N_SEND_BUFFERS)."""
RECEIVE_WINDOW = 12
"""Packet ids buffered ahead of the next expected one (TLS_RELIABLE_N_REC_BUFFERS)."""
INITIAL_TIMEOUT = 2.0
"""First retransmission after this many seconds (OpenVPN's --tls-timeout default)."""
MAX_TIMEOUT = 16.0


@dataclass
class _InFlight(Generic[T]):
    item: T
    next_send: float
    timeout: float
    sent: int = 0


class ReliableSender(Generic[T]):
    """Numbers outgoing items, keeps them until ACKed, says what to (re)send when."""

    def __init__(
        self,
        window: int = SEND_WINDOW,
        initial_timeout: float = INITIAL_TIMEOUT,
        max_timeout: float = MAX_TIMEOUT,
    ) -> None:
        self.window = window
        self.initial_timeout = initial_timeout
        self.max_timeout = max_timeout
        self._next_id = 0
        self._queue: deque[T] = deque()
        self._in_flight: dict[int, _InFlight[T]] = {}
        self.retransmissions = 0

    def send(self, item: T) -> None:
        """Queue `item`; it gets the next packet id when the window lets it out."""
        self._queue.append(item)

    def ack(self, packet_ids: tuple[int, ...] | list[int]) -> int:
        """Forget acknowledged packets; returns how many were in flight.

        ACKs for ids never sent or already acknowledged are ignored: OpenVPN repeats
        recent ACKs on purpose.
        """
        return sum(self._in_flight.pop(pid, None) is not None for pid in packet_ids)

    def due(self, now: float) -> list[tuple[int, T]]:
        """(packet id, item) to transmit now: new ones the window admits, and
        retransmissions whose timer ran out (each doubling its timeout)."""
        while self._queue and self._admits(self._next_id):
            self._in_flight[self._next_id] = _InFlight(self._queue.popleft(), now, 0.0)
            self._next_id += 1
        out: list[tuple[int, T]] = []
        for pid, entry in sorted(self._in_flight.items()):
            if entry.next_send <= now:
                if entry.sent:
                    self.retransmissions += 1
                    entry.timeout = min(entry.timeout * 2, self.max_timeout)
                else:
                    entry.timeout = self.initial_timeout
                entry.sent += 1
                entry.next_send = now + entry.timeout
                out.append((pid, entry.item))
        return out

    def _admits(self, packet_id: int) -> bool:
        lowest = min(self._in_flight, default=packet_id)
        return packet_id < lowest + self.window

    def next_timer(self) -> float | None:
        """When `due` has a retransmission to hand out (None: nothing in flight)."""
        if self._queue and self._admits(self._next_id):
            return 0.0
        return min((e.next_send for e in self._in_flight.values()), default=None)

    def retransmit_now(self, now: float) -> None:
        """Make everything in flight due at once (the peer just restarted the burst)."""
        for entry in self._in_flight.values():
            entry.next_send = now

    @property
    def idle(self) -> bool:
        """Everything sent was acknowledged."""
        return not self._queue and not self._in_flight

    @property
    def oldest_unacked_sends(self) -> int:
        """How often the oldest unacknowledged packet went out (0 when idle)."""
        if not self._in_flight:
            return 0
        return self._in_flight[min(self._in_flight)].sent


class ReliableReceiver(Generic[T]):
    """Accepts packets in any order inside the window, hands them out in order, and
    collects the ids to acknowledge."""

    def __init__(self, window: int = RECEIVE_WINDOW) -> None:
        self.window = window
        self._expected = 0
        self._buffered: dict[int, T] = {}
        self._acks: deque[int] = deque()

    def receive(self, packet_id: int, item: T) -> bool:
        """Take packet `packet_id`. False when it lies beyond the window: dropped and
        not acknowledged, so the sender tries again later. Duplicates are
        acknowledged again (our first ACK may have been lost) but not delivered twice.
        """
        if packet_id >= self._expected + self.window:
            return False
        if packet_id not in self._acks:
            self._acks.append(packet_id)
        if packet_id >= self._expected and packet_id not in self._buffered:
            self._buffered[packet_id] = item
        return True

    def is_duplicate(self, packet_id: int) -> bool:
        return packet_id < self._expected or packet_id in self._buffered

    def pop_ready(self) -> list[T]:
        """Items that are now in order, oldest first."""
        out: list[T] = []
        while self._expected in self._buffered:
            out.append(self._buffered.pop(self._expected))
            self._expected += 1
        return out

    def take_acks(self, limit: int) -> tuple[int, ...]:
        """Up to `limit` ids to acknowledge, removed from the pending list."""
        n = min(limit, len(self._acks))
        return tuple(self._acks.popleft() for _ in range(n))

    @property
    def acks_pending(self) -> bool:
        return bool(self._acks)

    @property
    def expected(self) -> int:
        """The next packet id to deliver."""
        return self._expected

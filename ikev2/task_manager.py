"""Message IDs, the window, retransmission and the response cache of one IKE SA.

RFC 7296 §2.1-2.3: every request carries the next Message ID of its sender; with a
window of 1 (we never announce SET_WINDOW_SIZE) one request may be outstanding. The
requester retransmits with exponential back-off until it gets the response or gives
up; the responder answers a retransmitted request from the response it cached,
without processing it again. Incoming and outgoing Message IDs count independently.

This module knows octets and times only; which tasks an exchange runs is the IKE SA's
business (`ikev2.sa`). It never looks at a clock: `now` is always passed in.
"""

from __future__ import annotations

import enum
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_MESSAGE_ID = 0xFFFFFFFF


class RequestKind(enum.Enum):
    """What an incoming request is with respect to the expected Message ID (§2.3)."""

    NEW = "new"
    """The Message ID we expect next: process it."""
    RETRANSMIT = "retransmit"
    """The request we answered last, again: send the cached response."""
    INVALID = "invalid"
    """Outside the window: drop it (§2.3 allows no reply)."""


@dataclass(frozen=True, slots=True)
class RetransmitPolicy:
    """When to retransmit and when to give up (strongSwan's defaults: 4 s, 1.8, 5)."""

    timeout: float = 4.0
    """Seconds before the first retransmission."""
    base: float = 1.8
    """Each further wait is `base` times the previous one."""
    tries: int = 5
    """Retransmissions before giving up (the request is sent tries + 1 times)."""

    def delay(self, retransmits: int) -> float:
        """Seconds to wait after the (retransmits)-th retransmission (0 is the first send)."""
        return float(self.timeout * self.base**retransmits)

    @property
    def give_up_after(self) -> float:
        """Seconds from the first send of a request until it is given up."""
        return sum(self.delay(n) for n in range(self.tries + 1))


@dataclass(slots=True)
class OutstandingRequest(Generic[T]):
    """Our request that awaits its response."""

    message_id: int
    """The request's Message ID."""
    context: T
    """What the IKE SA needs to process the response (the exchange and its tasks)."""
    packets: tuple[bytes, ...]
    """The encoded datagram(s) as first sent (retransmitted unchanged, §2.1)."""
    deadline: float
    """When the next retransmission (or the give-up) is due."""
    retransmits: int = 0
    """How many times it has been retransmitted."""
    hastened: tuple[float, ...] | None = None
    """Set by `TaskManager.hasten`: the waits still to come, which replace the
    policy's back-off; the request is given up when they are used up."""


@dataclass(slots=True)
class CachedResponse:
    """The response to the peer's latest request, for its retransmissions (§2.1)."""

    message_id: int
    """The Message ID of the request it answers."""
    request_digest: bytes
    """SHA-256 of the request as received, to recognise an identical retransmission."""
    packets: tuple[bytes, ...] = field(repr=False)
    """The encoded response datagram(s)."""


class GiveUp(Exception):
    """The peer did not answer a request after every retransmission."""

    def __init__(self, message_id: int, retransmits: int) -> None:
        super().__init__(
            f"peer did not answer request {message_id} after {retransmits} retransmissions"
        )
        self.message_id = message_id
        self.retransmits = retransmits


class TaskManager(Generic[T]):
    """Message-ID bookkeeping, retransmission and response caching with a window of 1."""

    # One per IKE SA, thousands per gateway: no per-object dict.
    __slots__ = (
        "cached_response",
        "expected_request_id",
        "next_request_id",
        "outstanding",
        "pending",
        "policy",
    )

    def __init__(self, policy: RetransmitPolicy) -> None:
        self.policy = policy
        self.next_request_id = 0
        """Message ID of our next request."""
        self.expected_request_id = 0
        """Message ID we expect on the peer's next request."""
        self.outstanding: OutstandingRequest[T] | None = None
        self.pending: list[T] = []
        """Exchanges waiting for the window to open, oldest first (a list: there are
        a few at most, and an empty deque costs ten times an empty list)."""
        self.cached_response: CachedResponse | None = None

    # --- our requests ---------------------------------------------------------------

    def queue(self, context: T) -> None:
        """Remember an exchange to initiate once no request is outstanding."""
        self.pending.append(context)

    def queue_first(self, context: T) -> None:
        """Send this request before any other queued one (the next round of an exchange
        that takes several, like IKE_AUTH with EAP)."""
        self.pending.insert(0, context)

    def next_to_send(self) -> T | None:
        """The next queued exchange if the window is open, removed from the queue."""
        if self.outstanding is not None or not self.pending:
            return None
        return self.pending.pop(0)

    def request_sent(self, context: T, packets: tuple[bytes, ...], now: float) -> int:
        """Record a request just sent under `next_request_id`; returns that ID."""
        if self.outstanding is not None:
            raise RuntimeError("window of 1: a request is already outstanding")
        if self.next_request_id > MAX_MESSAGE_ID:
            raise RuntimeError("Message IDs exhausted; the IKE SA must be rekeyed")
        mid = self.next_request_id
        self.outstanding = OutstandingRequest(mid, context, packets, now + self.policy.delay(0))
        return mid

    def request_replaced(self, packets: tuple[bytes, ...], now: float) -> None:
        """Send a new version of the outstanding request under the same Message ID.

        Used when IKE_SA_INIT is retried after INVALID_KE_PAYLOAD or COOKIE (§1.2,
        §2.6): the new request is still Message ID 0 and starts a fresh back-off.
        """
        if self.outstanding is None:
            raise RuntimeError("no outstanding request to replace")
        self.outstanding.packets = packets
        self.outstanding.retransmits = 0
        self.outstanding.deadline = now + self.policy.delay(0)

    def hasten(self, delays: tuple[float, ...], now: float) -> bool:
        """Move the outstanding request's remaining retransmissions to `delays`.

        The next one is due `delays[0]` seconds from now (or sooner, if it already
        was); each later wait is the next of `delays`, and after the last the request
        is given up. False if no request is outstanding.
        """
        out = self.outstanding
        if out is None or not delays:
            return False
        out.deadline = min(out.deadline, now + delays[0])
        out.hastened = delays[1:]
        return True

    def response_received(self, message_id: int) -> T | None:
        """The outstanding request's context if `message_id` answers it, else None.

        A response to anything else (late, duplicate or forged) is ignored (§2.3).
        On success the window opens again.
        """
        out = self.outstanding
        if out is None or out.message_id != message_id:
            return None
        self.outstanding = None
        self.next_request_id += 1
        return out.context

    def abandon_request(self) -> T | None:
        """Forget the outstanding request without a response (the SA is going away)."""
        out = self.outstanding
        self.outstanding = None
        return None if out is None else out.context

    # --- the peer's requests --------------------------------------------------------

    def classify_request(self, message_id: int, raw: bytes) -> RequestKind:
        """Whether a request is new, a retransmission of the last one, or out of window."""
        if message_id == self.expected_request_id:
            return RequestKind.NEW
        cached = self.cached_response
        if (
            cached is not None
            and message_id == cached.message_id
            and hashlib.sha256(raw).digest() == cached.request_digest
        ):
            return RequestKind.RETRANSMIT
        return RequestKind.INVALID

    def response_sent(
        self, message_id: int, raw_request: bytes, packets: tuple[bytes, ...]
    ) -> None:
        """Cache the response to request `message_id` and expect the next ID."""
        self.cached_response = CachedResponse(
            message_id, hashlib.sha256(raw_request).digest(), packets
        )
        self.expected_request_id = message_id + 1

    def cached_packets(self) -> tuple[bytes, ...]:
        """The cached response's datagrams (empty if none)."""
        return () if self.cached_response is None else self.cached_response.packets

    # --- time -----------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When `handle_timer` must next run, or None."""
        return None if self.outstanding is None else self.outstanding.deadline

    def handle_timer(self, now: float) -> tuple[bytes, ...]:
        """Datagrams to retransmit now; raises GiveUp when the tries are used up."""
        out = self.outstanding
        if out is None or now < out.deadline:
            return ()
        waits = out.hastened
        exhausted = out.retransmits >= self.policy.tries if waits is None else not waits
        if exhausted:
            self.outstanding = None
            raise GiveUp(out.message_id, out.retransmits)
        out.retransmits += 1
        if waits is None:
            out.deadline = now + self.policy.delay(out.retransmits)
        else:
            out.deadline, out.hastened = now + waits[0], waits[1:]
        log.debug("retransmitting request %d (%d. time)", out.message_id, out.retransmits)
        return out.packets

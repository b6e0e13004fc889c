"""Received IKE messages wait in the driver's backlog and are processed a slice per
turn of the event loop, so a burst of logins leaves turns to the data plane; the
backlog is bounded and what it refuses is counted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from daemon.ike import IkeBacklog, IkeDriver, drain
from ikev2.crypto.rng import DeterministicRandom
from ikev2.endpoint import Endpoint, IkeDropReason
from ikev2.events import Address
from testkit.ikev2_pair import A_ADDR, B_ADDR, connection, init_request, mirrored

B500, A500 = (B_ADDR, 500), (A_ADDR, 500)


class _Handle:
    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _TurnLoop:
    """Records what is scheduled for the next turn; `turn` runs it, as a loop's turn
    runs the callbacks that were ready when it started."""

    def __init__(self) -> None:
        self.ready: list[_Handle] = []

    def call_soon(self, callback: Callable[[], None]) -> _Handle:
        handle = _Handle(callback)
        self.ready.append(handle)
        return handle

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Handle:
        return _Handle(callback)  # the endpoint's timers: not run here

    def turn(self) -> None:
        ready, self.ready = self.ready, []
        for handle in ready:
            if not handle.cancelled:
                handle.callback()


def _driver(loop: _TurnLoop | None) -> tuple[IkeDriver, list[bytes]]:
    endpoint = Endpoint([mirrored(connection())], rng=DeterministicRandom(b"b"))
    sent: list[bytes] = []
    driver = IkeDriver(
        endpoint,
        lambda message, local, remote: sent.append(message),
        lambda event: None,
        loop=loop,  # type: ignore[arg-type]
    )
    return driver, sent


def _requests(count: int) -> list[bytes]:
    # Distinct SPIs: each is a new responder IKE SA with an answer of its own.
    return [init_request(bytes([i + 1]) * 8) for i in range(count)]


def test_the_backlog_is_first_in_first_out_and_bounded_in_octets() -> None:
    backlog = IkeBacklog(limit=10)
    assert backlog.put(b"aaaa", B500, A500) and backlog.put(b"bbbb", B500, A500)
    assert not backlog.put(b"cccc", B500, A500)  # 12 octets would pass the limit
    assert len(backlog) == 2 and backlog.size == 8
    assert backlog.take() == (b"aaaa", B500, A500)
    assert backlog.put(b"dd", B500, A500)
    assert [backlog.take(), backlog.take(), backlog.take()] == [
        (b"bbbb", B500, A500),
        (b"dd", B500, A500),
        None,
    ]
    assert backlog.size == 0 and not backlog


def test_a_slice_processes_one_message_at_least_and_stops_once_the_budget_is_spent() -> None:
    clock = [0.0]
    done: list[bytes] = []

    def process(message: bytes, local: Address, remote: Address) -> None:
        done.append(message)
        clock[0] += 1.0  # each message costs one time unit

    backlog = IkeBacklog()
    for i in range(6):
        backlog.put(bytes([i]), B500, A500)
    # No budget at all: still one message, or a backlog would never move.
    assert drain(backlog, process, lambda: clock[0], 0.0) == 1
    # 2.5 units: the third message ends past the budget, and the slice with it.
    assert drain(backlog, process, lambda: clock[0], 2.5) == 3
    assert done == [bytes([i]) for i in range(4)] and len(backlog) == 2
    # A budget larger than the work: the backlog empties.
    assert drain(backlog, process, lambda: clock[0], 100.0) == 2
    assert len(done) == 6 and not backlog


def test_received_messages_wait_for_the_next_turn_and_go_a_slice_per_turn() -> None:
    loop = _TurnLoop()
    driver, sent = _driver(loop)
    driver.turn_budget = 0.0  # one message per turn
    for message in _requests(3):
        driver.message_received(message, B500, A500)
    # Nothing processed inside the read; one slice scheduled, however many came.
    assert sent == [] and len(loop.ready) == 1 and len(driver.backlog) == 3
    answered = []
    while loop.ready:
        loop.turn()
        answered.append(len(sent))
    # One answer per turn, then nothing left scheduled.
    assert answered == [1, 2, 3] and not driver.backlog
    assert len(driver.endpoint.ike_sas()) == 3


def test_without_a_loop_a_message_is_processed_at_once() -> None:
    driver, sent = _driver(None)
    (message,) = _requests(1)
    driver.message_received(message, B500, A500)
    assert len(sent) == 1 and not driver.backlog


def test_a_full_backlog_drops_the_message_and_counts_it() -> None:
    loop = _TurnLoop()
    driver, sent = _driver(loop)
    first, second = _requests(2)
    driver.backlog = IkeBacklog(limit=len(first))
    driver.message_received(first, B500, A500)
    driver.message_received(second, B500, A500)
    assert dict(driver.endpoint.drops) == {IkeDropReason.BACKLOG_FULL: 1}
    while loop.ready:
        loop.turn()
    assert len(sent) == 1 and len(driver.endpoint.ike_sas()) == 1


def test_stop_cancels_the_next_slice_and_empties_the_backlog() -> None:
    loop = _TurnLoop()
    driver, sent = _driver(loop)
    for message in _requests(2):
        driver.message_received(message, B500, A500)
    driver.stop()
    loop.turn()
    assert sent == [] and not driver.backlog


def test_no_key_pairs_are_made_ahead_while_messages_wait() -> None:
    driver, _sent = _driver(None)
    endpoint = driver.endpoint
    missing = endpoint.prepare_keys(0)
    assert missing > 0
    (message,) = _requests(1)
    driver.backlog.put(message, B500, A500)

    async def refill() -> int:
        driver.loop = asyncio.get_running_loop()
        driver.last_ike_at = 0.0  # long quiet, by the clock
        driver.refill_keys()
        for _ in range(missing):
            await asyncio.sleep(0)
        return endpoint.prepare_keys(0)

    # Waiting messages are a burst still on: the key pairs would only compete with it.
    assert asyncio.run(refill()) == missing and not driver.refilling
    driver.backlog.clear()
    assert asyncio.run(refill()) == 0

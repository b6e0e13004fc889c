"""The control channel's reliability layer, table driven."""

from __future__ import annotations

import pytest

from ovpn.reliable import ReliableReceiver, ReliableSender

# Sender: each step is (time, action, argument) and what `due` hands out afterwards.
SEND_CASES = {
    "new packets go out at once, in order": [
        (0.0, "send", "a", [(0, "a")]),
        (0.0, "send", "b", [(1, "b")]),
    ],
    "an unacknowledged packet is retransmitted after 2 s, then 4 s": [
        (0.0, "send", "a", [(0, "a")]),
        (1.9, None, None, []),
        (2.0, None, None, [(0, "a")]),
        (5.9, None, None, []),
        (6.0, None, None, [(0, "a")]),
    ],
    "an acknowledged packet is never sent again": [
        (0.0, "send", "a", [(0, "a")]),
        (1.0, "ack", (0,), []),
        (10.0, None, None, []),
    ],
    "ACKs for unknown or repeated ids are ignored": [
        (0.0, "send", "a", [(0, "a")]),
        (0.5, "ack", (7, 9), []),
        (2.0, None, None, [(0, "a")]),
    ],
    "the window holds back the seventh packet until the oldest is acknowledged": [
        (0.0, "send_many", "abcdefg", [(0, "a"), (1, "b"), (2, "c"), (3, "d"), (4, "e"), (5, "f")]),
        (0.1, "ack", (1, 2), []),
        (0.2, "ack", (0,), [(6, "g")]),
    ],
}


@pytest.mark.parametrize("steps", SEND_CASES.values(), ids=SEND_CASES.keys())
def test_sender(steps: list[tuple[float, str | None, object, list[tuple[int, str]]]]) -> None:
    sender: ReliableSender[str] = ReliableSender()
    for now, action, arg, expected in steps:
        if action == "send":
            sender.send(str(arg))
        elif action == "send_many":
            for item in str(arg):
                sender.send(item)
        elif action == "ack":
            sender.ack(arg)  # type: ignore[arg-type]
        assert sender.due(now) == expected, (now, action, arg)


def test_sender_timer_backoff_is_capped_and_idle_after_acks() -> None:
    sender: ReliableSender[str] = ReliableSender(initial_timeout=1.0, max_timeout=4.0)
    sender.send("a")
    now = 0.0
    intervals = []
    sender.due(now)
    for _ in range(5):
        nxt = sender.next_timer()
        assert nxt is not None
        intervals.append(nxt - now)
        now = nxt
        assert sender.due(now) == [(0, "a")]
    assert intervals == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert sender.retransmissions == 5
    assert sender.oldest_unacked_sends == 6
    sender.ack([0])
    assert sender.idle and sender.next_timer() is None


# Receiver: (packet id arriving, accepted?, delivered in order afterwards).
RECEIVE_CASES = {
    "in order": [(0, True, ["p0"]), (1, True, ["p1"])],
    "out of order is held until the gap fills": [
        (1, True, []),
        (2, True, []),
        (0, True, ["p0", "p1", "p2"]),
    ],
    "a duplicate is acknowledged again but delivered once": [
        (0, True, ["p0"]),
        (0, True, []),
    ],
    "beyond the window is dropped without an ACK": [(12, False, []), (11, True, [])],
}


@pytest.mark.parametrize("steps", RECEIVE_CASES.values(), ids=RECEIVE_CASES.keys())
def test_receiver(steps: list[tuple[int, bool, list[str]]]) -> None:
    receiver: ReliableReceiver[str] = ReliableReceiver()
    for pid, accepted, delivered in steps:
        assert receiver.receive(pid, f"p{pid}") is accepted
        assert receiver.pop_ready() == delivered
        if accepted:
            assert pid in receiver.take_acks(8)
        else:
            assert not receiver.acks_pending


def test_receiver_acks_come_out_in_arrival_order_and_in_limits() -> None:
    receiver: ReliableReceiver[str] = ReliableReceiver()
    for pid in (3, 1, 2, 0, 4):
        receiver.receive(pid, "x")
    assert receiver.take_acks(4) == (3, 1, 2, 0)
    assert receiver.take_acks(4) == (4,)
    assert receiver.take_acks(4) == ()
    assert receiver.is_duplicate(4) and not receiver.is_duplicate(5)

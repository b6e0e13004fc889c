"""Reading ping's output: a reply that came late is not a loss, a missing one is."""

from __future__ import annotations

from daemon.lab.netns import unanswered_pings

HEADER = "PING 203.0.113.10 (203.0.113.10) 56(84) bytes of data.\n"


def _reply(seq: int, ms: float = 0.7) -> str:
    return f"64 bytes from 203.0.113.10: icmp_seq={seq} ttl=63 time={ms} ms\n"


def _summary(sent: int, received: int) -> str:
    loss = 100 * (sent - received) / sent
    return (
        "\n--- 203.0.113.10 ping statistics ---\n"
        f"{sent} packets transmitted, {received} received, {loss:g}% packet loss, time 90ms\n"
    )


def test_a_late_last_reply_is_no_loss() -> None:
    # With -w, ping sent a fifth request while the fourth's reply was late, and
    # stopped at four replies: the summary shows a loss that did not happen.
    output = HEADER + "".join(_reply(s) for s in (1, 2, 3)) + _reply(4, 44.8) + _summary(5, 4)
    assert "20% packet loss" in output
    assert unanswered_pings(output, 4) == []


def test_a_reply_that_never_came_is_named() -> None:
    output = HEADER + "".join(_reply(s) for s in (1, 2, 4, 5)) + _summary(5, 4)
    assert unanswered_pings(output, 4) == [3]


def test_no_output_loses_every_ping() -> None:
    assert unanswered_pings("", 3) == [1, 2, 3]


def test_a_sequence_number_is_not_read_out_of_another() -> None:
    # icmp_seq=12 answers 12, not 1 or 2.
    assert unanswered_pings(HEADER + _reply(12), 2) == [1, 2]


def test_an_icmp_error_is_not_a_reply() -> None:
    error = "From 198.51.100.1 icmp_seq=2 Destination Host Unreachable\n"
    assert unanswered_pings(HEADER + _reply(1) + error + _reply(3), 3) == [2]

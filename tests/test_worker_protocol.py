"""The main process's and the data-plane workers' messages: every one survives the
trip through JSON, keys stay out of reprs, and what is not ours is refused."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
from dataclasses import replace

import pytest

from daemon.worker_protocol import (
    COUNTERS_PER_MESSAGE,
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
    ProtocolError,
    RawSocket,
    Ready,
    Remove,
    SaCounters,
    Setup,
    Stop,
    UdpSocket,
    UnknownSpiNotice,
    counters_parts,
    decode,
    encode,
)
from ikev2.ts import TrafficSelector as IkeTs
from testkit.dataplane import events


def _event() -> object:
    a, _ = events(suite="aes256-sha256", esn=True, uid=7, partial_csum=True)
    return replace(
        a,
        local_ts=(*a.local_ts, IkeTs.from_network("192.0.2.0/24", 6, (80, 443))),
        rekey_of=5,
        pfs="x25519+mlkem768",
        quantum_safe=True,
        initiator=True,
    )


SA = SaCounters(7, 100, 200, 1, 2, {"replay": 3}, "ok", "soft", lingering=True)

MESSAGES: list[Message] = [
    Setup(
        index=1,
        count=2,
        tun_fd=5,
        tun_name="lockgate0",
        tun_flags=0x5002,
        tun_memory=False,
        tun_uso=True,
        udp=(UdpSocket(6, "198.51.100.1", 4500), UdpSocket(7, "2001:db8::1", 4500)),
        raw=(RawSocket(8, "198.51.100.1"),),
        handoff=(HandoffSocket(9, 0),),
        offload=False,
        log_level="debug",
    ),
    Install(_event(), owner=1, preferred=True, path_mtu=1400),  # type: ignore[arg-type]
    Remove(7, linger=2.5),
    Move(7, ("198.51.100.1", 4500), ("203.0.113.9", 61000), True, 1380),
    CountersRequest(3),
    Stop(),
    Ready(1, 1234),
    CountersReply(
        3, 1, (SA,), True, {"no_sa": 2}, {"handed_off": 9}, {"tun_queue": 1}, {"site": (1, 2, 3, 4)}
    ),
    IkeNotice(b"\x00" * 28, ("198.51.100.1", 4500), ("203.0.113.9", 4500)),
    UnknownSpiNotice(0xDEADBEEF, ("198.51.100.1", 4500), ("203.0.113.9", 4500)),
    AcquireNotice(b"\x45\x00"),
    InstallFailed(7, "SPI in use"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_survives_the_round_trip(message: Message) -> None:
    assert decode(encode(message)) == message


def test_the_install_message_carries_every_field_of_the_event() -> None:
    install = MESSAGES[1]
    assert isinstance(install, Install)
    back = decode(encode(install))
    assert isinstance(back, Install)
    for f in dataclasses.fields(install.event):
        assert getattr(back.event, f.name) == getattr(install.event, f.name), f.name


def test_keys_never_appear_in_a_repr() -> None:
    install = MESSAGES[1]
    assert isinstance(install, Install)
    text = repr(install)
    event = install.event
    for key in (event.encr_key_in, event.encr_key_out, event.integ_key_in, event.integ_key_out):
        assert key.hex() not in text
        assert repr(key) not in text


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\xff", "not JSON"),
        (b"[1]", "object"),
        (b'{"type": "nope"}', "unknown"),
        (b'{"type": "remove"}', "unique_id missing"),
        (b'{"type": "remove", "unique_id": "7"}', "expected int"),
        (b'{"type": "remove", "unique_id": true}', "expected int"),
        (b'{"type": "acquire", "packet": "zz"}', "not hex"),
        (b'{"type": "ike", "message": "", "local": ["a"], "remote": ["b", 1]}', "address"),
    ],
)
def test_what_is_not_ours_is_refused(data: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode(data)


def test_a_bad_selector_is_refused() -> None:
    body = json.loads(encode(MESSAGES[1]))
    body["event"]["local_ts"][0] = ["192.0.2.9", "192.0.2.1", 0, 0, 65535]
    with pytest.raises(ProtocolError, match="local_ts"):
        decode(json.dumps(body).encode())


def test_a_counters_answer_is_cut_in_parts_with_the_totals_last() -> None:
    sas = [replace(SA, unique_id=i) for i in range(COUNTERS_PER_MESSAGE * 2 + 1)]
    totals = {"drops": {"no_sa": 1}, "counters": {}, "kernel_drops": {}, "retired_traffic": {}}
    parts = counters_parts(4, 1, sas, totals)
    assert [len(p.sas) for p in parts] == [COUNTERS_PER_MESSAGE, COUNTERS_PER_MESSAGE, 1]
    assert [p.last for p in parts] == [False, False, True]
    assert parts[-1].drops == {"no_sa": 1} and parts[0].drops == {}
    assert [sa.unique_id for p in parts for sa in p.sas] == list(range(len(sas)))
    assert all(len(encode(p)) < 200_000 for p in parts)
    assert counters_parts(4, 1, [], totals)[0].last


def test_a_channel_delivers_in_order_and_reports_the_other_end_closing() -> None:
    async def run() -> tuple[list[Message], list[Message], int]:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        got: list[Message] = []
        closed: list[int] = []
        done = asyncio.Event()

        def on_message(message: Message) -> None:
            got.append(message)
            if len(got) == 2000:
                done.set()

        reader = Channel(b, loop, on_message, lambda: (closed.append(1), done.set()))
        writer = Channel(a, loop, lambda m: None, lambda: None)
        # More than the socket buffer takes at once: the rest waits, in order.
        sent: list[Message] = [Remove(i) for i in range(2000)]
        for message in sent:
            assert writer.send(message)
        await asyncio.wait_for(done.wait(), 30)
        done.clear()
        writer.close()
        await asyncio.wait_for(done.wait(), 30)
        reader.close()
        return sent, got, len(closed)

    sent, got, closed = asyncio.run(run())
    assert got == sent
    assert closed == 1

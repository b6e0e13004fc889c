"""A load generator of OpenVPN clients: many minimal sessions from one process.

    python -m testkit.ovpn_load --server ADDR --port P --transport udp|tcp --ca CA.pem
        --users u%04d --first 0 --count 200 --password PW [--concurrency 16]
        [--hold 60] [--timeout 30]

Each session speaks the wire protocol as the stock client does, built from `ovpn/`'s
pieces (packet codec, reliability layer, key method 2, PRF, data channel) with TLS in
memory (`ssl.MemoryBIO`): hard reset, TLS handshake, key method 2 with the user's name
and password, PUSH_REQUEST, PUSH_REPLY; then it keeps the session alive with
keepalive pings on the data channel (every `--ping` seconds) until `--hold` seconds
after the last one connected, or SIGTERM/SIGINT. On UDP it says goodbye with OCC
EXIT (what `explicit-exit-notify` sends), on TCP it closes the connection.

At most `--concurrency` handshakes are in flight at once (the server keeps at most 128
unfinished handshakes; more at once would evict each other). Every result is one JSON
line on stdout: {"event": "connected", "index": I, "seconds": S, "address": A},
{"event": "failed", "index": I, "reason": R}, and at the end {"event": "done", ...}.
Bounded: each handshake by `--timeout`, the whole run by `--deadline`.
Not a shipped package: the benchmarks use it (bench/p2c_load.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ovpn.data import OCC_EXIT, OCC_MAGIC, PING_MAGIC, DataChannelKey, DataDrop
from ovpn.keys import KeyMethod2, derive_data_keys
from ovpn.packet import (
    ControlPacket,
    Opcode,
    PacketError,
    StreamDeframer,
    frame,
    split_first_octet,
)
from ovpn.push import encode_message, split_messages
from ovpn.reliable import ReliableReceiver, ReliableSender

TICK = 0.25
"""Seconds between retransmission checks of every session."""
IV_PROTO = 2 | 4 | 128
"""DATA_V2, REQUEST_PUSH and CC_EXIT_NOTIFY: what the stock 2.6 client announces, less
the TLS key exporter (the data keys come from OpenVPN's PRF)."""


def say(record: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


@dataclass
class _Key:
    tls: ssl.SSLObject
    bio_in: ssl.MemoryBIO
    bio_out: ssl.MemoryBIO
    sender: ReliableSender[tuple[Opcode, bytes]] = field(default_factory=ReliableSender)
    receiver: ReliableReceiver[ControlPacket] = field(default_factory=ReliableReceiver)
    mine: KeyMethod2 | None = None
    data: DataChannelKey | None = None


class LoadSession:
    """One client session, sans-I/O: `start`, `receive`, `tick`; `send` is given."""

    def __init__(
        self,
        ctx: ssl.SSLContext,
        server_name: str,
        username: str,
        password: str,
        ciphers: str,
        send: Callable[[bytes], None],
    ) -> None:
        self.send = send
        self.username, self.password = username, password
        self.session_id = os.urandom(8)
        self.server_session_id: bytes | None = None
        bio_in, bio_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.key = _Key(ctx.wrap_bio(bio_in, bio_out, server_hostname=server_name), bio_in, bio_out)
        self.peer_info = (
            f"IV_VER=2.6.14\nIV_PLAT=linux\nIV_PROTO={IV_PROTO}\nIV_CIPHERS={ciphers}\n"
        )
        self.material: object = None
        self.address: str | None = None
        self.peer_id = 0
        self.failed: str | None = None
        self.established = asyncio.Event()
        self.last_sent = 0.0
        self.pings_received = 0

    def start(self, now: float) -> None:
        self.key.sender.send((Opcode.CONTROL_HARD_RESET_CLIENT_V2, b""))
        self.tick(now)

    def tick(self, now: float) -> None:
        """Send what is due: control packets (and retransmissions), ACKs, keepalives."""
        key = self.key
        for pid, (opcode, payload) in key.sender.due(now):
            acks = key.receiver.take_acks(4)
            remote = self.server_session_id if acks else None
            self._send(
                ControlPacket(opcode, 0, self.session_id, acks, remote, pid, payload).encode(), now
            )
        while key.receiver.acks_pending:
            acks = key.receiver.take_acks(8)
            self._send(
                ControlPacket(
                    Opcode.ACK_V1, 0, self.session_id, acks, self.server_session_id
                ).encode(),
                now,
            )

    def keepalive(self, now: float, interval: float) -> None:
        if self.key.data is not None and now - self.last_sent >= interval:
            self._send(self.key.data.seal(PING_MAGIC, self.peer_id), now)

    def goodbye(self) -> None:
        """OCC EXIT on the data channel: the server frees the session at once."""
        if self.key.data is not None:
            payload = OCC_MAGIC + bytes((OCC_EXIT,))
            self._send(self.key.data.seal(payload, self.peer_id), time.monotonic())

    def _send(self, wire: bytes, now: float) -> None:
        self.last_sent = now
        self.send(wire)

    def receive(self, wire: bytes, now: float) -> None:
        try:
            opcode, _key_id = split_first_octet(wire)
            if opcode == Opcode.DATA_V2:
                if self.key.data is not None:
                    self.key.data.open(wire)
                    self.pings_received += 1
                return
            pkt = ControlPacket.decode(wire)
        except (PacketError, DataDrop):
            return
        if pkt.key_id != 0:
            return  # no renegotiation in a load test
        self.server_session_id = pkt.session_id
        key = self.key
        key.sender.ack(pkt.acks)
        if pkt.packet_id is not None and key.receiver.receive(pkt.packet_id, pkt):
            for ordered in key.receiver.pop_ready():
                if ordered.opcode == Opcode.CONTROL_HARD_RESET_SERVER_V2:
                    self._tls_step()
                elif ordered.opcode == Opcode.CONTROL_V1:
                    key.bio_in.write(ordered.payload)
                    self._tls_step()
        self.tick(now)

    def _tls_step(self) -> None:
        key = self.key
        if key.mine is None:
            try:
                key.tls.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                self._fail(f"TLS: {exc}")
                return
            else:
                key.mine = KeyMethod2(
                    os.urandom(32), os.urandom(32), os.urandom(48), "V4,dev-type tun",
                    self.username, self.password, self.peer_info,
                )  # fmt: skip
                key.tls.write(key.mine.encode())
        else:
            while True:
                try:
                    record = key.tls.read(16384)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLError as exc:
                    self._fail(f"TLS: {exc}")
                    return
                if self.material is None and record[:4] == b"\0\0\0\0":
                    server = KeyMethod2.decode(record, from_client=False)
                    assert self.server_session_id is not None
                    self.material = derive_data_keys(
                        key.mine, server, self.session_id, self.server_session_id
                    )
                    key.tls.write(encode_message("PUSH_REQUEST"))
                else:
                    for message in split_messages(record):
                        self._on_message(message)
        out = key.bio_out.read()
        for i in range(0, len(out), 1000):
            key.sender.send((Opcode.CONTROL_V1, out[i : i + 1000]))

    def _on_message(self, message: str) -> None:
        if message.startswith("AUTH_FAILED"):
            self._fail("AUTH_FAILED")
        elif message.startswith("PUSH_REPLY") and self.key.data is None:
            options = dict(o.split(" ", 1) for o in message.split(",")[1:] if " " in o)
            self.peer_id = int(options.get("peer-id", "0"))
            self.address = options.get("ifconfig", "").split(" ")[0] or None
            self.key.data = DataChannelKey(
                options["cipher"],
                self.material,  # type: ignore[arg-type]
                key_id=0,
                server=False,
            )
            self.established.set()

    def _fail(self, reason: str) -> None:
        if self.failed is None:
            self.failed = reason
        self.established.set()


# --- transports ------------------------------------------------------------------------


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, session: LoadSession) -> None:
        self.session = session

    def datagram_received(self, data: bytes, addr: tuple[object, ...]) -> None:
        self.session.receive(data, time.monotonic())

    def error_received(self, exc: Exception) -> None:
        pass


class _Tcp(asyncio.Protocol):
    def __init__(self, session: LoadSession) -> None:
        self.session = session
        self.deframer = StreamDeframer()

    def data_received(self, data: bytes) -> None:
        try:
            packets = self.deframer.feed(data)
        except PacketError:
            self.session._fail("TCP framing")
            return
        now = time.monotonic()
        for packet in packets:
            self.session.receive(packet, now)

    def connection_lost(self, exc: Exception | None) -> None:
        self.session._fail("connection closed")


@dataclass
class Options:
    server: str
    port: int
    transport: str
    ca: str
    server_name: str
    users: str
    first: int
    count: int
    password: str
    cipher: str
    concurrency: int
    timeout: float
    hold: float
    ping: float
    deadline: float


async def _open(
    opts: Options, session: LoadSession
) -> asyncio.DatagramTransport | asyncio.Transport:
    loop = asyncio.get_running_loop()
    if opts.transport == "udp":
        udp, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(session), remote_addr=(opts.server, opts.port)
        )
        session.send = udp.sendto
        return udp
    tcp, _ = await loop.create_connection(lambda: _Tcp(session), opts.server, opts.port)
    session.send = lambda packet: tcp.write(frame(packet))
    return tcp


async def run(opts: Options) -> int:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=opts.ca)
    sessions: list[LoadSession] = []
    transports: list[asyncio.BaseTransport] = []
    gate = asyncio.Semaphore(opts.concurrency)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    counts = {"connected": 0, "failed": 0}

    async def one(index: int) -> None:
        async with gate:
            if stop.is_set():
                return
            user = opts.users % (opts.first + index)
            session = LoadSession(
                ctx, opts.server_name, user, opts.password, opts.cipher, lambda _p: None
            )
            started = time.monotonic()
            try:
                transports.append(await _open(opts, session))
            except OSError as exc:
                counts["failed"] += 1
                say({"event": "failed", "index": index, "reason": f"connect: {exc}"})
                return
            sessions.append(session)
            session.start(started)
            try:
                await asyncio.wait_for(session.established.wait(), opts.timeout)
            except TimeoutError:
                session._fail("timeout")
            if session.failed is None:
                counts["connected"] += 1
                say({"event": "connected", "index": index, "user": user,
                     "seconds": round(time.monotonic() - started, 3),
                     "address": session.address})  # fmt: skip
            else:
                counts["failed"] += 1
                say({"event": "failed", "index": index, "user": user, "reason": session.failed})

    async def ticker() -> None:
        while not stop.is_set():
            now = time.monotonic()
            for session in sessions:
                if session.failed is None:
                    session.tick(now)
                    session.keepalive(now, opts.ping)
            await asyncio.sleep(TICK)

    begun = time.monotonic()
    tick_task = asyncio.create_task(ticker())
    ramp = asyncio.gather(*(one(i) for i in range(opts.count)))
    try:
        await asyncio.wait_for(asyncio.shield(ramp), opts.deadline)
    except TimeoutError:
        stop.set()
    ramp_seconds = time.monotonic() - begun
    say({"event": "ramp_done", "seconds": round(ramp_seconds, 3), **counts})
    remaining = max(0.0, opts.deadline - ramp_seconds)
    if not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), min(opts.hold, remaining))
    stop.set()
    alive = sum(1 for s in sessions if s.failed is None)
    for session in sessions:
        if opts.transport == "udp":
            session.goodbye()
    await asyncio.sleep(0.2)
    for transport in transports:
        transport.close()
    ramp.cancel()
    tick_task.cancel()
    say({"event": "done", "alive_at_end": alive, **counts})
    return 0


def parse_args(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m testkit.ovpn_load", description=__doc__.split("\n")[0]
    )
    p.add_argument("--server", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--transport", choices=["udp", "tcp"], default="udp")
    p.add_argument("--ca", required=True, help="the CA that signed the server (PEM file)")
    p.add_argument("--server-name", default="vpn.example.net")
    p.add_argument("--users", default="u%04d", help="user name pattern, %%d is the index")
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--password", required=True)
    p.add_argument("--cipher", default="AES-128-GCM")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per handshake")
    p.add_argument("--hold", type=float, default=60.0, help="seconds to stay connected")
    p.add_argument("--ping", type=float, default=10.0, help="keepalive interval")
    p.add_argument("--deadline", type=float, default=600.0, help="seconds for everything")
    a = p.parse_args(argv)
    return Options(
        a.server, a.port, a.transport, a.ca, a.server_name, a.users, a.first, a.count,
        a.password, a.cipher, max(1, a.concurrency), a.timeout, a.hold, a.ping, a.deadline,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(parse_args(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())

"""The messages between the daemon's main process and its data-plane workers.

With `[gateway] workers = N` the IKE endpoint stays in the main process and N worker
processes (`daemon.worker`) move the packets; the main one hands each worker the keys
of the CHILD SAs it owns and asks for their counters. They talk over one
SOCK_SEQPACKET socket pair per worker (a message is one datagram, boundaries kept,
delivered in order; a closed end reads as end of file) in JSON: nothing the other
side sends is ever unpickled. Keys travel as hex and never appear in a `repr`.

`Channel` is the asyncio side both ends share: messages out in order, queued while
the socket is full, and each message in handed to a callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ikev2.events import Address, ChildSaInstalled
from ikev2.ts import TrafficSelector, TrafficSelectorError

log = logging.getLogger(__name__)

MAX_MESSAGE = 1 << 20
"""Largest message read; a counters answer is cut in parts well below it."""
COUNTERS_PER_MESSAGE = 256
"""Most CHILD SAs in one part of a counters answer (about 60 KiB of JSON)."""


class ProtocolError(ValueError):
    """A message that is not one of ours: bad JSON, unknown type, a field missing
    or of the wrong type."""


# ---- main -> worker ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UdpSocket:
    """A UDP 4500 socket passed to a worker (its place in the SO_REUSEPORT group
    is what steers its ESP to it)."""

    fd: int
    address: str
    port: int


@dataclass(frozen=True, slots=True)
class RawSocket:
    """A raw ESP (IP protocol 50) socket passed to a worker."""

    fd: int
    address: str


@dataclass(frozen=True, slots=True)
class HandoffSocket:
    """The worker's end of the datagram socket pair it shares with worker `peer`."""

    fd: int
    peer: int


@dataclass(frozen=True, slots=True)
class Setup:
    """The first message a worker gets: who it is and which file descriptors (kept
    at their numbers by `subprocess`'s pass_fds) are what."""

    TYPE: ClassVar[str] = "setup"
    index: int
    """This worker's number, 0..count-1: it owns the CHILD SAs whose inbound SPI
    modulo `count` is its index."""
    count: int
    tun_fd: int
    """Its TUN queue (IFF_MULTI_QUEUE), or in tests one end of a socket pair."""
    tun_name: str
    tun_flags: int
    """The IFF_* flags the queue was opened with (0 with `tun_memory`)."""
    tun_memory: bool
    """The TUN queue is a SOCK_SEQPACKET socket (`tun.memory.MemoryTun`)."""
    tun_uso: bool
    """The TUN takes UDP segmentation offload writes."""
    udp: tuple[UdpSocket, ...]
    raw: tuple[RawSocket, ...]
    handoff: tuple[HandoffSocket, ...]
    offload: bool = True
    """UDP GSO/GRO as the pump uses them."""
    log_level: str = "info"
    tun_attached: bool = True
    """False for a restarted worker's queue, which its predecessor's death took out
    of use: the worker reads nothing until `QueueAttached` (see `Ready`)."""


@dataclass(frozen=True, slots=True)
class Install:
    """Put a CHILD SA in the worker: its own (`owner` is the worker's index) or a
    forward entry for the worker that owns it (`childsa.forward_entry`; the event's
    keys are then empty)."""

    TYPE: ClassVar[str] = "install"
    event: ChildSaInstalled
    owner: int
    preferred: bool = False
    """Sends at once beside an equal SA (`DataPlane.install`)."""
    path_mtu: int = 1500


@dataclass(frozen=True, slots=True)
class Remove:
    """Take a CHILD SA (own or forward) out, its inbound SA kept `linger` seconds."""

    TYPE: ClassVar[str] = "remove"
    unique_id: int
    linger: float = 0.0


@dataclass(frozen=True, slots=True)
class Move:
    """A CHILD SA's addresses changed (NAT mapping, MOBIKE): follow them."""

    TYPE: ClassVar[str] = "move"
    unique_id: int
    local: Address
    remote: Address
    udp_encap: bool
    mtu: int


@dataclass(frozen=True, slots=True)
class CountersRequest:
    """Ask for every own CHILD SA's counters and the worker's totals."""

    TYPE: ClassVar[str] = "counters?"
    request: int


@dataclass(frozen=True, slots=True)
class Stop:
    """Exit now."""

    TYPE: ClassVar[str] = "stop"


@dataclass(frozen=True, slots=True)
class QueueAttached:
    """The worker's TUN queue is in use again (the answer to a `Ready` whose setup
    had `tun_attached` False): start reading."""

    TYPE: ClassVar[str] = "queue_attached"


# ---- worker -> main ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    """The worker is reading its file descriptors; or, with a detached TUN queue
    (`Setup.tun_attached` False), it is set up and will read them all once told
    `QueueAttached`. Until then its packets wait in the socket buffers and the
    queue, and the kernel steers no flow into a queue nobody reads."""

    TYPE: ClassVar[str] = "ready"
    index: int
    pid: int


@dataclass(frozen=True, slots=True)
class SaCounters:
    """One own CHILD SA's counters, as `ChildSaEntry.status` and `daemon.lifetimes`
    read them from the entry in a single process."""

    unique_id: int
    bytes_in: int
    bytes_out: int
    packets_in: int
    packets_out: int
    drops: dict[str, int]
    """`ChildSaEntry.all_drops`."""
    lifetime_in: str
    """`esp.sa.LifetimeState` value of the inbound SA ("ok", "soft", "hard")."""
    lifetime_out: str
    """The same for the outbound SA (which also tells the end of its sequence space)."""
    lingering: bool = False
    """Removed, its inbound SA kept a little longer."""


@dataclass(frozen=True, slots=True)
class CountersReply:
    """The answer to a `CountersRequest`, in parts of at most
    `COUNTERS_PER_MESSAGE` SAs; the totals ride in the last part."""

    TYPE: ClassVar[str] = "counters"
    request: int
    index: int
    sas: tuple[SaCounters, ...]
    last: bool
    drops: dict[str, int] = field(default_factory=dict)
    """`DataPlane.total_drops` (present and removed SAs)."""
    counters: dict[str, int] = field(default_factory=dict)
    kernel_drops: dict[str, int] = field(default_factory=dict)
    retired_traffic: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """`DataPlane.retired_traffic`: per connection, what its removed SAs carried."""


@dataclass(frozen=True, slots=True)
class IkeNotice:
    """An IKE message the worker's port 4500 socket received (marker stripped)."""

    TYPE: ClassVar[str] = "ike"
    message: bytes
    local: Address
    remote: Address


@dataclass(frozen=True, slots=True)
class UnknownSpiNotice:
    """ESP of an SPI the worker has no SA for (`DataPlane.on_unknown_spi`)."""

    TYPE: ClassVar[str] = "unknown_spi"
    spi: int
    local: Address
    remote: Address


@dataclass(frozen=True, slots=True)
class AcquireNotice:
    """An outbound packet no policy covered (`DataPlane.on_acquire`)."""

    TYPE: ClassVar[str] = "acquire"
    packet: bytes


@dataclass(frozen=True, slots=True)
class InstallFailed:
    """An `Install` the worker could not carry out."""

    TYPE: ClassVar[str] = "install_failed"
    unique_id: int
    reason: str


Message = (
    Setup
    | Install
    | Remove
    | Move
    | CountersRequest
    | Stop
    | QueueAttached
    | Ready
    | CountersReply
    | IkeNotice
    | UnknownSpiNotice
    | AcquireNotice
    | InstallFailed
)
_MESSAGES: dict[str, type[Any]] = {
    cls.TYPE: cls
    for cls in (
        Setup,
        Install,
        Remove,
        Move,
        CountersRequest,
        Stop,
        QueueAttached,
        Ready,
        CountersReply,
        IkeNotice,
        UnknownSpiNotice,
        AcquireNotice,
        InstallFailed,
    )
}
_NESTED: dict[str, type[Any]] = {
    cls.__name__: cls for cls in (UdpSocket, RawSocket, HandoffSocket, SaCounters, ChildSaInstalled)
}


# ---- codec ---------------------------------------------------------------------
# Fields are written by their annotated type (the annotations are strings here, as
# in ikev2.events), so a field the IKE core adds to `ChildSaInstalled` travels
# without a change here as long as its type is one of these.


def _to_json(kind: str, value: Any) -> Any:
    if kind in ("str", "int", "bool", "float"):
        return value
    if kind == "bytes":
        return bytes(value).hex()
    if kind == "Address":
        return [value[0], value[1]]
    if kind.endswith(" | None"):
        return None if value is None else _to_json(kind[: -len(" | None")], value)
    if kind.startswith("tuple[") and kind.endswith(", ...]"):
        inner = kind[len("tuple[") : -len(", ...]")]
        return [_to_json(inner, item) for item in value]
    if kind == "TrafficSelector":
        ts = value
        return [str(ts.start_addr), str(ts.end_addr), ts.protocol, ts.start_port, ts.end_port]
    if kind.startswith("dict[str, "):
        inner = kind[len("dict[str, ") : -1]
        return {str(k): _to_json(inner, v) for k, v in value.items()}
    if kind in _NESTED:
        return _object_to_json(value)
    raise ProtocolError(f"no encoding for a field of type {kind}")


def _expect(value: Any, kind: type, what: str) -> Any:
    # bool is an int to isinstance; JSON's true is not a number here.
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ProtocolError(f"{what}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _from_json(kind: str, value: Any, what: str) -> Any:
    if kind == "str":
        return _expect(value, str, what)
    if kind == "int":
        return _expect(value, int, what)
    if kind == "bool":
        return _expect(value, bool, what)
    if kind == "float":
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return _expect(value, float, what)
    if kind == "bytes":
        try:
            return bytes.fromhex(_expect(value, str, what))
        except ValueError:
            raise ProtocolError(f"{what}: not hex") from None
    if kind == "Address":
        pair = _expect(value, list, what)
        if len(pair) != 2:
            raise ProtocolError(f"{what}: an address is [host, port]")
        return (_expect(pair[0], str, what), _expect(pair[1], int, what))
    if kind.endswith(" | None"):
        return None if value is None else _from_json(kind[: -len(" | None")], value, what)
    if kind.startswith("tuple[") and kind.endswith(", ...]"):
        inner = kind[len("tuple[") : -len(", ...]")]
        items = _expect(value, list, what)
        return tuple(_from_json(inner, item, f"{what}[{i}]") for i, item in enumerate(items))
    if kind == "TrafficSelector":
        parts = _expect(value, list, what)
        if len(parts) != 5:
            raise ProtocolError(f"{what}: a selector is [start, end, protocol, ports]")
        try:
            return TrafficSelector(
                ipaddress.ip_address(_expect(parts[0], str, what)),
                ipaddress.ip_address(_expect(parts[1], str, what)),
                _expect(parts[2], int, what),
                _expect(parts[3], int, what),
                _expect(parts[4], int, what),
            )
        except (ValueError, TrafficSelectorError) as exc:
            raise ProtocolError(f"{what}: {exc}") from None
    if kind.startswith("dict[str, "):
        inner = kind[len("dict[str, ") : -1]
        table = _expect(value, dict, what)
        return {k: _from_json(inner, v, f"{what}.{k}") for k, v in table.items()}
    if kind in _NESTED:
        return _object_from_json(_NESTED[kind], value, what)
    raise ProtocolError(f"{what}: no decoding for type {kind}")


def _object_to_json(obj: Any) -> dict[str, Any]:
    return {f.name: _to_json(str(f.type), getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def _object_from_json(cls: type[Any], value: Any, what: str) -> Any:
    table = _expect(value, dict, what)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in table:
            kwargs[f.name] = _from_json(str(f.type), table[f.name], f"{what}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ProtocolError(f"{what}: {f.name} missing")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"{what}: {exc}") from None


def encode(message: Message) -> bytes:
    """One message as the octets of one datagram."""
    body = _object_to_json(message)
    body["type"] = message.TYPE
    return json.dumps(body, separators=(",", ":")).encode()


def decode(data: bytes) -> Message:
    """The message in one datagram; `ProtocolError` if it is none of ours."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError("a message is a JSON object")
    cls = _MESSAGES.get(body.pop("type", None))
    if cls is None:
        raise ProtocolError("unknown message type")
    message: Message = _object_from_json(cls, body, cls.TYPE)
    return message


def counters_parts(
    request: int,
    index: int,
    sas: list[SaCounters],
    totals: dict[str, Any],
) -> list[CountersReply]:
    """A counters answer cut in parts of `COUNTERS_PER_MESSAGE` SAs, `totals`
    (`CountersReply`'s drops, counters, kernel_drops, retired_traffic) in the last."""
    chunks = [sas[i : i + COUNTERS_PER_MESSAGE] for i in range(0, len(sas), COUNTERS_PER_MESSAGE)]
    if not chunks:
        chunks = [[]]
    parts = [CountersReply(request, index, tuple(chunk), False) for chunk in chunks[:-1]]
    parts.append(CountersReply(request, index, tuple(chunks[-1]), True, **totals))
    return parts


# ---- the socket ----------------------------------------------------------------


class Channel:
    """One end of a control socket pair on an asyncio loop.

    `send` never blocks: what the socket cannot take yet waits in order and goes
    when it is writable. Each message read goes to `on_message`; a message that is
    not ours is logged and skipped; end of file or a failed send (the other process
    is gone, or closed its end) closes the channel and schedules `on_closed`, once.
    """

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[Message], None],
        on_closed: Callable[[], None],
        name: str = "control",
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.name = name
        self._loop = loop
        self._on_message = on_message
        self._on_closed = on_closed
        self._pending: deque[bytes] = deque()
        self._closed = False
        loop.add_reader(sock.fileno(), self._read)

    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, message: Message) -> bool:
        """Queue ``message``; False if the channel is closed."""
        if self._closed:
            return False
        data = encode(message)
        if self._pending:
            self._pending.append(data)
            return True
        try:
            self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            self._pending.append(data)
            self._loop.add_writer(self.sock.fileno(), self._flush)
        except OSError:
            self._lost()
            return False
        return True

    def _flush(self) -> None:
        while self._pending:
            try:
                self.sock.send(self._pending[0])
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._lost()
                return
            self._pending.popleft()
        self._loop.remove_writer(self.sock.fileno())

    def _read(self) -> None:
        for _ in range(64):
            try:
                data = self.sock.recv(MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._lost()
                return
            if not data:
                self._lost()
                return
            try:
                message = decode(data)
            except ProtocolError as exc:
                log.warning("%s: message dropped: %s", self.name, exc)
                continue
            self._on_message(message)
            if self._closed:
                return

    def _lost(self) -> None:
        if self._closed:
            return
        self.close()
        # Later, never from inside `send`: its caller is still at work.
        self._loop.call_soon(self._on_closed)

    def close(self) -> None:
        """Stop reading and writing, and close the socket (no `on_closed`)."""
        if self._closed:
            return
        self._closed = True
        self._pending.clear()
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self.sock.fileno())
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_writer(self.sock.fileno())
        self.sock.close()

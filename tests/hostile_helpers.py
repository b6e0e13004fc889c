"""Building blocks of the hostile-network tests: an attacker namespace, a
bounded spoofed IKE_SA_INIT flood, raw frame capture and injection on a WAN veth,
ESP packets built with keys read from charon's log, and process figures from /proc.

Only documentation addresses: the attacker hangs off gateway A on 2001:db8:f00::/64
and its spoofed sources are random hosts in 2001:db8:f::/48, routed by gateway A to
the attacker (so the answers land there and can be counted).

Run as a script (`python hostile_helpers.py flood ...`) it is the flood sender; it then
uses the standard library only, so it runs from its path in the attacker namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from esp.udpencap import DatagramKind, classify

ETH_P_ALL = 0x0003
ETH_P_IPV6 = 0x86DD
ATTACKER_LINK = "2001:db8:f00::2"
GATEWAY_LINK = "2001:db8:f00::1"
SPOOF_PREFIX = "2001:db8:f::"
"""The /48 of spoofed flood sources (RFC 3849 documentation space)."""
NOTIFY_COOKIE = 16390
PAYLOAD_SA, PAYLOAD_NOTIFY = 33, 41


# --- /proc figures ------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """Resident memory of `pid` in KiB (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    """How many file descriptors `pid` holds open (/proc/PID/fd)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class PeakSampler:
    """Samples a process's RSS every `interval` seconds in a thread; keeps the peak."""

    pid: int
    interval: float = 0.1
    peak_kib: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> PeakSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                self.peak_kib = max(self.peak_kib, rss_kib(self.pid))
                self.samples += 1
            self._stop.wait(self.interval)


# --- raw frames on a namespace's interface ----------------------------------------------


def _namespaced_socket(ns_name: str, ifname: str) -> socket.socket:
    """An AF_PACKET socket bound to `ifname` inside namespace `ns_name`.

    A socket belongs to the namespace of the thread that created it, so it is opened
    with the thread moved there (`in_namespace`) and used from anywhere afterwards.
    """
    from daemon.lab.netns import in_namespace

    with in_namespace(ns_name):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.bind((ifname, ETH_P_ALL))
    return sock


class FrameCapture:
    """Incoming frames on one interface that `keep` accepts, read by a thread."""

    def __init__(self, ns_name: str, ifname: str, keep: Callable[[bytes], bool]) -> None:
        self.sock = _namespaced_socket(ns_name, ifname)
        self.sock.settimeout(0.2)
        self.keep = keep
        self.frames: list[bytes] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FrameCapture:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame, addr = self.sock.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            # addr[2] is the packet type: PACKET_OUTGOING (4) frames are our own sends.
            if addr[2] != socket.PACKET_OUTGOING and self.keep(frame):
                with self._lock:
                    self.frames.append(frame)

    def snapshot(self) -> list[bytes]:
        with self._lock:
            return list(self.frames)


def inject_frames(ns_name: str, ifname: str, frames: list[bytes], gap: float = 0.01) -> None:
    """Send whole Ethernet frames out of `ifname` in `ns_name`, `gap` seconds apart."""
    sock = _namespaced_socket(ns_name, ifname)
    try:
        for frame in frames:
            sock.send(frame)
            time.sleep(gap)
    finally:
        sock.close()


def mac_of(ns_name: str, ifname: str) -> bytes:
    from daemon.lab.netns import run_command

    out = run_command(["ip", "-n", ns_name, "-j", "link", "show", "dev", ifname]).stdout
    return bytes.fromhex(json.loads(out)[0]["address"].replace(":", ""))


# --- ESP frames (raw, or in UDP per RFC 3948), IPv4 outer ------------------------------


def esp_in_udp4(frame: bytes) -> tuple[int, int] | None:
    """(offset of the ESP header, its length) if `frame` is IPv4/UDP 4500 carrying ESP."""
    if len(frame) < 14 + 20 + 8 + 8 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return None
    ihl = (frame[14] & 0x0F) * 4
    udp = 14 + ihl
    dport = struct.unpack_from("!H", frame, udp + 2)[0]
    if dport != 4500 or classify(frame[udp + 8 :]) is not DatagramKind.ESP:
        return None  # not NAT-T, or IKE / a keepalive on 4500
    return udp + 8, len(frame) - udp - 8


def esp_raw4(frame: bytes) -> int | None:
    """Offset of the ESP header if `frame` is IPv4 carrying raw ESP (protocol 50)."""
    if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00" or frame[23] != 50:
        return None
    return 14 + (frame[14] & 0x0F) * 4


def rewrite_raw4(frame: bytes, esp: bytes) -> bytes:
    """`frame` (IPv4/ESP) with its ESP part replaced; total length and checksum fixed."""
    ihl = (frame[14] & 0x0F) * 4
    ip = bytearray(frame[14 : 14 + ihl])
    struct.pack_into("!H", ip, 2, ihl + len(esp))
    struct.pack_into("!H", ip, 10, 0)
    struct.pack_into("!H", ip, 10, _checksum(bytes(ip)))
    return frame[:14] + bytes(ip) + esp


def udp4_ports(frame: bytes) -> tuple[int, int] | None:
    """(source port, destination port) if `frame` is IPv4/UDP, else None."""
    if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return None
    udp = 14 + (frame[14] & 0x0F) * 4
    sport, dport = struct.unpack_from("!HH", frame, udp)
    return int(sport), int(dport)


def udp4_payload(frame: bytes) -> bytes:
    """The UDP payload of an IPv4/UDP frame."""
    return frame[14 + (frame[14] & 0x0F) * 4 + 8 :]


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def rewrite_udp4(frame: bytes, payload: bytes) -> bytes:
    """`frame` (IPv4/UDP) with its UDP payload replaced; lengths and IP checksum fixed.

    The UDP checksum is set to 0 (allowed for IPv4, RFC 768; RFC 3948 §2.1 senders
    should use 0 anyway).
    """
    ihl = (frame[14] & 0x0F) * 4
    ip = bytearray(frame[14 : 14 + ihl])
    udp = bytearray(frame[14 + ihl : 14 + ihl + 8])
    struct.pack_into("!H", ip, 2, ihl + 8 + len(payload))
    struct.pack_into("!H", ip, 10, 0)
    struct.pack_into("!H", ip, 10, _checksum(bytes(ip)))
    struct.pack_into("!H", udp, 4, 8 + len(payload))
    struct.pack_into("!H", udp, 6, 0)
    return frame[:14] + bytes(ip) + bytes(udp) + payload


# --- charon's CHILD SA keys and a hand-made AES-GCM ESP packet -------------------------


def charon_dumps(log: str) -> dict[str, bytes]:
    """Every secret charon's log dumped, by label and line: `LABEL => N bytes @ ADDR`
    followed by hex lines (at filelog level 4, `ike` dumps the DH secret and SK_*,
    `chd` each CHILD SA's keys)."""
    found: dict[str, bytes] = {}
    lines = log.splitlines()
    for i, line in enumerate(lines):
        match = re.search(r"\] (.*(?:key|secret|Sk_\w+)[^=]*) => (\d+) bytes @", line)
        if match is None:
            continue
        size, data = int(match.group(2)), b""
        for follow in lines[i + 1 :]:
            hexpart = re.match(r".*?\s+\d+: ((?:[0-9A-F]{2} ?)+)", follow)
            if hexpart is None or len(data) >= size:
                break
            data += bytes.fromhex(hexpart.group(1).replace(" ", ""))
        if len(data) == size:
            found[f"{match.group(1)} (line {i + 1})"] = data
    return found


def charon_key_candidates(log: str) -> list[bytes]:
    """The CHILD SA keys charon's log dumped; which is which the caller finds out by
    trying them on a captured packet."""
    return [data for label, data in charon_dumps(log).items() if "key" in label]


def gcm_open(key_salt: bytes, esp: bytes) -> bytes | None:
    """Decrypt an AES-GCM-16 ESP packet (RFC 4106); None if the tag does not verify."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key, salt = key_salt[:-4], key_salt[-4:]
    try:
        return AESGCM(key).decrypt(salt + esp[8:16], esp[16:], esp[:8])
    except (InvalidTag, ValueError):
        return None


def gcm_seal(key_salt: bytes, spi: int, seq: int, inner: bytes, trailer: bytes) -> bytes:
    """An AES-GCM-16 ESP packet carrying `inner` + `trailer` (padding, pad length, next
    header chosen by the caller, so it can be wrong on purpose); RFC 4106 §3-5."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key, salt = key_salt[:-4], key_salt[-4:]
    header = struct.pack("!II", spi, seq)
    iv = os.urandom(8)
    return header + iv + AESGCM(key).encrypt(salt + iv, inner + trailer, header)


def ipv4_udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """A plain IPv4/UDP packet (the inner packet of a crafted ESP one)."""
    total = 20 + 8 + len(payload)
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total, 0x1234, 0, 64, 17, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )  # fmt: skip
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    return ip + udp + payload


@contextlib.contextmanager
def udp_listener(ns_name: str, address: str, port: int) -> Iterator[socket.socket]:
    """A non-blocking UDP socket bound inside `ns_name`; what it receives reached the host."""
    from daemon.lab.netns import in_namespace

    with in_namespace(ns_name):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((address, port))
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def drain(sock: socket.socket) -> list[bytes]:
    out: list[bytes] = []
    with contextlib.suppress(BlockingIOError):
        while True:
            out.append(sock.recv(65535))
    return out


KEY_LOG_LEVELS = {"default": 1, "ike": 4, "chd": 4, "cfg": 2, "knl": 1, "net": 1}
"""charon filelog levels that dump SK_* and CHILD SA keys (strongSwan logs them at 4)."""


def make_charon_log_keys(world: object) -> None:
    """Restart an `interop` case's charon with filelog levels that log every key."""
    from interop_helpers import Interop

    from testkit.strongswan import render_strongswan_conf

    if not isinstance(world, Interop):
        raise TypeError("make_charon_log_keys needs an Interop")
    charon = world.charon
    charon.stop()
    charon.conf_path.write_text(
        render_strongswan_conf(
            charon.rundir,
            charon.name,
            log_levels=KEY_LOG_LEVELS,
            extra_charon=world.case.swan_charon,
        )
    )
    world.restart_charon()


def kill_charon(world: object) -> None:
    """SIGKILL an `interop` case's charon (no Delete goes out) and reap it."""
    from interop_helpers import Interop

    if not isinstance(world, Interop) or world.charon.process is None:
        raise TypeError("kill_charon needs an Interop whose charon runs")
    world.charon.process.signal(signal.SIGKILL)
    world.charon.process.popen.wait(5)


def esp_seq(esp: bytes) -> int:
    return int(struct.unpack_from("!I", esp, 4)[0])


def esp_spi(esp: bytes) -> int:
    return int(struct.unpack_from("!I", esp, 0)[0])


# --- the attacker and the flood ---------------------------------------------------------


@dataclass(frozen=True)
class Attacker:
    """A namespace wired to gateway A's `atk0`; spoofed sources are routed back to it."""

    ns_name: str
    ifname: str
    gateway_mac: bytes
    own_mac: bytes


def add_attacker(topo: object) -> Attacker:
    """Give a `SiteToSite` an attacker namespace next to gateway A (IPv6 only)."""
    from daemon.lab.netns import SiteToSite

    if not isinstance(topo, SiteToSite):
        raise TypeError("add_attacker needs a SiteToSite")
    atk = topo.lab.namespace("atk")
    topo.lab.veth(topo.gw_a, "atk0", atk, "eth0")
    topo.gw_a.ip("addr", "add", f"{GATEWAY_LINK}/64", "dev", "atk0", "nodad")
    atk.ip("addr", "add", f"{ATTACKER_LINK}/64", "dev", "eth0", "nodad")
    topo.gw_a.ip("-6", "route", "add", f"{SPOOF_PREFIX}/48", "via", ATTACKER_LINK)
    # Answers to spoofed hosts must reach the attacker's wire, not be refused as
    # "no neighbour": the attacker's link address is the next hop for all of them.
    topo.gw_a.run("ping", "-6", "-c", "1", "-w", "3", ATTACKER_LINK, check=False)
    return Attacker(atk.name, "eth0", mac_of(topo.gw_a.name, "atk0"), mac_of(atk.name, "eth0"))


def ike_sa_init_template() -> bytes:
    """One well-formed IKE_SA_INIT request (aes256gcm16-prfsha384-x25519, lockgate's
    default), built with scapy's own IKEv2 layer, independently of lockgate's codec."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    from scapy.contrib.ikev2 import (
        IKEv2,
        IKEv2_KE,
        IKEv2_Nonce,
        IKEv2_Proposal,
        IKEv2_SA,
        IKEv2_Transform,
    )

    public = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    transforms = (
        IKEv2_Transform(transform_type="Encryption", transform_id=20, length=12,
                        key_length=0x800E0100)
        / IKEv2_Transform(transform_type="PRF", transform_id=6)
        / IKEv2_Transform(transform_type="GroupDesc", transform_id=31)
    )  # fmt: skip
    packet = (
        IKEv2(init_SPI=os.urandom(8), exch_type=34, flags="Initiator", id=0)
        / IKEv2_SA(prop=IKEv2_Proposal(proposal=1, proto=1, trans_nb=3, trans=transforms))
        / IKEv2_KE(group=31, ke=public)
        / IKEv2_Nonce(nonce=os.urandom(32))
    )
    return bytes(packet)


@dataclass(frozen=True)
class FloodResult:
    """What the flood sender sent and which answers came back to the spoofed hosts."""

    sent: int
    seconds: float
    cookie_answers: int
    """IKE_SA_INIT responses carrying only a COOKIE notify (RFC 7296 §2.6)."""
    full_answers: int
    """Responses with an SA payload: the responder created a half-open IKE SA."""
    other_answers: int
    cookies_echoed: int = 0
    """Requests repeated with the COOKIE they were given (`echo_cookies`)."""
    other_sample: str = ""
    """The first unexpected answer, in hex, for the failure message."""


def run_flood(
    topo: object,
    attacker: Attacker,
    template: bytes,
    *,
    count: int,
    seconds: float,
    echo_cookies: bool = False,
) -> Callable[[], FloodResult]:
    """Start the flood sender in the attacker namespace; returns a waiter for its result.

    With `echo_cookies` the attacker, who owns the spoofed prefix and sees the answers,
    repeats each request with the COOKIE it was given (RFC 7296 §2.6): the cookie
    mechanism cannot stop it, only the half-open cap can.
    """
    from daemon.lab.netns import HarnessError, SiteToSite

    if not isinstance(topo, SiteToSite):
        raise TypeError("run_flood needs a SiteToSite")
    template_path = topo.lab.tmpdir / "ike_sa_init.bin"
    template_path.write_bytes(template)
    ns = next(n for n in topo.lab.namespaces if n.name == attacker.ns_name)
    proc = ns.spawn(
        [sys.executable, str(Path(__file__).resolve()), "flood", attacker.ifname,
         attacker.gateway_mac.hex(), attacker.own_mac.hex(), ATTACKER_LINK, GATEWAY_LINK,
         str(template_path), str(count), str(seconds), "echo" if echo_cookies else "-"],
        name="ike-flood",
        stdout_pipe=True,
    )  # fmt: skip

    def wait() -> FloodResult:
        if proc.popen.stdout is None:
            raise HarnessError("flood sender has no stdout")
        try:
            out, _ = proc.popen.communicate(timeout=seconds + 30)
        finally:
            proc.stop()
        data = json.loads(out.decode() or "{}")
        if not data:
            raise HarnessError("flood sender printed nothing")
        return FloodResult(**data)

    return wait


def _ike_answer_kind(ike: bytes) -> str:
    """'cookie', 'full' or 'other' for an IKE_SA_INIT response."""
    if len(ike) < 28 or ike[18] != 34:
        return "other"
    next_payload, offset = ike[16], 28
    kinds: list[tuple[int, bytes]] = []
    while next_payload and offset + 4 <= len(ike):
        length = struct.unpack_from("!H", ike, offset + 2)[0]
        if length < 4:
            break
        kinds.append((next_payload, ike[offset + 4 : offset + length]))
        next_payload, offset = ike[offset], offset + length
    if any(kind == PAYLOAD_SA for kind, _ in kinds):
        return "full"
    for kind, body in kinds:
        if kind == PAYLOAD_NOTIFY and body[2:4] == struct.pack("!H", NOTIFY_COOKIE):
            return "cookie"
    return "other"


def _with_cookie(request: bytes, answer: bytes) -> bytes | None:
    """`request` again with the COOKIE notify of `answer` first (RFC 7296 §2.6)."""
    next_payload, offset = answer[16], 28
    while next_payload and offset + 4 <= len(answer):
        length = struct.unpack_from("!H", answer, offset + 2)[0]
        body = answer[offset + 4 : offset + length]
        if length < 8:
            return None
        if next_payload == PAYLOAD_NOTIFY and body[2:4] == struct.pack("!H", NOTIFY_COOKIE):
            cookie = body[4 + body[1] :]
            notify = bytes([request[16], 0]) + struct.pack("!HBBH", 8 + len(cookie), 0, 0,
                                                           NOTIFY_COOKIE) + cookie  # fmt: skip
            total = len(request) + len(notify)
            return (request[:16] + bytes([PAYLOAD_NOTIFY]) + request[17:24]
                    + struct.pack("!I", total) + notify + request[28:])  # fmt: skip
        next_payload, offset = answer[offset], offset + length
    return None


def _udp6_frame(
    dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, sport: int, payload: bytes
) -> bytes:
    udp_len = 8 + len(payload)
    pseudo = src + dst + struct.pack("!IxxxB", udp_len, 17)
    udp = struct.pack("!HHHH", sport, 500, udp_len, 0) + payload
    csum = _checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    ip6 = struct.pack("!IHBB", 0x60000000, udp_len, 17, 64) + src + dst
    return dst_mac + src_mac + struct.pack("!H", ETH_P_IPV6) + ip6 + udp


def _flood_main(argv: list[str]) -> None:
    """Send `count` IKE_SA_INIT requests from random spoofed hosts over `seconds`,
    each with its own SPIi and nonce; count the answers that come back."""
    ifname, dst_mac, src_mac, _own, gateway, template_path, count_s, seconds_s, mode = argv
    echo = mode == "echo"
    requests: dict[bytes, bytes] = {}  # SPIi -> request, only when echoing
    template = Path(template_path).read_bytes()
    count, seconds = int(count_s), float(seconds_s)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IPV6))
    sock.bind((ifname, ETH_P_IPV6))
    sock.setblocking(False)
    dst = socket.inet_pton(socket.AF_INET6, gateway)
    prefix = socket.inet_pton(socket.AF_INET6, SPOOF_PREFIX)[:6]
    rng = random.Random(0x10C6)
    counts = {"cookie": 0, "full": 0, "other": 0, "echoed": 0}
    sample: list[str] = []

    def receive() -> None:
        while True:
            try:
                frame = sock.recv(65535)
            except BlockingIOError:
                return
            # IPv6/UDP from port 500 to a spoofed host: an answer of the responder.
            if len(frame) < 62 or frame[20] != 17 or frame[38:44] != prefix:
                continue
            if struct.unpack_from("!H", frame, 54)[0] != 500:
                continue
            kind = _ike_answer_kind(frame[62:])
            counts[kind] += 1
            if kind == "other" and not sample:
                sample.append(frame[62:].hex())
            request = requests.pop(frame[62:70], None) if kind == "cookie" else None
            if request is not None and (again := _with_cookie(request, frame[62:])):
                # Back to where the answer went: the spoofed host and its port.
                sport = struct.unpack_from("!H", frame, 56)[0]
                reply = _udp6_frame(bytes.fromhex(dst_mac), bytes.fromhex(src_mac),
                                    frame[38:54], dst, sport, again)  # fmt: skip
                with contextlib.suppress(BlockingIOError):
                    sock.send(reply)
                    counts["echoed"] += 1

    start = time.monotonic()
    sent = 0
    while sent < count and time.monotonic() - start < seconds + 5:
        due = min(count, int(count * (time.monotonic() - start) / seconds) + 1)
        while sent < due:
            src = prefix + rng.randbytes(10)
            ike = rng.randbytes(8) + template[8:]
            # A fresh nonce too, so that no two requests look like retransmissions.
            ike = ike[:-32] + rng.randbytes(32)
            frame = _udp6_frame(
                bytes.fromhex(dst_mac), bytes.fromhex(src_mac), src, dst,
                rng.randrange(1024, 65535), ike,
            )  # fmt: skip
            with contextlib.suppress(BlockingIOError):
                sock.send(frame)
                sent += 1
                if echo:
                    requests[ike[:8]] = ike
        receive()
        time.sleep(0.002)
    elapsed = time.monotonic() - start
    settle = time.monotonic() + 2
    while time.monotonic() < settle:
        receive()
        time.sleep(0.01)
    result = {
        "sent": sent,
        "seconds": round(elapsed, 2),
        "cookie_answers": counts["cookie"],
        "full_answers": counts["full"],
        "other_answers": counts["other"],
        "cookies_echoed": counts["echoed"],
        "other_sample": sample[0] if sample else "",
    }
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "flood":
        _flood_main(sys.argv[2:])
    else:
        raise SystemExit(
            f"usage: {sys.argv[0]} flood IFACE DSTMAC SRCMAC OWN GW TEMPLATE N SECS echo|-"
        )

"""Two data planes' worth of test material: mirrored CHILD SA events, the IP
packets (IPv4, IPv6, ICMP echo) the data-plane tests push through them, and a
transport that keeps what a data plane sends and writes (`Wire`)."""

from __future__ import annotations

import ipaddress
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from daemon.childsa import ChildSaEntry
from daemon.packet import checksum
from esp.sa import PARTS_PER_PACKET
from ikev2.events import Address, ChildSaInstalled
from ikev2.ts import TrafficSelector as IkeTs

NET_A4, NET_B4 = "192.0.2.0/24", "203.0.113.0/24"
NET_A6, NET_B6 = "2001:db8:a::/64", "2001:db8:b::/64"
GW_A = "198.51.100.1"


GW_B = "198.51.100.2"


@dataclass
class Wire:
    """A data plane's transport that keeps what it is given: each ESP packet sent
    (its parts joined), per send the SA and how many packets, and per TUN write the
    packets, the interface (None: the gateway's TUN) and the partial-checksum marks."""

    esp: list[bytes] = field(default_factory=list)
    sent: list[tuple[int, int]] = field(default_factory=list)
    written: list[tuple[list[bytes], str | None, list[int]]] = field(default_factory=list)

    def send(self, entry: ChildSaEntry, parts: list[bytes]) -> int:
        step = PARTS_PER_PACKET
        self.esp += [b"".join(parts[i : i + step]) for i in range(0, len(parts), step)]
        self.sent.append((entry.unique_id, len(parts) // step))
        return len(parts) // step

    def send_keepalive(self, local: Address, remote: Address) -> bool:
        return True

    def write_tun(
        self, packets: list[bytes], interface: str | None = None, partial: Sequence[int] = ()
    ) -> int:
        self.written.append((list(packets), interface, list(partial)))
        return len(packets)

    def tuns(self) -> dict[str | None, list[bytes]]:
        """What was written, per TUN, in order."""
        out: dict[str | None, list[bytes]] = {}
        for packets, interface, _ in self.written:
            out.setdefault(interface, []).extend(packets)
        return out

    def tun(self, interface: str | None = None) -> list[bytes]:
        """What was written to one TUN, in order."""
        return self.tuns().get(interface, [])


class NoTransport:
    """The output of a data plane that must never send nor write: one that only
    installs and removes SAs, or the main process's shadow of data-plane workers."""

    def send(self, entry: ChildSaEntry, parts: list[bytes]) -> int:
        raise AssertionError("nothing is sent")

    def send_keepalive(self, local: Address, remote: Address) -> bool:
        raise AssertionError("nothing is sent")

    def write_tun(
        self, packets: list[bytes], interface: str | None = None, partial: Sequence[int] = ()
    ) -> int:
        raise AssertionError("nothing is written")


SUITES = {
    # name: (encr_id, key_bits, integ_id, encr key len, integ key len)
    "aes128gcm16": (20, 128, 0, 20, 0),
    "aes256gcm16": (20, 256, 0, 36, 0),
    "chacha20poly1305": (28, 256, 0, 36, 0),
    "aes256-sha256": (12, 256, 12, 32, 32),
}


def events(
    suite: str = "aes128gcm16",
    udp: bool = True,
    esn: bool = False,
    uid: int = 1,
    partial_csum: bool = False,
) -> tuple[ChildSaInstalled, ChildSaInstalled]:
    """A's and B's view of the same CHILD SA, with mirrored SPIs and keys
    (`partial_csum`: as two lockgates that agreed on partial checksums)."""
    encr_id, bits, integ_id, ek, ik = SUITES[suite]
    keys = [os.urandom(n) for n in (ek, ik, ek, ik)]
    spi_ab, spi_ba = 0xA0000000 + uid, 0xB0000000 + uid
    port = 4500 if udp else 500
    ts_a = (IkeTs.from_network(NET_A4), IkeTs.from_network(NET_A6))
    ts_b = (IkeTs.from_network(NET_B4), IkeTs.from_network(NET_B6))
    common = dict(
        connection="site",
        child="site",
        unique_id=uid,
        ike_sa_id=1,
        encr_id=encr_id,
        encr_key_bits=bits,
        integ_id=integ_id,
        esn=esn,
        udp_encap=udp,
        lifetime=3600.0,
        rekey_time=3000.0,
        life_bytes=0,
        life_packets=0,
        replay_window=128,
        partial_csum=partial_csum,
    )
    a = ChildSaInstalled(
        **common,  # type: ignore[arg-type]
        spi_in=spi_ba,
        spi_out=spi_ab,
        encr_key_in=keys[2],
        integ_key_in=keys[3],
        encr_key_out=keys[0],
        integ_key_out=keys[1],
        local_ts=ts_a,
        remote_ts=ts_b,
        local=(GW_A, port),
        remote=(GW_B, port),
    )
    b = ChildSaInstalled(
        **common,  # type: ignore[arg-type]
        spi_in=spi_ab,
        spi_out=spi_ba,
        encr_key_in=keys[0],
        integ_key_in=keys[1],
        encr_key_out=keys[2],
        integ_key_out=keys[3],
        local_ts=ts_b,
        remote_ts=ts_a,
        local=(GW_B, port),
        remote=(GW_A, port),
    )
    return a, b


def ipv4(
    src: str, dst: str, payload: bytes, proto: int = 17, df: bool = True, ident: int = 7
) -> bytes:
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(payload),
            ident,
            0x4000 if df else 0,
            64,
            proto,
            0,
            ipaddress.IPv4Address(src).packed,
            ipaddress.IPv4Address(dst).packed,
        )
    )
    struct.pack_into("!H", header, 10, checksum(header))
    return bytes(header) + payload


def ipv6(src: str, dst: str, payload: bytes, proto: int = 17) -> bytes:
    return (
        struct.pack(
            "!IHBB16s16s",
            6 << 28,
            len(payload),
            proto,
            64,
            ipaddress.IPv6Address(src).packed,
            ipaddress.IPv6Address(dst).packed,
        )
        + payload
    )


def echo_request(seq: int, size: int = 56) -> bytes:
    body = struct.pack("!BBHHH", 8, 0, 0, 0x1234, seq) + bytes(size)
    return body[:2] + struct.pack("!H", checksum(body)) + body[4:]


def tcp_super_frame(
    payload_len: int, *, v6: bool = False, mss: int = 1000, src: str = "", dst: str = ""
) -> bytes:
    """A TSO frame as a kernel hands it over (virtio-net header, F_NEEDS_CSUM, GSO
    TCP): one flow from site A to site B (or `src` to `dst`), PSH ACK, `mss` payload
    octets per segment. Its checksum field holds junk: no path may read it."""
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1000, 5, 5 << 4, 0x18, 65535, 0xABCD, 0)
    payload = bytes(i % 251 for i in range(payload_len))
    if v6:
        ip = ipv6(src or "2001:db8:a::10", dst or "2001:db8:b::10", tcp + payload, proto=6)
    else:
        ip = ipv4(src or "192.0.2.10", dst or "203.0.113.10", tcp + payload, proto=6)
    ip_len = 40 if v6 else 20
    header = struct.pack("=BBHHHH", 1, 4 if v6 else 1, ip_len + 20, mss, ip_len, 16)
    return header + ip

"""NAT detection in IKE_SA_INIT (RFC 7296 §2.23).

Each side sends NAT_DETECTION_SOURCE_IP = SHA-1(SPIi | SPIr | source IP | source port)
and NAT_DETECTION_DESTINATION_IP = SHA-1(SPIi | SPIr | destination IP | destination
port), the SPIs as in the message's header. A mismatch on receipt means an address
was rewritten on the way: the IKE SA then moves to port 4500 and ESP is encapsulated
in UDP. With `encap = "force"` our source hash is random, so the peer sees a NAT in
front of us and both sides encapsulate, as strongSwan does for `encap = yes`.

With `encap = "auto"` a lockgate also sends the `LOCKGATE_UDP_VID` Vendor ID (§3.12). When
both IKE_SA_INIT messages carry it, the two sides are lockgates and encapsulate ESP in UDP
even without a NAT: a userspace ESP sends and receives many UDP datagrams per system call
(GSO/GRO) but only one raw ESP packet. §2.23 lets either side choose UDP encapsulation
whether or not a NAT is detected, and obliges every side that does NAT traversal to accept
both forms, so other peers, which never send this Vendor ID, keep raw ESP. Like the NAT-D
notifies it travels in the IKE_SA_INIT messages that each side's AUTH signs (§2.15): a
Vendor ID added or removed on the way makes IKE_AUTH fail, it cannot silently change the
framing.

Where UDP port 4500 is blocked between two lockgates, IKE_AUTH gets no answer there; the
endpoint remembers the connection and initiates to it without the Vendor ID, so the
next IKE SA stays on port 500 with raw ESP, until the configuration is reloaded.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging

from ikev2.codec import Message, Notify, Payload, VendorId
from ikev2.constants import NotifyType
from ikev2.events import Address
from ikev2.tasks.base import Task, TaskSa

log = logging.getLogger(__name__)

LOCKGATE_UDP_VID = hashlib.sha256(b"lockgate/1: ESP in UDP preferred (RFC 7296 2.23)").digest()[:16]
"""Our Vendor ID payload's data: a lockgate that, with `encap = "auto"`, prefers ESP in
UDP with a peer that sends the same."""


@functools.lru_cache(maxsize=1024)
def _packed(address: str) -> bytes:
    # Four NAT-D hashes per IKE_SA_INIT name the same few addresses: parse each once.
    return ipaddress.ip_address(address).packed


def natd_hash(spi_i: bytes, spi_r: bytes, addr: Address) -> bytes:
    """SHA-1 over the SPIs, the packed IP address and the 2-octet port (§2.23)."""
    ip = _packed(addr[0])
    # SHA-1 is what §2.23 prescribes here; it serves as a checksum, not for security.
    return hashlib.sha1(spi_i + spi_r + ip + addr[1].to_bytes(2, "big")).digest()  # noqa: S324


def natd_notifies(sa: TaskSa, spi_r: bytes, local: Address, remote: Address) -> list[Payload]:
    """Our NAT_DETECTION_SOURCE_IP and _DESTINATION_IP for a message from `local` to
    `remote` (with `encap = "force"` a random source hash, which matches nothing)."""
    # A random source hash can match nothing: the peer must assume a NAT.
    source = sa.rng.token_bytes(20) if sa.encap_forced else natd_hash(sa.spi_i, spi_r, local)
    return [
        Notify(NotifyType.NAT_DETECTION_SOURCE_IP, source),
        Notify(NotifyType.NAT_DETECTION_DESTINATION_IP, natd_hash(sa.spi_i, spi_r, remote)),
    ]


def detect_nat(
    sa: TaskSa, message: Message, local: Address, remote: Address
) -> tuple[bool, bool] | None:
    """(NAT before us, NAT before the peer) from the peer's NAT-D notifies in a message
    that arrived at `local` from `remote`; None if it carries none (§2.23)."""
    sources = [
        n.data
        for n in message.payloads
        if isinstance(n, Notify) and n.notify_type == NotifyType.NAT_DETECTION_SOURCE_IP
    ]
    destination = message.notify(NotifyType.NAT_DETECTION_DESTINATION_IP)
    if not sources or destination is None:
        return None
    spi_r = message.spi_r
    # The peer's source is the address we saw it at; a mismatch: a NAT before it.
    nat_remote = natd_hash(sa.spi_i, spi_r, remote) not in sources
    # The peer's destination is where it sent to; a mismatch: a NAT before us.
    nat_local = natd_hash(sa.spi_i, spi_r, local) != destination.data
    return nat_local, nat_remote


class IkeNatd(Task):
    """Adds and checks the NAT detection notifies of IKE_SA_INIT."""

    name = "ike_natd"

    def _ours(self, sa: TaskSa, spi_r: bytes) -> list[Payload]:
        ours = natd_notifies(sa, spi_r, sa.init_local, sa.init_remote)
        if sa.offers_udp_vid:
            ours.append(VendorId(LOCKGATE_UDP_VID))
        return ours

    def _check(self, sa: TaskSa, message: Message) -> bool:
        """Set the SA's NAT flags from the peer's notifies; False if it sent none."""
        found = detect_nat(sa, message, sa.init_local, sa.init_remote)
        if found is None:
            return False
        nat_local, nat_remote = found
        peer_prefers_udp = sa.offers_udp_vid and any(
            isinstance(p, VendorId) and p.data == LOCKGATE_UDP_VID for p in message.payloads
        )
        sa.record_nat(nat_local=nat_local, nat_remote=nat_remote, peer_prefers_udp=peer_prefers_udp)
        if sa.peer_prefers_udp and not (sa.nat_local or sa.nat_remote):
            log.info("%s: the peer is a lockgate: ESP in UDP without a NAT (§2.23)", sa.name)
        if sa.nat_local or sa.nat_remote:
            log.info(
                "%s: NAT detected:%s%s",
                sa.name,
                " we are behind a NAT" if sa.nat_local else "",
                " peer is behind a NAT (or forces UDP encapsulation)" if sa.nat_remote else "",
            )
        return True

    def build_request(self, sa: TaskSa, out: list[Payload]) -> None:
        out += self._ours(sa, bytes(8))

    def process_response(self, sa: TaskSa, message: Message) -> None:
        supported = self._check(sa, message)
        if supported and sa.udp_encap:
            sa.float_to_nat_port()

    def process_request(self, sa: TaskSa, message: Message) -> None:
        self.supported = self._check(sa, message)

    def build_response(self, sa: TaskSa, out: list[Payload]) -> None:
        if getattr(self, "supported", False):
            out += self._ours(sa, sa.spi_r)

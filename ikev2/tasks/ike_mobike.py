"""MOBIKE as responder (RFC 4555): the IKE SA and its CHILD SAs follow a client that
changes address, a phone moving from Wi-Fi to LTE, without a new IKE SA.

- IKE_AUTH (§3.3): an initiator's MOBIKE_SUPPORTED is answered with ours, in the
  response that completes the login (the last one of an EAP login, §2.16 of RFC
  7296), when the connection allows it (`ConnectionConfig.mobike`).
- UPDATE_SA_ADDRESSES in an INFORMATIONAL request (§3.5): the IKE SA moves to the
  addresses the request came over, and its NAT-D notifies, hashed with the SPIs of
  the header as in RFC 7296 §2.23, give the new NAT state, so UDP encapsulation may
  switch on or off. Only an authenticated request gets here (the SK payload's ICV
  was checked), so a forged one moves nothing; only the newest request counts, and
  with a window of one every accepted request is the newest. The response carries
  our NAT-D notifies for the new addresses, and goes to the new address, as do our
  own requests and ESP from then on (`IkeSaAddressChanged`); CHILD SAs keep their
  SPIs.
- NAT-D without UPDATE_SA_ADDRESSES (§3.8): answered with ours for the path the
  request came over; nothing moves.
- COOKIE2 (§3.7's return routability check): copied into the response unchanged, so
  the initiator knows the answer came over the path it tests. We do not start
  return routability checks of our own towards a new address.
- NO_NATS_ALLOWED (§3.9): the initiator names the addresses and ports it sent from
  and to; if they differ from what arrived, a NAT rewrote them, which it forbids: we
  answer UNEXPECTED_NAT_DETECTED and keep the old addresses.
- ADDITIONAL_IP4_ADDRESS, ADDITIONAL_IP6_ADDRESS, NO_ADDITIONAL_ADDRESSES (§3.4,
  §3.6): the peer's other addresses only matter to a side that tests paths and moves
  the SA itself; a responder that never initiates an address change ignores them.
"""

from __future__ import annotations

import ipaddress
import logging

from ikev2.codec import Message, Notify, Payload
from ikev2.constants import NotifyType
from ikev2.events import Address, format_address
from ikev2.tasks.base import Task, TaskSa
from ikev2.tasks.ike_natd import detect_nat, natd_notifies

log = logging.getLogger(__name__)

COOKIE2_SIZES = range(8, 65)
"""COOKIE2 data is 8 to 64 octets (RFC 4555, the notify's definition)."""


class IkeMobike(Task):
    """MOBIKE_SUPPORTED in a responder's IKE_AUTH (RFC 4555 §3.3)."""

    name = "ike_mobike"

    def __init__(self) -> None:
        self.offered = False

    def process_request(self, sa: TaskSa, message: Message) -> None:
        # The same task sees every IKE_AUTH request of an EAP login: strongSwan and
        # Windows send the notify in the first.
        if message.notify(NotifyType.MOBIKE_SUPPORTED) is not None:
            self.offered = True

    def build_response(self, sa: TaskSa, out: list[Payload]) -> None:
        if not self.offered or sa.mobike or not sa.ike_authenticated:
            return
        if not sa.config.mobike:
            log.debug("%s: the peer supports MOBIKE; this connection does not", sa.name)
            return
        sa.enable_mobike()
        out.append(Notify(NotifyType.MOBIKE_SUPPORTED))
        log.debug("%s: MOBIKE negotiated (RFC 4555 §3.3)", sa.name)


class UpdateSaAddresses(Task):
    """The responder's side of a MOBIKE INFORMATIONAL request (RFC 4555 §3.5-3.9)."""

    name = "update_sa_addresses"

    def __init__(self) -> None:
        self.cookie2: bytes | None = None
        self.nat_forbidden = False
        self.natd_present = False

    def process_request(self, sa: TaskSa, message: Message) -> None:
        cookie2 = message.notify(NotifyType.COOKIE2)
        if cookie2 is not None:
            if len(cookie2.data) in COOKIE2_SIZES:
                self.cookie2 = cookie2.data
            else:
                log.info("%s: COOKIE2 of %d octets ignored", sa.name, len(cookie2.data))
        if not sa.mobike:
            if message.notify(NotifyType.UPDATE_SA_ADDRESSES) is not None:
                log.info("%s: UPDATE_SA_ADDRESSES without MOBIKE negotiated; ignored", sa.name)
            return
        local, remote = sa.last_path
        nat = detect_nat(sa, message, local, remote)
        # §3.8: NAT-D in any request (strongSwan adds it to its liveness checks behind
        # a NAT) is answered with ours for the path it came over, so the initiator sees
        # a NAT mapping that changed and moves the SA itself with UPDATE_SA_ADDRESSES.
        self.natd_present = nat is not None
        if message.notify(NotifyType.UPDATE_SA_ADDRESSES) is None:
            return
        if sa.rekeyed_into is not None:
            return  # its CHILD SAs moved to the new IKE SA, where the peer updates
        no_nats = message.notify(NotifyType.NO_NATS_ALLOWED)
        if no_nats is not None and not _matches(no_nats.data, sa.last_path):
            log.info(
                "%s: UPDATE_SA_ADDRESSES with NO_NATS_ALLOWED came through a NAT (%s to %s);"
                " refused",
                sa.name,
                format_address(sa.last_path[1]),
                format_address(sa.last_path[0]),
            )
            self.nat_forbidden = True
            self.natd_present = False
            return
        before = sa.remote
        if sa.update_addresses(nat):
            log.info(
                "%s: peer moved from %s to %s (MOBIKE)%s",
                sa.name,
                format_address(before),
                format_address(remote),
                f"; ESP in UDP: {sa.udp_encap_reason}" if sa.udp_encap else "; raw ESP",
            )

    def build_response(self, sa: TaskSa, out: list[Payload]) -> None:
        if self.nat_forbidden:
            out.append(Notify(NotifyType.UNEXPECTED_NAT_DETECTED))
        elif self.natd_present:
            # §3.5, §3.8: our NAT-D for the path the request came over (after an update,
            # the SA's new one), so the initiator learns its NAT state.
            local, remote = sa.last_path
            out += natd_notifies(sa, sa.spi_r, local, remote)
        if self.cookie2 is not None:
            out.append(Notify(NotifyType.COOKIE2, self.cookie2))


def _matches(data: bytes, path: tuple[Address, Address]) -> bool:
    """NO_NATS_ALLOWED data (source IP, destination IP, source port, destination port,
    as RFC 4555 defines the notify) against the addresses the request arrived over."""
    local, remote = path
    try:
        source = ipaddress.ip_address(remote[0]).packed
        destination = ipaddress.ip_address(local[0]).packed
    except ValueError:
        return False
    expected = source + destination + remote[1].to_bytes(2, "big") + local[1].to_bytes(2, "big")
    return data == expected

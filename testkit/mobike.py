"""A MOBIKE initiator's side in memory (RFC 4555), for tests of lockgate's responder.

lockgate never initiates MOBIKE, so a test's client (one of our own endpoints as
initiator) gets these tasks: `OfferMobike` added to its IKE_AUTH request
(`offer_mobike`), and `Update` in an INFORMATIONAL request, carrying what strongSwan
sends when the client's address changed (UPDATE_SA_ADDRESSES, NAT-D for the new path,
COOKIE2).
"""

from __future__ import annotations

from ikev2.codec import Message, Notify, Payload
from ikev2.constants import ExchangeType, NotifyType
from ikev2.events import Address
from ikev2.sa import IkeSa
from ikev2.tasks import Exchange, Task
from ikev2.tasks.base import TaskSa
from ikev2.tasks.ike_natd import natd_hash

COOKIE = bytes(range(16))
"""The COOKIE2 that `Update` sends."""


class OfferMobike(Task):
    """The initiator's MOBIKE_SUPPORTED in IKE_AUTH (RFC 4555 §3.3)."""

    def __init__(self) -> None:
        self.answered = False

    def build_request(self, sa: TaskSa, out: list[Payload]) -> None:
        out.append(Notify(NotifyType.MOBIKE_SUPPORTED))

    def process_response(self, sa: TaskSa, message: Message) -> None:
        self.answered = message.notify(NotifyType.MOBIKE_SUPPORTED) is not None


class Update(Task):
    """The initiator's UPDATE_SA_ADDRESSES request (RFC 4555 §3.5), as strongSwan sends
    it; `claim_source` is the address its NAT-D source hash names (a NAT in front of
    it when that differs from where the request leaves)."""

    def __init__(
        self,
        claim_source: Address | None = None,
        *,
        update: bool = True,
        no_nats: bytes | None = None,
    ) -> None:
        self.claim_source = claim_source
        self.update = update
        self.no_nats = no_nats
        self.response: Message | None = None

    def build_request(self, sa: TaskSa, out: list[Payload]) -> None:
        if self.update:
            out.append(Notify(NotifyType.UPDATE_SA_ADDRESSES))
        source = self.claim_source or sa.local
        out.append(
            Notify(NotifyType.NAT_DETECTION_SOURCE_IP, natd_hash(sa.spi_i, sa.spi_r, source))
        )
        out.append(
            Notify(
                NotifyType.NAT_DETECTION_DESTINATION_IP, natd_hash(sa.spi_i, sa.spi_r, sa.remote)
            )
        )
        if self.no_nats is not None:
            out.append(Notify(NotifyType.NO_NATS_ALLOWED, self.no_nats))
        out.append(Notify(NotifyType.COOKIE2, COOKIE))

    def process_response(self, sa: TaskSa, message: Message) -> None:
        self.response = message


def offer_mobike(sa: IkeSa) -> OfferMobike:
    """Make an initiator that has not sent IKE_AUTH yet offer MOBIKE in it."""
    offer = OfferMobike()
    auth = next(e for e in sa.tm.pending if e.exchange_type == ExchangeType.IKE_AUTH)
    auth.tasks.append(offer)
    return offer


def move(sa: IkeSa, address: str, task: Update, now: float) -> None:
    """The client's address changed: its requests leave from `address`, the first
    being `task`'s INFORMATIONAL."""
    sa.local = (address, sa.local[1])
    sa.queue_exchange(Exchange(ExchangeType.INFORMATIONAL, [task]), now)

"""The agreement on partial TCP checksums inside ESP in IKE_SA_INIT (a Vendor ID,
RFC 7296 §3.12): both sides must send it, it is kept per IKE SA, handed to every
CHILD SA and to the IKE SA a rekey makes. In memory, no network."""

from __future__ import annotations

import pytest

from ikev2.codec import VendorId, decode_message
from ikev2.constants import ExchangeType
from ikev2.endpoint import EndpointConfig
from ikev2.events import ChildSaInstalled, IkeSaRekeyed
from ikev2.tasks.ike_init import LOCKGATE_PARTIAL_CSUM_VID
from testkit.ikev2_pair import Pair, connection, mirrored

INIT = ExchangeType.IKE_SA_INIT


def _up(a_offers: bool, b_offers: bool) -> Pair:
    conn = connection()
    pair = Pair.make(
        conn,
        mirrored(conn),
        configs=(EndpointConfig(partial_csum=a_offers), EndpointConfig(partial_csum=b_offers)),
    )
    pair.a.initiate("conn", 0.0)
    pair.pump()
    return pair


def _carries_vid(pair: Pair, sender: str, *, request: bool) -> bool:
    sent = pair.requests(sender, INIT) if request else pair.responses(sender, INIT)
    (message,) = sent
    payloads = decode_message(message.ike).payloads
    return any(isinstance(p, VendorId) and p.data == LOCKGATE_PARTIAL_CSUM_VID for p in payloads)


@pytest.mark.parametrize(
    ("a_offers", "b_offers"), [(True, True), (True, False), (False, True), (False, False)]
)
def test_both_sides_must_offer_it(a_offers: bool, b_offers: bool) -> None:
    pair = _up(a_offers, b_offers)
    agreed = a_offers and b_offers
    (ia,) = pair.of("a", ChildSaInstalled)
    (ib,) = pair.of("b", ChildSaInstalled)
    assert ia.partial_csum is agreed and ib.partial_csum is agreed
    assert all(sa.partial_csum is agreed for ep in (pair.a, pair.b) for sa in ep.ike_sas())
    # The initiator offers it when it can; the responder answers it only to an offer.
    assert _carries_vid(pair, "a", request=True) is a_offers
    assert _carries_vid(pair, "b", request=False) is agreed


def test_the_agreement_survives_an_ike_rekey_and_reaches_new_child_sas() -> None:
    pair = _up(True, True)
    (old,) = pair.a.ike_sas()
    pair.a.rekey_ike_sa(old.ike_sa_id, pair.clock)
    pair.pump()
    assert pair.of("a", IkeSaRekeyed) and pair.of("b", IkeSaRekeyed)
    (child_a,) = pair.of("a", ChildSaInstalled)
    pair.a.rekey_child(child_a.unique_id, pair.clock)
    pair.pump()
    installed = pair.of("a", ChildSaInstalled) + pair.of("b", ChildSaInstalled)
    assert len(installed) == 4
    assert all(e.partial_csum for e in installed)
    assert all(sa.partial_csum for ep in (pair.a, pair.b) for sa in ep.ike_sas())


def test_without_the_agreement_a_rekeyed_ike_sa_offers_nothing_new() -> None:
    pair = _up(True, False)
    (old,) = pair.a.ike_sas()
    pair.a.rekey_ike_sa(old.ike_sa_id, pair.clock)
    pair.pump()
    (child_a,) = pair.of("a", ChildSaInstalled)
    pair.a.rekey_child(child_a.unique_id, pair.clock)
    pair.pump()
    installed = pair.of("a", ChildSaInstalled) + pair.of("b", ChildSaInstalled)
    assert len(installed) == 4
    assert not any(e.partial_csum for e in installed)

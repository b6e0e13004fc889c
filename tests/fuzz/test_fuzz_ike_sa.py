"""Fuzz sample for the IKE endpoint and the IKE SA.

Nothing escapes ``Endpoint.receive_message``; a datagram that does not authenticate
leaves an established SA as it was; requests refused with an error notify leave it as
it was but for their Message ID; authenticated garbage in every exchange (IKE_SA_INIT
response, IKE_AUTH both ways, INFORMATIONAL, CREATE_CHILD_SA both ways) is refused
without an exception; a lossy, duplicating, reordering network with rekeys from both
sides leaves the two endpoints agreeing once it heals.
"""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ikev2.codec import Message, Notify, Payload, decode_payloads, encode_message, encode_payloads
from ikev2.constants import NotifyType
from testkit.fuzz.mutate import Mutation
from testkit.fuzz.strategies import messages, mutations, shaped_chains, shaped_messages
from testkit.fuzz.targets import (
    AuthRequestTarget,
    AuthResponseTarget,
    EndpointFreshTarget,
    EstablishedTarget,
    FollowupRequestTarget,
    InitResponseTarget,
    PpkAuthRequestTarget,
    PpkAuthResponseTarget,
    PpkInitResponseTarget,
    ScheduleAutoTarget,
    ScheduleHybridTarget,
    ScheduleTarget,
    SealedRequestTarget,
    SealedResponseTarget,
    Target,
)

FUZZ = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


_TARGETS: dict[type[Target], Target] = {}
_SEEDS: dict[type[Target], list[bytes]] = {}


def target(kind: type[Target]) -> Target:
    """One instance per kind for the whole module: setting up IKE SAs is the cost."""
    if kind not in _TARGETS:
        _TARGETS[kind] = kind()
    return _TARGETS[kind]


def seeds(kind: type[Target]) -> list[bytes]:
    if kind not in _SEEDS:
        _SEEDS[kind] = target(kind).seeds()
    return _SEEDS[kind]


def _chain(selector: int, chain: tuple[Payload, ...], mutation: Mutation) -> bytes:
    first, raw = encode_payloads(chain)
    return bytes([selector, first]) + mutation.apply(raw)


@FUZZ
@given(st.one_of(messages(), shaped_messages()), mutations)
def test_endpoint_survives_any_datagram_and_bounds_half_open_sas(
    message: Message, mutation: Mutation
) -> None:
    target(EndpointFreshTarget).run(mutation.apply(encode_message(message)))


@FUZZ
@given(st.data(), mutations)
def test_unauthenticated_datagrams_leave_established_sas_alone(
    data: st.DataObject, mutation: Mutation
) -> None:
    seed = data.draw(st.sampled_from(seeds(EstablishedTarget)))
    target(EstablishedTarget).run(mutation.apply(seed))


@FUZZ
@given(st.data(), st.integers(0, 1), mutations)
def test_authenticated_garbage_requests_are_answered_or_dropped(
    data: st.DataObject, selector: int, mutation: Mutation
) -> None:
    chain = data.draw(shaped_chains((37, 36)[selector], False))
    run = target(SealedRequestTarget).run
    run(_chain(selector, chain, Mutation()))
    run(_chain(selector, chain, mutation))
    run(Mutation(mutation.edits[:1]).apply(data.draw(st.sampled_from(seeds(SealedRequestTarget)))))


@settings(FUZZ, max_examples=25)
@given(st.data(), st.integers(0, 2), mutations)
def test_authenticated_garbage_responses_never_raise(
    data: st.DataObject, selector: int, mutation: Mutation
) -> None:
    chain = data.draw(shaped_chains(37 if selector == 0 else 36, True))
    run = target(SealedResponseTarget).run
    run(_chain(selector, chain, Mutation()))
    run(mutation.apply(data.draw(st.sampled_from(seeds(SealedResponseTarget)))))


@settings(FUZZ, max_examples=25)
@given(st.data(), shaped_chains(35, False), shaped_chains(35, True), mutations)
def test_ike_auth_garbage_both_ways_never_raises(
    data: st.DataObject,
    request: tuple[Payload, ...],
    response: tuple[Payload, ...],
    mutation: Mutation,
) -> None:
    target(AuthRequestTarget).run(_chain(0, request, Mutation()))
    target(AuthResponseTarget).run(_chain(0, response, Mutation()))
    target(AuthRequestTarget).run(
        mutation.apply(data.draw(st.sampled_from(seeds(AuthRequestTarget))))
    )
    target(AuthResponseTarget).run(
        mutation.apply(data.draw(st.sampled_from(seeds(AuthResponseTarget))))
    )


@settings(FUZZ, max_examples=25)
@given(st.data(), mutations, st.binary(max_size=40))
def test_ppk_notifies_garbage_both_ways_never_raises(
    data: st.DataObject, mutation: Mutation, blob: bytes
) -> None:
    # RFC 8784: PPK_IDENTITY and NO_PPK_AUTH in IKE_AUTH, USE_PPK in IKE_SA_INIT, from
    # a peer that holds the keys; the mutations hit the notifies' types and data.
    for kind in (PpkAuthRequestTarget, PpkAuthResponseTarget):
        target(kind).run(mutation.apply(data.draw(st.sampled_from(seeds(kind)))))
        # The same messages with every PPK notify's data replaced by `blob`.
        seed = data.draw(st.sampled_from(seeds(kind)))
        target(kind).run(_with_ppk_data(seed, blob))
    target(PpkInitResponseTarget).run(
        mutation.apply(data.draw(st.sampled_from(seeds(PpkInitResponseTarget))))
    )


def test_ppk_seeds_carry_the_ppk_notifies() -> None:
    def types(seed: bytes) -> set[int]:
        return {p.notify_type for p in decode_payloads(seed[1], seed[2:]) if isinstance(p, Notify)}

    request = set().union(*(types(s) for s in seeds(PpkAuthRequestTarget)))
    assert {NotifyType.PPK_IDENTITY, NotifyType.NO_PPK_AUTH} <= request
    response = set().union(*(types(s) for s in seeds(PpkAuthResponseTarget)))
    assert NotifyType.PPK_IDENTITY in response
    (init,) = seeds(PpkInitResponseTarget)
    assert NotifyType.USE_PPK.to_bytes(2, "big") in init


def _with_ppk_data(seed: bytes, blob: bytes) -> bytes:
    """A seed of the IKE_AUTH targets (selector, first payload, chain) whose USE_PPK,
    PPK_IDENTITY and NO_PPK_AUTH notifies carry `blob` instead."""
    payloads = decode_payloads(seed[1], seed[2:])
    changed = tuple(
        dataclasses.replace(p, data=blob)
        if isinstance(p, Notify) and p.notify_type in _PPK_NOTIFIES
        else p
        for p in payloads
    )
    first, raw = encode_payloads(changed)
    return bytes([seed[0], first]) + raw


_PPK_NOTIFIES = (NotifyType.USE_PPK, NotifyType.PPK_IDENTITY, NotifyType.NO_PPK_AUTH)


@FUZZ
@given(st.data(), shaped_chains(34, True), mutations)
def test_ike_sa_init_response_garbage_never_raises(
    data: st.DataObject, chain: tuple[Payload, ...], mutation: Mutation
) -> None:
    seed = data.draw(st.sampled_from(seeds(InitResponseTarget)))
    target(InitResponseTarget).run(mutation.apply(seed))
    # The real response's header with any payload chain behind it.
    first, raw = encode_payloads(chain)
    header = bytearray(seed[:20])
    header[0 + 8] = first
    header[16:20] = (28 + len(raw)).to_bytes(4, "big")
    target(InitResponseTarget).run(bytes(header) + raw)


@settings(FUZZ, max_examples=15)
@given(st.binary(min_size=1, max_size=24))
# Found by this test: A rekeys a CHILD SA, B answers, the answer is lost, B deletes
# the new SA, and A's retransmission brings B's answer back after that Delete: A must
# not install an SA that B no longer has.
@example(b"\x1d\x00\x01\xbe")
# Found by the longer run of the same property: an IKE Delete by the operator drops the
# queued Delete of a just-rekeyed CHILD SA, then our crossing IKE rekey completes; the
# new IKE SA must send that CHILD SA's Delete again.
@example(bytes.fromhex("b93ea39c9068bafbc3"))
# And: the peer rekeys the new IKE SA before our Delete of the old one reaches it; the
# CHILD SAs must move to the newest IKE SA, not stay in the rekeyed one.
@example(bytes.fromhex("1f449068a5f8279cc03454cdd53125698c"))
def test_lossy_reordering_network_with_rekeys_leaves_both_sides_agreeing(
    schedule: bytes,
) -> None:
    target(ScheduleTarget).run(schedule)


@settings(FUZZ, max_examples=15)
@given(st.binary(min_size=1, max_size=24))
@example(b"\x1d\x00\x01\xbe")
@example(bytes.fromhex("b93ea39c9068bafbc3"))
@example(bytes.fromhex("1f449068a5f8279cc03454cdd53125698c"))
def test_the_same_network_between_two_default_lockgates_on_port_4500(schedule: bytes) -> None:
    """As above, with `encap = "auto"`: IKE on port 4500 behind the non-ESP marker."""
    target(ScheduleAutoTarget).run(schedule)


@settings(FUZZ, max_examples=25)
@given(st.data(), mutations)
def test_followup_ke_garbage_is_answered_and_keeps_the_ike_sa(
    data: st.DataObject, mutation: Mutation
) -> None:
    """IKE_FOLLOWUP_KE requests (RFC 9370 §2.2.4) to a responder waiting for one: a
    mutated seed (wrong link, method, key size, a missing payload) is answered or
    dropped, and never ends the IKE SA."""
    seed = data.draw(st.sampled_from(seeds(FollowupRequestTarget)))
    target(FollowupRequestTarget).run(mutation.apply(seed))


@settings(FUZZ, max_examples=15)
@given(st.binary(min_size=1, max_size=24))
@example(bytes([5, 6, 0, 0, 0, 0, 0, 0, 0, 0]))  # CHILD rekeys from both sides cross
@example(bytes([7, 8, 0, 0, 0, 0, 0, 0, 0]))  # IKE rekeys cross
@example(bytes([5, 0, 0, 1, 0x58, 0, 0, 0]))  # a lost IKE_FOLLOWUP_KE, then 21 s pass
def test_the_same_network_with_hybrid_rekeys_in_ike_followup_ke(schedule: bytes) -> None:
    """As above, with ML-KEM in every rekey's IKE_FOLLOWUP_KE (RFC 9370 §2.2.4)."""
    target(ScheduleHybridTarget).run(schedule)

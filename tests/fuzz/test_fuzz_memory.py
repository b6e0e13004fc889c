"""Memory stays bounded under hostile input.

A long run of fuzz inputs must not make the entry points keep what they were sent:
the half-open table, the reassembler and the replay window have limits, and the
traced memory after a second batch of inputs is about what it was after the first.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import tracemalloc

from ikev2.errors import InvalidSyntax
from ikev2.fragments import FragmentLimitExceeded
from testkit.fuzz.mutate import Mutation
from testkit.fuzz.targets import (
    _TEMPLATE,
    EndpointFreshTarget,
    EspTarget,
    FragmentTarget,
    Target,
    random_bytes,
)
from testkit.fuzz.world import A_ADDR, B_ADDR, Pair, esp_keys, seal_raw_fragment
from testkit.ikev2_pair import deliver

GROWTH_SLACK = 8 * 1024
"""Octets a second batch of inputs may add on top of the first (caches, interning)."""
GROWTH_PER_INPUT = 16
"""...plus this per input: keeping any datagram (>= 28 octets) per input exceeds it."""


def _feed(target: Target, seeds: list[bytes], rng: random.Random, count: int) -> None:
    for _ in range(count):
        if rng.random() < 0.8:
            target.run(Mutation.random(rng).apply(rng.choice(seeds)))
        else:
            target.run(random_bytes(rng))


def _growth(target: Target, count: int) -> int:
    rng = random.Random(8)
    seeds = target.seeds()
    _feed(target, seeds, rng, count)  # warm up: caches, the first half-open SAs
    # pytest's log capture keeps every record: that is the test harness, not lockgate.
    logging.disable(logging.CRITICAL)
    tracemalloc.start()
    try:
        _feed(target, seeds, rng, count)
        first, _ = tracemalloc.get_traced_memory()
        _feed(target, seeds, rng, count)
        second, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        logging.disable(logging.NOTSET)
    target.check_bounds()
    return second - first


def _limit(count: int) -> int:
    return GROWTH_SLACK + GROWTH_PER_INPUT * count


def test_endpoint_memory_stays_flat_under_garbage() -> None:
    assert _growth(EndpointFreshTarget(), 150) < _limit(150)


def test_reassembler_memory_stays_flat_under_fragments() -> None:
    assert _growth(FragmentTarget(), 300) < _limit(300)


def test_esp_memory_stays_flat_under_garbage() -> None:
    assert _growth(EspTarget(esp_keys()[0]), 500) < _limit(500)


def test_ike_sa_init_flood_fills_half_open_table_only_to_its_limit() -> None:
    # Distinct initiator SPIs, valid IKE_SA_INITs: each one could create an SA.
    pair = Pair("flood")
    template = Pair("flood-seed")
    template.a.initiate("conn", 0.0)
    (real,) = template.a.datagrams_to_send(0.0)
    config = pair.b.config
    replies = 0
    for i in range(200):
        data = bytearray(real.data)
        data[0:8] = (i + 1).to_bytes(8, "big")
        deliver(pair.b, bytes(data), (B_ADDR, 500), (A_ADDR, 500), 0.0)
        replies += len(pair.b.datagrams_to_send(0.0))
        list(pair.b.events())
    half_open = len(pair.b.ike_sas())
    assert half_open <= config.max_half_open
    # Above the COOKIE threshold the others were answered with a COOKIE, no SA.
    assert half_open == config.cookies.demand_above + 1
    assert replies == 200


def test_fragment_flood_over_many_message_ids_keeps_max_pending() -> None:
    target = FragmentTarget()
    refused = 0
    for message_id in range(200):
        # Fragment 1 of 4 of a new message each time: never complete.
        header = dataclasses.replace(_TEMPLATE, message_id=message_id)
        raw = seal_raw_fragment(target.cipher, header, 33, 1, 4, b"x" * 200)
        try:
            target.reassembler.receive(raw, target.cipher, 0.0)
        except FragmentLimitExceeded:
            refused += 1
        except InvalidSyntax as exc:
            raise AssertionError(f"a well-formed fragment was refused: {exc}") from exc
        target.check_bounds()
    assert len(target.reassembler) == target.limits.max_pending
    assert refused == 200 - target.limits.max_pending

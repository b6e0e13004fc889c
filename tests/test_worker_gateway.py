"""daemon.worker_gateway: the main process's shadow entries take the workers'
counters, drops are counted once, and a lost worker's CHILD SAs are rekeyed."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, cast

import pytest

from daemon.childsa import entry_from_event
from daemon.dataplane import DataPlane
from daemon.worker_gateway import (
    CounterMirror,
    replace_lost,
    shadow_event,
    status_totals,
    total_drops,
)
from daemon.worker_pool import WorkerPool, WorkerTotals
from daemon.worker_protocol import SaCounters
from esp.sa import LifetimeState
from ikev2.endpoint import Endpoint
from ikev2.errors import LocalProtocolError
from testkit.dataplane import NoTransport, events


@dataclass
class _Pool:
    count: int = 2
    counters: dict[int, SaCounters] = field(default_factory=dict)
    total: WorkerTotals = field(default_factory=WorkerTotals)
    owners: dict[int, int] = field(default_factory=dict)

    def totals(self) -> WorkerTotals:
        return self.total

    def pids(self) -> list[int]:
        return [101, 0]

    def owner(self, unique_id: int) -> int | None:
        return self.owners.get(unique_id)


def _counted(uid: int, packets: int, drops: dict[str, int] | None = None) -> SaCounters:
    return SaCounters(uid, packets * 100, packets * 200, packets, packets * 2, drops or {},
                      "ok", "ok")  # fmt: skip


def _plane(*uids: int, life_packets: int = 0) -> DataPlane:
    plane = DataPlane(NoTransport())
    for uid in uids:
        ours, _ = events(uid=uid)
        if life_packets:
            ours = replace(ours, life_packets=life_packets)
        plane.install(entry_from_event(ours))
    return plane


def test_the_mirror_copies_each_round_of_answers_into_the_shadow_entries() -> None:
    plane = _plane(1, 2)
    pool = _Pool(counters={1: _counted(1, 10, {"replay": 3}), 2: _counted(2, 5)})
    mirror = CounterMirror(plane, cast(WorkerPool, pool))
    mirror()
    one = plane.entries[1].status()
    assert (one["packets_in"], one["packets_out"]) == (10, 20)
    assert (one["bytes_in"], one["bytes_out"]) == (1000, 2000)
    assert one["drops"] == {"replay": 3}
    assert plane.entries[2].outbound.next_seq == 11
    # The same round again changes nothing; a new round is copied.
    plane.entries[1].drops.clear()
    mirror()
    assert plane.entries[1].status()["drops"] == {}
    pool.counters = {1: _counted(1, 12, {"replay": 4})}
    mirror()
    assert plane.entries[1].status()["packets_in"] == 12
    assert plane.entries[1].status()["drops"] == {"replay": 4}


def test_mirrored_counters_reach_the_volume_lifetime() -> None:
    plane = _plane(1, life_packets=100)
    pool = _Pool(counters={1: _counted(1, 95)})
    CounterMirror(plane, cast(WorkerPool, pool))()
    # 95 in, 190 out: past the soft (90) and the hard (100) packet limit.
    assert plane.entries[1].inbound.lifetime_state() is LifetimeState.SOFT
    assert plane.entries[1].outbound.lifetime_state() is LifetimeState.HARD


def test_drops_are_the_main_process_own_and_the_workers_totals() -> None:
    plane = _plane(1)
    plane.drops["malformed"] = 2  # an odd datagram on the main process's port 4500
    pool = _Pool(counters={1: _counted(1, 1, {"replay": 3})})
    pool.total.drops.update({"replay": 3, "no_sa": 7})
    CounterMirror(plane, cast(WorkerPool, pool))()
    # The SA's 3 replays are in the worker's totals: counted once, not again from
    # the shadow entry.
    assert total_drops(plane, cast(WorkerPool, pool)) == Counter(
        {"malformed": 2, "replay": 3, "no_sa": 7}
    )


def test_status_adds_up_the_workers_and_names_each() -> None:
    plane = _plane(1, 2)
    pool = _Pool(owners={1: 0, 2: 0})
    pool.total.counters["handed_off"] = 9
    pool.total.kernel_drops["udp_rcvbuf"] = 1
    plane.counters["keepalives_received"] = 4
    status: dict[str, Any] = status_totals(plane, cast(WorkerPool, pool))
    assert status["counters"] == {"handed_off": 9, "keepalives_received": 4}
    assert status["kernel_drops"] == {"udp_rcvbuf": 1}
    assert status["workers"] == [
        {"index": 0, "pid": 101, "owns": 2},
        {"index": 1, "pid": 0, "owns": 0},
    ]
    assert [sa["unique_id"] for sa in status["sas"]] == [1, 2]


class _Endpoint:
    def __init__(self, known: set[int]) -> None:
        self.known = known
        self.rekeyed: list[int] = []

    def rekey_child(self, unique_id: int, now: float) -> None:
        if unique_id not in self.known:
            raise LocalProtocolError(f"no CHILD SA {unique_id}")
        self.rekeyed.append(unique_id)


def test_a_lost_workers_sas_are_rekeyed_and_a_gone_one_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    endpoint = _Endpoint({3, 5})
    assert replace_lost(cast(Endpoint, endpoint), 1, [3, 4, 5]) == 2
    assert endpoint.rekeyed == [3, 5]
    assert "CHILD SA #4 not rekeyed" in caplog.text
    assert "data-plane worker 1 lost 3 CHILD SA(s); 2 rekey(s) started" in caplog.text


def test_the_shadow_entry_never_holds_the_real_keys() -> None:
    for suite in ("aes128gcm16", "aes256-sha256"):
        real, _ = events(suite)
        shadow = shadow_event(real)
        for name in ("encr_key_in", "integ_key_in", "encr_key_out", "integ_key_out"):
            mine, theirs = getattr(shadow, name), getattr(real, name)
            assert len(mine) == len(theirs)
            assert not theirs or mine != theirs
        assert (
            replace(
                shadow,
                encr_key_in=real.encr_key_in,
                integ_key_in=real.integ_key_in,
                encr_key_out=real.encr_key_out,
                integ_key_out=real.integ_key_out,
            )
            == real
        )
        entry_from_event(shadow)  # a usable entry for status and lifetimes

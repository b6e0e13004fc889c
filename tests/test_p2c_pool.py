"""The client address pools of the point-to-cloud servers (`daemon.p2c_pool`) for
IPv6 (`client_pool6`): the same rules as IPv4 (test_p2c_auth covers those) over a
prefix with no broadcast address, where the pool is huge and only used addresses
are kept."""

from __future__ import annotations

import ipaddress
import random

import pytest

from daemon.p2c_pool import AddressPool

IP6 = ipaddress.IPv6Address
NET6 = ipaddress.IPv6Network


def test_an_ipv6_pool_hands_out_static_sticky_and_lowest_free() -> None:
    pool: AddressPool[IP6] = AddressPool(NET6("2001:db8:c::/64"))
    assert pool.server == IP6("2001:db8:c::1")
    pool.set_static(
        {"sam": IP6("2001:db8:c::2"), "v4": ipaddress.IPv4Address("192.0.2.9")}
    )  # an IPv4 static address is not this pool's
    assert pool.allocate("alice", "a1") == IP6("2001:db8:c::3")  # sam has 2001:db8:c::2
    sam = IP6("2001:db8:c::2")
    assert pool.allocate("sam", "s1", sam) == sam
    assert pool.allocate("bob", "b1") == IP6("2001:db8:c::4")
    pool.release(IP6("2001:db8:c::4"), "b1")
    pool.release(IP6("2001:db8:c::3"), "a1")
    # Bob comes back to his 2001:db8:c::4, not to the lowest free 2001:db8:c::3.
    assert pool.allocate("bob", "b2") == IP6("2001:db8:c::4")
    assert pool.allocate("alice", "a2") == IP6("2001:db8:c::3")
    assert pool.in_use == 3 and pool.owner(IP6("2001:db8:c::3")) == "a2"
    assert pool.owner(IP6("2001:db8:c::4")) == "b2"
    # An IPv4 address is never in it, nor released from it.
    pool.release(ipaddress.IPv4Address("192.0.2.3"), "a2")
    assert ipaddress.IPv4Address("192.0.2.3") not in pool and pool.in_use == 3


def test_a_small_ipv6_pool_is_exhausted_and_counts_what_is_free() -> None:
    pool: AddressPool[IP6] = AddressPool(NET6("2001:db8:c::/126"))  # one client: 2001:db8:c::2
    assert pool.free == 1
    assert pool.allocate("alice", 1) == IP6("2001:db8:c::2")
    assert pool.free == 0 and pool.allocate("bob", 2) is None
    assert IP6("2001:db8:c::3") not in pool  # the prefix's last address is kept out


def test_a_pool_with_no_room_for_clients_is_refused() -> None:
    with pytest.raises(ValueError, match="leaves no address"):
        AddressPool(NET6("2001:db8:c::/127"))
    with pytest.raises(ValueError, match="leaves no address"):
        AddressPool(ipaddress.IPv4Network("192.0.2.0/31"))


def test_a_new_pool_carries_over_the_leases_and_sticky_addresses_that_fit() -> None:
    IP4 = ipaddress.IPv4Address
    old: AddressPool[IP4] = AddressPool(ipaddress.IPv4Network("192.0.2.0/24"))
    for user in ("alice", "bob", "carol", "dave"):
        old.allocate(user, user)  # .2, .3, .4, .5
    old.release(IP4("192.0.2.2"), "alice")
    old.release(IP4("192.0.2.4"), "carol")
    new: AddressPool[IP4] = AddressPool(ipaddress.IPv4Network("192.0.2.0/29"))
    assert new.carry_over(old) == []  # .3 and .5 are hosts of the smaller pool too
    assert new.owner(IP4("192.0.2.3")) == "bob" and new.in_use == 2
    # carol's address stayed hers: she gets .4 back, not the lowest free .2.
    assert new.allocate("carol", "c") == IP4("192.0.2.4")
    smaller: AddressPool[IP4] = AddressPool(ipaddress.IPv4Network("192.0.2.0/30"))  # .2 only
    stranded = smaller.carry_over(new)
    assert sorted(stranded, key=str) == [
        (IP4("192.0.2.3"), "bob"),
        (IP4("192.0.2.4"), "c"),
        (IP4("192.0.2.5"), "dave"),
    ]
    assert smaller.leases() == [] and smaller.allocate("eve", "e") == IP4("192.0.2.2")


def test_the_lowest_free_address_stays_the_lowest_through_releases_and_static_changes() -> None:
    # The search starts past the addresses known to be taken; a reference that scans
    # the whole pool each time must agree after any mix of logins, logouts and
    # users-file changes (statics added and removed).
    rng = random.Random(7)
    net = ipaddress.IPv4Network("192.0.2.0/27")
    pool: AddressPool[ipaddress.IPv4Address] = AddressPool(net)
    hosts = list(net.hosts())[1:]  # the first host is the server's
    statics: dict[str, ipaddress.IPv4Address] = {}
    held: dict[ipaddress.IPv4Address, object] = {}
    for step in range(2000):
        roll = rng.random()
        if roll < 0.5:
            expected = next((a for a in hosts if a not in held and a not in statics.values()), None)
            owner = object()
            # A fresh user each time: no sticky address, the lowest free one.
            got = pool.allocate(f"user{step}", owner)
            assert got == expected, f"step {step}"
            if got is not None:
                held[got] = owner
        elif roll < 0.85 and held:
            address = rng.choice(sorted(held))
            pool.release(address, held.pop(address))
        else:
            statics = {f"static{i}": a for i, a in enumerate(rng.sample(hosts, rng.randrange(4)))}
            pool.set_static(statics)
    assert pool.in_use == len(held)


def test_an_owner_releases_by_value_not_by_object_identity() -> None:
    # IKE SA numbers own ikev2 leases; the number a Delete names is an equal int, not
    # necessarily the same object (only small ints are shared by CPython).
    pool: AddressPool[ipaddress.IPv4Address] = AddressPool(ipaddress.IPv4Network("192.0.2.0/29"))
    first = pool.allocate("alice", int("1000"))
    assert first is not None
    pool.release(first, int("1000"))
    assert pool.in_use == 0 and pool.owner(first) is None
    # Another owner's release leaves the lease alone.
    second = pool.allocate("bob", int("1001"))
    assert second is not None
    pool.release(second, int("1000"))
    assert pool.owner(second) == 1001

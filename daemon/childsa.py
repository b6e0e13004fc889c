"""An installed CHILD SA as the data plane sees it, and how it is built from the
IKEv2 core's `ChildSaInstalled` event.

The negotiation hands over SPIs, transform ids, keys, selectors, framing and
addresses; here they become two `EspSA`s (one per direction), an SPD policy and
the per-SA counters that `lockgate status` shows.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from daemon.spd import Policy, TrafficSelector
from esp.sa import EspSA, Lifetime
from esp.suites import EspSuite, suite_from_transforms
from esp.udpencap import UDP_HEADER_LEN
from ikev2.events import Address, ChildSaInstalled
from ikev2.ts import TrafficSelector as IkeTrafficSelector

IPV4_HEADER_LEN = 20
IPV6_HEADER_LEN = 40
DEFAULT_PATH_MTU = 1500


def inner_mtu(suite: EspSuite, path_mtu: int, outer_version: int, udp_encap: bool) -> int:
    """Largest inner packet whose ESP packet fits in ``path_mtu`` (no outer fragments).

    The outer IP header (20 or 40 octets) and, with RFC 3948 framing, the UDP header
    come off the path MTU first; the suite's header, IV, padding and ICV off the rest.
    """
    budget = path_mtu - (IPV4_HEADER_LEN if outer_version == 4 else IPV6_HEADER_LEN)
    if udp_encap:
        budget -= UDP_HEADER_LEN
    return suite.inner_mtu_for(budget)


def selector_from_ike(ts: IkeTrafficSelector) -> TrafficSelector:
    """The data plane's integer form of a negotiated traffic selector."""
    return TrafficSelector(
        ts.version,
        int(ts.start_addr),
        int(ts.end_addr),
        ts.protocol,
        ts.start_port,
        ts.end_port,
    )


@dataclass(eq=False, slots=True)
class ChildSaEntry:
    """One CHILD SA in the data plane: both ESP SAs, its policy, framing, counters."""

    peer: str
    """The `[peers.NAME]` whose IKE SA negotiated it."""
    connection: str
    """The `[connections.NAME]` it carries (its CHILD SA configuration)."""
    unique_id: int
    """The IKEv2 core's number for this CHILD SA."""
    ike_sa_id: int
    """The IKE SA that negotiated it."""
    inbound: EspSA
    """Decrypts what the peer sends (our SPI)."""
    outbound: EspSA
    """Encrypts what we send (the peer's SPI)."""
    local_ts: tuple[TrafficSelector, ...]
    """Our side's selectors."""
    remote_ts: tuple[TrafficSelector, ...]
    """The peer's side's selectors."""
    udp_encap: bool
    """ESP in UDP (RFC 3948) when True, raw IP protocol 50 otherwise."""
    local: Address
    """Our outer address and port."""
    remote: Address
    """The peer's outer address and port."""
    mtu: int
    """Largest inner packet sent without ICMP or fragmentation."""
    installed_at: float = field(default_factory=time.monotonic)
    """Monotonic time of installation (for the age)."""
    rekey_of: int | None = None
    """unique_id of the CHILD SA this one replaces, if any."""
    pfs: str = ""
    """The key exchanges of its PFS ("x25519+mlkem768"), "" for none."""
    quantum_safe: bool = False
    """An ML-KEM key exchange went into its keys (RFC 9370 §2.2.4)."""
    interface: str | None = None
    """The route-mode TUN device it carries (whatever that device sends goes into this
    SA, what it opens goes to that device); None: the gateway's TUN and the SPD."""
    partial_csum: bool = False
    """The peer is a lockgate that agreed in IKE_SA_INIT on TCP segments with partial
    checksums inside ESP (`esp.sa.NH_PARTIAL_CSUM`): the inbound SA delivers them and
    the data plane may send them."""
    forward_to: int | None = None
    """With data-plane workers: None when this process holds the SA's keys; else the
    index of the worker that does, to which the packets this entry's policy selects
    are handed as plaintext (`DataPlane.install_forward`). Such an entry carries
    selectors and MTU only (`forward_entry`): it is never in the SAD and never
    seals."""
    drops: Counter[str] = field(default_factory=Counter)
    """Drops the data plane attributes to this SA (beyond the ESP engine's own)."""
    policy: Policy[ChildSaEntry] = field(init=False)
    """The SPD entry pointing at this SA."""

    def __post_init__(self) -> None:
        self.policy = Policy(self.local_ts, self.remote_ts, self, self.peer)

    @property
    def spi_in(self) -> int:
        """Our inbound SPI."""
        return self.inbound.spi

    @property
    def spi_out(self) -> int:
        """The peer's SPI we send with."""
        return self.outbound.spi

    def all_drops(self) -> Counter[str]:
        """Drops of this SA per reason: the data plane's and both ESP SAs'."""
        total: Counter[str] = Counter(self.drops)
        for sa in (self.inbound, self.outbound):
            for reason, count in sa.drops.items():
                total[reason.value] += count
        return total

    def status(self, now: float | None = None) -> dict[str, Any]:
        """A JSON-ready summary for `lockgate status`."""
        now = time.monotonic() if now is None else now
        return {
            "connection": self.connection,
            "peer": self.peer,
            "unique_id": self.unique_id,
            "ike_sa": self.ike_sa_id,
            "spi_in": f"{self.spi_in:08x}",
            "spi_out": f"{self.spi_out:08x}",
            "suite": self.inbound.suite.name,
            "esn": self.inbound.esn,
            "pfs": self.pfs,
            "quantum_safe": self.quantum_safe,
            "encap": "udp" if self.udp_encap else "esp",
            "local": f"{self.local[0]}[{self.local[1]}]",
            "remote": f"{self.remote[0]}[{self.remote[1]}]",
            "local_ts": [str(ts) for ts in self.local_ts],
            "remote_ts": [str(ts) for ts in self.remote_ts],
            "mtu": self.mtu,
            "age": round(now - self.installed_at, 1),
            "bytes_in": self.inbound.byte_count,
            "bytes_out": self.outbound.byte_count,
            "packets_in": self.inbound.packet_count,
            "packets_out": self.outbound.packet_count,
            "drops": dict(sorted(self.all_drops().items())),
            "interface": self.interface,
            "partial_csum": self.partial_csum,
        }


def entry_from_event(event: ChildSaInstalled, path_mtu: int = DEFAULT_PATH_MTU) -> ChildSaEntry:
    """Build the data-plane side of a freshly negotiated CHILD SA.

    Raises ``esp.errors.EspConfigError`` if the negotiated transforms or keys do not
    fit an ESP suite (a bug in the negotiation, not bad network input).
    """
    integ = event.integ_id or None
    suite = suite_from_transforms(event.encr_id, event.encr_key_bits, integ)
    # Rekey at 90% of a volume limit, so the new SA is up before the old one stops
    # (RFC 4301 §4.4.2.1 soft and hard lifetimes; strongSwan rekeys early the same way).
    lifetime = Lifetime(
        soft_bytes=event.life_bytes * 9 // 10 or None,
        hard_bytes=event.life_bytes or None,
        soft_packets=event.life_packets * 9 // 10 or None,
        hard_packets=event.life_packets or None,
    )
    inbound = EspSA(
        event.spi_in,
        suite,
        event.encr_key_in,
        event.integ_key_in,
        esn=event.esn,
        # 0: no replay check (RFC 4303 §3.4.3 lets the receiver decide, and strongSwan's
        # replay_window = 0 means the same).
        replay_window=event.replay_window,
        lifetime=lifetime,
    )
    outbound = EspSA(
        event.spi_out,
        suite,
        event.encr_key_out,
        event.integ_key_out,
        esn=event.esn,
        lifetime=lifetime,
    )
    inbound.partial_csum = event.partial_csum
    return _entry(event, suite, inbound, outbound, path_mtu)


def forward_entry(
    event: ChildSaInstalled, owner: int, path_mtu: int = DEFAULT_PATH_MTU
) -> ChildSaEntry:
    """The entry a data-plane worker keeps for a CHILD SA that worker ``owner``
    holds: selectors, framing and MTU as `entry_from_event` makes them, and none of
    the SA's keys (``event`` may carry empty ones). The keys live in one process
    only: two senders of one SA would repeat its sequence numbers, and with them
    the AES-GCM nonces (RFC 4106 §3). Its ESP SAs get throwaway random keys and a
    hard limit of zero packets, so even a path that wrongly sealed with them would
    send nothing.
    """
    integ = event.integ_id or None
    suite = suite_from_transforms(event.encr_id, event.encr_key_bits, integ)
    spent = Lifetime(hard_bytes=0, hard_packets=0)

    def unkeyed(spi: int) -> EspSA:
        return EspSA(
            spi,
            suite,
            os.urandom(suite.encr_key_len),
            os.urandom(suite.integ_key_len),
            replay_window=0,
            lifetime=spent,
        )

    entry = _entry(event, suite, unkeyed(event.spi_in), unkeyed(event.spi_out), path_mtu)
    entry.forward_to = owner
    return entry


def _entry(
    event: ChildSaInstalled, suite: EspSuite, inbound: EspSA, outbound: EspSA, path_mtu: int
) -> ChildSaEntry:
    outer_version = 6 if ":" in event.remote[0] else 4
    return ChildSaEntry(
        peer=event.connection,
        connection=event.child,
        unique_id=event.unique_id,
        ike_sa_id=event.ike_sa_id,
        inbound=inbound,
        outbound=outbound,
        local_ts=tuple(selector_from_ike(ts) for ts in event.local_ts),
        remote_ts=tuple(selector_from_ike(ts) for ts in event.remote_ts),
        udp_encap=event.udp_encap,
        local=event.local,
        remote=event.remote,
        mtu=inner_mtu(suite, path_mtu, outer_version, event.udp_encap),
        rekey_of=event.rekey_of,
        pfs=event.pfs,
        quantum_safe=event.quantum_safe,
        partial_csum=event.partial_csum,
    )

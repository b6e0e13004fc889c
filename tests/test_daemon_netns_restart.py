"""Two `lockgate daemon`s in namespaces, one killed with SIGKILL and started again
under a running ping, with the defaults: traffic is back within 10 s of the restart,
whichever side restarted (RFC 7296 §2.21.4, §2.4). And the hints that make it so
cannot be forged into harm: a flood of spoofed INVALID_SPI and INVALID_IKE_SPI from
the peer's address deletes nothing and loses no ping.

The restarted responder answers ESP of SPIs it lost with INVALID_SPI and the
initiator's liveness check with INVALID_IKE_SPI; the initiator checks at once, finds
the old IKE SA dead within some 3.5 s and, with the default dpd_action ("restart" for
a connection it initiates), sets up a new one. A restarted initiator simply sets up a
new IKE SA with INITIAL_CONTACT, which replaces the old one on the responder.

Each test builds its own site-to-site lab (names unique to this process), bounds
every load in count and time, and the lab stops every process it started by PID and
removes the namespaces whatever happens.
"""

from __future__ import annotations

import re
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from hostile_helpers import inject_frames, mac_of
from netns import SiteToSite, site_to_site, wait_for_ping

from daemon.lab.netns import Process
from esp.udpencap import NON_ESP_MARKER
from ikev2.codec import Message, Notify, encode_message
from ikev2.constants import ExchangeType, NotifyType, ProtocolId
from testkit.daemon import Daemon, pair_configs, start_daemon, start_pair, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.slow]

RECOVERY_LIMIT = 10.0
"""Seconds from a restart to the first answered ping that the requirement allows."""
PING_INTERVAL = 0.1


@pytest.fixture
def topo() -> Iterator[SiteToSite]:
    with site_to_site() as topology:
        yield topology


def _pair(topo: SiteToSite, a_text: str, b_text: str) -> tuple[Daemon, Daemon]:
    a, b = start_pair(topo, a_text, b_text)
    wait_for_ping(topo.host_a, topo.site_b.host4)
    return a, b


def _pinger(topo: SiteToSite, seconds: float, name: str) -> Process:
    """ping -i 0.1 from host A to host B for `seconds`, each reply with its wall-clock
    time (-D), so a restart can be timed against the first answer after it."""
    return topo.host_a.spawn(
        # A count, not a deadline: with -w, ping stops at the first ICMP error (the
        # route is gone while the tunnel is down).
        ["ping", "-n", "-D", "-i", str(PING_INTERVAL), "-W", "1",
         "-c", str(int(seconds / PING_INTERVAL)), topo.site_b.host4],
        name=name,
        stdout_pipe=True,
    )  # fmt: skip


def _replies(pinger: Process, seconds: float) -> tuple[list[tuple[float, int]], str]:
    """Wait for the pinger to end; its replies as (wall-clock time, icmp_seq)."""
    assert pinger.popen.stdout is not None
    out, _ = pinger.popen.communicate(timeout=seconds + 10)
    text = out.decode()
    found = re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)", text, re.M)
    return [(float(at), int(seq)) for at, seq in found], text


def _kill_and_restart(topo: SiteToSite, side: str) -> tuple[float, Daemon, Daemon, str]:
    """Kill `side` ("a" initiates, "b" waits) under ping -i 0.1, start it again 1 s
    later with the same configuration; seconds from the restart to the first answer."""
    a_text, b_text = pair_configs(topo)
    a, b = _pair(topo, a_text, b_text)
    seconds = 22.0
    pinger = _pinger(topo, seconds, f"ping-restart-{side}")
    time.sleep(2.0)
    victim = a if side == "a" else b
    victim.proc.signal(signal.SIGKILL)
    victim.proc.stop()
    killed_at = time.time()
    time.sleep(1.0)
    restarted_at = time.time()
    if side == "a":
        a = start_daemon(topo, topo.gw_a, "gwA2", a_text)
    else:
        b = start_daemon(topo, topo.gw_b, "gwB2", b_text)
    replies, text = _replies(pinger, seconds)
    before = [at for at, _ in replies if at < killed_at]
    after = [at for at, _ in replies if at > restarted_at]
    assert before, text
    logs = f"--- A ---\n{a.proc.log()[-4000:]}\n--- B ---\n{b.proc.log()[-4000:]}"
    assert after, f"no answer after the restart:\n{text}\n{logs}"
    recovery = after[0] - restarted_at
    # From the first answer on, the tunnel stays up: every later echo is answered
    # (the last one or two may still be on their way when ping's deadline ends it).
    sent_after = (replies[-1][0] - after[0]) / PING_INTERVAL
    assert len(after) >= 0.9 * sent_after, (len(after), sent_after, text)
    return recovery, a, b, logs


def test_responder_killed_and_restarted_traffic_back_within_10s(topo: SiteToSite) -> None:
    recovery, a, b, logs = _kill_and_restart(topo, "b")
    print(f"\nresponder restart: traffic back {recovery:.2f} s after the restart")
    assert recovery < RECOVERY_LIMIT, logs
    # It was the hints: the restarted side said it lost the SAs, A checked at once.
    assert a.status()["ike_drops"].get("restart_hint", 0) >= 1, logs
    assert b.status()["ike_drops"].get("invalid_spi_sent", 0) >= 1, logs
    assert b.status()["counters"].get("unknown_spi_reported", 0) >= 1, logs
    [conn] = a.status()["connections"]
    assert conn["state"] == "up"


def test_initiator_killed_and_restarted_traffic_back_within_10s(topo: SiteToSite) -> None:
    recovery, _, b, logs = _kill_and_restart(topo, "a")
    print(f"\ninitiator restart: traffic back {recovery:.2f} s after the restart")
    assert recovery < RECOVERY_LIMIT, logs
    # INITIAL_CONTACT: B keeps only the new IKE SA and its CHILD SA.
    wait_until(lambda: len(b.sas()) == 1, "B to drop the old CHILD SA", timeout=10)
    [conn] = b.status()["connections"]
    assert len(conn["ike_sas"]) == 1


# --- forged hints ------------------------------------------------------------------------


def _udp4_frame(
    dst_mac: bytes, src_mac: bytes, src: str, dst: str, sport: int, dport: int, payload: bytes
) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )  # fmt: skip
    words = sum(struct.unpack("!10H", header))
    while words >> 16:
        words = (words & 0xFFFF) + (words >> 16)
    header = header[:10] + struct.pack("!H", ~words & 0xFFFF) + header[12:]
    return dst_mac + src_mac + b"\x08\x00" + header + udp


def _forgeries(target: Daemon) -> list[bytes]:
    """What an on-path attacker who read the SPIs off the wire can forge against
    `target`: INVALID_SPI naming its CHILD SA's outbound SPI (and some others), and
    INVALID_IKE_SPI "responses" on its IKE SA for the first Message IDs, either flag."""
    [child] = target.sas()
    [ike] = target.status()["connections"][0]["ike_sas"]
    spi_i, spi_r = bytes.fromhex(ike["spi_i"]), bytes.fromhex(ike["spi_r"])
    info = ExchangeType.INFORMATIONAL
    out = []
    for spi in (int(child["spi_out"], 16), int(child["spi_in"], 16), 0x01020304):
        notify = Notify(NotifyType.INVALID_SPI, spi.to_bytes(4, "big"), ProtocolId.ESP)
        out.append(encode_message(Message(bytes(8), bytes(8), info, 0, True, False, (notify,))))
    for mid in range(8):
        for initiator in (True, False):
            notify = Notify(NotifyType.INVALID_IKE_SPI, b"")
            message = Message(spi_i, spi_r, info, mid, initiator, True, (notify,))
            out.append(encode_message(message))
    return out


def test_spoofed_invalid_spi_and_invalid_ike_spi_flood_deletes_nothing(topo: SiteToSite) -> None:
    a, b = _pair(topo, *pair_configs(topo))
    before = {name: (d.sas()[0]["spi_in"], d.status()["connections"][0]["ike_sas"][0]["spi_i"])
              for name, d in (("a", a), ("b", b))}  # fmt: skip
    mac_a, mac_b = mac_of(topo.gw_a.name, "wan0"), mac_of(topo.gw_b.name, "wan0")
    # Spoofed from each gateway's peer, on both IKE ports, injected on the wire.
    frames: list[bytes] = []
    for target, src, dst, dst_mac, src_mac in (
        (a, topo.gw_b_wan4, topo.gw_a_wan4, mac_a, mac_b),
        (b, topo.gw_a_wan4, topo.gw_b_wan4, mac_b, mac_a),
    ):
        for message in _forgeries(target):
            frames.append(_udp4_frame(dst_mac, src_mac, src, dst, 500, 500, message))
            frames.append(
                _udp4_frame(dst_mac, src_mac, src, dst, 4500, 4500, NON_ESP_MARKER + message)
            )
    per_side = len(frames) // 2
    rounds, gap = 20, 0.0002
    flood_seconds = 4.0
    pinger = topo.host_a.spawn(
        ["ping", "-n", "-q", "-i", str(PING_INTERVAL), "-W", "1", "-c", "100", topo.site_b.host4],
        name="ping-under-forgeries",
        stdout_pipe=True,
    )  # fmt: skip
    time.sleep(1.0)
    sent = [0]

    def flood(ns_name: str, share: list[bytes]) -> None:
        deadline = time.monotonic() + flood_seconds
        for _ in range(rounds):
            if time.monotonic() > deadline:
                break
            inject_frames(ns_name, "wan0", share, gap=gap)
            sent[0] += len(share)
            time.sleep(0.1)

    threads = [
        threading.Thread(target=flood, args=(topo.gw_b.name, frames[:per_side])),
        threading.Thread(target=flood, args=(topo.gw_a.name, frames[per_side:])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(flood_seconds + 30)
    assert pinger.popen.stdout is not None
    out, _ = pinger.popen.communicate(timeout=30)
    text = out.decode()
    status_a, status_b = a.status(), b.status()
    print(f"\nforged hints: {sent[0]} datagrams; ping: {text.strip().splitlines()[-2]}")
    print(f"A ike_drops: {status_a['ike_drops']}\nB ike_drops: {status_b['ike_drops']}")
    logs = f"--- A ---\n{a.proc.log()[-3000:]}\n--- B ---\n{b.proc.log()[-3000:]}"
    # The ping outlived the flood by some 5 s, more than a hint's liveness check
    # lasts (3.5 s): anything the forgeries could have ended would be gone by now.
    assert " 0% packet loss" in text, (text, logs)
    after = {name: (d.sas()[0]["spi_in"], d.status()["connections"][0]["ike_sas"][0]["spi_i"])
             for name, d in (("a", a), ("b", b))}  # fmt: skip
    assert after == before, logs
    for status in (status_a, status_b):
        drops = status["ike_drops"]
        # Hints counted: at most one acted on per IKE SA per HINT_INTERVAL, the rest
        # counted as rate-limited or as responses to no request of ours.
        assert drops.get("restart_hint", 0) >= 1, drops
        assert drops.get("restart_hint", 0) <= 2, drops
        assert drops.get("hint_rate_limited", 0) + drops.get("unexpected_response", 0) >= 10
        [conn] = status["connections"]
        assert conn["state"] == "up" and len(conn["ike_sas"]) == 1
    assert sent[0] >= 10 * per_side

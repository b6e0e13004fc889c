"""ESP attacks injected on the WAN against lockgate.

lockgate on gateway A, charon on gateway B (kernel-libipsec: ESP in UDP 4500), a CHILD
SA with aes128gcm16. A raw socket on A's WAN veth captures genuine ESP frames from B
carrying UDP datagrams to a listener on site A's host; then, from B's WAN veth, the
test injects:

- the captured frames again (replay, RFC 4303 §3.4.3),
- them with a fresh sequence number but the old tag (ICV failure, §3.4.4),
- them with an SPI no SA has (no SA),
- them cut short (too short),
- and, built with the SA's own key (read from charon's log at chd = 4): a packet
  with wrong padding bytes (§2.4) and one whose inner source lies outside the
  SA's selectors (RFC 4301 §5.2).

Checked: the listener receives none of them (nothing reached the TUN), each is
counted under its reason in `lockgate status`, and a ping running all along goes on.
A second test sends the keyless forgeries as raw ESP (protocol 50) between two
lockgates, for the raw-socket receive path.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import sys
import time
from collections import Counter

import pytest
from hostile_helpers import (
    FrameCapture,
    charon_key_candidates,
    drain,
    esp_in_udp4,
    esp_raw4,
    esp_seq,
    esp_spi,
    gcm_open,
    gcm_seal,
    inject_frames,
    ipv4_udp,
    make_charon_log_keys,
    rewrite_raw4,
    rewrite_udp4,
    udp_listener,
)
from interop_helpers import Case, interop, wait_until
from netns import ping, site_to_site

from daemon.lab.netns import SiteToSite, in_namespace
from testkit.daemon import config, start_daemon

pytestmark = [pytest.mark.netns, pytest.mark.interop]

PORT = 40000
GENUINE = 5


def _esp(frame: bytes) -> bytes:
    found = esp_in_udp4(frame)
    if found is None:
        raise AssertionError("not an ESP-in-UDP frame")
    return frame[found[0] :]


def _drops(status: dict[str, object]) -> Counter[str]:
    drops = status["drops"]
    assert isinstance(drops, dict)
    return Counter({str(k): int(v) for k, v in drops.items()})


def _send_genuine(topo: SiteToSite, listener: socket.socket) -> list[bytes]:
    """Send GENUINE datagrams host B -> host A through the tunnel; wait for them all."""
    with in_namespace(topo.host_b.name):
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sender:
        for i in range(GENUINE):
            sender.sendto(f"genuine-{i}".encode(), (topo.site_a.host4, PORT))
            time.sleep(0.05)
    got: list[bytes] = []

    def all_arrived() -> bool:
        got.extend(drain(listener))
        return len(got) >= GENUINE

    wait_until(all_arrived, "the genuine datagrams at site A's host")
    return got


def test_injected_esp_attacks_are_dropped_counted_and_traffic_continues() -> None:
    with interop(Case(esp="aes128gcm16")) as world:
        topo = world.topo
        make_charon_log_keys(world)
        world.bring_up()
        daemon = world.daemon
        wait_until(lambda: ping(topo.host_b, topo.site_a.host4, count=1).returncode == 0, "ping")
        [sa] = daemon.sas("net4")
        spi_in = int(sa["spi_in"], 16)

        with (
            udp_listener(topo.host_a.name, topo.site_a.host4, PORT) as listener,
            FrameCapture(topo.gw_a.name, "wan0", lambda f: esp_in_udp4(f) is not None) as capture,
        ):
            # Genuine datagrams B -> A through the tunnel; their ESP frames are captured.
            got = _send_genuine(topo, listener)
            assert sorted(got) == sorted(f"genuine-{i}".encode() for i in range(GENUINE))
            genuine = [f for f in capture.snapshot() if esp_spi(_esp(f)) == spi_in]
            assert len(genuine) >= GENUINE

            # The SA's key: the one of charon's logged keys that opens a captured packet.
            keys = [k for k in charon_key_candidates(world.charon.log_path.read_text())
                    if len(k) == 20 and gcm_open(k, _esp(genuine[-1])) is not None]  # fmt: skip
            assert keys, "charon's log holds no key that opens the captured ESP"
            key = keys[0]
            carrying = [f for f in genuine if b"genuine-" in (gcm_open(key, _esp(f)) or b"")]
            assert len(carrying) == GENUINE

            pinger = topo.host_b.spawn(
                ["ping", "-n", "-c", "40", "-i", "0.2", "-w", "20", topo.site_a.host4],
                name="ping-under-attack",
                log_path=topo.lab.tmpdir / "ping.log",
            )
            time.sleep(1.0)
            before = _drops(daemon.status())

            # Byte for byte, but with the UDP checksum 0: captured on a veth, the
            # original holds only the partial sum of checksum offload.
            replayed = [rewrite_udp4(f, _esp(f)) for f in carrying]
            bad_icv = [
                rewrite_udp4(f, _esp(f)[:4] + struct.pack("!I", esp_seq(_esp(f)) + 100_000)
                            + _esp(f)[8:])
                for f in carrying
            ]  # fmt: skip
            unknown_spi = [
                rewrite_udp4(f, struct.pack("!I", spi_in ^ 0x5A5A0000) + _esp(f)[4:])
                for f in carrying
            ]
            truncated = [rewrite_udp4(f, _esp(f)[:20]) for f in carrying]
            inject_frames(topo.gw_b.name, "wan0", replayed + bad_icv + unknown_spi + truncated)

            # Crafted with the key, numbered just after the newest genuine packet so the
            # replay window accepts them (charon's own packets with those numbers then
            # count as replays: one or two pings lost, §3.4.3).
            # (Only packets the key opens: the capture also holds the forgeries above.)
            newest = max(
                esp_seq(_esp(f))
                for f in capture.snapshot()
                if esp_spi(_esp(f)) == spi_in and gcm_open(key, _esp(f)) is not None
            )
            inner_ok = ipv4_udp(topo.site_b.host4, topo.site_a.host4, 40001, PORT, b"bad-pad")
            pad = (-(len(inner_ok) + 2)) % 4 or 4
            # Padding must be 1, 2, 3, ... (RFC 4303 §2.4); these bytes are not.
            bad_pad = gcm_seal(key, spi_in, newest + 5, inner_ok,
                               b"\xaa" * pad + bytes([pad, 4]))  # fmt: skip
            # 198.51.100.77 is outside the SA's remote selector 203.0.113.0/24.
            outside = ipv4_udp("198.51.100.77", topo.site_a.host4, 40001, PORT, b"outside!")
            pad = (-(len(outside) + 2)) % 4
            out_of_policy = gcm_seal(key, spi_in, newest + 6, outside,
                                     bytes(range(1, pad + 1)) + bytes([pad, 4]))  # fmt: skip
            template = genuine[-1]
            inject_frames(
                topo.gw_b.name,
                "wan0",
                [rewrite_udp4(template, bad_pad), rewrite_udp4(template, out_of_policy)],
            )
            time.sleep(1.5)
            # What an operator sees: the CLI's `lockgate status --json`.
            cli = topo.gw_a.run(
                sys.executable, "-m", "daemon.cli", "-s", daemon.socket, "status", "--json"
            )
            after = _drops(json.loads(cli.stdout))
            reached = drain(listener)

        pinger.popen.wait(30)
        ping_log = pinger.log()
        diff = after - before
        print(f"\ndrops during the attack: {dict(diff)}\nping: {ping_log.strip()[-200:]}")
        assert reached == [], f"injected packets reached site A's host: {reached!r}"
        assert diff["replay"] >= GENUINE
        assert diff["icv_failure"] == GENUINE
        assert diff["no_sa"] == GENUINE
        assert diff["too_short"] == GENUINE
        assert diff["bad_padding"] == 1
        assert diff["policy_mismatch"] == 1
        match = re.search(r"(\d+) packets transmitted, (\d+) received", ping_log)
        assert match is not None, ping_log
        # A ping running through the attack lost at most the two numbers taken above
        # (and the wire is otherwise lossless).
        assert int(match.group(2)) >= int(match.group(1)) - 3, ping_log
        ping(topo.host_b, topo.site_a.host4, count=3)
        assert daemon.proc.alive()


def test_raw_esp_attacks_between_two_lockgates() -> None:
    """The same forgeries over raw ESP (IP protocol 50, no NAT), lockgate on both ends:
    the raw-socket receive path drops and counts them as the UDP one does."""
    with site_to_site() as topo:
        # encap "nat": raw ESP between two lockgates ("auto" would choose UDP).
        a_text = config(me=topo.gw_a_wan4, peer=topo.gw_b_wan4, local=[topo.site_a.subnet4],
                        remote=[topo.site_b.subnet4], start="wait", encap="nat")  # fmt: skip
        b_text = config(me=topo.gw_b_wan4, peer=topo.gw_a_wan4, local=[topo.site_b.subnet4],
                        remote=[topo.site_a.subnet4], start="initiate", encap="nat")  # fmt: skip
        a = start_daemon(topo, topo.gw_a, "gwA", a_text)
        b = start_daemon(topo, topo.gw_b, "gwB", b_text)
        wait_until(lambda: bool(a.sas()) and bool(b.sas()), "the CHILD SA")
        [sa] = a.sas()
        assert sa["encap"] == "esp"
        spi_in = int(sa["spi_in"], 16)
        wait_until(lambda: ping(topo.host_b, topo.site_a.host4, count=1).returncode == 0, "ping")
        with (
            udp_listener(topo.host_a.name, topo.site_a.host4, PORT) as listener,
            FrameCapture(topo.gw_a.name, "wan0", lambda f: esp_raw4(f) is not None) as capture,
        ):
            _send_genuine(topo, listener)
            time.sleep(0.2)
            frames = [f for f in capture.snapshot() if esp_spi(_raw(f)) == spi_in]
            carrying = frames[-GENUINE:]
            before = _drops(a.status())
            forged = (
                [rewrite_raw4(f, _raw(f)) for f in carrying]
                + [rewrite_raw4(f, _raw(f)[:4] + struct.pack("!I", esp_seq(_raw(f)) + 100_000)
                                + _raw(f)[8:]) for f in carrying]
                + [rewrite_raw4(f, struct.pack("!I", spi_in ^ 0x5A5A0000) + _raw(f)[4:])
                   for f in carrying]
                + [rewrite_raw4(f, _raw(f)[:20]) for f in carrying]
            )  # fmt: skip
            inject_frames(topo.gw_b.name, "wan0", forged)
            time.sleep(1.0)
            diff = _drops(a.status()) - before
            reached = drain(listener)
        print(f"\nraw ESP: drops during the attack: {dict(diff)}")
        assert reached == [], f"injected packets reached site A's host: {reached!r}"
        assert diff["replay"] == GENUINE
        assert diff["icv_failure"] == GENUINE
        assert diff["no_sa"] == GENUINE
        assert diff["too_short"] == GENUINE
        ping(topo.host_b, topo.site_a.host4, count=3)
        ping(topo.host_a, topo.site_b.host4, count=3)
        assert "Traceback" not in a.proc.log()


def _raw(frame: bytes) -> bytes:
    offset = esp_raw4(frame)
    if offset is None:
        raise AssertionError("not a raw ESP frame")
    return frame[offset:]

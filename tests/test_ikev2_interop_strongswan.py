"""lockgate's IKEv2 against a real strongSwan (charon, kernel-libipsec) in namespaces.

Two namespaces joined by a veth: gateway A runs lockgate's IKE endpoint through its
asyncio driver (in a thread that entered A's namespace, so its sockets live there),
gateway B runs charon. Only IKE is exercised here: both sides must report the IKE SA
ESTABLISHED and the CHILD SA INSTALLED (charon as `list-sas` shows it), deletes must
work both ways, and a wrong PSK or a proposal mismatch must fail cleanly on both
sides. charon's userspace ESP always forces UDP encapsulation, so IKE_AUTH runs on
port 4500 behind the non-ESP marker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import pytest
from netns import Lab, in_namespace
from strongswan import (
    Charon,
    Credential,
    SwanChild,
    SwanConnection,
    SwanSecret,
    logs_on_failure,
)

from ikev2.config import ChildConfig, ConnectionConfig, Identity
from ikev2.constants import NotifyType
from ikev2.endpoint import Endpoint
from ikev2.events import (
    ChildSaDeleted,
    ChildSaFailed,
    ChildSaInstalled,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
)
from ikev2.ts import TrafficSelector
from testkit.ike_sockets import SocketDriver, UdpSockets, open_udp_sockets

pytestmark = [pytest.mark.netns, pytest.mark.interop]

A_WAN, B_WAN = "198.51.100.1", "198.51.100.2"
A_NET, B_NET = "192.0.2.0/24", "203.0.113.0/24"
PSK = "lockgate-interop-psk-NOT-SECRET"
IKE_PROPOSAL = "aes256gcm16-prfsha384-x25519"
WAIT = 15.0

E = TypeVar("E", bound=Event)


class LockgatePeer:
    """lockgate's IKE endpoint on an asyncio loop in a thread inside a namespace."""

    def __init__(self, namespace: str, connections: list[ConnectionConfig]) -> None:
        self.namespace = namespace
        self.endpoint = Endpoint(connections)
        self.events: queue.Queue[Event] = queue.Queue()
        self.seen: list[Event] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._driver: SocketDriver | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="lockgate-ike", daemon=True)

    def _run(self) -> None:
        try:
            with in_namespace(self.namespace):
                asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        sockets: UdpSockets
        self._driver, sockets = await open_udp_sockets(self.endpoint, [A_WAN], self.events.put)
        self._ready.set()
        try:
            await self._stop.wait()
            await self._driver.close(timeout=3.0)
        finally:
            sockets.close()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10.0) or self._error is not None:
            raise RuntimeError(f"lockgate IKE driver did not start: {self._error!r}")

    def call(self, fn: Callable[[SocketDriver], Any]) -> Any:
        """Run `fn(driver)` on the driver's loop and return its result."""
        if self._loop is None or self._driver is None:
            raise RuntimeError("not started")
        driver = self._driver
        future: Future[Any] = Future()

        def run() -> None:
            try:
                future.set_result(fn(driver))
            except BaseException as exc:
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future.result(timeout=5.0)

    def wait_for(self, kind: type[E], timeout: float = WAIT) -> E:
        """The next event of a kind (earlier ones of other kinds are kept in `seen`)."""
        for event in self.seen:
            if isinstance(event, kind):
                self.seen.remove(event)
                return event
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=0.1)
            except queue.Empty:
                continue
            if isinstance(event, kind):
                return event
            self.seen.append(event)
        raise AssertionError(f"no {kind.__name__} within {timeout}s; saw {self.seen}")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10.0)


def lockgate_connection(
    *, psk: str = PSK, ike: str = IKE_PROPOSAL, esp: str = "aes128gcm16", fragment_size: int = 1232
) -> ConnectionConfig:
    return ConnectionConfig(
        name="s2s",
        local_addresses=(A_WAN,),
        remote_address=B_WAN,
        local_id=Identity.parse(A_WAN),
        remote_id=Identity.parse(B_WAN),
        psk=psk.encode(),
        ike_proposals=(ike,),
        retransmit_timeout=1.0,
        retransmit_tries=3,
        fragment_size=fragment_size,
        children=(
            ChildConfig(
                "net",
                (TrafficSelector.from_network(A_NET),),
                (TrafficSelector.from_network(B_NET),),
                esp_proposals=(esp,),
            ),
        ),
    )


def charon_connection(
    *, ike: str = IKE_PROPOSAL, esp: str = "aes128gcm16", dpd_delay: str | None = None
) -> SwanConnection:
    return SwanConnection(
        name="s2s",
        local_addrs=B_WAN,
        remote_addrs=A_WAN,
        local_id=B_WAN,
        remote_id=A_WAN,
        proposals=ike,
        dpd_delay=dpd_delay,
        children=[SwanChild("net", [B_NET], [A_NET], esp_proposals=esp)],
    )


@contextlib.contextmanager
def gateways(
    lockgate: ConnectionConfig,
    charon_conn: SwanConnection,
    charon_psk: str = PSK,
    charon_extra: tuple[str, ...] = (),
) -> Iterator[tuple[LockgatePeer, Charon]]:
    """gateway A (lockgate) and gateway B (charon) on one veth; removed afterwards."""
    with Lab() as lab:
        gw_a, gw_b = lab.namespace("ikeA"), lab.namespace("ikeB")
        lab.veth(gw_a, "wan0", gw_b, "wan0")
        gw_a.ip("addr", "add", f"{A_WAN}/24", "dev", "wan0")
        gw_b.ip("addr", "add", f"{B_WAN}/24", "dev", "wan0")
        # charon routes the remote subnet via its TUN with a source address from its own
        # subnet; without one the CHILD SA fails with "unable to install policies".
        # (No dummy driver here: a veth pair with both ends in B serves as its LAN.)
        gw_b.ip("link", "add", "lan0", "type", "veth", "peer", "name", "lan1")
        gw_b.ip("addr", "add", "203.0.113.1/24", "dev", "lan0")
        for ifname in ("lan0", "lan1"):
            gw_b.ip("link", "set", ifname, "up")
        charon = Charon(gw_b, "gwB", extra_charon=charon_extra)
        peer = LockgatePeer(gw_a.name, [lockgate])
        with logs_on_failure(charon):
            charon.start()
            charon.load([charon_conn], [SwanSecret("s2s", [A_WAN, B_WAN], charon_psk)])
            peer.start()
            try:
                yield peer, charon
            finally:
                peer.stop()
                charon.stop()


def wait_until(check: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def check_established(
    peer: LockgatePeer,
    charon: Charon,
    *,
    lockgate_initiated: bool,
    charon_ids: tuple[str, str] = (B_WAN, A_WAN),
) -> None:
    ike_up = peer.wait_for(IkeSaEstablished)
    child_up = peer.wait_for(ChildSaInstalled)
    info = charon.wait_for_child("net")
    assert info.state == "ESTABLISHED"
    assert info.initiator is not lockgate_initiated
    assert ike_up.initiator is lockgate_initiated
    assert (info.encr_alg, info.encr_keysize, info.dh_group) == ("AES_GCM_16", "256", "CURVE_25519")
    assert (info.local_id, info.remote_id) == charon_ids
    child = info.child("net")
    assert child.state == "INSTALLED" and child.encap
    assert child.local_ts == [B_NET] and child.remote_ts == [A_NET]
    # The SPIs agree crosswise, and charon's forced encapsulation was detected.
    assert int(child.spi_in, 16) == child_up.spi_out
    assert int(child.spi_out, 16) == child_up.spi_in
    assert (
        child_up.udp_encap and child_up.local == (A_WAN, 4500) and child_up.remote == (B_WAN, 4500)
    )
    assert (child_up.encr_id, child_up.encr_key_bits, child_up.integ_id) == (20, 128, 0)


def test_lockgate_initiates_then_deletes_and_charon_deletes() -> None:
    with gateways(lockgate_connection(), charon_connection()) as (peer, charon):
        ike_sa_id = peer.call(lambda d: d.initiate("s2s"))
        check_established(peer, charon, lockgate_initiated=True)

        # Delete from lockgate: charon must drop both SAs.
        peer.call(lambda d: d.delete(ike_sa_id))
        assert peer.wait_for(ChildSaDeleted).reason == "IKE SA deleted"
        assert not peer.wait_for(IkeSaDeleted).by_peer
        wait_until(lambda: charon.list_sas() == [])

        # Up again, then charon deletes: lockgate must follow.
        peer.call(lambda d: d.initiate("s2s"))
        check_established(peer, charon, lockgate_initiated=True)
        assert charon.terminate(ike="s2s")
        peer.wait_for(ChildSaDeleted)
        assert peer.wait_for(IkeSaDeleted).by_peer
        wait_until(lambda: peer.call(lambda d: d.endpoint.ike_sas()) == [])


def test_charon_initiates_liveness_checks_both_ways_and_deletes() -> None:
    # dpd_delay = 1s: charon sends empty INFORMATIONALs (liveness checks, §1.4) at once.
    with gateways(lockgate_connection(), charon_connection(dpd_delay="1s")) as (peer, charon):
        charon.initiate("net", ike="s2s")
        check_established(peer, charon, lockgate_initiated=False)
        wait_until(lambda: charon.logs().count("parsed INFORMATIONAL response") >= 2)
        assert charon.wait_for_child("net").state == "ESTABLISHED"
        # Our own liveness check: charon answers, the request is no longer outstanding.
        (sa,) = peer.call(lambda d: d.endpoint.ike_sas())
        peer.call(lambda d: sa.check_liveness(time.monotonic()) or d.service())
        wait_until(
            lambda: peer.call(lambda d: sa.tm.outstanding is None and sa.tm.next_request_id == 1)
        )

        # A CHILD SA delete from charon, then the IKE SA from lockgate.
        assert charon.terminate(child="net")
        assert peer.wait_for(ChildSaDeleted).reason == "deleted by peer"
        peer.call(lambda d: d.delete(sa.ike_sa_id))
        assert not peer.wait_for(IkeSaDeleted).by_peer
        wait_until(lambda: charon.list_sas() == [])


def test_lockgate_deletes_a_child_sa_charon_initiated() -> None:
    with gateways(lockgate_connection(), charon_connection()) as (peer, charon):
        charon.initiate("net", ike="s2s")
        check_established(peer, charon, lockgate_initiated=False)
        (child,) = [c for sa in peer.call(lambda d: d.endpoint.ike_sas()) for c in sa.children]
        peer.call(lambda d: d.delete_child(child))
        assert peer.wait_for(ChildSaDeleted).unique_id == child
        wait_until(lambda: [c for i in charon.list_sas() for c in i.children] == [])
        assert charon.list_sas()[0].state == "ESTABLISHED"


def test_wrong_psk_fails_cleanly_both_ways() -> None:
    with gateways(lockgate_connection(), charon_connection(), charon_psk="another-psk") as (
        peer,
        charon,
    ):
        # lockgate initiates: charon refuses our AUTH.
        peer.call(lambda d: d.initiate("s2s"))
        failed = peer.wait_for(IkeSaFailed)
        assert failed.notify == NotifyType.AUTHENTICATION_FAILED
        assert "rejected our authentication" in failed.reason
        wait_until(lambda: charon.list_sas() == [])
        assert "AUTHENTICATION_FAILED" in charon.logs() or "MAC mismatch" in charon.logs()

        # charon initiates: we refuse its AUTH.
        with pytest.raises(Exception, match="initiate"):
            charon.initiate("net", ike="s2s", timeout=8.0)
        failed = peer.wait_for(IkeSaFailed)
        assert failed.notify == NotifyType.AUTHENTICATION_FAILED
        assert "pre-shared key differs" in failed.reason
        wait_until(lambda: charon.list_sas() == [])
        assert peer.call(lambda d: d.endpoint.ike_sas()) == []


def test_proposal_mismatch_fails_cleanly_both_ways() -> None:
    lockgate = lockgate_connection(ike="aes128-sha256-modp2048")
    with gateways(lockgate, charon_connection()) as (peer, charon):
        peer.call(lambda d: d.initiate("s2s"))
        failed = peer.wait_for(IkeSaFailed)
        assert failed.notify == NotifyType.NO_PROPOSAL_CHOSEN
        assert charon.list_sas() == []

        with pytest.raises(Exception, match="initiate"):
            charon.initiate("net", ike="s2s", timeout=8.0)
        failed = peer.wait_for(IkeSaFailed)
        assert failed.notify == NotifyType.NO_PROPOSAL_CHOSEN
        assert "peer proposed only aes256gcm16-prfsha384-x25519" in failed.reason
        assert peer.call(lambda d: d.endpoint.ike_sas()) == []
        wait_until(lambda: charon.list_sas() == [])


def test_esp_proposal_mismatch_fails_the_child_cleanly() -> None:
    with gateways(lockgate_connection(esp="aes256-sha256"), charon_connection()) as (peer, charon):
        peer.call(lambda d: d.initiate("s2s"))
        peer.wait_for(IkeSaEstablished)
        failed = peer.wait_for(ChildSaFailed)
        assert failed.notify == NotifyType.NO_PROPOSAL_CHOSEN
        # The IKE SA has no use without its CHILD SA: lockgate deletes it.
        peer.wait_for(IkeSaDeleted)
        wait_until(lambda: charon.list_sas() == [])


@pytest.mark.parametrize("esp", ["aes128gcm16", "aes256gcm16-x25519"])
def test_child_sa_rekeys_both_ways(esp: str) -> None:
    with gateways(lockgate_connection(esp=esp), charon_connection(esp=esp)) as (peer, charon):
        peer.call(lambda d: d.initiate("s2s"))
        peer.wait_for(IkeSaEstablished)
        first = peer.wait_for(ChildSaInstalled)
        charon.wait_for_child("net")

        # charon rekeys: lockgate installs the new pair, then charon deletes the old one.
        charon.swanctl("--rekey", "--child", "net")
        second = peer.wait_for(ChildSaInstalled)
        assert second.rekey_of == first.unique_id
        gone = peer.wait_for(ChildSaDeleted)
        assert gone.unique_id == first.unique_id and gone.reason == "deleted by peer"
        wait_until(lambda: _charon_spis(charon) == [(second.spi_out, second.spi_in)])

        # lockgate rekeys: the same, the other way round.
        peer.call(lambda d: d.rekey_child(second.unique_id))
        third = peer.wait_for(ChildSaInstalled)
        assert third.rekey_of == second.unique_id
        assert peer.wait_for(ChildSaDeleted).reason == "rekeyed"
        wait_until(lambda: _charon_spis(charon) == [(third.spi_out, third.spi_in)])
        # With a group in the ESP proposal the rekeys ran a key exchange (PFS, §1.3.3).
        groups = [
            c.dh_group for ike in charon.list_sas() for c in ike.children if c.state == "INSTALLED"
        ]
        assert groups == (["CURVE_25519"] if "x25519" in esp else [""])


def _charon_spis(charon: Charon) -> list[tuple[int, int]]:
    """(SPI in, SPI out) of charon's INSTALLED CHILD SAs."""
    return [
        (int(c.spi_in, 16), int(c.spi_out, 16))
        for ike in charon.list_sas()
        for c in ike.children
        if c.state == "INSTALLED"
    ]


def test_ike_sa_rekeys_both_ways() -> None:
    with gateways(lockgate_connection(), charon_connection()) as (peer, charon):
        ike_sa_id = peer.call(lambda d: d.initiate("s2s"))
        peer.wait_for(IkeSaEstablished)
        child = peer.wait_for(ChildSaInstalled)
        charon.wait_for_child("net")
        (original,) = _charon_ike_spis(charon)

        # charon rekeys the IKE SA: the CHILD SA moves along, nothing is torn down.
        charon.swanctl("--rekey", "--ike", "s2s")
        rekeyed = peer.wait_for(IkeSaRekeyed)
        assert rekeyed.ike_sa_id == ike_sa_id
        wait_until(lambda: _charon_ike_spis(charon) == [(rekeyed.spi_i, rekeyed.spi_r)])
        assert _charon_spis(charon) == [(child.spi_out, child.spi_in)]

        # lockgate rekeys it back; the new IKE SA still carries the same CHILD SA.
        peer.call(lambda d: d.endpoint.rekey_ike_sa(rekeyed.new_ike_sa_id, time.monotonic()))
        peer.call(lambda d: d.service())
        again = peer.wait_for(IkeSaRekeyed)
        assert again.ike_sa_id == rekeyed.new_ike_sa_id
        wait_until(lambda: _charon_ike_spis(charon) == [(again.spi_i, again.spi_r)])
        assert _charon_spis(charon) == [(child.spi_out, child.spi_in)]
        assert original not in ((again.spi_i, again.spi_r), (rekeyed.spi_i, rekeyed.spi_r))
        assert not any(isinstance(e, (IkeSaDeleted, ChildSaDeleted)) for e in peer.seen)

        # And it still works: a CHILD SA rekey through the new IKE SA.
        peer.call(lambda d: d.rekey_child(child.unique_id))
        assert peer.wait_for(ChildSaInstalled).rekey_of == child.unique_id


def _receive_late(driver: SocketDriver) -> None:
    """Make lockgate take in every datagram 1 s late (in order), so requests cross.

    (This kernel has no netem; and swanctl may return a few hundred ms after charon
    sent its request on a busy machine.)
    """
    receive, loop = driver.datagram_received, asyncio.get_running_loop()

    def late(data: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        loop.call_later(1.0, receive, data, local, remote)

    driver.datagram_received = late  # type: ignore[method-assign]


def test_crossing_child_rekeys_with_charon_converge() -> None:
    """Both rekey the CHILD SA at once (RFC 7296 §2.8.1): one new pair remains on both."""
    with gateways(lockgate_connection(), charon_connection()) as (peer, charon):
        peer.call(lambda d: d.initiate("s2s"))
        peer.wait_for(IkeSaEstablished)
        child = peer.wait_for(ChildSaInstalled)
        charon.wait_for_child("net")
        peer.call(_receive_late)
        charon.swanctl("--rekey", "--child", "net")
        peer.call(lambda d: d.rekey_child(child.unique_id))
        first, second = peer.wait_for(ChildSaInstalled), peer.wait_for(ChildSaInstalled)
        assert first.rekey_of == second.rekey_of == child.unique_id
        # The old pair and the redundant new one go; the other new one stays on both.
        gone = {peer.wait_for(ChildSaDeleted).unique_id for _ in range(2)}
        assert gone | {first.unique_id, second.unique_id} == {
            child.unique_id,
            first.unique_id,
            second.unique_id,
        }
        (kept,) = {first, second} - {e for e in (first, second) if e.unique_id in gone}
        wait_until(lambda: _charon_spis(charon) == [(kept.spi_out, kept.spi_in)])
        assert "detected CHILD_REKEY collision" in charon.logs()  # a real collision
        time.sleep(3.0)
        assert _charon_spis(charon) == [(kept.spi_out, kept.spi_in)]


def test_crossing_ike_rekeys_with_charon_converge(caplog: pytest.LogCaptureFixture) -> None:
    """Both rekey the IKE SA at once (RFC 7296 §2.8.2): one new IKE SA survives on both.

    lockgate takes in every datagram 1 s late (`_receive_late`), so charon's request
    and lockgate's are in flight together and each side answers the
    other's while its own is out: a real collision, which lockgate's log confirms.
    """
    caplog.set_level("INFO", logger="ikev2")
    with gateways(lockgate_connection(), charon_connection()) as (peer, charon):
        ike_sa_id = peer.call(lambda d: d.initiate("s2s"))
        peer.wait_for(IkeSaEstablished)
        child = peer.wait_for(ChildSaInstalled)
        charon.wait_for_child("net")
        (original,) = _charon_ike_spis(charon)
        peer.call(_receive_late)
        charon.swanctl("--rekey", "--ike", "s2s")
        peer.call(lambda d: d.endpoint.rekey_ike_sa(ike_sa_id, time.monotonic()))
        peer.call(lambda d: d.service())
        rekeyed = peer.wait_for(IkeSaRekeyed)
        assert rekeyed.ike_sa_id == ike_sa_id
        # Both agree on the surviving IKE SA, and the CHILD SA moved along untouched.
        wait_until(lambda: _charon_ike_spis(charon) == [(rekeyed.spi_i, rekeyed.spi_r)])
        assert (rekeyed.spi_i, rekeyed.spi_r) != original
        assert _charon_spis(charon) == [(child.spi_out, child.spi_in)]
        assert "simultaneous IKE rekeying" in caplog.text
        assert "detected IKE_REKEY collision" in charon.logs()  # charon saw it too
        time.sleep(3.0)  # the loser's Delete and the old SA's Delete have completed
        assert _charon_ike_spis(charon) == [(rekeyed.spi_i, rekeyed.spi_r)]
        alive = peer.call(lambda d: [sa.ike_sa_id for sa in d.endpoint.ike_sas()])
        assert alive == [rekeyed.new_ike_sa_id]
        assert not any(isinstance(e, (IkeSaDeleted, ChildSaDeleted)) for e in peer.seen)
        # The survivor works: a CHILD SA rekey through it.
        peer.call(lambda d: d.rekey_child(child.unique_id))
        assert peer.wait_for(ChildSaInstalled, timeout=WAIT).rekey_of == child.unique_id


def _charon_ike_spis(charon: Charon) -> list[tuple[int, int]]:
    """(SPIi, SPIr) of charon's ESTABLISHED IKE SAs."""
    return [
        (int(str(ike.raw["initiator-spi"]), 16), int(str(ike.raw["responder-spi"]), 16))
        for ike in charon.list_sas()
        if ike.state == "ESTABLISHED"
    ]


@pytest.mark.parametrize("lockgate_initiates", [True, False])
def test_fragmented_ike_auth_both_ways(lockgate_initiates: bool) -> None:
    # Tiny fragments on both sides: every IKE_AUTH message travels in SKF pieces.
    lockgate = lockgate_connection(fragment_size=200)
    with gateways(lockgate, charon_connection(), charon_extra=("fragment_size = 180",)) as (
        peer,
        charon,
    ):
        if lockgate_initiates:
            peer.call(lambda d: d.initiate("s2s"))
        else:
            charon.initiate("net", ike="s2s")
        check_established(peer, charon, lockgate_initiated=lockgate_initiates)
        log = charon.logs()
        assert "reassembled fragmented IKE message" in log
        assert "splitting IKE message" in log  # charon split its own message too


def _pubkey_connections(
    own_a: Credential, own_b: Credential, chain_pem: bytes, anchor_pem: bytes
) -> tuple[ConnectionConfig, SwanConnection]:
    """lockgate as own_a (sending chain_pem, trusting anchor_pem) and charon as own_b,
    both authenticating with certificates."""
    from ikev2.certs import LocalCredentials, TrustAnchors

    lockgate = dataclasses.replace(
        lockgate_connection(),
        auth="pubkey",
        psk=None,
        local_id=Identity.parse(own_a.id),
        remote_id=Identity.parse(own_b.id),
        credentials=LocalCredentials.from_pem(chain_pem, own_a.key_pem),
        trust_anchors=TrustAnchors.from_pem(anchor_pem),
    )
    swan = dataclasses.replace(
        charon_connection(),
        local_id=own_b.id,
        remote_id=own_a.id,
        local_auth="pubkey",
        remote_auth="pubkey",
    )
    return lockgate, swan


@pytest.mark.parametrize("key_type", ["ecdsa-p256", "rsa2048", "ed25519"])
def test_certificate_authentication_both_ways(key_type: str) -> None:
    from strongswan import Pki, install_credentials

    pki = Pki(key_type=key_type)
    own_a, own_b = pki.issue("gw-a.example.net"), pki.issue("gw-b.example.net")
    lockgate, swan = _pubkey_connections(own_a, own_b, own_a.cert_pem, pki.ca.cert_pem)
    with gateways(lockgate, swan) as (peer, charon):
        swan.local_certs = [install_credentials(charon, own_b, pki)]
        charon.load([swan])
        peer.call(lambda d: d.initiate("s2s"))
        ike_up = peer.wait_for(IkeSaEstablished)
        assert (ike_up.local_id, ike_up.remote_id) == (own_a.id, own_b.id)
        info = charon.wait_for_child("net")
        assert (info.local_id, info.remote_id) == (own_b.id, own_a.id)
        peer.wait_for(ChildSaInstalled)
        peer.call(lambda d: d.delete(ike_up.ike_sa_id))
        peer.wait_for(IkeSaDeleted)
        wait_until(lambda: charon.list_sas() == [])

        charon.initiate("net", ike="s2s")
        assert not peer.wait_for(IkeSaEstablished).initiator
        charon.wait_for_child("net")


def test_large_certificate_chains_travel_in_fragments() -> None:
    from strongswan import Pki, install_credentials

    root = Pki(key_type="rsa4096")
    sub = Pki("lockgate intermediate", key_type="rsa4096", parent=root)
    own_a, own_b = sub.issue("gw-a.example.net"), sub.issue("gw-b.example.net")
    lockgate, swan = _pubkey_connections(
        own_a, own_b, own_a.cert_pem + sub.ca.cert_pem, root.ca.cert_pem
    )
    with gateways(lockgate, swan) as (peer, charon):
        swan.local_certs = [install_credentials(charon, own_b, sub)]
        charon.load([swan])
        # Two 4096-bit certificates each way: IKE_AUTH is far above 1280 octets.
        peer.call(lambda d: d.initiate("s2s"))
        check_established(peer, charon, lockgate_initiated=True, charon_ids=(own_b.id, own_a.id))
        log = charon.logs()
        assert "reassembled fragmented IKE message" in log
        assert "splitting IKE message" in log


def test_dead_peer_is_detected_after_charon_is_killed() -> None:
    import signal

    lockgate = dataclasses.replace(
        lockgate_connection(), dpd_interval=1.0, retransmit_timeout=0.5, retransmit_tries=2
    )
    with gateways(lockgate, charon_connection()) as (peer, charon):
        peer.call(lambda d: d.initiate("s2s"))
        check_established(peer, charon, lockgate_initiated=True)
        assert charon.process is not None
        charon.process.signal(signal.SIGKILL)  # no Delete: it just vanishes
        # 1 s of silence, then a check sent 3 times (0.5 s, 1 s back-off) and given up.
        assert peer.wait_for(ChildSaDeleted, timeout=15.0).reason == "IKE SA deleted"
        dead = peer.wait_for(IkeSaDeleted, timeout=15.0)
        assert dead.reason.startswith("peer is dead") and not dead.by_peer

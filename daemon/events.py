"""How the gateway reacts to the IKE core's events.

`IkeSaEstablished` and `IkeSaRekeyed` keep the IKE SAs that status shows and the
CHILD SAs answer to (an established one is asked for the CHILD SAs of connections a
reload added while it was being set up); `ChildSaInstalled` becomes two `EspSA`s, an
SPD policy, an SAD entry and routes into the TUN (unless a reload removed its
connection while it was being negotiated: then it is deleted), and `ChildSaDeleted`
takes them away again; an IKE SA that ends because its peer is dead gets the peer's
dpd_action (clear, restart with back-off, or re-arm a trap); a start = "initiate"
connection whose CHILD SA alone the peer deleted asks for it again (`restart_child`,
with back-off); a failure is kept for status and answers the waiting `lockgate up`.
Each handler takes the gateway and one event.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from daemon.childsa import DEFAULT_PATH_MTU, entry_from_event, inner_mtu
from daemon.diagnosis import OTHER, Failure, child_failure
from daemon.metrics import SETUP_ANSWERED, SETUP_INITIATED
from daemon.peers import IkeSaInfo, apply_dpd_action, resolve, restart_child
from daemon.reload import replaced
from daemon.status import status_line
from daemon.worker_gateway import shadow_event
from esp.errors import EspConfigError
from ikev2.errors import IkeError
from ikev2.events import (
    ChildSaDeleted,
    ChildSaFailed,
    ChildSaInstalled,
    DeleteCause,
    Event,
    IkeSaAddressChanged,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
    NatKeepaliveDue,
)
from ikev2.sa_types import IkeSaState
from ikev2.ts import format_selectors

if TYPE_CHECKING:
    from daemon.gateway import Gateway

log = logging.getLogger(__name__)

EXPIRED_CAUSES = frozenset({DeleteCause.LIMIT_REACHED, DeleteCause.EXPIRED})
"""ChildSaDeleted causes of a CHILD SA that reached a hard limit before a rekey
replaced it: a connection that should be up then needs a new one."""


def handle_event(gateway: Gateway, event: Event) -> None:
    """Pass `event` to its handler below (an event without one needs no action)."""
    if gateway.ikev2_ra is not None:
        gateway.ikev2_ra.on_event(event)
    handler = _EVENT_HANDLERS.get(type(event))
    if handler is not None:
        handler(gateway, event)


def _on_ike_established(gateway: Gateway, event: IkeSaEstablished) -> None:
    gateway.remember_ike_sa(IkeSaInfo(event))
    who = SETUP_INITIATED if event.initiator else SETUP_ANSWERED
    gateway.event_counts.setups[event.connection, who] += 1
    gateway.diagnosis.record_established(event)
    if log.isEnabledFor(logging.INFO):
        _log_established(event)
    _request_awaiting(gateway, event)


def _log_established(event: IkeSaEstablished) -> None:
    log.info(
        "peer %s: IKE SA #%d established with %s (%s), %s, quantum-safe: %s, ppk: %s, "
        "%s[%d] <-> %s[%d]%s",
        event.connection,
        event.ike_sa_id,
        event.remote_id,
        "we initiated" if event.initiator else "peer initiated",
        event.suite,
        "yes" if event.quantum_safe else "no",
        "yes" if event.ppk_used else "no",
        event.local[0],
        event.local[1],
        event.remote[0],
        event.remote[1],
        f"; ESP in UDP: {event.udp_encap_reason}" if event.udp_encap_reason else "",
    )


def _request_awaiting(gateway: Gateway, event: IkeSaEstablished) -> None:
    """Connections a reload added while this IKE SA was being set up (`awaiting`):
    it began without them, so their CHILD SAs are requested under it now (RFC 7296
    §1.3.1)."""
    endpoint = gateway.endpoint
    if endpoint is None or event.connection not in gateway.peers:
        return  # connections_of would be empty; remote-access clients come here too
    sa = endpoint.ike_sa(event.ike_sa_id)
    if sa is None or sa.state is not IkeSaState.ESTABLISHED:
        return
    for state in gateway.connections_of(event.connection):
        if event.ike_sa_id not in state.awaiting:
            continue
        state.awaiting = set()
        if state.wanted and not gateway.is_up(state.name):
            gateway.create_child(state, sa)


def _on_ike_deleted(gateway: Gateway, event: IkeSaDeleted) -> None:
    gateway.forget_ike_sa(event.ike_sa_id)
    log.info("peer %s: IKE SA #%d deleted (%s)",
             event.connection, event.ike_sa_id, event.reason)  # fmt: skip
    peer = gateway.peers.get(event.connection)
    if peer is None:
        return
    if not gateway.shutting_down:
        names = [state.name for state in gateway.connections_of(event.connection)]
        gateway.diagnosis.record_ike_deleted(event, peer.config, names)
    resolve(peer.ike_waiters, f"peer {peer.config.name}: {event.reason}", ok=False)
    if gateway.shutting_down:
        return
    if event.cause is DeleteCause.DEAD_PEER:
        # Liveness checks went unanswered (RFC 7296 §2.4): dpd_action applies.
        apply_dpd_action(gateway, peer, event)
    else:
        # Deleted by the peer, or expired: connections that should be up come back.
        gateway.schedule_retry(peer)


def _on_ike_rekeyed(gateway: Gateway, event: IkeSaRekeyed) -> None:
    """The IKE SA was replaced (RFC 7296 §2.18): status shows the new one, and the
    CHILD SAs that moved along now answer to it."""
    old = gateway.forget_ike_sa(event.ike_sa_id)
    gateway.event_counts.rekeys["ike"] += 1
    # A rekey keeps quantum_safe from the old announcement: the new SKEYSEED is keyed
    # with the old SK_d (RFC 7296 §2.18), which the ML-KEM secret went into.
    sa = gateway.endpoint.ike_sa(event.new_ike_sa_id) if gateway.endpoint is not None else None
    if old is not None:
        announced = dataclasses.replace(
            old.event,
            ike_sa_id=event.new_ike_sa_id,
            spi_i=event.spi_i,
            spi_r=event.spi_r,
            suite=event.suite,
            initiator=sa.initiator if sa is not None else old.event.initiator,
        )
        gateway.remember_ike_sa(IkeSaInfo(announced, rekeyed_from=event.ike_sa_id))
    if gateway.plane is not None:
        gateway.plane.move_to_ike_sa(event.ike_sa_id, event.new_ike_sa_id)
    for state in gateway.connections_of(event.connection):
        if state.carried_by == event.ike_sa_id:
            state.carried_by = event.new_ike_sa_id
    log.info(
        "peer %s: IKE SA #%d rekeyed, #%d replaces it (%s, SPIs %016x_i %016x_r)",
        event.connection,
        event.ike_sa_id,
        event.new_ike_sa_id,
        event.suite,
        event.spi_i,
        event.spi_r,
    )
    peer = gateway.peers.get(event.connection)
    if peer is not None:
        resolve(
            peer.ike_waiters,
            f"peer {event.connection}: IKE SA #{event.ike_sa_id} rekeyed, "
            f"#{event.new_ike_sa_id} replaces it",
            ok=True,
        )


def _on_address_changed(gateway: Gateway, event: IkeSaAddressChanged) -> None:
    """Send ESP where the IKE SA now talks to: behind a NAT the peer's mapping may
    change, and the IKE SA follows authenticated messages; without one, the move to
    port 4500 (RFC 7296 §2.23); with MOBIKE, the peer's UPDATE_SA_ADDRESSES, which may
    also switch UDP encapsulation on or off (RFC 4555 §3.5). The CHILD SAs keep their
    SPIs and keys; only their outer addresses and framing change."""
    info = gateway.ike_sas.get(event.ike_sa_id)
    if info is not None:
        info.event = dataclasses.replace(
            info.event,
            local=event.local,
            remote=event.remote,
            udp_encap_reason=event.udp_encap_reason,
            nat_local=event.nat_local,
            nat_remote=event.nat_remote,
        )
    ra = gateway.ikev2_ra
    if ra is None or event.connection != ra.name:
        # The remote-access server logs its clients' moves itself, by user.
        log.info(
            "peer %s: IKE SA #%d moved from %s[%d] to %s[%d]%s",
            event.connection,
            event.ike_sa_id,
            event.old_remote[0],
            event.old_remote[1],
            event.remote[0],
            event.remote[1],
            " (MOBIKE)" if event.mobike else "",
        )
    if gateway.plane is None:
        return
    for entry in gateway.plane.entries_of_ike_sa(event.ike_sa_id):
        if not (entry.udp_encap or event.mobike):
            continue  # raw ESP has no ports to follow; only MOBIKE moves its addresses
        entry.local, entry.remote = event.local, event.remote
        if entry.udp_encap != event.udp_encap:
            # The NAT state changed (§3.5): the UDP header comes or goes, and with it
            # the room left for the inner packet.
            entry.udp_encap = event.udp_encap
            version = 6 if ":" in event.remote[0] else 4
            path_mtu = gateway.path_mtus.get(event.remote[0], DEFAULT_PATH_MTU)
            entry.mtu = inner_mtu(entry.inbound.suite, path_mtu, version, event.udp_encap)
        if gateway.workers is not None:
            gateway.workers.move(entry.unique_id, entry.local, entry.remote, entry.udp_encap,
                                 entry.mtu)  # fmt: skip


def _on_ike_failed(gateway: Gateway, event: IkeSaFailed) -> None:
    server = gateway.ikev2_ra
    # A remote-access login's refusal has its own line from its server, which names the
    # user and the reason: a second warning for it would only repeat it.
    level = (
        logging.DEBUG if server is not None and event.connection == server.name else logging.WARNING
    )
    log.log(
        level,
        "peer %s: IKE SA #%d failed: %s",
        event.connection or "(none)",
        event.ike_sa_id,
        event.reason,
    )
    name = event.connection or _peer_at(gateway, event.remote[0])
    peer = gateway.peers.get(name)
    names = [state.name for state in gateway.connections_of(name)] if peer is not None else []
    failure = gateway.diagnosis.record_ike_failed(
        event, peer.config if peer is not None else None, names
    )
    gateway.event_counts.failures[name, failure.kind] += 1
    if peer is None or not event.connection:
        return
    peer.last_error = event.reason
    for state in gateway.connections_of(event.connection):
        state.last_error = event.reason
        resolve(state.waiters, f"{state.name}: {event.reason}", ok=False)
    gateway.schedule_retry(peer)


def _on_child_installed(gateway: Gateway, event: ChildSaInstalled) -> None:
    plane = gateway.plane
    if plane is None:
        return
    if _orphan(gateway, event):
        return
    try:
        entry_path_mtu = gateway.path_mtus.get(event.remote[0], DEFAULT_PATH_MTU)
        # With workers this process keeps a shadow entry, without the real keys.
        shadow = gateway.workers is not None
        entry = entry_from_event(shadow_event(event) if shadow else event, entry_path_mtu)
        # A route-mode connection's SA carries its own interface's traffic, not the SPD's.
        entry.interface = gateway.route_links.interface_of(event.child)
        # At a rekey we started, the peer installed the new SA before it answered,
        # and it drops the old inbound SA when our Delete arrives: send on the new
        # one at once. The peer of a rekey keeps the old one until that Delete
        # (RFC 7296 §2.8).
        preferred = event.rekey_of is not None and event.initiator
        plane.install(entry, preferred=preferred)
        if gateway.workers is not None:
            # The main process's entry is the shadow status reads; the worker that
            # owns its inbound SPI forwards (`daemon.worker_gateway`).
            gateway.workers.install(event, preferred=preferred, path_mtu=entry_path_mtu)
    except (EspConfigError, ValueError) as exc:
        refuse_child(gateway, event.unique_id, event.child, event.ike_sa_id, str(exc))
        return
    if event.rekey_of is not None:
        gateway.event_counts.rekeys["child"] += 1
    gateway.lifetimes.watch(entry)
    if entry.interface is None:
        gateway.routes.add_for(entry)
    else:
        gateway.route_links.follow(event.child, True)
    # Formatting selectors costs, and thousands of CHILD SAs may come at once.
    if log.isEnabledFor(logging.INFO):
        log.info(
            "connection %s: CHILD SA #%d installed%s: %s === %s, %s%s, SPIs in %08x out "
            "%08x, %s, inner MTU %d",
            event.child,
            event.unique_id,
            f" (rekeys #{event.rekey_of})" if event.rekey_of is not None else "",
            format_selectors(event.local_ts),
            format_selectors(event.remote_ts),
            entry.inbound.suite.name,
            f", PFS {event.pfs}, quantum-safe: {'yes' if event.quantum_safe else 'no'}"
            if event.pfs
            else "",
            entry.spi_in,
            entry.spi_out,
            f"ESP in UDP to {event.remote[0]}[{event.remote[1]}]"
            if event.udp_encap
            else f"raw ESP to {event.remote[0]}",
            entry.mtu,
        )
    peer = gateway.peers.get(event.connection)
    if peer is not None:
        peer.attempts = 0
        peer.last_error = ""
    state = gateway.connections.get(event.child)
    if state is not None:
        state.last_error = ""
        state.requested_at = None
        state.carried_by = event.ike_sa_id
        if state.replacing and state.peer == event.connection:
            if event.rekey_of in state.replacing:
                # One of the SAs to replace was rekeyed meanwhile: replace its successor.
                state.replacing = (state.replacing - {event.rekey_of}) | {event.unique_id}
            elif event.rekey_of is None:
                # The CHILD SA with the reload's new selectors: the old ones go now.
                replaced(gateway, state, event.unique_id)
        outcome = (
            f"connection {event.child}: rekeyed, CHILD SA #{event.unique_id} replaces "
            f"#{event.rekey_of}"
            if event.rekey_of is not None
            else f"connection {event.child} is up"
        )
        resolve(state.waiters, outcome, ok=True)
    gateway.notifier.notify(STATUS=status_line(gateway))


def refuse_child(gateway: Gateway, unique_id: int, child: str, ike_sa_id: int, reason: str) -> None:
    """A CHILD SA that IKE negotiated and the data plane could not take (the ESP
    engine refused its keys here or in a data-plane worker): left alone it would be
    half up, the peer sending into an SPI we drop. It leaves the data plane and is
    deleted under its IKE SA (RFC 7296 §1.4.1), so the peer drops its side too. The
    connection shows why (`status`, `explain`, a waiting `lockgate up`); one with
    start = "initiate" asks again as after a peer's Delete, with the same growing
    delay (`restart_child`): the next negotiation brings new keys and SPIs, and a
    failure that comes back is retried ever more slowly, not in a loop. A
    remote-access client's IKE SA goes with it: it carries nothing else, and the
    client, told so, dials again while its address returns to the pool."""
    why = f"the data plane refused CHILD SA #{unique_id}: {reason}"
    log.error("connection %s: %s; deleting it", child, why)
    gateway.uninstall(unique_id, why, linger=0.0)
    endpoint, now = gateway.endpoint, time.monotonic()
    state = gateway.connections.get(child)
    if state is None:
        if endpoint is not None:
            with contextlib.suppress(IkeError):  # going meanwhile
                endpoint.delete(ike_sa_id, now, why)
        return
    state.last_error = why
    gateway.diagnosis.record(
        [child],
        Failure(OTHER, why, ("lockgate's log has the data plane's error line",), reason),
    )
    resolve(state.waiters, f"{child}: {why}", ok=False)
    if endpoint is not None:
        with contextlib.suppress(IkeError):  # its IKE SA is going meanwhile
            endpoint.delete_child(unique_id, now, why)
    if state.wanted and state.config.start == "initiate" and not gateway.shutting_down:
        restart_child(gateway, state, unique_id, what="the data plane refused")


def _orphan(gateway: Gateway, event: ChildSaInstalled) -> bool:
    """A CHILD SA of a connection that a reload removed from its peer (or moved to
    another) while a CREATE_CHILD_SA for it was in flight: a rekey of its last SA,
    or a request for a new one. The reload deleted the SAs it saw; the exchange's
    answer brings one more that no connection owns. It is not installed, and is
    deleted under its IKE SA (§1.4.1) so the peer drops its side too. True if so."""
    if event.connection not in gateway.peers:
        return False  # a remote-access client's, or a removed peer's (its IKE SA goes)
    state = gateway.connections.get(event.child)
    if state is not None and state.peer == event.connection:
        return False
    endpoint = gateway.endpoint
    if endpoint is None:
        return True
    origin = "a rekey" if event.rekey_of is not None else "a request"
    log.info("peer %s: CHILD SA #%d from %s of removed connection %s deleted",
             event.connection, event.unique_id, origin, event.child)  # fmt: skip
    with contextlib.suppress(IkeError):  # its IKE SA is going meanwhile
        endpoint.delete_child(
            event.unique_id, time.monotonic(), f"{origin} of a connection removed by a reload"
        )
    return True


def _on_child_deleted(gateway: Gateway, event: ChildSaDeleted) -> None:
    gateway.uninstall(event.unique_id, event.reason)
    state = gateway.connections.get(event.child)
    if state is not None and not gateway.shutting_down:
        gateway.diagnosis.record_child_deleted(event)
    endpoint = gateway.endpoint
    ike = endpoint.ike_sa(event.ike_sa_id) if endpoint is not None else None
    ike_alive = ike is not None and ike.state is not IkeSaState.DELETED
    if state is not None and ike_alive and not gateway.is_up(state.name):
        # Deleted on its own (down, peer's Delete, volume): not lost with its IKE SA.
        state.carried_by = None
        if (
            ike is not None
            and state.wanted
            and event.cause in EXPIRED_CAUSES
            and ike.state is IkeSaState.ESTABLISHED
        ):
            # A hard limit came before the rekey finished (RFC 4301 §4.4.2.1): the
            # connection should stay up, so negotiate a fresh CHILD SA under the
            # same IKE SA, after the events being handled now.
            log.info("connection %s: CHILD SA expired unreplaced; requesting a new one",
                     state.name)  # fmt: skip
            state.requested_at = None
            if gateway.loop is not None:
                gateway.loop.call_soon(gateway.create_child, state, ike)
            else:
                gateway.create_child(state, ike)
        elif (
            ike is not None
            and state.wanted
            and state.config.start == "initiate"
            and event.cause is DeleteCause.PEER_DELETED
            and ike.state is IkeSaState.ESTABLISHED
            and not gateway.shutting_down
        ):
            # The peer ended the CHILD SA alone; an initiate connection comes back.
            restart_child(gateway, state, event.unique_id)
    gateway.notifier.notify(STATUS=status_line(gateway))


def _on_child_failed(gateway: Gateway, event: ChildSaFailed) -> None:
    state = gateway.connections.get(event.child)
    if state is not None:
        log.warning("connection %s: CHILD SA failed: %s", event.child, event.reason)
        state.last_error = event.reason
        gateway.diagnosis.record_child_failed(event, state.config)
        if state.replacing:
            # The peer refused the new selectors: the old CHILD SAs stay up.
            kept = ", ".join(f"#{u}" for u in sorted(state.replacing))
            log.warning("connection %s: keeping CHILD SA(s) %s with the old selectors",
                        event.child, kept)  # fmt: skip
            state.replacing = set()
        resolve(state.waiters, f"{event.child}: {event.reason}", ok=False)
        return
    # The peer asked for selectors that match none of our connections (the core
    # names no CHILD configuration): say which peer, and keep it on the peer so
    # `lockgate status` shows it on each of its connections.
    reason = f"CHILD SA refused: {event.reason}"
    log.warning("peer %s: %s", _peer_label(gateway, event.connection, event.ike_sa_id), reason)
    peer = gateway.peers.get(event.connection)
    if peer is not None:
        peer.last_error = reason
    for other in gateway.connections_of(event.connection):
        gateway.diagnosis.record([other.name], child_failure(event, other.config))


def _peer_at(gateway: Gateway, address: str) -> str:
    """The peer configured at `address` (a failed request the core matched to no
    peer), or "" for none."""
    if not address:
        return ""
    for name, peer in gateway.peers.items():
        if peer.config.remote_address == address:
            return name
    return ""


def _peer_label(gateway: Gateway, peer: str, ike_sa_id: int) -> str:
    """'dc1 (198.51.100.2)': the peer's name and the address its IKE SA talks to."""
    info = gateway.ike_sas.get(ike_sa_id)
    if info is not None:
        return f"{peer} ({info.event.remote[0]})"
    state = gateway.peers.get(peer)
    address = state.config.remote_address if state is not None else None
    return f"{peer} ({address or '%any'})"


def _on_keepalive_due(gateway: Gateway, event: NatKeepaliveDue) -> None:
    if gateway.plane is not None:
        gateway.plane.send_keepalive(event.local, event.remote)


_EVENT_HANDLERS: dict[type[Event], Callable[[Gateway, Any], None]] = {
    IkeSaEstablished: _on_ike_established,
    IkeSaDeleted: _on_ike_deleted,
    IkeSaRekeyed: _on_ike_rekeyed,
    IkeSaAddressChanged: _on_address_changed,
    IkeSaFailed: _on_ike_failed,
    ChildSaInstalled: _on_child_installed,
    ChildSaDeleted: _on_child_deleted,
    ChildSaFailed: _on_child_failed,
    NatKeepaliveDue: _on_keepalive_due,
}

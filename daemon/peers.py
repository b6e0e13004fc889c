"""Each peer and connection the gateway runs: its state, and the policy that decides
when it comes up again.

A peer is a `[peers.NAME]` section (one IKE connection, one IKE SA at a time), a
connection a `[connections.NAME]` under it (one CHILD SA configuration). Their state
here is what the start modes, the retry back-off (`retry_delay`), a dead peer's
dpd_action (`apply_dpd_action`), a CHILD SA the peer deleted (`restart_child`), a
trapped packet (`acquire`) and `lockgate status` decide on; `IkeSaInfo` is what status
shows of an IKE SA.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from daemon.childsa import selector_from_ike
from daemon.control import ControlError
from daemon.packet import flow_of
from ikev2.config import ChildConfig
from ikev2.config import ConnectionConfig as PeerConfig
from ikev2.events import IkeSaDeleted, IkeSaEstablished

if TYPE_CHECKING:
    from daemon.gateway import Gateway

log = logging.getLogger(__name__)

RETRY_DELAYS = (2.0, 4.0, 8.0, 15.0, 30.0)
"""Back-off between attempts of a connection that should be up but failed."""
CHILD_RESTART_DELAYS = (2.0, 5.0, 15.0, 30.0, 60.0, 120.0)
"""Seconds before a start = "initiate" connection asks again for the CHILD SA its peer
deleted, by how many times the peer deleted it within CHILD_RESTART_WINDOW before: a
peer that keeps deleting it is asked ever more slowly, never in a storm."""
CHILD_RESTART_WINDOW = 600.0
"""Seconds a peer's deletion of a connection's CHILD SA counts for the back-off."""


@dataclass(slots=True)
class IkeSaInfo:
    """What `status` shows about an established IKE SA (from its event)."""

    event: IkeSaEstablished
    """The event that announced it (after a rekey: with the new SA's id, SPIs, suite)."""
    established_at: float = field(default_factory=time.monotonic)
    """Monotonic time of establishment (or of the rekey that made it)."""
    rekeyed_from: int | None = None
    """The IKE SA it replaced in a rekey (RFC 7296 §2.18), if any."""


@dataclass
class PeerState:
    """One `[peers.NAME]`: a peer gateway and the connections configured under it."""

    config: PeerConfig
    """What the IKE core runs (named after the `[peers.NAME]` section)."""
    attempts: int = 0
    """Failed attempts in a row (for the back-off)."""
    retry: asyncio.TimerHandle | None = None
    """The scheduled next attempt, if any."""
    last_error: str = ""
    """Why the last attempt failed."""
    ike_waiters: list[asyncio.Future[str]] = field(default_factory=list)
    """`lockgate rekey --ike` calls waiting for the new IKE SA."""


@dataclass
class ConnectionState:
    """One `[connections.NAME]`: a CHILD SA configuration under a peer's IKE SA."""

    name: str
    """The NAME of its `[connections.NAME]` (also the CHILD SA configuration's name)."""
    peer: str
    """The `[peers.NAME]` it belongs to."""
    config: ChildConfig
    """What the IKE core negotiates its CHILD SA with (`ikev2.config.ChildConfig`)."""
    wanted: bool
    """True if it should be up (start = initiate, or `lockgate up`)."""
    last_error: str = ""
    """Why it last failed to come up."""
    requested_at: float | None = None
    """When we last asked for its CHILD SA under an existing IKE SA (not yet there)."""
    waiters: list[asyncio.Future[str]] = field(default_factory=list)
    """`lockgate up` calls waiting for the outcome."""
    carried_by: int | None = None
    """The IKE SA its CHILD SA is (or was, when that IKE SA died) under: a dead peer's
    dpd_action applies to the connections that were up with it."""
    trapped: bool = False
    """Re-armed by dpd_action "trap": like start = "trap", the next matching packet
    initiates it again."""
    peer_deletes: list[float] = field(default_factory=list)
    """When (monotonic) the peer deleted its CHILD SA, within CHILD_RESTART_WINDOW."""
    restart: asyncio.TimerHandle | None = None
    """The scheduled request for the CHILD SA the peer deleted (`restart_child`)."""
    replacing: set[int] = field(default_factory=set)
    """CHILD SAs (unique ids) to delete once a new one of this connection is installed:
    a reload gave it other traffic selectors (`daemon.reload`)."""
    awaiting: set[int] = field(default_factory=set)
    """IKE SAs of its peer that were being set up when a reload added it: they were
    begun without it, so its CHILD SA is requested as soon as one is established."""


PEER_KEYS = (
    "local_addresses",
    "remote_address",
    "local_id",
    "remote_id",
    "auth",
    "psk",
    "ppk",
    "credentials",
    "trust_anchors",
    "ike_port",
    "nat_port",
)
"""Whom a peer's IKE SA talks to and how it authenticates: a change of one of these
cannot be applied to the running IKE SA, which is deleted and set up anew."""
GATEWAY_KEYS = ("dpd_action",)
"""Peer settings the gateway reads when it acts (a dead peer's verdict), not the IKE
SA: a change takes effect without a rekey."""
CHILD_KEYS = ("esp_proposals", "lifetime", "rekey_margin", "life_bytes", "life_packets",
              "replay_window")  # fmt: skip
"""A CHILD SA's own settings: a CHILD rekey (RFC 7296 §2.8) applies them."""


@dataclass(frozen=True, slots=True)
class PeerChange:
    """What a reload must do to a peer whose settings changed (`peer_change`)."""

    renegotiate: bool = False
    """Delete its IKE SAs and start again: its peer, identities or credentials
    (`PEER_KEYS`) changed."""
    rekey_ike: bool = False
    """Rekey its IKE SAs make-before-break (§2.8): an IKE-level setting changed."""
    rekey_children: tuple[str, ...] = ()
    """Rekey these connections' CHILD SAs make-before-break (§2.8): only their own
    settings (`CHILD_KEYS`) changed."""
    added: tuple[str, ...] = ()
    """Connections new under the peer: a CREATE_CHILD_SA under its IKE SA (§1.3.1)
    if their start mode wants them up."""
    removed: tuple[str, ...] = ()
    """Connections gone from the peer: their CHILD SAs are deleted (§1.4.1)."""
    replace_children: tuple[str, ...] = ()
    """Connections whose traffic selectors changed: a new CHILD SA with the new ones
    (a CREATE_CHILD_SA without REKEY_SA, as a rekey keeps the selectors, §2.8), then
    the old one deleted."""
    new_start: tuple[str, ...] = ()
    """Connections whose start mode changed: a trap armed or disarmed, whether they
    should be up; nothing is negotiated for it."""


def peer_change(old: PeerConfig, new: PeerConfig) -> PeerChange:
    """How to apply `new` in place of `old` (the same `[peers.NAME]`) with the least
    disruption: only a change of whom it talks to, or of how it authenticates,
    deletes the IKE SA; connections are added, removed and given new selectors under
    it with CREATE_CHILD_SA and INFORMATIONAL exchanges."""
    if any(getattr(old, key) != getattr(new, key) for key in PEER_KEYS):
        return PeerChange(renegotiate=True)
    old_children = {child.name: child for child in old.children}
    new_children = {child.name: child for child in new.children}
    rekey_children: list[str] = []
    replace_children: list[str] = []
    new_start: list[str] = []
    for name, child in new_children.items():
        before = old_children.get(name)
        if before is None or child == before:
            continue
        if child.start != before.start:
            new_start.append(name)
        own = {key: getattr(child, key) for key in (*CHILD_KEYS, "start")}
        if dataclasses.replace(before, **own) != child:
            replace_children.append(name)  # selectors or mode: whatever a rekey keeps
        elif any(getattr(before, key) != getattr(child, key) for key in CHILD_KEYS):
            rekey_children.append(name)
    gateway_only = {key: getattr(new, key) for key in GATEWAY_KEYS}
    ike_before = dataclasses.replace(old, children=new.children, **gateway_only)
    return PeerChange(
        rekey_ike=ike_before != new,
        rekey_children=tuple(rekey_children),
        added=tuple(name for name in new_children if name not in old_children),
        removed=tuple(name for name in old_children if name not in new_children),
        replace_children=tuple(replace_children),
        new_start=tuple(new_start),
    )


def resolve(waiters: list[asyncio.Future[str]], outcome: str, ok: bool) -> None:
    """Answer every waiting control request with `outcome` (an error unless `ok`)."""
    for waiter in waiters:
        if not waiter.done():
            if ok:
                waiter.set_result(outcome)
            else:
                waiter.set_exception(ControlError(outcome))
    waiters.clear()


def retry_delay(attempts: int) -> float:
    """Seconds before the next attempt after `attempts` failed ones in a row."""
    return RETRY_DELAYS[min(attempts, len(RETRY_DELAYS) - 1)]


def child_restart_delay(deletes: int) -> float:
    """Seconds before asking again for a CHILD SA the peer deleted, after `deletes`
    earlier deletions by it within CHILD_RESTART_WINDOW."""
    return CHILD_RESTART_DELAYS[min(deletes, len(CHILD_RESTART_DELAYS) - 1)]


def restart_child(
    gateway: Gateway, state: ConnectionState, unique_id: int, what: str = "the peer deleted"
) -> float | None:
    """The peer deleted the CHILD SA of a start = "initiate" connection and kept the
    IKE SA (strongSwan's `swanctl --terminate --child`): the connection should be up,
    so ask for a new CHILD SA under that IKE SA (RFC 7296 §1.3.1) after a delay that
    grows while the peer keeps deleting it, as strongSwan's close_action = start does.
    `what` names the end for the log (the data plane's refusal comes here too).
    Returns the delay (None without an event loop to wait on)."""
    now = time.monotonic()
    recent = [t for t in state.peer_deletes if now - t < CHILD_RESTART_WINDOW]
    delay = child_restart_delay(len(recent))
    state.peer_deletes = [*recent, now]
    if state.restart is not None:
        state.restart.cancel()
        state.restart = None
    log.info(
        'connection %s: %s CHILD SA #%d; start = "initiate": requesting a new '
        "one in %.0f s (deleted %d time(s) in the last %.0f min)",
        state.name,
        what,
        unique_id,
        delay,
        len(state.peer_deletes),
        CHILD_RESTART_WINDOW / 60,
    )
    if gateway.loop is None:
        return None
    state.restart = gateway.loop.call_later(delay, _restart_now, gateway, state)
    return delay


def _restart_now(gateway: Gateway, state: ConnectionState) -> None:
    """`restart_child`'s request, if the connection still wants it: not meanwhile
    taken down, removed by a reload, up again (the peer initiated it) or without its
    IKE SA (then the peer's retries and dpd_action decide)."""
    state.restart = None
    if (
        gateway.shutting_down
        or gateway.connections.get(state.name) is not state
        or not state.wanted
        or gateway.is_up(state.name)
    ):
        return
    sa = gateway.established_ike_sa(state.peer)
    if sa is None:
        log.info("connection %s: its IKE SA is gone; not requesting the CHILD SA", state.name)
        return
    state.requested_at = None
    gateway.create_child(state, sa)


def apply_dpd_action(gateway: Gateway, peer: PeerState, event: IkeSaDeleted) -> None:
    """The peer stopped answering liveness checks (RFC 7296 §2.4): do what its
    connections' dpd_action says with those that were up under the dead IKE SA."""
    action = peer.config.dpd_action
    name = peer.config.name
    lost = [c for c in gateway.connections_of(name) if c.carried_by == event.ike_sa_id or c.wanted]
    peer.last_error = event.reason
    for state in lost:
        state.carried_by = None
        state.last_error = event.reason
    names = ", ".join(c.name for c in lost) or "none"
    if action == "restart" and peer.config.remote_address is not None:
        log.info("peer %s is dead; dpd_action restart: initiating again (%s)", name, names)
        for state in lost:
            state.wanted = True
        # The verdict took the liveness checks' time already (after a restart hint,
        # 3.5 s): the first attempt goes at once, the back-off applies if it fails.
        peer.attempts = 0
        gateway.schedule_retry(peer, at_once=True)
    elif action == "trap":
        log.info("peer %s is dead; dpd_action trap: traffic restarts %s", name, names)
        for state in lost:
            state.wanted = False
            state.trapped = True
            gateway.arm_trap(state.config)
    else:
        if action == "restart":
            log.warning("peer %s is dead and %%any: it must initiate again", name)
        else:
            log.info("peer %s is dead; dpd_action clear: %s stay down", name, names)
        for state in lost:
            state.wanted = False


def acquire(gateway: Gateway, packet: bytes) -> None:
    """An outbound packet that no SA's policy covers: if it matches a connection with
    start = "trap" (or re-armed by dpd_action "trap"), bring that connection up."""
    flow = flow_of(packet)
    if flow is None:
        return
    version, src, dst, proto, sport, dport = flow
    for state in gateway.connections.values():
        child = state.config
        if child.start != "trap" and not state.trapped:
            continue
        local = tuple(selector_from_ike(ts) for ts in child.local_ts)
        remote = tuple(selector_from_ike(ts) for ts in child.remote_ts)
        if any(ts.matches(version, src, proto, sport) for ts in local) and any(
            ts.matches(version, dst, proto, dport) for ts in remote
        ):
            peer = gateway.peers.get(state.peer)
            if peer is None or peer.retry is not None:
                return
            sa = gateway.established_ike_sa(state.peer)
            if sa is not None:
                # The peer's IKE SA exists (for another connection): add ours to it.
                state.wanted = True
                gateway.create_child(state, sa)
            elif not gateway.ike_sa_count(state.peer):
                log.info("connection %s: outbound traffic triggers it", state.name)
                state.wanted = True
                gateway.initiate(peer)
            else:
                # Being set up: ours comes along, or is asked for once it is up.
                if not state.wanted:
                    log.info("connection %s: outbound traffic triggers it", state.name)
                    state.wanted = True
                if not state.awaiting:
                    await_ike_sa(gateway, state)
            return


def await_ike_sa(gateway: Gateway, state: ConnectionState) -> bool:
    """When the peer has IKE SAs being set up (IKE_SA_INIT or IKE_AUTH), see that
    `state`'s CHILD SA comes with the first one established. They began with the
    CHILD SAs their configuration starts with (`IkeSa.children_requested`); any other
    is requested under the first to come up (`ConnectionState.awaiting`, RFC 7296
    §1.3.1) rather than at the next retry. False if none is being set up."""
    endpoint = gateway.endpoint
    setting_up = endpoint.ike_sas_of(state.peer) if endpoint is not None else []
    if not setting_up:
        return False
    if any(state.name in ike.children_requested() for ike in setting_up):
        return True  # it comes along
    state.awaiting = {ike.ike_sa_id for ike in setting_up}
    log.info("connection %s: requested once peer %s's IKE SA %s is up", state.name,
             state.peer, " or ".join(f"#{ike.ike_sa_id}" for ike in setting_up))  # fmt: skip
    return True

"""Handing an IKE SA over to the one its rekey created (RFC 7296 §1.3.2, §2.8, §2.18).

The exchanges of an IKE rekey are the tasks in `ikev2.tasks.ike_rekey`; this module
is what happens to the two (or, after crossing rekeys, three) IKE SAs afterwards.
The new SA stays silent until it takes over; then the CHILD SAs and our queued
CHILD SA exchanges move to it, and the old SA turns REKEYED and waits for the
Delete that ends it quietly. With crossing rekeys (§2.8.2) the new SA whose exchange
had the lowest nonce is redundant: its creator deletes it.

The tasks reach these steps through the SA (`TaskSa.hand_over`, `ike_rekeyed`,
`ike_rekey_failed`); `ikev2.sa` calls them directly. They see the SAs through
`HandoverSa`, so that this module needs no import of `ikev2.sa`.
"""

from __future__ import annotations

import logging
from typing import Protocol, Self

from ikev2.constants import ExchangeType
from ikev2.events import REASON_REKEYED, IkeSaRekeyed
from ikev2.sa_types import ChildSa, IkeSaState, PeerIkeRekey, ResourceRetry
from ikev2.tasks.base import Exchange, TaskSa
from ikev2.tasks.child_delete import ChildDelete
from ikev2.tasks.child_rekey import CreateChild
from ikev2.tasks.followup_ke import FollowupKe
from ikev2.tasks.ike_delete import IkeDelete
from ikev2.tasks.ike_rekey import CHILD_TASKS

log = logging.getLogger(__name__)

REKEYED_LINGER = 30.0
"""Least seconds a replaced IKE SA waits for the Delete that ends it."""


class HandoverSa(TaskSa, Protocol):
    """The IKE SA as the handover sees it: a task's view, and what a handover changes."""

    state: IkeSaState
    children: dict[int, ChildSa]
    silent: bool
    rekeyed_into: Self | None
    rekeyed_from: Self | None
    peer_ike_rekey: PeerIkeRekey[Self] | None
    unconfirmed_until: float | None
    expire_at: float | None
    ike_rekey_at: float | None
    keepalive_at: float | None
    resource_retries: list[ResourceRetry]

    def changed(self) -> None: ...
    def send_next(self, now: float) -> None: ...
    def queue_exchange(self, exchange: Exchange, now: float) -> None: ...


def hand_over(old: HandoverSa, new: HandoverSa) -> None:
    """`new` replaces this IKE SA (§2.18): the CHILD SAs move, this one turns REKEYED.

    This SA then only waits for the Delete that ends it quietly (ours if we
    started the surviving rekey, else the peer's).
    """
    if old.rekeyed_into is not None:
        return
    while new.rekeyed_into is not None:
        # `new` was itself rekeyed before this SA handed over (the peer rekeyed the
        # new IKE SA while our Delete of this one was still on its way): the CHILD
        # SAs go to the newest, or they would be stranded in a REKEYED SA.
        new = new.rekeyed_into
    new.silent = False
    new.rekeyed_from = None
    new.children, old.children = old.children, {}
    # Per-resource CHILD SAs the peer refused for now (TEMPORARY_FAILURE, as during
    # this very rekey) are asked for again on the new IKE SA.
    new.resource_retries += old.resource_retries
    old.resource_retries = []
    # Our CHILD SA exchanges still queued here (a Delete after a CHILD rekey, a
    # rekey) go out on the new IKE SA; anything else about this SA is moot.
    carried = [
        exchange
        for exchange in old.tm.pending
        if any(task.name in CHILD_TASKS for task in exchange.tasks)
        # The peer keeps an IKE_FOLLOWUP_KE's state with the old IKE SA (RFC 9370
        # §2.2.4): that CREATE_CHILD_SA is over; the CHILD SA's rekey comes again.
        and not any(isinstance(task, FollowupKe) for task in exchange.tasks)
    ]
    deletes = {
        id(task.child)
        for exchange in carried
        for task in exchange.tasks
        if isinstance(task, ChildDelete)
    }
    for child in new.children.values():
        child.rekeying = False
        if child.deleting and id(child) not in deletes:
            # Our Delete for it was outstanding here, or dropped from this SA's
            # queue by a Delete of the IKE SA that this rekey overtook: the peer
            # may still hold it, so it goes again on the new IKE SA (§1.4.1; a
            # peer that no longer has it answers with an empty Delete).
            carried.append(
                Exchange(
                    ExchangeType.INFORMATIONAL,
                    [ChildDelete(child, child.delete_reason or REASON_REKEYED)],
                )
            )
    for exchange in carried:
        for task in exchange.tasks:
            if isinstance(task, CreateChild) and task.old is not None:
                task.old.rekeying = True
    old.rekeyed_into = new
    old.peer_ike_rekey = None
    wind_down(old)
    if not new.initiator:
        new.unconfirmed_until = old.now + old.tm.policy.give_up_after
    log.info("%s: IKE SA replaced by %s", old.name, new.name)
    old.emit(
        IkeSaRekeyed(
            old.config.name,
            old.ike_sa_id,
            new.ike_sa_id,
            int.from_bytes(new.spi_i, "big"),
            int.from_bytes(new.spi_r, "big"),
            new.suite.name if new.suite is not None else "",
        )
    )
    for exchange in carried:
        new.tm.queue(exchange)
    new.changed()  # its CHILD SAs (and their timers) moved to it
    new.send_next(old.now)


def wind_down(sa: HandoverSa) -> None:
    """No more exchanges of our own or timers: wait for the Delete (or its backstop)."""
    sa.state = IkeSaState.REKEYED
    sa.tm.pending.clear()
    sa.ike_rekey_at = sa.keepalive_at = None
    # The Delete normally ends this SA at once; this is only a backstop. It stays at
    # least as long as the peer may retransmit a request that this SA answered (a
    # lost rekey response is resent from its cache), judged by our own policy.
    sa.expire_at = sa.now + max(REKEYED_LINGER, sa.tm.policy.give_up_after)
    sa.changed()


def ike_rekeyed(sa: HandoverSa, new: HandoverSa, lowest_nonce: bytes) -> None:
    """Our IKE rekey created `new`; settle a collision with the peer's (§2.8.2).

    With no crossing rekey, or when the peer's exchange had the lower nonce, `new`
    takes over and we delete this SA. Otherwise `new` is redundant: we created it,
    so we delete it; the peer's new SA takes over and the peer deletes this one.
    """
    theirs = sa.peer_ike_rekey
    if theirs is not None and lowest_nonce < theirs.lowest_nonce:
        # bytes compare octet by octet, a prefix being lower: §2.8.1's "lowest".
        log.info(
            "%s: simultaneous IKE rekeying: ours (%s) has the lowest nonce and goes",
            sa.name,
            new.name,
        )
        hand_over(sa, theirs.new_sa)
        lose_collision(new)
        new.queue_exchange(
            Exchange(
                ExchangeType.INFORMATIONAL,
                [IkeDelete("redundant after simultaneous IKE rekeying")],
            ),
            sa.now,
        )
        return
    hand_over(sa, new)
    if theirs is not None:
        log.info(
            "%s: simultaneous IKE rekeying: the peer's %s has the lowest nonce",
            sa.name,
            theirs.new_sa.name,
        )
        lose_collision(theirs.new_sa)  # its creator, the peer, deletes it
    retire(sa)


def ike_rekey_failed(sa: HandoverSa) -> bool:
    """Our IKE rekey failed; True if the peer's crossing rekey took over instead."""
    theirs = sa.peer_ike_rekey
    if theirs is None:
        return False
    # §2.8.2: the peer did not see the collision (TEMPORARY_FAILURE) or our request
    # failed otherwise: the SA its exchange created is the only new one.
    hand_over(sa, theirs.new_sa)
    return True


def lose_collision(sa: HandoverSa) -> None:
    """This new IKE SA is redundant after crossing rekeys: silent until deleted."""
    sa.silent = True
    sa.rekeyed_from = None
    wind_down(sa)


def take_over_from_parent(sa: HandoverSa) -> None:
    """The peer uses this candidate: its rekey won, so it replaces the old SA."""
    parent = sa.rekeyed_from
    if parent is not None and sa.silent and sa.state is IkeSaState.ESTABLISHED:
        hand_over(parent, sa)


def retire(sa: HandoverSa) -> None:
    """Delete this replaced IKE SA (we started the rekey, so the Delete is ours, §2.8)."""
    sa.tm.queue(Exchange(ExchangeType.INFORMATIONAL, [IkeDelete("rekeyed")]))
    sa.send_next(sa.now)


def deleted_by_peer(sa: HandoverSa) -> None:
    """The peer deletes this IKE SA: settle the rekeys that were waiting for that."""
    if sa.peer_ike_rekey is not None and sa.rekeyed_into is None:
        # §2.8.2: the peer deletes the old SA, so its crossing rekey won (or it never
        # saw ours): the SA that rekey created takes over.
        hand_over(sa, sa.peer_ike_rekey.new_sa)
    if sa.rekeyed_into is not None:
        # The peer deletes the SA it replaced: it surely has the new one.
        sa.rekeyed_into.unconfirmed_until = None
        sa.rekeyed_into.send_next(sa.now)

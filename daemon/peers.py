"""What the gateway knows about each peer and connection it runs.

A peer is a `[peers.NAME]` section (one IKE connection, one IKE SA at a time), a
connection a `[connections.NAME]` under it (one CHILD SA configuration). Their state
here is what the start modes, the retry back-off, dpd_action and `lockgate
status` decide on; `IkeSaInfo` is what status shows of an IKE SA.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from daemon.control import ControlError
from ikev2.config import ChildConfig
from ikev2.config import ConnectionConfig as PeerConfig
from ikev2.events import IkeSaEstablished


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


def resolve(waiters: list[asyncio.Future[str]], outcome: str, ok: bool) -> None:
    """Answer every waiting control request with `outcome` (an error unless `ok`)."""
    for waiter in waiters:
        if not waiter.done():
            if ok:
                waiter.set_result(outcome)
            else:
                waiter.set_exception(ControlError(outcome))
    waiters.clear()

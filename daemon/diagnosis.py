"""`lockgate explain`: why a connection is not up, in words.

The event handlers (`daemon.events`) hand every failure and every unplanned end of an
SA to `Diagnosis.record_*`, which classifies it (a `Failure` of one of `KINDS`) with
what an operator needs to act: both sides' proposals and the closest pair, both
sides' subnets, the check that failed, the ports to open. `explain` turns the last
failure of a connection and what is up now into a document (`text` for people, `kind`
for code); the CLI and the web console show the same text.

The core reports failures as `IkeSaFailed` / `ChildSaFailed` with a reason in words and
the notify type involved (RFC 7296 §3.10.1); the classification reads the notify type
first and the core's wording only where the notify does not tell (a responder's own
NO_PROPOSAL_CHOSEN lists the peer's offer only in its text).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ikev2.constants import NotifyType
from ikev2.events import (
    REASON_PEER_DEAD,
    ChildSaDeleted,
    ChildSaFailed,
    DeleteCause,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
)
from ikev2.ts import format_selectors

if TYPE_CHECKING:
    from daemon.gateway import Gateway
    from ikev2.config import ChildConfig
    from ikev2.config import ConnectionConfig as IkePeerConfig

PROPOSAL_MISMATCH = "proposal_mismatch"
AUTHENTICATION = "authentication"
CERTIFICATE = "certificate"
TS_MISMATCH = "ts_mismatch"
NO_ANSWER = "no_answer"
DEAD_PEER = "dead_peer"
PEER_DELETED = "peer_deleted"
EXPIRED = "expired"
OTHER = "other"
KINDS = (
    PROPOSAL_MISMATCH,
    AUTHENTICATION,
    CERTIFICATE,
    TS_MISMATCH,
    NO_ANSWER,
    DEAD_PEER,
    PEER_DELETED,
    EXPIRED,
    OTHER,
)
"""Every `Failure.kind` (also the `reason` label of lockgate_ike_failures_total)."""

# The core's wording (ikev2.proposals.mismatch_description, ikev2.tasks.child_create,
# ikev2.task_manager.GiveUp), read where no notify type tells the same.
_PEER_PROPOSED = re.compile(r"peer proposed (?:only )?(?P<theirs>.*?); we accept (?P<ours>.*)$")
_PEER_TS = re.compile(r"peer proposed traffic selectors (?P<theirs>.*?) === (?P<ours>.*?), which")
_NO_ANSWER = re.compile(r"did not answer request (?P<mid>\d+) after (?P<tries>\d+) retransmissions")
# Case matters: "CA" is in "AUTHENTICATION_FAILED" too.
_CERT_WORDS = ("certificate", "signature", " CA", "keyCertSign", "trust", "revoked", "valid")


@dataclass(frozen=True)
class Failure:
    """The last thing that kept (or took) a connection down."""

    kind: str
    """One of `KINDS`."""
    summary: str
    """One sentence: what happened."""
    details: tuple[str, ...] = ()
    """What to compare or check: offers, subnets, ports, the failed check."""
    reason: str = ""
    """The IKE core's own words."""
    at: float = field(default_factory=time.time)
    """When (wall clock, seconds since the epoch)."""


@dataclass
class Diagnosis:
    """The last failure of each connection, and what NAT detection saw per peer."""

    failures: dict[str, Failure] = field(default_factory=dict)
    """Connection name -> its last failure."""
    nat: dict[str, str] = field(default_factory=dict)
    """Peer name -> what NAT detection found at its last IKE SA ("" for none)."""

    def record(self, connections: Sequence[str], failure: Failure) -> None:
        for name in connections:
            self.failures[name] = failure

    def record_ike_failed(
        self, event: IkeSaFailed, peer: IkePeerConfig | None, connections: Sequence[str]
    ) -> Failure:
        failure = ike_failure(event, peer)
        self.record(connections, failure)
        return failure

    def record_child_failed(self, event: ChildSaFailed, child: ChildConfig | None) -> Failure:
        failure = child_failure(event, child)
        self.record([event.child], failure)
        return failure

    def record_ike_deleted(
        self, event: IkeSaDeleted, peer: IkePeerConfig | None, connections: Sequence[str]
    ) -> Failure | None:
        failure = ike_deleted(event, peer)
        if failure is not None:
            self.record(connections, failure)
        return failure

    def record_child_deleted(self, event: ChildSaDeleted) -> Failure | None:
        failure = child_deleted(event)
        if failure is not None:
            self.record([event.child], failure)
        return failure

    def record_established(self, event: IkeSaEstablished) -> None:
        self.nat[event.connection] = nat_text(event)


def nat_text(event: IkeSaEstablished) -> str:
    """What NAT detection (RFC 7296 §2.23) found, in words; "" for no NAT."""
    where = [
        side
        for side, seen in (
            ("in front of us", event.nat_local),
            ("in front of the peer", event.nat_remote),
        )
        if seen
    ]
    if not where:
        return ""
    text = f"NAT seen {' and '.join(where)}: IKE moved to UDP {event.local[1]}"
    return text + (
        f", ESP travels in UDP ({event.udp_encap_reason})" if event.udp_encap_reason else ""
    )


# ---- classification ----------------------------------------------------------------


def _notify_name(notify: int | None) -> str:
    if notify is None:
        return ""
    try:
        return NotifyType(notify).name
    except ValueError:
        return f"notify type {notify}"


def ike_failure(event: IkeSaFailed, peer: IkePeerConfig | None) -> Failure:
    """Classify an IKE SA that failed before it was established."""
    reason, notify = event.reason, event.notify
    where = _peer_where(peer, event.remote)
    if notify == NotifyType.NO_PROPOSAL_CHOSEN or _PEER_PROPOSED.search(reason):
        ours = peer.ike_proposals if peer is not None else ()
        return _proposal_failure("IKE", ours, reason, where)
    if notify == NotifyType.AUTHENTICATION_FAILED or _is_auth(reason):
        return _auth_failure(reason, peer, where)
    if notify == NotifyType.TS_UNACCEPTABLE:
        return Failure(TS_MISMATCH, f"{where} refused our traffic selectors", (), reason)
    answer = _NO_ANSWER.search(reason)
    if answer is not None or "did not complete IKE_AUTH" in reason:
        return _no_answer(reason, answer, peer, where)
    if notify == NotifyType.INVALID_KE_PAYLOAD:
        return _proposal_failure("IKE", peer.ike_proposals if peer else (), reason, where)
    named = _notify_name(notify)
    return Failure(
        OTHER, f"IKE SA with {where} failed" + (f" ({named})" if named else ""), (), reason
    )


def child_failure(event: ChildSaFailed, child: ChildConfig | None) -> Failure:
    """Classify a CHILD SA that could not be set up."""
    reason, notify = event.reason, event.notify
    if notify == NotifyType.NO_PROPOSAL_CHOSEN or _PEER_PROPOSED.search(reason):
        ours = child.esp_proposals if child is not None else ()
        return _proposal_failure("ESP", ours, reason, f"peer {event.connection}")
    if notify == NotifyType.TS_UNACCEPTABLE or "traffic selectors" in reason:
        return _ts_failure(reason, child, event.connection)
    named = _notify_name(notify)
    return Failure(OTHER, "the CHILD SA was refused" + (f" ({named})" if named else ""), (), reason)


def ike_deleted(event: IkeSaDeleted, peer: IkePeerConfig | None) -> Failure | None:
    """An established IKE SA's unplanned end (None: deleted on request or replaced)."""
    where = _peer_where(peer, None)
    if event.cause is DeleteCause.DEAD_PEER or event.reason.startswith(REASON_PEER_DEAD):
        details = [
            "the peer answered neither our requests nor liveness checks (DPD, RFC 7296 §2.4)",
            "is the peer up, and is its path (UDP 500/4500, a NAT's mapping) still open?",
        ]
        if peer is not None:
            details.append(f"dpd_action = {peer.dpd_action!r} decides what happens next")
        return Failure(
            DEAD_PEER,
            f"{where} stopped answering: the IKE SA was declared dead",
            tuple(details),
            event.reason,
        )
    if event.cause is DeleteCause.PEER_DELETED:
        return Failure(
            PEER_DELETED,
            f"{where} deleted the IKE SA",
            ("the peer's operator or configuration ended it; look at the peer's log",),
            event.reason,
        )
    if event.cause is DeleteCause.EXPIRED:
        return Failure(
            EXPIRED,
            "the IKE SA's lifetime expired before a rekey replaced it",
            ("a rekey failed or was not answered in time; look for a failure before",),
            event.reason,
        )
    if event.cause is DeleteCause.ERROR:
        return Failure(OTHER, f"the IKE SA with {where} failed", (), event.reason)
    return None


def child_deleted(event: ChildSaDeleted) -> Failure | None:
    """A CHILD SA's unplanned end (None: rekeyed, with its IKE SA, or on request)."""
    if event.cause is DeleteCause.PEER_DELETED:
        return Failure(
            PEER_DELETED,
            f"peer {event.connection} deleted CHILD SA #{event.unique_id}",
            ("the peer's operator or configuration ended it; look at the peer's log",),
            event.reason,
        )
    if event.cause in (DeleteCause.EXPIRED, DeleteCause.LIMIT_REACHED):
        what = "lifetime" if event.cause is DeleteCause.EXPIRED else "byte or packet limit"
        return Failure(
            EXPIRED,
            f"CHILD SA #{event.unique_id} reached its hard {what} before a rekey replaced it",
            ("a rekey failed or was not answered in time; look for a failure before",),
            event.reason,
        )
    return None


def _peer_where(peer: IkePeerConfig | None, remote: tuple[str, int] | None) -> str:
    if peer is None:
        return f"the peer at {remote[0]}" if remote and remote[0] else "the peer"
    return f"peer {peer.name} ({peer.remote_address or (remote[0] if remote else '%any')})"


def _is_auth(reason: str) -> bool:
    words = ("AUTH", "pre-shared key", "identified as", "certificate", "signature", "peer ID",
             _PPK_WORDS)  # fmt: skip
    return any(word in reason for word in words)


_PPK_WORDS = "post-quantum preshared key"
"""How the core's reasons name a PPK (RFC 8784) problem."""


def _auth_failure(reason: str, peer: IkePeerConfig | None, where: str) -> Failure:
    method = peer.auth if peer is not None else "psk"
    if _PPK_WORDS in reason:
        return Failure(
            AUTHENTICATION,
            f"{where} and we disagree on the post-quantum preshared key (RFC 8784)",
            (
                "set the same ppk_id and the same PPK in ppk_file on both sides, or "
                "ppk_required = false on the side whose peer has no PPK",
            ),
            reason,
        )
    if "peer rejected our authentication" in reason or "reported AUTHENTICATION_FAILED" in reason:
        # We initiated and the peer refused what we sent (RFC 7296 §2.21.2).
        if method == "psk":
            return Failure(
                AUTHENTICATION,
                f"{where} refused our authentication: wrong pre-shared key (or identity)",
                ("set the same psk on both sides, and the identities each side expects",),
                reason,
            )
        return Failure(
            CERTIFICATE,
            f"{where} refused our certificate",
            (
                "the peer does not trust our CA, or our identity is not in our certificate, "
                "or it expired; the peer's log names the check",
            ),
            reason,
        )
    if "authenticates with" in reason:
        return Failure(
            AUTHENTICATION,
            f"the two sides use different authentication methods: {reason}",
            ("set auth the same on both sides: a pre-shared key or certificates",),
            reason,
        )
    if "identified as" in reason or "peer ID" in reason:
        return Failure(
            AUTHENTICATION, f"{where} used an identity we do not expect", (reason,), reason
        )
    if "pre-shared key" in reason:
        return Failure(
            AUTHENTICATION,
            f"wrong pre-shared key: {where}'s AUTH does not match ours",
            ("set the same psk on both sides",),
            reason,
        )
    if method == "pubkey" or any(word in reason for word in _CERT_WORDS):
        return Failure(
            CERTIFICATE,
            f"certificate check failed: {reason}",
            (
                "the check is named above: trust anchor (ca), validity dates, key usage, "
                "or the identity in the certificate",
            ),
            reason,
        )
    return Failure(AUTHENTICATION, f"authentication with {where} failed", (), reason)


def _no_answer(
    reason: str, answer: re.Match[str] | None, peer: IkePeerConfig | None, where: str
) -> Failure:
    port = peer.ike_port if peer is not None else 500
    nat_port = peer.nat_port if peer is not None else 4500
    if answer is not None and answer.group("mid") == "0":
        return Failure(
            NO_ANSWER,
            f"no answer from {where} to IKE_SA_INIT",
            (
                f"is UDP {port} (and {nat_port}) open between the gateways?",
                "is the peer's IKE daemon running, and configured for our address?",
            ),
            reason,
        )
    return Failure(
        NO_ANSWER,
        f"{where} answered IKE_SA_INIT but not IKE_AUTH",
        (
            f"is UDP {nat_port} open (IKE moves there behind a NAT)?",
            "are IP fragments dropped on the way (IKE fragmentation helps)?",
            "does the peer know our identity and credentials?",
        ),
        reason,
    )


def _proposal_failure(
    kind: str,
    ours: Sequence[str],
    reason: str,
    where: str,
) -> Failure:
    match = _PEER_PROPOSED.search(reason)
    details = [f"we offer {kind}: {', '.join(ours) or 'nothing'}"]
    if match is None:
        # We initiated: the peer refused every offer and says nothing of its own.
        details.append(
            f"the peer offers: not known here (it refused ours); compare its {kind} proposals"
        )
        return Failure(
            PROPOSAL_MISMATCH,
            f"{where} accepts none of our {kind} proposals",
            tuple(details),
            reason,
        )
    theirs = [t for t in match.group("theirs").split(", ") if t and t != "nothing"]
    # Our offer as the core compared it (for IKE_AUTH's CHILD SA, without key
    # exchange transforms, RFC 7296 §1.2).
    ours = [t for t in match.group("ours").split(", ") if t and t != "nothing"]
    details = [f"we offer {kind}: {', '.join(ours) or 'nothing'}"]
    details.append(f"the peer offers {kind}: {', '.join(theirs) or 'nothing'}")
    closest = closest_pair(ours, theirs)
    if closest is not None:
        mine, peers, differ = closest
        details.append(f"closest pair: ours {mine} and theirs {peers} ({differ})")
    return Failure(
        PROPOSAL_MISMATCH, f"no common {kind} proposal with {where}", tuple(details), reason
    )


def closest_pair(ours: Sequence[str], theirs: Sequence[str]) -> tuple[str, str, str] | None:
    """The pair of our proposals and the peer's (strongSwan syntax) that share the
    most algorithms, and how they differ in words ("ours has x25519, theirs has
    modp2048"). Compared word by word, not parsed: a peer's offer is often of
    algorithms we do not implement (sha1, modp1024), and those are the ones to name.
    None when a side offers nothing."""
    best: tuple[int, str, str, str] | None = None
    for mine in ours:
        for peer in theirs:
            a, b = mine.split("-"), peer.split("-")
            only_a = [w for w in a if w not in b]
            only_b = [w for w in b if w not in a]
            score = len(a) - len(only_a)
            if best is None or score > best[0]:
                parts = []
                if only_a:
                    parts.append(f"ours has {', '.join(only_a)}")
                if only_b:
                    parts.append(f"theirs has {', '.join(only_b)}")
                best = (score, mine, peer, "; ".join(parts) or "nothing but their order")
    return None if best is None else best[1:]


def _ts_failure(reason: str, child: ChildConfig | None, peer: str) -> Failure:
    details = []
    if child is not None:
        details.append(
            f"ours: local {format_selectors(child.local_ts)}, "
            f"remote {format_selectors(child.remote_ts)}"
        )
    match = _PEER_TS.search(reason)
    if match is not None:
        # The peer's TSi is its own side, TSr ours (RFC 7296 §2.9).
        details.append(
            f"the peer's: its side {match.group('theirs')}, our side {match.group('ours')}"
        )
    else:
        details.append("the peer's: not known here (it refused ours); compare its subnets")
    details.append("each side's local subnets must be the other's remote subnets")
    return Failure(
        TS_MISMATCH, f"traffic selectors do not match peer {peer}'s", tuple(details), reason
    )


# ---- the answer ------------------------------------------------------------------


def explain(gateway: Gateway, name: str) -> dict[str, Any]:
    """`lockgate explain NAME`: the connection's state, its last failure, and `text`,
    the answer in words (what the CLI prints and the console shows)."""
    state = gateway.connections[name]
    peer = gateway.peers.get(state.peer)
    diagnosis = gateway.diagnosis
    failure = diagnosis.failures.get(name)
    nat = diagnosis.nat.get(state.peer, "")
    up = gateway.is_up(name)
    lines: list[str] = []
    if up:
        entries = gateway.installed(name)
        newest = entries[-1]
        lines.append(
            f"connection {name} is up: CHILD SA #{newest.unique_id} "
            f"{' '.join(map(str, newest.local_ts))} === {' '.join(map(str, newest.remote_ts))}, "
            f"{newest.inbound.suite.name}, to {newest.remote[0]}"
        )
        if nat:
            lines.append(f"  {nat}")
        if failure is not None:
            lines.append(f"  earlier ({_when(failure.at)}): {failure.summary}")
    elif failure is None:
        lines.append(f"connection {name} is not up, and nothing has failed yet")
        if state.config.start == "wait" or (
            peer is not None and peer.config.remote_address is None
        ):
            lines.append("  it waits for the peer to initiate; is the peer configured to?")
        elif not state.wanted:
            lines.append(
                f"  it is not wanted: start = {state.config.start!r}; `lockgate up {name}`"
            )
        else:
            lines.append("  it is being set up; ask again in a few seconds")
    else:
        lines.append(f"connection {name} is not up: {failure.summary} ({_when(failure.at)})")
        lines.extend(f"  {line}" for line in failure.details)
        if failure.reason and failure.reason not in failure.summary:
            lines.append(f"  the IKE daemon said: {failure.reason}")
        if failure.kind == PEER_DELETED and state.restart is not None:
            lines.append(
                '  start = "initiate": a new CHILD SA is requested shortly (later each time '
                "the peer deletes it again)"
            )
        if nat:
            lines.append(f"  {nat}")
    return {
        "connection": name,
        "peer": state.peer,
        "up": up,
        "kind": failure.kind if failure is not None else None,
        "summary": failure.summary if failure is not None else None,
        "details": list(failure.details) if failure is not None else [],
        "reason": failure.reason if failure is not None else None,
        "at": failure.at if failure is not None else None,
        "nat": nat,
        "text": "\n".join(lines) + "\n",
    }


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))

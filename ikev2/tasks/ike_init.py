"""IKE_SA_INIT: proposals, key exchange, nonces and the IKE SA's keys (RFC 7296 §1.2).

The initiator offers its configured proposals with a KE payload for the group of the
first one; a responder that prefers another offered group answers INVALID_KE_PAYLOAD
and the initiator retries with it (§1.2). A COOKIE answer (§2.6) is echoed likewise.
Both sides then compute SKEYSEED and the SK_* keys (§2.14). A proposal with additional
key exchanges (RFC 9370) needs INTERMEDIATE_EXCHANGE_SUPPORTED from both sides (RFC
9242 §2); the initiator then queues one IKE_INTERMEDIATE per round before IKE_AUTH.

A lockgate whose data plane can take them also sends the `LOCKGATE_PARTIAL_CSUM_VID`
Vendor ID (§3.12). When both IKE_SA_INIT messages carry it, the IKE SA's CHILD SAs
carry the TCP segments the kernel left unchecksummed (those cut from its TSO
super-packets, and single ones) with only their pseudo-header sum in the checksum
field, marked inside ESP (`esp.sa.NH_PARTIAL_CSUM`), and the receiving kernel
completes them. Other peers never send it and get full
checksums. As with the ESP-in-UDP Vendor ID, each side's AUTH signs its IKE_SA_INIT
message (§2.15), so the agreement cannot be added or removed on the way unnoticed.
"""

from __future__ import annotations

import hashlib
import logging

from ikev2.certs import parse_signature_hashes, signature_hashes_notify
from ikev2.codec import KeyExchange as KePayload
from ikev2.codec import (
    Message,
    Nonce,
    Notify,
    Payload,
    Proposal,
    SecurityAssociation,
    VendorId,
)
from ikev2.constants import ExchangeType, NotifyType, TransformType
from ikev2.crypto.dh import GROUPS
from ikev2.crypto.keys import derive_ike_keys, skeyseed
from ikev2.crypto.registry import ike_suite
from ikev2.errors import (
    AuthenticationFailed,
    IkeError,
    InvalidKePayload,
    InvalidSyntax,
    NoProposalChosen,
    PeerErrorNotify,
)
from ikev2.proposals import (
    additional_key_exchanges,
    check_chosen_proposal,
    describe_proposal,
    dh_group,
    has_additional_key_exchange,
    parse_ike_proposal,
    sa_payload,
    select_proposal,
)
from ikev2.tasks.base import Exchange, RetryExchange, Task, TaskSa
from ikev2.tasks.ike_intermediate import IkeIntermediate

log = logging.getLogger(__name__)

NONCE_SIZE = 32
"""Octets of our nonces: at least half the PRF key size and 16 (§2.10); 32 fits all."""

LOCKGATE_PARTIAL_CSUM_VID = hashlib.sha256(
    b"lockgate/1: TCP segments with partial checksums inside ESP"
).digest()[:16]
"""Our Vendor ID payload's data: a lockgate that takes TCP segments with partial
checksums, marked inside ESP, and sends them to a peer that sends the same."""


class IkeInit(Task):
    """Negotiates the IKE SA's algorithms and keys in IKE_SA_INIT."""

    name = "ike_init"

    def __init__(self) -> None:
        self.group: int | None = None
        """Key exchange group of our KE payload (changed by INVALID_KE_PAYLOAD)."""
        self.chosen: Proposal | None = None
        """Responder: the proposal we selected."""
        self.peer_intermediate = False
        """Responder: the initiator sent INTERMEDIATE_EXCHANGE_SUPPORTED."""

    # --- initiator ----------------------------------------------------------------------

    def build_request(self, sa: TaskSa, out: list[Payload]) -> None:
        ours = _our_proposals(sa)
        if self.group is None:
            self.group = _dh_groups(ours)[0]
        if sa.ke is None or sa.ke.group.group != self.group:
            sa.ke = sa.new_key_exchange(self.group)
        if not sa.nonce_i:
            sa.nonce_i = sa.rng.token_bytes(NONCE_SIZE)
        if sa.cookie:
            # §2.6: the COOKIE notify goes first, everything else unchanged.
            out.append(Notify(NotifyType.COOKIE, sa.cookie))
        out += [
            sa_payload(ours),
            KePayload(self.group, sa.ke.public_bytes),
            Nonce(sa.nonce_i),
        ]
        if sa.config.fragmentation:
            out.append(Notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
        if has_additional_key_exchange(ours):
            out.append(Notify(NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED))
        if sa.config.ppk is not None:
            # RFC 8784 §3: we can mix a post-quantum preshared key into this IKE SA.
            out.append(Notify(NotifyType.USE_PPK))
        # RFC 7427 §4: the hashes we can verify signatures with (certificates).
        out.append(signature_hashes_notify())
        if sa.offers_partial_csum:
            out.append(VendorId(LOCKGATE_PARTIAL_CSUM_VID))

    def process_response(self, sa: TaskSa, message: Message) -> None:
        cookie = message.notify(NotifyType.COOKIE)
        if cookie is not None:
            log.info("%s: peer demands a cookie; retrying IKE_SA_INIT", sa.name)
            sa.cookie = cookie.data
            raise RetryExchange
        invalid_ke = message.notify(NotifyType.INVALID_KE_PAYLOAD)
        if invalid_ke is not None:
            self._switch_group(sa, invalid_ke)
            raise RetryExchange
        for notify in message.error_notifies():
            raise _peer_error(sa, notify)
        answer = message.get(SecurityAssociation)
        ke = message.get(KePayload)
        nonce = message.get(Nonce)
        if answer is None or ke is None or nonce is None:
            raise InvalidSyntax("IKE_SA_INIT response lacks SA, KE or Nonce")
        chosen = check_chosen_proposal(_our_proposals(sa), answer)
        if ke.group != self.group or dh_group(chosen) != self.group:
            raise InvalidKePayload(self.group or 0, "peer answered with another key exchange group")
        sa.nonce_r = nonce.data
        _note_fragmentation(sa, message)
        rounds = additional_key_exchanges(chosen)
        if rounds and message.notify(NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED) is None:
            raise InvalidSyntax("peer chose additional key exchanges without IKE_INTERMEDIATE")
        _note_ppk(sa, message, ours=sa.config.ppk is not None)
        _note_partial_csum(sa, message)
        _derive(sa, chosen, ke.data)
        _start_intermediate(sa, rounds)
        if log.isEnabledFor(logging.INFO):  # describing it costs, once per IKE SA
            log.info("%s: IKE proposal %s selected", sa.name, describe_proposal(chosen))

    def _switch_group(self, sa: TaskSa, notify: Notify) -> None:
        if len(notify.data) != 2:
            raise InvalidSyntax("INVALID_KE_PAYLOAD without a 2-octet group")
        wanted = int.from_bytes(notify.data, "big")
        ours = _dh_groups(_our_proposals(sa))
        if wanted not in ours or wanted == self.group or wanted not in GROUPS:
            raise PeerErrorNotify(
                NotifyType.INVALID_KE_PAYLOAD,
                notify.data,
                f"peer wants key exchange group {wanted}, which we do not propose",
            )
        log.info(
            "%s: peer prefers key exchange group %s; retrying IKE_SA_INIT",
            sa.name,
            GROUPS[wanted].name,
        )
        self.group = wanted

    # --- responder ----------------------------------------------------------------------

    def process_request(self, sa: TaskSa, message: Message) -> None:
        offer = message.get(SecurityAssociation)
        ke = message.get(KePayload)
        nonce = message.get(Nonce)
        if offer is None or ke is None or nonce is None:
            raise InvalidSyntax("IKE_SA_INIT request lacks SA, KE or Nonce")
        self.peer_intermediate = (
            message.notify(NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED) is not None
        )
        theirs = offer.proposals
        if not self.peer_intermediate:
            # RFC 9370 §2.2.1: additional key exchanges only with IKE_INTERMEDIATE.
            theirs = tuple(p for p in theirs if not additional_key_exchanges(p))
        chosen = select_proposal(_our_proposals(sa), theirs)
        group = dh_group(chosen)
        if ke.group != group:
            log.info(
                "%s: peer sent KE for group %d, we selected %d: asking for INVALID_KE retry",
                sa.name,
                ke.group,
                group,
            )
            raise InvalidKePayload(group)
        sa.nonce_i = nonce.data
        _note_fragmentation(sa, message)
        # The connection is picked in IKE_AUTH: answer USE_PPK if any candidate has one.
        _note_ppk(sa, message, ours=any(c.ppk is not None for c in sa.candidates))
        _note_partial_csum(sa, message)
        sa.nonce_r = sa.rng.token_bytes(NONCE_SIZE)
        sa.ke = sa.new_key_exchange(group)
        self.chosen = chosen
        _derive(sa, chosen, ke.data)
        sa.start_intermediate(additional_key_exchanges(chosen))
        if log.isEnabledFor(logging.INFO):  # describing it costs, once per IKE SA
            log.info("%s: IKE proposal %s selected", sa.name, describe_proposal(chosen))

    def build_response(self, sa: TaskSa, out: list[Payload]) -> None:
        if sa.ke is None or self.chosen is None:
            raise InvalidSyntax("no key exchange")
        out += [
            SecurityAssociation((self.chosen,)),
            KePayload(sa.ke.group.group, sa.ke.public_bytes),
            Nonce(sa.nonce_r),
        ]
        if sa.fragmentation:
            out.append(Notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
        if self.peer_intermediate:
            out.append(Notify(NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED))
        if sa.ppk_offered:
            out.append(Notify(NotifyType.USE_PPK))
        if sa.peer_hashes is not None:
            out.append(signature_hashes_notify())
        if sa.partial_csum:
            out.append(VendorId(LOCKGATE_PARTIAL_CSUM_VID))
        anchors = sa.config.trust_anchors
        if sa.config.auth == "pubkey" and anchors is not None:
            # §1.2, §3.7: the responder asks for certificates from the CAs it trusts;
            # peers like strongSwan send theirs only when asked.
            out.append(anchors.certreq())


def _note_fragmentation(sa: TaskSa, message: Message) -> None:
    # RFC 7383 §2.3: fragments only when both sides announced support.
    offered = message.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None
    sa.fragmentation = sa.config.fragmentation and offered
    hashes = message.notify(NotifyType.SIGNATURE_HASH_ALGORITHMS)
    if hashes is not None:
        try:
            sa.peer_hashes = parse_signature_hashes(hashes.data)
        except IkeError as exc:
            log.info("%s: ignoring malformed SIGNATURE_HASH_ALGORITHMS: %s", sa.name, exc)


def _note_ppk(sa: TaskSa, message: Message, *, ours: bool) -> None:
    """RFC 8784 §3: a PPK is used only when both sides sent USE_PPK. An initiator that
    requires its PPK aborts here when the responder did not."""
    sa.ppk_offered = ours and message.notify(NotifyType.USE_PPK) is not None
    ppk = sa.config.ppk
    if sa.initiator and ppk is not None and ppk.required and not sa.ppk_offered:
        raise AuthenticationFailed(
            "peer does not support post-quantum preshared keys (no USE_PPK in its "
            "IKE_SA_INIT response), and ppk_required is set"
        )


def _note_partial_csum(sa: TaskSa, message: Message) -> None:
    """Partial checksums inside ESP only when both sides sent the Vendor ID (§3.12:
    a Vendor ID the receiver does not know is ignored, so other peers get none)."""
    sa.partial_csum = sa.offers_partial_csum and any(
        isinstance(p, VendorId) and p.data == LOCKGATE_PARTIAL_CSUM_VID for p in message.payloads
    )
    if sa.partial_csum:
        log.info("%s: the peer is a lockgate: partial TCP checksums inside ESP", sa.name)


def _our_proposals(sa: TaskSa) -> list[Proposal]:
    return [parse_ike_proposal(text) for text in sa.config.ike_proposals]


def _dh_groups(proposals: list[Proposal]) -> list[int]:
    """Key exchange groups in our order of preference, without repeats."""
    out: list[int] = []
    for p in proposals:
        for t in p.transforms_of(TransformType.DH):
            if t.transform_id not in out:
                out.append(t.transform_id)
    return out


def _derive(sa: TaskSa, chosen: Proposal, peer_ke: bytes) -> None:
    """SKEYSEED and SK_* (RFC 7296 §2.14) from the chosen proposal and the peer's KE."""
    if sa.ke is None:
        raise InvalidSyntax("no proposal or key exchange to derive keys from")
    try:
        suite = ike_suite(chosen)
    except IkeError as exc:
        raise NoProposalChosen(f"selected proposal is not implemented: {exc}") from exc
    g_ir = sa.ke.shared_secret(peer_ke)
    seed = skeyseed(suite.prf, sa.nonce_i, sa.nonce_r, g_ir)
    sa.adopt_keys(suite, derive_ike_keys(suite, seed, sa.nonce_i, sa.nonce_r, sa.spi_i, sa.spi_r))


def _start_intermediate(sa: TaskSa, rounds: list[tuple[int, int]]) -> None:
    """Initiator: one IKE_INTERMEDIATE per additional key exchange, before IKE_AUTH."""
    sa.start_intermediate(rounds)
    for _ in rounds:
        sa.tm.queue_first(Exchange(ExchangeType.IKE_INTERMEDIATE, [IkeIntermediate()]))


def _peer_error(sa: TaskSa, notify: Notify) -> PeerErrorNotify:
    if notify.notify_type == NotifyType.NO_PROPOSAL_CHOSEN:
        return PeerErrorNotify(
            notify.notify_type,
            notify.data,
            "peer accepts none of our IKE proposals ("
            + ", ".join(sa.config.ike_proposals)
            + "): NO_PROPOSAL_CHOSEN",
        )
    return PeerErrorNotify(notify.notify_type, notify.data)

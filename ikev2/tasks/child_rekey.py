"""CREATE_CHILD_SA for CHILD SAs: one more CHILD SA, or a rekey (RFC 7296 §1.3.1-1.3.3, §2.8).

Request: [N(REKEY_SA)], SA, Ni, [KEi], TSi, TSr. Response: SA, Nr, [KEr], TSi, TSr,
or an error notify. With a key exchange group in the ESP proposals (PFS) KEYMAT is
prf+(SK_d, g^ir | Ni | Nr) (§2.17); a responder that wants another group answers
INVALID_KE_PAYLOAD and the requester tries again in a new exchange.

With additional key exchanges in the chosen proposal (``aes256gcm16-x25519-ke1_mlkem768``)
the responder adds N(ADDITIONAL_KEY_EXCHANGE) and the CHILD SA is made only after the
IKE_FOLLOWUP_KE exchanges (``ikev2.tasks.followup_ke``), from
KEYMAT = prf+(SK_d, g^ir | Ni | Nr | SK(1) | ... | SK(n)) (RFC 9370 §2.2.4).

Make-before-break (§2.8): the new CHILD SA is reported installed (both directions)
before the old one is deleted; the side that started the rekey deletes the old one
once the new one is up. Simultaneous rekeys of one CHILD SA (§2.8.1): both new SAs
are created, and the one whose exchange had the lowest nonce is deleted again by its
initiator. With additional key exchanges nothing exists yet when the CREATE_CHILD_SAs
complete, so the initiator of the one with the lowest nonce stops there and sends no
IKE_FOLLOWUP_KE; a rekey request for a CHILD SA whose own rekey is in its
IKE_FOLLOWUP_KE exchanges already gets TEMPORARY_FAILURE (RFC 9370 §2.2.4).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ikev2.codec import KeyExchange as KePayload
from ikev2.codec import Message, Nonce, Notify, Payload, Proposal, SecurityAssociation, TsI, TsR
from ikev2.config import ChildConfig
from ikev2.constants import ExchangeType, NotifyType, ProtocolId, enum_name
from ikev2.crypto.dh import KeyExchange
from ikev2.errors import (
    ChildSaDeletedByPeer,
    ChildSaNotFound,
    IkeError,
    InvalidKePayload,
    InvalidSyntax,
    TemporaryFailure,
    TsMaxQueue,
    TsUnacceptable,
)
from ikev2.events import ChildSaFailed
from ikev2.proposals import (
    additional_key_exchanges,
    check_chosen_proposal,
    dh_group,
    parse_esp_proposal,
    sa_payload,
    select_proposal,
)
from ikev2.sa_types import ChildSa, PeerRekey, ResourceRetry
from ikev2.tasks.base import Exchange, FollowupAnswer, Task, TaskSa, retry_delay
from ikev2.tasks.child_create import from_wire, install_child, to_wire
from ikev2.tasks.followup_ke import (
    FOLLOWUP_TIMEOUT,
    ChildFollowupKe,
    answer_with_followups,
    followup_link,
    forget_answers_for,
    pending_peer_rekey_of,
    rekeying_in_followups,
)
from ikev2.tasks.ike_init import NONCE_SIZE
from ikev2.tasks.ike_rekey import AnswerIkeRekey, raise_refusal, wanted_group
from ikev2.tasks.resources import (
    inbound_spi,
    peer_per_resource,
    resource_notify,
    used_indexes,
)
from ikev2.ts import TrafficSelector, format_selectors, is_subset, narrow

log = logging.getLogger(__name__)

REKEY_RETRY_AFTER = 10.0
"""Mean seconds before a failed CHILD SA rekey is tried again (the hard expiry still applies)."""


def _esp_proposals(config: ChildConfig) -> list[Proposal]:
    out: list[Proposal] = []
    for text in config.esp_proposals:
        proposal = parse_esp_proposal(text)
        if proposal not in out:
            out.append(proposal)
    return out


Selectors = tuple[tuple[TrafficSelector, ...], tuple[TrafficSelector, ...]]
"""(local, remote) traffic selectors."""


class CreateChild(Task):
    """Our CREATE_CHILD_SA request for a new CHILD SA or, with `old`, a rekey of it.

    With `like`, one more CHILD SA of a per-resource group, for another worker, with
    exactly those (local, remote) selectors, the negotiated ones (RFC 9611).
    """

    name = "child_create_sa"

    def __init__(
        self,
        config: ChildConfig,
        old: ChildSa | None = None,
        group: int | None = None,
        like: Selectors | None = None,
    ):
        self.config = config
        self.old = old
        self.group = group
        """Key exchange group for PFS; None: the first of our proposals' groups, if any."""
        self.like = like
        """The selectors of the per-resource group this SA joins (RFC 9611), or None."""
        self.spi_in = b""
        self.nonce_i = b""
        self.ke: KeyExchange | None = None
        self.offered: list[Proposal] = []
        self.answer: _Answer | None = None
        """The responder's answer, once its CREATE_CHILD_SA response is read."""

    @property
    def what(self) -> str:
        if self.old is not None:
            return f"rekeying CHILD SA {self.config.name}{{{self.old.unique_id}}}"
        if self.like is not None:
            return f"creating another per-resource CHILD SA {self.config.name}"
        return f"creating CHILD SA {self.config.name}"

    def build_request(self, sa: TaskSa, out: list[Payload]) -> None:
        self.offered = _esp_proposals(self.config)
        if self.group is None:
            self.group = next((g for p in self.offered if (g := dh_group(p))), 0)
        self.spi_in = inbound_spi(sa, self.config, self.old)
        self.nonce_i = sa.rng.token_bytes(NONCE_SIZE)
        local_ts, remote_ts = self._selectors
        if self.old is not None:
            # §1.3.3: name the SA being replaced by the SPI the peer knows it by.
            out.append(Notify(NotifyType.REKEY_SA, b"", ProtocolId.ESP, _spi(self.old.spi_in)))
        else:
            # RFC 9611: a new CHILD SA says we do them per resource; a rekey inherits
            # that from the SA it replaces, so its exchange does not repeat it.
            out += resource_notify(sa)
        out += [sa_payload(self.offered, self.spi_in), Nonce(self.nonce_i)]
        if self.group:
            self.ke = sa.new_key_exchange(self.group)
            out.append(KePayload(self.group, self.ke.public_bytes))
        out += [TsI(to_wire(local_ts)), TsR(to_wire(remote_ts))]

    @property
    def _selectors(self) -> Selectors:
        """What we propose and accept: the old SA's for a rekey, the group's for a
        per-resource SA, else the configuration's."""
        if self.old is not None:
            return self.old.local_ts, self.old.remote_ts
        if self.like is not None:
            return self.like
        return self.config.local_ts, self.config.remote_ts

    def process_response(self, sa: TaskSa, message: Message) -> None:
        try:
            self._process_response(sa, message)
        except IkeError as exc:
            self.followup_failed(sa, exc)

    def followup_failed(self, sa: TaskSa, exc: IkeError) -> None:
        """The exchange failed (in CREATE_CHILD_SA or one of its IKE_FOLLOWUP_KE rounds)."""
        if self.like is not None:
            # RFC 9611: no failure event, since the connection is up and the SAs the
            # group has carry the traffic. A TEMPORARY_FAILURE is asked again later;
            # anything else ends the group here.
            notify = getattr(exc, "peer_notify", None) or exc.notify
            count = len(used_indexes(sa, self.config, self.like))
            if notify == NotifyType.TEMPORARY_FAILURE:
                # §2.25: the peer could not now (an IKE rekey under way, say).
                delay = retry_delay(sa, REKEY_RETRY_AFTER)
                sa.retry_resource_sa(ResourceRetry(sa.now + delay, self.config, self.like))
                log.info("%s: %s: the peer answered TEMPORARY_FAILURE; again in %.0f s (%d of "
                         "%d workers have one)", sa.name, self.what, delay, count,
                         sa.resources)  # fmt: skip
                return
            if notify == NotifyType.TS_MAX_QUEUE:
                log.info(
                    "%s: peer takes no more per-resource CHILD SAs %s (TS_MAX_QUEUE): "
                    "%d of %d workers have one",
                    sa.name,
                    self.config.name,
                    count,
                    sa.resources,
                )
            else:
                log.warning(
                    "%s: %s failed, staying with %d of %d: %s",
                    sa.name,
                    self.what,
                    count,
                    sa.resources,
                    exc,
                )
            return
        if self.old is not None and self.old.unique_id not in sa.children:
            # §2.25.1: the peer deleted it meanwhile; our rekey is simply forgotten.
            log.info("%s: %s: it was deleted meanwhile (%s)", sa.name, self.what, exc)
            return
        if self.old is not None and self.old.peer_rekey is not None:
            # §2.8.1: the peer rekeyed it too and did not see the collision (it
            # answered TEMPORARY_FAILURE): its new SA is the only one; it deletes
            # the old one. Nothing failed.
            log.info("%s: %s: the peer's rekey took over (%s)", sa.name, self.what, exc)
            self.old.rekeying = False
            return
        notify = getattr(exc, "peer_notify", None) or exc.notify
        log.warning("%s: %s failed: %s", sa.name, self.what, exc)
        sa.emit(ChildSaFailed(sa.config.name, self.config.name, sa.ike_sa_id, str(exc), notify))
        if self.old is not None:
            self.old.rekeying = False
            self.old.rekey_at = sa.now + retry_delay(sa, REKEY_RETRY_AFTER)

    def _process_response(self, sa: TaskSa, message: Message) -> None:
        wanted = wanted_group(message, self.group, self.offered)
        if wanted is not None:
            # §1.3: retry in a new exchange with the group the peer asked for.
            log.info("%s: peer wants group %d for PFS; retrying", sa.name, wanted)
            sa.tm.queue(
                Exchange(
                    message.exchange_type,  # type: ignore[arg-type]
                    [type(self)(self.config, self.old, wanted, self.like)],
                )
            )
            return
        raise_refusal(message, self.what)
        answer = message.get(SecurityAssociation)
        nonce = message.get(Nonce)
        tsi, tsr = message.get(TsI), message.get(TsR)
        if answer is None or nonce is None or tsi is None or tsr is None:
            raise InvalidSyntax("CREATE_CHILD_SA response lacks SA, Nonce, TSi or TSr")
        chosen = check_chosen_proposal(self.offered, answer)
        if len(chosen.spi) != 4:
            raise InvalidSyntax("ESP proposal without a 4-octet SPI")
        g_ir = None
        if dh_group(chosen):
            ke = message.get(KePayload)
            if ke is None or self.ke is None or ke.group != dh_group(chosen):
                raise InvalidKePayload(self.group or 0, "peer answered without our PFS group")
            g_ir = self.ke.shared_secret(ke.data)
        expected_local, expected_remote = self._selectors
        local_ts, remote_ts = from_wire(tsi.selectors), from_wire(tsr.selectors)
        if (
            not local_ts
            or not remote_ts
            or not is_subset(local_ts, expected_local)
            or not is_subset(remote_ts, expected_remote)
        ):
            raise TsUnacceptable(
                f"peer answered traffic selectors {format_selectors(local_ts)} === "
                f"{format_selectors(remote_ts)}, outside ours"
            )
        if self.old is not None:
            per_resource = self.old.per_resource
        else:
            per_resource = peer_per_resource(sa, message)
        self.answer = _Answer(chosen, nonce.data, g_ir, local_ts, remote_ts, per_resource)
        rounds = additional_key_exchanges(chosen)
        if not rounds:
            self.followup_done(sa, ())
            return
        link = followup_link(message)
        old = self.old
        theirs = old.peer_rekey if old is not None else None
        if (
            old is not None
            and theirs is not None
            and min(self.nonce_i, nonce.data) < theirs.lowest_nonce
        ):
            # RFC 9370 §2.2.4: both rekeyed it at once and our exchange had the lowest
            # nonce. Nothing exists yet to delete, so ours stops here, without
            # IKE_FOLLOWUP_KE; the peer's rekey makes the new SA and deletes the old one.
            log.info("%s: %s: the peer's simultaneous rekey wins", sa.name, self.what)
            old.rekeying = False
            return
        follow = ChildFollowupKe(self, rounds, link, rekeys=old)
        sa.tm.queue_first(Exchange(ExchangeType.IKE_FOLLOWUP_KE, [follow]))

    def followup_done(self, sa: TaskSa, additional: tuple[bytes, ...]) -> None:
        """Every key exchange ran: install the CHILD SA (and retire the one it rekeys)."""
        answer = self.answer
        if answer is None:
            raise InvalidSyntax("CHILD SA before its CREATE_CHILD_SA completed")
        chosen = answer.chosen
        if sa.deleted_by_peer_already(int.from_bytes(chosen.spi, "big")):
            # Our first copy of this answer was lost and the peer deleted the SA it
            # created before our retransmission brought the answer back: installed,
            # it would exist on our side alone. Not installing it leaves the old SA
            # (if any) as the peer still has it; a rekey is tried again later.
            self.followup_failed(
                sa, ChildSaDeletedByPeer(f"the peer deleted the new SA of {self.what}")
            )
            return
        new = install_child(
            sa,
            config=self.config,
            chosen=chosen,
            spi_in=self.spi_in,
            spi_out=chosen.spi,
            local_ts=answer.local_ts,
            remote_ts=answer.remote_ts,
            nonce_i=self.nonce_i,
            nonce_r=answer.nonce_r,
            we_initiated=True,
            g_ir=answer.g_ir,
            additional=additional,
            rekey_of=self.old.unique_id if self.old else None,
            per_resource=answer.per_resource,
        )
        old = self.old
        if old is None:
            if new.per_resource:
                # RFC 9611: we asked for this one, so we ask for the group's next.
                sa.request_resource_sa(new)
            return
        if old.no_successor:
            # We deleted the SA being rekeyed while our rekey was under way (an
            # operator's `down`, a reload): its successor goes too, by a Delete of its
            # own (§1.4.1), or it would stay up on both sides.
            log.info("%s: %s: deleting the new SA too, since the old one is deleted",
                     sa.name, self.what)  # fmt: skip
            sa.delete_child(new.unique_id, sa.now, old.delete_reason or "deleted by operator")
            forget_answers_for(sa, old)
            return
        ours = min(self.nonce_i, answer.nonce_r)
        theirs = old.peer_rekey
        if theirs is not None and ours < theirs.lowest_nonce:
            # §2.8.1: both rekeyed it at once and our exchange had the lowest nonce:
            # our new SA is the redundant one; the peer deletes the old SA (its Delete
            # may have come already, when our response was late or lost).
            sa.delete_child(new.unique_id, sa.now, "redundant after simultaneous rekeying")
            return
        if old.unique_id in sa.children:
            sa.delete_child(old.unique_id, sa.now, "rekeyed")
        # A crossing rekey of the peer's that stopped before IKE_FOLLOWUP_KE (its
        # exchange had the lowest nonce, RFC 9370 §2.2.4) will not continue.
        forget_answers_for(sa, old)


@dataclass(frozen=True, repr=False)
class _Answer:
    """The responder's accepted CREATE_CHILD_SA, kept until its key exchanges all ran."""

    chosen: Proposal
    nonce_r: bytes
    g_ir: bytes | None
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    per_resource: bool


class AnswerCreateChild(Task):
    """The responder's side of CREATE_CHILD_SA for CHILD SAs (new or rekey)."""

    name = "child_create_sa_responder"

    def __init__(self) -> None:
        self.child_name = "?"
        """Name of the CHILD configuration, once known (for the failure event)."""
        self.response: list[Payload] = []
        self.ike_rekey: AnswerIkeRekey | None = None
        """Set when the request rekeys the IKE SA itself (§1.3.2)."""
        self.made: _Made | None = None
        """What the CHILD SA is made of, once the request is accepted."""

    def process_request(self, sa: TaskSa, message: Message) -> None:
        offer = message.get(SecurityAssociation)
        if offer is not None and any(p.protocol == ProtocolId.IKE for p in offer.proposals):
            self.ike_rekey = AnswerIkeRekey()
            self.ike_rekey.process_request(sa, message)
            return
        if "ike_rekey" in sa.outstanding_tasks():
            # §2.25.2: no CHILD SA is created or rekeyed while we rekey the IKE SA; the
            # peer tries again later (on the new IKE SA).
            log.info("%s: refusing CREATE_CHILD_SA while we rekey the IKE SA", sa.name)
            raise TemporaryFailure("we are rekeying the IKE SA")
        try:
            self._process(sa, message)
        except (InvalidKePayload, TemporaryFailure, TsMaxQueue) as exc:
            # The peer retries (with our group, or later), or has all the per-resource
            # SAs we take (RFC 9611): nothing failed on our side.
            kind = enum_name(NotifyType, exc.notify or 0)
            log.info("%s: answering CREATE_CHILD_SA with %s: %s", sa.name, kind, exc)
            raise
        except IkeError as exc:
            log.warning("%s: refusing CREATE_CHILD_SA: %s", sa.name, exc)
            sa.emit(
                ChildSaFailed(sa.config.name, self.child_name, sa.ike_sa_id, str(exc), exc.notify)
            )
            raise

    def _process(self, sa: TaskSa, message: Message) -> None:
        offer = message.get(SecurityAssociation)
        nonce = message.get(Nonce)
        tsi, tsr = message.get(TsI), message.get(TsR)
        if offer is None or nonce is None or tsi is None or tsr is None:
            raise InvalidSyntax("CREATE_CHILD_SA request lacks SA, Nonce, TSi or TSr")
        old: ChildSa | None = None
        rekey = message.notify(NotifyType.REKEY_SA)
        if rekey is not None:
            spi_out = int.from_bytes(rekey.spi, "big")
            old = next((c for c in sa.children.values() if c.spi_out == spi_out), None)
            if old is None:
                raise ChildSaNotFound(
                    f"peer rekeys CHILD SA with SPI {spi_out:08x}, which we do not have",
                    protocol=ProtocolId.ESP,
                    spi=rekey.spi,
                )
            self.child_name = old.config.name
            if old.deleting:
                # §2.25.1: it is on its way out already.
                raise TemporaryFailure(
                    f"CHILD SA {old.config.name}{{{old.unique_id}}} is being deleted"
                )
            if rekeying_in_followups(sa, old) or pending_peer_rekey_of(sa, old) is not None:
                # RFC 9370 §2.2.4: a rekey of it is in its IKE_FOLLOWUP_KE exchanges
                # already (this request crossed that exchange's CREATE_CHILD_SA and was
                # held up on the way).
                raise TemporaryFailure(
                    f"CHILD SA {old.config.name}{{{old.unique_id}}} is being rekeyed"
                )
        peer_ts, my_ts = from_wire(tsi.selectors), from_wire(tsr.selectors)
        candidates = [old.config] if old is not None else list(sa.config.children)
        for config in candidates:
            remote_ts = narrow(peer_ts, config.remote_ts)
            local_ts = narrow(my_ts, config.local_ts)
            if remote_ts and local_ts:
                break
        else:
            raise TsUnacceptable(
                f"peer proposed traffic selectors {format_selectors(peer_ts)} === "
                f"{format_selectors(my_ts)}, which match no CHILD SA of ours"
            )
        self.child_name = config.name
        per_resource = old.per_resource if old is not None else peer_per_resource(sa, message)
        if old is None and per_resource:
            # RFC 9611: one CHILD SA with these selectors per resource of ours.
            used = used_indexes(sa, config, (local_ts, remote_ts))
            if len(used) >= sa.resources:
                raise TsMaxQueue(
                    f"{config.name} has a per-resource CHILD SA for each of our "
                    f"{sa.resources} workers"
                )
        offered = [p for p in offer.proposals if p.protocol == ProtocolId.ESP]
        chosen = select_proposal(_esp_proposals(config), offered)
        if len(chosen.spi) != 4:
            raise InvalidSyntax("ESP proposal without a 4-octet SPI")
        g_ir = None
        ke_out: KeyExchange | None = None
        group = dh_group(chosen)
        if group:
            ke = message.get(KePayload)
            if ke is None or ke.group != group:
                raise InvalidKePayload(group)
            ke_out = sa.new_key_exchange(group)
            g_ir = ke_out.shared_secret(ke.data)
        spi_in = inbound_spi(sa, config, old)
        nonce_r = sa.rng.token_bytes(NONCE_SIZE)
        answer = Proposal(chosen.number, ProtocolId.ESP, spi_in, chosen.transforms)
        self.response = []
        if old is None:
            # RFC 9611: as in the request, only an exchange that does not rekey says it.
            self.response += resource_notify(sa)
        self.response += [SecurityAssociation((answer,)), Nonce(nonce_r)]
        if ke_out is not None:
            self.response.append(KePayload(group, ke_out.public_bytes))
        self.response += [TsI(to_wire(remote_ts)), TsR(to_wire(local_ts))]
        self.made = _Made(
            config,
            chosen,
            spi_in,
            nonce.data,
            nonce_r,
            g_ir,
            local_ts,
            remote_ts,
            old,
            per_resource,
        )
        rounds = additional_key_exchanges(chosen)
        if not rounds:
            self.followup_done(sa, ())
            return
        lowest = min(nonce.data, nonce_r)
        if old is not None:
            # Known now, though no SA exists yet: our own crossing rekey of it stops
            # if its exchange had the lower nonce (RFC 9370 §2.2.4).
            old.peer_rekey = PeerRekey(None, lowest)
        pending = FollowupAnswer(self, rounds, sa.now + FOLLOWUP_TIMEOUT, lowest, rekeys=old)
        answer_with_followups(sa, pending, self.response)

    def followup_done(self, sa: TaskSa, additional: tuple[bytes, ...]) -> None:
        """Every key exchange ran: install the CHILD SA before the response that lets
        the peer use it goes out (§2.8)."""
        made = self.made
        if made is None:
            raise InvalidSyntax("CHILD SA before its CREATE_CHILD_SA was answered")
        if additional:
            self.response = []  # the last IKE_FOLLOWUP_KE response carries its KE only
        old = made.old
        new = install_child(
            sa,
            config=made.config,
            chosen=made.chosen,
            spi_in=made.spi_in,
            spi_out=made.chosen.spi,
            local_ts=made.local_ts,
            remote_ts=made.remote_ts,
            nonce_i=made.nonce_i,
            nonce_r=made.nonce_r,
            we_initiated=False,
            g_ir=made.g_ir,
            additional=additional,
            rekey_of=old.unique_id if old is not None else None,
            per_resource=made.per_resource,
        )
        if old is not None:
            old.peer_rekey = PeerRekey(new.unique_id, min(made.nonce_i, made.nonce_r))

    def followup_abandoned(self, sa: TaskSa) -> None:
        """The peer's additional key exchanges stopped: no CHILD SA, and the one it
        rekeyed is ours to rekey again."""
        made = self.made
        old = made.old if made is not None else None
        if old is not None and old.peer_rekey is not None and old.peer_rekey.new_child is None:
            old.peer_rekey = None
        log.info("%s: the peer's CREATE_CHILD_SA for %s ended unfinished", sa.name, self.child_name)

    def build_response(self, sa: TaskSa, out: list[Payload]) -> None:
        if self.ike_rekey is not None:
            self.ike_rekey.build_response(sa, out)
            return
        out += self.response


@dataclass(frozen=True, repr=False)
class _Made:
    """The responder's accepted CREATE_CHILD_SA, kept until its key exchanges all ran."""

    config: ChildConfig
    chosen: Proposal
    spi_in: bytes
    nonce_i: bytes
    nonce_r: bytes
    g_ir: bytes | None
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    old: ChildSa | None
    per_resource: bool


def _spi(value: int) -> bytes:
    return value.to_bytes(4, "big")


__all__ = ["AnswerCreateChild", "CreateChild"]

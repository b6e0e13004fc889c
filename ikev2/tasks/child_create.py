"""The CHILD SA of IKE_AUTH: ESP proposals, traffic selectors, KEYMAT (RFC 7296 §1.2, §2.9, §2.17).

A CHILD SA failure inside IKE_AUTH does not fail the IKE SA (§1.2): the responder
answers with the error notify in place of SA/TSi/TSr. The CREATE_CHILD_SA variants
(additional CHILD SAs, rekeying, PFS) are part 2 and reuse the helpers here.
"""

from __future__ import annotations

import functools
import logging

from ikev2.codec import Message, Notify, Payload, Proposal, SecurityAssociation, TsI, TsR
from ikev2.codec import TrafficSelector as WireTs
from ikev2.config import ChildConfig
from ikev2.constants import NotifyType, ProtocolId, enum_name
from ikev2.crypto.dh import KE_METHODS
from ikev2.crypto.keys import derive_child_keys_for
from ikev2.crypto.registry import ChildSuite, child_suite
from ikev2.errors import (
    FailedCpRequired,
    IkeError,
    InternalAddressFailure,
    InvalidSyntax,
    NoProposalChosen,
    PeerErrorNotify,
    TsUnacceptable,
)
from ikev2.events import ChildSaFailed, ChildSaInstalled
from ikev2.proposals import (
    LazyDescription,
    additional_key_exchanges,
    check_chosen_proposal,
    dh_group,
    parse_esp_proposal,
    sa_payload,
    select_proposal,
    without_key_exchange,
)
from ikev2.sa_types import ChildSa
from ikev2.tasks.base import Task, TaskSa
from ikev2.tasks.resources import inbound_spi, peer_per_resource, resource_notify
from ikev2.ts import TrafficSelector, format_selectors, is_subset, narrow

log = logging.getLogger(__name__)

_CHILD_ERRORS = frozenset(
    {
        NotifyType.NO_PROPOSAL_CHOSEN,
        NotifyType.TS_UNACCEPTABLE,
        NotifyType.SINGLE_PAIR_REQUIRED,
        NotifyType.INTERNAL_ADDRESS_FAILURE,
        NotifyType.FAILED_CP_REQUIRED,
        NotifyType.INVALID_SELECTORS,
        NotifyType.NO_ADDITIONAL_SAS,
        NotifyType.TEMPORARY_FAILURE,
    }
)
"""Errors that fail only the CHILD SA of an IKE_AUTH (§1.2, §2.21.3)."""


def to_wire(selectors: tuple[TrafficSelector, ...]) -> tuple[WireTs, ...]:
    """Our selectors as TS payload entries."""
    return tuple(
        WireTs(ts.start_addr, ts.end_addr, ts.protocol, ts.start_port, ts.end_port)
        for ts in selectors
    )


def from_wire(selectors: tuple[WireTs, ...]) -> tuple[TrafficSelector, ...]:
    """TS payload entries as selectors; types we do not know (FC) are skipped."""
    out: list[TrafficSelector] = []
    for ts in selectors:
        try:
            out.append(
                TrafficSelector(
                    ts.start_address, ts.end_address, ts.ip_protocol, ts.start_port, ts.end_port
                )
            )
        except ValueError:
            continue
    return tuple(out)


def _ike_auth_proposals(config: ChildConfig) -> list[Proposal]:
    """Our ESP proposals for IKE_AUTH: without key exchange (§1.2), duplicates dropped."""
    return list(_ike_auth_proposals_of(config.esp_proposals))


@functools.lru_cache(maxsize=256)  # frozen proposals: worked out once per configuration
def _ike_auth_proposals_of(esp_proposals: tuple[str, ...]) -> tuple[Proposal, ...]:
    out: list[Proposal] = []
    for text in esp_proposals:
        proposal = without_key_exchange(parse_esp_proposal(text))
        if proposal not in out:
            out.append(proposal)
    return tuple(out)


class ChildCreate(Task):
    """Negotiates the first CHILD SA inside IKE_AUTH."""

    name = "child_create"

    def __init__(self, config: ChildConfig | None) -> None:
        self.config = config
        """Initiator: the CHILD SA to create. Responder: chosen from the peer's selectors."""
        self.spi_in = b""
        self.offered: list[Proposal] = []
        self.chosen: Proposal | None = None
        self.local_ts: tuple[TrafficSelector, ...] = ()
        self.remote_ts: tuple[TrafficSelector, ...] = ()
        self.error: IkeError | None = None
        self.request: tuple[SecurityAssociation, TsI, TsR] | None = None
        """Responder: the peer's SA and selectors, kept through an EAP login (§2.16)."""
        self.per_resource = False
        """Both sides sent SA_RESOURCE_INFO (RFC 9611)."""

    # --- initiator ----------------------------------------------------------------------

    def build_request(self, sa: TaskSa, out: list[Payload]) -> None:
        if self.config is None:
            raise InvalidSyntax("no CHILD SA configuration to initiate")
        if self.offered:
            return  # a later IKE_AUTH round of an EAP login (§2.16)
        self.spi_in = inbound_spi(sa, self.config)
        self.offered = _ike_auth_proposals(self.config)
        out += resource_notify(sa)
        out += [
            sa_payload(self.offered, self.spi_in),
            TsI(to_wire(self.config.local_ts)),
            TsR(to_wire(self.config.remote_ts)),
        ]

    def process_response(self, sa: TaskSa, message: Message) -> None:
        if self.config is None or not sa.ike_authenticated:
            return  # the answer comes with the last AUTH of an EAP login (§2.16)
        try:
            self._process_response(sa, message)
        except IkeError as exc:
            self._failed(sa, exc)
            sa.mark_initial_child_failed()

    def _process_response(self, sa: TaskSa, message: Message) -> None:
        config = self.config
        if config is None:
            return
        for notify in message.error_notifies():
            if notify.notify_type in _CHILD_ERRORS:
                raise PeerErrorNotify(
                    notify.notify_type, notify.data, _peer_child_error(config, notify)
                )
        answer = message.get(SecurityAssociation)
        tsi = message.get(TsI)
        tsr = message.get(TsR)
        if answer is None or tsi is None or tsr is None:
            raise InvalidSyntax("IKE_AUTH response lacks SA, TSi or TSr for the CHILD SA")
        chosen = check_chosen_proposal(self.offered, answer)
        if len(chosen.spi) != 4:
            raise InvalidSyntax("ESP proposal without a 4-octet SPI")
        local_ts, remote_ts = from_wire(tsi.selectors), from_wire(tsr.selectors)
        if (
            not local_ts
            or not remote_ts
            or not is_subset(local_ts, config.local_ts)
            or not is_subset(remote_ts, config.remote_ts)
        ):
            raise TsUnacceptable(
                f"peer narrowed traffic selectors to {format_selectors(local_ts)} === "
                f"{format_selectors(remote_ts)}, outside ours"
            )
        self.chosen, self.local_ts, self.remote_ts = chosen, local_ts, remote_ts
        self.per_resource = peer_per_resource(sa, message)
        child = self._install(sa, spi_out=chosen.spi)
        if child.per_resource:
            # RFC 9611: we asked for the first of the group, so we ask for the rest.
            sa.request_resource_sa(child)

    # --- responder ----------------------------------------------------------------------

    def process_request(self, sa: TaskSa, message: Message) -> None:
        sa_payload = message.get(SecurityAssociation)
        tsi = message.get(TsI)
        tsr = message.get(TsR)
        if sa_payload is not None or tsi is not None or tsr is not None:
            if sa_payload is None or tsi is None or tsr is None:
                self.error = InvalidSyntax("IKE_AUTH request has only part of SA, TSi, TSr")
            else:
                self.request = (sa_payload, tsi, tsr)
                self.per_resource = peer_per_resource(sa, message)
        if not sa.ike_authenticated:
            return  # answered after the EAP login (§2.16)
        if self.request is None and self.error is None:
            return  # childless IKE_AUTH (RFC 6023)
        try:
            if self.error is not None:
                raise self.error
            if self.request is None:
                return
            offer, tsi, tsr = self.request
            self._select(sa, offer, from_wire(tsi.selectors), from_wire(tsr.selectors))
        except IkeError as exc:
            self.error = exc
            self._failed(sa, exc)

    def _select(
        self,
        sa: TaskSa,
        offer: SecurityAssociation,
        peer_ts: tuple[TrafficSelector, ...],
        my_ts: tuple[TrafficSelector, ...],
    ) -> None:
        offered = [p for p in offer.proposals if p.protocol == ProtocolId.ESP]
        virtual = _virtual_selectors(sa)
        # Pick the CHILD configuration whose selectors fit what the peer proposes.
        for child in sa.config.children:
            remote_ts = narrow(
                peer_ts, narrow(virtual, child.remote_ts) if virtual else child.remote_ts
            )
            local_ts = narrow(my_ts, _reach(sa, child.local_ts))
            if remote_ts and local_ts:
                break
        else:
            names = ", ".join(c.name for c in sa.config.children)
            raise TsUnacceptable(
                f"peer proposed traffic selectors {format_selectors(peer_ts)} === "
                f"{format_selectors(my_ts)}, which match no CHILD SA of ours ({names})"
            )
        self.config = child
        # IKE_AUTH's CHILD SA has no key exchange of its own (§1.2): ignore KE transforms.
        chosen = select_proposal(_ike_auth_proposals(child), offered, ignore_key_exchange=True)
        log.debug("%s: ESP proposal %s selected", sa.name, LazyDescription(chosen))
        if len(chosen.spi) != 4:
            raise InvalidSyntax("ESP proposal without a 4-octet SPI")
        self.spi_in = inbound_spi(sa, child)
        self.chosen = chosen
        self.local_ts, self.remote_ts = local_ts, remote_ts

    def build_response(self, sa: TaskSa, out: list[Payload]) -> None:
        if not sa.ike_authenticated:
            return
        if self.error is not None:
            if self.error.notify is not None:
                out.append(Notify(self.error.notify, self.error.notify_data))
            return
        if self.chosen is None or self.config is None:
            return
        # The inbound SA exists before the response that lets the peer use it (§2.8).
        self._install(sa, spi_out=self.chosen.spi)
        answer = Proposal(self.chosen.number, ProtocolId.ESP, self.spi_in, self.chosen.transforms)
        out += resource_notify(sa)
        out += [
            SecurityAssociation((answer,)),
            TsI(to_wire(self.remote_ts)),
            TsR(to_wire(self.local_ts)),
        ]

    # --- both ---------------------------------------------------------------------------

    def _install(self, sa: TaskSa, *, spi_out: bytes) -> ChildSa:
        if self.config is None or self.chosen is None:
            raise InvalidSyntax("CHILD SA without configuration or proposal")
        # IKE_AUTH's CHILD SA takes the IKE_SA_INIT nonces and no key exchange (§2.17).
        return install_child(
            sa,
            config=self.config,
            chosen=self.chosen,
            spi_in=self.spi_in,
            spi_out=spi_out,
            local_ts=self.local_ts,
            remote_ts=self.remote_ts,
            nonce_i=sa.nonce_i,
            nonce_r=sa.nonce_r,
            we_initiated=sa.initiator,
            per_resource=self.per_resource,
        )

    def _failed(self, sa: TaskSa, exc: IkeError) -> None:
        name = self.config.name if self.config is not None else "?"
        notify = getattr(exc, "peer_notify", None) or exc.notify
        log.warning("%s: CHILD SA %s failed: %s", sa.name, name, exc)
        sa.emit(ChildSaFailed(sa.config.name, name, sa.ike_sa_id, str(exc), notify))


def _reach(sa: TaskSa, local_ts: tuple[TrafficSelector, ...]) -> tuple[TrafficSelector, ...]:
    """Our side of a remote-access client's CHILD SA: what its user may reach (a group
    policy), within the configured selectors; the ESP data plane enforces it."""
    ra = sa.config.remote_access
    if ra is None or ra.reach is None:
        return local_ts
    allowed = tuple(TrafficSelector.from_network(str(n)) for n in ra.reach(_user(sa)))
    return narrow(allowed, local_ts)


def _user(sa: TaskSa) -> str:
    return sa.eap_identity or str(sa.peer_id)


def _virtual_selectors(sa: TaskSa) -> tuple[TrafficSelector, ...]:
    """A remote-access client's side of its CHILD SA: its virtual addresses (§3.15)."""
    if sa.config.remote_access is None:
        return ()
    if sa.virtual_ips is None:
        raise FailedCpRequired("the client asked for no virtual address (CFG_REQUEST)")
    if not sa.virtual_ips:
        raise InternalAddressFailure(
            f"no virtual address for {sa.eap_identity or sa.peer_id}: the pool is exhausted"
        )
    return tuple(TrafficSelector.from_network(str(ip.ip)) for ip in sa.virtual_ips)


def install_child(
    sa: TaskSa,
    *,
    config: ChildConfig,
    chosen: Proposal,
    spi_in: bytes,
    spi_out: bytes,
    local_ts: tuple[TrafficSelector, ...],
    remote_ts: tuple[TrafficSelector, ...],
    nonce_i: bytes,
    nonce_r: bytes,
    we_initiated: bool,
    g_ir: bytes | None = None,
    additional: tuple[bytes, ...] = (),
    rekey_of: int | None = None,
    per_resource: bool = False,
) -> ChildSa:
    """Derive KEYMAT, record the CHILD SA and emit ChildSaInstalled (RFC 7296 §2.17).

    `nonce_i`/`nonce_r` and `we_initiated` are those of the exchange that creates the
    CHILD SA (IKE_AUTH, or the CREATE_CHILD_SA whichever side sent); `g_ir` is the
    new shared secret when that exchange had a key exchange (PFS), `additional` those
    of its IKE_FOLLOWUP_KE exchanges (RFC 9370 §2.2.4); `per_resource`: one of a group
    of CHILD SAs with the same selectors, one per worker (RFC 9611).
    """
    if sa.suite is None or sa.keys is None:
        raise InvalidSyntax("CHILD SA before the IKE SA has keys")
    try:
        suite = child_suite(chosen)
    except IkeError as exc:
        raise NoProposalChosen(f"selected ESP proposal is not implemented: {exc}") from exc
    keys = derive_child_keys_for(sa.suite, sa.keys.sk_d, suite, nonce_i, nonce_r, g_ir, additional)
    # KEYMAT's first half protects traffic from the exchange's initiator (§2.17).
    if we_initiated:
        encr_in, integ_in = keys.encr_r_to_i, keys.integ_r_to_i
        encr_out, integ_out = keys.encr_i_to_r, keys.integ_i_to_r
    else:
        encr_in, integ_in = keys.encr_i_to_r, keys.integ_i_to_r
        encr_out, integ_out = keys.encr_r_to_i, keys.integ_r_to_i
    now = sa.now
    rekey_time = _rekey_time(sa, config)
    child = ChildSa(
        unique_id=sa.next_child_id(),
        config=config,
        spi_in=int.from_bytes(spi_in, "big"),
        spi_out=int.from_bytes(spi_out, "big"),
        suite=suite,
        local_ts=local_ts,
        remote_ts=remote_ts,
        installed_at=now,
        expire_at=now + config.lifetime,
        rekey_at=now + rekey_time,
        per_resource=per_resource,
    )
    sa.children[child.unique_id] = child
    pfs = pfs_methods(chosen) if g_ir is not None or additional else ()
    # Formatting selectors costs more than the rest of the line: only when it is logged.
    if log.isEnabledFor(logging.INFO):
        log.info(
            "%s: CHILD SA %s{%d} %s with SPIs %08x_i %08x_o and TS %s === %s (%s%s%s%s)",
            sa.name,
            config.name,
            child.unique_id,
            "established" if rekey_of is None else f"rekeyed {{{rekey_of}}}",
            child.spi_in,
            child.spi_out,
            format_selectors(child.local_ts),
            format_selectors(child.remote_ts),
            suite.name,
            f", PFS {'+'.join(pfs)}, quantum-safe: {'yes' if _pq(chosen) else 'no'}" if pfs else "",
            ", UDP-encapsulated" if sa.udp_encap else "",
            f", per-resource, worker {child.spi_in % sa.resources}" if per_resource else "",
        )
    sa.emit(
        _installed_event(
            sa,
            child,
            suite,
            (encr_in, integ_in, encr_out, integ_out),
            rekey_time,
            rekey_of,
            we_initiated,
            pfs,
            bool(pfs) and _pq(chosen),
        )
    )
    return child


def pfs_methods(chosen: Proposal) -> tuple[str, ...]:
    """Names of the key exchanges of a chosen ESP proposal: its PFS (RFC 7296 §1.3.1),
    additional ones included (RFC 9370 §2.2.4)."""
    methods = [dh_group(chosen), *(m for _, m in additional_key_exchanges(chosen))]
    return tuple(KE_METHODS[m].name if m in KE_METHODS else str(m) for m in methods if m)


def _pq(chosen: Proposal) -> bool:
    """An ML-KEM key exchange went into the CHILD SA's KEYMAT."""
    methods = [dh_group(chosen), *(m for _, m in additional_key_exchanges(chosen))]
    return any(m in KE_METHODS and KE_METHODS[m].kem for m in methods)


def _rekey_time(sa: TaskSa, config: ChildConfig) -> float:
    if sa.config.remote_access is not None and sa.nat_remote:
        # Windows behind a NAT refuses CHILD SA rekeys that the server starts, and
        # remote-access clients rekey their CHILD SAs themselves: the server starts
        # none there (the SA expires unreplaced only if the client stopped rekeying).
        return config.lifetime
    # Spread rekeys: up to a third of the margin earlier, so both ends rarely collide.
    jitter = int.from_bytes(sa.rng.token_bytes(2), "big") / 65536.0
    return max(config.rekey_time - jitter * config.rekey_margin / 3.0, 0.0)


def _installed_event(
    sa: TaskSa,
    child: ChildSa,
    suite: ChildSuite,
    keys: tuple[bytes, bytes, bytes, bytes],
    rekey_time: float,
    rekey_of: int | None,
    we_initiated: bool,
    pfs: tuple[str, ...],
    quantum_safe: bool,
) -> ChildSaInstalled:
    config = child.config
    encr_in, integ_in, encr_out, integ_out = keys
    return ChildSaInstalled(
        connection=sa.config.name,
        child=config.name,
        unique_id=child.unique_id,
        ike_sa_id=sa.ike_sa_id,
        spi_in=child.spi_in,
        spi_out=child.spi_out,
        encr_id=int(suite.encryption.transform_id),
        encr_key_bits=suite.encryption.key_bits,
        integ_id=int(suite.integrity.transform_id) if suite.integrity is not None else 0,
        esn=suite.esn,
        encr_key_in=encr_in,
        integ_key_in=integ_in,
        encr_key_out=encr_out,
        integ_key_out=integ_out,
        local_ts=child.local_ts,
        remote_ts=child.remote_ts,
        udp_encap=sa.udp_encap,
        partial_csum=sa.partial_csum,
        local=sa.local,
        remote=sa.remote,
        lifetime=config.lifetime,
        rekey_time=rekey_time,
        life_bytes=config.life_bytes,
        life_packets=config.life_packets,
        replay_window=config.replay_window,
        rekey_of=rekey_of,
        initiator=we_initiated,
        pfs="+".join(pfs),
        quantum_safe=quantum_safe,
        per_resource=child.per_resource,
    )


def _peer_child_error(config: ChildConfig, notify: Notify) -> str:
    kind = enum_name(NotifyType, notify.notify_type)
    if notify.notify_type == NotifyType.NO_PROPOSAL_CHOSEN:
        return f"peer accepts none of our ESP proposals ({', '.join(config.esp_proposals)}): {kind}"
    if notify.notify_type == NotifyType.TS_UNACCEPTABLE:
        return (
            f"peer does not accept our traffic selectors {format_selectors(config.local_ts)} "
            f"=== {format_selectors(config.remote_ts)}: {kind}"
        )
    return f"peer refused the CHILD SA: {kind}"

"""IKE_AUTH: identities, PSK and certificate authentication (RFC 7296 §1.2, §2.15, RFC 7427).

Each side proves it knows the PSK with AUTH = prf(prf(PSK, "Key Pad for IKEv2"),
RealMessage | peer's Nonce | prf(SK_p, ID')). The responder may pick, among the
connections that matched the IKE_SA_INIT's addresses, the one whose identities fit
(IDi, and IDr if the initiator named us). With auth "pubkey" each side sends its
certificate chain and an RFC 7427 signature; the peer's chain is validated against
our CAs and must name the peer's identity (`ikev2.certs`).

A remote-access client may leave AUTH out of its first IKE_AUTH request and log in
with EAP instead (§2.16): the responder answers with its identity, its certificate and
signature and an EAP Request; the EAP rounds follow, each its own IKE_AUTH exchange
(`ikev2.eap_mschapv2` runs EAP-MSCHAPv2 for password logins, `ikev2.eap_tls` EAP-TLS
for certificate logins, and with auth "any" switches to it when the client Naks
MSCHAPv2 for it); the last exchange carries
both sides' AUTH with the MSK as shared secret. The same task object serves every
round: the IKE SA keeps it (responder) or sends it again (initiator).
"""

from __future__ import annotations

import logging
import sys

from cryptography import x509
from cryptography.x509.oid import NameOID

from ikev2.codec import Authentication, Certificate, Eap, IdI, IdR, Message, Notify, Payload
from ikev2.config import ConnectionConfig, RemoteAccess
from ikev2.constants import AuthMethod, NotifyType
from ikev2.crypto.auth import psk_auth, signed_octets, verify_psk_auth, verify_signature_auth
from ikev2.crypto.keys import IkeKeys
from ikev2.crypto.ppk import mix_ppk, parse_ppk_identity, ppk_identity_data
from ikev2.eap_mschapv2 import EapClient, EapServer
from ikev2.eap_tls import EapAuthenticator, EapMethodChoice, EapTlsClient, EapTlsServer
from ikev2.errors import (
    AuthenticationFailed,
    ConfigError,
    InvalidSyntax,
    LocalProtocolError,
    LoginRefused,
    PeerErrorNotify,
)
from ikev2.events import IkeSaEstablished
from ikev2.identity import Identity
from ikev2.tasks.base import Task, TaskSa

log = logging.getLogger(__name__)


def _id_payload(cls: type[IdI] | type[IdR], ident: Identity) -> IdI | IdR:
    return cls(ident.id_type, ident.data)


def _psk(config: ConnectionConfig) -> bytes:
    if not config.psk:
        raise LocalProtocolError(f"connection {config.name!r} has no pre-shared key")
    return config.psk


def _method(number: int) -> str:
    """An AUTH method as an operator reads it: "DIGITAL_SIGNATURE (14)" (RFC 7296 §3.8,
    RFC 7427 §3); a number we do not know stays a number."""
    try:
        return f"{AuthMethod(number).name} ({number})"
    except ValueError:
        return f"unknown method {number}"


def _identity(payload: IdI | IdR) -> Identity:
    try:
        return Identity.from_wire(payload.id_type, payload.data)
    except ConfigError as exc:
        raise AuthenticationFailed(f"peer sent an unusable identity: {exc}") from exc


class IkeAuth(Task):
    """Sends our identity and AUTH, checks the peer's."""

    name = "ike_auth"

    def __init__(self) -> None:
        self.eap_server: EapAuthenticator | None = None
        """Responder: the EAP login in progress."""
        self.eap_client: EapClient | EapTlsClient | None = None
        """Initiator: our EAP login in progress."""
        self.first_id: IdI | IdR | None = None
        """The initiator's ID payload of the first round: the final AUTHs sign it."""
        self.server_id: IdI | IdR | None = None
        """The responder's ID payload of the first round."""
        self.peer: Identity | None = None
        self.initial_contact = False
        self.eap_out: Eap | None = None
        """The EAP packet that goes out in our next message."""
        self.rounds = 0
        """IKE_AUTH exchanges this task took part in."""
        self.peer_certificate: x509.Certificate | None = None
        """The end-entity certificate the peer's AUTH signature verified with."""
        self.auth_keys: IkeKeys | None = None
        """The keys the AUTH payloads use instead of the IKE SA's: the un-mixed ones of
        a NO_PPK_AUTH, or an initiator's PPK-mixed ones until the responder confirms
        the PPK (RFC 8784 §3)."""

    def _auth_data(self, sa: TaskSa, ident: IdI | IdR, *, ours: bool) -> bytes:
        keys = self.auth_keys or sa.keys
        if sa.suite is None or keys is None:
            raise LocalProtocolError("IKE_AUTH before IKE_SA_INIT finished")
        # The signer's octets: its own IKE_SA_INIT message, the other's nonce, its ID.
        signer_is_initiator = sa.initiator if ours else not sa.initiator
        if signer_is_initiator:
            real, nonce, sk_p = sa.init_request, sa.nonce_r, keys.sk_pi
        else:
            real, nonce, sk_p = sa.init_response, sa.nonce_i, keys.sk_pr
        # RFC 9242 §3.3.2: IntAuth of the IKE_INTERMEDIATE messages follows.
        return signed_octets(real, nonce, sa.suite.prf, sk_p, ident.id_prime) + sa.int_auth

    def _established(
        self, sa: TaskSa, now: float, peer: Identity, *, initial_contact: bool = False
    ) -> None:
        sa.established(now, peer, initial_contact=initial_contact)
        user = f" as user {sa.eap_identity!r}" if sa.eap_identity else ""
        # Interned: the event stays with the daemon for the SA's life, and thousands of
        # SAs share one suite and usually one local identity.
        suite = sys.intern(sa.suite.name if sa.suite is not None else "?")
        log.info(
            "%s: IKE SA established between %s[%s] and %s[%s]%s (%s, quantum-safe: %s, ppk: %s)",
            sa.name,
            sa.local[0],
            sa.config.local_id,
            sa.remote[0],
            sa.peer_id,
            user,
            suite,
            "yes" if sa.quantum_safe else "no",
            "yes" if sa.ppk_used else "no",
        )
        sa.emit(
            IkeSaEstablished(
                connection=sa.config.name,
                ike_sa_id=sa.ike_sa_id,
                initiator=sa.initiator,
                spi_i=int.from_bytes(sa.spi_i, "big"),
                spi_r=int.from_bytes(sa.spi_r, "big"),
                local=sa.local,
                remote=sa.remote,
                local_id=sys.intern(str(sa.config.local_id)),
                remote_id=str(sa.peer_id),
                suite=suite,
                nat_local=sa.nat_local,
                nat_remote=sa.nat_remote,
                udp_encap_reason=sa.udp_encap_reason,
                eap_identity=sa.eap_identity,
                quantum_safe=sa.quantum_safe,
                ppk_used=sa.ppk_used,
            )
        )

    # --- initiator ----------------------------------------------------------------------

    def build_request(self, sa: TaskSa, out: list[Payload]) -> None:
        self.rounds += 1
        if self.rounds > 1:
            self._build_eap_request(sa, out)
            return
        config = sa.config
        idi = _id_payload(IdI, config.local_id)
        self.first_id = idi
        out.append(idi)
        if config.credentials is not None and config.auth == "pubkey":
            out += config.credentials.cert_payloads()
        if sa.send_initial_contact:
            # §2.4: we hold no other IKE SA with this peer; it may drop stale ones.
            out.append(Notify(NotifyType.INITIAL_CONTACT))
        if config.trust_anchors is not None and config.auth == "pubkey":
            # §3.7: the CAs we trust, so the peer picks a matching certificate.
            out.append(config.trust_anchors.certreq())
        if config.remote_id is not None:
            out.append(_id_payload(IdR, config.remote_id))
        if not _eap_client(config):
            out += self._initiator_auth(sa, idi)
        # else: no AUTH asks the responder for EAP (§2.16).

    def _initiator_auth(self, sa: TaskSa, idi: IdI | IdR) -> list[Payload]:
        """Our AUTH; with a PPK both sides support (RFC 8784 §3), AUTH over the mixed
        SK_pi, PPK_IDENTITY, and unless the PPK is required a NO_PPK_AUTH over the
        un-mixed SK_pi, so a responder without our PPK can still authenticate us."""
        ppk = sa.config.ppk
        if ppk is None or not sa.ppk_offered or sa.suite is None or sa.keys is None:
            return [self._our_auth(sa, idi)]
        no_ppk = None if ppk.required else self._our_auth(sa, idi).data
        self.auth_keys = mix_ppk(sa.suite.prf, ppk.key, sa.keys)
        out: list[Payload] = [
            self._our_auth(sa, idi),
            Notify(NotifyType.PPK_IDENTITY, ppk_identity_data(ppk.ppk_id)),
        ]
        if no_ppk is not None:
            out.append(Notify(NotifyType.NO_PPK_AUTH, no_ppk))
        return out

    def _build_eap_request(self, sa: TaskSa, out: list[Payload]) -> None:
        """A later round of our EAP login: the next EAP Response, or after EAP-Success
        the AUTH keyed with the MSK (§2.16)."""
        if self.eap_out is not None:
            out.append(self.eap_out)
            self.eap_out = None
            return
        if self.eap_client is None or self.eap_client.msk is None or self.first_id is None:
            raise LocalProtocolError("EAP round without an EAP login")
        out.append(self._msk_auth(sa, self.eap_client.msk, self.first_id))

    def process_response(self, sa: TaskSa, message: Message) -> None:
        if self.rounds > 1:
            self._process_eap_response(sa, message)
            return
        failed = message.notify(NotifyType.AUTHENTICATION_FAILED)
        if failed is not None:
            what = "certificates and CAs" if sa.config.auth == "pubkey" else "PSK"
            if self.auth_keys is not None:
                # We sent PPK_IDENTITY (RFC 8784 §3): the PPK may be what differs.
                what += ", the post-quantum preshared key"
            raise PeerErrorNotify(
                NotifyType.AUTHENTICATION_FAILED,
                failed.data,
                "peer rejected our authentication (AUTHENTICATION_FAILED): "
                f"check the {what} and identities on both sides",
            )
        idr = message.get(IdR)
        auth = message.get(Authentication)
        if idr is None or auth is None:
            for notify in message.error_notifies():
                raise PeerErrorNotify(notify.notify_type, notify.data)
            raise InvalidSyntax("IKE_AUTH response lacks IDr or AUTH")
        peer = _identity(idr)
        expected = sa.config.remote_id
        if expected is not None and peer != expected:
            raise AuthenticationFailed(f"peer identified as {peer}, but we expect {expected}")
        self._initiator_ppk_outcome(sa, peer, message)
        self._verify(sa, idr, auth, peer, message)
        if not _eap_client(sa.config):
            self._established(sa, sa.now, peer)
            return
        eap = message.get(Eap)
        client = sa.config.ra_client
        if eap is None or client is None or client.eap_identity is None:
            raise AuthenticationFailed(f"server {peer} does not start the EAP login we asked for")
        self.peer, self.server_id = peer, idr
        if client.eap_tls is not None:
            self.eap_client = EapTlsClient(
                client.eap_identity, client.eap_tls, sa.config.trust_anchors
            )
        elif client.nt_hash is not None:
            self.eap_client = EapClient(sa.rng, client.eap_identity, client.nt_hash)
        else:
            raise LocalProtocolError("an EAP client without a password or a certificate")
        self._answer_eap(sa, eap)

    def _initiator_ppk_outcome(self, sa: TaskSa, peer: Identity, message: Message) -> None:
        """RFC 8784 §3: a PPK_IDENTITY in the response says the responder used our PPK;
        without it, it authenticated us by NO_PPK_AUTH and both keep the un-mixed keys."""
        mixed, self.auth_keys = self.auth_keys, None
        if mixed is None:
            return
        if message.notify(NotifyType.PPK_IDENTITY) is not None:
            sa.use_ppk(mixed)
            return
        ppk = sa.config.ppk
        if ppk is not None and ppk.required:
            raise AuthenticationFailed(
                f"peer {peer} did not use our post-quantum preshared key, and ppk_required is set"
            )
        log.info("%s: peer %s does not have our PPK; continuing without it", sa.name, peer)

    def _answer_eap(self, sa: TaskSa, eap: Eap) -> None:
        if self.eap_client is None:
            raise LocalProtocolError("EAP without an EAP login")
        self.eap_out = self.eap_client.process(eap)
        if self.eap_out is None and self.eap_client.msk is None:
            raise AuthenticationFailed("EAP login ended without a key")
        sa.continue_auth()

    def _process_eap_response(self, sa: TaskSa, message: Message) -> None:
        failed = message.notify(NotifyType.AUTHENTICATION_FAILED)
        if failed is not None:
            raise PeerErrorNotify(
                NotifyType.AUTHENTICATION_FAILED,
                failed.data,
                "server refused our EAP login (AUTHENTICATION_FAILED): check the user and password",
            )
        eap = message.get(Eap)
        if eap is not None:
            self._answer_eap(sa, eap)
            return
        auth = message.get(Authentication)
        client = self.eap_client
        if auth is None or client is None or client.msk is None or self.server_id is None:
            raise InvalidSyntax("IKE_AUTH response of an EAP login lacks EAP and AUTH")
        self._verify_msk_auth(sa, auth, client.msk, self.server_id)
        if self.peer is None:
            raise LocalProtocolError("EAP login without the server's identity")
        self._established(sa, sa.now, self.peer)

    # --- responder ----------------------------------------------------------------------

    def process_request(self, sa: TaskSa, message: Message) -> None:
        self.rounds += 1
        if self.eap_server is not None:
            self._process_eap_request(sa, message)
            return
        idi = message.get(IdI)
        auth = message.get(Authentication)
        if idi is None:
            raise AuthenticationFailed("peer sent no IDi")
        peer = _identity(idi)
        idr = message.get(IdR)
        wanted_me = _identity(idr) if idr is not None else None
        config = self._pick(sa, peer, wanted_me)
        sa.use_connection(config)
        # §2.4: INITIAL_CONTACT: the peer holds no other IKE SA with us; the endpoint
        # drops stale ones.
        initial_contact = message.notify(NotifyType.INITIAL_CONTACT) is not None
        ra = config.remote_access
        if auth is None:
            if ra is None:
                raise AuthenticationFailed(f"peer {peer} sent no AUTH, and we offer it no EAP")
            # §2.16: no AUTH asks for EAP. The user is named in EAP (Windows sends its
            # IP address as IDi), so the login starts with an Identity round.
            self.eap_server = _eap_server(sa, config, ra, peer, initial_contact)
            self.eap_out = self.eap_server.start()
            self.first_id, self.peer, self.initial_contact = idi, peer, initial_contact
            return
        if ra is not None and not ra.accepts_certificates:
            raise AuthenticationFailed(
                f"client {peer} authenticates with {_method(auth.method)}; this server "
                "accepts EAP-MSCHAPv2 logins only"
            )
        auth = self._responder_ppk(sa, config, auth, peer, message)
        try:
            self._verify(sa, idi, auth, peer, message)
        except AuthenticationFailed as exc:
            if self.auth_keys is None:
                raise
            # §3: a peer that named our PPK must prove it; no fallback to NO_PPK_AUTH.
            raise AuthenticationFailed(
                f"{exc}, or its post-quantum preshared key for the PPK id it named differs "
                "from ours"
            ) from None
        if self.auth_keys is not None:
            # The PPK is confirmed: the mixed keys are the IKE SA's from here on; our
            # AUTH and the first CHILD SA's KEYMAT use them (RFC 8784 §3).
            sa.use_ppk(self.auth_keys)
        if ra is not None:
            self._certificate_login(sa, ra, peer, initial_contact)
        self._established(sa, sa.now, peer, initial_contact=initial_contact)

    def _responder_ppk(
        self,
        sa: TaskSa,
        config: ConnectionConfig,
        auth: Authentication,
        peer: Identity,
        message: Message,
    ) -> Authentication:
        """RFC 8784 §3 on the responder: the AUTH to verify, with the keys to verify it
        with in ``self.auth_keys``. A PPK_IDENTITY naming our PPK means AUTH covers the
        mixed SK_pi; an unknown one falls back to NO_PPK_AUTH unless we require the PPK."""
        ppk = config.ppk
        notify = message.notify(NotifyType.PPK_IDENTITY) if sa.ppk_offered else None
        if notify is None:
            if ppk is not None and ppk.required:
                raise AuthenticationFailed(
                    f"peer {peer} did not use a post-quantum preshared key "
                    f"({'no PPK_IDENTITY' if sa.ppk_offered else 'no USE_PPK'}), "
                    "and ppk_required is set"
                )
            return auth
        ppk_id = parse_ppk_identity(notify.data)
        if ppk is not None and ppk_id is not None and ppk_id == ppk.ppk_id:
            if sa.suite is None or sa.keys is None:
                raise LocalProtocolError("IKE_AUTH before IKE_SA_INIT finished")
            self.auth_keys = mix_ppk(sa.suite.prf, ppk.key, sa.keys)
            return auth
        shown = ppk_id.decode(errors="backslashreplace") if ppk_id is not None else "?"
        if ppk is not None and ppk.required:
            raise AuthenticationFailed(
                f"peer {peer} uses the post-quantum preshared key with PPK id {shown!r}, "
                f"not ours ({ppk.ppk_id.decode(errors='backslashreplace')!r}), and "
                "ppk_required is set"
            )
        no_ppk = message.notify(NotifyType.NO_PPK_AUTH)
        if no_ppk is None:
            raise AuthenticationFailed(
                f"peer {peer} uses the post-quantum preshared key with PPK id {shown!r}, "
                "which we do not have, and sent no NO_PPK_AUTH to fall back to"
            )
        log.info(
            "%s: peer %s uses PPK id %r, which we do not have; authenticating it by NO_PPK_AUTH",
            sa.name,
            peer,
            shown,
        )
        # §3: NO_PPK_AUTH holds the Authentication Data of an AUTH payload of the same
        # method computed with the un-mixed SK_pi.
        return Authentication(auth.method, no_ppk.data)

    def _certificate_login(
        self, sa: TaskSa, ra: RemoteAccess, peer: Identity, initial_contact: bool
    ) -> None:
        """A remote-access client signed with a certificate (RFC 7427) that chains to
        the server's client CAs. Its user is the certificate's common name, whatever
        identity it sent as IDi (the SSL server names certificate users the same way);
        then the server's gate (session limits, the users file) has its say, as it
        does for an EAP login."""
        cert = self.peer_certificate
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME) if cert else []
        user = names[0].value if names else ""
        if not isinstance(user, str) or not user:
            raise LoginRefused(
                f"client certificate of {peer} has no common name to name its user",
                "certificate without a common name",
            )
        sa.record_eap_identity(user)
        gate = ra.gate
        refusal = (
            gate(user, sa.remote[0], initial_contact, sa.ike_sa_id) if gate is not None else None
        )
        if refusal is not None:
            raise LoginRefused(f"{refusal}: certificate user {user!r}", refusal)
        log.info("%s: user %r logged in with a certificate", sa.name, user)

    def _process_eap_request(self, sa: TaskSa, message: Message) -> None:
        """A later round of the client's EAP login (§2.16)."""
        server = self.eap_server
        if server is None or self.first_id is None or self.peer is None:
            raise LocalProtocolError("EAP round without an EAP login")
        if not server.done:
            eap = message.get(Eap)
            if eap is None:
                raise AuthenticationFailed(f"client {self.peer} sent no EAP in its EAP login")
            try:
                self.eap_out = server.process(eap)
            finally:
                if server.identity:
                    sa.record_eap_identity(server.identity)
            return
        auth = message.get(Authentication)
        if auth is None or server.msk is None:
            raise AuthenticationFailed(f"client {self.peer} sent no AUTH after its EAP login")
        self._verify_msk_auth(sa, auth, server.msk, self.first_id)
        log.info("%s: user %r logged in with %s", sa.name, server.identity, server.method)
        self._established(sa, sa.now, self.peer, initial_contact=self.initial_contact)

    def _pick(self, sa: TaskSa, peer: Identity, wanted_me: Identity | None) -> ConnectionConfig:
        for config in sa.candidates:
            if config.remote_id is not None and config.remote_id != peer:
                continue
            if wanted_me is not None and config.local_id != wanted_me:
                continue
            return config
        raise AuthenticationFailed(
            f"no connection for peer identity {peer}"
            + (f" asking for us as {wanted_me}" if wanted_me is not None else "")
            + f" at {sa.remote[0]}"
        )

    def build_response(self, sa: TaskSa, out: list[Payload]) -> None:
        if self.eap_server is not None and self.rounds > 1:
            if self.eap_out is not None:
                out.append(self.eap_out)
                self.eap_out = None
                return
            # The last round: our AUTH keyed with the MSK, over the same octets (§2.16).
            if self.eap_server.msk is None or self.server_id is None:
                raise LocalProtocolError("EAP login ended without a key")
            out.append(self._msk_auth(sa, self.eap_server.msk, self.server_id))
            return
        config = sa.config
        idr = _id_payload(IdR, config.local_id)
        self.server_id = idr
        out.append(idr)
        if config.credentials is not None and config.auth == "pubkey":
            out += config.credentials.cert_payloads()
        out.append(self._our_auth(sa, idr))
        if sa.ppk_used:
            # §3: tells the initiator we used its PPK (the data is empty).
            out.append(Notify(NotifyType.PPK_IDENTITY))
        if self.eap_out is not None:
            out.append(self.eap_out)
            self.eap_out = None

    # --- both ---------------------------------------------------------------------------

    def _our_auth(self, sa: TaskSa, ident: IdI | IdR) -> Authentication:
        """Our AUTH payload: a PSK MIC, or an RFC 7427 signature with our key."""
        if sa.suite is None:
            raise LocalProtocolError("IKE_AUTH before IKE_SA_INIT finished")
        octets = self._auth_data(sa, ident, ours=True)
        config = sa.config
        if config.auth == "pubkey":
            if config.credentials is None:
                raise LocalProtocolError(f"connection {config.name!r} has no certificate")
            return Authentication(
                AuthMethod.DIGITAL_SIGNATURE, config.credentials.sign(octets, sa.peer_hashes)
            )
        return Authentication(
            AuthMethod.SHARED_KEY_MIC, psk_auth(sa.suite.prf, _psk(config), octets)
        )

    def _msk_auth(self, sa: TaskSa, key: bytes, ident: IdI | IdR) -> Authentication:
        """AUTH with the EAP MSK as the shared secret (§2.16)."""
        if sa.suite is None:
            raise LocalProtocolError("IKE_AUTH before IKE_SA_INIT finished")
        octets = self._auth_data(sa, ident, ours=True)
        return Authentication(AuthMethod.SHARED_KEY_MIC, psk_auth(sa.suite.prf, key, octets))

    def _verify_msk_auth(
        self, sa: TaskSa, auth: Authentication, key: bytes, ident: IdI | IdR
    ) -> None:
        if sa.suite is None:
            raise LocalProtocolError("IKE_AUTH before IKE_SA_INIT finished")
        if auth.method != AuthMethod.SHARED_KEY_MIC:
            raise AuthenticationFailed(
                f"peer's AUTH after EAP uses {_method(auth.method)}, not the MSK (§2.16)"
            )
        try:
            verify_psk_auth(sa.suite.prf, key, self._auth_data(sa, ident, ours=False), auth.data)
        except AuthenticationFailed:
            raise AuthenticationFailed(
                "peer's AUTH after EAP does not match the EAP key (MSK)"
            ) from None

    def _verify(
        self,
        sa: TaskSa,
        ident: IdI | IdR,
        auth: Authentication,
        peer: Identity,
        message: Message,
    ) -> None:
        if sa.suite is None:
            raise LocalProtocolError("IKE_AUTH before IKE_SA_INIT finished")
        if sa.config.auth == "pubkey":
            self._verify_signature(sa, ident, auth, peer, message)
            return
        if auth.method != AuthMethod.SHARED_KEY_MIC:
            raise AuthenticationFailed(
                f"peer {peer} authenticates with {_method(auth.method)}; we expect "
                f"{_method(AuthMethod.SHARED_KEY_MIC)}, a pre-shared key"
            )
        try:
            verify_psk_auth(
                sa.suite.prf, _psk(sa.config), self._auth_data(sa, ident, ours=False), auth.data
            )
        except AuthenticationFailed:
            raise AuthenticationFailed(
                f"peer {peer} failed PSK authentication: its pre-shared key differs from ours"
            ) from None

    def _verify_signature(
        self,
        sa: TaskSa,
        ident: IdI | IdR,
        auth: Authentication,
        peer: Identity,
        message: Message,
    ) -> None:
        anchors = sa.config.trust_anchors
        if anchors is None:
            raise LocalProtocolError(f"connection {sa.config.name!r} has no CA certificates")
        if auth.method != AuthMethod.DIGITAL_SIGNATURE:
            raise AuthenticationFailed(
                f"peer {peer} authenticates with {_method(auth.method)}; we expect "
                f"{_method(AuthMethod.DIGITAL_SIGNATURE)}, a certificate signature (RFC 7427)"
            )
        certs = message.get_all(Certificate)
        if not certs:
            raise AuthenticationFailed(f"peer {peer} sent no certificate")
        # Chain, validity, key usage and the identity in the certificate (RFC 4945).
        validated = anchors.validate(certs, peer, sa.wall_clock())
        self.peer_certificate = validated.certificate
        scheme = verify_signature_auth(
            validated.public_key, self._auth_data(sa, ident, ours=False), auth.data
        )
        log.info("%s: peer %s authenticated with %s", sa.name, peer, scheme.name)


def _eap_server(
    sa: TaskSa, config: ConnectionConfig, ra: RemoteAccess, peer: Identity, initial_contact: bool
) -> EapAuthenticator:
    """The EAP method(s) this server offers a client that sent no AUTH: EAP-MSCHAPv2
    for auth "password", EAP-TLS for "certificate" (Windows user certificates; the
    others sign with RFC 7427), MSCHAPv2 then EAP-TLS on the client's Nak for "any"."""
    gate = ra.gate
    address, ike_sa_id = sa.remote[0], sa.ike_sa_id
    # The INITIAL_CONTACT of the first IKE_AUTH request goes to the gate: the sessions
    # this login replaces at its end (§2.4) do not count against the limits.
    login_gate = (
        None if gate is None else (lambda user: gate(user, address, initial_contact, ike_sa_id))
    )
    mschapv2 = (
        EapServer(sa.rng, ra.nt_hash, login_gate)
        if ra.accepts_eap and ra.nt_hash is not None
        else None
    )
    credentials, anchors = config.credentials, config.trust_anchors
    if not ra.accepts_certificates or credentials is None or anchors is None:
        if mschapv2 is None:
            raise AuthenticationFailed(f"peer {peer} sent no AUTH, and we offer it no EAP")
        return mschapv2

    def tls() -> EapTlsServer:
        return EapTlsServer(sa.rng, credentials, anchors, sa.wall_clock, login_gate)

    return tls() if mschapv2 is None else EapMethodChoice(mschapv2, tls)


def _eap_client(config: ConnectionConfig) -> bool:
    """We log in to a remote-access server with EAP (and send no AUTH at first)."""
    return config.ra_client is not None and config.ra_client.eap_identity is not None

"""EAP-TLS for IKEv2 remote access (RFC 5216 with TLS 1.2, RFC 9190 with TLS 1.3).

Windows' "user certificate" VPN logins are EAP-TLS inside IKE_AUTH (RFC 7296 §2.16):
a TLS handshake whose client certificate names the user, carried in EAP-TLS packets,
one per IKE_AUTH exchange. Sans-I/O, like `ikev2.eap_mschapv2`: one EAP packet in,
one out.
- `EapTlsServer`: Identity round, Start, the TLS records fragmented into EAP packets
  (RFC 5216 §2.1.5) with ACKs between fragments, and EAP-Success once the client's
  certificate chains to our client CAs (`ikev2.certs.TrustAnchors`, the validator of
  RFC 7427 logins). With TLS 1.3 the server first sends the protected success
  indication, one octet 0x00 of application data (RFC 9190 §2.5).
- `EapTlsClient`: the peer's side, for our own client (tests, a load generator).
- `EapMethodChoice`: with auth "any", EAP-MSCHAPv2 first; a client that answers its
  challenge with a Nak for EAP-TLS (RFC 3748 §5.3.1) gets EAP-TLS instead.

The TLS itself runs in memory in OpenSSL through pyOpenSSL. The MSK (RFC 5216 §2.3:
the TLS 1.2 exporter with label "client EAP encryption"; RFC 9190 §2.3: the TLS 1.3
exporter "EXPORTER_EAP_TLS_Key_Material" with context 0x0D) is a keying material
exporter (RFC 5705), which Python's `ssl` does not offer: an `SSLObject` hides the
master secret and the randoms, and its only way out for them is the key log file, which
would put every login's secrets on disk. pyOpenSSL is the smallest well-kept package
with an exporter: it wraps the same OpenSSL that `ssl` uses, is kept by the maintainers
of `cryptography` (its only dependency, which we already have), and its `Connection`
runs over memory BIOs, so the TLS stays sans-I/O.
"""

from __future__ import annotations

import datetime
import enum
import logging
from collections.abc import Callable
from typing import Never, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from OpenSSL.crypto import X509

from ikev2.certs import LocalCredentials, TrustAnchors, certificate_user
from ikev2.codec import Certificate, Eap
from ikev2.codec.eap import (
    EapData,
    EapIdentity,
    EapNak,
    EapTls,
    EapTlsFlag,
    EapType,
    eap_data,
    eap_payload,
)
from ikev2.constants import CertEncoding, EapCode
from ikev2.crypto.rng import RandomSource
from ikev2.eap_mschapv2 import EapCause, EapFailed, EapGate, EapServer
from ikev2.errors import AuthenticationFailed, InvalidSyntax

log = logging.getLogger(__name__)

VERIFY_FAILED = "certificate verify failed"
"""OpenSSL's reason when the client's chain does not lead to a client CA."""

MODE_NO_AUTO_CHAIN = 0x00000008
"""OpenSSL's SSL_MODE_NO_AUTO_CHAIN (ssl.h), which pyOpenSSL does not name."""

FRAGMENT_SIZE = 1024
"""TLS octets per EAP-TLS packet: with the EAP, SK and IKE headers the IKE message
stays below 1,232 octets, so a fragment needs neither IKE (RFC 7383) nor IP
fragmentation (strongSwan's eap-tls uses the same size)."""
MAX_TLS_MESSAGE = 65536
"""The longest reassembled TLS flight accepted (a client's certificate chain and its
handshake messages take a few kilobytes)."""
MAX_ROUNDS = 64
"""EAP round trips before a login is given up (a client cannot keep the IKE SA
half-open by acknowledging forever)."""
TLS12_LABEL = b"client EAP encryption"
"""RFC 5216 §2.3: Key_Material = TLS-PRF(master, label, client.random || server.random),
which is the RFC 5705 exporter with this label and no context."""
TLS13_LABEL = b"EXPORTER_EAP_TLS_Key_Material"
"""RFC 9190 §2.3: Key_Material = TLS-Exporter(label, Type-Code, 128)."""
SUCCESS_INDICATION = b"\x00"
"""RFC 9190 §2.5: the server's protected success indication (application data)."""
MSK_LEN = 64


class EapAuthenticator(Protocol):
    """An EAP server method as IKE_AUTH drives it (RFC 7296 §2.16)."""

    @property
    def identity(self) -> str: ...

    @property
    def msk(self) -> bytes | None: ...

    @property
    def method(self) -> str: ...

    @property
    def done(self) -> bool: ...

    def start(self) -> Eap: ...

    def process(self, payload: Eap) -> Eap: ...


def msk(conn: SSL.Connection) -> bytes:
    """The MSK of a finished EAP-TLS handshake (RFC 5216 §2.3, RFC 9190 §2.3)."""
    if conn.get_protocol_version_name() == "TLSv1.3":
        material = conn.export_keying_material(TLS13_LABEL, 128, bytes([EapType.TLS]))
    else:
        material = conn.export_keying_material(TLS12_LABEL, 128)
    return bytes(material[:MSK_LEN])


def _context(
    method: int,
    credentials: LocalCredentials | None,
    anchors: TrustAnchors | None,
    now: float | None = None,
) -> SSL.Context:
    ctx = SSL.Context(method)
    # RFC 9190 §2.1: TLS 1.2 or later; older versions are refused in the handshake.
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    # No resumption: every login proves the certificate again (RFC 9190 §2.1.2 allows
    # it, but a resumed login would skip our client check).
    ctx.set_options(SSL.OP_NO_TICKET)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    if credentials is not None:
        ctx.use_certificate(credentials.certificate)
        ctx.use_privatekey(credentials.private_key)
        for cert in credentials.intermediates:
            ctx.add_extra_chain_cert(cert)
    if anchors is not None:
        # The CertificateRequest names our client CAs, so Windows offers a user
        # certificate they issued (RFC 5246 §7.4.4, RFC 8446 §4.2.4).
        # OpenSSL also checks the client's chain against them during the handshake
        # (with our clock): accepting any chain there and judging it afterwards would
        # need a verify callback, which pyOpenSSL makes with cffi's ffi.callback, in
        # memory both writable and executable; the systemd unit's
        # MemoryDenyWriteExecute=yes refuses that, and every login would fail under it.
        # `TrustAnchors.validate` still judges the chain after the handshake.
        store = ctx.get_cert_store()
        if store is None:
            raise ValueError("OpenSSL context without a certificate store")
        # Our Certificate message stays the chain we were given: without this OpenSSL
        # would complete it from this store (adding the client CA), a longer flight.
        ctx.set_mode(MODE_NO_AUTO_CHAIN)
        if now is not None:
            store.set_time(datetime.datetime.fromtimestamp(now, datetime.UTC))
        for anchor in anchors.certificates:
            ctx.add_client_ca(anchor)
            store.add_cert(X509.from_cryptography(anchor))
    return ctx


def _pull(conn: SSL.Connection) -> bytes:
    """Everything OpenSSL wrote to its outgoing memory BIO."""
    out = b""
    while True:
        try:
            chunk = conn.bio_read(65536)
        except SSL.WantReadError:
            return out
        if not chunk:
            return out
        out += chunk


def _tls_error(exc: SSL.Error) -> str:
    """OpenSSL's reasons ("tlsv1 alert unknown ca"): pyOpenSSL raises with a list of
    (library, function, reason) tuples."""
    queue = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
    reasons = [str(e[2]) for e in queue if isinstance(e, tuple) and len(e) > 2]
    return ", ".join(reasons) or str(exc) or type(exc).__name__


class _Framing:
    """EAP-TLS fragmentation and reassembly (RFC 5216 §2.1.5), the same on both sides."""

    def __init__(self, fragment_size: int, fail: Callable[[str], Never]) -> None:
        if fragment_size < 16:
            raise ValueError("an EAP-TLS fragment size below 16 octets is useless")
        self._size = fragment_size
        self._fail = fail
        self._outgoing = b""
        self._sent_first = False
        self._incoming = bytearray()
        self._expected: int | None = None
        self._receiving = False

    @property
    def sending(self) -> bool:
        """Fragments of our message are still to go: the peer's next packet is an ACK."""
        return bool(self._outgoing)

    def queue(self, data: bytes) -> None:
        self._outgoing, self._sent_first = data, False

    def next_fragment(self) -> EapTls:
        """The next fragment of our queued message: L (the whole length) on the first,
        M on all but the last."""
        total = len(self._outgoing) if not self._sent_first else None
        chunk, self._outgoing = self._outgoing[: self._size], self._outgoing[self._size :]
        if total is not None:
            self._sent_first = True
        flags = EapTlsFlag.MORE if self._outgoing else 0
        return EapTls(flags, total, chunk)

    def receive(self, packet: EapTls) -> bytes | None:
        """A fragment of the peer's message: the whole message once its last fragment
        came, else None (the caller ACKs)."""
        more = bool(packet.flags & EapTlsFlag.MORE)
        if not self._receiving:
            if more and packet.tls_length is None:
                self._fail("first fragment without a TLS Message Length (RFC 5216 §2.1.5)")
            self._expected = packet.tls_length
        elif packet.tls_length is not None and packet.tls_length != self._expected:
            self._fail(f"TLS Message Length changed from {self._expected} to {packet.tls_length}")
        if self._expected is not None and self._expected > MAX_TLS_MESSAGE:
            self._fail(f"TLS Message Length {self._expected} exceeds {MAX_TLS_MESSAGE}")
        if more and not packet.data:
            self._fail("empty fragment with more to follow")
        self._incoming += packet.data
        if len(self._incoming) > (self._expected or MAX_TLS_MESSAGE):
            self._fail(
                f"{len(self._incoming)} octets of TLS data, more than the "
                f"{self._expected or MAX_TLS_MESSAGE} announced"
            )
        if more:
            self._receiving = True
            return None
        if self._expected is not None and len(self._incoming) != self._expected:
            self._fail(
                f"{len(self._incoming)} octets of TLS data, the TLS Message Length "
                f"said {self._expected}"
            )
        message = bytes(self._incoming)
        self._incoming.clear()
        self._receiving, self._expected = False, None
        return message


class _State(enum.Enum):
    IDENTITY = "identity"
    HANDSHAKE = "handshake"
    FINISHING = "finishing"
    """Our last flight (Finished, or the success indication) is out; an ACK ends it."""
    DONE = "done"


class EapTlsServer:
    """The authenticator's side of EAP-TLS over IKEv2: the client's certificate must
    chain to `anchors`; the user is its CN."""

    method = "EAP-TLS"

    def __init__(
        self,
        rng: RandomSource,
        credentials: LocalCredentials,
        anchors: TrustAnchors,
        wall_clock: Callable[[], float],
        gate: EapGate | None = None,
        fragment_size: int = FRAGMENT_SIZE,
    ) -> None:
        self._anchors = anchors
        self._wall_clock = wall_clock
        self._gate = gate
        self._framing = _Framing(fragment_size, self._protocol)
        ctx = _context(SSL.TLS_SERVER_METHOD, credentials, anchors, wall_clock())
        self._conn = SSL.Connection(ctx)
        self._conn.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
        self._conn.set_accept_state()
        self._state = _State.IDENTITY
        self._identifier = rng.token_bytes(1)[0]
        self._rounds = 0
        self.identity = ""
        """The EAP identity until the certificate is checked, then the user: its CN."""
        self.eap_identity = ""
        """The EAP identity the client sent (informational: the certificate names the user)."""
        self.msk: bytes | None = None
        """The MSK, once the client's certificate was accepted."""
        self.version = ""
        """The TLS version agreed ("TLSv1.2", "TLSv1.3")."""

    @property
    def done(self) -> bool:
        """The EAP Success went out: the next IKE_AUTH request carries AUTH."""
        return self._state is _State.DONE

    @property
    def identifier(self) -> int:
        """The Identifier of the request we sent last."""
        return self._identifier

    def start(self) -> Eap:
        """The first request: Identity (RFC 3748 §5.1)."""
        return eap_payload(EapCode.REQUEST, self._identifier, EapIdentity())

    def begin(self, identity: str, identifier: int) -> Eap:
        """Take over after another method's Identity round (the client's Nak had
        `identifier`): the EAP-TLS Start."""
        self.identity = self.eap_identity = _printable(identity)
        self._identifier = identifier
        self._state = _State.HANDSHAKE
        return self._next(EapTls(EapTlsFlag.START))

    def process(self, payload: Eap) -> Eap:
        """The client's EAP Response in, our next EAP packet out; `EapFailed` when the
        login is refused (its `eap` is the EAP-Failure to send)."""
        self._rounds += 1
        if payload.code != EapCode.RESPONSE or payload.identifier != self._identifier:
            self._protocol(f"unexpected EAP code {payload.code} or identifier {payload.identifier}")
        if self._rounds > MAX_ROUNDS:
            self._protocol(f"no result after {MAX_ROUNDS} rounds")
        try:
            data = eap_data(payload)
        except InvalidSyntax as exc:
            self._protocol(f"unreadable EAP response: {exc}")
        if self._state is _State.IDENTITY:
            return self._on_identity(data)
        if isinstance(data, EapNak):
            self._fail(
                f"client {self._who()}wants EAP types {list(data.desired)}, not EAP-TLS",
                EapCause.REFUSED_TLS,
            )
        if not isinstance(data, EapTls) or data.flags & EapTlsFlag.START:
            self._protocol(f"expected an EAP-TLS response, got {_what(data)}")
        if self._framing.sending:
            if data.data or data.flags & EapTlsFlag.MORE or data.tls_length is not None:
                self._protocol("expected an ACK of our fragment, got TLS data")
            return self._next(self._framing.next_fragment())
        if self._state is _State.FINISHING:
            if data.data or data.flags & EapTlsFlag.MORE:
                self._protocol("expected the final ACK, got TLS data")
            self._state = _State.DONE
            return eap_payload(EapCode.SUCCESS, self._identifier)
        message = self._framing.receive(data)
        if message is None:
            return self._next(EapTls())  # ACK: send the next fragment
        return self._handshake(message)

    def _on_identity(self, data: EapData) -> Eap:
        if not isinstance(data, EapIdentity):
            self._protocol(f"expected an EAP Identity, got {_what(data)}")
        # Windows sends the certificate's UPN or CN; the certificate decides the user.
        self.identity = self.eap_identity = _printable(
            data.identity.decode("utf-8", errors="replace")
        )
        self._state = _State.HANDSHAKE
        return self._next(EapTls(EapTlsFlag.START))

    def _handshake(self, message: bytes) -> Eap:
        if not message:
            self._protocol("an empty EAP-TLS response where TLS data was due")
        conn = self._conn
        conn.bio_write(message)
        try:
            conn.do_handshake()
        except SSL.WantReadError:
            out = _pull(conn)
            if not out:
                self._protocol("the client's TLS flight ends mid-message")
            self._framing.queue(out)
            return self._next(self._framing.next_fragment())
        except SSL.Error as exc:
            reason = _tls_error(exc)
            if VERIFY_FAILED in reason:
                self._fail(
                    "client certificate refused: the certificate of EAP identity "
                    f"{self._who()}is signed by an unknown CA or is not valid for a TLS "
                    f"client (OpenSSL: {reason})",
                    EapCause.CERTIFICATE,
                )
            self._fail(f"TLS handshake with {self._who()}failed: {reason}", EapCause.TLS)
        self._finished()
        self._framing.queue(_pull(conn))
        self._state = _State.FINISHING
        if not self._framing.sending:
            # Nothing left to send (cannot happen with OpenSSL): the Success follows.
            self._state = _State.DONE
            return eap_payload(EapCode.SUCCESS, self._identifier)
        return self._next(self._framing.next_fragment())

    def _finished(self) -> None:
        """The handshake is complete: the client's certificate decides."""
        conn = self._conn
        leaf = conn.get_peer_certificate(as_cryptography=True)
        if leaf is None:
            self._fail(f"client {self._who()}sent no certificate", EapCause.CERTIFICATE)
        chain = conn.get_peer_cert_chain(as_cryptography=True) or []
        der = serialization.Encoding.DER
        certs = [leaf, *(c for c in chain if c != leaf)]
        payloads = [Certificate(CertEncoding.X509_SIGNATURE, c.public_bytes(der)) for c in certs]
        # The name the certificate claims, valid or not, so a refusal is logged under
        # it rather than under the EAP identity, which may be anything.
        self.identity = certificate_user(leaf)
        try:
            validated = self._anchors.validate(payloads, None, self._wall_clock())
        except AuthenticationFailed as exc:
            self._fail(f"client certificate refused: {exc}", EapCause.CERTIFICATE)
        user = certificate_user(validated.certificate)
        self.identity = user
        refusal = self._gate(user) if self._gate is not None else None
        if refusal is not None:
            self._fail(f"{refusal}: {user!r}", EapCause.REFUSED, refusal)
        self.version = conn.get_protocol_version_name()
        self.msk = msk(conn)
        if self.version == "TLSv1.3":
            # RFC 9190 §2.5: the client may trust our EAP-Success only after this.
            conn.send(SUCCESS_INDICATION)
        log.info(
            "EAP-TLS: %s authenticated as %r with %s (EAP identity %r)",
            _name(validated.certificate),
            user,
            self.version,
            self.eap_identity,
        )

    def _who(self) -> str:
        return f"{self.identity!r} " if self.identity else ""

    def _next(self, data: EapData) -> Eap:
        self._identifier = (self._identifier + 1) & 0xFF
        return eap_payload(EapCode.REQUEST, self._identifier, data)

    def _protocol(self, message: str) -> Never:
        self._fail(message, EapCause.PROTOCOL)

    def _fail(self, message: str, cause: EapCause, refusal: str = "") -> Never:
        self._identifier = (self._identifier + 1) & 0xFF
        raise EapFailed(
            f"EAP-TLS: {message}",
            cause,
            eap_payload(EapCode.FAILURE, self._identifier),
            refusal,
        )


def _printable(identity: str) -> str:
    """The EAP identity as logs can show it: strongSwan, for one, sends a DN identity as
    its DER octets."""
    return identity if identity.isprintable() else "0x" + identity.encode().hex()


def _what(data: EapData) -> str:
    if isinstance(data, EapTls):
        return f"EAP-TLS flags {data.flags:#04x}"
    return type(data).__name__


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


class EapMethodChoice:
    """auth "any": EAP-MSCHAPv2 is offered first (after its Identity round); a client
    that answers the challenge with a Nak naming EAP-TLS (RFC 3748 §5.3.1) goes on with
    EAP-TLS under the same identity."""

    def __init__(self, first: EapServer, tls: Callable[[], EapTlsServer]) -> None:
        self._first = first
        self._tls = tls
        self._active: EapServer | EapTlsServer = first

    @property
    def method(self) -> str:
        return self._active.method

    @property
    def identity(self) -> str:
        return self._active.identity

    @property
    def msk(self) -> bytes | None:
        return self._active.msk

    @property
    def done(self) -> bool:
        return self._active.done

    def start(self) -> Eap:
        return self._first.start()

    def process(self, payload: Eap) -> Eap:
        first = self._first
        if (
            self._active is first
            and first.identity
            and payload.code == EapCode.RESPONSE
            and payload.identifier == first.identifier
        ):
            try:
                data = eap_data(payload)
            except InvalidSyntax:
                data = None  # the method reports it
            if isinstance(data, EapNak) and EapType.TLS in data.desired:
                log.info("EAP: %r asks for EAP-TLS instead of EAP-MSCHAPv2", first.identity)
                tls = self._tls()
                self._active = tls
                return tls.begin(first.identity, payload.identifier)
        return self._active.process(payload)


class EapTlsClient:
    """The peer's side of EAP-TLS over IKEv2, for our own client: answers the server's
    requests with `credentials`; the server's certificate must chain to `anchors`
    (checked by OpenSSL against their names' certificates, without our RFC 7427 rules)."""

    def __init__(
        self,
        identity: str,
        credentials: LocalCredentials,
        anchors: TrustAnchors | None = None,
        fragment_size: int = FRAGMENT_SIZE,
        max_version: int | None = None,
    ) -> None:
        self._identity = identity.encode("utf-8")
        ctx = _context(SSL.TLS_CLIENT_METHOD, credentials, None)
        if max_version is not None:
            ctx.set_max_proto_version(max_version)
        if anchors is not None:
            store = ctx.get_cert_store()
            if store is None:
                raise ValueError("OpenSSL context without a certificate store")
            for anchor in anchors.certificates:
                store.add_cert(X509.from_cryptography(anchor))
            ctx.set_verify(SSL.VERIFY_PEER)
        self._conn = SSL.Connection(ctx)
        self._conn.set_connect_state()
        self._framing = _Framing(fragment_size, self._error)
        self._indicated = False
        self.msk: bytes | None = None
        """The MSK, once the handshake finished (and, with TLS 1.3, the server's
        success indication came)."""
        self.succeeded = False
        """The server sent EAP-Success after a complete handshake."""

    @property
    def version(self) -> str:
        return self._conn.get_protocol_version_name()

    def process(self, payload: Eap) -> Eap | None:
        """The server's EAP packet in, our Response out (None after EAP-Success)."""
        if payload.code == EapCode.SUCCESS and self.msk is not None:
            self.succeeded = True
            return None
        if payload.code != EapCode.REQUEST:
            raise EapFailed("EAP-TLS: the server refused our login", EapCause.REFUSED_BY_SERVER)
        data = eap_data(payload)
        answer: EapData
        if isinstance(data, EapIdentity):
            answer = EapIdentity(self._identity)
        elif not isinstance(data, EapTls):
            answer = EapNak((EapType.TLS,))
        elif self._framing.sending:
            answer = self._framing.next_fragment()
        elif data.flags & EapTlsFlag.START:
            answer = self._flight()
        else:
            message = self._framing.receive(data)
            if message is None:
                answer = EapTls()
            else:
                self._conn.bio_write(message)
                answer = self._flight()
        return eap_payload(EapCode.RESPONSE, payload.identifier, answer)

    def _flight(self) -> EapTls:
        conn = self._conn
        try:
            conn.do_handshake()
        except SSL.WantReadError:
            pass
        except SSL.Error as exc:
            self._error(f"TLS handshake failed: {_tls_error(exc)}")
        else:
            self._complete()
        out = _pull(conn)
        if not out:
            return EapTls()  # ACK of the server's last flight
        self._framing.queue(out)
        return self._framing.next_fragment()

    def _complete(self) -> None:
        conn = self._conn
        if conn.get_protocol_version_name() == "TLSv1.3" and not self._indicated:
            try:
                received = conn.recv(16)
            except SSL.WantReadError:
                return  # the indication comes with the server's next request
            except SSL.Error as exc:
                self._error(f"TLS failed after the handshake: {_tls_error(exc)}")
            if received != SUCCESS_INDICATION:
                self._error(f"unexpected application data {received.hex()} from the server")
            self._indicated = True
        self.msk = msk(conn)

    def _error(self, message: str) -> Never:
        raise EapFailed(f"EAP-TLS: {message}", EapCause.PROTOCOL)


__all__ = [
    "FRAGMENT_SIZE",
    "MAX_TLS_MESSAGE",
    "EapAuthenticator",
    "EapMethodChoice",
    "EapTlsClient",
    "EapTlsServer",
    "msk",
]

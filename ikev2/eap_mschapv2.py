"""EAP-MSCHAPv2 for IKEv2 (RFC 7296 §2.16, RFC 2759, draft-kamath-pppext-eap-mschapv2).

Two small sans-I/O state machines, one EAP packet in and one out:
- `EapServer`: the remote-access server. An Identity round comes first (Windows sends
  its IP address as IKE identity, so only EAP names the user), then the MS-CHAPv2
  Challenge, Response, Success and the EAP Success. The user check is a callback from
  EAP identity to NT hash: the core never reads a users file.
- `EapClient`: the client side, for our own initiator (tests, a load generator).

Both end with the MSK that signs the last IKE_AUTH pair (§2.16). A refused login is
`EapFailed`, whose `cause` says why in words an operator reads ("wrong password",
"unknown user"); the client is told only EAP-Failure either way, which does not
reveal whether the name exists.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Callable
from typing import Never

from ikev2.codec import Eap
from ikev2.codec.eap import (
    EapData,
    EapIdentity,
    EapNak,
    EapType,
    MsChapV2Challenge,
    MsChapV2Failure,
    MsChapV2Response,
    MsChapV2Success,
    eap_data,
    eap_payload,
)
from ikev2.constants import EapCode
from ikev2.crypto.mschapv2 import (
    CHALLENGE_LEN,
    authenticator_response,
    check_nt_response,
    generate_nt_response,
    msk,
)
from ikev2.crypto.rng import RandomSource
from ikev2.errors import InvalidSyntax, LoginRefused

NtHashLookup = Callable[[str], bytes | None]
EapGate = Callable[[str], str | None]
"""EAP identity -> why the login is refused before its password is checked (e.g. "rate
limited"), or None to go on."""
"""EAP identity -> the user's NT hash (RFC 2759 §8.3), or None for an unknown user."""

SERVER_NAME = b"lockgate"
"""The Name of our MS-CHAPv2 Challenge (informational, RFC 2759 §3)."""
_UNKNOWN_USER_HASH = bytes(16)
"""Checked against for an unknown user, so that answer takes as long as a wrong password."""


class EapCause(enum.Enum):
    """Why an EAP authentication failed, as the daemon logs it."""

    WRONG_PASSWORD = "wrong password"  # noqa: S105 - a reason, not a password
    UNKNOWN_USER = "unknown user"
    REFUSED_METHOD = "client refuses EAP-MSCHAPv2"
    REFUSED_TLS = "client refuses EAP-TLS"
    CERTIFICATE = "certificate refused"
    TLS = "TLS handshake failed"
    SERVER_NOT_AUTHENTICATED = "server's MS-CHAPv2 authenticator response is wrong"
    REFUSED_BY_SERVER = "server refused the login"
    PROTOCOL = "EAP protocol error"
    REFUSED = "refused"
    """The server's gate said no before the password was checked (its reason says why)."""


class EapFailed(LoginRefused):
    """EAP authentication failed: the peer gets `eap` (an EAP-Failure, or nothing) and
    AUTHENTICATION_FAILED (§2.21.2). `refusal`: why, in the words the daemon logs
    ("wrong password", "rate limited")."""

    def __init__(
        self, message: str, cause: EapCause, eap: Eap | None = None, refusal: str = ""
    ) -> None:
        super().__init__(message, refusal or cause.value)
        self.cause = cause
        self.eap = eap


class _ServerState(enum.Enum):
    IDENTITY = "identity"
    CHALLENGE = "challenge"
    SUCCESS = "success"
    DONE = "done"


class EapServer:
    """The authenticator's side of EAP-MSCHAPv2 over IKEv2 (no retries: a wrong
    password ends the IKE SA and the client starts again)."""

    method = "EAP-MSCHAPv2"

    def __init__(
        self, rng: RandomSource, lookup: NtHashLookup, gate: EapGate | None = None
    ) -> None:
        self._rng = rng
        self._lookup = lookup
        self._gate = gate
        self._state = _ServerState.IDENTITY
        self._identifier = rng.token_bytes(1)[0]
        self._challenge = b""
        self._success = b""
        self.identity = ""
        """The EAP identity the client sent (the user name), "" until it did."""
        self.msk: bytes | None = None
        """The MSK, once the client proved it knows the password."""

    @property
    def done(self) -> bool:
        """The EAP Success went out: the next IKE_AUTH request carries AUTH."""
        return self._state is _ServerState.DONE

    @property
    def identifier(self) -> int:
        """The Identifier of the request we sent last."""
        return self._identifier

    def start(self) -> Eap:
        """The first request: Identity (RFC 3748 §5.1)."""
        return eap_payload(EapCode.REQUEST, self._identifier, EapIdentity())

    def process(self, payload: Eap) -> Eap:
        """The client's EAP Response in, our next EAP packet out; `EapFailed` when the
        login is refused (its `eap` is the EAP-Failure to send)."""
        if payload.code != EapCode.RESPONSE or payload.identifier != self._identifier:
            self._fail(
                f"unexpected EAP code {payload.code} or identifier {payload.identifier}",
                EapCause.PROTOCOL,
            )
        try:
            data = eap_data(payload)
        except InvalidSyntax as exc:
            self._fail(f"unreadable EAP response: {exc}", EapCause.PROTOCOL)
        if isinstance(data, EapNak):
            self._fail(
                f"client {self._who()}wants EAP types {list(data.desired)}, not MS-CHAPv2",
                EapCause.REFUSED_METHOD,
            )
        if self._state is _ServerState.IDENTITY:
            return self._identity(data)
        if self._state is _ServerState.CHALLENGE:
            return self._response(data)
        if self._state is _ServerState.SUCCESS and isinstance(data, MsChapV2Success):
            self._state = _ServerState.DONE
            return eap_payload(EapCode.SUCCESS, self._identifier)
        self._fail(
            f"unexpected {type(data).__name__} from {self._who()}in state {self._state.value}",
            EapCause.PROTOCOL,
        )

    def _who(self) -> str:
        return f"{self.identity!r} " if self.identity else ""

    def _next(self, data: EapData) -> Eap:
        self._identifier = (self._identifier + 1) & 0xFF
        return eap_payload(EapCode.REQUEST, self._identifier, data)

    def _identity(self, data: EapData) -> Eap:
        if not isinstance(data, EapIdentity) or not data.identity:
            self._fail("client sent no EAP identity", EapCause.PROTOCOL)
        try:
            self.identity = data.identity.decode("utf-8")
        except UnicodeDecodeError:
            self._fail("client's EAP identity is not UTF-8", EapCause.PROTOCOL)
        self._challenge = self._rng.token_bytes(CHALLENGE_LEN)
        self._state = _ServerState.CHALLENGE
        # MS-CHAPv2-ID: the EAP Identifier, as Windows and strongSwan use it.
        return self._next(
            MsChapV2Challenge((self._identifier + 1) & 0xFF, self._challenge, SERVER_NAME)
        )

    def _response(self, data: EapData) -> Eap:
        if not isinstance(data, MsChapV2Response):
            self._fail(
                f"expected an MS-CHAPv2 Response, got {type(data).__name__}", EapCause.PROTOCOL
            )
        refusal = self._gate(self.identity) if self._gate is not None else None
        if refusal is not None:
            self._fail(f"{refusal}: {self.identity!r}", EapCause.REFUSED, refusal)
        nt_hash = self._lookup(self.identity)
        known = nt_hash is not None
        password_hash = nt_hash if nt_hash is not None else _UNKNOWN_USER_HASH
        # RFC 2759 §8.2: the name hashed is the one in the Response, without a domain.
        good = check_nt_response(
            self._challenge, data.peer_challenge, data.name, password_hash, data.nt_response
        )
        if not known:
            self._fail(f"unknown user {self.identity!r}", EapCause.UNKNOWN_USER)
        if not good:
            self._fail(f"wrong password for user {self.identity!r}", EapCause.WRONG_PASSWORD)
        self.msk = msk(password_hash, data.nt_response)
        reply = authenticator_response(
            password_hash, data.nt_response, data.peer_challenge, self._challenge, data.name
        )
        self._state = _ServerState.SUCCESS
        return self._next(MsChapV2Success(data.ms_id, reply + b" M=Welcome to lockgate"))

    def _fail(self, message: str, cause: EapCause, refusal: str = "") -> Never:
        self._identifier = (self._identifier + 1) & 0xFF
        raise EapFailed(
            f"EAP-MSCHAPv2: {message}",
            cause,
            eap_payload(EapCode.FAILURE, self._identifier),
            refusal,
        )


class EapClient:
    """The peer's side of EAP-MSCHAPv2 over IKEv2: answers the server's requests."""

    def __init__(self, rng: RandomSource, identity: str, nt_hash: bytes) -> None:
        self._rng = rng
        self._identity = identity.encode("utf-8")
        self._nt_hash = nt_hash
        self._expected = b""
        self._nt_response = b""
        self.msk: bytes | None = None
        """The MSK, once the server proved it knows the password too."""
        self.succeeded = False
        """The server sent EAP-Success."""

    def process(self, payload: Eap) -> Eap | None:
        """The server's EAP packet in, our Response out (None after EAP-Success)."""
        if payload.code == EapCode.SUCCESS and self.msk is not None:
            self.succeeded = True
            return None
        if payload.code != EapCode.REQUEST:
            raise EapFailed(
                "EAP-MSCHAPv2: the server refused our login", EapCause.REFUSED_BY_SERVER
            )
        data = eap_data(payload)
        answer: EapData
        match data:
            case EapIdentity():
                answer = EapIdentity(self._identity)
            case MsChapV2Challenge(ms_id, challenge, _):
                peer_challenge = self._rng.token_bytes(CHALLENGE_LEN)
                nt_response = generate_nt_response(
                    challenge, peer_challenge, self._identity, self._nt_hash
                )
                self._expected = authenticator_response(
                    self._nt_hash, nt_response, peer_challenge, challenge, self._identity
                )
                self._nt_response = nt_response
                answer = MsChapV2Response(ms_id, peer_challenge, nt_response, self._identity)
            case MsChapV2Success(_, message):
                if not hmac.compare_digest(message[:42], self._expected):
                    raise EapFailed(
                        "EAP-MSCHAPv2: the server's authenticator response is wrong",
                        EapCause.SERVER_NOT_AUTHENTICATED,
                    )
                self.msk = msk(self._nt_hash, self._nt_response)
                answer = MsChapV2Success()
            case MsChapV2Failure():
                raise EapFailed(
                    "EAP-MSCHAPv2: the server refused our login", EapCause.REFUSED_BY_SERVER
                )
            case _:
                answer = EapNak((EapType.MSCHAPV2,))
        return eap_payload(EapCode.RESPONSE, payload.identifier, answer)


__all__ = [
    "SERVER_NAME",
    "EapCause",
    "EapClient",
    "EapFailed",
    "EapGate",
    "EapServer",
    "NtHashLookup",
]

"""Typed errors of the IKEv2 core.

Modelled on h11: :class:`RemoteProtocolError` means the peer sent something we must
refuse, :class:`LocalProtocolError` means our own caller misused the API or the
configuration is wrong. Every error carries the Notify Message Type it maps to
(RFC 7296 §3.10.1), or ``None`` when the RFC says to drop silently (for example a
message whose integrity check fails, §2.21.1), so the state machine can answer the
peer without a table of its own.

Messages of these errors are meant for operators: they never contain key material.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ikev2.constants import NotifyType, ProtocolId


@dataclass(frozen=True)
class Problem:
    """One mistake in a configuration."""

    path: str
    """Key path, e.g. ``connections.dc1-net.esp_proposals[0]`` (empty: the whole file)."""
    reason: str
    """What is wrong, in words an operator can act on."""

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class ConfigError(ValueError):
    """A configuration that cannot work; `problems` lists every mistake found.

    The one configuration error of lockgate: the IKE core raises it with a message
    naming the setting and the reason (one problem without a key path), `conf` with
    every problem of a file and the file's name as `source`.
    """

    def __init__(self, problems: str | Sequence[Problem], source: str | None = None) -> None:
        if isinstance(problems, str):
            problems = [Problem("", problems)]
        self.problems = tuple(problems)
        self.source = source
        lines = [str(p) for p in self.problems]
        prefix = f"{source}: " if source else ""
        if len(lines) == 1:
            message = prefix + lines[0]
        else:
            message = f"{prefix}{len(lines)} problems:\n" + "\n".join(f"  {x}" for x in lines)
        super().__init__(message)


class IkeError(Exception):
    """Base of every error raised by the ``ikev2`` package.

    ``notify`` is the notify type to send to the peer (``None``: send nothing),
    ``notify_data`` the Notification Data that goes with it, ``protocol`` and ``spi``
    the Protocol ID and SPI fields of that Notify payload (RFC 7296 §3.10).
    """

    default_notify: NotifyType | None = None

    def __init__(
        self,
        message: str = "",
        *,
        notify: NotifyType | None = None,
        notify_data: bytes = b"",
        protocol: ProtocolId = ProtocolId.NONE,
        spi: bytes = b"",
    ) -> None:
        super().__init__(message or type(self).__name__)
        self.message = message or type(self).__name__
        self.notify: NotifyType | None = notify if notify is not None else self.default_notify
        self.notify_data = notify_data
        self.protocol = protocol
        self.spi = spi

    def __str__(self) -> str:
        return self.message


class RemoteProtocolError(IkeError):
    """The peer sent a message or value that we refuse."""


class LocalProtocolError(IkeError):
    """We were asked to do something the protocol or our configuration does not allow."""


# --- Errors about the peer's messages --------------------------------------------------


class InvalidSyntax(RemoteProtocolError):
    """Malformed message: bad lengths, truncated payloads, bad field values.

    This is the only error type the codec (``ikev2.codec``) raises for network input.
    """

    default_notify = NotifyType.INVALID_SYNTAX
    authenticated: bool = False
    """Found in the decrypted body of a message whose integrity check passed: the peer
    (not an attacker) sent it, so a request gets an answer with the notify (§2.21.3)."""


class UnsupportedCriticalPayload(InvalidSyntax):
    """A payload we do not know has its critical bit set (RFC 7296 §2.5, §3.2)."""

    default_notify = NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD

    def __init__(self, payload_type: int) -> None:
        super().__init__(
            f"unsupported critical payload type {payload_type}",
            notify_data=bytes([payload_type & 0xFF]),
        )
        self.payload_type = payload_type


class InvalidMajorVersion(InvalidSyntax):
    """The IKE header's major version is not 2 (RFC 7296 §2.5)."""

    default_notify = NotifyType.INVALID_MAJOR_VERSION

    def __init__(self, version: int) -> None:
        super().__init__(f"unsupported IKE version {version >> 4}.{version & 0x0F}")
        self.version = version


class IntegrityCheckFailed(RemoteProtocolError):
    """The ICV or AEAD tag of an SK payload did not verify.

    RFC 7296 §2.21.1: such a message is dropped without a reply, so there is no notify.
    """


class InvalidKeData(RemoteProtocolError):
    """The peer's Key Exchange Data is malformed or not a valid public value.

    RFC 7296 §3.4 and RFC 5903 §7 require checking the length and the point.
    """

    default_notify = NotifyType.INVALID_SYNTAX


class NoProposalChosen(RemoteProtocolError):
    """None of the peer's proposals is acceptable (RFC 7296 §2.7)."""

    default_notify = NotifyType.NO_PROPOSAL_CHOSEN


class InvalidKePayload(RemoteProtocolError):
    """The KE payload's group is not the one we selected (RFC 7296 §1.2, §3.10.1).

    ``group`` is the group we want; the notify data is that group as 2 octets.
    """

    default_notify = NotifyType.INVALID_KE_PAYLOAD

    def __init__(self, group: int, message: str = "") -> None:
        super().__init__(
            message or f"peer sent KE for another group; we want group {group}",
            notify_data=group.to_bytes(2, "big"),
        )
        self.group = group


class AuthenticationFailed(RemoteProtocolError):
    """The peer's AUTH payload or identity does not verify (RFC 7296 §2.15, §2.21.2)."""

    default_notify = NotifyType.AUTHENTICATION_FAILED


class LoginRefused(AuthenticationFailed):
    """A remote-access server refused a client's login (AUTHENTICATION_FAILED,
    §2.21.2); `refusal` says why in the words the daemon logs ("unknown user")."""

    def __init__(self, message: str, refusal: str) -> None:
        super().__init__(message)
        self.refusal = refusal


class TsUnacceptable(RemoteProtocolError):
    """No acceptable traffic selectors remain after narrowing (RFC 7296 §2.9)."""

    default_notify = NotifyType.TS_UNACCEPTABLE


class InvalidIkeSpi(RemoteProtocolError):
    """A message for an IKE SA we do not know (RFC 7296 §2.21.4)."""

    default_notify = NotifyType.INVALID_IKE_SPI


class InvalidMessageId(RemoteProtocolError):
    """A message ID outside the window (RFC 7296 §2.3)."""

    default_notify = NotifyType.INVALID_MESSAGE_ID


class InvalidSpi(RemoteProtocolError):
    """An ESP/AH SPI we do not know (RFC 7296 §3.10.1)."""

    default_notify = NotifyType.INVALID_SPI


class InvalidSelectors(RemoteProtocolError):
    """Packet selectors do not match the SA (RFC 7296 §3.10.1)."""

    default_notify = NotifyType.INVALID_SELECTORS


class SinglePairRequired(RemoteProtocolError):
    """Only a single traffic selector pair is acceptable (RFC 7296 §2.9)."""

    default_notify = NotifyType.SINGLE_PAIR_REQUIRED


class NoAdditionalSas(RemoteProtocolError):
    """We do not accept more CHILD SAs on this IKE SA (RFC 7296 §1.3)."""

    default_notify = NotifyType.NO_ADDITIONAL_SAS


class InternalAddressFailure(RemoteProtocolError):
    """No internal address could be assigned (RFC 7296 §3.15.4)."""

    default_notify = NotifyType.INTERNAL_ADDRESS_FAILURE


class FailedCpRequired(RemoteProtocolError):
    """A CP payload was required but missing (RFC 7296 §3.15.4)."""

    default_notify = NotifyType.FAILED_CP_REQUIRED


class TemporaryFailure(RemoteProtocolError):
    """A collision or other transient condition (RFC 7296 §2.25)."""

    default_notify = NotifyType.TEMPORARY_FAILURE


class TsMaxQueue(RemoteProtocolError):
    """We take no more per-resource CHILD SAs with these traffic selectors (RFC 9611)."""

    default_notify = NotifyType.TS_MAX_QUEUE


class ChildSaNotFound(RemoteProtocolError):
    """The CHILD SA named in a rekey does not exist (RFC 7296 §2.25)."""

    default_notify = NotifyType.CHILD_SA_NOT_FOUND


class StateNotFound(RemoteProtocolError):
    """An IKE_FOLLOWUP_KE whose ADDITIONAL_KEY_EXCHANGE link names no CREATE_CHILD_SA
    we wait on (it timed out, or never was): RFC 9370 §2.2.4."""

    default_notify = NotifyType.STATE_NOT_FOUND


class ChildSaDeletedByPeer(RemoteProtocolError):
    """The answer creating a CHILD SA came after the peer's Delete of that SA (our first
    copy of the answer was lost): it is not installed (RFC 7296 §1.4.1, §2.1)."""


class PeerErrorNotify(RemoteProtocolError):
    """The peer answered our request with an error notify (RFC 7296 §2.21).

    ``notify`` stays ``None`` (nothing is sent back); ``peer_notify`` is the number the
    peer sent, which may be unknown to us, and ``peer_notify_data`` its data.
    """

    def __init__(self, peer_notify: int, peer_notify_data: bytes = b"", message: str = "") -> None:
        try:
            name = NotifyType(peer_notify).name
        except ValueError:
            name = f"notify type {peer_notify}"
        super().__init__(message or f"peer reported {name}")
        self.peer_notify = peer_notify
        self.peer_notify_data = peer_notify_data


# --- Errors of our own side -------------------------------------------------------------


class UnknownAlgorithm(LocalProtocolError):
    """A proposal string names an algorithm we do not know (configuration error).

    ``algorithm`` is the offending keyword, ``proposal`` the whole string.
    """

    def __init__(self, algorithm: str, proposal: str = "", *, legacy: bool = False) -> None:
        where = f" in proposal {proposal!r}" if proposal else ""
        if legacy:
            text = f"unsupported algorithm {algorithm!r}{where} (known, not implemented)"
        else:
            text = f"unknown algorithm {algorithm!r}{where}"
        super().__init__(text)
        self.algorithm = algorithm
        self.proposal = proposal


class InvalidProposal(LocalProtocolError):
    """A proposal string is well formed but incomplete or inconsistent."""


class UnsupportedSuite(LocalProtocolError):
    """A transform we parsed has no implementation in the crypto registry."""

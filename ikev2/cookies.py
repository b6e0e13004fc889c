"""Stateless COOKIEs against IKE_SA_INIT floods (RFC 7296 §2.6).

When too many IKE SAs are half open, a responder answers an IKE_SA_INIT request that
carries no valid COOKIE with a response holding only ``N(COOKIE)``, and keeps no state.
A genuine initiator repeats its request with that COOKIE first; a spoofed source never
sees it. The COOKIE is the one RFC 7296 §2.6 suggests::

    Cookie = <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>)

with a 4-octet version, SHA-256 as the hash and a 32-octet secret: 36 octets, within
the 1..64 octets §3.10.1 allows. The secret rotates every ``rotate_interval`` seconds;
a COOKIE made with the previous secret is still accepted for ``grace`` seconds after the
rotation, so an initiator whose retry crosses a rotation is not turned away (§2.6:
"the responder ... should accept cookies generated with the old secret for a short
time").

Sans-I/O: time comes in as ``now`` (seconds, any monotonic origin), randomness from an
injected :class:`~ikev2.crypto.rng.RandomSource`; rotation happens lazily on the calls.

How the endpoint calls it, when an IKE_SA_INIT request arrives for no known SA::

    demand = cookies.check_request(request, remote_ip, half_open_count, now)
    if demand is not None:
        transmit(encode_message(demand))   # N(COOKIE) only; no SA is created
        return
    ...create the half-open SA as before...
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from dataclasses import dataclass

from ikev2.codec.message import Message
from ikev2.codec.payloads import Nonce, Notify
from ikev2.constants import ExchangeType, NotifyType
from ikev2.crypto.rng import RandomSource
from ikev2.errors import InvalidSyntax, LocalProtocolError, RemoteProtocolError

log = logging.getLogger(__name__)

_VERSION_LEN = 4
_SECRET_LEN = 32
_DIGEST_LEN = hashlib.sha256().digest_size
COOKIE_LEN = _VERSION_LEN + _DIGEST_LEN
"""Octets of the COOKIEs we make (version | SHA-256 digest)."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class InvalidCookie(RemoteProtocolError):
    """A COOKIE the initiator echoed is not one we made, or its secret has retired.

    Nothing is sent as an error: §2.6 has the responder answer with a fresh COOKIE.
    """


@dataclass(frozen=True, slots=True)
class CookiePolicy:
    """When COOKIEs are demanded and how often their secret changes."""

    demand_above: int = 32
    """Demand a COOKIE when more than this many IKE SAs are already half open, the new
    request not counted (0: as soon as one is half open; the first request of a quiet
    responder never needs one). The configuration's `gateway.cookie_threshold`."""
    rotate_interval: float = 300.0
    """Seconds a secret is used to make COOKIEs before a new one replaces it."""
    grace: float = 30.0
    """Seconds after a rotation during which COOKIEs of the previous secret still pass."""

    def __post_init__(self) -> None:
        if self.demand_above < 0:
            raise LocalProtocolError("cookie threshold must not be negative")
        if self.rotate_interval <= 0:
            raise LocalProtocolError("cookie secret rotation interval must be positive")
        if not 0 <= self.grace <= self.rotate_interval:
            # Only one previous secret is kept, so its grace cannot outlast the next
            # rotation.
            raise LocalProtocolError("cookie grace must be between 0 and the rotation interval")

    def required(self, half_open: int) -> bool:
        """Whether an IKE_SA_INIT request must carry a valid COOKIE."""
        return half_open > self.demand_above


@dataclass(frozen=True, slots=True, repr=False)
class _Secret:
    """One COOKIE secret and when it came into use."""

    version: int
    """VersionIDofSecret, sent as the COOKIE's first 4 octets."""
    value: bytes
    """The secret itself; never logged."""
    since: float
    """``now`` at which it became the current secret."""

    def __repr__(self) -> str:
        return f"_Secret(version={self.version})"


def _address_octets(ip: IPAddress | str | bytes) -> bytes:
    if isinstance(ip, bytes):
        if len(ip) not in (4, 16):
            raise LocalProtocolError(f"initiator address of {len(ip)} octets")
        return ip
    return ipaddress.ip_address(ip).packed


class CookieJar:
    """Makes and checks COOKIEs with a rotating secret (RFC 7296 §2.6)."""

    def __init__(self, policy: CookiePolicy, rng: RandomSource, now: float) -> None:
        self.policy = policy
        self._rng = rng
        self._current = _Secret(0, self._new_secret(), now)
        self._previous: _Secret | None = None
        self._previous_until = now

    def _new_secret(self) -> bytes:
        secret = self._rng.token_bytes(_SECRET_LEN)
        if len(secret) != _SECRET_LEN:
            raise LocalProtocolError("random source returned a short cookie secret")
        return secret

    def _rotate(self, now: float) -> None:
        """Move to a new secret once the current one has served its interval."""
        due = self._current.since + self.policy.rotate_interval
        if now < due:
            return
        # The grace of the old secret runs from when the rotation was due, so a jar
        # that was idle for hours does not revive a secret it should have dropped.
        self._previous = self._current
        self._previous_until = due + self.policy.grace
        version = (self._current.version + 1) & 0xFFFFFFFF
        self._current = _Secret(version, self._new_secret(), now)
        log.debug("cookie secret rotated to version %d", version)

    def next_rotation(self) -> float:
        """When the current secret is due to be replaced (for a timer, if wanted)."""
        return self._current.since + self.policy.rotate_interval

    @staticmethod
    def _digest(secret: _Secret, nonce_i: bytes, ip_i: bytes, spi_i: bytes) -> bytes:
        # Hash(Ni | IPi | SPIi | <secret>), §2.6. HMAC keyed with the secret would do as
        # well; the RFC's construction is kept so the layout is recognisable.
        return hashlib.sha256(nonce_i + ip_i + spi_i + secret.value).digest()

    def make(
        self, nonce_i: bytes, ip_i: IPAddress | str | bytes, spi_i: bytes, now: float
    ) -> bytes:
        """The COOKIE for an initiator's nonce, address and SPI, with the current secret."""
        self._rotate(now)
        secret = self._current
        digest = self._digest(secret, nonce_i, _address_octets(ip_i), spi_i)
        return secret.version.to_bytes(_VERSION_LEN, "big") + digest

    def verify(
        self,
        cookie: bytes,
        nonce_i: bytes,
        ip_i: IPAddress | str | bytes,
        spi_i: bytes,
        now: float,
    ) -> None:
        """Raise :class:`InvalidCookie` unless ``cookie`` is one we made for these values.

        Accepts COOKIEs of the current secret, and of the previous one during its grace.
        """
        self._rotate(now)
        if len(cookie) != COOKIE_LEN:
            raise InvalidCookie(f"COOKIE of {len(cookie)} octets, ours have {COOKIE_LEN}")
        version = int.from_bytes(cookie[:_VERSION_LEN], "big")
        secret: _Secret | None = None
        if version == self._current.version:
            secret = self._current
        elif self._previous is not None and version == self._previous.version:
            if now >= self._previous_until:
                raise InvalidCookie(f"COOKIE made with retired secret version {version}")
            secret = self._previous
        if secret is None:
            raise InvalidCookie(f"COOKIE names unknown secret version {version}")
        expected = self._digest(secret, nonce_i, _address_octets(ip_i), spi_i)
        if not hmac.compare_digest(expected, cookie[_VERSION_LEN:]):
            raise InvalidCookie("COOKIE does not match the initiator's nonce, address and SPI")

    def check_request(
        self,
        request: Message,
        ip_i: IPAddress | str | bytes,
        half_open: int,
        now: float,
    ) -> Message | None:
        """Decide on an IKE_SA_INIT request: ``None`` to go on, or the COOKIE response.

        ``half_open`` is the number of half-open IKE SAs now, without this request's.
        Up to the policy's threshold every request goes on (a COOKIE it carries anyway
        is ignored, §2.6).
        Otherwise the request needs a valid COOKIE, else we answer with a fresh one.
        A request without a Nonce payload raises :class:`InvalidSyntax`.
        """
        if not self.policy.required(half_open):
            return None
        nonce = request.get(Nonce)
        if nonce is None:
            raise InvalidSyntax("IKE_SA_INIT request without a Nonce payload")
        echoed = request.notify(NotifyType.COOKIE)
        if echoed is not None:
            try:
                self.verify(echoed.data, nonce.data, ip_i, request.spi_i, now)
            except InvalidCookie as exc:
                # DEBUG: anyone can send wrong COOKIEs at line rate with spoofed
                # sources. The endpoint counts the fresh demand (COOKIE_DEMANDED) and
                # logs it throttled; an expired one after rotation is normal (§2.6).
                log.debug("IKE_SA_INIT with a bad cookie (%s); sending a fresh one", exc)
            else:
                return None
        cookie = self.make(nonce.data, ip_i, request.spi_i, now)
        return cookie_response(request, cookie)


def cookie_response(request: Message, cookie: bytes) -> Message:
    """The IKE_SA_INIT response that carries only ``N(COOKIE)`` (RFC 7296 §2.6).

    The SPIs are the request's (SPIr stays zero: we create no SA), Message ID 0.
    """
    return Message(
        spi_i=request.spi_i,
        spi_r=request.spi_r,
        exchange_type=ExchangeType.IKE_SA_INIT,
        message_id=request.message_id,
        initiator=False,
        response=True,
        payloads=(Notify(NotifyType.COOKIE, cookie),),
    )

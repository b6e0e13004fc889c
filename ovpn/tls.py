"""TLS for the control channel: the standard library's `ssl` over memory BIOs.

No TLS of our own: OpenSSL (through `ssl.SSLObject`) runs the handshake and the
records; this module only moves bytes between the reliability layer and the BIOs.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass


def server_context(
    certificate: str, private_key: str, client_ca: str | None = None
) -> ssl.SSLContext:
    """A server context: TLS 1.2 or 1.3, the server's certificate and key from PEM
    files, and, with `client_ca`, a required client certificate verified against it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certificate, private_key)
    if client_ca is not None:
        ctx.load_verify_locations(cafile=client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    # Session tickets would only cost control-channel packets: OpenVPN never resumes.
    ctx.num_tickets = 0
    return ctx


@dataclass(frozen=True)
class TlsFailure:
    reason: str


class TlsEndpoint:
    """The server side of one TLS connection, driven by bytes in and out."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._in, self._out, server_side=True)
        self.established = False
        self.failure: TlsFailure | None = None

    def feed(self, ciphertext: bytes) -> list[bytes]:
        """Give the peer's TLS bytes; returns the plaintext records now readable.

        Each returned item is one TLS record's plaintext: OpenVPN treats a record as
        one control message. Failures are recorded in `failure`, never raised.
        """
        if self.failure is not None:
            return []
        self._in.write(ciphertext)
        if not self.established:
            try:
                self._obj.do_handshake()
            except ssl.SSLWantReadError:
                return []
            except (ssl.SSLError, OSError) as exc:
                self.failure = TlsFailure(f"handshake failed: {exc}")
                return []
            self.established = True
        records: list[bytes] = []
        while True:
            try:
                chunk = self._obj.read(16384)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.failure = TlsFailure("peer closed TLS")
                break
            except (ssl.SSLError, OSError) as exc:
                self.failure = TlsFailure(f"TLS error: {exc}")
                break
            if not chunk:
                break
            records.append(chunk)
        return records

    def write(self, plaintext: bytes) -> None:
        """Send one control message (one TLS record)."""
        if self.failure is None and self.established:
            try:
                self._obj.write(plaintext)
            except (ssl.SSLError, OSError) as exc:
                self.failure = TlsFailure(f"TLS write failed: {exc}")

    def take_output(self) -> bytes:
        """TLS bytes to send to the peer."""
        return self._out.read()

    def peer_certificate(self) -> bytes | None:
        """The client's certificate (DER) if it sent one and it verified."""
        if not self.established:
            return None
        return self._obj.getpeercert(binary_form=True)

    @property
    def version(self) -> str | None:
        return self._obj.version() if self.established else None

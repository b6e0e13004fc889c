"""Errors raised when the ESP engine is misused by local code.

Bad *network* input never raises: it yields a `esp.drops.DropReason`. These
exceptions are for configuration mistakes (unknown suite, wrong key length), in
the spirit of h11's `LocalProtocolError`.
"""

from __future__ import annotations


class EspConfigError(ValueError):
    """An SA or suite was configured with values the engine cannot use."""


class UnknownSuite(EspConfigError):
    """No ESP suite matches the given name or IKEv2 transform ids."""

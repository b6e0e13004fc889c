"""Interop matrix, authentication: certificates of each key type from a CA the
test makes, both directions, with traffic; a PSK on one side against a certificate on
the other must fail, cleanly and with a reason on lockgate's side.

PSK authentication runs in every case of `test_interop_proposals.py`.
"""

from __future__ import annotations

import pytest
from interop_helpers import Case, attempt_and_fail, check_sa_agreement, check_traffic, interop

pytestmark = [pytest.mark.netns, pytest.mark.interop]

KEY_TYPES = ["ecdsa-p256", "rsa2048", "ed25519"]


@pytest.mark.parametrize("initiates", [True, False], ids=["lg-init", "swan-init"])
@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_certificates_carry_traffic(key_type: str, initiates: bool) -> None:
    case = Case(lockgate_initiates=initiates, auth=key_type)
    with interop(case) as world:
        ike = world.bring_up()
        assert (ike.local_id, ike.remote_id) == ("gw-b.example.net", "gw-a.example.net")
        check_sa_agreement(world)
        check_traffic(world)


@pytest.mark.parametrize("initiates", [True, False], ids=["lg-init", "swan-init"])
def test_psk_against_a_certificate_fails(initiates: bool) -> None:
    # lockgate expects the PSK; charon signs with its ECDSA certificate instead.
    case = Case(lockgate_initiates=initiates, auth="psk", swan_auth="ecdsa-p256")
    with interop(case) as world:
        reason = (
            "peer gw-b.example.net authenticates with DIGITAL_SIGNATURE (14); we expect "
            "SHARED_KEY_MIC (2), a pre-shared key"
        )
        attempt_and_fail(world, "net4", f"IKE SA #1 failed: {reason}")
        assert reason in world.daemon.connection("net4")["last_error"]
        # charon was told why (AUTHENTICATION_FAILED, RFC 7296 §2.15) and gave up.
        assert "N(AUTH_FAILED)" in world.charon.logs()


@pytest.mark.parametrize("initiates", [True, False], ids=["lg-init", "swan-init"])
def test_certificate_against_a_psk_fails(initiates: bool) -> None:
    # lockgate expects a signature from charon's certificate; charon sends a PSK AUTH.
    case = Case(lockgate_initiates=initiates, auth="ecdsa-p256", swan_auth="psk")
    with interop(case) as world:
        reason = (
            "peer 198.51.100.2 authenticates with SHARED_KEY_MIC (2); we expect "
            "DIGITAL_SIGNATURE (14), a certificate signature (RFC 7427)"
        )
        attempt_and_fail(world, "net4", f"IKE SA #1 failed: {reason}")
        assert reason in world.daemon.connection("net4")["last_error"]
        assert "N(AUTH_FAILED)" in world.charon.logs()

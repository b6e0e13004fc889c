"""An EAP-MSCHAPv2 remote-access server and its client, as connection configs for the
in-memory pair (`testkit.ikev2_pair`): the server signs with a certificate from a test
PKI, checks users through a callback and leases addresses from a small `Pool`."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterator

from ikev2.certs import LocalCredentials, TrustAnchors
from ikev2.config import ConnectionConfig, Identity, IpInterface, RemoteAccess, RemoteAccessClient
from ikev2.crypto.mschapv2 import nt_password_hash
from testkit.ikev2_pair import B_ADDR, child, ra_client
from testkit.pki import Pki

SERVER_NAME = "vpn.example.net"
USERS = {"alice": nt_password_hash("correct horse battery")}
LOCAL_SUBNET = "203.0.113.0/24"


class Pool:
    """An allocator callback over a small IPv4 pool (and an optional IPv6 one)."""

    def __init__(self, network: str = "192.0.2.0/29", network6: str | None = None) -> None:
        self.network = ipaddress.IPv4Network(network)
        self.free: Iterator[ipaddress.IPv4Address] = iter(list(self.network.hosts())[1:])
        self.network6 = ipaddress.IPv6Network(network6) if network6 else None
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, user: str, ike_sa_id: int, version: int) -> IpInterface | None:
        self.calls.append((user, ike_sa_id, version))
        if version == 6:
            if self.network6 is None:
                return None
            return ipaddress.IPv6Interface((self.network6[7], self.network6.prefixlen))
        address = next(self.free, None)
        if address is None:
            return None
        return ipaddress.IPv4Interface((address, self.network.prefixlen))


def eap_server(pki: Pki, pool: Pool, **ra: object) -> ConnectionConfig:
    """The server "laptops" on B_ADDR; `ra` overrides fields of its `RemoteAccess`."""
    cred = pki.issue(SERVER_NAME)
    settings = RemoteAccess(
        nt_hash=USERS.get,
        allocate=pool,
        dns=(ipaddress.ip_address("203.0.113.53"), ipaddress.ip_address("2001:db8::53")),
        dns_domains=("corp.example.net", "lab.example.net"),
        subnets=(ipaddress.ip_network(LOCAL_SUBNET), ipaddress.ip_network("2001:db8:1::/64")),
    )
    settings = dataclasses.replace(settings, **ra)  # type: ignore[arg-type]
    return ConnectionConfig(
        name="laptops",
        local_addresses=(B_ADDR,),
        remote_address=None,
        local_id=Identity.parse(SERVER_NAME),
        remote_id=None,
        children=(child("laptops", local=LOCAL_SUBNET, remote="0.0.0.0/0"),),
        auth="pubkey",
        credentials=LocalCredentials.from_pem(cred.cert_pem, cred.key_pem),
        remote_access=settings,
    )


def eap_client(
    pki: Pki,
    user: str = "alice",
    password: str = "correct horse battery",
    *,
    request_ip4: bool = True,
    request_ip6: bool = False,
) -> ConnectionConfig:
    """The client that logs in as `user` and asks for the address families named."""
    client = RemoteAccessClient(
        user, nt_password_hash(password), request_ip4=request_ip4, request_ip6=request_ip6
    )
    return ra_client(SERVER_NAME, LOCAL_SUBNET, TrustAnchors.from_pem(pki.chain()[-1]), client)

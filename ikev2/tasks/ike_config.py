"""Configuration payloads in IKE_AUTH: a remote-access client's virtual address, DNS
and routes (RFC 7296 §3.15, §2.19; RFC 8598).

The client asks with CP(CFG_REQUEST) in its first IKE_AUTH request; the server answers
in the IKE_AUTH response that carries its CHILD SA, after the client authenticated
(after the last EAP round, §2.16). The address comes from the connection's allocator
callback; when none is free no CP goes back, and the CHILD SA is refused with
INTERNAL_ADDRESS_FAILURE (§3.15.4; the IKE SA itself stands, `child_create`). The
CHILD SA's selectors on the client's side are narrowed to its addresses.
"""

from __future__ import annotations

import ipaddress
import logging

from ikev2.codec import ConfigAttribute, Configuration, Message, Payload
from ikev2.codec.cp import CpValue, decode_attribute, encode_attribute
from ikev2.config import IpInterface, RemoteAccess
from ikev2.constants import CfgType
from ikev2.constants import CpAttributeType as Attr
from ikev2.errors import InvalidSyntax
from ikev2.events import VirtualIpAssigned
from ikev2.tasks.base import Task, TaskSa

log = logging.getLogger(__name__)


def _user(sa: TaskSa) -> str:
    return sa.eap_identity or str(sa.peer_id)


class IkeConfig(Task):
    """CP(CFG_REQUEST) and CP(CFG_REPLY) in IKE_AUTH, for both sides."""

    name = "ike_config"

    def __init__(self) -> None:
        self.request: Configuration | None = None
        """Responder: the client's CFG_REQUEST, kept until the client authenticated."""
        self.reply: tuple[ConfigAttribute, ...] = ()
        self.sent = False

    # --- initiator ----------------------------------------------------------------------

    def build_request(self, sa: TaskSa, out: list[Payload]) -> None:
        client = sa.config.ra_client
        if client is None or self.sent:
            return
        self.sent = True
        wanted: list[ConfigAttribute] = []
        if client.request_ip4:
            wanted += [encode_attribute(Attr.INTERNAL_IP4_ADDRESS)]
            wanted += [encode_attribute(Attr.INTERNAL_IP4_DNS)]
        if client.request_ip6:
            wanted += [encode_attribute(Attr.INTERNAL_IP6_ADDRESS)]
            wanted += [encode_attribute(Attr.INTERNAL_IP6_DNS)]
        wanted.append(encode_attribute(Attr.INTERNAL_DNS_DOMAIN))
        out.append(Configuration(CfgType.CFG_REQUEST, tuple(wanted)))

    def process_response(self, sa: TaskSa, message: Message) -> None:
        if sa.config.ra_client is None or not sa.ike_authenticated:
            return
        reply = message.get(Configuration)
        if reply is None or reply.cfg_type != CfgType.CFG_REPLY:
            return  # the CHILD SA's INTERNAL_ADDRESS_FAILURE says why
        values: dict[int, list[CpValue]] = {}
        for attr in reply.attributes:
            try:
                value = decode_attribute(attr)
            except InvalidSyntax as exc:
                log.info("%s: ignoring a configuration attribute: %s", sa.name, exc)
                continue
            if value is not None:
                values.setdefault(attr.attr_type, []).append(value)
        addresses: list[IpInterface] = []
        masks = values.get(Attr.INTERNAL_IP4_NETMASK, [])
        for v4 in values.get(Attr.INTERNAL_IP4_ADDRESS, []):
            mask = masks[0] if masks else "255.255.255.255"
            addresses.append(ipaddress.IPv4Interface(f"{v4}/{mask}"))
        for v6 in values.get(Attr.INTERNAL_IP6_ADDRESS, []):
            if isinstance(v6, ipaddress.IPv6Interface):
                addresses.append(v6)
        sa.assign_virtual_ips(tuple(addresses))
        dns = (*values.get(Attr.INTERNAL_IP4_DNS, []), *values.get(Attr.INTERNAL_IP6_DNS, []))
        subnets = (
            *values.get(Attr.INTERNAL_IP4_SUBNET, []),
            *values.get(Attr.INTERNAL_IP6_SUBNET, []),
        )
        self._announce(sa, tuple(addresses), dns, values.get(Attr.INTERNAL_DNS_DOMAIN, []), subnets)

    # --- responder ----------------------------------------------------------------------

    def process_request(self, sa: TaskSa, message: Message) -> None:
        request = message.get(Configuration)
        if request is not None and request.cfg_type == CfgType.CFG_REQUEST:
            self.request = request
        ra = sa.config.remote_access
        if ra is None or self.request is None or not sa.ike_authenticated:
            return
        wanted = {attr.attr_type for attr in self.request.attributes}
        assigned = self._allocate(sa, ra, wanted)
        sa.assign_virtual_ips(assigned)
        if not assigned:
            # The CHILD SA's INTERNAL_ADDRESS_FAILURE (§3.15.4) logs the refusal.
            log.debug(
                "%s: no virtual address for %s: the address pool is exhausted",
                sa.name,
                _user(sa),
            )
            return
        self.reply = _reply(ra, assigned)
        self._announce(sa, assigned, ra.dns, ra.dns_domains, ra.subnets)

    def _allocate(self, sa: TaskSa, ra: RemoteAccess, wanted: set[int]) -> tuple[IpInterface, ...]:
        if ra.allocate is None:
            return ()
        out: list[IpInterface] = []
        for attr, version in ((Attr.INTERNAL_IP4_ADDRESS, 4), (Attr.INTERNAL_IP6_ADDRESS, 6)):
            if attr in wanted:
                address = ra.allocate(_user(sa), sa.ike_sa_id, version)
                if address is not None:
                    out.append(address)
        return tuple(out)

    def build_response(self, sa: TaskSa, out: list[Payload]) -> None:
        if self.reply and not self.sent:
            self.sent = True
            out.append(Configuration(CfgType.CFG_REPLY, self.reply))

    # --- both ---------------------------------------------------------------------------

    def _announce(
        self,
        sa: TaskSa,
        addresses: tuple[IpInterface, ...],
        dns: tuple[CpValue, ...] | list[CpValue],
        domains: tuple[CpValue, ...] | list[CpValue],
        subnets: tuple[CpValue, ...] | list[CpValue],
    ) -> None:
        log.info(
            "%s: virtual address %s for %s",
            sa.name,
            ", ".join(str(a) for a in addresses) or "none",
            _user(sa),
        )
        sa.emit(
            VirtualIpAssigned(
                connection=sa.config.name,
                ike_sa_id=sa.ike_sa_id,
                user=_user(sa),
                addresses=tuple(str(a) for a in addresses),
                dns=tuple(str(d) for d in dns),
                dns_domains=tuple(str(d) for d in domains),
                subnets=tuple(str(s) for s in subnets),
            )
        )


def _reply(ra: RemoteAccess, assigned: tuple[IpInterface, ...]) -> tuple[ConfigAttribute, ...]:
    """CFG_REPLY's attributes (§3.15.1): the addresses first, then what every client
    gets. Only the families the client has an address of get DNS and subnets."""
    out: list[ConfigAttribute] = []
    versions = {a.version for a in assigned}
    for address in assigned:
        if isinstance(address, ipaddress.IPv4Interface):
            out.append(encode_attribute(Attr.INTERNAL_IP4_ADDRESS, address.ip))
            out.append(encode_attribute(Attr.INTERNAL_IP4_NETMASK, address.netmask))
        else:
            out.append(encode_attribute(Attr.INTERNAL_IP6_ADDRESS, address))
    for server in ra.dns:
        if server.version in versions:
            kind = Attr.INTERNAL_IP4_DNS if server.version == 4 else Attr.INTERNAL_IP6_DNS
            out.append(encode_attribute(kind, server))
    for domain in ra.dns_domains:
        out.append(encode_attribute(Attr.INTERNAL_DNS_DOMAIN, domain))
    for subnet in ra.subnets:
        if subnet.version in versions:
            kind = Attr.INTERNAL_IP4_SUBNET if subnet.version == 4 else Attr.INTERNAL_IP6_SUBNET
            out.append(encode_attribute(kind, subnet))
    return tuple(out)


__all__ = ["IkeConfig"]

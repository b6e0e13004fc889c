"""Answering INFORMATIONAL requests (RFC 7296 §1.4, §2.4, §2.21).

- Delete(IKE): answer empty, then remove the IKE SA and its CHILD SAs.
- Delete(ESP, SPIs): remove those CHILD SAs and answer with our inbound SPIs of the
  pairs, except for pairs we are deleting ourselves already (crossing deletes, §1.4.1).
- No payloads (a liveness check, §2.4) or notifies we do not act on (strongSwan's
  MOBIKE ADDITIONAL_IP4_ADDRESS right after IKE_AUTH): an empty response.
- An error notify (e.g. AUTHENTICATION_FAILED from a peer that rejected our AUTH):
  logged; a fatal one ends the IKE SA after the response.
"""

from __future__ import annotations

import logging

from ikev2.codec import Delete, Message, Notify, Payload
from ikev2.constants import NotifyType, ProtocolId, enum_name
from ikev2.errors import TemporaryFailure
from ikev2.tasks.base import Task, TaskSa

log = logging.getLogger(__name__)

_FATAL = frozenset(
    {
        NotifyType.AUTHENTICATION_FAILED,
        NotifyType.INVALID_SYNTAX,
        NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD,
        NotifyType.INVALID_MAJOR_VERSION,
    }
)
"""Error notifies after which the peer no longer has this IKE SA."""


class Informational(Task):
    """The responder's side of every INFORMATIONAL request."""

    name = "informational"

    def __init__(self) -> None:
        self.delete_ike = False
        self.fatal: str | None = None
        self.answer_spis: list[bytes] = []

    def process_request(self, sa: TaskSa, message: Message) -> None:
        for payload in message.payloads:
            if isinstance(payload, Delete):
                self._delete(sa, payload)
            elif isinstance(payload, Notify):
                self._notify(sa, payload)

    def _delete(self, sa: TaskSa, delete: Delete) -> None:
        if delete.protocol == ProtocolId.IKE:
            self.delete_ike = True
            return
        if delete.protocol not in (ProtocolId.ESP, ProtocolId.AH):
            return
        for raw in delete.spis:
            spi_out = int.from_bytes(raw, "big")
            child = next((c for c in sa.children.values() if c.spi_out == spi_out), None)
            if child is None:
                log.debug("%s: peer deletes unknown ESP SPI %08x", sa.name, spi_out)
                sa.peer_deleted_before_known(spi_out)
                continue
            if not child.deleting:
                self.answer_spis.append(child.spi_in.to_bytes(4, "big"))
            sa.remove_child(child, "deleted by peer")

    def _notify(self, sa: TaskSa, notify: Notify) -> None:
        kind = enum_name(NotifyType, notify.notify_type)
        if notify.is_error:
            log.warning("%s: peer reports %s", sa.name, kind)
            if notify.notify_type in _FATAL:
                self.fatal = f"peer reported {kind}"
        else:
            log.debug("%s: peer sent %s in an INFORMATIONAL; nothing to do", sa.name, kind)

    def build_response(self, sa: TaskSa, out: list[Payload]) -> None:
        if self.delete_ike:
            # §1.4.1: the response is empty and the IKE SA is gone after it.
            sa.gone("deleted by peer", by_peer=True)
            return
        if self.answer_spis:
            out.append(Delete(ProtocolId.ESP, tuple(self.answer_spis)))
        if self.fatal is not None:
            sa.gone(self.fatal, by_peer=True)


class NotifyOnly(Task):
    """An INFORMATIONAL request carrying one notify (e.g. AUTHENTICATION_FAILED, §2.21.2)."""

    name = "notify"

    def __init__(self, notify: Notify) -> None:
        self.notify = notify

    def build_request(self, sa: TaskSa, out: list[Payload]) -> None:
        out.append(self.notify)


class RefuseCreateChild(Task):
    """CREATE_CHILD_SA on an IKE SA that is being deleted or was rekeyed (§2.25.1-2).

    TEMPORARY_FAILURE: the peer waits and tries again on the IKE SA that remains (or
    learns from our Delete that this one is gone).
    """

    name = "refuse_create_child"

    def process_request(self, sa: TaskSa, message: Message) -> None:
        what = "rekeyed" if sa.rekeyed_into is not None else "being deleted"
        log.info("%s: refusing CREATE_CHILD_SA: this IKE SA is %s", sa.name, what)
        raise TemporaryFailure(f"CREATE_CHILD_SA on an IKE SA that is {what}")

"""The control socket's commands as the gateway carries them out.

`lockgate status`, `up`, `down`, `rekey [--ike]`, `reload`, `explain`, and for the
point-to-cloud servers `clients` and `disconnect SERVER USER`, arrive as JSON requests
(`daemon.control`); each is answered with a string or the status document, or
refused with a `ControlError` whose message the client prints. `up` and `rekey`
answer once the CHILD SA (or IKE SA) is there, or after UP_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from daemon.control import ControlError
from daemon.diagnosis import explain
from daemon.peers import ConnectionState, await_ike_sa
from ikev2.errors import IkeError

if TYPE_CHECKING:
    from daemon.gateway import Gateway

UP_TIMEOUT = 20.0
"""How long `lockgate up` waits for the CHILD SA before answering."""


FIELDS: dict[str, dict[str, type]] = {
    "status": {"summary": bool},
    "reload": {},
    "up": {"name": str},
    "down": {"name": str},
    "rekey": {"name": str, "ike": bool},
    "clients": {},
    "disconnect": {"server": str, "user": str},
    "explain": {"name": str},
}
"""The fields each command takes besides "command", and their JSON types."""


def check_request(request: dict[str, Any]) -> None:
    """Refuse a request whose fields the command does not take or whose values are of
    the wrong type, as strictly as the configuration's keys are checked: "yes" is not
    true, and a missing name is not a connection called None."""
    command = request["command"]
    fields = FIELDS.get(command)
    if fields is None:
        raise ControlError(f"unknown command {command!r}")
    for key, value in request.items():
        kind = fields.get(key)
        if key == "command":
            continue
        if kind is None:
            known = ", ".join(fields) or "none"
            raise ControlError(f"{command} takes no field {key!r} (it takes: {known})")
        if kind is bool and not isinstance(value, bool):
            raise ControlError(f"{key} must be true or false")
    # Every text field is required: a missing name is not a connection called None.
    for key, kind in fields.items():
        if kind is str:
            value = request.get(key)
            if not isinstance(value, str) or not value:
                what = "a connection name" if key == "name" else f"a {key} name"
                raise ControlError(f"request needs {what}")


async def handle_request(gateway: Gateway, request: dict[str, Any]) -> Any:
    """Answer one request of the control socket; a refusal raises `ControlError`."""
    check_request(request)
    command = request["command"]
    if command == "status":
        return gateway.status_summary() if request.get("summary") else gateway.status()
    if command == "reload":
        return gateway.reload()
    ikev2_ra = gateway.ikev2_ra
    if command == "clients":
        ikev2 = ikev2_ra.client_rows(gateway) if ikev2_ra is not None else []
        return gateway.remote_access.clients() + ikev2
    if command == "disconnect":
        server, user = request.get("server"), request.get("user")
        if ikev2_ra is not None and server == ikev2_ra.name and isinstance(user, str) and user:
            return f"{server}: {ikev2_ra.disconnect(user)} IKE SA(s) of {user} deleted"
        return gateway.remote_access.disconnect(server, user)
    if command == "rekey" and request.get("ike"):
        return await _rekey_ike(gateway, request.get("name"))
    if command in ("up", "down", "rekey", "explain"):
        name = request.get("name")
        if not isinstance(name, str) or name not in gateway.connections:
            known = ", ".join(sorted(gateway.connections)) or "none"
            raise ControlError(f"no connection named {name!r} (configured: {known})")
        state = gateway.connections[name]
        if command == "explain":
            return explain(gateway, name)
        if command == "up":
            return await _up(gateway, state)
        if command == "down":
            return _down(gateway, state)
        return await _rekey(gateway, state)
    raise ControlError(f"unknown command {command!r}")


async def _up(gateway: Gateway, state: ConnectionState) -> str:
    name = state.name
    if gateway.is_up(name):
        return f"connection {name} is already up"
    peer = gateway.peers[state.peer]
    state.wanted = True
    waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    state.waiters.append(waiter)
    sa = gateway.established_ike_sa(state.peer)
    if sa is not None:
        state.requested_at = None
        gateway.create_child(state, sa)
    elif not gateway.ike_sa_count(state.peer):
        if peer.config.remote_address is None:
            state.waiters.remove(waiter)
            raise ControlError(f"connection {name}: the peer is %any; it must initiate")
        peer.attempts = 0
        gateway.cancel_retry(peer)
        gateway.initiate(peer)
    else:
        await_ike_sa(gateway, state)
    try:
        return await asyncio.wait_for(waiter, UP_TIMEOUT)
    except TimeoutError:
        raise ControlError(
            f"connection {name}: not up after {UP_TIMEOUT:.0f} s (still trying)"
        ) from None


def _down(gateway: Gateway, state: ConnectionState) -> str:
    endpoint = gateway.endpoint
    if endpoint is None:
        raise ControlError("the daemon is not running")
    state.wanted = False
    now = time.monotonic()
    peer = gateway.peers[state.peer]
    others = [c for c in gateway.connections_of(state.peer) if c.name != state.name]
    if not any(gateway.is_up(c.name) for c in others):
        # Nothing else uses the peer's IKE SA: delete it with its CHILD SAs.
        gateway.cancel_retry(peer)
        count = endpoint.delete_connection(state.peer, now, "deleted by operator")
        gateway.service()
        return f"connection {state.name}: deleted (and {count} IKE SA(s) with {state.peer})"
    entries = gateway.installed(state.name)
    for entry in entries:
        with contextlib.suppress(IkeError):
            endpoint.delete_child(entry.unique_id, now, "deleted by operator")
    gateway.service()
    return f"connection {state.name}: {len(entries)} CHILD SA(s) deleted"


async def _rekey(gateway: Gateway, state: ConnectionState) -> str:
    endpoint = gateway.endpoint
    if endpoint is None:
        raise ControlError("the daemon is not running")
    entries = gateway.installed(state.name)
    if not entries:
        raise ControlError(f"connection {state.name} has no CHILD SA to rekey")
    waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    state.waiters.append(waiter)
    now = time.monotonic()
    for entry in entries:
        try:
            endpoint.rekey_child(entry.unique_id, now)
        except IkeError as exc:
            state.waiters.remove(waiter)
            raise ControlError(f"connection {state.name}: cannot rekey: {exc}") from None
    gateway.service()
    try:
        return await asyncio.wait_for(waiter, UP_TIMEOUT)
    except TimeoutError:
        raise ControlError(
            f"connection {state.name}: rekey not finished after {UP_TIMEOUT:.0f} s"
        ) from None


async def _rekey_ike(gateway: Gateway, name: object) -> str:
    """`lockgate rekey --ike NAME`: rekey the IKE SA that carries connection NAME
    (or of peer NAME); its CHILD SAs move to the new IKE SA untouched (§2.8)."""
    endpoint = gateway.endpoint
    if endpoint is None:
        raise ControlError("the daemon is not running")
    if isinstance(name, str) and name in gateway.connections:
        peer_name = gateway.connections[name].peer
    elif isinstance(name, str) and name in gateway.peers:
        peer_name = name
    else:
        known = ", ".join(sorted(gateway.connections)) or "none"
        raise ControlError(f"no connection named {name!r} (configured: {known})")
    sa = gateway.established_ike_sa(peer_name)
    if sa is None:
        raise ControlError(f"peer {peer_name} has no established IKE SA to rekey")
    peer = gateway.peers[peer_name]
    waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    peer.ike_waiters.append(waiter)
    try:
        endpoint.rekey_ike_sa(sa.ike_sa_id, time.monotonic())
    except IkeError as exc:
        peer.ike_waiters.remove(waiter)
        raise ControlError(f"peer {peer_name}: cannot rekey the IKE SA: {exc}") from None
    gateway.service()
    try:
        return await asyncio.wait_for(waiter, UP_TIMEOUT)
    except TimeoutError:
        raise ControlError(
            f"peer {peer_name}: IKE rekey not finished after {UP_TIMEOUT:.0f} s"
        ) from None

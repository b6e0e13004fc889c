"""Reload: re-read the configuration file and apply what changed to the running gateway.

SIGHUP and `lockgate reload` land here. Only peers whose settings (or connections)
changed are touched. A changed peer keeps its IKE SA unless its address, an identity or
the credentials changed (`daemon.peers.peer_change`): then it is dropped and set up
again. Everything else is applied under the IKE SA that stays, make-before-break, so
traffic does not stop: connections removed and added, start modes, traffic selectors
(a new CHILD SA before the old one goes), and rekeys (RFC 7296 §2.8) for changed
proposals or lifetimes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING

from conf import ConfigError
from conf.ike import ike_connections
from conf.load import load_config, workers_problems
from conf.model import Config
from daemon.control import ControlError
from daemon.ikev2_ra import IkeRaServer, plan_change
from daemon.mtu import path_mtu
from daemon.peers import ConnectionState, PeerChange, await_ike_sa, peer_change, resolve
from daemon.status import status_line
from ikev2.config import ChildConfig
from ikev2.config import ConnectionConfig as PeerConfig
from ikev2.errors import IkeError
from ikev2.sa import IkeSa
from ikev2.sa_types import IkeSaState
from ikev2.ts import format_selectors

if TYPE_CHECKING:
    from daemon.gateway import Gateway

__all__ = ["log_config_warnings", "one_line", "reload", "replaced"]

log = logging.getLogger(__name__)


def one_line(exc: Exception) -> str:
    """A configuration error on one log line: conf's ConfigError lists each problem
    on a line of its own when there are several."""
    problems = getattr(exc, "problems", ())
    if len(problems) > 1:
        return "; ".join(str(p) for p in problems)
    return str(exc)


def log_config_warnings(config: Config) -> None:
    """The configuration's legal but doubtful settings (`Config.warnings`), each on a
    log line of its own naming its key, at start and at every reload."""
    for problem in config.warnings:
        log.warning("%s", problem)


def reload(gateway: Gateway) -> str:
    """`_reload`, with a failure logged as well as raised: the operator who ran
    `lockgate reload` sees it, and so does the journal, as after a SIGHUP."""
    try:
        return _reload(gateway)
    except ConfigError as exc:
        log.error("reload failed, keeping the running configuration: %s", one_line(exc))
        raise ControlError(str(exc)) from None
    except ControlError as exc:
        log.error("reload failed, keeping the running configuration: %s", exc)
        raise


def _reload(gateway: Gateway) -> str:
    """Re-read the file; touch only peers whose settings (or connections) changed.

    A changed peer keeps its IKE SA unless its address, an identity or the
    credentials changed (`daemon.peers.peer_change`); everything else is applied
    under it, make-before-break, so traffic does not stop (`_update_peer`). Other
    peers keep their SAs untouched.
    """
    gateway.reloads += 1
    new = load_config(gateway.config_path, tables=gateway.toml)
    new_list = ike_connections(new)
    log_config_warnings(new)
    old = gateway.config
    if old is None or gateway.endpoint is None:
        raise ControlError("the daemon is not running")
    if gateway.workers is not None:
        # The workers keep running as started: the new file must suit them too.
        problems = workers_problems(gateway.workers.count, new.remote_access, new.connections)
        if problems:
            raise ConfigError(problems, str(new.source) if new.source is not None else None)
    if new.gateway != old.gateway:
        log.warning(
            "[gateway] changed: addresses, ports, the TUN and the COOKIE/half-open "
            "settings need a restart"
        )
    if new.metrics != old.metrics:
        log.warning("[metrics] changed: the endpoint stays as it is until a restart")
    if new.console != old.console:
        log.warning("[console] changed: the web console's settings need a restart")
    ikev2_summary = _reload_ikev2_server(gateway, new)
    old_ike = {name: peer.config for name, peer in gateway.peers.items()}
    new_ike = {c.name: c for c in new_list}
    removed = [n for n in old_ike if n not in new_ike]
    added = [n for n in new_ike if n not in old_ike]
    changed = [n for n in new_ike if n in old_ike and new_ike[n] != old_ike[n]]
    plans = {name: peer_change(old_ike[name], new_ike[name]) for name in changed}
    renegotiated = [name for name in changed if plans[name].renegotiate]
    for name in removed + renegotiated:
        count = gateway.drop_peer(name, "configuration changed")
        log.info("reload: peer %s %s (%d IKE SA(s) deleted)",
                 name, "removed" if name in removed else "changed", count)  # fmt: skip
    gateway.service()
    gateway.endpoint.set_connections([*new_list, *gateway.ra_connections()])
    for name in changed:
        if not plans[name].renegotiate:
            _update_peer(gateway, new_ike[name], plans[name])
    for peer in new.peers.values():
        if peer.address is not None and str(peer.address) not in gateway.path_mtus:
            gateway.path_mtus[str(peer.address)] = path_mtu(str(peer.address))
    gateway.config = new
    gateway.route_links.sync(new, gateway.is_up)
    # The [gateway] addresses may have moved with the new file.
    gateway.routes.addresses_moved()
    for name in renegotiated + added:
        gateway.add_peer(new_ike[name])
    unchanged = len(new_ike) - len(changed) - len(added)
    summary = (
        f"reloaded: peers {len(added)} added, {len(changed)} changed, "
        f"{len(removed)} removed, {unchanged} unchanged"
    )
    summary += ikev2_summary + gateway.remote_access.reload(new)
    log.info("%s", summary)
    for warning in gateway.forwarding_warnings():
        log.warning("%s", warning)
    gateway.notifier.notify(STATUS=status_line(gateway))
    return summary


def _reload_ikev2_server(gateway: Gateway, new: Config) -> str:
    """Apply the reloaded ikev2 server section (`daemon.ikev2_ra.plan_change`): a new
    one starts, a removed or renamed one deletes its clients' IKE SAs, a changed one
    is reconfigured in place. Its new IKE connection is checked before anything is
    touched (a ConfigError keeps the running one) and takes effect with the
    endpoint's `set_connections`. Returns the words for the reload's answer."""
    server = gateway.ikev2_ra
    section = next((ra for ra in new.remote_access.values() if ra.protocol == "ikev2"), None)
    if section is not None and server is not None and section.name == server.name:
        connection = server.connection(new, section)
        change = plan_change(server.config, section)
        gone = server.reconfigure(section, change) if change.changed else 0
        gateway.use_ikev2_ra(server, connection)
        if not change.changed:
            return ""
        return f"; ikev2 server {server.name} changed ({gone} client(s) disconnected)"
    words = ""
    added = IkeRaServer(section) if section is not None else None
    new_connection = added.connection(new) if added is not None else None
    if server is not None:
        gone = server.stop("server removed by a reload")
        log.info("reload: ikev2 server %s removed (%d client(s) disconnected)", server.name, gone)
        words += f"; ikev2 server {server.name} removed ({gone} client(s) disconnected)"
    gateway.use_ikev2_ra(added, new_connection)
    if added is not None:
        log.info("reload: ikev2 server %s added", added.name)
        words += f"; ikev2 server {added.name} added"
    return words


def _update_peer(gateway: Gateway, config: PeerConfig, change: PeerChange) -> None:
    """Apply a peer's new settings to its running SAs (`reload`): the IKE core and
    the gateway's bookkeeping take the new configuration, then, under the IKE SA
    that stays: a removed connection's CHILD SAs are deleted (§1.4.1); an added
    one is requested with CREATE_CHILD_SA (§1.3.1) if its start mode wants it up;
    one with new selectors gets a new CHILD SA before the old one goes
    (`_replace_child`); a new start mode arms or disarms a trap; the CHILD SAs or
    the IKE SA whose own settings changed are rekeyed (§2.8). A rekey or a new
    CHILD SA the peer refuses leaves the old SA up."""
    endpoint = gateway.endpoint
    if endpoint is None:
        return
    name = config.name
    peer = gateway.peers[name]
    before = {child.name: child for child in peer.config.children}
    peer.config = config
    for child_name in change.removed:
        _remove_connection(gateway, name, before[child_name])
    added = []
    for child in config.children:
        if child.name in change.added:
            added.append(gateway.add_connection(config, child))
            continue
        state = gateway.connections[child.name]
        state.config = child
        if child.name in change.new_start or child.name in change.replace_children:
            _apply_start(gateway, state, before[child.name])
    now = time.monotonic()
    sas = endpoint.reconfigure(config)
    ours = {info.event.ike_sa_id for info in gateway.ike_sa_infos(name)}
    announced = [sa for sa in sas if sa.ike_sa_id in ours]
    deleted = 0
    removed = set(change.removed)
    for sa in announced:
        for unique_id, child_sa in list(sa.children.items()):
            if child_sa.config.name in removed and not child_sa.deleting:
                endpoint.delete_child(unique_id, now, "connection removed by a reload")
                deleted += 1
    children = 0
    for child_name in change.rekey_children:
        for entry in gateway.installed(child_name):
            try:
                endpoint.rekey_child(entry.unique_id, now)
            except IkeError as exc:
                log.warning("reload: connection %s: cannot rekey: %s", child_name, exc)
                continue
            children += 1
    replaced = sum(
        _replace_child(gateway, gateway.connections[child_name], announced)
        for child_name in change.replace_children
    )
    ikes = 0
    if change.rekey_ike:
        for sa in announced:
            if sa.state is IkeSaState.ESTABLISHED:
                endpoint.rekey_ike_sa(sa.ike_sa_id, now)
                ikes += 1
    # A connection that should be up and is not (added, or now start =
    # "initiate") comes up as it would at start-up.
    started = [gateway.connections[n] for n in change.new_start if n in gateway.connections]
    requested = sum(_bring_up(gateway, state) for state in added + started)
    log.info(
        "reload: peer %s changed in place (%d CHILD SA(s) and %d IKE SA(s) rekeyed, "
        "%d CHILD SA(s) replaced, %d requested, %d deleted)",
        name,
        children,
        ikes,
        replaced,
        requested,
        deleted,
    )


def _remove_connection(gateway: Gateway, peer: str, child: ChildConfig) -> None:
    """A reload took `child` from `peer`: forget it (unless it moved to another
    peer, which holds it now) and disarm its trap; `_update_peer` deletes its
    CHILD SAs."""
    state = gateway.connections.get(child.name)
    if state is None or state.peer != peer:
        return
    del gateway.connections[child.name]
    resolve(state.waiters, f"connection {child.name}: removed by a reload", ok=False)
    if child.start == "trap" or state.trapped:
        gateway.disarm_trap(child)
    log.info("reload: connection %s removed from peer %s", child.name, peer)


def _apply_start(gateway: Gateway, state: ConnectionState, before: ChildConfig) -> None:
    """A reload changed a connection's start mode or selectors: move its trap to
    the new selectors or mode, and say whether it should be up. Nothing is
    negotiated: an SA that is up stays up, one that is not comes with its start
    mode (a trapped packet) or `lockgate up`."""
    child = state.config
    if before.start == "trap" or state.trapped:
        gateway.disarm_trap(before)
    if child.start == "trap" or state.trapped:
        gateway.arm_trap(child)
    if child.start == "initiate":
        state.wanted = True
    elif before.start == "initiate":
        state.wanted = False  # up now, but not set up again if it goes
    if child.start != before.start:
        log.info("reload: connection %s: start %s (was %s)",
                 state.name, child.start, before.start)  # fmt: skip


def _replace_child(gateway: Gateway, state: ConnectionState, sas: list[IkeSa]) -> int:
    """A reload gave the connection other traffic selectors. A rekey keeps them
    (RFC 7296 §2.8), so ask for a new CHILD SA with a plain CREATE_CHILD_SA under
    the same IKE SA; the old ones are deleted once it is installed (`events`), and
    carry the traffic until then. Returns how many CHILD SAs it replaces."""
    old = {
        unique_id
        for sa in sas
        for unique_id, child_sa in sa.children.items()
        if child_sa.config.name == state.name and not child_sa.deleting
    }
    sa = gateway.established_ike_sa(state.peer)
    if not old or sa is None:
        return 0  # not up: its next CHILD SA has the new selectors anyway
    state.replacing = old
    state.requested_at = None
    log.info("reload: connection %s: new traffic selectors %s === %s, replacing %s",
             state.name, format_selectors(state.config.local_ts),
             format_selectors(state.config.remote_ts),
             ", ".join(f"#{u}" for u in sorted(old)))  # fmt: skip
    gateway.create_child(state, sa)
    return len(old)


def replaced(gateway: Gateway, state: ConnectionState, unique_id: int) -> None:
    """A new CHILD SA of a connection whose selectors a reload changed is
    installed (#`unique_id`): delete the ones it replaces (`_replace_child`)."""
    endpoint = gateway.endpoint
    old, state.replacing = state.replacing - {unique_id}, set()
    if endpoint is None:
        return
    now = time.monotonic()
    for old_id in sorted(old):
        with contextlib.suppress(IkeError):  # gone meanwhile (expired, deleted)
            endpoint.delete_child(old_id, now, "replaced: new traffic selectors")
        # The peer drops the old SA when our Delete arrives, and installed the new
        # one before it answered: send on the new one from now on, and keep
        # opening what comes on the old one for a while (as after a rekey we
        # started, §2.8). Its more specific policy would otherwise keep the
        # traffic until the Delete's answer.
        gateway.uninstall(old_id, f"replaced by #{unique_id}")


def _bring_up(gateway: Gateway, state: ConnectionState) -> int:
    """A reload added a connection that should be up: a CREATE_CHILD_SA under the
    peer's IKE SA, later under the IKE SA being set up (`ConnectionState.awaiting`),
    or the peer initiated if it has none. Returns 1 if a CHILD SA was requested."""
    if not state.wanted or gateway.is_up(state.name):
        return 0
    sa = gateway.established_ike_sa(state.peer)
    if sa is not None:
        gateway.create_child(state, sa)
        return 1
    if await_ike_sa(gateway, state):
        # Not yet established: those IKE SAs began with the configuration before the
        # reload, without this connection.
        return 0
    peer = gateway.peers[state.peer]
    if peer.retry is None:
        gateway.initiate(peer)
    return 0

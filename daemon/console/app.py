"""The web console's HTTPS server (aiohttp) on the daemon's event loop.

Every response carries a strict Content-Security-Policy (scripts and styles from our
own files only), and refuses framing and sniffing. Every page but the login needs an
admin's session; every POST needs the session's CSRF token. Actions go through the
control socket's code (`daemon.commands`) and the users-file code of `lockgate user`
(`daemon.remote_access_cli`), and each is logged with the admin's name. Passwords go
only to scrypt: never into a page, a log line or an exception message.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import web
from multidict import MultiDictProxy

from conf.users import load_users, password_problem
from daemon.commands import handle_request
from daemon.console import pages
from daemon.console.auth import Admins, LoginLimit, Session, Sessions, check_admin, csrf_ok
from daemon.console.logs import LogBuffer
from daemon.console.tls import certificate_files, server_context
from daemon.console.traffic import SAMPLE_INTERVAL, Traffic
from daemon.control import ControlError
from daemon.remote_access_cli import (
    PROFILE_FORMATS,
    Refused,
    add_user,
    delete_user,
    render_profile,
    set_password,
    set_user,
)
from ikev2.config import ConfigError

if TYPE_CHECKING:
    from conf.model import ConsoleConfig, RemoteAccessConfig
    from daemon.gateway import Gateway

log = logging.getLogger(__name__)

COOKIE = "lockgate_session"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Strict-Transport-Security": "max-age=31536000",
    "Cache-Control": "no-store",
}
PUBLIC = ("/login", "/static/")
MAX_BODY = 64 * 1024
LOGIN_CHECKS = 2
"""scrypt checks run at once (each takes 16 MiB and some 50 ms of a core)."""
STATUS_TTL = 1.0
"""Seconds one status document serves every page and poll: its cost grows with the SAs
(O(N)), and several open pages polling each must not multiply it."""
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css"}

SESSION: web.RequestKey[Session | None] = web.RequestKey("session", Session)
"""The request's live session, or None (set for every request by `_guard`)."""
FORM: web.RequestKey[MultiDictProxy[Any]] = web.RequestKey("form", MultiDictProxy)
"""A POST's form fields (read once by `_guard`, for the CSRF token)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Command = Callable[["Gateway", dict[str, Any]], Awaitable[Any]]


class Console:
    """The console of one gateway: its sessions, login limits, traffic samples and
    (once started) its HTTPS listener."""

    def __init__(
        self, gateway: Gateway, config: ConsoleConfig, *, command: Command = handle_request
    ) -> None:
        self.gateway = gateway
        self.config = config
        self.command = command
        self.sessions = Sessions()
        self.admins = Admins(config.admins)
        self.limit = LoginLimit()
        self.traffic = Traffic()
        self.logs = LogBuffer()
        self._checks = asyncio.Semaphore(LOGIN_CHECKS)
        self._static = {
            name: (item.read_bytes(), STATIC_TYPES[Path(name).suffix])
            for item in importlib.resources.files("daemon.console").joinpath("static").iterdir()
            if (name := item.name).endswith(tuple(STATIC_TYPES))
        }
        self._status_cache: tuple[float, dict[str, Any]] | None = None
        self._runner: web.AppRunner | None = None
        self._sampler: asyncio.Task[None] | None = None

    # ---- start and stop ---------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._headers, self._guard], client_max_size=MAX_BODY)
        app.router.add_get("/login", self.login_page)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.logout)
        app.router.add_get("/static/{name}", self.static)
        app.router.add_get("/", self.overview)
        app.router.add_get("/api/overview", self.overview_api)
        app.router.add_get("/connection/{name}", self.connection)
        app.router.add_get("/api/connection/{name}", self.connection_api)
        app.router.add_post("/connection/{name}/{action}", self.connection_action)
        app.router.add_get("/remote-access", self.remote_access)
        app.router.add_get("/api/clients", self.clients_api)
        app.router.add_post("/remote-access/disconnect", self.disconnect)
        app.router.add_post("/remote-access/users/{action}", self.user_action)
        app.router.add_get("/remote-access/{server}/profile", self.profile)
        app.router.add_get("/log", self.log_page)
        app.router.add_get("/api/log", self.log_api)
        return app

    async def start(self, config_path: Path) -> None:
        """Listen (TLS only) on `[console] listen`; raises OSError if the port is taken."""
        gateway_config = self.gateway.config
        if gateway_config is None:
            raise RuntimeError("the console starts after the configuration is loaded")
        # From here on the log page has the daemon's lines (the fingerprint's first).
        logging.getLogger().addHandler(self.logs)
        cert, key = certificate_files(gateway_config, config_path)
        context = server_context(cert, key)
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, str(self.config.host), self.config.port, ssl_context=context
        )
        await site.start()
        self._sampler = asyncio.get_running_loop().create_task(self._sample())
        log.info("console: https://%s/", _authority(self.config))

    async def close(self) -> None:
        logging.getLogger().removeHandler(self.logs)
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        if self._runner is not None:
            await self._runner.cleanup()

    async def _sample(self) -> None:
        while True:
            self.sample(time.monotonic())
            await asyncio.sleep(SAMPLE_INTERVAL)

    def sample(self, now: float) -> None:
        """Take one traffic sample of the installed CHILD SAs."""
        plane = self.gateway.plane
        entries = plane.entries.values() if plane is not None else ()
        self.traffic.sample(
            (
                (e.unique_id, e.connection, e.inbound.byte_count, e.outbound.byte_count)
                for e in entries
            ),
            self.gateway.connections,
            now,
        )

    def _status(self) -> dict[str, Any]:
        """The gateway's status document, at most STATUS_TTL old (none after an action)."""
        now = time.monotonic()
        if self._status_cache is None or now - self._status_cache[0] > STATUS_TTL:
            self._status_cache = (now, self.gateway.status())
        return self._status_cache[1]

    # ---- what every request goes through ------------------------------------------------

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers.update(SECURITY_HEADERS)
            raise
        response.headers.update(SECURITY_HEADERS)
        return response

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """An admin's session for everything but the login and the static files, and
        the session's CSRF token with every POST."""
        session = self.sessions.get(request.cookies.get(COOKIE), time.monotonic())
        if session is not None and session.admin is not None and not self._still_admin(session):
            log.info("console: admin %s: session ended (deleted or new password)", session.admin)
            self.sessions.end(session)
            session = None
        request[SESSION] = session
        if request.method == "POST":
            form = await request.post()
            request[FORM] = form
            if not csrf_ok(session, form.get("csrf")):
                log.warning("console: refused %s from %s: no valid CSRF token",
                            request.path, request.remote)  # fmt: skip
                if request.path == "/login":
                    # An expired login form: a fresh one, without blame.
                    return self._login_response(None, "The form expired; please try again.")
                raise web.HTTPForbidden(text="refused: no valid CSRF token or session")
        if request.path.startswith(PUBLIC):
            return await handler(request)
        if session is None or session.admin is None:
            if request.method == "POST" or request.path.startswith("/api/"):
                raise web.HTTPUnauthorized(text="log in first")
            raise web.HTTPSeeOther("/login")
        return await handler(request)

    def _still_admin(self, session: Session) -> bool:
        """Whether the session's admin still exists with the password they logged in with."""
        try:
            proof = self.admins.proof(session.admin or "")
        except ConfigError as exc:
            log.error("console: cannot read the admins file: %s", exc)
            return False
        return proof is not None and proof == session.proof

    # ---- logging in and out ------------------------------------------------------------

    def _login_response(self, session: Session | None, error: str | None,
                        status: int = 200) -> web.Response:  # fmt: skip
        if session is None:
            session = self.sessions.new(time.monotonic())
        response = web.Response(
            text=pages.login_page(session.csrf, error), content_type="text/html", status=status
        )
        _set_cookie(response, session.token)
        return response

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        session: Session | None = request[SESSION]
        if session is not None and session.admin is not None:
            raise web.HTTPSeeOther("/")
        return self._login_response(session, None)

    async def login(self, request: web.Request) -> web.StreamResponse:
        session = _session(request)
        form = request[FORM]
        name, password = str(form.get("name", "")), str(form.get("password", ""))
        address = request.remote or "?"
        now = time.monotonic()
        wait = self.limit.wait(address, now)
        if wait > 0:
            log.warning("console: login from %s refused: too many failures", address)
            return self._login_response(
                session,
                f"Too many failed logins from your address: try again in {wait:.0f} s.",
                status=429,
            )
        # Counted as a failure before the check, and forgiven after a success: requests
        # sent side by side must not all get their try before the first one fails.
        self.limit.failed(address, now)
        loop = asyncio.get_running_loop()
        try:
            async with self._checks:
                admin, ok = await loop.run_in_executor(
                    None, check_admin, self.config.admins, name, password
                )
        except ConfigError as exc:
            log.error("console: cannot read the admins file: %s", exc)
            return self._login_response(session, "The admins file cannot be read.", status=500)
        if not ok:
            # The name only if it is an admin's: a password typed into the name field
            # must not reach the log.
            why = f"admin {name}: wrong password" if admin is not None else "no such admin"
            log.warning("console: failed login from %s (%s)", address, why)
            return self._login_response(session, "Wrong name or password.", status=401)
        self.limit.succeeded(address)
        proof = admin.password if admin is not None else None
        fresh = self.sessions.login(session, name, proof, time.monotonic())
        log.info("console: admin %s logged in from %s", name, address)
        response = web.HTTPSeeOther("/")
        _set_cookie(response, fresh.token)
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        session = _session(request)
        self.sessions.end(session)
        if session.admin is not None:
            log.info("console: admin %s logged out", session.admin)
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        raise response

    # ---- static files -----------------------------------------------------------------

    async def static(self, request: web.Request) -> web.StreamResponse:
        found = self._static.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        body, kind = found
        return web.Response(body=body, content_type=kind, charset="utf-8")

    # ---- pages ------------------------------------------------------------------------

    def _page(self, request: web.Request) -> dict[str, Any]:
        session = _session(request)
        notice, session.notice = session.notice, None
        return {"admin": session.admin, "csrf": session.csrf, "notice": notice}

    def _overview_tables(self) -> dict[str, pages.Table]:
        config = self.gateway.config
        addresses = [str(a) for a in config.gateway.addresses] if config is not None else []
        ident = config.gateway.id if config is not None else "?"
        return pages.overview_tables(self._status(), self.traffic.rates, addresses, ident)

    async def overview(self, request: web.Request) -> web.StreamResponse:
        body = pages.overview_page(self._overview_tables(), **self._page(request))
        return web.Response(text=body, content_type="text/html")

    async def overview_api(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"tables": self._overview_tables()})

    def _connection_name(self, request: web.Request) -> str:
        name = request.match_info["name"]
        if name not in self.gateway.connections:
            raise web.HTTPNotFound(text=f"no connection named {name!r}")
        return name

    async def _connection_tables(self, name: str) -> dict[str, pages.Table]:
        """The page's tables, with the answer of `lockgate explain NAME` (what failed,
        in words: more than the status document's last error)."""
        try:
            explained = await self.command(self.gateway, {"command": "explain", "name": name})
        except ControlError as exc:
            explained = {"text": f"explain failed: {exc}"}
        if not isinstance(explained, dict):
            explained = None
        return pages.connection_tables(self._status(), name, explained)

    async def connection(self, request: web.Request) -> web.StreamResponse:
        name = self._connection_name(request)
        tables = await self._connection_tables(name)
        page = self._page(request)
        csrf = page.pop("csrf")
        body = pages.connection_page(name, tables, csrf, **page)
        return web.Response(text=body, content_type="text/html")

    async def connection_api(self, request: web.Request) -> web.StreamResponse:
        name = self._connection_name(request)
        return web.json_response({"tables": await self._connection_tables(name)})

    async def remote_access(self, request: web.Request) -> web.StreamResponse:
        config = self.gateway.config
        servers: list[dict[str, Any]] = []
        for server in config.remote_access.values() if config is not None else ():
            try:
                users = load_users(server.users) if server.users is not None else {}
            except ConfigError as exc:
                log.error("console: %s", exc)
                users = {}
            servers.append(
                {
                    "name": server.name,
                    "protocol": server.protocol,
                    "auth": server.auth,
                    "groups": list(server.groups),
                    "users": sorted(users.values(), key=lambda u: u.name),
                    "formats": PROFILE_FORMATS if server.protocol == "ikev2" else ("ovpn",),
                }
            )
        clients = pages.client_rows(await self.command(self.gateway, {"command": "clients"}))
        page = self._page(request)
        csrf = page.pop("csrf")
        body = pages.remote_access_page(servers, clients, csrf, **page)
        return web.Response(text=body, content_type="text/html")

    async def clients_api(self, request: web.Request) -> web.StreamResponse:
        clients = await self.command(self.gateway, {"command": "clients"})
        return web.json_response({"tables": {"clients": pages.client_rows(clients)}})

    def _log_rows(self, request: web.Request) -> tuple[str | None, pages.Table]:
        connection = request.query.get("connection") or None
        # Newest first: what just happened is what an operator looks for.
        rows: pages.Table = [line.row() for line in reversed(self.logs.select(connection))]
        return connection, rows

    async def log_page(self, request: web.Request) -> web.StreamResponse:
        connection, rows = self._log_rows(request)
        body = pages.log_page(rows, sorted(self.gateway.connections), connection,
                              **self._page(request))  # fmt: skip
        return web.Response(text=body, content_type="text/html")

    async def log_api(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"tables": {"log": self._log_rows(request)[1]}})

    # ---- actions ----------------------------------------------------------------------

    def _done(self, request: web.Request, what: str, result: str, back: str) -> web.HTTPSeeOther:
        """Log an action with its admin and outcome, and show the outcome on `back`."""
        self._status_cache = None  # the next page shows what the action changed
        session = _session(request)
        log.info("console: admin %s: %s: %s", session.admin, what, result.splitlines()[0])
        session.notice = result
        return web.HTTPSeeOther(back)

    def _refused(self, request: web.Request, what: str, reason: str, back: str) -> web.HTTPSeeOther:
        self._status_cache = None
        session = _session(request)
        log.warning("console: admin %s: %s refused: %s", session.admin, what, reason)
        session.notice = f"Refused: {reason}"
        return web.HTTPSeeOther(back)

    async def connection_action(self, request: web.Request) -> web.StreamResponse:
        name = self._connection_name(request)
        action = request.match_info["action"]
        messages: dict[str, dict[str, Any]] = {
            "up": {"command": "up", "name": name},
            "down": {"command": "down", "name": name},
            "rekey": {"command": "rekey", "name": name},
            "rekey-ike": {"command": "rekey", "name": name, "ike": True},
        }
        message = messages.get(action)
        if not message:
            raise web.HTTPNotFound()
        back = f"/connection/{quote(name, safe='')}"
        what = f"{action} {name}"
        try:
            result = await self.command(self.gateway, message)
        except ControlError as exc:
            raise self._refused(request, what, str(exc), back) from None
        raise self._done(request, what, str(result), back)

    async def disconnect(self, request: web.Request) -> web.StreamResponse:
        form = request[FORM]
        server, user = str(form.get("server", "")), str(form.get("user", ""))
        what = f"disconnect {user} from {server}"
        try:
            result = await self.command(
                self.gateway, {"command": "disconnect", "server": server, "user": user}
            )
        except ControlError as exc:
            raise self._refused(request, what, str(exc), "/remote-access") from None
        raise self._done(request, what, str(result), "/remote-access")

    def _server(self, name: str) -> RemoteAccessConfig:
        config = self.gateway.config
        server = config.remote_access.get(name) if config is not None else None
        if server is None:
            raise Refused(f"no remote-access server named {name!r}")
        return server

    async def user_action(self, request: web.Request) -> web.StreamResponse:
        form = request[FORM]
        action = request.match_info["action"]
        server_name, user = str(form.get("server", "")), str(form.get("user", ""))
        group = str(form.get("group", "")).strip() or None
        static_ip = str(form.get("static_ip", "")).strip() or None
        password = str(form.get("password", ""))
        what = f"{action} user {user} on {server_name}"

        def checked_password() -> str:
            problem = password_problem(user, password)
            if problem is not None:
                raise Refused(f"{problem}; nothing changed")
            return password

        loop = asyncio.get_running_loop()
        try:
            server = self._server(server_name)
            change: Callable[[], str]
            if action == "add":
                given = None if server.auth == "certificate" and not password else checked_password

                def change() -> str:
                    return add_user(server, user, group=group, static_ip=static_ip,
                                    password=given)  # fmt: skip
            elif action == "delete":

                def change() -> str:
                    return delete_user(server, user)
            elif action == "password":

                def change() -> str:
                    return set_password(server, user, checked_password)
            elif action == "set":

                def change() -> str:
                    return set_user(server, user, group=group, static_ip=static_ip)
            else:
                raise web.HTTPNotFound()
            # Off the loop: hashing a password with scrypt takes some 50 ms.
            result = await loop.run_in_executor(None, change)
        except (Refused, ConfigError) as exc:
            raise self._refused(request, what, str(exc), "/remote-access") from None
        except OSError as exc:
            # Under systemd, a users file outside the unit's ReadWritePaths is read-only.
            reason = f"cannot write the users file: {exc.strerror or exc}"
            raise self._refused(request, what, reason, "/remote-access") from None
        raise self._done(request, what, result, "/remote-access")

    async def profile(self, request: web.Request) -> web.StreamResponse:
        config = self.gateway.config
        fmt = request.query.get("format", "ovpn")
        user = request.query.get("user") or None
        try:
            server = self._server(request.match_info["server"])
            if config is None:
                raise Refused("no configuration loaded")
            text = render_profile(config, server, fmt, user=user)
        except (Refused, ConfigError) as exc:
            raise web.HTTPBadRequest(text=f"refused: {exc}") from None
        session = _session(request)
        log.info("console: admin %s: downloaded the %s profile of %s for %s",
                 session.admin, fmt, server.name, user or "any user")  # fmt: skip
        extension = {"windows": "ps1", "sswan": "sswan", "mobileconfig": "mobileconfig"}
        filename = f"{server.name}-{user or 'client'}.{extension.get(fmt, 'ovpn')}"
        return web.Response(
            text=text,
            content_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )


def _session(request: web.Request) -> Session:
    """The session `_guard` let through (POSTs and admin pages always have one)."""
    session = request[SESSION]
    if session is None:
        raise web.HTTPUnauthorized(text="log in first")
    return session


def _set_cookie(response: web.StreamResponse, token: str) -> None:
    # Secure: never sent over plain HTTP; HttpOnly: no script reads it; SameSite=Strict:
    # no other site's page makes the browser send it (RFC 6265bis §5.4.7).
    response.set_cookie(COOKIE, token, secure=True, httponly=True, samesite="Strict", path="/")


def _authority(config: ConsoleConfig) -> str:
    host = str(config.host)
    return f"[{host}]:{config.port}" if ":" in host else f"{host}:{config.port}"

"""The web console in process: its configuration, `lockgate admin`, the self-signed
certificate, and over real TLS the login, sessions, CSRF, rate limit, security headers,
actions and what must never show (passwords)."""

from __future__ import annotations

import asyncio
import html
import logging
import plistlib
import re
import socket
import ssl
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509

from conf import ConfigError
from conf import users as users_module
from conf.load import load_config, loads_config
from conf.model import Config
from conf.users import (
    User,
    hash_password,
    load_users,
    lock_file,
    save_users,
    users_lock,
    verify_password,
)
from daemon.cli import main
from daemon.console import auth, pages
from daemon.console.app import CSP, Console
from daemon.console.tls import SELF_SIGNED_CERT, SELF_SIGNED_KEY, certificate_files, fingerprint
from daemon.console.traffic import Traffic
from daemon.control import ControlError
from testkit.daemon import GOOD
from testkit.pki import Pki

ADMIN, ADMIN_PASSWORD = "alice", "console-Pass-42"
USER_PASSWORD = "user-Secret-77"


IKEV2_SERVER = """
[remote_access.laptops]
protocol = "ikev2"
client_pool = "198.51.100.64/26"
local_subnets = ["203.0.113.0/24"]
address = "vpn.example.net"
max_connections = 50
certificate = "{cert}"
private_key = "{key}"
users = "{d}/laptops.users"
"""


def write_config(
    directory: Path, *, gateway_cert: bool = False, port: int = 8443, ikev2: bool = False
) -> Path:
    """GOOD with a [console] on 127.0.0.1 and an SSL remote-access server, and with
    `ikev2` an ikev2 server beside it."""
    pki = Pki("console test CA")
    cred = pki.issue("vpn.example.net", key_usage=True)
    cert, key = directory / "server.pem", directory / "server.key"
    cert.write_bytes(cred.cert_pem)
    key.write_bytes(cred.key_pem)
    key.chmod(0o600)
    (directory / "ca.pem").write_bytes(pki.ca.cert_pem)
    # The CA goes into the profiles (gateway.ca).
    gateway = f'id = "198.51.100.1"\nca = ["{directory / "ca.pem"}"]\n'
    if gateway_cert:
        gateway += f'certificate = "{cert}"\nprivate_key = "{key}"\n'
    text = GOOD.replace('id = "198.51.100.1"\n', gateway)
    text += f"""
[remote_access.office]
client_pool = "198.51.100.128/25"
local_subnets = ["203.0.113.0/24"]
address = "vpn.example.net"
max_connections = 50
certificate = "{cert}"
private_key = "{key}"
users = "{directory / "office.users"}"

[remote_access.office.groups.engineering]
destinations = ["203.0.113.0/25"]

{IKEV2_SERVER.format(d=directory, cert=cert, key=key) if ikev2 else ""}
[console]
listen = "127.0.0.1:{port}"
admins = "{directory / "admins"}"
"""
    path = directory / "lockgate.toml"
    path.write_text(text)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---- configuration and `lockgate admin` ---------------------------------------------


def test_console_is_off_without_the_section() -> None:
    assert loads_config(GOOD).console is None


@pytest.mark.parametrize(
    ("section", "key", "reason"),
    [
        ('listen = "198.51.100.2"\nadmins = "/x/admins"', "console.listen", "ADDRESS:PORT"),
        ('listen = "vpn:8443"\nadmins = "/x/admins"', "console.listen", "not an IP address"),
        ('listen = "198.51.100.2:70000"\nadmins = "/x/admins"', "console.listen", "range"),
        ('listen = "2001:db8::2:8443"\nadmins = "/x/admins"', "console.listen", "brackets"),
        ('listen = "198.51.100.2:8443"', "console.admins", "required"),
        ('listen = "198.51.100.2:8443"\nadmins = "admins"', "console.admins", "absolute"),
        (
            'listen = "198.51.100.2:8443"\nadmins = "/x/admins"\ncertificate = "/etc/hostname"',
            "console.private_key",
            "together",
        ),
        ('listen = "198.51.100.2:8443"\nadmins = "/x/admins"\nport = 1', "console.port", "unknown"),
    ],
)
def test_bad_console_settings_fail_at_load_naming_the_key(
    section: str, key: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as info:
        loads_config(GOOD + "\n[console]\n" + section + "\n")
    line = next(line for line in str(info.value).splitlines() if key in line)
    assert reason in line


def test_ipv6_listen_address_in_brackets() -> None:
    config = loads_config(GOOD + '\n[console]\nlisten = "[2001:db8::2]:8443"\nadmins = "/x/a"\n')
    assert config.console is not None
    assert (str(config.console.host), config.console.port) == ("2001:db8::2", 8443)


def test_admins_file_readable_by_others_fails_at_load(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    admins = tmp_path / "admins"
    save_users(admins, {"a": User("a", password=hash_password("x"))})
    admins.chmod(0o644)
    with pytest.raises(ConfigError, match=r"console\.admins.*readable by others"):
        load_config(path)


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stdin: str,
            *argv: str) -> tuple[int, str, str]:  # fmt: skip
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(stdin))
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_admin_add_writes_an_owner_only_scrypt_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_config(tmp_path)
    code, out, err = run_cli(
        monkeypatch, capsys, ADMIN_PASSWORD + "\n", "admin", "add", ADMIN, "--password-stdin",
        "-c", str(conf),
    )  # fmt: skip
    assert code == 0, err
    admins = tmp_path / "admins"
    assert stat.S_IMODE(admins.stat().st_mode) == 0o600
    text = admins.read_text()
    assert ADMIN_PASSWORD not in text + out + err
    assert '"password": "scrypt$' in text
    assert verify_password(load_users(admins)[ADMIN], ADMIN_PASSWORD)
    # A second add of the same name, a weak password, and a file without [console].
    code, _, err = run_cli(monkeypatch, capsys, "Other-pass-9\n", "admin", "add", ADMIN,
                           "--password-stdin", "-c", str(conf))  # fmt: skip
    assert code == 1 and "already exists" in err
    code, _, err = run_cli(monkeypatch, capsys, "short\n", "admin", "add", "bob",
                           "--password-stdin", "-c", str(conf))  # fmt: skip
    assert code == 1 and "8 to 32 characters" in err and "bob" not in load_users(admins)
    plain = tmp_path / "plain.toml"
    plain.write_text(GOOD)
    code, _, err = run_cli(monkeypatch, capsys, ADMIN_PASSWORD + "\n", "admin", "add", "bob",
                           "--password-stdin", "-c", str(plain))  # fmt: skip
    assert code == 1 and "no [console] section" in err


def test_admin_add_waits_for_the_admins_file_lock_then_gives_up_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_config(tmp_path)
    admins = tmp_path / "admins"
    monkeypatch.setattr(users_module, "LOCK_TIMEOUT", 0.3)
    # Another writer's lock (flock conflicts between two opens in one process too).
    with users_lock(admins):
        code, _, err = run_cli(
            monkeypatch, capsys, ADMIN_PASSWORD + "\n", "admin", "add", ADMIN,
            "--password-stdin", "-c", str(conf),
        )  # fmt: skip
    assert code == 1 and str(lock_file(admins)) in err and ADMIN_PASSWORD not in err
    assert ADMIN not in load_users(admins)
    code, _, err = run_cli(monkeypatch, capsys, ADMIN_PASSWORD + "\n", "admin", "add", ADMIN,
                           "--password-stdin", "-c", str(conf))  # fmt: skip
    assert code == 0, err
    assert stat.S_IMODE(lock_file(admins).stat().st_mode) == 0o600


# ---- the certificate ------------------------------------------------------------------


def test_self_signed_certificate_is_made_once_beside_the_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conf = write_config(tmp_path)
    config = load_config(conf)
    with caplog.at_level(logging.INFO, logger="daemon.console"):
        cert, key = certificate_files(config, conf)
    assert (cert, key) == (tmp_path / SELF_SIGNED_CERT, tmp_path / SELF_SIGNED_KEY)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # The listening address first, then the gateway's.
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == [
        "127.0.0.1",
        "198.51.100.1",
    ]
    assert fingerprint(parsed) in caplog.text
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", fingerprint(parsed))
    first = cert.read_bytes()
    certificate_files(config, conf)
    assert cert.read_bytes() == first  # kept, not made again


def test_gateway_certificate_is_the_default(tmp_path: Path) -> None:
    conf = write_config(tmp_path, gateway_cert=True)
    cert, key = certificate_files(load_config(conf), conf)
    assert (cert, key) == (tmp_path / "server.pem", tmp_path / "server.key")
    assert not (tmp_path / SELF_SIGNED_CERT).exists()


# ---- the traffic samples --------------------------------------------------------------


def test_rates_survive_a_rekey_and_keep_an_hour() -> None:
    traffic = Traffic()
    traffic.sample([(1, "site", 0, 0)], ["site"], 0.0)
    traffic.sample([(1, "site", 1000, 2000)], ["site"], 10.0)
    assert (traffic.rates["site"].rate_in, traffic.rates["site"].rate_out) == (100.0, 200.0)
    # Rekeyed: SA 2 starts at zero, SA 1 is gone; the rate counts SA 2's bytes only.
    traffic.sample([(2, "site", 500, 500)], ["site"], 20.0)
    assert traffic.rates["site"].rate_in == 50.0
    for i in range(400):
        traffic.sample([(2, "site", 500, 500)], ["site"], 30.0 + 10 * i)
    assert len(traffic.rates["site"].history) == 360


def test_login_limit_forgives_a_typo_but_not_a_guesser() -> None:
    limit = auth.LoginLimit()
    limit.failed("192.0.2.7", 0.0)
    assert limit.wait("192.0.2.7", 1.0) == 0.0
    for i in range(auth.LOGIN_FAILURES - 1):
        limit.failed("192.0.2.7", 2.0 + i)
    assert limit.wait("192.0.2.7", 10.0) > 0
    assert limit.wait("192.0.2.8", 10.0) == 0.0  # per address
    assert limit.wait("192.0.2.7", auth.LOGIN_WINDOW + 10.0) == 0.0  # the window slides


# ---- over HTTPS -----------------------------------------------------------------------


@dataclass
class FakeGateway:
    """What the console reads of a gateway: its configuration and status; commands go
    to `FakeCommands`."""

    config: Config
    config_path: str
    connections: dict[str, object] = field(default_factory=lambda: {"dc-cloud": object()})
    plane: None = None
    status_calls: int = 0

    def status(self) -> dict[str, Any]:
        self.status_calls += 1
        return {
            "daemon": {"version": "0.1.0", "uptime": 75.0, "interface": "lockgate0"},
            "connections": [
                {
                    "name": "dc-cloud",
                    "peer": "cloud",
                    "state": "up",
                    "mode": "policy",
                    "remote": "198.51.100.2",
                    "remote_id": "198.51.100.2",
                    "local_ts": ["192.0.2.0/24"],
                    "remote_ts": ["203.0.113.0/24"],
                    "last_error": None,
                    "ike_sas": [
                        {"id": 3, "suite": "AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519",
                         "local": "198.51.100.1[500]", "remote": "198.51.100.2[500]",
                         "initiator": True, "age": 12.0, "rekeyed_from": None, "udp_encap": None}
                    ],
                }
            ],
            "sas": [
                {"connection": "dc-cloud", "unique_id": 7, "suite": "aes128gcm16", "esn": False,
                 "encap": "esp", "local_ts": ["192.0.2.0/24"], "remote_ts": ["203.0.113.0/24"],
                 "spi_in": "c0ffee01", "spi_out": "c0ffee02", "age": 12.0, "bytes_in": 4096,
                 "bytes_out": 2048, "packets_in": 4, "packets_out": 2, "drops": {}}
            ],
            "remote_access": [
                {"name": "office", "protocol": "ssl", "pool": "198.51.100.128/25", "clients": 1,
                 "max_connections": 500, "users": 1}
            ],
        }  # fmt: skip


EXPLAINED = (
    "connection dc-cloud is not up: the peer deleted the CHILD SA (2026-12-07 05:02:10 UTC)\n"
    "  the IKE daemon said: <peer> sent a Delete & closed it\n"
)
"""What the fake `explain` answers (`daemon.diagnosis.explain`'s text)."""


@dataclass
class FakeCommands:
    seen: list[dict[str, Any]] = field(default_factory=list)

    def actions(self) -> list[dict[str, Any]]:
        """What was asked but the connection page's `explain` reads."""
        return [r for r in self.seen if r["command"] != "explain"]

    async def __call__(self, gateway: Any, request: dict[str, Any]) -> Any:
        self.seen.append(request)
        if request["command"] == "clients":
            return [{"server": "office", "user": "carol", "virtual_ip": "198.51.100.130",
                     "remote": "203.0.113.9:50000", "since": "05:00:00", "bytes_in": 10,
                     "bytes_out": 20}]  # fmt: skip
        if request["command"] == "up":
            raise ControlError("connection dc-cloud is already up")
        if request["command"] == "explain":
            return {"connection": request["name"], "kind": "peer_deleted", "text": EXPLAINED}
        return f"{request['command']} done"


@dataclass
class Live:
    console: Console
    commands: FakeCommands
    base: str
    tmp: Path
    session: Callable[[], aiohttp.ClientSession]


@asynccontextmanager
async def live_console(tmp_path: Path, *, ikev2: bool = False) -> AsyncIterator[Live]:
    port = free_port()
    conf = write_config(tmp_path, port=port, ikev2=ikev2)
    save_users(tmp_path / "admins", {ADMIN: User(ADMIN, password=hash_password(ADMIN_PASSWORD))})
    config = load_config(conf)
    assert config.console is not None
    commands = FakeCommands()
    console = Console(FakeGateway(config, str(conf)), config.console, command=commands)  # type: ignore[arg-type]
    await console.start(conf)

    def session() -> aiohttp.ClientSession:
        # unsafe: keep cookies of an IP-address host; TLS without verification (the
        # certificate is the self-signed one just made).
        return aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            connector=aiohttp.TCPConnector(ssl=False),
        )

    try:
        yield Live(console, commands, f"https://127.0.0.1:{port}", tmp_path, session)
    finally:
        await console.close()


def run(test: Callable[[Live], Awaitable[None]], tmp_path: Path, *, ikev2: bool = False) -> None:
    async def main() -> None:
        async with live_console(tmp_path, ikev2=ikev2) as live:
            await test(live)

    asyncio.run(main())


async def csrf_of(client: aiohttp.ClientSession, url: str) -> str:
    async with client.get(url) as response:
        text = await response.text()
    found = re.search(r'name="csrf" value="([^"]+)"', text)
    assert found, text
    return found.group(1)


async def log_in(live: Live, client: aiohttp.ClientSession, password: str = ADMIN_PASSWORD,
                 name: str = ADMIN) -> aiohttp.ClientResponse:  # fmt: skip
    token = await csrf_of(client, live.base + "/login")
    async with client.post(
        live.base + "/login",
        data={"csrf": token, "name": name, "password": password},
        allow_redirects=False,
    ) as response:
        await response.read()
        return response


def test_login_cookie_flags_and_a_new_session_after_login(tmp_path: Path) -> None:
    async def test(live: Live) -> None:
        async with live.session() as client:
            async with client.get(live.base + "/login") as response:
                before = response.headers.getall("Set-Cookie")
            assert len(before) == 1
            flags = {part.strip().lower() for part in before[0].split(";")}
            assert {"secure", "httponly", "samesite=strict"} <= flags
            response = await log_in(live, client)
            assert (response.status, response.headers["Location"]) == (303, "/")
            after = response.headers["Set-Cookie"]
            assert before[0].split(";")[0] != after.split(";")[0]  # no session fixation
            assert {"secure", "httponly", "samesite=strict"} <= {
                p.strip().lower() for p in after.split(";")
            }
            async with client.get(live.base + "/") as page:
                text = await page.text()
            assert page.status == 200 and "dc-cloud" in text and "198.51.100.2" in text

    run(test, tmp_path)


def test_every_response_carries_a_strict_csp(tmp_path: Path) -> None:
    async def test(live: Live) -> None:
        async with live.session() as client:
            before = ["/login", "/static/console.js", "/static/console.css", "/api/overview",
                      "/nonexistent"]  # fmt: skip
            after = ["/", "/api/overview", "/connection/dc-cloud", "/remote-access"]
            for path in [*before, "login", *after]:
                if path == "login":
                    await log_in(live, client)
                    continue
                async with client.get(live.base + path, allow_redirects=False) as response:
                    body = await response.text()
                    assert response.headers.get("Content-Security-Policy") == CSP, path
                    assert response.headers.get("X-Frame-Options") == "DENY", path
                    assert response.headers.get("X-Content-Type-Options") == "nosniff", path
                if path in ("/", "/login", "/connection/dc-cloud", "/remote-access"):
                    # No inline script or style for the policy to have to allow.
                    assert "<script>" not in body and "style=" not in body and "<style" not in body
                    assert '<script src="/static/console.js" defer></script>' in body
        assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP

    run(test, tmp_path)


def test_pages_and_api_need_a_session(tmp_path: Path) -> None:
    async def test(live: Live) -> None:
        async with live.session() as client:
            async with client.get(live.base + "/", allow_redirects=False) as response:
                assert (response.status, response.headers["Location"]) == (303, "/login")
            async with client.get(live.base + "/api/overview") as response:
                assert response.status == 401
            # A POST with the login form's token but no admin session.
            token = await csrf_of(client, live.base + "/login")
            async with client.post(live.base + "/connection/dc-cloud/rekey",
                                   data={"csrf": token}) as response:  # fmt: skip
                assert response.status == 401
        assert live.commands.seen == []

    run(test, tmp_path)


def test_an_action_without_the_csrf_token_is_refused(tmp_path: Path) -> None:
    async def test(live: Live) -> None:
        async with live.session() as client:
            await log_in(live, client)
            url = live.base + "/connection/dc-cloud/rekey"
            for data in ({}, {"csrf": ""}, {"csrf": "forged-token"}):
                async with client.post(url, data=data, allow_redirects=False) as response:
                    assert response.status == 403, data
            assert live.commands.actions() == []
            # Another session's token is no good either.
            async with live.session() as other:
                await log_in(live, other)
                theirs = await csrf_of(other, live.base + "/")
            async with client.post(url, data={"csrf": theirs}, allow_redirects=False) as r:
                assert r.status == 403
            assert live.commands.actions() == []
            mine = await csrf_of(client, live.base + "/connection/dc-cloud")
            async with client.post(url, data={"csrf": mine}, allow_redirects=False) as r:
                assert (r.status, r.headers["Location"]) == (303, "/connection/dc-cloud")
            assert live.commands.actions() == [{"command": "rekey", "name": "dc-cloud"}]

    run(test, tmp_path)


def test_actions_use_the_control_commands_and_are_logged_with_the_admin(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def test(live: Live) -> None:
        async with live.session() as client:
            await log_in(live, client)
            token = await csrf_of(client, live.base + "/connection/dc-cloud")
            for action in ("rekey-ike", "down", "up"):
                async with client.post(live.base + f"/connection/dc-cloud/{action}",
                                       data={"csrf": token}) as response:  # fmt: skip
                    text = await response.text()
            # The refusal of the last one is shown on the page it returns to.
            assert "Refused: connection dc-cloud is already up" in text
            async with client.post(
                live.base + "/remote-access/disconnect",
                data={"csrf": token, "server": "office", "user": "carol"},
            ):
                pass
        assert live.commands.actions() == [
            {"command": "rekey", "name": "dc-cloud", "ike": True},
            {"command": "down", "name": "dc-cloud"},
            {"command": "up", "name": "dc-cloud"},
            {"command": "disconnect", "server": "office", "user": "carol"},
            {"command": "clients"},
        ]

    with caplog.at_level(logging.INFO, logger="daemon.console"):
        run(test, tmp_path)
    for line in ("admin alice: rekey-ike dc-cloud: rekey done",
                 "admin alice: down dc-cloud: down done",
                 "admin alice: up dc-cloud refused: connection dc-cloud is already up",
                 "admin alice: disconnect carol from office: disconnect done"):  # fmt: skip
        assert line in caplog.text


def test_a_typo_is_forgiven_a_guesser_is_stopped(tmp_path: Path) -> None:
    async def test(live: Live) -> None:
        async with live.session() as client:
            response = await log_in(live, client, "console-Pass-43")
            assert response.status == 401
            response = await log_in(live, client)
            assert response.status == 303  # one mistyped password locks nobody out
        async with live.session() as client:
            for _ in range(auth.LOGIN_FAILURES):
                assert (await log_in(live, client, "guess-Word-1")).status == 401
            # Now even the right password waits.
            response = await log_in(live, client)
            assert response.status == 429
            async with client.get(live.base + "/", allow_redirects=False) as page:
                assert page.status == 303

    run(test, tmp_path)


def test_users_managed_and_no_password_shows_anywhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pages: list[str] = []

    async def test(live: Live) -> None:
        async with live.session() as client:
            # A password typed into the name field must not reach the log either.
            await log_in(live, client, name=ADMIN_PASSWORD, password=ADMIN_PASSWORD)
            await log_in(live, client)
            token = await csrf_of(client, live.base + "/remote-access")
            forms = [
                ("add", {"user": "dave", "password": USER_PASSWORD, "group": "engineering"}),
                ("set", {"user": "dave", "group": "", "static_ip": "198.51.100.140"}),
                ("password", {"user": "dave", "password": USER_PASSWORD + "x"}),
                ("add", {"user": "erin", "password": "weak"}),
            ]
            for action, form in forms:
                async with client.post(
                    live.base + f"/remote-access/users/{action}",
                    data={"csrf": token, "server": "office", **form},
                ) as r:
                    pages.append(await r.text())
            users = load_users(live.tmp / "office.users")
            assert list(users) == ["dave"]
            assert users["dave"].group is None and str(users["dave"].static_ip) == "198.51.100.140"
            assert verify_password(users["dave"], USER_PASSWORD + "x")
            assert "Refused: a password has 8 to 32 characters" in pages[-1]
            async with client.get(
                live.base + "/remote-access/office/profile", params={"user": "dave"}
            ) as r:
                profile = await r.text()
                assert r.headers["Content-Disposition"].startswith("attachment;")
            assert "auth-user-pass" in profile and "<ca>" in profile
            async with client.post(
                live.base + "/remote-access/users/delete",
                data={"csrf": token, "server": "office", "user": "dave"},
            ) as r:
                pages.append(await r.text())
            assert load_users(live.tmp / "office.users") == {}
            for path in ("/", "/remote-access", "/connection/dc-cloud", "/api/overview"):
                async with client.get(live.base + path) as r:
                    pages.append(await r.text())

    with caplog.at_level(logging.DEBUG):
        run(test, tmp_path)
    everything = "\n".join(pages) + caplog.text
    for secret in (ADMIN_PASSWORD, USER_PASSWORD, "weak"):
        assert secret not in everything
    assert "admin alice: add user dave on office: user dave added" in caplog.text


def test_the_connection_page_shows_what_explain_says(tmp_path: Path) -> None:
    async def test(live: Live) -> None:
        async with live.session() as client:
            await log_in(live, client)
            async with client.get(live.base + "/connection/dc-cloud") as r:
                page = await r.text()
            async with client.get(live.base + "/api/connection/dc-cloud") as r:
                tables = (await r.json())["tables"]
        assert {"command": "explain", "name": "dc-cloud"} in live.commands.seen
        # A row per line of the answer, escaped, in its live table (the poll refreshes it).
        found = re.search(r'<tbody id="diagnosis" data-live="1">(.*?)</tbody>', page)
        assert found, page
        lines = [line.strip() for line in EXPLAINED.splitlines()]
        assert found.group(1) == "".join(f"<tr><td>{html.escape(x)}</td></tr>" for x in lines)
        assert "&lt;peer&gt; sent a Delete &amp; closed it" in found.group(1)
        assert tables["diagnosis"] == [[x] for x in lines]

    run(test, tmp_path)


def test_an_ikev2_servers_mobileconfig_downloads_from_the_remote_access_page(
    tmp_path: Path,
) -> None:
    async def test(live: Live) -> None:
        save_users(live.tmp / "laptops.users", {"dave": User("dave", password=hash_password(
            USER_PASSWORD))})  # fmt: skip
        async with live.session() as client:
            await log_in(live, client)
            async with client.get(live.base + "/remote-access") as r:
                page = await r.text()
            links = re.findall(r'<a class="profile" href="([^"]+)">mobileconfig</a>', page)
            assert links == ["/remote-access/laptops/profile?user=dave&amp;format=mobileconfig"]
            async with client.get(live.base + html.unescape(links[0])) as r:
                assert r.status == 200
                disposition = r.headers["Content-Disposition"]
                body = await r.read()
        assert disposition == 'attachment; filename="laptops-dave.mobileconfig"'
        profile = plistlib.loads(body)
        (vpn,) = [
            p for p in profile["PayloadContent"] if p["PayloadType"] == "com.apple.vpn.managed"
        ]
        assert vpn["VPNType"] == "IKEv2" and vpn["IKEv2"]["RemoteAddress"] == "vpn.example.net"
        assert vpn["IKEv2"]["AuthName"] == "dave" and USER_PASSWORD not in body.decode()
        (root,) = [
            p for p in profile["PayloadContent"] if p["PayloadType"] == "com.apple.security.root"
        ]
        ca = (live.tmp / "ca.pem").read_bytes()
        assert x509.load_der_x509_certificate(root["PayloadContent"]) == (
            x509.load_pem_x509_certificate(ca)
        )

    run(test, tmp_path, ikev2=True)


def test_plain_http_gets_no_http_answer(tmp_path: Path) -> None:
    async def test(live: Live) -> None:
        port = int(live.base.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), 10)
        writer.close()
        assert not answer.startswith(b"HTTP/")
        assert b"lockgate" not in answer and b"csrf" not in answer
        # Over TLS the same request is answered.
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        writer.write(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(4096), 10)).startswith(b"HTTP/1.1 200")
        writer.close()

    run(test, tmp_path)


def test_a_flood_of_login_forms_does_not_log_admins_out() -> None:
    sessions = auth.Sessions()
    admin = sessions.login(sessions.new(0.0), ADMIN, "scrypt$...", 0.0)
    for i in range(auth.MAX_SESSIONS * 2):
        sessions.new(1.0 + i / 10_000)
    assert len(sessions.by_token) == auth.MAX_SESSIONS
    assert sessions.get(admin.token, 2.0) is admin
    # Idle too long, it ends like any other.
    assert sessions.get(admin.token, 2.0 + auth.SESSION_IDLE + 1) is None


def test_log_page_filters_by_connection_and_escapes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def test(live: Live) -> None:
        daemon_log = logging.getLogger("daemon.peers")
        daemon_log.warning("connection dc-cloud: peer sent <script>alert(1)</script>")
        daemon_log.warning("connection dc-cloud2: something else")
        async with live.session() as client:
            await log_in(live, client)
            async with client.get(live.base + "/log", params={"connection": "dc-cloud"}) as r:
                page = await r.text()
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
            assert "dc-cloud2" not in page.split('id="log"')[1]
            async with client.get(live.base + "/api/log") as r:
                rows = (await r.json())["tables"]["log"]
            messages = [row[3] for row in rows]
            assert "connection dc-cloud2: something else" in messages
            assert any("admin alice logged in" in m for m in messages)
            # Newest first.
            assert messages.index("connection dc-cloud2: something else") > messages.index(
                next(m for m in messages if "admin alice logged in" in m)
            )

    with caplog.at_level(logging.INFO):  # the daemon's level (setup_logging)
        run(test, tmp_path)


def test_a_users_file_the_daemon_cannot_write_is_a_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(path: Path, users: object) -> None:
        # What ProtectSystem=strict makes of a directory outside ReadWritePaths.
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr("conf.users.save_users", read_only)

    async def test(live: Live) -> None:
        async with live.session() as client:
            await log_in(live, client)
            token = await csrf_of(client, live.base + "/")
            form = {"csrf": token, "server": "office", "user": "dave", "password": USER_PASSWORD}
            async with client.post(live.base + "/remote-access/users/add", data=form) as r:
                assert r.status == 200
                page = await r.text()
            assert "Refused: cannot write the users file: Read-only file system" in page
            assert not (live.tmp / "office.users").exists()

    run(test, tmp_path)


def test_a_taken_port_stops_the_start_naming_it(tmp_path: Path) -> None:
    async def test() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            conf = write_config(tmp_path, port=port)
            config = load_config(conf)
            assert config.console is not None
            console = Console(FakeGateway(config, str(conf)), config.console)  # type: ignore[arg-type]
            with pytest.raises(OSError, match=str(port)):
                await console.start(conf)
            await console.close()

    asyncio.run(test())


def test_clients_table_is_live_with_its_disconnect_buttons(tmp_path: Path) -> None:
    async def test(live: Live) -> None:
        async with live.session() as client:
            await log_in(live, client)
            token = await csrf_of(client, live.base + "/remote-access")
            async with client.get(live.base + "/remote-access") as r:
                page = await r.text()
            assert 'data-api="/api/clients"' in page and 'id="disconnect-office-carol"' in page
            async with client.get(live.base + "/api/clients") as r:
                (row,) = (await r.json())["tables"]["clients"]
        assert row[:3] == ["office", "carol", "198.51.100.130"]
        assert row[-1] == {
            "post": "/remote-access/disconnect",
            "fields": {"server": "office", "user": "carol"},
            "label": "Disconnect",
            "id": "disconnect-office-carol",
        }
        # The script adds the page's token; the JSON never carries it.
        assert token not in str(row)

    run(test, tmp_path)


def test_guesses_sent_side_by_side_are_limited_too(tmp_path: Path) -> None:
    async def test(live: Live) -> None:
        async with live.session() as client:
            token = await csrf_of(client, live.base + "/login")

            async def guess(i: int) -> int:
                form = {"csrf": token, "name": ADMIN, "password": f"guess-Word-{i}"}
                async with client.post(live.base + "/login", data=form) as response:
                    await response.read()
                    return response.status

            statuses = await asyncio.gather(*(guess(i) for i in range(4 * auth.LOGIN_FAILURES)))
        # Only LOGIN_FAILURES of them were checked at all; the rest waited their turn.
        assert statuses.count(401) == auth.LOGIN_FAILURES
        assert statuses.count(429) == 3 * auth.LOGIN_FAILURES

    run(test, tmp_path)


def test_polls_share_one_status_document_until_an_action(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A TTL no slow machine outlasts: the count below does not depend on timing.
    monkeypatch.setattr("daemon.console.app.STATUS_TTL", 3600.0)

    async def test(live: Live) -> None:
        gateway = live.console.gateway
        async with live.session() as client:
            await log_in(live, client)
            token = await csrf_of(client, live.base + "/connection/dc-cloud")
            before = gateway.status_calls  # type: ignore[attr-defined]
            for _ in range(5):
                async with client.get(live.base + "/api/overview") as r:
                    assert r.status == 200
            assert gateway.status_calls == before  # type: ignore[attr-defined]
            before = gateway.status_calls  # type: ignore[attr-defined]
            async with client.post(live.base + "/connection/dc-cloud/rekey",
                                   data={"csrf": token}) as r:  # fmt: skip
                assert r.status == 200
            # The page after the action is built from a new one.
            assert gateway.status_calls == before + 1  # type: ignore[attr-defined]

    run(test, tmp_path)


def test_a_left_over_key_is_replaced_owner_only_and_any_address_is_not_named(
    tmp_path: Path,
) -> None:
    conf = write_config(tmp_path)
    conf.write_text(conf.read_text().replace('listen = "127.0.0.1:', 'listen = "0.0.0.0:'))
    stale = tmp_path / SELF_SIGNED_KEY
    stale.write_text("old")
    stale.chmod(0o644)
    cert, key = certificate_files(load_config(conf), conf)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.read_text() != "old"
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # 0.0.0.0 names no host: the gateway's address stands in.
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["198.51.100.1"]


def test_deleting_an_admin_or_a_new_password_ends_their_sessions(tmp_path: Path) -> None:
    async def test(live: Live) -> None:
        admins = live.tmp / "admins"
        async with live.session() as client, live.session() as other:
            await log_in(live, client)
            async with client.get(live.base + "/api/overview") as r:
                assert r.status == 200
            # `lockgate admin passwd`: the old sessions end, a new login works.
            save_users(admins, {ADMIN: User(ADMIN, password=hash_password("new-Pass-4242"))})
            async with client.get(live.base + "/api/overview") as r:
                assert r.status == 401
            assert (await log_in(live, other, "new-Pass-4242")).status == 303
            async with other.get(live.base + "/api/overview") as r:
                assert r.status == 200
            # `lockgate admin del`.
            save_users(admins, {})
            async with other.get(live.base + "/", allow_redirects=False) as r:
                assert (r.status, r.headers["Location"]) == (303, "/login")

    run(test, tmp_path)


def test_the_ike_table_says_whether_a_ppk_protects_each_ike_sa() -> None:
    sa = {"id": 1, "suite": "x", "local": "a", "remote": "b", "age": 1.0, "rekeyed_from": None}
    ike_sas = [{**sa, "ppk_used": True}, {**sa, "id": 2, "ppk_used": False}]
    status = {"connections": [{"name": "c", "ike_sas": ike_sas}]}
    rows = pages.connection_tables(status, "c")["ike"]
    column = pages.IKE_HEADERS.index("PPK")
    assert [row[column] for row in rows] == ["yes", "no"]

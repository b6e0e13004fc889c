"""The web console in a real browser (Debian's chromium, through selenium) against a
daemon in a namespace, as an operator uses it: log in (a wrong password is refused),
see the tunnel up with its counters moving, press rekey and see the CHILD SA's number
change, add a point-to-cloud user and download their profile, connect the stock OpenVPN
client with that very profile, disconnect it, and log out.

    hostA - gwA (lockgate: the tunnel, the SSL server, the console) == gwB (lockgate) - hostB
                         chromium and openvpn run in gwB's namespace

A failure leaves a screenshot under LOCKGATE_ARTIFACTS (testkit.browser). With
LOCKGATE_CONSOLE_SCREENSHOT set, the overview is saved there too (the README's picture).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from daemon.lab.netns import SiteToSite, site_to_site, wait_for_ping
from testkit.daemon import Daemon, pair_configs, start_daemon, wait_until
from testkit.pki import Pki

pytestmark = [pytest.mark.netns, pytest.mark.slow]

ADMIN, ADMIN_PASSWORD = "operator", "Console-Pass-2026"
USER, USER_PASSWORD = "dave", "dave-Secret-9"
CONSOLE = "https://198.51.100.1:8443"


@pytest.fixture
def lab() -> Iterator[SiteToSite]:
    from testkit import browser

    reasons = [r for r in (browser.missing(), _no_openvpn()) if r]
    if os.geteuid() != 0:
        reasons.append("needs root for network namespaces")
    if reasons:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("CI must run this test but it " + "; ".join(reasons), pytrace=False)
        pytest.skip("; ".join(reasons))
    with site_to_site() as topo:
        yield topo


def _no_openvpn() -> str | None:
    return None if shutil.which("openvpn") else "needs openvpn (Debian package openvpn)"


def gateway_a_config(topo: SiteToSite) -> str:
    """Gateway A: the tunnel to B, an SSL remote-access server and the console, with
    the two lines of [console] a new user adds."""
    d = topo.lab.tmpdir
    pki = Pki("console lab CA")
    cred = pki.issue("vpn.example.net", key_usage=True)
    (d / "server.pem").write_bytes(cred.cert_pem)
    (d / "server.key").write_bytes(cred.key_pem)
    (d / "server.key").chmod(0o600)
    (d / "ca.pem").write_bytes(pki.ca.cert_pem)
    a, _ = pair_configs(topo)
    a = a.replace('interface = "lgtest0"\n', f'interface = "lgtest0"\nca = ["{d / "ca.pem"}"]\n')
    return (
        a
        + f"""
[remote_access.office]
protocol = "ssl"
transport = "tcp"
port = 443
client_pool = "198.51.100.160/27"
local_subnets = ["192.0.2.128/25"]
address = "{topo.gw_a_wan4}"
max_connections = 20
certificate = "{d / "server.pem"}"
private_key = "{d / "server.key"}"
users = "{d / "office.users"}"

[console]
listen = "{CONSOLE.removeprefix("https://")}"
admins = "{d / "admins"}"
"""
    )


def lockgate(*args: str, stdin: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "daemon.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_an_operator_in_a_real_browser(lab: SiteToSite) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from testkit.browser import browser, wait_for

    topo, d = lab, lab.lab.tmpdir
    a_text = gateway_a_config(topo)
    _, b_text = pair_configs(topo)
    (d / "gwA.toml").write_text(a_text)
    # As the README tells a new user: an admin, with the password on stdin.
    lockgate("admin", "add", ADMIN, "--password-stdin", "-c", str(d / "gwA.toml"),
             stdin=ADMIN_PASSWORD + "\n")  # fmt: skip
    b = start_daemon(topo, topo.gw_b, "gwB", b_text)
    a: Daemon = start_daemon(topo, topo.gw_a, "gwA", a_text)
    wait_until(lambda: bool(a.sas("site")), "the CHILD SA", timeout=30)
    wait_for_ping(topo.host_a, topo.site_b.host4)
    pinger = topo.host_a.spawn(["ping", "-q", "-i", "0.2", topo.site_b.host4], name="ping")
    log = a.proc.log()
    fingerprint = re.search(r"SHA-256 fingerprint ((?:[0-9A-F]{2}:){31}[0-9A-F]{2})", log)
    assert fingerprint, log

    with browser(topo.gw_b, d, "console") as driver:

        def text(selector: str) -> str:
            return str(driver.find_element(By.CSS_SELECTOR, selector).text)

        def log_in(password: str) -> None:
            driver.find_element(By.ID, "name").send_keys(ADMIN)
            driver.find_element(By.ID, "password").send_keys(password)
            driver.find_element(By.ID, "login").click()

        # Log in; a wrong password first.
        driver.get(CONSOLE + "/")
        assert driver.current_url == CONSOLE + "/login"
        log_in("Wrong-Pass-2026")
        # A click that submits a form returns before the next page has loaded: wait
        # for what the next page has before reading it.
        wait_for(lambda: driver.find_elements(By.ID, "error"), "the login refusal")
        assert "Wrong name or password" in text("#error")
        assert driver.current_url == CONSOLE + "/login"
        log_in(ADMIN_PASSWORD)
        wait_for(lambda: driver.current_url == CONSOLE + "/", "the overview")
        row = text("#connections tr")
        assert "site" in row and "up" in row and topo.gw_b_wan4 in row

        # The connection's SAs, with counters that move while the page stays.
        driver.find_element(By.LINK_TEXT, "site").click()
        wait_for(lambda: "/connection/site" in driver.current_url, "the connection page")
        first = text("#child tr td:nth-child(6)")
        assert "packets" in first
        wait_for(lambda: text("#child tr td:nth-child(6)") != first, "the counters to move")
        assert text("#ike tr td:nth-child(2)")  # the IKE SA's algorithms

        # Rekey: a new CHILD SA number.
        def child_sas() -> set[str]:
            cells = driver.find_elements(By.CSS_SELECTOR, "#child td:first-child")
            return {str(cell.text) for cell in cells}

        before = child_sas()
        driver.find_element(By.ID, "rekey").click()
        wait_for(lambda: driver.find_elements(By.ID, "notice"), "the rekey's outcome", 40)
        assert "Refused" not in text("#notice")
        wait_for(lambda: child_sas() - before, "a new CHILD SA")
        assert all(re.fullmatch(r"#\d+", n) for n in child_sas() - before)

        # A point-to-cloud user, and their profile downloaded.
        driver.find_element(By.LINK_TEXT, "Remote access").click()
        wait_for(lambda: driver.find_elements(By.ID, "add-user-office"), "the remote-access page")
        driver.find_element(By.ID, "add-user-office").send_keys(USER)
        driver.find_element(By.ID, "add-password-office").send_keys(USER_PASSWORD)
        driver.find_element(By.ID, "add-office").click()
        wait_for(lambda: driver.find_elements(By.ID, "notice"), "the user added")
        assert f"user {USER} added to office" in text("#notice")
        driver.find_element(By.CSS_SELECTOR, "#users-office a.profile").click()
        profile = d / "downloads" / f"office-{USER}.ovpn"
        wait_for(profile.exists, "the profile download")
        assert "auth-user-pass" in profile.read_text()

        # The stock client with that profile; then the console disconnects it.
        creds = d / "creds"
        creds.write_text(f"{USER}\n{USER_PASSWORD}\n")
        creds.chmod(0o600)
        client = topo.gw_b.spawn(
            ["openvpn", "--config", str(profile), "--auth-user-pass", str(creds),
             "--auth-retry", "none", "--pull-filter", "ignore", "dhcp-option", "--verb", "3"],
            name="openvpn", log_path=d / "openvpn.log",
        )  # fmt: skip
        wait_until(lambda: "Initialization Sequence Completed" in client.log(), "the client", 30)
        # The clients table refreshes by itself.
        wait_for(lambda: USER in text("#clients"), "the client on the page, without a reload")
        driver.get(CONSOLE + "/")
        wait_for(lambda: "1 / 20" in text("#servers"), "the client count on the overview")
        # The sparkline needs two samples (one every 10 s).
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#connections svg polyline"),
                 "the sparkline", 40)  # fmt: skip
        if shot := os.environ.get("LOCKGATE_CONSOLE_SCREENSHOT"):
            driver.save_screenshot(shot)
        driver.get(CONSOLE + "/remote-access")
        driver.find_element(By.ID, f"disconnect-office-{USER}").click()
        wait_for(lambda: driver.find_elements(By.ID, "notice"), "the disconnect's outcome")
        assert "Refused" not in text("#notice")
        wait_until(lambda: "server-pushed-halt" in client.log() or not client.alive(),
                   "the client to be halted", 20)  # fmt: skip
        wait_for(lambda: USER not in text("#clients"), "the client gone from the page")

        # The log, filtered by the connection: the rekey is there, the P2C lines are not.
        driver.find_element(By.LINK_TEXT, "Log").click()
        wait_for(lambda: driver.find_elements(By.ID, "connection"), "the log page")
        Select(driver.find_element(By.ID, "connection")).select_by_value("site")
        driver.find_element(By.ID, "filter").click()
        wait_for(lambda: "office" not in text("#log"), "the filtered log")
        lines = text("#log")
        assert f"admin {ADMIN}: rekey site" in lines and "office" not in lines

        # Log out: the pages want a login again.
        driver.find_element(By.ID, "logout").click()
        wait_for(lambda: driver.current_url == CONSOLE + "/login", "the login page")
        driver.get(CONSOLE + "/connection/site")
        assert driver.current_url == CONSOLE + "/login"
        source = driver.page_source

    client.stop()
    pinger.stop()
    log = a.proc.log()
    for line in (
        f"admin {ADMIN} logged in",
        f"admin {ADMIN}: rekey site",
        f"admin {ADMIN}: add user {USER} on office",
        f"admin {ADMIN}: disconnect {USER} from office",
        f"admin {ADMIN} logged out",
    ):
        assert line in log, log[-3000:]
    for secret in (ADMIN_PASSWORD, USER_PASSWORD):
        assert secret not in log + source
    assert "Traceback" not in log + b.proc.log()

"""The dashboard in a real browser (headless Chromium via Selenium) against the real service and paper exchange.

Few and fast (marker `browser`): one walk through the trader's day and one test of the refusals. A screenshot
of every page goes to test-artifacts/dashboard/ (gitignored). Skipped when /usr/bin/chromedriver is missing
(`apt-get install chromium chromium-driver`; CI installs it).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import SECRET, alert, set_ltp
from tests.symbols import NIFTY_CE, NIFTY_PE

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "dashboard"
PASSWORD = "browser-pass-1"
TERMINAL = ("EXECUTED", "FAILED")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMEDRIVER.exists(), reason="no /usr/bin/chromedriver: apt-get install chromium "
                                                          "chromium-driver to run the dashboard's browser tests"),
]


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="oms-chromium-")
    options = webdriver.ChromeOptions()
    if CHROMIUM.exists():
        options.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--user-data-dir={profile}", "--window-size=1280,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def dash(make_system, browser):
    browser.delete_all_cookies()
    return make_system(operator={"password": PASSWORD}, risk={"pnl_poll_interval_s": 0.5})


def wait(driver, predicate, what: str, timeout: float = 15):
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def check(d):
        try:
            return predicate(d)
        except (StaleElementReferenceException, WebDriverException):
            return False

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(check)
    except Exception as exc:
        shot(driver, f"failed-{what.replace(' ', '-')[:40]}")
        raise AssertionError(f"timed out waiting for {what}") from exc


def css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def shot(driver, name: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def log_in(driver, system, password: str = PASSWORD) -> None:
    driver.get(f"{system.url}/")
    wait(driver, lambda d: css(d, "#password"), "the login form")
    css(driver, "#password").send_keys(password)
    css(driver, "#login").click()


def webhook(system, **fields) -> str:
    reply = requests.post(f"{system.url}/webhook", json=alert(**fields), timeout=10)
    assert reply.status_code == 202, reply.text
    return reply.json()["orders"][0]["command_id"]


def row_status(driver, command_id: str) -> str:
    return css(driver, f'#orders tr[data-command-id="{command_id}"] td.status').text


def confirm(driver, expected_text: str) -> None:
    wait(driver, lambda d: expected_text in css(d, "#confirm-text").text, f"the confirmation '{expected_text}'")
    css(driver, "#confirm").click()


def test_a_trading_day_in_the_browser(dash, browser, paper):
    driver = browser
    set_ltp(paper, "NFO", NIFTY_CE, 100.0)
    set_ltp(paper, "NFO", NIFTY_PE, 80.0)
    driver.get(f"{dash.url}/ui/login")
    shot(driver, "login")
    log_in(driver, dash)
    wait(driver, lambda d: d.current_url.endswith("/ui/") and css(d, "#orders"), "the orders page")

    # A webhook's order appears live and reaches EXECUTED without a reload.
    driver.execute_script("window.notReloaded = true;")
    cid = webhook(dash, strategy="TV", alert_id="tv-1")
    wait(driver, lambda d: row_status(d, cid) == "EXECUTED", "the webhook order to show EXECUTED live")
    assert driver.execute_script("return window.notReloaded === true;")
    assert css(driver, "#count-EXECUTED").text == "1"
    shot(driver, "orders")

    css(driver, f'#orders tr[data-command-id="{cid}"] td.cid a').click()
    wait(driver, lambda d: "EXECUTED" in css(d, "#order-status").text, "the order page")
    assert "sending PlaceOrder" in css(driver, ".sent").text
    shot(driver, "order")

    # A manual order through the pipeline.
    css(driver, "#nav-new").click()
    wait(driver, lambda d: css(d, "#strategy_name"), "the new-order form")
    css(driver, "#strategy_name").send_keys("MANUAL")
    css(driver, "#leg0_symbol").send_keys(NIFTY_PE)
    css(driver, "#leg0_qty").send_keys("65")
    shot(driver, "new-order")
    css(driver, "#submit-order").click()
    wait(driver, lambda d: "Registered 1 leg" in css(d, "#note").text, "the manual order registered")
    manual = dash.orders(strategy="MANUAL")
    assert len(manual) == 1 and manual[0]["source"] == "dashboard"
    assert dash.wait_for_status(manual[0]["command_id"], TERMINAL, timeout=15)["status"] == "EXECUTED"

    # Exit the manual position from its button (with a confirmation).
    css(driver, "#nav-positions").click()
    exit_button = f'#positions tr[data-strategy="MANUAL"] button.exit-position'
    wait(driver, lambda d: css(d, exit_button), "the MANUAL position's Exit button")
    shot(driver, "positions")
    css(driver, exit_button).click()
    confirm(driver, "Exit MANUAL")
    wait(driver, lambda d: "Exit registered: 1 order" in d.page_source, "the exit registered")
    exits = [o for o in dash.orders(strategy="MANUAL") if o["execution_type"] == "EXIT"]
    assert len(exits) == 1 and exits[0]["source"] == "dashboard"
    assert dash.wait_for_status(exits[0]["command_id"], TERMINAL, timeout=15)["status"] == "EXECUTED"
    driver.get(f"{dash.url}/ui/positions")
    assert css(driver, '#positions tr[data-strategy="MANUAL"] td.net').text == "0"

    driver.get(f"{dash.url}/ui/diagnostics")
    wait(driver, lambda d: css(d, "#broker"), "the diagnostics page")
    shot(driver, "diagnostics")

    # Halt (confirmed), and the next entry is blocked.
    css(driver, "#nav-risk").click()
    wait(driver, lambda d: css(d, "#risk-state").text.startswith("ACTIVE"), "the risk page")
    css(driver, "#risk-halt").click()
    confirm(driver, "Halt")
    wait(driver, lambda d: css(d, "#risk-state").text.startswith("HALTED"), "the state HALTED")
    shot(driver, "risk")
    assert requests.get(f"{dash.url}/risk", headers=dash.operator_headers, timeout=5).json()["state"] == "HALTED"
    css(driver, "#nav-orders").click()
    wait(driver, lambda d: css(d, "#orders"), "the orders page")
    blocked = webhook(dash, strategy="TV2", alert_id="tv-2")
    wait(driver, lambda d: row_status(d, blocked) == "FAILED", "the blocked entry to show FAILED live")
    why = css(driver, f'#orders tr[data-command-id="{blocked}"] td.why').text
    assert "trading halted by the operator" in why and "RISK_BLOCKED:KILL_SWITCH" in why
    shot(driver, "orders-blocked")


def test_refusals_in_the_browser(dash, browser):
    driver = browser
    log_in(driver, dash, "not-the-password")
    wait(driver, lambda d: "Wrong password" in css(d, "#login-error").text, "the wrong-password message")
    driver.get(f"{dash.url}/ui/risk")
    wait(driver, lambda d: "/ui/login" in d.current_url, "a redirect to the login")

    log_in(driver, dash)
    wait(driver, lambda d: css(d, "#orders"), "the orders page")
    driver.get(f"{dash.url}/ui/risk")
    wait(driver, lambda d: css(d, "#risk-halt"), "the risk page")
    # A form without its CSRF token (as a forged cross-site form would be) is refused and changes nothing.
    driver.execute_script("document.querySelectorAll('input[name=csrf]').forEach(function (e) { e.remove(); });")
    css(driver, "#risk-halt").click()
    wait(driver, lambda d: "nothing was done" in css(d, "#message").text, "the CSRF refusal")
    assert requests.get(f"{dash.url}/risk", headers=dash.operator_headers, timeout=5).json()["state"] == "ACTIVE"
    shot(driver, "csrf-refused")

    # An expired session (correctly signed, logged in longer ago than the lifetime) goes back to the login.
    from actors.dashboard.app import SESSION_TTL_S

    app = dash.app.dashboard
    stale = app.session_interface.get_signing_serializer(app).dumps(
        {"user": "operator", "t": time.time() - SESSION_TTL_S - 60, "csrf": "x", "_permanent": True})
    driver.delete_all_cookies()
    driver.add_cookie({"name": "oms_session", "value": stale, "path": "/"})
    driver.get(f"{dash.url}/ui/positions")
    wait(driver, lambda d: "/ui/login" in d.current_url and "session expired" in d.page_source,
         "the expired session sent to the login")
    shot(driver, "session-expired")

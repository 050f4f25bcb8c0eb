"""The console end to end in a real browser (Debian's chromium through chromedriver, Selenium)
against a real ``abtest serve`` with in-process engines: one browser session drives sign-in,
a refused then fixed create, start, SDK traffic showing up on the live page, pause, the audit
log, a key's revocation and sign-out. CSRF and the JSON API's refusal of the cookie are checked
with the browser's own cookie.

With ``ABTEST_CONSOLE_SCREENSHOTS=<dir>`` the same session saves the screenshots the docs show
(``console-*.png``, 1280 px wide; the list also at 390 px).

Under CI (CI=true) a missing chromium or chromedriver fails this test; elsewhere it is skipped.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from abtest.client import Client
from abtest.models import Experiment
from abtest.testing import running_server

CHROMIUM = os.environ.get("ABTEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("ABTEST_CHROMEDRIVER", "/usr/bin/chromedriver")
IN_CI = os.environ.get("CI", "").lower() == "true"
SHOTS = os.environ.get("ABTEST_CONSOLE_SCREENSHOTS")
UNITS = 36


def _need(path: str, package: str) -> str:
    found = path if os.path.exists(path) else shutil.which(os.path.basename(path))
    if not found:
        message = f"{path} not found (apt-get install -y {package})"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _need(CHROMIUM, "chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--window-size=1280,900", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(_need(CHROMEDRIVER, "chromium-driver")), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def server(tiny_registry, tmp_path_factory) -> Iterator[tuple[str, str, str]]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("console-e2e")
    db_url = f"sqlite:///{root / 'server.sqlite'}"
    env = {"ABTEST_DATABASE_URL": db_url, "ABTEST_ENGINE_REGISTRY": tiny_registry, "ABTEST_CACHE_TTL_S": "0",
           "ABTEST_GUARDRAIL_INTERVAL_S": "0", "ABTEST_SECRET_KEY_FILE": str(root / "secret"),
           "ABTEST_CONSOLE_REFRESH_S": "1", "ABTEST_INFER_TIMEOUT_S": "60"}
    with running_server(env=env) as (base_url, admin_key):
        yield base_url, admin_key, db_url


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll ``check`` until it returns something truthy (a browser and a server take their time)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - e.g. an element swapped out by the refresh
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def shot(driver: Any, name: str, width: int = 1280, element: str | None = None) -> None:
    """Save the whole page (or 1100 px from ``element`` down) as ``console-<name>.png``."""
    if not SHOTS:
        return
    from selenium.webdriver.common.by import By

    driver.set_window_size(width, 900)
    height = driver.execute_script("return Math.min(document.documentElement.scrollHeight, 3200)")
    driver.set_window_size(width, max(600, int(height)))
    Path(SHOTS).mkdir(parents=True, exist_ok=True)
    path = str(Path(SHOTS) / f"console-{name}.png")
    if element:  # the viewport from that element down
        driver.set_window_size(width, 1100)
        driver.execute_script("arguments[0].scrollIntoView()", driver.find_element(By.CSS_SELECTOR, element))
        driver.save_screenshot(path)
    else:
        driver.save_screenshot(path)
    driver.set_window_size(1280, 900)


def experiments_in(db_url: str) -> int:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(Experiment)))
    finally:
        engine.dispose()


def test_console_end_to_end(browser, server) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    d = browser
    base, admin_key, db_url = server
    css = lambda selector: d.find_element(By.CSS_SELECTOR, selector)  # noqa: E731
    texts = lambda selector: [e.text for e in d.find_elements(By.CSS_SELECTOR, selector)]  # noqa: E731

    # sign in (signed out, every page leads to the sign-in form)
    d.get(f"{base}/console/")
    assert "/console/signin" in d.current_url
    shot(d, "signin")
    css("#key").send_keys(admin_key)
    css("#signin").click()
    wait_for(lambda: css("#experiments-table") if d.find_elements(By.ID, "experiments-table") else
             "No experiments" in d.page_source, "the experiments list")

    # create with one bad field: the error is next to it, nothing is stored
    css("a.button.primary[href$='/console/new']").click()
    for selector, value in (("#key", "console-e2e"), ("#name", "Console end to end"), ("#owner", "web"),
                            ("#hypothesis", "the INT4 engine is as good and cheaper"),
                            ("#variants-0-key", "control"), ("#variants-0-weight", "0.5"),
                            ("#variants-1-key", "treatment"), ("#variants-1-weight", "half"),
                            ("#metrics-0-name", "conversion"), ("#metrics-0-event", "purchase")):
        css(selector).clear()
        css(selector).send_keys(value)
    Select(css("#variants-0-engine")).select_by_value("v1-fp32")
    Select(css("#variants-1-engine")).select_by_value("v2-int4")
    Select(css("#metrics-0-kind")).select_by_value("binary")
    Select(css("#metrics-0-role")).select_by_value("primary")
    css("#variants-0-control").click()
    css("#save").click()
    error = wait_for(lambda: css('[data-field="variants-1-weight"] .error'), "the field's error")
    assert error.text == "variants[1].weight: must be a number"
    assert css("#variants-1-weight").get_attribute("aria-invalid") == "true"
    assert css("#error-summary").is_displayed()
    assert experiments_in(db_url) == 0
    shot(d, "form-error")

    # fix it: created as a draft, then started through the confirm step
    css("#variants-1-weight").clear()
    css("#variants-1-weight").send_keys("0.5")
    css("#save").click()
    wait_for(lambda: d.current_url.endswith("/console/experiments/console-e2e"), "the experiment page")
    assert css("#experiment-status").text == "draft" and experiments_in(db_url) == 1
    css("#action-start").click()
    css("#confirm-button").click()
    wait_for(lambda: css("#experiment-status").text == "running", "the running status")

    # an sdk key from the keys page, shown once
    d.get(f"{base}/console/keys")
    css("#key-name").send_keys("web-app")
    Select(css("#key-scope")).select_by_value("sdk")
    css("#create-key").click()
    sdk_key = wait_for(lambda: css("#new-key").get_attribute("value"), "the new key")
    assert sdk_key.startswith("abt_")

    # traffic through the SDK while the experiment page is open: it refreshes on its own
    d.get(f"{base}/console/experiments/console-e2e")
    before = css("#live-report").get_attribute("data-refreshed")
    client = Client(base, sdk_key, timeout=60)
    try:
        for i in range(UNITS):
            unit = f"user-{i}"
            result = client.infer("console-e2e", unit, "def add(a, b):", max_new_tokens=4)
            if i % 3 == 0:
                client.track(unit, "purchase", request_id=result.request_id, experiment="console-e2e")
        assert client.flush(timeout=30)
    finally:
        client.close()

    def units_on_page() -> int:
        rows = d.find_elements(By.CSS_SELECTOR, "#live-report #variants-table tr")[1:]
        return sum(int(r.find_elements(By.TAG_NAME, "td")[3].text) for r in rows)

    wait_for(lambda: units_on_page() == UNITS, f"{UNITS} units on the live report")
    assert css("#live-report").get_attribute("data-refreshed") != before  # swapped in, not reloaded
    action = css("#live-report #recommendation").get_attribute("data-action")
    assert action and css("#live-report #headline").text
    shot(d, "experiment")

    d.get(f"{base}/console/")
    row = css('tr[data-key="console-e2e"]')
    assert row.find_element(By.CSS_SELECTOR, "td.units").text == str(UNITS)
    assert row.find_element(By.CSS_SELECTOR, ".badge").text == action
    shot(d, "list")
    shot(d, "list-390", width=390)

    # pause through the confirm step, and read it in the audit log
    d.get(f"{base}/console/experiments/console-e2e")
    css("#action-pause").click()
    assert "Pause" in css("#confirm h1").text
    css("#confirm-button").click()
    wait_for(lambda: css("#experiment-status").text == "paused", "the paused status")
    assert [r.get_attribute("data-action") for r in d.find_elements(By.CSS_SELECTOR, "#audit-log .audit-row")] == [
        "pause", "start", "create"]
    assert texts("#audit-log .audit-row td:nth-child(2)") == ["bootstrap-admin"] * 3
    shot(d, "experiment-details", element="#experiment-details")

    d.get(f"{base}/console/engines")
    engines = {r.get_attribute("data-engine"): r for r in d.find_elements(By.CSS_SELECTOR, "#engines-table tbody tr")}
    served = sum(int(engines[e].find_element(By.CSS_SELECTOR, "td.requests").text) for e in ("v1-fp32", "v2-int4"))
    assert served == UNITS
    shot(d, "engines")

    # the power planner, from the experiment's own history (its control's conversion and traffic)
    d.get(f"{base}/console/plan")
    css("#experiment").send_keys("console-e2e")
    css("#metric").send_keys("conversion")
    css("#effect").send_keys("0.1")
    css("#plan").click()
    wait_for(lambda: d.find_elements(By.ID, "plan-result"), "the plan")
    assert "units per variant" in css("#plan-title").text and "console-e2e" in css("#plan-table").text
    shot(d, "planner")

    # revoke the sdk key (the button asks first): the SDK is refused at once
    d.get(f"{base}/console/keys")
    row = css('#keys-table tr[data-name="web-app"]')
    row.find_element(By.CSS_SELECTOR, "button.danger").click()
    d.switch_to.alert.accept()
    wait_for(lambda: "revoked" in css('#keys-table tr[data-name="web-app"]').text, "the revoked key")
    shot(d, "keys")
    refused = httpx.post(f"{base}/v1/assign", json={"experiment": "console-e2e", "unit_id": "u"},
                         headers={"Authorization": f"Bearer {sdk_key}"})
    assert refused.status_code == 401

    # the browser's cookie: a console POST without the CSRF token is a 400, and the JSON API
    # refuses a request that carries only the cookie
    cookie = d.get_cookie("abtest_console")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert admin_key not in cookie["value"]
    jar = {"abtest_console": cookie["value"]}
    assert httpx.get(f"{base}/console/?format=json", cookies=jar).status_code == 200
    assert httpx.post(f"{base}/console/experiments/console-e2e/stop", cookies=jar).status_code == 400
    assert httpx.get(f"{base}/v1/experiments", cookies=jar).status_code == 401
    assert httpx.get(f"{base}/v1/experiments/console-e2e", headers={"Authorization": f"Bearer {admin_key}"}
                     ).json()["status"] == "paused"  # the forged stop changed nothing

    # sign out: the console refuses until signed in again
    css("#signout").click()
    wait_for(lambda: "/console/signin" in d.current_url, "the sign-in page")
    d.get(f"{base}/console/experiments/console-e2e")
    assert "/console/signin" in d.current_url and not d.find_elements(By.ID, "live-report")
    assert httpx.get(f"{base}/console/?format=json", cookies=jar).status_code == 401  # nor a copy of the cookie
    assert d.get_cookie("abtest_console") is None or "key_id" not in _decoded(d.get_cookie("abtest_console")["value"])


def _decoded(value: str) -> str:
    import base64
    import zlib

    compressed = value.startswith(".")
    data = value.lstrip(".").split(".")[0]
    raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    return (zlib.decompress(raw) if compressed else raw).decode()

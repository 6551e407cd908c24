"""The web console in a real browser: headless Chromium driven by Selenium, against a
live daemon whose store holds a workflow in every state (``console_child.py``).

Skipped, saying why, only where Chromium and its driver are not installed; ``.ci/run``
installs them (Debian's ``chromium`` and ``chromium-driver``). With
``HERDER_SCREENSHOTS=DIR`` the views are also saved as PNGs there (``make screenshots``
writes the ones in ``docs/``).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from herder.runtime.ui import Console

CHILD = pathlib.Path(__file__).with_name("console_child.py")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
WAIT = 30.0
SHOTS = os.environ.get("HERDER_SCREENSHOTS")

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is missing: `make test` installs it ('.[test]')"
)
if CHROMIUM is None or DRIVER is None:
    pytest.skip(
        "headless Chromium is not installed: apt-get install chromium chromium-driver "
        "(.ci/run does it)",
        allow_module_level=True,
    )

from selenium.webdriver.common.by import By  # noqa: E402 - after the skip above
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    store = tmp_path_factory.mktemp("browser") / "store"
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the child is ready (or died)
        assert line.strip() == "ready", proc.stderr and proc.stderr.read()
        yield store
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(WAIT)


@pytest.fixture(scope="module")
def console(daemon: Path) -> Iterator[Console]:
    console = Console(str(daemon), port=0, wait=WAIT)
    console.start()
    try:
        yield console
    finally:
        console.shutdown()


@pytest.fixture(scope="module")
def browser(console: Console) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,860",
        "--lang=en-US",
    ):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(DRIVER))
    driver.set_page_load_timeout(WAIT)
    try:
        driver.get(console.url)  # signs in: the token becomes a cookie
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, predicate: Any) -> Any:
    return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(predicate)


def text(driver: Any, css: str) -> str:
    """The visible text of the first element matching ``css``, read in one script call: the
    counters are replaced every 2 s, so an element found first may be gone when read."""
    found = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : null", css
    )
    assert found is not None, f"nothing matches {css}"
    return str(found)


def shot(driver: Any, name: str) -> None:
    if SHOTS:
        pathlib.Path(SHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(pathlib.Path(SHOTS) / name))


def no_script_errors(driver: Any) -> None:
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []  # CSP violations and script errors show up here


def test_the_list_shows_every_state_and_live_counters(browser: Any, console: Console) -> None:
    browser.get(console.origin + "/")
    rows = browser.find_elements(By.CSS_SELECTOR, "#workflows tbody tr")
    states = {r.find_element(By.CSS_SELECTOR, ".badge").text for r in rows}
    assert states == {
        "SUCCEEDED",
        "COMPENSATED",
        "NEEDS_ATTENTION",
        "ABANDONED",
        "CANCELLED",
        "RUNNING",
    }
    assert "<img src=x onerror=alert(1)>" in [r.find_element(By.TAG_NAME, "a").text for r in rows]
    wait_for(browser, lambda d: d.find_elements(By.ID, "count-NEEDS_ATTENTION"))
    assert text(browser, "#count-NEEDS_ATTENTION b") == "3"
    assert text(browser, "#runtime") == "● runtime running"
    assert text(browser, ".mode") == "operator"
    shot(browser, "console-workflows.png")
    no_script_errors(browser)


def test_the_state_filter_narrows_the_list(browser: Any, console: Console) -> None:
    browser.get(console.origin + "/")
    Select(browser.find_element(By.NAME, "state")).select_by_value("COMPENSATED")
    browser.find_element(By.CSS_SELECTOR, "form.filters button").click()
    wait_for(browser, lambda d: "state=COMPENSATED" in d.current_url)
    ids = [
        a.text for a in browser.find_elements(By.CSS_SELECTOR, "#workflows tbody td:first-child a")
    ]
    assert ids == ["comp-1"]


def test_a_workflow_page_draws_its_timeline(browser: Any, console: Console) -> None:
    browser.get(console.origin + "/workflow?id=ok-2")
    bars = browser.find_elements(By.CSS_SELECTOR, "svg.timeline rect.seg")
    kinds = [(b.get_attribute("data-step"), b.get_attribute("class")) for b in bars]
    assert kinds.count(("flight", "seg retried")) == 2  # two failed attempts, then
    assert ("flight", "seg ok") in kinds
    assert kinds.count(("flight", "seg wait")) == 2  # each followed by its backoff
    assert browser.find_element(By.CSS_SELECTOR, "svg.timeline").size["width"] > 600
    no_script_errors(browser)


def test_the_agents_page_shows_the_daemons_live_facts(browser: Any, console: Console) -> None:
    def published(driver: Any) -> bool:
        driver.get(console.origin + "/agents")  # the daemon publishes on its 5 s tick
        return text(driver, "#facts-age").startswith("Live facts")

    wait_for(browser, published)
    head = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#agents thead th")]
    row = browser.find_element(By.XPATH, "//table[@id='agents']//tr[td[1]='t']")
    cells = dict(zip(head, [td.text for td in row.find_elements(By.TAG_NAME, "td")], strict=True))
    assert cells["concurrency"] == "2"  # as the daemon registered it (console_child.py)
    assert cells["instances"].isdigit()  # published by the daemon, not from the store
    no_script_errors(browser)


def test_an_inbox_action_reaches_the_daemon_and_lands_in_the_history(
    browser: Any, console: Console
) -> None:
    browser.get(console.origin + "/")  # this tab watches the counters, never reloaded
    wait_for(browser, lambda d: d.find_elements(By.ID, "count-NEEDS_ATTENTION"))
    assert text(browser, "#count-NEEDS_ATTENTION b") == "3"
    browser.execute_script("window.notReloaded = true")
    watcher = browser.current_window_handle
    browser.switch_to.new_window("tab")
    browser.get(console.origin + "/inbox")
    shot(browser, "console-inbox.png")
    row = next(
        r
        for r in browser.find_elements(By.CSS_SELECTOR, "#inbox tbody tr")
        if r.find_element(By.TAG_NAME, "a").text == "tour-1"
    )
    row.find_element(By.NAME, "who").send_keys("ada")
    row.find_element(By.NAME, "why").send_keys("refunded by phone")
    row.find_element(By.CSS_SELECTOR, "button[value=skip]").click()
    outcome = wait_for(browser, lambda d: d.find_elements(By.ID, "outcome"))[0]
    assert outcome.text.startswith("done (command #")
    assert "by ada" in outcome.text

    def compensated(driver: Any) -> bool:
        driver.get(console.origin + "/workflow?id=tour-1")
        return text(driver, "h1 .badge") == "COMPENSATED"

    wait_for(browser, compensated)
    acting = browser.current_window_handle
    browser.switch_to.window(watcher)  # the counters caught up by themselves
    wait_for(browser, lambda d: text(d, "#count-NEEDS_ATTENTION b") == "2")
    assert browser.execute_script("return window.notReloaded") is True
    browser.close()
    browser.switch_to.window(acting)
    history = text(browser, "#history")
    assert "operator skip step hotel" in history
    assert "by ada: refunded by phone" in history
    operator = browser.find_element(By.CSS_SELECTOR, "svg.timeline g.operator text")
    assert operator.text == "skip by ada"
    browser.execute_script("window.scrollTo(0, 0)")
    shot(browser, "console-workflow.png")
    no_script_errors(browser)


def test_an_action_without_the_token_is_refused(browser: Any, console: Console) -> None:
    browser.delete_all_cookies()
    try:
        browser.get(console.origin + "/inbox")
        assert browser.find_elements(By.CSS_SELECTOR, "form.act") == []
        assert "Read-only" in text(browser, "#inbox")
    finally:
        browser.get(console.url)  # sign in again for any later test

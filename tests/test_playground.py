"""The chat page at ``GET /``: its headers and content (Flask test client), then the
page itself in a real browser (headless Chromium driven by Selenium) against the real
server and the demo model: a streamed reply, a tool call, usage, the history after a
reload, a new conversation, 409 busy as the API states it, model output kept as text,
an API key typed in and never put in a URL, a tool that acts waiting for Approve or
Reject.

Chromium and its driver are Debian packages (``chromium``, ``chromium-driver``): when
they are missing and the tests run as root with apt-get, they are installed (bounded
time, non-interactive); otherwise the browser tests skip with the reason. Screenshots
go to ``.local/screenshots/`` (ignored by git).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from local.demo_model import DemoModelServer
from local.server import LiveServer
from tests.support.constants import ALICE_KEY, API_KEYS, MODEL, REPO_ROOT

SCREENSHOTS = REPO_ROOT / ".local" / "screenshots"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


# -- the page as served --------------------------------------------------------------


def test_the_page_is_self_contained_with_a_strict_policy(client: FlaskClient) -> None:
    response = client.get("/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert len(response.get_data()) < 40_000  # a few tens of KB at most
    header = response.headers["Content-Security-Policy"]
    policy = dict(part.strip().split(" ", 1) for part in header.split(";"))
    assert policy["default-src"] == "'none'" and policy["connect-src"] == "'self'"
    assert "unsafe" not in header
    (script,) = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    (style,) = re.findall(r"<style>(.*?)</style>", html, re.DOTALL)
    for source, directive in ((script, "script-src"), (style, "style-src")):
        digest = base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()
        assert policy[directive] == f"'sha256-{digest}'"  # only this inline code runs
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert not re.search(r"(src|href)=\"(https?:)?//", html)  # nothing from elsewhere
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script
    assert 'data-auth-mode="none"' in html


def test_the_page_needs_no_credential_but_the_api_still_does(make_client: Any) -> None:
    client = make_client(auth_mode="api_key", auth_api_keys=API_KEYS)
    page = client.get("/")
    assert page.status_code == 200 and 'data-auth-mode="api_key"' in page.get_data(as_text=True)
    assert client.get("/sessions/x").status_code == 401


def test_the_page_can_be_turned_off(make_client: Any) -> None:
    response = make_client(playground_enabled="false").get("/")
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"


# -- in a browser ------------------------------------------------------------------


def _browser_missing() -> str | None:
    """Why no browser can run here; installs Chromium with apt when it can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -r requirements-dev.txt)"
    if os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER):
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "chromium and chromium-driver are not installed (apt-get install, as root)"
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    try:
        for command in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"],
        ):
            subprocess.run(command, env=env, capture_output=True, timeout=600, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"installing chromium with apt failed: {type(exc).__name__}"
    return None if os.path.exists(CHROMEDRIVER) else "apt installed no chromedriver"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _browser_missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1000,900")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def page_server(
    browser: Any, store_env: dict[str, str], model: DemoModelServer
) -> Iterator[Callable[..., Any]]:
    """Starts servers for the page; stops them after the browser has left them."""
    servers: list[LiveServer] = []

    def start(**extra: str) -> LiveServer:
        env = os.environ | store_env | {"OPENAI_BASE_URL": model.base_url, "AGENT_MODEL": MODEL}
        server = LiveServer(env | {"AUTH_MODE": "none"} | extra)
        servers.append(server)
        return server

    yield start
    browser.get("about:blank")
    for server in servers:
        server.stop()


def wait_for(driver: Any, condition: Callable[[Any], Any], timeout: float = 20) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)


def texts(driver: Any, css: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, css)]


def say(driver: Any, message: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.ID, "message")
    box.send_keys(message)
    box.send_keys(Keys.ENTER)


def turns_done(driver: Any, count: int) -> Callable[[Any], bool]:
    return lambda d: len(texts(d, ".usage")) + len(texts(d, ".error")) >= count


def shoot(driver: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def policy_violations(driver: Any) -> list[str]:
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if "Content Security Policy" in entry["message"] or "Refused" in entry["message"]
    ]


def test_a_conversation_in_the_browser(
    browser: Any, page_server: Callable[..., LiveServer], model: DemoModelServer
) -> None:
    server = page_server()
    model.control(stream_chunk_delay_seconds=0.15)  # slow enough to watch it stream
    browser.get(server.url + "/")
    say(browser, "My name is Ada. What is 12 * (3 + 4)?")
    # Streamed text shows while the turn is still running (usage comes at its end).
    streaming = wait_for(browser, lambda d: [t for t in texts(d, ".assistant.streaming") if t])
    assert texts(browser, ".usage") == []
    assert "[demo" in streaming[0]
    wait_for(browser, turns_done(browser, 1))
    assert texts(browser, ".tool-call") == ['→ calculate({"expression": "12 * (3 + 4)"})']
    assert texts(browser, ".tool-result") == ["← 84"]
    assert texts(browser, ".assistant")[-1] == "[demo model] The calculator says: 84."
    assert re.match(r"usage: \d+ in / \d+ out tokens, 2 model call", texts(browser, ".usage")[0])
    model.control(stream_chunk_delay_seconds=0)
    say(browser, "<b>What is my name?</b>")
    wait_for(browser, turns_done(browser, 2))
    last = texts(browser, ".assistant")[-1]
    assert 'your first message was: "My name is Ada.' in last
    assert '"<b>What is my name?</b>"' in last  # markup from the model stays text
    assert browser.find_elements("css selector", "#log b") == []
    session_id = browser.execute_script("return sessionStorage.getItem('agent.playground.session')")
    assert session_id and session_id in browser.find_element("id", "session-label").text
    shoot(browser, "conversation")

    browser.refresh()  # the session id survives in sessionStorage; the history is reloaded
    wait_for(browser, lambda d: texts(d, ".history-loaded"))
    assert texts(browser, ".msg.user") == [
        "My name is Ada. What is 12 * (3 + 4)?",
        "<b>What is my name?</b>",
    ]
    assert texts(browser, ".tool-call") == ['→ calculate({"expression": "12 * (3 + 4)"})']
    assert texts(browser, ".history-loaded")[0].startswith("2 earlier turn(s) loaded")
    shoot(browser, "reloaded")

    # Another turn holds the session: the page shows the API's 409 as it states it.
    model.control(delay_seconds=2.0)
    held = threading.Thread(
        target=server.call, args=("POST", "/chat", {"message": "x", "session_id": session_id})
    )
    held.start()
    time.sleep(0.5)
    say(browser, "are you there?")
    error = wait_for(browser, lambda d: texts(d, ".error"))[0]
    held.join()
    model.control(delay_seconds=0)
    assert error.startswith("HTTP 409 session_busy: ")
    shoot(browser, "busy")

    browser.find_element("id", "new-conversation").click()
    assert texts(browser, ".msg") == []
    say(browser, "hello again")
    wait_for(browser, lambda d: texts(d, ".usage"))
    assert "This is message 1 of our conversation." in texts(browser, ".assistant")[-1]
    new_id = browser.execute_script("return sessionStorage.getItem('agent.playground.session')")
    assert new_id and new_id != session_id
    assert policy_violations(browser) == []


def approval_buttons(driver: Any, kind: str) -> list[Any]:
    """The enabled ``approve`` or ``reject`` buttons of the pending calls."""
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, f".approval button.{kind}")
    return [button for button in found if button.is_enabled()]


def last_reply_starts(prefix: str) -> Callable[[Any], str | None]:
    def check(driver: Any) -> str | None:
        replies = texts(driver, ".assistant")
        return replies[-1] if replies and replies[-1].startswith(prefix) else None

    return check


def test_a_tool_that_acts_waits_for_approve_or_reject(
    browser: Any, page_server: Callable[..., LiveServer], model: DemoModelServer
) -> None:
    from selenium.webdriver.common.by import By

    server = page_server()
    browser.get(server.url + "/")
    browser.find_element(By.ID, "new-conversation").click()
    message = browser.find_element(By.ID, "message")

    say(browser, 'send "hi" to alice')
    [approve] = wait_for(browser, lambda d: approval_buttons(d, "approve"))
    [card] = browser.find_elements(By.CSS_SELECTOR, ".approval")
    assert card.get_attribute("data-tool") == "send_message"
    assert approve.get_attribute("data-call-id") == card.get_attribute("data-call-id")
    assert texts(browser, ".approval-call") == ['send_message({"text":"hi","to":"alice"})']
    assert len(approval_buttons(browser, "reject")) == 1
    assert not message.is_enabled()  # the server would refuse a message now (409)
    assert not any("sent to" in reply for reply in texts(browser, ".assistant"))
    shoot(browser, "approval-asked")

    approve.click()
    done = wait_for(browser, last_reply_starts("[demo model] Done"))
    assert done == "[demo model] Done: sent to alice."
    assert card.get_attribute("data-decision") == "approved"
    assert approval_buttons(browser, "approve") == approval_buttons(browser, "reject") == []
    wait_for(browser, lambda d: message.is_enabled())  # once the response has ended
    shoot(browser, "approval-approved")

    say(browser, "send bob a message saying see you at 5")
    wait_for(browser, lambda d: approval_buttons(d, "reject"))
    assert texts(browser, ".approval-call")[-1] == (
        'send_message({"text":"see you at 5","to":"bob"})'
    )
    browser.find_elements(By.CSS_SELECTOR, ".approval-reason")[-1].send_keys("not today")
    approval_buttons(browser, "reject")[0].click()
    refused = wait_for(browser, last_reply_starts("[demo model] The message was not sent: "))
    assert "rejected" in refused.lower() and "not today" in refused
    assert (
        browser.find_elements(By.CSS_SELECTOR, ".approval")[-1].get_attribute("data-decision")
        == "rejected"
    )
    wait_for(browser, lambda d: message.is_enabled())  # once the response has ended
    # The rejected call never reached the tool: the model saw the rejection, not "sent".
    outputs = [m["content"] for r in model.requests for m in r["messages"] if m["role"] == "tool"]
    assert "sent to alice" in outputs and "sent to bob" not in outputs
    shoot(browser, "approval-rejected")

    say(browser, "hello")  # the conversation goes on after the decisions
    wait_for(browser, last_reply_starts('[demo model] You said: "hello"'))
    assert policy_violations(browser) == []


def test_hidden_and_bidirectional_characters_are_shown_escaped(
    browser: Any, page_server: Callable[..., LiveServer], model: DemoModelServer
) -> None:
    """Issue 20 item 5: a right-to-left override or a zero-width space in a call's
    arguments is shown as an escape, on the approval card (the server's canonical text)
    and in the history (the model's own text, escaped by the page)."""
    from selenium.webdriver.common.by import By

    tricky = {"to": "bob", "text": "pay\u202eevil\u200b"}
    model.control(call_arguments=json.dumps(tricky, ensure_ascii=False))
    server = page_server()
    browser.get(server.url + "/")
    browser.find_element(By.ID, "new-conversation").click()
    say(browser, 'send "x" to bob')
    wait_for(browser, lambda d: approval_buttons(d, "approve"))
    assert texts(browser, ".approval-call") == [
        'send_message({"text":"pay\\u202eevil\\u200b","to":"bob"})'
    ]
    browser.refresh()  # the history: the model's own argument text
    wait_for(browser, lambda d: approval_buttons(d, "approve"))
    [shown] = texts(browser, ".tool-call")
    assert shown == '\u2192 send_message({"to": "bob", "text": "pay\\u{202E}evil\\u{200B}"})'
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "\u202e" not in body and "\u200b" not in body
    model.reset()


def test_a_run_paused_elsewhere_is_offered_for_a_decision(
    browser: Any, page_server: Callable[..., LiveServer]
) -> None:
    """Paused by another client (or before a reload): the page learns it from the 409
    and from the history, and the decision still completes the run."""
    from selenium.webdriver.common.by import By

    server = page_server()
    browser.get(server.url + "/")
    browser.find_element(By.ID, "new-conversation").click()
    say(browser, "hello")
    wait_for(browser, lambda d: texts(d, ".usage"))
    session_id = browser.execute_script("return sessionStorage.getItem('agent.playground.session')")
    status, paused, _ = server.call(
        "POST", "/chat", {"message": "send carol a message saying hi", "session_id": session_id}
    )
    assert status == 200 and paused["status"] == "approval_required"

    say(browser, "are you there?")
    error = wait_for(browser, lambda d: texts(d, ".error"))[0]
    assert error.startswith("HTTP 409 approval_pending: ")
    wait_for(browser, lambda d: approval_buttons(d, "approve"))
    assert texts(browser, ".approval-call") == ['send_message({"text":"hi","to":"carol"})']
    assert not browser.find_element(By.ID, "message").is_enabled()

    browser.refresh()
    [approve] = wait_for(browser, lambda d: approval_buttons(d, "approve"))
    [call_id] = [c["call_id"] for c in paused["pending_approvals"]]
    assert approve.get_attribute("data-call-id") == call_id
    assert not browser.find_element(By.ID, "message").is_enabled()
    approve.click()
    assert wait_for(browser, last_reply_starts("[demo model] Done")) == (
        "[demo model] Done: sent to carol."
    )
    wait_for(browser, lambda d: d.find_element(By.ID, "message").is_enabled())
    assert policy_violations(browser) == []


def test_an_api_key_is_typed_in_and_never_put_in_a_url(
    browser: Any, page_server: Callable[..., LiveServer]
) -> None:
    server = page_server(AUTH_MODE="api_key", AUTH_API_KEYS=API_KEYS)
    browser.get(server.url + "/")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    key = browser.find_element("id", "api-key")
    key.send_keys("wrong-key-0123456789")
    say(browser, "hi")
    error = wait_for(browser, lambda d: texts(d, ".error"))[0]
    assert error.startswith("HTTP 401 unauthenticated: ")
    key.clear()
    key.send_keys(ALICE_KEY)
    say(browser, "hi")
    wait_for(browser, lambda d: texts(d, ".usage"))
    stored = browser.execute_script("return sessionStorage.getItem('agent.playground.apiKey')")
    assert stored == ALICE_KEY
    assert ALICE_KEY not in browser.current_url
    assert browser.execute_script("return localStorage.length") == 0
    browser.refresh()  # the key stays for this tab, so the history loads
    wait_for(browser, lambda d: texts(d, ".history-loaded"))
    shoot(browser, "api-key")


def test_with_iam_the_page_explains_identity_tokens(
    browser: Any, page_server: Callable[..., LiveServer]
) -> None:
    server = page_server(
        AUTH_MODE="iam", AUTH_CERTS_URL="http://127.0.0.1:9/certs", PLAYGROUND_ENABLED="true"
    )
    browser.get(server.url + "/")
    help_text = wait_for(browser, lambda d: d.find_element("id", "iam-help").text)
    assert "gcloud auth print-identity-token" in help_text and server.url in help_text
    assert not browser.find_element("id", "composer").is_displayed()

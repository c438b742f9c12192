"""The pool status page at /admin in a real headless Chromium (Debian's, driven by Playwright): sign in with the
admin token, see the keys of a running gateway after scripted traffic (a key cooling after a 429), no secret in the
page or its source. The screenshot is kept in the test's temporary folder."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import openai
import pytest

from tests.conftest import FakeControl, Process, gateway_toml, start_gateway

CHROMIUM = shutil.which("chromium")
ADMIN = "admin-token-status-page-9b1d"
KEYS = ["sk-mega-status-page-aaaa1111", "sk-mega-status-page-bbbb2222"]
# Chromium's own background traffic is refused by this machine's closed network: keep it quiet and local.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # fmt: skip


def test_the_status_page_shows_a_cooling_key_and_no_secret(
    fake_upstream: Process, fake: FakeControl, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    if CHROMIUM is None:
        pytest.fail("Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)")
    extra = f'admin_token = "{ADMIN}"\n[[clients]]\nname = "ci-bot"\nkey = "client-key-status-0001"\nrpm = 60\n'
    gateway = start_gateway(tmp_path, gateway_toml(fake_upstream.url, KEYS, extra))
    try:
        fake.add_rule({"status": 429, "retry_after": 60}, key=KEYS[0], times=1)
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="client-key-status-0001", max_retries=0)
        for _ in range(3):
            client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone
            page.goto(gateway.url + "/admin")
            assert "sign in" in page.title()
            page.fill("input[name=token]", ADMIN)
            page.click("button")
            page.wait_for_selector("h2")
            text, source = page.inner_text("body"), page.content()
            page.screenshot(path=str(tmp_path / "status-page.png"), full_page=True)
            browser.close()
        assert "upstream fake" in text and "sk-mega-…1111" in text and "sk-mega-…2222" in text
        assert "cooling for gpt-4" in text and "ci-bot" in text and "rpm 60" in text
        for secret in [*KEYS, ADMIN, "client-key-status-0001"]:
            assert secret not in source
        assert (tmp_path / "status-page.png").stat().st_size > 1000
    finally:
        gateway.stop()


def test_the_spending_page_charts_the_days_and_flags_unpriced_and_budgets(
    fake_upstream: Process, fake: FakeControl, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    if CHROMIUM is None:
        pytest.fail("Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)")
    extra = (f'admin_token = "{ADMIN}"\n[prices]\n"gpt-*" = {{ input = 30.0, output = 60.0 }}\n'
             '[[clients]]\nname = "ci-bot"\nkey = "client-key-spending-0001"\nbudget = { daily = 1.0 }\n')  # fmt: skip
    gateway = start_gateway(tmp_path, gateway_toml(fake_upstream.url, KEYS, extra))
    try:
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="client-key-spending-0001", max_retries=0)
        for model in ("gpt-4", "gpt-4", "llama3.3-70b-instruct"):  # the last has no price
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        time.sleep(1.0)  # the ledger's writer ticks every half second
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone
            page.goto(gateway.url + "/admin/spending")
            page.fill("input[name=token]", ADMIN)
            page.click("button")  # signs in and lands on the status page, which links here
            page.click("a[href='admin/spending']")
            page.wait_for_selector("svg rect", state="attached")
            text, source = page.inner_text("body"), page.content()
            bars = page.locator("svg rect").count()
            page.screenshot(path=str(tmp_path / "spending-page.png"), full_page=True)
            browser.close()
        assert bars == 30 and "spend per day" in text
        assert "ci-bot" in text and "gpt-4" in text and "1 unpriced" in text and "daily" in text and "$1" in text
        for secret in [*KEYS, ADMIN, "client-key-spending-0001"]:
            assert secret not in source
    finally:
        gateway.stop()

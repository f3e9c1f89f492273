"""The chat page in a real browser: Debian's headless Chromium, driven by Selenium through Debian's
chromium-driver (the driver and the browser come from one Debian source package, so their versions
always match, and nothing downloads a browser build), against a real `ragkit serve` process on a
loopback port with the packaged SmolLM2 and MiniLM."""
from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

pytest.importorskip("fastapi")
pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install 'ragkit[dev]')")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from ragkit import Index  # noqa: E402
from tests.browser import MISSING, chromium  # noqa: E402
from tests.server.test_server import free_port  # noqa: E402

KEY = "page-test-key"
QUESTION = "What does the assert statement do?"

if MISSING:
    pytest.skip(MISSING, allow_module_level=True)


@pytest.fixture(scope="module")
def served(tmp_path_factory, encoder, topic_docs):
    """`ragkit serve` in its own process over a small index, with an API key, one generation at a
    time and no queue (so a second question finds the server busy)."""
    root = tmp_path_factory.mktemp("served")
    docs = [replace(d, text=d.text[:2000]) for d in topic_docs[:60]]
    Index.build(docs, encoder=encoder).save(root / "index")
    (root / "pipeline.yaml").write_text(
        f"index: {root / 'index'}\nretrieval: {{k: 3}}\ngeneration: {{max_new_tokens: 40}}\n"
        "server: {api_key_env: RAGKIT_PAGE_TEST_KEY, max_batch: 1, max_queue: 0, max_tokens: 200}\n")
    port = free_port()
    env = {**os.environ, "RAGKIT_PAGE_TEST_KEY": KEY}
    ragkit = str(Path(sys.executable).with_name("ragkit"))
    proc = subprocess.Popen([ragkit, "serve", "--config", str(root / "pipeline.yaml"), "--port", str(port),
                             "--log-level", "warning"], env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(url + "healthz", timeout=2):
                break
        except OSError:
            assert proc.poll() is None and time.time() < deadline, "ragkit serve did not start"
            time.sleep(0.5)
    yield url, {d.text for d in docs}
    proc.terminate()
    proc.wait(30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = chromium(tmp_path_factory.mktemp("chromium"))
    yield driver
    driver.quit()


def wait(driver, condition, timeout: float = 120):
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition(d))


def ask(driver, question: str) -> None:
    box = driver.find_element(By.ID, "question")
    box.send_keys(question)
    box.send_keys(Keys.ENTER)


def test_the_page_asks_for_the_key_streams_the_answer_and_opens_its_sources(served, browser, tmp_path):
    url, texts = served
    browser.get(url)
    wait(browser, lambda d: "SmolLM2" in d.find_element(By.ID, "model").text, 30)
    options = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#retriever option")]
    assert "hybrid" in options and browser.find_element(By.ID, "k").get_attribute("value") == "3"

    ask(browser, QUESTION)  # no key yet: the server says 401 and the page asks for it
    key_box = wait(browser, lambda d: d.find_element(By.ID, "api-key").is_displayed()
                   and d.find_element(By.ID, "api-key"), 30)
    assert "key" in browser.find_element(By.ID, "status").text
    key_box.send_keys(KEY)
    key_box.send_keys(Keys.ENTER)  # the question is asked again, with the key

    turn = browser.find_elements(By.CSS_SELECTOR, ".turn")[-1]
    answer = turn.find_element(By.CSS_SELECTOR, ".answer")
    partial = wait(browser, lambda d: "streaming" in answer.get_attribute("class") and answer.text and answer.text)
    wait(browser, lambda d: "streaming" not in answer.get_attribute("class"))
    assert answer.text.startswith(partial.strip()[:10]) and len(answer.text) > len(partial) // 2
    sources = wait(browser, lambda d: turn.find_elements(By.CSS_SELECTOR, ".source"))
    assert len(sources) == 3
    for source in sources:  # each says whether the model cited it, ragkit attributed it, or neither
        badge = source.find_element(By.CSS_SELECTOR, ".badge").text
        assert badge in {"cited by the model", "attributed by ragkit", "not cited"}
        assert "characters" in source.text
    assert "k 3" in turn.find_element(By.CSS_SELECTOR, ".meta").text

    cites = turn.find_elements(By.CSS_SELECTOR, ".answer .cite")
    target = cites[0] if cites else sources[0].find_element(By.CSS_SELECTOR, ".source-head")
    n = int(target.text) if cites else 1
    target.click()
    passage = turn.find_element(By.CSS_SELECTOR, f'.source[data-n="{n}"] .passage')
    wait(browser, lambda d: passage.is_displayed(), 5)
    shown = passage.text.strip()
    assert shown and any(shown[:60] in text for text in texts)  # the source's own text
    shot = tmp_path / "chat.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    assert browser.execute_script("return state.history.length") == 2  # the conversation goes on from here

    browser.set_window_size(390, 844)  # a phone: sources under the answer, nothing wider than the screen
    column = turn.find_element(By.CSS_SELECTOR, ".answer-column").rect
    aside = turn.find_element(By.CSS_SELECTOR, ".sources").rect
    assert aside["y"] >= column["y"] + column["height"] - 1
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
    browser.set_window_size(1200, 900)


def test_the_page_says_when_the_server_is_busy_or_the_question_too_long(served, browser):
    url, _ = served
    browser.get(url)
    browser.execute_script(f"sessionStorage.setItem('ragkit-api-key', '{KEY}')")
    browser.get(url)
    wait(browser, lambda d: "SmolLM2" in d.find_element(By.ID, "model").text, 30)

    browser.execute_script("document.getElementById('question').value = arguments[0];"
                           "document.getElementById('ask').requestSubmit();", "why " * 12000)
    status = browser.find_element(By.ID, "status")
    wait(browser, lambda d: "too long" in status.text, 60)

    # another client holds the model (one generation at a time, no queue): the page says busy
    conn = http.client.HTTPConnection(url.removeprefix("http://").rstrip("/"), timeout=60)
    conn.request("POST", "/v1/chat/completions", json.dumps({
        "model": "ragkit", "stream": True, "max_tokens": 200, "ragkit": {"retrieval": False},
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}]}),
        {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    response = conn.getresponse()
    assert response.status == 200
    while True:  # up to its first piece of text: it is decoding
        line = response.readline()
        assert line, "the other client's stream ended early"
        if line.startswith(b"data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
            break
    try:
        ask(browser, QUESTION)
        wait(browser, lambda d: "busy" in status.text, 30)
        assert "try again in" in status.text and "error" in status.get_attribute("class")
    finally:
        conn.close()

"""The chat page in a real browser: headless Chromium (the system's, driven by
Playwright; nothing downloads a browser) against the shared server, whose tiny
model has a context of 64 tokens. The page takes its defaults from the model,
clamps max tokens to what fits with a note, and keeps a conversation longer than
the context going by dropping its oldest turns, with a marker where they went."""

from __future__ import annotations

import json
import shutil

import pytest

from fmforge.serve.chat_template import SIMPLE_STOPS, simple_prompt

KEY = "test-key"  # the shared server's (conftest.py)
CONTEXT = 64  # conftest's tiny model
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
DONE = "document.querySelectorAll('.msg.error, .msg.assistant.done').length >= {n}"


@pytest.fixture(scope="module")
def browser():
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("no chromium on PATH: the page tests need the system's Chromium "
                    "(Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 900, "height": 700})
    page = context.new_page()
    page.set_default_timeout(15_000)
    bodies = []  # what the page sent to /v1/chat/completions, and the statuses it got
    page.on("request", lambda r: bodies.append(json.loads(r.post_data))
            if r.url.endswith("/v1/chat/completions") else None)
    statuses = []
    page.on("response", lambda r: statuses.append((r.status, r.headers["content-type"].split(";")[0]))
            if r.url.endswith("/v1/chat/completions") else None)
    page.goto(server[0] + f"/?key={KEY}")
    page.wait_for_function("document.getElementById('model').textContent === 'model: tiny'")
    page.sent, page.statuses = bodies, statuses
    yield page
    context.close()


def say(page, text: str, n: int) -> None:
    """Send a message and wait for the n-th answer (or error) to be complete."""
    page.fill("#input", text)
    page.press("#input", "Enter")
    page.wait_for_function(DONE.format(n=n))


def test_a_first_message_on_a_small_context_model_streams_a_reply(page, server, greedy, tmp_path):
    page.fill("#temperature", "0")
    say(page, "def alpha", 1)
    assert page.locator(".msg.error").count() == 0, page.text_content("#log")
    assert int(page.input_value("#max_tokens")) <= CONTEXT // 2  # a default that leaves room
    assert "64" in page.text_content("#context")
    assert page.statuses == [(200, "text/event-stream")]
    (body,) = page.sent
    assert body["stream"] is True
    expected = greedy(server[2], simple_prompt([{"role": "user", "content": "def alpha"}]),
                      body["max_tokens"], stop=SIMPLE_STOPS).text
    assert expected  # the tiny model says something to this (greedily, spaces)
    assert page.text_content(".msg.assistant") == expected
    page.screenshot(path=str(tmp_path / "first.png"))


def test_a_long_conversation_drops_its_oldest_turns_with_a_marker(page, server, tmp_path):
    page.goto(server[0] + f"/?key={KEY}&system=be+brief")  # a system message, always kept
    page.wait_for_function("document.getElementById('model').textContent === 'model: tiny'")
    questions = [f"def v{i}(t)" for i in range(6)]
    for i, q in enumerate(questions, start=1):
        say(page, q, i)
        assert page.locator(".msg.error").count() == 0, page.text_content("#log")
    assert page.statuses == [(200, "text/event-stream")] * 6
    assert page.locator(".msg.assistant.done").count() == 6
    marker = page.locator(".marker")
    assert marker.count() == 1 and marker.is_visible()
    assert "context" in marker.text_content() and "64" in marker.text_content()
    dropped = page.locator(".msg.dropped").count()
    assert dropped >= 2
    assert f"{dropped} earlier message" in marker.text_content()
    # the marker sits between the dropped turns and the ones the model still sees; the
    # system message above them all stays
    order = page.eval_on_selector_all("#log > *", "els => els.map(e => e.className)")
    at = next(i for i, c in enumerate(order) if "marker" in c)
    assert order[0] == "msg system"
    assert all("dropped" in c for c in order[1:at]) and not any("dropped" in c for c in order[at:])
    # later requests no longer carry the dropped turns
    assert len(page.sent[-1]["messages"]) < 2 * len(questions) - 1
    assert page.sent[-1]["messages"][-1]["content"] == questions[-1]
    assert all(b["messages"][0] == {"role": "system", "content": "be brief"} for b in page.sent)
    assert page.locator(".msg.system").is_visible()
    page.screenshot(path=str(tmp_path / "long.png"))


def test_max_tokens_is_clamped_to_what_fits_with_a_note(page, tmp_path):
    note = page.locator("#note")
    assert not note.is_visible()
    page.fill("#max_tokens", "1000")
    page.press("#max_tokens", "Tab")  # a change event
    limit = int(page.input_value("#max_tokens"))
    assert limit < CONTEXT
    assert note.is_visible()
    assert str(limit) in note.text_content() and str(CONTEXT) in note.text_content()
    say(page, "def beta", 1)
    assert page.locator(".msg.error").count() == 0, page.text_content("#log")
    assert page.sent[-1]["max_tokens"] == limit
    page.screenshot(path=str(tmp_path / "clamped.png"))

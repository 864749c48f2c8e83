"""The page of ``npgpt serve`` (npgpt/apps/serve/static, docs/serving.md) in a real browser: headless
Chromium (Debian's ``chromium`` package, which .ci/run installs) driven by Playwright's Python package.
Load the page, send a message, watch the answer stream in, hover a token for its top 5, switch the
attention head and see the picture change, with no error in the browser's console."""

import shutil

import pytest

playwright = pytest.importorskip("playwright.sync_api")
pytest.importorskip("fastapi")

from serve_helpers import Running, save_tiny  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (.ci/run installs Debian's package)")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = Running(save_tiny(tmp_path_factory.mktemp("page") / "tiny-chat", block_size=128, n_embd=64,
                                n_layer=4, chat=True), "--api-key", "page-key")
    yield running
    assert running.stop()[0] == 0


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:        # one Playwright per module: it runs an event loop
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(server, browser):
    page = browser.new_page()
    page.problems = []
    page.on("console", lambda m: m.type in ("error", "warning") and page.problems.append(m.text))
    page.on("pageerror", lambda e: page.problems.append(str(e)))
    # Fetching from anywhere but the server would break offline use: refuse and record it.
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(server.url)
               or route.request.url.startswith("data:") else (page.problems.append(route.request.url),
                                                              route.abort()))
    page.add_init_script("localStorage.setItem('npgpt-key', 'page-key')")
    yield page
    page.close()


def test_a_conversation_streams_and_shows_what_the_model_does(page, server):
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('layer').options.length === 4")
    assert "tiny-chat" in page.inner_text("#model") and "chat" in page.inner_text("#model")
    # Count the answer's growth as it streams: more than one update means it did not arrive in one piece.
    page.evaluate("""() => {
        window.updates = 0;
        new MutationObserver(() => window.updates++).observe(document.getElementById('log'),
                                                             {childList: true, subtree: true, characterData: true});
    }""")
    page.click("#settings summary")
    page.fill("#max-tokens", "60")
    page.fill("#temperature", "0")                 # greedy: the same answer every run
    page.fill("#prompt", "Hello there, who are you?")
    page.click("#send")
    page.wait_for_selector(".assistant[data-done='1']", timeout=60000)
    assert len(page.query_selector_all(".assistant .token")) > 10, page.inner_html(".assistant")
    assert page.evaluate("window.updates") > 3
    assert page.inner_text(".user") == "Hello there, who are you?"
    tokens = page.query_selector_all(".assistant .token[data-top]")
    assert tokens, page.inner_html(".assistant")
    # Shaded by probability, and the top 5 on hover.
    assert page.eval_on_selector(".assistant .token[data-top]", "s => s.style.background") != ""
    visible = [t for t in tokens if t.inner_text().strip()]     # a lone newline token has no box to hover
    visible[0].hover()
    page.wait_for_selector("#tooltip:not([hidden])")
    tip = page.inner_text("#tooltip")
    assert tip.count("%") == 5, tip
    # The attention picture of layer 0 head 0, then of head 1: a different picture.
    page.wait_for_function("document.querySelector('#attention svg') !== null")
    page.wait_for_function("document.querySelector('#saliency svg') !== null")
    first = page.inner_html("#attention")
    assert "layer 0, head 0" in first
    page.select_option("#head", "1")
    page.wait_for_function("document.getElementById('attention').dataset.key === '0,1'")
    second = page.inner_html("#attention")
    assert "layer 0, head 1" in second and second != first
    rects = page.eval_on_selector_all("#attention svg rect[fill^='#']", "r => r.map(x => x.getAttribute('fill'))")
    assert len(set(rects)) > 3                         # the cells are shaded by their weights
    assert "saliency for" in page.inner_html("#saliency")
    # Clicking a token of the answer explains that token.
    if len(visible) > 1:
        visible[1].click()
        page.wait_for_function("document.getElementById('target').textContent.length > 0")
    assert page.inner_text("#status") == ""
    assert page.problems == []


def test_a_base_model_continues_the_message_and_shows_its_tokens(tmp_path, browser):
    # No chat template: the page sends the message as a prompt to /v1/completions (logprobs as a dict).
    running = Running(save_tiny(tmp_path / "tiny-base", block_size=128, n_embd=64, n_layer=4, chat=False))
    try:
        page = browser.new_page()
        problems = []
        page.on("console", lambda m: m.type in ("error", "warning") and problems.append(m.text))
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(running.url + "/")
        page.wait_for_function("document.getElementById('head').options.length === 2")
        assert "no chat template" in page.inner_text("#model")
        page.click("#settings summary")
        page.fill("#temperature", "0")
        page.fill("#prompt", "Once upon a time")
        page.press("#prompt", "Enter")
        page.wait_for_selector(".assistant[data-done='1']", timeout=60000)
        tops = page.eval_on_selector_all(".assistant .token[data-top]", "s => s.map(x => JSON.parse(x.dataset.top))")
        assert tops and all(len(t) == 5 for t in tops)
        page.wait_for_function("document.querySelector('#attention svg') !== null")
        assert "layer 0, head 0" in page.inner_html("#attention")
        assert page.inner_text("#status") == "" and problems == []
        page.close()
    finally:
        assert running.stop()[0] == 0

"""Every page under the Content Security Policy, in a real browser: nothing is refused.

The policy (web/security.py) allows only this origin's files: no inline ``<style>`` or
``<script>``, no ``style="…"`` attributes, no ``on…=`` handlers. Chromium reports what it
refuses twice, as a console error and as a ``securitypolicyviolation`` event; both are
collected on every page kind and must stay empty. The page's own script must still work:
the live progress, the before/after slider, and the cancel button, whose API call needs
the page's CSRF token in ``X-CSRF-Token``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import requests
from playwright.sync_api import expect

from tests.browser.test_pages import submit_style
from tests.conftest import tiny_png
from tests.web.helpers import as_json, make_job

# Stored on window (per document) and handed to the test (across reloads and navigations).
WATCH_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  const violation = {
    directive: event.violatedDirective,
    blocked: event.blockedURI,
    sample: event.sample,
    source: event.sourceFile + ":" + event.lineNumber,
    page: location.href,
  };
  window.__cspViolations.push(violation);
  window.__reportCspViolation(violation);
}, true);
"""


@dataclass
class Watch:
    """What the browser said while the test ran: console messages and refused content."""

    console: list[str] = field(default_factory=list)
    violations: list[dict] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert not self.violations, f"Content Security Policy violations: {self.violations}"
        assert not self.console, f"console messages: {self.console}"


@pytest.fixture
def watch(page) -> Iterator[Watch]:
    seen = Watch()

    def on_console(message) -> None:
        # "verbose" is Chromium's own DOM advice (the login form's lone password field)
        if message.type != "verbose":
            seen.console.append(f"{message.type}: {message.text} @ {page.url}")

    page.on("console", on_console)
    page.expose_function(
        "__reportCspViolation", lambda violation: seen.violations.append(violation)
    )
    page.add_init_script(WATCH_VIOLATIONS)
    yield seen


def on_this_page(page) -> list[dict]:
    """The violations the current document recorded itself (the init script ran in it)."""
    return page.evaluate("window.__cspViolations")


def policy(header: str) -> dict[str, list[str]]:
    directives = (part.strip().split() for part in header.split(";") if part.strip())
    return {words[0]: words[1:] for words in directives}


def finished_style_job(settings) -> str:
    history = [{"step": i, "loss": 900.0 / i} for i in range(1, 21)]
    return make_job(
        settings,
        files={
            "content.png": ("content", tiny_png(96, 64, color=(30, 160, 60))),
            "style.png": ("style", tiny_png(64, 64, color=(220, 200, 20))),
            "result.png": ("result", tiny_png(96, 64, color=(200, 40, 140))),
        },
        params={"size": 96, "iterations": 20},
        progress_current=20,
        progress_total=20,
        progress_history=history,
    )


def fine_tune_job(settings) -> str:
    metrics = {
        "accuracy": 0.7,
        "classes": ["ants", "bees", "wasps"],
        "confusion_matrix": [[10, 0, 1], [3, 6, 1], [0, 5, 4]],
        "per_class": {
            "ants": {"precision": 0.77, "recall": 0.91, "f1": 0.83, "support": 11},
            "bees": {"precision": 0.55, "recall": 0.6, "f1": 0.57, "support": 10},
            "wasps": {"precision": 0.67, "recall": 0.44, "f1": 0.53, "support": 9},
        },
    }
    history = [
        {"step": e, "epoch": e, "loss": 1.0 / e, "val_loss": 1.2 / e, "val_accuracy": 0.4 + e / 10}
        for e in (1, 2, 3)
    ]
    return make_job(
        settings,
        kind="fine_tune",
        params={"backbone": "vgg19", "strategy": "linear_probe"},
        files={"data.zip": ("dataset", b"PK"), "metrics.json": ("result", as_json(metrics))},
        progress_current=3,
        progress_total=3,
        progress_history=history,
    )


def predict_job(settings, model: str) -> str:
    predictions = {
        "classes": ["ants", "bees"],
        "predictions": [
            {
                "name": "one.png",
                "top": [
                    {"label": "bees", "probability": 0.9},
                    {"label": "ants", "probability": 0.1},
                ],
            },
            {"name": "two.png", "top": [{"label": "ants", "probability": 0.55}]},
        ],
    }
    return make_job(
        settings,
        kind="predict",
        params={"model": model, "top_k": 2},
        files={
            "one.png": ("image", tiny_png(64, 48)),
            "two.png": ("image", tiny_png(64, 48, color=(40, 40, 200))),
            "predictions.json": ("result", as_json(predictions)),
        },
        progress_current=2,
        progress_total=2,
    )


def test_pages_carry_the_policy_and_nosniff(live_server):
    response = requests.get(live_server + "/", timeout=10)
    directives = policy(response.headers["Content-Security-Policy"])
    assert directives["default-src"] == ["'self'"]
    assert directives["script-src"] == ["'self'"] and directives["style-src"] == ["'self'"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    static = requests.get(live_server + "/static/app.css", timeout=10)
    assert static.headers["X-Content-Type-Options"] == "nosniff"


def test_every_page_kind_renders_without_violations(
    page, watch, live_server, e2e_settings, screenshots
):
    style = finished_style_job(e2e_settings)
    tuned = fine_tune_job(e2e_settings)
    predicted = predict_job(e2e_settings, model=tuned)

    for path, ready in (
        ("/", "#form-style_transfer"),
        ("/?kind=fine_tune", "#form-fine_tune"),
        ("/jobs", ".card"),
        ("/docs", "section.operation"),
        ("/login", "input[name=token]"),
    ):
        page.goto(live_server + path)
        expect(page.locator(ready).first).to_be_visible()
        assert on_this_page(page) == [], path

    # a finished style job: full bar, result, and the slider the script reveals and drives
    page.goto(f"{live_server}/jobs/{style}")
    expect(page.locator("#status")).to_have_text("succeeded")
    assert on_this_page(page) == []
    expect(page.locator("#bar")).to_have_js_property("value", 100)
    expect(page.locator("#compare")).to_be_visible()
    after = page.locator("#compare img.after")
    expect(after).to_have_css("clip-path", "inset(0px 0px 0px 50%)")
    page.fill("#compare-split", "20")
    expect(after).to_have_css("clip-path", "inset(0px 0px 0px 20%)")
    expect(page.locator("#charts svg.chart polyline")).to_have_count(1)
    page.screenshot(path=screenshots / "csp-style.png", full_page=True)
    assert on_this_page(page) == []

    # a fine-tune job: the confusion matrix shaded by count, the diagonal outlined
    page.goto(f"{live_server}/jobs/{tuned}")
    cells = page.locator("#confusion tbody td")
    expect(cells).to_have_count(9)
    assert on_this_page(page) == []
    expect(cells.nth(0)).to_have_css("background-color", "rgb(91, 75, 219)")  # the largest
    expect(cells.nth(1)).to_have_css("background-color", "rgba(0, 0, 0, 0)")  # a zero
    expect(cells.nth(3)).to_have_css("background-color", "rgba(91, 75, 219, 0.3)")  # 3 of 10
    expect(page.locator("#charts svg.chart")).to_have_count(2)
    page.screenshot(path=screenshots / "csp-fine-tune.png", full_page=True)
    assert on_this_page(page) == []

    # a predict job: one bar per label, as long as its probability
    page.goto(f"{live_server}/jobs/{predicted}")
    bars = page.locator("#predictions .pbar")
    expect(bars).to_have_count(3)
    assert on_this_page(page) == []
    expect(bars.nth(0)).to_have_js_property("value", 0.9)
    expect(bars.nth(2)).to_have_js_property("value", 0.55)
    assert bars.nth(0).bounding_box()["width"] > 0
    page.screenshot(path=screenshots / "csp-predict.png", full_page=True)
    assert on_this_page(page) == []

    watch.assert_clean()


def test_result_pages_keep_their_look_without_javascript(nojs_page, live_server, e2e_settings):
    page = nojs_page
    tuned = fine_tune_job(e2e_settings)
    page.goto(f"{live_server}/jobs/{tuned}")
    cells = page.locator("#confusion tbody td")
    expect(cells.nth(0)).to_have_css("background-color", "rgb(91, 75, 219)")
    expect(cells.nth(7)).to_have_css("background-color", "rgba(91, 75, 219, 0.5)")  # 5 of 10
    expect(page.locator("#bar")).to_have_attribute("value", "100.0")

    page.goto(f"{live_server}/jobs/{predict_job(e2e_settings, model=tuned)}")
    bar = page.locator("#predictions .pbar").first
    expect(bar).to_have_attribute("value", "0.9")
    assert bar.bounding_box()["width"] > 0


def test_cancel_button_works_under_the_policy_and_csrf(page, watch, live_server):
    job_id = submit_style(
        page, live_server, size=64, iterations=3000, extra={"multiscale": "false"}
    )
    expect(page.locator("#status")).to_have_text("processing", timeout=60_000)
    assert on_this_page(page) == []
    # the script moves the bar (a property set from a same-origin script: allowed)
    expect(page.locator("#bar")).not_to_have_js_property("value", 0, timeout=60_000)

    cancel_url = f"{live_server}/api/v1/jobs/{job_id}/cancel"
    with page.expect_response(lambda r: r.url == cancel_url) as answer:
        page.click("#cancel")  # the script's fetch, not the form post
    response = answer.value
    assert response.request.method == "POST" and response.ok, response.status
    assert response.request.headers.get("x-csrf-token")
    expect(page.locator("#status")).to_have_text("canceled", timeout=30_000)
    expect(page.locator("#delete-form")).to_be_visible()

    job = requests.get(f"{live_server}/api/v1/jobs/{job_id}", timeout=10).json()
    assert job["status"] == "canceled"
    watch.assert_clean()

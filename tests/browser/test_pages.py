"""The pages in a real browser: submit, live progress, result, cancel, errors, gallery, docs."""

from __future__ import annotations

import io
import re

import requests
from PIL import Image
from playwright.sync_api import expect

from tests.browser.conftest import MAX_UPLOAD
from tests.conftest import tiny_png

JOB_URL = re.compile(r".*/jobs/[0-9a-f]{32}$")


def png_file(name: str, data: bytes) -> dict:
    return {"name": name, "mimeType": "image/png", "buffer": data}


def noise_png(width: int, height: int) -> bytes:
    """An incompressible image: its PNG is about width*height*3 bytes."""
    import os

    image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def job_count(base: str) -> int:
    return len(requests.get(f"{base}/api/v1/jobs?limit=100", timeout=10).json()["results"])


def submit_style(page, base: str, *, size: int, iterations: int, extra: dict | None = None) -> str:
    """Fill the style form as a person would and start; returns the job id."""
    page.goto(base + "/")
    page.set_input_files(
        "#form-style_transfer input[name=content]",
        png_file("photo.png", tiny_png(96, 64, color=(30, 160, 60))),
    )
    page.set_input_files(
        "#form-style_transfer input[name=style]",
        png_file("painting.png", tiny_png(64, 64, color=(220, 200, 20))),
    )
    page.fill("#form-style_transfer input[name=size]", str(size))
    page.click("#form-style_transfer details.expert summary")
    page.fill("#form-style_transfer input[name=iterations]", str(iterations))
    page.fill("#form-style_transfer input[name=seed]", "3")
    for name, value in (extra or {}).items():
        page.select_option(f"#form-style_transfer select[name={name}]", value)
    page.click("#form-style_transfer button[type=submit]")
    page.wait_for_url(JOB_URL)
    return page.url.rsplit("/", 1)[1]


def test_submit_page_checks_limits_and_switches_kinds(page, live_server, screenshots):
    page.goto(live_server + "/")
    assert "256 KiB" in page.inner_text("#limits")
    form = "#form-style_transfer"
    page.set_input_files(f"{form} input[name=content]", png_file("photo.png", tiny_png(96, 64)))
    page.set_input_files(
        f"{form} input[name=style]",
        [png_file("a.png", tiny_png(64, 64, color=(0, 0, 200))), png_file("b.png", tiny_png())],
    )
    page.wait_for_selector(f"{form} .dropzone .thumbs img >> nth=2")  # three thumbnails
    page.screenshot(path=screenshots / "submit.png", full_page=True)

    before = job_count(live_server)
    big = noise_png(400, 300)
    assert len(big) > MAX_UPLOAD
    page.set_input_files(f"{form} input[name=content]", png_file("huge.png", big))
    error = page.locator(f'{form} [data-error-for="content"]')
    error.wait_for(state="visible")
    assert "limit is 256 KiB" in error.inner_text()
    page.click(f"{form} button[type=submit]")
    page.wait_for_timeout(300)
    assert page.url.endswith("/") and job_count(live_server) == before  # never uploaded

    page.click('.kind-tab[data-kind="fine_tune"]')
    assert page.is_visible("#form-fine_tune") and not page.is_visible(form)
    assert page.url.endswith("?kind=fine_tune")
    page.click('.kind-tab[data-kind="predict"]')
    assert page.is_visible("#form-predict input[name=top_k]")


def test_bad_upload_shows_the_servers_error_next_to_the_field(page, live_server):
    before = job_count(live_server)
    page.goto(live_server + "/")
    form = "#form-style_transfer"
    page.set_input_files(f"{form} input[name=content]", png_file("notes.png", b"not a picture"))
    page.set_input_files(f"{form} input[name=style]", png_file("s.png", tiny_png()))
    page.click(f"{form} button[type=submit]")
    error = page.locator(f'{form} [data-error-for="content"]')
    error.wait_for(state="visible")
    assert "content" in error.inner_text()
    assert "Not started" in page.inner_text("#form-error")
    assert job_count(live_server) == before


def test_style_job_progress_preview_and_result(page, live_server, screenshots):
    job_id = submit_style(page, live_server, size=64, iterations=150)  # seen while running
    page.wait_for_selector("#status.status-processing", timeout=60_000)
    page.wait_for_selector("#result:not([hidden])", timeout=30_000)  # the live preview
    page.wait_for_selector("#charts svg.chart polyline")  # the loss curve, drawn while it runs
    assert "preview" in page.inner_text("#result-caption")
    page.screenshot(path=screenshots / "running.png", full_page=True)

    # 12 s on two idle cores; a slow or shared CI machine can take many times that
    page.wait_for_selector("#status.status-succeeded", timeout=180_000)
    assert page.inner_text("#progress-text").startswith("100")
    expect(page.locator("#bar")).to_have_attribute("value", "100.0")  # a <progress>
    result = page.locator("#result")
    assert result.get_attribute("src").endswith("/result.png")
    # the script swaps the preview for the result: wait for the new image to decode
    page.wait_for_function(
        "img => img.complete && img.src.endsWith('/result.png') && img.naturalWidth > 0",
        arg=result.element_handle(),
        timeout=15_000,
    )
    assert result.evaluate("img => img.naturalWidth") == 64
    assert page.is_visible("#compare")  # before/after
    assert page.locator("#downloads a", has_text="result.png").count() == 1
    assert not page.is_visible("#cancel")
    page.screenshot(path=screenshots / "finished.png", full_page=True)

    job = requests.get(f"{live_server}/api/v1/jobs/{job_id}", timeout=10).json()
    assert job["status"] == "succeeded" and job["thumbnail"]["url"].endswith("/thumbnail.jpg")


def test_cancel_a_running_job(page, live_server):
    job_id = submit_style(
        page, live_server, size=64, iterations=3000, extra={"multiscale": "false"}
    )
    page.wait_for_selector("#status.status-processing", timeout=60_000)
    page.click("#cancel")
    page.wait_for_selector("#status.status-canceled", timeout=30_000)
    assert page.is_visible("#delete-form") and not page.is_visible("#cancel")
    job = requests.get(f"{live_server}/api/v1/jobs/{job_id}", timeout=10).json()
    assert job["status"] == "canceled" and job["outputs"] == []


def test_gallery_filters_thumbnails_and_delete(page, live_server, screenshots):
    page.goto(live_server + "/jobs")
    succeeded = page.locator('.card[data-status="succeeded"] img[src$="/thumbnail.jpg"]')
    assert succeeded.count() >= 1
    # Thumbnails are loading="lazy": the page's load event does not wait for them, so wait
    # for the first one itself (bounded) instead of reading it once.
    thumbnail = succeeded.first
    thumbnail.scroll_into_view_if_needed()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0",
        arg=thumbnail.element_handle(),
        timeout=15_000,
    )
    page.screenshot(path=screenshots / "gallery.png", full_page=True)

    # Submitting the filter form navigates: wait for the new page before counting cards.
    page.select_option("#filters select[name=status]", "canceled")
    page.click("#filters button")
    page.wait_for_url(re.compile(r".*/jobs\?status=canceled&kind=$"))
    cards = page.locator(".card")
    expect(cards.first).to_be_visible()
    assert set(cards.evaluate_all("cs => cs.map(c => c.dataset.status)")) == {"canceled"}
    canceled = cards.first.get_attribute("data-job")

    page.select_option("#filters select[name=kind]", "fine_tune")
    page.click("#filters button")
    page.wait_for_url(re.compile(r".*/jobs\?status=canceled&kind=fine_tune$"))
    expect(page.locator("#empty")).to_be_visible()
    expect(page.locator(".card")).to_have_count(0)

    page.goto(live_server + "/jobs?status=canceled")
    page.click(f'.card[data-job="{canceled}"] form.delete button')
    expect(page.locator(f'.card[data-job="{canceled}"]')).to_have_count(0)  # after the redirect
    assert page.url.endswith("/jobs?status=canceled")
    assert requests.get(f"{live_server}/api/v1/jobs/{canceled}", timeout=10).status_code == 404


def test_submit_and_view_without_javascript(nojs_page, live_server):
    page = nojs_page
    page.goto(live_server + "/")
    form = "#form-style_transfer"
    page.set_input_files(f"{form} input[name=content]", png_file("c.png", tiny_png(64, 48)))
    page.set_input_files(f"{form} input[name=style]", png_file("s.png", tiny_png()))
    page.fill(f"{form} input[name=size]", "48")
    page.click(f"{form} details.expert summary")
    page.fill(f"{form} input[name=iterations]", "4")
    page.click(f"{form} button[type=submit]")
    page.wait_for_url(JOB_URL)
    page.wait_for_selector("#status.status-succeeded", timeout=90_000)  # the page refreshes itself
    assert page.locator("#result").get_attribute("src").endswith("/result.png")
    assert page.locator("#downloads a").count() >= 2

    # a server-side field error, without the page's script
    page.goto(live_server + "/")
    page.set_input_files(f"{form} input[name=content]", png_file("c.png", tiny_png()))
    page.set_input_files(f"{form} input[name=style]", png_file("s.png", b"GIF89a broken"))
    page.click(f"{form} button[type=submit]")
    expect(page.locator(f'{form} [data-error-for="style"]')).to_contain_text("style")


def test_docs_page_renders_the_openapi_description(page, live_server):
    page.goto(live_server + "/docs")
    assert page.locator("section.operation").count() >= 8
    assert page.is_visible("#fields-StyleTransfer") and page.is_visible("#fields-FineTune")
    assert "iterations" in page.inner_text("#submitJob")
    spec = requests.get(live_server + page.get_attribute("#openapi-link", "href"), timeout=10)
    assert spec.json()["openapi"].startswith("3.1")

"""Gallery (thumbnails, filters, pages, delete) and the kind-specific result views."""

from __future__ import annotations

import io
import re

from shared.storage import job_key, open_storage
from tests.conftest import tiny_png
from tests.web.helpers import as_json, csrf_token, make_job


def _cards(html: str) -> list[str]:
    return re.findall(r'class="card" data-job="([0-9a-f]{32})"', html)


def test_gallery_shows_thumbnails_filters_and_pages(client, settings):
    done = make_job(
        settings,
        files={"content.png": ("content", tiny_png()), "thumbnail.jpg": ("thumbnail", tiny_png())},
    )
    queued = make_job(settings, status="queued", files={"content.png": ("content", tiny_png())})
    tuned = make_job(settings, kind="fine_tune", status="failed", error_code="internal")
    html = client.get("/jobs").get_data(as_text=True)
    assert _cards(html) == [tuned, queued, done]  # newest first
    assert f"/api/v1/jobs/{done}/files/thumbnail.jpg" in html
    assert f"/api/v1/jobs/{queued}/files/content.png" in html  # no thumbnail yet: its input
    assert "#1 in queue" in html

    assert _cards(client.get("/jobs?status=succeeded").get_data(as_text=True)) == [done]
    assert _cards(client.get("/jobs?kind=fine_tune").get_data(as_text=True)) == [tuned]
    assert 'id="empty"' in client.get("/jobs?kind=predict").get_data(as_text=True)
    assert client.get("/jobs?status=bogus").status_code == 400

    for _ in range(24):
        make_job(settings)
    first = client.get("/jobs").get_data(as_text=True)
    assert len(_cards(first)) == 24
    next_url = re.search(r'href="(/jobs\?cursor=[^"]+)" id="next-page"', first).group(1)
    second = client.get(next_url.replace("&amp;", "&")).get_data(as_text=True)
    assert len(_cards(second)) == 3 and not set(_cards(first)) & set(_cards(second))
    assert 'id="next-page"' not in second and "newest" in second


def test_delete_from_the_gallery_only_for_finished_jobs(client, settings):
    done = make_job(settings, files={"result.png": ("result", tiny_png())})
    running = make_job(settings, status="processing")
    html = client.get("/jobs").get_data(as_text=True)
    assert f"/jobs/{done}/delete" in html and f"/jobs/{running}/delete" not in html
    token = csrf_token(client)
    response = client.post(
        f"/jobs/{done}/delete", data={"csrf_token": token, "next": "/jobs?status=succeeded"}
    )
    assert response.status_code == 303 and response.headers["Location"] == "/jobs?status=succeeded"
    assert client.get(f"/api/v1/jobs/{done}").status_code == 404
    assert not open_storage(settings.storage_url).exists(job_key(done, "result.png"))
    refused = client.post(f"/jobs/{running}/delete", data={"csrf_token": token})
    assert refused.status_code == 409 and "cancel it" in refused.get_data(as_text=True)
    # an off-site "next" is not followed
    other = make_job(settings)
    away = client.post(
        f"/jobs/{other}/delete", data={"csrf_token": token, "next": "//evil.example"}
    )
    assert away.headers["Location"] == "/jobs"


def test_style_job_page_draws_the_loss_curve(client, settings):
    history = [{"t": i / 2, "step": i, "loss": 1000.0 / (i + 1)} for i in range(1, 30)]
    job = make_job(
        settings,
        status="processing",
        progress_history=history,
        progress_current=29,
        progress_total=60,
        progress_stage="scale 1/2",
    )
    html = client.get(f"/jobs/{job}").get_data(as_text=True)
    assert 'data-chart="loss"' in html and "<polyline" in html and "log scale" not in html
    assert "48.3%" in html and "scale 1/2" in html and 'id="cancel-form"' in html
    fragment = client.get(f"/jobs/{job}/charts").get_data(as_text=True)
    assert fragment.startswith("<svg") and "<polyline" in fragment


def test_fine_tune_page_shows_curves_confusion_matrix_and_per_class_table(client, settings):
    metrics = {
        "accuracy": 0.75,
        "best_epoch": 2,
        "classes": ["ants", "bees"],
        "confusion_matrix": [[3, 1], [1, 3]],
        "per_class": {
            "ants": {"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4},
            "bees": {"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4},
        },
    }
    history = [
        {"step": e, "loss": 1.0 / e, "epoch": e, "val_loss": 1.2 / e, "val_accuracy": 0.5 + e / 10}
        for e in (1, 2, 3)
    ]
    job = make_job(
        settings,
        kind="fine_tune",
        params={"backbone": "vgg19", "strategy": "linear_probe"},
        files={
            "data.zip": ("dataset", b"PK"),
            "metrics.json": ("result", as_json(metrics)),
            "model.pt": ("result", b"x"),
        },
        progress_history=history,
    )
    html = client.get(f"/jobs/{job}").get_data(as_text=True)
    assert 'data-chart="loss"' in html and 'data-chart="accuracy"' in html
    assert "val_accuracy" in html and "val_loss" in html
    confusion = re.search(r'<table class="confusion".*?</table>', html, re.S).group(0)
    assert confusion.count('class="diag"') == 2 and "<th>bees</th>" in confusion
    per_class = re.search(r'<table class="per-class".*?</table>', html, re.S).group(0)
    assert per_class.count("0.750") == 6
    assert f"/?kind=predict&amp;model={job}" in html  # "label images with this model"
    assert "Download model.pt" in html and "Download metrics.json" in html


def test_predict_page_shows_images_with_their_labels(client, settings):
    predictions = {
        "classes": ["ants", "bees"],
        "predictions": [
            {
                "name": "one.jpg",
                "top": [
                    {"label": "bees", "probability": 0.9},
                    {"label": "ants", "probability": 0.1},
                ],
            },
            {"name": "two.jpg", "top": [{"label": "ants", "probability": 0.6}]},
        ],
    }
    job = make_job(
        settings,
        kind="predict",
        params={"model": "a" * 32},
        files={
            "image-1.png": ("image", tiny_png()),
            "image-2.png": ("image", tiny_png()),
            "predictions.json": ("result", as_json(predictions)),
        },
    )
    html = client.get(f"/jobs/{job}").get_data(as_text=True)
    figures = re.findall(r'<figure class="prediction">(.*?)</figure>', html, re.S)
    assert len(figures) == 2
    assert "image-1.png" in figures[0] and "<strong>bees</strong>" in figures[0]
    assert "90.0%" in figures[0] and "<strong>ants</strong>" in figures[1]


def test_fine_tune_summary_reads_the_engines_metrics_keys(client, settings):
    """The keys worker/engines/finetune.py writes (and the runner's ignored_files)."""
    metrics = {
        "accuracy": 0.8125,
        "best_epoch": 4,
        "val_loss": 0.4321,
        "classes": ["ants", "bees"],
        "macro_f1": 0.8,
        "per_class": {
            "bees": {"precision": 0.9, "recall": 0.7, "f1": 0.7875, "support": 10},
            "ants": {"precision": 0.7, "recall": 0.9, "f1": 0.7875, "support": 6},
        },
        "confusion_matrix": [[5, 1], [3, 7]],
        "epochs": [{"epoch": 1, "loss": 0.9}],
        "dataset": {
            "train": {"ants": 20, "bees": 30},
            "val": {"ants": 6, "bees": 10},
            "unreadable": 2,
            "unreadable_files": ["x.png", "y.png"],
        },
        "config": {"backbone": "vgg19"},
        "timings": {"seconds": 12.5},
        "device": "cpu",
        "ignored_files": 3,
    }
    job = make_job(settings, kind="fine_tune", files={"metrics.json": ("result", as_json(metrics))})
    html = client.get(f"/jobs/{job}").get_data(as_text=True)
    table = re.search(r'<table class="summary">.*?</table>', html, re.S).group(0)
    summary = dict(re.findall(r"<tr><th>([^<]+)</th><td>([^<]+)</td></tr>", table))
    assert summary == {
        "accuracy": "0.8125",
        "macro F1": "0.8",
        "best epoch": "4",
        "validation loss": "0.4321",
        "ignored files": "3",
        "device": "cpu",
        "training images": "50",
        "validation images": "16",
        "unreadable images": "2",
        "seconds": "12.5",
    }
    per_class = re.search(r'<table class="per-class".*?</table>', html, re.S).group(0)
    assert per_class.index("<th>ants</th>") < per_class.index("<th>bees</th>")  # class order


def test_broken_result_files_degrade_to_less_not_to_an_error(client, settings):
    job = make_job(settings, kind="fine_tune", files={"metrics.json": ("result", b"{not json")})
    assert client.get(f"/jobs/{job}").status_code == 200
    job = make_job(settings, kind="predict", files={"predictions.json": ("result", b"[1, 2]")})
    assert client.get(f"/jobs/{job}").status_code == 200
    wrong_types = {
        "accuracy": True,
        "classes": "ants",
        "confusion_matrix": [[1, "x"]],
        "per_class": {"ants": {"precision": "high", "support": None}, "bees": 3},
        "dataset": {"train": {"ants": "many"}, "unreadable": []},
        "timings": [],
    }
    job = make_job(
        settings, kind="fine_tune", files={"metrics.json": ("result", as_json(wrong_types))}
    )
    html = client.get(f"/jobs/{job}").get_data(as_text=True)
    assert 'id="confusion"' not in html and "<th>ants</th>" in html  # the per-class row
    odd = {"predictions": [{"name": 1, "top": [{"label": "a", "probability": "high"}, 5]}, 2]}
    job = make_job(
        settings,
        kind="predict",
        files={"image-1.png": ("image", tiny_png()), "predictions.json": ("result", as_json(odd))},
    )
    html = client.get(f"/jobs/{job}").get_data(as_text=True)
    assert "<strong>a</strong>" in html and "0.0%" in html


def test_form_drops_empty_fields_and_names_unknown_kinds(client):
    token = csrf_token(client)
    empty_expert = {name: "" for name in ("iterations", "seed", "style_weights", "tv_weight")}
    response = client.post(
        "/jobs",
        data={
            "csrf_token": token,
            "kind": "style_transfer",
            "size": "48",
            **empty_expert,
            "content": (io.BytesIO(tiny_png()), "c.png"),
            "style": (io.BytesIO(tiny_png()), "s.png"),
        },
        content_type="multipart/form-data",
    )
    assert response.status_code == 303
    job_id = response.headers["Location"].rsplit("/", 1)[1]
    client.post(f"/api/v1/jobs/{job_id}/cancel")
    page = client.get("/?kind=fine_tune").get_data(as_text=True)
    tag = re.search(r'<form[^>]*id="form-fine_tune"[^>]*>', page).group(0)
    assert "hidden" not in tag  # ?kind= picks the visible form without JavaScript
    assert "hidden" in re.search(r'<form[^>]*id="form-style_transfer"[^>]*>', page).group(0)


def test_form_errors_come_back_as_json_for_the_pages_script(client):
    token = csrf_token(client)
    response = client.post(
        "/jobs",
        data={
            "csrf_token": token,
            "kind": "style_transfer",
            "size": "99999",
            "content": (io.BytesIO(tiny_png()), "c.png"),
            "style": (io.BytesIO(tiny_png()), "s.png"),
        },
        content_type="multipart/form-data",
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 400 and response.json["error"]["field"] == "size"

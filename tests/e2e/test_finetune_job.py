"""End to end over HTTP: a dataset archive → a real worker fine-tunes → predict with it."""

from __future__ import annotations

import time

import requests

from tests.e2e.test_style_job import TERMINAL, poll
from tests.finetune_data import make_tar, make_zip, shape_files
from worker.engines.finetune import load_model


def submit(base: str, kind: str, files, **fields) -> requests.Response:
    return requests.post(
        f"{base}/api/v1/jobs",
        data={"kind": kind, **{k: str(v) for k, v in fields.items()}},
        files=files,
        timeout=60,
    )


def test_fine_tune_then_predict(live_server, e2e_worker):
    data = shape_files(16, seed=7)
    archive = make_tar(data, gz=True)
    response = submit(
        live_server, "fine_tune", {"dataset": ("shapes.tar.gz", archive)}, image_size=48, seed=11
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["params"]["backbone"] == "vgg19" and job["params"]["strategy"] == "linear_probe"
    assert job["inputs"][0]["name"] == "dataset.tar.gz"
    done = poll(live_server, job["id"], timeout=240)
    assert done["status"] == "succeeded", done["error"]
    assert {"model.pt", "metrics.json", "model_card.md"} <= {o["name"] for o in done["outputs"]}
    assert done["metrics"]["accuracy"] > 0.9 and done["metrics"]["classes"] == ["discs", "squares"]
    history = done["progress"]["history"]
    assert any("val_accuracy" in point for point in history)
    assert done["progress"]["percent"] == 100.0

    files_url = live_server + done["urls"]["self"] + "/files/"
    metrics = requests.get(files_url + "metrics.json", timeout=10).json()
    assert metrics["confusion_matrix"] and metrics["per_class"]["discs"]["support"] >= 1
    checkpoint = requests.get(files_url + "model.pt", timeout=30).content
    model = load_model(checkpoint)
    recorded = metrics["val_predictions"]
    tops = model.predict([data[p["name"]] for p in recorded], top_k=1)
    assert [t[0]["label"] for t in tops] == [p["predicted"] for p in recorded]
    page = requests.get(f"{live_server}/jobs/{job['id']}", timeout=10).text
    assert 'id="confusion"' in page and "discs" in page and "<svg" in page  # the real job's page

    images = [
        ("image", (f"my photo {i}.png", data[f"squares/00{i}.png"], "image/png")) for i in range(3)
    ]
    response = submit(live_server, "predict", images, model=job["id"], top_k=2)
    assert response.status_code == 202, response.text
    predicted = poll(live_server, response.json()["id"], timeout=120)
    assert predicted["status"] == "succeeded", predicted["error"]
    body = requests.get(
        live_server + predicted["urls"]["self"] + "/files/predictions.json", timeout=10
    ).json()
    assert body["classes"] == ["discs", "squares"]
    assert [p["name"] for p in body["predictions"]] == [f"my photo {i}.png" for i in range(3)]
    page = requests.get(f"{live_server}/jobs/{predicted['id']}", timeout=10).text
    assert "my photo 0.png" in page and "squares" in page
    for prediction in body["predictions"]:
        assert len(prediction["top"]) == 2
        assert {"label", "probability"} == set(prediction["top"][0])
        assert prediction["top"][0]["probability"] >= prediction["top"][1]["probability"]


def test_unreadable_images_fail_with_invalid_input(live_server, e2e_worker):
    broken = {name: b"\x89PNG\r\n\x1a\n but not really" for name in shape_files(6)}
    response = submit(
        live_server, "fine_tune", {"dataset": ("bad.zip", make_zip(broken))}, image_size=32
    )
    assert response.status_code == 202, response.text
    done = poll(live_server, response.json()["id"], timeout=120)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "invalid_input"
    assert "could not be read" in done["error"]["message"]
    assert done["outputs"] == []


def test_cancel_running_fine_tune_and_predict_on_it_is_refused(live_server, e2e_worker):
    archive = make_zip(shape_files(20, seed=3))
    response = submit(
        live_server,
        "fine_tune",
        {"dataset": ("d.zip", archive)},
        strategy="full",
        image_size=64,
        epochs=200,
        early_stopping=0,
    )
    job = response.json()
    poll(live_server, job["id"], until={"processing"} | TERMINAL, timeout=120)
    refused = submit(live_server, "predict", [("image", ("x.png", archive[:10]))], model=job["id"])
    assert refused.status_code == 409 and refused.json()["error"]["field"] == "model"
    requested = time.monotonic()
    requests.post(f"{live_server}/api/v1/jobs/{job['id']}/cancel", timeout=10)
    done = poll(live_server, job["id"], timeout=60)
    assert done["status"] == "canceled"
    assert time.monotonic() - requested < 15
    assert not [o for o in done["outputs"] if o["name"] == "model.pt"]

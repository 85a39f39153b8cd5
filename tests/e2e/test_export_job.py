"""End to end: a fine_tune job exports model.onnx and TorchScript; predict runs on both."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.e2e.test_finetune_job import submit
from tests.e2e.test_style_job import poll
from tests.finetune_data import make_zip, shape_files

EXPORTED = {"model.pt", "model.onnx", "model.torchscript.pt", "metrics.json", "model_card.md"}


def _labels(base: str, model: str, images: list, **fields) -> list[str]:
    response = submit(base, "predict", images, model=model, top_k=1, **fields)
    assert response.status_code == 202, response.text
    done = poll(base, response.json()["id"], timeout=120)
    assert done["status"] == "succeeded", done["error"]
    url = base + done["urls"]["self"] + "/files/predictions.json"
    body = requests.get(url, timeout=10).json()
    assert body["runtime"] == fields.get("runtime", "torch")
    return [p["top"][0]["label"] for p in body["predictions"]]


def test_fine_tune_exports_and_predict_agrees_on_both_runtimes(
    live_server, e2e_worker, e2e_settings
):
    if not e2e_settings.database_url.startswith("sqlite"):
        # exporting and both runtimes are the engine's: the database under the job plays
        # no part, and a fine-tune plus two predicts is one of the suite's longest runs
        pytest.skip("runs on SQLite only")
    data = shape_files(10, seed=13)
    archive = make_zip(data)
    response = submit(
        live_server, "fine_tune", {"dataset": ("shapes.zip", archive)}, image_size=48, seed=5
    )
    assert response.status_code == 202, response.text
    job = poll(live_server, response.json()["id"], timeout=300)
    assert job["status"] == "succeeded", job["error"]
    assert EXPORTED <= {o["name"] for o in job["outputs"]}

    files_url = live_server + job["urls"]["self"] + "/files/"
    metrics = requests.get(files_url + "metrics.json", timeout=10).json()
    for fmt, name in [("onnx", "model.onnx"), ("torchscript", "model.torchscript.pt")]:
        assert metrics["export"][fmt]["file"] == name, metrics["export"]
        assert metrics["export"][fmt]["max_abs_diff"] < 1e-4
        assert metrics["export"][fmt]["labels_agree"] is True
    card = requests.get(files_url + "model_card.md", timeout=10).text
    assert 'ort.InferenceSession("model.onnx")' in card and "torch.jit.load" in card
    onnx_bytes = requests.get(files_url + "model.onnx", timeout=30).content
    assert len(onnx_bytes) == metrics["export"]["onnx"]["bytes"]

    names = [n for n in data if n.endswith(("001.png", "004.png", "007.png"))]
    images = [("image", (name.replace("/", "-"), data[name], "image/png")) for name in names]
    on_torch = _labels(live_server, job["id"], images)
    on_onnx = _labels(live_server, job["id"], images, runtime="onnx")
    assert on_onnx == on_torch
    assert sum(label == n.split("/")[0] for label, n in zip(on_onnx, names, strict=True)) >= 5

    # The row says model.onnx exists but its bytes are gone: the worker names runtime.
    storage = Path(e2e_settings.storage_url.removeprefix("file://"))
    for path in (storage / "jobs" / job["id"]).rglob("model.onnx"):
        path.unlink()
    response = submit(live_server, "predict", images[:1], model=job["id"], runtime="onnx")
    assert response.status_code == 202, response.text
    failed = poll(live_server, response.json()["id"], timeout=120)
    assert failed["status"] == "failed" and failed["error"]["code"] == "invalid_input"
    assert "model.onnx" in failed["error"]["message"]
    assert "runtime" in failed["error"]["message"]

"""Fine-tuning benchmark: held-out accuracy, wall time and images/s per backbone × strategy.

Usage: python benchmarks/finetune.py --data PATH/TO/hymenoptera/train [--runs api,engine]

The data folder's ``<class>/<image>`` files are split (stratified, seeded) into a held-out
test part (``--holdout``, never seen by training) and a pool that is zipped and uploaded.

* ``api`` run (the target): a real Redis, a real Celery worker process and the real web
  app on a socket; the clock runs from the start of the archive upload to the job's
  ``succeeded``. The held-out images then go through a ``predict`` job with the model,
  and its predictions.json is scored.
* ``engine`` runs: the engine in this process on the same split, for every
  backbone × strategy asked for; backbones whose weights are not in the torch hub cache
  are reported as unavailable, with the reason.

Accuracy on ~60 held-out images moves by ±2-3 points between splits: ``--seeds`` repeats
the api run on other splits. Results go to ``benchmarks/results/finetune.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def split(data: Path, holdout: float, seed: int) -> tuple[list, list]:
    """(pool, test) lists of (class, path), stratified per class."""
    rng = random.Random(seed)
    pool, test = [], []
    for cls in sorted(p.name for p in data.iterdir() if p.is_dir()):
        files = sorted(f for f in (data / cls).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        rng.shuffle(files)
        cut = round(len(files) * holdout)
        test += [(cls, f) for f in files[:cut]]
        pool += [(cls, f) for f in files[cut:]]
    return pool, test


def zip_pool(pool: list) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for cls, path in pool:
            archive.write(path, f"{cls}/{path.name}")
    return buffer.getvalue()


class Service:
    """Redis + migrated SQLite + one worker subprocess + the web app on a loopback socket."""

    def __init__(self, var: Path) -> None:
        from shared import migrate
        from worker.embedded import start_redis, worker_command

        self.redis, redis_url = start_redis(var)
        self.env = {
            **os.environ,
            "ATELIER_VAR_DIR": str(var),
            "ATELIER_DATABASE_URL": f"sqlite:///{var}/atelier.db",
            "ATELIER_REDIS_URL": redis_url,
            "ATELIER_STORAGE_URL": f"file://{var}/storage",
            "PYTHONPATH": str(ROOT),
        }
        os.environ.update({k: v for k, v in self.env.items() if k.startswith("ATELIER_")})
        migrate.upgrade(self.env["ATELIER_DATABASE_URL"])
        self.log = open(var / "worker.log", "wb")
        self.worker = subprocess.Popen(
            worker_command("gpu,cpu", 1, "bench"),
            env=self.env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        from werkzeug.serving import make_server

        from shared.settings import load_settings
        from web import create_app

        self.settings = load_settings()
        app = create_app({"ATELIER_SETTINGS": self.settings})
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        self._wait_worker()

    def _wait_worker(self) -> None:
        import requests

        for _ in range(600):
            if requests.get(f"{self.base}/healthz", timeout=5).json().get("workers"):
                return
            time.sleep(0.5)
        raise RuntimeError("worker did not come up")

    def close(self) -> None:
        self.server.shutdown()
        for proc in (self.worker, self.redis):
            proc.terminate()
            proc.wait(30)
        self.log.close()


def poll(base: str, job_id: str) -> dict:
    import requests

    while True:
        job = requests.get(f"{base}/api/v1/jobs/{job_id}", timeout=30).json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
        time.sleep(0.5)


def api_run(service: Service, pool: list, test: list, seed: int) -> dict:
    import requests

    archive = zip_pool(pool)
    started = time.monotonic()
    response = requests.post(
        f"{service.base}/api/v1/jobs",
        data={
            "kind": "fine_tune",
            "backbone": "vgg19",
            "strategy": "linear_probe",
            "seed": str(seed),
        },
        files={"dataset": ("dataset.zip", archive, "application/zip")},
        timeout=120,
    )
    response.raise_for_status()
    job = poll(service.base, response.json()["id"])
    wall = time.monotonic() - started
    if job["status"] != "succeeded":
        return {"status": job["status"], "error": job["error"], "seconds": round(wall, 1)}
    metrics = requests.get(
        f"{service.base}{job['urls']['self']}/files/metrics.json", timeout=30
    ).json()
    files = [("image", (f"{cls}__{p.name}", p.read_bytes(), "image/jpeg")) for cls, p in test]
    started_predict = time.monotonic()
    response = requests.post(
        f"{service.base}/api/v1/jobs",
        data={"kind": "predict", "model": job["id"], "top_k": "1"},
        files=files,
        timeout=120,
    )
    response.raise_for_status()
    predict = poll(service.base, response.json()["id"])
    predict_wall = time.monotonic() - started_predict
    body = requests.get(
        f"{service.base}{predict['urls']['self']}/files/predictions.json", timeout=30
    ).json()
    correct = sum(p["name"].split("__")[0] == p["top"][0]["label"] for p in body["predictions"])
    return {
        "run": "api",
        "backbone": "vgg19",
        "strategy": "linear_probe",
        "seed": seed,
        "status": job["status"],
        "archive_bytes": len(archive),
        "train_pool_images": len(pool),
        "heldout_images": len(test),
        "heldout_accuracy": round(correct / len(test), 4),
        "job_val_accuracy": metrics["accuracy"],
        "upload_to_succeeded_seconds": round(wall, 1),
        "images_per_second": round(len(pool) / wall, 2),
        "predict_seconds": round(predict_wall, 1),
        "engine_timings": metrics["timings"],
        "precision": metrics["config"]["precision"],
        "target_met": (correct / len(test) >= 0.93 and wall <= 300),
    }


def engine_run(pool: list, test: list, backbone: str, strategy: str, args) -> dict:
    from worker.engines.datasets import ImageDataset, LabeledImage
    from worker.engines.errors import EngineError
    from worker.engines.finetune import FinetuneConfig, fine_tune, load_model

    classes = sorted({cls for cls, _ in pool})
    items = [LabeledImage(f"{c}/{p.name}", classes.index(c), p.read_bytes()) for c, p in pool]
    params = {
        "backbone": backbone,
        "strategy": strategy,
        "seed": args.seed,
        "image_size": args.image_size,
        "epochs": args.epochs,
    }
    started = time.monotonic()
    try:
        result = fine_tune(ImageDataset(classes, items), FinetuneConfig.resolve(**params))
    except EngineError as exc:
        import torch

        error = str(exc).replace(torch.hub.get_dir(), "<torch hub dir>")  # no machine paths
        return {
            "run": "engine",
            "backbone": backbone,
            "strategy": strategy,
            "status": "unavailable",
            "error": error,
        }
    wall = time.monotonic() - started
    model = load_model(result.checkpoint)
    top = model.predict([p.read_bytes() for _, p in test], top_k=1)
    correct = sum(t[0]["label"] == cls for t, (cls, _) in zip(top, test, strict=True))
    return {
        "run": "engine",
        "backbone": backbone,
        "strategy": strategy,
        "status": "succeeded",
        "image_size": result.config.image_size,
        "epochs": result.config.epochs,
        "heldout_accuracy": round(correct / len(test), 4),
        "job_val_accuracy": result.metrics["accuracy"],
        "seconds": round(wall, 1),
        "images_per_second": round(len(pool) / wall, 2),
        "timings": result.metrics["timings"],
        "precision": result.config.precision,
    }


def main() -> int:
    from shared.kinds.fine_tune import BACKBONES, SPEC, STRATEGIES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="<class>/<image> folder")
    parser.add_argument("--holdout", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=1, help="api runs on this many splits")
    parser.add_argument("--runs", default="api,engine")
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    image_size = SPEC.param("image_size").default
    parser.add_argument("--image-size", type=int, default=image_size, help="engine runs")
    parser.add_argument("--epochs", type=int, default=None, help="engine runs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/finetune.json")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per poll
    runs = args.runs.split(",")
    results = []
    if "api" in runs:
        with tempfile.TemporaryDirectory(prefix="atelier-bench-") as tmp:
            service = Service(Path(tmp))
            try:
                for seed in range(args.seed, args.seed + args.seeds):
                    pool, test = split(args.data, args.holdout, seed)
                    results.append(api_run(service, pool, test, seed))
                    print(json.dumps(results[-1]), flush=True)
            finally:
                service.close()
    if "engine" in runs:
        import torch

        pool, test = split(args.data, args.holdout, args.seed)
        for backbone in args.backbones.split(","):
            for strategy in args.strategies.split(","):
                torch.manual_seed(args.seed)
                results.append(engine_run(pool, test, backbone, strategy, args))
                print(json.dumps(results[-1]), flush=True)
    report = {
        "benchmark": "finetune",
        "data": args.data.name,
        "holdout": args.holdout,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_at_end": os.getloadavg(),
        },
        "note": "api: real Redis + Celery worker + web; time from upload start to succeeded",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fine-tuning benchmark: held-out accuracy, wall time and images/s per backbone × strategy.

Usage: python benchmarks/finetune.py --data PATH/TO/hymenoptera/train [--runs accuracy,wall]

* ``accuracy`` (the default linear probe, honestly measured): the test fold is fixed
  before any tuning — the ``--test-per-class`` images of each class whose file names sort
  first — and is never used to choose anything. Each image's features are computed once
  with the default backbone; then, per seed, exactly what a job does on them (the
  engine's own ``_probe_head``): the seeded ``val_split`` split of the rest, λ by
  cross-validation on the training part and that head's validation accuracy (the job's
  metrics), then the shipped head refitted on all of the rest; the shipped head's
  accuracy on the fixed fold (worst, mean, spread over ``--seeds``). Repeated stratified
  k-fold on the rest (each fold's training part is a job's dataset, split and refitted
  the same way; the held-out fold is never seen) gives mean ± std over folds and repeats.
* ``wall``: one whole default job through the engine (``fine_tune``) on every image.

The data folder's ``<class>/<image>`` files are split (stratified, seeded) into a held-out
test part (``--holdout``, never seen by training) and a pool that is zipped and uploaded.

* ``api`` run (the target): a real Redis, a real Celery worker process and the real web
  app on a socket; the clock runs from the start of the archive upload to the job's
  ``succeeded``. The held-out images then go through a ``predict`` job with the model,
  and its predictions.json is scored.
* ``engine`` runs: the engine in this process on the same split, for every
  backbone × strategy asked for; backbones whose weights are not in the torch hub cache
  are reported as unavailable, with the reason.

Accuracy on ~60 held-out images moves by ±2-3 points between splits: ``--api-seeds``
repeats the api run on other splits. Results go to ``benchmarks/results/finetune.json``.
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
from dataclasses import replace
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
    record = {
        "run": "api",
        "backbone": "vgg19",
        "strategy": "linear_probe",
        "seed": seed,
        "status": job["status"],
        "archive_bytes": len(archive),
        "train_pool_images": len(pool),
        "heldout_images": len(test),
        "job_val_accuracy": metrics["accuracy"],
        "upload_to_succeeded_seconds": round(wall, 1),
        "images_per_second": round(len(pool) / wall, 2),
        "engine_timings": metrics["timings"],
        "precision": metrics["config"]["precision"],
    }
    if not test:  # --holdout 0: the whole folder uploaded, only the time is measured
        return {**record, "target_met": wall <= 120}
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
        **record,
        "heldout_accuracy": round(correct / len(test), 4),
        "predict_seconds": round(predict_wall, 1),
        "target_met": (correct / len(test) >= 0.93 and wall <= 120),
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


def fixed_test_fold(data: Path, per_class: int) -> tuple[list, list]:
    """(pool, test): the ``per_class`` first file names of each class are the test fold."""
    pool, test = [], []
    for cls in sorted(p.name for p in data.iterdir() if p.is_dir()):
        files = sorted(f for f in (data / cls).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        test += [(cls, f) for f in files[:per_class]]
        pool += [(cls, f) for f in files[per_class:]]
    return pool, test


def _features(items: list, config, flip: bool = False) -> tuple:
    """Every image once through the default job's backbone, as the engine computes them
    (``flip``: the mirrored centre crop, as an augmenting job's extra view)."""
    import torch

    from worker.engines import datasets as ds
    from worker.engines.backbones import build_backbone
    from worker.engines.finetune import _autocast, _inputs, _prepare

    backbone = _prepare(build_backbone(config.backbone), config.device, config.precision).eval()
    crops = [
        ds.center_crop(ds.decode(p.read_bytes(), config.image_size), config.image_size)
        for _, p in items
    ]
    feats = []
    with torch.inference_mode():
        for i in range(0, len(crops), config.batch_size):
            batch = torch.stack(crops[i : i + config.batch_size]).float().div_(255.0)
            batch = batch.flip(3) if flip else batch
            with _autocast(config.device, config.precision):
                out = backbone(_inputs(batch, config.device, config.precision))
            feats.append(out.float())
    classes = sorted({c for c, _ in items})
    return torch.cat(feats).clone(), torch.tensor([classes.index(c) for c, _ in items])


def _job_split(pool_idx: list[int], labels, names: list[str], val_split: float, seed: int):
    """datasets.split on indices: per class in name order, a seeded shuffle, val first."""
    rng, train, val = random.Random(seed), [], []
    for label in sorted({int(labels[i]) for i in pool_idx}):
        group = sorted((i for i in pool_idx if labels[i] == label), key=lambda i: names[i])
        rng.shuffle(group)
        n_val = min(len(group) - 1, max(1, round(len(group) * val_split)))
        val += group[:n_val]
        train += group[n_val:]
    return train, val


def _job_head_accuracy(feats, labels, pool_idx, test_idx, names, config, seed: int) -> dict:
    """What a default job does with the cached features of ``pool_idx`` (its dataset):
    the seeded split, the engine's probe head (reported on val, refitted on all); the
    shipped head's accuracy on ``test_idx``."""
    import torch

    from worker.engines.finetune import _Best, _Features, _probe_head, make_head
    from worker.engines.finetune_progress import Tracker

    config = replace(config, seed=seed)
    train, val = _job_split(list(pool_idx), labels, names, config.val_split, seed)
    t, v = torch.tensor(train), torch.tensor(val)
    job = _Features(
        feats[t], labels[t], feats[v], labels[v], 0.0, len(pool_idx), len(t), feats[v], labels[v]
    )
    classes = int(labels.max()) + 1
    head = make_head(feats.shape[1], classes)
    record, val_preds = _probe_head(
        head, job, config, Tracker(None, config.epochs), _Best(), classes
    )
    with torch.no_grad():
        correct = (head(feats[test_idx]).argmax(1) == labels[test_idx]).float().mean().item()
    return {
        "accuracy": correct,
        "l2": record["l2"],
        "job_val_accuracy": round((val_preds == labels[v]).float().mean().item(), 4),
    }


def _summary(values: list[float]) -> dict:
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
    return {
        "n": len(values),
        "mean": round(mean, 4),
        "std": round(std, 4),
        "worst": round(min(values), 4),
        "spread": round(max(values) - min(values), 4),
    }


def accuracy_run(args) -> dict:
    """Fixed test fold over seeds, and repeated stratified k-fold on the rest."""
    import torch

    from worker.engines.finetune import FinetuneConfig
    from worker.engines.probe import stratified_folds

    config = FinetuneConfig.resolve(seed=0)
    pool, test = fixed_test_fold(args.data, args.test_per_class)
    started = time.monotonic()
    feats, labels = _features(pool + test, config)
    feature_seconds = time.monotonic() - started
    names = [f"{cls}/{path.name}" for cls, path in pool + test]  # as a job names them
    n_pool = len(pool)
    test_idx = torch.arange(n_pool, n_pool + len(test))
    fixed = []
    for seed in range(args.seeds):
        job = _job_head_accuracy(feats, labels, range(n_pool), test_idx, names, config, seed)
        fixed.append({"seed": seed, **job, "accuracy": round(job["accuracy"], 4)})
    kfold = []
    for repeat in range(args.repeats):
        for held in stratified_folds(labels[:n_pool], args.folds, 1000 + repeat):
            keep = torch.ones(n_pool, dtype=torch.bool)
            keep[held] = False
            idx = keep.nonzero().flatten().tolist()
            job = _job_head_accuracy(feats, labels, idx, held, names, config, repeat)
            kfold.append(job["accuracy"])
    return {
        "run": "accuracy",
        "backbone": config.backbone,
        "strategy": config.strategy,
        "precision": config.precision,
        "feature_layers": list(_feature_layers(config.backbone)),
        "shipped_head": "refitted on train+val with the λ chosen by CV on the train part",
        "pool_images": n_pool,
        "test_fold": {
            "rule": f"the {args.test_per_class} first file names per class, fixed before tuning",
            "images": len(test),
            "per_seed": fixed,
            **_summary([f["accuracy"] for f in fixed]),
        },
        "kfold": {"folds": args.folds, "repeats": args.repeats, **_summary(kfold)},
        "feature_seconds": round(feature_seconds, 1),
        "target_met": min(f["accuracy"] for f in fixed) >= 0.93,
    }


def _feature_layers(backbone: str) -> tuple:
    from worker.engines.backbones import build_backbone

    return build_backbone(backbone, pretrained=False).feature_layers


def wall_run(args) -> dict:
    """One default job through the engine on every image: the wall-time target."""
    from worker.engines.datasets import ImageDataset, LabeledImage
    from worker.engines.finetune import FinetuneConfig, fine_tune

    pool, test = fixed_test_fold(args.data, 0)
    classes = sorted({cls for cls, _ in pool})
    items = [LabeledImage(f"{c}/{p.name}", classes.index(c), p.read_bytes()) for c, p in pool]
    started = time.monotonic()
    result = fine_tune(ImageDataset(classes, items), FinetuneConfig.resolve(seed=args.seed))
    wall = time.monotonic() - started
    return {
        "run": "wall",
        "images": len(items),
        "strategy": result.config.strategy,
        "precision": result.config.precision,
        "seconds": round(wall, 1),
        "job_val_accuracy": result.metrics["accuracy"],
        "head": {k: v for k, v in result.metrics["head"].items() if k != "scores"},
        "timings": result.metrics["timings"],
        "target_met": wall <= 120,
    }


def _command() -> str:
    """This run's command line, the data folder's machine path replaced by a placeholder."""
    argv = list(sys.argv[1:])
    for i, arg in enumerate(argv):
        if i > 0 and argv[i - 1] == "--data":
            argv[i] = "<hymenoptera>/train"
        elif arg.startswith("--data="):
            argv[i] = "--data=<hymenoptera>/train"
    return " ".join(["python benchmarks/finetune.py", *argv])


def _kept_results(out: Path, runs: set[str]) -> list[dict]:
    """The earlier file's results of the runs not repeated now, each with the command and
    machine that made it, so rerunning one run does not erase the others' numbers."""
    if not out.exists():
        return []
    old = json.loads(out.read_text())
    return [
        {
            **r,
            "command": r.get("command", old["command"]),
            "machine": r.get("machine", old["machine"]),
        }
        for r in old.get("results", [])
        if r.get("run") not in runs
    ]


def main() -> int:
    from benchmarks.harness import machine
    from shared.kinds.fine_tune import BACKBONES, SPEC, STRATEGIES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="<class>/<image> folder")
    parser.add_argument("--holdout", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=5, help="accuracy: job seeds")
    parser.add_argument("--api-seeds", type=int, default=1, help="api: splits (jobs)")
    parser.add_argument("--runs", default="accuracy,wall", help="accuracy,wall,api,engine")
    parser.add_argument("--test-per-class", type=int, default=15)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    image_size = SPEC.param("image_size").default
    parser.add_argument("--image-size", type=int, default=image_size, help="engine runs")
    parser.add_argument("--epochs", type=int, default=None, help="engine runs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/finetune.json")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per poll
    runs = args.runs.split(",")
    load_at_start = os.getloadavg()
    results = []
    for name, run in (("accuracy", accuracy_run), ("wall", wall_run)):
        if name in runs:
            results.append(run(args))
            print(json.dumps(results[-1]), flush=True)
    if "api" in runs:
        with tempfile.TemporaryDirectory(prefix="atelier-bench-") as tmp:
            service = Service(Path(tmp))
            try:
                for seed in range(args.seed, args.seed + args.api_seeds):
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
            **machine(),
            "platform": platform.platform(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": os.getloadavg(),
        },
        "command": _command(),
        "note": (
            "accuracy: features once per image, the job's head per seed/fold; test fold "
            "fixed before tuning. wall: one default job through the engine. api: real "
            "Redis + Celery worker + web; time from upload start to succeeded"
        ),
        "results": results + _kept_results(args.out, set(runs)),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Evaluation numbers and the model card for a fine-tuned classifier (no torch needed).

The card's "Load" section shows, for model.pt and for each exported format that
``metrics["export"]`` lists as written, the few lines that load it, so a person who
downloads one file knows what to install and what the network expects.
"""

from __future__ import annotations

from typing import Any

from shared.kinds.fine_tune import SPEC


def classification_report(truth: list[int], predicted: list[int], classes: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix (rows: truth)."""
    n = len(classes)
    matrix = [[0] * n for _ in range(n)]
    for t, p in zip(truth, predicted, strict=True):
        matrix[t][p] += 1
    per_class = {}
    for i, name in enumerate(classes):
        tp = matrix[i][i]
        predicted_i = sum(matrix[r][i] for r in range(n))
        support = sum(matrix[i])
        precision = tp / predicted_i if predicted_i else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {
            "precision": round(precision, 5),
            "recall": round(recall, 5),
            "f1": round(f1, 5),
            "support": support,
        }
    correct = sum(matrix[i][i] for i in range(n))
    return {
        "accuracy": round(correct / len(truth), 5) if truth else 0.0,
        "macro_f1": round(sum(c["f1"] for c in per_class.values()) / n, 5) if n else 0.0,
        "per_class": per_class,
        "confusion_matrix": matrix,
    }


def model_card(*, config: dict[str, Any], metrics: dict[str, Any]) -> str:
    """A short Markdown card: what was trained, on what, how well, and how to use it."""
    classes = metrics["classes"]
    lines = [
        f"# Image classifier: {', '.join(classes[:10])}{' …' if len(classes) > 10 else ''}",
        "",
        f"Fine-tuned from **{config['backbone']}** (ImageNet-pretrained) with the "
        f"**{config['strategy']}** strategy by Atelier.",
        "",
        "## Data",
        "",
        "| class | train | validation |",
        "|---|---|---|",
    ]
    for name in classes:
        lines.append(
            f"| {name} | {metrics['dataset']['train'][name]} | {metrics['dataset']['val'][name]} |"
        )
    lines += [
        "",
        f"Unreadable images skipped: {metrics['dataset']['unreadable']}.",
        "",
        "## Results (validation set, best epoch)",
        "",
        f"- accuracy: **{metrics['accuracy']:.4f}** (epoch {metrics['best_epoch']}), "
        f"macro F1 {metrics['macro_f1']:.4f}",
        "",
        *_refit_lines(metrics.get("head") or {}),
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for name, row in metrics["per_class"].items():
        lines.append(
            f"| {name} | {row['precision']:.3f} | {row['recall']:.3f} | "
            f"{row['f1']:.3f} | {row['support']} |"
        )
    # every field of the kind but the two the card's title already names
    shown = {
        p.name: config[p.name]
        for p in SPEC.params
        if p.engine and p.name not in ("backbone", "strategy") and p.name in config
    }
    lines += [
        "",
        "## Training",
        "",
        "Parameters: " + ", ".join(f"`{k}={v}`" for k, v in shown.items()) + ".",
        f"Device: {metrics['device']}; wall time {metrics['timings']['seconds']:.1f} s.",
        "",
        "## Use",
        "",
        "Submit a `predict` job with `model=<this job's id>` and one or more `image` files, "
        "or load `model.pt` with `worker.engines.finetune.load_model`. Inputs are resized so "
        f"the short side is {round(config['image_size'] * 256 / 224)} px and centre-cropped "
        f"to {config['image_size']} px.",
        "",
        *load_section(config["image_size"], metrics.get("export") or {}),
        "## Limits",
        "",
        _limits(metrics),
        "",
    ]
    return "\n".join(lines)


def _refit_lines(head: dict[str, Any]) -> list[str]:
    """What a linear probe's numbers describe: the shipped head was refitted on every
    labelled image, so the validation images were scored by a head that never saw them."""
    if head.get("refit_on") != "train+val":
        return []
    images = head["refit_images"]
    return [
        "These numbers come from a head fitted on the training images only. The head in "
        f"this model was then refitted on all {images['total']} labelled images "
        f"({images['train']} training + {images['val']} validation, λ {head['l2']:g}), "
        "so it has seen the validation images and learnt from more data than the head "
        "scored here.",
        "",
    ]


def _limits(metrics: dict[str, Any]) -> str:
    knows = "The model only knows the classes above and always answers with one of them."
    if (metrics.get("head") or {}).get("refit_on"):
        return (
            "Validation accuracy on a small held-out split is a noisy estimate (a few "
            "images move it by points); nothing was chosen on that split. " + knows
        )
    return (
        "Validation accuracy on a small held-out split is a noisy estimate; the best epoch "
        "was chosen on that same split, so expect slightly lower accuracy on new images. " + knows
    )


# format -> (file, what to install, three lines that load it and compute logits)
LOAD_SNIPPETS = {
    "onnx": (
        "model.onnx",
        "onnxruntime",
        [
            "import onnxruntime as ort",
            'session = ort.InferenceSession("model.onnx")',
            'logits = session.run(["logits"], {"images": batch})[0]',
        ],
    ),
    "torchscript": (
        "model.torchscript.pt",
        "torch",
        [
            "import torch",
            'model = torch.jit.load("model.torchscript.pt").eval()',
            "logits = model(torch.from_numpy(batch))",
        ],
    ),
}


def load_section(image_size: int, export: dict[str, Any]) -> list[str]:
    """The card's "Load" lines: model.pt always, each exported format that was written,
    and the reason for one that was not (so its absence is not a mystery)."""
    lines = [
        "## Load",
        "",
        "`model.pt` (with this code base installed):",
        "",
        "```python",
        "from worker.engines.finetune import load_model",
        'model = load_model(open("model.pt", "rb").read())',
        'print(model.predict([open("photo.jpg", "rb").read()]))',
        "```",
        "",
    ]
    for fmt, (name, package, code) in LOAD_SNIPPETS.items():
        entry = export.get(fmt)
        if entry is None:
            continue
        if "error" in entry:
            reason = " ".join(str(entry["error"]).split())
            lines += [f"`{name}` could not be exported: {reason}", ""]
            continue
        lines += [
            f"`{name}` (needs only `{package}`; logits within "
            f"{entry['max_abs_diff']:.1e} of PyTorch's):",
            "",
            "```python",
            *code,
            "```",
            "",
        ]
    if any("error" not in entry for entry in export.values()):
        lines += [
            f"`batch` is a float32 array (N, 3, {image_size}, {image_size}): RGB values / 255 "
            "of the centre crop described above; N is free.",
            "",
        ]
    return lines

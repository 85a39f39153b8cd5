"""Export a fine-tuned classifier for use outside Atelier: ONNX and TorchScript, checked.

``model.pt`` needs this code base to load; the exported files need only onnxruntime or
torch. Each maps a float32 batch (N, 3, S, S) of RGB values in [0, 1] (S = the model's
``image_size``, centre crop as ``FineTunedModel.crop`` makes it) to logits, with N free.

Whatever network the classifier is, it is exported as it is, in fp32 on the CPU (a copy:
the caller's module is left untouched), and each file is reloaded and run on the sample
batch: the largest absolute logit difference against PyTorch goes in the job's metrics.
A format that cannot be exported or does not reload is recorded with its reason instead
of failing the job, since ``model.pt`` is still good. Plain PyTorch + onnxruntime.
"""

from __future__ import annotations

import copy
import io
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.torchscript.pt"
FORMATS = ("onnx", "torchscript")  # fine_tune's ``export`` param picks among these
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
SAMPLE_SIZE = 8  # images in the parity batch
ONNX_OPSET = 18


@dataclass
class ExportResult:
    """The exported files (name -> bytes) and what goes in ``metrics["export"]``."""

    files: dict[str, bytes] = field(default_factory=dict)
    report: dict[str, dict[str, Any]] = field(default_factory=dict)


@contextmanager
def _quiet() -> Iterator[None]:
    """The exporters and torch.jit warn about their own deprecations on every call; a
    job's log (and a test run with warnings as errors) should not carry them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def fp32_copy(module: nn.Module) -> nn.Module:
    """An fp32, contiguous, CPU, eval-mode copy of ``module`` (bf16 / channels-last
    training settings must not leak into a file that other runtimes load)."""
    module = copy.deepcopy(module).to("cpu", torch.float32)
    module = module.to(memory_format=torch.contiguous_format).eval()
    module.requires_grad_(False)
    return module


def sample_batch(crops: list[torch.Tensor], image_size: int, seed: int = 0) -> torch.Tensor:
    """The parity batch: up to SAMPLE_SIZE uint8 crops / 255, or (none readable) a fixed
    random batch, so parity is measured on the inputs the model really sees."""
    if crops:
        return torch.stack(crops[:SAMPLE_SIZE]).float().div(255.0).contiguous()
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(4, 3, image_size, image_size, generator=gen)


def export_onnx(module: nn.Module, sample: torch.Tensor) -> bytes:
    """ONNX bytes of ``module`` (weights inside the file), batch dimension dynamic."""
    batch = torch.export.Dim("batch")
    with _quiet():
        program = torch.onnx.export(
            module,
            (sample,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            opset_version=ONNX_OPSET,
            dynamo=True,
            verbose=False,
        )
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / ONNX_FILE
            program.save(str(path), external_data=False)
            return path.read_bytes()


def onnx_session(data: bytes) -> Any:
    """An onnxruntime CPU session over ONNX bytes (one place that picks the provider)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def onnx_logits(session: Any, batch: torch.Tensor) -> torch.Tensor:
    """Logits from an onnxruntime session for a float batch in [0, 1]."""
    inputs = {INPUT_NAME: batch.detach().to("cpu", torch.float32).contiguous().numpy()}
    return torch.from_numpy(session.run([OUTPUT_NAME], inputs)[0])


def export_torchscript(module: nn.Module, sample: torch.Tensor) -> bytes:
    """TorchScript bytes of ``module``, traced (the networks are straight-line code)."""
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(module, (sample,), check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


def load_torchscript(data: bytes) -> torch.jit.ScriptModule:
    """A saved TorchScript module on the CPU, in eval mode."""
    with _quiet():
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    return module.eval()


def _parity(
    reference: Callable[[torch.Tensor], torch.Tensor],
    exported: Callable[[torch.Tensor], torch.Tensor],
    sample: torch.Tensor,
) -> dict[str, Any]:
    """Max abs logit difference and label agreement, on the batch and on its first image
    alone (a batch size other than the traced one proves the dimension is free)."""
    worst, agree = 0.0, True
    for batch in (sample, sample[:1]):
        with torch.no_grad():
            want = reference(batch).float()
            got = exported(batch).float()
        worst = max(worst, float((want - got).abs().max()))
        agree = agree and bool((want.argmax(1) == got.argmax(1)).all())
    return {"max_abs_diff": worst, "labels_agree": agree}


def export_all(
    module: nn.Module,
    sample: torch.Tensor,
    on_step: Callable[[str], None] | None = None,
    formats: tuple[str, ...] = FORMATS,
) -> ExportResult:
    """The ``formats`` of ``module`` with their parity against PyTorch on ``sample``.

    A format that fails is reported as ``{"error": reason}`` and left out of ``files``.
    ``on_step(format)`` runs before each export, outside the failure net, so a job's
    progress callback can show the stage and stop the export on cancel.
    """
    module = fp32_copy(module)
    sample = sample.to("cpu", torch.float32).contiguous()
    result = ExportResult()
    builders: dict[str, tuple[str, Callable[[], tuple[bytes, Callable]]]] = {
        "onnx": (ONNX_FILE, lambda: _onnx_run(module, sample)),
        "torchscript": (TORCHSCRIPT_FILE, lambda: _torchscript_run(module, sample)),
    }
    for fmt, (name, build) in builders.items():
        if fmt not in formats:
            continue
        if on_step is not None:
            on_step(fmt)
        try:
            data, run = build()
            parity = _parity(module, run, sample)
        except Exception as exc:  # noqa: BLE001 - any exporter failure only loses this format
            result.report[fmt] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            continue
        result.files[name] = data
        result.report[fmt] = {"file": name, "bytes": len(data), **parity}
    return result


def _onnx_run(module: nn.Module, sample: torch.Tensor) -> tuple[bytes, Callable]:
    data = export_onnx(module, sample)
    session = onnx_session(data)
    return data, lambda batch: onnx_logits(session, batch)


def _torchscript_run(module: nn.Module, sample: torch.Tensor) -> tuple[bytes, Callable]:
    data = export_torchscript(module, sample)
    return data, load_torchscript(data)


@dataclass
class OnnxPredictor:
    """Top-k labels from ``model.onnx`` with onnxruntime; images are cropped by the
    reloaded checkpoint's own ``crop`` so both runtimes see exactly the same pixels."""

    session: Any
    classes: list[str]
    crop: Callable[..., torch.Tensor]
    device: str = "cpu (onnxruntime)"

    def predict_crops(
        self, crops: list[torch.Tensor], top_k: int = 3
    ) -> list[list[dict[str, Any]]]:
        """Top-k (label, probability) per crop, the same rows as FineTunedModel's."""
        k = min(top_k, len(self.classes))
        probs = F.softmax(onnx_logits(self.session, torch.stack(crops).float() / 255.0), dim=1)
        values, indices = probs.topk(k, dim=1)
        return [
            [
                {"label": self.classes[j], "probability": round(float(v), 6)}
                for v, j in zip(row_v, row_i.tolist(), strict=True)
            ]
            for row_v, row_i in zip(values, indices, strict=True)
        ]

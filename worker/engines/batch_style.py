"""Several style jobs of the same shape optimised as one batch: ``stylize_batch``.

On a GPU one 512 px job leaves most of the card idle; jobs whose scale plans have the
same shapes (same size and aspect, so the same pyramid and step split) can share every
VGG forward and backward pass.  Each job keeps everything that makes it itself: its
content and style targets, seed, loss weights, progress callback and result.  The losses
are summed only to take one gradient: each is a function of its own image alone, so
each job's gradient, and with ``BatchLBFGS`` each job's steps, are those of its lone run.

What batches together (``batch_key``): L-BFGS jobs on the same device and precision with
the same scale plan, weights, pooling, loss layers, histogram term on or off, colour
mode (luminance-only jobs optimise one channel) and ``protect_faces`` on or off (each
job looks for its own faces and keeps its own weight map, faces.py).  Anything else
(Adam, ``color_only``, a region mask, a protect mask), a lone job of its shape, or a
batch that would not fit the device's memory, goes through ``stylize`` as before:
batching never changes which jobs run, only how many share a step.

A job's callback ends only that job: whatever it raises (the engine's Canceled, or a
worker's own stop request) becomes that job's outcome and its row leaves the batch, the
others go on untouched.  The scale-level building blocks are style_transfer.py's own, so
a batched job computes its targets, first image and upsampling exactly as a lone one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace

import torch
from PIL import Image

from . import cpu_share, faces, imaging, planning
from .batch_lbfgs import BatchLBFGS
from .errors import EngineError, OutOfMemory
from .losses import Targets, loss_terms
from .params import PRESETS, StyleParams
from .style_targets import image_digest
from .style_transfer import (
    StyleImage,
    StyleJob,
    StyleProgress,
    StyleResult,
    check_memory,
    cudnn_autotune,
    initial_image,
    intra_op_threads,
    plan_scales,
    resolve_device,
    scale_targets,
    style_metrics,
    stylize,
    to_rgb,
    upsample,
    use_bf16,
)
from .weights import load_vgg19

__all__ = ["BatchItem", "Outcome", "batch_key", "stylize_batch"]

Outcome = StyleResult | Exception  # a job's result, or what ended it


@dataclass
class BatchItem:
    """One job of a batch: ``stylize``'s arguments, with its own progress callback."""

    content: Image.Image
    styles: Sequence[Image.Image]
    params: StyleParams | None = None
    on_progress: Callable[[StyleProgress], None] | None = None
    protect: Image.Image | None = None  # a protect mask: the job runs alone


@dataclass
class _Planned:
    """A batchable job after planning: what ``stylize`` works out before its first step."""

    index: int
    item: BatchItem
    params: StyleParams
    content: Image.Image
    styles: list[Image.Image]
    device: torch.device
    bf16: bool
    dims: list[tuple[int, int]]
    steps: list[int]


def _plan_item(index: int, item: BatchItem, precision: str) -> _Planned | None:
    """The job's plan, or None when it must take ``stylize``'s own path.

    Jobs ``stylize`` would refuse are not planned here, so the refusal (and its message)
    is always ``stylize``'s own.
    """
    styles = item.styles
    if isinstance(styles, Image.Image) or not isinstance(styles, Sequence):
        return None
    params = item.params
    if not isinstance(params, StyleParams) or params.optimizer != "lbfgs":
        return None  # Adam's iterate averaging and clamping stay on the lone path
    if params.color_only or params.mask_styles or item.protect is not None:
        return None  # no optimisation at all, or a mask: stylize's own paths
    if len(item.params.style_weights) != len(styles):
        return None
    try:
        content = imaging.to_rgb(item.content, "content")
        style_rgbs = [imaging.to_rgb(s, f"styles[{i}]") for i, s in enumerate(styles)]
        device = resolve_device(item.params.device)
        bf16 = use_bf16(device, precision)
        dims, steps = plan_scales(item.params, PRESETS[item.params.preset], content)
    except EngineError:
        return None
    params = replace(item.params, iterations=sum(steps))
    return _Planned(index, item, params, content, style_rgbs, device, bf16, dims, steps)


def _key(planned: _Planned) -> Hashable:
    """Jobs with equal keys have tensors of one shape at every step and share one network."""
    p = planned.params
    return (
        tuple(planned.dims),
        tuple(planned.steps),
        str(planned.device),
        planned.bf16,
        p.weights,
        p.pooling,
        p.preserve_color == "luminance",
        p.content_layer,
        p.style_layers,
        p.style_layer_weights,
        p.histogram_weight > 0,  # the histogram layers join every forward pass
        p.protect_faces,  # each job's own face map weighs its own content term
    )


def batch_key(
    content: Image.Image,
    styles: Sequence[Image.Image],
    params: StyleParams | None,
    precision: str = "auto",
) -> Hashable | None:
    """What a job must share with others to be optimised in one batch with them.

    None for a job that always runs alone (Adam, or one ``stylize`` would refuse).  A
    worker that collects queued jobs groups them by this key; ``stylize_batch`` does too.
    """
    planned = _plan_item(0, BatchItem(content, styles, params), precision)
    return None if planned is None else _key(planned)


def stylize_batch(
    items: Sequence[BatchItem],
    *,
    precision: str = "auto",
    max_batch: int = 8,
    interrupts: tuple[type[BaseException], ...] = (),
) -> list[Outcome]:
    """Run ``items``, batching those with the same ``batch_key``; one outcome per item.

    Each outcome is the job's StyleResult, or the exception that ended it (its callback's
    Canceled, an EngineError such as InvalidInput or OutOfMemory): one job's failure is
    never another's.  Up to ``max_batch`` jobs share a step; a job alone of its kind
    runs through ``stylize`` unchanged.  An exception of ``interrupts`` raised while a
    job runs alone (a caller's time limit, which belongs to the whole call, not to the
    job it happened to land in) is not that job's outcome: it ends the call.
    """
    outcomes: list[Outcome | None] = [None] * len(items)
    groups: dict[Hashable, list[_Planned]] = {}
    lone: list[int] = []
    for index, item in enumerate(items):
        planned = _plan_item(index, item, precision)
        if planned is None:
            lone.append(index)
        else:
            groups.setdefault(_key(planned), []).append(planned)
    for group in groups.values():
        for start in range(0, len(group), max_batch):
            chunk = group[start : start + max_batch]
            if len(chunk) == 1:
                lone.append(chunk[0].index)
                continue
            ran = _run_batch(chunk, precision, interrupts)
            for planned, outcome in zip(chunk, ran, strict=True):
                outcomes[planned.index] = outcome
    for index in sorted(lone):
        outcomes[index] = _run_alone(items[index], precision, interrupts)
    assert all(outcome is not None for outcome in outcomes)
    return outcomes  # type: ignore[return-value]


def _run_alone(
    item: BatchItem, precision: str, interrupts: tuple[type[BaseException], ...] = ()
) -> Outcome:
    try:
        return stylize(
            item.content,
            item.styles,
            item.params,
            on_progress=item.on_progress,
            precision=precision,
            protect=item.protect,
        )
    except Exception as exc:  # the job's own outcome, as in a batch
        if isinstance(exc, interrupts):
            raise
        return exc


def _protection(planned: _Planned) -> faces.Protection | None:
    """The job's faces, looked for as ``stylize`` does (once, at the output size)."""
    if not planned.params.protect_faces:
        return None
    return faces.plan_protection(
        planned.content, planned.dims[-1], faces=True, device=planned.device
    )


def _run_batch(
    chunk: list[_Planned], precision: str, interrupts: tuple[type[BaseException], ...]
) -> list[Outcome]:
    """Optimise ``chunk`` together; a batch the device cannot hold runs job by job."""
    lead = chunk[0]
    width, height = lead.dims[-1]
    try:
        spare = check_memory((width, height * len(chunk)), lead.device, lead.bf16)
    except OutOfMemory:
        return [_run_alone(p.item, precision, interrupts) for p in chunk]
    try:
        return _Batch(chunk, spare).run()
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return [
            OutOfMemory(
                f"ran out of GPU memory for a batch of {len(chunk)} {width}x{height} jobs on "
                f"{lead.device}; retry when the GPU is less busy"
            )
            for _ in chunk
        ]


class _Batch:
    """The scales of one batch; ``live`` maps a batch row to its job (rows shrink on drops)."""

    def __init__(self, chunk: list[_Planned], spare: int) -> None:
        self.started = time.perf_counter()
        lead = chunk[0]
        self.device = lead.device
        self.spare = spare
        self.net = load_vgg19(lead.params.weights, lead.params.pooling, lead.device)
        self.jobs = [self._job(p) for p in chunk]
        self.outcomes: list[Outcome | None] = [None] * len(chunk)
        self.live = list(range(len(chunk)))
        self.dims, self.steps = lead.dims, lead.steps

    def _job(self, planned: _Planned) -> StyleJob:
        params = planned.params
        keyed = params.preserve_color != "none"
        return StyleJob(
            params=params,
            preset=PRESETS[params.preset],
            net=self.net,
            device=planned.device,
            bf16=planned.bf16,
            content=planned.content,
            content_digest=image_digest(planned.content) if keyed else "",
            styles=[
                StyleImage(img, w, image_digest(img), index)
                for index, (img, w) in enumerate(
                    zip(planned.styles, params.style_weights, strict=True)
                )
                if w > 0
            ],
            callback=planned.item.on_progress,
            started=self.started,
            total=sum(planned.steps),
            spare_bytes=self.spare,
            protection=_protection(planned),
        )

    def run(self) -> list[Outcome]:
        share = cpu_share.CoreShare() if self.device.type == "cpu" else None
        images: dict[int, torch.Tensor] = {}
        contents: dict[int, torch.Tensor] = {}
        logs: dict[int, list[dict]] = {j: [] for j in self.live}
        for index, (dims, steps) in enumerate(zip(self.dims, self.steps, strict=True)):
            t0 = time.perf_counter()
            targets = self._start_scale(dims, images, contents)
            if not self.live:
                break
            pixels = dims[0] * dims[1] * len(self.live)
            with intra_op_threads(share) as threads, cudnn_autotune(self.device, pixels):
                images = self._optimise(images, targets, contents, steps, index + 1)
            seconds = round(time.perf_counter() - t0, 3)
            for j in self.live:
                gap = round(float(targets[j].style_gap), 4)
                logs[j].append(
                    {
                        "size": list(dims),
                        "steps": steps,
                        "seconds": seconds,
                        "threads": threads,
                        "style_gap": gap,
                        "batch": len(self.live),
                    }
                )
        for j in self.live:
            job = self.jobs[j]
            output = imaging.to_pil(to_rgb(job, images[j], contents[j]))
            metrics = {**style_metrics(job, logs[j], self.started), "batch_size": len(self.jobs)}
            self.outcomes[j] = StyleResult(image=output, seed=job.params.seed, metrics=metrics)
        assert all(outcome is not None for outcome in self.outcomes)
        return self.outcomes  # type: ignore[return-value]

    def _start_scale(
        self,
        dims: tuple[int, int],
        images: dict[int, torch.Tensor],
        contents: dict[int, torch.Tensor],
    ) -> dict[int, Targets]:
        """Each live job's targets at ``dims`` and its first iterate there (in place).

        A job whose targets cannot be made (a style too elongated at this scale) ends
        with that error and leaves the batch, as ``stylize`` would have raised it.
        """
        targets = {}
        for j in list(self.live):
            job = self.jobs[j]
            try:
                targets[j], contents[j] = scale_targets(job, dims)
            except EngineError as exc:
                self.outcomes[j] = exc
                self.live.remove(j)
                continue
            previous = images.get(j)
            if previous is None:
                images[j] = initial_image(job, contents[j])
            else:
                images[j] = upsample(job, previous, contents[j])
        return targets

    def _optimise(
        self,
        images: dict[int, torch.Tensor],
        targets: dict[int, Targets],
        contents: dict[int, torch.Tensor],
        steps: int,
        scale: int,
    ) -> dict[int, torch.Tensor]:
        """``steps`` batched L-BFGS steps at one scale; returns each live job's iterate."""
        batch = torch.cat([images[j].detach() for j in self.live])
        history = planning.lbfgs_history(batch.numel(), self.spare)
        optimizer = BatchLBFGS(batch, history)
        style_weight = {
            j: self.jobs[j].params.style_weight / targets[j].style_gap for j in self.live
        }
        lead = self.jobs[self.live[0]]

        def closure(x: torch.Tensor) -> torch.Tensor:
            features = lead.features(x)  # one pass for the whole batch
            losses = []
            for row, j in enumerate(self.live):
                job, p = self.jobs[j], self.jobs[j].params
                own = {name: f[row : row + 1] for name, f in features.items()}
                terms = loss_terms(own, x[row : row + 1], targets[j])
                loss = p.content_weight * terms.content + style_weight[j] * terms.style
                loss = loss + p.tv_weight * terms.tv
                if terms.histogram is not None:
                    loss = loss + p.histogram_weight * terms.histogram
                if terms.protect is not None:
                    loss = loss + p.content_weight * terms.protect
                losses.append(loss)
                job.terms = terms.detach()
            return torch.stack(losses)

        for _ in range(steps):
            losses = optimizer.step(closure)
            ended = self._report(optimizer, losses, contents, scale)
            if ended:
                keep = [row for row, j in enumerate(self.live) if j not in ended]
                self.live = [self.live[row] for row in keep]
                if not self.live:
                    return {}
                optimizer.keep(keep)
        rows = optimizer.param.detach()
        return {j: rows[row : row + 1] for row, j in enumerate(self.live)}

    def _report(
        self,
        optimizer: BatchLBFGS,
        losses: torch.Tensor,
        contents: dict[int, torch.Tensor],
        scale: int,
    ) -> set[int]:
        """Call each live job's callback; return the jobs whose callback ended them."""
        ended: set[int] = set()
        for row, j in enumerate(self.live):
            job = self.jobs[j]
            job.step += 1
            if job.callback is None:
                continue

            def render(row: int = row, job: StyleJob = job, j: int = j) -> Image.Image:
                image = optimizer.param.detach()[row : row + 1]
                return imaging.to_pil(to_rgb(job, image, contents[j]))

            progress = StyleProgress(
                step=job.step,
                total=job.total,
                scale=scale,
                scales=len(self.dims),
                elapsed=time.perf_counter() - self.started,
                _loss=losses[row],
                _render=render,
            )
            try:
                job.callback(progress)
            except Exception as exc:  # Canceled, or the worker's own stop: this job only
                self.outcomes[j] = exc
                ended.add(j)
        return ended

"""Neural style transfer (Gatys et al.) by optimising the image, coarse to fine.

``stylize`` is the one entry point: a :class:`~.params.StyleParams` resolved from the
kind's spec (shared/kinds/style_transfer.py) by ``StyleParams.resolve``, a progress
callback after every optimiser step, and a :class:`StyleResult` whose ``metrics`` record
everything needed to reproduce the image.

Speed comes from doing few steps at full resolution: most of the budget goes to the small
scales of a √2 pyramid, where a step costs a fraction of a full-size one, and each scale
starts from the previous result upsampled.  Losses are relative errors (``losses.py``), so
the same weights give the same look at every size.

Colour tools and masks (shared/kinds/style_transfer.py documents the fields):
``color_only`` recolours the content with ``colour.match_histograms`` and returns before
any network is loaded; a ``mask`` turns the style term into per-region losses
(``masks.py``) and composites ``keep`` regions from the content inside every step.

Faces (``faces.py``): with ``protect_faces`` the content is searched for faces once,
before the first scale, and the content loss weighs more inside them and inside the
optional ``protect`` mask; the boxes go into the metrics.  A run that protects nothing
(no face found, no mask) computes exactly what an unprotected run does.

Resume (checkpoint.py): with ``on_checkpoint`` the run hands out its state as bytes at
every scale boundary and every ``checkpoint_seconds`` inside a scale; given those bytes
back as ``checkpoint``, a run with the same params and inputs continues from there and,
on the same device with the same threads, ends in the same image bit for bit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
from PIL import Image
from torch.nn import functional as F

from shared.errors import InputError
from shared.kinds.style_transfer import SPEC, check_mask

from . import checkpoint as checkpoints
from . import colour, cpu_share, faces, imaging, masks, planning
from .errors import InvalidInput, OutOfMemory
from .lbfgs import LBFGS
from .losses import (
    HISTOGRAM_LAYERS,
    LayerChoice,
    LossTerms,
    Targets,
    blend_grams,
    blend_tables,
    loss_terms,
    make_targets,
)
from .params import PRESETS, Preset, StyleParams
from .style_targets import image_digest, style_statistics
from .weights import VGGFeatures, load_vgg19, weights_identity

__all__ = ["PRESETS", "StyleParams", "StyleProgress", "StyleResult", "stylize"]

ADAM_LR = 0.02  # in 0–1 pixel units: ~5 grey levels per step at the start
EMA_BETA = 0.9  # iterate averaging (Adam only): smooths its step-to-step jitter
PRECISIONS = ("auto", "fp32", "bf16")
# cuDNN autotuning costs about a second per new shape (each scale of each aspect ratio is
# one) and pays back only over many steps at one size: on by default only from here up.
CUDNN_AUTOTUNE_MIN_PIXELS = 1024 * 768
MIN_SIDE = 16  # four 2x poolings before relu5_1 must leave at least one pixel
MAX_SIZE = int(SPEC.param("size").bounds()[1])  # the largest output the kind allows


@dataclass(frozen=True)
class StyleProgress:
    """One optimiser step, as reported to the callback.

    ``image()`` renders the current iterate only when asked: a worker saves a preview every
    few seconds and must not pay for a GPU→PIL conversion on every step.  It renders the
    state at call time, so call it from inside the callback.  ``loss`` is read lazily for
    the same reason: a GPU runs ahead of the host until someone looks.
    """

    step: int
    total: int
    scale: int
    scales: int
    elapsed: float
    _loss: torch.Tensor = field(repr=False, compare=False)
    _render: Callable[[], Image.Image] = field(repr=False, compare=False)
    _save: Callable[[], bool] | None = field(default=None, repr=False, compare=False)

    @property
    def loss(self) -> float:
        """The step's loss.  Reading it waits for the GPU, so read it only to show it."""
        return float(self._loss)

    def image(self) -> Image.Image:
        return self._render()

    def save_checkpoint(self) -> bool:
        """Checkpoint the state after this step now (a worker about to hand the job
        back loses no step); False when the run was started without ``on_checkpoint``."""
        return self._save() if self._save is not None else False


@dataclass
class StyleResult:
    image: Image.Image
    seed: int
    metrics: dict


@dataclass
class StyleImage:
    image: Image.Image
    weight: float
    digest: str
    index: int = 0  # its place among the uploaded styles (what mask_styles names)


@dataclass
class StyleJob:
    """State shared by the scales of one ``stylize`` call."""

    params: StyleParams
    preset: Preset
    net: VGGFeatures
    device: torch.device
    bf16: bool
    content: Image.Image
    content_digest: str
    styles: list[StyleImage]
    callback: Callable[[StyleProgress], None] | None
    started: float
    total: int
    step: int = 0
    terms: LossTerms | None = None
    spare_bytes: int = 0
    plan: masks.RegionPlan | None = None  # the mask's regions at the output size
    keep: torch.Tensor | None = None  # this scale's share of content per pixel (keep regions)
    region_shares: list[float] = field(default_factory=list)
    protection: faces.Protection | None = None  # faces and the protect mask (faces.py)
    checkpointer: checkpoints.Checkpointer | None = None
    scale_log: list[dict] = field(default_factory=list)

    @property
    def luminance(self) -> bool:
        return self.params.preserve_color == "luminance"

    @property
    def layers(self) -> LayerChoice:
        p = self.params
        return LayerChoice(p.content_layer, p.style_layers, p.style_layer_weights)

    @property
    def histogram_layers(self) -> tuple[str, ...]:
        return HISTOGRAM_LAYERS if self.params.histogram_weight > 0 else ()

    def reference(self, content: torch.Tensor) -> torch.Tensor:
        """The content as the optimised image holds it (luminance only, or RGB)."""
        return imaging.luminance(content) if self.luminance else content

    def features(
        self, image: torch.Tensor, layers: frozenset[str] | None = None
    ) -> dict[str, torch.Tensor]:
        if layers is None:
            layers = self.layers.all | frozenset(self.histogram_layers)
        if image.shape[1] == 1:  # luminance-only run: VGG sees a gray RGB image
            image = image.expand(-1, 3, -1, -1)
        if self.device.type == "cuda":
            image = image.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.net(image, layers)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInput("device cuda was requested but no CUDA GPU is available", "device")
    return torch.device(name)


def use_bf16(device: torch.device, precision: str) -> bool:
    if precision not in PRECISIONS:
        raise InvalidInput(f"precision must be one of {', '.join(PRECISIONS)}", "precision")
    if precision == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return precision == "bf16"


def check_memory(dims: tuple[int, int], device: torch.device, bf16: bool) -> int:
    """Refuse sizes the device cannot hold, before spending any time; return spare bytes."""
    need = planning.estimate_bytes(*dims, bf16=bf16)
    free = planning.available_bytes(device)
    if need > 0.9 * free:
        fixed = planning.estimate_bytes(0, 0, bf16)
        # Memory grows with the pixel count, so the long side that fits scales with a root.
        ratio = max(0.9 * free - fixed, 0) / (need - fixed)
        fit = int(max(dims) * ratio**0.5)
        raise OutOfMemory(
            f"a {dims[0]}x{dims[1]} output needs about {need / 2**30:.1f} GiB on {device} "
            f"but only {free / 2**30:.1f} GiB is free; choose size <= {fit} or a "
            "device with more memory"
        )
    return int(free - need)


def _style_dims(size: tuple[int, int], side: int) -> tuple[int, int]:
    """A style's size at one scale: long side ``side``, lengthened no further than the
    engine's largest size.

    A very elongated style is lengthened so relu5_1 keeps at least one pixel; past
    ``_style_long_side(side)`` that is refused (InvalidInput) before anything is resized,
    so no shape can make the style input grow without limit.
    """
    sdims = imaging.fit_long_side(*size, side)
    if min(sdims) < MIN_SIDE:  # a very elongated style: keep relu5_1 non-empty
        sdims = imaging.fit_long_side(*size, side * MIN_SIDE // min(sdims) + 1)
    if min(sdims) < MIN_SIDE:  # rounding still left it short: the exact length
        sdims = imaging.fit_long_side(*size, math.ceil(MIN_SIDE * max(size) / min(size)))
    if max(sdims) > _style_long_side(side):
        raise InvalidInput(
            f"a style image is {size[0]}x{size[1]}: keeping {MIN_SIDE} px on its short side "
            f"would need a {max(sdims)} px long side, over the {_style_long_side(side)} px "
            "limit; it is too elongated, so crop it",
            "styles",
        )
    return sdims


def _style_long_side(side: int) -> int:
    """The longest a style input may be: its scale's side, or at most the largest size."""
    return max(side, MAX_SIZE)


def scale_targets(job: StyleJob, dims: tuple[int, int]) -> tuple[Targets, torch.Tensor]:
    """Content features and blended style Grams at one scale, plus the content tensor."""
    content = imaging.to_tensor(
        imaging.resize(job.content, dims, max_pixels=max(dims) ** 2), job.device
    )
    source = job.reference(content)
    with torch.no_grad():
        content_feats = job.features(source)
    per_style = {}
    side = max(16, round(job.params.style_scale * max(dims)))
    referenced = _referenced_styles(job)
    for style in job.styles:
        if style.weight <= 0 and style.index not in referenced:
            continue
        sdims = _style_dims(style.image.size, side)
        color = job.params.preserve_color
        key = (
            style.digest,
            job.content_digest if color != "none" else None,
            color,
            sdims,
            job.params.weights,
            job.params.pooling,
            str(job.device),
            job.bf16,
        )

        def make_input(style: StyleImage = style, sdims: tuple[int, int] = sdims) -> torch.Tensor:
            x = imaging.to_tensor(
                imaging.resize(style.image, sdims, max_pixels=_style_long_side(side) ** 2),
                job.device,
            )
            if job.params.preserve_color == "statistics":
                return imaging.match_color_statistics(x, content)
            if job.params.preserve_color == "histogram":
                return colour.match_histograms(x, content)
            if job.luminance:
                return imaging.match_luminance(imaging.luminance(x), source)
            return x

        per_style[style.index] = style_statistics(
            key, make_input, job.features, job.layers.style, job.histogram_layers
        )
    blended = [s for s in job.styles if s.weight > 0]
    weights = [s.weight for s in blended]
    grams = blend_grams([per_style[s.index][0] for s in blended], weights)
    tables = None
    if job.histogram_layers:
        tables = blend_tables([per_style[s.index][1] for s in blended], weights)
    regions = None
    if job.plan is not None:
        maps = masks.scale_maps(job.plan, dims)
        job.keep = masks.keep_alpha(job.plan, maps)
        job.region_shares = [float(m.mean()) for m in maps]
        style_grams = {index: stats[0] for index, stats in per_style.items()}
        regions = masks.region_targets(
            job.plan, maps, style_grams, grams, content_feats, job.layers
        )
    protect = None
    if job.protection is not None:
        protect = job.protection.at(content_feats[job.layers.content].shape[-2:])
    targets = make_targets(
        content_feats, grams, job.layers, histograms=tables, regions=regions, protect=protect
    )
    return targets, content


def _referenced_styles(job: StyleJob) -> set[int]:
    """Style indices that a mask region paints with (they count even at blend weight 0)."""
    if job.plan is None:
        return set()
    return {t for t in job.plan.targets if isinstance(t, int)}


def initial_image(job: StyleJob, content: torch.Tensor) -> torch.Tensor:
    channels = 1 if job.luminance else 3
    shape = (1, channels, *content.shape[2:])
    if job.params.init == "content":
        return imaging.luminance(content) if job.luminance else content.clone()
    if job.params.init == "gray":
        return torch.full(shape, 0.5, device=job.device)
    generator = torch.Generator().manual_seed(job.params.seed)
    return torch.rand(shape, generator=generator).to(job.device)


def _make_optimizer(
    job: StyleJob, image: torch.Tensor, state: dict | None = None
) -> torch.optim.Adam | LBFGS:
    """A fresh optimiser for ``image``, or one continuing from a checkpoint's ``state``."""
    optimizer: torch.optim.Adam | LBFGS
    if job.params.optimizer == "adam":
        optimizer = torch.optim.Adam([image], lr=ADAM_LR)
    else:
        # One function evaluation per step and no stopping test, so a run never ends
        # silently before its step budget; no host syncs, so a GPU never waits on it.
        optimizer = LBFGS(image, planning.lbfgs_history(image.numel(), job.spare_bytes))
    if state is not None:
        optimizer.load_state_dict(state)
    return optimizer


@contextmanager
def cudnn_autotune(device: torch.device, pixels: int) -> Iterator[None]:
    """cudnn.benchmark on for large CUDA scales only (see CUDNN_AUTOTUNE_MIN_PIXELS)."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = pixels >= CUDNN_AUTOTUNE_MIN_PIXELS
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


@contextmanager
def intra_op_threads(share: cpu_share.CoreShare | None) -> Iterator[int]:
    """Run a CPU scale on the cores other processes left free during the previous one.

    On idle cores every scale uses all the configured threads; with a busy neighbour a
    thread per busy core is given up, because OpenMP barriers would otherwise wait for a
    descheduled thread at every op (see cpu_share.py).  ``share`` is None off the CPU.
    Yields the threads in use.
    """
    configured = torch.get_num_threads()
    if share is None or configured == 1:
        yield configured
        return
    threads = cpu_share.free_threads(configured, share.others())
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(configured)


def _optimise_scale(
    job: StyleJob,
    image: torch.Tensor,
    targets: Targets,
    content: torch.Tensor,
    steps: int,
    scale: int,
    scales: int,
    resume: checkpoints.Checkpoint | None = None,
) -> torch.Tensor:
    """Run ``steps`` optimiser steps on one scale and return the (averaged) iterate.

    ``resume`` (a checkpoint taken inside this scale, ``image`` its iterate) restores
    the optimiser and the average and runs only the steps it had not done.
    """
    image = image.detach().clone().requires_grad_(True)
    inside = resume is not None and resume.step > 0
    optimizer = _make_optimizer(job, image, resume.optimizer if inside else None)
    p = job.params
    average = job.preset.average and p.optimizer == "adam"
    ema = image.detach().clone() if average else None
    if inside and ema is not None and resume.ema is not None:
        ema = resume.ema.to(job.device, copy=True)
    done = resume.step if inside else 0
    style_weight = p.style_weight / targets.style_gap  # weight = share of the gap to close

    reference = job.reference(content)

    def closure() -> torch.Tensor:
        image.grad = None
        view = masks.composite(image, reference, job.keep)
        terms = loss_terms(job.features(view), view, targets)
        loss = p.content_weight * terms.content + style_weight * terms.style
        loss = loss + p.tv_weight * terms.tv
        if terms.histogram is not None:
            loss = loss + p.histogram_weight * terms.histogram
        if terms.protect is not None:
            loss = loss + p.content_weight * terms.protect
        loss.backward()
        job.terms = terms.detach()
        return loss

    def render() -> Image.Image:
        return imaging.to_pil(to_rgb(job, image.detach(), content))

    def save() -> bool:
        if job.checkpointer is None:
            return False
        state = optimizer.state_dict()
        job.checkpointer.save(_checkpoint(job, scale - 1, done, image, state, ema))
        return True

    while done < steps:
        loss = optimizer.step(closure).detach()
        if p.optimizer == "adam":
            with torch.no_grad():
                image.clamp_(0, 1)
        if ema is not None:
            ema.lerp_(image.detach(), 1 - EMA_BETA)
        job.step += 1
        done += 1
        # the last step's state is the next scale's start, saved at the boundary
        if job.checkpointer is not None and done < steps and job.checkpointer.due(job.step):
            save()
        if job.callback is not None:
            job.callback(
                StyleProgress(
                    step=job.step,
                    total=job.total,
                    scale=scale,
                    scales=scales,
                    elapsed=time.perf_counter() - job.started,
                    _loss=loss,
                    _render=render,
                    _save=save if done < steps else None,
                )
            )
    return (ema if ema is not None else image).detach()


def _checkpoint(
    job: StyleJob,
    scale: int,
    step: int,
    image: torch.Tensor,
    optimizer: dict | None,
    ema: torch.Tensor | None,
) -> checkpoints.Checkpoint:
    """The run's state after ``step`` steps of scale ``scale`` (0-based) as a checkpoint."""
    assert job.checkpointer is not None
    terms = None
    if job.terms is not None:
        t = job.terms
        terms = {"content": t.content, "style": t.style, "tv": t.tv, "histogram": t.histogram}
        if t.protect is not None:
            terms["protect"] = t.protect
    return checkpoints.Checkpoint(
        fingerprint=job.checkpointer.fingerprint,
        scale=scale,
        step=step,
        total_step=job.step,
        image=image,
        optimizer=optimizer,
        ema=ema,
        terms=terms,
        scale_log=[dict(entry) for entry in job.scale_log],
        rng=torch.get_rng_state(),
    )


def to_rgb(job: StyleJob, image: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    image = masks.composite(image, job.reference(content), job.keep)
    if job.luminance:
        return imaging.with_chroma(image, content).clamp(0, 1)
    return image.clamp(0, 1)


def upsample(job: StyleJob, image: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Carry the result up one scale, restoring the content detail the coarse scale lacked.

    Plain upsampling leaves the image blurry, and the few full-size steps then spend
    themselves recovering relu4_2 detail.  Adding the content's own band-pass detail
    (content minus its down-and-up-sampled self, a Laplacian-pyramid level) starts the
    finer scale where a content-initialised run would be.
    """
    size = content.shape[2:]
    up = F.interpolate(image, size=size, mode="bicubic", align_corners=False)
    if job.params.init == "content":
        ref = imaging.luminance(content) if job.luminance else content
        low = F.interpolate(ref, size=image.shape[2:], mode="bilinear", antialias=True)
        up = up + ref - F.interpolate(low, size=size, mode="bicubic", align_corners=False)
    return up.clamp(0, 1)


def plan_scales(
    params: StyleParams, preset: Preset, content: Image.Image
) -> tuple[list[tuple[int, int]], list[int]]:
    sides = planning.scale_sizes(params.size, params.multiscale, preset.min_scale)
    dims = planning.scale_dims(content.size, sides)
    if min(dims[-1]) < MIN_SIDE:
        needed = math.ceil(MIN_SIDE * max(content.size) / min(content.size))
        fix = (
            "so increase size"
            if needed <= MAX_SIZE
            else f"and no size up to {MAX_SIZE} reaches it, so crop the content"
        )
        raise InvalidInput(
            f"size {params.size} makes the output {dims[-1][0]}x{dims[-1][1]}; VGG19 needs "
            f"at least {MIN_SIDE} px on the short side, {fix}",
            "size",
        )
    dims = [d for d in dims if min(d) >= MIN_SIDE]
    total = params.iterations or preset.iterations(len(dims))
    dims = dims[-total:]  # never more scales than steps
    return dims, planning.steps_per_scale(total, len(dims), preset.growth)


def stylize(
    content: Image.Image,
    styles: Sequence[Image.Image],
    params: StyleParams | None = None,
    *,
    on_progress: Callable[[StyleProgress], None] | None = None,
    precision: str = "auto",
    mask: Image.Image | None = None,
    protect: Image.Image | None = None,
    checkpoint: bytes | None = None,
    on_checkpoint: Callable[[bytes], None] | None = None,
    checkpoint_seconds: float = 30.0,
    checkpoint_steps: int | None = None,
) -> StyleResult:
    """Paint ``content`` in the style of ``styles`` with ``params``.

    ``params`` comes from ``StyleParams.resolve(len(styles), ...)`` (None: every default,
    a drawn seed); ``precision`` (auto, fp32, bf16) is how to compute, not what, so it is
    not a job parameter.  ``mask`` is the region mask that ``params.mask_styles`` maps
    (masks.py); ``protect`` is the optional protect mask (bright: keep the content, as
    ``params.protect_faces`` does for faces; faces.py); with ``params.color_only`` no
    network runs at all and faces are not looked for.
    ``on_checkpoint`` receives the run's state as bytes at every scale boundary and,
    inside a scale, every ``checkpoint_seconds`` (or every ``checkpoint_steps`` steps,
    a trigger without a clock); ``checkpoint`` is such bytes from an earlier run of the
    same params and inputs to continue from (other bytes are ignored: it starts over).
    Raises InvalidInput (bad parameter or image, named),
    OutOfMemory (refused up front or a CUDA OOM), WeightsUnavailable (missing weight
    file); a Canceled raised by ``on_progress`` propagates unchanged.
    """
    started = time.perf_counter()
    if isinstance(styles, Image.Image) or not isinstance(styles, Sequence):
        raise InvalidInput("styles must be a sequence of PIL images", "styles")
    if params is None:
        params = StyleParams.resolve(len(styles))
    elif len(params.style_weights) != len(styles):
        raise InvalidInput(
            f"params were resolved for {len(params.style_weights)} style images but "
            f"{len(styles)} were given",
            "styles",
        )
    _check_mask_fields(params, mask, len(styles))
    _check_protect(params, protect)
    content_rgb = imaging.to_rgb(content, "content")
    style_rgbs = [imaging.to_rgb(s, f"styles[{i}]") for i, s in enumerate(styles)]
    dev = resolve_device(params.device)
    if params.color_only:
        return _colour_only(params, content_rgb, style_rgbs, dev, on_progress, started)
    bf16 = use_bf16(dev, precision)
    preset_cfg = PRESETS[params.preset]
    dims, steps = plan_scales(params, preset_cfg, content_rgb)
    params = replace(params, iterations=sum(steps))
    spare = check_memory(dims[-1], dev, bf16)
    plan = None
    if mask is not None:
        plan = masks.plan_regions(mask, dims[-1], params.mask_styles or (), dev)
    protection = None
    if params.protect_faces or protect is not None:
        protection = faces.plan_protection(
            content_rgb, dims[-1], faces=params.protect_faces, mask=protect, device=dev
        )
    resume, checkpointer = _checkpointing(
        params,
        (content_rgb, style_rgbs, mask, protect),
        (dims, steps, dev, bf16),
        checkpoint,
        on_checkpoint,
        checkpoint_seconds,
        checkpoint_steps,
    )
    try:
        result = _run(
            params,
            preset_cfg,
            content_rgb,
            style_rgbs,
            dev,
            bf16,
            dims,
            steps,
            spare,
            on_progress,
            started,
            plan=plan,
            protection=protection,
            resume=resume,
            checkpointer=checkpointer,
        )
    except torch.cuda.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        raise OutOfMemory(
            f"ran out of GPU memory at {dims[-1][0]}x{dims[-1][1]} on {dev}; choose a smaller "
            "size or retry when the GPU is less busy"
        ) from exc
    if checkpoint is not None or on_checkpoint is not None:
        result.metrics["checkpoints"] = _checkpoint_metrics(checkpointer, resume)
    return result


def _run(
    params: StyleParams,
    preset: Preset,
    content: Image.Image,
    styles: list[Image.Image],
    dev: torch.device,
    bf16: bool,
    dims: list[tuple[int, int]],
    steps: list[int],
    spare: int,
    callback: Callable[[StyleProgress], None] | None,
    started: float,
    plan: masks.RegionPlan | None = None,
    protection: faces.Protection | None = None,
    resume: checkpoints.Checkpoint | None = None,
    checkpointer: checkpoints.Checkpointer | None = None,
) -> StyleResult:
    share = cpu_share.CoreShare() if dev.type == "cpu" else None  # from here to scale 1
    net = load_vgg19(params.weights, params.pooling, dev)
    needs_content_key = params.preserve_color != "none"
    job = StyleJob(
        params=params,
        preset=preset,
        net=net,
        device=dev,
        bf16=bf16,
        content=content,
        content_digest=image_digest(content) if needs_content_key else "",
        styles=[
            StyleImage(img, w, image_digest(img), index)
            for index, (img, w) in enumerate(zip(styles, params.style_weights, strict=True))
            if w > 0 or plan is not None
        ],
        callback=callback,
        started=started,
        total=sum(steps),
        spare_bytes=spare,
        plan=plan,
        protection=protection,
        checkpointer=checkpointer,
    )
    image: torch.Tensor | None = None
    first = 0
    if resume is not None:
        first = _restore(job, resume)
    scale_log = job.scale_log
    for index, (scale_dims, scale_steps) in enumerate(zip(dims, steps, strict=True)):
        if index < first:
            continue
        t0 = time.perf_counter()
        targets, content_t = scale_targets(job, scale_dims)
        here = resume if resume is not None and index == first else None
        if here is not None:
            image = here.image.to(dev, copy=True)
        elif image is None:
            image = initial_image(job, content_t)
        else:
            image = upsample(job, image, content_t)
            if checkpointer is not None:  # a scale boundary: the next scale's start
                checkpointer.save(_checkpoint(job, index, 0, image, None, None))
        pixels = scale_dims[0] * scale_dims[1]
        with intra_op_threads(share) as threads, cudnn_autotune(dev, pixels):
            image = _optimise_scale(
                job, image, targets, content_t, scale_steps, index + 1, len(dims), here
            )
        scale_log.append(
            {
                "size": list(scale_dims),
                "steps": scale_steps,
                "seconds": round(time.perf_counter() - t0, 3),
                "threads": threads,
                "style_gap": round(float(targets.style_gap), 4),
            }
        )
    assert image is not None
    output = imaging.to_pil(to_rgb(job, image, content_t))
    metrics = style_metrics(job, scale_log, started)
    return StyleResult(image=output, seed=params.seed, metrics=metrics)


def _checkpointing(
    params: StyleParams,
    inputs: tuple[Image.Image, list[Image.Image], Image.Image | None, Image.Image | None],
    run: tuple[list[tuple[int, int]], list[int], torch.device, bool],
    data: bytes | None,
    sink: Callable[[bytes], None] | None,
    seconds: float,
    steps: int | None,
) -> tuple[checkpoints.Checkpoint | None, checkpoints.Checkpointer | None]:
    """The checkpoint to continue from (when ``data`` is this run's) and the writer of
    new ones (when there is a ``sink``).  The fingerprint covers the resolved params,
    the input sizes and the scale plan, so no other run's state is ever taken."""
    if data is None and sink is None:
        return None, None
    content, styles, mask, protect = inputs
    dims, scale_steps, dev, bf16 = run
    key = checkpoints.fingerprint(
        params.as_dict(),
        content=list(content.size),
        styles=[list(s.size) for s in styles],
        mask=None if mask is None else list(mask.size),
        protect=None if protect is None else list(protect.size),
        dims=[list(d) for d in dims],
        steps=list(scale_steps),
        device=dev.type,
        bf16=bf16,
    )
    resume = checkpoints.load(data, key)
    if resume is not None and not _fits(resume, dims, scale_steps, params):
        checkpoints.log.warning("ignoring a checkpoint that does not fit the run; starting over")
        resume = None
    checkpointer = None
    if sink is not None:
        checkpointer = checkpoints.Checkpointer(key, sink, seconds=seconds, steps=steps)
    return resume, checkpointer


def _fits(
    resume: checkpoints.Checkpoint,
    dims: list[tuple[int, int]],
    steps: list[int],
    params: StyleParams,
) -> bool:
    """Whether a checkpoint's scale, step and image shape are possible in this plan."""
    if not 0 <= resume.scale < len(dims) or not 0 <= resume.step < steps[resume.scale]:
        return False
    width, height = dims[resume.scale]
    channels = 1 if params.preserve_color == "luminance" else 3
    if tuple(resume.image.shape) != (1, channels, height, width):
        return False
    return resume.step == 0 or resume.optimizer is not None


def _restore(job: StyleJob, resume: checkpoints.Checkpoint) -> int:
    """Put a checkpoint's run-wide state back (step count, scale log, loss terms, RNG);
    return the index of the scale it continues."""
    job.step = resume.total_step
    job.scale_log = [dict(entry) for entry in resume.scale_log]
    if resume.terms is not None:
        terms = {
            key: None if value is None else value.to(job.device)
            for key, value in resume.terms.items()
        }
        job.terms = LossTerms(
            terms["content"], terms["style"], terms["tv"], terms["histogram"], terms.get("protect")
        )
    if resume.rng is not None:
        torch.set_rng_state(resume.rng)
    return resume.scale


def _checkpoint_metrics(
    checkpointer: checkpoints.Checkpointer | None, resume: checkpoints.Checkpoint | None
) -> dict:
    """What ``metrics.json`` says about checkpoints: how many this run wrote, their
    bytes, and where it continued from (1-based scale, steps done in it) or None."""
    resumed = None if resume is None else {"scale": resume.scale + 1, "step": resume.step}
    return {
        "count": 0 if checkpointer is None else checkpointer.count,
        "bytes": 0 if checkpointer is None else checkpointer.bytes,
        "resumed_from": resumed,
    }


def style_metrics(job: StyleJob, scale_log: list[dict], started: float) -> dict:
    terms = job.terms
    losses = {}
    if terms is not None:
        losses = {
            "content": float(terms.content),
            "style": float(terms.style),
            "tv": float(terms.tv),
        }
        if terms.histogram is not None:
            losses["histogram"] = float(terms.histogram)
        if terms.protect is not None:
            losses["protect"] = float(terms.protect)
    extra = {}
    if job.plan is not None:
        extra["regions"] = job.plan.describe(job.region_shares)
    if job.protection is not None:
        extra.update(job.protection.describe())
    return {
        "params": job.params.as_dict(),
        "seed": job.params.seed,
        "weights": weights_identity(job.params.weights),
        "torch": torch.__version__,
        "device": str(job.device),
        "precision": "bf16" if job.bf16 else "fp32",
        "scales": scale_log,
        "losses": losses,
        **extra,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _check_mask_fields(params: StyleParams, mask: Image.Image | None, styles: int) -> None:
    """The spec's own mask check, now that the mask is in hand (shared/kinds)."""
    if mask is not None and not isinstance(mask, Image.Image):
        raise InvalidInput(f"mask must be a PIL image, got {type(mask).__name__}", "mask")
    try:
        check_mask(params.as_dict(), 0 if mask is None else 1, styles)
    except InputError as exc:
        raise InvalidInput(exc.message, exc.field) from None


def _check_protect(params: StyleParams, protect: Image.Image | None) -> None:
    """A protect mask is an image, and only an optimising run can keep anything."""
    if protect is None:
        return
    if not isinstance(protect, Image.Image):
        raise InvalidInput(f"protect must be a PIL image, got {type(protect).__name__}", "protect")
    try:
        SPEC.check(params.as_dict(), {"style": len(params.style_weights), "protect": 1})
    except InputError as exc:
        raise InvalidInput(exc.message, exc.field) from None


def _colour_only(
    params: StyleParams,
    content: Image.Image,
    styles: list[Image.Image],
    dev: torch.device,
    callback: Callable[[StyleProgress], None] | None,
    started: float,
) -> StyleResult:
    """``color_only``: the content at the output size, recoloured to the styles' blended
    colour histogram (colour.py).  No network is loaded and nothing is optimised.

    On the CPU it runs on one thread: the work is a few passes over the pixels, and with
    a busy neighbour a second OpenMP thread only waits at barriers (a 512 px job took
    0.42 s on one thread against 2.1 s on two, on the shared 2-core machine).
    """
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(1)
    try:
        output = _recolour(params, content, styles, dev)
    finally:
        torch.set_num_threads(threads)
    if callback is not None:
        callback(
            StyleProgress(
                step=1,
                total=1,
                scale=1,
                scales=1,
                elapsed=time.perf_counter() - started,
                _loss=torch.zeros(()),
                _render=lambda: output,
            )
        )
    metrics = {
        "params": params.as_dict(),
        "seed": params.seed,
        "weights": None,
        "torch": torch.__version__,
        "device": str(dev),
        "precision": "fp32",
        "scales": [],
        "losses": {},
        "seconds": round(time.perf_counter() - started, 3),
    }
    return StyleResult(image=output, seed=params.seed, metrics=metrics)


def _recolour(
    params: StyleParams, content: Image.Image, styles: list[Image.Image], dev: torch.device
) -> Image.Image:
    """The content at ``params.size``, matched to the styles' pooled colour histogram."""
    budget = MAX_SIZE**2
    dims = imaging.fit_long_side(*content.size, params.size)
    content_t = imaging.to_tensor(imaging.resize(content, dims, max_pixels=budget), dev)
    style_ts = []
    for style in styles:
        sdims = imaging.fit_long_side(*style.size, min(max(style.size), params.size))
        style_ts.append(imaging.to_tensor(imaging.resize(style, sdims, max_pixels=budget), dev))
    reference = colour.pooled_reference(style_ts, params.style_weights)
    return imaging.to_pil(colour.match_histograms(content_t, reference))

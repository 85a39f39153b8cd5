"""The engines accept exactly what the kinds' specs allow (shared/kinds/).

Every value here is generated from the spec's own Param objects (bounds, choices, bool),
not listed by hand: each engine param is resolved at its minimum, its maximum and every
choice, and refused just outside, so a bound the engine keeps on its own (the drift this
replaced) fails here. The local CLIs offer every engine param as an option.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import fields
from typing import Any

import pytest

from shared.kinds import fine_tune as fine_tune_kind
from shared.kinds import style_transfer as style_kind
from shared.kinds.spec import KindSpec, Param
from worker import finetune_cli, stylize_cli
from worker.engines import backbones, params, weights
from worker.engines.errors import InvalidInput
from worker.engines.finetune import PRECISIONS as FINETUNE_PRECISIONS
from worker.engines.finetune import FinetuneConfig
from worker.engines.params import StyleParams
from worker.engines.spec_check import engine_names

# Enough style images that a weight list can be as long as the default style layers, so
# one generated list fits both the blend weights and the layer weights.
N_STYLES = len(style_kind.SPEC.param("style_layers").default)


def _resolve_style(name: str, value: Any) -> Any:
    return StyleParams.resolve(N_STYLES, **{name: value}, device="cpu")


def _resolve_finetune(name: str, value: Any) -> Any:
    return FinetuneConfig.resolve(**{name: value}, device="cpu", precision="fp32")


RESOLVERS = {"style_transfer": _resolve_style, "fine_tune": _resolve_finetune}
SPECS = {"style_transfer": style_kind.SPEC, "fine_tune": fine_tune_kind.SPEC}


def _outside(value: float, direction: float, whole: bool) -> float:
    return value + direction if whole else math.nextafter(value, direction * math.inf)


def _floats(first: float, second: float) -> list[float]:
    return [first, second] + [second] * (N_STYLES - 2)


def accepted(param: Param) -> list[Any]:
    """Values at the edges of what ``param`` allows."""
    if param.type in ("int", "float"):
        low, high = param.bounds()
        cast = int if param.type == "int" else float
        return [cast(low), cast(high)]
    if param.type == "bool":
        return [True, False]
    if param.type == "choice":
        return list(param.choices)
    if param.type == "floats":
        low, high = param.bounds()
        return [_floats(low, high), _floats(high, low), _floats(high, high)]
    if param.type == "choices":
        return [[choice] for choice in param.choices] + [list(param.choices)]
    raise AssertionError(f"no generator for {param.type}")


def refused(param: Param) -> list[Any]:
    """Values just outside what ``param`` allows."""
    if param.type in ("int", "float"):
        low, high = param.bounds()
        whole = param.type == "int"
        cast = int if whole else float
        return [cast(_outside(low, -1, whole)), cast(_outside(high, 1, whole))]
    if param.type == "bool":
        return ["true", 1]
    if param.type == "choice":
        return ["not-" + param.choices[0], param.choices[0].upper()]
    if param.type == "floats":
        low, high = param.bounds()
        return [
            _floats(_outside(low, -1, False), high),
            _floats(high, _outside(high, 1, False)),
            _floats(low, low),  # nothing above 0
        ]
    if param.type == "choices":
        return [[], ["not-" + param.choices[0]], [param.choices[0]] * 2]
    raise AssertionError(f"no generator for {param.type}")


def _cases(make) -> list[Any]:
    return [
        pytest.param(kind, p.name, value, id=f"{kind}-{p.name}-{value!r}"[:90])
        for kind, spec in SPECS.items()
        for p in spec.params
        if p.engine
        for value in make(p)
    ]


def _recorded(result: Any, name: str) -> Any:
    value = getattr(result, name)
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize(("kind", "name", "value"), _cases(accepted))
def test_engine_accepts_every_edge_of_the_spec(kind, name, value):
    result = RESOLVERS[kind](name, value)
    if SPECS[kind].param(name).type != "floats":  # weight lists are scaled to sum 1
        assert _recorded(result, name) == value


@pytest.mark.parametrize(("kind", "name", "value"), _cases(refused))
def test_engine_refuses_just_outside_the_spec(kind, name, value):
    with pytest.raises(InvalidInput) as info:
        RESOLVERS[kind](name, value)
    assert info.value.param == name


@pytest.mark.parametrize(
    ("spec", "cls", "engine_only"),
    [
        (style_kind.SPEC, StyleParams, {"device"}),
        (fine_tune_kind.SPEC, FinetuneConfig, {"device", "precision"}),
    ],
)
def test_resolved_params_hold_exactly_the_specs_engine_params(spec: KindSpec, cls, engine_only):
    assert {f.name for f in fields(cls)} == set(engine_names(spec)) | engine_only
    assert "output_format" not in engine_names(style_kind.SPEC)  # the runner's


def test_the_engines_build_what_the_specs_name():
    assert set(backbones.BUILDERS) == set(fine_tune_kind.BACKBONES)
    assert fine_tune_kind.SPEC.param("backbone").choices == fine_tune_kind.BACKBONES
    assert tuple(params.PRESETS) == style_kind.PRESETS == style_kind.SPEC.param("preset").choices
    assert set(fine_tune_kind.STRATEGY_DEFAULTS) == set(fine_tune_kind.STRATEGIES)
    assert weights.SOURCES == style_kind.SPEC.param("weights").choices
    assert weights.POOLINGS == style_kind.SPEC.param("pooling").choices
    assert finetune_cli.PRECISIONS == FINETUNE_PRECISIONS  # the CLI stays torch-free


@pytest.mark.parametrize("strategy", fine_tune_kind.STRATEGIES)
def test_strategy_defaults_fill_what_the_client_left_out(strategy):
    config = FinetuneConfig.resolve(strategy=strategy, epochs=2, device="cpu")
    for name, default in fine_tune_kind.STRATEGY_DEFAULTS[strategy].items():
        assert getattr(config, name) == (2 if name == "epochs" else default)
    assert config.image_size == fine_tune_kind.SPEC.param("image_size").default
    assert 0 <= config.seed <= fine_tune_kind.SPEC.param("seed").maximum  # drawn


def test_finetune_refuses_unknown_names_and_devices():
    with pytest.raises(InvalidInput, match="colour") as info:
        FinetuneConfig.resolve(colour="red")
    assert info.value.param == "colour"
    with pytest.raises(InvalidInput) as info:
        FinetuneConfig.resolve(device="tpu")
    assert info.value.param == "device"


@pytest.mark.parametrize(
    ("module", "spec"), [(stylize_cli, style_kind.SPEC), (finetune_cli, fine_tune_kind.SPEC)]
)
def test_every_engine_param_is_a_cli_option(module, spec):
    parser = module.configure(argparse.ArgumentParser())
    options = parser._option_string_actions
    local = getattr(module, "LOCAL_PARAMS", ())
    for param in spec.params:
        flag = "--" + param.name.replace("_", "-")
        offered = param.engine or param.name in local
        assert (flag in options) == offered, flag
        if offered:
            assert options[flag].dest == param.name
        if param.type == "choice" and offered:  # the spec's choices and default, not a copy
            assert list(options[flag].choices) == list(param.choices), flag
            assert options[flag].default == param.default, flag

"""The torch-free estimate model (shared/estimates.py) against the engine it predicts."""

from __future__ import annotations

import pytest
from PIL import Image

from shared import estimates
from shared.estimates import Line, Observation


def test_the_engines_presets_are_the_estimates_step_budgets():
    from worker.engines.params import PRESETS

    assert set(estimates.PRESET_STEPS) == set(PRESETS)
    for name, preset in PRESETS.items():
        assert isinstance(preset, estimates.PresetSteps)
        mirror = estimates.PRESET_STEPS[name]
        assert (mirror.final_steps, mirror.growth, mirror.min_scale) == (
            preset.final_steps,
            preset.growth,
            preset.min_scale,
        )
        assert preset.iterations(4) == mirror.iterations(4)


def test_the_engine_plans_and_sizes_memory_with_the_same_functions():
    from worker.engines import planning

    assert planning.estimate_bytes is estimates.estimate_bytes
    assert planning.scale_sizes is estimates.scale_sizes
    assert planning.steps_per_scale is estimates.steps_per_scale


@pytest.mark.parametrize(
    ("content", "fields"),
    [
        ((640, 480), {"size": 512}),
        ((480, 640), {"size": 1024, "preset": "fast"}),
        ((300, 300), {"size": 128, "iterations": 30}),
        ((800, 200), {"size": 256, "preset": "quality", "multiscale": False}),
        ((64, 48), {"size": 48, "iterations": 3}),
    ],
)
def test_the_style_plan_is_the_engines(content, fields):
    from worker.engines.params import PRESETS, StyleParams
    from worker.engines.style_transfer import plan_scales

    params = StyleParams.resolve(1, seed=1, **fields)
    expected = plan_scales(params, PRESETS[params.preset], Image.new("RGB", content))
    recorded = {"preset": params.preset, "multiscale": params.multiscale, **fields}
    assert estimates.style_plan(recorded, content) == expected


def test_least_squares_recovers_a_power_law():
    points = [(x, 3.0 * x**0.8) for x in (1.0, 2.0, 5.0, 9.0, 100.0)]
    line = estimates.least_squares(points)
    assert line.slope == pytest.approx(0.8) and line.jobs == 5
    assert line.seconds(50.0) == pytest.approx(3.0 * 50.0**0.8)
    assert line.seconds(0.0) == pytest.approx(3.0)  # work below 1 (colour only) counts as 1


def test_relative_error_is_even_across_sizes():
    """The reason for log-log: a small and a large job both within a few percent, where a
    straight line through the same points misses the small job by a factor."""
    points = [(w, 0.2 + w**1.1 / 1e5) for w in (4e4, 1.3e5, 3e5, 5e5, 1e6, 1.5e6)]
    line = estimates.least_squares(points)
    for work, seconds in points:
        assert line.seconds(work) == pytest.approx(seconds, rel=0.2)


def test_a_fit_needs_enough_increasing_points():
    few = [Observation("style_transfer", "cpu", x, 1 + x) for x in (1, 2, 3)]
    assert estimates.fit_lines(few) == {}
    falling = [Observation("style_transfer", "cpu", x, 10 - x) for x in (1, 2, 3, 4, 5)]
    assert estimates.fit_lines(falling) == {}
    rising = [Observation("fine_tune", "cuda", x, 2 * x**1.5) for x in (1, 2, 3, 4)]
    lines = estimates.fit_lines(rising)
    assert lines[("fine_tune", "cuda")].seconds(10) == pytest.approx(2 * 10**1.5)
    broken = [Observation("fine_tune", "cpu", x, 0.0) for x in (1, 2, 3, 4)]
    assert estimates.fit_lines(broken) == {}  # no positive time: nothing to fit


def test_lines_fall_back_to_the_kinds_default_then_the_generic_one():
    fitted = {("style_transfer", "cpu"): Line(1, 1, 9)}
    assert estimates.line_for(fitted, "style_transfer", "cpu").jobs == 9
    assert (
        estimates.line_for(fitted, "style_transfer", "cuda")
        == (estimates.DEFAULT_LINES[("style_transfer", "cuda")])
    )
    assert estimates.line_for({}, "predict", "cpu") == estimates.DEFAULT_LINES[("*", "cpu")]


def test_device_names_become_classes():
    assert estimates.device_class("cuda:1") == "cuda"
    assert estimates.device_class("cpu") == "cpu"
    assert estimates.device_class("mps") is None
    assert estimates.device_class(None) is None


def test_fine_tune_work_counts_passes_through_the_backbone():
    assert estimates.finetune_passes(100, 224, "linear_probe", 10) == 100
    assert estimates.finetune_passes(100, 112, "full", 4) == pytest.approx(100)

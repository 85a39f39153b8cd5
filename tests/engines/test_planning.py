"""Scale pyramid, step split and the up-front memory refusal."""

from __future__ import annotations

import pytest

from worker.engines import planning
from worker.engines.errors import OutOfMemory
from worker.engines.params import PRESETS

from .conftest import run_style


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (256, [128, 181, 256]),
        (512, [128, 181, 256, 362, 512]),
        (96, [48, 68, 96]),
        (20, [20]),
        (130, [65, 92, 130]),
    ],
)
def test_pyramid_is_about_sqrt2_apart(size, expected):
    assert planning.scale_sizes(size, multiscale=True) == expected
    assert planning.scale_sizes(size, multiscale=False) == [size]


@pytest.mark.parametrize("total", [3, 10, 120, 1000])
def test_steps_sum_to_the_budget_and_favour_coarse_scales(total):
    steps = planning.steps_per_scale(total, 3, PRESETS["balanced"].growth)
    assert sum(steps) == total
    assert min(steps) >= 1
    assert steps == sorted(steps, reverse=True)


def test_sizes_the_device_cannot_hold_are_refused_up_front(monkeypatch, content, style):
    monkeypatch.setattr(planning, "available_bytes", lambda device: 200 * 2**20)
    calls = []
    with pytest.raises(OutOfMemory) as info:
        run_style(content, [style], calls.append, size=2048, device="cpu")
    assert info.value.code == "out_of_memory"
    assert "size <=" in str(info.value)
    assert calls == []  # refused before the first step


@pytest.mark.parametrize("scales", [1, 3, 5])
def test_preset_total_matches_its_final_scale_steps(scales):
    preset = PRESETS["balanced"]
    steps = planning.steps_per_scale(preset.iterations(scales), scales, preset.growth)
    assert abs(steps[-1] - preset.final_steps) <= 1
    assert PRESETS["fast"].iterations(scales) < preset.iterations(scales)
    assert preset.iterations(scales) < PRESETS["quality"].iterations(scales)


def test_lbfgs_history_shrinks_with_memory():
    assert planning.lbfgs_history(3 * 256 * 256, 10 * 2**30) == planning.MAX_LBFGS_HISTORY
    assert planning.lbfgs_history(3 * 4096 * 4096, 2**30) == planning.MIN_LBFGS_HISTORY

"""The ``stylize`` subcommand end to end: parse, run the engine, write image + metrics."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from shared.kinds.style_transfer import SPEC
from worker import stylize_cli

ROOT = Path(__file__).resolve().parents[2]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atelier")
    stylize_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_options_and_defaults_come_from_the_spec(tmp_path):
    parser = _parser()
    args = parser.parse_args(["stylize", "c.png", "s.png", "-o", str(tmp_path / "o.png")])
    engine = [p for p in SPEC.params if p.engine]
    for param in engine:
        default = list(param.default) if isinstance(param.default, tuple) else param.default
        assert getattr(args, param.name) == default, param.name
    assert not hasattr(args, "output_format")  # the -o suffix picks the format
    assert args.multiscale is True
    assert args.func is stylize_cli.run
    flags = ["--" + p.name.replace("_", "-") for p in engine]
    sub = parser._subparsers._group_actions[0].choices["stylize"]
    assert set(flags) <= set(sub._option_string_actions)
    assert "--no-multiscale" in sub._option_string_actions
    assert not sub.parse_args(["c", "s", "-o", "o.png", "--no-multiscale"]).multiscale


def test_option_values_are_parsed_like_the_server(tmp_path):
    args = _parser().parse_args(
        ["stylize", "c", "s", "-o", "o.png", "--style-layers", "relu1_1, relu3_1", "--seed", "9"]
    )
    assert args.style_layers == ["relu1_1", "relu3_1"] and args.seed == 9


@pytest.mark.parametrize(
    ("option", "value"),
    [("--strength", "3"), ("--style-weight", "1e12"), ("--size", "16"), ("--preset", "slow")],
)
def test_out_of_bounds_options_exit_2_naming_the_field(option, value, capsys):
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(["stylize", "c.png", "s.png", "-o", "o.png", option, value])
    assert info.value.code == 2
    assert option in capsys.readouterr().err


def test_run_writes_image_and_metrics(tmp_path, content, style, style2, capsys):
    content.save(tmp_path / "c.png")
    style.save(tmp_path / "s1.jpg")
    style2.save(tmp_path / "s2.png")
    out = tmp_path / "out" / "result.png"
    args = _parser().parse_args(
        [
            "stylize",
            str(tmp_path / "c.png"),
            str(tmp_path / "s1.jpg"),
            str(tmp_path / "s2.png"),
            "-o",
            str(out),
            "--size",
            "48",
            "--iterations",
            "4",
            "--seed",
            "3",
            "--style-weights",
            "2,1",
            "--device",
            "cpu",
        ]
    )
    assert args.func(args) == 0
    with Image.open(out) as image:
        assert image.size == (48, 36)
    metrics = json.loads(out.with_suffix(".json").read_text())
    assert metrics["seed"] == 3
    assert metrics["params"]["style_weights"] == [2 / 3, 1 / 3]
    assert len(metrics["weights"]["sha256"]) == 64
    err = capsys.readouterr().err
    assert "\r[" in err and "4/4" in err


def test_an_engine_refusal_exits_2_with_the_name(tmp_path, content, style, capsys):
    content.save(tmp_path / "c.png")
    style.save(tmp_path / "s.png")
    args = _parser().parse_args(
        [
            "stylize",
            str(tmp_path / "c.png"),
            str(tmp_path / "s.png"),
            "-o",
            str(tmp_path / "o.png"),
            "--style-weights",
            "1,2",
        ]
    )
    assert stylize_cli.run(args) == 2  # two blend weights for one style image
    assert "style_weights" in capsys.readouterr().err


def test_standalone_module_in_a_subprocess(tmp_path, content, style):
    content.save(tmp_path / "c.png")
    style.save(tmp_path / "s.png")
    out = tmp_path / "o.jpg"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker.stylize_cli",
            str(tmp_path / "c.png"),
            str(tmp_path / "s.png"),
            "-o",
            str(out),
            "--size",
            "32",
            "--iterations",
            "2",
            "--metrics-json",
            str(tmp_path / "m.json"),
            "--device",
            "cpu",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as image:
        assert image.size == (32, 24)
    assert json.loads((tmp_path / "m.json").read_text())["params"]["iterations"] == 2


def test_a_protect_image_reaches_the_engine(tmp_path, content, style):
    content.save(tmp_path / "c.png")
    style.save(tmp_path / "s.png")
    Image.new("L", content.size, 255).save(tmp_path / "protect.png")  # protect everything
    out = tmp_path / "result.png"
    argv = ["stylize", str(tmp_path / "c.png"), str(tmp_path / "s.png"), "-o", str(out)]
    argv += ["--size", "48", "--iterations", "2", "--seed", "1", "--device", "cpu", "--quiet"]
    args = _parser().parse_args([*argv, "--protect", str(tmp_path / "protect.png")])
    assert args.func(args) == 0
    metrics = json.loads(out.with_suffix(".json").read_text())
    assert metrics["protect"]["mask_share"] > 0.9  # the engine weighed the whole picture

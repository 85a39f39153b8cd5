"""``atelier submit KIND``: its arguments come from shared.kinds, so a kind's every
parameter has an option, values are refused with the server's own message before any
request, and a kind registered at run time gets a subcommand. No server is needed: the
client's ``submit`` is replaced by a recorder."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from shared.errors import InputError
from shared.kinds import KINDS, FileField, KindSpec, Param, register
from shared.queue import CPU_QUEUE
from worker import client_cli
from worker.cli import build_parser

JOB_ID = "0123456789abcdef" * 2
EVERY_PARAM = [(spec.name, p.name) for spec in KINDS.values() for p in spec.params]


def _sample(param: Param) -> Any:
    """A valid value of ``param``, with digits a lossy conversion would drop."""
    low, high = param.minimum, param.maximum
    return {
        "int": lambda: int(high),
        "float": lambda: low + (high - low) / 3,
        "bool": lambda: True,
        "choice": lambda: param.choices[-1],
        "choices": lambda: list(param.choices[-2:]),
        "floats": lambda: [high / 3, high],
        "job_id": lambda: JOB_ID,
    }[param.type]()


def _bad(param: Param) -> str:
    """A form string the server refuses for ``param`` (out of bounds where it has them)."""
    return {
        "int": lambda: str(int(param.maximum) + 1),
        "float": lambda: repr(param.maximum * 2 + 1),
        "choice": lambda: "nope",
        "choices": lambda: "nope",
        "floats": lambda: "-1",
        "job_id": lambda: "xyz",
    }[param.type]()


def _argv(spec: KindSpec, param: Param | None = None, text: str | None = None) -> list[str]:
    """``submit KIND`` with its positionals (``text`` in ``param``'s place when it is one),
    then ``param``'s option when it is not."""
    argv = ["submit", spec.name]
    for p in spec.params:
        if client_cli._positional(p):
            argv.append(text if p is param else JOB_ID)
    for upload in spec.files:  # a kind with two lists of files takes them as options
        repeated = upload.max_count > 1 and client_cli._file_option(spec, upload)
        argv += [f"--{upload.name}", f"{upload.name}.png"] if repeated else [f"{upload.name}.png"]
    if param is not None and not client_cli._positional(param):
        flag = "--" + param.name.replace("_", "-")
        argv.append(flag if text is None else f"{flag}={text}")
    return argv


def _refusal(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What ``atelier submit`` would have sent; the job it gets back is queued."""
    calls: list[dict[str, Any]] = []

    def submit(self, kind, fields, files, idempotency_key=None):
        calls.append({"kind": kind, "fields": fields, "files": files, "key": idempotency_key})
        return {"id": JOB_ID, "status": "queued", "urls": {"web": f"/jobs/{JOB_ID}"}}

    monkeypatch.setattr(client_cli.Client, "submit", submit)
    return calls


@pytest.fixture
def extra_kind():
    """A kind registered the way a deployment's module does; gone from KINDS afterwards."""
    spec = KindSpec(
        name="echo_test",
        title="Echo",
        queue=CPU_QUEUE,
        doc="A kind of the tests.",
        files=(
            FileField("photo", "the photo"),
            FileField("extras", "more photos", max_count=3, required=False),
        ),
        params=(
            Param("source", "job_id", "a job to echo", required=True),
            Param("level", "int", "how loud", default=2, minimum=1, maximum=5),
            Param("loud", "bool", "shout"),
            Param("output", "choice", "shares a client option's name", choices=("a", "b")),
        ),
    )
    register(spec)
    try:
        yield spec
    finally:
        KINDS.pop(spec.name, None)


@pytest.mark.parametrize(("kind", "name"), EVERY_PARAM, ids=[".".join(k) for k in EVERY_PARAM])
def test_every_param_of_every_kind_has_an_argument(kind, name):
    spec = KINDS[kind]
    param = spec.param(name)
    value = _sample(param)
    text = None if param.type == "bool" else client_cli._form(value)
    args = build_parser().parse_args(_argv(spec, param, text))
    assert args.submit_kind == kind
    assert getattr(args, client_cli._dest(name)) == value
    # the form string sent is parsed back by the server to the very same value
    assert param.parse(client_cli._form(value)) == value


@pytest.mark.parametrize(
    ("kind", "name"),
    [k for k in EVERY_PARAM if KINDS[k[0]].param(k[1]).type != "bool"],
    ids=lambda v: v,
)
def test_a_value_the_server_refuses_is_refused_by_the_parser(kind, name, capsys):
    spec = KINDS[kind]
    param = spec.param(name)
    bad = _bad(param)
    with pytest.raises(InputError) as server:
        param.parse(bad)
    err = _refusal(_argv(spec, param, bad), capsys)
    assert "error: argument " in err and server.value.message in err


def test_out_of_bounds_size_names_the_option_and_the_bounds(capsys):
    err = _refusal(["submit", "style", "a.png", "b.png", "--size", "99999"], capsys)
    assert "argument --size: size value must be between 32 and 4096, got 99999" in err


def test_help_shows_bounds_choices_and_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["submit", "style_transfer", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "long side of the output (px); 32 to 4096 (default: 512)" in text
    assert "one of: fast, balanced, quality (default: balanced)" in text
    assert "--multiscale, --no-multiscale" in text


def test_submit_sends_form_strings_the_server_parses(atelier, sent, tmp_path):
    content, a, b = (tmp_path / n for n in ("photo.png", "a.png", "b.png"))
    for path in (content, a, b):
        path.write_bytes(b"sent as is")
    strength = 1 / 3
    rc, out, _ = atelier(
        "submit",
        "style",
        content,
        a,
        b,
        "--size",
        "300",
        "--strength",
        repr(strength),
        "--style-weights",
        "1, 2.5",
        "--no-multiscale",
        "--style-layers",
        "relu1_1,RELU2_1",
        "--param",
        "style_layer_weights=1,3",
        "--param",
        "webhook_url=http://example.test/hook",
        "--idempotency-key",
        "k1",
    )
    assert rc == 0 and out.strip() == JOB_ID
    assert sent == [
        {
            "kind": "style_transfer",
            "fields": {
                "size": "300",
                "strength": repr(strength),
                "multiscale": "false",
                "style_weights": "1.0,2.5",
                "style_layers": "relu1_1,relu2_1",
                "style_layer_weights": "1,3",
                "webhook_url": "http://example.test/hook",
            },
            "files": [("content", content), ("style", a), ("style", b)],
            "key": "k1",
        }
    ]


def test_predict_keeps_its_positional_model(atelier, sent, tmp_path):
    image = tmp_path / "cat.png"
    image.write_bytes(b"x")
    rc, _, _ = atelier("submit", "predict", JOB_ID.upper(), image, image, "--top-k", "5")
    assert rc == 0
    assert sent[0]["fields"] == {"model": JOB_ID, "top_k": "5"}
    assert sent[0]["files"] == [("image", image), ("image", image)]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--style-weights", "1,2,3"], "style_weights has 3 values for 2 style images"),
        (["--param", "size=99999"], "size value must be between 32 and 4096, got 99999"),
        (["--param", "style_layers=relu1_1", "--style-layer-weights", "1,2"], "2 values for 1"),
    ],
)
def test_checks_of_the_kind_run_before_anything_is_sent(atelier, sent, extra, message):
    rc, _, err = atelier("submit", "style", "a.png", "b.png", "c.png", *extra)
    assert rc == 2 and message in err and sent == []


def test_too_many_uploads_are_refused_before_sending(atelier, sent):
    rc, _, err = atelier("submit", "style", "a.png", *["b.png"] * 9)
    assert rc == 2 and "style: upload at most 8 file(s)" in err and sent == []


def test_a_registered_kind_gets_a_subcommand(extra_kind, atelier, sent, tmp_path, capsys):
    photo, more = tmp_path / "photo.png", tmp_path / "more.png"
    photo.write_bytes(b"x")
    more.write_bytes(b"y")
    argv = ["echo_test", JOB_ID, photo, more, "--level", "4", "--loud", "--param", "output=b"]
    rc, _, err = atelier("submit", *argv)
    assert rc == 0, err
    assert sent[0]["kind"] == "echo_test"
    assert sent[0]["fields"] == {"source": JOB_ID, "level": "4", "loud": "true", "output": "b"}
    assert sent[0]["files"] == [("photo", photo), ("extras", more)]

    err = _refusal(["submit", "echo_test", JOB_ID, "p.png", "--level", "9"], capsys)
    assert "argument --level: level value must be between 1 and 5, got 9" in err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["submit", "echo_test", "--help"])
    help_text = capsys.readouterr().out
    assert "SOURCE PHOTO [EXTRAS ...]" in " ".join(help_text.split())
    assert "send output with --param NAME=VALUE" in help_text  # -o/--output stays the client's


def test_kind_modules_from_the_environment_get_a_subcommand(monkeypatch, tmp_path):
    (tmp_path / "atelier_test_kinds.py").write_text(
        "from shared.kinds import FileField, KindSpec, Param, register\n"
        "register(KindSpec(name='env_test', title='Env', queue='cpu', doc='From a module.',\n"
        "    files=(FileField('image', 'an image'),),\n"
        "    params=(Param('amount', 'float', 'how much', minimum=0, maximum=1),)))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("ATELIER_KIND_MODULES", "atelier_test_kinds")
    try:
        args = build_parser().parse_args(["submit", "env_test", "x.png", "--amount", "0.25"])
    finally:
        KINDS.pop("env_test", None)
        sys.modules.pop("atelier_test_kinds", None)
    assert args.submit_kind == "env_test"
    assert getattr(args, client_cli._dest("amount")) == 0.25


def test_an_optional_single_file_is_an_option_after_the_list(atelier, sent, tmp_path):
    """style's list of files ends where the options start: the mask is ``--mask``."""
    content, style, mask = (tmp_path / n for n in ("c.png", "s.png", "m.png"))
    for path in (content, style, mask):
        path.write_bytes(b"x")
    rc, _, err = atelier(
        "submit", "style", content, style, "--mask", mask, "--mask-styles", "black:0,white:keep"
    )
    assert rc == 0, err
    assert sent[0]["files"] == [("content", content), ("style", style), ("mask", mask)]
    assert sent[0]["fields"] == {"mask_styles": "black:0,white:keep"}
    rc, _, err = atelier("submit", "style", content, style, "--mask", mask)
    assert rc == 2 and "mask" in err and len(sent) == 1  # the kind's check, before sending


def test_priority_is_an_option_of_every_submit_within_the_servers_bounds(atelier, sent, tmp_path):
    content, style = tmp_path / "photo.png", tmp_path / "a.png"
    for path in (content, style):
        path.write_bytes(b"sent as is")
    rc, _, _ = atelier("submit", "style", content, style, "--priority", "7")
    assert rc == 0 and sent[-1]["fields"] == {"priority": "7"}
    rc, _, _ = atelier("submit", "style", content, style)
    assert rc == 0 and "priority" not in sent[-1]["fields"]  # the server's default applies
    with pytest.raises(SystemExit) as refused:
        build_parser().parse_args(["submit", "style", "a.png", "b.png", "--priority", "10"])
    assert refused.value.code == 2

"""End to end over HTTP: a sweep's children run on a real worker with the real engine,
then the sweep builds its contact sheet and zip; and a sweep whose last child's ender
died before the hand-over is handed over by the dispatcher's pass, exactly once."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import requests
from PIL import Image, ImageOps

from shared import fairness, states
from shared.db import session_scope
from shared.kinds.sweep import Cell
from shared.models import Job
from tests.conftest import tiny_png, wait_for
from worker.dispatcher import dispatch, hand_over_sweeps, make_sender
from worker.kinds.sweep import BACKGROUND, ChildResult, cell_origin, sheet_size

TERMINAL = {"succeeded", "failed", "canceled"}


def submit_sweep(base: str, contents: list[bytes], styles: list[bytes], **fields) -> dict:
    files = [("content", (f"c{i}.png", data, "image/png")) for i, data in enumerate(contents)]
    files += [("style", (f"s{i}.png", data, "image/png")) for i, data in enumerate(styles)]
    response = requests.post(
        f"{base}/api/v1/jobs",
        data={"kind": "sweep", **{k: str(v) for k, v in fields.items()}},
        files=files,
        timeout=30,
    )
    assert response.status_code == 202, response.text
    return response.json()


def poll(base: str, job_id: str, timeout: float = 120) -> dict:
    def check():
        job = requests.get(f"{base}/api/v1/jobs/{job_id}", timeout=10).json()
        return job if job["status"] in TERMINAL else None

    return wait_for(check, timeout=timeout, interval=0.2)


def download(base: str, job: dict, name: str) -> bytes:
    response = requests.get(f"{base}{job['urls']['self']}/files/{name}", timeout=10)
    assert response.status_code == 200, name
    return response.content


def submit_with_cli(base: str, argv: list[str], monkeypatch, capsys) -> dict:
    """``atelier submit sweep …`` in-process through the real parser, as JSON."""
    from worker.cli import build_parser

    monkeypatch.setenv("ATELIER_URL", base)
    monkeypatch.delenv("ATELIER_TOKEN", raising=False)
    args = build_parser().parse_args(["submit", "sweep", *argv, "--json"])
    assert args.func(args) == 0
    return json.loads(capsys.readouterr().out)


def test_a_sweep_runs_its_children_then_builds_the_sheet_and_zip(
    live_server, e2e_worker, tmp_path, monkeypatch, capsys
):
    first, second, style = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "s.png"
    first.write_bytes(tiny_png(48, 32, color=(30, 160, 60)))
    second.write_bytes(tiny_png(40, 40, color=(160, 30, 60)))
    style.write_bytes(tiny_png(48, 48, color=(220, 200, 20)))
    parent = submit_with_cli(
        live_server,
        ["--content", str(first), "--content", str(second), "--style", str(style),
         "--strengths", "0.2,0.8", "--presets", "fast", "--size", "48", "--iterations", "4",
         "--seed", "3", "--no-multiscale"],
        monkeypatch,
        capsys,
    )  # fmt: skip
    assert parent["kind"] == "sweep" and parent["params"]["strengths"] == [0.2, 0.8]
    assert len(parent["children"]) == 4
    done = poll(live_server, parent["id"])
    assert done["status"] == "succeeded", done["error"]
    children = [
        requests.get(f"{live_server}/api/v1/jobs/{c}", timeout=10).json()
        for c in parent["children"]
    ]
    assert [c["status"] for c in children] == ["succeeded"] * 4
    assert all(c["finished_at"] <= done["started_at"] for c in children), "parent ran last"
    assert done["attempts"] == 1 and done["progress"]["percent"] == 100.0

    metrics = done["metrics"]
    assert metrics["succeeded"] == 4
    assert metrics["sheet"]["rows"] == 2 and metrics["sheet"]["columns"] == 2
    per_child = [(m["id"], m["content"], m["strength"], m["status"]) for m in metrics["children"]]
    assert per_child == [
        (parent["children"][0], 1, 0.2, "succeeded"),
        (parent["children"][1], 1, 0.8, "succeeded"),
        (parent["children"][2], 2, 0.2, "succeeded"),
        (parent["children"][3], 2, 0.8, "succeeded"),
    ]

    sheet = Image.open(io.BytesIO(download(live_server, done, "sheet.png"))).convert("RGB")
    cell = metrics["sheet"]["cell"]
    assert sheet.size == sheet_size(2, 2, cell)
    for index, child in enumerate(children):  # each cell holds that child's result
        result = Image.open(io.BytesIO(download(live_server, child, "result.png"))).convert("RGB")
        fitted = ImageOps.contain(result, (cell, cell))
        x, y = cell_origin(index // 2, index % 2, cell)
        x, y = x + (cell - fitted.width) // 2, y + (cell - fitted.height) // 2
        pasted = sheet.crop((x, y, x + fitted.width, y + fitted.height))
        assert pasted.tobytes() == fitted.tobytes(), f"cell {index}"
    labels = sheet.crop((0, 0, sheet.width, cell_origin(0, 0, cell)[1]))
    assert labels.getcolors(1 << 16) != [(labels.width * labels.height, BACKGROUND)], "labelled"

    with zipfile.ZipFile(io.BytesIO(download(live_server, done, "results.zip"))) as bundle:
        names = sorted(bundle.namelist())
        assert names == sorted(
            f"content-{c}_style-1_strength-{s}_fast.png" for c in (1, 2) for s in ("0.2", "0.8")
        )
        first = bundle.read("content-1_style-1_strength-0.2_fast.png")
    assert first == download(live_server, children[0], "result.png")

    listed = requests.get(f"{live_server}/api/v1/jobs?parent={parent['id']}", timeout=10).json()
    assert {j["id"] for j in listed["results"]} == set(parent["children"])


def test_the_dispatcher_hands_over_a_sweep_whose_hand_over_was_lost(
    live_server, e2e_worker, e2e_settings
):
    """The children end but the process that ended the last one dies before handing the
    sweep over: the dispatcher's pass does, once; the worker then runs the sweep once,
    and as every child was canceled, the sweep ends canceled too (not failed)."""
    settings = e2e_settings
    with session_scope(settings.database_url) as session:  # hold the children back
        fairness.pause(session, "gpu", by="test")
    try:
        parent = submit_sweep(
            live_server, [tiny_png()], [tiny_png(color=(10, 10, 200))], strengths="0.3,0.7",
            size=48, presets="fast",
        )  # fmt: skip
        with session_scope(settings.database_url) as session:
            for child in parent["children"]:  # ended, with no hand-over after it
                assert states.cancel_queued(session, child)
    finally:
        with session_scope(settings.database_url) as session:
            fairness.resume(session, "gpu")
    with session_scope(settings.database_url) as session:
        assert session.get(Job, parent["id"]).queue == states.WAITING_QUEUE
    assert hand_over_sweeps(settings) == [parent["id"]]
    assert hand_over_sweeps(settings) == [], "a second pass hands nothing over"
    sender = make_sender(settings)
    wait_for(lambda: dispatch(settings, sender), timeout=20, interval=0.5)  # publishes it
    done = poll(live_server, parent["id"], timeout=60)
    assert done["status"] == "canceled" and done["attempts"] == 1, "every child was canceled"
    assert done["error"] is None and done["started_at"] is not None, "it ran, then ended so"
    assert hand_over_sweeps(settings) == []


def test_a_cell_without_a_result_says_why():
    """The sheet alone: a failed and a canceled child show their status, in grid order."""
    from worker.kinds.sweep import EMPTY, contact_sheet

    cells = [Cell(0, 0, s, "fast") for s in (0.2, 0.5, 0.8)]
    children = [
        ChildResult("a", "succeeded", None, None, "k", "result.png"),
        ChildResult("b", "failed", "out_of_memory", "too big", None, None),
        ChildResult("c", "canceled", None, None, None, None),
    ]
    result = Image.new("RGB", (96, 64), (10, 120, 200))
    sheet = contact_sheet(cells, children, {"a": result}, columns=3, cell=96)
    assert sheet.size == sheet_size(1, 3, 96)
    x, y = cell_origin(0, 0, 96)
    assert sheet.getpixel((x + 48, y + 48)) == (10, 120, 200)
    for column in (1, 2):
        x, y = cell_origin(0, column, 96)
        box = sheet.crop((x, y, x + 96, y + 96))
        colours = dict((colour, n) for n, colour in box.getcolors(1 << 16))
        assert max(colours, key=colours.get) == EMPTY  # the grey of a cell without a result
        assert len(colours) > 1, "its status is written in it"
    x0, _ = cell_origin(0, 1, 96)
    failed_text = sheet.crop((x0, y, x0 + 96, y + 96)).tobytes()
    x1, _ = cell_origin(0, 2, 96)
    assert failed_text != sheet.crop((x1, y, x1 + 96, y + 96)).tobytes(), "different words"


def _child(status: str, code: str | None = None) -> ChildResult:
    return ChildResult(
        status + (code or ""), status, code, f"{code} here" if code else None, None, None
    )


@pytest.mark.parametrize(
    ("statuses", "ends"),
    [
        ([("canceled",), ("canceled",)], ("canceled", None)),
        ([("canceled",), ("deleted",)], ("canceled", None)),
        ([("canceled",), ("failed", "out_of_memory"), ("failed", "timeout")],
         ("failed", "out_of_memory")),
        ([("deleted",), ("failed", "attempts_exhausted")], ("failed", "attempts_exhausted")),
        ([("succeeded",), ("canceled",)], ("failed", "internal")),  # its result unreadable
    ],
)  # fmt: skip
def test_a_sweep_without_results_ends_by_what_its_children_did(statuses, ends):
    """All withdrawn (canceled or deleted): canceled; any failed: the first failure's code;
    ``internal`` only when a succeeded child's result could not be read."""
    from worker.engines.errors import Canceled
    from worker.kinds.sweep import NoChildSucceeded, _nothing_succeeded

    raised = _nothing_succeeded([_child(*s) for s in statuses])
    if ends[0] == "canceled":
        assert isinstance(raised, Canceled)
    else:
        assert isinstance(raised, NoChildSucceeded) and raised.code == ends[1]
        assert raised.code in states.ERROR_CODES
        assert f"none of the sweep's {len(statuses)} child jobs has a result" in str(raised)

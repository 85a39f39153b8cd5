"""HTML pages: submit form, job page, gallery. Every page works without JavaScript.

The script on each page only improves things (drag and drop, checks before upload,
live progress without reloads); forms post and pages refresh without it. Form posts
are CSRF-protected (web.csrf); the JSON API is not, it takes tokens.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from flask import Blueprint, jsonify, redirect, render_template, request, url_for
from markupsafe import Markup
from werkzeug.datastructures import MultiDict

from shared import states
from shared.errors import InputError
from shared.jobs import get_job, list_jobs
from shared.models import Job
from shared.params import STYLE_DEFAULTS, VGG_LAYERS
from shared.storage import open_storage
from web import csrf, db
from web.auth import current_owner, owner_filter
from web.charts import charts_for, to_svg
from web.kinds import HANDLERS
from web.query import list_query
from web.results import fine_tune_view, predict_view, read_json_output
from web.security import safe_redirect_target
from web.serializers import job_to_dict
from web.submit import submit_job

bp = Blueprint("pages", __name__)
csrf.protect(bp)


@bp.app_template_filter("filesize")
def filesize(count: int) -> str:
    """Bytes as people read them: 20 MiB, 512 KiB."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:g} {unit}" if unit == "bytes" else f"{count:.3g} {unit}"
        count /= 1024
    return f"{count} bytes"  # pragma: no cover


KINDS = (
    ("style_transfer", "Style transfer", "Paint a photo in the style of one or more images."),
    ("fine_tune", "Fine-tune", "Train an image classifier on your labelled folders."),
    ("predict", "Predict", "Label images with a model you fine-tuned here."),
)
KIND_NAMES = {name for name, _, _ in KINDS}
GALLERY_PAGE = 24
STYLE_EXPERT = (
    "iterations", "seed", "optimizer", "init", "pooling", "preserve_color", "style_scale",
    "multiscale", "output_format", "content_weight", "style_weight", "tv_weight",
    "style_weights", "weights", "content_layer", "style_layers", "style_layer_weights",
)  # fmt: skip
FINE_TUNE_EXPERT = ("epochs", "batch_size", "lr", "image_size", "val_split", "augment", "seed")


def _wants_json() -> bool:
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "application/json" and request.accept_mimetypes[best] > 0


def _form(kind: str, error: InputError | None = None, status: int = 200):
    session = db.session()
    owner = owner_filter()
    recent, _ = list_jobs(session, owner=owner, limit=8)
    models, _ = list_jobs(session, owner=owner, status=states.SUCCEEDED, kind="fine_tune", limit=50)
    values = request.form if error else request.args
    return (
        render_template(
            "index.html",
            kinds=KINDS,
            kind=kind,
            available=set(HANDLERS),
            defaults=STYLE_DEFAULTS,
            vgg_layers=VGG_LAYERS,
            settings=db.settings(),
            error=error,
            values=values,
            recent=recent,
            models=models,
            style_expert=STYLE_EXPERT,
            fine_tune_expert=FINE_TUNE_EXPERT,
        ),
        status,
    )


@bp.get("/")
def index():
    kind = request.args.get("kind", "style_transfer")
    return _form(kind if kind in KIND_NAMES else "style_transfer")


@bp.post("/jobs")
def submit():
    """The form post. Empty fields mean "server default", so they are dropped here."""
    form = MultiDict(
        (key, value)
        for key, value in request.form.items(multi=True)
        if key != csrf.FIELD and value.strip() != ""
    )
    kind = form.get("kind", "style_transfer")
    try:
        job, _ = submit_job(form, request.files, current_owner(), db.settings())
    except InputError as exc:
        if _wants_json():
            return jsonify(exc.as_dict()), exc.status
        return _form(kind if kind in KIND_NAMES else "style_transfer", exc, exc.status)
    url = url_for("pages.job_page", job_id=job.id)
    if _wants_json():
        return jsonify({"id": job.id, "url": url}), 201
    return redirect(url, code=303)


def _result_views(job: Job, data: dict[str, Any]) -> dict[str, Any]:
    storage = open_storage(db.settings().storage_url)
    views: dict[str, Any] = {"fine_tune": None, "predictions": []}
    if job.kind == "fine_tune":
        views["fine_tune"] = fine_tune_view(read_json_output(storage, job, "metrics.json"))
    elif job.kind == "predict":
        views["predictions"] = predict_view(
            data, read_json_output(storage, job, "predictions.json")
        )
    return views


def _charts(job: Job) -> list[Markup]:
    return [Markup(to_svg(chart)) for chart in charts_for(job.kind, job.progress_history or [])]


@bp.get("/jobs/<job_id>")
def job_page(job_id: str):
    session = db.session()
    job = get_job(session, job_id, owner_filter())
    if job is None:
        return render_template("error.html", message=f"job {job_id} not found", status=404), 404
    data = job_to_dict(session, job, history=True)
    images = [o for o in data["outputs"] if o["content_type"].startswith("image/")]
    content = next((i for i in data["inputs"] if i["role"] == "content"), None)
    return render_template(
        "job.html",
        job=data,
        terminal=job.status in states.TERMINAL,
        result=images[0] if images else None,
        content=content,
        charts=_charts(job),
        **_result_views(job, data),
    )


@bp.get("/jobs/<job_id>/charts")
def job_charts(job_id: str):
    """The curves alone, an HTML fragment the job page's script swaps in while it runs."""
    job = get_job(db.session(), job_id, owner_filter())
    if job is None:
        return "", 404
    return Markup("".join(_charts(job)))


@bp.post("/jobs/<job_id>/cancel")
def cancel(job_id: str):
    """The no-JavaScript cancel button: same effect as the API, then back to the page."""
    from web.api import cancel_job

    cancel_job(job_id)
    return redirect(url_for("pages.job_page", job_id=job_id), code=303)


@bp.post("/jobs/<job_id>/delete")
def delete(job_id: str):
    """Delete a finished job (409 page otherwise), then back to where the button was."""
    from web.api import delete_job

    delete_job(job_id)
    target = safe_redirect_target(request.form.get("next"), url_for("pages.gallery"))
    return redirect(target, code=303)


@bp.get("/jobs")
def gallery():
    """Every job of this owner, newest first, filtered by status and kind, page by page."""
    query = list_query(request.args, page_size=GALLERY_PAGE)  # 400 page for a bad value
    session = db.session()
    rows, next_cursor = list_jobs(
        session,
        owner=owner_filter(),
        **asdict(query),  # status, kind, limit, cursor: list_jobs' own parameter names
    )
    return render_template(
        "gallery.html",
        jobs=[job_to_dict(session, job) for job in rows],
        terminal=states.TERMINAL,
        statuses=states.STATUSES,
        kinds=KINDS,
        status=query.status,
        kind=query.kind,
        next_cursor=next_cursor,
        first_page=query.cursor is not None,
    )

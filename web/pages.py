"""HTML pages: submit form, job page, gallery. Every page works without JavaScript.

The script on each page only improves things (drag and drop, checks before upload,
live progress without reloads); forms post and pages refresh without it. Form posts
are CSRF-protected (web.csrf); the JSON API is not, it takes tokens.

The submit form is derived from each kind's spec (shared/kinds): its tabs, its expert
parameters (one loop), and every choice, bound and default of the hand-made widgets;
a kind without a hand-made section gets a form made entirely from its spec. The job
page shows the result views its kind's spec names.
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
from shared.kinds import KINDS
from shared.models import Job
from shared.storage import open_storage
from web import csrf, db
from web.auth import current_owner, owner_filter
from web.charts import charts_for, to_svg
from web.kinds.describe import accept
from web.kinds.form import kind_form
from web.query import list_query
from web.results import fine_tune_view, predict_view, read_json_output
from web.security import safe_redirect_target
from web.serializers import job_to_dict
from web.submit import submit_job

bp = Blueprint("pages", __name__)
csrf.protect(bp)
bp.app_template_global("file_accept")(accept)


@bp.app_template_filter("filesize")
def filesize(count: int) -> str:
    """Bytes as people read them: 20 MiB, 512 KiB."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:g} {unit}" if unit == "bytes" else f"{count:.3g} {unit}"
        count /= 1024
    return f"{count} bytes"  # pragma: no cover


GALLERY_PAGE = 24
DEFAULT_KIND = "style_transfer"
# Fields that index.html places with widgets of their own (the rest come from the spec).
HAND_MADE = {
    "style_transfer": frozenset({"content", "style", "preset", "strength", "size"}),
    "fine_tune": frozenset({"dataset"}),
    "predict": frozenset({"model", "image"}),
}
BUTTONS = {
    "style_transfer": "Start style transfer",
    "fine_tune": "Start fine-tuning",
    "predict": "Start prediction",
}
PRESET_BLURBS = {
    "fast": "quick look, fewer steps",
    "balanced": "good default",
    "quality": "more steps, finer detail",
}


def _wants_json() -> bool:
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "application/json" and request.accept_mimetypes[best] > 0


def _known(kind: str | None) -> str:
    return kind if kind in KINDS else DEFAULT_KIND


def _form(kind: str, error: InputError | None = None, status: int = 200):
    session = db.session()
    owner = owner_filter()
    settings = db.settings()
    recent, _ = list_jobs(session, owner=owner, limit=8, top_level=True)
    models, _ = list_jobs(session, owner=owner, status=states.SUCCEEDED, kind="fine_tune", limit=50)
    forms = [
        kind_form(spec, settings, HAND_MADE.get(name, frozenset())) for name, spec in KINDS.items()
    ]
    return (
        render_template(
            "index.html",
            forms=forms,
            kind=kind,
            hand_made=HAND_MADE,
            buttons=BUTTONS,
            preset_blurbs=PRESET_BLURBS,
            settings=settings,
            error=error,
            values=request.form if error else request.args,
            recent=recent,
            models=models,
        ),
        status,
    )


@bp.get("/")
def index():
    return _form(_known(request.args.get("kind")))


@bp.post("/jobs")
def submit():
    """The form post. Empty fields mean "server default", so they are dropped here."""
    form = MultiDict(
        (key, value)
        for key, value in request.form.items(multi=True)
        if key != csrf.FIELD and value.strip() != ""
    )
    try:
        job, _ = submit_job(form, request.files, current_owner(), db.settings())
    except InputError as exc:
        if _wants_json():
            return jsonify(exc.as_dict()), exc.status
        return _form(_known(form.get("kind")), exc, exc.status)
    url = url_for("pages.job_page", job_id=job.id)
    if _wants_json():
        return jsonify({"id": job.id, "url": url}), 201
    return redirect(url, code=303)


def _result_views(job: Job, data: dict[str, Any]) -> dict[str, Any]:
    """The views the kind's spec names, read from the job's output files."""
    spec = KINDS.get(job.kind)
    names = spec.views if spec is not None else ()
    storage = open_storage(db.settings().storage_url)
    views: dict[str, Any] = {"views": names, "fine_tune": None, "predictions": []}
    if "fine_tune_report" in names:
        views["fine_tune"] = fine_tune_view(read_json_output(storage, job, "metrics.json"))
    if "predictions" in names:
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
    """Every job of this owner, newest first, filtered by status and kind, page by page;
    a sweep's children only behind its link (``?parent=<sweep id>``)."""
    query = list_query(request.args, page_size=GALLERY_PAGE)  # 400 page for a bad value
    session = db.session()
    rows, next_cursor = list_jobs(
        session,
        owner=owner_filter(),
        **asdict(query),  # status, kind, limit, cursor, parent: list_jobs' own names
        top_level=query.parent is None,  # a sweep is one entry, its children behind it
    )
    return render_template(
        "gallery.html",
        parent=query.parent,
        jobs=[job_to_dict(session, job) for job in rows],
        terminal=states.TERMINAL,
        statuses=states.STATUSES,
        kinds=[(name, spec.title, spec.doc) for name, spec in KINDS.items()],
        status=query.status,
        kind=query.kind,
        next_cursor=next_cursor,
        first_page=query.cursor is not None,
    )

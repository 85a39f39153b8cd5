"""HTML pages: the submit form, the job page. Usable without JavaScript."""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, request, url_for

from shared.errors import InputError
from shared.jobs import get_job, list_jobs
from shared.params import STYLE_DEFAULTS
from shared.states import TERMINAL
from web import db
from web.auth import current_owner, owner_filter
from web.serializers import job_to_dict
from web.submit import submit_job

bp = Blueprint("pages", __name__)


def _form(error: InputError | None = None, status: int = 200):
    session = db.session()
    recent, _ = list_jobs(session, owner=owner_filter(), limit=10)
    return (
        render_template(
            "index.html",
            defaults=STYLE_DEFAULTS,
            settings=db.settings(),
            error=error,
            values=request.form if error else {},
            recent=recent,
        ),
        status,
    )


@bp.get("/")
def index():
    return _form()


@bp.post("/jobs")
def submit():
    try:
        job, _ = submit_job(request.form, request.files, current_owner(), db.settings())
    except InputError as exc:
        return _form(exc, exc.status)
    return redirect(url_for("pages.job_page", job_id=job.id), code=303)


@bp.get("/jobs/<job_id>")
def job_page(job_id: str):
    session = db.session()
    job = get_job(session, job_id, owner_filter())
    if job is None:
        return render_template("error.html", message=f"job {job_id} not found", status=404), 404
    data = job_to_dict(session, job)
    return render_template("job.html", job=data, terminal=job.status in TERMINAL)


@bp.post("/jobs/<job_id>/cancel")
def cancel(job_id: str):
    """The no-JavaScript cancel button: same effect as the API, then back to the page."""
    from web.api import cancel_job

    cancel_job(job_id)
    return redirect(url_for("pages.job_page", job_id=job_id), code=303)

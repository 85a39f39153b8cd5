"""The links of a job object are ``url_for``'s, though built from cached templates
(web/serializers.py): under a script root, outside a request, and for an id that
needs quoting."""

from __future__ import annotations

from flask import url_for

from web.serializers import job_links


def test_links_equal_url_for_under_each_script_root(app):
    job_id = "0123456789abcdef0123456789abcdef"
    for root in ("", "/atelier", "/a/job-id", ""):  # the placeholder's own name too
        with app.test_request_context(base_url=f"http://127.0.0.1{root}/"):
            expected = (
                url_for("api.get_job", job_id=job_id),
                url_for("pages.job_page", job_id=job_id),
            )
            assert job_links(job_id) == expected
            assert expected[0] == f"{root}/api/v1/jobs/{job_id}"


def test_an_id_that_needs_quoting_is_quoted_as_werkzeug_does(app):
    for odd in ("a b", "é", "x/y", "job-id", "50%"):
        with app.test_request_context():
            assert job_links(odd) == (
                url_for("api.get_job", job_id=odd),
                url_for("pages.job_page", job_id=odd),
            )


def test_outside_a_request_the_links_are_url_for_s(app):
    app.config["SERVER_NAME"] = "atelier.example"
    with app.app_context():
        assert job_links("abc") == (
            url_for("api.get_job", job_id="abc"),
            url_for("pages.job_page", job_id="abc"),
        )

"""Flask front end: JSON API under /api/v1, HTML pages, health check."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from weakref import WeakSet

from flask import Flask, Request, Response
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface, SessionMixin

from shared.kinds import load_modules
from shared.secrets import persistent_secret
from shared.settings import Settings, load_settings


class CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, without building the signer for a request that
    carries no session cookie: that is every API call and job-page poll, and building
    it was about a tenth of such a request's CPU. A new session is still signed when
    it is saved. A request without any cookie is not parsed for one, and a session
    nobody touched is not saved (Flask's own save would only look up seven settings
    and return)."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if app.secret_key and (
            not request.environ.get("HTTP_COOKIE")
            or self.get_cookie_name(app) not in request.cookies
        ):
            return self.session_class()
        return super().open_session(app, request)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        if not session and not session.modified and not session.accessed:
            return  # what Flask's save does for it: no cookie, no Vary
        super().save_session(app, session, response)


class Atelier(Flask):
    """Flask, asking once per function whether a hook or view is ``async def``.

    Flask asks ``inspect.iscoroutinefunction`` for every view, hook and teardown of
    every request (eight for a job read), which was a twentieth of its CPU. Plain
    functions are remembered weakly, so a per-request callback is not kept alive; an
    ``async def`` one is left to Flask each time.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._plain_functions: WeakSet[Callable[..., Any]] = WeakSet()

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        try:
            if func in self._plain_functions:
                return func
        except TypeError:  # no weak reference to it: ask each time
            return super().ensure_sync(func)
        sync = super().ensure_sync(func)
        if sync is func:
            self._plain_functions.add(func)
        return sync


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app; ``test_config`` may carry ``ATELIER_SETTINGS`` (a Settings) and Flask keys."""
    app = Atelier(__name__)
    app.session_interface = CookieSessions()
    config = dict(test_config or {})
    settings: Settings = config.pop("ATELIER_SETTINGS", None) or load_settings()
    # before anything lists the kinds (routes, forms, OpenAPI): extra kinds register now
    load_modules(settings.kind_modules)
    app.config.update(
        ATELIER=settings,
        SECRET_KEY=persistent_secret(settings, "secret_key"),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.public_url_is_https,
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        JSON_SORT_KEYS=False,
    )
    app.config.update(config)

    from web import (
        api,
        auth,
        csrf,
        db,
        errors,
        events,
        health,
        metrics,
        openapi,
        pages,
        queue,
        queues,
        security,
    )

    db.init_app(app)
    queue.init_app(app)
    errors.init_app(app)
    security.init_app(app, settings)  # the Host check runs before anything else
    auth.init_app(app)
    csrf.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(queues.bp)
    events.init_app(app)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)
    return app

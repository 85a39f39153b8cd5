"""The Celery application of the worker processes (``celery -A worker.celery_app``)."""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import worker_process_init

from shared.queue import celery_config
from shared.settings import get_settings

log = logging.getLogger(__name__)


def make_celery() -> Celery:
    settings = get_settings()
    app = Celery("atelier")
    app.conf.update(celery_config(settings))
    app.conf.include = ["worker.tasks"]
    return app


app = make_celery()


@worker_process_init.connect
def _preload_models(**_kwargs) -> None:
    """Load the default VGG19 once per child process, after the fork (CUDA and fork mix badly)."""
    from worker.runner import preload

    try:
        preload()
    except Exception:  # a broken preload must not kill the child; the job will report it
        log.exception("model preload failed; jobs will retry loading and report the error")

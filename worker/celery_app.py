"""The Celery application of the worker processes (``celery -A worker.celery_app``).

Shutdown, for autoscalers: the first SIGTERM (or SIGINT) starts Celery's warm shutdown
(no new jobs) and a drain of ATELIER_DRAIN_SECONDS. A job still running when it runs
out is told (SIGUSR2 to the pool children) to hand itself back to the queue at its next
progress step; a second SIGTERM or SIGINT, or a child that does not hand back within
HANDBACK_GRACE, makes it Celery's cold shutdown (SIGQUIT): the job stops at once and the
dispatcher's heartbeat rule requeues it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import psutil
from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutdown, worker_shutting_down

from shared.kinds import load_modules
from shared.queue import celery_config
from shared.settings import get_settings
from shared.workers import Beacon, Offer, device_of, redis_client
from worker.progress import HANDBACK_GRACE, request_drain

log = logging.getLogger(__name__)
_draining = threading.Event()


def make_celery() -> Celery:
    """The worker's app. The deployment's own kinds (ATELIER_KIND_MODULES: each module
    registers a spec and a runner) load first, in the main process before the pool
    forks, so a worker that cannot load one fails at start, not on its first job."""
    settings = get_settings()
    load_modules(settings.kind_modules)
    app = Celery("atelier")
    app.conf.update(celery_config(settings))
    app.conf.include = ["worker.tasks"]
    return app


app = make_celery()


@worker_process_init.connect
def _preload_models(**_kwargs) -> None:
    """Run each kind's preload (the default VGG19) once per child process, after the fork
    (CUDA and fork mix badly); a broken one is logged and the job reports its error.

    Also arms the child for a drain: SIGUSR2 from the main process asks the running job
    to hand itself back (Celery's children leave SIGUSR2 alone).
    """
    from worker.gpu_admission import cap_allocator, share_from_env
    from worker.kinds import preload

    signal.signal(signal.SIGUSR2, request_drain)
    cap_allocator(share_from_env(os.environ))  # --jobs-per-gpu: keep to this process's share
    preload()


_beacons: list[Beacon] = []


@worker_ready.connect
def _start_heartbeat(sender, **_kwargs) -> None:
    """Publish this node's heartbeat in Redis: ``/healthz`` counts live workers from them.

    ``worker_ready`` fires in the node's main process before it answers anything, so a
    node that answers a ping has already published its first beat.
    """
    settings = get_settings()
    queues = tuple(sorted(sender.app.amqp.queues.consume_from or ()))
    offer = Offer(queues, device_of(settings.device))
    client = redis_client(settings.broker_url)
    _beacons.append(Beacon(client, sender.hostname, offer=offer).start())


@worker_shutdown.connect
def _stop_heartbeat(**_kwargs) -> None:
    """A warm shutdown removes the key at once; a killed node's key expires instead."""
    while _beacons:
        _beacons.pop().stop()


@worker_shutting_down.connect
def _start_drain(how: str = "", **_kwargs) -> None:
    """In the main process, on the first warm-shutdown signal: bound the wait for the
    running job, and make the next SIGTERM or SIGINT stop at once."""
    if how != "Warm" or _draining.is_set():
        return
    _draining.set()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop_at_once)
    seconds = get_settings().drain_seconds
    log.warning(
        "shutting down: a running job has %d s to finish, then goes back to the queue", seconds
    )
    threading.Thread(target=_drain, args=(seconds,), name="drain", daemon=True).start()


def _stop_at_once(_signum: int, _frame: object) -> None:
    """A second SIGTERM/SIGINT during the drain: Celery's cold shutdown, which ends the
    running job's process; its row is requeued by the heartbeat rule."""
    os.kill(os.getpid(), signal.SIGQUIT)


def _drain(seconds: float) -> None:
    """Wait out the drain (the process exits sooner if the job ends), then ask the pool
    children to hand their jobs back; cold shutdown if they have not after the grace."""
    time.sleep(seconds)
    children = psutil.Process().children()
    log.warning("drain of %s s over: handing the running job back to the queue", seconds)
    for child in children:
        try:
            os.kill(child.pid, signal.SIGUSR2)
        except ProcessLookupError:
            continue
    time.sleep(HANDBACK_GRACE)
    log.warning("the running job was not handed back within %s s; stopping at once", HANDBACK_GRACE)
    os.kill(os.getpid(), signal.SIGQUIT)

"""Queue names and task names: the only coupling between web (sender) and worker.

The web side enqueues by task *name*, so it never imports the worker or torch.
"""

from __future__ import annotations

from shared.settings import Settings

RUN_JOB_TASK = "atelier.run_job"
NOTIFY_TASK = "atelier.notify_webhook"
DELIVER_WEBHOOK_TASK = "atelier.deliver_webhook"
GPU_QUEUE = "gpu"
CPU_QUEUE = "cpu"
QUEUES = (GPU_QUEUE, CPU_QUEUE)


def queue_for(kind: str) -> str:
    """The queue that runs jobs of ``kind``: its spec says (shared/kinds); a kind without
    a spec is an error here, at the sender, not a message no worker ever takes."""
    from shared.kinds import KINDS

    spec = KINDS.get(kind)
    if spec is None:
        raise LookupError(f"job kind {kind!r} has no spec in shared.kinds: register it")
    return spec.queue


def celery_config(settings: Settings) -> dict:
    """Celery settings every sender and worker shares; the README's "Running on a GPU
    cluster" and "Accounts, limits and reliability" sections say why the delivery ones
    (late acks, prefetch 1, reject on a lost worker, the visibility timeout) are set."""
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout},
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": settings.soft_time_limit,
        "task_time_limit": settings.time_limit,
        "task_default_queue": GPU_QUEUE,
        "task_routes": {
            RUN_JOB_TASK: {"queue": GPU_QUEUE},
            NOTIFY_TASK: {"queue": CPU_QUEUE},
            DELIVER_WEBHOOK_TASK: {"queue": CPU_QUEUE},
        },
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_max_tasks_per_child": 50,
        "worker_max_memory_per_child": 8 * 1024 * 1024,  # KiB: recycle a child past 8 GiB
        # A new child loads VGG19 (worker_process_init) before it reports alive; Celery's
        # 4 s default killed and re-forked children over and over on a loaded host
        "worker_proc_alive_timeout": 120,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "broker_pool_limit": 10,
    }

"""The ``atelier`` command line: one entry point for running, operating and local use."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading

from shared.queue import CPU_QUEUE, GPU_QUEUE
from shared.settings import load_settings
from worker.client_cli import add_parsers as add_client

KNOWN_QUEUES = frozenset({GPU_QUEUE, CPU_QUEUE})


def _positive(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {raw!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _cmd_up(args: argparse.Namespace) -> int:
    from worker.embedded import run_up

    return run_up(args.host, args.port)


def _cmd_web(args: argparse.Namespace) -> int:
    from shared.hosts import export_trusted_hosts
    from worker.embedded import web_command

    if args.dev:
        command = [
            sys.executable,
            "-m",
            "flask",
            "--app",
            "web.wsgi",
            "run",
            "--debug",
            "--host",
            args.host,
            "--port",
            str(args.port),
        ]
    else:
        command = web_command(args.host, args.port, workers=args.workers)
    export_trusted_hosts(args.host, os.environ)
    os.execv(sys.executable, command)
    return 0  # pragma: no cover


def _gpu_ids(spec: str, environ: dict[str, str]) -> list[str]:
    """GPU ids for ``--gpus``; ``all`` keeps an inherited CUDA_VISIBLE_DEVICES' own ids."""
    if spec != "all":
        return [part.strip() for part in spec.split(",") if part.strip()]
    inherited = environ.get("CUDA_VISIBLE_DEVICES")
    if inherited is not None:
        return [part.strip() for part in inherited.split(",") if part.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _queues(raw: str) -> str:
    """argparse type for ``--queues``: a comma list of queues the jobs are routed to."""
    names = [part.strip() for part in raw.split(",") if part.strip()]
    unknown = sorted(set(names) - KNOWN_QUEUES)
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown queue {', '.join(unknown) or raw!r}: use {' or '.join(sorted(KNOWN_QUEUES))}"
        )
    return ",".join(names)


def _jobs_per_gpu(raw: str) -> int:
    """argparse type for ``--jobs-per-gpu``: worker processes sharing one GPU, bounded."""
    from worker.gpu_admission import MAX_JOBS_PER_GPU

    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_JOBS_PER_GPU:
        raise argparse.ArgumentTypeError(
            f"--jobs-per-gpu must be a whole number from 1 to {MAX_JOBS_PER_GPU}, got {raw!r}"
        )
    return value


def _gib(raw: str) -> float:
    """argparse type for ``--gpu-memory``: a card's memory in GiB."""
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"--gpu-memory is in GiB and must be > 0, got {raw!r}")
    return value


class WorkerPlanError(ValueError):
    """``atelier worker`` options that cannot make a plan; the message says what to change."""


def _card_bytes(gpu: str, environ: dict[str, str]) -> int:
    """Total memory of GPU ``gpu`` as this process's PyTorch numbers it."""
    import torch

    inherited = [p.strip() for p in environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
    if gpu in inherited:
        index = inherited.index(gpu)
    elif gpu.isdigit():
        index = int(gpu)
    else:
        raise WorkerPlanError(f"cannot size GPU {gpu!r} here; pass --gpu-memory GiB")
    return int(torch.cuda.get_device_properties(index).total_memory)


def _gpu_share(args: argparse.Namespace, gpu: str, environ: dict[str, str]) -> int:
    """Each process's memory share on ``gpu``; WorkerPlanError for a plan that cannot fit."""
    from shared.settings import Settings
    from worker.gpu_admission import AdmissionError, plan_share

    total = int(args.gpu_memory * 2**30) if args.gpu_memory else _card_bytes(gpu, environ)
    max_size = int(environ.get("ATELIER_MAX_SIZE") or Settings.max_size)
    try:
        return plan_share(total, args.jobs_per_gpu * (args.concurrency or 1), max_size)
    except AdmissionError as exc:
        raise WorkerPlanError(f"GPU {gpu}: {exc}") from None


def worker_plan(args: argparse.Namespace, environ: dict[str, str]) -> list[tuple[dict, list]]:
    """(extra env, command) for each worker process ``atelier worker`` would start.

    CPU: one Celery worker with ``--concurrency`` prefork children, each told to use its
    share of the cores (``OMP_NUM_THREADS``) so N children do not fight over them.
    GPU: ``--jobs-per-gpu`` Celery workers per GPU (default 1: a job has the whole card),
    each seeing only its GPU (``CUDA_VISIBLE_DEVICES``), so each has its own CUDA context
    (CUDA MPS, where the host runs its daemon, then shares the card between them), with
    ``--concurrency`` children each.  With more than one process per GPU, each is given
    its memory share (worker/gpu_admission.py), and a plan whose share cannot hold the
    largest job the service accepts is refused before anything starts.
    """
    from worker.embedded import worker_command

    concurrency = args.concurrency or 1
    jobs_per_gpu = getattr(args, "jobs_per_gpu", 1)
    if not args.gpus:
        if jobs_per_gpu > 1:
            raise WorkerPlanError("--jobs-per-gpu needs --gpus (it shares a GPU between jobs)")
        extra = {}
        if concurrency > 1 and "OMP_NUM_THREADS" not in environ:
            extra["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // concurrency))
        return [(extra, worker_command(args.queues, concurrency, args.name))]
    plan = []
    for gpu in _gpu_ids(args.gpus, environ):
        extra = {"CUDA_VISIBLE_DEVICES": gpu, "ATELIER_DEVICE": "cuda"}
        if jobs_per_gpu == 1:
            plan.append((extra, worker_command(args.queues, concurrency, f"{args.name}-gpu{gpu}")))
            continue
        from worker.gpu_admission import SHARE_ENV

        extra[SHARE_ENV] = str(_gpu_share(args, gpu, environ))
        for slot in range(jobs_per_gpu):
            name = f"{args.name}-gpu{gpu}-{slot}"
            plan.append((dict(extra), worker_command(args.queues, concurrency, name)))
    return plan


def _supervise(procs: list[subprocess.Popen]) -> int:
    """Wait for the workers; on SIGTERM/SIGINT, or when one dies, stop all (warm shutdown).

    Each worker then drains for ATELIER_DRAIN_SECONDS and hands back a job still running;
    a second SIGTERM/SIGINT is passed on too, and makes them stop at once.
    """
    stopping = threading.Event()

    def _forward(_signum: int, _frame: object) -> None:
        if stopping.is_set():  # the second signal: each worker's cold shutdown
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
        stopping.set()

    previous = {sig: signal.signal(sig, _forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stopping.is_set() and all(proc.poll() is None for proc in procs):
            stopping.wait(0.5)
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()  # Celery's warm shutdown: the running job finishes or requeues
        codes = [proc.wait() for proc in procs]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopping.is_set():
        return 0
    failed = next((code for code in codes if code), 0)  # the worker that died first
    return failed if failed >= 0 else 128 - failed  # killed by a signal: 128 + its number


def _cmd_worker(args: argparse.Namespace) -> int:
    try:
        plan = worker_plan(args, dict(os.environ))
    except WorkerPlanError as exc:
        print(f"atelier worker: {exc}", file=sys.stderr)
        return 2
    if not plan:
        print("atelier worker: --gpus asked for GPUs but none are visible", file=sys.stderr)
        return 2
    if args.print:
        for extra, command in plan:
            print(shlex.join([*(f"{k}={v}" for k, v in extra.items()), *command]))
        return 0
    if not args.gpus:
        extra, command = plan[0]
        os.environ.update(extra)
        os.execv(sys.executable, command)
    # own sessions: a terminal's Ctrl-C reaches only this process, which passes on one
    # signal per signal it gets (a second one stops the workers at once)
    procs = [
        subprocess.Popen(command, env={**os.environ, **extra}, start_new_session=True)
        for extra, command in plan
    ]
    return _supervise(procs)


def _cmd_dispatcher(_args: argparse.Namespace) -> int:
    from worker.dispatcher import run_forever

    try:
        run_forever(load_settings(), threading.Event())
    except KeyboardInterrupt:
        pass
    return 0


def _cmd_db(args: argparse.Namespace) -> int:
    from shared import migrate

    url = load_settings().database_url
    if args.action == "upgrade":
        migrate.upgrade(url, args.revision or "head")
    else:
        if not args.revision:
            print("atelier db downgrade needs a revision (e.g. base)", file=sys.stderr)
            return 2
        migrate.downgrade(url, args.revision)
    return 0


def _cmd_token(args: argparse.Namespace) -> int:
    from shared.db import session_scope
    from shared.tokens import create_token, list_tokens, revoke_token

    url = load_settings().database_url
    with session_scope(url) as session:
        if args.action == "create":
            if not args.value:
                print("atelier token create needs an OWNER", file=sys.stderr)
                return 2
            try:
                row, plain = create_token(session, args.value, "admin" if args.admin else "user")
            except ValueError as exc:
                print(f"atelier token create: {exc}", file=sys.stderr)
                return 2
            print(plain)
            print(
                f"token {row.id} for {row.owner} ({row.role}); it is shown only once",
                file=sys.stderr,
            )
        elif args.action == "revoke":
            if not args.value or revoke_token(session, args.value) == 0:
                print("no live token matches; give an id, a prefix or the token", file=sys.stderr)
                return 1
            print("revoked", file=sys.stderr)
        else:
            for row in list_tokens(session):
                state = "revoked" if row.revoked_at else "live"
                print(f"{row.id}\t{row.prefix}…\t{row.owner}\t{row.role}\t{state}")
    return 0


# commands that run an engine here; their modules import torch, so they load on demand
LOCAL_COMMANDS = {
    "stylize": ("run style transfer locally (no queue)", "worker.stylize_cli"),
    "finetune": ("run fine-tuning locally (no queue)", "worker.finetune_cli"),
}


def _add_local(sub: argparse._SubParsersAction, name: str, help_text: str, module: str) -> None:
    """Register an engine command without importing torch for every other command.

    The placeholder only lists the command in ``atelier --help``; ``main`` sends the
    line to the engine CLI module's real parser.
    """
    placeholder = sub.add_parser(name, help=help_text, add_help=False)
    placeholder.add_argument("rest", nargs=argparse.REMAINDER)
    placeholder.set_defaults(func=lambda args: _run_local(name, module, args.rest))


def _run_local(name: str, module: str, rest: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="atelier")
    importlib.import_module(module).add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args([name, *rest])
    return int(args.func(args) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atelier", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="everything on this machine: Redis, worker, web")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.set_defaults(func=_cmd_up)

    web = sub.add_parser("web", help="the web/API server (gunicorn)")
    web.add_argument("--host", default="127.0.0.1")
    web.add_argument("--port", type=int, default=8000)
    web.add_argument("--workers", type=int, default=2)
    web.add_argument("--dev", action="store_true", help="Flask's debug server instead")
    web.set_defaults(func=_cmd_web)

    worker = sub.add_parser("worker", help="Celery worker(s); one process per GPU")
    worker.add_argument("--gpus", help="all or a comma list of GPU ids: one process per GPU")
    worker.add_argument("--queues", type=_queues, default="gpu,cpu", help="comma list: gpu,cpu")
    worker.add_argument(
        "--concurrency",
        type=_positive,
        default=1,
        help="jobs at once (CPU: prefork children sharing the cores; GPU: per GPU)",
    )
    worker.add_argument(
        "--jobs-per-gpu",
        type=_jobs_per_gpu,
        default=1,
        help="worker processes per GPU, each with its own CUDA context and memory share (1-8)",
    )
    worker.add_argument(
        "--gpu-memory",
        type=_gib,
        help="each GPU's memory in GiB for --jobs-per-gpu admission (default: ask the card)",
    )
    worker.add_argument("--name", default="atelier", help="Celery node name prefix")
    worker.add_argument("--print", action="store_true", help="print the worker command(s) and exit")
    worker.set_defaults(func=_cmd_worker)

    dispatcher = sub.add_parser("dispatcher", help="publish unsent jobs, requeue abandoned ones")
    dispatcher.set_defaults(func=_cmd_dispatcher)

    db = sub.add_parser("db", help="database migrations")
    db.add_argument("action", choices=("upgrade", "downgrade"))
    db.add_argument("revision", nargs="?")
    db.set_defaults(func=_cmd_db)

    token = sub.add_parser("token", help="API tokens: create OWNER [--admin], revoke ID, list")
    token.add_argument("action", choices=("create", "revoke", "list"))
    token.add_argument("value", nargs="?", help="owner (create) or id/prefix/token (revoke)")
    token.add_argument("--admin", action="store_true", help="the token sees every owner's jobs")
    token.set_defaults(func=_cmd_token)

    add_client(sub)
    for name, (help_text, module) in LOCAL_COMMANDS.items():
        _add_local(sub, name, help_text, module)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in LOCAL_COMMANDS:  # straight to the engine's own parser
        return _run_local(argv[0], LOCAL_COMMANDS[argv[0]][1], argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""The ``atelier`` command line: one entry point for running, operating and local use."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import threading

from shared import migrate
from shared.settings import load_settings
from worker.client_cli import add_parsers as add_client
from worker.finetune_cli import add_parser as add_finetune
from worker.stylize_cli import add_parser as add_stylize


def _cmd_up(args: argparse.Namespace) -> int:
    from worker.embedded import run_up

    return run_up(args.host, args.port)


def _cmd_web(args: argparse.Namespace) -> int:
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
    os.execv(sys.executable, command)
    return 0  # pragma: no cover


def _gpu_ids(spec: str) -> list[str]:
    if spec != "all":
        return [part.strip() for part in spec.split(",") if part.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _cmd_worker(args: argparse.Namespace) -> int:
    from worker.embedded import worker_command

    if not args.gpus:
        command = worker_command(args.queues, args.concurrency)
        os.execv(sys.executable, command)
    gpus = _gpu_ids(args.gpus)
    if not gpus:
        print("atelier worker: --gpus asked for GPUs but none are visible", file=sys.stderr)
        return 2
    procs = []
    for gpu in gpus:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu, "ATELIER_DEVICE": "cuda"}
        procs.append(subprocess.Popen(worker_command(args.queues, 1, f"atelier-gpu{gpu}"), env=env))
    try:
        return max(proc.wait() for proc in procs)
    except KeyboardInterrupt:
        for proc in procs:
            proc.terminate()
        return max(proc.wait() for proc in procs)


def _cmd_dispatcher(_args: argparse.Namespace) -> int:
    from worker.dispatcher import run_forever

    try:
        run_forever(load_settings(), threading.Event())
    except KeyboardInterrupt:
        pass
    return 0


def _cmd_db(args: argparse.Namespace) -> int:
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
    worker.add_argument("--gpus", help="all or a comma list of GPU ids")
    worker.add_argument("--queues", default="gpu,cpu")
    worker.add_argument("--concurrency", type=int, default=1)
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
    add_stylize(sub)
    add_finetune(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""``atelier queue pause|resume NAME`` and ``atelier queue status``: queue administration
over HTTP (``/api/v1/queues``, web/queues.py), with an admin ``ATELIER_TOKEN``.

A paused queue's jobs stay ``queued`` and no worker claims them; running jobs finish.
Resuming sends them to the workers again. Exit status as for the other client commands
(worker/client_cli.py): 0 done, 2 refused (not an admin token, no such queue), 3 the
server could not be reached.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any, Protocol

import requests


class ApiClient(Protocol):
    """What this needs of worker/client_cli.py's Client (not imported: that module
    imports this one to register the commands)."""

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response: ...


def _queues(client: ApiClient) -> list[dict[str, Any]]:
    return client._request("GET", "/api/v1/queues").json()["queues"]


def _change(client: ApiClient, name: str, action: str) -> dict[str, Any]:
    return client._request("POST", f"/api/v1/queues/{name}/{action}").json()


def describe(queue: dict[str, Any]) -> str:
    """One line per queue: ``gpu  paused by root since …  queued 3  running 1``."""
    state = (
        f"paused by {queue['paused_by']} since {queue['paused_at']}"
        if queue["paused"]
        else "running"
    )
    return f"{queue['name']:<8} {state}  queued {queue['queued']}  running {queue['running']}"


def _print(value: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(value, indent=2))
    elif isinstance(value, list):
        for queue in value:
            print(describe(queue))
    else:
        print(describe(value))


def _cmd_status(client: ApiClient, args: argparse.Namespace) -> int:
    _print(_queues(client), args.json)
    return 0


def _cmd_pause(client: ApiClient, args: argparse.Namespace) -> int:
    _print(_change(client, args.name, "pause"), args.json)
    return 0


def _cmd_resume(client: ApiClient, args: argparse.Namespace) -> int:
    _print(_change(client, args.name, "resume"), args.json)
    return 0


def add_parsers(
    sub: argparse._SubParsersAction,
    common: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], int],
) -> None:
    """Register ``atelier queue …`` on the ``atelier`` parser; ``common`` (--url, --json)
    and ``run`` (which makes the client and turns errors into exit statuses) are the
    client commands' own."""
    queue = sub.add_parser("queue", help="pause, resume or show the job queues (admin)")
    actions = queue.add_subparsers(dest="queue_action", required=True)
    status = actions.add_parser("status", parents=[common], help="every queue and its jobs")
    status.set_defaults(func=run, client_func=_cmd_status)
    for name, handler, help_text in (
        ("pause", _cmd_pause, "stop claiming the queue's jobs; they stay queued"),
        ("resume", _cmd_resume, "claim the queue's jobs again"),
    ):
        action = actions.add_parser(name, parents=[common], help=help_text)
        action.add_argument("name", help="the queue, e.g. gpu or cpu")
        action.set_defaults(func=run, client_func=handler)

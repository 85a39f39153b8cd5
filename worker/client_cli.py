"""``atelier submit|status|list|cancel|download``: the command-line client of the HTTP API.

It talks only HTTP (``ATELIER_URL``, default http://127.0.0.1:8000; ``ATELIER_TOKEN`` sent
as ``Authorization: Bearer``), so it works against any Atelier server and needs neither
the database nor the queue. ``--json`` prints the API's own objects for scripts.

Exit status: 0 done (or accepted, without ``--wait``), 1 the waited-for job failed or
was canceled, 2 the server refused the request, 3 the server could not be reached,
130 interrupted while waiting (the job keeps running).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TextIO

import requests

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = frozenset({"succeeded", "failed", "canceled"})
BAR_WIDTH = 30
EXIT_FAILED, EXIT_REFUSED, EXIT_UNREACHABLE = 1, 2, 3


class ApiError(Exception):
    """The server answered with an error object (or something that is not the API)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        return f"{self.status} {self.code}{where}: {self.message}"


class Client:
    """A thin wrapper of the JSON API; every method returns the API's own objects."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 60) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.http = requests.Session()
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = path if path.startswith("http") else self.base_url + path
        response = self.http.request(method, url, timeout=self.timeout, **kwargs)
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                raise ApiError(
                    response.status_code, error["code"], error["message"], error.get("field")
                )
            except (ValueError, KeyError, TypeError):
                raise ApiError(
                    response.status_code, "http_error", response.text[:200] or response.reason
                ) from None
        return response

    def submit(
        self,
        kind: str,
        fields: dict[str, str],
        files: list[tuple[str, Path]],
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        with ExitStack() as stack:
            parts = [
                (field, (path.name, stack.enter_context(path.open("rb")))) for field, path in files
            ]
            return self._request(
                "POST",
                "/api/v1/jobs",
                data={"kind": kind, **fields},
                files=parts,
                headers=headers,
            ).json()

    def get(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/api/v1/jobs/{job_id}").json()

    def list(self, **filters: Any) -> dict[str, Any]:
        params = {k: v for k, v in filters.items() if v is not None}
        return self._request("GET", "/api/v1/jobs", params=params).json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._request("POST", f"/api/v1/jobs/{job_id}/cancel").json()

    def download(self, item: dict[str, Any], directory: Path) -> Path:
        """Stream one file of a job into ``directory`` (written whole, then renamed)."""
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / Path(item["name"]).name
        partial = target.with_name(target.name + ".part")
        with self._request("GET", item["url"], stream=True) as response:
            with partial.open("wb") as handle:
                for chunk in response.iter_content(1 << 16):
                    handle.write(chunk)
        partial.replace(target)
        return target


# ---------------------------------------------------------------- output


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _progress_line(job: dict[str, Any]) -> str:
    p = job.get("progress") or {}
    percent = float(p.get("percent") or 0)
    filled = int(BAR_WIDTH * percent / 100)
    line = f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {percent:5.1f}% {job['status']}"
    if job.get("queue_position"):
        line += f" · #{job['queue_position']} in queue"
    if p.get("stage"):
        line += f" · {p['stage']}"
    if p.get("eta_seconds") and job["status"] not in TERMINAL:
        line += f" · ~{round(p['eta_seconds'])} s left"
    if p.get("loss") is not None:
        line += f" · loss {p['loss']:.4g}"
    return line


def _describe(job: dict[str, Any], base_url: str) -> str:
    lines = [f"{job['id']}  {job['kind']}  {job['status']}", f"  {_progress_line(job)}"]
    if job.get("error"):
        lines.append(f"  error {job['error']['code']}: {job['error']['message']}")
    for item in job.get("outputs", []):
        lines.append(f"  output {item['name']}  {base_url}{item['url']}")
    lines.append(f"  web: {base_url}{job['urls']['web']}")
    return "\n".join(lines)


class ProgressBar:
    """Redraws one line on a terminal; elsewhere prints a line per status or 10% step."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.last: tuple[str, int] | None = None

    def update(self, job: dict[str, Any]) -> None:
        line = _progress_line(job)
        if self.live:
            self.stream.write("\r" + line[:120].ljust(120))
        else:
            key = (job["status"], int((job.get("progress") or {}).get("percent") or 0) // 10)
            if key == self.last:
                return
            self.last = key
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()


def wait(client: Client, job: dict[str, Any], interval: float = 1.0) -> dict[str, Any]:
    """Poll until the job ends, drawing the progress bar on stderr."""
    bar = ProgressBar(sys.stderr)
    try:
        while True:
            bar.update(job)
            if job["status"] in TERMINAL:
                return job
            time.sleep(interval)
            job = client.get(job["id"])
    finally:
        bar.close()


# ---------------------------------------------------------------- commands


def _fields(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, str]:
    fields = {}
    for name in names:
        value = getattr(args, name, None)
        if value is None:
            continue
        fields[name] = str(value).lower() if isinstance(value, bool) else str(value)
    for pair in args.param or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ApiError(0, "usage", f"--param takes KEY=VALUE, got {pair!r}")
        fields[key] = value
    return fields


STYLE_OPTIONS = (
    "size", "iterations", "preset", "strength", "style_weights", "content_weight",
    "style_weight", "tv_weight", "optimizer", "init", "pooling", "preserve_color",
    "style_scale", "multiscale", "seed", "output_format", "weights",
)  # fmt: skip
FINE_TUNE_OPTIONS = (
    "backbone", "strategy", "epochs", "batch_size", "lr", "image_size", "val_split",
    "augment", "seed",
)  # fmt: skip


def _submission(args: argparse.Namespace) -> tuple[str, dict[str, str], list[tuple[str, Path]]]:
    if args.what == "style":
        files = [("content", args.content)] + [("style", p) for p in args.styles]
        return "style_transfer", _fields(args, STYLE_OPTIONS), files
    if args.what == "finetune":
        return "fine_tune", _fields(args, FINE_TUNE_OPTIONS), [("dataset", args.archive)]
    fields = {"model": args.model, **_fields(args, ("top_k",))}
    return "predict", fields, [("image", p) for p in args.images]


def _cmd_submit(client: Client, args: argparse.Namespace) -> int:
    kind, fields, files = _submission(args)
    for _field, path in files:
        if not path.is_file():
            raise ApiError(0, "usage", f"{path}: no such file")
    job = client.submit(kind, fields, files, idempotency_key=args.idempotency_key)
    if not args.json:
        where = f", #{job['queue_position']} in queue" if job.get("queue_position") else ""
        print(f"submitted {job['id']} ({job['status']}{where})", file=sys.stderr)
        print(f"  web: {client.base_url}{job['urls']['web']}", file=sys.stderr)
    if not args.wait:
        if args.json:
            _print_json(job)
        else:
            print(job["id"])
        return 0
    job = wait(client, job)
    if args.output:
        paths = [client.download(item, args.output) for item in job.get("outputs", [])]
        if not args.json:
            for path in paths:
                print(f"saved {path}", file=sys.stderr)
    if args.json:
        _print_json(job)
    else:
        print(_describe(job, client.base_url))
    return 0 if job["status"] == "succeeded" else EXIT_FAILED


def _cmd_status(client: Client, args: argparse.Namespace) -> int:
    job = client.get(args.id)
    if args.wait and job["status"] not in TERMINAL:
        job = wait(client, job)
    if args.json:
        _print_json(job)
    else:
        print(_describe(job, client.base_url))
    return EXIT_FAILED if job["status"] in {"failed", "canceled"} else 0


def _cmd_list(client: Client, args: argparse.Namespace) -> int:
    page = client.list(status=args.status, kind=args.kind, limit=args.limit, cursor=args.cursor)
    if args.json:
        _print_json(page)
        return 0
    print(f"{'ID':32}  {'KIND':14}  {'STATUS':10}  {'PROGRESS':>8}  CREATED (UTC)")
    for job in page["results"]:
        percent = f"{job['progress']['percent']:.0f}%"
        created = job["created_at"][:19].replace("T", " ")
        print(f"{job['id']:32}  {job['kind']:14}  {job['status']:10}  {percent:>8}  {created}")
    if page.get("next"):
        print(f"more: atelier list --cursor {page['next']}", file=sys.stderr)
    return 0


def _cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    job = client.cancel(args.id)
    if args.json:
        _print_json(job)
    elif job["status"] == "canceled":
        print(f"{job['id']}: canceled")
    elif job["status"] in TERMINAL:
        print(f"{job['id']}: already {job['status']}")
    else:
        print(f"{job['id']}: cancel requested; it stops at its next progress write")
    return 0


def _cmd_download(client: Client, args: argparse.Namespace) -> int:
    job = client.get(args.id)
    if not job.get("outputs"):
        raise ApiError(
            0,
            "no_outputs",
            f"job {job['id']} has no outputs yet (it is {job['status']}); "
            f"wait for it with: atelier status --wait {job['id']}",
        )
    directory = args.output or Path(job["id"])
    paths = [client.download(item, directory) for item in job["outputs"]]
    if args.json:
        _print_json([str(p) for p in paths])
    else:
        for path in paths:
            print(path)
    return 0


def run(args: argparse.Namespace) -> int:
    """Run one client command; errors become a message on stderr and an exit status."""
    client = Client(args.url or os.environ.get("ATELIER_URL") or DEFAULT_URL, _token())
    try:
        return args.client_func(client, args)
    except ApiError as exc:
        if args.json and exc.status:
            _print_json({"error": {"code": exc.code, "message": exc.message, "field": exc.field}})
        print(f"atelier: {exc.message if exc.status == 0 else exc}", file=sys.stderr)
        return EXIT_REFUSED
    except requests.ConnectionError:
        print(
            f"atelier: cannot reach {client.base_url}; is the server running (atelier up)? "
            "Set ATELIER_URL to point elsewhere.",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        job_id = getattr(args, "id", None) or "the job"
        print(f"\natelier: stopped waiting; {job_id} keeps running", file=sys.stderr)
        return 130
    finally:
        client.close()


def _token() -> str | None:
    return os.environ.get("ATELIER_TOKEN") or None


# ---------------------------------------------------------------- argument parsing


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the API's JSON (for scripts)")
    common.add_argument("--url", help=f"server URL (default: $ATELIER_URL or {DEFAULT_URL})")
    return common


def _submit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", action="store_true", help="show a progress bar until it ends")
    parser.add_argument("-o", "--output", type=Path, help="with --wait: save the outputs here")
    parser.add_argument("--idempotency-key", help="resubmitting with the same key is a no-op")
    parser.add_argument("--param", action="append", metavar="KEY=VALUE",
                        help="any other form field (repeatable)")  # fmt: skip


def _style_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("content", type=Path, help="content image")
    parser.add_argument("styles", type=Path, nargs="+", metavar="STYLE", help="style image(s)")
    parser.add_argument("--size", type=int, help="long side of the output, px")
    parser.add_argument("--iterations", type=int, help="total optimiser steps")
    parser.add_argument("--preset", choices=("fast", "balanced", "quality"))
    parser.add_argument("--strength", type=float, help="0 = content, 1 = style")
    parser.add_argument("--style-weights", metavar="W1,W2,…", help="one weight per style")
    parser.add_argument("--content-weight", type=float)
    parser.add_argument("--style-weight", type=float)
    parser.add_argument("--tv-weight", type=float)
    parser.add_argument("--optimizer", choices=("lbfgs", "adam"))
    parser.add_argument("--init", choices=("content", "noise", "gray"))
    parser.add_argument("--pooling", choices=("max", "avg"))
    parser.add_argument("--preserve-color", choices=("none", "luminance", "statistics"))
    parser.add_argument("--style-scale", type=float)
    parser.add_argument("--multiscale", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--output-format", choices=("png", "jpeg", "webp"))
    parser.add_argument("--weights", choices=("original", "torchvision"))


def _finetune_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("archive", type=Path, help=".zip/.tar/.tar.gz of class/image folders")
    parser.add_argument("--backbone")
    parser.add_argument("--strategy", choices=("linear_probe", "full", "gradual"))
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--val-split", type=float)
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--seed", type=int)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the client commands on the ``atelier`` parser."""
    common = _common()
    submit = sub.add_parser("submit", help="submit a job to a server over HTTP")
    kinds = submit.add_subparsers(dest="what", required=True)
    for name, configure, help_text in (
        ("style", _style_parser, "style transfer: CONTENT STYLE…"),
        ("finetune", _finetune_parser, "fine-tune a classifier: ARCHIVE"),
        ("predict", None, "label images with a fine-tuned model: MODEL IMAGE…"),
    ):
        parser = kinds.add_parser(name, parents=[common], help=help_text)
        if configure:
            configure(parser)
        else:
            parser.add_argument("model", help="id of a succeeded fine_tune job")
            parser.add_argument("images", type=Path, nargs="+", metavar="IMAGE")
            parser.add_argument("--top-k", type=int)
        _submit_options(parser)
        parser.set_defaults(func=run, client_func=_cmd_submit)

    status = sub.add_parser("status", parents=[common], help="a job's status and outputs")
    status.add_argument("id")
    status.add_argument("--wait", action="store_true", help="show a progress bar until it ends")
    status.set_defaults(func=run, client_func=_cmd_status)

    listing = sub.add_parser("list", parents=[common], help="jobs, newest first")
    listing.add_argument("--status")
    listing.add_argument("--kind")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--cursor", help="the next page (printed after a full page)")
    listing.set_defaults(func=run, client_func=_cmd_list)

    cancel = sub.add_parser("cancel", parents=[common], help="cancel a job")
    cancel.add_argument("id")
    cancel.set_defaults(func=run, client_func=_cmd_cancel)

    download = sub.add_parser("download", parents=[common], help="save a job's outputs")
    download.add_argument("id")
    download.add_argument("-o", "--output", type=Path, help="directory (default: ./<job id>)")
    download.set_defaults(func=run, client_func=_cmd_download)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="atelier", description=__doc__)
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

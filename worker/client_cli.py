"""``atelier submit|status|list|cancel|download``: the command-line client of the HTTP API.

It talks only HTTP (``ATELIER_URL``, default http://127.0.0.1:8000; ``ATELIER_TOKEN`` sent
as ``Authorization: Bearer``), so it works against any Atelier server and needs neither
the database nor the queue. ``--json`` prints the API's own objects for scripts.

``submit`` has one subcommand per job kind in shared.kinds (those of
``ATELIER_KIND_MODULES`` too), its arguments built from the kind's spec: a value outside
the kind's bounds, a wrong upload count or field combination is refused here first, with
the server's message, before any file is sent (a server's own lower caps, such as
``ATELIER_MAX_SIZE``, are still the server's to refuse).

Exit status: 0 done (or accepted, without ``--wait``), 1 the waited-for job failed or
was canceled, 2 the request was refused (here or by the server), 3 the server could not be reached,
130 interrupted while waiting (the job keeps running).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from argparse import ArgumentParser
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TextIO

import requests

from shared import fairness
from shared.errors import InputError
from shared.kinds import KINDS, FileField, KindSpec, Param, load_modules
from shared.kinds.spec import number_text  # the server's way to write bounds
from worker.queue_cli import add_parsers as add_queue_parsers

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

    def events(
        self, job_id: str, last_event_id: str | None = None
    ) -> Iterator[tuple[str, dict[str, Any], str | None]]:
        """The job's event stream as (event, data, id) until the server closes it.

        Raises ApiError when the server refuses the stream (503 at its limit of streams;
        404 from a server without one): the caller polls instead.
        """
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        path = f"/api/v1/jobs/{job_id}/events"
        with self._request("GET", path, stream=True, headers=headers) as response:
            if response.status_code == 200:
                yield from parse_events(response.iter_lines(decode_unicode=True))

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


def parse_events(lines: Iterable[str]) -> Iterator[tuple[str, dict[str, Any], str | None]]:
    """Server-sent events from the stream's lines; comments (keep-alives) are skipped and
    an id-only frame moves the id without an event, as EventSource does."""
    kind, data, event_id = None, [], None
    for line in lines:
        if line == "":
            if kind and data:
                yield kind, json.loads("\n".join(data)), event_id
            kind, data = None, []
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            kind = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value


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
    """Follow the job's event stream until it ends, drawing the progress bar on stderr;
    poll every ``interval`` s instead when the server refuses the stream or it breaks."""
    bar = ProgressBar(sys.stderr)
    try:
        bar.update(job)
        if job["status"] in TERMINAL:
            return job
        try:
            job = follow(client, job, bar)
        except (ApiError, requests.RequestException, ValueError):
            pass  # refused (503 at its limit of streams, 404 from an older server) or broken
        while job["status"] not in TERMINAL:
            time.sleep(interval)
            job = client.get(job["id"])
            bar.update(job)
        return job
    finally:
        bar.close()


def follow(client: Client, job: dict[str, Any], bar: ProgressBar) -> dict[str, Any]:
    """The job once its stream says it ended; a stream that closes before (its lifetime
    ran out) is opened again with Last-Event-ID, so only what changed is sent again."""
    last_id = None
    while job["status"] not in TERMINAL:
        for kind, data, event_id in client.events(job["id"], last_id):
            last_id = event_id or last_id
            if kind == "status":
                job = data
            elif kind == "progress":
                job = {**job, "progress": {**job["progress"], **data}}
            elif kind == "end":
                return job
            bar.update(job)
        job = client.get(job["id"])  # closed without an end: the row says where it is
        bar.update(job)
    return job


# ---------------------------------------------------------------- commands


def _form(value: Any) -> str:
    """A typed value as the form string the server parses back to it: lists joined by
    commas, bools as true/false, numbers by repr so no digit is lost."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(_form(item) for item in value)
    if isinstance(value, int | float):
        return repr(value)
    return str(value)


def _usage(exc: InputError) -> ApiError:
    return ApiError(0, "usage", exc.message, exc.field)


def _submission(args: argparse.Namespace) -> tuple[str, dict[str, str], list[tuple[str, Path]]]:
    """The kind, form fields and uploads of ``atelier submit KIND …``.

    The uploads' counts and the kind's cross-field checks run here against the same spec
    the server uses, so a request the server would refuse is not sent (nor its files).
    """
    spec = KINDS[args.submit_kind]
    typed = {
        p.name: getattr(args, _dest(p.name))
        for p in spec.params
        if getattr(args, _dest(p.name), None) is not None
    }
    fields = {name: _form(value) for name, value in typed.items()}
    for pair in args.param or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ApiError(0, "usage", f"--param takes KEY=VALUE, got {pair!r}")
        fields[key] = value
        typed.pop(key, None)
        if key in spec.by_name and value.strip():  # a blank value is "unset" to the server
            try:
                typed[key] = spec.param(key).parse(value)
            except InputError as exc:
                raise _usage(exc) from None
    if getattr(args, "priority", None) is not None:
        fields["priority"] = str(args.priority)
    files: list[tuple[str, Path]] = []
    for upload in spec.files:
        given = getattr(args, _dest(upload.name), None) or []
        files += [(upload.name, path) for path in (given if isinstance(given, list) else [given])]
    try:
        spec.check_counts(typed, Counter(name for name, _ in files))
    except InputError as exc:
        raise _usage(exc) from None
    return spec.name, fields, files


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
    filters = {"status": args.status, "kind": args.kind, "parent": args.parent, "limit": args.limit}
    page = client.list(**filters, cursor=args.cursor)
    if args.json:
        _print_json(page)
        return 0
    print(f"{'ID':32}  {'KIND':14}  {'STATUS':10}  {'PROGRESS':>8}  CREATED (UTC)")
    for job in page["results"]:
        percent = f"{job['progress']['percent']:.0f}%"
        created = job["created_at"][:19].replace("T", " ")
        print(f"{job['id']:32}  {job['kind']:14}  {job['status']:10}  {percent:>8}  {created}")
    if page.get("next"):  # the cursor carries no filters: the next page repeats them
        repeat = "".join(f" --{name} {value}" for name, value in filters.items() if value)
        print(f"more: atelier list{repeat} --cursor {page['next']}", file=sys.stderr)
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
    parser.add_argument(
        "--priority",
        type=int,
        choices=range(fairness.PRIORITY_MIN, fairness.PRIORITY_MAX + 1),
        metavar=f"{fairness.PRIORITY_MIN}-{fairness.PRIORITY_MAX}",
        help=f"higher runs first (default {fairness.DEFAULT_PRIORITY}; above "
        f"{fairness.USER_PRIORITY_MAX} needs an admin token)",
    )
    parser.add_argument(
        "--param", action="append", metavar="KEY=VALUE", help="any other form field (repeatable)"
    )


# Today's subcommand names, kept as aliases of the kind names.
ALIASES = {"style_transfer": ("style",), "fine_tune": ("finetune",)}
# Positional metavars other than the field's name in capitals.
METAVARS = {("fine_tune", "dataset"): "ARCHIVE"}
# Options of every submit subcommand: a kind's field of the same name is sent with --param.
CLIENT_OPTIONS = frozenset(
    {"help", "json", "url", "wait", "output", "idempotency_key", "priority", "param"}
)


def _dest(name: str) -> str:
    """Where a kind's field lands in the namespace: apart from the client's own options."""
    return f"field_{name}"


def _positional(param: Param) -> bool:
    """A required parameter (no default can stand in for it) is a positional."""
    return param.required


def _help(param: Param) -> str:
    """The spec's description, with the bounds, the choices and the default."""
    schema = param.schema()
    parts = [schema["description"]]
    if param.type in ("int", "float"):
        parts.append(f"{number_text(schema['minimum'])} to {number_text(schema['maximum'])}")
    if param.choices:
        lead = "one of" if param.type == "choice" else "from"
        parts.append(f"{lead}: {', '.join(param.choices)}")
    text = "; ".join(parts)
    if param.default is not None:
        text += f" (default: {_form(param.default)})"
    return text.replace("%", "%%")


def _metavar(param: Param) -> str:
    name = param.name.upper()
    return f"{name},…" if param.type in ("floats", "choices") else name


def _nargs(upload: FileField) -> dict[str, Any]:
    """How many paths a file field's positional takes (one by default)."""
    if upload.max_count > 1:
        return {"nargs": "+" if upload.required else "*"}
    return {} if upload.required else {"nargs": "?"}


def _option(parser: ArgumentParser, param: Param) -> None:
    """``--kebab-case``: parsed like the server does (same bounds, same message)."""
    if param.type == "bool":
        action: dict[str, Any] = {"action": argparse.BooleanOptionalAction, "default": None}
    else:
        action = {"type": param.cli_type(), "metavar": _metavar(param)}
    parser.add_argument(
        "--" + param.name.replace("_", "-"), dest=_dest(param.name), help=_help(param), **action
    )


def _file_option(spec: KindSpec, upload: FileField) -> bool:
    """Whether a file field is an option rather than a positional: an optional single
    file, and every list of files when the kind has two (positionals could not tell
    where one list ends), as ``--content a.png --content b.png``."""
    lists = sum(1 for f in spec.files if f.max_count > 1)
    return (upload.max_count == 1 and not upload.required) or (upload.max_count > 1 and lists > 1)


def _add_kind(kinds: argparse._SubParsersAction, spec: KindSpec, common: ArgumentParser) -> None:
    """``atelier submit KIND``: required job ids, then the file fields, as positionals in
    the spec's order (see :func:`_file_option` for those that are options); one option
    per other parameter."""
    positionals = [p for p in spec.params if _positional(p)]
    metavars = {f.name: METAVARS.get((spec.name, f.name), f.name.upper()) for f in spec.files}
    synopsis = [p.name.upper() for p in positionals] + [
        metavars[f.name] + ("…" if f.max_count > 1 else "")
        for f in spec.files
        if (f.required or f.max_count > 1) and not _file_option(spec, f)
    ]
    parser = kinds.add_parser(
        spec.name,
        aliases=ALIASES.get(spec.name, ()),
        parents=[common],
        help=f"{spec.title}: {' '.join(synopsis)}".replace("%", "%%"),
        description=spec.doc,
    )
    for param in positionals:
        parser.add_argument(
            _dest(param.name), metavar=param.name.upper(), type=param.cli_type(), help=param.doc
        )
    for upload in spec.files:
        if _file_option(spec, upload) and upload.max_count > 1:
            parser.add_argument(
                "--" + upload.name.replace("_", "-"),
                dest=_dest(upload.name),
                metavar=metavars[upload.name],
                type=Path,
                action="append",
                required=upload.required,
                help=f"{upload.doc} (repeat the option for each file)",
            )
            continue
        if _file_option(spec, upload):  # after a list of files: an option
            parser.add_argument(
                "--" + upload.name.replace("_", "-"),
                dest=_dest(upload.name),
                metavar=metavars[upload.name],
                type=Path,
                help=upload.doc,
            )
            continue
        parser.add_argument(
            _dest(upload.name),
            metavar=metavars[upload.name],
            type=Path,
            help=upload.doc,
            **_nargs(upload),
        )
    options = [p for p in spec.params if not _positional(p)]
    for param in options:
        if param.name not in CLIENT_OPTIONS:
            _option(parser, param)
    shadowed = [p.name for p in options if p.name in CLIENT_OPTIONS]
    if shadowed:
        parser.epilog = f"send {', '.join(shadowed)} with --param NAME=VALUE"
    _submit_options(parser)
    parser.set_defaults(func=run, client_func=_cmd_submit, submit_kind=spec.name)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the client commands on the ``atelier`` parser."""
    common = _common()
    submit = sub.add_parser("submit", help="submit a job to a server over HTTP")
    kinds = submit.add_subparsers(dest="what", required=True)
    load_modules(os.environ.get("ATELIER_KIND_MODULES"))
    for spec in KINDS.values():
        _add_kind(kinds, spec, common)

    status = sub.add_parser("status", parents=[common], help="a job's status and outputs")
    status.add_argument("id")
    status.add_argument("--wait", action="store_true", help="show a progress bar until it ends")
    status.set_defaults(func=run, client_func=_cmd_status)

    listing = sub.add_parser("list", parents=[common], help="jobs, newest first")
    listing.add_argument("--status")
    listing.add_argument("--kind")
    listing.add_argument("--limit", type=int, help="jobs per page (default: the server's)")
    listing.add_argument("--cursor", help="the next page (printed after a full page)")
    listing.add_argument("--parent", metavar="ID", help="only the child jobs of this sweep")
    listing.set_defaults(func=run, client_func=_cmd_list)

    cancel = sub.add_parser("cancel", parents=[common], help="cancel a job")
    cancel.add_argument("id")
    cancel.set_defaults(func=run, client_func=_cmd_cancel)

    download = sub.add_parser("download", parents=[common], help="save a job's outputs")
    download.add_argument("id")
    download.add_argument("-o", "--output", type=Path, help="directory (default: ./<job id>)")
    download.set_defaults(func=run, client_func=_cmd_download)
    add_queue_parsers(sub, common, run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="atelier", description=__doc__)
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

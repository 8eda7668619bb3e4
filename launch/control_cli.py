"""The control commands: ``fedtier seed|start|status|wait|sessions|models|stop`` and
``fedtier package PATH`` (upload), each a thin layer over fedtier.sdk.

Human output (short tables) by default, ``--json`` for scripts: the API's JSON as the SDK
returns it. The reducer is ``--reducer``, else ``FEDTIER_REDUCER_URL``, else
``http://FEDN_REDUCER_HOST:FEDN_REDUCER_PORT`` (from the environment or ``.env``); the token
``--token``, else ``FEDN_ALLIANCE_ADMIN_AUTH_TOKEN``; the CA ``--ca-file``, else ``FEDTIER_TLS_CA``.
Exit status: 0 done, 1 refused or unreachable (the API's message, field, limit and state on
stderr, no traceback), 3 for ``wait`` (and ``start --wait``) when the session ended other
than succeeded.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from fedtier.config import Settings
from fedtier.strict_json import JSONInputError, loads as strict_loads

EXIT_ERROR, EXIT_SESSION_NOT_SUCCEEDED = 1, 3


# ---------------------------------------------------------------- shared plumbing
def _connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reducer", default="", metavar="URL",
                   help="the reducer (default $FEDTIER_REDUCER_URL, else http://$FEDN_REDUCER_HOST:$FEDN_REDUCER_PORT)")
    p.add_argument("--token", default="", help="the admin token (default $FEDN_ALLIANCE_ADMIN_AUTH_TOKEN)")
    p.add_argument("--ca-file", default="", help="CA certificate for an https:// reducer (default $FEDTIER_TLS_CA)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each answer (default 30)")
    p.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")


def connect(args: argparse.Namespace, settings: Settings) -> Any:
    from fedtier.sdk import Reducer

    url = args.reducer or settings.reducer_url or f"http://{settings.reducer_host}:{settings.reducer_port}"
    return Reducer(url, token=args.token or settings.admin_auth_token or None,
                   ca_file=args.ca_file or settings.tls_ca or None, timeout=args.timeout)


def _command(body: Callable[[argparse.Namespace, Any], int]) -> Callable[[argparse.Namespace, Settings], int]:
    """A control command: connected, and every refusal a one-line message with exit status 1."""
    def run(args: argparse.Namespace, settings: Settings) -> int:
        from fedtier.sdk import APIError

        try:
            with connect(args, settings) as reducer:
                return body(args, reducer)
        except (APIError, TimeoutError, ValueError, OSError) as exc:
            details = {k: getattr(exc, k, None) for k in ("status", "field", "limit", "state")}
            if args.json:
                print(json.dumps({"error": getattr(exc, "message", str(exc)),
                                  **{k: v for k, v in details.items() if v is not None}}), file=sys.stderr)
            else:
                print(f"fedtier {args.command}: {exc}", file=sys.stderr)
            return EXIT_ERROR
    return run


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    cells = [[str(h) for h in headers]] + [["-" if v is None or v == "" else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _when(seconds: Any) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if isinstance(seconds, (int, float)) else ""


def _metrics(metrics: dict[str, Any] | None) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted((metrics or {}).items()))


def _session_line(s: dict[str, Any]) -> str:
    return (f"session {s['id']}  {s.get('status')}  rounds {s.get('rounds_succeeded', 0)} succeeded, "
            f"{s.get('rounds_failed', 0)} failed, {s.get('rounds_stopped', 0)} stopped of {s.get('rounds_requested')}")


# ---------------------------------------------------------------- seed
def _seed(args: argparse.Namespace, reducer: Any) -> int:
    model = reducer.seed(args.file)
    if args.json:
        _print_json(model)
    else:
        print(f"seeded: model {model['id']}  {model['size']} bytes  sha256 {model['sha256']}")
    return 0


# ---------------------------------------------------------------- start
def parse_assignments(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` settings: the value read as JSON when it is JSON (numbers, true, objects),
    else as text; ``task.epochs=2`` sets one key of an object setting."""
    settings: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            value = strict_loads(text)
        except JSONInputError:
            value = text
        head, dot, rest = key.partition(".")
        if dot:
            nested = settings.setdefault(head, {})
            if not isinstance(nested, dict) or not rest:
                raise ValueError(f"--set {key}: {head} is not an object setting")
            nested[rest] = value
        else:
            settings[key] = value
    return settings


def _read_settings_json(source: str) -> dict[str, Any]:
    text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    try:
        data = strict_loads(text)
    except JSONInputError as exc:
        raise ValueError(f"--settings-json {source}: {exc.message}" + (f" at {exc.field}" if exc.field else "")) \
            from None
    if not isinstance(data, dict):
        raise ValueError(f"--settings-json {source}: must be a JSON object of round settings")
    return data


def _start(args: argparse.Namespace, reducer: Any) -> int:
    settings: dict[str, Any] = _read_settings_json(args.settings_json) if args.settings_json else {}
    for key, value in parse_assignments(args.set).items():
        if isinstance(value, dict) and isinstance(settings.get(key), dict):
            settings[key] = {**settings[key], **value}
        else:
            settings[key] = value
    rounds = settings.pop("rounds", 1) if args.rounds is None else args.rounds
    session = reducer.start(rounds=rounds, settings=settings)
    if not args.wait:
        if args.json:
            _print_json(session)
        else:
            print(f"started session {session['id']}: {session['rounds_requested']} rounds")
        return 0
    if not args.json:
        print(f"started session {session['id']}: {session['rounds_requested']} rounds", flush=True)
    return _finish(args, reducer, session["id"])


# ---------------------------------------------------------------- wait
def _finish(args: argparse.Namespace, reducer: Any, session_id: str | None) -> int:
    done = reducer.wait(session_id, progress=not args.json, timeout=args.wait_timeout)
    if args.json:
        _print_json(done)
    else:
        print(_session_line(done))
        _rounds_table(reducer.rounds(session_id=done["id"]))
    return 0 if done.get("status") == "succeeded" else EXIT_SESSION_NOT_SUCCEEDED


def _wait(args: argparse.Namespace, reducer: Any) -> int:
    return _finish(args, reducer, args.session or None)


# ---------------------------------------------------------------- status, sessions
def _status(args: argparse.Namespace, reducer: Any) -> int:
    status = reducer.status()
    if args.json:
        _print_json(status)
        return 0
    latest = status.get("latest_model")
    print(f"reducer   {reducer.url}  state {status['state']}")
    print(f"network   {status.get('combiners_online', 0)}/{status.get('combiners', 0)} combiners online, "
          f"{status.get('clients_active', 0)}/{status.get('clients', 0)} clients active")
    print(f"model     {latest['id'] + '  round ' + str(latest.get('round')) if latest else 'none (not seeded)'}")
    if status.get("session"):
        print(_session_line(status["session"]))
    if status.get("last_round"):
        r = status["last_round"]
        print(f"round     {r.get('round')} {r.get('status')}  {_metrics(r.get('metrics'))}".rstrip())
    return 0


def _sessions(args: argparse.Namespace, reducer: Any) -> int:
    sessions = reducer.sessions(limit=args.limit)
    if args.json:
        _print_json(sessions)
        return 0
    _table([[s["id"], s.get("status"), s.get("rounds_requested"), s.get("rounds_succeeded"), s.get("rounds_failed"),
             _when(s.get("started_at"))] for s in sessions],
           ["SESSION", "STATUS", "ROUNDS", "SUCCEEDED", "FAILED", "STARTED"])
    return 0


def _rounds_table(rounds: list[dict[str, Any]]) -> None:
    _table([[r.get("round"), r.get("status"), r.get("model_out"), _metrics(r.get("metrics"))] for r in rounds],
           ["ROUND", "STATUS", "MODEL", "METRICS"])


# ---------------------------------------------------------------- models
def _models(args: argparse.Namespace, reducer: Any) -> int:
    if args.models_command == "list":
        models = reducer.models()
        if args.json:
            _print_json(models)
        else:
            _table([[m["id"], m.get("round"), m.get("kind"), m.get("size"), m.get("sha256", "")[:16]] for m in models],
                   ["MODEL", "ROUND", "KIND", "BYTES", "SHA256"])
        return 0
    record = reducer.model(args.id)
    path = reducer.download_model(record["id"], args.out or f"{record['id']}.safetensors")
    if args.json:
        _print_json({**record, "path": str(path)})
    else:
        print(f"{path}  {record['size']} bytes  sha256 {record['sha256']} (verified)")
    return 0


# ---------------------------------------------------------------- package upload
def _package_upload(args: argparse.Namespace, reducer: Any) -> int:
    record = reducer.upload_package(args.path or args.project)
    if args.json:
        _print_json(record)
    else:
        print(f"uploaded package {record['sha256']}  {record['size']} bytes  {record.get('files')} files")
    return 0


cmd_package_upload = _command(_package_upload)


def extend_package(p: argparse.ArgumentParser) -> None:
    """``fedtier package PATH`` uploads (a folder packed first); ``--project DIR --upload`` packs,
    writes ``--out`` and uploads. ``--project`` alone still only packs."""
    p.add_argument("path", nargs="?", default="", help="upload this project folder (packed first) or package "
                                                       "file to the reducer")
    p.add_argument("--upload", action="store_true", help="also upload the packed --project to the reducer")
    _connection_args(p)


# ---------------------------------------------------------------- stop
def _stop(args: argparse.Namespace, reducer: Any) -> int:
    reply = reducer.stop("abort" if args.abort else "after_round")
    if args.json:
        _print_json(reply)
    else:
        how = "aborting the round in progress" if args.abort else "after the round in progress"
        print(f"stopping session {reply.get('session_id')}: {how}")
    return 0


# ---------------------------------------------------------------- registration
def add_control(sub: argparse._SubParsersAction) -> None:
    """Register the control commands on ``fedtier``'s subparsers."""
    from fedtier.sdk import RoundSettings

    p = sub.add_parser("seed", help="upload the first model of the trail to the reducer")
    p.add_argument("file", help="model file (the project's seed model)")
    _connection_args(p)
    p.set_defaults(run=_command(_seed))

    known = ", ".join(RoundSettings.names())
    p = sub.add_parser("start", help="start a session of rounds", epilog=f"round settings: {known}; "
                       "see GET /api/v1/openapi.json (RoundSettings) for their bounds")
    p.add_argument("--rounds", type=int, default=None, help="rounds to run (default 1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a round setting, the value as JSON or text (repeatable), e.g. --set clients_required=2 "
                        "--set task.epochs=2")
    p.add_argument("--settings-json", default="", metavar="FILE",
                   help="round settings as a JSON object from FILE ('-': stdin); --set overrides them")
    p.add_argument("--wait", action="store_true", help="wait for the session to end (exit 3 if it did not succeed)")
    p.add_argument("--wait-timeout", type=float, default=None, help="seconds --wait waits at most")
    _connection_args(p)
    p.set_defaults(run=_command(_start))

    p = sub.add_parser("status", help="the reducer's state, network, latest model and session")
    _connection_args(p)
    p.set_defaults(run=_command(_status))

    p = sub.add_parser("wait", help="wait for a session to end (exit 0 succeeded, 3 otherwise)")
    p.add_argument("session", nargs="?", default="", help="session id (default: the running one, else the latest)")
    p.add_argument("--wait-timeout", type=float, default=None, help="seconds to wait at most (exit 1 after)")
    _connection_args(p)
    p.set_defaults(run=_command(_wait))

    p = sub.add_parser("sessions", help="list sessions")
    p.add_argument("--limit", type=int, default=None, help="at most this many")
    _connection_args(p)
    p.set_defaults(run=_command(_sessions))

    p = sub.add_parser("models", help="list the model trail, or download a model verified by sha256")
    msub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    m = msub.add_parser("list", help="every model of the trail")
    _connection_args(m)
    m = msub.add_parser("get", help="download a model (sha256 checked; nothing written unless it matches)")
    m.add_argument("id", help="model id, or 'latest'")
    m.add_argument("--out", default="", help="file or folder to write (default ./ID.safetensors)")
    _connection_args(m)
    p.set_defaults(run=_command(_models))

    p = sub.add_parser("stop", help="stop the running session after its round (or --abort it now)")
    p.add_argument("--abort", action="store_true", help="drop the round in progress now")
    _connection_args(p)
    p.set_defaults(run=_command(_stop))

"""Drive a fedtier reducer from Python: seed, start, wait, inspect, download, upload, stop.

The SDK speaks the reducer's REST API (``/api/v1/openapi.json``) over HTTP and nothing
else, so it runs wherever ``requests`` does: a laptop, a notebook, a CI job. It imports
no component of the network (reducer, combiner, client, gRPC); the only fedtier module it
uses is ``fedtier.package``, and only to pack a project folder for :meth:`Reducer.upload_package`.

    from fedtier.sdk import Reducer, RoundSettings

    reducer = Reducer("http://localhost:8090", token="...")  # the admin token, for writes
    reducer.seed("seeds/digits.safetensors")
    session = reducer.start(rounds=3, settings=RoundSettings(clients_required=2, validate=True))
    done = reducer.wait(session["id"])               # a progress bar; raises nothing on a failed round
    reducer.download_model("latest", "model.safetensors")   # sha256 checked as it streams

Every error is an :class:`APIError`, typed by what the caller can do about it
(:class:`BadRequest` names the ``field`` and, for a size, the ``limit`` setting;
:class:`Conflict` the reducer's ``state``; :class:`Unreachable` when no answer came), and
carries the API's own message. docs/sdk.md has the whole tour.
"""
from __future__ import annotations

import base64
import hashlib
import io
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping

import requests

CHUNK = 1 << 20  # bytes read per step when streaming a model to or from the reducer
DEFAULT_TIMEOUT = 30.0  # seconds to wait for the reducer to answer a request (not for a whole download)
ENDED = ("succeeded", "failed", "stopped", "interrupted")  # a session's final statuses


# ---------------------------------------------------------------- errors
class APIError(Exception):
    """The reducer refused a request, or could not be asked. ``status`` is the HTTP status
    (None when no answer came), ``message`` the API's ``error`` text, ``field`` the input at
    fault, ``limit`` the FEDTIER_MAX_ setting of an exceeded bound, ``state`` the reducer's
    state that forbade the request."""

    def __init__(self, message: str, status: int | None = None, field: str | None = None,
                 limit: str | None = None, state: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.field = field
        self.limit = limit
        self.state = state

    def __str__(self) -> str:
        extra = [f"{name} {value}" for name, value in (("field", self.field), ("limit", self.limit),
                                                        ("state", self.state)) if value]
        return self.message + (f" ({', '.join(extra)})" if extra else "")


class BadRequest(APIError):
    """400 (and 415, 422): the input is wrong; ``field`` names it."""


class Unauthorized(APIError):
    """401: no token, or not the admin token (``FEDN_ALLIANCE_ADMIN_AUTH_TOKEN``)."""


class Forbidden(APIError):
    """403: a valid credential, but for another role or name."""


class NotFound(APIError):
    """404: no such session, round or model (or no package uploaded yet)."""


class Conflict(APIError):
    """409: not allowed in the reducer's current ``state`` (seeded already, a session running...)."""


class TooLarge(APIError):
    """413: over a bound; ``limit`` names the setting that raises it."""


class ServerError(APIError):
    """5xx: the reducer or one of its stores failed (507: out of space), or the stored bytes are damaged."""


class Unreachable(APIError):
    """No HTTP answer: connection refused, DNS, TLS or a timeout. ``status`` is None."""


class IntegrityError(APIError):
    """A download did not arrive whole: short of its length, or not the sha256 the reducer records.
    Nothing is left at the target path."""


_BY_STATUS: dict[int, type[APIError]] = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound,
                                         409: Conflict, 413: TooLarge, 415: BadRequest, 422: BadRequest}


def error_from_response(response: requests.Response) -> APIError:
    """The typed error for a non-2xx answer, with the API's JSON ``{"error", "field", ...}`` when
    it sent one (a proxy in between may send HTML: then the start of its text)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"error": f"HTTP {response.status_code} {response.reason}: {response.text[:200].strip()}"}
    cls = _BY_STATUS.get(response.status_code) or (ServerError if response.status_code >= 500 else APIError)

    def text(name: str) -> str | None:
        value = body.get(name)
        return str(value) if value is not None else None

    return cls(text("error") or f"HTTP {response.status_code}", status=response.status_code, field=text("field"),
               limit=text("limit"), state=text("state"))


# ---------------------------------------------------------------- round settings
def _setting(default: Any, help: str) -> Any:
    return field(default=None, metadata={"default": default, "help": help})


@dataclass
class RoundSettings:
    """The round settings of ``POST /start`` (the OpenAPI schema ``RoundSettings``, checked by
    the reducer's fedtier/round_config.py). A field left None is not sent, so the reducer
    applies its default, given in each field's ``metadata["default"]`` (``helper``: the
    reducer's own ``--helper``). The reducer, not the SDK, validates: a bad value comes back
    as :class:`BadRequest` naming the field, so the rules live in one place."""

    clients_required: int | None = _setting(1, "fewer updates than this fails the round")
    clients_requested: int | None = _setting(0, "how many active clients to ask; 0 asks all of them")
    round_timeout: float | None = _setting(180.0, "seconds to wait for updates once tasks are sent")
    wait_for_clients: float | None = _setting(60.0, "seconds to wait for clients_required to be active")
    aggregation: dict[str, Any] | None = _setting(
        {"combiner": {"name": "fedavg"}, "reducer": {"name": "fedavg"}},
        "the strategy of each tier: {\"combiner\": ..., \"reducer\": ...}, a name or {\"name\": ..., parameters}")
    aggregator: str | None = _setting("fedavg", "one strategy for both tiers (the older form of aggregation)")
    aggregator_kwargs: dict[str, Any] | None = _setting({}, "the parameters of aggregator")
    helper: str | None = _setting(None, "model format: numpy, pytorch or keras (default: the reducer's)")
    validate: bool | None = _setting(True, "run validation tasks on each new global model")
    task: dict[str, Any] | None = _setting({}, "settings handed to the project's code")
    weight_cap_median: float | None = _setting(10.0, "no client counts with more than this multiple of the "
                                                     "round's lower median examples; 0 = off")
    weight_cap: int | None = _setting(0, "no client counts with more examples than this; 0 = off")
    sampling_seed: int | None = _setting(0, "which clients are asked when fewer than all are: 0 draws afresh "
                                            "each round; N >= 1 repeats the draw of a run")

    def to_dict(self) -> dict[str, Any]:
        """The settings that were set, as the JSON body of ``/start`` takes them."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


# ---------------------------------------------------------------- uploads
class _MultipartFile(io.RawIOBase):
    """One file as a ``multipart/form-data`` body that streams from disk with a known length.

    ``requests`` builds ``files=`` bodies in memory, which for a seed of gigabytes would hold
    all of it in RAM; this reads the file as the socket takes it, and its length lets requests
    send a Content-Length (the reducer's size bounds see it before the body)."""

    def __init__(self, field_name: str, filename: str, path: Path) -> None:
        super().__init__()
        self.boundary = uuid.uuid4().hex
        head = (f"--{self.boundary}\r\nContent-Disposition: form-data; name=\"{field_name}\"; "
                f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
        tail = f"\r\n--{self.boundary}--\r\n".encode()
        self._size = path.stat().st_size
        self._parts: list[BinaryIO] = [io.BytesIO(head), open(path, "rb"), io.BytesIO(tail)]
        self.length = len(head) + self._size + len(tail)
        self._sent = 0

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return self.length

    def readable(self) -> bool:
        return True

    def tell(self) -> int:  # requests sends Content-Length as len() - tell(); without it, chunked
        return self._sent

    def read(self, size: int = -1) -> bytes:
        out = bytearray()
        while self._parts and (size < 0 or len(out) < size):
            chunk = self._parts[0].read(-1 if size < 0 else size - len(out))
            if chunk:
                out += chunk
            else:
                self._parts.pop(0).close()
        self._sent += len(out)
        return bytes(out)

    def close(self) -> None:
        for part in self._parts:
            part.close()
        self._parts = []
        super().close()


# ---------------------------------------------------------------- the client
class Reducer:
    """A connection to one reducer.

    ``url``: the reducer's base URL (``http://host:8090``); ``token``: the admin token
    (``FEDN_ALLIANCE_ADMIN_AUTH_TOKEN``), needed for every write and, with
    ``FEDTIER_PUBLIC_READ=false``, for reads; ``ca_file``: the federation's CA for an
    ``https://`` reducer with its own certificate (``FEDTIER_TLS_CA``); ``timeout``: seconds
    to wait for any answer. HTTP proxies from the environment are honoured, as requests does."""

    def __init__(self, url: str, token: str | None = None, ca_file: str | os.PathLike | None = None,
                 timeout: float = DEFAULT_TIMEOUT, session: requests.Session | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"the reducer URL must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.http = session or requests.Session()
        if token:
            self.http.headers["Authorization"] = f"Token {token}"
        if ca_file:
            self.http.verify = str(ca_file)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> "Reducer":
        """The reducer of the environment (a ``.env`` already loaded): ``FEDTIER_REDUCER_URL``, else
        ``FEDN_REDUCER_HOST``/``FEDN_REDUCER_PORT``; the token ``FEDN_ALLIANCE_ADMIN_AUTH_TOKEN``;
        the CA ``FEDTIER_TLS_CA``. Keyword arguments override them."""
        env = os.environ if environ is None else environ
        host = env.get("FEDN_REDUCER_HOST") or "127.0.0.1"
        port = env.get("FEDN_REDUCER_PORT") or "8090"
        url = env.get("FEDTIER_REDUCER_URL") or f"http://{host}:{port}"
        return cls(kwargs.pop("url", None) or url, token=kwargs.pop("token", None) or
                   env.get("FEDN_ALLIANCE_ADMIN_AUTH_TOKEN") or None,
                   ca_file=kwargs.pop("ca_file", None) or env.get("FEDTIER_TLS_CA") or None, **kwargs)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "Reducer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ plumbing
    def _request(self, method: str, path: str, *, stream: bool = False, **kwargs: Any) -> requests.Response:
        try:
            response = self.http.request(method, self.url + path, timeout=self.timeout, stream=stream, **kwargs)
        except requests.exceptions.SSLError as exc:
            raise Unreachable(f"TLS with {self.url} failed (is the CA right? --ca-file / FEDTIER_TLS_CA): "
                              f"{_reason(exc)}") from None
        except requests.exceptions.Timeout:
            raise Unreachable(f"the reducer at {self.url} did not answer {method} {path} within "
                              f"{self.timeout:g} s") from None
        except requests.exceptions.RequestException as exc:
            raise Unreachable(f"cannot reach the reducer at {self.url}: {_reason(exc)}") from None
        if response.status_code >= 400:
            try:
                raise error_from_response(response)
            finally:
                response.close()
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ServerError(f"{method} {path} answered {response.status_code} without JSON: "
                              f"{response.text[:200]!r}", status=response.status_code) from None

    def _upload(self, path: str, field_name: str, file: Path) -> Any:
        body = _MultipartFile(field_name, file.name, file)
        try:
            return self._json("POST", path, data=body, headers={"Content-Type": body.content_type})
        finally:
            body.close()

    # ------------------------------------------------------------ reads
    def status(self) -> dict[str, Any]:
        """The reducer's state (setup, idle, instructing, monitoring), latest model, running session, counts."""
        return self._json("GET", "/api/v1/status")

    def sessions(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Sessions, oldest first."""
        return self._json("GET", "/api/v1/sessions", params=_params(limit=limit))

    def session(self, session_id: str) -> dict[str, Any]:
        return self._json("GET", f"/api/v1/sessions/{_segment(session_id)}")

    def rounds(self, session_id: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Rounds, oldest first, each with its ``metrics`` (mean validation metrics) and ``timings``."""
        return self._json("GET", "/api/v1/rounds", params=_params(session_id=session_id, limit=limit))

    def round(self, round_id: str) -> dict[str, Any]:
        return self._json("GET", f"/api/v1/rounds/{_segment(round_id)}")

    def validations(self, round_id: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Each client's validation metrics, per round."""
        return self._json("GET", "/api/v1/validations", params=_params(round_id=round_id, limit=limit))

    def models(self) -> list[dict[str, Any]]:
        """The model trail, seed first: id, parent, round, sha256, size."""
        return self._json("GET", "/api/v1/models")

    def model(self, model_id: str) -> dict[str, Any]:
        """One trail model's record; ``"latest"`` is the newest global model."""
        if model_id == "latest":
            latest = self.status().get("latest_model")
            if not latest:
                raise NotFound("the reducer has no model yet (seed it first)", status=404)
            return latest
        return self._json("GET", f"/api/v1/models/{_segment(model_id)}")

    def combiners(self) -> list[dict[str, Any]]:
        return self._json("GET", "/api/v1/combiners")

    def clients(self) -> list[dict[str, Any]]:
        return self._json("GET", "/api/v1/clients")

    def package(self) -> dict[str, Any]:
        """The current compute package's record (sha256, size, files)."""
        return self._json("GET", "/api/v1/package")

    # ------------------------------------------------------------ writes (the admin token)
    def seed(self, path: str | os.PathLike) -> dict[str, Any]:
        """Upload the first model of the trail; streamed from disk. A reducer that already has
        one answers :class:`Conflict`. Returns the model's record."""
        return self._upload("/seed", "seed", Path(path))["model"]

    def start(self, rounds: int = 1, settings: RoundSettings | Mapping[str, Any] | None = None,
              **overrides: Any) -> dict[str, Any]:
        """Start a session of ``rounds`` rounds with ``settings`` (a :class:`RoundSettings` or a
        dict of the same names), updated by ``overrides``. Returns the session record (its ``id``
        is what :meth:`wait` takes). Nothing starts when a setting is refused (:class:`BadRequest`)."""
        body = settings.to_dict() if isinstance(settings, RoundSettings) else dict(settings or {})
        body.update(overrides)
        body["rounds"] = rounds
        return self._json("POST", "/start", json=body)["session"]

    def stop(self, mode: str = "after_round") -> dict[str, Any]:
        """End the running session: ``after_round`` lets the round in progress finish and commit,
        ``abort`` drops it now. :class:`Conflict` when no session runs."""
        return self._json("POST", "/stop", json={"mode": mode})

    # ---- continuous training: schedules
    def schedules(self) -> list[dict[str, Any]]:
        return self._json("GET", "/api/v1/schedules")

    def schedule(self, schedule_id: str) -> dict[str, Any]:
        return self._json("GET", f"/api/v1/schedules/{_segment(schedule_id)}")

    def create_schedule(self, name: str, settings: RoundSettings | Mapping[str, Any] | None = None,
                        rounds: int = 1, every_seconds: float | None = None, cron: str | None = None,
                        on_package: bool = False) -> dict[str, Any]:
        """A schedule that starts a session of ``rounds`` rounds with ``settings`` every
        ``every_seconds``, at each ``cron`` time (five fields, UTC) and/or when a compute package
        is uploaded. The reducer checks the settings as ``/start`` does (:class:`BadRequest`
        names ``settings.<field>``)."""
        body: dict[str, Any] = {"name": name, "settings": {
            **(settings.to_dict() if isinstance(settings, RoundSettings) else dict(settings or {})),
            "rounds": rounds}}
        body.update(_params(every_seconds=every_seconds, cron=cron, on_package=on_package or None))
        return self._json("POST", "/api/v1/schedules", json=body)["schedule"]

    def pause_schedule(self, schedule_id: str) -> dict[str, Any]:
        return self._json("POST", f"/api/v1/schedules/{_segment(schedule_id)}/pause")["schedule"]

    def resume_schedule(self, schedule_id: str) -> dict[str, Any]:
        return self._json("POST", f"/api/v1/schedules/{_segment(schedule_id)}/resume")["schedule"]

    def delete_schedule(self, schedule_id: str) -> None:
        self._json("DELETE", f"/api/v1/schedules/{_segment(schedule_id)}")

    # ---- the model lifecycle: promotion
    def promote(self, model_id: str, note: str = "") -> dict[str, Any]:
        """Mark a trail model as the production model; returns the promotion record (who, when)."""
        return self._json("POST", f"/api/v1/models/{_segment(model_id)}/promote",
                          json={"note": note} if note else {})["promotion"]

    def production(self) -> dict[str, Any]:
        """The production model's record with its ``promotion``; :class:`NotFound` when none."""
        return self._json("GET", "/api/v1/models/production")

    def promotions(self) -> list[dict[str, Any]]:
        """Every promotion, oldest first (the history is append-only)."""
        return self._json("GET", "/api/v1/promotions")

    def upload_package(self, path: str | os.PathLike) -> dict[str, Any]:
        """Upload the compute package clients run: a project folder (packed the way
        ``fedtier package --project`` packs it) or a ``.tgz`` already packed. Returns its record."""
        source = Path(path)
        if not source.is_dir():
            return self._upload("/package", "package", source)["package"]
        from fedtier.package import pack  # only this needs it: packing a folder

        with tempfile.TemporaryDirectory() as tmp:
            packed = Path(tmp) / f"{source.resolve().name or 'project'}.tgz"
            packed.write_bytes(pack(source))
            return self._upload("/package", "package", packed)["package"]

    # ------------------------------------------------------------ sessions over time
    def wait(self, session_id: str | None = None, progress: bool | Callable[[dict[str, Any]], None] = True,
             timeout: float | None = None, poll: float = 1.0) -> dict[str, Any]:
        """Wait for a session to end and return its final record (its ``status`` says how it ended:
        a failed round is not an exception). ``session_id`` None: the running session, else the
        latest one. ``progress``: True draws a bar on stderr (a line per round when stderr is not a
        terminal), False nothing, a callable is given the session record at every poll.
        ``timeout`` (seconds, None: no limit) raises TimeoutError; the session goes on running."""
        if session_id is None:
            session_id = self._current_session_id()
        deadline = None if timeout is None else time.monotonic() + timeout
        report = _ProgressReport(session_id) if progress is True else None
        try:
            while True:
                session = self.session(session_id)
                if report is not None:
                    report.update(session, self._last_round(session))
                elif callable(progress):
                    progress(session)
                if session.get("status") in ENDED:
                    return session
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"session {session_id} still {session.get('status')} after {timeout:g} s")
                time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))
        finally:
            if report is not None:
                report.close()

    def _current_session_id(self) -> str:
        running = self.status().get("session")
        if running:
            return running["id"]
        sessions = self.sessions()
        if not sessions:
            raise NotFound("the reducer has no session yet (start one)", status=404)
        return sessions[-1]["id"]

    def _last_round(self, session: dict[str, Any]) -> dict[str, Any] | None:
        ids = session.get("round_ids") or []
        return self.round(ids[-1]) if ids else None

    # ------------------------------------------------------------ downloads
    def download_model(self, model_id: str, path: str | os.PathLike) -> Path:
        """Download a trail model (``"latest"``: the newest) to ``path``, checking its sha256 and
        length while it streams. The bytes go to a temporary file beside ``path`` that replaces
        it only once complete and verified: on :class:`IntegrityError` (the reducer's bytes are
        damaged, the transfer was cut) or any other error, ``path`` is left as it was."""
        record = self.model(model_id)
        target = Path(path)
        if target.is_dir():
            target = target / f"{record['id']}.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        expected = str(record["sha256"]).lower()
        response = self._request("GET", f"/api/v1/models/{_segment(record['id'])}/download", stream=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        try:
            with response, os.fdopen(fd, "wb") as out:
                for header, value in (("X-Model-SHA256", response.headers.get("X-Model-SHA256")),
                                      ("Repr-Digest", _repr_digest_hex(response.headers.get("Repr-Digest")))):
                    if value is not None and value.lower() != expected:
                        raise IntegrityError(f"model {record['id']}: the reducer sends {header} {value}, but its "
                                             f"trail records sha256 {expected}; not saved")
                digest = hashlib.sha256()
                size = 0
                try:
                    for chunk in response.iter_content(CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                        if size > int(record["size"]):  # never more disk than the trail says the model takes
                            raise IntegrityError(f"model {record['id']}: more than the recorded {record['size']} "
                                                 f"bytes arrived; not saved")
                        out.write(chunk)
                except requests.exceptions.RequestException as exc:
                    raise IntegrityError(f"model {record['id']}: the transfer broke off after {size} of "
                                         f"{record.get('size')} bytes (the reducer stops sending a model whose "
                                         f"stored bytes fail their check): {_reason(exc)}; not saved") from None
                if size != int(record["size"]) or digest.hexdigest() != expected:
                    raise IntegrityError(f"model {record['id']}: received {size} bytes with sha256 "
                                         f"{digest.hexdigest()}, expected {record['size']} bytes with sha256 "
                                         f"{expected}; not saved")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp_name, target)
        except BaseException:
            with _suppress_os_error():
                os.unlink(tmp_name)
            raise
        return target


# ---------------------------------------------------------------- small helpers
class _suppress_os_error:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> bool:
        return kind is not None and issubclass(kind, OSError)


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _segment(value: str) -> str:
    """An id as one path segment: ``requests`` would send ``../`` or ``?`` in it as they are."""
    return requests.utils.quote(str(value), safe="")


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests error, without urllib3's object reprs."""
    text = str(exc)
    while exc.__context__ is not None and exc.__context__ is not exc:
        exc = exc.__context__
        text = str(exc) or text
    return text[:300]


def _repr_digest_hex(value: str | None) -> str | None:
    """The hex sha-256 of an RFC 9530 ``Repr-Digest`` header (``sha-256=:<base64>:``), if it has one."""
    if not value:
        return None
    for item in value.split(","):
        name, _, encoded = item.strip().partition("=")
        if name.strip().lower() == "sha-256" and encoded.startswith(":") and encoded.endswith(":"):
            try:
                return base64.b64decode(encoded[1:-1], validate=True).hex()
            except ValueError:
                return "(malformed)"
    return None


class _ProgressReport:
    """The default ``wait`` progress: a rich bar on a terminal (or notebook), a line per new round elsewhere."""

    def __init__(self, session_id: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self.session_id = session_id
        self.last_line = ""
        self.bar: Progress | None = None
        if self.console.is_terminal or self.console.is_jupyter:
            self.bar = Progress(TextColumn("session {task.fields[sid]}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.description}"), TimeElapsedColumn(), console=self.console)
            self.task = self.bar.add_task("", total=None, sid=session_id[:8])
            self.bar.start()

    def update(self, session: dict[str, Any], last_round: dict[str, Any] | None) -> None:
        done = sum(int(session.get(k) or 0) for k in ("rounds_succeeded", "rounds_failed", "rounds_stopped"))
        total = int(session.get("rounds_requested") or 0)
        text = describe_round(last_round) if last_round else "waiting for the first round"
        if self.bar is not None:
            self.bar.update(self.task, total=total, completed=done, description=text)
            return
        line = f"session {self.session_id[:8]}  {done}/{total} rounds  {text}  {session.get('status')}"
        if line != self.last_line:
            print(line, file=sys.stderr, flush=True)
            self.last_line = line

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def describe_round(round_doc: dict[str, Any]) -> str:
    """One line for a round: its number, status and metrics."""
    metrics = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in sorted((round_doc.get("metrics") or {}).items()))
    return f"round {round_doc.get('round')} {round_doc.get('status')}" + (f"  {metrics}" if metrics else "")

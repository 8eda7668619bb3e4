"""Configuration from the environment and an optional ``.env`` file.

Variable names are those of the original FEDn ``.env`` so an existing deployment's
file keeps working; fedtier's own additions start with ``FEDTIER_``. Every variable
is documented in ``.env.example``. The MongoDB and MinIO backends are chosen when
their hosts are set; otherwise the embedded stores (SQLite, a local directory) are used.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from fedtier.limits import Limits

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


def parse_env_file(path: str | os.PathLike) -> dict[str, str]:
    """Read KEY=VALUE lines (comments, blank lines, ``export`` and quotes allowed)."""
    values: dict[str, str] = {}
    for number, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.replace("_", "").isalnum():
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE, got {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key] = value
    return values


def load_env_file(path: str | os.PathLike = ".env", environ: dict[str, str] | None = None) -> bool:
    """Merge a .env file into the environment without overriding variables already set.

    Explicit environment wins over the file, as with docker-compose, so one file can
    hold defaults and a deployment can override a single value.
    """
    env = os.environ if environ is None else environ
    if not Path(path).is_file():
        return False
    for key, value in parse_env_file(path).items():
        env.setdefault(key, value)
    log.debug("loaded %s", path)
    return True


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def limits_from_env(environ: Mapping[str, str] | None = None) -> Limits:
    """The bounds of fedtier/limits.py, each overridden by its FEDTIER_MAX_ variable when set."""
    env = os.environ if environ is None else environ
    d = Limits()
    try:
        return Limits(
            model_bytes=_int(env, "FEDTIER_MAX_MODEL_BYTES", d.model_bytes),
            model_tensors=_int(env, "FEDTIER_MAX_MODEL_TENSORS", d.model_tensors),
            model_header_bytes=_int(env, "FEDTIER_MAX_MODEL_HEADER_BYTES", d.model_header_bytes),
            update_slack_bytes=_int(env, "FEDTIER_MAX_UPDATE_SLACK_BYTES", d.update_slack_bytes),
            uploads_per_task=_int(env, "FEDTIER_MAX_UPLOADS_PER_TASK", d.uploads_per_task),
            package_bytes=_int(env, "FEDTIER_MAX_PACKAGE_BYTES", d.package_bytes),
            package_unpacked_bytes=_int(env, "FEDTIER_MAX_PACKAGE_UNPACKED_BYTES", d.package_unpacked_bytes),
            package_files=_int(env, "FEDTIER_MAX_PACKAGE_FILES", d.package_files),
            json_body_bytes=_int(env, "FEDTIER_MAX_JSON_BODY_BYTES", d.json_body_bytes),
            json_depth=_int(env, "FEDTIER_MAX_JSON_DEPTH", d.json_depth),
            task_bytes=_int(env, "FEDTIER_MAX_TASK_BYTES", d.task_bytes),
            round_config_bytes=_int(env, "FEDTIER_MAX_ROUND_CONFIG_BYTES", d.round_config_bytes),
            report_bytes=_int(env, "FEDTIER_MAX_REPORT_BYTES", d.report_bytes),
            progress_bytes=_int(env, "FEDTIER_MAX_PROGRESS_BYTES", d.progress_bytes),
            report_metrics=_int(env, "FEDTIER_MAX_REPORT_METRICS", d.report_metrics),
            metric_name_chars=_int(env, "FEDTIER_MAX_METRIC_NAME_CHARS", d.metric_name_chars),
            upload_idle_seconds=_int(env, "FEDTIER_MAX_UPLOAD_IDLE_SECONDS", d.upload_idle_seconds),
            schedules=_int(env, "FEDTIER_MAX_SCHEDULES", d.schedules),
            http_header_bytes=_int(env, "FEDTIER_MAX_HTTP_HEADER_BYTES", d.http_header_bytes),
        )
    except ValueError as exc:  # a bound below 1: the message names the variable
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(str(exc)) from None


@dataclass(frozen=True)
class Settings:
    """One deployment's settings; build with ``Settings.from_env()``."""

    alliance_uid: str = "fedtier"
    reducer_host: str = "127.0.0.1"
    reducer_port: int = 8090
    reducer_url: str = ""     # where the control commands and the SDK reach the reducer (else host and port)
    data_dir: Path = Path("var")
    mongo_host: str = ""
    mongo_port: int = 27017
    mongo_user: str = ""
    mongo_password: str = ""
    minio_host: str = ""
    minio_port: int = 9000
    minio_access_key: str = ""
    minio_secret_key: str = ""
    minio_bucket: str = "fedtier-models"
    minio_secure: bool = False
    auth_token: str = ""
    admin_auth_token: str = ""
    example: str = ""
    client_name_base: str = "client"
    log_level: str = "INFO"
    tls_ca: str = ""          # CA certificate that clients, combiners and the reducer verify peers with
    tls_cert: str = ""        # this process's server certificate (combiner gRPC, reducer HTTPS)
    tls_key: str = ""
    public_read: bool = True  # read-only pages and GET /api/v1 without a token
    secret_key: str = ""      # signs the UI's session cookie; random per process when unset
    token_verify_key: str = ""   # public key that checks participants' credentials (reducer, combiners)
    token_signing_key: str = ""  # private key that signs them (the reducer, and `fedtier token issue`)
    credentials_dir: str = ""    # folder of NAME.token credentials, for processes that share one environment
    schedule_min_seconds: int = 10  # the shortest period a schedule may fire at (reducer/schedules.py)
    # the reducer's HTTP server (reducer/serve.py): its threads, queue and timeouts
    http_threads: int = 32
    http_backlog: int = 1024
    http_header_timeout_s: int = 10
    http_min_body_rate: int = 16384
    http_idle_timeout_s: int = 60
    http_shutdown_s: int = 8
    metrics_token: str = ""      # opens the reducer's /metrics alone when FEDTIER_PUBLIC_READ is false
    metrics_port: int = 0        # a combiner's Prometheus endpoint (--metrics-port); 0: none
    # the reducer scores each new global model with this project's validate entry point on
    # this held-out data (reducer/evaluation.py); both or neither
    reducer_eval_project: str = ""
    reducer_eval_data: str = ""
    # `fedtier client --attack` (client/attack.py, a lab tool) runs only with this true;
    # `fedtier sandbox` sets it for its own clients
    allow_attacks: bool = False

    @property
    def identities(self) -> bool:
        """Whether callers' identities are checked (a verify key is set), or every caller is trusted."""
        return bool(self.token_verify_key)
    limits: Limits = field(default_factory=Limits)  # bounds on every input (fedtier/limits.py)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        settings = cls(
            alliance_uid=env.get("ALLIANCE_UID", "") or "fedtier",
            reducer_host=env.get("FEDN_REDUCER_HOST", "") or "127.0.0.1",
            reducer_port=_int(env, "FEDN_REDUCER_PORT", 8090),
            reducer_url=env.get("FEDTIER_REDUCER_URL", "").rstrip("/"),
            data_dir=Path(env.get("FEDTIER_DATA_DIR", "") or "var"),
            mongo_host=env.get("FEDN_MONGO_HOST", ""),
            mongo_port=_int(env, "FEDN_MONGO_PORT", 27017),
            mongo_user=env.get("FEDN_MONGO_USER", ""),
            mongo_password=env.get("FEDN_MONGO_PASSWORD", ""),
            minio_host=env.get("FEDN_MINIO_HOST", ""),
            minio_port=_int(env, "FEDN_MINIO_PORT", 9000),
            minio_access_key=env.get("FEDN_MINIO_ACCESS_KEY", ""),
            minio_secret_key=env.get("FEDN_MINIO_SECRET_KEY", ""),
            minio_bucket=env.get("FEDTIER_MINIO_BUCKET", "") or "fedtier-models",
            minio_secure=_bool(env, "FEDTIER_MINIO_SECURE", False),
            auth_token=env.get("FEDN_ALLIANCE_AUTH_TOKEN", ""),
            admin_auth_token=env.get("FEDN_ALLIANCE_ADMIN_AUTH_TOKEN", ""),
            example=env.get("EXAMPLE", ""),
            client_name_base=env.get("CLIENT_NAME_BASE", "") or "client",
            log_level=(env.get("FEDTIER_LOG_LEVEL", "") or "INFO").upper(),
            tls_ca=env.get("FEDTIER_TLS_CA", ""),
            tls_cert=env.get("FEDTIER_TLS_CERT", ""),
            tls_key=env.get("FEDTIER_TLS_KEY", ""),
            public_read=_bool(env, "FEDTIER_PUBLIC_READ", True),
            secret_key=env.get("FEDTIER_SECRET_KEY", ""),
            token_verify_key=env.get("FEDTIER_TOKEN_VERIFY_KEY", ""),
            token_signing_key=env.get("FEDTIER_TOKEN_SIGNING_KEY", ""),
            credentials_dir=env.get("FEDTIER_CREDENTIALS_DIR", ""),
            schedule_min_seconds=_int(env, "FEDTIER_SCHEDULE_MIN_SECONDS", 10),
            http_threads=_int(env, "FEDTIER_HTTP_THREADS", 32),
            http_backlog=_int(env, "FEDTIER_HTTP_BACKLOG", 1024),
            http_header_timeout_s=_int(env, "FEDTIER_HTTP_HEADER_TIMEOUT_SECONDS", 10),
            http_min_body_rate=_int(env, "FEDTIER_HTTP_MIN_BODY_RATE", 16384),
            http_idle_timeout_s=_int(env, "FEDTIER_HTTP_IDLE_TIMEOUT_SECONDS", 60),
            http_shutdown_s=_int(env, "FEDTIER_HTTP_SHUTDOWN_SECONDS", 8),
            metrics_token=env.get("FEDTIER_METRICS_TOKEN", ""),
            metrics_port=_int(env, "FEDTIER_METRICS_PORT", 0),
            reducer_eval_project=env.get("FEDTIER_REDUCER_EVAL_PROJECT", ""),
            reducer_eval_data=env.get("FEDTIER_REDUCER_EVAL_DATA", ""),
            allow_attacks=_bool(env, "FEDTIER_ALLOW_ATTACKS", False),
            limits=limits_from_env(env),
        )
        settings.check()
        return settings

    def check_reducer(self) -> None:
        """The reducer checks credentials only with all three set: the admin token for people,
        the verify key for participants, the signing key for the credentials it presents."""
        given = {"FEDN_ALLIANCE_ADMIN_AUTH_TOKEN": self.admin_auth_token,
                 "FEDTIER_TOKEN_VERIFY_KEY": self.token_verify_key,
                 "FEDTIER_TOKEN_SIGNING_KEY": self.token_signing_key}
        if any(given.values()) and not all(given.values()):
            missing = ", ".join(k for k, v in given.items() if not v)
            raise ConfigError(f"the reducer checks identities only with {', '.join(given)} all set; "
                              f"missing: {missing}. Make the key pair with `fedtier token keygen --out keys`, "
                              f"then issue each client and combiner its credential with `fedtier token issue`")

    def check(self) -> None:
        """Fail at start-up, not mid-round, on settings that cannot work together."""
        if bool(self.reducer_eval_project) != bool(self.reducer_eval_data):
            raise ConfigError("FEDTIER_REDUCER_EVAL_PROJECT and FEDTIER_REDUCER_EVAL_DATA must be set together: "
                              "the reducer's evaluation runs that project's validate on that data")
        if self.reducer_eval_project and not Path(self.reducer_eval_project).is_dir():
            raise ConfigError(f"FEDTIER_REDUCER_EVAL_PROJECT names {self.reducer_eval_project!r}, which is not a folder")
        if self.reducer_eval_data and not Path(self.reducer_eval_data).exists():
            raise ConfigError(f"FEDTIER_REDUCER_EVAL_DATA names {self.reducer_eval_data!r}, which does not exist")
        if self.minio_host and not (self.minio_access_key and self.minio_secret_key):
            raise ConfigError("FEDN_MINIO_HOST is set but FEDN_MINIO_ACCESS_KEY/FEDN_MINIO_SECRET_KEY are not")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("FEDTIER_TLS_CERT and FEDTIER_TLS_KEY must be set together")
        for name, path in (("FEDTIER_TLS_CA", self.tls_ca), ("FEDTIER_TLS_CERT", self.tls_cert),
                           ("FEDTIER_TLS_KEY", self.tls_key), ("FEDTIER_TOKEN_VERIFY_KEY", self.token_verify_key),
                           ("FEDTIER_TOKEN_SIGNING_KEY", self.token_signing_key)):
            if path and not Path(path).is_file():
                raise ConfigError(f"{name} names {path!r}, which is not a file")
        if self.credentials_dir and not Path(self.credentials_dir).is_dir():
            raise ConfigError(f"FEDTIER_CREDENTIALS_DIR names {self.credentials_dir!r}, which is not a folder")
        if self.admin_auth_token and self.admin_auth_token == self.auth_token:
            raise ConfigError("FEDN_ALLIANCE_ADMIN_AUTH_TOKEN must differ from FEDN_ALLIANCE_AUTH_TOKEN")
        if self.token_signing_key and not self.token_verify_key:
            raise ConfigError("FEDTIER_TOKEN_SIGNING_KEY is set but FEDTIER_TOKEN_VERIFY_KEY is not: set both "
                              "(fedtier token keygen writes the pair)")
        if self.schedule_min_seconds < 1:
            raise ConfigError(f"FEDTIER_SCHEDULE_MIN_SECONDS must be at least 1, got {self.schedule_min_seconds}")
        for name, value in (("FEDTIER_HTTP_THREADS", self.http_threads), ("FEDTIER_HTTP_BACKLOG", self.http_backlog),
                            ("FEDTIER_HTTP_HEADER_TIMEOUT_SECONDS", self.http_header_timeout_s),
                            ("FEDTIER_HTTP_MIN_BODY_RATE", self.http_min_body_rate),
                            ("FEDTIER_HTTP_IDLE_TIMEOUT_SECONDS", self.http_idle_timeout_s),
                            ("FEDTIER_HTTP_SHUTDOWN_SECONDS", self.http_shutdown_s)):
            if value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value}")
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"FEDTIER_METRICS_PORT must be a port number from 0 (off) to 65535, got {self.metrics_port}")
        if self.metrics_token and self.metrics_token in (self.admin_auth_token, self.auth_token):
            raise ConfigError("FEDTIER_METRICS_TOKEN must differ from the admin token and FEDN_ALLIANCE_AUTH_TOKEN: "
                              "it is handed to the monitoring system and opens /metrics only")
        if self.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"FEDTIER_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")

    @property
    def uses_mongo(self) -> bool:
        return bool(self.mongo_host)

    @property
    def uses_minio(self) -> bool:
        return bool(self.minio_host)


def setup_logging(level: str = "INFO", name: str = "") -> None:
    """One log format for every fedtier process, with the component name in each line."""
    prefix = f"{name} " if name else ""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s",
    )

"""Round settings: parsed and checked once, at the edge, with the offending field named.

The reducer validates a ``/start`` request with this class before anything changes,
and the combiner parses the JSON it receives with the same class, so a setting means
the same thing at both tiers.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from fedtier import limits


class RoundConfigError(ValueError):
    """A round setting is invalid; ``field`` names it for the API's error response."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True)
class RoundConfig:
    clients_required: int = 1        # fewer updates than this fails the round
    clients_requested: int = 0       # how many active clients to ask; 0 asks all of them
    round_timeout: float = 180.0     # seconds to wait for updates once tasks are sent
    wait_for_clients: float = 60.0   # seconds to wait for clients_required to be active
    aggregator: str = "fedavg"
    aggregator_kwargs: Mapping[str, Any] = field(default_factory=dict)
    helper: str = "numpy"            # how the network reads and checks model files
    validate: bool = True            # run validation tasks on each new global model
    task: Mapping[str, Any] = field(default_factory=dict)  # handed to the project's code

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RoundConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RoundConfigError(unknown[0], f"unknown setting (known: {', '.join(sorted(known))})")
        values: dict[str, Any] = {}
        for name, kind in (("clients_required", int), ("clients_requested", int)):
            if name in data:
                values[name] = _integer(name, data[name], minimum=1 if name == "clients_required" else 0)
        for name in ("round_timeout", "wait_for_clients"):
            if name in data:
                values[name] = _number(name, data[name])
        for name in ("aggregator", "helper"):
            if name in data:
                value = data[name]
                if not isinstance(value, str) or not value.strip():
                    raise RoundConfigError(name, "must be a non-empty string")
                values[name] = value.strip()
        if "validate" in data:
            values["validate"] = _boolean("validate", data["validate"])
        for name in ("aggregator_kwargs", "task"):
            if name in data:
                value = data[name]
                if isinstance(value, str):
                    value = _loads(name, value) if value.strip() else {}
                if not isinstance(value, Mapping):
                    raise RoundConfigError(name, "must be a JSON object")
                values[name] = dict(value)
        bounds = limits.current()
        if "task" in values and len(_json_bytes(values["task"])) > bounds.task_bytes:
            raise RoundConfigError("task", f"is {len(_json_bytes(values['task']))} bytes as JSON, over "
                                           f"{bounds.describe('task_bytes')}")
        config = cls(**values)
        # the whole config travels in every task message, under gRPC's message limit
        if len(config.to_json().encode("utf-8")) > bounds.round_config_bytes:
            raise RoundConfigError("config", f"is {len(config.to_json().encode('utf-8'))} bytes as JSON, over "
                                             f"{bounds.describe('round_config_bytes')}")
        if config.clients_requested and config.clients_requested < config.clients_required:
            raise RoundConfigError("clients_requested",
                                   f"({config.clients_requested}) is below clients_required ({config.clients_required})")
        return config

    @classmethod
    def from_json(cls, text: str) -> "RoundConfig":
        data = _loads("config", text) if text else {}
        if not isinstance(data, dict):
            raise RoundConfigError("config", "must be a JSON object")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["aggregator_kwargs"] = dict(self.aggregator_kwargs)
        data["task"] = dict(self.task)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _loads(name: str, text: str) -> Any:
    """JSON text of a setting (a form field, the config a combiner receives), its nesting
    measured first: Python's parser fails on deep nesting with RecursionError, not ValueError."""
    bounds = limits.current()
    depth = limits.json_depth(text.encode("utf-8", "surrogatepass"))
    if depth > bounds.json_depth:
        raise RoundConfigError(name, f"nests {depth} levels deep, over {bounds.describe('json_depth')}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RoundConfigError(name, f"is not valid JSON ({exc.msg})") from None


def _json_bytes(value: Any) -> bytes:
    try:
        return json.dumps(value, sort_keys=True).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise RoundConfigError("task", f"is not JSON-serializable ({exc.__class__.__name__})") from None


def _integer(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool):
        raise RoundConfigError(name, "must be an integer")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise RoundConfigError(name, f"must be an integer, got {value!r}") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise RoundConfigError(name, "must be an integer")
    if value < minimum:
        raise RoundConfigError(name, f"must be at least {minimum}, got {value}")
    if value > 1_000_000:
        raise RoundConfigError(name, f"must be at most 1000000, got {value}")
    return value


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise RoundConfigError(name, "must be a number of seconds")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RoundConfigError(name, f"must be a number of seconds, got {value!r}") from None
    if not math.isfinite(number) or number <= 0 or number > 7 * 24 * 3600:
        raise RoundConfigError(name, f"must be between 0 and one week of seconds, got {value!r}")
    return number


def _boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off", ""):
        return False
    raise RoundConfigError(name, f"must be true or false, got {value!r}")

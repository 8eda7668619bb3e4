"""The parameters an aggregator takes, declared next to it, checked at the edge.

Each aggregator lists its parameters as ``Param``s (type, bounds, default). ``/start``
and the combiner both check ``aggregator_kwargs`` against that list through
``RoundConfig`` before anything runs, so a parameter the aggregator would refuse is
refused when the session is asked for, with its name, not on every round afterwards.
The OpenAPI document is built from the same declarations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping


class ParamError(ValueError):
    """An aggregator parameter is unknown or out of bounds; ``name`` is the parameter."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


@dataclass(frozen=True)
class Param:
    kind: type                      # int, float, bool or str
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()   # for str parameters: the accepted values
    doc: str = ""
    # Also given to the clients' code (TaskContext.settings), for a strategy whose clients
    # take part in it (FedProx's mu); everything else stays on the combiner.
    client: bool = False
    max_length: int = 1000          # for str parameters: a bound on what an outside party sends

    def check(self, name: str, value: Any) -> Any:
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ParamError(name, f"must be true or false, got {value!r}")
            return value
        if self.kind is str:
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                wanted = f"one of {', '.join(self.choices)}" if self.choices else "a string"
                raise ParamError(name, f"must be {wanted}, got {value!r:.60}")
            if len(value) > self.max_length:
                raise ParamError(name, f"must be at most {self.max_length} characters, got {len(value)}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamError(name, f"must be a number, got {value!r}")
        if self.kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ParamError(name, f"must be an integer, got {value!r}")
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise ParamError(name, f"must be a finite number, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise ParamError(name, f"must be at least {self.minimum:g}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise ParamError(name, f"must be at most {self.maximum:g}, got {value!r}")
        return value

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": {int: "integer", float: "number", bool: "boolean", str: "string"}[self.kind]}
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if self.choices:
            schema["enum"] = list(self.choices)
        elif self.kind is str:
            schema["maxLength"] = self.max_length
        if self.doc:
            schema["description"] = self.doc
        return schema


def check_params(aggregator: str, spec: Mapping[str, Param], given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` checked against ``spec``: every name declared, every value of its type and
    within its bounds; returns the checked values (ints and floats as declared)."""
    checked = {}
    for name, value in given.items():
        if name not in spec:
            accepted = ", ".join(sorted(spec)) if spec else "none"
            raise ParamError(name, f"aggregator {aggregator!r} takes no parameter {name!r} (accepted: {accepted})")
        checked[name] = spec[name].check(name, value)
    return checked

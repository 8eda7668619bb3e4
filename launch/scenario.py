"""A lab scenario: the YAML file ``fedtier lab`` runs, checked once, before anything starts.

A scenario says who the virtual clients are (how many, in which groups, each group's
speed, bandwidth and availability), what data they hold (a partition, feature skew,
label scarcity, a class-incremental schedule), how rounds sample them, and where the
work runs (combiners, worker processes). Every mistake in it stops the lab before a
process starts, with the field named as a path (``groups[1].speed``, ``data.heterogeneity.
tasks[0].classes``): the same checks the clients and the reducer would make later
(``Conditions``, ``DataRules``, ``RoundConfig``, the partition schemes) run here, on the
whole file, so nothing is accepted that a lower tier would refuse after an hour of training.

The structure is a JSON Schema (validated with ``jsonschema``, the well-kept validator the
tests already used), the meaning of each part is checked by the class that will use it.
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import jsonschema
import yaml

from fedtier.client.swarm import MAX_CLIENTS as SWARM_MAX_CLIENTS

#: bounds on what a scenario may ask of one machine (each a default; the file cannot raise them)
MAX_SCENARIO_BYTES = 256 * 1024
MAX_CLIENTS = 100_000
MAX_COMBINERS = 64
MAX_ROUNDS = 10_000
MAX_GROUPS = 64
MAX_WORKERS = 256
MAX_WORKER_THREADS = 64
MAX_CLIENTS_PER_PROCESS = SWARM_MAX_CLIENTS  # a swarm process's own limit
DEFAULT_CLIENTS_PER_PROCESS = 2_500  # one event loop holds them; fewer processes, less memory
DEFAULT_QUORUM = 0.5              # of the clients asked per round, unless session.clients_required says
MAX_SEED = 2 ** 31 - 1

#: round settings the lab owns: given in the scenario's own fields, refused in ``session``
LAB_OWNED_SETTINGS = ("rounds", "clients_requested")

_NAME = {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,31}$"}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["project"],
    "properties": {
        "project": {"type": "string", "minLength": 1, "maxLength": 4096},
        "data_path": {"type": "string", "minLength": 1, "maxLength": 4096},
        "combiners": {"type": "integer", "minimum": 1, "maximum": MAX_COMBINERS},
        "clients": {"type": "integer", "minimum": 1, "maximum": MAX_CLIENTS},
        "rounds": {"type": "integer", "minimum": 1, "maximum": MAX_ROUNDS},
        "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED},
        "sampling": {
            "type": "object", "additionalProperties": False, "minProperties": 1, "maxProperties": 1,
            "properties": {"fraction": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                           "count": {"type": "integer", "minimum": 1, "maximum": MAX_CLIENTS}}},
        "pool": {
            "type": "object", "additionalProperties": False,
            "properties": {"workers": {"type": "integer", "minimum": 0, "maximum": MAX_WORKERS},
                           "threads": {"type": "integer", "minimum": 1, "maximum": MAX_WORKER_THREADS},
                           "clients_per_process": {"type": "integer", "minimum": 1,
                                                   "maximum": MAX_CLIENTS_PER_PROCESS}}},
        "session": {"type": "object"},
        "groups": {
            "type": "array", "minItems": 1, "maxItems": MAX_GROUPS,
            "items": {"type": "object", "required": ["name"],
                      "properties": {"name": _NAME,
                                     "share": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                                     "count": {"type": "integer", "minimum": 0, "maximum": MAX_CLIENTS}}}},
        "data": {
            "type": "object", "additionalProperties": False,
            "properties": {"partition": {"oneOf": [{"type": "string", "minLength": 1, "maxLength": 256},
                                                   {"type": "object", "required": ["scheme"]}]},
                           "heterogeneity": {"type": "object"}}},
        "output": {
            "type": "object", "additionalProperties": False,
            "properties": {"dir": {"type": "string", "minLength": 1, "maxLength": 4096},
                           "plots": {"type": "boolean"}}},
        "startup_timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
    },
}


class ScenarioError(ValueError):
    """The scenario is invalid; ``field`` names the offending part as a path (``groups[1].speed``)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}" if field_name else message)
        self.field = field_name


@dataclass(frozen=True)
class Group:
    """Clients that share their conditions; results are read per group."""

    name: str
    count: int
    conditions: Mapping[str, Any] = field(default_factory=dict)  # as Conditions.from_dict takes them


@dataclass(frozen=True)
class Scenario:
    project: Path
    data_path: str | None = None
    combiners: int = 2
    clients: int = 10
    rounds: int = 5
    seed: int = 0
    per_round: int = 10               # clients asked per round (sampling)
    sampling: Mapping[str, Any] = field(default_factory=dict)
    workers: int = 1
    threads: int = 1
    clients_per_process: int = DEFAULT_CLIENTS_PER_PROCESS
    settings: Mapping[str, Any] = field(default_factory=dict)   # the /start request, checked
    groups: tuple[Group, ...] = ()
    partition: Mapping[str, Any] = field(default_factory=lambda: {"scheme": "iid"})
    heterogeneity: Mapping[str, Any] | None = None
    out: Path | None = None
    plots: bool = True
    startup_timeout: float = 300.0
    source: str = ""                  # the file it came from, for the summary

    # ---- loading
    @classmethod
    def load(cls, path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> "Scenario":
        """Read, parse and check a scenario file; ``overrides`` are the command line's values
        (``clients``, ``rounds``...), checked as if the file had said them."""
        path = Path(path)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise ScenarioError("", f"cannot read the scenario {path}: {exc.strerror or exc}") from None
        if size > MAX_SCENARIO_BYTES:
            raise ScenarioError("", f"{path} is {size} bytes, over the {MAX_SCENARIO_BYTES}-byte bound of a scenario")
        text = path.read_text(encoding="utf-8", errors="replace")
        return cls.from_dict(parse_yaml(text, str(path)), overrides, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, overrides: Mapping[str, Any] | None = None, source: str = "") -> "Scenario":
        if not isinstance(data, dict):
            raise ScenarioError("", f"a scenario is a mapping of settings, got {type(data).__name__}")
        data = {**data, **{k: v for k, v in (overrides or {}).items() if v is not None}}
        _check_schema(data)
        clients = data.get("clients", 10)
        project = Path(data["project"]).expanduser()
        if not project.is_dir():
            raise ScenarioError("project", f"{data['project']} is not a project folder (resolved to {project.resolve()})")
        data_path = data.get("data_path")
        if data_path is not None:
            resolved = Path(data_path).expanduser().resolve()
            if not resolved.exists():
                raise ScenarioError("data_path", f"{data_path} does not exist (resolved to {resolved})")
            data_path = str(resolved)  # the children run elsewhere: a relative path would move
        per_round = _per_round(data.get("sampling") or {}, clients)
        groups = _groups(data.get("groups") or [{"name": "all", "share": 1.0}], clients)
        pool = data.get("pool") or {}
        workers = pool.get("workers", os.cpu_count() or 1)
        partition, heterogeneity = _data(data.get("data") or {})
        settings = _settings(data.get("session") or {}, data.get("rounds", 5), per_round, clients,
                             partition, heterogeneity, data.get("seed", 0))
        output = data.get("output") or {}
        return cls(project=project.resolve(), data_path=data_path, combiners=data.get("combiners", 2),
                   clients=clients, rounds=data.get("rounds", 5), seed=data.get("seed", 0), per_round=per_round,
                   sampling=dict(data.get("sampling") or {}), workers=workers, threads=pool.get("threads", 1),
                   clients_per_process=pool.get("clients_per_process", DEFAULT_CLIENTS_PER_PROCESS),
                   settings=settings, groups=groups, partition=partition, heterogeneity=heterogeneity,
                   out=Path(output["dir"]) if "dir" in output else None, plots=output.get("plots", True),
                   startup_timeout=float(data.get("startup_timeout", 300.0)), source=source)

    # ---- what the lab derives from it
    @property
    def processes(self) -> int:
        """Swarm processes the clients are spread over."""
        return math.ceil(self.clients / self.clients_per_process)

    def workers_of(self, process: int) -> int:
        """The worker pool's share of swarm process ``process`` (0: it trains in its clients' threads)."""
        if self.workers == 0:
            return 0
        share, extra = divmod(self.workers, self.processes)
        return max(1, share + (1 if process < extra else 0))

    def group_of_clients(self) -> list[str]:
        """Client k's group, for k = 0..clients-1: the groups' counts shuffled with the seed, so
        groups spread over swarm processes, combiners and partitions rather than in blocks."""
        labels = [g.name for g in self.groups for _ in range(g.count)]
        random.Random(self.seed).shuffle(labels)
        return labels

    def group(self, name: str) -> Group:
        return next(g for g in self.groups if g.name == name)

    def to_record(self) -> dict[str, Any]:
        """The scenario as it ran (defaults filled in), for the summary."""
        return {"source": self.source, "project": str(self.project), "data_path": self.data_path,
                "combiners": self.combiners, "clients": self.clients, "rounds": self.rounds, "seed": self.seed,
                "sampling": dict(self.sampling), "clients_per_round": self.per_round,
                "pool": {"workers": self.workers, "threads": self.threads,
                         "clients_per_process": self.clients_per_process, "processes": self.processes},
                "groups": [{"name": g.name, "count": g.count, **dict(g.conditions)} for g in self.groups],
                "data": {"partition": dict(self.partition), "heterogeneity": self.heterogeneity},
                "session": dict(self.settings)}


# ---------------------------------------------------------------- parsing
class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors and aliases: a few hundred bytes of nested aliases expand to
    gigabytes in whoever walks the result (the schema check, the JSON of the session)."""

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ScenarioError("", f"line {event.start_mark.line + 1}: YAML aliases (*name) are not "
                                    f"accepted in a scenario; write the value out")
        return super().compose_node(parent, index)


def parse_yaml(text: str, where: str = "scenario") -> Any:
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ScenarioError("", f"{where} is not valid YAML: {exc}") from None


def _path(parts: Sequence[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _check_schema(data: Mapping[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if not errors:
        return
    error = errors[0]
    where = _path(error.absolute_path)
    if error.validator == "additionalProperties":
        known = ", ".join(sorted(_schema_at(error.absolute_path).get("properties", {})))
        extra = sorted(set(error.instance) - set(_schema_at(error.absolute_path).get("properties", {})))
        where = _path([*error.absolute_path, extra[0]]) if extra else where
        raise ScenarioError(where, f"unknown setting (known: {known})")
    raise ScenarioError(where or "scenario", error.message)


def _schema_at(path: Sequence[Any]) -> dict[str, Any]:
    node: dict[str, Any] = SCHEMA
    for part in path:
        node = node["items"] if isinstance(part, int) else node.get("properties", {}).get(part, {})
    return node


def _per_round(sampling: Mapping[str, Any], clients: int) -> int:
    if "count" in sampling:
        if sampling["count"] > clients:
            raise ScenarioError("sampling.count", f"({sampling['count']}) is more than the {clients} clients")
        return int(sampling["count"])
    if "fraction" in sampling:
        return max(1, round(sampling["fraction"] * clients))
    return clients


def _groups(raw: Sequence[Mapping[str, Any]], clients: int) -> tuple[Group, ...]:
    from fedtier.client.conditions import Conditions, ConditionsError

    names = [g["name"] for g in raw]
    for i, name in enumerate(names):
        if names.index(name) != i:
            raise ScenarioError(f"groups[{i}].name", f"{name!r} is given twice")
    kinds = {("share" in g, "count" in g) for g in raw}
    if (True, True) in kinds:
        i = next(i for i, g in enumerate(raw) if "share" in g and "count" in g)
        raise ScenarioError(f"groups[{i}]", "give a share or a count, not both")
    if kinds == {(False, False)} and len(raw) == 1:
        raw = [{**raw[0], "share": 1.0}]
    elif len(kinds) > 1 or (False, False) in kinds:
        raise ScenarioError("groups", "give every group a share (fractions summing to 1) or every group a count "
                                      "(summing to clients)")
    if "count" in raw[0]:
        counts = [g["count"] for g in raw]
        if sum(counts) != clients:
            raise ScenarioError("groups", f"the counts sum to {sum(counts)}, not to the {clients} clients")
    else:
        shares = [float(g["share"]) for g in raw]
        if abs(sum(shares) - 1.0) > 1e-6:
            raise ScenarioError("groups", f"the shares sum to {sum(shares):g}, not to 1")
        counts = _largest_remainder(clients, shares)
    groups = []
    for i, (g, count) in enumerate(zip(raw, counts)):
        conditions = {k: v for k, v in g.items() if k not in ("name", "share", "count")}
        for owned in ("group", "epoch", "seed"):
            if owned in conditions:
                raise ScenarioError(f"groups[{i}].{owned}", "is set by the lab for each client, not per group")
        try:
            Conditions.from_dict(conditions, where=f"groups[{i}]")
        except ConditionsError as exc:
            raise ScenarioError(exc.field, str(exc).split(": ", 1)[-1]) from None
        groups.append(Group(name=g["name"], count=count, conditions=conditions))
    return tuple(groups)


def _largest_remainder(total: int, shares: Sequence[float]) -> list[int]:
    exact = [s * total for s in shares]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(shares)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[:total - sum(counts)]:
        counts[i] += 1
    return counts


def _data(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    from fedtier.datatools.heterogeneity import DataRules, DataRulesError
    from fedtier.datatools.partition import parse_spec, resolve_config

    raw = data.get("partition", "iid")
    try:
        partition = parse_spec(raw) if isinstance(raw, str) else dict(raw)
        resolve_config(partition)
    except ValueError as exc:
        raise ScenarioError("data.partition", str(exc)) from None
    heterogeneity = None
    if data.get("heterogeneity"):
        try:
            heterogeneity = DataRules.from_config(data["heterogeneity"], where="data.heterogeneity").to_config()
        except DataRulesError as exc:
            raise ScenarioError(exc.field, str(exc).split(": ", 1)[-1]) from None
    return partition, heterogeneity


def _settings(session: Mapping[str, Any], rounds: int, per_round: int, clients: int,
              partition: Mapping[str, Any], heterogeneity: Mapping[str, Any] | None, seed: int) -> dict[str, Any]:
    """The ``/start`` request: the scenario's session settings plus what the lab owns, checked
    by ``RoundConfig`` as the reducer will check it. The combiners draw the clients they ask from
    the scenario's seed (``sampling_seed``, unless the session sets its own), so a run repeats."""
    from fedtier.round_config import MAX_SAMPLING_SEED, RoundConfig, RoundConfigError

    for owned in LAB_OWNED_SETTINGS:
        if owned in session:
            where = {"rounds": "rounds", "clients_requested": "sampling"}[owned]
            raise ScenarioError(f"session.{owned}", f"is set by the scenario's '{where}'")
    task = session.get("task", {})
    if not isinstance(task, dict):
        raise ScenarioError("session.task", f"must be a mapping, got {type(task).__name__}")
    for owned in ("partition", "heterogeneity"):
        if owned in task:
            raise ScenarioError(f"session.task.{owned}", f"is set by the scenario's 'data.{owned}'")
    settings: dict[str, Any] = {"validate": False, **session,
                                "task": {**task, "partition": dict(partition),
                                         **({"heterogeneity": dict(heterogeneity)} if heterogeneity else {})}}
    settings.setdefault("clients_required", max(1, math.ceil(per_round * DEFAULT_QUORUM)))
    if per_round < clients:
        settings["clients_requested"] = per_round
        settings.setdefault("sampling_seed", seed % MAX_SAMPLING_SEED + 1)  # the schema checked seed
    try:
        RoundConfig.from_dict(settings)
    except RoundConfigError as exc:
        field_name = "sampling" if exc.field == "clients_requested" else f"session.{exc.field}"
        raise ScenarioError(field_name, str(exc).split(": ", 1)[-1]) from None
    if settings["clients_required"] > per_round:
        raise ScenarioError("session.clients_required", f"({settings['clients_required']}) is more than the "
                                                        f"{per_round} clients asked per round")
    return {**settings, "rounds": rounds}

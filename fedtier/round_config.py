"""Round settings: parsed and checked once, at the edge, with the offending field named.

The reducer validates a ``/start`` request with this class before anything changes,
and the combiner parses the JSON it receives with the same class, so a setting means
the same thing at both tiers. Whatever a combiner would refuse (an aggregator or helper
it does not have, a parameter the aggregator does not take) is refused here, so it is
refused at ``/start`` and never accepted there to fail on every round afterwards.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from fedtier import limits, strict_json
from fedtier.aggregators import COMBINER, REDUCER, STRATEGIES, TIERS, StrategyError, strategy_class
from fedtier.aggregators.params import ParamError, check_params
from fedtier.aggregators.weight_policy import WeightPolicy
from fedtier.helpers import known_helpers

MAX_WEIGHT = 2 ** 53  # examples per client: a weight beyond this is no longer exact as a float
MAX_MULTIPLE = 1e6
MAX_CLIENTS = 1_000_000  # clients_required / clients_requested
MAX_SAMPLING_SEED = 2 ** 31 - 1
_DECIMAL = re.compile(r"[+-]?[0-9]{1,18}")


#: older settings that choose one strategy for both tiers: ``aggregator`` and its ``aggregator_kwargs``
LEGACY_STRATEGY_KEYS = ("aggregator", "aggregator_kwargs")


class RoundConfigError(ValueError):
    """A round setting is invalid; ``field`` names it for the API's error response."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True)
class TierStrategy:
    """The strategy one tier runs and its checked parameters (only those given: the
    strategy fills in its defaults)."""

    name: str = "fedavg"
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dict(self.params)}


def _default_aggregation() -> Mapping[str, TierStrategy]:
    return {tier: TierStrategy() for tier in TIERS}


@dataclass(frozen=True)
class RoundConfig:
    clients_required: int = 1        # fewer updates than this fails the round
    clients_requested: int = 0       # how many active clients to ask; 0 asks all of them
    round_timeout: float = 180.0     # seconds to wait for updates once tasks are sent
    wait_for_clients: float = 60.0   # seconds to wait for clients_required to be active
    # the strategy of each tier: the combiners reduce their clients' updates with
    # aggregation["combiner"], the reducer the combiner models with aggregation["reducer"]
    aggregation: Mapping[str, TierStrategy] = field(default_factory=_default_aggregation)
    helper: str = "numpy"            # how the network reads and checks model files
    validate: bool = True            # run validation tasks on each new global model
    task: Mapping[str, Any] = field(default_factory=dict)  # handed to the project's code
    # The weight policy (fedtier/aggregators/weight_policy.py): no update counts with more
    # examples than min(weight_cap_median x the round's lower median weight, weight_cap),
    # over those that are on (0 = off), at the combiner over its clients and at the reducer
    # over all clients of the round. The *lower* median (the ceil(n/2)-th smallest weight):
    # with two clients the plain median is the mean of both, so one liar alone would move
    # it; liars lift the lower median above every honest weight only as a majority.
    weight_cap_median: float = 10.0  # 0 or at least 1: a multiple of the lower median weight
    weight_cap: int = 0              # absolute maximum examples per client; 0 = off
    # which clients a combiner asks when it asks fewer than all: 0 draws afresh each round;
    # N >= 1 draws from N, the round number and the combiner's name, so a run (the lab's)
    # asks the same clients again when the same clients are active
    sampling_seed: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RoundConfig":
        known = {f.name for f in fields(cls)} | set(LEGACY_STRATEGY_KEYS)
        unknown = sorted(set(data) - known)
        if unknown:
            raise RoundConfigError(unknown[0], f"unknown setting (known: {', '.join(sorted(known))})")
        values: dict[str, Any] = {}
        for name, kind in (("clients_required", int), ("clients_requested", int)):
            if name in data:
                values[name] = integer_setting(name, data[name], 1 if name == "clients_required" else 0, MAX_CLIENTS)
        if "weight_cap" in data:
            values["weight_cap"] = integer_setting("weight_cap", data["weight_cap"], 0, MAX_WEIGHT)
        if "sampling_seed" in data:
            values["sampling_seed"] = integer_setting("sampling_seed", data["sampling_seed"], 0, MAX_SAMPLING_SEED)
        if "weight_cap_median" in data:
            values["weight_cap_median"] = _multiple("weight_cap_median", data["weight_cap_median"])
        for name in ("round_timeout", "wait_for_clients"):
            if name in data:
                values[name] = _number(name, data[name])
        values["aggregation"] = _aggregation(data)
        for name, known_names in (("helper", known_helpers()),):
            if name in data:
                value = data[name]
                if not isinstance(value, str) or value.strip().lower() not in known_names:
                    shown = repr(value)[:60] if isinstance(value, str) else type(value).__name__
                    raise RoundConfigError(name, f"unknown {name} {shown} (known: {', '.join(known_names)})")
                values[name] = value.strip().lower()
        if "validate" in data:
            values["validate"] = _boolean("validate", data["validate"])
        if "task" in data:
            values["task"] = _json_object("task", data["task"])
        bounds = limits.current()
        if "task" in values and len(_json_bytes(values["task"])) > bounds.task_bytes:
            raise RoundConfigError("task", f"is {len(_json_bytes(values['task']))} bytes as JSON, over "
                                           f"{bounds.describe('task_bytes')}")
        config = cls(**values)
        # the whole config travels in every round request to a combiner, under gRPC's message limit
        if len(config.to_json().encode("utf-8")) > bounds.round_config_bytes:
            raise RoundConfigError("config", f"is {len(config.to_json().encode('utf-8'))} bytes as JSON, over "
                                             f"{bounds.describe('round_config_bytes')}")
        if config.clients_requested and config.clients_requested < config.clients_required:
            raise RoundConfigError("clients_requested",
                                   f"({config.clients_requested}) is below clients_required ({config.clients_required})")
        return config

    @classmethod
    def from_json(cls, text: str) -> "RoundConfig":
        try:
            data = strict_json.loads(text) if text else {}
        except strict_json.JSONInputError as exc:
            raise RoundConfigError(exc.field or "config", exc.message) from None
        if not isinstance(data, dict):
            raise RoundConfigError("config", "must be a JSON object")
        return cls.from_dict(data)

    def weight_policy(self) -> WeightPolicy:
        return WeightPolicy(median_multiple=self.weight_cap_median, absolute=self.weight_cap)

    def strategy(self, tier: str) -> TierStrategy:
        return self.aggregation[tier]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["aggregation"] = {tier: choice.to_dict() for tier, choice in self.aggregation.items()}
        data["task"] = dict(self.task)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def client_settings(self) -> dict[str, Any]:
        """The strategies' settings their clients take part in (``Param.client``, FedProx's
        ``mu``), defaults filled in: what a strategy tells the clients' code, and nothing
        else of it. Where both tiers declare one, the combiner's (the clients' own tier) wins."""
        settings: dict[str, Any] = {}
        for tier in (REDUCER, COMBINER):
            choice = self.aggregation[tier]
            for name, param in STRATEGIES[choice.name].params.items():
                if param.client:
                    settings[name] = choice.params.get(name, param.default)
        return settings

    def task_json(self) -> str:
        """A task's ``config_json``: what the clients' project needs (its ``task`` settings
        and the strategy's client-side ones), never the quorum, timeouts or aggregator
        arguments, which are the combiner's business."""
        return json.dumps({"task": dict(self.task), "strategy": self.client_settings()}, sort_keys=True)


#: How long a combiner waits for its clients when the reducer runs a round on several:
#: the reducer has already waited (``wait_for_clients``) until enough clients were active
#: across the combiners, so a combiner waits only for one that flickered since.
COMBINER_WAIT_S = 10.0


@dataclass(frozen=True)
class CombinerQuorum:
    """One combiner's share of a round, chosen by the reducer and sent by name in the
    ``RoundRequest`` (``min_clients``, ``clients_requested``, ``wait_for_clients_s``).

    The session's ``clients_required`` is global: the reducer checks the total over all
    combiners, so each combiner needs only ``min_clients`` (1) update to contribute;
    ``clients_requested`` is shared out by the active clients each combiner holds."""

    min_clients: int = 1
    clients_requested: int = 0   # 0 asks all active clients
    wait_for_clients: float = COMBINER_WAIT_S

    @classmethod
    def share_out(cls, config: RoundConfig, active: Mapping[str, int]) -> dict[str, "CombinerQuorum"]:
        """Each combiner's quorum: ``clients_requested`` shared out in proportion to the active
        clients each holds, by largest remainder, so the shares add up to what the session
        asks (rounding each alone asked 8 of 9 clients of two combiners holding 6 each). A
        combiner with clients gets at least one: 0 would mean all of them."""
        wait = min(config.wait_for_clients, COMBINER_WAIT_S)
        total = sum(active.values())
        if not config.clients_requested or total <= 0:
            return {name: cls(min_clients=1, clients_requested=0, wait_for_clients=wait) for name in active}
        exact = {name: config.clients_requested * n / total for name, n in active.items()}
        shares = {name: math.floor(x) for name, x in exact.items()}
        left = config.clients_requested - sum(shares.values())
        for name in sorted(exact, key=lambda k: (shares[k] - exact[k], k))[:max(0, left)]:
            shares[name] += 1
        return {name: cls(min_clients=1, clients_requested=max(1, shares[name]), wait_for_clients=wait)
                for name in active}

    @classmethod
    def of_request(cls, config: RoundConfig, min_clients: int, clients_requested: int,
                   wait_for_clients_s: float) -> "CombinerQuorum":
        """What a combiner runs with: the request's named fields, or where they are unset
        (a caller driving one combiner alone) the session's own settings."""
        if min_clients < 0 or clients_requested < 0 or wait_for_clients_s < 0 \
                or not math.isfinite(wait_for_clients_s) or wait_for_clients_s > 7 * 24 * 3600:
            raise RoundConfigError("quorum", f"min_clients ({min_clients}), clients_requested "
                                             f"({clients_requested}) and wait_for_clients_s "
                                             f"({wait_for_clients_s:g}) must be from 0 to their bound")
        return cls(min_clients=min_clients or config.clients_required,
                   clients_requested=clients_requested or config.clients_requested,
                   wait_for_clients=wait_for_clients_s or config.wait_for_clients)

    def to_record(self) -> dict[str, Any]:
        """As the round record shows it (``combiners[].quorum``)."""
        return {"min_clients": self.min_clients, "clients_requested": self.clients_requested,
                "wait_s": self.wait_for_clients}


def _json_object(name: str, value: Any) -> dict[str, Any]:
    if isinstance(value, str):  # a form field holds the JSON text
        try:
            value = strict_json.loads(value) if value.strip() else {}
        except strict_json.JSONInputError as exc:
            raise RoundConfigError(f"{name}.{exc.field}" if exc.field else name, exc.message) from None
    if not isinstance(value, Mapping):
        raise RoundConfigError(name, "must be a JSON object")
    return dict(value)


def _strategy_name(field_name: str, value: Any) -> str:
    if not isinstance(value, str) or value.strip().lower() not in STRATEGIES:
        shown = repr(value)[:60] if isinstance(value, str) else type(value).__name__
        raise RoundConfigError(field_name, f"unknown strategy {shown} (known: {', '.join(sorted(STRATEGIES))})")
    return value.strip().lower()


def _tier_strategy(tier: str, name: str, params: Mapping[str, Any], name_field: str,
                   params_field: str) -> TierStrategy:
    """``name`` with ``params`` checked for ``tier``; errors name ``name_field`` (the tier is
    wrong) or ``params_field.<param>`` (a parameter is unknown or out of bounds)."""
    try:
        cls = strategy_class(name, tier)
    except StrategyError as exc:
        hint = f"; {_elsewhere(name)}" if name in STRATEGIES else ""
        raise RoundConfigError(name_field, f"{exc}{hint}") from None
    try:
        checked = check_params(name, cls.params, params)
    except ParamError as exc:
        raise RoundConfigError(f"{params_field}.{exc.name}", exc.message) from None
    return TierStrategy(name=name, params=checked)


def _elsewhere(name: str) -> str:
    """How to choose ``name`` where it runs: the other tiers keep FedAvg."""
    example = json.dumps({"aggregation": {tier: name for tier in STRATEGIES[name].tiers}})
    others = [tier for tier in TIERS if tier not in STRATEGIES[name].tiers]
    return (f"choose it for the {' and '.join(STRATEGIES[name].tiers)} tier alone, e.g. {example} "
            f"(the {' and '.join(others)} tier then runs fedavg)")


def _aggregation(data: Mapping[str, Any]) -> Mapping[str, TierStrategy]:
    """The strategy of each tier from ``aggregation`` (per tier) or from the older
    ``aggregator``/``aggregator_kwargs`` (one strategy at both tiers); never both."""
    legacy = [key for key in LEGACY_STRATEGY_KEYS if key in data]
    if "aggregation" in data and legacy:
        raise RoundConfigError(legacy[0], "give either aggregation (a strategy per tier) or aggregator and "
                                          "aggregator_kwargs (one strategy for both tiers), not both")
    if legacy:
        name = _strategy_name("aggregator", data.get("aggregator", "fedavg"))
        params = _json_object("aggregator_kwargs", data.get("aggregator_kwargs", {}))
        chosen = {}
        for tier in TIERS:
            if tier not in STRATEGIES[name].tiers:
                raise RoundConfigError("aggregator", f"sets one strategy for both tiers, and strategy {name!r} "
                                                     f"runs only at the {' and '.join(STRATEGIES[name].tiers)} "
                                                     f"tier; {_elsewhere(name)}")
            chosen[tier] = _tier_strategy(tier, name, params, "aggregator", "aggregator_kwargs")
        return chosen
    given = _json_object("aggregation", data.get("aggregation", {}))
    unknown = sorted(set(given) - set(TIERS))
    if unknown:
        raise RoundConfigError(f"aggregation.{str(unknown[0])[:40]}", f"unknown tier (tiers: {', '.join(TIERS)})")
    chosen = {}
    for tier in TIERS:
        value = given.get(tier, {})
        if isinstance(value, str):  # the name alone: {"reducer": "fedadam"}
            value = {"name": value}
        if not isinstance(value, Mapping):
            raise RoundConfigError(f"aggregation.{tier}", "must be a strategy name or an object with a name "
                                                          "and the strategy's parameters")
        params = {k: v for k, v in value.items() if k != "name"}
        name = _strategy_name(f"aggregation.{tier}.name", value.get("name", "fedavg"))
        chosen[tier] = _tier_strategy(tier, name, params, f"aggregation.{tier}.name", f"aggregation.{tier}")
    return chosen


def _json_bytes(value: Any) -> bytes:
    try:
        return json.dumps(value, sort_keys=True).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise RoundConfigError("task", f"is not JSON-serializable ({exc.__class__.__name__})") from None


def setting_names() -> list[str]:
    """Every round setting, for error messages that list what is known."""
    return sorted({f.name for f in fields(RoundConfig)} | set(LEGACY_STRATEGY_KEYS))


def integer_setting(name: str, value: Any, minimum: int, maximum: int) -> int:
    """An integer from ``minimum`` to ``maximum`` given as an int, an integral float or a
    string of decimal digits (a form field). Nothing here converts an unbounded text or
    value: ``int("1" + "0" * 400)``, ``int(float("inf"))`` and the like never run."""
    if isinstance(value, bool):
        raise RoundConfigError(name, f"must be an integer from {minimum} to {maximum}, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if not _DECIMAL.fullmatch(text):
            raise RoundConfigError(name, f"must be an integer from {minimum} to {maximum}, got {value[:40]!r}")
        value = int(text)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        shown = repr(value)[:40] if isinstance(value, float) else type(value).__name__
        raise RoundConfigError(name, f"must be an integer from {minimum} to {maximum}, got {shown}")
    if not minimum <= value <= maximum:
        shown = str(value) if abs(value) < 10**18 else "a larger number"
        raise RoundConfigError(name, f"must be an integer from {minimum} to {maximum}, got {shown}")
    return value


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise RoundConfigError(name, "must be a number of seconds")
    if isinstance(value, str) and len(value) > strict_json.MAX_NUMBER_CHARS:
        raise RoundConfigError(name, f"must be a number of seconds, got a text of {len(value)} characters")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # float(10**400) overflows
        shown = repr(value[:40]) if isinstance(value, str) else type(value).__name__
        raise RoundConfigError(name, f"must be a number of seconds, got {shown}") from None
    if not math.isfinite(number) or number <= 0 or number > 7 * 24 * 3600:
        raise RoundConfigError(name, f"must be between 0 and one week of seconds, got {value!r}")
    return number


def _multiple(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise RoundConfigError(name, "must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RoundConfigError(name, f"must be a number, got {value!r}") from None
    # below 1 the cap would cut the median client itself
    if not math.isfinite(number) or not (number == 0 or 1 <= number <= MAX_MULTIPLE):
        raise RoundConfigError(name, f"must be 0 (off) or from 1 to {MAX_MULTIPLE:g}, got {value!r}")
    return number


def _boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off", ""):
        return False
    raise RoundConfigError(name, f"must be true or false, got {value!r}")

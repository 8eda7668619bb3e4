"""Data heterogeneity beyond the partition, and class-incremental task schedules.

A partition (``datatools.partition``) decides *which* samples a client holds. A lab
scenario also wants clients whose data *look* different (feature skew), whose data
are mostly unlabelled (label scarcity), and classes that appear over time (federated
class-incremental learning, as in KubeEdge-Ianvs' proposal). These rules are applied
by the client's project to its own training data, so they travel in the session's
task config (``"heterogeneity"``, next to ``"partition"``) and every client derives
its own view from the rules, its partition index and the round number, with no
coordination and identically on every run:

``noise: [lo, hi]``
    Feature skew: client ``i`` adds Gaussian noise of standard deviation ``s_i`` to
    its features, ``s_i`` uniform in ``[lo, hi]``. Default ``[0, 0]``.
``scale: [lo, hi]``
    Feature skew: client ``i`` multiplies its features by ``m_i``, uniform in
    ``[lo, hi]`` (before the noise is added). Default ``[1, 1]``.
``labelled: [lo, hi]``
    Label scarcity: client ``i`` trains on a fraction ``f_i`` of its training
    examples, uniform in ``[lo, hi]`` (the others count as unlabelled and are not
    trained on): ``max(1, round(f_i * n))`` of the ``n`` examples it may see this round.
    Which ones is fixed per client (a random rank per example), so it does not change
    from round to round. Default ``[1, 1]``.
``tasks: [{classes: [...], rounds: R}, ...]``
    Class-incremental schedule: task 0 runs rounds ``1..R_0``, task 1 the next ``R_1``
    rounds, and so on; after the schedule ends the last task stays. In a task's rounds
    a client trains only on its examples of that task's classes. Classes are ints,
    disjoint between tasks. Empty (default): every class, every round.
``seed``
    All draws above come from ``(seed, client index)``. Default 0.

A range may also be given as one number (``noise: 0.3`` is ``[0.3, 0.3]``). Every
bound is in the constants below; a mistake raises ``DataRulesError`` whose ``field``
names the key (``heterogeneity.noise``, ``heterogeneity.tasks[2].classes``).

Validation reports accuracy per task (``task_metrics``: ``task_<t>_test_accuracy`` on
the global test set's examples of task ``t``'s classes), from which ``forgetting`` is
computed over the rounds (defined there).

A project opts in with two calls: ``x, y = client_view_for(ctx, x, y)`` on its
training data and ``metrics.update(task_metrics_for(ctx, y_test, y_pred))`` in
validate. Both do nothing when the task config has no ``"heterogeneity"``, so the
project's results are unchanged outside the lab.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "DataRules",
    "DataRulesError",
    "NoExamplesError",
    "Task",
    "ClientDraw",
    "client_draw",
    "task_of_round",
    "client_view",
    "client_view_for",
    "task_metrics",
    "task_metrics_for",
    "task_accuracies",
    "forgetting",
    "average_forgetting",
    "MAX_TASKS",
    "MAX_CLASS",
    "MAX_TASK_ROUNDS",
    "NOISE_BOUNDS",
    "SCALE_BOUNDS",
    "LABELLED_BOUNDS",
]

#: At most this many tasks in a schedule (each one a key per validation report).
MAX_TASKS = 100
#: Class labels of a schedule are ints 0..MAX_CLASS.
MAX_CLASS = 9999
#: A task lasts 1..MAX_TASK_ROUNDS rounds.
MAX_TASK_ROUNDS = 100_000
#: Allowed values of the noise standard deviation (features are typically standardised).
NOISE_BOUNDS = (0.0, 100.0)
#: Allowed values of the feature multiplier.
SCALE_BOUNDS = (0.01, 100.0)
#: Allowed values of the labelled fraction (0 still keeps one example).
LABELLED_BOUNDS = (0.0, 1.0)
#: Seeds are ints 0..MAX_SEED.
MAX_SEED = 2**63 - 1

_KEYS = ("noise", "scale", "labelled", "tasks", "seed")
_TASK_KEYS = ("classes", "rounds")
# Independent random streams per client, so changing one knob leaves the others' draws alone.
_DRAW_STREAM, _LABEL_STREAM, _NOISE_STREAM = 0, 1, 2


class DataRulesError(ValueError):
    """A heterogeneity config mistake; ``field`` names the key (``heterogeneity.tasks[1].rounds``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def moved(self, old: str, new: str) -> "DataRulesError":
        """The same error with the field's prefix ``old`` replaced (rules checked under another name)."""
        if old == new or not self.field.startswith(old):
            return self
        return DataRulesError(new + self.field[len(old):], self.message)


class NoExamplesError(ValueError):
    """A client's view of its training data is empty (e.g. it holds none of the current task's classes)."""


def _show(value: Any, limit: int = 80) -> str:
    """``repr`` cut to ``limit`` characters: a config may be large, an error message should not be."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))


def _is_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def _range(value: Any, where: str, bounds: tuple[float, float]) -> tuple[float, float]:
    """``[lo, hi]`` (or one number) within ``bounds``, as a pair of floats."""
    pair = [value, value] if _is_number(value) else value
    if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2 \
            or not all(_is_number(v) for v in pair):
        raise DataRulesError(where, f"must be a number or a pair [lo, hi] of numbers, got {_show(value)}")
    lo, hi = float(pair[0]), float(pair[1])
    if not (math.isfinite(lo) and math.isfinite(hi)) or not bounds[0] <= lo <= hi <= bounds[1]:
        raise DataRulesError(where, f"must satisfy {bounds[0]:g} <= lo <= hi <= {bounds[1]:g}, got {_show(value)}")
    return lo, hi


@dataclass(frozen=True)
class Task:
    """One step of a class-incremental schedule: these classes, for this many rounds."""

    classes: tuple[int, ...]
    rounds: int

    def __post_init__(self) -> None:
        where = "task"
        classes = self.classes
        if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
            raise DataRulesError(f"{where}.classes", f"must be a list of class labels, got {_show(classes)}")
        if not classes:
            raise DataRulesError(f"{where}.classes", "must name at least one class")
        if len(classes) > MAX_CLASS + 1:
            raise DataRulesError(f"{where}.classes", f"has {len(classes)} entries, at most {MAX_CLASS + 1}")
        bad = [c for c in classes if not _is_int(c) or not 0 <= c <= MAX_CLASS]
        if bad:
            raise DataRulesError(f"{where}.classes", f"classes are ints 0..{MAX_CLASS}, got {_show(bad[0])}")
        if len(set(classes)) != len(classes):
            raise DataRulesError(f"{where}.classes", f"names a class twice: {_show(list(classes))}")
        if not _is_int(self.rounds) or not 1 <= self.rounds <= MAX_TASK_ROUNDS:
            raise DataRulesError(f"{where}.rounds", f"must be an int 1..{MAX_TASK_ROUNDS}, got {_show(self.rounds)}")
        object.__setattr__(self, "classes", tuple(int(c) for c in classes))
        object.__setattr__(self, "rounds", int(self.rounds))

    @classmethod
    def from_config(cls, config: Any, where: str = "task") -> "Task":
        if not isinstance(config, Mapping):
            raise DataRulesError(where, f"must be a mapping {{classes: [...], rounds: N}}, got {_show(config)}")
        for key in config:
            if key not in _TASK_KEYS:
                raise DataRulesError(f"{where}.{key}", f"unknown key; known: {', '.join(_TASK_KEYS)}")
        for key in _TASK_KEYS:
            if key not in config:
                raise DataRulesError(f"{where}.{key}", "is required")
        try:
            return cls(classes=config["classes"], rounds=config["rounds"])
        except DataRulesError as exc:
            raise exc.moved("task", where) from None

    def to_config(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "rounds": self.rounds}


@dataclass(frozen=True)
class DataRules:
    """The heterogeneity rules of a session (see the module docstring for each knob).

    Checked on construction, so rules built in code obey the same bounds as rules read
    from a config; ``from_config`` adds the checks of keys and types with field names.
    """

    noise: tuple[float, float] = (0.0, 0.0)
    scale: tuple[float, float] = (1.0, 1.0)
    labelled: tuple[float, float] = (1.0, 1.0)
    tasks: tuple[Task, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        where = "heterogeneity"
        object.__setattr__(self, "noise", _range(self.noise, f"{where}.noise", NOISE_BOUNDS))
        object.__setattr__(self, "scale", _range(self.scale, f"{where}.scale", SCALE_BOUNDS))
        object.__setattr__(self, "labelled", _range(self.labelled, f"{where}.labelled", LABELLED_BOUNDS))
        tasks = self.tasks
        if isinstance(tasks, (str, bytes, Mapping)) or not isinstance(tasks, Sequence):
            raise DataRulesError(f"{where}.tasks", f"must be a list of tasks, got {_show(tasks)}")
        if len(tasks) > MAX_TASKS:
            raise DataRulesError(f"{where}.tasks", f"has {len(tasks)} tasks, at most {MAX_TASKS}")
        parsed = tuple(t if isinstance(t, Task) else Task.from_config(t, f"{where}.tasks[{i}]")
                       for i, t in enumerate(tasks))
        owner: dict[int, int] = {}
        for i, task in enumerate(parsed):
            for c in task.classes:
                if c in owner:
                    raise DataRulesError(f"{where}.tasks[{i}].classes",
                                         f"class {c} is already in tasks[{owner[c]}]; tasks' classes must be disjoint")
                owner[c] = i
        object.__setattr__(self, "tasks", parsed)
        if not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise DataRulesError(f"{where}.seed", f"must be an int 0..2**63-1, got {_show(self.seed)}")
        object.__setattr__(self, "seed", int(self.seed))

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None, where: str = "heterogeneity") -> "DataRules":
        """The rules from a task config's ``"heterogeneity"`` mapping (``None``: no heterogeneity).

        Unknown keys are refused rather than ignored: a misspelt ``labeled`` silently
        doing nothing would make a whole lab run measure the wrong thing.
        """
        if config is None:
            return cls()
        if not isinstance(config, Mapping):
            raise DataRulesError(where, f"must be a mapping of {', '.join(_KEYS)}, got {_show(config)}")
        for key in config:
            if key not in _KEYS:
                raise DataRulesError(f"{where}.{key}", f"unknown key; known: {', '.join(_KEYS)}")
        try:
            return cls(**{key: config[key] for key in _KEYS if key in config})
        except DataRulesError as exc:
            raise exc.moved("heterogeneity", where) from None

    def to_config(self) -> dict[str, Any]:
        """Plain JSON-able form; ``from_config(rules.to_config()) == rules``."""
        return {"noise": list(self.noise), "scale": list(self.scale), "labelled": list(self.labelled),
                "tasks": [t.to_config() for t in self.tasks], "seed": self.seed}

    @property
    def is_identity(self) -> bool:
        """True when the rules change nothing (every client sees its data as they are)."""
        return (self.noise == (0.0, 0.0) and self.scale == (1.0, 1.0) and self.labelled == (1.0, 1.0)
                and not self.tasks)


@dataclass(frozen=True)
class ClientDraw:
    """What one client drew from the ranges: its noise std, feature multiplier and labelled fraction."""

    noise: float
    scale: float
    labelled: float


def _check_index(name: str, value: Any) -> int:
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {_show(value)}")
    return int(value)


def client_draw(rules: DataRules, client_index: int) -> ClientDraw:
    """Client ``client_index``'s draws, uniform in each range, from ``(rules.seed, client_index)`` only.

    Keyed on the client rather than drawn in sequence for all clients, so a client
    computes its own without knowing how many others there are.
    """
    client_index = _check_index("client_index", client_index)
    u = np.random.default_rng([rules.seed, client_index, _DRAW_STREAM]).random(3)
    pick = [lo + float(v) * (hi - lo) for v, (lo, hi) in zip(u, (rules.noise, rules.scale, rules.labelled))]
    return ClientDraw(noise=pick[0], scale=pick[1], labelled=pick[2])


def task_of_round(rules: DataRules, round_number: int) -> int | None:
    """The 0-based task of a (1-based) round; ``None`` without a schedule.

    Task ``t`` covers the rounds after the first ``t`` tasks' rounds: with rounds
    ``[5, 3]``, rounds 1-5 are task 0, 6-8 task 1, and every later round stays task 1
    (a session longer than the schedule keeps training the last task). Round 0 (a
    task from a caller that gave no round number) is task 0.
    """
    round_number = _check_index("round_number", round_number)
    if not rules.tasks:
        return None
    end = 0
    for index, task in enumerate(rules.tasks):
        end += task.rounds
        if round_number <= end:
            return index
    return len(rules.tasks) - 1


def client_view(rules: DataRules, x: npt.ArrayLike, y: npt.ArrayLike, *, client_index: int,
                round_number: int) -> tuple[np.ndarray, np.ndarray]:
    """The training data client ``client_index`` uses in round ``round_number`` under ``rules``.

    In order: keep the examples of the current task's classes (if there is a schedule);
    keep the client's labelled fraction of those (at least one); then scale the
    features and add the client's noise (float features keep their dtype, others
    become float32). The noise is drawn from ``(seed, client_index)`` for the examples
    kept, so within a task every round sees the same data. Identity rules return
    ``x`` and ``y`` themselves. Raises ``NoExamplesError`` naming the client, round and
    task when nothing is left, rather than training on nothing.
    """
    client_index = _check_index("client_index", client_index)
    x_arr, y_arr = np.asarray(x), np.asarray(y)
    if y_arr.ndim != 1 or len(x_arr) != len(y_arr):
        raise ValueError(f"x and y must hold the same number of examples (y 1-D), got shapes "
                         f"{x_arr.shape} and {y_arr.shape}")
    if rules.is_identity:
        task_of_round(rules, round_number)  # still refuses a bad round number
        return x, y  # type: ignore[return-value]
    draw = client_draw(rules, client_index)
    keep = np.arange(len(y_arr))
    task = task_of_round(rules, round_number)
    if task is not None:
        keep = np.flatnonzero(np.isin(y_arr, rules.tasks[task].classes))
    if draw.labelled < 1.0 and len(keep):
        ranks = np.random.default_rng([rules.seed, client_index, _LABEL_STREAM]).random(len(y_arr))
        count = max(1, round(draw.labelled * len(keep)))
        keep = np.sort(keep[np.argsort(ranks[keep], kind="stable")[:count]])
    if not len(keep):
        where = "" if task is None else f" (task {task}, classes {list(rules.tasks[task].classes)})"
        raise NoExamplesError(f"client {client_index} has no training examples in round {round_number}{where}: "
                              f"its partition holds none of the classes the round trains on")
    x_out, y_out = x_arr[keep], y_arr[keep]
    if draw.scale != 1.0 or draw.noise > 0.0:
        dtype = x_out.dtype if np.issubdtype(x_out.dtype, np.floating) else np.dtype(np.float32)
        x_out = x_out.astype(dtype) * dtype.type(draw.scale)
        if draw.noise > 0.0:
            rng = np.random.default_rng([rules.seed, client_index, _NOISE_STREAM])
            noise = rng.standard_normal(x_out.shape, dtype=np.float64 if dtype == np.float64 else np.float32)
            x_out = (x_out + noise * draw.noise).astype(dtype)
    return x_out, y_out


def _rules_of(ctx: Any) -> DataRules:
    config = getattr(ctx, "config", None) or {}
    return DataRules.from_config(config.get("heterogeneity"))


def client_view_for(ctx: Any, x: npt.ArrayLike, y: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """A project's one line: ``x, y = client_view_for(ctx, x, y)`` on its training data.

    ``ctx`` is the task's ``TaskContext``: the rules come from its config's
    ``"heterogeneity"``, the client from ``partition_index`` (the same index the
    partition uses, so a client's draws follow its data) and the round from
    ``round_number``. Without ``"heterogeneity"`` it returns ``x, y`` unchanged.
    """
    if "heterogeneity" not in (getattr(ctx, "config", None) or {}):
        return x, y  # type: ignore[return-value]
    return client_view(_rules_of(ctx), x, y, client_index=ctx.partition_index, round_number=ctx.round_number)


def task_metrics(rules: DataRules, y_true: npt.ArrayLike, y_pred: npt.ArrayLike,
                 prefix: str = "test") -> dict[str, float]:
    """``{"task_<t>_<prefix>_accuracy": ...}``: accuracy on the examples of each task's classes.

    Every task of the schedule, not only those seen so far, so a report shows a task's
    accuracy before it is trained (near 0 for new classes) and after (forgetting). A
    task none of whose classes occur in ``y_true`` gets no key (its accuracy is
    undefined, and NaN is not valid JSON). Empty without a schedule.
    """
    truth, pred = np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)
    if truth.shape != pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {truth.shape[0]} and {pred.shape[0]}")
    out: dict[str, float] = {}
    for t, task in enumerate(rules.tasks):
        mask = np.isin(truth, task.classes)
        if mask.any():
            out[f"task_{t}_{prefix}_accuracy"] = float(np.mean(pred[mask] == truth[mask]))
    return out


def task_metrics_for(ctx: Any, y_true: npt.ArrayLike, y_pred: npt.ArrayLike,
                     prefix: str = "test") -> dict[str, float]:
    """A project's one line in validate: ``metrics.update(task_metrics_for(ctx, y_test, y_pred))``."""
    if "heterogeneity" not in (getattr(ctx, "config", None) or {}):
        return {}
    return task_metrics(_rules_of(ctx), y_true, y_pred, prefix)


def task_accuracies(metrics: Mapping[str, Any], prefix: str = "test") -> dict[int, float]:
    """Back from validation metrics to ``{task: accuracy}``, the input of ``forgetting`` per round."""
    head, tail = "task_", f"_{prefix}_accuracy"
    out: dict[int, float] = {}
    for key, value in metrics.items():
        middle = key[len(head):-len(tail)] if key.startswith(head) and key.endswith(tail) else ""
        if middle.isdigit() and _is_number(value):
            out[int(middle)] = float(value)
    return out


def forgetting(per_round: Sequence[Mapping[int, float]]) -> dict[int, float]:
    """Per task, how much accuracy it lost by the end: ``max_{r < R} a_t(r) - a_t(R)``.

    ``per_round[r]`` maps task ``t`` to its accuracy ``a_t(r)`` after round ``r`` (in
    round order; ``task_accuracies`` of each round's validation), ``R`` is the last
    entry. A task gets a value when it has an accuracy in the last entry and in at
    least one earlier one. Not clipped: a negative value means the task is at its best
    at the end (backward transfer), which a report should show rather than hide.
    This is Chaudhry et al.'s (2018) forgetting measure with rounds in place of tasks.
    """
    if not per_round:
        return {}
    last = per_round[-1]
    out: dict[int, float] = {}
    for task, final in last.items():
        earlier = [accuracies[task] for accuracies in per_round[:-1] if task in accuracies]
        if earlier:
            out[int(task)] = float(max(earlier) - final)
    return out


def average_forgetting(per_round: Sequence[Mapping[int, float]], current_task: int | None) -> float | None:
    """Mean ``forgetting`` over the tasks seen and finished: those before ``current_task``.

    ``current_task`` is the task of the last round (``task_of_round(rules, R)``): the
    tasks before it have been trained and left, so what they lost is forgetting; the
    current task's own curve is still learning. ``None`` when no finished task has a
    value (first task, or no schedule).
    """
    if current_task is None:
        return None
    values = [v for t, v in forgetting(per_round).items() if t < current_task]
    return float(np.mean(values)) if values else None

"""Byzantine clients for the lab: what a misbehaving client sends, so defences can be measured.

A robust aggregation strategy is only as credible as the attack it was shown to survive,
so ``fedtier sandbox --byzantine`` makes some clients attack, with one of:

``sign_flip`` (``scale``, default 1)
    Sends ``base - scale * (trained - base)``: the honest step, reversed and stretched.
``scaling`` (``scale``, default 10)
    Sends ``base + scale * (trained - base)``: the honest direction, too long, which
    outweighs the others in a mean (a "model replacement" attack).
``noise`` (``sigma``, default 1)
    Sends ``trained + N(0, sigma^2)`` on every float value.
``label_flip`` (``num_classes``, default 10)
    A data attack: the client trains honestly on labels ``y -> num_classes - 1 - y``.
    fedtier never sees a client's data, so the project applies it: its train entry point
    passes its labels through ``flip_labels_for(ctx, y)`` (a no-op for honest clients).

The update attacks are applied by the client runtime (client/client.py) to the file the
project wrote, before the upload, so they work with any project and helper: only float
tensors change (an integer counter is kept as trained), computed in float64 and stored
in the tensor's own dtype. Non-float tensors and the file's metadata are kept.

This is a testing tool. ``fedtier client --attack`` is refused unless
``FEDTIER_ALLOW_ATTACKS`` is true, which the sandbox sets for its own processes: a
flag copied from a lab command into a deployment's client would otherwise quietly
poison a real federation. It is no defence against a real attacker, who runs any code
they like; the defence is the aggregation strategy.

Specs read like partition specs: ``KIND[:KEY=VALUE,...]``; the sandbox's adds
``fraction`` and ``placement`` (``AttackPlan``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fedtier.aggregators.params import Param, ParamError
from fedtier.helpers.format import read_header, read_model, write_model

#: Each attack's parameters, bounded: a scale or sigma beyond these makes non-finite
#: values in float32 models, which every combiner refuses anyway (update_check.py).
ATTACKS: dict[str, dict[str, Param]] = {
    "sign_flip": {"scale": Param(float, 1.0, 0.0, 1e6, doc="length of the reversed step")},
    "scaling": {"scale": Param(float, 10.0, 0.0, 1e6, doc="multiple of the honest step")},
    "noise": {"sigma": Param(float, 1.0, 0.0, 1e6, doc="standard deviation of the added noise"),
              "seed": Param(int, 0, 0, 2 ** 63 - 1, doc="with the task id, seeds the noise")},
    "label_flip": {"num_classes": Param(int, 10, 2, 1_000_000, doc="labels are 0..num_classes-1")},
}
UPDATE_ATTACKS = ("sign_flip", "scaling", "noise")
PLACEMENTS = ("one", "spread")


class AttackError(ValueError):
    """An attack spec is malformed; the message names the field."""


def _parse_items(spec: str, what: str) -> tuple[str, dict[str, Any]]:
    """``KIND[:KEY=VALUE,...]`` with numeric or word values."""
    if not isinstance(spec, str) or not spec.strip():
        raise AttackError(f"{what} is empty; expected e.g. 'sign_flip' or 'noise:sigma=0.5'")
    kind, _, rest = spec.strip().partition(":")
    values: dict[str, Any] = {}
    for item in filter(str.strip, rest.split(",")):
        key, sep, text = (s.strip() for s in item.partition("="))
        if not sep or not key or not text:
            raise AttackError(f"{what} {spec!r}: expected KEY=VALUE, got {item.strip()!r}")
        if key in values:
            raise AttackError(f"{what} {spec!r}: {key} given twice")
        for convert in (int, float, str):
            try:
                values[key] = convert(text)
                break
            except ValueError:
                pass
    return kind.strip(), values


@dataclass(frozen=True)
class Attack:
    """One client's attack: a kind and its checked parameters (defaults filled in)."""

    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, kind: str, params: Mapping[str, Any] | None = None) -> "Attack":
        if kind not in ATTACKS:
            raise AttackError(f"unknown attack {kind!r} (known: {', '.join(ATTACKS)})")
        declared, given = ATTACKS[kind], dict(params or {})
        unknown = sorted(set(given) - set(declared))
        if unknown:
            raise AttackError(f"attack {kind} takes no parameter {unknown[0]!r} (accepted: {', '.join(declared)})")
        try:
            full = {name: p.check(name, given[name]) if name in given else p.default for name, p in declared.items()}
        except ParamError as exc:
            raise AttackError(f"attack {kind}: {exc}") from None
        return cls(kind, full)

    @classmethod
    def parse(cls, spec: str) -> "Attack":
        kind, values = _parse_items(spec, "attack")
        return cls.create(kind, values)

    @property
    def spec(self) -> str:
        """The canonical spec, as ``fedtier client --attack`` takes it."""
        return self.kind + ":" + ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))

    def describe(self) -> str:
        return f"{self.kind} ({', '.join(f'{k}={v:g}' for k, v in sorted(self.params.items()))})"

    @property
    def on_update(self) -> bool:
        return self.kind in UPDATE_ATTACKS

    # ---- the arithmetic, on neutral weights
    def attacked(self, base: Mapping[str, np.ndarray], trained: Mapping[str, np.ndarray],
                 task_id: str = "") -> dict[str, np.ndarray]:
        """What this attacker sends instead of ``trained``, having started from ``base``."""
        if not self.on_update:
            return dict(trained)
        rng = None
        if self.kind == "noise":
            digest = hashlib.sha256(f"{self.params['seed']}|{task_id}".encode()).digest()
            rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        out: dict[str, np.ndarray] = {}
        for name, value in trained.items():
            if not np.issubdtype(value.dtype, np.floating):
                out[name] = value
                continue
            t = value.astype(np.float64)
            if self.kind == "noise":
                result = t + rng.normal(0.0, self.params["sigma"], size=t.shape)  # type: ignore[union-attr]
            else:
                b = np.asarray(base[name], dtype=np.float64)
                step = -self.params["scale"] if self.kind == "sign_flip" else self.params["scale"]
                result = b + step * (t - b)
            out[name] = result.astype(value.dtype)
        return out

    def apply_to_file(self, base_path: Path, trained_path: Path, task_id: str = "") -> None:
        """Rewrite the project's output model in place with the attacked update."""
        if not self.on_update:
            return
        metadata = read_header(trained_path).metadata
        weights = self.attacked(read_model(base_path), read_model(trained_path), task_id)
        write_model(trained_path, weights, metadata or None, durable=False)

    def flip_labels(self, labels: np.ndarray) -> np.ndarray:
        """``y -> C - 1 - y`` for a label flipper; any other attack leaves labels alone."""
        if self.kind != "label_flip":
            return labels
        y = np.asarray(labels)
        classes = self.params["num_classes"]
        if y.size and (y.min() < 0 or y.max() >= classes):
            raise AttackError(f"label_flip: labels must be 0..{classes - 1} (num_classes={classes}), "
                              f"got {y.min()}..{y.max()}")
        return (classes - 1 - y).astype(y.dtype)


def flip_labels_for(ctx: Any, labels: np.ndarray) -> np.ndarray:
    """A project's one line for the label-flip lab attack: ``y = flip_labels_for(ctx, y)``.

    ``ctx`` is the task's ``TaskContext``; its ``attack`` is empty for every honest
    client, so this returns ``labels`` unchanged outside the lab.
    """
    spec = getattr(ctx, "attack", "")
    return Attack.parse(spec).flip_labels(labels) if spec else labels


@dataclass(frozen=True)
class AttackPlan:
    """Which of a sandbox's clients attack, and where each client connects.

    Clients are dealt to combiners round-robin (``client-i`` to ``combiner-(i mod C)``),
    the same layout with or without attackers. ``placement="one"`` takes the attackers
    from combiner-0's clients (highest index first), so they are all there;
    ``"spread"`` takes the highest-indexed clients, which the round-robin deals over the
    combiners. ``fraction`` of the clients, rounded, at least one.
    """

    attack: Attack
    fraction: float
    placement: str
    clients: int
    combiners: int
    attackers: tuple[int, ...]

    @classmethod
    def parse(cls, spec: str, clients: int, combiners: int) -> "AttackPlan":
        """``KIND:fraction=F[,placement=one|spread][,attack params]``, e.g.
        ``sign_flip:fraction=0.3,placement=one,scale=4``."""
        kind, values = _parse_items(spec, "--byzantine")
        fraction = values.pop("fraction", None)
        placement = values.pop("placement", "spread")
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise AttackError(f"--byzantine {spec!r}: fraction must be a number in (0, 1], got {fraction!r}")
        if placement not in PLACEMENTS:
            raise AttackError(f"--byzantine {spec!r}: placement must be one of {', '.join(PLACEMENTS)}, "
                              f"got {placement!r}")
        attack = Attack.create(kind, values)
        count = max(1, round(fraction * clients))
        if count > clients:
            raise AttackError(f"--byzantine: {count} attackers but only {clients} clients")
        if placement == "one":
            on_first = [i for i in range(clients) if i % combiners == 0]
            if count > len(on_first):
                raise AttackError(f"--byzantine {spec!r}: {count} attackers do not fit on combiner-0, which holds "
                                  f"{len(on_first)} of the {clients} clients; use placement=spread or more clients")
            chosen = on_first[::-1][:count]
        else:
            chosen = list(range(clients))[::-1][:count]
        return cls(attack, float(fraction), placement, clients, combiners, tuple(sorted(chosen)))

    def combiner_of(self, client: int) -> int:
        return client % self.combiners

    def client_args(self, client: int) -> list[str]:
        """Extra ``fedtier client`` arguments for client ``client`` (none if honest)."""
        return ["--attack", self.attack.spec] if client in self.attackers else []

    def describe(self) -> str:
        where = ", ".join(f"client-{i} on combiner-{self.combiner_of(i)}" for i in self.attackers)
        return (f"byzantine: {len(self.attackers)} of {self.clients} clients attack with "
                f"{self.attack.describe()}, placement {self.placement}: {where}")

    def to_record(self) -> dict[str, Any]:
        return {"attack": self.attack.kind, "params": dict(self.attack.params), "fraction": self.fraction,
                "placement": self.placement,
                "clients": [{"client": f"client-{i}", "combiner": f"combiner-{self.combiner_of(i)}"}
                            for i in self.attackers]}


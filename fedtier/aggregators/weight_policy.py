"""How much one participant may weigh in a weighted mean: the cap on reported examples.

FedAvg weighs each update by the number of examples its sender reports, and nobody can
check that number. Left alone, one client reporting ``10**12`` examples makes the mean
its own update. The round's cap bounds every weight:

    cap = min(weight_cap_median x (lower median weight of the round), weight_cap)

over the settings that are on (``fedtier/round_config.py``), and each update counts
with ``min(reported, cap)``. The *lower* median (the ceil(n/2)-th smallest) is used
because with two clients the plain median is the mean of the two, half of which the
liar chooses; the lower median of two is the honest one's weight whatever the other says.
More generally, to lift the lower median above every honest weight, liars must be a
majority of the round (more than floor(n/2) of n).

A combiner folds updates as they arrive and deletes them (O(model) memory), but the
cap depends on weights that have not arrived yet. ``WeightCap`` keeps the exact result,
``sum(min(w, cap) x) / sum(min(w, cap))`` with the cap over every update that arrived,
without holding updates in memory: an update whose weight is provably at most the final
cap is folded at once; any other is deferred (its file stays on disk) until the bound
allows, at the latest when the round closes and the cap is known. ``median_lower_bound``
says what is provable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction


@dataclass(frozen=True)
class WeightPolicy:
    median_multiple: float = 10.0  # 0: off
    absolute: int = 0              # 0: off

    @property
    def on(self) -> bool:
        return bool(self.median_multiple or self.absolute)

    def cap(self, weights: list[int]) -> int | None:
        """The cap over ``weights`` (all of a round's accepted weights); None when off."""
        return self.cap_at(lower_median(sorted(weights)) if weights else 0)

    def cap_at(self, median: int) -> int | None:
        """The cap when the round's lower median weight is ``median``."""
        caps = []
        if self.median_multiple:
            # at least 1: a cap of 0 would leave nothing to divide by. The multiple as written
            # (2.3, not 2.29999...): a cap of 2.3 x 100 is 230 examples, not 229
            caps.append(max(1, math.floor(Fraction(repr(self.median_multiple)) * median)))
        if self.absolute:
            caps.append(self.absolute)
        return min(caps) if caps else None


def lower_median(ordered: list[int]) -> int:
    """The ceil(n/2)-th smallest of a sorted, non-empty list."""
    return ordered[(len(ordered) + 1) // 2 - 1]


def median_lower_bound(ordered: list[int], expected: int) -> int:
    """A value the lower median of the round's final weights is at least, when the
    ``ordered`` weights (sorted) are known to be among them and at most ``expected``
    weights arrive in all; 0 when nothing is provable.

    With k known and m <= expected - k more, the ceil((k+m)/2)-th smallest of all is at
    least the (ceil((k+m)/2) - m)-th smallest of the known ones (m values can sit below
    it at most); that index, ceil((k-m)/2), is smallest at m = expected - k, where it is
    k - floor(expected/2). Fewer arrivals only raise it."""
    index = len(ordered) - expected // 2
    return ordered[index - 1] if index >= 1 else 0


@dataclass
class WeightCap:
    """One round's weights as they arrive, and which updates may be folded when.

    ``expected`` is how many updates may still arrive in all (the round's tasks); each
    task that ends without an accepted update is ``drop``-ped, which only tightens the
    bound. Thread-safety is the caller's (ActiveRound holds its fold lock).
    """
    policy: WeightPolicy
    expected: int
    weights: dict[str, int] = field(default_factory=dict)  # accepted: client -> reported weight
    deferred: dict[str, int] = field(default_factory=dict)  # accepted, not folded yet
    closed: bool = False

    def add(self, client: str, weight: int) -> bool:
        """Accept ``client``'s weight; True if its update may be folded now (with
        ``weight_for``), False if it must wait for ``releasable`` or ``close``."""
        if weight <= 0:
            raise ValueError(f"weight must be a positive number of examples, got {weight}")
        if client in self.weights:
            raise ValueError(f"{client} already reported a weight this round")
        self.weights[client] = weight
        if weight <= self.provable_cap() or self._exact_cap() is not None:
            return True
        self.deferred[client] = weight
        return False

    def drop(self) -> None:
        """One expected update will not arrive (failed, rejected, missing)."""
        self.expected = max(len(self.weights), self.expected - 1)

    def provable_cap(self) -> float:
        """A value the final cap is at least (inf when the policy is off). With nothing
        provable about the median it is still 1 (the cap never goes below)."""
        ordered = sorted(self.weights.values())
        cap = self.policy.cap_at(median_lower_bound(ordered, max(self.expected, len(ordered))))
        return math.inf if cap is None else cap

    def _exact_cap(self) -> int | None:
        """The final cap when it is known before the round ends: the absolute cap alone."""
        return self.policy.absolute if self.policy.absolute and not self.policy.median_multiple else None

    def weight_for(self, client: str) -> int:
        """The weight to fold ``client``'s update with: its own when provably under the
        cap, else the capped one (known at once for an absolute cap alone, else only
        once the round is closed)."""
        weight = self.weights[client]
        if weight <= self.provable_cap():
            return weight
        exact = self._exact_cap()
        cap = exact if exact is not None else self.final_cap()
        return weight if cap is None else min(weight, cap)

    def releasable(self) -> list[str]:
        """Deferred clients that may be folded now (with their own weight); removed from
        the deferred set, in arrival order."""
        bound = self.provable_cap()
        ready = [c for c, w in self.deferred.items() if w <= bound]
        for client in ready:
            del self.deferred[client]
        return ready

    def close(self) -> list[str]:
        """No more weights: fix the final cap and hand over every deferred client
        (to be folded with ``weight_for``)."""
        self.closed = True
        rest = list(self.deferred)
        self.deferred.clear()
        return rest

    def final_cap(self) -> int | None:
        """The round's cap over every accepted weight (None when the policy is off)."""
        if not self.closed and self.policy.median_multiple:
            raise RuntimeError("the final cap is known once the round is closed")
        return self.policy.cap(list(self.weights.values()))

    def capped(self) -> dict[str, tuple[int, int]]:
        """Clients whose weight was cut: client -> (reported, used)."""
        cap = self.policy.cap(list(self.weights.values()))  # of the weights so far, if not closed
        if cap is None:
            return {}
        return {c: (w, cap) for c, w in self.weights.items() if w > cap}


@dataclass(frozen=True)
class Contribution:
    """One client's update as a combiner reports it to the reducer."""
    client: str
    reported: int  # the examples the client reported
    used: int      # the weight the combiner folded it with (0: not stated, taken as reported)


@dataclass
class CombinerWeights:
    weights: dict[str, int]          # combiner -> the weight its model counts with at the reducer
    cap: int | None                  # the cap over every client of the round
    capped_clients: list[dict]       # {"client", "combiner", "reported", "used"}
    capped_combiners: list[dict]     # {"combiner", "reported", "used"}


def combiner_weights(policy: WeightPolicy, combiners: dict[str, tuple[int, list[Contribution]]]) -> CombinerWeights:
    """The weight of each combiner's model at the reducer, given what each claims
    (its total) and the contributions it lists.

    The reducer cannot re-weight the clients inside a combiner's model, only the model as a
    whole. A combiner counts with at most the sum over its clients of
    min(reported, used by the combiner, the cap over all clients of the round): it cannot
    claim more than its clients delivered, and a client alone on its combiner (which its
    combiner's own cap cannot catch) is held to the round-wide cap. When nobody is capped
    each combiner counts with what it claims, so two-tier FedAvg equals flat FedAvg."""
    cap = policy.cap([c.reported for _, contributions in combiners.values() for c in contributions])
    result = CombinerWeights({}, cap, [], [])
    for name, (claimed, contributions) in combiners.items():
        allowed = 0
        for c in contributions:
            used = min(c.reported, c.used) if c.used > 0 else c.reported
            if cap is not None:
                used = min(used, cap)
            if used < c.reported:
                result.capped_clients.append({"client": c.client, "combiner": name, "reported": c.reported,
                                              "used": used})
            allowed += used
        weight = min(claimed, allowed)
        if weight < claimed:
            result.capped_combiners.append({"combiner": name, "reported": claimed, "used": weight})
        result.weights[name] = weight
    return result


__all__ = ["CombinerWeights", "Contribution", "WeightCap", "WeightPolicy", "combiner_weights", "lower_median",
           "median_lower_bound"]

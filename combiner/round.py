"""One round on one combiner: the tasks it sent and what came back.

Reports arrive on gRPC threads; the round runner waits on this object. Every report
is checked against the task it answers (right round, right client, not answered
before, model uploaded by that client) so a forged or replayed report changes nothing.
Training updates are folded into the aggregate as they arrive and then deleted; one
whose weight the round's cap may still cut waits on disk until the cap is known
(fedtier/aggregators/weight_policy.py), so the result is exactly the capped FedAvg.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import grpc

from fedtier import strict_json
from fedtier.aggregators.base import Strategy, Update
from fedtier.aggregators.weight_policy import WeightCap, WeightPolicy
from fedtier.combiner.model_cache import ModelCache
from fedtier.proto import fedtier_pb2 as pb

log = logging.getLogger(__name__)


class RejectedReport(ValueError):
    """A report that does not answer an open task of this round; nothing changed.

    ``reason`` is one word of a fixed set (combiner/metrics.py, REJECT_REASONS) for the
    metrics, which must never carry the message: it names clients and models."""

    def __init__(self, message: str, reason: str = "not_its_task") -> None:
        super().__init__(message)
        self.reason = reason


# A task's states, as the live view and the round's timeline name them. The open ones are
# the states a round waits in; a client's progress messages move a task forward through
# them, the combiner's own checks end it.
CHOSEN, DOWNLOADING, TRAINING, UPLOADING, VALIDATING = "chosen", "downloading", "training", "uploading", "validating"
REPORTED, FAILED, CAPPED = "reported", "failed", "capped"
OPEN_STATES = (CHOSEN, DOWNLOADING, TRAINING, UPLOADING, VALIDATING)
STATES = (*OPEN_STATES, REPORTED, FAILED, CAPPED)
# phase sent by the client -> (the state it enters, the phase's name on the timeline, its rank)
_PHASES = {pb.PHASE_DOWNLOADING: (DOWNLOADING, "download", 1), pb.PHASE_TRAINING: (TRAINING, "train", 2),
           pb.PHASE_VALIDATING: (VALIDATING, "validate", 2), pb.PHASE_UPLOADING: (UPLOADING, "upload", 3)}
_RANK = {CHOSEN: 0, **{state: rank for state, _, rank in _PHASES.values()}}
_KIND_PHASES = {pb.TRAINING: (pb.PHASE_DOWNLOADING, pb.PHASE_TRAINING, pb.PHASE_UPLOADING),
                pb.VALIDATION: (pb.PHASE_DOWNLOADING, pb.PHASE_VALIDATING)}
DETAIL_CHARS = 200  # a failure's reason as the live view shows it (the round's failures keep it whole)


class ProgressRefused(ValueError):
    """A progress message that does not move an open task of its sender forward; the
    ``code`` is the gRPC status the caller gets, the message says why."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class TaskState:
    client: str
    state: str
    since: float                      # clock time it entered ``state``
    started: dict[str, float] = field(default_factory=dict)  # phase -> seconds after the tasks were sent
    ended: float = 0.0
    detail: str = ""


class TaskStates:
    """Each task of one round and where it is: chosen, then the phases its client reports
    (forward only, each once), then reported or failed (and capped, once the round's weight
    cap cut its update). The combiner's own clock times every step, so one round's timeline
    compares its clients on one clock, and a client can neither go back nor repeat a phase:
    at most three messages per task change anything."""

    def __init__(self, kind: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.kind = kind
        self._clock = clock
        self.t0 = clock()  # the tasks are sent right after: the timeline's zero
        self._tasks: dict[str, TaskState] = {}
        self._lock = threading.Lock()

    def chosen(self, task_id: str, client: str) -> None:
        with self._lock:
            self._tasks[task_id] = TaskState(client=client, state=CHOSEN, since=self._clock())

    def progress(self, task_id: str, client: str, phase: int) -> None:
        """Move ``client``'s open task forward to ``phase``; ProgressRefused says why not."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or task.client != client:
                raise ProgressRefused(grpc.StatusCode.FAILED_PRECONDITION,
                                      f"{client!r} holds no task {task_id[:64]!r} in this round")
            if task.state not in OPEN_STATES:
                raise ProgressRefused(grpc.StatusCode.FAILED_PRECONDITION,
                                      f"task {task_id} is already {task.state}")
            if phase not in _KIND_PHASES[self.kind]:
                allowed = ", ".join(pb.TaskPhase.Name(p) for p in _KIND_PHASES[self.kind])
                raise ProgressRefused(grpc.StatusCode.INVALID_ARGUMENT,
                                      f"phase must be one of {allowed} for this task, got {phase}")
            state, name, rank = _PHASES[phase]
            if rank <= _RANK[task.state]:
                raise ProgressRefused(grpc.StatusCode.INVALID_ARGUMENT,
                                      f"phase {pb.TaskPhase.Name(phase)} does not follow {task.state}: "
                                      f"a task's phases only move forward, each once")
            now = self._clock()
            task.state, task.since = state, now
            task.started[name] = now - self.t0

    def finished(self, task_id: str, state: str, detail: str = "") -> None:
        """The task ended (REPORTED or FAILED); an ended task stays as it ended."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is not None and task.state in OPEN_STATES:
                now = self._clock()
                task.state, task.since, task.ended = state, now, now - self.t0
                task.detail = detail[:DETAIL_CHARS]

    def capped(self, client: str, detail: str) -> None:
        with self._lock:
            for task in self._tasks.values():
                if task.client == client and task.state == REPORTED:
                    task.state, task.detail = CAPPED, detail[:DETAIL_CHARS]

    def task_of(self, client: str) -> str | None:
        """The open task ``client`` holds, if any."""
        with self._lock:
            return next((task_id for task_id, t in self._tasks.items()
                         if t.client == client and t.state in OPEN_STATES), None)

    def snapshot(self) -> list[pb.ClientProgress]:
        with self._lock:
            now = self._clock()
            return [pb.ClientProgress(client_name=t.client, state=t.state, state_for_s=now - t.since,
                                      started=t.started, ended=t.ended, detail=t.detail)
                    for t in self._tasks.values()]

    def elapsed(self) -> float:
        return self._clock() - self.t0


@dataclass
class ActiveRound:
    round_id: str
    kind: int
    model_id: str
    aggregator: Strategy | None = None  # this tier's strategy (RoundConfig.aggregation)
    expected: dict[str, str] = field(default_factory=dict)  # task id -> client name
    answered: set[str] = field(default_factory=set)
    updates: list[pb.ClientContribution] = field(default_factory=list)
    validations: list[pb.ValidationReport] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    aggregation_seconds: float = 0.0
    stop_reason: str = ""
    closed: bool = False
    folding: int = 0  # updates claimed whose fold has not finished: the round is not done until 0
    policy: WeightPolicy = field(default_factory=WeightPolicy)

    def __post_init__(self) -> None:
        self._changed = threading.Condition()
        self._fold_lock = threading.Lock()  # one update folded at a time
        self.weights = WeightCap(self.policy, expected=0)
        self._weights_lock = threading.Lock()  # never held while waiting for another lock
        self._deferred: dict[str, str] = {}  # client -> model id of its accepted, not yet folded update
        self._arrived: dict[str, float] = {}  # client -> when its update was reported
        self._stale: dict[str, tuple[str, float]] = {}  # client -> (older base model, discount) the strategy took
        # client -> its task ids: a report or a disconnect looks up its sender's tasks without
        # reading every task of the round (thousands per combiner)
        self._tasks_of: dict[str, list[str]] = {}
        self.states = TaskStates(self.kind)  # each task's state, for the live view and the timeline

    # ---- set-up and waiting, called by the runner
    def expect(self, task_id: str, client: str) -> None:
        with self._changed:
            self.expected[task_id] = client
            self._tasks_of.setdefault(client, []).append(task_id)
        self.states.chosen(task_id, client)
        with self._weights_lock:
            self.weights.expected += 1

    def expects(self, client: str) -> bool:
        """Whether ``client`` has a task in this round still open."""
        with self._changed:
            return not self.closed and any(task_id not in self.answered for task_id in self._tasks_of.get(client, ()))

    def fail_task(self, task_id: str, reason: str) -> None:
        with self._changed:
            if task_id in self.expected and task_id not in self.answered:
                self.answered.add(task_id)
                self.failures.append(f"{self.expected[task_id]}: {reason}")
                self.states.finished(task_id, FAILED, reason)
                self._drop()
                self._changed.notify_all()

    def fail_client(self, client: str, reason: str) -> None:
        with self._changed:
            for task_id in self._tasks_of.get(client, ()):
                if task_id not in self.answered and not self.closed:
                    self.answered.add(task_id)
                    self.failures.append(f"{client}: {reason}")
                    self.states.finished(task_id, FAILED, reason)
                    self._drop()
                    log.warning("round %s: %s %s", self.round_id, client, reason)
            self._changed.notify_all()

    def wait(self, timeout: float) -> bool:
        """True when every task was answered and every accepted update folded in;
        False on timeout or stop."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while (len(self.answered) < len(self.expected) or self.folding) and not self.stop_reason:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return not self.stop_reason

    def close(self) -> None:
        """No report is accepted after this. Returns once every update already claimed is
        folded in (or rejected), so what the caller reads next is the whole round."""
        with self._changed:
            self.closed = True
            for task_id, client in self.expected.items():
                if task_id not in self.answered:
                    self.failures.append(f"{client}: no answer before the round closed")
                    self.states.finished(task_id, FAILED, "no answer before the round closed")
            while self.folding:
                self._changed.wait()

    def stop(self, reason: str) -> None:
        with self._changed:
            self.stop_reason = reason
            self._changed.notify_all()

    def progress(self, progress: pb.TaskProgress) -> None:
        """A client says where it is in its task (TaskStates.progress); ProgressRefused if
        it answers no open task of this round of its sender."""
        if progress.round_id != self.round_id:
            raise ProgressRefused(grpc.StatusCode.FAILED_PRECONDITION,
                                  f"progress for round {progress.round_id[:64]!r}, but round {self.round_id!r} "
                                  f"is running")
        if self.closed:
            raise ProgressRefused(grpc.StatusCode.FAILED_PRECONDITION, f"round {self.round_id} is closed")
        self.states.progress(progress.task_id, progress.client_name, progress.phase)

    def live(self) -> pb.RoundProgress:
        return pb.RoundProgress(round_id=self.round_id, kind=self.kind, elapsed_s=self.states.elapsed(),
                                clients=self.states.snapshot())

    # ---- reports, called from gRPC threads
    def _claim(self, task_id: str, client: str, round_id: str, kind: int) -> None:
        if round_id != self.round_id:
            raise RejectedReport(f"report for round {round_id!r}, but round {self.round_id!r} is running")
        if self.kind != kind:
            raise RejectedReport("report type does not match the round's tasks")
        if self.closed:
            raise RejectedReport(f"round {self.round_id} is closed", "round_closed")
        owner = self.expected.get(task_id)
        if owner is None:
            raise RejectedReport(f"unknown task {task_id!r}")
        if owner != client:
            raise RejectedReport(f"task {task_id} was sent to {owner}, not {client}")
        if task_id in self.answered:
            raise RejectedReport(f"task {task_id} was already answered", "duplicate")
        self.answered.add(task_id)  # claimed: a second report for it is rejected

    def _drop(self) -> None:
        """A task ended without an accepted update: fewer weights can still arrive."""
        with self._weights_lock:
            self.weights.drop()

    def submit_update(self, update: pb.ModelUpdate, cache: ModelCache) -> None:
        deferred = False
        try:
            with self._changed:
                self._claim(update.task_id, update.client_name, update.round_id, pb.TRAINING)
                self.folding += 1
            try:
                self._accept(update, cache)
                with self._weights_lock:
                    fold_now = self.weights.add(update.client_name, int(update.num_examples))
                    if not fold_now:
                        self._deferred[update.client_name] = update.model_id
                        deferred = True
            except Exception as exc:
                self.states.finished(update.task_id, FAILED, f"update rejected: {exc}")
                with self._changed:
                    self.failures.append(f"{update.client_name}: update rejected: {exc}")
                    self._drop()
                    self.folding -= 1
                    self._changed.notify_all()
                raise RejectedReport(f"update rejected: {exc}", getattr(exc, "reason", "invalid")) from exc
            with self._changed:
                self.updates.append(pb.ClientContribution(
                    client_name=update.client_name, num_examples=update.num_examples,
                    metadata_json=update.metadata_json, timings=dict(update.timings)))
            self.states.finished(update.task_id, REPORTED)
            try:
                if fold_now:
                    self._fold(update.client_name, update.model_id, cache)
                else:
                    log.debug("round %s: %s reports %d examples, over what the cap is known to allow "
                             "yet: its update waits on disk", self.round_id, update.client_name,
                             update.num_examples)
                self._fold_released(cache)
            except Exception as exc:  # checked, yet not folded: the aggregate is no longer known
                self.stop(f"internal error folding an update: {exc}")
                raise RejectedReport(f"update not folded: {exc}", "internal") from exc
            finally:
                with self._changed:
                    self.folding -= 1
                    self._changed.notify_all()
        finally:
            if not deferred and update.model_id and cache.uploader(update.model_id) == update.client_name:
                cache.discard(update.model_id)  # folded or rejected: the update is not kept

    def _accept(self, update: pb.ModelUpdate, cache: ModelCache) -> None:
        """Raise unless the update may count in this round: trained from this round's model
        (or an older one the strategy takes: ``Strategy.staleness_weight``), uploaded by its
        sender, a positive weight, a model the strategy accepts."""
        if not update.parent_model_id:
            raise RejectedReport("parent_model_id is empty: an update must name the model it was trained from",
                                 "stale")
        if cache.uploader(update.model_id) != update.client_name:
            raise RejectedReport(f"model {update.model_id!r} was not uploaded by {update.client_name}",
                                 "not_uploader")
        if update.num_examples <= 0:
            raise RejectedReport(f"num_examples must be positive, got {update.num_examples}", "invalid")
        assert self.aggregator is not None
        if update.parent_model_id != self.model_id:
            offered = Update(cache.path(update.model_id), float(update.num_examples), sender=update.client_name,
                             base_model=update.parent_model_id, round_id=self.round_id, received_at=time.time())
            discount = float(self.aggregator.staleness_weight(offered))
            if not discount > 0:  # the strategy's call: synchronous ones refuse every stale update
                raise RejectedReport(f"stale update: trained from model {update.parent_model_id!r}, "
                                     f"but this round's model is {self.model_id!r}", "stale")
            self._stale[update.client_name] = (update.parent_model_id, min(discount, 1.0))
        self._arrived[update.client_name] = time.time()
        self.aggregator.check(self._update(update.client_name, update.model_id, 0.0, cache))

    def _update(self, client: str, model_id: str, weight: float, cache: ModelCache) -> Update:
        base, discount = self._stale.get(client, (self.model_id, 1.0))
        return Update(cache.path(model_id), weight * discount, sender=client, base_model=base,
                      round_id=self.round_id, received_at=self._arrived.get(client, 0.0),
                      checked=cache.update_check(model_id))

    def _fold(self, client: str, model_id: str, cache: ModelCache) -> None:
        assert self.aggregator is not None
        with self._fold_lock:
            with self._weights_lock:
                weight = self.weights.weight_for(client)
            started = time.perf_counter()
            self.aggregator.add(self._update(client, model_id, float(weight), cache))
            self.aggregation_seconds += time.perf_counter() - started

    def _fold_released(self, cache: ModelCache) -> None:
        """Fold the deferred updates the weights that arrived since have shown to be under the cap."""
        while True:
            with self._weights_lock:
                ready = self.weights.releasable()
                if not ready:
                    return
                models = {client: self._deferred.pop(client) for client in ready}
            for client, model_id in models.items():
                try:
                    self._fold(client, model_id, cache)
                finally:
                    cache.discard(model_id)

    def settle(self, cache: ModelCache) -> dict[str, tuple[int, int]]:
        """After ``close``: fix the cap over the weights that arrived, fold the updates that
        waited for it (one at a time, from disk), record the weight each update counted with,
        and return the capped clients (client -> (reported, used)), each logged."""
        with self._weights_lock:
            rest = self.weights.close()
            models = {client: self._deferred.pop(client) for client in rest}
            cap = self.weights.final_cap()
        for client, model_id in models.items():
            try:
                self._fold(client, model_id, cache)
            finally:
                cache.discard(model_id)
        with self._weights_lock:
            capped = self.weights.capped()
            for contribution in self.updates:
                used = self.weights.weight_for(contribution.client_name)
                contribution.weight_used = used
                contribution.capped = used < contribution.num_examples
        for client, (reported, used) in capped.items():
            self.states.capped(client, f"reported {reported} examples, counted as {used} (the round's weight cap)")
            log.warning("round %s: %s reported %d examples; counted as %d (the round's weight cap)",
                        self.round_id, client, reported, used)
        if capped:
            log.info("round %s: weight cap %s over %d updates", self.round_id, cap, len(self.updates))
        return capped

    def submit_validation(self, report: pb.ValidationReport) -> None:
        try:  # a client's text: bounded depth, no NaN (fedtier/strict_json.py)
            metrics = strict_json.loads(report.metrics_json or "{}")
        except strict_json.JSONInputError:
            metrics = None
        if not isinstance(metrics, dict):
            raise RejectedReport("metrics_json must be a JSON object", "invalid")
        with self._changed:
            self._claim(report.task_id, report.client_name, report.round_id, pb.VALIDATION)
            self.validations.append(report)
            self.states.finished(report.task_id, REPORTED)
            self._changed.notify_all()

    def submit_failure(self, failure: pb.TaskFailure) -> None:
        with self._changed:
            self._claim(failure.task_id, failure.client_name, failure.round_id, self.kind)
            self.failures.append(f"{failure.client_name}: {failure.error or 'task failed'}")
            self.states.finished(failure.task_id, FAILED, failure.error or "task failed")
            self._drop()
            self._changed.notify_all()

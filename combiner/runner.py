"""Runs the rounds the reducer asks for, one at a time, on this combiner's clients.

A training round: wait for enough active clients, pick some, send them train tasks,
fold each update into the aggregate as it arrives, and when all have answered (or
the timeout passes) write the combiner model if the quorum was met. A validation
round sends validate tasks for a given model and collects the metrics.
"""
from __future__ import annotations

import hashlib
import logging
import random
import shutil
import threading
import time
import uuid
from pathlib import Path

import grpc
from google.protobuf.message import Message

from fedtier import limits
from fedtier.aggregators import COMBINER, RoundContext, StrategyError, get_strategy
from fedtier.aggregators.update_check import UpdateCheck
from fedtier.combiner.metrics import CombinerMetrics
from fedtier.combiner.model_cache import ModelCache, UploadRefused
from fedtier.combiner.registry import ClientRegistry
from fedtier.combiner.round import ActiveRound, ProgressRefused, RejectedReport
from fedtier.helpers import get_helper
from fedtier.memory import python_heap_bytes, release_free_memory
from fedtier.proto import fedtier_pb2 as pb
from fedtier.round_config import CombinerQuorum, RoundConfig, RoundConfigError

log = logging.getLogger(__name__)


class RoundRunner:
    def __init__(self, name: str, registry: ClientRegistry, cache: ModelCache,
                 rng: random.Random | None = None, metrics: CombinerMetrics | None = None) -> None:
        self.name = name
        self.metrics = metrics or CombinerMetrics()
        self.registry = registry
        self.cache = cache
        self.rng = rng or random.Random()
        self.last_model_id = ""
        self._one_round = threading.Lock()
        self._current: ActiveRound | None = None
        self._model_size = 0  # bytes of the running round's global model

    @property
    def round_in_progress(self) -> str:
        current = self._current
        return current.round_id if current else ""

    def live(self) -> pb.RoundProgress | None:
        """The running round's tasks and their states (CombinerStatus.round); None when idle."""
        current = self._current
        return current.live() if current is not None else None

    def run(self, request: pb.RoundRequest) -> pb.RoundResult:
        if not self._one_round.acquire(blocking=False):
            return self._failed(request, f"round {self.round_in_progress} is still running on {self.name}")
        result: pb.RoundResult | None = None
        started = time.perf_counter()
        try:
            result = self._run(request)
            return result
        except StrategyError as exc:  # the strategy cannot work with this round (Krum with too few updates)
            result = self._failed(request, str(exc))
            return result
        except Exception as exc:  # a round must end with a result, never a dropped RPC
            log.exception("round %s failed", request.round_id)
            result = self._failed(request, f"internal error: {exc}")
            return result
        finally:
            self.metrics.round_finished("validation" if request.kind == pb.VALIDATION else "training",
                                        bool(result and result.success), time.perf_counter() - started)
            self._current = None
            shutil.rmtree(self._work_dir(request), ignore_errors=True)  # updates a strategy kept
            # bound disk use: keep the model this round used and the one it produced (the
            # reducer fetches it next); older global models and stray uploads go
            keep = {request.model_id, self.last_model_id} | ({result.model_id} if result and result.model_id else set())
            removed = self.cache.prune({k for k in keep if k})
            if removed:
                log.debug("pruned %d old models from the cache", removed)
            # the round's buffers were freed on many threads' arenas: hand them back, so the
            # RSS between rounds is what the combiner holds (fedtier/memory.py says why)
            release_free_memory()
            heap = python_heap_bytes()
            if heap is not None:
                log.info("round %s: Python heap %.1f MiB after the round (tracemalloc)",
                         request.round_id, heap / (1 << 20))
            self._one_round.release()

    def _run(self, request: pb.RoundRequest) -> pb.RoundResult:
        started = time.perf_counter()
        try:
            config = RoundConfig.from_json(request.config_json)
            quorum = CombinerQuorum.of_request(config, request.min_clients, request.clients_requested,
                                               request.wait_for_clients_s)
        except (RoundConfigError, ValueError) as exc:
            return self._failed(request, f"bad round config: {exc}")
        if request.kind not in (pb.TRAINING, pb.VALIDATION):
            return self._failed(request, "round kind must be TRAINING or VALIDATION")
        if not request.round_id:
            return self._failed(request, "round_id is required")
        if not self.cache.exists(request.model_id):
            return self._failed(request, f"model {request.model_id!r} has not been uploaded to {self.name}")
        timings: dict[str, float] = {}

        # 1. clients
        t = time.perf_counter()
        active = self.registry.wait_for_active(quorum.min_clients, quorum.wait_for_clients)
        timings["wait_clients"] = time.perf_counter() - t
        if active < quorum.min_clients:
            return self._failed(request, f"only {active} of {quorum.min_clients} required clients "
                                         f"active after {quorum.wait_for_clients:g}s", timings)
        names = self.registry.active_names()
        wanted = quorum.clients_requested or len(names)
        selected = choose_clients(names, wanted, config.sampling_seed, request.round_number, self.name, self.rng)

        # 2. tasks
        kind = request.kind
        current = ActiveRound(round_id=request.round_id, kind=kind, model_id=request.model_id,
                              policy=config.weight_policy())
        self._model_size = self.cache.path(request.model_id).stat().st_size  # bounds the updates
        if kind == pb.TRAINING:
            choice = config.strategy(COMBINER)
            current.aggregator = get_strategy(choice.name, get_helper(config.helper), COMBINER, **dict(choice.params))
            current.aggregator.start(self.cache.path(request.model_id), RoundContext(
                tier=COMBINER, round_id=request.round_id, round_number=request.round_number,
                session_id=request.session_id, base_model=request.model_id, work_dir=self._work_dir(request)))
        self._current = current
        task_type = pb.TRAIN if kind == pb.TRAINING else pb.VALIDATE
        task_config = config.task_json()  # only what the project needs (RoundConfig.task_json)
        t = time.perf_counter()
        for name in selected:
            task = pb.Task(task_id=uuid.uuid4().hex, type=task_type, session_id=request.session_id,
                           round_id=request.round_id, model_id=request.model_id, config_json=task_config,
                           round_number=request.round_number)
            current.expect(task.task_id, name)
            if not self.registry.send(name, task):
                current.fail_task(task.task_id, "went offline before the task was sent")
        log.info("round %s: %s tasks sent to %d clients: %s", request.round_id,
                 pb.TaskType.Name(task_type).lower(), len(selected), ", ".join(selected))
        all_answered = current.wait(config.round_timeout)
        current.close()
        timings["tasks"] = time.perf_counter() - t
        if current.stop_reason:
            return self._failed(request, current.stop_reason, timings, current)
        if not all_answered:
            log.warning("round %s: timeout after %gs", request.round_id, config.round_timeout)
        if kind == pb.TRAINING:
            capped = current.settle(self.cache)  # fold the updates whose weight waited for the round's cap
            self.metrics.capped.inc(len(capped))

        # 3. result
        result = pb.RoundResult(round_id=request.round_id, updates=current.updates,
                                validations=current.validations, failures=current.failures,
                                clients=current.states.snapshot())
        if kind == pb.TRAINING:
            if len(current.updates) < quorum.min_clients:
                return self._failed(request, f"only {len(current.updates)} of {quorum.min_clients} "
                                             f"required updates arrived", timings, current)
            t = time.perf_counter()
            model_id = self.cache.new_id()
            assert current.aggregator is not None
            result.num_examples = int(current.aggregator.finish(self.cache.path(model_id)))
            timings["aggregation"] = current.aggregation_seconds + time.perf_counter() - t
            result.model_id = model_id
            self.last_model_id = model_id
        result.success = True
        timings["total"] = time.perf_counter() - started
        result.timings.update(timings)
        log.info("round %s done in %.2fs: %d updates, %d validations, %d failures",
                 request.round_id, timings["total"], len(current.updates), len(current.validations),
                 len(current.failures))
        return result

    def _failed(self, request: pb.RoundRequest, error: str, timings: dict[str, float] | None = None,
                current: ActiveRound | None = None) -> pb.RoundResult:
        log.warning("round %s failed: %s", request.round_id, error)
        result = pb.RoundResult(round_id=request.round_id, success=False, error=error)
        if current is not None:
            result.failures.extend(current.failures)
            result.validations.extend(current.validations)
            result.clients.extend(current.states.snapshot())
        result.timings.update(timings or {})
        return result

    def _work_dir(self, request: pb.RoundRequest) -> Path:
        """Where the round's strategy may keep updates (beside the cache: a hard link, not a copy)."""
        return self.cache.root / ".rounds" / hashlib.sha256(request.round_id.encode("utf-8")).hexdigest()[:24]

    # ---- reports from clients
    def arrival_check(self, header: pb.TransferHeader) -> UpdateCheck | None:
        """Admit a client's upload, or refuse it (UploadRefused) before a byte is written.

        Only a client holding an open task of the running training round may upload, and
        only as much as an update can be: it has the global model's layout, so its size is
        the global model's plus FEDTIER_MAX_UPDATE_SLACK_BYTES for a different header. An
        admitted upload is checked as it arrives, so folding it reads the file once
        (fedtier/aggregators/update_check.py)."""
        current = self._current
        if current is None or current.aggregator is None:
            raise UploadRefused(grpc.StatusCode.FAILED_PRECONDITION,
                                f"no training round is running on {self.name}: uploads are refused")
        if not current.expects(header.client_name):
            raise UploadRefused(grpc.StatusCode.FAILED_PRECONDITION,
                                f"{header.client_name!r} holds no open training task in round {current.round_id}")
        bounds = limits.current()
        allowed = self._model_size + bounds.update_slack_bytes
        if header.size > allowed:
            raise UploadRefused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"the update declares {header.size} bytes, over {allowed}: the round's global model "
                                f"is {self._model_size} bytes and {bounds.describe('update_slack_bytes')} on top")
        return current.aggregator.arrival_check(header.size)

    def _report(self, submit, what: str, client: str, message: Message | None = None) -> pb.Ack:
        current = self._current
        counted = what == "update"  # the metrics count updates; validations and failures are not updates
        if current is None:
            if counted:
                self.metrics.reject("report", "no_round")
            return pb.Ack(ok=False, message="no round is running")
        bounds = limits.current()
        if message is not None and message.ByteSize() > bounds.report_bytes:
            log.warning("%s from %s refused: %d bytes", what, client, message.ByteSize())
            if counted:
                self.metrics.reject("report", "over_bound")
            return pb.Ack(ok=False, message=f"the {what} report is {message.ByteSize()} bytes, over "
                                            f"{bounds.describe('report_bytes')}")
        try:
            submit(current)
        except RejectedReport as exc:
            log.warning("%s from %s rejected: %s", what, client, exc)
            if counted:
                self.metrics.reject("report", exc.reason)
            return pb.Ack(ok=False, message=str(exc))
        if counted:
            self.metrics.accepted.inc()
        return pb.Ack(ok=True)

    def submit_update(self, update: pb.ModelUpdate) -> pb.Ack:
        ack = self._report(lambda r: r.submit_update(update, self.cache), "update", update.client_name, update)
        if self._current is None and update.model_id and self.cache.uploader(update.model_id) == update.client_name:
            self.cache.discard(update.model_id)
        return ack

    def submit_validation(self, report: pb.ValidationReport) -> pb.Ack:
        return self._report(lambda r: r.submit_validation(report), "validation", report.client_name, report)

    def submit_failure(self, failure: pb.TaskFailure) -> pb.Ack:
        return self._report(lambda r: r.submit_failure(failure), "failure", failure.client_name, failure)

    def progress(self, progress: pb.TaskProgress) -> pb.Ack:
        """A client moved on in its task. Raises ProgressRefused (its gRPC code says which
        rule) unless it is an open task of the running round, held by the sender, moving forward."""
        current = self._current
        if current is None:
            raise ProgressRefused(grpc.StatusCode.FAILED_PRECONDITION, f"no round is running on {self.name}")
        bounds = limits.current()
        if progress.ByteSize() > bounds.progress_bytes:
            raise ProgressRefused(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"the progress message is {progress.ByteSize()} bytes, over "
                                  f"{bounds.describe('progress_bytes')}")
        current.progress(progress)
        return pb.Ack(ok=True)

    def client_gone(self, client: str) -> None:
        """A client's task stream closed: its open tasks will not be answered."""
        current = self._current
        if current is not None:
            current.fail_client(client, "disconnected during the round")

    def stop(self, round_id: str, reason: str = "stopped by the reducer") -> pb.Ack:
        current = self._current
        if current is None or (round_id and current.round_id != round_id):
            return pb.Ack(ok=False, message="that round is not running")
        current.stop(reason)
        return pb.Ack(ok=True)


def choose_clients(names: list[str], wanted: int, seed: int, round_number: int, combiner: str,
                   rng: random.Random) -> list[str]:
    """``wanted`` of the active clients ``names`` (sorted), all when fewer are active. With a
    ``seed`` (RoundConfig.sampling_seed) the draw depends only on it, the round number, this
    combiner and the names, so a run repeats; without one it is ``rng``'s, a fresh draw."""
    draw = random.Random(f"{seed}:{round_number}:{combiner}") if seed else rng
    return draw.sample(names, min(wanted, len(names)))

"""Sessions of rounds across combiners: the top of the path of one round.

States, as in FEDn: ``setup`` (no seed model yet) -> ``idle`` -> ``instructing``
(finding clients, pushing the global model) -> ``monitoring`` (combiners training) ->
``idle``. One round, read top-down in ``_run_round``:
  1. wait until enough clients are active across the online combiners;
  2. push the global model to the combiners that have clients;
  3. each combiner runs a training round on its clients and returns a combiner model
     with the number of examples behind it;
  4. fetch those models and average them weighted by examples (two-tier FedAvg equals
     flat FedAvg over the same client updates);
  5. commit the result to the trail (parent: the model the round started from);
  6. if asked, validate the new model on the clients and record the metrics.
A round that fails at any step leaves the trail as it was.

A round ends ``success``, ``failed`` or ``stopped`` (the user aborted it, or stopped the
session while it still waited for its clients). A session ends ``succeeded`` (every
requested round succeeded), ``failed`` (it ended on its own with fewer: any round failed,
or an internal error), ``stopped`` (the user's stop cut it short) or ``interrupted`` (the
reducer restarted under it). One failed round fails the session: it was asked for N new
models and did not make them; ``rounds_succeeded`` / ``rounds_failed`` say by how much.
"""
from __future__ import annotations

import enum
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import grpc

from fedtier.aggregators import REDUCER as REDUCER_TIER, TIERS, RoundContext, Strategy, StrategyError, Update, get_strategy
from fedtier.aggregators.weight_policy import Contribution, WeightPolicy, combiner_weights
from fedtier.helpers import get_helper
from fedtier.ids import new_id
from fedtier.memory import release_free_memory
from fedtier.proto import fedtier_pb2 as pb
from fedtier.reducer.evaluation import EvaluationError, ReducerEvaluation
from fedtier.reducer.live import timeline
from fedtier.reducer.metrics import ReducerMetrics
from fedtier.reducer import participation
from fedtier.reducer.network import Network
from fedtier.reducer.records import RoundRecord, SessionRecord
from fedtier.reducer.strategy_state import StrategyStates
from fedtier.reducer.trail import ModelTrail
from fedtier.round_config import (COMBINER_WAIT_S, CombinerQuorum, RoundConfig, RoundConfigError, integer_setting,
                                  setting_names)
from fedtier.storage.model_store import ModelStoreError, describe_os_error, is_medium_failure
from fedtier.storage.state_store import StateStore, StateStoreError
from fedtier.transport.streams import Digests, Received

log = logging.getLogger(__name__)

from fedtier.storage.collections import REDUCER, ROUNDS, SESSIONS, VALIDATIONS  # noqa: F401 (re-exported)
LATEST = "latest"  # under the work dir: the last committed global model, the next round's base
MAX_ROUNDS = 10_000
SESSION_SETTINGS = {"rounds"}  # a /start body's keys besides the round settings (RoundConfig)

# /stop's modes. after_round (the default) lets the round in progress finish and commit,
# then ends the session; abort tells the combiners to drop the round at once.
STOP_AFTER_ROUND, STOP_ABORT = "after_round", "abort"
STOP_MODES = (STOP_AFTER_ROUND, STOP_ABORT)
SESSION_OUTCOMES = ("running", "succeeded", "failed", "stopped", "interrupted")
ROUND_STATUSES = ("running", "success", "failed", "stopped")


class ReducerState(str, enum.Enum):
    SETUP = "setup"
    IDLE = "idle"
    INSTRUCTING = "instructing"
    MONITORING = "monitoring"


class StateConflict(RuntimeError):
    """The request does not fit the reducer's current state (HTTP 409)."""

    def __init__(self, state: ReducerState, message: str) -> None:
        super().__init__(f"{message} (reducer state: {state.value})")
        self.state = state


class RoundFailed(RuntimeError):
    """A round could not produce a model; the message is recorded on the round."""


class RoundStopped(RuntimeError):
    """The user's stop ended the round: recorded as ``stopped``, which is not a failure."""


def session_outcome(session: Mapping[str, Any]) -> str:
    """How a session that ended on its own came out: every requested round a success, or not."""
    return "succeeded" if session.get("rounds_succeeded", 0) >= session.get("rounds_requested", 1) \
        and not session.get("rounds_failed") else "failed"


@dataclass(frozen=True)
class SessionRequest:
    rounds: int
    config: RoundConfig

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], defaults: Mapping[str, Any]) -> "SessionRequest":
        known = sorted(SESSION_SETTINGS | set(setting_names()))
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise RoundConfigError(unknown[0][:100], f"unknown setting (known: {', '.join(known)})")
        data = dict(data)
        rounds = integer_setting("rounds", data.pop("rounds", 1), 1, MAX_ROUNDS)
        return cls(rounds, RoundConfig.from_dict({**defaults, **data}))


def weighted_metrics(reports: list[tuple[Mapping[str, Any], int]],
                     policy: WeightPolicy | None = None) -> dict[str, float]:
    """Mean of each numeric metric over clients, weighted by their number of examples, each
    held to the round's weight cap: a client claiming 10**12 examples does not own the
    reported accuracy any more than the model."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    positive = [examples for _, examples in reports if examples > 0]
    cap = (policy or WeightPolicy()).cap(positive) if positive else None
    for metrics, examples in reports:
        weight = float(examples if cap is None else min(examples, cap)) if examples > 0 else 1.0
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
                    and key != "num_examples":
                sums[key] = sums.get(key, 0.0) + weight * value
                weights[key] = weights.get(key, 0.0) + weight
    return {key: sums[key] / weights[key] for key in sums}


class Control:
    def __init__(self, state: StateStore, trail: ModelTrail, network: Network, work_dir: Path,
                 helper: str = "numpy", metrics: ReducerMetrics | None = None,
                 evaluation: ReducerEvaluation | None = None) -> None:
        self.store = state
        self.evaluation = evaluation  # scores each new global model on the operator's held-out set
        self.metrics = metrics or ReducerMetrics()
        self.trail = trail
        self.strategies = StrategyStates(trail)  # the reducer tier's strategy and its state across rounds
        self.network = network
        self.work_dir = Path(work_dir)
        self.helper_name = helper
        self._lock = threading.Lock()
        self._phase: ReducerState | None = None  # set while a session runs
        self._session_thread: threading.Thread | None = None
        self._stop = threading.Event()  # no new round: set by either stop mode
        self._abort = threading.Event()  # and the round in progress is dropped: STOP_ABORT
        self._session_id: str | None = None
        # the live view (reducer/live.py): the round running now, as it is being filled in, and
        # the task states each combiner returned with its result, so it stays in view once done
        self.current_round: RoundRecord | None = None
        self._ended: dict[str, tuple[float, pb.RoundProgress]] = {}
        self._recover()

    # ---- state
    @property
    def state(self) -> ReducerState:
        if self._phase is not None:
            return self._phase
        return ReducerState.IDLE if self.trail.latest() is not None else ReducerState.SETUP

    def _set_phase(self, phase: ReducerState | None) -> None:
        self._phase = phase
        self.store.upsert(REDUCER, "state", {"phase": phase.value if phase else None, "updated_at": time.time()})

    def _recover(self) -> None:
        """After a crash or restart, no session is running: close what was left open."""
        for session in self.store.find(SESSIONS, where={"status": "running"}):
            self.store.update(SESSIONS, session["id"], {"status": "interrupted", "finished_at": time.time()})
            log.warning("session %s was interrupted by a reducer restart", session["id"])
        for stored in self.store.find(ROUNDS, where={"status": "running"}):
            self.store.update(ROUNDS, stored["id"], {"status": "failed", "error": "interrupted by a reducer restart",
                                                        "finished_at": time.time()})
        # records of older versions said "finished" whatever the rounds did: give them their outcome
        for session in self.store.find(SESSIONS, where={"status": "finished"}):
            self.store.update(SESSIONS, session["id"], {"status": session_outcome(session)})
        self.store.upsert(REDUCER, "state", {"phase": None, "updated_at": time.time()})

    # ---- seed
    def seed(self, path: Path) -> dict[str, Any]:
        """Validate a seed model with the configured helper and make it the trail's first model."""
        with self._lock:
            if self.state != ReducerState.SETUP:
                raise StateConflict(self.state, "the network is already seeded")
            get_helper(self.helper_name).validate_file(path)  # ModelFormatError: a clear 400
            return self.trail.commit(path, parent_id=None, kind="seed")

    # ---- sessions
    def start_session(self, request: SessionRequest, schedule_id: str | None = None) -> dict[str, Any]:
        """Start a session now; StateConflict if one runs or the network has no seed.
        ``schedule_id`` names the schedule that started it (reducer/schedules.py), if any."""
        self._check_strategies(request.config)
        check_task_data(request.config.task)
        with self._lock:
            if self.state != ReducerState.IDLE:
                verb = "seed the network first" if self.state == ReducerState.SETUP else "a session is running"
                raise StateConflict(self.state, f"cannot start: {verb}")
            session = SessionRecord(id=new_id(), rounds_requested=request.rounds, config=request.config.to_dict(),
                                    schedule_id=schedule_id)
            self.store.insert(SESSIONS, session.to_doc())
            self._stop.clear()
            self._abort.clear()
            self._session_id = session.id
            self._set_phase(ReducerState.INSTRUCTING)
            self._session_thread = threading.Thread(target=self._run_session, args=(session, request),
                                                    name=f"session-{session.id[:8]}", daemon=True)
            self._session_thread.start()
        log.info("session %s started: %d rounds", session.id, request.rounds)
        return session.to_doc()

    def _check_strategies(self, config: RoundConfig) -> None:
        """What a tier's strategy would refuse of the model the session starts from (FedPer's
        layers that match no tensor) is refused now, naming the setting, not on every round."""
        base = self.trail.latest()
        if base is None:
            return  # not seeded: start_session says so
        self.work_dir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="check-", dir=self.work_dir))
        try:
            path = self._fetch_from_trail(base, scratch)
            for tier in TIERS:
                choice = config.strategy(tier)
                strategy = get_strategy(choice.name, get_helper(config.helper), tier, **dict(choice.params))
                try:
                    strategy.start(path, RoundContext(tier=tier, work_dir=scratch))
                except StrategyError as exc:
                    raise RoundConfigError(f"aggregation.{tier}" + (f".{exc.param}" if exc.param else ""),
                                           str(exc)) from None
        except RoundConfigError:
            raise
        except Exception as exc:  # the model, not the settings: the round meets it and says so
            log.warning("could not check the strategies against model %s before the session: %s", base["id"], exc)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def stop_session(self, mode: str = STOP_AFTER_ROUND) -> dict[str, Any]:
        """End the running session: after the round in progress, or (abort) now.

        An abort after an after_round stop still aborts; an after_round stop after an
        abort changes nothing (the round is already being dropped)."""
        if mode not in STOP_MODES:
            raise ValueError(f"unknown stop mode {mode!r}")
        with self._lock:
            if self._phase is None:
                raise StateConflict(self.state, "no session is running")
            self._stop.set()
            if mode == STOP_ABORT:
                self._abort.set()
            mode = STOP_ABORT if self._abort.is_set() else STOP_AFTER_ROUND
            session_id = self._session_id
        if session_id is not None:
            self.store.update(SESSIONS, session_id, {"stop_requested": mode})
        if mode == STOP_ABORT:
            for combiner in self.network.online_combiners():
                try:
                    self.network.handle(combiner["name"]).stop()
                except grpc.RpcError:
                    pass
        log.info("session %s: stop requested (%s)", session_id, mode)
        return {"stopping": True, "mode": mode, "session_id": session_id}

    def wait(self, timeout: float | None = None) -> bool:
        thread = self._session_thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _run_session(self, session: SessionRecord, request: SessionRequest) -> None:
        status = "failed"  # unless the loop below ends normally
        try:
            for _ in range(request.rounds):
                if self._stop.is_set():
                    break
                done = self._run_round(session.id, request.config)
                counter = session.count(done["status"])
                session.round_ids.append(done["id"])
                self.store.update(SESSIONS, session.id, {counter: getattr(session, counter),
                                                         "round_ids": session.round_ids})
            # stopped only when the stop cut the session short: a stop that came while the
            # last round finished leaves the outcome to the rounds
            ran = session.rounds_succeeded + session.rounds_failed
            status = "stopped" if self._stop.is_set() and ran < request.rounds else session_outcome(session.to_doc())
        except Exception as exc:
            self.metrics.store_error(exc)
            log.exception("session %s failed", session.id)
        finally:
            self.metrics.session_finished(status)
            self.store.update(SESSIONS, session.id, {"status": status, "finished_at": time.time()})
            self._set_phase(None)
            log.info("session %s %s: %d rounds succeeded, %d failed", session.id, status,
                     session.rounds_succeeded, session.rounds_failed)

    def _next_seq(self) -> int:
        """The round's own number: distinct and increasing across this reducer's life. ``round``
        counts the models the trail built (a failed round builds none, so the next one shares
        its number); people and the API need to tell those rounds apart. Kept in the state
        store so a restart goes on counting; records from before it count as the rounds held."""
        held = self.store.get(REDUCER, "round_seq")
        seq = int(held["last"]) + 1 if held else self.store.count(ROUNDS) + 1
        self.store.upsert(REDUCER, "round_seq", {"last": seq})
        return seq

    def live_round(self) -> tuple[dict[str, Any] | None, dict[str, tuple[float, pb.RoundProgress]]]:
        """The round running now (None when none) and the task states each combiner ended it with."""
        current = self.current_round
        for _ in range(3):  # the round's thread may grow a list while it is copied
            try:
                return (current.to_doc() if current is not None else None), dict(self._ended)
            except RuntimeError:
                continue
        return None, dict(self._ended)

    # ---- one round
    def _run_round(self, session_id: str, config: RoundConfig) -> dict[str, Any]:
        """Run one round; its record as stored."""
        base = self.trail.latest()
        assert base is not None
        number = int(base.get("round", 0)) + 1
        round_doc = RoundRecord(id=new_id(), session_id=session_id, round=number, seq=self._next_seq(),
                                model_in=base["id"])
        self.store.insert(ROUNDS, round_doc.to_doc())
        self._ended = {}
        self.current_round = round_doc
        scratch = self.work_dir / "rounds" / round_doc.id
        scratch.mkdir(parents=True, exist_ok=True)
        timings: dict[str, float] = round_doc.timings
        taking_part: dict[str, dict[str, Any]] = {}  # client -> its part in this round (participation.py)
        log.info("round %d (#%d, %s) starting from model %s", number, round_doc.seq, round_doc.id, base["id"])
        try:
            self._set_phase(ReducerState.INSTRUCTING)
            combiners = self._timed(timings, "wait_clients", self._wait_for_clients, config)
            base_path = self._timed(timings, "transfer", self._fetch_from_trail, base, scratch)
            round_doc.pushed = self._timed(timings, "transfer", self._push, combiners, base, base_path)
            combiners = {name: combiners[name] for name in round_doc.pushed}
            if self._abort.is_set():  # before any combiner starts the round the user aborted
                raise RoundStopped("aborted by the user before training began")
            self._set_phase(ReducerState.MONITORING)
            results = self._timed(timings, "training", self._train_on_combiners, combiners, round_doc, config)
            chosen = {c["name"]: c["quorum"] for c in round_doc.combiners}  # set by _train_on_combiners
            round_doc.combiners = [{**self._combiner_summary(name, r), "quorum": chosen[name]}
                                      for name, r in results.items()]
            round_doc.participants = sorted(u.client_name for r in results.values() if r.success for u in r.updates)
            taking_part.update(participation.from_training(results))
            succeeded = {n: r for n, r in results.items() if r.success}
            updates = sum(len(r.updates) for r in succeeded.values())
            if not succeeded:
                raise RoundFailed("no combiner completed the round: " +
                                  "; ".join(f"{n}: {r.error}" for n, r in results.items()))
            if updates < config.clients_required:
                raise RoundFailed(f"only {updates} of {config.clients_required} required updates arrived")
            weights = self._weigh(succeeded, round_doc, config)
            for held in round_doc.capped:  # held to the cap over all combiners' clients
                if held.get("client") in taking_part:
                    taking_part[held["client"]]["capped"] = True
            strategy = self.strategies.strategy_for(config, session_id, base, get_helper(config.helper), scratch)
            context = RoundContext(tier=REDUCER_TIER, round_id=round_doc.id, round_number=number,
                                   session_id=session_id, base_model=base["id"], work_dir=scratch)
            strategy.start(base_path, context)  # first, so each combiner model is checked as it arrives
            fetched = self._timed(timings, "transfer", self._fetch_combiner_models, succeeded, scratch, strategy)
            out = scratch / "global"
            known = self._timed(timings, "aggregation", self._aggregate, strategy, context, fetched, weights, out)
            state = self.strategies.save(strategy, scratch)  # the server state this model continues with
            model = self.trail.commit(out, parent_id=base["id"], round_id=round_doc.id,
                                      session_id=session_id, round_number=number,
                                      sha256=known.sha256 or None, xxh3=known.xxh3 or None,
                                      take=True,  # round scratch: linked into the store, not copied
                                      extra={"strategy_state": state} if state else None)
            self.strategies.produced(model["id"], session_id, config, strategy)
            round_doc.model_out = model["id"]
            if config.validate:
                round_doc.metrics = self._timed(timings, "validation", self._validate, succeeded, model,
                                                out, round_doc, config, taking_part)
            if self.evaluation is not None:
                round_doc.reducer_metrics = self._timed(timings, "reducer_evaluation", self._evaluate_on_reducer,
                                                           out, round_doc, config)
            self._keep_latest(model["id"], out)
            round_doc.status = "success"
        except RoundStopped as exc:
            round_doc.ended("stopped", str(exc))
            log.info("round %d stopped: %s", number, exc)
        except RoundFailed as exc:
            if self._abort.is_set():  # the combiners dropped it because the user aborted
                round_doc.ended("stopped", f"aborted by the user ({exc})")
                log.info("round %d aborted by the user", number)
            else:
                round_doc.ended("failed", str(exc))
                log.warning("round %d failed: %s", number, exc)
        except StrategyError as exc:  # a state or setting the round's strategy cannot work with
            round_doc.ended("failed", str(exc))
            log.warning("round %d failed: %s", number, exc)
        except (ModelStoreError, StateStoreError) as exc:
            self.metrics.store_error(exc)
            store = "model store" if isinstance(exc, ModelStoreError) else "state store"
            round_doc.ended("failed", f"{store}: {exc}")
            log.error("round %d failed, trail unchanged: %s: %s", number, store, exc)
        except Exception as exc:
            if is_medium_failure(exc):  # the round's scratch files under FEDTIER_DATA_DIR/reducer
                round_doc.ended("failed", f"reducer data directory: {describe_os_error(exc)} "
                                                        f"({exc.filename or self.work_dir})")
                log.error("round %d failed, trail unchanged: %s", number, round_doc.error)
            else:
                round_doc.ended("failed", f"internal error: {exc}")
                log.exception("round %d failed", number)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            if round_doc.status != "success":
                self._keep_latest(None)  # whatever failed, the next round starts from the store's copy
            release_free_memory()  # the round's model-sized buffers: back to the system (fedtier/memory.py)
            round_doc.finished_at = time.time()
            timings["total"] = round_doc.finished_at - round_doc.started_at
            doc = round_doc.to_doc()
            self.metrics.round_finished(doc)
            self.store.update(ROUNDS, round_doc.id, {k: v for k, v in doc.items() if k != "id"})
            self.current_round = None
            self._record_participation(doc, taking_part)
            self._set_phase(ReducerState.INSTRUCTING)
        log.info("round %d %s in %.2fs %s", number, round_doc.status, timings["total"],
                 json.dumps(round_doc.metrics) if round_doc.metrics else "")
        return doc

    def _record_participation(self, round_doc: Mapping[str, Any], taking_part: Mapping[str, dict[str, Any]]) -> None:
        """Each client's record of this round; a store failure here is logged, never the round's."""
        try:
            participation.record(self.store, round_doc, taking_part)
        except StateStoreError as exc:
            self.metrics.store_error(exc)
            log.error("round %d: the clients' records were not written: %s", round_doc["round"], exc)

    def _evaluate_on_reducer(self, model: Path, round_doc: RoundRecord, config: RoundConfig) -> dict[str, float]:
        """The operator's held-out score of the committed model (reducer/evaluation.py). The
        model is in the trail already: a failed evaluation is recorded, not a failed round."""
        assert self.evaluation is not None
        try:
            return self.evaluation.run(model, int(round_doc.round), round_doc.session_id, config.task,
                                       timeout=config.round_timeout)
        except EvaluationError as exc:
            round_doc.reducer_metrics_error = str(exc)
            log.warning("round %d: the reducer's evaluation failed: %s", round_doc.round, exc)
            return {}

    @staticmethod
    def _timed(timings: dict[str, float], phase: str, func: Callable[..., Any], *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return func(*args)
        finally:
            timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - started

    def _wait_for_clients(self, config: RoundConfig) -> dict[str, int]:
        """Online combiners with active clients, once they hold clients_required in total."""
        deadline = time.monotonic() + config.wait_for_clients
        while True:
            # counted from the answers of this poll only (Network.refresh): a stored count may
            # belong to a combiner process that has died since
            found = {name: active for name, active in self.network.refresh().items() if active > 0}
            total = sum(found.values())
            if total >= config.clients_required:
                return found
            if self._stop.is_set():  # nothing started yet: both stop modes end it here
                raise RoundStopped("stopped by the user while waiting for clients")
            if time.monotonic() >= deadline:
                raise RoundFailed(f"only {total} of {config.clients_required} required clients active "
                                  f"after {config.wait_for_clients:g}s")
            time.sleep(0.5)

    def _fetch_from_trail(self, model: Mapping[str, Any], scratch: Path) -> Path:
        """The round's base model: the copy this reducer kept of the model it committed last,
        else a copy from the store, verified on the way (after a restart, or a new seed).

        The kept copy is not re-hashed here; it is pushed with the trail's checksum, so a copy
        damaged on disk is refused by the combiners, and a failed round drops it (_run_round)."""
        kept = self.work_dir / LATEST / model["id"]
        if kept.is_file() and kept.stat().st_size == model.get("size"):
            return kept
        return self.trail.fetch(model["id"], scratch / "base")

    def _keep_latest(self, model_id: str | None, path: Path | None = None) -> None:
        """Keep the model just committed for the next round, so a round does not begin by
        reading back from the store the model the last one wrote (a gigabyte model: seconds).
        With the local store it is the store's own read-only file under a second name (the
        commit took it by hard link): renaming or unlinking this name leaves the trail whole.
        With no model, forget the kept one: the next round reads from the store."""
        folder = self.work_dir / LATEST
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink(missing_ok=True)
        if model_id is not None and path is not None:
            os.replace(path, folder / model_id)

    def _push(self, combiners: Mapping[str, Any], model: Mapping[str, Any], path: Path) -> dict[str, str]:
        """Get a trail model to the combiners; returns how it reached each: "adopted" when the
        combiner held the same bytes (with one combiner, the last round's global model is its
        own aggregate), else "uploaded" (with the checksum the trail recorded, when it did:
        a kept copy damaged on disk is then refused by the combiners)."""
        def push(name: str) -> str:
            handle = self.network.handle(name)
            if model.get("sha256") and handle.adopt_model(path, model["id"], model["sha256"], timeout=60):
                return "adopted"
            reply = handle.upload_model(path, model["id"], timeout=600, sha256=model.get("sha256"),
                                        xxh3=model.get("xxh3"))
            self.metrics.moved("pushed", reply.size)  # 0 when the combiner already held it
            return "uploaded"

        reached = {}
        with ThreadPoolExecutor(max_workers=max(1, len(combiners))) as pool:
            for name, future in [(n, pool.submit(push, n)) for n in combiners]:
                try:
                    reached[name] = future.result()
                except grpc.RpcError as exc:
                    log.warning("could not push model to combiner %s: %s", name, exc.code().name)
        if not reached:
            raise RoundFailed("the global model could not be pushed to any combiner")
        return reached

    def _train_on_combiners(self, combiners: dict[str, int], round_doc: RoundRecord,
                            config: RoundConfig) -> dict[str, pb.RoundResult]:
        # the quorum is global: each combiner contributes whatever it gets (CombinerQuorum);
        # the reducer checks the total. clients_requested is shared out by the clients each holds.
        quorums = CombinerQuorum.share_out(config, combiners)
        round_doc.combiners = [{"name": name, "quorum": q.to_record()} for name, q in quorums.items()]
        return self._on_combiners(combiners, pb.TRAINING, round_doc, round_doc.id,
                                  round_doc.model_in, quorums, config)

    def _on_combiners(self, combiners: Mapping[str, Any], kind: int, round_doc: RoundRecord, round_id: str,
                      model_id: str, quorums: Mapping[str, CombinerQuorum],
                      config: RoundConfig) -> dict[str, pb.RoundResult]:
        deadline = config.wait_for_clients + config.round_timeout + 60
        config_json = config.to_json()

        def run(name: str) -> pb.RoundResult:
            quorum = quorums[name]
            request = pb.RoundRequest(session_id=round_doc.session_id, round_id=round_id, kind=kind,
                                      model_id=model_id, config_json=config_json,
                                      round_number=int(round_doc.round), min_clients=quorum.min_clients,
                                      clients_requested=quorum.clients_requested,
                                      wait_for_clients_s=quorum.wait_for_clients)
            try:
                result = self.network.handle(name).start_round(request, timeout=deadline)
            except grpc.RpcError as exc:
                return pb.RoundResult(round_id=round_id, success=False,
                                      error=f"combiner unreachable: {exc.code().name}")
            self._ended[name] = (time.time(), pb.RoundProgress(round_id=round_id, kind=kind, clients=result.clients,
                                                               elapsed_s=result.timings.get("tasks", 0.0)))
            return result

        with ThreadPoolExecutor(max_workers=max(1, len(combiners))) as pool:
            futures = {name: pool.submit(run, name) for name in combiners}
            return {name: future.result() for name, future in futures.items()}

    @staticmethod
    def _combiner_summary(name: str, result: pb.RoundResult) -> dict[str, Any]:
        return {"name": name, "success": result.success, "error": result.error,
                "num_examples": result.num_examples, "failures": list(result.failures),
                "timings": dict(result.timings),
                "updates": [{"client": u.client_name, "num_examples": u.num_examples, "weight_used": u.weight_used,
                             "capped": u.capped, "timings": dict(u.timings)} for u in result.updates],
                "clients": timeline(result.clients)}  # each task's phases on the combiner's clock

    def _fetch_combiner_models(self, results: Mapping[str, pb.RoundResult], scratch: Path,
                               aggregator: Strategy) -> dict[str, Received]:
        """Each combiner's model in a scratch file, with its checksum verified and the
        aggregator's check run as it arrived (``Received.inspector``). A single combiner's
        model becomes the global one as it is (_aggregate), so it is received durably: its
        writes reach the disk during the fetch, not all in the commit's fsync."""
        durable = len(results) == 1

        def fetch(name: str) -> Received:
            received = self.network.handle(name).download_model(
                results[name].model_id, scratch / f"combiner-{name}", timeout=600, durable=durable,
                inspect=lambda header: aggregator.arrival_check(header.size))
            self.metrics.moved("fetched", received.size)
            return received

        with ThreadPoolExecutor(max_workers=max(1, len(results))) as pool:
            futures = {name: pool.submit(fetch, name) for name in results}
            try:
                return {name: future.result() for name, future in futures.items()}
            except grpc.RpcError as exc:
                raise RoundFailed(f"could not fetch a combiner model: {exc.code().name}") from exc

    def _weigh(self, results: Mapping[str, pb.RoundResult], round_doc: RoundRecord,
               config: RoundConfig) -> dict[str, int]:
        """The weight of each combiner's model: what it claims, held to what its clients
        delivered under the round's weight cap over all clients (weight_policy.py); every
        client and combiner cut down is named in the log and the round record."""
        weighed = combiner_weights(config.weight_policy(), {
            name: (int(r.num_examples), [Contribution(u.client_name, int(u.num_examples), int(u.weight_used))
                                         for u in r.updates])
            for name, r in results.items()})
        round_doc.capped = weighed.capped_clients
        round_doc.capped_combiners = weighed.capped_combiners
        for c in weighed.capped_clients:
            log.warning("round %d: client %s (combiner %s) reported %d examples; counted as %d (weight cap %s)",
                        round_doc.round, c["client"], c["combiner"], c["reported"], c["used"], weighed.cap)
        for c in weighed.capped_combiners:
            log.warning("round %d: combiner %s claimed %d examples; counted as %d, what its clients delivered "
                        "under the weight cap", round_doc.round, c["combiner"], c["reported"], c["used"])
        empty = sorted(name for name, weight in weighed.weights.items() if weight <= 0)
        if empty:
            raise RoundFailed(f"combiners with no examples behind their model: {', '.join(empty)}")
        return weighed.weights

    def _aggregate(self, aggregator: Strategy, context: RoundContext, fetched: Mapping[str, Received],
                   weights: Mapping[str, int], out: Path) -> Digests:
        """Write the round's global model to ``out``; return its hashes where already known, so
        the commit need not read a gigabyte to hash it ("" where not: the store hashes it)."""
        if len(fetched) == 1:  # one combiner: FedAvg's result is its model, checked (no re-averaging)
            ((name, one),) = fetched.items()
            if aggregator.aggregate_one(self._update(name, one, weights, context), out) is not None:
                # moved as it is: the combiner's sha256 of the bytes it sent, which the
                # checksum verified on arrival are the bytes now at ``out``
                return Digests(sha256=one.sha256, xxh3=one.xxh3)
        for name, model in fetched.items():
            aggregator.add(self._update(name, model, weights, context))
            model.path.unlink()  # a strategy that needs it later kept its own link
        aggregator.finish(out)
        return Digests(sha256="", xxh3="")

    @staticmethod
    def _update(name: str, model: Received, weights: Mapping[str, int], context: RoundContext) -> Update:
        return Update(model.path, float(weights[name]), sender=name, base_model=context.base_model,
                      round_id=context.round_id, received_at=time.time(), checked=model.inspector)

    def _validate(self, combiners: Mapping[str, Any], model: Mapping[str, Any], path: Path,
                  round_doc: RoundRecord, config: RoundConfig,
                  taking_part: dict[str, dict[str, Any]] | None = None) -> dict[str, float]:
        """Validate the new global model on every client; each client's metrics also go into its
        entry in ``taking_part`` (its history: local train metrics against the global model's)."""
        model_id = model["id"]
        reached = self._push({n: 0 for n in combiners}, model, path)
        # every client of the combiners validates (clients_requested 0), each combiner needing one
        quorums = {name: CombinerQuorum(min_clients=1, clients_requested=0,
                                        wait_for_clients=min(config.wait_for_clients, COMBINER_WAIT_S))
                   for name in reached}
        round_doc.validation_quorums = {name: q.to_record() for name, q in quorums.items()}
        # a round id of its own on the combiners, so nothing aimed at the training round
        # (a late stop, a late report) can touch the validation round
        results = self._on_combiners(reached, pb.VALIDATION, round_doc, round_doc.id + ".validate",
                                     model_id, quorums, config)
        reports: list[tuple[dict[str, Any], int]] = []
        for name, result in results.items():
            for v in result.validations:
                metrics = json.loads(v.metrics_json or "{}")
                reports.append((metrics, v.num_examples))
                if taking_part is not None:
                    participation.add_validation(taking_part, name, v, metrics)
                self.store.insert(VALIDATIONS, {
                    "id": new_id(), "round_id": round_doc.id, "round": round_doc.round,
                    "model_id": model_id, "client": v.client_name, "combiner": name,
                    "metrics": metrics, "num_examples": v.num_examples, "created_at": time.time()})
            if not result.success:
                log.warning("validation on combiner %s failed: %s", name, result.error)
        return weighted_metrics(reports, config.weight_policy())


def check_task_data(task: Mapping[str, Any]) -> None:
    """The data settings every client would check in its first task (``partition``, the lab's
    ``heterogeneity``: datatools), checked at ``/start`` instead, naming the field: a mistake
    there would otherwise fail every client in every round."""
    from fedtier.datatools.heterogeneity import DataRules, DataRulesError
    from fedtier.datatools.partition import resolve_config

    if "partition" in task:
        try:
            resolve_config(task["partition"])
        except ValueError as exc:
            raise RoundConfigError("task.partition", str(exc)) from None
    if "heterogeneity" in task:
        try:
            DataRules.from_config(task["heterogeneity"], where="task.heterogeneity")
        except DataRulesError as exc:
            raise RoundConfigError(exc.field, str(exc).split(": ", 1)[-1]) from None

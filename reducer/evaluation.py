"""Evaluation by the reducer: each new global model scored once on a held-out set.

Clients validate on their own data; a held-out set the operator owns needs scoring only
once per model, not on every client. The operator installs a project folder on the
reducer's machine (``FEDTIER_REDUCER_EVAL_PROJECT``) and names the data
(``FEDTIER_REDUCER_EVAL_DATA``); the uploaded compute package is never run here, so the
reducer runs no code a participant could change.

The project's ``validate`` entry point runs in a child process of the reducer, a worker
of ``fedtier.client.pool.WorkerPool``: its framework import, memory and crashes stay out
of the reducer, and it is killed (and replaced) at the round's ``round_timeout``. The
worker lives from the first evaluation on, so each round pays for scoring the model, not
for starting an interpreter, importing the framework and reading the data again (which
took longer than the scoring). It gets the same ``TaskContext`` a client does, with
``client_name`` "reducer" (``TaskContext.on_reducer``) and the data as ``data_path``. Its
metrics are bounded like a client's report and only finite numbers are kept.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Mapping

from fedtier import limits
from fedtier.client.context import REDUCER_CLIENT_NAME, TaskContext
from fedtier.client.pool import WorkerPool
from fedtier.client.project import Project, ProjectError

CLIENT_NAME = REDUCER_CLIENT_NAME
#: CPU threads of the evaluation's worker: it scores while the round's clients wait
THREADS = max(1, min(4, os.cpu_count() or 1))


class EvaluationError(RuntimeError):
    """The reducer's evaluation did not give metrics; the message says why (recorded on the round)."""


class ReducerEvaluation:
    def __init__(self, project: str | Path, data: str) -> None:
        self.project = Project.load(project).root  # a malformed project stops the reducer at start-up
        self.data = str(Path(data).resolve())
        self._pool: WorkerPool | None = None
        self._lock = threading.Lock()  # one evaluation at a time, in the one worker

    def run(self, model: Path, round_number: int, session_id: str, task: Mapping[str, Any],
            timeout: float) -> dict[str, float]:
        with self._lock, tempfile.TemporaryDirectory(prefix="fedtier-eval-") as scratch:
            ctx = TaskContext(client_name=CLIENT_NAME, data_path=self.data, round_number=round_number,
                              session_id=session_id, config=dict(task), work_dir=Path(scratch))
            try:
                if self._pool is None:
                    self._pool = WorkerPool(self.project, workers=1, threads=THREADS)
                metrics = self._pool.run("validate", model.resolve(), Path(scratch) / "metrics.json", ctx,
                                         timeout=timeout)
            except ProjectError as exc:
                raise EvaluationError(str(exc)) from None
            except Exception as exc:  # the project's own error, sent back from the worker
                raise EvaluationError(f"validate failed: {type(exc).__name__}: {str(exc)[:1000]}") from None
        if not isinstance(metrics, dict):
            raise EvaluationError("validate must return a mapping of metrics")
        bound = limits.current().report_bytes
        try:
            size = len(json.dumps(metrics, default=str).encode("utf-8"))
        except (TypeError, ValueError) as exc:
            raise EvaluationError(f"metrics cannot be written as JSON: {exc}") from None
        if size > bound:
            raise EvaluationError(f"metrics are {size} bytes, over {limits.current().describe('report_bytes')}")
        return {str(k): float(v) for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}

    def close(self) -> None:
        """Stop the evaluation's worker (it also exits by itself if the reducer dies)."""
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

"""Evaluation by the reducer: each new global model scored once on a held-out set.

Clients validate on their own data; a held-out set the operator owns needs scoring only
once per model, not on every client. The operator installs a project folder on the
reducer's machine (``FEDTIER_REDUCER_EVAL_PROJECT``) and names the data
(``FEDTIER_REDUCER_EVAL_DATA``); the uploaded compute package is never run here, so the
reducer runs no code a participant could change.

The project's ``validate`` entry point runs in a child process (``python -m
fedtier.reducer.evaluation``): its framework import, memory and crashes stay out of the
reducer, and it is killed at the round's ``round_timeout``. It gets the same
``TaskContext`` a client does, with ``client_name`` "reducer" and the data as
``data_path``. Its metrics are read back as bounded strict JSON and only finite numbers
are kept, as for the clients' reports.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping

from fedtier import limits, strict_json
from fedtier.client.context import TaskContext
from fedtier.client.project import Project

CLIENT_NAME = "reducer"


class EvaluationError(RuntimeError):
    """The reducer's evaluation did not give metrics; the message says why (recorded on the round)."""


class ReducerEvaluation:
    def __init__(self, project: str | Path, data: str) -> None:
        self.project = Project.load(project).root  # a malformed project stops the reducer at start-up
        self.data = str(Path(data).resolve())

    def run(self, model: Path, round_number: int, session_id: str, task: Mapping[str, Any],
            timeout: float) -> dict[str, float]:
        with tempfile.TemporaryDirectory(prefix="fedtier-eval-") as scratch:
            out = Path(scratch) / "metrics.json"
            context = {"round_number": round_number, "session_id": session_id, "config": dict(task)}
            argv = [sys.executable, "-m", "fedtier.reducer.evaluation", str(self.project), str(model.resolve()),
                    self.data, str(out), json.dumps(context)]
            try:
                done = subprocess.run(argv, cwd=scratch, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise EvaluationError(f"did not finish within the round_timeout ({timeout:g}s)") from None
            if done.returncode != 0:
                tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
                raise EvaluationError(f"validate exited with code {done.returncode}: {tail[-1000:]}")
            bound = limits.current().report_bytes
            if not out.is_file() or out.stat().st_size > bound:
                raise EvaluationError(f"no metrics, or metrics over {limits.current().describe('report_bytes')}")
            try:
                metrics = strict_json.loads(out.read_text(encoding="utf-8"))
            except strict_json.JSONInputError as exc:
                raise EvaluationError(f"metrics are not valid JSON: {exc.message}") from None
        if not isinstance(metrics, dict):
            raise EvaluationError("validate must return a JSON object of metrics")
        return {str(k): float(v) for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def main(argv: list[str]) -> None:
    """The child process: run the project's validate on one model, write its metrics."""
    project_dir, model, data, out, context_json = argv
    context = json.loads(context_json)
    project = Project.load(project_dir)
    ctx = TaskContext(client_name=CLIENT_NAME, data_path=data, round_number=int(context["round_number"]),
                      session_id=str(context["session_id"]), config=context["config"], work_dir=Path(out).parent)
    metrics = project.validate(Path(model), Path(out).with_suffix(".out.json"), ctx)
    Path(out).write_text(json.dumps(metrics), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])

"""A project's compute package: ``fedn.yaml`` naming the train and validate entry points.

Two kinds of entry point, chosen per entry in ``fedn.yaml``:
  ``command: python train.py`` runs a subprocess, FEDn style: train gets
      ``IN_MODEL OUT_MODEL`` and writes OUT_MODEL plus ``OUT_MODEL-metadata`` (JSON with
      ``num_examples``); validate gets ``IN_MODEL OUT_JSON`` and writes metrics JSON.
      The TaskContext travels in environment variables.
  ``python: module:function`` calls a function in this process (no interpreter start
      per task): ``train(in_path, out_path, ctx) -> metadata`` and
      ``validate(in_path, ctx) -> metrics``.
A leading ``python``/``python3`` in a command is replaced by this interpreter, so the
client's virtualenv is used even when it is not activated.

An optional top-level ``labels: module:function`` names
``train_labels(data_path, task_config) -> 1-D array``: the labels of the pool the
clients partition. Clients never call it; ``fedtier sandbox`` does, to show (and
save) every client's label histogram before a run.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import yaml

from fedtier.client.context import TaskContext

log = logging.getLogger(__name__)

PROJECT_FILES = ("fedn.yaml", "fedtier.yaml")
ENTRY_POINTS = ("train", "validate")


class ProjectError(ValueError):
    """The project is malformed or its code failed; the message says which and why."""


@dataclass(frozen=True)
class EntryPoint:
    name: str
    command: str | None = None
    python: str | None = None


class Project:
    def __init__(self, root: Path, helper: str, entry_points: dict[str, EntryPoint],
                 task_timeout: float = 3600.0, labels: str | None = None) -> None:
        self.root = root
        self.helper = helper
        self.entry_points = entry_points
        self.task_timeout = task_timeout
        #: ``module:function`` of the optional ``labels`` entry, or None.
        self.labels = labels
        self._functions: dict[str, Callable[..., Any]] = {}

    @classmethod
    def load(cls, root: str | os.PathLike) -> "Project":
        root = Path(root).resolve()
        spec_path = next((root / f for f in PROJECT_FILES if (root / f).is_file()), None)
        if spec_path is None:
            raise ProjectError(f"{root} has no {' or '.join(PROJECT_FILES)}")
        try:
            spec = yaml.safe_load(spec_path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ProjectError(f"{spec_path}: invalid YAML: {exc}") from None
        if not isinstance(spec, dict) or not isinstance(spec.get("entry_points"), dict):
            raise ProjectError(f"{spec_path}: needs an 'entry_points' mapping with train and validate")
        entries: dict[str, EntryPoint] = {}
        for name in ENTRY_POINTS:
            raw = spec["entry_points"].get(name)
            if not isinstance(raw, dict) or len({"command", "python"} & set(raw)) != 1:
                raise ProjectError(f"{spec_path}: entry_points.{name} needs exactly one of 'command' or 'python'")
            entry = EntryPoint(name, command=raw.get("command"), python=raw.get("python"))
            if entry.python is not None and (not isinstance(entry.python, str) or ":" not in entry.python):
                raise ProjectError(f"{spec_path}: entry_points.{name}.python must be 'module:function'")
            if entry.command is not None and (not isinstance(entry.command, str) or not entry.command.strip()):
                raise ProjectError(f"{spec_path}: entry_points.{name}.command must be a non-empty string")
            entries[name] = entry
        helper = spec.get("helper", "numpy")
        if not isinstance(helper, str):
            raise ProjectError(f"{spec_path}: helper must be a string")
        timeout = float(spec.get("task_timeout", 3600))
        labels = spec.get("labels")
        if labels is not None and (not isinstance(labels, str) or ":" not in labels):
            raise ProjectError(f"{spec_path}: labels must be 'module:function', got {labels!r}")
        return cls(root, helper, entries, timeout, labels=labels)

    def warm_up(self) -> None:
        """Import in-process entry points now, so the first round is not charged for
        importing the project's framework (seconds for torch, more with many clients)."""
        for entry in self.entry_points.values():
            if entry.python:
                self._function(entry)

    # ---- entry points
    def train(self, in_model: Path, out_model: Path, ctx: TaskContext) -> dict[str, Any]:
        entry = self.entry_points["train"]
        if entry.python:
            metadata = self._function(entry)(str(in_model), str(out_model), ctx)
        else:
            self._run(entry, [in_model, out_model], ctx)
            meta_path = Path(f"{out_model}-metadata")
            metadata = self._read_json(meta_path, "train metadata")
            meta_path.unlink(missing_ok=True)
        if not isinstance(metadata, dict) or not isinstance(metadata.get("num_examples"), int) \
                or isinstance(metadata.get("num_examples"), bool) or metadata["num_examples"] <= 0:
            raise ProjectError(f"train must return metadata with a positive integer num_examples, got {metadata!r}")
        if not out_model.is_file():
            raise ProjectError(f"train did not write the output model {out_model}")
        return metadata

    def validate(self, in_model: Path, out_json: Path, ctx: TaskContext) -> dict[str, Any]:
        entry = self.entry_points["validate"]
        if entry.python:
            metrics = self._function(entry)(str(in_model), ctx)
        else:
            self._run(entry, [in_model, out_json], ctx)
            metrics = self._read_json(out_json, "validation metrics")
        if not isinstance(metrics, dict):
            raise ProjectError(f"validate must return a dict of metrics, got {type(metrics).__name__}")
        return metrics

    def train_labels(self, data_path: str | None, config: Mapping[str, Any]) -> np.ndarray:
        """Call the project's ``labels`` function: the labels of the pool clients partition.

        Raises ProjectError if the project declares no ``labels`` entry, or if the
        function fails or returns anything but a non-empty 1-D array.
        """
        if self.labels is None:
            raise ProjectError(f"{self.root.name} declares no 'labels: module:function' in its fedn.yaml")
        function = self._function(EntryPoint("labels", python=self.labels))
        try:
            labels = np.asarray(function(data_path, config))
        except Exception as exc:  # the project's code: report it with the entry that failed
            raise ProjectError(f"labels ({self.labels}) failed: {type(exc).__name__}: {exc}") from exc
        if labels.ndim != 1 or labels.size == 0:
            raise ProjectError(f"labels ({self.labels}) must return a non-empty 1-D array, got shape {labels.shape}")
        return labels

    def _function(self, entry: EntryPoint) -> Callable[..., Any]:
        if entry.name not in self._functions:
            module_name, _, func_name = entry.python.partition(":")  # type: ignore[union-attr]
            if str(self.root) not in sys.path:
                sys.path.insert(0, str(self.root))  # so the project's modules import each other
            try:
                module = importlib.import_module(module_name)
                self._functions[entry.name] = getattr(module, func_name)
            except Exception as exc:  # ImportError, SyntaxError, or whatever the module raises
                raise ProjectError(f"entry point {entry.name} ({entry.python}) cannot be loaded: "
                                   f"{exc.__class__.__name__}: {exc}") from exc
        return self._functions[entry.name]

    def _run(self, entry: EntryPoint, args: list[Path], ctx: TaskContext) -> None:
        argv = shlex.split(entry.command)  # type: ignore[arg-type]
        if argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        argv += [str(a) for a in args]
        env = {**os.environ, **ctx.to_env()}
        try:
            done = subprocess.run(argv, cwd=self.root, env=env, capture_output=True, text=True,
                                  timeout=self.task_timeout)
        except subprocess.TimeoutExpired:
            raise ProjectError(f"{entry.name} did not finish within {self.task_timeout:g}s") from None
        except OSError as exc:
            raise ProjectError(f"{entry.name} could not start {argv[0]!r}: {exc}") from None
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
            raise ProjectError(f"{entry.name} exited with code {done.returncode}:\n{tail}")

    @staticmethod
    def _read_json(path: Path, what: str) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ProjectError(f"{what} file {path} was not written") from None
        except json.JSONDecodeError as exc:
            raise ProjectError(f"{what} file {path} is not valid JSON: {exc}") from None

"""fedn.yaml parsing and entry point failures give clear errors, never tracebacks."""
from __future__ import annotations

from pathlib import Path

import pytest

from fedtier.client.context import TaskContext
from fedtier.client.project import Project, ProjectError


def write_project(root: Path, yaml: str, files: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "fedn.yaml").write_text(yaml)
    for name, text in (files or {}).items():
        (root / name).write_text(text)
    return root


GOOD = "entry_points:\n  train:\n    python: mod_{n}:train\n  validate:\n    python: mod_{n}:validate\n"


@pytest.mark.parametrize("yaml, message", [
    ("", "needs an 'entry_points' mapping"),
    ("entry_points: [1]", "needs an 'entry_points' mapping"),
    ("entry_points:\n  train:\n    command: x\n", "entry_points.validate needs exactly one"),
    ("entry_points:\n  train:\n    command: x\n    python: a:b\n  validate:\n    command: y\n", "exactly one"),
    ("entry_points:\n  train:\n    python: nocolon\n  validate:\n    command: y\n", "'module:function'"),
    ("entry_points: {train: {command: x}, validate: {command: y}}\nhelper: [1]", "helper must be a string"),
    ("entry_points: [unclosed", "invalid YAML"),
])
def test_malformed_fedn_yaml(tmp_path: Path, yaml: str, message: str) -> None:
    with pytest.raises(ProjectError, match=message.replace("(", r"\(")):
        Project.load(write_project(tmp_path / "p", yaml))


def test_missing_fedn_yaml(tmp_path: Path) -> None:
    with pytest.raises(ProjectError, match="has no fedn.yaml"):
        Project.load(tmp_path)


def test_broken_module_is_a_project_error_at_warm_up(tmp_path: Path) -> None:
    root = write_project(tmp_path / "p", GOOD.format(n="broken"), {"mod_broken.py": "def train(:\n"})
    with pytest.raises(ProjectError, match="SyntaxError"):
        Project.load(root).warm_up()


def test_train_must_report_positive_examples_and_write_model(tmp_path: Path) -> None:
    code = ("def train(i, o, ctx):\n    return {'num_examples': ctx.config.get('n')}\n"
            "def validate(i, ctx):\n    return 5\n")
    project = Project.load(write_project(tmp_path / "p", GOOD.format(n="meta"), {"mod_meta.py": code}))
    for n in (None, 0, -3, True, "7"):
        with pytest.raises(ProjectError, match="positive integer num_examples"):
            project.train(tmp_path / "in", tmp_path / "out", TaskContext("c", config={"n": n}))
    with pytest.raises(ProjectError, match="did not write the output model"):
        project.train(tmp_path / "in", tmp_path / "out", TaskContext("c", config={"n": 3}))
    with pytest.raises(ProjectError, match="dict of metrics"):
        project.validate(tmp_path / "in", tmp_path / "out.json", TaskContext("c"))


def test_failing_command_reports_exit_code_and_stderr(tmp_path: Path) -> None:
    yaml = "entry_points:\n  train:\n    command: python fail.py\n  validate:\n    command: python fail.py\n"
    project = Project.load(write_project(tmp_path / "p", yaml, {
        "fail.py": "import sys\nprint('data directory /x is missing', file=sys.stderr)\nsys.exit(3)\n"}))
    with pytest.raises(ProjectError, match=r"(?s)exited with code 3.*data directory /x is missing"):
        project.train(tmp_path / "in", tmp_path / "out", TaskContext("c"))

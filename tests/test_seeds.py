"""seeds/: the committed seed model of every test project is intact, loadable and reproducible.

Regenerating runs each project's own ``seed.py`` as ``__main__`` in a fresh
interpreter, as ``fedtier sandbox`` and seeds/README.md do (in-process, Keras' auto-naming and the
projects' generic module names would depend on what other tests imported first).
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedtier.client.project import Project
from fedtier.helpers import get_helper
from fedtier.helpers.format import read_header

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "seeds"
PROJECTS = sorted(p.parent.name for p in (ROOT / "test_projects").glob("*/seed.py"))

#: In one fresh interpreter (one framework import): regenerate the seed with the
#: project's seed.py, then load the committed seed through the project's own model
#: code, so the architecture must accept it (strict state_dict for torch,
#: set_weights shapes for Keras). Prints the loaded shapes as JSON.
REGENERATE_AND_LOAD = """
import json, runpy, sys
fresh, committed, variants = sys.argv[1], sys.argv[2], sys.argv[3]
sys.argv = ["seed.py", fresh]
runpy.run_path("seed.py", run_name="__main__")
for name, seed in (("seed-7", "7"), ("seed-7-again", "7"), ("seed-8", "8")):  # seed.py --seed N
    sys.argv = ["seed.py", variants + "/" + name, "--seed", seed]
    runpy.run_path("seed.py", run_name="__main__")
import model
m = model.load_model(committed)
# Keras first: on the torch backend a Keras model is also a torch Module, whose
# state_dict order differs from the get_weights order the keras helper uses.
arrays = m.get_weights() if hasattr(m, "get_weights") else m.state_dict().values()
print(json.dumps([list(v.shape) for v in arrays]))
"""


def _checksums() -> dict[str, str]:
    sums = {}
    for line in (SEEDS / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name.lstrip("*")] = digest
    return sums


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_test_project_has_a_committed_seed() -> None:
    assert {"digits", "mnist-pytorch", "mnist-keras"} <= set(PROJECTS)
    assert set(_checksums()) == {f"{p}.safetensors" for p in PROJECTS}, \
        "SHA256SUMS must list exactly one seed per test project with a seed.py"


@pytest.mark.parametrize("project", PROJECTS)
def test_seed_matches_checksum_and_loads_with_its_helper(project: str) -> None:
    path = SEEDS / f"{project}.safetensors"
    assert _sha256(path) == _checksums()[path.name], f"{path} does not match SHA256SUMS"
    helper = get_helper(Project.load(ROOT / "test_projects" / project).helper)
    header = helper.validate_file(path)  # structure, dtypes, finite values
    weights = helper.load(path)
    arrays = list(weights.values()) if isinstance(weights, dict) else list(weights)
    assert len(arrays) == len(header.tensors) > 0
    assert all(np.isfinite(np.asarray(a)).all() for a in arrays)
    # A seed is a fresh initialisation: not all zeros, biases aside.
    assert max(float(np.abs(np.asarray(a)).max()) for a in arrays) > 0


_regenerated: dict[str, tuple[subprocess.CompletedProcess, Path]] = {}


def _regenerate(project: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """Run REGENERATE_AND_LOAD once per project (one framework import serves both tests)."""
    if project not in _regenerated:
        folder = tmp_path_factory.mktemp(f"seed-{project}")
        done = subprocess.run([sys.executable, "-c", REGENERATE_AND_LOAD, str(folder / "seed.safetensors"),
                               str(SEEDS / f"{project}.safetensors"), str(folder)],
                              cwd=ROOT / "test_projects" / project, capture_output=True, text=True, timeout=300)
        _regenerated[project] = (done, folder)
    return _regenerated[project]


@pytest.mark.parametrize("project", PROJECTS)
def test_seed_script_takes_a_seed_the_same_seed_the_same_bytes(project: str,
                                                              tmp_path_factory: pytest.TempPathFactory) -> None:
    done, folder = _regenerate(project, tmp_path_factory)
    assert done.returncode == 0, done.stderr[-2000:]
    seven, again, eight = ((folder / name).read_bytes() for name in ("seed-7", "seed-7-again", "seed-8"))
    assert seven == again, f"{project}/seed.py --seed 7 wrote different bytes twice"
    assert seven != eight, f"{project}/seed.py --seed 7 and --seed 8 wrote the same model"
    assert seven != (folder / "seed.safetensors").read_bytes(), "--seed 7 wrote the default (seed 0) model"


@pytest.mark.parametrize("project", PROJECTS)
def test_seed_script_reproduces_the_committed_bytes(project: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    committed = SEEDS / f"{project}.safetensors"
    done, folder = _regenerate(project, tmp_path_factory)
    fresh = folder / "seed.safetensors"
    assert done.returncode == 0, done.stderr[-2000:]
    signature = [(t.name, t.dtype, t.shape) for t in read_header(fresh).tensors]
    assert signature == [(t.name, t.dtype, t.shape) for t in read_header(committed).tensors], \
        f"{project}'s architecture changed: regenerate seeds/ (see seeds/README.md)"
    assert fresh.read_bytes() == committed.read_bytes(), \
        f"{project}/seed.py no longer reproduces {committed.name}: regenerate seeds/ (see seeds/README.md)"
    loaded_shapes = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded_shapes == [list(t.shape) for t in read_header(committed).tensors]


def test_a_bad_seed_is_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    from fedtier.seed_args import MAX_SEED, parse_seed_args

    assert parse_seed_args(["out"]).seed == 0 and parse_seed_args(["out", "--seed", str(MAX_SEED)]).seed == MAX_SEED
    for bad in ("-1", str(MAX_SEED + 1), "1e3", "x"):
        with pytest.raises(SystemExit) as stopped:
            parse_seed_args(["out", "--seed", bad])
        assert stopped.value.code == 2
        assert f"--seed must be an integer from 0 to {MAX_SEED}" in capsys.readouterr().err

"""The lab's Byzantine clients (client/attack.py): each attack against its numpy definition,
the specs and plans refused with the field named, and `fedtier client --attack` refused
outside the lab. The sandbox run that shows an attacked update on the wire is in
tests/test_sandbox_partition.py (the network that test already starts)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fedtier.client.attack import Attack, AttackError, AttackPlan, flip_labels_for
from fedtier.launch.cli import main
from fedtier.client.context import TaskContext
from fedtier.helpers.format import read_header, read_model, write_model


@pytest.fixture
def models() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    base = {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=3).astype(np.float64),
            "steps": np.array([5, 6], dtype=np.int64)}
    trained = {"w": base["w"] + rng.normal(size=(4, 3)).astype(np.float32),
               "b": base["b"] + rng.normal(size=3), "steps": np.array([9, 10], dtype=np.int64)}
    return base, trained


@pytest.mark.parametrize("spec, expected", [
    ("sign_flip", lambda b, t: b - 1.0 * (t - b)),
    ("sign_flip:scale=4", lambda b, t: b - 4.0 * (t - b)),
    ("scaling:scale=3", lambda b, t: b + 3.0 * (t - b)),
    ("scaling", lambda b, t: b + 10.0 * (t - b)),
])
def test_update_attacks_match_their_definition(models, spec: str, expected) -> None:
    base, trained = models
    sent = Attack.parse(spec).attacked(base, trained)
    for name in ("w", "b"):
        want = expected(base[name].astype(np.float64), trained[name].astype(np.float64)).astype(base[name].dtype)
        assert sent[name].dtype == base[name].dtype
        np.testing.assert_array_equal(sent[name], want)
    np.testing.assert_array_equal(sent["steps"], trained["steps"])  # integers are kept as trained


def test_noise_is_gaussian_with_sigma_and_reproducible_per_task(models) -> None:
    base, _ = models
    trained = {"w": np.zeros((200, 500), np.float32)}
    attack = Attack.parse("noise:sigma=0.5,seed=3")
    sent = attack.attacked(base, trained, task_id="t1")["w"]
    assert abs(float(sent.mean())) < 0.01 and abs(float(sent.std()) - 0.5) < 0.01
    np.testing.assert_array_equal(sent, attack.attacked(base, trained, task_id="t1")["w"])
    assert not np.array_equal(sent, attack.attacked(base, trained, task_id="t2")["w"])


def test_label_flip_maps_y_to_c_minus_1_minus_y_and_only_for_the_attacker() -> None:
    y = np.array([0, 1, 2, 9, 5], dtype=np.int64)
    flipped = Attack.parse("label_flip").flip_labels(y)
    np.testing.assert_array_equal(flipped, 10 - 1 - y)
    np.testing.assert_array_equal(Attack.parse("label_flip:num_classes=3").flip_labels(np.array([0, 1, 2])),
                                  [2, 1, 0])
    with pytest.raises(AttackError, match="labels must be 0..2"):
        Attack.parse("label_flip:num_classes=3").flip_labels(y)
    np.testing.assert_array_equal(flip_labels_for(TaskContext(client_name="honest"), y), y)
    np.testing.assert_array_equal(flip_labels_for(TaskContext(client_name="c", attack="label_flip:num_classes=10"), y),
                                  10 - 1 - y)
    # a command entry point gets it through the environment, as the rest of the context
    assert TaskContext.from_env(TaskContext(client_name="c", attack="label_flip").to_env()).attack == "label_flip"
    assert "FEDTIER_ATTACK" not in TaskContext(client_name="honest").to_env()
    np.testing.assert_array_equal(Attack.parse("sign_flip").flip_labels(y), y)


def test_apply_to_file_rewrites_the_update_and_keeps_metadata(tmp_path: Path, models) -> None:
    base, trained = models
    write_model(tmp_path / "base", base)
    write_model(tmp_path / "out", trained, {"framework": "test"})
    Attack.parse("sign_flip:scale=2").apply_to_file(tmp_path / "base", tmp_path / "out")
    sent = read_model(tmp_path / "out")
    np.testing.assert_array_equal(sent["w"], (base["w"] - 2.0 * (trained["w"].astype(np.float64) - base["w"]))
                                  .astype(np.float32))
    assert read_header(tmp_path / "out").metadata == {"framework": "test"}
    Attack.parse("label_flip").apply_to_file(tmp_path / "base", tmp_path / "out")  # a data attack: file untouched
    np.testing.assert_array_equal(read_model(tmp_path / "out")["w"], sent["w"])


@pytest.mark.parametrize("spec, message", [
    ("", "empty"),
    ("flip", "unknown attack 'flip'"),
    ("sign_flip:sigma=1", "takes no parameter 'sigma'"),
    ("noise:sigma=-1", "sigma: must be at least 0"),
    ("scaling:scale=x", "scale: must be a number"),
    ("noise:sigma", "expected KEY=VALUE"),
    ("sign_flip:scale=1,scale=2", "scale given twice"),
])
def test_bad_attack_specs_name_the_field(spec: str, message: str) -> None:
    with pytest.raises(AttackError, match=message):
        Attack.parse(spec)


def test_plan_places_attackers_on_one_combiner_or_spread() -> None:
    one = AttackPlan.parse("sign_flip:fraction=0.3,placement=one,scale=4", clients=10, combiners=2)
    assert one.attackers == (4, 6, 8) and {one.combiner_of(i) for i in one.attackers} == {0}
    assert one.client_args(4) == ["--attack", "sign_flip:scale=4.0"] and one.client_args(5) == []
    spread = AttackPlan.parse("sign_flip:fraction=0.3", clients=10, combiners=2)
    assert spread.placement == "spread" and spread.attackers == (7, 8, 9)
    assert {spread.combiner_of(i) for i in spread.attackers} == {0, 1}
    assert spread.describe() == ("byzantine: 3 of 10 clients attack with sign_flip (scale=1), placement spread: "
                                 "client-7 on combiner-1, client-8 on combiner-0, client-9 on combiner-1")
    assert AttackPlan.parse("noise:fraction=0.01", clients=10, combiners=2).attackers == (9,)  # at least one
    assert one.to_record()["clients"][0] == {"client": "client-4", "combiner": "combiner-0"}


@pytest.mark.parametrize("spec, message", [
    ("sign_flip", "fraction must be a number in \\(0, 1\\]"),
    ("sign_flip:fraction=1.5", "fraction must be"),
    ("sign_flip:fraction=0.3,placement=all", "placement must be one of one, spread"),
    ("sign_flip:fraction=0.6,placement=one", "6 attackers do not fit on combiner-0, which holds 5"),
    ("sign_flip:fraction=0.3,sigma=2", "takes no parameter 'sigma'"),
])
def test_bad_plans_are_refused(spec: str, message: str) -> None:
    with pytest.raises(AttackError, match=message):
        AttackPlan.parse(spec, clients=10, combiners=2)


def test_client_refuses_attack_outside_the_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """A lab flag copied into a deployment must not poison it quietly: refused before connecting."""
    monkeypatch.delenv("FEDTIER_ALLOW_ATTACKS", raising=False)
    argv = ["--env-file", os.devnull, "client", "--combiner", "127.0.0.1:1", "--project", str(tmp_path),
            "--name", "c", "--work-dir", str(tmp_path / "work"), "--attack", "sign_flip"]
    assert main(argv) == 1
    assert "refused unless FEDTIER_ALLOW_ATTACKS=true" in caplog.text
    monkeypatch.setenv("FEDTIER_ALLOW_ATTACKS", "true")  # allowed: the spec is checked next, still before connecting
    assert main([*argv[:-1], "sign_flip:scale=-1"]) == 1
    assert "scale: must be at least 0" in caplog.text


@pytest.mark.parametrize("kwargs, match", [
    ({"byzantine": "sign_flip:fraction=0.9,placement=one"}, "do not fit on combiner-0"),
    ({"byzantine": "flip:fraction=0.5"}, "unknown attack 'flip'"),
    ({"settings": "{"}, "--settings is not valid JSON"),
    ({"settings": "[1]"}, "--settings must be a JSON object"),
    ({"settings": '{"aggregation": {"combiner": "fedadam"}}'}, "--settings: aggregation.combiner.name: strategy .fedadam. runs only at the reducer tier"),
])
def test_sandbox_refuses_bad_attackers_or_settings_before_starting(tmp_path: Path, kwargs: dict, match: str) -> None:
    from fedtier.launch.sandbox import Sandbox, SandboxOptions

    root = Path(__file__).resolve().parent.parent
    with pytest.raises(ValueError, match=match):
        Sandbox(SandboxOptions(project=root / "test_projects" / "digits", work_dir=tmp_path, **kwargs))
    assert not (tmp_path / "logs").exists()

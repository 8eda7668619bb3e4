"""A real combiner and 3 client processes train `digits` for 3 rounds; accuracy rises to >= 0.85."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from conftest import ROOT, ProcessGroup, free_port, wait_for_port
from fedtier.proto import fedtier_pb2 as pb
from fedtier.reducer.combiner_client import CombinerClient
from test_combiner_network import wait_active

DIGITS = ROOT / "test_projects" / "digits"


def evaluate(paths: list[Path]) -> list[float]:
    """Held-out accuracy of each model with the project's own code, in one subprocess (its
    modules stay out of ours; one process, because importing torch and scikit-learn is most
    of its time)."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from entrypoints import evaluate_model_file; "
            "print(json.dumps([evaluate_model_file(p)['accuracy'] for p in sys.argv[2:]]))")
    done = subprocess.run([sys.executable, "-c", code, str(DIGITS), *map(str, paths)], capture_output=True,
                          text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_three_rounds_of_digits_over_grpc(procs: ProcessGroup, tmp_path: Path) -> None:
    # the committed seed (test_seeds.py checks digits/seed.py writes exactly it): saves a torch import
    shutil.copyfile(ROOT / "seeds" / "digits.safetensors", tmp_path / "seed")
    port = free_port()
    combiner = procs.start("combiner", "combiner", "--name", "c1", "--host", "127.0.0.1", "--port", str(port),
                           "--work-dir", str(tmp_path / "c1"), "--heartbeat-timeout", "10")
    wait_for_port(port, proc=combiner)
    for i in range(3):
        procs.start(f"client-{i}", "client", "--combiner", f"127.0.0.1:{port}", "--project", str(DIGITS),
                    "--name", f"client-{i}", "--partition", f"{i}/3", "--work-dir", str(tmp_path / f"client-{i}"))
    control = CombinerClient(f"127.0.0.1:{port}")
    wait_active(control, 3)

    models = [tmp_path / "seed"]
    model_id, path = "seed", tmp_path / "seed"
    for number in range(1, 4):
        control.upload_model(path, model_id)
        config = {"clients_required": 3, "round_timeout": 120, "helper": "pytorch"}
        result = control.start_round(pb.RoundRequest(session_id="s", round_id=uuid.uuid4().hex, kind=pb.TRAINING,
                                                     model_id=model_id, config_json=json.dumps(config)), timeout=300)
        assert result.success, (result.error, list(result.failures))
        assert len(result.updates) == 3
        model_id, path = f"round-{number}", tmp_path / f"round-{number}"
        control.download_model(result.model_id, path)
        models.append(path)
    accuracies = evaluate(models)
    assert accuracies[0] < 0.3, accuracies  # the seed is near chance
    assert accuracies[-1] >= 0.85, accuracies
    assert accuracies[-1] > accuracies[0] + 0.5, accuracies

"""FEDn-style command entry point for training.

    python train.py IN_MODEL OUT_MODEL

Writes OUT_MODEL and OUT_MODEL-metadata (JSON with at least "num_examples"). The
task context (partition, round, config) comes from the environment, see
fedtier.client.context.TaskContext.to_env(). Use it with
``entry_points: train: command: python train.py`` in fedn.yaml.
"""
from __future__ import annotations

import json
import sys

from entrypoints import train
from fedtier.client.context import TaskContext


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        sys.exit("usage: python train.py IN_MODEL OUT_MODEL")
    in_model, out_model = argv
    metadata = train(in_model, out_model, TaskContext.from_env())
    with open(out_model + "-metadata", "w", encoding="utf-8") as f:
        json.dump(metadata, f)


if __name__ == "__main__":
    main(sys.argv[1:])

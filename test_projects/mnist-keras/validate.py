"""FEDn-style command entry point for validation.

    python validate.py IN_MODEL OUT_JSON

Writes the metrics dict of entrypoints.validate() as JSON to OUT_JSON. The task
context comes from the environment (fedtier.client.context.TaskContext.to_env()).
Use it with ``entry_points: validate: command: python validate.py`` in fedn.yaml.
"""
from __future__ import annotations

import json
import sys

from entrypoints import validate
from fedtier.client.context import TaskContext


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        sys.exit("usage: python validate.py IN_MODEL OUT_JSON")
    in_model, out_json = argv
    metrics = validate(in_model, TaskContext.from_env())
    with open(out_json, "w", encoding="utf-8") as f:
        json.dump(metrics, f)


if __name__ == "__main__":
    main(sys.argv[1:])

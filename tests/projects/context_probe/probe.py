"""Records what a task's entry point was given (see fedn.yaml); trains nothing."""
import json
import os
import shutil
import sys

from fedtier.client.context import TaskContext


def _record(kind: str, ctx: TaskContext) -> None:
    line = {"kind": kind, "client": ctx.client_name, "round_number": ctx.round_number,
            "session_id": ctx.session_id, "round_id": ctx.round_id, "config": dict(ctx.config),
            "settings": dict(ctx.settings), "data_path": ctx.data_path, "pid": os.getpid()}
    with open(os.environ["PROBE_LOG"], "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def train(in_path, out_path, ctx):
    _record("train", ctx)
    shutil.copyfile(in_path, out_path)
    return {"num_examples": 1}


def validate(in_path, ctx):
    _record("validate", ctx)
    return {"num_examples": 1}


if __name__ == "__main__":  # the command entry point: python probe.py train|validate IN OUT
    kind, in_path, out_path = sys.argv[1:4]
    ctx = TaskContext.from_env()
    if kind == "train":
        with open(out_path + "-metadata", "w", encoding="utf-8") as f:
            json.dump(train(in_path, out_path, ctx), f)
    else:
        with open(out_path, "w", encoding="utf-8") as f:
            json.dump(validate(in_path, ctx), f)

"""Deterministic fake training for tests (see fedn.yaml)."""
import json
import os
import time

from fedtier.helpers import get_helper

helper = get_helper("numpy")


def train(in_path, out_path, ctx):
    weights = helper.load(in_path)
    delay = float(ctx.config.get("sleep_by_client", {}).get(ctx.client_name, ctx.config.get("sleep", 0)))
    if ctx.config.get("fail_client") == ctx.client_name:
        raise RuntimeError("told to fail")
    if delay:
        time.sleep(delay)
    shift = ctx.partition_index + 1
    bad = ctx.config.get("nan_client") == ctx.client_name
    out = {k: (v + shift if not bad else v * float("nan")) for k, v in weights.items()}
    if ctx.config.get("wrong_shape_client") == ctx.client_name:
        out = {k: v.reshape(-1)[:1] for k, v in out.items()}
    helper.save(out, out_path)
    examples = 10**12 if ctx.config.get("liar_client") == ctx.client_name else 10 * shift  # claims to own the mean
    return {"num_examples": examples, "client": ctx.client_name}


def validate(in_path, ctx):
    weights = helper.load(in_path)
    total = float(sum(v.sum() for v in weights.values()))
    return {"weight_sum": total, "num_examples": 10 * (ctx.partition_index + 1)}

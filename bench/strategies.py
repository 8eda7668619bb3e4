"""Aggregation strategies under data skew and Byzantine clients: MNIST accuracy per round.

    .venv/bin/python bench/strategies.py --json strategies.json          # the default plan
    .venv/bin/python bench/strategies.py --strategies fedavg,median --partitions iid \\
        --attacks none,30-one,30-spread --rounds 20                        # a chosen matrix
    .venv/bin/python bench/strategies.py --smoke                         # seconds: the test's run

Each scenario (strategy x partition x attack) is one run of the real network,
``fedtier sandbox`` with the MNIST PyTorch project (reducer, ``--combiners`` combiners
and ``--clients`` clients as separate processes), on the MNIST files in
``../shared/data/mnist``. A strategy is data: a label and the round settings it adds to
``/start`` (``STRATEGIES``, or ``label={"aggregation": ...}`` on the command line), so a
new strategy needs no code here. Attackers are sandbox clients made Byzantine
(``fedtier sandbox --byzantine``, client/attack.py): ``30-one`` puts 30 % of the clients,
all on combiner-0; ``30-spread`` the same number over the combiners.

It prints the global model's test accuracy after every round, one table per scenario,
then a summary (final and best accuracy) and the issue's expected comparisons as
measured, each met or not met (docs/strategies.md). Nothing here is asserted: a
comparison not met is a finding, printed; the exit status is 1 only if a run failed.

Without ``--strategies``/``--partitions``/``--attacks`` it runs ``default_plan()``: the
scenarios the comparisons need, not the whole product (``--full`` runs that).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import ROOT  # noqa: E402

from fedtier.client.attack import Attack  # noqa: E402

PROJECT = ROOT / "test_projects" / "mnist-pytorch"
SEED = ROOT / "seeds" / "mnist-pytorch.safetensors"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mnist"
VAL_FRACTION = 0.2  # the project holds out this share of each client's data (test_projects/mnist-pytorch/data.py)
MNIST_TRAIN = 60000


def _tiers(combiner: dict[str, Any], reducer: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"aggregation": {"combiner": combiner, "reducer": reducer or {"name": "fedavg"}}}


#: Strategy presets: label -> round settings added to /start. Parameters not given take the
#: strategy's defaults (its registry entry); change them here or pass label=JSON.
STRATEGIES: dict[str, dict[str, Any]] = {
    "fedavg": {"aggregator": "fedavg"},
    "fedavgm": _tiers({"name": "fedavg"}, {"name": "fedavgm", "server_lr": 1.0, "momentum": 0.5}),
    "fedadam": _tiers({"name": "fedavg"}, {"name": "fedadam", "eta": 0.01}),
    "fedyogi": _tiers({"name": "fedavg"}, {"name": "fedyogi", "eta": 0.01}),
    "fedadagrad": _tiers({"name": "fedavg"}, {"name": "fedadagrad", "eta": 0.01}),
    "fedprox": _tiers({"name": "fedprox", "mu": 0.1}),
    "median": _tiers({"name": "median"}),
    "median-both": _tiers({"name": "median"}, {"name": "median"}),
    "trimmed_mean": _tiers({"name": "trimmed_mean", "beta": 0.2}),
    "trimmed_mean-both": _tiers({"name": "trimmed_mean", "beta": 0.2}, {"name": "trimmed_mean", "beta": 0.2}),
    "krum": _tiers({"name": "krum", "f": 1}),
    "multikrum": _tiers({"name": "multikrum", "f": 1, "m": 3}),
    "fedper": _tiers({"name": "fedper", "personal": "9.*"}),  # the MNIST CNN's last layer, its head
}
ADAPTIVE = ("fedprox", "fedavgm", "fedadam")
ROBUST = ("median", "trimmed_mean", "krum", "multikrum")

#: Partition labels -> sandbox partition specs; anything with a ':' is taken as a spec.
PARTITIONS: dict[str, str] = {
    "iid": "iid",
    "dirichlet": "dirichlet:alpha=0.1,min_size=20",
    "kclass": "kclass:k=2",
}
SKEWED = ("dirichlet", "kclass")
ATTACKS = ("none", "10-one", "10-spread", "30-one", "30-spread")
COLLAPSE_POINTS = 0.20  # "collapses": ends at least this far below clean FedAvg
WITHIN_POINTS = 0.03
ABOVE_POINTS = 0.02


@dataclass(frozen=True)
class Scenario:
    strategy: str
    settings: dict[str, Any]
    partition: str
    attack: str

    @property
    def name(self) -> str:
        return f"{self.strategy} / {self.partition} / {self.attack}"


def names_in(settings: dict[str, Any]) -> set[str]:
    """Every strategy name a spec uses, at either tier (how a comparison finds its runs)."""
    names = {settings["aggregator"]} if isinstance(settings.get("aggregator"), str) else set()
    for tier in (settings.get("aggregation") or {}).values():
        if isinstance(tier, dict) and isinstance(tier.get("name"), str):
            names.add(tier["name"])
    return names or {"fedavg"}


def parse_strategies(text: str) -> dict[str, dict[str, Any]]:
    """``fedavg,median`` (presets) or ``label={json}`` items separated by ';'."""
    chosen: dict[str, dict[str, Any]] = {}
    items = text.split(";") if "=" in text else text.split(",")
    for item in filter(str.strip, items):
        label, sep, spec = item.strip().partition("=")
        if sep:
            try:
                settings = json.loads(spec)
            except json.JSONDecodeError as exc:
                raise SystemExit(f"--strategies: {label}: not valid JSON ({exc})") from None
            if not isinstance(settings, dict):
                raise SystemExit(f"--strategies: {label}: round settings must be a JSON object")
            chosen[label.strip()] = settings
        elif label in STRATEGIES:
            chosen[label] = STRATEGIES[label]
        else:
            raise SystemExit(f"--strategies: unknown strategy {label!r} (presets: {', '.join(STRATEGIES)}; "
                             f"or label={{json round settings}})")
    return chosen


def parse_attack(label: str) -> tuple[float, str] | None:
    """``none`` or ``PERCENT-one|spread`` -> (fraction, placement)."""
    if label == "none":
        return None
    percent, _, placement = label.partition("-")
    try:
        fraction = float(percent) / 100
    except ValueError:
        fraction = -1.0
    if not 0 < fraction <= 1 or placement not in ("one", "spread"):
        raise SystemExit(f"--attacks: {label!r} is not 'none' or PERCENT-one|PERCENT-spread (e.g. 30-one)")
    return fraction, placement


def default_plan() -> list[Scenario]:
    """The scenarios the expected comparisons need: strategies under skew without attack,
    FedAvg and the robust strategies under every attack on IID data, FedPer on two classes."""
    plan = [Scenario(s, STRATEGIES[s], p, "none") for p in ("iid", *SKEWED) for s in ("fedavg", *ADAPTIVE)]
    plan.append(Scenario("fedper", STRATEGIES["fedper"], "kclass", "none"))
    for attack in ATTACKS[1:]:
        plan += [Scenario(s, STRATEGIES[s], "iid", attack)
                 for s in ("fedavg", "median", "trimmed_mean", "multikrum", "median-both")]
    plan += [Scenario(s, STRATEGIES[s], "iid", "none") for s in ("median", "trimmed_mean", "multikrum", "median-both")]
    return plan


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=20, help="rounds per scenario (default 20)")
    p.add_argument("--clients", type=int, default=10, help="clients (default 10)")
    p.add_argument("--combiners", type=int, default=2, help="combiners (default 2)")
    p.add_argument("--samples-per-client", type=int, default=1000,
                   help="training examples per client, before the 20%% validation hold-out is added (default 1000)")
    p.add_argument("--test-samples", type=int, default=2000, help="test images scored per round (default 2000)")
    p.add_argument("--epochs", type=int, default=1, help="local epochs per round (default 1)")
    p.add_argument("--strategies", default="", help=f"comma-separated presets ({', '.join(STRATEGIES)}), or "
                                                    "';'-separated label={json round settings}")
    p.add_argument("--partitions", default="", help=f"comma-separated: {', '.join(PARTITIONS)} or sandbox specs")
    p.add_argument("--attacks", default="", help=f"comma-separated: {', '.join(ATTACKS)} (any PERCENT-one|spread)")
    p.add_argument("--attack", default="sign_flip:scale=4",
                   help="what attackers do (client/attack.py; default sign_flip:scale=4: 3 of 10 outweigh "
                        "7 honest clients in a mean, 0.7 - 0.3*4 < 0)")
    p.add_argument("--full", action="store_true", help="every strategy preset x partition x attack")
    p.add_argument("--smoke", action="store_true", help="2 clients, 1 combiner, 1 round, tiny data: seconds")
    p.add_argument("--data-path", default=str(DEFAULT_DATA), help=f"MNIST IDX files (default {DEFAULT_DATA})")
    p.add_argument("--round-timeout", type=float, default=600.0, help="seconds per round (default 600)")
    common.add_output_options(p)
    args = p.parse_args(argv)
    if args.smoke:
        args.clients, args.combiners, args.rounds = 2, 1, 1
        args.samples_per_client, args.test_samples = 40, 200
        args.strategies = args.strategies or "fedavg"
        args.partitions = args.partitions or "iid"
        args.attacks = args.attacks or "50-spread"
    try:
        Attack.parse(args.attack)
    except ValueError as exc:
        p.error(f"--attack: {exc}")
    for name in ("rounds", "clients", "combiners", "samples_per_client", "test_samples", "epochs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    if not (args.strategies or args.partitions or args.attacks or args.full):
        return default_plan()
    strategies = parse_strategies(args.strategies) if args.strategies else \
        (dict(STRATEGIES) if args.full else {"fedavg": STRATEGIES["fedavg"]})
    partitions = [p.strip() for p in args.partitions.split(",") if p.strip()] if args.partitions else \
        (list(PARTITIONS) if args.full else ["iid"])
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()] if args.attacks else \
        (list(ATTACKS) if args.full else ["none"])
    for attack in attacks:
        parse_attack(attack)
    for partition in partitions:
        if partition not in PARTITIONS and ":" not in partition and partition != "iid":
            raise SystemExit(f"--partitions: unknown {partition!r} ({', '.join(PARTITIONS)}, or a sandbox spec)")
    return [Scenario(s, settings, p, a) for p in partitions for a in attacks for s, settings in strategies.items()]


# ---------------------------------------------------------------- one run
def personalised(work: Path, round_number: int) -> dict[str, Any] | None:
    """Mean global and personalised accuracy of the clients' last validation, if reported.

    A FedPer validation reports the personalised model's accuracy under a key with
    ``personal`` and ``accuracy`` in its name, next to the global model's ``accuracy``."""
    from fedtier.storage.collections import VALIDATIONS
    from fedtier.storage.sqlite import SQLiteStateStore

    path = work / "fedtier.sqlite"
    if not path.is_file():
        return None
    store = SQLiteStateStore(path)
    try:
        reports = [v["metrics"] for v in store.find(VALIDATIONS, {"round": round_number})]
    finally:
        store.close()
    pairs = []
    for metrics in reports:
        key = next((k for k in sorted(metrics) if "personal" in k and "accuracy" in k), None)
        glob = metrics.get("global_accuracy", metrics.get("accuracy"))
        if key and isinstance(metrics[key], (int, float)) and isinstance(glob, (int, float)):
            pairs.append((float(glob), float(metrics[key])))
    if not pairs:
        return None
    return {"clients": len(pairs), "global_accuracy": sum(g for g, _ in pairs) / len(pairs),
            "personalised_accuracy": sum(p for _, p in pairs) / len(pairs)}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(scenario: Scenario, args: argparse.Namespace, scratch: Path, index: int) -> dict[str, Any]:
    """One sandbox run; its output goes to a log file, its summary comes back as a record."""
    work = scratch / f"run-{index}"
    summary_path = scratch / f"run-{index}.json"
    per_client = math.ceil(args.samples_per_client / (1 - VAL_FRACTION))
    task = {"epochs": args.epochs, "max_train": min(MNIST_TRAIN, per_client * args.clients),
            "max_test": args.test_samples}
    cmd = [sys.executable, "-m", "fedtier.launch.cli", "--env-file", os.devnull, "sandbox", "--project", str(PROJECT),
           "--combiners", str(args.combiners), "--clients", str(args.clients), "--rounds", str(args.rounds),
           "--exit-when-done", "--summary", str(summary_path), "--work-dir", str(work), "--seed", str(SEED),
           "--data-path", args.data_path, "--task", json.dumps(task),
           "--partition", PARTITIONS.get(scenario.partition, scenario.partition),
           "--round-timeout", str(args.round_timeout), "--startup-timeout", "600",
           "--settings", json.dumps(scenario.settings)]
    attack = parse_attack(scenario.attack)
    if attack:
        kind, _, params = args.attack.partition(":")
        cmd += ["--byzantine", f"{kind}:fraction={attack[0]},placement={attack[1]}" + (f",{params}" if params else "")]
    record: dict[str, Any] = {"strategy": scenario.strategy, "settings": scenario.settings,
                              "partition": scenario.partition, "attack": scenario.attack, "ok": False}
    started, cpu = time.monotonic(), _children_cpu()
    with open(scratch / f"run-{index}.log", "w") as log:
        done = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    record["wall_s"] = round(time.monotonic() - started, 1)
    # CPU of the whole network (the sandbox reaps its processes): the cost on an idle machine,
    # where the wall time depends on whatever else shares the cores
    record["cpu_s"] = round(_children_cpu() - cpu, 1)
    output = (scratch / f"run-{index}.log").read_text()
    if not summary_path.is_file():  # exit 1 with a summary: rounds failed, which is a result
        record["error"] = "\n".join(output.strip().splitlines()[-8:])
        return record
    summary = json.loads(summary_path.read_text())
    rounds = [{"round": r["round"], "test_accuracy": r["test_accuracy"], "accuracy": r["accuracy"],
               "round_time_s": r["round_time_s"], "status": r["status"]} for r in summary["rounds"]]
    # A failed round (an attacked model went non-finite, its updates were refused) commits no
    # model: the federation keeps the last one, so "final" is the last successful round's.
    accuracies = [r["test_accuracy"] for r in rounds
                  if r["status"] == "success" and isinstance(r["test_accuracy"], (int, float))]
    record.update(ok=len(rounds) == args.rounds, rounds=rounds,
                  failed_rounds=sum(r["status"] != "success" for r in rounds),
                  exit_code=done.returncode, byzantine=summary.get("byzantine"),
                  byzantine_line=next((line for line in output.splitlines() if line.startswith("byzantine:")), None),
                  final=accuracies[-1] if accuracies else None, best=max(accuracies) if accuracies else None,
                  round_time_s=common.summarize(r["round_time_s"] for r in rounds),
                  personalised=personalised(work, rounds[-1]["round"]) if rounds else None)
    if not record["ok"]:
        record["error"] = f"the session ran {len(rounds)} of {args.rounds} rounds"
    return record


# ---------------------------------------------------------------- the comparisons
def _find(runs: list[dict[str, Any]], partition: str, attack: str, want: Any,
          measured: bool = True) -> list[dict[str, Any]]:
    """The completed runs of a scenario whose strategy names pass ``want``; with ``measured``,
    only those with a final accuracy (at least one round succeeded)."""
    return [r for r in runs if r["ok"] and r["partition"] == partition and r["attack"] == attack
            and want(names_in(r["settings"])) and (r.get("final") is not None or not measured)]


def comparisons(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's expectations, each computed from the runs; 'not measured' without the runs."""
    out: list[dict[str, Any]] = []
    is_fedavg = lambda names: names == {"fedavg"}  # noqa: E731
    partitions = sorted({r["partition"] for r in runs})
    for partition in [p for p in partitions if p != "iid" and not p.startswith("iid")]:
        base = _find(runs, partition, "none", is_fedavg)
        rivals = _find(runs, partition, "none", lambda n: bool(n & set(ADAPTIVE)) and n <= {*ADAPTIVE, "fedavg"})
        claim = f"{partition}: one of FedProx/FedAvgM/FedAdam ends >= {ABOVE_POINTS * 100:g} points above FedAvg"
        if not base or not rivals:
            out.append({"claim": claim, "measured": "not measured (needs fedavg and one of them, no attack)",
                        "met": None})
            continue
        best = max(rivals, key=lambda r: r["final"])
        margin = best["final"] - base[0]["final"]
        out.append({"claim": claim, "met": margin >= ABOVE_POINTS,
                    "measured": f"best {best['strategy']} {best['final']:.4f} vs FedAvg {base[0]['final']:.4f} "
                                f"({margin * 100:+.1f} points)"})
    for partition in partitions:
        clean = _find(runs, partition, "none", is_fedavg)
        heavy = {r["attack"] for r in runs if r["attack"].startswith("30-") and r["partition"] == partition}
        for attack in sorted(heavy):
            claim = (f"{partition}, {attack}: FedAvg collapses (>= {COLLAPSE_POINTS * 100:g} points below clean) "
                     f"while a robust strategy stays within {WITHIN_POINTS * 100:g} points of clean FedAvg")
            attacked = _find(runs, partition, attack, is_fedavg, measured=False)
            robust = _find(runs, partition, attack, lambda n: bool(n & set(ROBUST)))
            if not clean or not attacked or not robust:
                out.append({"claim": claim, "met": None,
                            "measured": "not measured (needs clean FedAvg, attacked FedAvg and a robust strategy)"})
                continue
            best = max(robust, key=lambda r: r["final"])
            reference = clean[0]["final"]
            attacked_final = attacked[0]["final"]  # None: no round succeeded, the seed model stayed
            collapsed = attacked_final is None or attacked_final <= reference - COLLAPSE_POINTS
            held = best["final"] >= reference - WITHIN_POINTS
            out.append({"claim": claim, "met": collapsed and held,
                        "measured": f"clean FedAvg {reference:.4f}; attacked FedAvg {common.fmt(attacked_final, 4)} "
                                    f"({'collapsed' if collapsed else 'did not collapse'}); best robust "
                                    f"{best['strategy']} {best['final']:.4f} "
                                    f"({'within' if held else 'not within'} {WITHIN_POINTS * 100:g} points)"})
    fedper = [r for r in runs if r["ok"] and "fedper" in names_in(r["settings"]) and r["attack"] == "none"
              and r["partition"] in ("kclass", PARTITIONS["kclass"])]
    claim = "two classes per client: personalised layers beat the global model on the clients' own data"
    measured = [r for r in fedper if r.get("personalised")]
    if not measured:
        out.append({"claim": claim, "met": None, "measured": "not measured (needs a fedper run on kclass whose "
                                                             "validation reports a personalised accuracy)"})
    else:
        p = measured[0]["personalised"]
        out.append({"claim": claim, "met": p["personalised_accuracy"] > p["global_accuracy"],
                    "measured": f"mean over {p['clients']} clients: personalised {p['personalised_accuracy']:.4f}, "
                                f"global {p['global_accuracy']:.4f}"})
    return out


# ---------------------------------------------------------------- output
def report(result: dict[str, Any]) -> None:
    print(common.machine_line(result["machine"]))
    for r in result["runs"]:
        title = f"{r['strategy']} / {r['partition']} / attack {r['attack']}"
        if not r["ok"] and not r.get("rounds"):
            print(f"\n### {title}\n\nFAILED: {r.get('error')}")
            continue
        if r.get("byzantine_line"):
            title += f" ({r['byzantine_line'].removeprefix('byzantine: ')})"
        common.print_table(title, ["attempt", "round", "status", "test accuracy", "validation accuracy",
                                   "round time s"],
                           [[i, x["round"], x["status"], x["test_accuracy"], x["accuracy"], x["round_time_s"]]
                            for i, x in enumerate(r["rounds"], 1)])
    common.print_table("Summary (test accuracy of the global model)",
                       ["strategy", "partition", "attack", "final", "best", "failed rounds", "median round s",
                        "wall s", "cpu s", "ok"],
                       [[r["strategy"], r["partition"], r["attack"], r.get("final"), r.get("best"),
                         r.get("failed_rounds"), (r.get("round_time_s") or {}).get("median"), r["wall_s"],
                         r["cpu_s"], r["ok"]] for r in result["runs"]])
    common.print_table("Expected comparisons, as measured", ["expectation", "measured", "met"],
                       [[c["claim"], c["measured"], "not measured" if c["met"] is None else
                         ("met" if c["met"] else "not met")] for c in result["comparisons"]])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (Path(args.data_path) / "train-images-idx3-ubyte.gz").is_file():
        print(f"MNIST not found in {args.data_path}; pass --data-path", file=sys.stderr)
        return 2
    plan = scenarios(args)
    scratch = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-strategies-"))
    scratch.mkdir(parents=True, exist_ok=True)
    print(f"{len(plan)} scenarios, {args.rounds} rounds each, {args.clients} clients over {args.combiners} "
          f"combiners, {args.samples_per_client} training examples per client; logs in {scratch}", flush=True)
    runs = []
    try:
        for index, scenario in enumerate(plan):
            record = run(scenario, args, scratch, index)
            runs.append(record)
            print(f"[{index + 1}/{len(plan)}] {scenario.name}: final {common.fmt(record.get('final'))}, "
                  f"{record['wall_s']:.0f} s, {record['cpu_s']:.0f} CPU s{'' if record['ok'] else ', FAILED'}",
                  flush=True)
    finally:
        if not args.keep and not args.work_dir:
            shutil.rmtree(scratch, ignore_errors=True)
    result = {"settings": {k: v for k, v in vars(args).items() if k not in ("json", "keep", "work_dir")},
              "machine": common.machine(), "runs": runs, "comparisons": comparisons(runs),
              "ok": bool(runs) and all(r["ok"] for r in runs)}
    return common.conclude(result, report, args.json)


if __name__ == "__main__":
    sys.exit(main())

"""The command line every project's ``seed.py`` takes: ``OUT_PATH [--seed N]``.

One parser for all projects, so ``fedtier sandbox --seed-value N`` can hand any of them
a seed the same way, and a bad seed is refused with the same message everywhere.
``N`` is bounded by what every framework's seeding accepts (numpy's and Keras'
``set_random_seed`` take at most 2**32 - 1).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Sequence

MAX_SEED = 2**32 - 1
DEFAULT_SEED = 0  # the committed seeds/ were made with it


@dataclass(frozen=True)
class SeedArgs:
    out_path: str
    seed: int


def _seed(text: str) -> int:
    if not text.strip().isdecimal() or not 0 <= int(text) <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"--seed must be an integer from 0 to {MAX_SEED}, got {text[:40]!r}")
    return int(text)


def parse_seed_args(argv: Sequence[str] | None = None, description: str | None = None) -> SeedArgs:
    """Parse ``OUT_PATH [--seed N]``; exits with a usage message naming the bad argument."""
    parser = argparse.ArgumentParser(prog="seed.py", description=description)
    parser.add_argument("out_path", metavar="OUT_PATH", help="where to write the seed model")
    parser.add_argument("--seed", type=_seed, default=DEFAULT_SEED,
                        help=f"random seed of the initial weights, 0 to {MAX_SEED} (default {DEFAULT_SEED}: "
                             "the same bytes on every run)")
    args = parser.parse_args(argv)
    return SeedArgs(args.out_path, args.seed)

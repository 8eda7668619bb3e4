"""What a project's train/validate code is told about the task it runs.

The same information reaches in-process entry points (as a ``TaskContext``) and
command entry points (as environment variables, FEDn style), so a project can offer
both without duplicating its configuration handling.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

ENV_PREFIX = "FEDTIER_"
#: the ``client_name`` of a task the reducer runs itself (its evaluation: reducer/evaluation.py)
REDUCER_CLIENT_NAME = "reducer"


@dataclass(frozen=True)
class TaskContext:
    """Everything a project's entry point may need besides the model files.

    ``partition_index``/``num_partitions`` let a project that reads a shared dataset
    (tests, demos) pick this client's share; real deployments point ``data_path`` at
    the client's own data and may ignore them.

    ``round_number`` is the reducer's round number (1-based, the one the trail records;
    0 when the task came from a caller that gave none) and ``session_id`` the session's,
    so a learning-rate schedule or a per-round shuffle needs no file of its own.
    ``config`` is the session's ``task`` settings; ``settings`` the strategy's client-side
    settings (the aggregator parameters its clients take part in, e.g. a proximal term's
    weight), empty for FedAvg.
    """

    client_name: str
    data_path: str | None = None
    partition_index: int = 0
    num_partitions: int = 1
    round_id: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)
    work_dir: Path = Path(".")
    round_number: int = 0
    session_id: str = ""
    settings: Mapping[str, Any] = field(default_factory=dict)
    # a lab attack this client runs (fedtier/client/attack.py), "" for an honest client;
    # a project supports the data attack (label_flip) with ``y = flip_labels_for(ctx, y)``
    attack: str = ""

    @property
    def on_reducer(self) -> bool:
        """This validate scores the global model for the reducer (reducer/evaluation.py): the
        data is the operator's held-out set, not a client's share, so a project may score only
        that set and skip what it does for a client (its own validation split)."""
        return self.client_name == REDUCER_CLIENT_NAME

    def to_env(self) -> dict[str, str]:
        """Environment for a command entry point; FEDN_DATA_PATH kept for FEDn projects."""
        env = {
            f"{ENV_PREFIX}CLIENT_NAME": self.client_name,
            f"{ENV_PREFIX}PARTITION_INDEX": str(self.partition_index),
            f"{ENV_PREFIX}NUM_PARTITIONS": str(self.num_partitions),
            f"{ENV_PREFIX}ROUND_ID": self.round_id,
            f"{ENV_PREFIX}ROUND": str(self.round_number),
            f"{ENV_PREFIX}SESSION_ID": self.session_id,
            f"{ENV_PREFIX}TASK_CONFIG": json.dumps(dict(self.config)),
            f"{ENV_PREFIX}STRATEGY_SETTINGS": json.dumps(dict(self.settings)),
            f"{ENV_PREFIX}WORK_DIR": str(self.work_dir),
        }
        if self.attack:
            env[f"{ENV_PREFIX}ATTACK"] = self.attack
        if self.data_path is not None:
            env["FEDN_DATA_PATH"] = self.data_path
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "TaskContext":
        """Rebuild the context inside a command entry point (train.py, validate.py)."""
        env = os.environ if environ is None else environ
        return cls(
            client_name=env.get(f"{ENV_PREFIX}CLIENT_NAME", "local"),
            data_path=env.get("FEDN_DATA_PATH"),
            partition_index=int(env.get(f"{ENV_PREFIX}PARTITION_INDEX", "0")),
            num_partitions=int(env.get(f"{ENV_PREFIX}NUM_PARTITIONS", "1")),
            round_id=env.get(f"{ENV_PREFIX}ROUND_ID", ""),
            config=json.loads(env.get(f"{ENV_PREFIX}TASK_CONFIG", "{}")),
            work_dir=Path(env.get(f"{ENV_PREFIX}WORK_DIR", ".")),
            round_number=int(env.get(f"{ENV_PREFIX}ROUND", "0")),
            session_id=env.get(f"{ENV_PREFIX}SESSION_ID", ""),
            settings=json.loads(env.get(f"{ENV_PREFIX}STRATEGY_SETTINGS", "{}")),
            attack=env.get(f"{ENV_PREFIX}ATTACK", ""),
        )

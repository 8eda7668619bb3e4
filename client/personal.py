"""A client's personalised layers (the ``fedper`` strategy, fedtier/aggregators/fedper.py).

The layers the session names as personal never leave the client in any useful form:
the aggregate ignores them, and this client keeps its own values between rounds, in
its work directory, per session. Every model it is given is first overlaid with them,
so the project trains and validates its personalised model without knowing; validation
also scores the global model as sent, so local and global accuracy can be compared.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Mapping

from fedtier.aggregators.fedper import MAX_PATTERNS, is_personal, personal_patterns
from fedtier.helpers.format import read_header, read_model, write_model

log = logging.getLogger(__name__)

PREFIX = "personal_"  # validation metrics of the personalised model: personal_accuracy, ...


class PersonalLayers:
    def __init__(self, work_dir: Path, session_id: str, patterns: list[str]) -> None:
        self.patterns = patterns[:MAX_PATTERNS]
        key = hashlib.sha256(session_id.encode("utf-8")).hexdigest()[:24]
        self.store = Path(work_dir) / "personal" / key

    @classmethod
    def from_settings(cls, work_dir: Path, session_id: str, settings: Mapping[str, Any]) -> "PersonalLayers | None":
        """The session's personal layers, or None when its strategy shares every layer."""
        patterns = personal_patterns(settings.get("personal", "")) if isinstance(settings, Mapping) else []
        return cls(work_dir, session_id, patterns) if patterns else None

    def has_own(self) -> bool:
        return self.store.is_file()

    def apply(self, model: Path, out: Path) -> Path:
        """``model`` with this client's personal layers in place of the global ones, at ``out``;
        ``model`` itself when the client has none yet (its first round in the session)."""
        if not self.has_own():
            return model
        mine = read_model(self.store)
        weights = read_model(model)
        for name, values in mine.items():
            if name in weights and weights[name].shape == values.shape and weights[name].dtype == values.dtype:
                weights[name] = values
        write_model(out, weights, durable=False)
        return out

    def remember(self, trained: Path) -> None:
        """Keep the personal layers of the model this client just trained."""
        header = read_header(trained)
        wanted = [t.name for t in header.tensors if is_personal(t.name, self.patterns)]
        if not wanted:
            log.warning("personal layers %s match no tensor of the trained model", ",".join(self.patterns))
            return
        weights = read_model(trained, header)
        self.store.parent.mkdir(parents=True, exist_ok=True)
        write_model(self.store, {name: weights[name] for name in wanted})


def with_personal(global_metrics: Mapping[str, Any], personal_metrics: Mapping[str, Any]) -> dict[str, Any]:
    """One validation report: the global model's metrics as they are, the personalised
    model's under ``personal_`` (num_examples is the same data: not repeated)."""
    merged = dict(global_metrics)
    for name, value in personal_metrics.items():
        if name != "num_examples" and isinstance(value, (int, float)) and not isinstance(value, bool):
            merged[PREFIX + name] = value
    return merged

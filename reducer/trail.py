"""The model trail: every global model the network made, immutable, each with its parent.

A model enters the trail in two steps: its bytes go to the ModelStore under a fresh
id (never overwriting), then its record goes to the StateStore. A failure in between
leaves an unreferenced blob but never a record without bytes, and a record is never
changed or deleted afterwards. ``latest`` is the head the next round starts from.

``production`` is another pointer into the trail: the model an operator promoted for use
outside the federation. The newest latest model is not necessarily a good one (a round can
make a worse model), so production moves only when someone says so. Each promotion is a
new record in ``promotions`` (who, when, why), never changed: the history says which model
served when, and the newest record is the production model.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

from fedtier.ids import new_id
from fedtier.storage.collections import MODELS, PROMOTIONS
from fedtier.storage.model_store import ModelStore
from fedtier.storage.state_store import StateStore

log = logging.getLogger(__name__)

MAX_NOTE_CHARS = 1000  # a promotion's note: a line or two saying why
MAX_MODELS_PAGE = 1000  # models in one answer of /api/v1/models?limit=



class ModelTrail:
    def __init__(self, models: ModelStore, state: StateStore) -> None:
        self.models = models
        self.state = state

    def commit(self, path: Path, parent_id: str | None, round_id: str | None = None,
               session_id: str | None = None, round_number: int = 0,
               kind: str = "global", sha256: str | None = None, xxh3: str | None = None,
               take: bool = False, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Store the model at ``path`` under a new id and record it; returns the record.

        ``take=True`` hands a scratch file to the store (``link``: a hard link where it
        can, not a second gigabyte written): the caller may then read, rename or unlink
        it, never modify it, and finds it read-only. Without it the store copies, and a
        file the caller owns (a seed) stays as it was. ``sha256`` is the file's hash when
        the caller verified it on arrival (a combiner's model taken as the global one),
        sparing the store a read to hash it; a wrong one would make the model read back
        as corrupt, never be trusted. ``xxh3`` is its transfer checksum as it arrived,
        recorded so a push of this model sends it as it is (fedtier.transport.streams).
        ``extra`` adds fields to the record (the reducer strategy's ``strategy_state``).
        """
        model_id = new_id()
        stored = self.models.put_file(model_id, path, sha256=sha256, link=take)
        record = {"id": model_id, "parent_id": parent_id, "round_id": round_id, "session_id": session_id,
                  "round": round_number, "kind": kind, "sha256": stored.sha256, "size": stored.size,
                  "created_at": time.time()}
        if xxh3:
            record["xxh3"] = xxh3
        for key, value in (extra or {}).items():
            record.setdefault(key, value)
        self.state.insert(MODELS, record)
        log.info("model %s committed (parent %s, round %s, sha256 %s)", model_id, parent_id, round_number,
                 stored.sha256[:12])
        return record

    def get(self, model_id: str) -> dict[str, Any] | None:
        return self.state.get(MODELS, model_id)

    def all(self) -> list[dict[str, Any]]:
        return self.state.find(MODELS)

    def latest(self) -> dict[str, Any] | None:
        found = self.state.find(MODELS, order_by="created_at", descending=True, limit=1)
        return found[0] if found else None

    def fetch(self, model_id: str, dest: Path) -> Path:
        """Copy a model out of the store; the store verifies its sha256 on the way."""
        self.models.get_file(model_id, dest)
        return dest

    # ---- production
    def promote(self, model_id: str, by: str, note: str = "") -> dict[str, Any]:
        """Make trail model ``model_id`` the production model; KeyError if it is not in the trail."""
        model = self.get(model_id)
        if model is None:
            raise KeyError(model_id)
        record = {"id": new_id(), "model_id": model_id, "sha256": model["sha256"], "round": model.get("round", 0),
                  "promoted_by": by, "promoted_at": time.time(), "note": note}
        self.state.insert(PROMOTIONS, record)
        log.info("model %s promoted to production by %s", model_id, by)
        return record

    def promotions(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The promotion history, oldest first (insertion order: clocks may step back)."""
        return self.state.find(PROMOTIONS, limit=limit)

    def production(self) -> dict[str, Any] | None:
        """The production model's record with the promotion that made it so, or None."""
        found = self.state.find(PROMOTIONS, descending=True, limit=1)
        if not found:
            return None
        model = self.get(found[0]["model_id"])
        return None if model is None else {**model, "promotion": found[0]}

"""The reducer tier's strategy across the rounds of a session, and its state in the trail.

A server optimiser (FedAdam's moments) lives for a session. Its state after a round is
written to the model store and named in the record of the model that round produced, so
the state travels with the trail: the next round, in this process or in a reducer
restarted after a crash, continues from the state of the model it starts from (the session
the crash interrupted is continued by the next one started from its model). A round
that fails leaves no model, and the state it may have advanced is dropped with it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from fedtier.aggregators import REDUCER, Strategy, strategy_class
from fedtier.helpers.base import Helper
from fedtier.ids import new_id
from fedtier.storage.collections import SESSIONS
from fedtier.reducer.trail import ModelTrail
from fedtier.round_config import RoundConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Live:
    model_id: str      # the model the strategy's last round produced
    session_id: str
    choice: tuple[str, str]  # the strategy's name and parameters, as chosen
    strategy: Strategy


class StrategyStates:
    def __init__(self, trail: ModelTrail) -> None:
        self.trail = trail
        self._live: _Live | None = None

    def strategy_for(self, config: RoundConfig, session_id: str, base: Mapping[str, Any], helper: Helper,
                     scratch: Path) -> Strategy:
        """The reducer's strategy for a round from ``base``: the instance that produced
        ``base`` in this session if this process has it, else a new one that loads the
        state stored with ``base`` (a restart), else a fresh one (a new session)."""
        choice = config.strategy(REDUCER)
        key = (choice.name, repr(sorted(choice.params.items())))
        live, self._live = self._live, None  # a round that fails must not leave an advanced state behind
        if live is not None and live.model_id == base.get("id") and live.session_id == session_id \
                and live.choice == key:
            return live.strategy
        cls = strategy_class(choice.name, REDUCER)
        strategy = cls(helper, **dict(choice.params))
        stored = base.get("strategy_state")
        if cls.stateful and isinstance(stored, Mapping) and stored.get("strategy") == choice.name \
                and self._continues(base, session_id, stored, strategy):
            path = scratch / "strategy-state-in"
            self.trail.models.get_file(str(stored["id"]), path)
            strategy.load_state(path)
            path.unlink(missing_ok=True)
            log.info("strategy %s continues from the state stored with model %s", choice.name, base.get("id"))
        return strategy

    def _continues(self, base: Mapping[str, Any], session_id: str, stored: Mapping[str, Any],
                   strategy: Strategy) -> bool:
        """Whether a round from ``base`` goes on with the state stored with it: in the session
        that made it, or in the next session started from it when a reducer restart
        interrupted that one and the strategy is the same, with the same settings (the
        session a crash cut short continues; one that ended starts its optimiser afresh)."""
        if base.get("session_id") == session_id:
            return True
        made_by = self.trail.state.get(SESSIONS, str(base["session_id"])) if base.get("session_id") else None
        return bool(made_by) and made_by.get("status") == "interrupted" \
            and stored.get("settings") == dict(strategy.settings)

    def save(self, strategy: Strategy, scratch: Path) -> dict[str, Any] | None:
        """Store the state the strategy holds after a round; the reference for the model record."""
        if not strategy.stateful:
            return None
        path = scratch / "strategy-state-out"
        if not strategy.save_state(path):
            return None
        state_id = new_id()
        stored = self.trail.models.put_file(state_id, path, link=True)
        return {"strategy": strategy.name, "settings": dict(strategy.settings), "id": state_id,
                "sha256": stored.sha256, "size": stored.size}

    def produced(self, model_id: str, session_id: str, config: RoundConfig, strategy: Strategy) -> None:
        """The round committed ``model_id``: the next round of the session continues with ``strategy``."""
        choice = config.strategy(REDUCER)
        self._live = _Live(model_id, session_id, (choice.name, repr(sorted(choice.params.items()))), strategy)

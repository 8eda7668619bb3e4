"""The OpenAPI 3.1 document of the reducer's HTTP API, served at ``/api/v1/openapi.json``.

Written by hand next to the routes it describes. tests/test_openapi.py checks that
every route is documented and fuzzes a live reducer against this document, so it
cannot quietly drift from the code.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any

from flask import Blueprint, jsonify

from fedtier import __version__
from fedtier.aggregators import STRATEGIES, TIERS
from fedtier.helpers import known_helpers
from fedtier.reducer import participation
from fedtier.reducer.control import MAX_ROUNDS, ROUND_STATUSES, SESSION_OUTCOMES, STOP_AFTER_ROUND, STOP_MODES
from fedtier.reducer.live import PAGE_DEFAULT, PAGE_MAX, STATES, WAITING_SHOWN
from fedtier.reducer.network import CLIENT_STATES, MAX_PAGE, MAX_QUERY_CHARS
from fedtier.reducer.network import MAX_OFFSET as MAX_CLIENT_OFFSET
from fedtier.reducer.round_pages import MAX_OFFSET, ROUNDS_PAGE
from fedtier.reducer.trail import MAX_MODELS_PAGE, MAX_NOTE_CHARS
from fedtier.reducer.schedules import MAX_CRON_CHARS, MAX_NAME_CHARS, MAX_PERIOD_S, OUTCOMES, SCHEDULE_STATES
from fedtier.round_config import MAX_CLIENTS, MAX_MULTIPLE, MAX_SAMPLING_SEED, MAX_WEIGHT, RoundConfig

bp = Blueprint("openapi", __name__)

NUMBER = {"type": "number"}
INTEGER = {"type": "integer"}
STRING = {"type": "string"}
OPT_STRING = {"type": ["string", "null"]}
OPT_NUMBER = {"type": ["number", "null"]}
OBJECT = {"type": "object"}
QUORUM = {"type": "object", "required": ["min_clients", "clients_requested", "wait_s"], "properties": {
    "min_clients": INTEGER, "clients_requested": INTEGER, "wait_s": NUMBER}}
SESSION_STATUS = ("running; succeeded: every requested round succeeded; failed: the session ended on its own "
                  "with any round failed (or an internal error); stopped: the user's /stop cut it short; "
                  "interrupted: the reducer restarted while it ran. Records of older versions saying finished "
                  "are given succeeded or failed when the reducer starts.")
ROUND_STATUS = ("running; success: the round committed a model; failed; stopped: the user aborted it, or "
                "stopped the session while it waited for its clients (not a failure)")
WEEK = 7 * 24 * 3600


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(name: str) -> dict[str, Any]:
    return {"anyOf": [ref(name), {"type": "null"}]}


def _tier_schema(tier: str) -> dict[str, Any]:
    """The strategies one tier may run, each with its parameters, from the one registry."""
    allowed = sorted(n for n, c in STRATEGIES.items() if tier in c.tiers)
    return {"description": f"the {tier} tier's strategy", "oneOf": [
        {"type": "string", "enum": allowed},
        *({"type": "object", "additionalProperties": False, "required": ["name"],
           "description": STRATEGIES[name].summary + (" (keeps state across the session's rounds)"
                                                      if STRATEGIES[name].stateful else ""),
           "properties": {"name": {"const": name},
                          **{k: {**p.json_schema(), "default": p.default} for k, p in STRATEGIES[name].params.items()}}}
          for name in allowed)]}


SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error", "status"], "properties": {
        "error": STRING, "status": INTEGER, "field": STRING, "state": STRING,
        "limit": STRING}},  # the FEDTIER_MAX_ setting of the bound that was exceeded
    "Model": {"type": "object", "required": ["id", "parent_id", "round", "sha256", "size", "created_at"],
              "properties": {"id": STRING, "parent_id": OPT_STRING, "round_id": OPT_STRING,
                             "session_id": OPT_STRING, "round": INTEGER, "kind": STRING, "sha256": STRING,
                             "xxh3": STRING, "size": INTEGER, "created_at": NUMBER}},
    "Combiner": {"type": "object", "required": ["name", "address", "port", "online"], "properties": {
        "name": STRING, "address": STRING, "port": INTEGER, "online": {"type": "boolean"},
        "active_clients": INTEGER, "last_seen": NUMBER, "added_at": NUMBER, "round_in_progress": STRING,
        "instance_id": {"type": "string", "description": "drawn when the combiner process starts: it changes on a restart"},
        "unreachable_since": {**OPT_NUMBER, "description": "when the reducer's status calls to it began failing; "
                                                           "null while it answers"},
        "last_error": {**OPT_STRING, "description": "what the last failed status call got (gRPC code: details)"},
        "last_error_hint": {**OPT_STRING, "description": "the likely cause, when one is known"},
        "why": {**OPT_STRING, "description": "why it is offline, in a sentence (unreachable at which address since "
                                             "when, with what error; or not seen since when); null while online"}}},
    "Client": {"type": "object", "required": ["name"], "properties": {
        "name": STRING, "combiner": STRING, "active": {"type": "boolean"}, "last_heartbeat": NUMBER,
        "rounds_joined": INTEGER, "assigned_at": NUMBER,
        "why": {**OPT_STRING, "description": "why it is not active: its combiner is offline, its heartbeat is "
                                             "silent since when, or it never sent one; null while active"}}},
    "ClientRound": {"type": "object", "required": ["id", "client", "round_id", "seq", "outcome"], "properties": {
        "id": STRING, "client": STRING, "combiner": STRING, "round_id": STRING,
        "seq": {**INTEGER, "description": "the round's own number (Round.seq)"},
        "round": {**INTEGER, "description": "the number of the model the round built"}, "session_id": STRING,
        "round_status": {"enum": list(ROUND_STATUSES)},
        "outcome": {"enum": list(participation.OUTCOMES), "description": "reported: chosen, its update arrived; "
                    "failed: chosen, it failed, was rejected or did not answer (error says); validated: not "
                    "chosen to train, it validated the round's global model"},
        "error": {**OPT_STRING, "maxLength": participation.MAX_ERROR_CHARS},
        "combiner_ok": {"type": "boolean", "description": "its combiner completed the round"},
        "capped": {"type": "boolean", "description": "its update counted with fewer examples than it reported "
                                                     "(the round's weight cap)"},
        "num_examples": {"type": ["integer", "null"]}, "weight_used": {"type": ["integer", "null"]},
        "train_metrics": {"type": "object", "additionalProperties": NUMBER,
                          "description": "the numbers its train returned with the update (local); at most "
                                         "FEDTIER_MAX_REPORT_METRICS, names at most FEDTIER_MAX_METRIC_NAME_CHARS"},
        "validation": {"type": ["object", "null"], "additionalProperties": NUMBER,
                       "description": "its validation of the round's global model, bounded the same way"},
        "validation_examples": {"type": ["integer", "null"]},
        "metrics_dropped": {**INTEGER, "description": "metrics over those bounds, or not finite, not kept"},
        "timings": {"type": "object", "additionalProperties": NUMBER}, "created_at": NUMBER}},
    "Session": {"type": "object", "required": ["id", "status", "rounds_requested", "config", "started_at"],
                "properties": {
                    "id": STRING, "rounds_requested": INTEGER, "rounds_succeeded": INTEGER,
                    "rounds_failed": INTEGER, "rounds_stopped": INTEGER, "config": OBJECT,
                    "round_ids": {"type": "array", "items": STRING},
                    "status": {"enum": list(SESSION_OUTCOMES), "description": SESSION_STATUS},
                    "stop_requested": {"enum": [*STOP_MODES, None],
                                       "description": "the stop mode the user asked for, if any"},
                    "started_at": NUMBER, "finished_at": OPT_NUMBER,
                    "schedule_id": {"type": "string", "description": "the schedule that started it, if one did"}}},
    "Round": {"type": "object", "required": ["id", "session_id", "round", "status", "model_in"], "properties": {
        "id": STRING, "session_id": STRING,
        "round": {**INTEGER, "description": "the number of the model this round builds: a failed round builds "
                                            "none, so the next round has the same one"},
        "seq": {**INTEGER, "description": "this round's own number on this reducer: distinct and increasing, "
                                          "failed rounds included"},
        "status": {"enum": list(ROUND_STATUSES), "description": ROUND_STATUS}, "model_in": STRING, "model_out": OPT_STRING,
        "started_at": NUMBER, "finished_at": OPT_NUMBER,
        "timings": {"type": "object", "additionalProperties": NUMBER},
        "metrics": {"type": "object", "additionalProperties": NUMBER},
        "reducer_metrics": {"type": "object", "additionalProperties": NUMBER,
                            "description": "the new model's metrics on the operator's held-out set, scored by the "
                                           "reducer (FEDTIER_REDUCER_EVAL_PROJECT/_DATA); empty when not set"},
        "reducer_metrics_error": {"type": "string", "description": "why the reducer's evaluation gave no metrics"},
        "pushed": {"type": "object", "additionalProperties": {"enum": ["uploaded", "adopted"]}},
        "combiners": {"type": "array", "description": "each combiner's part: its result and the quorum the reducer "
                                                      "gave it (quorum: min_clients, clients_requested, wait_s)",
                      "items": {"type": "object", "properties": {
                          "name": STRING, "quorum": QUORUM,
                          "clients": {"type": "array", "items": ref("TaskTimeline"),
                                      "description": "each task as it ended, timed on the combiner's clock: the "
                                                     "round's timeline (/rounds/{id} draws it)"}}}},
        "validation_quorums": {"type": "object", "additionalProperties": QUORUM,
                               "description": "the quorum each combiner's validation round ran with"},
        "participants": {"type": "array", "items": STRING},
        "participants_count": {**INTEGER, "description": "in a summary (view=summary, status.last_round): how many "
                                                         "participants; the per-client lists (participants, capped, "
                                                         "each combiner's updates, clients, failures) become counts"},
        "capped_count": INTEGER,
        "capped": {"type": "array", "description": "clients whose reported examples were cut to the weight cap",
                   "items": {"type": "object", "required": ["client", "combiner", "reported", "used"], "properties": {
                       "client": STRING, "combiner": STRING, "reported": INTEGER, "used": INTEGER}}},
        "capped_combiners": {"type": "array",
                             "description": "combiners counted with less than they claimed: what their clients "
                                            "delivered under the weight cap",
                             "items": {"type": "object", "required": ["combiner", "reported", "used"], "properties": {
                                 "combiner": STRING, "reported": INTEGER, "used": INTEGER}}},
        "error": OPT_STRING}},
    "TaskTimeline": {"type": "object", "required": ["client", "state", "started", "ended"], "properties": {
        "client": STRING, "state": {"enum": [*STATES, "unknown"]},
        "started": {"type": "object", "additionalProperties": NUMBER,
                    "description": "phase (download, train, upload, validate) -> seconds after the combiner sent "
                                   "the round's tasks that the client said it began it"},
        "ended": {**NUMBER, "description": "seconds after the tasks were sent that it reported or failed; 0 while open"},
        "detail": {**STRING, "description": "why it failed or was capped (at most 200 characters)"}}},
    "LiveClient": {"allOf": [ref("TaskTimeline"), {"type": "object", "required": ["combiner", "state_for_s"],
                                                   "properties": {"combiner": STRING, "state_for_s": NUMBER}}]},
    "CurrentRound": {"type": "object", "required": ["round", "as_of", "counts", "total", "combiners", "waiting_for",
                                                    "waiting_total", "clients", "matching", "offset", "limit"],
                     "properties": {
        "round": {"anyOf": [{"type": "null"}, {"type": "object", "properties": {
            "id": STRING, "seq": INTEGER, "round": INTEGER, "session_id": STRING, "started_at": NUMBER,
            "phase": {**STRING, "description": "the reducer's state: instructing (waiting for clients, pushing the "
                                               "model) or monitoring (combiners running the round)"},
            "elapsed_s": NUMBER}}], "description": "null when no round is running"},
        "as_of": NUMBER,
        "counts": {"type": "object", "additionalProperties": INTEGER,
                   "description": f"tasks per state over every combiner: {', '.join(STATES)}; they add up to total"},
        "total": INTEGER,
        "combiners": {"type": "array", "items": {"type": "object", "properties": {
            "name": STRING, "kind": {"enum": ["training", "validation", "unknown"]}, "round_id": STRING,
            "finished": {"type": "boolean", "description": "it returned its result: these are its final states"},
            "elapsed_s": NUMBER, "as_of": NUMBER, "counts": {"type": "object", "additionalProperties": INTEGER},
            "total": INTEGER}}},
        "waiting_for": {"type": "array", "maxItems": WAITING_SHOWN, "items": ref("LiveClient"),
                        "description": f"the clients whose task is still open, the longest in its state first "
                                       f"(at most {WAITING_SHOWN}; waiting_total counts them all)"},
        "waiting_total": INTEGER,
        "clients": {"type": "array", "maxItems": PAGE_MAX, "items": ref("LiveClient"),
                    "description": "one page of the clients matching state and combiner, by combiner and name"},
        "matching": INTEGER, "offset": INTEGER, "limit": INTEGER}},
    "Validation": {"type": "object", "required": ["id", "round_id", "model_id", "client", "metrics"],
                   "properties": {"id": STRING, "round_id": STRING, "round": INTEGER, "model_id": STRING,
                                  "client": STRING, "combiner": STRING, "metrics": OBJECT,
                                  "num_examples": INTEGER, "created_at": NUMBER}},
    "Status": {"type": "object", "required": ["state", "combiners", "clients"], "properties": {
        "state": {"enum": ["setup", "idle", "instructing", "monitoring"]}, "instance": STRING,
        "latest_model": nullable("Model"), "production_model": nullable("ProductionModel"),
        "session": nullable("Session"),
        "last_round": {**nullable("Round"), "description": "the newest round as a summary: its per-client lists as "
                                                           "counts (participants_count, ...), the same size at any "
                                                           "number of clients"},
        "combiners_online": INTEGER, "combiners": INTEGER, "clients_active": INTEGER, "clients": INTEGER}},
    "Promotion": {"type": "object", "required": ["id", "model_id", "sha256", "promoted_by", "promoted_at"],
                  "properties": {"id": STRING, "model_id": STRING, "sha256": STRING, "round": INTEGER,
                                 "promoted_by": {"type": "string", "description": "how the admin acted: its token, "
                                                 "a browser logged in with it, or anyone on an open reducer"},
                                 "promoted_at": NUMBER, "note": STRING}},
    "ProductionModel": {"allOf": [ref("Model"), {"type": "object", "required": ["promotion"],
                                                 "properties": {"promotion": ref("Promotion")}}]},
    "Schedule": {"type": "object", "required": ["id", "name", "state", "settings", "on_package", "created_at"],
                 "properties": {
                     "id": STRING, "name": STRING, "every_seconds": {"type": ["integer", "null"]},
                     "cron": {"type": ["string", "null"], "description": "five fields, read in UTC"},
                     "on_package": {"type": "boolean"}, "settings": OBJECT,
                     "state": {"enum": list(SCHEDULE_STATES)}, "created_by": STRING, "created_at": NUMBER,
                     "next_at": {"type": ["number", "null"], "description": "when its timer next fires"},
                     "last_fired_at": OPT_NUMBER,
                     "last_outcome": {"enum": [*OUTCOMES, None], "description": "started: a session; skipped: one "
                                      "was running, or no seed yet (last_error says); failed: see last_error"},
                     "last_session_id": OPT_STRING, "last_error": OPT_STRING,
                     "fired": INTEGER, "skipped": INTEGER}},
    "Package": {"type": "object", "required": ["sha256", "size"], "properties": {
        "id": STRING, "sha256": STRING, "size": INTEGER, "files": INTEGER, "created_at": NUMBER}},
    "RoundSettings": {"type": "object", "additionalProperties": False, "properties": {
        "rounds": {"type": "integer", "minimum": 1, "maximum": MAX_ROUNDS},
        "clients_required": {"type": "integer", "minimum": 1, "maximum": MAX_CLIENTS},
        "clients_requested": {"type": "integer", "minimum": 0, "maximum": MAX_CLIENTS,
                              "description": "0 asks every active client; else at least clients_required"},
        "round_timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": WEEK},
        "wait_for_clients": {"type": "number", "exclusiveMinimum": 0, "maximum": WEEK},
        "aggregation": {
            "type": "object", "additionalProperties": False,
            "description": "the strategy of each tier: the combiners reduce their clients' updates with "
                           "`combiner`, the reducer the combiner models with `reducer` (fedavg where not given); "
                           "a strategy's name alone, or an object with its name and parameters",
            "properties": {tier: _tier_schema(tier) for tier in TIERS}},
        "aggregator": {"enum": sorted(n for n, c in STRATEGIES.items() if len(c.tiers) == len(TIERS)),
                       "description": "one strategy for both tiers (the older form of `aggregation`; not with it)"},
        "aggregator_kwargs": {
            "type": "object", "additionalProperties": False,
            "description": "the parameters of `aggregator`: " + "; ".join(
                f"{name}: {', '.join(sorted(cls.params)) or 'none'}" for name, cls in sorted(STRATEGIES.items())),
            "properties": {k: p.json_schema() for cls in STRATEGIES.values() for k, p in cls.params.items()}},
        "helper": {"enum": known_helpers()},
        "validate": {"type": "boolean"}, "task": OBJECT,
        "weight_cap_median": {"type": "number", "minimum": 0, "maximum": MAX_MULTIPLE,
                              "default": RoundConfig.weight_cap_median,
                              "description": "no client counts with more than this multiple of the round's lower "
                                             "median examples; 0 (off) or at least 1"},
        "weight_cap": {"type": "integer", "minimum": 0, "maximum": MAX_WEIGHT,
                       "default": RoundConfig.weight_cap,
                       "description": "no client counts with more examples than this; 0 = off"},
        "sampling_seed": {"type": "integer", "minimum": 0, "maximum": MAX_SAMPLING_SEED,
                          "default": RoundConfig.sampling_seed,
                          "description": "when fewer than all clients are asked, which ones: 0 draws afresh "
                                         "each round; N >= 1 draws from N, the round number and the combiner, "
                                         "so a run can be repeated"}}},
}
# a round setting without an entry above is still listed, typed from its declaration
_TYPES = {"int": INTEGER, "float": NUMBER, "bool": {"type": "boolean"}, "str": STRING}
for _field in fields(RoundConfig):
    SCHEMAS["RoundSettings"]["properties"].setdefault(_field.name, _TYPES.get(str(_field.type), OBJECT))
# the start page posts the same settings as form fields (strings; task and aggregator_kwargs as JSON text)
SCHEMAS["RoundSettingsForm"] = {"type": "object", "additionalProperties": False,
                                "properties": {name: STRING for name in SCHEMAS["RoundSettings"]["properties"]}}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    reasons = {400: "invalid input; `field` names the culprit", 401: "missing or invalid token",
               403: "a valid credential, but for another role or another name",
               404: "no such id", 409: "not allowed in the reducer's current state (named in `state`), or "
                                      "(/add) the name is held by a live combiner at another address",
               413: "too large; `limit` names the bound's setting", 415: "the body's Content-Type is not one the route takes (named in the error)",
               422: "(/add) the announced address did not answer as that combiner",
               503: "no combiner is online yet",
               500: "the stored bytes are damaged; `error` names the model (never sent as a 200)",
               507: "the model store or state store has no room; `error` names which"}
    return {str(code): _json(ref("Error"), reasons[code]) for code in codes}


# a form posted by a browser itself (Accept: text/html, reducer/browser.py) gets this instead of
# the JSON answers, success or error alike
BROWSER_FORM = {"303": {"description": "to a browser posting the form without JavaScript (it asks for text/html): "
                                       "see the page in Location, which shows the outcome or the error"}}


def _list(name: str, params: list[dict[str, Any]] | None = None, errors: tuple[int, ...] = (400, 401),
          total: str | None = None) -> dict[str, Any]:
    """``total``: what the X-Total-Count header counts, when the list sends one."""
    ok = _json({"type": "array", "items": ref(name)}, f"{name.lower()}s")
    if total:
        ok["headers"] = {"X-Total-Count": {"description": total, "schema": INTEGER}}
    return {"get": {"summary": f"list {name.lower()}s", "parameters": params or [],
                    "responses": {"200": ok, **_errors(*errors)}}}


def _one(name: str, param: str) -> dict[str, Any]:
    return {"get": {"summary": f"one {name.lower()}",
                    "parameters": [{"name": param, "in": "path", "required": True, "schema": STRING}],
                    "responses": {"200": _json(ref(name), name.lower()), **_errors(401, 404)}}}


LIMIT = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100000}}
ROUND_PAGE_PARAMS = [
    {**LIMIT, "description": f"at most this many rounds; with offset or last, from 1 to {ROUNDS_PAGE} "
                             f"(the default then)"},
    {"name": "session_id", "in": "query", "schema": STRING, "description": "only this session's rounds"},
    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET},
     "description": "skip this many rounds: rounds are listed in the order they started and that order never "
                    "changes, so offset=N then asks only for rounds newer than the N already held"},
    {"name": "last", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": ROUNDS_PAGE},
     "description": "only the newest this many rounds (not with offset)"},
]
PAGE_HEADERS = {
    "X-Total-Count": {"description": "rounds matching session_id (all of them, not only this page)",
                      "schema": INTEGER},
    "X-Offset": {"description": "the index of the first round returned, counted from 0", "schema": INTEGER},
}


def _paged(operation: dict[str, Any]) -> dict[str, Any]:
    operation["get"]["responses"]["200"]["headers"] = PAGE_HEADERS
    return operation


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "fedtier reducer", "version": __version__,
                 "description": "Global state, the model trail, discovery, and sessions of rounds."},
        "components": {"schemas": SCHEMAS, "securitySchemes": {
            "token": {"type": "apiKey", "in": "header", "name": "Authorization",
                      "description": "'Token <t>': the admin token (writes), or a signed credential: a combiner's "
                                     "for /add under its name, a client's for /assign and the package"}}},
        "security": [{"token": []}, {}],
        "paths": {
            "/api/v1/openapi.json": {"get": {"summary": "this document",
                                             "responses": {"200": _json(OBJECT, "the OpenAPI document")}}},
            "/api/v1/status": {"get": {"summary": "reducer state and counts",
                                       "parameters": [{"name": "brief", "in": "query", "description": "true: "
                                                       "without session and last_round (a page polling for the "
                                                       "state alone)", "schema": {"enum": ["true", "false"]}}],
                                       "responses": {"200": _json(ref("Status"), "status"), **_errors(400, 401)}}},
            "/api/v1/combiners": _list("Combiner"),
            "/api/v1/clients": {"get": {
                "summary": "clients by name; with a search or a page, those matching (X-Total-Count: how many)",
                "parameters": [
                    {"name": "q", "in": "query", "description": "a part of the name, any case",
                     "schema": {"type": "string", "maxLength": MAX_QUERY_CHARS}},
                    {"name": "state", "in": "query", "schema": {"enum": list(CLIENT_STATES)}},
                    {"name": "combiner", "in": "query", "schema": {"type": "string", "maxLength": MAX_QUERY_CHARS}},
                    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0,
                                                                 "maximum": MAX_CLIENT_OFFSET}},
                    {"name": "limit", "in": "query", "description": "without it, every match",
                     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}}],
                "responses": {"200": {**_json({"type": "array", "items": ref("Client")}, "clients"), "headers": {
                    "X-Total-Count": {"description": "clients matching, before offset and limit",
                                      "schema": INTEGER}}}, **_errors(400, 401)}}},
            "/api/v1/clients/{name}/history": {"get": {
                "summary": "the client's part in each round, newest first, a page at a time, with its state now",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": STRING},
                    {"name": "limit", "in": "query", "schema": {
                        "type": "integer", "minimum": 1, "maximum": participation.MAX_HISTORY_PAGE,
                        "default": participation.HISTORY_PAGE}},
                    {"name": "before", "in": "query", "description": "only rounds with a smaller seq: the "
                     "next_before of the page before", "schema": {"type": "integer", "minimum": 0,
                                                                 "maximum": participation.MAX_SEQ}},
                    {"name": "after", "in": "query", "description": "only rounds with a larger seq: what is new "
                     "since the newest a page holds", "schema": {"type": "integer", "minimum": 0,
                                                                "maximum": participation.MAX_SEQ}}],
                "responses": {"200": _json({"type": "object", "required": ["client", "info", "records",
                                                                           "next_before"], "properties": {
                    "client": STRING, "info": nullable("Client"),
                    "records": {"type": "array", "items": ref("ClientRound")},
                    "next_before": {"type": ["integer", "null"], "description": "before= of the next (older) "
                                    "page; null on the last"}}}, "history"), **_errors(400, 401, 404)}}},
            "/api/v1/clients/summary": {"get": {
                "summary": "client counts by state and by combiner (no client list)",
                "responses": {"200": _json({"type": "object", "required": ["total", "active", "inactive",
                                                                           "by_combiner"], "properties": {
                    "total": INTEGER, "active": INTEGER, "inactive": INTEGER,
                    "by_combiner": {"type": "object", "additionalProperties": {
                        "type": "object", "properties": {"active": INTEGER, "inactive": INTEGER}}}}},
                    "counts"), **_errors(401)}}},
            "/api/v1/sessions": _list("Session", [LIMIT]),
            "/api/v1/sessions/{session_id}": _one("Session", "session_id"),
            "/api/v1/rounds": _paged(_list("Round", [*ROUND_PAGE_PARAMS, {
                "name": "view", "in": "query", "schema": {"enum": ["full", "summary"]},
                "description": "summary: each round without its per-client lists (counts instead), what a chart "
                               "needs at any number of clients; full (default): the records as stored"}])),
            "/api/v1/rounds.csv": {"get": {
                "summary": "the same rounds as /api/v1/rounds (same parameters) as CSV: session_id, session_round, "
                           "seq, model_round, status, started_at, finished_at, seconds, one column per metric "
                           "(the reducer's evaluation as reducer:<name>), error; a text cell starting with = + - @ "
                           "is prefixed with ' so a spreadsheet does not run it",
                "parameters": ROUND_PAGE_PARAMS,
                "responses": {"200": {"description": "rounds as CSV", "headers": PAGE_HEADERS, "content": {
                    "text/csv": {"schema": {"type": "string"}}}}, **_errors(400, 401)}}},
            "/api/v1/rounds/current": {"get": {
                "summary": "the round in progress, client by client: counts per state for each combiner, who the "
                           "round waits for, and one page of its clients (bounded at any number of clients)",
                "parameters": [
                    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0,
                                                                  "maximum": 10_000_000}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": PAGE_MAX,
                                                                 "default": PAGE_DEFAULT}},
                    {"name": "state", "in": "query", "schema": {"enum": list(STATES)}},
                    {"name": "combiner", "in": "query", "schema": {"type": "string", "minLength": 1,
                                                                    "maxLength": 128}}],
                "responses": {"200": _json(ref("CurrentRound"), "the round in progress"), **_errors(400, 401)}}},
            "/api/v1/rounds/{round_id}": _one("Round", "round_id"),
            "/api/v1/models": _list("Model", [
                {"name": "descending", "in": "query", "description": "newest first",
                 "schema": {"enum": ["true", "false"]}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                            "maximum": MAX_MODELS_PAGE}},
                {"name": "after", "in": "query", "description": "a model id: only the models committed after it, "
                 "among the newest limit (default 100)", "schema": {"type": "string", "maxLength": 128}}],
                errors=(400, 401, 404), total="models in the whole trail"),
            "/api/v1/models/{model_id}": _one("Model", "model_id"),
            "/api/v1/models/{model_id}/download": {"get": {
                "summary": "the model's bytes (safetensors layout); X-Model-SHA256 and Repr-Digest (RFC 9530) "
                           "carry the hash; damage found while streaming breaks the transfer short of "
                           "Content-Length",
                "parameters": [{"name": "model_id", "in": "path", "required": True, "schema": STRING}],
                "responses": {"200": {"description": "model file", "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                    **_errors(401, 404, 500)}}},
            "/api/v1/models/{model_id}/promote": {"post": {
                "summary": "make a trail model the production model (admin); the history keeps every promotion",
                "parameters": [{"name": "model_id", "in": "path", "required": True, "schema": STRING}],
                "requestBody": {"required": False, "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"note": {"type": "string", "maxLength": MAX_NOTE_CHARS}}}}}},
                "responses": {"201": _json({"type": "object", "required": ["promotion", "model"], "properties": {
                    "promotion": ref("Promotion"), "model": ref("ProductionModel")}}, "promoted"),
                    **_errors(400, 401, 404, 413, 415, 507)}}},
            "/api/v1/models/production": {"get": {
                "summary": "the production model's record and the promotion that made it so",
                "responses": {"200": _json(ref("ProductionModel"), "the production model"), **_errors(401, 404)}}},
            "/api/v1/models/production/download": {"get": {
                "summary": "the production model's bytes, as /api/v1/models/{model_id}/download serves them",
                "responses": {"200": {"description": "model file", "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                    **_errors(401, 404, 500)}}},
            "/api/v1/promotions": {"get": {
                "summary": "every promotion, oldest first; the last names the production model",
                "responses": {"200": _json({"type": "array", "items": ref("Promotion")}, "promotions"),
                              **_errors(401)}}},
            "/api/v1/schedules": {
                "get": {"summary": "list schedules", "responses": {
                    "200": _json({"type": "array", "items": ref("Schedule")}, "schedules"), **_errors(401)}},
                "post": {
                    "summary": "start sessions every N seconds, on a cron timetable (UTC) or when a compute "
                               "package is uploaded (admin)",
                    "description": "settings is a /start body, checked by the same rule: a 400 names the field "
                                   "as settings.<name> with /start's message. A schedule due while a session "
                                   "runs is skipped and records it; one missed while the reducer was down fires "
                                   "once when it is up. 409 past FEDTIER_MAX_SCHEDULES.",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {
                        "type": "object", "required": ["name"], "additionalProperties": False, "properties": {
                            "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME_CHARS},
                            "every_seconds": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_PERIOD_S,
                                              "description": "at least FEDTIER_SCHEDULE_MIN_SECONDS"},
                            "cron": {"type": ["string", "null"], "maxLength": MAX_CRON_CHARS},
                            "on_package": {"type": "boolean", "default": False},
                            "settings": ref("RoundSettings")}}}}},
                    "responses": {"201": _json({"type": "object", "required": ["schedule"],
                                                "properties": {"schedule": ref("Schedule")}}, "created"),
                                  **_errors(400, 401, 409, 413, 415, 507)}}},
            "/api/v1/schedules/{schedule_id}": {
                "get": _one("Schedule", "schedule_id")["get"],
                "delete": {"summary": "remove a schedule (admin)",
                           "parameters": [{"name": "schedule_id", "in": "path", "required": True, "schema": STRING}],
                           "responses": {"200": _json({"type": "object", "required": ["deleted"],
                                                       "properties": {"deleted": STRING}}, "deleted"),
                                         **_errors(401, 404)}}},
            **{f"/api/v1/schedules/{{schedule_id}}/{verb}": {"post": {
                "summary": f"{verb} a schedule (admin)" + (": its timer counts from now" if verb == "resume" else ""),
                "parameters": [{"name": "schedule_id", "in": "path", "required": True, "schema": STRING}],
                "responses": {"200": _json({"type": "object", "required": ["schedule"],
                                            "properties": {"schedule": ref("Schedule")}}, f"{verb}d"),
                              **_errors(401, 404)}}} for verb in ("pause", "resume")},
            "/api/v1/validations": _list("Validation", [LIMIT, {"name": "round_id", "in": "query", "schema": STRING}]),
            "/seed": {"post": {
                "summary": "commit the seed model (admin)",
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                    "type": "object", "required": ["seed"],
                    "properties": {"seed": {"type": "string", "format": "binary"}}}}}},
                "responses": {"201": _json({"type": "object", "required": ["model", "state"],
                                            "properties": {"model": ref("Model"), "state": STRING}}, "seeded"),
                              **BROWSER_FORM, **_errors(400, 401, 409, 413, 415, 507)}}},
            "/start": {"post": {
                "summary": "start a session of rounds (admin)",
                "description": "Every setting is checked before anything changes: a 400 names the field "
                               "(`rounds`, `aggregator_kwargs.<name>`) and lists the accepted values.",
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": ref("RoundSettings")},
                    "application/x-www-form-urlencoded": {"schema": ref("RoundSettingsForm")}}},
                "responses": {"201": _json({"type": "object", "required": ["session_id", "session", "state"],
                                            "properties": {"session_id": STRING, "session": ref("Session"),
                                                           "state": STRING,
                                                           "warnings": {"type": "array", "items": STRING,
                                                                        "description": "e.g. fewer active "
                                                                        "clients than a round requires"}}},
                                      "started"),
                              **BROWSER_FORM, **_errors(400, 401, 409, 413, 415)}}},
            "/stop": {"post": {
                "summary": "stop the running session (admin)",
                "description": "mode after_round (the default, also for an empty body) lets the round in "
                               "progress finish and keeps its model, then ends the session; abort tells the "
                               "combiners to drop the round now, which is recorded as stopped. Either way "
                               "the session ends stopped.",
                "requestBody": {"required": False, "content": {
                    media: {"schema": {"type": "object", "additionalProperties": False, "properties": {
                        "mode": {"enum": list(STOP_MODES), "default": STOP_AFTER_ROUND}}}}
                    for media in ("application/json", "application/x-www-form-urlencoded")}},
                "responses": {"202": _json({"type": "object", "required": ["stopping", "mode", "state"], "properties": {
                    "stopping": {"type": "boolean"}, "mode": {"enum": list(STOP_MODES)},
                    "session_id": OPT_STRING, "state": STRING}}, "stopping"), **BROWSER_FORM, **_errors(400, 401, 409, 415)}}},
            "/add": {"post": {
                "summary": "a combiner announces itself (its own combiner credential, or admin); a live "
                           "combiner's name does not move to another address (409)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["name", "address", "port"], "properties": {
                        "name": STRING, "address": STRING, "port": INTEGER}}}}},
                "responses": {"201": _json({"type": "object", "properties": {"combiner": ref("Combiner")}}, "added"),
                              **_errors(400, 401, 403, 409, 413, 415, 422)}}},
            "/package": {"post": {
                "summary": "upload the compute package clients run (admin)",
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                    "type": "object", "required": ["package"],
                    "properties": {"package": {"type": "string", "format": "binary"}}}}}},
                "responses": {"201": _json({"type": "object", "properties": {"package": ref("Package")}}, "stored"),
                              **_errors(400, 401, 413, 415, 507)}}},
            "/api/v1/package": {"get": {"summary": "the current compute package (a client credential, or admin)", "responses": {
                "200": _json(ref("Package"), "package"), **_errors(401, 403, 404)}}},
            "/api/v1/package/download": {"get": {"summary": "the current compute package's bytes", "responses": {
                "200": {"description": "gzip'd tar", "content": {"application/gzip": {
                    "schema": {"type": "string", "format": "binary"}}}}, **_errors(401, 403, 404, 500)}}},
            "/login": {"post": {
                "summary": "log a browser in with the admin token (the UI's form posts it as a form field)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"token": STRING}}}}},
                "responses": {"200": _json({"type": "object", "properties": {"logged_in": {"type": "boolean"}}},
                                           "logged in: the session cookie is set"), **_errors(400, 401, 413, 415)}}},
            "/logout": {"post": {"summary": "end the browser's session", "responses": {
                "200": _json({"type": "object", "properties": {"logged_in": {"type": "boolean"}}},
                             "logged out (a JSON request)"),
                "302": {"description": "logged out (a form post): back to the dashboard"}}}},
            "/assign": {"get": {
                "summary": "which combiner a client should connect to (its own client credential, or admin)",
                "parameters": [{"name": "name", "in": "query", "required": True, "schema": STRING}],
                "responses": {"200": _json({"type": "object", "required": ["combiner", "host", "port"],
                                            "properties": {"combiner": STRING, "host": STRING, "port": INTEGER}},
                                           "assignment"), **_errors(400, 401, 403, 503)}}},
        },
    }


@bp.get("/api/v1/openapi.json")
def openapi_json():
    return jsonify(document())

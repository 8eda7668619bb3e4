"""The OpenAPI 3.1 document of the reducer's HTTP API, served at ``/api/v1/openapi.json``.

Written by hand next to the routes it describes. tests/test_openapi.py checks that
every route is documented and fuzzes a live reducer against this document, so it
cannot quietly drift from the code.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from fedtier import __version__

bp = Blueprint("openapi", __name__)

NUMBER = {"type": "number"}
INTEGER = {"type": "integer"}
STRING = {"type": "string"}
OPT_STRING = {"type": ["string", "null"]}
OPT_NUMBER = {"type": ["number", "null"]}
OBJECT = {"type": "object"}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(name: str) -> dict[str, Any]:
    return {"anyOf": [ref(name), {"type": "null"}]}


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
        "active_clients": INTEGER, "last_seen": NUMBER, "added_at": NUMBER, "round_in_progress": STRING}},
    "Client": {"type": "object", "required": ["name"], "properties": {
        "name": STRING, "combiner": STRING, "active": {"type": "boolean"}, "last_heartbeat": NUMBER,
        "rounds_joined": INTEGER, "assigned_at": NUMBER}},
    "Session": {"type": "object", "required": ["id", "status", "rounds_requested", "config", "started_at"],
                "properties": {
                    "id": STRING, "rounds_requested": INTEGER, "rounds_succeeded": INTEGER,
                    "rounds_failed": INTEGER, "config": OBJECT, "round_ids": {"type": "array", "items": STRING},
                    "status": {"enum": ["running", "finished", "stopped", "failed", "interrupted"]},
                    "started_at": NUMBER, "finished_at": OPT_NUMBER}},
    "Round": {"type": "object", "required": ["id", "session_id", "round", "status", "model_in"], "properties": {
        "id": STRING, "session_id": STRING, "round": INTEGER,
        "status": {"enum": ["running", "success", "failed"]}, "model_in": STRING, "model_out": OPT_STRING,
        "started_at": NUMBER, "finished_at": OPT_NUMBER,
        "timings": {"type": "object", "additionalProperties": NUMBER},
        "metrics": {"type": "object", "additionalProperties": NUMBER},
        "pushed": {"type": "object", "additionalProperties": {"enum": ["uploaded", "adopted"]}},
        "combiners": {"type": "array", "items": OBJECT}, "participants": {"type": "array", "items": STRING},
        "error": OPT_STRING}},
    "Validation": {"type": "object", "required": ["id", "round_id", "model_id", "client", "metrics"],
                   "properties": {"id": STRING, "round_id": STRING, "round": INTEGER, "model_id": STRING,
                                  "client": STRING, "combiner": STRING, "metrics": OBJECT,
                                  "num_examples": INTEGER, "created_at": NUMBER}},
    "Status": {"type": "object", "required": ["state", "combiners", "clients"], "properties": {
        "state": {"enum": ["setup", "idle", "instructing", "monitoring"]},
        "latest_model": nullable("Model"), "session": nullable("Session"), "last_round": nullable("Round"),
        "combiners_online": INTEGER, "combiners": INTEGER, "clients_active": INTEGER, "clients": INTEGER}},
    "Package": {"type": "object", "required": ["sha256", "size"], "properties": {
        "id": STRING, "sha256": STRING, "size": INTEGER, "files": INTEGER, "created_at": NUMBER}},
    "RoundSettings": {"type": "object", "additionalProperties": False, "properties": {
        "rounds": {"type": "integer", "minimum": 1, "maximum": 10000},
        "clients_required": {"type": "integer", "minimum": 1},
        "clients_requested": {"type": "integer", "minimum": 0},
        "round_timeout": {"type": "number", "exclusiveMinimum": 0},
        "wait_for_clients": {"type": "number", "exclusiveMinimum": 0},
        "aggregator": STRING, "aggregator_kwargs": OBJECT, "helper": STRING,
        "validate": {"type": "boolean"}, "task": OBJECT}},
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    reasons = {400: "invalid input; `field` names the culprit", 401: "missing or invalid token",
               404: "no such id", 409: "not allowed in the reducer's current state (named in `state`)",
               413: "too large; `limit` names the bound's setting", 503: "no combiner is online yet"}
    return {str(code): _json(ref("Error"), reasons[code]) for code in codes}


def _list(name: str, params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"get": {"summary": f"list {name.lower()}s", "parameters": params or [],
                    "responses": {"200": _json({"type": "array", "items": ref(name)}, f"{name.lower()}s"),
                                  **_errors(400, 401)}}}


def _one(name: str, param: str) -> dict[str, Any]:
    return {"get": {"summary": f"one {name.lower()}",
                    "parameters": [{"name": param, "in": "path", "required": True, "schema": STRING}],
                    "responses": {"200": _json(ref(name), name.lower()), **_errors(401, 404)}}}


LIMIT = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100000}}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "fedtier reducer", "version": __version__,
                 "description": "Global state, the model trail, discovery, and sessions of rounds."},
        "components": {"schemas": SCHEMAS, "securitySchemes": {
            "token": {"type": "apiKey", "in": "header", "name": "Authorization",
                      "description": "'Token <t>': the admin token for writes, the network token for /add and /assign"}}},
        "security": [{"token": []}, {}],
        "paths": {
            "/api/v1/openapi.json": {"get": {"summary": "this document",
                                             "responses": {"200": _json(OBJECT, "the OpenAPI document")}}},
            "/api/v1/status": {"get": {"summary": "reducer state and counts",
                                       "responses": {"200": _json(ref("Status"), "status"), **_errors(401)}}},
            "/api/v1/combiners": _list("Combiner"),
            "/api/v1/clients": _list("Client"),
            "/api/v1/sessions": _list("Session", [LIMIT]),
            "/api/v1/sessions/{session_id}": _one("Session", "session_id"),
            "/api/v1/rounds": _list("Round", [LIMIT, {"name": "session_id", "in": "query", "schema": STRING}]),
            "/api/v1/rounds/{round_id}": _one("Round", "round_id"),
            "/api/v1/models": _list("Model"),
            "/api/v1/models/{model_id}": _one("Model", "model_id"),
            "/api/v1/models/{model_id}/download": {"get": {
                "summary": "the model's bytes (safetensors layout); X-Model-SHA256 carries the hash",
                "parameters": [{"name": "model_id", "in": "path", "required": True, "schema": STRING}],
                "responses": {"200": {"description": "model file", "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                    **_errors(401, 404)}}},
            "/api/v1/validations": _list("Validation", [LIMIT, {"name": "round_id", "in": "query", "schema": STRING}]),
            "/seed": {"post": {
                "summary": "commit the seed model (admin)",
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                    "type": "object", "required": ["seed"],
                    "properties": {"seed": {"type": "string", "format": "binary"}}}}}},
                "responses": {"201": _json({"type": "object", "required": ["model", "state"],
                                            "properties": {"model": ref("Model"), "state": STRING}}, "seeded"),
                              **_errors(400, 401, 409, 413)}}},
            "/start": {"post": {
                "summary": "start a session of rounds (admin)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": ref("RoundSettings")}}},
                "responses": {"201": _json({"type": "object", "required": ["session_id", "session", "state"],
                                            "properties": {"session_id": STRING, "session": ref("Session"),
                                                           "state": STRING}}, "started"),
                              **_errors(400, 401, 409, 413)}}},
            "/stop": {"post": {"summary": "stop the running session (admin)", "responses": {
                "202": _json({"type": "object", "properties": {"stopping": {"type": "boolean"}, "state": STRING}},
                             "stopping"), **_errors(401, 409)}}},
            "/add": {"post": {
                "summary": "a combiner announces itself (network token)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["name", "address", "port"], "properties": {
                        "name": STRING, "address": STRING, "port": INTEGER}}}}},
                "responses": {"201": _json({"type": "object", "properties": {"combiner": ref("Combiner")}}, "added"),
                              **_errors(400, 401, 413)}}},
            "/package": {"post": {
                "summary": "upload the compute package clients run (admin)",
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                    "type": "object", "required": ["package"],
                    "properties": {"package": {"type": "string", "format": "binary"}}}}}},
                "responses": {"201": _json({"type": "object", "properties": {"package": ref("Package")}}, "stored"),
                              **_errors(400, 401, 413)}}},
            "/api/v1/package": {"get": {"summary": "the current compute package (network token)", "responses": {
                "200": _json(ref("Package"), "package"), **_errors(401, 404)}}},
            "/api/v1/package/download": {"get": {"summary": "the current compute package's bytes", "responses": {
                "200": {"description": "gzip'd tar", "content": {"application/gzip": {
                    "schema": {"type": "string", "format": "binary"}}}}, **_errors(401, 404)}}},
            "/assign": {"get": {
                "summary": "which combiner a client should connect to (network token)",
                "parameters": [{"name": "name", "in": "query", "required": True, "schema": STRING}],
                "responses": {"200": _json({"type": "object", "required": ["combiner", "host", "port"],
                                            "properties": {"combiner": STRING, "host": STRING, "port": INTEGER}},
                                           "assignment"), **_errors(400, 401, 503)}}},
        },
    }


@bp.get("/api/v1/openapi.json")
def openapi_json():
    return jsonify(document())

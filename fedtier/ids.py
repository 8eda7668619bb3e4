"""Identifiers that become file names or object keys: one rule, checked everywhere."""
import re
import uuid

_MODEL_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")


def check_model_id(model_id: str) -> str:
    """Reject ids that could escape a directory or collide with temp files (``.x``)."""
    if not isinstance(model_id, str) or not _MODEL_ID.match(model_id):
        raise ValueError(f"invalid model id {model_id!r}: use 1-128 of A-Z a-z 0-9 . _ -, not starting with '.'")
    return model_id


def new_id() -> str:
    return uuid.uuid4().hex

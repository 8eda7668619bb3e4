"""JSON from outside parties, parsed once with bounds, the offending place named.

Python's ``json`` recurses once per nesting level (a body nested 50,000 deep raises
RecursionError), turns ``1e400`` into ``inf``, accepts ``NaN`` and ``Infinity``, and
converts an integer of any length (quadratic in its digits). Every JSON that another
party writes (a request body, a round config on a combiner, a client's metrics) goes
through ``loads`` here instead, so none of that reaches the code that reads the values.

The depth is checked before ``json`` sees the text, with regular expressions that run
in C: strings are blanked out, everything but brackets dropped, and innermost ``[]``/``{}``
pairs removed once per level, so a text deeper than the bound (FEDTIER_MAX_JSON_DEPTH,
``fedtier/limits.py``) costs that many linear passes and never a Python frame per level.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

from fedtier import limits

MAX_INT_DIGITS = 20       # a 64-bit integer has at most 20 digits
MAX_NUMBER_CHARS = 40     # a float written with more characters than this is not a setting

# a string from its quote to its closing quote, or to the end of an unterminated one: it
# always matches at its first try, so the scan is linear (no retry from inner quotes)
_STRINGS = re.compile(r'"(?:[^"\\]+|\\[\s\S]?)*"?')
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_PAIRS = re.compile(r"\[\]|\{\}")
_SURROGATE = re.compile("[\ud800-\udfff]")  # "\\ud800" parses to a str that cannot be encoded


class JSONInputError(ValueError):
    """Input that is not acceptable JSON; ``field`` is the dotted path of the value at
    fault (empty when the text as a whole is), for the API's error response."""

    def __init__(self, message: str, field: str = "", limit: str = "") -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.message = message
        self.field = field
        self.limit = limit  # the setting of the bound that refused it, if one did


class _Refused:
    """Stands in for a number the parser refused, so the walk after parsing can name where it was."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def check_depth(text: str, max_depth: int | None = None) -> None:
    """Raise JSONInputError if arrays and objects in ``text`` nest deeper than ``max_depth``
    (the process's FEDTIER_MAX_JSON_DEPTH when None)."""
    if max_depth is None:
        max_depth = limits.current().json_depth
    skeleton = _NOT_BRACKETS.sub("", _STRINGS.sub("", text))
    depth = 0
    while skeleton:
        if depth >= max_depth:
            raise JSONInputError(f"nested deeper than {max_depth} levels of arrays and objects "
                                 f"({limits.Limits.variable('json_depth')})", limit=limits.Limits.variable("json_depth"))
        reduced = _PAIRS.sub("", skeleton)
        if len(reduced) == len(skeleton):
            raise JSONInputError("not valid JSON: brackets do not match")
        skeleton, depth = reduced, depth + 1


def _int(text: str) -> Any:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        return _Refused(f"integer with more than {MAX_INT_DIGITS} digits")
    return int(text)


def _float(text: str) -> Any:
    if len(text) > MAX_NUMBER_CHARS:
        return _Refused(f"number written with more than {MAX_NUMBER_CHARS} characters")
    value = float(text)
    if not math.isfinite(value):
        return _Refused(f"number {text} is out of range")
    return value


def _constant(text: str) -> Any:
    return _Refused(f"{text} is not a number JSON allows")


def _find_refused(value: Any, path: str) -> None:
    if isinstance(value, _Refused):
        raise JSONInputError(value.reason, path or "")
    if isinstance(value, str) and _SURROGATE.search(value):
        raise JSONInputError("a string holds an unpaired surrogate escape (not Unicode text)", path)
    if isinstance(value, dict):
        for key, item in value.items():
            if _SURROGATE.search(key):
                raise JSONInputError("a key holds an unpaired surrogate escape (not Unicode text)", path)
            _find_refused(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _find_refused(item, f"{path}[{index}]" if path else f"[{index}]")


def loads(data: str | bytes, max_depth: int | None = None) -> Any:
    """Parse ``data`` as JSON within the bounds above; JSONInputError names what is wrong
    and, for a refused number, where it is (``task.lr``)."""
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JSONInputError(f"not UTF-8 (byte {exc.start})") from None
    check_depth(data, max_depth)
    try:
        value = json.loads(data, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        raise JSONInputError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    _find_refused(value, "")
    return value

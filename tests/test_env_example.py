""".env.example documents every variable fedtier reads, and is itself a working configuration."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from fedtier.config import Settings, parse_env_file

ROOT = Path(__file__).resolve().parent.parent
ENV_EXAMPLE = ROOT / ".env.example"
CONFIG_SOURCE = ROOT / "fedtier" / "config.py"
COMPOSE_DIR = ROOT / "compose"
KEY_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=")
NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


def variables_read_by_config() -> set[str]:
    """Names passed to ``env.get(...)``, ``_int(env, ...)``, ``_bool(env, ...)`` etc. in config.py.

    Any call whose arguments include an upper-case string constant and that is made on an
    ``env``/``environ`` mapping, or passes one, counts, so a new helper is found too.
    """
    names: set[str] = set()
    for node in ast.walk(ast.parse(CONFIG_SOURCE.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        on_env = isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name) \
            and node.func.value.id in ("env", "environ", "environment")
        passes_env = any(isinstance(a, ast.Name) and a.id in ("env", "environ", "environment") for a in node.args)
        if not (on_env or passes_env):
            continue
        for arg in node.args:
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and NAME.match(arg.value):
                names.add(arg.value)
    for node in ast.walk(ast.parse(CONFIG_SOURCE.read_text(encoding="utf-8"))):  # env["X"] subscripts too
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) \
                and node.value.id in ("env", "environ", "environment") \
                and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            names.add(node.slice.value)
    return names


def documented() -> dict[str, list[str]]:
    """Each KEY of .env.example with the comment lines of its paragraph above it."""
    result: dict[str, list[str]] = {}
    comment: list[str] = []
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped:
            comment = []
        elif stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
        else:
            match = KEY_LINE.match(stripped)
            assert match, f".env.example: not KEY=VALUE: {line!r}"
            assert match[1] not in result, f".env.example sets {match[1]} twice"
            result[match[1]] = list(comment)
    return result


def variables_used_by_compose() -> set[str]:
    names: set[str] = set()
    for path in COMPOSE_DIR.glob("*.y*ml"):
        names.update(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", path.read_text(encoding="utf-8")))
        names.update(re.findall(r"(?<!\$)\$([A-Za-z_][A-Za-z0-9_]*)", path.read_text(encoding="utf-8")))
    return names


def test_the_parser_of_config_py_finds_the_variables() -> None:
    """Guards the test below from passing vacuously if config.py changes shape."""
    names = variables_read_by_config()
    assert {"ALLIANCE_UID", "FEDN_REDUCER_HOST", "FEDN_MONGO_HOST", "FEDN_MINIO_SECRET_KEY", "EXAMPLE",
            "CLIENT_NAME_BASE", "FEDTIER_DATA_DIR", "FEDTIER_LOG_LEVEL"} <= names, names


def test_every_variable_config_reads_is_documented() -> None:
    docs = documented()
    missing = sorted(variables_read_by_config() - set(docs))
    assert not missing, f"read in fedtier/config.py but not in .env.example: {missing}"


def test_each_config_variable_says_what_it_does_and_its_default() -> None:
    docs = documented()
    for name in sorted(variables_read_by_config()):
        text = " ".join(docs[name])
        assert len(text) >= 40, f".env.example: {name} needs a comment saying what it does"
        assert "default" in text.lower(), f".env.example: the comment of {name} does not give its default"


def test_every_documented_variable_is_used() -> None:
    """No stale entries: each is read by fedtier or used by a compose file."""
    unused = sorted(set(documented()) - variables_read_by_config() - variables_used_by_compose())
    assert not unused, f".env.example documents variables nothing uses: {unused}"


def test_compose_only_variables_are_marked() -> None:
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    head, sep, compose_part = text.partition("docker compose only")
    assert sep, ".env.example has no 'docker compose only' section"
    compose_only = variables_used_by_compose() - variables_read_by_config()
    for name in compose_only & set(documented()):
        assert re.search(rf"^{name}=", compose_part, re.M), f"{name} is compose-only but not in that section"


def test_it_parses_and_makes_valid_settings() -> None:
    values = parse_env_file(ENV_EXAMPLE)
    assert set(values) == set(documented())
    settings = Settings.from_env(values)
    # The example is the compose deployment: the service backends are selected.
    assert settings.uses_mongo and settings.uses_minio
    assert (settings.mongo_host, settings.minio_host) == ("mongo", "minio")
    assert settings.reducer_port == int(values["FEDN_REDUCER_PORT"])


def test_credentials_fit_the_services() -> None:
    values = parse_env_file(ENV_EXAMPLE)
    assert len(values["FEDN_MINIO_ACCESS_KEY"]) >= 3, "MinIO wants a root user of 3 characters or more"
    assert len(values["FEDN_MINIO_SECRET_KEY"]) >= 8, "MinIO wants a root password of 8 characters or more"
    assert values["FEDN_MONGO_PASSWORD"].isalnum(), "mongo-express puts the password in a URL: letters and digits"
    for name in ("FEDN_MINIO_SECRET_KEY", "FEDN_MONGO_PASSWORD", "MONGO_EXPRESS_PASSWORD"):
        assert "change" in values[name].lower(), f"{name} should be an obvious placeholder"


@pytest.mark.parametrize("name, value", [("FEDN_REDUCER_PORT", "eighty"), ("FEDTIER_MINIO_SECURE", "maybe"),
                                         ("FEDTIER_LOG_LEVEL", "LOUD")])
def test_a_broken_value_in_the_example_would_be_caught(name: str, value: str) -> None:
    """Settings.from_env really checks what the test above feeds it."""
    values = {**parse_env_file(ENV_EXAMPLE), name: value}
    with pytest.raises(ValueError, match=name):
        Settings.from_env(values)

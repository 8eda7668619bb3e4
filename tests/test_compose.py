"""The docker-compose deployment, checked without a Docker engine.

Nothing here runs containers (this machine has no Docker engine). Instead the files
are held to what compose and the services would do with them: the Compose
Specification schema, variable interpolation with the values of .env.example, paths
that must exist, every fedtier command parsed by the real CLI parser, ports, tokens
and service names that must agree across files, and the README walkthrough against
the files it names. ``fedtier health``, which the healthchecks run, is tested against
a live combiner and a live reducer.
"""
from __future__ import annotations

import copy
import functools
import json
import os
import re
import shlex
import subprocess
import threading
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import pytest
import yaml

from fedtier.launch.cli import build_parser, main
from fedtier.config import Settings, parse_env_file

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose"
SCHEMA = ROOT.parent / "shared" / "schemas" / "compose-spec.json"
ORDER = ["docker-compose.yaml", "reducer.yaml", "combiner.yaml", "client.yaml"]  # as the README uses them
OVERLAYS = ["tls.yaml", "monitoring.yaml"]  # optional overrides added after ORDER, in this order
FILES = ORDER + OVERLAYS
ENV = parse_env_file(ROOT / ".env.example")
FEDTIER_SERVICES = {"reducer", "combiner-0", "combiner-1", "client"}


# ---------------------------------------------------------------- compose interpolation
class InterpolationError(ValueError):
    pass


VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
                      r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, ${VAR:+alt}, $VAR, $$."""
    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        op, arg = match["op"], match["arg"] or ""
        is_set, value = name in env, env.get(name, "")
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if is_set else arg
        if op in (":?", "?") and not (value if op == ":?" else is_set):
            raise InterpolationError(f"{name}: {arg}")
        if op == ":+":
            return arg if value else ""
        if op == "+":
            return arg if is_set else ""
        return value

    result = VARIABLE.sub(replace, text)
    if "${" in result:
        raise InterpolationError(f"unsupported interpolation left in {text!r}")
    return result


def interpolate_tree(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(x, env) for x in node]
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    return node


def test_interpolation_follows_compose() -> None:
    env = {"A": "1", "E": ""}
    assert interpolate("${A}-${E:-d}-${E-d}-${U-d}-${A:+x}-${E:+x}-$A-$$A", env) == "1-d--d-x--1-$A"
    with pytest.raises(InterpolationError, match="U: needed"):
        interpolate("${U:?needed}", env)
    with pytest.raises(InterpolationError, match="E: needed"):
        interpolate("${E:?needed}", env)


# ---------------------------------------------------------------- loading the files
@functools.lru_cache(maxsize=None)
def _parsed(name: str) -> dict[str, Any]:
    return yaml.safe_load((COMPOSE / name).read_text(encoding="utf-8"))


def raw(name: str) -> dict[str, Any]:
    return copy.deepcopy(_parsed(name))


def loaded(name: str) -> dict[str, Any]:
    """The file as compose sees it with .env.example as .env."""
    return interpolate_tree(_parsed(name), ENV)


def services(name: str) -> dict[str, dict[str, Any]]:
    return loaded(name).get("services") or {}


def all_services() -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for name in ORDER:
        merged.update(services(name))
    return merged


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def parse_fedtier(argv: list[str], where: str) -> Any:
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}: `fedtier {' '.join(argv)}` does not parse (exit {exc.code}; see stderr above)")


def test_the_compose_folder_holds_exactly_the_walkthrough_files() -> None:
    assert sorted(p.name for p in COMPOSE.glob("*.y*ml")) == sorted(FILES)
    assert set(all_services()) == {"minio", "mongo", "mongo-express"} | FEDTIER_SERVICES


@pytest.mark.parametrize("name", FILES)
def test_files_validate_against_the_compose_spec(name: str) -> None:
    if not SCHEMA.is_file():
        pytest.skip(f"Compose Specification schema not found at {SCHEMA} (expected next to the repository, "
                    "in ../shared/schemas/)")
    from jsonschema import Draft7Validator

    validator = Draft7Validator(json.loads(SCHEMA.read_text(encoding="utf-8")))
    for label, document in (("as written", raw(name)), ("interpolated with .env.example", loaded(name))):
        errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
        assert not errors, f"{name} ({label}) breaks the Compose Specification:\n" + "\n".join(
            f"  at {'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors[:10])


def test_the_schema_check_catches_mistakes() -> None:
    """The validation above would notice a typo (an unknown key, a bad condition)."""
    if not SCHEMA.is_file():
        pytest.skip(f"Compose Specification schema not found at {SCHEMA}")
    from jsonschema import Draft7Validator

    validator = Draft7Validator(json.loads(SCHEMA.read_text(encoding="utf-8")))
    broken = loaded("reducer.yaml")
    broken["services"]["reducer"]["healthcheck"]["retry"] = 3
    broken["services"]["reducer"]["depends_on"]["mongo"]["condition"] = "service_ready"
    assert len(list(validator.iter_errors(broken))) >= 2


# ---------------------------------------------------------------- variables
def compose_variables() -> dict[str, set[str]]:
    """Each ${VAR} / $VAR used in compose files, with the operators it is used with."""
    used: dict[str, set[str]] = {}

    def scan(node: Any) -> None:  # values only, as compose interpolates (not keys, not comments)
        if isinstance(node, str):
            for match in VARIABLE.finditer(node):
                var = match["braced"] or match["named"]
                if var:
                    used.setdefault(var, set()).add(match["op"] or "")
        elif isinstance(node, list):
            for x in node:
                scan(x)
        elif isinstance(node, dict):
            for x in node.values():
                scan(x)

    for name in FILES:
        scan(raw(name))
    return used


def test_every_compose_variable_is_documented_in_env_example() -> None:
    used = compose_variables()
    assert {"FEDN_MINIO_ACCESS_KEY", "FEDTIER_IMAGE", "FEDTIER_HOST_DATA_DIR"} <= set(used)  # the scan works
    missing = sorted(set(used) - set(ENV))
    assert not missing, f"used in compose/*.yaml but not in .env.example: {missing}"


def test_required_variables_have_values_in_env_example() -> None:
    for var, ops in compose_variables().items():
        if ":?" in ops:
            assert ENV.get(var), f"compose requires {var} (${{{var}:?...}}) but .env.example leaves it empty"
        if ops == {""}:  # used bare: an empty value would silently give compose an empty string
            assert ENV.get(var), f"{var} is used without a default, yet .env.example leaves it empty"


# ---------------------------------------------------------------- paths
def readme_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("## Deploy with docker-compose")
    end = text.find("\n## ", start + 3)
    return text[start:] if end < 0 else text[start:end]


def readme_commands() -> list[str]:
    """Shell lines of the walkthrough's code blocks, with continuation lines joined."""
    lines: list[str] = []
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", readme_section(), re.S):
        lines.extend(line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip())
    return lines


def created_by_readme() -> set[Path]:
    """Paths the walkthrough makes: ``mkdir -p`` folders, and what ``fedtier token`` writes."""
    made = set()
    for line in readme_commands():
        argv = shlex.split(line, comments=True)
        if argv[:2] == ["mkdir", "-p"]:
            made.update((ROOT / p).resolve() for p in argv[2:])
        if argv and argv[0].endswith("fedtier") and argv[1:2] == ["token"]:
            args = parse_fedtier(argv[1:], line)
            out = (ROOT / args.out).resolve()
            made.add(out)
            if args.token_command == "keygen":
                made.update({out / "signing-key.pem", out / "verify-key.pem"})
            elif args.out:
                made.update(out / f"{name}.token" for name in args.name)
    return made


def host_path_exists(source: str) -> bool:
    path = (COMPOSE / os.path.expanduser(source)).resolve()
    return path.exists() or path in created_by_readme()


def test_build_contexts_and_dockerfiles_exist() -> None:
    built = 0
    for name in ORDER:
        for svc_name, svc in services(name).items():
            build = svc.get("build")
            if build is None:
                continue
            build = {"context": build} if isinstance(build, str) else build
            context = (COMPOSE / build.get("context", ".")).resolve()
            assert context.is_dir(), f"{name}: {svc_name} builds from {context}, which is not a folder"
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name}: {svc_name} builds with {dockerfile}, which does not exist"
            built += 1
    assert built == len(FEDTIER_SERVICES)


def test_env_files_exist() -> None:
    for name in ORDER:
        for svc_name, svc in services(name).items():
            entries = svc.get("env_file") or []
            for entry in [entries] if isinstance(entries, (str, dict)) else entries:
                path = entry if isinstance(entry, str) else entry["path"]
                if isinstance(entry, dict) and entry.get("required") is False:
                    continue
                assert (COMPOSE / path).exists() or (COMPOSE / path).resolve() == ROOT / ".env", \
                    f"{name}: {svc_name} reads env_file {path}, which does not exist"


def mounts() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(file, service, long-syntax mount) for every volume of every service."""
    for name in ORDER:
        for svc_name, svc in services(name).items():
            for volume in svc.get("volumes") or []:
                if isinstance(volume, str):
                    parts = volume.split(":")
                    source, target = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
                    kind = "bind" if source.startswith((".", "/", "~")) else "volume"
                    volume = {"type": kind, "source": source, "target": target,
                              "read_only": len(parts) > 2 and "ro" in parts[2].split(",")}
                yield name, svc_name, volume


def test_bind_mounted_host_paths_exist_and_named_volumes_are_declared() -> None:
    declared = set()
    for name in ORDER:
        declared.update((loaded(name).get("volumes") or {}).keys())
    binds = 0
    for name, svc_name, mount in mounts():
        if mount["type"] == "bind":
            binds += 1
            assert host_path_exists(mount["source"]), (
                f"{name}: {svc_name} bind-mounts {mount['source']} (relative to compose/), which neither exists "
                f"nor is created by a `mkdir -p` of the README walkthrough")
        elif mount["type"] == "volume" and mount.get("source"):
            assert mount["source"] in declared, f"{name}: {svc_name} uses undeclared volume {mount['source']}"
    assert binds >= 1


def test_client_data_is_mounted_read_only_where_the_client_reads_it() -> None:
    client = services("client.yaml")["client"]
    [data] = [m for _, svc, m in mounts() if svc == "client" and m["type"] == "bind" and m["target"] == "/data"]
    assert data["read_only"] is True
    assert (COMPOSE / ENV["FEDTIER_HOST_DATA_DIR"]).resolve() == (COMPOSE / data["source"]).resolve()
    assert option(command(client), "--data-path") == data["target"]
    assert data.get("bind", {}).get("create_host_path") is False  # a wrong path fails instead of mounting nothing


# ---------------------------------------------------------------- fedtier commands
def fedtier_argvs() -> Iterator[tuple[str, list[str]]]:
    """Every fedtier command line in the compose files: service commands and healthchecks."""
    for name in ORDER:
        for svc_name, svc in services(name).items():
            if svc_name in FEDTIER_SERVICES:
                yield f"{name}: {svc_name} command", command(svc)
            test = (svc.get("healthcheck") or {}).get("test")
            if isinstance(test, list) and test[:2] == ["CMD", "fedtier"]:
                yield f"{name}: {svc_name} healthcheck", test[2:]


def test_every_fedtier_command_parses() -> None:
    seen = [parse_fedtier(argv, where).command for where, argv in fedtier_argvs()]
    assert sorted(seen) == ["client", "combiner", "combiner", "health", "health", "health", "reducer"]


def test_a_bad_command_would_be_caught() -> None:
    with pytest.raises(pytest.fail.Exception):
        parse_fedtier(["client", "--reducer", "http://r", "--project", "p", "--partition", "auto"], "test")


def test_fedtier_services_run_the_image_the_dockerfile_builds() -> None:
    for svc_name in FEDTIER_SERVICES:
        svc = all_services()[svc_name]
        assert svc["image"] == ENV["FEDTIER_IMAGE"]
        assert (COMPOSE / svc["build"]["context"]).resolve() == ROOT and svc["build"]["dockerfile"] == "Dockerfile"


def test_every_service_restarts_and_waits_for_healthy_dependencies() -> None:
    everything = all_services()
    for index, name in enumerate(ORDER):
        known = set().union(*(services(n).keys() for n in ORDER[:index + 1]))
        for svc_name, svc in services(name).items():
            assert svc.get("restart") in ("unless-stopped", "always", "on-failure"), f"{svc_name}: no restart policy"
            for dep, spec in (svc.get("depends_on") or {}).items():
                assert dep in known, f"{name}: {svc_name} depends on {dep}, which is not in {ORDER[:index + 1]}"
                if spec.get("condition") == "service_healthy":
                    assert everything[dep].get("healthcheck"), f"{svc_name} waits for {dep} to be healthy; it has no check"
    for svc_name in ("minio", "mongo", "reducer", "combiner-0", "combiner-1"):
        assert everything[svc_name].get("healthcheck", {}).get("test"), f"{svc_name} has no healthcheck"
    assert everything["reducer"]["depends_on"] == {"mongo": {"condition": "service_healthy"},
                                                   "minio": {"condition": "service_healthy"}}


def test_healthchecks_ask_the_ports_the_services_listen_on() -> None:
    everything = all_services()
    reducer_port = option(command(everything["reducer"]), "--port")
    assert reducer_port == ENV["FEDN_REDUCER_PORT"]
    url = urlsplit(everything["reducer"]["healthcheck"]["test"][4])
    assert (url.hostname, str(url.port), url.path) == ("localhost", reducer_port, "/api/v1/status")
    assert f"{reducer_port}:{reducer_port}" in everything["reducer"]["ports"]
    for name in ("combiner-0", "combiner-1"):
        test = everything[name]["healthcheck"]["test"]
        assert test[2:4] == ["health", "--grpc"] and test[4] == f"localhost:{option(command(everything[name]), '--port')}"


def test_combiners_announce_names_that_resolve_on_the_compose_network() -> None:
    for name in ("combiner-0", "combiner-1"):
        args = parse_fedtier(command(all_services()[name]), name)
        # Binding all interfaces without --advertise-host, a combiner advertises its --name: it must be the service.
        assert (args.name, args.host, args.advertise_host) == (name, "0.0.0.0", "")
        assert urlsplit(args.reducer).hostname == ENV["FEDN_REDUCER_HOST"] == "reducer"
        assert str(urlsplit(args.reducer).port) == ENV["FEDN_REDUCER_PORT"]


def test_clients_are_scaled_replicas_with_auto_name_and_partition() -> None:
    client = all_services()["client"]
    args = parse_fedtier(command(client), "client")
    assert args.name == "auto" and args.partition == (None, int(ENV["FEDTIER_CLIENTS"]))
    assert str(client["deploy"]["replicas"]) == ENV["FEDTIER_CLIENTS"]
    assert "container_name" not in client and "hostname" not in client  # either would break the replica names
    assert urlsplit(args.reducer).hostname in all_services() and str(urlsplit(args.reducer).port) == ENV["FEDN_REDUCER_PORT"]
    project = ROOT / args.project  # WORKDIR /app holds test_projects/ in the image
    assert (project / "fedn.yaml").is_file(), f"the clients run {args.project}, which is not a project in this repository"
    helper = yaml.safe_load((project / "fedn.yaml").read_text(encoding="utf-8"))["helper"]
    assert helper == ENV["FEDTIER_HELPER"] == option(command(all_services()["reducer"]), "--helper")


CONTAINER_PATHS = ("FEDTIER_TOKEN_SIGNING_KEY", "FEDTIER_TOKEN_VERIFY_KEY", "FEDTIER_CREDENTIALS_DIR")


def settings_of(svc: dict[str, Any]) -> Settings:
    """A service's settings as its process parses them; paths inside the container (checked
    against the mounts elsewhere) are left out, since they are not on this host."""
    return Settings.from_env({k: str(v) for k, v in svc["environment"].items() if k not in CONTAINER_PATHS})


def test_the_reducer_uses_minio_and_mongo_with_the_credentials_they_were_given() -> None:
    everything = all_services()
    settings = settings_of(everything["reducer"])
    assert settings.uses_minio and settings.uses_mongo
    assert settings.minio_host in everything and settings.mongo_host in everything
    minio, mongo = everything[settings.minio_host]["environment"], everything[settings.mongo_host]["environment"]
    assert (minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"]) == (settings.minio_access_key, settings.minio_secret_key)
    assert (mongo["MONGO_INITDB_ROOT_USERNAME"], mongo["MONGO_INITDB_ROOT_PASSWORD"]) == \
        (settings.mongo_user, settings.mongo_password)
    express = everything["mongo-express"]["environment"]["ME_CONFIG_MONGODB_URL"]
    assert express == f"mongodb://{settings.mongo_user}:{settings.mongo_password}@{settings.mongo_host}:{settings.mongo_port}/"


def mounted(svc: dict[str, Any]) -> dict[str, str]:
    """target -> host source of a service's bind mounts."""
    return {m["target"]: m["source"] for m in svc.get("volumes") or [] if isinstance(m, dict)}


def test_each_process_gets_the_credentials_its_role_needs_and_no_more() -> None:
    everything = all_services()
    admin = ENV["FEDN_ALLIANCE_ADMIN_AUTH_TOKEN"]
    keys = (COMPOSE / ENV["FEDTIER_HOST_KEYS_DIR"]).resolve()
    creds = (COMPOSE / ENV["FEDTIER_HOST_CREDENTIALS_DIR"]).resolve()
    assert admin
    reducer = everything["reducer"]
    env, mounts_ = reducer["environment"], mounted(reducer)
    assert env["FEDN_ALLIANCE_ADMIN_AUTH_TOKEN"] == admin
    assert (COMPOSE / mounts_["/keys"]).resolve() == keys  # the signing key lives only here
    assert {env["FEDTIER_TOKEN_SIGNING_KEY"], env["FEDTIER_TOKEN_VERIFY_KEY"]} == \
        {"/keys/signing-key.pem", "/keys/verify-key.pem"}
    for name in ("combiner-0", "combiner-1"):
        env, mounts_ = everything[name]["environment"], mounted(everything[name])
        assert "FEDN_ALLIANCE_ADMIN_AUTH_TOKEN" not in env and "FEDTIER_TOKEN_SIGNING_KEY" not in env
        assert (COMPOSE / mounts_[env["FEDTIER_TOKEN_VERIFY_KEY"]]).resolve() == keys / "verify-key.pem"
        own = f"{env['FEDTIER_CREDENTIALS_DIR']}/{name}.token"
        assert [t for t in mounts_ if t.startswith(env["FEDTIER_CREDENTIALS_DIR"])] == [own]  # only its own
        assert (COMPOSE / mounts_[own]).resolve() == creds / f"{name}.token"
        assert everything[name]["healthcheck"]["test"][-2:] == ["--as", name]
    client = everything["client"]
    env, mounts_ = client["environment"], mounted(client)
    assert not {"FEDN_ALLIANCE_ADMIN_AUTH_TOKEN", "FEDTIER_TOKEN_SIGNING_KEY", "FEDTIER_TOKEN_VERIFY_KEY"} & set(env)
    assert (COMPOSE / mounts_[env["FEDTIER_CREDENTIALS_DIR"]]).resolve() == creds / "clients"
    assert not any("keys" in source for source in mounts_.values())
    # the walkthrough issues every credential a service looks for, under the names they use
    issued = created_by_readme()
    assert {keys / "signing-key.pem", keys / "verify-key.pem", creds / "combiner-0.token",
            creds / "combiner-1.token"} <= issued
    assert {creds / "clients" / f"{ENV['CLIENT_NAME_BASE']}-{k}.token"
            for k in range(1, int(ENV["FEDTIER_CLIENTS"]) + 1)} <= issued
    for svc_name in FEDTIER_SERVICES:
        settings_of(everything[svc_name])


# ---------------------------------------------------------------- Dockerfile and .dockerignore
def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text(encoding="utf-8")


def dockerignored(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; '!' re-includes; a pattern matches a path or its parents."""
    excluded = False
    for raw_line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*") \
            .replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        parts = path.strip("/").split("/")
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def test_dockerignore_sends_what_the_image_needs_and_nothing_secret() -> None:
    copied = re.findall(r"^COPY\s+(?!--from)(.+?)\s+\S+\s*$", dockerfile(), re.M)
    sources = [s for line in copied for s in line.split()]
    assert "setup.py" in sources and "test_projects/" in sources
    for source in sources:
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"
        assert not dockerignored(source), f"the Dockerfile copies {source}, but .dockerignore leaves it out"
    for package in ("fedtier", "proto", "reducer", "combiner", "client", "helpers", "launch", "datatools"):  # setup.py's packages
        assert f"{package}/" in sources
    for secret in (".env", ".venv", ".git", "data", "var", "tests", "seeds", "fedtier/__pycache__", "x/.env",
                   "compose/keys", "compose/credentials"):
        assert dockerignored(secret), f".dockerignore lets {secret} into the build context"


def test_dockerfile_builds_the_image_the_brief_asks_for() -> None:
    text = dockerfile()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.M)
    assert re.findall(r"^FROM\s+(\S+)", text, re.M)[-1] == "${PYTHON_IMAGE}"
    assert re.search(r"pip install torch==2\.13\.0 --index-url https://download\.pytorch\.org/whl/cpu", text)
    assert '[keras]"' in text
    installs = " ".join(re.findall(r"pip (?:install|wheel)[^\n]*", text))
    assert "tensorflow" not in installs.lower()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    [entrypoint] = re.findall(r"^ENTRYPOINT\s+(.+)$", text, re.M)
    assert json.loads(entrypoint) == ["fedtier"]
    assert "FEDTIER_DATA_DIR=/var/lib/fedtier" in text  # where reducer.yaml mounts its volume
    assert any(m["target"] == "/var/lib/fedtier" for _, svc, m in mounts() if svc == "reducer")


# ---------------------------------------------------------------- the README walkthrough
def compose_invocations() -> list[tuple[list[str], str, list[str]]]:
    """(compose files, subcommand, arguments) of each `docker compose` line of the walkthrough."""
    found = []
    for line in readme_commands():
        argv = shlex.split(line, comments=True)
        if argv[:2] != ["docker", "compose"]:
            continue
        files, i = [], 2
        while i < len(argv) and argv[i].startswith("-"):
            if argv[i] in ("-f", "--file"):
                files.append(argv[i + 1])
            elif argv[i] == "--env-file":
                assert argv[i + 1] == ".env", f"the walkthrough reads {argv[i + 1]}; it creates .env"
            elif argv[i] not in ("-p", "--project-name"):
                pytest.fail(f"unexpected compose option {argv[i]} in: {line}")
            i += 2
        found.append((files, argv[i], argv[i + 1:]))
    return found


def test_walkthrough_creates_env_before_compose_reads_it() -> None:
    lines = [shlex.split(line, comments=True) for line in readme_commands()]
    assert ["cp", ".env.example", ".env"] in lines, "the walkthrough never creates .env"
    first_compose = next(i for i, argv in enumerate(lines) if argv[:2] == ["docker", "compose"])
    assert lines.index(["cp", ".env.example", ".env"]) < first_compose


def test_walkthrough_names_files_and_services_that_exist() -> None:
    invocations = compose_invocations()
    assert len(invocations) >= 5
    started: set[str] = set()
    for files, subcommand, args in invocations:
        names_ = [Path(f).name for f in files]
        base = [n for n in names_ if n in ORDER]
        extra = names_[len(base):]
        assert names_[:len(base)] == base == ORDER[:len(base)] and (not extra or base == ORDER) \
            and extra == [n for n in OVERLAYS if n in extra], \
            f"compose files must be given cumulatively, in order {ORDER}, then overrides in order {OVERLAYS}: " \
            f"got {files}"
        for file in files:
            assert (ROOT / file).is_file(), f"the README names {file}, which does not exist"
        known = set().union(*(services(Path(f).name).keys() for f in files))
        names, i = [], 0
        while i < len(args):
            if args[i] in ("--scale", "-t", "--timeout"):
                if args[i] == "--scale":
                    svc, count = args[i + 1].split("=")
                    assert svc in known, f"--scale {svc}: no such service in {files}"
                    assert count == ENV["FEDTIER_CLIENTS"], "--scale client=N must equal FEDTIER_CLIENTS"
                i += 2
                continue
            if not args[i].startswith("-"):
                names.append(args[i])
            i += 1
        for svc in names:
            assert svc in known, f"the README names service {svc}, which is not in {files}"
        if subcommand == "up":
            started.update(names or known)
    assert set(FILES) == {Path(f).name for files, _, _ in invocations for f in files}
    everything = set(all_services()) | set(services("monitoring.yaml"))
    assert started == everything, f"the walkthrough never starts {everything - started}"
    assert "--scale client=5" in readme_section() and ENV["FEDTIER_CLIENTS"] == "5"


def test_walkthrough_urls_and_requests_match_the_reducer(tmp_path: Path) -> None:
    from fedtier.reducer.app import create_app
    from fedtier.reducer.control import SessionRequest

    app = create_app(Settings(data_dir=tmp_path), poll_interval_s=None)
    try:
        routes = app.url_map.bind("localhost")
        published = {ENV["FEDN_REDUCER_PORT"]: "reducer", ENV["MONGO_EXPRESS_PORT"]: "mongo-express",
                     ENV["MINIO_CONSOLE_PORT"]: "minio", ENV["GRAFANA_PORT"]: "grafana",
                     ENV["PROMETHEUS_PORT"]: "prometheus"}
        for port in re.findall(r"https?://localhost:(\d+)", readme_section()):
            assert port in published, f"the README points at localhost:{port}, which compose does not publish"
        curls = [shlex.split(l) for l in readme_commands() if l.startswith("curl ")]
        assert len(curls) >= 3
        for argv in curls:
            url = urlsplit(next(a for a in argv if a.startswith("http")))
            assert published.get(str(url.port)) == "reducer"
            posts = "-F" in argv or "-d" in argv
            routes.match(url.path, method="POST" if posts else "GET")  # raises for a route the reducer lacks
            if "-d" in argv and url.path == "/start":
                body = json.loads(option(argv, "-d"))
                request = SessionRequest.from_dict(body, defaults={"helper": ENV["FEDTIER_HELPER"]})
                assert request.config.clients_required <= int(ENV["FEDTIER_CLIENTS"])
            if posts:
                assert "Authorization: Token $ADMIN_TOKEN" in argv, f"{url.path} needs the admin token"
    finally:
        app.extensions["fedtier"].close()


def test_walkthrough_reads_the_admin_token_from_env(tmp_path: Path) -> None:
    [line] = [l for l in readme_commands() if l.startswith("ADMIN_TOKEN=")]
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text(encoding="utf-8"), encoding="utf-8")
    out = subprocess.run(["bash", "-c", f'{line}\nprintf %s "$ADMIN_TOKEN"'], cwd=tmp_path, capture_output=True,
                         text=True, timeout=10, check=True).stdout
    assert out == ENV["FEDN_ALLIANCE_ADMIN_AUTH_TOKEN"]


def test_walkthrough_seeds_with_the_seed_of_the_project_the_clients_run() -> None:
    [seed] = [a.split("@", 1)[1] for l in readme_commands() if l.startswith("curl ")
              for a in shlex.split(l) if a.startswith("seed=@")]
    assert seed == f"seeds/{ENV['EXAMPLE']}.safetensors"
    assert (ROOT / "test_projects" / ENV["EXAMPLE"] / "fedn.yaml").is_file()
    if not (ROOT / seed).is_file():
        pytest.skip(f"{seed} is not in the repository yet (the seeds are made by another change); "
                    "the README's seeding step needs it")


def test_walkthrough_creates_the_data_folder_the_clients_mount() -> None:
    data = (COMPOSE / ENV["FEDTIER_HOST_DATA_DIR"]).resolve()
    assert data in created_by_readme(), f"the README does not create {data} (FEDTIER_HOST_DATA_DIR)"


# ---------------------------------------------------------------- fedtier health, live
@pytest.fixture
def quiet_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in ("FEDN_ALLIANCE_AUTH_TOKEN", "FEDN_ALLIANCE_ADMIN_AUTH_TOKEN", "FEDTIER_TLS_CA", "FEDTIER_TLS_CERT",
                "FEDTIER_TLS_KEY", "FEDN_MONGO_HOST", "FEDN_MINIO_HOST", "FEDTIER_TOKEN_VERIFY_KEY",
                "FEDTIER_TOKEN_SIGNING_KEY", "FEDTIER_CREDENTIALS_DIR"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def health(*args: str) -> int:
    return main(["--env-file", os.devnull, "health", "--timeout", "3", *args])


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from fedtier.identity import generate_keypair

    return generate_keypair(tmp_path_factory.mktemp("keys"))


def credential(keys: tuple[Path, Path], role: str, name: str) -> str:
    from fedtier.identity import issue, load_signing_key

    return issue(load_signing_key(keys[0]), role, name, 600)


@pytest.fixture
def combiner(tmp_path: Path, keys: tuple[Path, Path]) -> Iterator[int]:
    from fedtier.combiner.server import CombinerServer, CombinerSettings

    server = CombinerServer(CombinerSettings(name="combiner-h", host="127.0.0.1", port=0, work_dir=tmp_path / "c",
                                             verify_key=str(keys[1])))
    port = server.start()
    yield port
    server.stop(0)


@pytest.fixture
def reducer(tmp_path: Path, keys: tuple[Path, Path]) -> Iterator[int]:
    from werkzeug.serving import make_server

    from fedtier.reducer.app import create_app

    settings = Settings(data_dir=tmp_path / "r", admin_auth_token="admin-h", public_read=False,
                        token_signing_key=str(keys[0]), token_verify_key=str(keys[1]))
    app = create_app(settings, poll_interval_s=None)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_port
    server.shutdown()
    app.extensions["fedtier"].close()


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_health_grpc_healthy_combiner(combiner: int, quiet_env: pytest.MonkeyPatch, keys: tuple[Path, Path],
                                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "combiner-h.token").write_text(credential(keys, "combiner", "combiner-h"))
    quiet_env.setenv("FEDTIER_CREDENTIALS_DIR", str(tmp_path))  # as compose mounts it
    assert health("--grpc", f"127.0.0.1:{combiner}", "--as", "combiner-h") == 0
    assert "healthy: combiner combiner-h" in capsys.readouterr().out


def test_health_grpc_needs_the_combiners_own_credential(combiner: int, quiet_env: pytest.MonkeyPatch,
                                                        keys: tuple[Path, Path],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    for token in ("wrong", credential(keys, "combiner", "another"), credential(keys, "client", "combiner-h")):
        quiet_env.setenv("FEDN_ALLIANCE_AUTH_TOKEN", token)
        assert health("--grpc", f"127.0.0.1:{combiner}") == 1
        assert "refused the credential" in capsys.readouterr().err


def test_health_http_healthy_reducer(reducer: int, quiet_env: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    quiet_env.setenv("FEDN_ALLIANCE_ADMIN_AUTH_TOKEN", "admin-h")
    assert health("--http", f"http://127.0.0.1:{reducer}/api/v1/status") == 0
    assert "answered 200" in capsys.readouterr().out


def test_health_http_sends_the_token_reading_needs(reducer: int, quiet_env: pytest.MonkeyPatch, keys: tuple[Path, Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert health("--http", f"http://127.0.0.1:{reducer}/api/v1/status") == 1  # FEDTIER_PUBLIC_READ is false
    assert "401" in capsys.readouterr().err
    quiet_env.setenv("FEDN_ALLIANCE_AUTH_TOKEN", credential(keys, "client", "c"))  # a participant may read too
    assert health("--http", f"http://127.0.0.1:{reducer}/api/v1/status") == 0


def test_health_http_error_answer_is_unhealthy(reducer: int, quiet_env: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    quiet_env.setenv("FEDN_ALLIANCE_ADMIN_AUTH_TOKEN", "admin-h")
    assert health("--http", f"http://127.0.0.1:{reducer}/api/v1/no-such-thing") == 1
    assert "404" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["--grpc", "--http"])
def test_health_closed_port_is_unhealthy(kind: str, quiet_env: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    port = closed_port()
    target = f"127.0.0.1:{port}" if kind == "--grpc" else f"http://127.0.0.1:{port}/api/v1/status"
    assert health(kind, target) == 1
    assert capsys.readouterr().err.startswith("unhealthy:")


def test_health_an_open_port_of_the_wrong_kind_is_unhealthy(combiner: int, reducer: int,
                                                            quiet_env: pytest.MonkeyPatch) -> None:
    quiet_env.setenv("FEDN_ALLIANCE_ADMIN_AUTH_TOKEN", "admin-h")
    assert health("--grpc", f"127.0.0.1:{reducer}") == 1  # an HTTP/1.1 server is not a combiner
    assert health("--http", f"http://127.0.0.1:{combiner}/api/v1/status") == 1


@pytest.mark.parametrize("args", [["--grpc", "no-port"], ["--http", "localhost:8090/api/v1/status"]])
def test_health_malformed_targets_are_reported(args: list[str], quiet_env: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert health(*args) == 1
    assert "needs" in capsys.readouterr().err


def test_tls_override_mounts_only_what_each_service_needs() -> None:
    """Servers get their own certificate and key, clients only the CA; the CA key never leaves."""
    base = all_services()
    tls = services("tls.yaml")
    assert set(tls) == FEDTIER_SERVICES and set(tls) <= set(base)
    header = (COMPOSE / "tls.yaml").read_text(encoding="utf-8")
    certs_line = " ".join(line.strip("# \\") for line in header.splitlines() if "fedtier certs" in line or
                          "--server" in line)
    issued = {arg.split("=")[0] for arg in re.findall(r"--server (\S+)", certs_line)}
    for name, svc in tls.items():
        env = svc["environment"]
        mounted = {Path(m["target"]).name for m in svc["volumes"]}
        assert all(m["read_only"] and m["type"] == "bind" for m in svc["volumes"]), name
        assert "ca-key.pem" not in mounted, f"{name} would hold the CA's private key"
        assert Path(env["FEDTIER_TLS_CA"]).name in mounted
        if name == "client":
            assert mounted == {"ca.pem"} and "FEDTIER_TLS_KEY" not in env
        else:
            assert {Path(env["FEDTIER_TLS_CERT"]).name, Path(env["FEDTIER_TLS_KEY"]).name} <= mounted
            assert Path(env["FEDTIER_TLS_CERT"]).stem in issued, f"the header's fedtier certs does not issue {name}"
    # everything that dials the reducer or checks it follows FEDTIER_REDUCER_SCHEME
    text = "".join((COMPOSE / n).read_text(encoding="utf-8") for n in ORDER)
    assert "http://${FEDN_REDUCER_HOST" not in text and "http://localhost" not in text
    assert ENV["FEDTIER_REDUCER_SCHEME"] == "http"


def test_tls_override_certificates_really_work_with_the_names_used(tmp_path: Path) -> None:
    """Issue the header's certificates and check each names what its peers dial."""
    from cryptography import x509

    from fedtier.launch.certs import ServerSpec, issue_server_cert

    for spec in ("reducer=localhost", "combiner-0=localhost", "combiner-1=localhost"):
        cert_path, _ = issue_server_cert(tmp_path, ServerSpec.parse(spec))
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        names = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                    .get_values_for_type(x509.DNSName))
        service = spec.split("=")[0]
        assert {service, "localhost"} <= names  # peers dial the service name; healthchecks dial localhost


# ---------------------------------------------------------------- monitoring: Prometheus and Grafana
PROMETHEUS = COMPOSE / "prometheus" / "prometheus.yml"
GRAFANA = COMPOSE / "grafana"
DURATION = r"^[0-9]+(ms|s|m|h|d|w|y)$"
# the part of Prometheus' configuration file format this deployment uses; promtool is not
# installed here, so its structure is held to this schema and the cross-checks below
PROMETHEUS_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["scrape_configs"],
    "properties": {
        "global": {"type": "object", "additionalProperties": False, "properties": {
            "scrape_interval": {"type": "string", "pattern": DURATION},
            "scrape_timeout": {"type": "string", "pattern": DURATION},
            "evaluation_interval": {"type": "string", "pattern": DURATION}}},
        "scrape_configs": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False, "required": ["job_name", "static_configs"],
            "properties": {
                "job_name": {"type": "string", "minLength": 1},
                "metrics_path": {"type": "string", "pattern": "^/"},
                "scheme": {"enum": ["http", "https"]},
                "scrape_interval": {"type": "string", "pattern": DURATION},
                "authorization": {"type": "object", "additionalProperties": False, "properties": {
                    "type": {"type": "string"}, "credentials_file": {"type": "string"}}},
                "tls_config": {"type": "object"},
                "static_configs": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "required": ["targets"],
                    "properties": {"targets": {"type": "array", "minItems": 1,
                                               "items": {"type": "string", "pattern": r"^[a-z0-9.-]+:[0-9]+$"}},
                                   "labels": {"type": "object"}}}}}}}}}


def prometheus_config() -> dict[str, Any]:
    return yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))


def scrape_targets() -> dict[str, list[tuple[str, int, str]]]:
    """job -> (host, port, metrics path) of each target."""
    return {job["job_name"]: [(t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1]), job.get("metrics_path", "/metrics"))
                              for static in job["static_configs"] for t in static["targets"]]
            for job in prometheus_config()["scrape_configs"]}


def test_prometheus_config_has_the_structure_prometheus_reads() -> None:
    from jsonschema import Draft7Validator

    validator = Draft7Validator(PROMETHEUS_SCHEMA)
    config = prometheus_config()
    assert not list(validator.iter_errors(config)), [e.message for e in validator.iter_errors(config)]
    jobs = [job["job_name"] for job in config["scrape_configs"]]
    assert len(jobs) == len(set(jobs)), "job names must be unique"
    broken = copy.deepcopy(config)  # the schema would catch a typo and a target without a port
    broken["scrape_configs"][0]["static_config"] = broken["scrape_configs"][0].pop("static_configs")
    broken["scrape_configs"][1]["static_configs"][0]["targets"] = ["combiner-0"]
    assert len(list(validator.iter_errors(broken))) >= 2


def test_prometheus_scrapes_every_fedtier_server_where_it_serves_metrics(tmp_path: Path) -> None:
    from fedtier.reducer.app import create_app

    everything = {**services("monitoring.yaml"), **all_services()}  # the fedtier services as defined
    monitoring = services("monitoring.yaml")
    targets = [t for ts in scrape_targets().values() for t in ts]
    assert {host for host, _, _ in targets} == {"reducer", "combiner-0", "combiner-1"}  # every server, once
    assert len(targets) == 3
    app = create_app(Settings(data_dir=tmp_path), poll_interval_s=None)
    try:
        routes = app.url_map.bind("localhost")
        for host, port, path in targets:
            assert host in everything, f"Prometheus scrapes {host}, which is no compose service"
            args = parse_fedtier(command(everything[host]), host)
            if args.command == "reducer":
                assert str(port) == option(command(everything[host]), "--port") == ENV["FEDN_REDUCER_PORT"]
                routes.match(path, method="GET")  # raises if the reducer has no such route
            else:  # a combiner serves its metrics on FEDTIER_METRICS_PORT, set for it by monitoring.yaml
                assert args.metrics_port is None  # the compose command leaves it to the environment
                env = {**all_services()[host]["environment"], **monitoring[host]["environment"]}
                settings = Settings.from_env({k: str(v) for k, v in env.items() if k not in CONTAINER_PATHS})
                assert settings.metrics_port == port and path == "/metrics"
                assert args.host == "0.0.0.0"  # bound where Prometheus, on the compose network, reaches it
                assert not any(str(port) in str(p) for p in everything[host].get("ports") or [])  # never published
    finally:
        app.extensions["fedtier"].close()
    # every combiner of combiner.yaml is scraped
    assert {n for n in services("combiner.yaml")} == {h for h, _, _ in targets if h.startswith("combiner")}


def test_monitoring_services_are_pinned_healthy_and_local() -> None:
    monitoring = services("monitoring.yaml")
    assert set(monitoring) == {"prometheus", "grafana", "reducer", "combiner-0", "combiner-1"}
    assert set(monitoring["reducer"]) == set(monitoring["combiner-0"]) == {"environment"}  # overrides only
    for name in ("prometheus", "grafana"):
        svc = monitoring[name]
        image, _, tag = svc["image"].rpartition(":")
        assert image and tag and tag != "latest" and re.match(r"^v?\d+\.\d+\.\d+$", tag), f"{name}: pin {svc['image']}"
        assert svc["restart"] == "unless-stopped" and svc["healthcheck"]["test"][0] == "CMD"
        assert all(str(p).startswith("127.0.0.1:") for p in svc["ports"]), f"{name} published beyond this machine"
        for mount in svc["volumes"]:
            if isinstance(mount, dict):
                assert mount["read_only"] and (COMPOSE / mount["source"]).is_dir(), mount
    assert monitoring["prometheus"]["depends_on"] == {"reducer": {"condition": "service_healthy"}}
    assert monitoring["grafana"]["depends_on"] == {"prometheus": {"condition": "service_healthy"}}
    declared = set(loaded("monitoring.yaml")["volumes"])
    assert {"prometheus-data", "grafana-data"} <= declared
    assert "change" in ENV["GRAFANA_ADMIN_PASSWORD"].lower()
    [config] = [m for m in monitoring["prometheus"]["volumes"] if isinstance(m, dict)]
    command_line = " ".join(monitoring["prometheus"]["command"])
    assert f"--config.file={config['target']}/{PROMETHEUS.name}" in command_line
    assert (COMPOSE / config["source"]).resolve() == PROMETHEUS.parent


def test_grafana_provisioning_finds_prometheus_and_the_dashboard() -> None:
    grafana = services("monitoring.yaml")["grafana"]
    mounts_ = {Path(m["target"]): (COMPOSE / m["source"]).resolve() for m in grafana["volumes"] if isinstance(m, dict)}
    assert mounts_[Path("/etc/grafana/provisioning")] == GRAFANA / "provisioning"
    [datasource] = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())["datasources"]
    url = urlsplit(datasource["url"])
    prometheus = services("monitoring.yaml")["prometheus"]
    assert datasource["type"] == "prometheus" and url.hostname == "prometheus"
    assert any(str(p).endswith(f":{url.port}") for p in prometheus["ports"])  # the port Prometheus listens on
    [provider] = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "fedtier.yaml").read_text())["providers"]
    folder = mounts_[Path(provider["options"]["path"])]  # the provider reads a mounted folder
    dashboards = sorted(folder.glob("*.json"))
    assert dashboards, f"no dashboard in {folder}"
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert mounts_[home.parent] == folder and (folder / home.name).is_file()
    for path in dashboards:
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        assert dashboard["uid"] and dashboard["title"] and dashboard["panels"]
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
            assert {"x", "y", "w", "h"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
            refs = [t["refId"] for t in panel["targets"]]
            assert refs and len(refs) == len(set(refs)) and all(t["expr"].strip() for t in panel["targets"])
            for target in panel["targets"]:
                assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
    # which metric names the panels may ask for is checked against a live reducer and combiner
    # in tests/test_metrics.py (test_the_dashboard_asks_only_for_exported_metrics)

"""The layers of the code base, read from the source: who may import whom.

The foundation (``fedtier/``, ``helpers/``, ``proto/``) is what every component
imports, so it must import no component back: a circle makes a component's import
pull in every other one (and the CLI's dependencies), and hides which code a
process really runs. The launchers (``launch/``: the CLI, the sandbox, the
local-network launcher) start components, so they sit above them and nothing below
imports them. The data tools (``datatools/``) serve projects' training code, beside
the foundation. Every import statement counts, lazy ones inside functions too, and
``importlib.import_module`` with a literal name.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: folder -> layer; every package folder setup.py installs must have one.
LAYER_OF_FOLDER = {
    "fedtier": "foundation", "helpers": "foundation", "proto": "foundation",
    "datatools": "data",
    "reducer": "component", "combiner": "component", "client": "component",
    "launch": "launcher",
}
#: layer -> the layers it may import.
MAY_IMPORT = {
    "foundation": {"foundation"},
    "data": {"foundation", "data"},
    "component": {"foundation", "data", "component"},
    "launcher": {"foundation", "data", "component", "launcher"},
}


def setup_folders() -> list[str]:
    """The package folders setup.py maps under ``fedtier.`` (its COMPONENTS list), plus ``fedtier``."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "COMPONENTS" for t in node.targets):
            return ["fedtier", *ast.literal_eval(node.value)]
    raise AssertionError("setup.py has no COMPONENTS list")


def layer_of_module(name: str) -> str | None:
    """``fedtier.reducer.app`` -> "component"; ``fedtier.config`` -> "foundation"; non-fedtier -> None."""
    parts = name.split(".")
    if parts[0] != "fedtier":
        return None
    if len(parts) > 1 and parts[1] in LAYER_OF_FOLDER and parts[1] != "fedtier":
        return LAYER_OF_FOLDER[parts[1]]
    return "foundation"


def imported_modules(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in one file, relative ones resolved against ``package``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # ``from fedtier import launch`` imports the package fedtier.launch
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return found


def layering_violations(root: Path = ROOT) -> list[str]:
    """Every import that goes against MAY_IMPORT, as "file:line imports module (layer -> layer)"."""
    problems = []
    for folder, layer in LAYER_OF_FOLDER.items():
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            dotted = "fedtier" if folder == "fedtier" else f"fedtier.{folder}"
            module = ".".join([dotted, *parts])
            package = module if path.name == "__init__.py" else module.rpartition(".")[0]
            for line, imported in imported_modules(path, package):
                target = layer_of_module(imported)
                if target is not None and target not in MAY_IMPORT[layer]:
                    problems.append(f"{folder}/{rel}.py:{line} imports {imported} ({layer} -> {target})")
    return sorted(problems)


def test_every_installed_folder_has_a_layer() -> None:
    assert sorted(setup_folders()) == sorted(LAYER_OF_FOLDER), \
        "setup.py installs a folder this test gives no layer to (or the other way round)"


def test_the_foundation_imports_no_component_and_components_no_launcher() -> None:
    problems = layering_violations()
    assert not problems, "imports against the layering:\n" + "\n".join(problems)


def test_the_scan_sees_lazy_relative_and_from_package_imports(tmp_path: Path) -> None:
    """The rule would pass vacuously if the scanner missed the forms circles usually take."""
    for folder in LAYER_OF_FOLDER:
        (tmp_path / folder).mkdir()
    (tmp_path / "fedtier" / "a.py").write_text(
        "def f():\n    from fedtier.reducer import app\n"
        "from fedtier import launch\n"
        "import importlib\nimportlib.import_module('fedtier.client.swarm')\n")
    (tmp_path / "reducer" / "b.py").write_text("from ..launch import cli\nfrom fedtier.config import Settings\n")
    (tmp_path / "launch" / "c.py").write_text("from fedtier.reducer import app\n")
    problems = layering_violations(tmp_path)
    assert problems == [
        "fedtier/a.py:2 imports fedtier.reducer.app (foundation -> component)",
        "fedtier/a.py:3 imports fedtier.launch (foundation -> launcher)",
        "fedtier/a.py:5 imports fedtier.client.swarm (foundation -> component)",
        "reducer/b.py:1 imports fedtier.launch.cli (component -> launcher)",
    ]

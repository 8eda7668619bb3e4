"""The README's "Running the parts yourself" runs as written, on a fresh copy of the repository.

It used to fail for anyone who tried it: `fedtier` was not on PATH, the seed file it named did not
exist, it started one client while asking for two, and the combiner announced a name that nothing
resolved, so no client ever connected. Here the README's own lines run in one bash process, in a
folder holding only the repository's tracked files (what a clone holds) plus the `.venv` that
`make venv` would have made; nothing is rewritten.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from conftest import ROOT
from fedtier.launch.network import port_in_use

SECTION = "## Running the parts yourself"
PORTS = (8090, 12080)  # what the walkthrough names


def walkthrough_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    start = text.index(SECTION)
    end = text.find("\n## ", start + 3)
    blocks = re.findall(r"```bash\n(.*?)```", text[start:end if end > 0 else None], flags=re.S)
    assert len(blocks) >= 2, "the walkthrough needs a block that starts the network and one that stops it"
    return blocks


def fresh_clone(dest: Path) -> Path:
    """The tracked files as they are in the working tree, and the virtualenv `make venv` makes."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():  # a file deleted but not yet committed is not in a clone either
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    venv = ROOT / ".venv"
    if not (venv / "bin" / "activate").is_file():
        venv = Path(sys.prefix)  # the virtualenv running the tests, if it is one
    if not (venv / "bin" / "activate").is_file() or not (venv / "bin" / "fedtier").is_file():
        pytest.skip("no virtualenv with fedtier to stand for .venv (run `make venv`)")
    activates = subprocess.run(["bash", "-c", f'source "{venv}/bin/activate" && printf %s "$VIRTUAL_ENV"'],
                               capture_output=True, text=True, timeout=10).stdout
    if Path(activates).resolve() != venv.resolve():
        pytest.skip(f"{venv}/bin/activate activates {activates}: a copied virtualenv; `make venv` makes one")
    (dest / ".venv").symlink_to(venv)
    return dest


def shell_env() -> dict[str, str]:
    """A user's shell: no fedtier settings, and no `fedtier` on PATH until the README puts it there."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FEDN_", "FEDTIER_", "CLIENT_NAME_BASE")) and k != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and not (Path(p) / "fedtier").exists())
    return env


def test_running_the_parts_yourself_runs_as_written(tmp_path: Path) -> None:
    bring_up, *_, stop = walkthrough_blocks()
    busy = [p for p in PORTS if port_in_use(p, "0.0.0.0")]
    if busy:
        pytest.skip(f"the walkthrough uses ports {PORTS}; {busy} in use on this machine")
    repo = fresh_clone(tmp_path / "clone")
    assert shutil.which("fedtier", path=shell_env()["PATH"]) is None
    log = open(tmp_path / "shell.log", "wb")
    shell = subprocess.Popen(["bash"], stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, cwd=repo,
                             env=shell_env(), start_new_session=True)  # its own group: killed whole below
    assert shell.stdin is not None

    def logs() -> str:
        found = {p.name: p.read_text(errors="replace")[-2000:] for p in sorted((repo / "var").glob("*.log"))}
        return (tmp_path / "shell.log").read_text(errors="replace") + "".join(
            f"\n----- {n}\n{t}" for n, t in found.items())

    try:
        shell.stdin.write(bring_up.encode())
        shell.stdin.flush()
        url = f"http://localhost:{PORTS[0]}"
        deadline, session = time.monotonic() + 90, None
        while time.monotonic() < deadline:
            assert shell.poll() is None, f"the shell exited with {shell.returncode}:\n{logs()}"
            try:
                sessions = requests.get(url + "/api/v1/sessions", timeout=5).json()
            except requests.RequestException:
                sessions = []
            if sessions and sessions[0]["status"] != "running":
                session = sessions[0]
                break
            time.sleep(0.5)
        assert session is not None, f"no session finished within 90 s:\n{logs()}"
        assert (session["status"], session["rounds_succeeded"]) == ("succeeded", 3), f"{session}\n{logs()}"
        rounds = requests.get(url + "/api/v1/rounds", params={"session_id": session["id"]}, timeout=5).json()
        assert [len(r["participants"]) for r in rounds] == [2, 2, 2], rounds  # both clients, every round

        shell.stdin.write(stop.encode())
        shell.stdin.close()
        assert shell.wait(30) == 0, logs()
        deadline = time.monotonic() + 20  # the README's stop line stops every process it started
        while any(port_in_use(p, "0.0.0.0") for p in PORTS) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in PORTS if port_in_use(p, "0.0.0.0")], f"still listening after the stop line:\n{logs()}"
    finally:
        try:
            os.killpg(shell.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shell.wait(10)
        log.close()


def test_one_command_network_synopsis_matches_the_cli() -> None:
    """The sandbox synopsis shows its optional flags in [brackets], so it cannot run as written
    (tests/test_sandbox.py runs the sandbox): every flag and path it names must exist."""
    import shlex

    from fedtier.launch.cli import build_parser

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("## The one-command network")
    [block] = re.findall(r"```bash\n(.*?)```", text[start:text.index("\n## ", start + 3)], flags=re.S)
    argv = shlex.split(block.replace("\\\n", " ").replace("[", "").replace("]", ""))
    assert argv[0] == ".venv/bin/fedtier", argv
    args = build_parser().parse_args(argv[1:])  # exits (fails the test) on an option the CLI lacks
    assert args.command == "sandbox" and (ROOT / args.project / "fedn.yaml").is_file()

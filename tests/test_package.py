"""Compute packages: deterministic, verified before extraction, and only what the admin uploaded runs."""
from __future__ import annotations

import gzip
import io
import os
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from conftest import TEST_PROJECTS, ProcessGroup, free_port, wait_for_port
from fedtier.helpers import get_helper
from fedtier.identity import generate_keypair, issue, load_signing_key
from fedtier.package import PackageError, check, pack, sha256_hex, unpack

SHIFT = TEST_PROJECTS / "numpy_shift"


def archive(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def file_entry(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


GOOD_YAML = b"entry_points:\n  train:\n    command: x\n  validate:\n    command: y\n"


def test_pack_is_deterministic_and_skips_caches(tmp_path: Path) -> None:
    project = tmp_path / "p"
    project.mkdir()
    for f in SHIFT.iterdir():
        if f.is_file():
            (project / f.name).write_bytes(f.read_bytes())
    (project / "__pycache__").mkdir()
    (project / "__pycache__" / "x.pyc").write_bytes(b"junk")
    first = pack(project)
    # a later mtime must not change the bytes (set, not waited for: a minute later, past any rounding)
    later = (project / "shift.py").stat().st_mtime + 60
    os.utime(project / "shift.py", (later, later))
    assert (project / "shift.py").stat().st_mtime == later
    assert pack(project) == first
    names = check(first)
    assert "fedn.yaml" in names and "shift.py" in names and not any("__pycache__" in n for n in names)
    (project / "shift.py").write_text((project / "shift.py").read_text() + "\n# changed\n")
    assert sha256_hex(pack(project)) != sha256_hex(first)


@pytest.mark.parametrize("entries, message", [
    ([file_entry("fedn.yaml", GOOD_YAML), file_entry("../escape.py", b"x")], "unsafe path"),
    ([file_entry("fedn.yaml", GOOD_YAML), file_entry("/etc/cron.d/x", b"x")], "unsafe path"),
    ([file_entry("main.py", b"x")], "no fedn.yaml"),
    ([file_entry("fedn.yaml", b"entry_points: [unclosed")], "not valid YAML"),
    ([file_entry("fedn.yaml", b"helper: numpy")], "entry_points"),
])
def test_hostile_or_broken_archives_are_refused(entries, message: str) -> None:
    with pytest.raises(PackageError, match=message):
        check(archive(entries))


def test_links_and_non_archives_are_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("evil")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    with pytest.raises(PackageError, match="not a plain file"):
        check(archive([file_entry("fedn.yaml", GOOD_YAML), (link, None)]))
    with pytest.raises(PackageError, match="not a gzip'd tar"):
        check(b"PK\x03\x04 a zip, not a tarball")
    data = archive([file_entry("fedn.yaml", GOOD_YAML)])
    with pytest.raises(PackageError, match="does not match the expected"):
        unpack(data, "0" * 64, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert (unpack(data, sha256_hex(data), tmp_path / "out") / "fedn.yaml").read_bytes() == GOOD_YAML


def test_clients_run_only_the_uploaded_package(procs: ProcessGroup, tmp_path: Path) -> None:
    admin = {"Authorization": "Token admin-token"}
    signing, verify = generate_keypair(tmp_path / "keys")
    creds = tmp_path / "credentials"
    creds.mkdir()
    for name in ("client-0", "client-1", "pinned"):  # each client downloads the package with its own credential
        (creds / f"{name}.token").write_text(issue(load_signing_key(signing), "client", name, 3600))
    env = {"FEDTIER_DATA_DIR": str(tmp_path / "data"), "FEDTIER_CREDENTIALS_DIR": str(creds)}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    reducer = procs.start("reducer", "reducer", "--host", "127.0.0.1", "--port", str(port), env={
        **env, "FEDN_ALLIANCE_ADMIN_AUTH_TOKEN": "admin-token", "FEDTIER_TOKEN_SIGNING_KEY": str(signing),
        "FEDTIER_TOKEN_VERIFY_KEY": str(verify)})
    wait_for_port(port, proc=reducer)
    procs.start("combiner", "combiner", "--name", "c0", "--host", "127.0.0.1", "--port", str(free_port()),
                "--reducer", url, "--heartbeat-interval", "0.3", env={
                    **env, "FEDTIER_TOKEN_VERIFY_KEY": str(verify),
                    "FEDN_ALLIANCE_AUTH_TOKEN": issue(load_signing_key(signing), "combiner", "c0", 3600)})
    data = pack(SHIFT)
    for i in range(2):  # no --project: they wait for the package, then verify and run it
        procs.start(f"client-{i}", "client", "--reducer", url, "--name", f"client-{i}", "--partition", f"{i}/2",
                    env=env)
    procs.start("pinned", "client", "--reducer", url, "--name", "pinned", "--package-sha256", "f" * 64, env=env)

    assert requests.post(f"{url}/package", files={"package": ("p.tgz", data)}, timeout=10).status_code == 401
    assert requests.get(f"{url}/api/v1/package/download", timeout=10).status_code == 401
    bad = requests.post(f"{url}/package", files={"package": ("p.tgz", b"not a package")}, headers=admin, timeout=10)
    assert bad.status_code == 400 and bad.json()["field"] == "package"
    stored = requests.post(f"{url}/package", files={"package": ("p.tgz", data)}, headers=admin, timeout=10)
    assert stored.status_code == 201 and stored.json()["package"]["sha256"] == sha256_hex(data)
    seed = get_helper("numpy").to_bytes({"w": np.zeros(3, np.float32)})
    assert requests.post(f"{url}/seed", files={"seed": ("s", seed)}, headers=admin, timeout=10).status_code == 201

    deadline = time.monotonic() + 90
    while requests.get(f"{url}/api/v1/status", timeout=5).json()["clients_active"] < 2:
        assert time.monotonic() < deadline, procs.dump_logs()
        time.sleep(0.3)
    start = requests.post(f"{url}/start", json={"rounds": 1, "clients_required": 2, "validate": False},
                          headers=admin, timeout=10)
    assert start.status_code == 201, start.text
    session_url = f"{url}/api/v1/sessions/{start.json()['session_id']}"
    while (session := requests.get(session_url, timeout=5).json())["status"] == "running":
        assert time.monotonic() < deadline + 60, procs.dump_logs()
        time.sleep(0.3)
    assert session["rounds_succeeded"] == 1
    assert procs.procs["pinned"].wait(30) != 0  # the pinned client refused a package it was not told to run
    assert "refusing to run it" in procs.log("pinned")
    assert not (tmp_path / "data" / "clients" / "pinned" / "packages").exists() or \
        not any((tmp_path / "data" / "clients" / "pinned" / "packages").iterdir())

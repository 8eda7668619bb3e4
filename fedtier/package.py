"""Compute packages: a project folder as one verifiable archive.

The admin uploads a package to the reducer; clients that have no local project
download it, check its sha256 against what the reducer recorded (and against a
checksum pinned on the client, when given) before a single file is extracted, and
extract it refusing anything that could land outside the target folder. Packing is
deterministic (sorted names, fixed times and owners), so the same folder always
gives the same checksum and a user can verify what runs on the clients.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import yaml

MAX_PACKAGE_BYTES = 512 << 20
MAX_MEMBERS = 10_000
SKIP_DIRS = {"__pycache__", ".git", ".venv", ".pytest_cache", ".ipynb_checkpoints"}
SKIP_SUFFIXES = (".pyc", ".pyo")


class PackageError(ValueError):
    """The archive is not an acceptable compute package; says why."""


def pack(project: str | os.PathLike) -> bytes:
    """A gzip'd tar of the project's files, byte-identical for identical contents."""
    root = Path(project)
    if not (root / "fedn.yaml").is_file() and not (root / "fedtier.yaml").is_file():
        raise PackageError(f"{root} has no fedn.yaml")
    buffer = io.BytesIO()
    # mtime=0 in the gzip header too, or the checksum would change every run
    import gzip

    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(root.rglob("*")):
                relative = path.relative_to(root)
                if any(part in SKIP_DIRS for part in relative.parts) or path.suffix in SKIP_SUFFIXES:
                    continue
                if path.is_symlink() or not path.is_file():
                    continue
                info = tarfile.TarInfo(relative.as_posix())
                info.size = path.stat().st_size
                info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
                info.mtime = 0
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open(path, "rb") as f:
                    tar.addfile(info, f)
    return buffer.getvalue()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check(data: bytes) -> list[str]:
    """Validate an archive without extracting it; returns its file names."""
    if len(data) > MAX_PACKAGE_BYTES:
        raise PackageError(f"package is {len(data)} bytes, over the limit of {MAX_PACKAGE_BYTES}")
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise PackageError(f"not a gzip'd tar archive: {exc}") from None
    if len(members) > MAX_MEMBERS:
        raise PackageError(f"package has {len(members)} entries, over the limit of {MAX_MEMBERS}")
    names = []
    for member in members:
        path = Path(member.name)
        if member.name.startswith(("/", "\\")) or ".." in path.parts or path.is_absolute():
            raise PackageError(f"unsafe path in package: {member.name!r}")
        if not (member.isfile() or member.isdir()):
            raise PackageError(f"package entry {member.name!r} is not a plain file or folder")
        names.append(path.as_posix())
    spec_name = next((n for n in ("fedn.yaml", "fedtier.yaml") if n in names), None)
    if spec_name is None:
        raise PackageError("package has no fedn.yaml at its top level")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        spec_file = tar.extractfile(spec_name)
        try:
            spec = yaml.safe_load(spec_file.read() if spec_file else b"")
        except yaml.YAMLError as exc:
            raise PackageError(f"{spec_name} is not valid YAML: {exc}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("entry_points"), dict):
        raise PackageError(f"{spec_name} needs an 'entry_points' mapping")
    return names


def unpack(data: bytes, expected_sha256: str, dest: str | os.PathLike) -> Path:
    """Verify, then extract into ``dest`` (created; must not exist yet)."""
    actual = sha256_hex(data)
    if actual != expected_sha256:
        raise PackageError(f"package checksum {actual[:16]}... does not match the expected "
                           f"{expected_sha256[:16]}...: refusing to run it")
    check(data)
    target = Path(dest)
    tmp = target.with_name(f".{target.name}.partial")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(tmp, filter="data")  # refuses links, devices and escaping paths
    tmp.rename(target)
    return target

"""Compute packages: a project folder as one verifiable archive.

The admin uploads a package to the reducer; clients that have no local project
download it, check its sha256 against what the reducer recorded (and against a
checksum pinned on the client, when given) before a single file is extracted, and
extract it refusing anything that could land outside the target folder. Packing is
deterministic (sorted names, fixed times and owners), so the same folder always
gives the same checksum and a user can verify what runs on the clients.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import tarfile
import zlib
from pathlib import Path
from typing import Any

import yaml

from fedtier import limits
from fedtier.limits import Limits

SKIP_DIRS = {"__pycache__", ".git", ".venv", ".pytest_cache", ".ipynb_checkpoints"}
SKIP_SUFFIXES = (".pyc", ".pyo")


class PackageError(ValueError):
    """The archive is not an acceptable compute package; says why."""


class PackageTooLarge(PackageError):
    """The archive is over a bound (``bound``: a field of fedtier.limits.Limits)."""

    def __init__(self, what: str, bound: str, bounds: Limits) -> None:
        super().__init__(f"{what} is over {bounds.describe(bound)}")
        self.bound = bound
        self.variable = Limits.variable(bound)


def pack(project: str | os.PathLike) -> bytes:
    """A gzip'd tar of the project's files, byte-identical for identical contents."""
    root = Path(project)
    if not (root / "fedn.yaml").is_file() and not (root / "fedtier.yaml").is_file():
        raise PackageError(f"{root} has no fedn.yaml")
    buffer = io.BytesIO()
    # mtime=0 in the gzip header too, or the checksum would change every run
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


class _Decompressed(io.RawIOBase):
    """The archive's tar stream, refused the moment it grows past the unpacked bound.

    A few KiB of gzip can expand to gigabytes; counting what comes out of the
    decompressor, instead of trusting what the tar headers say, stops a bomb after the
    bound's worth of work whatever its headers claim."""

    def __init__(self, data: bytes, bounds: Limits) -> None:
        self._gz = gzip.GzipFile(fileobj=io.BytesIO(data))
        self._bounds = bounds
        self.total = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        got = self._gz.readinto(buffer)
        self.total += got
        if self.total > self._bounds.package_unpacked_bytes:
            raise PackageTooLarge("the package's unpacked archive", "package_unpacked_bytes", self._bounds)
        return got


def check(data: bytes, bounds: Limits | None = None) -> list[str]:
    """Validate an archive without extracting it; returns its file names.

    The archive is read once, as a stream, and refused at the first entry over a bound:
    the number of entries, the running total of their sizes (known from each tar header,
    before its data is read) and the bytes the decompressor has produced."""
    bounds = bounds or limits.current()
    if len(data) > bounds.package_bytes:
        raise PackageTooLarge(f"the package ({len(data)} bytes)", "package_bytes", bounds)
    names: list[str] = []
    spec: Any = None
    declared = 0
    try:
        with tarfile.open(fileobj=_Decompressed(data, bounds), mode="r|") as tar:
            for member in tar:
                if len(names) >= bounds.package_files:
                    raise PackageTooLarge(f"the package's entry count (more than {len(names)})", "package_files",
                                          bounds)
                path = Path(member.name)
                if member.name.startswith(("/", "\\")) or ".." in path.parts or path.is_absolute():
                    raise PackageError(f"unsafe path in package: {member.name!r}")
                if not (member.isfile() or member.isdir()):
                    raise PackageError(f"package entry {member.name!r} is not a plain file or folder")
                declared += member.size
                if declared > bounds.package_unpacked_bytes:
                    raise PackageTooLarge(f"the package's files (at least {declared} bytes unpacked)",
                                          "package_unpacked_bytes", bounds)
                name = path.as_posix()
                names.append(name)
                if name in ("fedn.yaml", "fedtier.yaml") and member.isfile() and spec is None:
                    spec_file = tar.extractfile(member)
                    spec = (name, spec_file.read() if spec_file else b"")
    except PackageError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise PackageError(f"not a gzip'd tar archive: {exc}") from None
    if spec is None:
        raise PackageError("package has no fedn.yaml at its top level")
    spec_name, text = spec
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PackageError(f"{spec_name} is not valid YAML: {exc}") from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("entry_points"), dict):
        raise PackageError(f"{spec_name} needs an 'entry_points' mapping")
    return names


def unpack(data: bytes, expected_sha256: str, dest: str | os.PathLike) -> Path:
    """Verify, then extract into ``dest`` (created; must not exist yet)."""
    actual = sha256_hex(data)
    if actual != expected_sha256:
        raise PackageError(f"package checksum {actual[:16]}... does not match the expected "
                           f"{expected_sha256[:16]}...: refusing to run it")
    check(data)  # this process's own bounds: a client does not take the reducer's word for them
    target = Path(dest)
    tmp = target.with_name(f".{target.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            tar.extractall(tmp, filter="data")  # refuses links, devices and escaping paths
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target

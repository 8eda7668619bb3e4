"""Fetching the compute package from the reducer, verified before anything is extracted."""
from __future__ import annotations

import logging
from pathlib import Path

import requests

from fedtier import limits
from fedtier.limits import Limits
from fedtier.package import PackageError, PackageTooLarge, unpack

log = logging.getLogger(__name__)


class PackageUnavailable(ConnectionError):
    """The reducer has no package yet or cannot be reached; worth retrying."""


def fetch_package(reducer_url: str, work_dir: Path, token: str = "", verify: str | bool = True,
                  pinned_sha256: str = "") -> Path:
    """Download, verify and extract the reducer's current package; returns its folder.

    The checksum is checked twice: the bytes against the reducer's record, and the
    record against ``pinned_sha256`` when the client was started with one, so a
    compromised reducer cannot make this client run code its owner did not approve.
    """
    headers = {"Authorization": f"Token {token}"} if token else {}
    base = reducer_url.rstrip("/")
    try:
        info = requests.get(f"{base}/api/v1/package", headers=headers, verify=verify, timeout=10)
    except requests.RequestException as exc:
        raise PackageUnavailable(f"reducer at {reducer_url} not reachable ({exc.__class__.__name__})") from None
    if info.status_code == 404:
        raise PackageUnavailable("the reducer has no compute package yet")
    if info.status_code != 200:
        raise PackageError(f"reducer refused the package: {info.status_code} {info.text.strip()[:200]}")
    expected = info.json()["sha256"]
    if pinned_sha256 and expected != pinned_sha256:
        raise PackageError(f"the reducer offers package {expected[:16]}..., but this client is pinned to "
                           f"{pinned_sha256[:16]}...: refusing to run it")
    target = work_dir / "packages" / expected
    if target.is_dir():
        return target  # verified when it was extracted
    try:
        data = _download(f"{base}/api/v1/package/download", headers, verify, limits.current())
    except requests.RequestException as exc:  # e.g. a transfer the reducer broke off: damaged in its store
        raise PackageUnavailable(f"package download failed ({exc.__class__.__name__})") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    unpack(data, expected, target)
    log.info("compute package %s... verified and extracted to %s", expected[:16], target)
    return target


def _download(url: str, headers: dict[str, str], verify: str | bool, bounds: Limits) -> bytes:
    """The package's bytes, refused as soon as they pass FEDTIER_MAX_PACKAGE_BYTES: the
    client bounds what it holds in memory by its own setting, not the reducer's word."""
    with requests.get(url, headers=headers, verify=verify, timeout=300, stream=True) as reply:
        if reply.status_code != 200:
            raise PackageUnavailable(f"package download failed: {reply.status_code}")
        data = bytearray()
        for block in reply.iter_content(1 << 20):
            data += block
            if len(data) > bounds.package_bytes:
                raise PackageTooLarge("the package download", "package_bytes", bounds)
    return bytes(data)

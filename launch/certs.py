"""``fedtier certs``: a private CA and server certificates for the reducer and combiners.

Federations span organisations, so traffic is encrypted and servers are verified
against a CA the federation owns. One CA (``ca.pem``) is made once and reused; each
server gets ``NAME.pem``/``NAME-key.pem`` with the DNS names and IP addresses its
peers use to reach it as subject alternative names (verification checks those,
not the common name). Private keys are written with mode 0600.
"""
from __future__ import annotations

import datetime
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerSpec:
    name: str
    dns: tuple[str, ...]
    ips: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> "ServerSpec":
        """``NAME[=host1,host2,10.0.0.5]``: the name is always a DNS SAN too."""
        name, _, rest = text.partition("=")
        if not name.strip():
            raise ValueError(f"server spec {text!r} needs a name")
        dns, ips = [name.strip()], []
        for item in filter(None, (x.strip() for x in rest.split(","))):
            try:
                ips.append(str(ipaddress.ip_address(item)))
            except ValueError:
                dns.append(item)
        return cls(name.strip(), tuple(dict.fromkeys(dns)), tuple(ips))


def _write(path: Path, data: bytes, private: bool = False) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def ensure_ca(out: Path, days: int = 3650) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Load ``out/ca.pem`` and its key, or make them: re-running never replaces a CA."""
    cert_path, key_path = out / "ca.pem", out / "ca-key.pem"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        return cert, key  # type: ignore[return-value]
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedtier federation CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    out.mkdir(parents=True, exist_ok=True)
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    log.info("created CA %s", cert_path)
    return cert, key


def issue_server_cert(out: Path, spec: ServerSpec, days: int = 825) -> tuple[Path, Path]:
    ca_cert, ca_key = ensure_ca(out)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in spec.dns]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in spec.ips]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spec.name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = out / f"{spec.name}.pem", out / f"{spec.name}-key.pem"
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    log.info("issued %s for %s", cert_path, ", ".join([*spec.dns, *spec.ips]))
    return cert_path, key_path

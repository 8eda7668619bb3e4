"""Signed credentials bound to a name and a role: who a caller is, checked without asking anyone.

A federation has four kinds of callers. People and the SDK are ``admin``: they hold the
shared admin token (``FEDN_ALLIANCE_ADMIN_AUTH_TOKEN``), which only the reducer checks.
Clients, combiners and the reducer itself hold *credentials*: JSON Web Tokens signed
with the federation's Ed25519 signing key, each naming one participant (``sub``) and
its role. Signing is asymmetric so that every combiner can verify a client's credential
with the public verify key alone, without calling the reducer and without being able to
mint credentials itself. The reducer's own credentials are *audience-bound*: the one it
presents to combiner ``c0`` carries ``aud=c0`` and lives an hour, so a combiner that
captures it can open only itself with it, never another combiner or the reducer's API.

The signing itself is PyJWT's (EdDSA over ``cryptography``); this module only fixes the
claims (``sub``, ``role``, ``iat``, ``exp``, ``jti``, ``iss``, and ``aud`` for the
reducer), requires all of them, bounds the token's length before parsing it, and turns
every failure into a :class:`CredentialError` that says why. It imports no component.
"""
from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Collection

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ISSUER = "fedtier"
ALGORITHM = "EdDSA"
ROLES = ("client", "combiner", "reducer")  # signed roles; "admin" is the shared admin token
MAX_TOKEN_BYTES = 4096      # a credential is ~300 bytes; anything longer is refused before parsing
LEEWAY_S = 30.0             # clock skew tolerated on exp/iat between machines
REDUCER_LIFETIME_S = 3600.0  # the reducer's audience-bound credentials; re-minted before they expire
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # the names /add and /assign accept
SIGNING_FILE, VERIFY_FILE = "signing-key.pem", "verify-key.pem"
REDUCER_NAME = "reducer"  # the name the reducer's own transfers carry (client_name); no participant may take it
_REQUIRED = ["sub", "role", "iat", "exp", "jti", "iss"]


class CredentialError(ValueError):
    """A credential was refused; the message says why (expired, wrong role, bad signature...)."""


class NotPermitted(CredentialError):
    """A valid credential, but not for this: another role, or another service's audience."""


@dataclass(frozen=True)
class Identity:
    """Who a verified credential says the caller is."""
    name: str
    role: str
    expires_at: float
    token_id: str
    audience: str | None = None


# ---------------------------------------------------------------- keys
def generate_keypair(out: Path) -> tuple[Path, Path]:
    """Write a new signing key (mode 0600) and its verify key into ``out``; never overwrite.

    Replacing a signing key silently would invalidate every credential in the federation,
    so an existing file is an error and rotation is a deliberate act
    (docs/security.md#keys-expiry-rotation-revocation).
    """
    out.mkdir(parents=True, exist_ok=True)
    signing, verify = out / SIGNING_FILE, out / VERIFY_FILE
    for path in (signing, verify):
        if path.exists():
            raise FileExistsError(f"{path} exists: refusing to overwrite a key (move it away to rotate keys)")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    fd = os.open(signing, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    fd = os.open(verify, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(public)
    return signing, verify


def load_signing_key(path: str | os.PathLike, what: str = "signing key") -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CredentialError(f"{what} {path}: not a readable PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CredentialError(f"{what} {path}: not an Ed25519 key (make one with fedtier token keygen)")
    return key


def load_verify_key(path: str | os.PathLike, what: str = "verify key") -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise CredentialError(f"{what} {path}: not a readable PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise CredentialError(f"{what} {path}: not an Ed25519 key (make one with fedtier token keygen)")
    return key


# ---------------------------------------------------------------- issue and verify
def issue(signing_key: Ed25519PrivateKey, role: str, name: str, lifetime_s: float,
          audience: str | None = None, now: float | None = None) -> str:
    """A credential for ``name`` in ``role``, valid for ``lifetime_s`` seconds."""
    if role not in ROLES:
        raise CredentialError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if not NAME.match(name or ""):
        raise CredentialError(f"name must be 1-128 letters, digits, '.', '_' or '-', got {name!r}")
    if role != "reducer" and name == REDUCER_NAME:
        raise CredentialError(f"{REDUCER_NAME!r} is the reducer's own name: choose another")
    if (role == "reducer") != (audience is not None):
        raise CredentialError("a reducer credential names exactly one combiner as its audience; no other role has one")
    if not lifetime_s > 0:
        raise CredentialError(f"lifetime must be positive, got {lifetime_s}")
    issued = int(time.time() if now is None else now)
    claims = {"iss": ISSUER, "sub": name, "role": role, "iat": issued, "exp": issued + int(lifetime_s),
              "jti": uuid.uuid4().hex}
    if audience is not None:
        claims["aud"] = audience
    return jwt.encode(claims, signing_key, algorithm=ALGORITHM)


def _decode(verify_key: Ed25519PublicKey, token: str) -> dict:
    if not isinstance(token, str) or not token:
        raise CredentialError("no credential presented")
    if len(token) > MAX_TOKEN_BYTES:
        raise CredentialError(f"credential of {len(token)} bytes is longer than the {MAX_TOKEN_BYTES} accepted")
    try:
        return jwt.decode(token, verify_key, algorithms=[ALGORITHM], issuer=ISSUER, leeway=LEEWAY_S,
                          options={"require": _REQUIRED, "verify_aud": False})
    except jwt.ExpiredSignatureError:
        try:
            exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
        except jwt.PyJWTError:
            exp = None
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(exp)) if isinstance(exp, (int, float)) else "?"
        raise CredentialError(f"credential expired at {when}") from None
    except jwt.InvalidSignatureError:
        raise CredentialError("bad signature: not signed by this federation's signing key") from None
    except jwt.MissingRequiredClaimError as exc:
        raise CredentialError(f"not a fedtier credential: {exc}") from None
    except jwt.InvalidIssuerError:
        raise CredentialError("not a fedtier credential: wrong issuer") from None
    except jwt.PyJWTError as exc:
        raise CredentialError(f"not a fedtier credential ({exc})") from None


def check_claims(claims: dict, roles: Collection[str], audience: str | None = None,
                 now: float | None = None) -> Identity:
    """The checks after the signature: role, audience, name, expiry (again, for cached claims)."""
    role, name, aud = claims.get("role"), claims.get("sub"), claims.get("aud")
    if role not in ROLES or not isinstance(name, str) or not NAME.match(name) or \
            ((role == "reducer") != (name == REDUCER_NAME)):
        raise CredentialError("not a fedtier credential: bad role or name claim")
    if role not in roles:
        raise NotPermitted(f"wrong role {role} for {name}: {' or '.join(roles) or 'no credential'} needed here")
    if role == "reducer":
        if audience is None or aud != audience:
            raise NotPermitted(f"reducer credential for {aud!r} is not valid for {audience or 'this service'}")
    elif aud is not None:
        raise CredentialError("not a fedtier credential: unexpected audience")
    expires = float(claims["exp"])
    if (time.time() if now is None else now) > expires + LEEWAY_S:
        raise CredentialError(f"credential expired at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(expires))}")
    return Identity(name=name, role=role, expires_at=expires, token_id=str(claims["jti"]), audience=aud)


def verify(verify_key: Ed25519PublicKey, token: str, roles: Collection[str] = ROLES,
           audience: str | None = None) -> Identity:
    """Who ``token`` names, if it is a valid credential in one of ``roles``.

    ``audience``: the name of the service checking (a combiner's name); a reducer
    credential is valid only where its ``aud`` equals it."""
    return check_claims(_decode(verify_key, token), roles, audience)


class Verifier:
    """:func:`verify` with a bounded cache of checked signatures, so a busy combiner checks
    each client's credential once, not on every heartbeat and chunk."""

    def __init__(self, verify_key: Ed25519PublicKey, cache_size: int = 4096) -> None:
        self.key = verify_key
        self.cache_size = cache_size
        self._cache: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, token: str | None, roles: Collection[str] = ROLES, audience: str | None = None) -> Identity:
        with self._lock:
            claims = self._cache.get(token or "")
            if claims is not None:
                self._cache.move_to_end(token or "")
        if claims is None:
            claims = _decode(self.key, token or "")
            with self._lock:
                self._cache[token or ""] = claims
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return check_claims(claims, roles, audience)


class SelfIssuer:
    """The reducer's own credentials, one per combiner (``aud`` = that combiner), re-minted
    when a quarter of the lifetime is left, so calls never carry one about to expire."""

    def __init__(self, signing_key: Ed25519PrivateKey, lifetime_s: float = REDUCER_LIFETIME_S) -> None:
        self.key = signing_key
        self.lifetime_s = lifetime_s
        self._tokens: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def token_for(self, audience: str) -> str:
        now = time.time()
        with self._lock:
            token, expires = self._tokens.get(audience, ("", 0.0))
            if expires - now < self.lifetime_s / 4:
                token = issue(self.key, "reducer", REDUCER_NAME, self.lifetime_s, audience=audience, now=now)
                self._tokens[audience] = (token, now + self.lifetime_s)
            return token


# ---------------------------------------------------------------- finding one's own credential
def own_credential(token: str, credentials_dir: str | os.PathLike | None, name: str) -> str:
    """The credential a participant presents: ``FEDN_ALLIANCE_AUTH_TOKEN`` when set, else
    ``<FEDTIER_CREDENTIALS_DIR>/<name>.token`` (so scaled replicas that share one
    environment each find their own), else none."""
    if token:
        return token
    if credentials_dir and NAME.match(name or ""):
        path = Path(credentials_dir) / f"{name}.token"
        if not path.is_file():
            raise CredentialError(f"FEDTIER_CREDENTIALS_DIR has no {path.name}: issue one with "
                                  f"fedtier token issue --name {name} --out {credentials_dir}")
        return path.read_text(encoding="utf-8").strip()
    return ""


def parse_lifetime(text: str) -> float:
    """``90d``, ``12h``, ``30m``, ``45s`` or plain seconds."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*", text or "")
    if not match:
        raise ValueError(f"expected a duration such as 90d, 12h, 30m or 3600, got {text!r}")
    seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"the duration must be positive, got {text!r}")
    return seconds

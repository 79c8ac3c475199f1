"""Access tokens: JWT with a pinned algorithm.

Claims: ``sub`` (user id), ``name``, ``exp``, ``iat``, ``jti`` (the token's id,
for revocation; minted tokens always carry one) and ``grants``::

    {"room": "r1" | "*", "publish": bool, "subscribe": bool, "admin": bool}

HS256 with a shared secret by default. RS256/ES256 verify with a PEM public
key or a JWKS file, for apps whose own auth service signs the tokens. The
verifier accepts exactly the configured algorithm: ``alg: none``, another
algorithm, a bad signature or an expired token are refused, and so is a token
of a suspended user or a revoked token id (:class:`RevocationList`, kept in step
across nodes by api/revocation.py).
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from config import Settings

log = logging.getLogger("airwave.auth")

SECRET_FILE = "jwt-secret"
# A room id, as grants name it and media routes, RTMP and sfu:* events accept it.
ROOM_ID_PATTERN = r"[A-Za-z0-9_.:-]{1,128}"
ROOM_ID = re.compile(ROOM_ID_PATTERN)
LEEWAY = 5  # seconds of clock skew allowed on exp and iat
# Verified tokens kept by their text (a client that reconnects, or calls the API again,
# with the same token is not verified again): at most this many, each at most this long.
VERIFIED_CACHE_SIZE = 10_000
VERIFIED_CACHE_TOKEN_LENGTH = 2_048


class TokenError(Exception):
    """A token was refused. ``code`` is stable for clients; the message says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Grants:
    room: str | None = None  # a room id, "*" for every room, None for none
    publish: bool = False
    subscribe: bool = False
    admin: bool = False

    def covers(self, room: str) -> bool:
        return self.admin or self.room == "*" or (self.room is not None and self.room == room)

    def to_claim(self) -> dict[str, Any]:
        claim: dict[str, Any] = {}
        if self.room is not None:
            claim["room"] = self.room
        for name in ("publish", "subscribe", "admin"):
            if getattr(self, name):
                claim[name] = True
        return claim

    @classmethod
    def from_claim(cls, claim: Any) -> Grants:
        if claim is None:
            return cls()
        if not isinstance(claim, dict):
            raise TokenError("invalid_token", "grants must be an object")
        room = claim.get("room")
        if room is not None and not isinstance(room, str):
            raise TokenError("invalid_token", "grants.room must be a string")
        flags = {}
        for name in ("publish", "subscribe", "admin"):
            value = claim.get(name, False)
            if not isinstance(value, bool):
                raise TokenError("invalid_token", f"grants.{name} must be a boolean")
            flags[name] = value
        return cls(room=room, **flags)


@dataclass(frozen=True)
class Identity:
    """Who a verified token speaks for."""

    user_id: str
    name: str = ""
    grants: Grants = field(default_factory=Grants)
    expires_at: float = 0.0
    token_id: str = ""  # the jti claim; empty for a token without one

    @property
    def is_admin(self) -> bool:
        return self.grants.admin

    def can_publish(self, room: str) -> bool:
        return self.grants.admin or (self.grants.publish and self.grants.covers(room))

    def can_subscribe(self, room: str) -> bool:
        return self.grants.admin or (self.grants.subscribe and self.grants.covers(room))


class RevocationList:
    """Suspended users and revoked token ids, in memory (api/revocation.py loads and syncs it)."""

    def __init__(self) -> None:
        self.suspended_users: set[str] = set()
        self.revoked_tokens: set[str] = set()

    def refusal(self, identity: Identity) -> TokenError | None:
        if identity.user_id in self.suspended_users:
            return TokenError("suspended", "this user is suspended")
        if identity.token_id and identity.token_id in self.revoked_tokens:
            return TokenError("token_revoked", "this token was revoked")
        return None


class TokenService:
    """Verifies tokens, and mints them when it holds the signing key."""

    def __init__(self, settings: Settings) -> None:
        self.algorithm = settings.jwt_algorithm
        self.revocations = RevocationList()
        self._signing_key: Any = None
        self._verify_keys: dict[str | None, Any] = {}
        self._verified: dict[str, Identity] = {}
        if self.algorithm == "HS256":
            secret = settings.jwt_secret or _embedded_secret(Path(settings.data_dir))
            self._signing_key = secret
            self._verify_keys[None] = secret
        else:
            if settings.jwt_public_key_file:
                self._verify_keys[None] = Path(settings.jwt_public_key_file).read_text()
            if settings.jwt_jwks_file:
                jwks = jwt.PyJWKSet.from_json(Path(settings.jwt_jwks_file).read_text())
                for key in jwks.keys:
                    self._verify_keys[key.key_id] = key.key
            if settings.jwt_private_key_file:
                self._signing_key = Path(settings.jwt_private_key_file).read_text()

    def verify(self, token: Any) -> Identity:
        """Who ``token`` speaks for; TokenError when it is refused. A token verified
        before is taken from the cache by its text (the same text: the same signature,
        the same claims), its expiry and the revocations checked again."""
        if not isinstance(token, str) or not token:
            raise TokenError("missing_token", "an access token is required")
        identity = self._verified.get(token)
        if identity is None:
            identity = self._decode(token)
            if len(token) <= VERIFIED_CACHE_TOKEN_LENGTH:
                if len(self._verified) >= VERIFIED_CACHE_SIZE:
                    del self._verified[next(iter(self._verified))]  # the oldest
                self._verified[token] = identity
        elif identity.expires_at + LEEWAY <= time.time():
            del self._verified[token]
            raise TokenError("token_expired", "the token has expired")
        refusal = self.revocations.refusal(identity)
        if refusal is not None:
            raise refusal
        return identity

    def _decode(self, token: str) -> Identity:
        """The token's signature and claims checked by PyJWT (not the revocations)."""
        if len(self._verify_keys) == 1:
            # one key whatever the token's kid: PyJWT reads the header once, in decode
            # (reading it first as well cost a third of a verification)
            key = next(iter(self._verify_keys.values()))
        else:
            key = self._key_for(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[self.algorithm],
                options={"require": ["sub", "exp", "iat"]},
                leeway=LEEWAY,
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("token_expired", "the token has expired") from None
        except jwt.InvalidAlgorithmError:
            alg = jwt.get_unverified_header(token).get("alg")  # decode read it: well-formed
            raise TokenError("invalid_token", f"token algorithm {alg!r} is not accepted") from None
        except jwt.InvalidSignatureError as exc:
            raise TokenError("invalid_token", f"the token was refused: {exc}") from None
        except jwt.DecodeError:
            raise TokenError("invalid_token", "the token is not a well-formed JWT") from None
        except jwt.PyJWTError as exc:
            raise TokenError("invalid_token", f"the token was refused: {exc}") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 128:
            raise TokenError("invalid_token", "sub must be a non-empty string of at most 128 characters")
        name = claims.get("name", "")
        jti = claims.get("jti", "")
        return Identity(
            user_id=sub,
            name=name if isinstance(name, str) else "",
            grants=Grants.from_claim(claims.get("grants")),
            expires_at=float(claims["exp"]),
            token_id=jti if isinstance(jti, str) and len(jti) <= 128 else "",
        )

    def _key_for(self, token: str) -> Any:
        """The verification key the token's header names (its kid), of several."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("invalid_token", "the token is not a well-formed JWT") from None
        alg = header.get("alg")
        if alg != self.algorithm:
            raise TokenError("invalid_token", f"token algorithm {alg!r} is not accepted")
        key = self._verify_keys.get(header.get("kid")) or self._verify_keys.get(None)
        if key is None:
            raise TokenError("invalid_token", "no key matches the token's key id")
        return key

    def mint(
        self,
        user_id: str,
        *,
        name: str = "",
        grants: Grants | None = None,
        ttl: float = 3600,
        kid: str | None = None,
    ) -> str:
        if self._signing_key is None:
            raise TokenError("no_signing_key", f"no private key configured to sign {self.algorithm}")
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": user_id, "iat": now, "exp": now + int(ttl), "jti": secrets.token_hex(12),
        }
        if name:
            claims["name"] = name
        if grants is not None:
            claims["grants"] = grants.to_claim()
        headers = {"kid": kid} if kid else None
        return jwt.encode(claims, self._signing_key, algorithm=self.algorithm, headers=headers)


def _embedded_secret(data_dir: Path) -> str:
    """The embedded default's generated HS256 secret, kept under data_dir."""
    path = data_dir / SECRET_FILE
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    path.touch(mode=0o600)
    path.write_text(secret)
    log.warning(
        "AIRWAVE_JWT_SECRET is not set: generated one and kept it in %s "
        "(set AIRWAVE_JWT_SECRET to share tokens with your app's backend)",
        path,
    )
    return secret

"""Tokens: good, expired, tampered, alg none, wrong algorithm, RS256 and ES256 keys."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from auth import Grants, TokenError, TokenService
from config import load_settings

SECRET = "s" * 40


def hs_service(**env: str) -> TokenService:
    return TokenService(load_settings({"AIRWAVE_JWT_SECRET": SECRET, **env}))


def test_valid_token_carries_identity_and_grants() -> None:
    service = hs_service()
    token = service.mint("alice", name="Alice", grants=Grants(room="r1", publish=True))
    identity = service.verify(token)
    assert identity.user_id == "alice" and identity.name == "Alice"
    assert identity.can_publish("r1") and not identity.can_publish("r2")
    assert not identity.can_subscribe("r1")


def test_wildcard_and_admin_grants() -> None:
    service = hs_service()
    star = service.verify(service.mint("a", grants=Grants(room="*", subscribe=True)))
    assert star.can_subscribe("any") and not star.can_publish("any")
    admin = service.verify(service.mint("b", grants=Grants(admin=True)))
    assert admin.is_admin and admin.can_publish("x")


def test_expired_token_is_refused() -> None:
    service = hs_service()
    token = jwt.encode({"sub": "a", "iat": int(time.time()) - 100, "exp": int(time.time()) - 60}, SECRET, "HS256")
    with pytest.raises(TokenError) as info:
        service.verify(token)
    assert info.value.code == "token_expired"


def test_tampered_token_is_refused() -> None:
    service = hs_service()
    token = service.mint("alice", grants=Grants(room="r1"))
    header, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["grants"] = {"admin": True}
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(TokenError) as info:
        service.verify(f"{header}.{forged}.{sig}")
    assert info.value.code == "invalid_token"


def test_a_token_verified_before_is_still_refused_once_expired_or_revoked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Verified tokens are kept by their text (reconnects and API calls do not pay PyJWT
    again); expiry and revocation are checked at every use all the same, and a token
    that differs by one character is verified on its own."""
    import auth.tokens as tokens

    service = hs_service()
    token = service.mint("alice", grants=Grants(room="r1"), ttl=60)
    decoded: list[str] = []
    real = service._decode
    monkeypatch.setattr(service, "_decode", lambda t: decoded.append(t) or real(t))
    first = service.verify(token)
    assert service.verify(token) == first and decoded == [token]  # verified once
    header, payload, sig = token.split(".")
    with pytest.raises(TokenError):
        service.verify(f"{header}.{payload}.{sig[:-2]}{'AA' if sig[-2:] != 'AA' else 'BB'}")
    # revoked after it was verified: refused at its next use
    service.revocations.revoked_tokens.add(first.token_id)
    with pytest.raises(TokenError) as info:
        service.verify(token)
    assert info.value.code == "token_revoked"
    service.revocations.revoked_tokens.clear()
    # past its exp (and the leeway): refused, and out of the cache
    later = time.time() + 60 + tokens.LEEWAY
    monkeypatch.setattr(tokens.time, "time", lambda: later)
    with pytest.raises(TokenError) as info:
        service.verify(token)
    assert info.value.code == "token_expired"
    assert token not in service._verified


def test_the_cache_of_verified_tokens_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import auth.tokens as tokens

    monkeypatch.setattr(tokens, "VERIFIED_CACHE_SIZE", 3)
    service = hs_service()
    minted = [service.mint(f"u{i}") for i in range(5)]
    for token in minted:
        service.verify(token)
    assert list(service._verified) == minted[2:]  # the oldest went first
    long = service.mint("x" * 100, name="n" * (tokens.VERIFIED_CACHE_TOKEN_LENGTH + 1))
    assert service.verify(long).user_id == "x" * 100 and long not in service._verified


def test_other_secret_is_refused() -> None:
    other = TokenService(load_settings({"AIRWAVE_JWT_SECRET": "o" * 40}))
    with pytest.raises(TokenError):
        hs_service().verify(other.mint("alice"))


def test_alg_none_is_refused() -> None:
    now = int(time.time())
    token = jwt.encode({"sub": "a", "iat": now, "exp": now + 60, "grants": {"admin": True}}, None, algorithm="none")
    with pytest.raises(TokenError, match="'none'"):
        hs_service().verify(token)


def test_wrong_algorithm_is_refused() -> None:
    now = int(time.time())
    # Refused for its algorithm whatever the key (64 bytes: HS512's minimum).
    token = jwt.encode({"sub": "a", "iat": now, "exp": now + 60}, SECRET.ljust(64, "s"), algorithm="HS512")
    with pytest.raises(TokenError, match="HS512"):
        hs_service().verify(token)


@pytest.mark.parametrize("token", [None, "", "abc", "a.b.c", 42])
def test_garbage_is_refused(token: object) -> None:
    with pytest.raises(TokenError):
        hs_service().verify(token)


def _write_keys(tmp_path: Path, alg: str) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if alg == "RS256" else ec.generate_private_key(ec.SECP256R1())
    private = tmp_path / "private.pem"
    public = tmp_path / "public.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_asymmetric_key_file(tmp_path: Path, alg: str) -> None:
    private, public = _write_keys(tmp_path, alg)
    verifier = TokenService(
        load_settings({"AIRWAVE_JWT_ALGORITHM": alg, "AIRWAVE_JWT_PUBLIC_KEY_FILE": str(public)})
    )
    now = int(time.time())
    # Signed by "the app's own auth service", not by airwave.
    token = jwt.encode({"sub": "bob", "iat": now, "exp": now + 60}, private.read_text(), algorithm=alg)
    assert verifier.verify(token).user_id == "bob"
    # An HS256 token made with the public key as its secret (key confusion) is refused.
    confused = jwt.api_jws.PyJWS(algorithms=["HS256"])
    bad = confused.encode(
        json.dumps({"sub": "eve", "iat": now, "exp": now + 60}).encode(), b"k" * 32, algorithm="HS256"
    )
    with pytest.raises(TokenError):
        verifier.verify(bad)


def test_jwks_file_picks_key_by_kid(tmp_path: Path) -> None:
    private, public = _write_keys(tmp_path, "RS256")
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(serialization.load_pem_public_key(public.read_bytes())))
    jwk.update(kid="k1", alg="RS256", use="sig")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    verifier = TokenService(load_settings({"AIRWAVE_JWT_ALGORITHM": "RS256", "AIRWAVE_JWT_JWKS_FILE": str(jwks)}))
    now = int(time.time())
    token = jwt.encode({"sub": "c", "iat": now, "exp": now + 60}, private.read_text(), "RS256", headers={"kid": "k1"})
    assert verifier.verify(token).user_id == "c"


def test_embedded_secret_is_generated_once(tmp_path: Path) -> None:
    s = load_settings({"AIRWAVE_DATA_DIR": str(tmp_path)})
    token = TokenService(s).mint("a")
    assert (tmp_path / "jwt-secret").stat().st_mode & 0o077 == 0
    assert TokenService(s).verify(token).user_id == "a"


def test_cli_prints_a_token_the_server_accepts(tmp_path: Path) -> None:
    env = {"AIRWAVE_JWT_SECRET": SECRET, "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "api.cli", "token", "--user", "alice", "--room", "r1", "--publish", "--ttl", "3600"],
        capture_output=True, text=True, env=env, timeout=30, check=True,
    )
    identity = hs_service().verify(out.stdout.strip())
    assert identity.user_id == "alice" and identity.can_publish("r1")
    assert 3590 < identity.expires_at - time.time() <= 3600

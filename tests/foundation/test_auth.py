"""Bearer-token auth: dev HS256 and production JWKS (RS256/ES256), every way a token can be wrong."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from litestar import get
from litestar.di import NamedDependency

from chat_core.app_factory import ServiceParts, create_service_app
from chat_core.auth import AuthError, CachingVerifier, HS256Verifier, JwksVerifier, Principal
from chat_core.composition import Composition
from chat_core.settings import Settings
from tests.conftest import TEST_SECRET, token_for
from tests.jwks_server import JwksServer

ISSUER = "https://issuer.example.test"
AUDIENCE = "chat-management-test"


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwk(private_key: Any, kid: str, **extra: str) -> dict[str, Any]:
    public = private_key.public_key()
    data: dict[str, Any] = json.loads(jwt.algorithms.get_default_algorithms()[
        "RS256" if isinstance(private_key, rsa.RSAPrivateKey) else "ES256"
    ].to_jwk(public))  # fmt: skip
    return {**data, "kid": kid, "use": "sig", **extra}


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


RSA_KEY = _rsa()
OTHER_RSA_KEY = _rsa()
EC_KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def jwks() -> Iterator[JwksServer]:
    server = JwksServer()
    server.keys = [_jwk(RSA_KEY, "rsa-1"), _jwk(EC_KEY, "ec-1")]
    with server.running():
        yield server


@pytest.fixture
def verifier(jwks: JwksServer) -> JwksVerifier:
    return JwksVerifier(jwks.url, issuer=ISSUER, audience=AUDIENCE, leeway=5, min_refresh_interval=0)


def _rs256(claims: dict[str, Any], kid: str = "rsa-1", key: Any = RSA_KEY) -> str:
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


async def test_a_good_rs256_token_gives_the_user_id(verifier: JwksVerifier) -> None:
    principal = await verifier.verify(_rs256(_claims()))
    assert principal.user_id == "alice"


async def test_a_good_es256_token_gives_the_user_id(verifier: JwksVerifier) -> None:
    token = jwt.encode(_claims(sub="bob"), EC_KEY, algorithm="ES256", headers={"kid": "ec-1"})
    assert (await verifier.verify(token)).user_id == "bob"


async def _rejected(verifier: Any, token: str) -> AuthError:
    with pytest.raises(AuthError) as caught:
        await verifier.verify(token)
    assert caught.value.status == 401
    assert caught.value.headers["WWW-Authenticate"].startswith("Bearer ")
    return caught.value


async def test_an_expired_token_is_refused(verifier: JwksVerifier) -> None:
    now = int(time.time())
    error = await _rejected(verifier, _rs256(_claims(iat=now - 3600, exp=now - 60)))
    assert "expired" in (error.detail or "")


async def test_expiry_within_the_leeway_is_tolerated(verifier: JwksVerifier) -> None:
    now = int(time.time())
    assert (await verifier.verify(_rs256(_claims(exp=now - 2)))).user_id == "alice"


async def test_a_not_yet_valid_token_is_refused(verifier: JwksVerifier) -> None:
    error = await _rejected(verifier, _rs256(_claims(nbf=int(time.time()) + 600)))
    assert "not valid yet" in (error.detail or "")


async def test_a_token_signed_with_another_key_is_refused(verifier: JwksVerifier) -> None:
    await _rejected(verifier, _rs256(_claims(), key=OTHER_RSA_KEY))


async def test_alg_none_is_refused(verifier: JwksVerifier) -> None:
    token = jwt.encode(_claims(), key="", algorithm="none", headers={"kid": "rsa-1"})
    await _rejected(verifier, token)


async def test_an_hs256_token_signed_with_the_rsa_public_key_is_refused(verifier: JwksVerifier) -> None:
    # The classic key-confusion attack: use the public key (which anyone has) as an HMAC secret.
    public_pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}
    signing_input = (
        jwt.utils.base64url_encode(json.dumps(header).encode())
        + b"."
        + jwt.utils.base64url_encode(json.dumps(_claims()).encode())
    )
    import hashlib
    import hmac

    signature = hmac.new(public_pem, signing_input, hashlib.sha256).digest()
    token = (signing_input + b"." + jwt.utils.base64url_encode(signature)).decode()
    error = await _rejected(verifier, token)
    assert "does not match" in (error.detail or "")


async def test_a_wrong_issuer_is_refused(verifier: JwksVerifier) -> None:
    await _rejected(verifier, _rs256(_claims(iss="https://evil.example.test")))


async def test_a_wrong_audience_is_refused(verifier: JwksVerifier) -> None:
    await _rejected(verifier, _rs256(_claims(aud="another-app")))


async def test_an_unknown_kid_is_refused(verifier: JwksVerifier) -> None:
    await _rejected(verifier, _rs256(_claims(), kid="nobody-knows-me"))


async def test_a_token_without_subject_is_refused(verifier: JwksVerifier) -> None:
    await _rejected(verifier, _rs256(_claims(sub=None)))


async def test_a_rotated_key_is_fetched_when_a_token_names_it(
    jwks: JwksServer, verifier: JwksVerifier
) -> None:
    await verifier.verify(_rs256(_claims()))
    requests_before = jwks.requests
    jwks.keys = [*jwks.keys, _jwk(OTHER_RSA_KEY, "rsa-2")]
    try:
        principal = await verifier.verify(_rs256(_claims(sub="carol"), kid="rsa-2", key=OTHER_RSA_KEY))
    finally:
        jwks.keys = jwks.keys[:-1]
    assert principal.user_id == "carol"
    assert jwks.requests == requests_before + 1


async def test_known_keys_are_cached_between_tokens(jwks: JwksServer, verifier: JwksVerifier) -> None:
    await verifier.verify(_rs256(_claims()))
    requests_before = jwks.requests
    for _ in range(5):
        await verifier.verify(_rs256(_claims()))
    assert jwks.requests == requests_before


async def test_an_ec_key_cannot_be_used_with_rs256(jwks: JwksServer, verifier: JwksVerifier) -> None:
    token = jwt.encode(_claims(), RSA_KEY, algorithm="RS256", headers={"kid": "ec-1"})
    await _rejected(verifier, token)


# --- dev verifier ------------------------------------------------------------------------------------
async def test_dev_hs256_token_gives_the_user_id() -> None:
    verifier = HS256Verifier(TEST_SECRET)
    assert (await verifier.verify(token_for("dave"))).user_id == "dave"


async def test_dev_verifier_refuses_another_secret_and_none() -> None:
    verifier = HS256Verifier(TEST_SECRET)
    await _rejected(verifier, jwt.encode(_claims(), "another-secret-another-secret-xx", algorithm="HS256"))
    await _rejected(verifier, jwt.encode(_claims(), key="", algorithm="none"))


async def test_dev_verifier_refuses_an_expired_token() -> None:
    await _rejected(HS256Verifier(TEST_SECRET), token_for("dave", now=time.time() - 7200, ttl_seconds=60))


async def test_the_cache_does_not_outlive_the_token() -> None:
    class Counting:
        calls = 0

        async def verify(self, token: str) -> Principal:
            Counting.calls += 1
            return Principal(user_id="eve", expires_at=time.time() - 1)

        async def ping(self) -> None:
            return None

    cache = CachingVerifier(Counting())
    await cache.verify("t")
    await cache.verify("t")
    assert Counting.calls == 2  # already expired: never served from the cache


# --- over HTTP -----------------------------------------------------------------------------------------
@get("/whoami", sync_to_thread=False)
def whoami(principal: NamedDependency[Principal]) -> dict[str, str]:
    return {"user_id": principal.user_id}


@pytest.fixture
async def whoami_client(settings: Settings, client_for: Any) -> Any:
    backends = Composition(settings)
    app = create_service_app(
        settings,
        backends,
        [ServiceParts(component="test", route_handlers=[whoami])],
        component="test",
        title="t",
    )
    return await client_for(app)


async def test_http_a_good_token_reaches_the_handler(whoami_client: Any) -> None:
    response = await whoami_client.get("/whoami", headers={"Authorization": f"Bearer {token_for('alice')}"})
    assert response.status_code == 200
    assert response.json() == {"user_id": "alice"}


async def test_http_no_token_is_401_with_a_challenge(whoami_client: Any) -> None:
    response = await whoami_client.get("/whoami")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="chat-management"'
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "unauthenticated"


async def test_http_a_bad_token_is_401_invalid_token(whoami_client: Any) -> None:
    response = await whoami_client.get("/whoami", headers={"Authorization": "Bearer not.a.jwt"})
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert response.json()["code"] == "invalid_token"


async def test_http_a_non_bearer_scheme_is_401(whoami_client: Any) -> None:
    response = await whoami_client.get("/whoami", headers={"Authorization": "Basic YWxpY2U6cHc="})
    assert response.status_code == 401


# --- roles (the operators' admin API) ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("claim", "extra", "roles"),
    [
        ("roles", {"roles": ["chat-admin", "x"]}, {"chat-admin", "x"}),
        ("roles", {"roles": "chat-admin other"}, {"chat-admin", "other"}),  # a space-separated string
        ("realm_access.roles", {"realm_access": {"roles": ["chat-admin"]}}, {"chat-admin"}),  # Keycloak
        ("roles", {"roles": [1, "ok", None]}, {"ok"}),  # only strings count
        ("roles", {"roles": {"chat-admin": True}}, set()),
        ("roles", {}, set()),
        ("groups", {"roles": ["chat-admin"]}, set()),  # another claim configured: roles is not read
    ],
)
async def test_a_tokens_roles_come_from_the_configured_claim(
    claim: str, extra: dict[str, object], roles: set[str]
) -> None:
    now = int(time.time())
    token = jwt.encode({"sub": "anna", "iat": now, "exp": now + 60, **extra}, TEST_SECRET, algorithm="HS256")
    principal = await HS256Verifier(TEST_SECRET, roles_claim=claim).verify(token)
    assert principal.roles == frozenset(roles)

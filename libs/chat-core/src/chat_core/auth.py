"""Bearer-token authentication: ``Authorization: Bearer <JWT>`` -> the user id in ``sub``.

Two verifiers share one contract (``TokenVerifier``):

* ``HS256Verifier`` for development and tests (``AUTH_JWT_SECRET``);
* ``JwksVerifier`` for production: RS256/ES256 keys from the identity provider's JWKS (Firebase Auth or any
  OIDC provider), with issuer and audience checks. Keys are cached, refreshed when a token names an
  unknown ``kid``, and each key is pinned to one algorithm from its own type, so ``none`` and HS/RS
  confusion are impossible.

Verified tokens are remembered briefly (bounded LRU), since a chat screen sends the same token with every
image request.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import httpx
import jwt
import msgspec
import structlog
from litestar.connection import ASGIConnection

from chat_core.errors import ProblemError
from chat_core.keys import USER_ID_PATTERN
from chat_core.retries import RetryableAnswer, RetryBudget, retrying, status_reason
from chat_core.settings import AuthSettings

__all__ = [
    "USER_ID_PATTERN",
    "AuthError",
    "CachingVerifier",
    "HS256Verifier",
    "JwksVerifier",
    "Principal",
    "TokenVerifier",
    "build_verifier",
    "mint_token",
    "token_from_connection",
]

REFRESH_BACKOFF_MAX_SECONDS = 300.0
_log = structlog.get_logger("chat_core.auth")
_EC_ALG_BY_CURVE = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_JWKS_RETRY = RetryBudget(attempts=3, seconds=3.0, base=0.05, cap=0.5)
_RSA_ALGS = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}


class Principal(msgspec.Struct, frozen=True):
    user_id: str
    expires_at: float
    roles: frozenset[str] = frozenset()  # from the claim AUTH_ROLES_CLAIM names (operators' roles)


_MAX_ECHO = 40


def _printable(value: object) -> str:
    """``value`` as printable ASCII without quotes or backslashes, shortened: safe in a header, a log line
    and a WebSocket close reason (RFC 6750 limits ``error_description`` to exactly these characters)."""
    text = "".join(char if " " <= char <= "~" and char not in '"\\' else "?" for char in str(value))
    return text if len(text) <= _MAX_ECHO else text[: _MAX_ECHO - 3] + "..."


class AuthError(ProblemError):
    """401 with a ``WWW-Authenticate`` challenge (RFC 6750)."""

    def __init__(self, detail: str, *, error: str = "invalid_token") -> None:
        # Details may quote a client's token header: only printable ASCII ever reaches the challenge.
        detail = "".join(char if " " <= char <= "~" and char not in '"\\' else "?" for char in detail)
        challenge = 'Bearer realm="chat-management"'
        if error:
            challenge += f', error="{error}", error_description="{detail}"'
        super().__init__(
            401,
            "unauthenticated" if error == "" else "invalid_token",
            detail,
            title="Unauthorized",
            headers={"WWW-Authenticate": challenge},
        )


class TokenVerifier(Protocol):
    async def verify(self, token: str) -> Principal: ...

    async def ping(self) -> None: ...


def roles_in(claims: Mapping[str, Any], claim: str) -> frozenset[str]:
    """The roles a token's claims hold under ``claim``: a dotted path (Keycloak's ``realm_access.roles``)
    to a list of strings or one space-separated string (as ``scope``); anything else holds none."""
    value: Any = claims
    for part in claim.split(".") if claim else ():
        value = value.get(part) if isinstance(value, Mapping) else None
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(item for item in value if isinstance(item, str))
    return frozenset()


def _principal(claims: Mapping[str, Any], roles_claim: str = "roles") -> Principal:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not USER_ID_PATTERN.fullmatch(sub):
        raise AuthError("the token's subject is not a valid user id")
    return Principal(user_id=sub, expires_at=float(claims["exp"]), roles=roles_in(claims, roles_claim))


def _decode(
    token: str, key: Any, algorithm: str, *, issuer: str, audience: str, leeway: int
) -> Mapping[str, Any]:
    try:
        claims: Mapping[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            issuer=issuer or None,
            audience=audience or None,
            leeway=leeway,
            options={"require": ["exp", "sub"], "verify_aud": bool(audience), "verify_iss": bool(issuer)},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("the token has expired") from None
    except jwt.ImmatureSignatureError:
        raise AuthError("the token is not valid yet") from None
    except jwt.InvalidAudienceError:
        raise AuthError("the token is for another audience") from None
    except jwt.InvalidIssuerError:
        raise AuthError("the token is from another issuer") from None
    except jwt.InvalidSignatureError:
        raise AuthError("the token's signature does not verify") from None
    except jwt.PyJWTError as exc:
        raise AuthError(f"the token is invalid ({type(exc).__name__})") from None
    return claims


def _unverified_header(token: str) -> dict[str, Any]:
    try:
        return jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise AuthError("the token is malformed") from None


class HS256Verifier:
    """Development verifier: one shared secret, HS256 only."""

    def __init__(
        self,
        secret: str,
        *,
        issuer: str = "",
        audience: str = "",
        leeway: int = 30,
        roles_claim: str = "roles",
    ) -> None:
        self._secret = secret
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._roles_claim = roles_claim

    async def verify(self, token: str) -> Principal:
        header = _unverified_header(token)
        if header.get("alg") != "HS256":
            raise AuthError(f"algorithm '{_printable(header.get('alg'))}' is not accepted")
        claims = _decode(
            token, self._secret, "HS256", issuer=self._issuer, audience=self._audience, leeway=self._leeway
        )
        return _principal(claims, self._roles_claim)

    async def ping(self) -> None:
        return None


class _Key(msgspec.Struct, frozen=True):
    key: Any
    algorithm: str


def _pinned_algorithm(jwk: Mapping[str, Any]) -> str | None:
    kty = jwk.get("kty")
    declared = jwk.get("alg")
    if kty == "RSA":
        alg = declared or "RS256"
        return alg if alg in _RSA_ALGS else None
    if kty == "EC":
        alg = _EC_ALG_BY_CURVE.get(str(jwk.get("crv")))
        return alg if alg is not None and declared in (None, alg) else None
    return None  # symmetric ("oct") and unknown key types are never trusted from a JWKS


class JwksVerifier:
    """Production verifier: asymmetric keys from a JWKS URL, each pinned to its own algorithm."""

    def __init__(
        self,
        jwks_url: str,
        *,
        issuer: str,
        audience: str,
        leeway: int = 30,
        cache_seconds: float = 3600,
        min_refresh_interval: float = 10.0,
        client: httpx.AsyncClient | None = None,
        roles_claim: str = "roles",
    ) -> None:
        self._url = jwks_url
        self._roles_claim = roles_claim
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._cache_seconds = cache_seconds
        self._min_refresh_interval = min_refresh_interval
        self._client = client or httpx.AsyncClient(timeout=5.0)
        self._keys: dict[str, _Key] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()
        # After a failed refresh, none is tried again before ``_retry_at`` (backoff doubling per failure,
        # up to ``REFRESH_BACKOFF_MAX_SECONDS``): an identity provider that is down is not asked once per
        # request, and requests signed with cached keys keep being served meanwhile.
        self._failures = 0
        self._retry_at = float("-inf")

    async def _refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._fetched_at < self._min_refresh_interval:
                return  # another request just refreshed, or a flood of unknown kids: don't hammer the IdP
            response = await self._fetch()
            keys: dict[str, _Key] = {}
            for jwk in response.json().get("keys", []):
                kid, alg = jwk.get("kid"), _pinned_algorithm(jwk)
                if not kid or alg is None or jwk.get("use", "sig") != "sig":
                    continue
                try:
                    keys[kid] = _Key(key=jwt.PyJWK(jwk, algorithm=alg).key, algorithm=alg)
                except jwt.PyJWTError:
                    continue
            self._keys = keys
            self._fetched_at = time.monotonic()

    async def _fetch(self) -> httpx.Response:
        """GET the JWKS, tried again on a 5xx, a 429 or a failed connection (a short budget: a request
        waits on it); any other error status raises ``httpx.HTTPStatusError``."""

        async def attempt() -> httpx.Response:
            response = await self._client.get(self._url)
            reason = status_reason(response.status_code) if response.status_code >= 400 else None
            if reason is not None:
                raise RetryableAnswer(reason, response)
            return response

        try:
            response = await retrying("jwks", "fetch", attempt, _JWKS_RETRY)
        except RetryableAnswer as exhausted:
            response = exhausted.answer
        response.raise_for_status()
        return response

    async def _key_for(self, kid: str) -> _Key:
        now = time.monotonic()
        stale = now - self._fetched_at > self._cache_seconds
        if (stale or kid not in self._keys) and now >= self._retry_at:
            try:
                await self._refresh()
            except (httpx.HTTPError, ValueError) as exc:  # ValueError: a body that is not JSON
                self._failures += 1
                backoff = min(
                    REFRESH_BACKOFF_MAX_SECONDS,
                    (self._min_refresh_interval or 1.0) * 2 ** (self._failures - 1),
                )
                self._retry_at = time.monotonic() + backoff
                _log.warning("jwks_refresh_failed", error=type(exc).__name__, retry_in_seconds=backoff)
            else:
                self._failures = 0
                self._retry_at = float("-inf")
        if kid not in self._keys and self._failures:
            retry_after = max(1, int(self._retry_at - time.monotonic() + 0.999))
            raise ProblemError(
                503,
                "auth_keys_unavailable",
                "the identity provider's signing keys could not be fetched; retry shortly",
                headers={"Retry-After": str(retry_after)},
            )
        key = self._keys.get(kid)
        if key is None:
            raise AuthError("the token is signed with an unknown key")
        return key

    async def verify(self, token: str) -> Principal:
        header = _unverified_header(token)
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError("the token names no signing key (kid)")
        key = await self._key_for(kid)
        if header.get("alg") != key.algorithm:
            raise AuthError(f"algorithm '{_printable(header.get('alg'))}' does not match the signing key")
        claims = _decode(
            token, key.key, key.algorithm, issuer=self._issuer, audience=self._audience, leeway=self._leeway
        )
        return _principal(claims, self._roles_claim)

    async def ping(self) -> None:
        if not self._keys:
            await self._refresh()


class CachingVerifier:
    """Remembers verified tokens (bounded LRU) until they expire or ``max_age`` passes."""

    def __init__(self, inner: TokenVerifier, *, max_entries: int = 10_000, max_age: float = 300.0) -> None:
        self._inner = inner
        self._max_entries = max_entries
        self._max_age = max_age
        self._entries: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    async def verify(self, token: str) -> Principal:
        now = time.time()
        entry = self._entries.get(token)
        if entry is not None:
            principal, valid_until = entry
            if now < valid_until:
                self._entries.move_to_end(token)
                return principal
            del self._entries[token]
        principal = await self._inner.verify(token)
        self._entries[token] = (principal, min(principal.expires_at, now + self._max_age))
        if len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return principal

    async def ping(self) -> None:
        await self._inner.ping()


def build_verifier(settings: AuthSettings, client: httpx.AsyncClient | None = None) -> TokenVerifier:
    inner: TokenVerifier
    if settings.jwks_url:
        inner = JwksVerifier(
            settings.jwks_url,
            issuer=settings.issuer,
            audience=settings.audience,
            leeway=settings.leeway_seconds,
            cache_seconds=settings.jwks_cache_seconds,
            client=client,
            roles_claim=settings.roles_claim,
        )
    else:
        inner = HS256Verifier(
            settings.jwt_secret,
            issuer=settings.issuer,
            audience=settings.audience,
            leeway=settings.leeway_seconds,
            roles_claim=settings.roles_claim,
        )
    return CachingVerifier(inner)


def mint_token(
    secret: str,
    user_id: str,
    *,
    ttl_seconds: int = 24 * 3600,
    issuer: str = "",
    audience: str = "",
    now: float | None = None,
    roles: Sequence[str] = (),
    roles_claim: str = "roles",
) -> str:
    """An HS256 dev token for ``user_id`` (what ``chat-management token`` prints)."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": user_id, "iat": issued, "exp": issued + ttl_seconds}
    if roles:
        claims[roles_claim] = list(roles)
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")


def token_from_connection(
    connection: ASGIConnection[Any, Any, Any, Any],
    *,
    cookie_name: str | None = None,
    query_param: str | None = None,
) -> str:
    """The bearer token of a request or socket; raises ``AuthError`` when there is none."""
    # The raw ASGI headers (names are lower case there), not ``connection.headers``: building Litestar's
    # ``Headers`` for one lookup cost more than the cached verification of the token itself.
    header = next(
        (value.decode("latin-1") for name, value in connection.scope["headers"] if name == b"authorization"),
        None,
    )
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("the Authorization header must be 'Bearer <token>'")
        return token.strip()
    if cookie_name and (cookie := connection.cookies.get(cookie_name)):
        return cookie
    if query_param and (param := connection.query_params.get(query_param)):
        return str(param)
    raise AuthError("a bearer token is required", error="")

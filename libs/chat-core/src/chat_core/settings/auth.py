"""Token verification and the admin role."""

from __future__ import annotations

from typing import Annotated

import msgspec

from chat_core.settings.base import Frozen, env


class AuthSettings(Frozen, frozen=True, kw_only=True):
    jwt_secret: Annotated[
        str,
        env("AUTH_JWT_SECRET", "Dev/test: HS256 secret (at least 32 characters). Set this or AUTH_JWKS_URL."),
    ] = ""
    jwks_url: Annotated[
        str, env("AUTH_JWKS_URL", "Production: JWKS URL of the identity provider (RS256/ES256 tokens).")
    ] = ""
    issuer: Annotated[str, env("AUTH_ISSUER", "Required `iss` claim (required with AUTH_JWKS_URL).")] = ""
    audience: Annotated[str, env("AUTH_AUDIENCE", "Required `aud` claim (required with AUTH_JWKS_URL).")] = ""
    leeway_seconds: Annotated[
        int,
        env("AUTH_LEEWAY_SECONDS", "Clock skew tolerated on `exp`/`nbf`/`iat`."),
        msgspec.Meta(ge=0, le=300),
    ] = 30
    cookie_name: Annotated[
        str, env("AUTH_COOKIE_NAME", "Cookie the image proxy also reads the token from (for `<img>` tags).")
    ] = "access_token"
    jwks_cache_seconds: Annotated[
        int, env("AUTH_JWKS_CACHE_SECONDS", "How long fetched signing keys are trusted before a refresh.")
    ] = 3600
    roles_claim: Annotated[
        str,
        env(
            "AUTH_ROLES_CLAIM",
            "Token claim holding the caller's roles: a list or a space-separated string; a dotted path "
            "reaches into objects (Keycloak: `realm_access.roles`).",
        ),
    ] = "roles"
    admin_role: Annotated[
        str,
        env(
            "AUTH_ADMIN_ROLE",
            "The role (in AUTH_ROLES_CLAIM) of operators: the `/admin` API (user erasure and export).",
        ),
        msgspec.Meta(min_length=1),
    ] = "chat-admin"
    dev_login: Annotated[
        bool,
        env(
            "DEV_LOGIN",
            "Dev only: the web client's `POST /dev/token` mints a token for any user id (needs "
            "AUTH_JWT_SECRET). `make run`/`make dev` turn it on; never enable it where real users are.",
        ),
    ] = False

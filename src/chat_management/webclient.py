"""The web client at ``/`` of ``serve all``: static files shipped in this package, no Node needed to run.

The page (``web/``) is plain ES modules plus vendored, pinned Preact and htm (``web/vendor/``). Files are
read once when the app is built, gzipped once, and served with an ETag from memory: the page is a handful
of small files and must stay fast on a phone.

Every answer carries a strict Content-Security-Policy: scripts and styles only from this origin (nothing
inline), images from here, the object store's origin (the proxy redirects there) and ``blob:`` (the local
preview of a photo being uploaded), connections to here and to the object store (the direct PUT).

``POST /dev/token`` exists only when ``DEV_LOGIN`` is on (``make run``, ``make dev``): it mints a token for
any user id, which is what a developer wants on a laptop and nobody wants anywhere else.

``chat-management serve web`` (``create_app``) serves the page alone, no API: the chart's optional ``web``
service and ``make dev``'s page process, behind routes that send ``/`` and ``/web/`` to it.
"""

from __future__ import annotations

import gzip
import hashlib
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.params import FromPath, JSONBody

from chat_core.app_factory import ServiceParts, create_service_app
from chat_core.auth import USER_ID_PATTERN, mint_token
from chat_core.composition import Composition
from chat_core.cors import CREDENTIAL_ROUTE_OPT
from chat_core.errors import ProblemError
from chat_core.settings import Settings

__all__ = [
    "COMPONENT",
    "DEV_TOKEN_TTL_SECONDS",
    "WEB_ROOT",
    "build",
    "content_security_policy",
    "create_app",
]

COMPONENT = "web"
WEB_ROOT = Path(__file__).parent / "web"
DEV_TOKEN_TTL_SECONDS = 12 * 3600
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True)
class _Asset:
    body: bytes
    gzipped: bytes
    content_type: str
    etag: str


def _asset(body: bytes, content_type: str) -> _Asset:
    etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
    return _Asset(body, gzip.compress(body, compresslevel=9, mtime=0), content_type, etag)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


def content_security_policy(settings: Settings) -> str:
    """The page's CSP: nothing inline, nothing third-party; the API's and the object store's origins."""
    api = _origin(settings.service.base_url())
    if settings.backends.object_store == "s3":
        store = _origin(
            settings.s3.public_endpoint_url
            or settings.aws.endpoint_url
            or f"https://s3.{settings.aws.region}.amazonaws.com"
        )
    else:
        store = api  # the local store signs links to this process's own /_storage route
    extra = " ".join(dict.fromkeys(o for o in (api, store) if o))
    ws = " ".join(
        dict.fromkeys(o.replace("http", "ws", 1) for o in (api,) if o.startswith(("http://", "https://")))
    )
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src 'self' blob: {extra}".rstrip(),
            f"connect-src 'self' {extra} {ws}".rstrip(),
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


def _load_assets(settings: Settings) -> dict[str, _Asset]:
    assets: dict[str, _Asset] = {}
    for path in sorted(WEB_ROOT.rglob("*")):
        content_type = _TYPES.get(path.suffix)
        if path.is_file() and content_type and path.name != "index.html":
            assets[path.relative_to(WEB_ROOT).as_posix()] = _asset(path.read_bytes(), content_type)
    page = (WEB_ROOT / "index.html").read_text(encoding="utf-8")
    page = page.replace("{{cookie_name}}", html.escape(settings.auth.cookie_name, quote=True))
    page = page.replace("{{dev_login}}", "on" if settings.auth.dev_login else "off")
    assets[""] = _asset(page.encode(), _TYPES[".html"])
    return assets


class DevTokenRequest(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    user_id: Annotated[str, msgspec.Meta(pattern=USER_ID_PATTERN.pattern, max_length=128)]


class DevToken(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    user_id: str
    token: str
    expires_in: int


def build(settings: Settings) -> ServiceParts:
    assets = _load_assets(settings)
    headers = {
        "Content-Security-Policy": content_security_policy(settings),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
        "Vary": "Accept-Encoding",
    }

    def respond(request: Request[Any, Any, Any], asset: _Asset) -> Response[bytes]:
        if request.headers.get("if-none-match") == asset.etag:
            return Response(b"", status_code=304, headers={**headers, "ETag": asset.etag})
        compressed = "gzip" in request.headers.get("accept-encoding", "")
        extra = {"Content-Encoding": "gzip"} if compressed else {}
        return Response(
            asset.gzipped if compressed else asset.body,
            media_type=asset.content_type,
            headers={**headers, **extra, "ETag": asset.etag},
        )

    @get("/", include_in_schema=False, sync_to_thread=False)
    def index(request: Request[Any, Any, Any]) -> Response[bytes]:
        return respond(request, assets[""])

    @get("/web/{name:path}", include_in_schema=False, sync_to_thread=False)
    def web_file(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[bytes]:
        asset = assets.get(name.lstrip("/"))
        if asset is None or not name.lstrip("/"):
            raise ProblemError(404, "not_found", "no such file")
        return respond(request, asset)

    handlers: list[Any] = [index, web_file]
    if settings.auth.dev_login:
        auth = settings.auth

        @post(
            "/dev/token",
            status_code=200,
            summary="Dev only (DEV_LOGIN): a token for any user id",
            tags=["dev"],
            security=[],
            opt={CREDENTIAL_ROUTE_OPT: True},  # CORS for named origins only, never `*`
        )
        async def dev_token(data: JSONBody[DevTokenRequest]) -> DevToken:
            token = mint_token(
                auth.jwt_secret,
                data.user_id,
                ttl_seconds=DEV_TOKEN_TTL_SECONDS,
                issuer=auth.issuer,
                audience=auth.audience,
            )
            return DevToken(user_id=data.user_id, token=token, expires_in=DEV_TOKEN_TTL_SECONDS)

        handlers.append(dev_token)
    return ServiceParts(component=COMPONENT, route_handlers=handlers, description="the web client")


def create_app(settings: Settings, root: Composition | None = None) -> Litestar:
    """The page and its files alone (``serve web``): no API, no backend but the token verifier's."""
    return create_service_app(
        settings,
        root or Composition(settings),
        [build(settings)],
        component=COMPONENT,
        title="chat-management web client",
        description="The web client's page and files; the API is served by the other services.",
    )

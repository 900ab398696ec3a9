"""Bare Litestar routes, served exactly as the services are (``chat_core.server.serve``): the yardsticks.

No auth, no limits, no logging, no store: what the framework and server cost on their own, on this
machine, now. Besides ``GET /bare``, two routes of the same shape as our hot routes, so a ratio compares
like with like:

* ``POST /conversations/{conversation_id}/images/upload_url``: a path parameter, a JSON body decoded into a
  Struct, one dependency (a fixed caller), CORS, a Struct answer (what ``upload_url`` has, minus the
  membership check, the limiter, the quota, observability and the presigning);
* ``GET /images/{conversation_id}/{object_key:path}``: two path parameters, one dependency, a 302 with a
  ``Location`` and ``Cache-Control`` (the image proxy's redirect, minus auth, membership and signing).
"""

from __future__ import annotations

import msgspec
from litestar import Litestar, get, post
from litestar.config.cors import CORSConfig
from litestar.di import Provide
from litestar.response import Redirect

from chat_core.server import serve
from chat_core.settings import Settings


class UploadRequest(msgspec.Struct):
    content_type: str
    size_bytes: int | None = None


class UploadAnswer(msgspec.Struct):
    upload_url: str
    object_key: str
    file_url: str
    expires_at: str


class Caller(msgspec.Struct):
    user_id: str


async def caller() -> Caller:
    return Caller("alice")


@get("/bare", sync_to_thread=False)
def bare() -> dict[str, bool]:
    return {"ok": True}


@post("/conversations/{conversation_id:str}/images/upload_url", status_code=200)
async def upload_url(conversation_id: str, data: UploadRequest, principal: Caller) -> UploadAnswer:
    key = f"{conversation_id}/{principal.user_id}/0123456789abcdef"
    return UploadAnswer(
        upload_url=f"http://127.0.0.1/bucket/{key}?X-Amz-Signature=0",
        object_key=key,
        file_url=f"/images/{key}",
        expires_at="2026-01-01T00:00:00Z",
    )


@get("/images/{conversation_id:str}/{object_key:path}")
async def proxy_redirect(conversation_id: str, object_key: str, principal: Caller) -> Redirect:
    return Redirect(
        f"http://127.0.0.1/bucket/{conversation_id}{object_key}?X-Amz-Signature=0",
        status_code=302,
        headers={"Cache-Control": "private, max-age=300, immutable"},
    )


def create_app(_settings: Settings) -> Litestar:
    return Litestar(
        [bare, upload_url, proxy_redirect],
        dependencies={"principal": Provide(caller)},
        cors_config=CORSConfig(allow_origins=["http://localhost:8000"]),
        logging_config=None,
    )


if __name__ == "__main__":
    serve(create_app, component="bare")

"""A bare Litestar route, served exactly as the services are (``chat_core.server.serve``): the yardstick.

No middleware, no auth, no logging: what the framework and server cost on their own, on this machine, now.
"""

from __future__ import annotations

from litestar import Litestar, get

from chat_core.server import serve
from chat_core.settings import Settings


@get("/bare", sync_to_thread=False)
def bare() -> dict[str, bool]:
    return {"ok": True}


def create_app(_settings: Settings) -> Litestar:
    return Litestar([bare], logging_config=None)


if __name__ == "__main__":
    serve(create_app, component="bare")

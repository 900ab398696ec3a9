"""The OpenAPI document made the truth about errors, and OPTIONS answers that list every method.

Litestar documents each route's own ``responses`` and adds a ``400`` as ``application/json``; our errors are
all ``application/problem+json`` (``chat_core.errors``). ``complete_error_responses`` adds, to every
operation, what any route can answer whatever its handler says:

* ``400`` (request validation) as problem details, replacing Litestar's ``application/json`` one;
* ``401`` when the operation is authenticated (a missing, expired or forged token);
* ``404`` when the path has parameters (a conversation, message or device that is not there: a stranger
  is told "not found" too);
* ``405`` with its ``Allow`` header, ``413`` when the operation takes a body (``request_max_body_size``);
* a ``204`` without content (Litestar documented a JSON ``null`` body, which no 204 carries);
* ``503`` with ``Retry-After``: a backend the route needs is down, or the identity provider's keys could
  not be fetched.

Route-specific statuses (``403``, ``409``, ``410``, ``415``, ``416``, ``422``) stay declared on the routes.
``429`` is not ours to answer (no rate limit in the services; an ingress may add one) and is not listed.

``fix_options_allow``: Litestar's automatic OPTIONS handler keeps the route object of the first handler
registered on a path, so ``GET`` and ``POST`` on one path declared by two functions answered ``Allow:
OPTIONS, POST``. It is re-pointed at the final route.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from litestar import Litestar
from litestar.openapi.spec import (
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Reference,
    Schema,
)
from litestar.routes import HTTPRoute

from chat_core.errors import PROBLEM_JSON

__all__ = ["complete_error_responses", "fix_options_allow"]

_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
_PROBLEM = Reference(ref="#/components/schemas/ProblemDetails")


def _problem(status: int, headers: dict[str, OpenAPIHeader | Reference] | None = None) -> OpenAPIResponse:
    return OpenAPIResponse(
        description=f"{HTTPStatus(status).phrase} (problem details; see `code`)",
        content={PROBLEM_JSON: OpenAPIMediaType(schema=_PROBLEM)},
        headers=headers,
    )


def _header(description: str, schema: Schema) -> OpenAPIHeader:
    return OpenAPIHeader(description=description, schema=schema)


def complete_error_responses(app: Litestar) -> None:
    """Add the statuses every route may answer to each operation of ``app``'s document (in place)."""
    schema = app.openapi_schema
    secured_by_default = bool(schema.security)
    for path, item in (schema.paths or {}).items():
        for method in _METHODS:
            operation: Any = getattr(item, method, None)
            if operation is None:
                continue
            responses: dict[str, Any] = operation.responses if operation.responses is not None else {}
            operation.responses = responses
            no_content = responses.get("204")
            if isinstance(no_content, OpenAPIResponse):
                no_content.content = None  # a 204 has no body (Litestar documented a JSON null)
            old = responses.get("400")
            if old is None or not isinstance(old, OpenAPIResponse) or PROBLEM_JSON not in (old.content or {}):
                responses["400"] = _problem(400)
            secured = operation.security if operation.security is not None else secured_by_default
            if secured:
                responses.setdefault(
                    "401",
                    _problem(
                        401,
                        {
                            "WWW-Authenticate": _header(
                                "The Bearer challenge", Schema(type=OpenAPIType.STRING)
                            )
                        },
                    ),
                )
            if "{" in path:
                responses.setdefault("404", _problem(404))
            responses.setdefault(
                "405",
                _problem(
                    405, {"Allow": _header("The methods this path answers", Schema(type=OpenAPIType.STRING))}
                ),
            )
            if operation.request_body is not None:
                responses.setdefault("413", _problem(413))
            responses.setdefault(
                "503",
                _problem(
                    503,
                    {
                        "Retry-After": _header(
                            "Seconds to wait before trying again", Schema(type=OpenAPIType.INTEGER)
                        )
                    },
                ),
            )


def fix_options_allow(app: Litestar) -> None:
    """Point each automatic OPTIONS handler at the route that holds all of its path's methods."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            fn: Any = handler.fn
            if getattr(fn, "__name__", "") != "options_handler" or not fn.__closure__:
                continue
            for cell in fn.__closure__:
                if isinstance(cell.cell_contents, HTTPRoute):
                    cell.cell_contents = route

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

* ``429`` with ``Retry-After`` and the RateLimit headers when the route names a rate limit
  (``opt={"rate_limit": ...}``, ``chat_core.ratelimit``): over the limit, or over an upload quota.

Route-specific statuses (``403``, ``409``, ``410``, ``415``, ``416``, ``422``) stay declared on the routes.

``finish_document`` makes the served document exact where Litestar's generator is not, and links it:

* Every msgspec body (request and response) is described by msgspec's own JSON Schema
  (``msgspec.json.schema_components``), the schema of the very decoder that validates it: constraints
  inside lists (``participantIds: [""]`` is not schema-valid), tagged unions as a ``discriminator``
  (a text or an image message), patterns, lengths and formats exactly as enforced.
* An operation whose handler says ``security=[]`` is published with ``security: []`` (Litestar drops the
  empty list, which made ``/dev/token`` look authenticated) and no 401.
* Links (OpenAPI ``links``) from each answer that names a resource to every operation on it, by name:
  a path parameter ``conversation_id`` is filled from a response's ``conversationId`` (or
  ``conversation_id``), ``message_id`` from ``messageId``, ``object_key`` from ``object_key``..., the
  rest from the source's own path. Routes added later are linked with no extra work, so Schemathesis'
  stateful phase reaches them.
* Each service's ``ServiceParts.document`` refinements then run (settings-dependent shapes: the accepted
  image types, the size limit).

``fix_options_allow``: Litestar's automatic OPTIONS handler keeps the route object of the first handler
registered on a path, so ``GET`` and ``POST`` on one path declared by two functions answered ``Allow:
OPTIONS, POST``. It is re-pointed at the final route.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from http import HTTPStatus
from typing import Any

import msgspec
from litestar import Litestar, Response
from litestar._openapi.plugin import OpenAPIPlugin
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
from chat_core.parameters import SHAPES
from chat_core.ratelimit import RATE_LIMIT_OPT

__all__ = [
    "DocumentRefinement",
    "add_link",
    "complete_error_responses",
    "constrain",
    "finish_document",
    "fix_options_allow",
    "openapi_document",
]

DocumentRefinement = Callable[[dict[str, Any]], None]

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


def _rate_limited_operations(app: Litestar) -> set[tuple[str, str]]:
    """(path, method) of every operation whose handler names a rate limit."""
    return {
        (route.path_format, method.lower())
        for route in app.routes
        if isinstance(route, HTTPRoute)
        for handler in route.route_handlers
        if RATE_LIMIT_OPT in (handler.opt or {})
        for method in handler.http_methods
    }


def _too_many_requests() -> OpenAPIResponse:
    text = Schema(type=OpenAPIType.STRING)
    return _problem(
        429,
        {
            "Retry-After": _header("Seconds to wait before trying again", Schema(type=OpenAPIType.INTEGER)),
            "RateLimit-Policy": _header('The limit, e.g. `"sends";q=120;w=60` (IETF draft)', text),
            "RateLimit": _header('What is left, e.g. `"sends";r=0;t=17` (IETF draft)', text),
        },
    )


def _public_operations(app: Litestar) -> set[tuple[str, str]]:
    """(path, method) of every operation whose handler declares ``security=[]`` (no token needed)."""
    return {
        (route.path_format, method.lower())
        for route in app.routes
        if isinstance(route, HTTPRoute)
        for handler in route.route_handlers
        if handler.security is not None and len(handler.security) == 0
        for method in handler.http_methods
    }


def complete_error_responses(app: Litestar) -> None:
    """Add the statuses every route may answer to each operation of ``app``'s document (in place)."""
    schema = app.openapi_schema
    rate_limited = _rate_limited_operations(app)
    public = _public_operations(app)
    secured_by_default = bool(schema.security)
    for path, item in (schema.paths or {}).items():
        for method in _METHODS:
            operation: Any = getattr(item, method, None)
            if operation is None:
                continue
            if (path, method) in public:
                operation.security = []  # published as `security: []` (Litestar leaves it out)
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
            if (path, method) in rate_limited:
                responses["429"] = _too_many_requests()
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


# --- the served document: exact bodies, links, refinements ------------------------------------------
_REF = "#/components/schemas/{name}"


def _body_types(app: Litestar) -> Iterator[tuple[str, str, Any, list[Any]]]:
    """(path, method, request body type or None, response body types) of every documented operation."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if not handler.resolve_include_in_schema():
                continue
            signature = handler.parsed_fn_signature
            data = signature.parameters.get("data")
            answers = [signature.return_type.annotation]
            answers += [spec.data_container for spec in (handler.responses or {}).values()]
            for method in handler.http_methods:
                yield route.path_format, method.lower(), data.annotation if data else None, answers


def _plain(annotation: Any) -> Any:
    """``annotation`` without ``Annotated`` markers and ``Response[...]`` wrappers."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin is Response or annotation is Response:
            args = typing.get_args(annotation)
            annotation = args[0] if args else None
        else:
            return annotation


def _schemable(annotation: Any) -> bool:
    """A type msgspec describes and that holds a msgspec Struct (the rest Litestar describes fine)."""
    if annotation is None or annotation is Any:
        return False
    try:
        msgspec.json.schema(annotation)
    except (TypeError, ValueError):
        return False
    args = typing.get_args(annotation)
    return (isinstance(annotation, type) and issubclass(annotation, msgspec.Struct)) or (
        bool(args) and any(_schemable(arg) for arg in args)
    )


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _exact_bodies(app: Litestar, document: dict[str, Any]) -> None:
    """msgspec's JSON Schema for every msgspec body: the components, and union request bodies inline."""
    found: list[Any] = []
    unions: dict[tuple[str, str], Any] = {}
    for path, method, data, answers in _body_types(app):
        for annotation in (_plain(data), *(_plain(answer) for answer in answers)):
            if _schemable(annotation) and annotation not in found:
                found.append(annotation)
        if data is not None and _is_union(_plain(data)) and _schemable(_plain(data)):
            unions[(path, method)] = _plain(data)
    if not found:
        return
    schemas, components = msgspec.json.schema_components(found, ref_template=_REF)
    document.setdefault("components", {}).setdefault("schemas", {}).update(components)
    by_type = dict(zip(found, schemas, strict=True))
    for (path, method), union in unions.items():
        media = document["paths"][path][method]["requestBody"]["content"]["application/json"]
        examples = media.get("schema", {}).get("examples")
        media["schema"] = {**by_type[union], **({"examples": examples} if examples else {})}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
        resolved: dict[str, Any] = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
        return resolved
    return schema


def _top_properties(document: dict[str, Any], schema: dict[str, Any]) -> set[str]:
    """Properties every answer of ``schema`` carries at its top level (all branches of a union)."""
    schema = _resolve(document, schema)
    branches = schema.get("anyOf") or schema.get("oneOf") or schema.get("allOf")
    if branches and "properties" not in schema:
        sets = [_top_properties(document, branch) for branch in branches]
        return set.intersection(*sets) if sets else set()
    return set(schema.get("properties") or {})


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document.get("paths", {}).items():
        for method in _METHODS:
            if method in item:
                yield path, method, item[method]


_PATH_PARAMETER = re.compile(r"\{([^}]+)\}")


def _add_links(document: dict[str, Any]) -> None:
    """Link each 2xx answer naming a resource (``conversationId``, ``messageId``, ``object_key``...) to
    every operation whose path parameters it fills (the rest from the source's own path)."""
    operations = list(_operations(document))
    for source_path, source_method, source in operations:
        if source.get("security") == []:
            continue  # health and dev-login answers name no resource of the caller's
        own = set(_PATH_PARAMETER.findall(source_path))
        for status, response in (source.get("responses") or {}).items():
            schema = (response.get("content") or {}).get("application/json", {}).get("schema")
            if not status.startswith("2") or not isinstance(schema, dict):
                continue
            properties = _top_properties(document, schema)
            links: dict[str, Any] = {}
            for target_path, target_method, target in operations:
                if (target_path, target_method) == (source_path, source_method):
                    continue
                parameters: dict[str, str] = {}
                from_answer = False
                names = _PATH_PARAMETER.findall(target_path)
                for name in names:
                    field = next((f for f in (_camel(name), name) if f in properties), None)
                    if field is not None:
                        parameters[name] = f"$response.body#/{field}"
                        from_answer = True
                    elif name in own:
                        parameters[name] = f"$request.path.{name}"
                    else:
                        break  # only the innermost parameters may be left to the fuzzer
                if from_answer and "operationId" in target:
                    links[target["operationId"]] = {
                        "operationId": target["operationId"],
                        "parameters": parameters,
                    }
            if links:
                response["links"] = {**links, **response.get("links", {})}


def constrain(document: dict[str, Any], component: str, prop: str, **keywords: Any) -> None:
    """Add JSON Schema ``keywords`` to property ``prop`` of ``component`` (to its non-null branch when it
    is nullable): for shapes that depend on settings."""
    schema = document["components"]["schemas"][component]["properties"][prop]
    branches = [b for b in schema.get("anyOf", [schema]) if b.get("type") != "null"]
    for branch in branches:
        branch.update(keywords)


def add_link(
    document: dict[str, Any],
    source: tuple[str, str, str],
    target: tuple[str, str],
    *,
    parameters: dict[str, str] | None = None,
    request_body: Any = None,
) -> None:
    """A link from ``source`` (path, method, status) to ``target`` (path, method), when both are in
    ``document`` (a service's own document may lack the other service's route)."""
    paths = document.get("paths", {})
    path, method, status = source
    answer = paths.get(path, {}).get(method, {}).get("responses", {}).get(status)
    operation = paths.get(target[0], {}).get(target[1])
    if answer is None or operation is None or "operationId" not in operation:
        return
    link: dict[str, Any] = {"operationId": operation["operationId"]}
    if parameters:
        link["parameters"] = parameters
    if request_body is not None:
        link["requestBody"] = request_body
    answer.setdefault("links", {})[operation["operationId"]] = link


def _shape_known_parameters(document: dict[str, Any]) -> None:
    """A path parameter named like a shared one (``chat_core.parameters.SHAPES``) but declared a bare
    ``str`` gets the shared shape, so a route added without the shared types is still exact."""
    for _, _, operation in _operations(document):
        for parameter in operation.get("parameters", []):
            shape = SHAPES.get(parameter.get("name", ""))
            schema = parameter.get("schema")
            if (
                parameter.get("in") == "path"
                and shape
                and isinstance(schema, dict)
                and "pattern" not in schema
            ):
                schema.update(shape)


def finish_document(app: Litestar, refinements: Sequence[DocumentRefinement] = ()) -> dict[str, Any]:
    """Build ``app``'s document (after ``complete_error_responses``), make it exact, link it, apply the
    services' ``refinements``, and serve that (``/docs/openapi.json`` and ``openapi_document``)."""
    document = app.openapi_schema.to_schema()
    _exact_bodies(app, document)
    _shape_known_parameters(document)
    for refine in refinements:
        refine(document)
    _add_links(document)
    # Litestar serves the dict it caches here; there is no public hook between building and serving.
    app.plugins.get(OpenAPIPlugin)._openapi_schema = document
    return document


def openapi_document(app: Litestar) -> dict[str, Any]:
    """The document ``app`` serves at ``/docs/openapi.json``."""
    return app.plugins.get(OpenAPIPlugin).provide_openapi_schema()

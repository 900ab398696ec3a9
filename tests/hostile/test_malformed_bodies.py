"""A fuzzed corpus of malformed bodies against every JSON endpoint: each is a 4xx problem with a stable
``code``, never a 500, and a body that is not JSON text (invalid UTF-8 anywhere, truncated, not JSON at all)
is 400 ``invalid_json``.

The endpoints are enumerated from the all-in-one app's routes (every handler that takes a body), so an
endpoint added later is fuzzed without touching this file; the wrong-type cases are derived from each
body's own JSON schema, so a field added later gets its wrong types too.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from litestar.routes import HTTPRoute

from chat_management.all import create_app
from tests.conftest import auth_header, make_settings
from tests.hostile.test_hostile_input import app, assert_clean_refusal, client, fill

__all__ = ["app", "client"]  # the module's all-in-one app and its member's client, shared


def _json_endpoints() -> list[tuple[str, str, Any]]:
    """(method, path template, body type) of every route whose handler decodes a body."""
    found: list[tuple[str, str, Any]] = []
    for route in create_app(make_settings(Path("/tmp/hostile-body-listing"))).routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            data = handler.parsed_fn_signature.parameters.get("data")
            if data is not None:
                found.extend((method, route.path, data.annotation) for method in sorted(handler.http_methods))
    return sorted(found, key=lambda item: (item[1], item[0]))


JSON_ENDPOINTS = _json_endpoints()

# Bytes that are not JSON text: 400 invalid_json.
NOT_JSON: dict[str, bytes] = {
    "invalid_utf8_in_string": b'{"participantIds": ["a\xff\xfeb"], "content": "a\xff\xfeb", "token": "\xff"}',
    "invalid_utf8_in_key": b'{"a\xffb": 1}',
    "overlong_nul": b'{"content": "a\xc0\x80b", "participantIds": ["\xc0\x80"]}',
    "raw_surrogate": b'{"content": "\xed\xa0\x80", "name": "\xed\xa0\x80"}',
    "truncated_utf8": b'{"content": "caf\xc3"}',
    "latin1_text": '{"content": "caf\u00e9", "name": "\u00e9t\u00e9"}'.encode("latin-1"),
    "invalid_utf8_outside_strings": b'\xff{"content": "x"}',
    "utf8_bom": codecs.BOM_UTF8 + b'{"participantIds": []}',
    "utf16_le_bom": codecs.BOM_UTF16_LE + '{"participantIds": []}'.encode("utf-16-le"),
    "utf16_be_bom": codecs.BOM_UTF16_BE + '{"participantIds": []}'.encode("utf-16-be"),
    "utf32": '{"participantIds": []}'.encode("utf-32"),
    "truncated_object": b'{"participantIds": ["bob"',
    "truncated_string": b'{"content": "hel',
    "truncated_escape": b'{"content": "\\u12',
    "trailing_garbage": b'{"participantIds": []} x',
    "two_documents": b"{} {}",
    "raw_nul": b'{"content": "a\x00b"}',
    "nul_only": b"\x00",
    "nul_after": b"{}\x00",
    "raw_newline_in_string": b'{"content": "a\nb"}',
    "lone_surrogate_escape": b'{"content": "\\ud800", "name": "\\udfff"}',
    "huge_exponent": b'{"size_bytes": 1e999999, "participantIds": [1e999999]}',
    "nan": b'{"size_bytes": NaN}',
    "infinity": b'{"size_bytes": -Infinity}',
    "single_quotes": b"{'participantIds': []}",
    "unquoted_key": b"{participantIds: []}",
    "trailing_comma": b'{"participantIds": [],}',
    "comment": b'{"participantIds": [] /* hi */}',
    "only_whitespace": b" \t\r\n",
    "form_encoded": b"participantIds=bob&content=hi",
}

# JSON text of the wrong shape or values: 4xx with a code (which one is the endpoint's business).
WRONG_SHAPE: dict[str, bytes] = {
    "empty_body": b"",
    "array": b"[]",
    "string": b'"hello"',
    "number": b"1",
    "null": b"null",
    "true": b"true",
    "huge_integer": b'{"size_bytes": ' + b"9" * 5000 + b', "participantIds": ["bob"]}',
    "huge_negative": b'{"size_bytes": -' + b"9" * 400 + b', "participantIds": -' + b"9" * 400 + b"}",
    "nested_within_limit": b'{"metadata": '
    + b"[" * 30
    + b"]" * 30
    + b', "participantIds": '
    + b"[" * 30
    + b"]" * 30
    + b"}",
    "escaped_nul": b'{"participantIds": ["\\u0000"], "conversationId": "\\u0000", "content_type": "\\u0000",'
    b' "messageType": "\\u0000", "platform": "\\u0000"}',
    "duplicate_keys": b'{"participantIds": [], "participantIds": 5}',
    "long_string": b'{"participantIds": ["' + b"a" * 200_000 + b'"], "content": "' + b"a" * 200_000 + b'"}',
}


def _wrong_value(schema: dict[str, Any]) -> Any:
    """A value of another JSON type than ``schema`` allows."""
    kinds = {schema.get("type")} | {option.get("type") for option in schema.get("anyOf", [])}
    for candidate in ({"not": "a list"}, ["not", "a", "string"], "not a number", 12345, [1.5]):
        kind = {dict: "object", list: "array", str: "string", int: "integer", float: "number"}
        if kind[type(candidate)] not in kinds and not (
            {"number", "integer"} & kinds and type(candidate) is int
        ):
            return candidate
    return None


def _wrong_types(body_type: Any) -> Iterator[tuple[str, bytes]]:
    """For each field of the body's schema, a body with that field of a wrong type."""
    (schema,), components = msgspec.json.schema_components([body_type])
    ref = schema.get("$ref", "").rsplit("/", 1)[-1]
    properties = components.get(ref, {}).get("properties", {})
    for name, field in properties.items():
        resolved = components.get(field.get("$ref", "").rsplit("/", 1)[-1], field)
        yield f"wrong_type_{name}", msgspec.json.encode({name: _wrong_value(resolved)})


CASES = [
    pytest.param(method, path, body, "invalid_json", id=f"{method} {path} {name}")
    for method, path, _ in JSON_ENDPOINTS
    for name, body in NOT_JSON.items()
] + [
    pytest.param(method, path, body, None, id=f"{method} {path} {name}")
    for method, path, body_type in JSON_ENDPOINTS
    for name, body in [*WRONG_SHAPE.items(), *_wrong_types(body_type)]
]


def test_the_json_endpoints_were_found() -> None:
    paths = {path for _, path, _ in JSON_ENDPOINTS}
    assert {"/conversations", "/conversations/{conversation_id:str}/messages"} <= paths
    assert len(JSON_ENDPOINTS) >= 5


@pytest.mark.parametrize(("method", "path", "body", "code"), CASES)
async def test_a_malformed_body_is_a_4xx_problem_with_a_code(
    client: httpx.AsyncClient, method: str, path: str, body: bytes, code: str | None
) -> None:
    headers = {"Content-Type": "application/json", **auth_header("alice")}
    response = await client.request(method, fill(path), content=body, headers=headers)
    assert_clean_refusal(response)
    if code is not None:
        assert response.status_code == 400, response.text
        assert response.json()["code"] == code, response.text

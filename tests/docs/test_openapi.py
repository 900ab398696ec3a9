"""Each service serves its OpenAPI document, with the spec's endpoints documented by example."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema_rs
import msgspec
import pytest
from litestar import get
from litestar.params import FromPath

import image_proxy.app
import message_service.app
import upload_service.app
from chat_core import keys
from chat_core.app_factory import ServiceParts, create_service_app
from chat_core.composition import Composition
from chat_core.openapi import openapi_document
from tests.conftest import make_settings

UPLOAD = "/conversations/{conversation_id}/images/upload_url"
SEND = "/conversations/{conversation_id}/messages"
PROXY = "/images/{conversation_id}/{object_key}"


async def _document(factory: Any, tmp_path: Path, client_for: Any) -> dict[str, Any]:
    client = await client_for(factory(make_settings(tmp_path)))
    response = await client.get("/docs/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def _request_examples(operation: dict[str, Any]) -> list[Any]:
    media = operation["requestBody"]["content"]["application/json"]
    return list(media.get("examples") or media["schema"].get("examples") or [])


def _assert_problem_responses(operation: dict[str, Any], statuses: list[str]) -> None:
    for status in statuses:
        content = operation["responses"][status]["content"]
        assert list(content) == ["application/problem+json"], status
        assert content["application/problem+json"]["schema"]["$ref"].endswith("/ProblemDetails")


async def test_the_upload_service_documents_the_specs_request_and_response(
    tmp_path: Path, client_for: Any
) -> None:
    operation = (await _document(upload_service.app.create_app, tmp_path, client_for))["paths"][UPLOAD][
        "post"
    ]
    assert {"content_type": "image/jpeg", "filename": "example.jpg"} in _request_examples(operation)
    (example,) = operation["responses"]["200"]["content"]["application/json"]["examples"].values()
    assert set(example["value"]) == {"upload_url", "object_key", "file_url", "expires_at"}
    _assert_problem_responses(operation, ["400", "401", "404", "413", "415"])


async def test_the_message_service_documents_the_specs_send_and_stored_message(
    tmp_path: Path, client_for: Any
) -> None:
    document = await _document(message_service.app.create_app, tmp_path, client_for)
    operation = document["paths"][SEND]["post"]
    image_example = next(e for e in _request_examples(operation) if e["messageType"] == "image")
    assert set(image_example["metadata"]) >= {"object_key", "url", "content_type"}
    (stored,) = operation["responses"]["201"]["content"]["application/json"]["examples"].values()
    assert set(stored["value"]) == {
        "messageId", "content", "messageType", "senderId", "timestamp", "readBy", "metadata"
    }  # fmt: skip
    _assert_problem_responses(operation, ["401", "404", "409", "413", "415", "422"])
    assert "/ws" in document["paths"] or any(p.startswith("/me/devices") for p in document["paths"])


async def test_the_image_proxy_documents_its_redirect_and_its_refusals(
    tmp_path: Path, client_for: Any
) -> None:
    operation = (await _document(image_proxy.app.create_app, tmp_path, client_for))["paths"][PROXY]["get"]
    assert "signed GET" in operation["responses"]["302"]["description"]
    _assert_problem_responses(operation, ["400", "401", "404"])


@pytest.mark.parametrize("path", ["/docs", "/docs/swagger"])
async def test_the_docs_pages_render(path: str, tmp_path: Path, client_for: Any) -> None:
    client = await client_for(upload_service.app.create_app(make_settings(tmp_path)))
    response = await client.get(path)
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]


# --- the document is exact (issue: what the server refuses is not schema-valid, and links reach it all) --
def _whole_document(tmp_path: Path) -> dict[str, Any]:
    from chat_management import all as all_in_one

    settings = make_settings(tmp_path, {"DEV_LOGIN": "true", "ALLOWED_IMAGE_TYPES": "image/jpeg,image/png"})
    return openapi_document(all_in_one.create_app(settings))


def _valid(document: dict[str, Any], component: str, value: Any) -> bool:
    # jsonschema-rs reads patterns as ECMAScript does (as client generators will), lookaheads included
    schema = {"$ref": f"#/components/schemas/{component}", "components": document["components"]}
    return jsonschema_rs.validator_for(schema).is_valid(value)


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in document["paths"].items() for method, op in item.items()]


KEY = "images/alice/20240419-123456-0f8e4c2a-9b7d-4e11-8a3c-5d6e7f809112.jpg"


def test_the_document_refuses_what_the_server_refuses(tmp_path: Path) -> None:
    document = _whole_document(tmp_path)
    assert not _valid(document, "AddParticipants", {"participantIds": [""]})
    assert not _valid(document, "CreateConversation", {"participantIds": ["a..b"]})
    assert _valid(document, "AddParticipants", {"participantIds": ["bob"]})
    metadata = {"object_key": KEY, "content_type": "image/jpeg"}
    image: dict[str, Any] = {"messageType": "image", "metadata": metadata}
    assert _valid(document, "SendImage", image)
    assert not _valid(document, "SendImage", {**image, "metadata": None})
    assert not _valid(document, "SendImage", {**image, "metadata": {**metadata, "object_key": "x"}})
    assert _valid(document, "SendImage", {**image, "metadata": {**metadata, "content_type": "Image/PNG"}})
    # ALLOWED_IMAGE_TYPES is in the document: gif is not accepted here
    assert not _valid(document, "SendImage", {**image, "metadata": {**metadata, "content_type": "image/gif"}})
    assert not _valid(document, "SendText", {"messageType": "text", "content": ""})
    assert _valid(document, "SendText", {"messageType": "text", "content": "hi", "metadata": None})
    body = document["paths"]["/conversations/{conversation_id}/messages"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["discriminator"]["propertyName"] == "messageType"
    assert document["components"]["schemas"]["Message"]["discriminator"]["propertyName"] == "messageType"
    assert not _valid(document, "UploadUrlRequest", {"content_type": "image/jpeg", "size_bytes": 10**12})


def test_every_id_key_and_cursor_parameter_has_its_shape(tmp_path: Path) -> None:
    document = _whole_document(tmp_path)
    for path, method, operation in _operations(document):
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "path" or parameter["name"] == "before":
                assert "pattern" in parameter["schema"], (method, path, parameter["name"])
    proxy = document["paths"]["/images/{conversation_id}/{object_key}"]["get"]
    (key,) = [p["schema"] for p in proxy["parameters"] if p["name"] == "object_key"]
    assert re.search(key["pattern"], KEY)
    assert not re.search(key["pattern"], "images/alice/x.jpg")


def test_what_needs_no_token_says_so(tmp_path: Path) -> None:
    document = _whole_document(tmp_path)
    for path in ("/dev/token", "/healthz", "/readyz", "/metrics"):
        (operation,) = document["paths"][path].values()
        assert operation["security"] == [], path
        assert "401" not in operation["responses"], path
    assert "security" not in document["paths"]["/conversations"]["post"]  # the default: a bearer token


def test_links_lead_from_a_conversation_to_everything_in_it(tmp_path: Path) -> None:
    document = _whole_document(tmp_path)
    targets = {
        link["operationId"]
        for _, _, operation in _operations(document)
        for answer in operation["responses"].values()
        for link in answer.get("links", {}).values()
    }
    # every route on a conversation or a message (those added later too) is reached by the stateful phase
    for path, method, operation in _operations(document):
        if "{conversation_id}" in path or "{message_id}" in path:
            assert operation["operationId"] in targets, (method, path)
    upload = document["paths"]["/conversations/{conversation_id}/images/upload_url"]["post"]["responses"][
        "200"
    ]
    send_link = next(link for link in upload["links"].values() if "requestBody" in link)
    assert send_link["requestBody"]["metadata"]["object_key"] == "$response.body#/object_key"
    send = document["paths"]["/conversations/{conversation_id}/messages"]["post"]["responses"]["201"]
    assert any(
        link["parameters"].get("message_id") == "$response.body#/messageId" for link in send["links"].values()
    )


async def test_the_served_document_is_the_finished_one(tmp_path: Path, client_for: Any) -> None:
    app = message_service.app.create_app(make_settings(tmp_path))
    client = await client_for(app)
    served = (await client.get("/docs/openapi.json")).json()
    assert served == msgspec.json.decode(msgspec.json.encode(openapi_document(app)))
    assert "links" in served["paths"]["/conversations"]["post"]["responses"]["201"]


def test_a_route_added_with_bare_ids_still_gets_their_shapes_and_links(tmp_path: Path) -> None:
    """Another engineer's route written with ``FromPath[str]``: the document gives its ids their shapes
    (by name) and links to it, so Schemathesis checks it with the rest."""

    @get("/conversations/{conversation_id:str}/pins/{message_id:str}", sync_to_thread=False)
    def pinned(conversation_id: FromPath[str], message_id: FromPath[str]) -> dict[str, str]:
        return {}

    settings = make_settings(tmp_path)
    backends = Composition(settings)
    parts = [
        message_service.app.build(settings, message_service.app.ports(backends)),
        ServiceParts(component="pins", route_handlers=[pinned]),
    ]
    document = openapi_document(create_service_app(settings, backends, parts, component="t", title="t"))
    operation = document["paths"]["/conversations/{conversation_id}/pins/{message_id}"]["get"]
    shapes = {p["name"]: p["schema"].get("pattern") for p in operation["parameters"]}
    assert shapes == {
        "conversation_id": keys.CONVERSATION_ID_PATTERN.pattern,
        "message_id": keys.UUID_PATTERN.pattern,
    }
    send = document["paths"]["/conversations/{conversation_id}/messages"]["post"]["responses"]["201"]
    assert operation["operationId"] in send["links"]


def _types(schema: dict[str, Any]) -> list[str]:
    return [schema["type"]] if "type" in schema else [option["type"] for option in schema["oneOf"]]


async def test_the_forward_and_settings_shapes_are_documented_exactly(
    tmp_path: Path, client_for: Any
) -> None:
    document = await _document(message_service.app.create_app, tmp_path, client_for)
    schemas = document["components"]["schemas"]
    forward = document["paths"][SEND + "/{message_id}/forward"]["post"]
    body_ref = forward["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = schemas[body_ref.rsplit("/", 1)[-1]]
    assert set(body["properties"]) == {"conversationId", "content", "clientMessageId"}
    assert body["required"] == ["conversationId"]
    created = forward["responses"]["201"]["content"]["application/json"]["schema"]["$ref"]
    assert created.endswith("/Message")  # a discriminated union: each shape carries `forwarded`
    for shape in ("TextMessage", "ImageMessage"):
        message = schemas[shape]
        assert _types(message["properties"]["forwarded"]) == ["boolean"]
        assert "forwarded" not in message.get("required", [])  # absent unless the message was forwarded
    _assert_problem_responses(forward, ["400", "401", "404", "409", "422", "429"])
    update = document["paths"]["/conversations/{conversation_id}"]["patch"]
    update_ref = update["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    settings = schemas[update_ref.rsplit("/", 1)[-1]]
    assert _types(settings["properties"]["pushImagePreviews"]) == ["boolean"]  # never null
    assert settings["required"] == []
    device_ref = document["paths"]["/me/devices/{token}"]["put"]["requestBody"]["content"]["application/json"]
    registration = schemas[device_ref["schema"]["$ref"].rsplit("/", 1)[-1]]
    assert sorted(registration["properties"]["provider"]["enum"]) == ["apns", "fcm"]
    assert registration["required"] == ["platform"]

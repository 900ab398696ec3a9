"""Each service serves its OpenAPI document, with the spec's endpoints documented by example."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import image_proxy.app
import message_service.app
import upload_service.app
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
    message = schemas[created.rsplit("/", 1)[-1]]
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
    assert registration["properties"]["provider"]["enum"] == ["fcm", "apns"]
    assert registration["required"] == ["platform"]

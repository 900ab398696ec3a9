"""The message service on each MessageStore adapter (SQLite, the Firestore emulator), over real HTTP.

``chat`` is the app with the local-disk object store; ``make_chat(env)`` takes extra settings
(e.g. ``MAX_IMAGE_BYTES``) or another object store.
"""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from PIL import Image

from chat_core import keys
from chat_core.chatstore import Message, OutboxEntry
from chat_core.composition import Composition
from chat_core.settings import Settings
from message_service.app import create_app
from tests.conftest import auth_header, make_settings

PUBLIC_BASE_URL = "https://chat.example"


def image_bytes(fmt: str = "JPEG", size: tuple[int, int] = (800, 600)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB" if fmt != "GIF" else "P", size, color=0).save(buffer, format=fmt)
    return buffer.getvalue()


class RecordingEvents:
    """A MessageEvents that remembers what it was told (the seam's contract, observed)."""

    def __init__(self) -> None:
        self.created: list[OutboxEntry] = []
        self.created_members: list[frozenset[str]] = []
        self.read: list[tuple[str, Message, str]] = []
        self.changed: list[OutboxEntry] = []
        self.membership: list[tuple[str, frozenset[str], frozenset[str]]] = []
        self.stored: list[OutboxEntry] = []

    async def message_created(self, entry: OutboxEntry, members: frozenset[str]) -> None:
        self.created.append(entry)
        self.created_members.append(members)

    async def event_stored(self, entry: OutboxEntry) -> None:
        self.stored.append(entry)
        if entry.kind == "message.read":
            assert entry.message is not None
            assert entry.user_id is not None
            self.read.append((entry.conversation_id, entry.message, entry.user_id))
        elif entry.kind in ("message.deleted", "message.edited"):
            self.changed.append(entry)
        elif entry.kind == "membership.changed":
            self.membership.append((entry.conversation_id, frozenset(entry.added), frozenset(entry.removed)))


class Chat:
    """An httpx client on the message service plus the backends behind it."""

    def __init__(
        self, client: httpx.AsyncClient, backends: Composition, settings: Settings, events: RecordingEvents
    ) -> None:
        self.client = client
        self.backends = backends
        self.settings = settings
        self.events = events

    async def create_conversation(self, owner: str, *others: str, name: str | None = None) -> str:
        response = await self.client.post(
            "/conversations", json={"participantIds": list(others), "name": name}, headers=auth_header(owner)
        )
        assert response.status_code == 201, response.text
        return str(response.json()["conversationId"])

    async def upload(
        self,
        user: str,
        conversation_id: str,
        data: bytes,
        content_type: str = "image/jpeg",
        *,
        key_type: str | None = None,
    ) -> str:
        """Put ``data`` where an upload by ``user`` to the conversation lands; returns its object_key."""
        object_key = keys.new_object_key(user, key_type or content_type)
        await self.backends.object_store.put(
            keys.stored_key(conversation_id, object_key), data, content_type=content_type
        )
        return object_key

    async def send_text(self, user: str, conversation_id: str, content: str = "hello", **extra: Any) -> Any:
        return await self.client.post(
            f"/conversations/{conversation_id}/messages",
            json={"content": content, "messageType": "text", **extra},
            headers=auth_header(user),
        )

    async def send_image(
        self,
        user: str,
        conversation_id: str,
        object_key: str,
        content_type: str = "image/jpeg",
        *,
        caption: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        **extra: Any,
    ) -> httpx.Response:
        body: dict[str, Any] = {
            "content": caption,
            "messageType": "image",
            "metadata": {"object_key": object_key, "content_type": content_type, **(metadata or {})},
            **extra,
        }
        return await self.client.post(
            f"/conversations/{conversation_id}/messages", json=body, headers=auth_header(user)
        )

    async def messages(self, user: str, conversation_id: str, **params: Any) -> list[Message]:
        response = await self.client.get(
            f"/conversations/{conversation_id}/messages", params=params, headers=auth_header(user)
        )
        assert response.status_code == 200, response.text
        return msgspec.convert(response.json()["items"], list[Message])


ChatFactory = Callable[..., Awaitable[Chat]]


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.firestore)])
def store_env(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "sqlite":
        return {"MESSAGE_STORE": "sqlite"}
    project = request.getfixturevalue("firestore_project")
    emulator = request.getfixturevalue("firestore_emulator")
    return {
        "MESSAGE_STORE": "firestore",
        "FIRESTORE_PROJECT_ID": project,
        "FIRESTORE_EMULATOR_HOST": emulator.address,
    }


@pytest.fixture
def make_chat(tmp_path: Path, store_env: dict[str, str], client_for: Any) -> ChatFactory:
    async def make(env: Mapping[str, str] | None = None) -> Chat:
        settings = make_settings(tmp_path, {"PUBLIC_BASE_URL": PUBLIC_BASE_URL, **store_env, **(env or {})})
        backends = Composition(settings)
        events = RecordingEvents()
        client = await client_for(create_app(settings, backends, events))
        return Chat(client, backends, settings, events)

    return make


@pytest.fixture
async def chat(make_chat: ChatFactory) -> Chat:
    return await make_chat()

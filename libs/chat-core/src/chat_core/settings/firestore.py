"""The Firestore database of MESSAGE_STORE=firestore."""

from __future__ import annotations

from typing import Annotated

from chat_core.settings.base import Frozen, env


class FirestoreSettings(Frozen, frozen=True, kw_only=True):
    project_id: Annotated[
        str, env("FIRESTORE_PROJECT_ID", "Google Cloud project of the Firestore database.")
    ] = "chat-management-dev"
    database: Annotated[str, env("FIRESTORE_DATABASE", "Firestore database id.")] = "(default)"
    emulator_host: Annotated[
        str, env("FIRESTORE_EMULATOR_HOST", "host:port of the Firestore emulator (dev/test).")
    ] = ""

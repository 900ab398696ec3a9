"""SQLite chat store: the embedded default, one WAL database under ``DATA_DIR``.

The queries of every narrow store (conversations, messages, devices, outbox, push receipts) over one
``chat_core.sqlite_engine.SqliteEngine``: each operation is atomic (message + image reference + outbox
entry together or not at all), writes share group commits, reads run on a pool beside the writer.
``synchronous=FULL`` because a 201 promises the message survives a power cut, not only a crash.
"""

from __future__ import annotations

from pathlib import Path

from chat_core.chatstore import ChatStore
from chat_core.chatstore.sqlite.base import SqliteBase
from chat_core.chatstore.sqlite.conversations import SqliteConversations
from chat_core.chatstore.sqlite.devices import SqliteDevices
from chat_core.chatstore.sqlite.messages import SqliteMessages
from chat_core.chatstore.sqlite.outbox import SqliteOutbox
from chat_core.chatstore.sqlite.receipts import SqlitePushReceipts
from chat_core.timestamps import Clock, utc_now

__all__ = ["SqliteBase", "SqliteChatStore", "create"]


class SqliteChatStore(
    SqliteConversations,
    SqliteMessages,
    SqliteDevices,
    SqliteOutbox,
    SqlitePushReceipts,
    ChatStore,
):
    """Every narrow store of the chat store over one SQLite engine (``SqliteBase``)."""


def create(data_dir: Path | str, *, clock: Clock = utc_now) -> SqliteChatStore:
    """The chat store of a deployment whose ``DATA_DIR`` is ``data_dir`` (``messages.sqlite3`` in it)."""
    return SqliteChatStore(Path(data_dir) / "messages.sqlite3", clock=clock)

"""Every Redis key and channel name, laid out for Redis Cluster (``REDIS_MODE=cluster``).

The rule (docs/architecture.md, "Redis keys in a cluster"): a cluster places a key by the CRC16 of its
*hash tag* (the part between the first ``{`` and the next ``}``) or, without one, of the whole name.

* Keys that one command or one Lua script touches together must share a slot: give them the same tag.
  Everything about one user is tagged ``{u:<user id>}`` (presence, per-user rate limits), everything about one
  conversation ``{c:<conversation id>}`` (per-conversation rate limits), so a script may read or update
  several of them at once.
* Keys that must spread (one per user, per conversation) never share a tag across users or
  conversations: a common tag (``{presence}:...``) would put every user on one node.
* Reads across many users (presence of all members) group keys by owning node and send one command per
  node (a Lua script with ``allow-cross-slot-keys``), all nodes at once.
* Pub/sub channels need no tag: each is one name, ``SPUBLISH``/``SSUBSCRIBE`` go to the owner of its slot.
"""

from __future__ import annotations

__all__ = ["conversation_tag", "presence_key", "user_tag"]


def user_tag(user_id: str) -> str:
    """The hash tag of every key about one user (they share a slot)."""
    return "{u:" + user_id + "}"


def conversation_tag(conversation_id: str) -> str:
    """The hash tag of every key about one conversation (they share a slot)."""
    return "{c:" + conversation_id + "}"


def presence_key(user_id: str) -> str:
    """The sorted set of a user's live connections (ids scored by expiry, ms of the server's clock)."""
    return f"presence:{user_tag(user_id)}"

"""The operators' jobs on the whole stack, embedded and cloud: a user's erasure and export through the
admin API (and its role), and retention."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import os
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path
from typing import Any

import httpx

from chat_core import keys
from chat_core.chatstore import Message
from message_service.app import standalone_lifecycle
from tests.conftest import TEST_SECRET, auth_header, token_for
from tests.image_stack import ImageStack
from tests.lifecycle.conftest import LifecycleStackFactory
from tests.lifecycle.test_unsend_stack import remaining_objects, wait_until_gone


def operator(roles: list[str] | None = None) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {token_for('ops-anna', roles=['chat-admin'] if roles is None else roles)}"
    }


async def finished_job(stack: ImageStack, job_id: str) -> dict[str, Any]:
    for _ in range(300):
        response = await stack.http.get(f"/admin/jobs/{job_id}", headers=operator())
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        if job["status"] in ("done", "failed"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError("the job did not finish")


async def submit(stack: ImageStack, kind: str, user: str) -> dict[str, Any]:
    response = await stack.http.post(f"/admin/users/{user}/{kind}", headers=operator())
    assert response.status_code == 202, response.text
    accepted: dict[str, Any] = response.json()
    assert accepted["status"] == "queued"
    return await finished_job(stack, accepted["jobId"])


async def test_only_an_operator_may_erase_export_or_look_at_jobs(
    make_lifecycle_stack: LifecycleStackFactory,
) -> None:
    stack = await make_lifecycle_stack()
    for headers in (auth_header("alice"), operator(["chat-user"])):
        for path in ("/admin/users/bob/erase", "/admin/users/bob/export"):
            refused = await stack.http.post(path, headers=headers)
            assert (refused.status_code, refused.json()["code"]) == (403, "admin_role_required")
        refused = await stack.http.get(f"/admin/jobs/{uuid.uuid4()}", headers=headers)
        assert refused.status_code == 403
    unknown = await stack.http.get(f"/admin/jobs/{uuid.uuid4()}", headers=operator())
    assert (unknown.status_code, unknown.json()["code"]) == (404, "job_not_found")
    malformed = await stack.http.post("/admin/users/..%2Fetc/erase", headers=operator())
    assert malformed.status_code in (400, 404)
    assert (await stack.http.post("/admin/users/bob/erase")).status_code == 401


async def test_an_erased_user_leaves_only_tombstones_and_no_bytes(
    make_lifecycle_stack: LifecycleStackFactory,
) -> None:
    stack = await make_lifecycle_stack()
    user = f"erin-{uuid.uuid4().hex[:6]}"
    first, second = await stack.conversation(user, "bob"), await stack.conversation("bob", user, "carol")
    photo = await stack.share(user, first)
    assert photo.message is not None
    texts = [
        await stack.http.post(
            f"/conversations/{cid}/messages",
            json={"messageType": "text", "content": "mine"},
            headers=auth_header(u),
        )
        for cid, u in ((first, user), (second, user), (second, "bob"))
    ]
    assert all(t.status_code == 201 for t in texts)
    device = await stack.http.put(
        f"/me/devices/tok-{uuid.uuid4().hex}", json={"platform": "android"}, headers=auth_header(user)
    )
    assert device.status_code in (200, 201, 204), device.text
    await stack.backends.presence.heartbeat(user, "phone")
    await stack.backends.presence.heartbeat("bob", "phone")

    job = await submit(stack, "erase", user)
    assert job["status"] == "done", job
    assert job["erasure"] == {"messagesDeleted": 3, "conversationsLeft": 2, "devicesDeleted": 1}
    assert job["requestedBy"] == "ops-anna"
    raw_key = keys.stored_key(first, photo.object_key)
    await wait_until_gone(stack, first, photo.message.message_id, raw_key)
    for cid in (first, second):
        listed = await stack.http.get(f"/conversations/{cid}/messages", headers=auth_header("bob"))
        for item in listed.json()["items"]:
            message = item
            if message["senderId"] == user:
                assert (message["deleted"], message["content"], message["metadata"]) == (True, None, None)
            else:
                assert message["content"] == "mine"  # bob's own message stays
        conversation = await stack.backends.conversations.get_conversation(cid)
        assert conversation is not None
        assert user not in conversation.participants
    assert await stack.backends.devices.devices_for([user]) == {}
    assert await stack.backends.presence.online([user, "bob"]) == {"bob"}  # not after the presence TTL
    again = await submit(stack, "erase", user)  # harmless
    assert again["erasure"] == {"messagesDeleted": 0, "conversationsLeft": 0, "devicesDeleted": 0}


async def test_an_export_is_a_zip_of_the_users_messages_and_images_behind_a_signed_url(
    make_lifecycle_stack: LifecycleStackFactory,
) -> None:
    stack = await make_lifecycle_stack()
    user = f"exa-{uuid.uuid4().hex[:6]}"
    cid = await stack.conversation(user, "bob")
    photo = await stack.share(user, cid)
    assert photo.message is not None
    sent = await stack.http.post(
        f"/conversations/{cid}/messages",
        json={"messageType": "text", "content": "hello bob"},
        headers=auth_header(user),
    )
    assert sent.status_code == 201
    job = await submit(stack, "export", user)
    assert job["status"] == "done", job
    assert (job["export"]["messages"], job["export"]["images"]) == (2, 1)
    assert dt.datetime.fromisoformat(job["downloadExpiresAt"]) > dt.datetime.now(dt.UTC)
    async with httpx.AsyncClient() as plain:  # the signed URL is all it takes: no token
        download = await plain.get(job["downloadUrl"])
    assert download.status_code == 200, download.text
    archive = zipfile.ZipFile(io.BytesIO(download.content))
    messages = json.loads(archive.read("messages.json"))
    assert sorted(m["message"]["messageId"] for m in messages) == sorted(
        [photo.message.message_id, sent.json()["messageId"]]
    )
    assert json.loads(archive.read("conversations.json")) == [{"conversationId": cid, "name": None}]
    ext = keys.DERIVATIVE_EXTENSIONS[photo.message.metadata.content_type] if photo.message.metadata else "jpg"
    assert archive.read(f"images/{cid}/{photo.message.message_id}.{ext}") == photo.data  # as served
    tampered = (
        job["downloadUrl"].replace("Signature=", "Signature=0")
        if "Signature=" in job["downloadUrl"]
        else job["downloadUrl"] + "0"
    )
    async with httpx.AsyncClient() as plain:
        assert (await plain.get(tampered)).status_code in (400, 403)


async def test_an_export_expires_after_its_days_and_then_offers_no_download(
    make_lifecycle_stack: LifecycleStackFactory,
) -> None:
    stack = await make_lifecycle_stack({"EXPORT_EXPIRY_DAYS": "2"})
    user = f"exp-{uuid.uuid4().hex[:6]}"
    cid = await stack.conversation(user, "bob")
    sent = await stack.http.post(
        f"/conversations/{cid}/messages",
        json={"messageType": "text", "content": "hi"},
        headers=auth_header(user),
    )
    assert sent.status_code == 201
    job = await submit(stack, "export", user)
    key = job["export"]["objectKey"]
    assert key.startswith("_admin/exports/")
    async with standalone_lifecycle(stack.backends.settings) as lifecycle:
        now = dt.datetime.now(dt.UTC)
        younger = await lifecycle.apply_retention(now + dt.timedelta(days=1, hours=23))
        assert await stack.store.head(key) is not None
        report = await lifecycle.apply_retention(now + dt.timedelta(days=2, minutes=1))
    assert younger.exports_expired == 0
    assert report.exports_expired >= 1  # this one (others of tests sharing the bucket may go too)
    assert await stack.store.head(key) is None
    after = await stack.http.get(f"/admin/jobs/{job['jobId']}", headers=operator())
    assert after.status_code == 200
    assert after.json()["status"] == "done"
    assert "downloadUrl" not in after.json()


async def test_retention_deletes_what_is_older_than_the_conversations_retention_with_its_bytes(
    make_lifecycle_stack: LifecycleStackFactory,
) -> None:
    stack = await make_lifecycle_stack()
    cid, kept_cid = await stack.conversation("alice", "bob"), await stack.conversation("alice", "bob")
    photo = await stack.share("alice", cid)
    assert photo.message is not None
    settings = await stack.http.patch(
        f"/conversations/{cid}", json={"retentionDays": 1}, headers=auth_header("alice")
    )
    assert settings.status_code == 200, settings.text
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    for target in (cid, kept_cid):  # an old text in each; only the first conversation has a retention
        await stack.backends.messages.create_message(
            target,
            Message(
                message_id=str(uuid.uuid4()),
                content="old",
                message_type="text",
                sender_id="alice",
                timestamp=old,
                read_by=("alice",),
                metadata=None,
            ),
        )
    async with standalone_lifecycle(stack.backends.settings) as lifecycle:
        # The photo is new: two days from now it is past its retention as well.
        report = await lifecycle.apply_retention(dt.datetime.now(dt.UTC) + dt.timedelta(days=2))
    assert report.messages_deleted == 2  # the old text and the photo; the other conversation keeps all
    kept = await stack.http.get(f"/conversations/{kept_cid}/messages", headers=auth_header("bob"))
    assert [m["content"] for m in kept.json()["items"]] == ["old"]
    listed = await stack.http.get(f"/conversations/{cid}/messages", headers=auth_header("bob"))
    assert [(m["deleted"], m["deletedBy"]) for m in listed.json()["items"]] == [(True, "retention")] * 2
    raw_key = keys.stored_key(cid, photo.object_key)
    await wait_until_gone(stack, cid, photo.message.message_id, raw_key)
    assert await remaining_objects(stack, cid, photo.message.message_id, raw_key) == []


async def test_the_command_line_erases_and_exports_a_user(
    make_lifecycle_stack: LifecycleStackFactory, stack_kind: str, tmp_path: Path
) -> None:
    if stack_kind != "embedded":
        return  # the commands share everything but their settings with the API's jobs, tested on both stacks
    stack = await make_lifecycle_stack()
    user = f"cli-{uuid.uuid4().hex[:6]}"
    cid = await stack.conversation(user, "bob")
    photo = await stack.share(user, cid)
    assert photo.message is not None
    settings = stack.backends.settings
    env = {
        **os.environ,
        "AUTH_JWT_SECRET": TEST_SECRET,
        "DATA_DIR": settings.service.data_dir,
        "PUBLIC_BASE_URL": settings.service.public_base_url,
        "LOG_LEVEL": "WARNING",
        "MEDIA_WORKERS": "1",
    }
    for name in ("OBJECT_STORE", "MESSAGE_STORE", "EVENT_BUS", "NOTIFICATION_QUEUE", "LIMIT_STORE"):
        env.pop(name, None)  # embedded adapters, as the stack
    command = [sys.executable, "-c", "from chat_management.cli import main; main()"]
    archive = tmp_path / "export.zip"
    exported = await asyncio.to_thread(
        subprocess.run,
        [*command, "export-user", user, "--output", str(archive)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout.splitlines()[-1])["images"] == 1
    assert f"images/{cid}/{photo.message.message_id}.jpg" in zipfile.ZipFile(archive).namelist()
    erased = await asyncio.to_thread(
        subprocess.run,
        [*command, "erase-user", user],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert erased.returncode == 0, erased.stderr
    assert json.loads(erased.stdout.splitlines()[-1]) == {
        "messagesDeleted": 1,
        "conversationsLeft": 1,
        "devicesDeleted": 0,
    }
    await wait_until_gone(stack, cid, photo.message.message_id, keys.stored_key(cid, photo.object_key))
    bad = await asyncio.to_thread(
        subprocess.run,
        [*command, "erase-user", "../x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2

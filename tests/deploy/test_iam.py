"""Least-privilege IAM policies: one per service, no wildcards, scoped to the bucket and the queues.

Each role's actions are also derived from the code (``test_each_role_is_granted_exactly_what_its_code_calls``
below): the S3 and SQS adapters are read for the requests each port method makes, the role's sources for
the port methods they call, so a new call without a grant (or a grant no code needs) fails here.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ROOT

IAM = ROOT / "deploy" / "iam"
BUCKET = "arn:aws:s3:::BUCKET_NAME"
# Raw uploads (docs/adr/0005-raw-upload-prefix.md) and the media processor's derivatives: no role reaches
# any other object.
OBJECTS = "arn:aws:s3:::BUCKET_NAME/uploads/*"
DERIVATIVES = "arn:aws:s3:::BUCKET_NAME/*/media/*"
# Why the media processor deleted an upload on arrival (keys.refusal_key): written by it, read by a send.
REFUSALS = "arn:aws:s3:::BUCKET_NAME/refused/*"
# The operators' job records and exports (message_service/admin.py, lifecycle.py): "_" starts no
# conversation id, so nothing else lives there.
ADMIN_OBJECTS = "arn:aws:s3:::BUCKET_NAME/_admin/*"
QUEUE = "arn:aws:sqs:AWS_REGION:AWS_ACCOUNT_ID:QUEUE_NAME"
DLQ = "arn:aws:sqs:AWS_REGION:AWS_ACCOUNT_ID:DLQ_NAME"
MEDIA_QUEUE = "arn:aws:sqs:AWS_REGION:AWS_ACCOUNT_ID:MEDIA_QUEUE_NAME"
MEDIA_DLQ = "arn:aws:sqs:AWS_REGION:AWS_ACCOUNT_ID:MEDIA_QUEUE_NAME-dlq"
SETUP_S3 = {
    "s3:CreateBucket",
    "s3:ListBucket",
    "s3:GetBucketOwnershipControls",
    "s3:PutBucketOwnershipControls",
    "s3:GetBucketPublicAccessBlock",
    "s3:PutBucketPublicAccessBlock",
    "s3:GetBucketPolicy",
    "s3:PutBucketPolicy",
    "s3:GetEncryptionConfiguration",
    "s3:PutEncryptionConfiguration",
    "s3:GetBucketCORS",
    "s3:PutBucketCORS",
    "s3:GetLifecycleConfiguration",
    "s3:PutLifecycleConfiguration",
    "s3:GetBucketNotification",
    "s3:PutBucketNotification",
}
SETUP_SQS = {"sqs:CreateQueue", "sqs:GetQueueUrl", "sqs:GetQueueAttributes", "sqs:SetQueueAttributes"}
# (action, resource) pairs each role may have, and no others.
EXPECTED = {
    "upload": {("s3:PutObject", OBJECTS), ("s3:ListBucket", BUCKET)},
    "message": {
        ("s3:GetObject", OBJECTS),
        ("s3:GetObject", REFUSALS),
        # A forward copies the source's derivatives to the new message's (CopyObject reads and writes).
        ("s3:GetObject", DERIVATIVES),
        ("s3:PutObject", DERIVATIVES),
        ("s3:ListBucket", BUCKET),
        # Unsend, retention and erasure delete every byte of an image (chat_core/erasure.py); an export
        # reads the originals it hands over and writes its zip (deleted when it expires), and the jobs keep
        # their records.
        ("s3:DeleteObject", OBJECTS),
        ("s3:DeleteObject", DERIVATIVES),
        ("s3:DeleteObject", REFUSALS),
        ("s3:GetObject", DERIVATIVES),
        ("s3:GetObject", ADMIN_OBJECTS),
        ("s3:PutObject", ADMIN_OBJECTS),
        ("s3:DeleteObject", ADMIN_OBJECTS),
        ("sqs:SendMessage", QUEUE),
        ("sqs:GetQueueUrl", QUEUE),
        ("sqs:GetQueueAttributes", QUEUE),
        ("sqs:SendMessage", MEDIA_QUEUE),
        ("sqs:GetQueueUrl", MEDIA_QUEUE),
        ("sqs:GetQueueAttributes", MEDIA_QUEUE),
    },
    # The proxy serves derivatives only: the raw upload is never served.
    "image-proxy": {("s3:GetObject", DERIVATIVES), ("s3:ListBucket", BUCKET)},
    "media-processor": {
        ("s3:GetObject", OBJECTS),
        ("s3:DeleteObject", OBJECTS),
        ("s3:PutObject", DERIVATIVES),
        ("s3:PutObject", REFUSALS),
        ("s3:ListBucket", BUCKET),
        # A job for a message deleted meanwhile erases what it (or the upload) left (chat_core/erasure.py).
        ("s3:DeleteObject", DERIVATIVES),
        ("s3:DeleteObject", REFUSALS),
        ("s3:GetObject", REFUSALS),
        ("sqs:ReceiveMessage", MEDIA_QUEUE),
        ("sqs:DeleteMessage", MEDIA_QUEUE),
        ("sqs:ChangeMessageVisibility", MEDIA_QUEUE),
        ("sqs:GetQueueAttributes", MEDIA_QUEUE),
        ("sqs:GetQueueUrl", MEDIA_QUEUE),
        ("sqs:GetQueueAttributes", MEDIA_DLQ),
        ("sqs:GetQueueUrl", MEDIA_DLQ),
    },
    "notification-consumer": {
        ("sqs:ReceiveMessage", QUEUE),
        ("sqs:DeleteMessage", QUEUE),
        ("sqs:ChangeMessageVisibility", QUEUE),
        ("sqs:GetQueueAttributes", QUEUE),
        ("sqs:GetQueueUrl", QUEUE),
        ("sqs:GetQueueAttributes", DLQ),
        ("sqs:GetQueueUrl", DLQ),
    },
    "cleanup": {("s3:ListBucket", BUCKET), ("s3:DeleteObject", OBJECTS), ("s3:DeleteObject", REFUSALS)},
    # `chat-management setup`: provisioning, run once per release by whoever owns the infrastructure.
    "setup": {(action, BUCKET) for action in SETUP_S3}
    | {(action, queue) for action in SETUP_SQS for queue in (QUEUE, DLQ, MEDIA_QUEUE, MEDIA_DLQ)},
}


def grants(policy: dict[str, Any]) -> set[tuple[str, str]]:
    pairs: set[tuple[str, str]] = set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = (
            statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        )
        pairs.update((action, resource) for action in actions for resource in resources)
    return pairs


def test_there_is_one_policy_per_service_the_cleanup_job_and_setup() -> None:
    assert {p.stem for p in IAM.glob("*.json")} == set(EXPECTED)


@pytest.mark.parametrize("role", sorted(EXPECTED))
def test_policy_grants_exactly_what_the_role_needs(role: str) -> None:
    policy = json.loads((IAM / f"{role}.json").read_text())
    assert policy["Version"] == "2012-10-17"
    assert grants(policy) == EXPECTED[role]


@pytest.mark.parametrize("role", sorted(EXPECTED))
def test_policy_has_no_wildcard_action_or_resource(role: str) -> None:
    for action, resource in grants(json.loads((IAM / f"{role}.json").read_text())):
        assert "*" not in action
        assert resource != "*"


def test_only_the_cleanup_job_the_media_processor_and_unsend_may_delete_images() -> None:
    deleters = {
        role
        for role in EXPECTED
        if any(
            action == "s3:DeleteObject"
            for action, _ in grants(json.loads((IAM / f"{role}.json").read_text()))
        )
    }
    assert deleters == {"cleanup", "media-processor", "message"}  # message: unsend, retention, erasure


# --- the policies against the code ------------------------------------------------------------------
LIB = ROOT / "libs" / "chat-core" / "src" / "chat_core"
S3_ADAPTER = LIB / "objectstore" / "s3.py"
SQS_ADAPTER = LIB / "jobqueue" / "sqs.py"
# Where each role's calls live: its service package, plus the lib modules only it runs.
ROLE_SOURCES: dict[str, list[Path]] = {
    "upload": [
        path
        for path in (ROOT / "services" / "upload" / "src").rglob("*.py")
        if path.name != "cleanup.py"  # the cleanup job runs under its own role
    ],
    "message": [ROOT / "services" / "message" / "src"],
    "image-proxy": [ROOT / "services" / "image-proxy" / "src", LIB / "objectstore" / "serving.py"],
    "notification-consumer": [
        ROOT / "services" / "notification-consumer" / "src",
        LIB / "jobqueue" / "runner.py",
    ],
    "media-processor": [ROOT / "services" / "media-processor" / "src", LIB / "jobqueue" / "runner.py"],
    "cleanup": [ROOT / "services" / "upload" / "src" / "upload_service" / "cleanup.py"],
}
SETUP = ROOT / "src" / "chat_management" / "provision.py"
CLEANUP = ROOT / "services" / "upload" / "src" / "upload_service" / "cleanup.py"
# boto3 operations the cleanup job calls (directly or through a paginator) -> the IAM action of each.
CLEANUP_BOTO3_ACTIONS = {
    "list_objects_v2": "s3:ListBucket",  # S3 authorises ListObjectsV2 with ListBucket
    "delete_objects": "s3:DeleteObject",  # and DeleteObjects with DeleteObject, per key
}
# boto3 operations `setup` calls -> the IAM action that authorises each.
BOTO3_ACTIONS = {
    "create_bucket": "s3:CreateBucket",
    "head_bucket": "s3:ListBucket",
    "get_bucket_ownership_controls": "s3:GetBucketOwnershipControls",
    "put_bucket_ownership_controls": "s3:PutBucketOwnershipControls",
    "get_public_access_block": "s3:GetBucketPublicAccessBlock",
    "put_public_access_block": "s3:PutBucketPublicAccessBlock",
    "get_bucket_policy": "s3:GetBucketPolicy",
    "put_bucket_policy": "s3:PutBucketPolicy",
    "get_bucket_encryption": "s3:GetEncryptionConfiguration",
    "put_bucket_encryption": "s3:PutEncryptionConfiguration",
    "get_bucket_cors": "s3:GetBucketCORS",
    "put_bucket_cors": "s3:PutBucketCORS",
    "delete_bucket_cors": "s3:PutBucketCORS",  # S3 authorises DeleteBucketCors with PutBucketCORS
    "get_bucket_lifecycle_configuration": "s3:GetLifecycleConfiguration",
    "put_bucket_lifecycle_configuration": "s3:PutLifecycleConfiguration",
    "get_bucket_notification_configuration": "s3:GetBucketNotification",
    "put_bucket_notification_configuration": "s3:PutBucketNotification",
    "create_queue": "sqs:CreateQueue",
    "get_queue_url": "sqs:GetQueueUrl",
    "get_queue_attributes": "sqs:GetQueueAttributes",
    "set_queue_attributes": "sqs:SetQueueAttributes",
}
# A request S3 authorises as an IAM action: (method, object or bucket) -> action.
S3_REQUESTS = {
    ("HEAD", "object"): "s3:GetObject",  # S3 has no HeadObject permission
    ("GET", "object"): "s3:GetObject",
    ("PUT", "object"): "s3:PutObject",
    ("DELETE", "object"): "s3:DeleteObject",
    ("HEAD", "bucket"): "s3:ListBucket",  # HeadBucket
    ("GET", "bucket"): "s3:ListBucket",  # ListObjectsV2
}
# SQS operations authorised by another action's name.
SQS_ACTIONS = {
    "SendMessageBatch": "sqs:SendMessage",
    "DeleteMessageBatch": "sqs:DeleteMessage",
    "ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
}


def _methods(path: Path, class_name: str) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    tree = ast.parse(path.read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name]
    return {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def _self_references(node: ast.AST) -> set[str]:
    return {
        n.attr
        for n in ast.walk(node)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self"
    }


def _closure(
    methods: dict[str, ast.FunctionDef | ast.AsyncFunctionDef], direct: dict[str, set[str]]
) -> dict[str, set[str]]:
    """Per public method, what it and every method it reaches (through ``self.x``) request."""
    # An attribute set in __init__ from a method (``self._acks = Coalescer(self._delete_batch)``)
    # reaches that method.
    reaches: dict[str, set[str]] = {name: _self_references(node) for name, node in methods.items()}
    for statement in ast.walk(methods["__init__"]):
        if isinstance(statement, ast.Assign | ast.AnnAssign):
            targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
            for target in targets:
                if isinstance(target, ast.Attribute) and statement.value is not None:
                    reaches[target.attr] = _self_references(statement.value)
    result: dict[str, set[str]] = {}
    for name in methods:
        seen, todo, found = {name}, [name], set()
        while todo:
            current = todo.pop()
            found |= direct.get(current, set())
            for nxt in reaches.get(current, set()) - seen:
                seen.add(nxt)
                todo.append(nxt)
        result[name] = found
    return result


def s3_actions_by_method() -> dict[str, set[str]]:
    methods = _methods(S3_ADAPTER, "S3ObjectStore")
    direct: dict[str, set[str]] = {}
    for name, node in methods.items():
        for call in ast.walk(node):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)):
                continue
            if call.func.attr not in ("send", "presign") or len(call.args) < 2:
                continue
            verb = call.args[0]
            assert isinstance(verb, ast.Constant), ast.unparse(call)
            target = "object" if "_object_path" in ast.unparse(call.args[1]) else "bucket"
            method = str(verb.value)
            action = S3_REQUESTS.get((method, target))
            assert action, f"S3ObjectStore.{name}: {method} on the {target}: which IAM action?"
            direct.setdefault(name, set()).add(action)
            if "x-amz-copy-source" in ast.unparse(call):
                direct[name].add("s3:GetObject")  # CopyObject also reads its source
    return _closure(methods, direct)


def sqs_actions_by_method() -> dict[str, set[tuple[str, str]]]:
    """Per method, (action, QUEUE or DLQ) pairs; every queue call also looks the queue's URL up once."""
    methods = _methods(SQS_ADAPTER, "SqsJobQueue")
    direct: dict[str, set[str]] = {}
    for name, node in methods.items():
        if name in ("_call", "_resolve", "_url"):
            continue  # _call is the transport; _on_queue's lookups are counted at each call below
        for call in ast.walk(node):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)):
                continue
            if call.func.attr not in ("_call", "_on_queue") or not call.args:
                continue
            operation = call.args[0]
            if not isinstance(operation, ast.Constant):
                continue  # _on_queue passing its own argument through
            queue = "QUEUE"
            for keyword in call.keywords:
                if keyword.arg == "dlq" and isinstance(keyword.value, ast.Constant) and keyword.value.value:
                    queue = "DLQ"
            op = str(operation.value)
            action = SQS_ACTIONS.get(op, f"sqs:{op}")
            direct.setdefault(name, set()).update({f"{action}@{queue}", f"sqs:GetQueueUrl@{queue}"})
    return {
        name: {tuple(pair.split("@")) for pair in pairs}  # type: ignore[misc]
        for name, pairs in _closure(methods, direct).items()
    }


def _python_files(paths: Iterable[Path]) -> list[Path]:
    return [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*.py")))]


# Which objects a role's object-store calls name, by action (default: raw uploads). The proxy only ever
# builds derivative keys (keys.derivative_key); the media processor writes nothing else.
DERIVATIVE_ACTIONS = {"image-proxy": {"s3:GetObject"}, "media-processor": {"s3:PutObject"}}
# Port methods whose keys are derivatives whatever the action (a forward copies derivatives to derivatives).
DERIVATIVE_METHODS = {"message": {"copy"}}
# Roles whose code names refusal notes (keys.refusal_key, parse_refusal_key) reach them with these
# actions, besides the objects above.
REFUSAL_ACTIONS = {
    "message": {"s3:GetObject"},
    "media-processor": {"s3:PutObject"},
    "cleanup": {"s3:DeleteObject"},
}


def names_refusal_notes(role: str) -> bool:
    return any(
        isinstance(node, ast.Attribute | ast.Name)
        and (node.attr if isinstance(node, ast.Attribute) else node.id)
        in ("refusal_key", "parse_refusal_key")
        for path in _python_files(ROLE_SOURCES[role])
        for node in ast.walk(ast.parse(path.read_text()))
    )


# The queues a role's queue calls reach: (receiver pattern, port attribute, main queue, dead-letter queue).
NOTIFICATION_QUEUES = (r"(?<!media)_queue$", "notification_queue", QUEUE, DLQ)
MEDIA_QUEUES = (r"_media_queue$", "media_queue", MEDIA_QUEUE, MEDIA_DLQ)
QUEUES_OF = {"media-processor": [(r"_queue$", "media_queue", MEDIA_QUEUE, MEDIA_DLQ)]}


# The message lifecycle's object-store calls, read per module (their keys are not the upload layout the
# scan assumes): a role gets a module's pairs when its code uses the module's class.
ERASURE = LIB / "erasure.py"
OPERATOR_MODULES = {"admin.py", "lifecycle.py"}  # message_service: every object call is below
LIFECYCLE_PAIRS = {
    # ImageEraser.erase: head + delete of the raw upload and its refusal note, list + delete of the
    # message's media prefix.
    "ImageEraser": {
        ("s3:GetObject", OBJECTS),
        ("s3:DeleteObject", OBJECTS),
        ("s3:GetObject", REFUSALS),
        ("s3:DeleteObject", REFUSALS),
        ("s3:ListBucket", BUCKET),
        ("s3:DeleteObject", DERIVATIVES),
    },
    # AdminJobs and Lifecycle: job records and exports under _admin/ (expired exports deleted), the
    # originals an export reads.
    "AdminJobs": {
        ("s3:PutObject", ADMIN_OBJECTS),
        ("s3:GetObject", ADMIN_OBJECTS),
        ("s3:DeleteObject", ADMIN_OBJECTS),
        ("s3:GetObject", DERIVATIVES),
        ("s3:ListBucket", BUCKET),
    },
}


def lifecycle_pairs_of_code() -> dict[str, set[str]]:
    """Which object-store methods each lifecycle class's module calls (so the table above stays true)."""
    found: dict[str, set[str]] = {}
    sources = {
        "ImageEraser": [ERASURE],
        "AdminJobs": [
            ROOT / "services" / "message" / "src" / "message_service" / name
            for name in sorted(OPERATOR_MODULES)
        ],
    }
    for name, paths in sources.items():
        for path in paths:
            for node in ast.walk(ast.parse(path.read_text())):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and re.search(r"_objects$", ast.unparse(node.func.value))
                ):
                    found.setdefault(name, set()).add(node.func.attr)
    return found


def uses(role: str, name: str) -> bool:
    return any(
        isinstance(node, ast.Name) and node.id == name
        for path in _python_files(ROLE_SOURCES[role])
        for node in ast.walk(ast.parse(path.read_text()))
    )


def test_the_lifecycle_tables_name_every_object_call_of_its_modules() -> None:
    s3 = s3_actions_by_method()
    for name, methods in lifecycle_pairs_of_code().items():
        actions = {action for method in methods for action in s3[method]}
        assert actions == {action for action, _ in LIFECYCLE_PAIRS[name]}, name


def port_calls(role: str, methods: Iterable[str], receiver: str, port: str = "object_store") -> set[str]:
    """Which of ``methods`` the role's code calls on a receiver whose name matches ``receiver``."""
    wanted, pattern = set(methods), re.compile(receiver)
    called: set[str] = set()
    for path in _python_files(ROLE_SOURCES[role]):
        if role == "message" and path.name in OPERATOR_MODULES:
            continue  # LIFECYCLE_PAIRS["AdminJobs"]
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in wanted
                and pattern.search(ast.unparse(node.func.value))
            ):
                called.add(node.func.attr)
            # Holding the port means /readyz pings it (and the composition root starts it).
            if isinstance(node, ast.Attribute) and node.attr == port:
                called |= {"ping", "start"} & wanted
    return called


def setup_actions_from_code() -> set[tuple[str, str]]:
    """What ``setup`` calls: boto3 on the bucket, and on both queues and their dead-letter queues."""
    needed: set[tuple[str, str]] = set()
    for node in ast.walk(ast.parse(SETUP.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            client = node.func.value
            if isinstance(client, ast.Name) and client.id in ("s3", "sqs"):
                action = BOTO3_ACTIONS.get(node.func.attr)
                assert action, f"setup calls {client.id}.{node.func.attr}: which IAM action?"
                if client.id == "s3":
                    needed.add((action, BUCKET))
                else:
                    needed |= {(action, queue) for queue in (QUEUE, DLQ, MEDIA_QUEUE, MEDIA_DLQ)}
    return needed


def cleanup_boto3_actions_from_code() -> set[tuple[str, str]]:
    """What the cleanup job asks boto3 for: calls on its client, and the paginators it takes from it."""
    needed: set[tuple[str, str]] = set()
    for node in ast.walk(ast.parse(CLEANUP.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if not re.search(r"(^|\.)client$", ast.unparse(node.func.value)):
            continue
        operation = node.func.attr
        if operation == "get_paginator":
            (argument,) = node.args
            assert isinstance(argument, ast.Constant), ast.unparse(node)
            operation = str(argument.value)
        action = CLEANUP_BOTO3_ACTIONS.get(operation)
        assert action, f"cleanup calls boto3 {operation}: which IAM action?"
        needed.add((action, BUCKET if action == "s3:ListBucket" else OBJECTS))
    return needed


def test_the_cleanup_jobs_boto3_calls_are_read_from_its_code() -> None:
    assert cleanup_boto3_actions_from_code() == {("s3:ListBucket", BUCKET), ("s3:DeleteObject", OBJECTS)}


def actions_from_code(role: str) -> set[tuple[str, str]]:
    """(action, resource) pairs the role's code needs, resources as in EXPECTED."""
    if role == "setup":
        return setup_actions_from_code()
    s3 = s3_actions_by_method()
    sqs = sqs_actions_by_method()
    needed: set[tuple[str, str]] = set()
    for method in port_calls(role, s3, r"(_store|_objects|^store|^object_store)$"):
        for action in s3[method]:
            derived = action in DERIVATIVE_ACTIONS.get(role, ()) or method in DERIVATIVE_METHODS.get(role, ())
            objects = DERIVATIVES if derived else OBJECTS
            needed.add((action, BUCKET if action == "s3:ListBucket" else objects))
            if action == "s3:GetObject":
                # Without ListBucket S3 answers a missing object with 403, not 404 (deploy/iam/README.md).
                needed.add(("s3:ListBucket", BUCKET))
    for receiver, port, main, dead in QUEUES_OF.get(role, [NOTIFICATION_QUEUES, MEDIA_QUEUES]):
        for method in port_calls(role, sqs, receiver, port):
            needed |= {(action, main if queue == "QUEUE" else dead) for action, queue in sqs[method]}
    if role == "cleanup":  # with OBJECT_STORE=s3 the job goes through boto3, not the port
        needed |= cleanup_boto3_actions_from_code()
    if names_refusal_notes(role):
        granted = {action for action, _ in needed}
        needed |= {(action, REFUSALS) for action in REFUSAL_ACTIONS.get(role, ()) if action in granted}
    for name, pairs in LIFECYCLE_PAIRS.items():
        if uses(role, name):
            needed |= pairs
    return needed


def test_the_adapters_requests_are_read_from_their_code() -> None:
    s3, sqs = s3_actions_by_method(), sqs_actions_by_method()
    assert s3["presign_put"] == {"s3:PutObject"}
    assert s3["read_prefix"] == {"s3:GetObject"}
    assert s3["list"] == {"s3:ListBucket"}
    assert s3["copy"] == {"s3:GetObject", "s3:PutObject"}
    assert ("sqs:SendMessage", "QUEUE") in sqs["send"]
    assert ("sqs:DeleteMessage", "QUEUE") in sqs["ack"]  # via the batching of acknowledgements
    assert ("sqs:GetQueueAttributes", "DLQ") in sqs["depth"]


@pytest.mark.parametrize("role", sorted(EXPECTED))
def test_each_role_is_granted_exactly_what_its_code_calls(role: str) -> None:
    granted = grants(json.loads((IAM / f"{role}.json").read_text()))
    assert granted == actions_from_code(role)

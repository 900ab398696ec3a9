"""Typed settings, read once from the environment and validated at start-up.

Every field names the environment variable it comes from (``env("NAME", "what it means")``), so the
loader, the error messages and the configuration table (docs/operations/configuration.md) all come from
one declaration.
A bad or missing value raises ``SettingsError`` with one line that names the variable.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin, get_type_hints
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import msgspec

import limits
from chat_core.keys import EXTENSIONS

__all__ = [
    "AuthSettings",
    "AwsSettings",
    "BackendSettings",
    "FirestoreSettings",
    "ImageSettings",
    "LifecycleSettings",
    "LimitSettings",
    "MediaSettings",
    "NotificationSettings",
    "PresenceSettings",
    "PushSettings",
    "RedisSettings",
    "S3Settings",
    "ServiceSettings",
    "Settings",
    "SettingsError",
    "SqsSettings",
    "TelemetrySettings",
    "env",
    "iter_env_vars",
    "load_settings",
    "markdown_table",
]

T = TypeVar("T", bound=msgspec.Struct)


class SettingsError(ValueError):
    """A configuration problem; ``str()`` is one line naming the variable."""


def env(name: str, help: str) -> msgspec.Meta:
    return msgspec.Meta(description=help, extra={"env": name})


class _Frozen(msgspec.Struct, frozen=True, kw_only=True):
    pass


class ServiceSettings(_Frozen, frozen=True, kw_only=True):
    host: Annotated[str, env("HOST", "Interface the HTTP server listens on.")] = "0.0.0.0"
    port: Annotated[int, env("PORT", "Port the HTTP server listens on."), msgspec.Meta(ge=0, le=65535)] = 8000
    public_base_url: Annotated[
        str,
        env(
            "PUBLIC_BASE_URL",
            "Base URL clients reach the API on; `file_url` and image `url` are built from it. "
            "Default: `http://127.0.0.1:{PORT}`.",
        ),
    ] = ""
    cors_allow_origins: Annotated[
        tuple[str, ...],
        env(
            "CORS_ALLOW_ORIGINS",
            "Comma-separated origins allowed by CORS (`*` for any); empty turns CORS off.",
        ),
    ] = ("*",)
    log_level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR"], env("LOG_LEVEL", "Minimum log level.")
    ] = "INFO"
    access_log: Annotated[bool, env("ACCESS_LOG", "Write one structured log line per request.")] = True
    data_dir: Annotated[
        str, env("DATA_DIR", "Where the embedded adapters keep their files (objects, SQLite databases).")
    ] = ".data"
    request_timeout_seconds: Annotated[
        float,
        env(
            "REQUEST_TIMEOUT_SECONDS",
            "Deadline of a request until its answer starts (then 503 `backend_timeout`); 0: none.",
        ),
        msgspec.Meta(ge=0),
    ] = 15.0
    drain_seconds: Annotated[
        float,
        env("SHUTDOWN_DRAIN_SECONDS", "Grace given to in-flight requests and jobs on SIGTERM."),
        msgspec.Meta(ge=0),
    ] = 10.0

    def base_url(self) -> str:
        return (self.public_base_url or f"http://127.0.0.1:{self.port}").rstrip("/")


class AuthSettings(_Frozen, frozen=True, kw_only=True):
    jwt_secret: Annotated[
        str,
        env("AUTH_JWT_SECRET", "Dev/test: HS256 secret (at least 32 characters). Set this or AUTH_JWKS_URL."),
    ] = ""
    jwks_url: Annotated[
        str, env("AUTH_JWKS_URL", "Production: JWKS URL of the identity provider (RS256/ES256 tokens).")
    ] = ""
    issuer: Annotated[str, env("AUTH_ISSUER", "Required `iss` claim (required with AUTH_JWKS_URL).")] = ""
    audience: Annotated[str, env("AUTH_AUDIENCE", "Required `aud` claim (required with AUTH_JWKS_URL).")] = ""
    leeway_seconds: Annotated[
        int,
        env("AUTH_LEEWAY_SECONDS", "Clock skew tolerated on `exp`/`nbf`/`iat`."),
        msgspec.Meta(ge=0, le=300),
    ] = 30
    cookie_name: Annotated[
        str, env("AUTH_COOKIE_NAME", "Cookie the image proxy also reads the token from (for `<img>` tags).")
    ] = "access_token"
    jwks_cache_seconds: Annotated[
        int, env("AUTH_JWKS_CACHE_SECONDS", "How long fetched signing keys are trusted before a refresh.")
    ] = 3600
    roles_claim: Annotated[
        str,
        env(
            "AUTH_ROLES_CLAIM",
            "Token claim holding the caller's roles: a list or a space-separated string; a dotted path "
            "reaches into objects (Keycloak: `realm_access.roles`).",
        ),
    ] = "roles"
    admin_role: Annotated[
        str,
        env(
            "AUTH_ADMIN_ROLE",
            "The role (in AUTH_ROLES_CLAIM) of operators: the `/admin` API (user erasure and export).",
        ),
        msgspec.Meta(min_length=1),
    ] = "chat-admin"
    dev_login: Annotated[
        bool,
        env(
            "DEV_LOGIN",
            "Dev only: the web client's `POST /dev/token` mints a token for any user id (needs "
            "AUTH_JWT_SECRET). `make run`/`make dev` turn it on; never enable it where real users are.",
        ),
    ] = False


ObjectStoreKind = Literal["local", "s3"]
MessageStoreKind = Literal["sqlite", "firestore"]
EventBusKind = Literal["memory", "redis"]
QueueKind = Literal["sqlite", "sqs"]
PushKind = Literal["log", "webhook", "fcm", "apns"]
LimitStoreKind = Literal["memory", "redis"]


class BackendSettings(_Frozen, frozen=True, kw_only=True):
    object_store: Annotated[
        ObjectStoreKind, env("OBJECT_STORE", "`local` (disk under DATA_DIR) or `s3`.")
    ] = "local"
    message_store: Annotated[
        MessageStoreKind, env("MESSAGE_STORE", "`sqlite` (under DATA_DIR) or `firestore`.")
    ] = "sqlite"
    event_bus: Annotated[
        EventBusKind, env("EVENT_BUS", "Real-time bus and presence: `memory` (one process) or `redis`.")
    ] = "memory"
    notification_queue: Annotated[
        QueueKind, env("NOTIFICATION_QUEUE", "`sqlite` (under DATA_DIR) or `sqs`.")
    ] = "sqlite"
    push_provider: Annotated[
        tuple[PushKind, ...],
        env(
            "PUSH_PROVIDER",
            "`log`, `webhook`, `fcm` or `apns` (APNs directly over HTTP/2), or several, comma-separated "
            "(`fcm,apns`): each device's push goes to the provider its token is for (`provider` at "
            "registration); `log` or `webhook` in the list take the devices no other provider listed is for.",
        ),
    ] = ("log",)
    limit_store: Annotated[
        LimitStoreKind,
        env(
            "LIMIT_STORE",
            "Rate limits, quotas and the storage ledger: `memory` (one process) or `redis` (shared by "
            "replicas, REDIS_URL).",
        ),
    ] = "memory"


class AwsSettings(_Frozen, frozen=True, kw_only=True):
    region: Annotated[
        str, env("AWS_REGION", "AWS region of the bucket and queues (else `AWS_DEFAULT_REGION`).")
    ] = "us-east-1"
    access_key_id: Annotated[
        str,
        env("AWS_ACCESS_KEY_ID", "Static credentials; empty uses the default chain (IRSA, profile, IMDS)."),
    ] = ""
    secret_access_key: Annotated[str, env("AWS_SECRET_ACCESS_KEY", "Secret for AWS_ACCESS_KEY_ID.")] = ""
    session_token: Annotated[str, env("AWS_SESSION_TOKEN", "Session token for temporary credentials.")] = ""
    endpoint_url: Annotated[
        str, env("AWS_ENDPOINT_URL", "Override the AWS endpoint (LocalStack); empty means real AWS.")
    ] = ""
    s3_endpoint_url: Annotated[
        str, env("AWS_ENDPOINT_URL_S3", "Override the S3 endpoint alone (wins over AWS_ENDPOINT_URL).")
    ] = ""
    sqs_endpoint_url: Annotated[
        str, env("AWS_ENDPOINT_URL_SQS", "Override the SQS endpoint alone (wins over AWS_ENDPOINT_URL).")
    ] = ""


class S3Settings(_Frozen, frozen=True, kw_only=True):
    bucket: Annotated[
        str, env("S3_BUCKET_NAME", "Bucket holding the images (required with OBJECT_STORE=s3).")
    ] = ""
    public_endpoint_url: Annotated[
        str,
        env(
            "S3_PUBLIC_ENDPOINT_URL",
            "Endpoint presigned URLs point at (what clients reach). Default: AWS_ENDPOINT_URL.",
        ),
    ] = ""
    kms_key_id: Annotated[
        str,
        env(
            "S3_KMS_KEY_ID",
            "`setup`: default encryption is SSE-KMS with this key (id, ARN or alias); empty: SSE-S3.",
        ),
    ] = ""
    raw_upload_expiry_days: Annotated[
        int,
        env(
            "RAW_UPLOAD_EXPIRY_DAYS",
            "`setup`: lifecycle backstop deleting raw uploads (`uploads/`) this old; 0: no such rule.",
        ),
        msgspec.Meta(ge=0),
    ] = 7


class SqsSettings(_Frozen, frozen=True, kw_only=True):
    wait_seconds: Annotated[
        int, env("SQS_WAIT_SECONDS", "Long-poll wait of one receive."), msgspec.Meta(ge=0, le=20)
    ] = 10


# Jobs the media processor works on per image worker process: while one decodes, the next is fetched.
MEDIA_JOBS_PER_IMAGE_WORKER = 2
# What a media job spends besides decoding: fetching the raw upload, writing three variants, finishing
# the message and publishing it (each a bounded request, with its retries).
MEDIA_TRANSFER_ALLOWANCE_SECONDS = 60.0


class MediaSettings(_Frozen, frozen=True, kw_only=True):
    """The media pipeline: its job queue and the processor's limits.

    The one declaration of every image limit: the send's header check, the check of uploads as they land
    and the processor's ``media_processor.imaging.ImageLimits`` (its defaults included) all read these.
    """

    queue_name: Annotated[
        str,
        env(
            "MEDIA_QUEUE_NAME", "Media job queue (also hears the bucket's `uploads/` object-created events)."
        ),
    ] = "chat-management-media"
    max_image_pixels: Annotated[
        int,
        env(
            "MAX_IMAGE_PIXELS",
            "Most pixels of one frame (width x height), checked from the header at send and before decoding.",
        ),
        msgspec.Meta(ge=1),
    ] = 50_000_000
    max_image_frames: Annotated[
        int, env("MAX_IMAGE_FRAMES", "Most frames of an animated GIF/WebP."), msgspec.Meta(ge=1, le=10_000)
    ] = 200
    max_animation_pixels: Annotated[
        int,
        env(
            "MAX_ANIMATION_PIXELS",
            "Most pixels of all frames of an animation together (it is decoded as one tall strip).",
        ),
        msgspec.Meta(ge=1),
    ] = 100_000_000
    preview_edge: Annotated[
        int, env("MEDIA_PREVIEW_EDGE", "Long edge of the `preview` variant, in pixels."), msgspec.Meta(ge=16)
    ] = 1280
    thumbnail_edge: Annotated[
        int,
        env("MEDIA_THUMBNAIL_EDGE", "Long edge of the `thumbnail`, in pixels."),
        msgspec.Meta(ge=16),
    ] = 320
    wait_seconds: Annotated[
        float,
        env(
            "MEDIA_WAIT_SECONDS",
            "How long the image proxy waits for an image still processing before it answers 503.",
        ),
        msgspec.Meta(ge=0, le=60),
    ] = 10.0
    max_waiters: Annotated[
        int,
        env(
            "MEDIA_MAX_WAITERS",
            "Requests one image proxy process lets wait for images still processing; past it, 503 at once.",
        ),
        msgspec.Meta(ge=0),
    ] = 1000
    workers: Annotated[
        int,
        env(
            "MEDIA_WORKERS",
            "Image worker processes of the media processor; 0: one per CPU it may use (affinity, cgroup).",
        ),
        msgspec.Meta(ge=0, le=256),
    ] = 0
    job_timeout_seconds: Annotated[
        float,
        env("MEDIA_JOB_TIMEOUT_SECONDS", "Time one image may take to decode and encode before it fails."),
        msgspec.Meta(gt=0, le=600),
    ] = 30.0
    job_memory_mb: Annotated[
        int,
        env("MEDIA_JOB_MEMORY_MB", "Address space of one image worker, in MiB (0: unbounded)."),
        msgspec.Meta(ge=0),
    ] = 1024
    max_receives: Annotated[
        int,
        env("MEDIA_MAX_RECEIVES", "Deliveries of a media job before it moves to the dead-letter queue."),
        msgspec.Meta(ge=1, le=1000),
    ] = 5
    visibility_timeout_seconds: Annotated[
        int,
        env(
            "MEDIA_VISIBILITY_TIMEOUT_SECONDS",
            "How long a received media job stays hidden; 0: derived from MEDIA_JOB_TIMEOUT_SECONDS (twice it"
            " plus 60 s of transfers: 120 s by default). Set, it must exceed that.",
        ),
        msgspec.Meta(ge=0, le=43200),
    ] = 0

    @property
    def dlq_name(self) -> str:
        return self.queue_name + "-dlq"  # what `chat-management setup` creates

    @property
    def longest_job_seconds(self) -> float:
        """The longest a media job can hold its queue message before it is settled.

        The processor takes ``MEDIA_JOBS_PER_IMAGE_WORKER`` jobs per image worker, so a job may wait for
        one job ahead of it (at most ``MEDIA_JOB_TIMEOUT_SECONDS``, then that job is killed) before its own
        decode (the same bound); around them the raw upload is fetched, the variants written and the
        message finished (``MEDIA_TRANSFER_ALLOWANCE_SECONDS``).
        """
        waits = MEDIA_JOBS_PER_IMAGE_WORKER - 1
        return (1 + waits) * self.job_timeout_seconds + MEDIA_TRANSFER_ALLOWANCE_SECONDS

    @property
    def queue_visibility_timeout_seconds(self) -> int:
        """The media queue's visibility timeout: a job still running never reappears to a second worker."""
        return self.visibility_timeout_seconds or math.ceil(self.longest_job_seconds)


class NotificationSettings(_Frozen, frozen=True, kw_only=True):
    """The notification queue and its consumer (whatever the queue's backend)."""

    queue_name: Annotated[str, env("SQS_QUEUE_NAME", "Notification queue name.")] = "chat-notifications"
    dlq_name: Annotated[str, env("SQS_DLQ_NAME", "Dead-letter queue name.")] = "chat-notifications-dlq"
    max_receives: Annotated[
        int,
        env("NOTIFICATION_MAX_RECEIVES", "Deliveries before a notification moves to the dead-letter queue."),
        msgspec.Meta(ge=1, le=1000),
    ] = 5
    visibility_timeout_seconds: Annotated[
        int,
        env("NOTIFICATION_VISIBILITY_TIMEOUT_SECONDS", "How long a received notification stays hidden."),
        msgspec.Meta(ge=1, le=43200),
    ] = 30
    concurrency: Annotated[
        int,
        env("NOTIFICATION_CONCURRENCY", "Queue messages the consumer works on at once."),
        msgspec.Meta(ge=1, le=1000),
    ] = 32
    retry_base_seconds: Annotated[
        float,
        env(
            "NOTIFICATION_RETRY_BASE_SECONDS",
            "Delay before a failed push is retried; doubles with each attempt, at most 15 minutes.",
        ),
        msgspec.Meta(ge=0, le=900),
    ] = 5.0
    push_claim_lease_seconds: Annotated[
        float,
        env(
            "PUSH_CLAIM_LEASE_SECONDS",
            "How long a claim on one device's push holds before a redelivery may push it (a claimer that"
            " crashed before pushing loses nothing); a push gets at most half of it.",
        ),
        msgspec.Meta(gt=0, le=3600),
    ] = 60.0


class FirestoreSettings(_Frozen, frozen=True, kw_only=True):
    project_id: Annotated[
        str, env("FIRESTORE_PROJECT_ID", "Google Cloud project of the Firestore database.")
    ] = "chat-management-dev"
    database: Annotated[str, env("FIRESTORE_DATABASE", "Firestore database id.")] = "(default)"
    emulator_host: Annotated[
        str, env("FIRESTORE_EMULATOR_HOST", "host:port of the Firestore emulator (dev/test).")
    ] = ""


class RedisSettings(_Frozen, frozen=True, kw_only=True):
    url: Annotated[str, env("REDIS_URL", "Redis for pub/sub and presence (EVENT_BUS=redis).")] = (
        "redis://127.0.0.1:6379/0"
    )
    mode: Annotated[
        Literal["standalone", "cluster"],
        env(
            "REDIS_MODE",
            "`standalone` (one node: PUBLISH/SUBSCRIBE) or `cluster` (Redis Cluster, e.g. ElastiCache or "
            "Memorystore cluster mode: sharded pub/sub, REDIS_URL is any node). `rediss://` turns TLS on; "
            "credentials in the URL or in REDIS_USERNAME / REDIS_PASSWORD.",
        ),
    ] = "standalone"
    username: Annotated[
        str, env("REDIS_USERNAME", "Redis ACL user (ElastiCache RBAC); overrides the URL's. From a Secret.")
    ] = ""
    password: Annotated[
        str,
        env(
            "REDIS_PASSWORD",
            "Redis password / AUTH token (any characters); overrides the URL's. From a Secret.",
        ),
    ] = ""

    tls_ca_cert: Annotated[
        str,
        env(
            "REDIS_TLS_CA_CERT",
            "PEM of the CA that signed Redis's TLS certificate (`rediss://`), when the system's trust store "
            "does not hold it (Memorystore's per-instance CA). Empty: the system's trust store.",
        ),
    ] = ""

    def address(self) -> str:
        """``url`` with ``username``/``password`` (percent-encoded) in it, when they are set."""
        if not (self.username or self.password):
            return self.url
        split = urlsplit(self.url)
        host = split.netloc.rpartition("@")[2]
        user = quote(self.username or unquote(split.username or ""), safe="")
        secret = quote(self.password or unquote(split.password or ""), safe="")
        return urlunsplit(split._replace(netloc=f"{user}:{secret}@{host}"))


class PresenceSettings(_Frozen, frozen=True, kw_only=True):
    ttl_seconds: Annotated[
        int,
        env("PRESENCE_TTL_SECONDS", "A socket counts as online this long after its last heartbeat."),
        msgspec.Meta(ge=2, le=3600),
    ] = 60


class LifecycleSettings(_Frozen, frozen=True, kw_only=True):
    """Edits, unsend, retention and the operators' erasure and export."""

    edit_window_seconds: Annotated[
        int,
        env(
            "MESSAGE_EDIT_WINDOW_SECONDS",
            "How long after sending the sender may edit a message's content or alt text (0: never).",
        ),
        msgspec.Meta(ge=0),
    ] = 48 * 3600
    retention_days: Annotated[
        int,
        env(
            "MESSAGE_RETENTION_DAYS",
            "Messages older than this are deleted with their images by the retention job (0: kept forever); "
            "a conversation's admin may set its own `retentionDays`.",
        ),
        msgspec.Meta(ge=0, le=36500),
    ] = 0
    retention_interval_seconds: Annotated[
        int,
        env(
            "RETENTION_INTERVAL_SECONDS",
            "How often the message service runs the retention job itself (0: only `chat-management "
            "apply-retention`, e.g. from the chart's CronJob).",
        ),
        msgspec.Meta(ge=0),
    ] = 3600
    export_url_ttl_seconds: Annotated[
        int,
        env("EXPORT_URL_TTL_SECONDS", "Lifetime of the signed download URL of a user's export."),
        msgspec.Meta(ge=60, le=7 * 24 * 3600),
    ] = 900


class ImageSettings(_Frozen, frozen=True, kw_only=True):
    max_bytes: Annotated[int, env("MAX_IMAGE_BYTES", "Largest accepted image."), msgspec.Meta(ge=1)] = (
        20 * 1024 * 1024
    )
    allowed_types: Annotated[
        tuple[str, ...],
        env("ALLOWED_IMAGE_TYPES", "Comma-separated image content types accepted (SVG and HTML never)."),
    ] = ("image/jpeg", "image/png", "image/gif", "image/webp", "image/heic", "image/heif")
    upload_url_ttl_seconds: Annotated[
        int,
        env("UPLOAD_URL_TTL_SECONDS", "Lifetime of a presigned upload URL."),
        msgspec.Meta(ge=60, le=7 * 24 * 3600),
    ] = 3600
    proxy_mode: Annotated[
        Literal["redirect", "stream"],
        env(
            "IMAGE_PROXY_MODE",
            "`redirect` (302 to a short-lived signed GET) or `stream` (bytes via the proxy).",
        ),
    ] = "redirect"
    proxy_url_window_seconds: Annotated[
        int,
        env(
            "IMAGE_URL_WINDOW_SECONDS",
            "Signed GET URLs are signed on windows this long, so a viewer gets the same URL within one.",
        ),
        msgspec.Meta(ge=10, le=86400),
    ] = 300
    membership_cache_seconds: Annotated[
        float,
        env(
            "MEMBERSHIP_CACHE_SECONDS", "How stale a cached membership answer may be (0 turns the cache off)."
        ),
        msgspec.Meta(ge=0, le=300),
    ] = 5.0
    orphan_grace_seconds: Annotated[
        int,
        env("ORPHAN_GRACE_SECONDS", "Uploaded objects no message references are deleted after this long."),
        msgspec.Meta(ge=0),
    ] = 24 * 3600
    max_images_per_message: Annotated[
        int,
        env(
            "MAX_IMAGES_PER_MESSAGE",
            "Most images one image message (an album) carries; more is 400 `too_many_images` (1: no albums).",
        ),
        msgspec.Meta(ge=1, le=20),
    ] = 10


def _rate(name: str, default_meaning: str) -> msgspec.Meta:
    return env(name, f"{default_meaning} (`N/second|minute|hour|day`, moving window: bursts up to N).")


class LimitSettings(_Frozen, frozen=True, kw_only=True):
    """Abuse limits: rate limits per user (per client IP before there is one), quotas and sizes."""

    upload_urls: Annotated[str, _rate("RATE_LIMIT_UPLOAD_URLS", "Upload URLs per user")] = "60/minute"
    sends: Annotated[str, _rate("RATE_LIMIT_SENDS", "Messages sent per user")] = "120/minute"
    conversations: Annotated[str, _rate("RATE_LIMIT_CONVERSATIONS", "Conversations created per user")] = (
        "30/minute"
    )
    participant_changes: Annotated[
        str, _rate("RATE_LIMIT_PARTICIPANT_CHANGES", "Participant adds/removes per user")
    ] = "60/minute"
    read_receipts: Annotated[str, _rate("RATE_LIMIT_READ_RECEIPTS", "Read receipts per user")] = "600/minute"
    socket_connects: Annotated[
        str, _rate("RATE_LIMIT_SOCKET_CONNECTS", "Socket connects per user (per client IP without a token)")
    ] = "30/minute"
    socket_messages: Annotated[
        str, _rate("RATE_LIMIT_SOCKET_MESSAGES", "Frames one socket may send (over: close 1008)")
    ] = "120/minute"
    sockets_per_user: Annotated[
        int,
        env("MAX_SOCKETS_PER_USER", "Open sockets per user on one replica (over: close 4429)."),
        msgspec.Meta(ge=1),
    ] = 10
    socket_max_frame_bytes: Annotated[
        int,
        env("SOCKET_MAX_FRAME_BYTES", "Largest frame a client may send on the socket (over: close 1009)."),
        msgspec.Meta(ge=64),
    ] = 4096
    max_request_body_bytes: Annotated[
        int,
        env(
            "MAX_REQUEST_BODY_BYTES",
            "Largest API request body (413 before parsing); the local store's image PUT has its own limit.",
        ),
        msgspec.Meta(ge=1024),
    ] = 64 * 1024
    max_devices_per_user: Annotated[
        int,
        env(
            "MAX_DEVICES_PER_USER",
            "Push tokens a user may have; registering one more evicts the least recently registered.",
        ),
        msgspec.Meta(ge=1),
    ] = 10
    max_pending_uploads: Annotated[
        int,
        env("MAX_PENDING_UPLOADS", "Upload URLs per user whose object is neither sent nor expired."),
        msgspec.Meta(ge=1),
    ] = 20
    upload_bytes_per_day: Annotated[
        int,
        env("UPLOAD_BYTES_PER_DAY", "Image bytes a user may send per UTC day (declared and verified sizes)."),
        msgspec.Meta(ge=1),
    ] = 2 * 1024**3
    key_prefix: Annotated[
        str,
        env("LIMIT_KEY_PREFIX", "Prefix of the limit store's Redis keys (deployments sharing one Redis)."),
        msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]+$"),
    ] = "chat"
    trusted_proxies: Annotated[
        tuple[str, ...],
        env(
            "TRUSTED_PROXIES",
            "Comma-separated proxy addresses/CIDRs whose X-Forwarded-For names the client (per-IP limits).",
        ),
    ] = ("127.0.0.1",)

    def rate_limits(self) -> dict[str, str]:
        """Each rate limit by its name in metrics and headers, with its env variable's value."""
        return {
            "upload_urls": self.upload_urls,
            "sends": self.sends,
            "conversations": self.conversations,
            "participant_changes": self.participant_changes,
            "read_receipts": self.read_receipts,
            "socket_connects": self.socket_connects,
            "socket_messages": self.socket_messages,
        }


class PushSettings(_Frozen, frozen=True, kw_only=True):
    webhook_url: Annotated[str, env("PUSH_WEBHOOK_URL", "Receiver of PUSH_PROVIDER=webhook.")] = ""
    webhook_secret: Annotated[
        str, env("PUSH_WEBHOOK_SECRET", "HMAC-SHA256 key for the webhook's `X-Chat-Signature` header.")
    ] = ""
    fcm_credentials_file: Annotated[
        str,
        env(
            "FCM_CREDENTIALS_FILE",
            "Service-account JSON for PUSH_PROVIDER=fcm; empty: Application Default Credentials.",
        ),
    ] = ""
    fcm_project_id: Annotated[str, env("FCM_PROJECT_ID", "Firebase project (default: the credentials').")] = (
        ""
    )
    fcm_endpoint: Annotated[str, env("FCM_ENDPOINT", "FCM HTTP v1 base URL.")] = "https://fcm.googleapis.com"
    fcm_token_url: Annotated[str, env("FCM_TOKEN_URL", "OAuth token endpoint for the service account.")] = (
        "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL, not a secret
    )
    apns_key_file: Annotated[
        str,
        env(
            "APNS_KEY_FILE",
            "PUSH_PROVIDER=apns: the APNs auth key (`AuthKey_<KEYID>.p8`, a P-256 key in PEM), a mounted "
            "secret file; the tokens it signs (ES256) are APNs' token-based authentication.",
        ),
    ] = ""
    apns_key_id: Annotated[str, env("APNS_KEY_ID", "PUSH_PROVIDER=apns: the key's id (10 characters).")] = ""
    apns_team_id: Annotated[str, env("APNS_TEAM_ID", "PUSH_PROVIDER=apns: the Apple developer team id.")] = ""
    apns_topic: Annotated[
        str, env("APNS_TOPIC", "PUSH_PROVIDER=apns: the app's bundle id (`apns-topic`).")
    ] = ""
    apns_environment: Annotated[
        Literal["production", "sandbox"],
        env(
            "APNS_ENVIRONMENT",
            "`production` (api.push.apple.com) or `sandbox` (api.sandbox.push.apple.com: debug builds).",
        ),
    ] = "production"
    apns_endpoint: Annotated[
        str, env("APNS_ENDPOINT", "APNs base URL; empty: APNS_ENVIRONMENT's (tests point it elsewhere).")
    ] = ""
    image_previews: Annotated[
        bool,
        env(
            "PUSH_IMAGE_PREVIEWS",
            "Pushes of image messages carry a link to the thumbnail (FCM `notification.image`, APNs "
            "`mutable-content`), so the lock screen shows the photo; `false` keeps photos off lock screens.",
        ),
    ] = True
    image_url_seconds: Annotated[
        int,
        env("PUSH_IMAGE_URL_SECONDS", "How long a push's thumbnail link works (it needs no token)."),
        msgspec.Meta(ge=1, le=3600),
    ] = 600
    image_url_secret: Annotated[
        str,
        env(
            "PUSH_IMAGE_URL_SECRET",
            "HMAC key of the push thumbnail links (the consumer signs, the image proxy checks; at least 32 "
            "characters). Empty: derived from AUTH_JWT_SECRET; with neither, pushes carry no image.",
        ),
    ] = ""


class TelemetrySettings(_Frozen, frozen=True, kw_only=True):
    otlp_endpoint: Annotated[
        str, env("OTEL_EXPORTER_OTLP_ENDPOINT", "OTLP/HTTP collector base URL; empty exports no traces.")
    ] = ""
    service_name: Annotated[
        str, env("OTEL_SERVICE_NAME", "Service name on traces (default: the service's own).")
    ] = ""
    pushgateway_url: Annotated[
        str,
        env(
            "PUSHGATEWAY_URL",
            "Prometheus Pushgateway the orphan-cleanup job pushes its metrics to; empty: it only logs them.",
        ),
    ] = ""
    pushgateway_instance: Annotated[
        str,
        env(
            "PUSHGATEWAY_INSTANCE",
            "`instance` label of the cleanup job's group on the Pushgateway, so deployments sharing one do"
            " not replace each other's metrics (the chart sets `<namespace>/<release>`); empty: the bucket"
            " (S3) or the data directory.",
        ),
    ] = ""


class Settings(_Frozen, frozen=True, kw_only=True):
    service: ServiceSettings = ServiceSettings()
    auth: AuthSettings = AuthSettings()
    backends: BackendSettings = BackendSettings()
    aws: AwsSettings = AwsSettings()
    s3: S3Settings = S3Settings()
    sqs: SqsSettings = SqsSettings()
    notifications: NotificationSettings = NotificationSettings()
    media: MediaSettings = MediaSettings()
    firestore: FirestoreSettings = FirestoreSettings()
    redis: RedisSettings = RedisSettings()
    presence: PresenceSettings = PresenceSettings()
    images: ImageSettings = ImageSettings()
    lifecycle: LifecycleSettings = LifecycleSettings()
    limits: LimitSettings = LimitSettings()
    push: PushSettings = PushSettings()
    telemetry: TelemetrySettings = TelemetrySettings()

    def validate(self) -> Settings:
        """Cross-field rules; raises ``SettingsError`` naming the variable."""
        auth = self.auth
        if not auth.jwt_secret and not auth.jwks_url:
            raise SettingsError("AUTH_JWT_SECRET or AUTH_JWKS_URL: one must be set")
        if auth.jwt_secret and len(auth.jwt_secret) < 32:
            raise SettingsError("AUTH_JWT_SECRET: must be at least 32 characters")
        if auth.dev_login and not auth.jwt_secret:
            raise SettingsError("DEV_LOGIN: needs AUTH_JWT_SECRET (it mints HS256 dev tokens)")
        if auth.jwks_url and not (auth.issuer and auth.audience):
            raise SettingsError("AUTH_ISSUER and AUTH_AUDIENCE: required with AUTH_JWKS_URL")
        if self.backends.object_store == "s3" and not self.s3.bucket:
            raise SettingsError("S3_BUCKET_NAME: required with OBJECT_STORE=s3")
        providers = self.backends.push_provider
        if not providers or len(set(providers)) != len(providers):
            raise SettingsError("PUSH_PROVIDER: one or more of log, webhook, fcm, apns, each once")
        if "webhook" in providers and not self.push.webhook_url:
            raise SettingsError("PUSH_WEBHOOK_URL: required with PUSH_PROVIDER=webhook")
        if "apns" in providers:
            push = self.push
            for name, value in (
                ("APNS_KEY_FILE", push.apns_key_file),
                ("APNS_KEY_ID", push.apns_key_id),
                ("APNS_TEAM_ID", push.apns_team_id),
                ("APNS_TOPIC", push.apns_topic),
            ):
                if not value:
                    raise SettingsError(f"{name}: required with PUSH_PROVIDER=apns")
        if self.push.image_url_secret and len(self.push.image_url_secret) < 32:
            raise SettingsError("PUSH_IMAGE_URL_SECRET: must be at least 32 characters")
        expiry_days = self.s3.raw_upload_expiry_days
        if expiry_days and expiry_days * 86400 <= self.images.orphan_grace_seconds:
            # The backstop must never beat the send window: an upload still sendable would vanish.
            raise SettingsError("RAW_UPLOAD_EXPIRY_DAYS: must be longer than ORPHAN_GRACE_SECONDS (or 0)")
        for name, value in self.limits.rate_limits().items():
            try:
                limits.parse(value)
            except ValueError:
                raise SettingsError(
                    f"RATE_LIMIT_{name.upper()}={value!r}: not a rate like `60/minute`"
                ) from None
        for proxy in self.limits.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise SettingsError(f"TRUSTED_PROXIES: {proxy!r} is not an address or CIDR") from None
        media = self.media
        if media.visibility_timeout_seconds and media.visibility_timeout_seconds <= media.longest_job_seconds:
            # A job still running would be handed to a second worker (decoded twice, a receive burnt).
            raise SettingsError(
                "MEDIA_VISIBILITY_TIMEOUT_SECONDS: must be longer than the longest media job "
                f"({media.longest_job_seconds:g} s from MEDIA_JOB_TIMEOUT_SECONDS), or 0 to derive it"
            )
        for content_type in self.images.allowed_types:
            if content_type not in EXTENSIONS:  # SVG, HTML and anything without a key layout
                known = ", ".join(EXTENSIONS)
                raise SettingsError(f"ALLOWED_IMAGE_TYPES: {content_type!r} is not one of {known}")
        return self


# The development secret the Makefile, the devstack and the docs hand out: public, so anyone can mint
# tokens with it. Fine on a laptop's loopback, refused anywhere else.
DEV_SECRET_PREFIX = "dev-only-secret-change-me"  # noqa: S105 - the published one, to refuse it
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name to bind or reach) is this machine only."""
    host = host.strip().strip("[]").lower()
    if host in _LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _production_like(settings: Settings) -> str | None:
    """The first setting that says "this is not a laptop", named as its variable; None when none does."""
    public = urlsplit(settings.service.public_base_url) if settings.service.public_base_url else None
    if public is not None and not is_loopback(public.hostname or ""):
        return f"PUBLIC_BASE_URL={settings.service.public_base_url}"
    if settings.auth.jwks_url:
        return "AUTH_JWKS_URL"
    kinds = settings.backends
    if not settings.aws.endpoint_url and (kinds.object_store == "s3" or kinds.notification_queue == "sqs"):
        return "OBJECT_STORE=s3 or NOTIFICATION_QUEUE=sqs on AWS itself (no AWS_ENDPOINT_URL)"
    if kinds.message_store == "firestore" and not settings.firestore.emulator_host:
        return "MESSAGE_STORE=firestore without FIRESTORE_EMULATOR_HOST"
    if {"fcm", "apns"} & set(kinds.push_provider):
        return "PUSH_PROVIDER=fcm or apns"
    return None


def refuse_dev_secret(settings: Settings, bind_host: str) -> None:
    """Raise ``SettingsError`` when the published dev secret would guard a server reachable by others."""
    if not settings.auth.jwt_secret.startswith(DEV_SECRET_PREFIX):
        return
    if not is_loopback(bind_host):
        raise SettingsError(
            f"AUTH_JWT_SECRET: the published dev secret is refused when binding {bind_host} (not loopback); "
            "set a secret of your own (e.g. `openssl rand -hex 32`) or HOST=127.0.0.1"
        )
    reason = _production_like(settings)
    if reason is not None:
        raise SettingsError(
            f"AUTH_JWT_SECRET: the published dev secret is refused with {reason}; set a secret of your own"
        )


def _env_name(hint: Any) -> str | None:
    for meta in getattr(hint, "__metadata__", ()):
        if isinstance(meta, msgspec.Meta) and meta.extra and "env" in meta.extra:
            return str(meta.extra["env"])
    return None


def _is_sequence(hint: Any) -> bool:
    base = get_args(hint)[0] if get_origin(hint) is Annotated else hint
    return get_origin(base) in (tuple, list)


def _load_struct(cls: type[T], environ: Mapping[str, str]) -> T:
    hints = get_type_hints(cls, include_extras=True)
    values: dict[str, Any] = {}
    for field in msgspec.structs.fields(cls):
        hint = hints[field.name]
        name = _env_name(hint)
        if name is None:  # a nested concern
            values[field.name] = _load_struct(hint, environ)
            continue
        raw = environ.get(name)
        if raw is None or (raw.strip() == "" and not _is_sequence(hint)):
            continue
        value: Any = [part.strip() for part in raw.split(",") if part.strip()] if _is_sequence(hint) else raw
        try:
            values[field.name] = msgspec.convert(value, hint, strict=False)
        except msgspec.ValidationError as exc:
            reason = str(exc).split(" - at ", 1)[0]
            raise SettingsError(f"{name}={raw!r}: {reason}") from None
    return cls(**values)


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read settings from ``environ`` (default ``os.environ``) and validate them."""
    environ = os.environ if environ is None else environ
    if not environ.get("AWS_REGION") and environ.get("AWS_DEFAULT_REGION"):
        environ = {**environ, "AWS_REGION": environ["AWS_DEFAULT_REGION"]}  # the AWS CLI's fallback
    settings = _load_struct(Settings, environ)
    if overrides:
        settings = msgspec.structs.replace(settings, **overrides)
    return settings.validate()


def iter_env_vars() -> Iterator[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting, in declaration order."""

    def walk(cls: type[msgspec.Struct]) -> Iterator[tuple[str, str, str]]:
        hints = get_type_hints(cls, include_extras=True)
        for field in msgspec.structs.fields(cls):
            hint = hints[field.name]
            name = _env_name(hint)
            if name is None:
                yield from walk(hint)
                continue
            meta = next(m for m in hint.__metadata__ if isinstance(m, msgspec.Meta) and m.extra)
            default = field.default
            if isinstance(default, tuple):
                shown = ",".join(default)
            elif isinstance(default, bool):
                shown = str(default).lower()
            else:
                shown = str(default)
            yield name, shown, meta.description or ""

    yield from walk(Settings)


def markdown_table() -> str:
    """The table of docs/operations/configuration.md (``make docs``) and of ``chat-management config``."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, default, meaning in iter_env_vars():
        rows.append(f"| `{name}` | {f'`{default}`' if default else ''} | {meaning} |")
    return "\n".join(rows)

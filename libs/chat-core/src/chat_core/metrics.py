"""Every metric the services export, declared in one place.

Dashboards and alert rules in the Helm chart query exactly these names; a test scrapes the running
services and checks that each queried name exists. HTTP metrics are labelled by route template, never
by raw path, so cardinality stays bounded.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "REGISTRY", "render"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SIZE_BUCKETS = tuple(float(2**p) for p in range(10, 27, 2))  # 1 KiB .. 64 MiB
_WAIT_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, 7200)

# --- RED, per route --------------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "chat_http_requests",
    "HTTP requests handled, by route template, method and status.",
    ["component", "route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "chat_http_request_duration_seconds",
    "Time from request start to the last response byte, by route template and method.",
    ["component", "route", "method"],
    buckets=_LATENCY_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge("chat_http_requests_in_flight", "Requests being handled now.", ["component"])

# --- upload ----------------------------------------------------------------------------------------
UPLOAD_URLS_ISSUED = Counter("chat_upload_urls_issued", "Presigned upload URLs issued.")
UPLOAD_URLS_REFUSED = Counter(
    "chat_upload_urls_refused",
    "Upload URL requests refused, by reason (the problem code, or backend_error).",
    ["reason"],
)
MEMBERSHIP_CACHE = Counter(
    "chat_membership_cache_lookups", "Membership lookups, by cache result (hit or miss).", ["result"]
)

# --- messages --------------------------------------------------------------------------------------
MESSAGES_SENT = Counter("chat_messages_sent", "Messages stored, by type (text or image).", ["type"])
MESSAGES_FORWARDED = Counter(
    "chat_messages_forwarded", "Messages forwarded (also counted as sent), by type (text or image).", ["type"]
)
IMAGE_MESSAGES_REJECTED = Counter(
    "chat_image_messages_rejected", "Image messages refused, by reason (the problem code).", ["reason"]
)
IMAGE_SIZE = Histogram("chat_image_size_bytes", "Size of images in sent messages.", buckets=_SIZE_BUCKETS)
IMAGES_PER_MESSAGE = Histogram(
    "chat_images_per_message",
    "Images in each image message sent (1: a single image; 2..MAX_IMAGES_PER_MESSAGE: an album).",
    buckets=(1, 2, 3, 4, 5, 6, 8, 10, 15, 20),
)
UPLOAD_TO_SEND = Histogram(
    "chat_image_upload_to_send_seconds",
    "From the object's last-modified time to the send that references it.",
    buckets=_WAIT_BUCKETS,
)

# --- abuse limits -----------------------------------------------------------------------------------
RATE_LIMITED = Counter(
    "chat_rate_limited",
    "Requests refused with 429, by limit (a rate limit's name, pending_uploads or upload_bytes_per_day).",
    ["limit"],
)
RATE_LIMIT_ERRORS = Counter(
    "chat_rate_limit_errors",
    "Limit checks that failed open because their store was unreachable, by check (rate or quota).",
    ["check"],
)

# --- image proxy -----------------------------------------------------------------------------------
IMAGE_PROXY_REQUESTS = Counter(
    "chat_image_proxy_requests",
    "Image proxy requests, by decision (allowed or denied) and reason.",
    ["decision", "reason"],
)

# --- uploads, as they land (the media processor, from object-created events) ------------------------
_UPLOAD_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, 7200)
UPLOADS = Counter(
    "chat_uploads",
    "Raw uploads that reached the store, by result (stored, or rejected: deleted on arrival) and reason "
    "(ok, image_too_large, not_an_image, too_many_pixels, already_processed).",
    ["result", "reason"],
)
UPLOAD_DURATION = Histogram(
    "chat_upload_duration_seconds",
    "From the upload URL being issued to the object being stored (the object-created event's time).",
    buckets=_UPLOAD_BUCKETS,
)
UPLOAD_SIZE = Histogram(
    "chat_upload_size_bytes",
    "Size of raw uploads as they land, refused ones included.",
    buckets=_SIZE_BUCKETS,
)

# --- storage usage (the shared storage ledger; every replica exports the same value: take max()) -----
STORAGE_OBJECTS = Gauge(
    "chat_storage_objects", "Objects in the image store, by kind (raw uploads, derived images).", ["kind"]
)
STORAGE_BYTES = Gauge(
    "chat_storage_bytes", "Bytes in the image store, by kind (raw uploads, derived images).", ["kind"]
)
STORAGE_LEDGER_ERRORS = Counter(
    "chat_storage_ledger_errors", "Storage ledger updates or reads skipped because its store was unreachable."
)

# --- orphan cleanup --------------------------------------------------------------------------------
ORPHANS_DELETED = Counter("chat_orphan_objects_deleted", "Unreferenced objects deleted by cleanup.")
ORPHAN_BYTES_DELETED = Counter(
    "chat_orphan_bytes_deleted", "Bytes of unreferenced objects deleted by cleanup."
)
CLEANUP_LAST_SUCCESS = Gauge(
    "chat_cleanup_last_success_timestamp_seconds", "Unix time the last cleanup scan finished."
)

# --- real-time and notifications ------------------------------------------------------------------
EVENTS_PUBLISHED = Counter(
    "chat_events_published", "Events published on the real-time bus, by type.", ["type"]
)
WEBSOCKET_CONNECTIONS = Gauge("chat_websocket_connections", "Open real-time sockets.")
WEBSOCKET_RESYNCS = Counter(
    "chat_websocket_resyncs",
    "session.resync frames sent: an open socket's bus subscription was interrupted and events were lost.",
)
NOTIFICATIONS_ENQUEUED = Counter(
    "chat_notifications_enqueued", "Notification jobs put on the queue (one per chat message or chunk)."
)
OUTBOX_DEPTH = Gauge("chat_outbox_depth", "Stored messages whose publish/enqueue is still pending.")
OUTBOX_OLDEST_AGE = Gauge("chat_outbox_oldest_age_seconds", "Age of the oldest pending outbox entry.")
OUTBOX_RELAY_ERRORS = Counter(
    "chat_outbox_relay_errors",
    "Failed attempts to relay an outbox entry, by target (bus, queue, or store: the message store).",
    ["target"],
)
NOTIFICATIONS_SENT = Counter("chat_notifications_sent", "Pushes accepted by the provider.", ["provider"])
NOTIFICATIONS_FAILED = Counter(
    "chat_notifications_failed",
    "Pushes the provider refused or that errored, by reason.",
    ["provider", "reason"],
)
NOTIFICATIONS_RETRIED = Counter(
    "chat_notifications_retried", "Queue messages released for another attempt after a failure."
)
NOTIFICATIONS_DEAD_LETTERED = Counter(
    "chat_notifications_dead_lettered", "Queue messages that ran out of attempts (moved to the DLQ)."
)
NOTIFICATION_QUEUE_AGE = Histogram(
    "chat_notification_queue_age_seconds",
    "Time a notification waited in the queue before the consumer received it.",
    buckets=_WAIT_BUCKETS,
)
NOTIFICATION_QUEUE_DEPTH = Gauge(
    "chat_notification_queue_messages", "Approximate messages in a queue, by queue (main or dlq).", ["queue"]
)

# --- backends --------------------------------------------------------------------------------------
BACKEND_RETRIES = Counter(
    "chat_backend_retries",
    "Calls to a backend tried again after a transient failure, by backend (s3, sqs, jwks, fcm), "
    "operation and reason (5xx, throttled, connection, timeout).",
    ["backend", "operation", "reason"],
)


# --- media processor -------------------------------------------------------------------------------
_PROCESSING_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
_PIXEL_BUCKETS = tuple(float(10**p) for p in range(3, 9))  # 1 kP .. 100 MP
MEDIA_JOBS = Counter(
    "chat_media_jobs",
    "Media jobs finished, by outcome (ready, failed, skipped, retried, dead_lettered) and reason.",
    ["outcome", "reason"],
)
MEDIA_PROCESSING_SECONDS = Histogram(
    "chat_media_processing_seconds",
    "From a media job's receipt to its message being ready or failed.",
    buckets=_PROCESSING_BUCKETS,
)
MEDIA_BYTES = Counter(
    "chat_media_bytes", "Bytes read from raw uploads (in) and written as derivatives (out).", ["direction"]
)
MEDIA_PIXELS = Histogram(
    "chat_media_pixels", "Pixels of sanitized originals (all frames).", buckets=_PIXEL_BUCKETS
)
MEDIA_UPLOADS_CHECKED = Counter(
    "chat_media_uploads_checked",
    "Raw uploads checked on their object-created event, by verdict (kept, or deleted with the reason).",
    ["verdict"],
)
MEDIA_QUEUE_AGE = Histogram(
    "chat_media_queue_age_seconds",
    "Time a media job waited in the queue before the processor received it.",
    buckets=_WAIT_BUCKETS,
)
MEDIA_QUEUE_DEPTH = Gauge(
    "chat_media_queue_messages", "Approximate messages in the media queue, by queue (main or dlq).", ["queue"]
)
MEDIA_JOBS_QUEUED = Counter("chat_media_jobs_queued", "Media jobs the outbox relay queued.")


# --- message lifecycle: unsend, edit, erasure of bytes, retention, operators' jobs -------------------
_ERASURE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
MESSAGES_DELETED = Counter(
    "chat_messages_deleted",
    "Messages turned into tombstones, by who asked (sender, admin, retention, erasure).",
    ["reason"],
)
MESSAGES_EDITED = Counter("chat_messages_edited", "Messages edited by their sender.")
IMAGE_BYTES_ERASED = Histogram(
    "chat_image_erasure_seconds",
    "From a message's deletion to the last stored byte of its image gone (raw upload, variants, notes).",
    buckets=_ERASURE_BUCKETS,
)
ERASED_OBJECTS = Counter(
    "chat_erased_objects", "Stored objects deleted because their message was deleted, by kind.", ["kind"]
)
DELETED_SKIPPED = Counter(
    "chat_deleted_message_work_skipped",
    "Work dropped because its message was deleted meanwhile, by what (push, media_job).",
    ["work"],
)
RETENTION_RUNS = Counter(
    "chat_retention_runs", "Runs of the retention job, by outcome (ok, error).", ["outcome"]
)
RETENTION_LAST_SUCCESS = Gauge(
    "chat_retention_last_success_timestamp_seconds", "When the retention job last finished a full pass."
)
RETENTION_OLDEST_EXPIRED_AGE = Gauge(
    "chat_retention_oldest_expired_age_seconds",
    "How long past its retention the oldest message still stored was, at the end of the last pass "
    "(0: none; growing: the job falls behind).",
)
ADMIN_JOBS = Counter(
    "chat_admin_jobs", "Operators' jobs (erase, export) finished, by kind and outcome.", ["kind", "outcome"]
)


def render(registry: CollectorRegistry = REGISTRY) -> bytes:
    return generate_latest(registry)

"""The media pipeline: its job queue and every image limit of the processor."""

from __future__ import annotations

import math
from typing import Annotated

import msgspec

from chat_core.settings.base import Frozen, env

# Jobs the media processor works on per image worker process: while one decodes, the next is fetched.
MEDIA_JOBS_PER_IMAGE_WORKER = 2
# What a media job spends besides decoding: fetching the raw upload, writing three variants, finishing
# the message and publishing it (each a bounded request, with its retries).
MEDIA_TRANSFER_ALLOWANCE_SECONDS = 60.0


class MediaSettings(Frozen, frozen=True, kw_only=True):
    """The media pipeline: its job queue and the processor's limits.

    The one declaration of every image limit: the send's header check, the check of uploads as they land
    and the processor's ``media_processor.transforms.ImageLimits`` (its defaults included) all read these.
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

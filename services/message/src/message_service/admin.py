"""The operators' API: a user's erasure and export as jobs (``/admin``), for tokens with the admin role.

``POST /admin/users/{userId}/erase`` and ``.../export`` answer 202 ``{jobId}`` at once; the job runs in
the background and ``GET /admin/jobs/{jobId}`` tells its status (``queued``, ``running``, ``done``,
``failed``), its report, and for a done export a ``downloadUrl`` (a signed GET of the zip, valid
``EXPORT_URL_TTL_SECONDS`` from that answer; none once the zip has expired after ``EXPORT_EXPIRY_DAYS``).
Only a token whose ``AUTH_ROLES_CLAIM`` holds ``AUTH_ADMIN_ROLE`` may call them (403
``admin_role_required`` otherwise).

Jobs are records in the object store (``_admin/jobs/{jobId}.json``, a prefix no conversation id or
upload key can have), so every replica sees them and they survive restarts: each message service
replica looks every ``JOB_SCAN_SECONDS`` for a job still queued, or running without a sign of life for
``JOB_STALE_SECONDS`` (its replica died), and runs it. Both jobs are idempotent (an erasure again deletes
nothing more; an export again writes the same zip), so a job that two replicas pick up at once still ends
right.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import msgspec
import structlog
from litestar import Response, get, post
from litestar.di import NamedDependency
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath

from chat_core import keys, metrics
from chat_core.auth import USER_ID_PATTERN, Principal
from chat_core.errors import ProblemError, problem_responses
from chat_core.objectstore import ObjectNotFound, ObjectStore
from chat_core.parameters import UserId
from message_service.lifecycle import ErasureReport, ExportReport, Lifecycle

__all__ = ["ROUTES", "AdminJob", "AdminJobs", "JobAccepted"]

JOBS_PREFIX = "_admin/jobs/"
JOB_SCAN_SECONDS = 30.0
JOB_STALE_SECONDS = 600.0
_log = structlog.get_logger("message_service.admin")

JobKind = Literal["erase", "export"]
JobStatus = Literal["queued", "running", "done", "failed"]


class AdminJob(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    """A job as ``GET /admin/jobs/{jobId}`` shows it (and as stored, without the download URL)."""

    job_id: str
    kind: JobKind
    user_id: str
    status: JobStatus
    requested_by: str
    created_at: dt.datetime
    updated_at: dt.datetime
    erasure: ErasureReport | None = None
    export: ExportReport | None = None
    error: str | None = None
    download_url: str | None = None  # a done export: signed GET of the zip
    download_expires_at: dt.datetime | None = None


class JobAccepted(msgspec.Struct, frozen=True, rename="camel"):
    job_id: str
    status: JobStatus


class AdminJobs:
    def __init__(
        self, objects: ObjectStore, lifecycle: Lifecycle, *, admin_role: str, url_ttl_seconds: int
    ) -> None:
        self._objects = objects
        self._lifecycle = lifecycle
        self._admin_role = admin_role
        self._url_ttl = url_ttl_seconds
        self._running: dict[str, asyncio.Task[None]] = {}

    def require_admin(self, principal: Principal) -> None:
        if self._admin_role not in principal.roles:
            raise ProblemError(
                403, "admin_role_required", f"this needs a token with the role {self._admin_role!r}"
            )

    # --- the API's side -----------------------------------------------------------------------------
    async def submit(self, kind: JobKind, user_id: str, principal: Principal) -> AdminJob:
        self.require_admin(principal)
        if not USER_ID_PATTERN.fullmatch(user_id):
            raise ProblemError(400, "invalid_user_id", "not a user id")
        now = dt.datetime.now(dt.UTC)
        job = AdminJob(
            job_id=str(uuid.uuid4()),
            kind=kind,
            user_id=user_id,
            status="queued",
            requested_by=principal.user_id,
            created_at=now,
            updated_at=now,
        )
        await self._save(job)
        self._start(job)
        return job

    async def status(self, job_id: str, principal: Principal) -> AdminJob:
        self.require_admin(principal)
        job = await self._load(job_id) if keys.UUID_PATTERN.fullmatch(job_id) else None
        if job is None:
            raise ProblemError(404, "job_not_found", "no such job")
        if job.status == "done" and job.export is not None:
            if await self._objects.head(job.export.object_key) is None:
                return job  # expired (EXPORT_EXPIRY_DAYS): nothing to download any more
            expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self._url_ttl)
            url = self._objects.presign_get(
                job.export.object_key,
                expires_in=self._url_ttl,
                response_headers={"Content-Disposition": f'attachment; filename="export-{job.user_id}.zip"'},
            )
            job = msgspec.structs.replace(job, download_url=url, download_expires_at=expires)
        return job

    # --- running ------------------------------------------------------------------------------------
    def _start(self, job: AdminJob) -> None:
        if job.job_id in self._running:
            return
        task = asyncio.get_running_loop().create_task(self._run(job), name=f"admin-{job.kind}")
        self._running[job.job_id] = task
        task.add_done_callback(lambda _: self._running.pop(job.job_id, None))

    async def _run(self, job: AdminJob) -> None:
        job = msgspec.structs.replace(job, status="running", updated_at=dt.datetime.now(dt.UTC))
        await self._save(job)
        try:
            if job.kind == "erase":
                erasure = await self._lifecycle.erase_user(job.user_id, actor=job.requested_by)
                job = msgspec.structs.replace(job, erasure=erasure)
            else:
                export = await self._lifecycle.export_user(
                    job.user_id, export_id=job.job_id, actor=job.requested_by
                )
                job = msgspec.structs.replace(job, export=export)
        except Exception as exc:
            _log.exception("admin_job_failed", job_id=job.job_id, kind=job.kind)
            metrics.ADMIN_JOBS.labels(job.kind, "failed").inc()
            failed = msgspec.structs.replace(
                job, status="failed", error=type(exc).__name__, updated_at=dt.datetime.now(dt.UTC)
            )
            with contextlib.suppress(Exception):  # the scan retries a job left "running"
                await self._save(failed)
            return
        metrics.ADMIN_JOBS.labels(job.kind, "done").inc()
        await self._save(msgspec.structs.replace(job, status="done", updated_at=dt.datetime.now(dt.UTC)))

    async def run_pending(self) -> None:
        """Start every job still queued, or running without a sign of life (its replica died)."""
        stale = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=JOB_STALE_SECONDS)
        async for info in self._objects.list(JOBS_PREFIX):
            job = await self._load(info.key.removeprefix(JOBS_PREFIX).removesuffix(".json"))
            if job is not None and (
                job.status == "queued" or (job.status == "running" and job.updated_at < stale)
            ):
                self._start(job)

    @contextlib.asynccontextmanager
    async def worker(self) -> AsyncIterator[None]:
        async def scan() -> None:
            while True:
                try:
                    await self.run_pending()
                except Exception as exc:
                    _log.warning("admin_job_scan_failed", error=repr(exc))
                await asyncio.sleep(JOB_SCAN_SECONDS)

        scanner = asyncio.create_task(scan(), name="admin-jobs")
        try:
            yield
        finally:
            scanner.cancel()
            for task in [scanner, *self._running.values()]:
                task.cancel()
            await asyncio.gather(scanner, *self._running.values(), return_exceptions=True)

    # --- records ------------------------------------------------------------------------------------
    async def _save(self, job: AdminJob) -> None:
        await self._objects.put(
            f"{JOBS_PREFIX}{job.job_id}.json", msgspec.json.encode(job), content_type="application/json"
        )

    async def _load(self, job_id: str) -> AdminJob | None:
        try:
            _info, data = await self._objects.read(f"{JOBS_PREFIX}{job_id}.json")
        except ObjectNotFound:
            return None
        return msgspec.json.decode(data, type=AdminJob)


# --- routes -----------------------------------------------------------------------------------------
_ADMIN_PROBLEMS = problem_responses(400, 401, 403)


def _submit_route(kind: JobKind, summary: str, description: str) -> HTTPRouteHandler:
    """``POST /admin/users/{user_id}/<kind>``: queue one job of ``kind``, answer 202 with it."""

    async def submit(
        user_id: UserId, principal: NamedDependency[Principal], admin_jobs: NamedDependency[AdminJobs]
    ) -> Response[JobAccepted]:
        job = await admin_jobs.submit(kind, user_id, principal)
        return Response(JobAccepted(job.job_id, job.status), status_code=202)

    submit.__name__ = submit.__qualname__ = f"{kind}_user"  # the OpenAPI operationId is made from it
    return post(
        f"/admin/users/{{user_id:str}}/{kind}",
        status_code=202,
        summary=summary,
        description=description,
        tags=["admin"],
        responses={202: ResponseSpec(JobAccepted, description="The job, queued"), **_ADMIN_PROBLEMS},
    )(submit)


erase_user = _submit_route(
    "erase",
    "Erase a user (operators)",
    "Needs the admin role (`AUTH_ROLES_CLAIM` holding `AUTH_ADMIN_ROLE`). Every message the user sent "
    "becomes a tombstone and its image bytes are deleted; the user leaves every conversation; their "
    "devices are deleted. 202 with a job; `GET /admin/jobs/{jobId}` for its status.",
)
export_user = _submit_route(
    "export",
    "Export a user's data (operators)",
    "Needs the admin role. A zip of the user's messages (JSON), their conversations and their images "
    "as served; 202 with a job; once done, `GET /admin/jobs/{jobId}` carries a short-lived `downloadUrl`.",
)


@get(
    "/admin/jobs/{job_id:str}",
    summary="An operator's job",
    description="Needs the admin role. 404 `job_not_found` for an unknown id.",
    tags=["admin"],
    responses=problem_responses(401, 403, 404),
)
async def job_status(
    job_id: FromPath[str], principal: NamedDependency[Principal], admin_jobs: NamedDependency[AdminJobs]
) -> AdminJob:
    return await admin_jobs.status(job_id, principal)


ROUTES: list[Any] = [erase_user, export_user, job_status]

"""Worker processes that run ``transforms.sanitize`` with a time and a memory bound per job.

A queue worker calls ``await processor.process(data, content_type)`` and always gets a ``Sanitized`` or
a ``Rejected``: a job past its time is killed (``timeout``); one past its memory fails inside the worker
(``memory``: the address space is capped with ``RLIMIT_AS``, so an allocation fails instead of the
kernel's OOM killer taking the pod; libvips then reports the failure, or GLib aborts the worker, which
is how GLib answers a failed allocation); a worker that dies otherwise (a decoder crash) fails only
its own job (``worker_crashed``; a SIGKILL counts as ``memory``: that is what an OOM kill looks like).
A killed or dead worker is replaced before it takes another job, so one bad image never takes the
service down.

The pool never shrinks: it has ``size`` slots, each holding a worker or nothing, and a job always puts its
slot back, whatever happened. A slot whose worker could not be started again (the node out of memory or
processes) is put back empty, and the next job that takes it tries to start one; until one starts, that
job raises ``PoolUnavailable`` (the queue retries it later: the image is not at fault). A worker found
dead while idle (the OOM killer) is replaced before it gets a job. ``health()`` says how many workers are
alive and why a start failed; the media processor's ``/readyz`` reports it (``media_pool``).

One worker per core by default, each with one libvips thread: the CPU is shared by processes, not by
threads inside one job, so a slow image holds one core and no more. Jobs are handed over a pipe
(the bytes are copied once); libvips' operation cache is off, so a worker's memory is that of its job.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import TracebackType

import structlog

from media_processor.transforms import DEFAULT_LIMITS, ImageLimits, Reason, Rejected, Sanitized, sanitize

__all__ = [
    "DEFAULT_JOB_MEMORY_BYTES",
    "DEFAULT_JOB_TIMEOUT_SECONDS",
    "MediaProcessor",
    "PoolHealth",
    "PoolSettings",
    "PoolUnavailable",
]

_log = structlog.get_logger("media_processor.pool")

DEFAULT_JOB_TIMEOUT_SECONDS = 30.0
"""A 50 MP JPEG takes about 2 s on one core here; 15x that is a stuck or hostile decode."""
DEFAULT_JOB_MEMORY_BYTES = 1024 * 1024 * 1024
"""Address space of one worker (RLIMIT_AS), libraries and thread stacks included. A 50 MP job peaks
near 250 MB of RSS; the rest of the budget is the mappings that cost no memory."""


@dataclass(frozen=True, slots=True)
class PoolSettings:
    workers: int = 0
    """Worker processes; 0 means one per CPU this process may use (affinity and cgroup CPU quota)."""
    timeout_seconds: float = DEFAULT_JOB_TIMEOUT_SECONDS
    memory_bytes: int = DEFAULT_JOB_MEMORY_BYTES
    """0 leaves the address space unbounded (for measuring)."""
    vips_threads: int = 1


_READY = "ready"
_START_TIMEOUT_SECONDS = 60.0  # importing libvips on a busy node takes seconds; a minute is a stuck start


class WorkerStartFailed(RuntimeError):
    """A worker process did not come up ready for jobs."""


class PoolUnavailable(RuntimeError):
    """No worker could be started for this job (retry later: the image is not at fault)."""


@dataclass(frozen=True, slots=True)
class PoolHealth:
    size: int
    alive: int
    spawn_error: str | None  # why the last start of a worker failed, until one starts again

    def problem(self) -> str | None:
        """Why the pool is short of workers and cannot refill itself, or None."""
        if self.alive >= self.size or self.spawn_error is None:
            return None
        return f"{self.alive} of {self.size} image workers alive; starting one failed: {self.spawn_error}"


def _available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a pod's CPU limit)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    return cpus


def _worker_main(connection: Connection, limits: ImageLimits, memory_bytes: int, vips_threads: int) -> None:
    """The worker's loop: one job in, one result out, until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    _limit_malloc_arenas()
    if memory_bytes:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    import pyvips

    from media_processor.transforms import restrict_loaders

    restrict_loaders()  # already done at import; said again here, where hostile bytes are decoded
    pyvips.cache_set_max(0)  # no operation cache across jobs: a job's memory goes when it ends
    pyvips.concurrency_set(vips_threads)
    connection.send(_READY)
    while True:
        try:
            job = connection.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        data, content_type = job
        try:
            result: Sanitized | Rejected = sanitize(data, content_type, limits)
        except MemoryError:
            result = Rejected(Reason.MEMORY, "the image needs more memory than a job may use")
        del data, job
        try:
            connection.send(result)
        except MemoryError:
            connection.send(Rejected(Reason.MEMORY, "the result needs more memory than a job may use"))


def _limit_malloc_arenas() -> None:
    """glibc reserves a 64 MB arena per thread; two are plenty here, and the address space cap then
    measures memory in use rather than reservations."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(name).mallopt(_M_ARENA_MAX, 2)


_M_ARENA_MAX = -8  # from glibc's malloc.h


class _Worker:
    def __init__(
        self, context: multiprocessing.context.SpawnContext, limits: ImageLimits, pool: PoolSettings
    ):
        self.connection, child = context.Pipe(duplex=True)
        self.process: BaseProcess = context.Process(
            target=_worker_main,
            args=(child, limits, pool.memory_bytes, pool.vips_threads),
            name="media-worker",
            daemon=True,
        )
        self.process.start()
        child.close()
        # Started means ready for a job: a worker that cannot run (no interpreter to exec, an import
        # failing, a memory bound too small for the libraries) fails here, not on its first image.
        try:
            if not self.connection.poll(_START_TIMEOUT_SECONDS):
                raise TimeoutError(f"not ready within {_START_TIMEOUT_SECONDS:g} s")
            if self.connection.recv() != _READY:
                raise RuntimeError("the worker said something else than ready")
        except (EOFError, OSError, TimeoutError, RuntimeError) as exc:
            self.kill()
            raise WorkerStartFailed(f"{exc!r}; exit code {self.process.exitcode}") from None

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.process.kill()
        self.process.join(5)
        self.connection.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.connection.send(None)
        self.process.join(5)
        if self.process.is_alive():
            self.kill()
        else:
            self.connection.close()


class MediaProcessor:
    """``await process(data, content_type)`` on a pool of worker processes (an async context manager)."""

    def __init__(self, limits: ImageLimits = DEFAULT_LIMITS, pool: PoolSettings | None = None) -> None:
        self.limits = limits
        self.pool = pool or PoolSettings()
        self.size = self.pool.workers or _available_cpus()
        # spawn, not fork: the parent runs an event loop and threads, which a fork would copy mid-state.
        self._context = multiprocessing.get_context("spawn")
        # One entry per slot, always ``size`` of them between jobs: a worker, or None for a slot whose
        # worker must be started (again) before it runs a job.
        self._idle: asyncio.Queue[_Worker | None] = asyncio.Queue()
        self._workers: set[_Worker] = set()
        self._spawn_error: str | None = None
        self._started = False
        self._closed = False

    async def start(self) -> None:
        workers = await asyncio.gather(*(self._try_spawn() for _ in range(self.size)))
        for worker in workers:
            self._idle.put_nowait(worker)
        self._started = True

    async def close(self) -> None:
        """Stop the idle workers now; busy ones stop as their jobs end (``process`` sees ``_closed``)."""
        self._closed = True
        stopping = []
        while not self._idle.empty():
            worker = self._idle.get_nowait()
            if worker is not None:
                self._workers.discard(worker)
                stopping.append(asyncio.to_thread(worker.stop))
        await asyncio.gather(*stopping)

    async def __aenter__(self) -> MediaProcessor:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def worker_pids(self) -> list[int]:
        """The live workers' process ids (for health checks, and for tests that kill one)."""
        return [worker.process.pid for worker in self._workers if worker.process.pid is not None]

    def health(self) -> PoolHealth:
        alive = sum(1 for worker in self._workers if worker.process.is_alive())
        return PoolHealth(
            size=self.size if self._started else alive, alive=alive, spawn_error=self._spawn_error
        )

    def _spawn(self) -> _Worker:
        worker = _Worker(self._context, self.limits, self.pool)
        self._workers.add(worker)
        return worker

    async def _try_spawn(self) -> _Worker | None:
        """A new worker, or None (and why, in ``health()``) when it could not be started."""
        try:
            worker = await asyncio.shield(asyncio.to_thread(self._spawn))
        except Exception as exc:
            self._spawn_error = f"{type(exc).__name__}: {exc}"[:300]
            _log.warning("media_worker_start_failed", error=self._spawn_error)
            return None
        self._spawn_error = None
        return worker

    async def _retire(self, worker: _Worker) -> None:
        self._workers.discard(worker)
        await asyncio.shield(asyncio.to_thread(worker.kill))

    async def process(self, data: bytes, content_type: str) -> Sanitized | Rejected:
        """The sanitized image or why not. Never raises for a bad image, a slow one or a dead worker;
        raises ``PoolUnavailable`` when no worker can be started for it."""
        if self._closed:
            raise RuntimeError("the media processor is closed")
        worker = await self._idle.get()
        try:  # from here on the slot goes back, with a worker or empty, whatever happens
            if worker is not None and not worker.process.is_alive():  # died while idle (OOM killer)
                await self._retire(worker)
                worker = None
            if worker is None:
                worker = await self._try_spawn()
                if worker is None:
                    raise PoolUnavailable(f"no image worker could be started: {self._spawn_error}")
            result = await self._run(worker, data, content_type)
            if isinstance(result, Rejected) and result.reason in _WORKER_LOST:
                # Killed, dead or its heap left fragmented: replaced before the slot goes back.
                await self._retire(worker)
                worker = await self._try_spawn()
            return result
        except BaseException:
            if worker is not None:  # interrupted mid-job (cancelled): its state is unknown
                await self._retire(worker)
                worker = None
            raise
        finally:
            await self._release(worker)

    async def _release(self, worker: _Worker | None) -> None:
        if self._closed:
            if worker is not None:
                self._workers.discard(worker)
                await asyncio.to_thread(worker.stop)
        else:
            self._idle.put_nowait(worker)

    async def _run(self, worker: _Worker, data: bytes, content_type: str) -> Sanitized | Rejected:
        try:
            await asyncio.to_thread(worker.connection.send, (data, content_type))
            ready = await asyncio.to_thread(worker.connection.poll, self.pool.timeout_seconds)
            if not ready:
                return Rejected(Reason.TIMEOUT, f"no result within {self.pool.timeout_seconds:g} s")
            result: Sanitized | Rejected = await asyncio.to_thread(worker.connection.recv)
        except (EOFError, OSError):  # the worker is gone (BrokenPipeError is an OSError)
            await asyncio.to_thread(worker.process.join, 5)
            if worker.process.exitcode == -signal.SIGKILL:  # what the kernel's OOM killer does
                return Rejected(Reason.MEMORY, "the worker was killed (out of memory)")
            if worker.process.exitcode == -signal.SIGABRT and self.pool.memory_bytes:
                return Rejected(Reason.MEMORY, "an allocation failed under the job's memory bound")
            return Rejected(Reason.WORKER_CRASHED, f"the worker exited with {worker.process.exitcode}")
        return result


# After these the worker is replaced: killed, dead, or its heap left fragmented by a failed allocation.
_WORKER_LOST = frozenset({Reason.TIMEOUT, Reason.WORKER_CRASHED, Reason.MEMORY})

"""Waiting for images still processing: one store read per image per interval, however many wait.

A group opening a fresh image sends N requests for one message still ``processing``. Each could ask the
store on its own, every interval, for ``MEDIA_WAIT_SECONDS``: ~13 reads per request at the default, so
13·N. Here the first request for an image starts one poll of the store (0.1 s doubling to 1 s) and every
request for that image waits on it: one read per interval whatever N is, and each request still leaves at
its own deadline. The poll stops at the answer (ready, failed, gone) or when nobody waits any more.

Waiting requests hold a connection each, so they are bounded (``MEDIA_MAX_WAITERS`` per process): past the
bound a request does not wait, it gets what is known now (the poll's last answer, or one read of its own)
and, for an image still processing, the same 503 ``image_processing`` with ``Retry-After`` a wait that ran
out gets. A 503 rather than a 429: the client did nothing wrong, and retrying after ``Retry-After`` is
exactly what it should do.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from chat_core.messagestore import Message, albums

__all__ = ["FIRST_INTERVAL_SECONDS", "MAX_INTERVAL_SECONDS", "ProcessingWaits", "finished"]

FIRST_INTERVAL_SECONDS = 0.1
MAX_INTERVAL_SECONDS = 1.0

Lookup = Callable[[], Awaitable[Message | None]]


def finished(message: Message | None, stored_key: str) -> bool:
    """No point in asking again: the image (an album's: the one ``stored_key`` names) is ready, failed,
    or there is no such image."""
    _index, image = albums.image_for_stored_key(message.metadata if message else None, stored_key)
    return image is None or image.status in ("ready", "failed")


class _Poll:
    """One image's poll of the store, shared by everyone waiting for that image."""

    def __init__(self) -> None:
        self.latest: Message | None = None
        self.error: Exception | None = None
        self.answered = asyncio.Event()  # the first read is back
        self.done = asyncio.Event()  # finished, or the store failed
        self.waiters = 0
        self.task: asyncio.Task[None] | None = None

    def result(self) -> Message | None:
        if self.error is not None:
            raise self.error
        return self.latest


class ProcessingWaits:
    def __init__(self, *, max_waiters: int) -> None:
        self._max_waiters = max_waiters
        self._polls: dict[str, _Poll] = {}
        self._waiting = 0
        self.reads = 0  # store reads made, for the operator's curiosity and for tests

    @property
    def waiting(self) -> int:
        """Requests waiting now."""
        return self._waiting

    async def wait(self, key: str, lookup: Lookup, seconds: float) -> tuple[Message | None, bool]:
        """The message behind ``key`` once finished or after ``seconds``; and whether it could wait at all
        (False: the bound was reached, and the answer is what is known now)."""
        poll = self._polls.get(key)
        if self._waiting >= self._max_waiters:
            if poll is not None and poll.answered.is_set():
                return poll.result(), False
            return await self._read(lookup), False
        if poll is None:
            poll = self._polls[key] = _Poll()
            poll.task = asyncio.create_task(self._poll(key, poll, lookup), name="image-wait-poll")
        deadline = time.monotonic() + seconds
        poll.waiters += 1
        self._waiting += 1
        try:
            await poll.answered.wait()
            remaining = deadline - time.monotonic()
            if not poll.done.is_set() and remaining > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(poll.done.wait(), remaining)
            return poll.result(), True
        finally:
            poll.waiters -= 1
            self._waiting -= 1

    async def _read(self, lookup: Lookup) -> Message | None:
        self.reads += 1
        return await lookup()

    async def _poll(self, key: str, poll: _Poll, lookup: Lookup) -> None:
        interval = FIRST_INTERVAL_SECONDS
        try:
            while True:
                poll.latest = await self._read(lookup)
                poll.answered.set()
                if finished(poll.latest, key):
                    break
                await asyncio.sleep(interval)
                interval = min(interval * 2, MAX_INTERVAL_SECONDS)
                if poll.waiters == 0:  # everyone left (answered at their deadline, or gone)
                    break
        except Exception as exc:  # every waiter gets it (the proxy answers 503)
            poll.error = exc
        except asyncio.CancelledError:  # the process is stopping
            poll.error = RuntimeError("the image proxy is stopping")
            raise
        finally:
            poll.answered.set()
            poll.done.set()
            if self._polls.get(key) is poll:
                del self._polls[key]

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The app's lifespan: polls still sleeping when it ends are stopped."""
        try:
            yield
        finally:
            polls = [poll.task for poll in self._polls.values() if poll.task is not None]
            for task in polls:
                task.cancel()
            await asyncio.gather(*polls, return_exceptions=True)

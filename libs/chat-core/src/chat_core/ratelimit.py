"""Rate limits per user (per client IP before there is a user), on the `limits` library.

Moving windows in both stacks: in the cloud, ``limits``' moving-window strategy over its async
``RedisStorage`` (``async+redis://``, redis-py with hiredis), where one Lua call per check keeps a limit
atomic across replicas; embedded (``LIMIT_STORE=memory``), the same semantics in ``MemoryWindows``, a
deque of hit times per key, called inline (no I/O, no thread: ``limits``' own memory storages start
expiry threads or thread hops that cost more than the check). A moving window lets a
client spend its whole allowance in a burst (60 upload URLs at once is fine), then refuses until the
oldest hit is a window old: a real chat app never notices, a script stops.

Keys are one per limit and subject (``{LIMIT_KEY_PREFIX}:ratelimit:LIMITER/{limit}/{subject}/...``), a single
Redis key each, so a cluster spreads them over slots with no hash tag.

Over a limit: 429 problem details, code ``rate_limited``, with ``Retry-After`` and the IETF
``RateLimit``/``RateLimit-Policy`` headers (draft-ietf-httpapi-ratelimit-headers, structured fields:
``RateLimit-Policy: "sends";q=120;w=60`` and ``RateLimit: "sends";r=0;t=17``). They are sent on the 429
only: the success path stays one round trip.

The store being down never takes the service down: every check fails open, counted in
``chat_rate_limit_errors_total``, with one log line when an outage starts and one when it ends. While it
is down the store is asked again at most every ``RETRY_SECONDS`` (requests do not queue on timeouts).
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol, TypedDict

import structlog
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.util import WindowStats
from litestar.connection import ASGIConnection

import limits
from chat_core import metrics
from chat_core.errors import ProblemError
from chat_core.settings import LimitSettings, RedisSettings

__all__ = [
    "RATE_LIMIT_OPT",
    "LimitName",
    "RateLimited",
    "RateLimiter",
    "StoreHealth",
    "client_ip",
    "create_redis",
    "in_process",
    "rate_limit_headers",
]

LimitName = Literal[
    "upload_urls",
    "sends",
    "conversations",
    "participant_changes",
    "read_receipts",
    "socket_connects",
    "socket_messages",
]
# A route names its limit in its ``opt`` (``@post(..., opt={RATE_LIMIT_OPT: "sends"})``).
RATE_LIMIT_OPT = "rate_limit"
KEY_PREFIX = "ratelimit"
RETRY_SECONDS = 1.0
# An outage must cost a request little: the store is skipped after the first failure (above), and a
# dead connection is given up on quickly.
REDIS_TIMEOUT_SECONDS = 0.5

_log = structlog.get_logger("chat_core.ratelimit")


def rate_limit_headers(
    name: str, item: limits.RateLimitItem, remaining: int, reset_in: float
) -> dict[str, str]:
    """``Retry-After`` plus the IETF RateLimit headers of one limit (reset in whole seconds, at least 1)."""
    seconds = max(1, math.ceil(reset_in))
    return {
        "Retry-After": str(seconds),
        "RateLimit-Policy": f'"{name}";q={item.amount};w={item.get_expiry()}',
        "RateLimit": f'"{name}";r={max(0, remaining)};t={seconds}',
    }


class RateLimited(ProblemError):
    """429 ``rate_limited`` with its headers; ``retry_after`` in seconds."""

    def __init__(self, name: str, item: limits.RateLimitItem, remaining: int, reset_in: float) -> None:
        headers = rate_limit_headers(name, item, remaining, reset_in)
        self.limit = name
        self.retry_after = int(headers["Retry-After"])
        super().__init__(
            429,
            "rate_limited",
            f"too many requests ({name}: {item.amount} per {item.get_expiry()} s); "
            f"retry in {self.retry_after} s",
            headers=headers,
            extra={"limit": name},
        )


class StoreHealth:
    """Fail-open bookkeeping of one limit store: the metric, one log line per outage, a retry pause."""

    def __init__(self, check: str) -> None:
        self._check = check
        self._errors = metrics.RATE_LIMIT_ERRORS.labels(check)
        self._down_since: float | None = None
        self._retry_at = 0.0

    def skipping(self) -> bool:
        """True while the store is known down and not yet due for another try."""
        return self._down_since is not None and time.monotonic() < self._retry_at

    def failed(self, exc: BaseException) -> None:
        self._errors.inc()
        now = time.monotonic()
        self._retry_at = now + RETRY_SECONDS
        if self._down_since is None:
            self._down_since = now
            _log.warning("limit_store_down_failing_open", check=self._check, error=repr(exc)[:300])

    def succeeded(self) -> None:
        if self._down_since is not None:
            _log.info(
                "limit_store_recovered",
                check=self._check,
                down_seconds=round(time.monotonic() - self._down_since, 3),
            )
            self._down_since = None


class Windows(Protocol):
    """Moving windows: ``limits``' strategy over one storage."""

    async def hit(self, item: limits.RateLimitItem, *identifiers: str, cost: int = 1) -> bool: ...

    async def get_window_stats(self, item: limits.RateLimitItem, *identifiers: str) -> WindowStats: ...

    async def close(self) -> None: ...


class StoreWindows(Windows):
    """Over an async storage (Redis): one round trip per hit."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._strategy = MovingWindowRateLimiter(storage)

    async def hit(self, item: limits.RateLimitItem, *identifiers: str, cost: int = 1) -> bool:
        return await self._strategy.hit(item, *identifiers, cost=cost)

    async def get_window_stats(self, item: limits.RateLimitItem, *identifiers: str) -> WindowStats:
        return await self._strategy.get_window_stats(item, *identifiers)

    async def close(self) -> None:
        client = getattr(getattr(self._storage, "bridge", None), "storage", None)  # RedisStorage's client
        if client is not None:
            await client.aclose()


class MemoryWindows(Windows):
    """Moving windows in this process: per key, the times of its hits within the window, oldest first.

    A hit drops the hits that left the window from the front of its key's deque and appends one: O(1)
    amortised, no lock (one event loop), no thread. (``limits``' ``MemoryStorage`` inserted each hit at
    the front of a list, O(hits in the window), and started an expiry thread whenever its last one had
    finished: at a few thousand requests a second that was a thread start every 10 ms, and the event
    loop waiting on the GIL; ``bench.layers`` measured it.) Keys whose hits all left their window are
    forgotten by a sweep every ``SWEEP_EVERY`` hits, so memory follows the active subjects only.
    """

    SWEEP_EVERY = 4096

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._hits: dict[str, tuple[float, deque[float]]] = {}  # key -> (window seconds, hit times)
        self._entries: dict[tuple[Any, tuple[str, ...]], tuple[float, deque[float]]] = {}  # the same, by hit
        self._until_sweep = self.SWEEP_EVERY

    def _recent(self, item: limits.RateLimitItem, identifiers: tuple[str, ...], now: float) -> deque[float]:
        # By (item, identifiers) first: ``limits``' ``key_for`` builds the same string on every hit.
        entry = self._entries.get((item, identifiers))
        if entry is None:
            key = item.key_for(*identifiers)
            entry = self._hits.get(key)
            if entry is None:
                entry = self._hits[key] = (item.get_expiry(), deque())
            self._entries[(item, identifiers)] = entry
        expiry = entry[0]
        times = entry[1]
        oldest = now - expiry
        while times and times[0] <= oldest:
            times.popleft()
        return times

    async def hit(self, item: limits.RateLimitItem, *identifiers: str, cost: int = 1) -> bool:
        now = self._clock()
        self._until_sweep -= 1
        if self._until_sweep <= 0:
            self._sweep(now)
        times = self._recent(item, identifiers, now)
        if len(times) + cost > item.amount:
            return False
        times.extend([now] * cost)
        return True

    async def get_window_stats(self, item: limits.RateLimitItem, *identifiers: str) -> WindowStats:
        now = self._clock()
        times = self._recent(item, identifiers, now)
        if not times:
            return WindowStats(now, item.amount)
        # The window frees a hit when its oldest counted hit leaves it (what ``limits`` reports too).
        return WindowStats(times[0] + item.get_expiry(), item.amount - len(times))

    def _sweep(self, now: float) -> None:
        self._until_sweep = self.SWEEP_EVERY
        stale = [key for key, (expiry, times) in self._hits.items() if not times or times[-1] <= now - expiry]
        for key in stale:
            del self._hits[key]
        self._entries.clear()  # refilled from ``_hits`` on the next hit of each live key

    async def close(self) -> None:
        self._hits.clear()
        self._entries.clear()


class RateLimiter:
    """Checks (and counts) one hit of a named limit for a subject; raises ``RateLimited`` when over."""

    def __init__(self, windows: Windows, settings: LimitSettings, *, name: str) -> None:
        self.name = name
        self._strategy = windows
        self._items: dict[str, limits.RateLimitItem] = {
            limit: limits.parse(value) for limit, value in settings.rate_limits().items()
        }
        self._limited = {limit: metrics.RATE_LIMITED.labels(limit) for limit in self._items}
        self._health = StoreHealth("rate")
        self._trusted = trusted_networks(settings.trusted_proxies)

    def item(self, limit: LimitName) -> limits.RateLimitItem:
        return self._items[limit]

    async def hit(self, limit: LimitName, subject: str, *, cost: int = 1) -> None:
        """Count ``cost`` hits (an album counts one per image); ``RateLimited`` when the subject is over
        ``limit``. Fails open."""
        if self._health.skipping():
            return
        item = self._items[limit]
        try:
            allowed = await self._strategy.hit(item, limit, subject, cost=cost)
            if allowed:
                self._health.succeeded()
                return
            stats = await self._strategy.get_window_stats(item, limit, subject)
        except Exception as exc:
            self._health.failed(exc)
            return
        self._health.succeeded()
        self._limited[limit].inc()
        raise RateLimited(limit, item, stats.remaining, stats.reset_time - time.time())

    def subject(self, connection: ASGIConnection[Any, Any, Any, Any], user_id: str | None) -> str:
        """Whom a hit counts against: ``user:{id}``, or ``ip:{address}`` before there is a user."""
        if user_id is not None:
            return f"user:{user_id}"
        return f"ip:{client_ip(connection.scope, self._trusted)}"

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self._strategy.close()


def trusted_networks(proxies: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(proxy, strict=False) for proxy in proxies)


def client_ip(scope: Any, trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()) -> str:
    """The client's address: the peer, or, when the peer is a trusted proxy, the right-most address of
    ``X-Forwarded-For`` that is not itself a trusted proxy (what a client cannot forge)."""
    client = scope.get("client")
    peer = str(client[0]) if client else "unknown"
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    forwarded: list[str] = [
        part.strip()
        for name, value in scope.get("headers", ())
        if name == b"x-forwarded-for"
        for part in value.decode("latin-1").split(",")
        if part.strip()
    ]
    for address in reversed(forwarded):
        if not _is_trusted(address, trusted):
            return address
    return forwarded[0] if forwarded else peer


def _is_trusted(address: str, trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def redis_storage_uri(url: str) -> str:
    """``limits``' async scheme for a Redis URL (``redis://`` -> ``async+redis://``)."""
    return url if url.startswith("async+") else f"async+{url}"


def in_process(settings: LimitSettings) -> RateLimiter:
    """Moving windows in this process's memory: the embedded store, and what is local whatever the store
    (the frames of one socket)."""
    return RateLimiter(MemoryWindows(), settings, name="memory")


class _RedisOptions(TypedDict, total=False):
    socket_connect_timeout: float
    socket_timeout: float
    ssl: bool
    ssl_ca_data: str


def create_redis(redis: RedisSettings, limits: LimitSettings) -> RateLimiter:
    """The cloud limiter: moving windows in Redis (REDIS_URL, REDIS_MODE), atomic across replicas.

    Each window is one key, so a Redis Cluster spreads them over its shards with no hash tag.
    """
    from limits.aio.storage import RedisClusterStorage, RedisStorage

    url = redis.address()
    options: _RedisOptions = {
        "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
        "socket_timeout": REDIS_TIMEOUT_SECONDS,
    }
    if url.startswith("rediss:"):  # TLS: the CA that signed the server's certificate, when not trusted
        if redis.tls_ca_cert:
            options["ssl_ca_data"] = redis.tls_ca_cert
        if redis.mode == "cluster":
            options["ssl"] = True  # limits' cluster scheme does not carry rediss:// through
    key_prefix = f"{limits.key_prefix}:{KEY_PREFIX}"
    storage: RedisStorage
    if redis.mode == "cluster":
        storage = RedisClusterStorage(
            "async+redis+cluster://" + url.partition("://")[2],
            implementation="redispy",
            key_prefix=key_prefix,
            **options,
        )
    else:
        storage = RedisStorage(
            redis_storage_uri(url), implementation="redispy", key_prefix=key_prefix, **options
        )
    return RateLimiter(StoreWindows(storage), limits, name="redis")

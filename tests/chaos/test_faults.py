"""Fault injection on the multi-process cloud stack: an open-loop load of image sends, with a member's
socket open, runs through each fault; afterwards nothing may be lost.

Faults: our TCP fault proxy (``faultproxy``) in front of Redis, LocalStack and the Firestore emulator adds
latency, resets connections or blackholes them; a service is ``kill -9``-ed and restarted mid-load; the
message service gets ``SIGTERM`` under load. Short form (``make test``): one fault per backend plus a
consumer ``kill -9`` and a ``SIGTERM``; long form (``make chaos``, ``CHAOS=long``): every mode on every
backend and ``kill -9`` of the message service and the consumer too.

Asserted, and printed as a table (fault x outcome):
* stored messages lost = 0: every send answered 200/201 is listed afterwards;
* notifications lost = 0: every stored message reaches the offline member's device (webhook), eventually;
* duplicate pushes per device per message = 0;
* every send is answered 200/201 or a clean 503 with ``Retry-After`` (never a 500, never a hang); while a
  process is down, its port refuses connections (a load balancer's business), counted apart;
* the member's socket reconnects after each fault and is connected at the end;
* SIGTERM: every request that reached the message service before the signal is answered 200/201.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests import harness
from tests.chaos.cluster import Cluster, running_cluster
from tests.conftest import auth_header, token_for, unique
from tests.consumer.receivers import WebhookReceiver
from tests.e2e.test_spec_flow import jpeg

pytestmark = pytest.mark.e2e

LONG = os.environ.get("CHAOS", "") == "long"
RATE = 5.0 if LONG else 4.0  # sends per second, open loop
PHASE_SECONDS = 8.0 if LONG else 5.0
DEVICE = "carol-phone-chaos-1"
BACKEND_FAULTS = (
    [(b, m) for b in ("redis", "localstack", "firestore") for m in ("latency", "reset", "blackhole")]
    if LONG
    else [("redis", "reset"), ("localstack", "blackhole"), ("firestore", "blackhole")]
)
PROCESS_FAULTS = (
    [("message", "kill -9"), ("notification-consumer", "kill -9"), ("message", "SIGTERM")]
    if LONG
    else [("notification-consumer", "kill -9"), ("message", "SIGTERM")]
)


@dataclass
class Phase:
    name: str
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    stored: list[str] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    sigterm_failed: int = 0
    reconnects: int = 0


@dataclass
class Socket:
    connected: bool = False
    reconnects: int = 0
    events: set[str] = field(default_factory=set)


@pytest.fixture(scope="module")
def webhook() -> WebhookReceiver:
    return WebhookReceiver()


@pytest.fixture(scope="module")
async def cluster(
    redis_backend: harness.Backend,
    localstack: harness.Backend,
    firestore_emulator: harness.Backend,
    webhook: WebhookReceiver,
    serve_module: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Cluster]:
    webhook_url = f"{await serve_module(webhook.app())}/hook"
    async with running_cluster(
        redis=redis_backend.address,
        localstack=localstack.address,
        firestore=firestore_emulator.address,
        webhook_url=webhook_url,
        webhook_secret=webhook.secret,
        workdir=Path(tmp_path_factory.mktemp("chaos")),
        suffix=unique("chaos"),
    ) as running:
        yield running


async def _keep_socket(url: str, state: Socket, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            async with connect(url, open_timeout=5, ping_interval=2, ping_timeout=4) as socket:
                state.connected = True
                while not stop.is_set():
                    try:
                        raw = await asyncio.wait_for(socket.recv(), 0.5)
                    except TimeoutError:
                        continue
                    event = json.loads(raw)
                    if event.get("type") == "message.created":
                        state.events.add(event["message"]["messageId"])
        except Exception:  # noqa: S110 - any close or failure: reconnect, as a client does
            pass
        if stop.is_set():
            return
        state.connected = False
        state.reconnects += 1
        await asyncio.sleep(0.5)


async def _send(http: httpx.AsyncClient, url: str, body: dict[str, Any], phase: Phase, *, t: float) -> None:
    try:
        response = await http.post(url, json=body, headers=auth_header("alice"))
    except httpx.ConnectError:
        phase.outcomes["refused (process down)"] += 1
        return
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        if "kill" in phase.name:  # the process serving it died mid-request: the client retries
            phase.outcomes["refused (process down)"] += 1
            return
        phase.outcomes["no answer"] += 1
        phase.bad.append(f"t={t:.1f} {type(exc).__name__}")
        return
    except httpx.HTTPError as exc:
        phase.outcomes["no answer"] += 1
        phase.bad.append(f"t={t:.1f} {type(exc).__name__}")
        return
    status = response.status_code
    if status in (200, 201):
        phase.outcomes["2xx"] += 1
        phase.stored.append(response.json()["messageId"])
    elif status == 503 and response.headers.get("retry-after"):
        phase.outcomes["503+Retry-After"] += 1
    else:
        phase.outcomes[f"{status}"] += 1
        phase.bad.append(f"t={t:.1f} {status} {response.text[:160]}")


async def _load(
    http: httpx.AsyncClient,
    url: str,
    make_body: Callable[[], dict[str, Any]],
    phase: Phase,
    fault: Callable[[], Coroutine[Any, Any, None]],
) -> None:
    """Open loop: a send every 1/RATE s for PHASE_SECONDS whatever the answers, the fault meanwhile."""
    started = time.monotonic()
    sends: list[asyncio.Task[None]] = []
    fault_task = asyncio.create_task(fault())
    for i in range(int(PHASE_SECONDS * RATE)):
        await asyncio.sleep(max(0.0, started + i / RATE - time.monotonic()))
        sends.append(asyncio.create_task(_send(http, url, make_body(), phase, t=time.monotonic() - started)))
    await fault_task
    await asyncio.gather(*sends)


async def _listed(http: httpx.AsyncClient, message_url: str, cid: str) -> set[str]:
    ids: set[str] = set()
    cursor: str | None = None
    while True:
        params = {"limit": "100", **({"before": cursor} if cursor else {})}
        page = await http.get(
            f"{message_url}/conversations/{cid}/messages", params=params, headers=auth_header("carol")
        )
        assert page.status_code == 200, page.text
        data = page.json()
        ids.update(item["messageId"] for item in data["items"])
        cursor = data.get("nextCursor")
        if not cursor:
            return ids


@pytest.mark.timeout(900 if LONG else 300)
async def test_nothing_is_lost_through_faults(cluster: Cluster, webhook: WebhookReceiver) -> None:
    suite_started = time.monotonic()
    message, upload = cluster.url("message"), cluster.url("upload")
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(30.0), limits=httpx.Limits(max_connections=100)
    ) as http:
        created = await http.post(
            f"{message}/conversations",
            json={"participantIds": ["bob", "carol"]},
            headers=auth_header("alice"),
        )
        assert created.status_code == 201, created.text
        cid = created.json()["conversationId"]
        device = await http.put(
            f"{message}/me/devices/{DEVICE}", json={"platform": "android"}, headers=auth_header("carol")
        )
        assert device.status_code == 200, device.text
        # One uploaded object per send (an image belongs to one message), uploaded before the faults.
        total = (len(BACKEND_FAULTS) + len(PROCESS_FAULTS)) * int(PHASE_SECONDS * RATE) + 16
        image = jpeg((64, 48))
        gate = asyncio.Semaphore(16)

        async def upload_one() -> dict[str, Any]:
            async with gate:
                grant = (
                    await http.post(
                        f"{upload}/conversations/{cid}/images/upload_url",
                        json={"content_type": "image/jpeg"},
                        headers=auth_header("alice"),
                    )
                ).json()
                put = await http.put(
                    grant["upload_url"], content=image, headers={"Content-Type": "image/jpeg"}
                )
                assert put.status_code == 200, put.text
                return dict(grant)

        grants = list(await asyncio.gather(*(upload_one() for _ in range(total))))

        def body() -> dict[str, Any]:
            grant = grants.pop()
            return {
                "content": "chaos",
                "messageType": "image",
                "clientMessageId": uuid.uuid4().hex,
                "metadata": {
                    "object_key": grant["object_key"],
                    "url": grant["file_url"],
                    "content_type": "image/jpeg",
                },
            }

        socket = Socket()
        stop = asyncio.Event()
        ws_url = message.replace("http://", "ws://") + f"/ws?access_token={token_for('bob')}"
        socket_task = asyncio.create_task(_keep_socket(ws_url, socket, stop))
        send_url = f"{message}/conversations/{cid}/messages"
        phases: list[Phase] = []

        for backend, mode in BACKEND_FAULTS:
            phase = Phase(f"{backend} {mode}")
            proxy = cluster.proxies[backend]

            async def backend_fault(proxy: Any = proxy, mode: Any = mode) -> None:
                await asyncio.sleep(1.0)
                proxy.set(mode, latency=0.3 if mode == "latency" else 0.0)
                await asyncio.sleep(PHASE_SECONDS - 2.0)
                proxy.set("pass")

            before = socket.reconnects
            await _load(http, send_url, body, phase, backend_fault)
            phase.reconnects = socket.reconnects - before
            phases.append(phase)

        for service, action in PROCESS_FAULTS:
            phase = Phase(f"{service} {action}")

            async def process_fault(
                service: str = service, action: str = action, phase: Phase = phase
            ) -> None:
                await asyncio.sleep(1.0)
                if action == "kill -9":
                    await cluster.kill9(service)
                    await asyncio.sleep(1.0)
                else:
                    # Requests in flight when SIGTERM lands must all be answered (drain).
                    sigterm_probe = Phase("sigterm in flight")
                    inflight = [
                        asyncio.create_task(_send(http, send_url, body(), sigterm_probe, t=0.0))
                        for _ in range(8)
                    ]
                    # Slow store calls keep them in the server when the signal lands (not still connecting).
                    cluster.proxies["firestore"].set("latency", latency=0.2)
                    await asyncio.sleep(0.4)
                    code = await cluster.sigterm(service)
                    cluster.proxies["firestore"].set("pass")
                    await asyncio.gather(*inflight)
                    phase.sigterm_failed = sum(
                        n for outcome, n in sigterm_probe.outcomes.items() if outcome != "2xx"
                    )
                    phase.stored.extend(sigterm_probe.stored)
                    phase.bad.extend(f"in flight at SIGTERM: {b}" for b in sigterm_probe.bad)
                    phase.outcomes.update({f"sigterm {k}": 0 for k in sigterm_probe.outcomes})
                    print("SIGTERM probes:", dict(sigterm_probe.outcomes))
                    phase.outcomes["SIGTERM exit"] = code or 0
                await cluster.restart(service)

            before = socket.reconnects
            await _load(http, send_url, body, phase, process_fault)
            phase.reconnects = socket.reconnects - before
            phases.append(phase)

        # Eventually: every stored message listed, and pushed once to the offline member's device.
        stored = {m: p.name for p in phases for m in p.stored}
        deadline = time.monotonic() + (120 if LONG else 60)
        while time.monotonic() < deadline:
            pushed = {
                d.json["data"]["messageId"] for d in webhook.accepted() if d.json["deviceToken"] == DEVICE
            }
            if stored.keys() <= pushed:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(2.0)  # late duplicates would land now
        listed = await _listed(http, message, cid)
        socket_ok = socket.connected
        stop.set()
        await socket_task

    per_device = collections.Counter(
        (d.json["deviceToken"], d.json["data"]["messageId"]) for d in webhook.accepted()
    )
    pushed = {m for (token, m) in per_device if token == DEVICE}
    rows = []
    for phase in phases:
        lost_store = [m for m in phase.stored if m not in listed]
        lost_push = [m for m in phase.stored if m not in pushed]
        dups = sum(1 for m in phase.stored if per_device[(DEVICE, m)] > 1)
        rows.append((phase, len(lost_store), len(lost_push), dups))
    elapsed = time.monotonic() - suite_started
    header = (
        f"{'fault':<30}{'sends':>6}{'2xx':>6}{'503+RA':>8}{'refused':>8}{'bad':>5}"
        f"{'lost msg':>9}{'lost push':>10}{'dup push':>9}{'ws reconn':>10}{'SIGTERM fail':>13}"
    )
    lines = [header, "-" * len(header)]
    for phase, n_lost_store, n_lost_push, dups in rows:
        o = phase.outcomes
        sends = sum(n for k, n in o.items() if k != "SIGTERM exit")
        lines.append(
            f"{phase.name:<30}{sends:>6}{o['2xx']:>6}{o['503+Retry-After']:>8}"
            f"{o['refused (process down)']:>8}{len(phase.bad):>5}{n_lost_store:>9}{n_lost_push:>10}{dups:>9}"
            f"{phase.reconnects:>10}{phase.sigterm_failed:>13}"
        )
    lines.append(
        f"socket connected at the end: {socket_ok}; suite {elapsed:.0f} s ({'long' if LONG else 'short'})"
    )
    table = "\n".join(lines)
    print("\n" + table)
    (Path(os.environ.get("CHAOS_REPORT", "/tmp")) / "chaos-table.txt").write_text(table + "\n")

    problems = [f"{p.name}: {b}" for p in phases for b in p.bad]
    assert not problems, "\n".join([table, *problems[:20]])
    assert all(row[1] == 0 for row in rows), table  # stored messages lost
    assert all(row[2] == 0 for row in rows), table  # notifications lost
    assert all(row[3] == 0 for row in rows), table  # duplicate pushes
    assert all(p.sigterm_failed == 0 for p in phases), table
    assert socket_ok, table
    for phase in phases:
        if "kill" in phase.name and phase.name.startswith("message"):
            assert phase.reconnects >= 1, table

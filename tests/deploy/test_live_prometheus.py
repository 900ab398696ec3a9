"""Dashboards and alerts proven on real software.

The four services run as separate processes on real Redis, LocalStack and the Firestore emulator; Debian's
``prometheus`` server scrapes every one of them (1 s interval, the chart's rules file loaded) while the
spec's flow runs: upload URL, PUT, send, socket event, push, proxy. Then Prometheus's HTTP API is asked
every dashboard panel's queries and every rule's expression: each must parse, every panel must return data
(except the few listed below, which need a failure to have any), and every rule must evaluate without
error. Meanwhile an OTLP/HTTP receiver collects the services' spans: one send is followed from its HTTP
span through the bus and the queue to the push.

Everything is on free ports, in temporary directories, with per-run names: runs do not collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from litestar import Litestar, Request, Response, post
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from PIL import Image
from websockets.asyncio.client import connect

from chat_devstack import Stack, free_port, kill_group, wait_until
from tests import harness
from tests.conftest import TEST_SECRET, auth_header, token_for, unique
from tests.consumer.receivers import WebhookReceiver
from tests.deploy.conftest import CHART

# The first test also starts the stack and drives it (two rounds of the spec, then the lifecycle).
pytestmark = [pytest.mark.e2e, pytest.mark.prometheus, pytest.mark.timeout(180)]

ALERTS = CHART / "files" / "alerts.yaml"
DASHBOARDS = CHART / "files" / "dashboards"
NAMESPACE = "chat-live"
SCRAPE_SECONDS = 1
# Panels that legitimately show nothing on a healthy stack: they count failures, and a series of a
# labelled failure counter exists only once that failure happened. Each must still parse and answer a
# well-formed (empty) vector. Keyed by (dashboard file, panel title).
EMPTY_WHEN_HEALTHY: dict[tuple[str, str], str] = {
    ("message.json", "Outbox relay errors by target"): "Redis and SQS never failed",
    ("overview.json", "Since the last successful cleanup"): "the cleanup job (a CronJob pushing to a "
    "Pushgateway) did not run here",
}


# --- an OTLP/HTTP trace receiver -------------------------------------------------------------------------
@dataclass
class ReceivedSpan:
    service: str
    span: Span

    @property
    def attributes(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for attribute in self.span.attributes:
            value = attribute.value
            values[attribute.key] = getattr(value, value.WhichOneof("value") or "string_value")
        return values


@dataclass
class OtlpReceiver:
    spans: list[ReceivedSpan] = field(default_factory=list)

    def app(self) -> Litestar:
        @post("/v1/traces", status_code=200)
        async def traces(request: Request[Any, Any, Any]) -> Response[bytes]:
            export = ExportTraceServiceRequest()
            export.ParseFromString(await request.body())
            for resource_spans in export.resource_spans:
                service = next(
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                )
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(ReceivedSpan(service, span) for span in scope_spans.spans)
            body = ExportTraceServiceResponse().SerializeToString()
            return Response(body, media_type="application/x-protobuf")

        return Litestar([traces])

    def trace(self, trace_id: bytes) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.span.trace_id == trace_id]


# --- Prometheus --------------------------------------------------------------------------------------------
@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]

    def query(self, expr: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        answer: dict[str, Any] = response.json()
        return answer


def _prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        message = "the prometheus server is not installed (make deploy-deps, or apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    return _prometheus_binary()


def _prometheus_config(stack: Stack, release: str) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {
                "job_name": "chat-management",
                # The services label their HTTP metrics with `component` themselves; keep theirs.
                "honor_labels": True,
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{service.port}"],
                        # What the chart's ServiceMonitor adds: namespace (the operator), release, component.
                        "labels": {"namespace": NAMESPACE, "release": release, "component": name},
                    }
                    for name, service in stack.services.items()
                ],
            }
        ],
    }


@contextlib.contextmanager
def running_prometheus(binary: str, config: dict[str, Any], workdir: Path) -> Iterator[Prometheus]:
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = Prometheus(f"http://127.0.0.1:{port}", process)
    try:
        wait_until(lambda: _ready(server), 30, "prometheus")
        yield server
    finally:
        kill_group(process, timeout=10)
        log.close()


def _ready(server: Prometheus) -> bool:
    if server.process.poll() is not None:
        raise RuntimeError(f"prometheus exited with {server.process.returncode}")
    try:
        return httpx.get(f"{server.url}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# --- the stack -------------------------------------------------------------------------------------------
@dataclass
class Live:
    stack: Stack
    prometheus: Prometheus
    otlp: OtlpReceiver
    webhook: WebhookReceiver
    release: str
    sends: list[str] = field(default_factory=list)  # messageIds of the image sends


@pytest.fixture(scope="module")
async def live(
    prometheus_binary: str,
    redis_backend: harness.Backend,
    localstack: harness.Backend,
    firestore_emulator: harness.Backend,
    serve_module: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Live]:
    webhook, otlp = WebhookReceiver(), OtlpReceiver()
    webhook_url = f"{await serve_module(webhook.app())}/hook"
    otlp_url = await serve_module(otlp.app())
    release = unique("live")
    workdir = Path(tmp_path_factory.mktemp("live"))
    stack = Stack(
        redis_url=redis_backend.address,
        aws_endpoint_url=localstack.address,
        firestore_host=firestore_emulator.address,
        workdir=workdir,
        suffix=release,
        extra_env={
            "AUTH_JWT_SECRET": TEST_SECRET,
            "PUSH_PROVIDER": "webhook",
            "PUSH_WEBHOOK_URL": webhook_url,
            "PUSH_WEBHOOK_SECRET": webhook.secret,
            "SQS_WAIT_SECONDS": "1",
            "SHUTDOWN_DRAIN_SECONDS": "1",
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_url,
            "OTEL_TRACES_SAMPLER": "parentbased_always_on",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        },
    )
    await asyncio.to_thread(stack.start)
    try:
        with running_prometheus(
            prometheus_binary, _prometheus_config(stack, release), workdir / "prom"
        ) as prom:
            yield Live(stack, prom, otlp, webhook, release)
    finally:
        await asyncio.to_thread(stack.stop)


def jpeg(size: tuple[int, int] = (320, 240)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color=(200, 60, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


async def _walk_the_spec(live: Live, http: httpx.AsyncClient, round_: int) -> None:
    """The spec's flow once, plus the client mistakes the dashboards count."""
    upload, message = live.stack.url("upload"), live.stack.url("message")
    created = await http.post(
        f"{message}/conversations", json={"participantIds": ["bob", "carol"]}, headers=auth_header("alice")
    )
    assert created.status_code == 201, created.text
    cid = created.json()["conversationId"]
    device = await http.put(
        f"{message}/me/devices/carol-phone-{round_}",
        json={"platform": "android"},
        headers=auth_header("carol"),
    )
    assert device.status_code in (200, 201, 204), device.text
    ws_url = message.replace("http://", "ws://") + f"/ws?access_token={token_for('bob')}"
    async with connect(ws_url) as bob:
        assert json.loads(await asyncio.wait_for(bob.recv(), 10))["type"] == "session.ready"
        grant = await http.post(
            f"{upload}/conversations/{cid}/images/upload_url",
            json={"content_type": "image/jpeg"},
            headers=auth_header("alice"),
        )
        assert grant.status_code == 200, grant.text
        data = jpeg()
        put = await http.put(grant.json()["upload_url"], content=data, headers={"Content-Type": "image/jpeg"})
        assert put.status_code == 200, put.text
        body: dict[str, Any] = {
            "content": "look",
            "messageType": "image",
            "metadata": {
                "object_key": grant.json()["object_key"],
                "url": grant.json()["file_url"],
                "content_type": "image/jpeg",
            },
        }
        sent = await http.post(
            f"{message}/conversations/{cid}/messages", json=body, headers=auth_header("alice")
        )
        assert sent.status_code == 201, sent.text
        live.sends.append(sent.json()["messageId"])
        assert json.loads(await asyncio.wait_for(bob.recv(), 5))["type"] == "message.created"
        text = await http.post(
            f"{message}/conversations/{cid}/messages",
            json={"content": "hi", "messageType": "text"},
            headers=auth_header("bob"),
        )
        assert text.status_code == 201, text.text
        read = await http.post(
            f"{message}/conversations/{cid}/messages/{sent.json()['messageId']}/read",
            headers=auth_header("bob"),
        )
        assert read.status_code < 300, read.text
    # Mistakes the dashboards break down by reason: an image that was never uploaded, a stranger's ask.
    missing = {**body, "metadata": {**body["metadata"], "object_key": body["metadata"]["object_key"] + "x"}}
    refused = await http.post(
        f"{message}/conversations/{cid}/messages", json=missing, headers=auth_header("alice")
    )
    assert 400 <= refused.status_code < 500, refused.text
    stranger = await http.post(
        f"{upload}/conversations/{cid}/images/upload_url",
        json={"content_type": "image/jpeg"},
        headers=auth_header("mallory"),
    )
    assert stranger.status_code in (403, 404), stranger.text
    viewed = await http.get(grant.json()["file_url"], headers=auth_header("carol"), follow_redirects=True)
    # The media processor's sanitized copy (the proxy waits for it): the same picture, not the same bytes.
    assert viewed.status_code == 200
    assert viewed.headers["content-type"] == "image/jpeg"
    assert viewed.content.startswith(b"\xff\xd8\xff")
    denied = await http.get(grant.json()["file_url"], headers=auth_header("mallory"))
    assert denied.status_code in (403, 404)
    listed = await http.get(f"{message}/conversations/{cid}/messages", headers=auth_header("carol"))
    assert listed.status_code == 200


async def _walk_the_lifecycle(live: Live, http: httpx.AsyncClient) -> None:
    """An edit, a forward, an unsend of an image (its bytes erased) and an operator's export: what the
    dashboards' lifecycle row counts."""
    upload, message = live.stack.url("upload"), live.stack.url("message")
    cids = []
    for _ in range(2):
        created = await http.post(
            f"{message}/conversations", json={"participantIds": ["bob"]}, headers=auth_header("dora")
        )
        assert created.status_code == 201, created.text
        cids.append(created.json()["conversationId"])
    cid, other = cids
    text = await http.post(
        f"{message}/conversations/{cid}/messages",
        json={"content": "helo", "messageType": "text"},
        headers=auth_header("dora"),
    )
    assert text.status_code == 201, text.text
    text_url = f"{message}/conversations/{cid}/messages/{text.json()['messageId']}"
    edited = await http.patch(text_url, json={"content": "hello"}, headers=auth_header("dora"))
    assert edited.status_code == 200, edited.text
    forwarded = await http.post(
        f"{text_url}/forward", json={"conversationId": other}, headers=auth_header("dora")
    )
    assert forwarded.status_code == 201, forwarded.text
    grant = await http.post(
        f"{upload}/conversations/{cid}/images/upload_url",
        json={"content_type": "image/jpeg"},
        headers=auth_header("dora"),
    )
    assert grant.status_code == 200, grant.text
    put = await http.put(grant.json()["upload_url"], content=jpeg(), headers={"Content-Type": "image/jpeg"})
    assert put.status_code == 200, put.text
    metadata = {
        "object_key": grant.json()["object_key"],
        "url": grant.json()["file_url"],
        "content_type": "image/jpeg",
    }
    photo = await http.post(
        f"{message}/conversations/{cid}/messages",
        json={"messageType": "image", "metadata": metadata},
        headers=auth_header("dora"),
    )
    assert photo.status_code == 201, photo.text
    unsent = await http.delete(
        f"{message}/conversations/{cid}/messages/{photo.json()['messageId']}", headers=auth_header("dora")
    )
    assert unsent.status_code == 204, unsent.text
    operator = {"Authorization": f"Bearer {token_for('ops', roles=['chat-admin'])}"}
    job = await http.post(f"{message}/admin/users/dora/export", headers=operator)
    assert job.status_code == 202, job.text
    async with asyncio.timeout(20):
        while True:
            status = await http.get(f"{message}/admin/jobs/{job.json()['jobId']}", headers=operator)
            if status.json()["status"] == "done":
                break
            assert status.json()["status"] in ("queued", "running"), status.text
            await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
async def driven(live: Live) -> Live:
    """Two rounds a few scrapes apart: counters born in the first have a rate by the end of the second."""
    async with httpx.AsyncClient(timeout=20) as http:
        for round_ in range(2):
            await _walk_the_spec(live, http, round_)
            async with asyncio.timeout(20):
                while len(live.webhook.accepted()) < round_ + 1:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(3 * SCRAPE_SECONDS)
        await _walk_the_lifecycle(live, http)
    # Every target scraped after the last request, and the rules evaluated on that.
    await asyncio.sleep(3 * SCRAPE_SECONDS)
    return live


# --- queries ---------------------------------------------------------------------------------------------
def panel_queries(release: str) -> list[tuple[str, str, str]]:
    """(dashboard, panel title, PromQL as Grafana sends it) for every panel target."""
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                found.append((path.name, panel["title"], grafana_expand(target["expr"], release)))
    return found


def grafana_expand(expr: str, release: str) -> str:
    # $__rate_interval spans the whole run (at least four scrapes, as Grafana makes sure); $namespace and
    # $release are the dashboard's variables, here the one namespace and release scraped.
    return (
        expr.replace("$__rate_interval", "5m").replace("$namespace", NAMESPACE).replace("$release", release)
    )


def rules() -> list[tuple[str, str]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [(rule.get("alert") or rule["record"], rule["expr"]) for g in groups for rule in g["rules"]]


async def test_every_dashboard_panel_returns_data_from_a_real_prometheus(driven: Live) -> None:
    queries = panel_queries(driven.release)
    assert len(queries) > 60
    empty, broken = [], []
    answered: dict[tuple[str, str], bool] = {}  # a panel shows data when any of its queries does
    for dashboard, title, expr in queries:
        answer = await asyncio.to_thread(driven.prometheus.query, expr)
        if answer.get("status") != "success":
            broken.append((dashboard, title, answer.get("error")))
            continue
        assert answer["data"]["resultType"] == "vector"
        answered[(dashboard, title)] = answered.get((dashboard, title), False) or bool(
            answer["data"]["result"]
        )
    proven = {panel for panel, has_data in answered.items() if has_data}
    empty = [
        panel for panel, has_data in answered.items() if not has_data and panel not in EMPTY_WHEN_HEALTHY
    ]
    assert not broken, broken
    assert not empty, "\n".join(map(str, empty))
    # The exemptions are real: each names a panel that exists and stayed empty.
    assert not (set(EMPTY_WHEN_HEALTHY) & proven), set(EMPTY_WHEN_HEALTHY) & proven
    assert set(EMPTY_WHEN_HEALTHY) <= set(answered)
    print(
        f"\nlive Prometheus: {len(proven)} of {len(answered)} panels with data, {len(queries)} queries parsed"
    )


async def test_every_rule_parses_and_evaluates_on_a_real_prometheus(driven: Live) -> None:
    checked = 0
    for name, expr in rules():
        answer = await asyncio.to_thread(driven.prometheus.query, expr)
        assert answer.get("status") == "success", (name, answer.get("error"))
        checked += 1
    # Prometheus itself loaded the file and evaluates every rule without error.
    loaded = httpx.get(f"{driven.prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    evaluated = [rule for group in loaded for rule in group["rules"]]
    assert len(evaluated) == checked
    assert all(rule["health"] == "ok" for rule in evaluated), [r for r in evaluated if r["health"] != "ok"]
    # The SLO recording rules see this release's traffic, per release and component.
    answer = driven.prometheus.query(f'chat:http_errors:ratio_rate5m{{release="{driven.release}"}}')
    components = {s["metric"]["component"] for s in answer["data"]["result"]}
    assert {"upload", "message", "image-proxy"} <= components
    # Nothing fires on a healthy stack; in particular every queue worker counts as up.
    firing = driven.prometheus.query('ALERTS{alertstate="firing"}')["data"]["result"]
    assert firing == [], firing
    print(f"\nlive Prometheus: {checked} rules evaluated")


async def test_one_send_is_one_trace_from_the_http_span_to_the_push(driven: Live) -> None:
    otlp = driven.otlp

    def server_span_of_send() -> ReceivedSpan | None:
        for received in otlp.spans:
            if (
                received.service == "message"
                and received.span.kind == Span.SPAN_KIND_SERVER
                and received.span.name == "POST /conversations/{conversation_id}/messages"
                and received.attributes.get("http.response.status_code") == 201
                and any(
                    s.span.kind == Span.SPAN_KIND_CLIENT and s.span.name.startswith("push")
                    for s in otlp.trace(received.span.trace_id)
                )
            ):
                return received
        return None

    deadline = time.monotonic() + 15
    while (root := server_span_of_send()) is None and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert root is not None, sorted({(s.service, s.span.name) for s in otlp.spans})
    spans = otlp.trace(root.span.trace_id)
    by_id = {s.span.span_id: s for s in spans}

    def ancestors(span: ReceivedSpan) -> list[str]:
        chain = []
        while span.span.parent_span_id in by_id:
            span = by_id[span.span.parent_span_id]
            chain.append(f"{span.service}:{span.span.name}")
        return chain

    (push,) = [s for s in spans if s.span.kind == Span.SPAN_KIND_CLIENT and s.span.name.startswith("push")]
    assert push.service == "notification-consumer"
    chain = ancestors(push)
    # push <- the queue's consumer <- the enqueue <- ... <- the HTTP send.
    assert chain[-1] == f"message:{root.span.name}", chain
    kinds = {(s.service, s.span.kind) for s in spans}
    assert ("notification-consumer", Span.SPAN_KIND_CONSUMER) in kinds
    assert ("message", Span.SPAN_KIND_PRODUCER) in kinds  # publish on the bus, enqueue on the queue
    producers = {s.span.name for s in spans if s.span.kind == Span.SPAN_KIND_PRODUCER}
    assert any(name.startswith("publish") for name in producers), producers
    assert any(name.startswith("enqueue") for name in producers), producers
    # Client spans for the backends the send used: S3 (the object check), Firestore, Redis, SQS.
    clients = {s.span.name for s in spans if s.span.kind == Span.SPAN_KIND_CLIENT}
    assert any("firestore" in name.lower() for name in clients), clients
    assert any(name.split()[0] in {"GET", "HEAD", "POST"} for name in clients), clients
    # The server span carries the HTTP semantic conventions.
    attributes = root.attributes
    assert attributes["http.request.method"] == "POST"
    assert re.fullmatch(r"/conversations/[^/]+/messages", attributes["url.path"])
    assert attributes["http.route"] == "/conversations/{conversation_id}/messages"
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["url.scheme"] == "http"
    print(f"\ntrace of a send: {len(spans)} spans over {len({s.service for s in spans})} services")

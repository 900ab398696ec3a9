"""Generate the Grafana dashboards of the Helm chart (``files/dashboards/*.json``).

    uv run python deploy/grafana/dashboards.py           # write them
    uv run python deploy/grafana/dashboards.py --check   # exit 1 when the files are stale

Dashboards are code so that every panel is a small, reviewable query over the metrics declared in
``chat_core/metrics.py``; ``tests/deploy`` checks that the files are current and that every metric they
query is in a real scrape of the services. Each has a ``datasource`` variable, a fixed ``uid`` and uses
``$__rate_interval``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parents[1] / "helm" / "chat-management" / "files" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Two releases in one namespace are told apart by `release` (the ServiceMonitor sets it).
NS = 'namespace=~"$namespace", release=~"$release"'
# Health, readiness and scrapes are not traffic.
API = f'{NS}, route!~"/healthz|/readyz|/metrics"'
RATE = "$__rate_interval"
RELEASES = 'label_values(chat_http_requests_total{namespace=~"$namespace"}, release)'


@dataclass
class Panel:
    title: str
    targets: list[tuple[str, str]]  # (expr, legend)
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"
    description: str = ""
    stack: bool = False


@dataclass
class Row:
    title: str
    panels: list[Panel] = field(default_factory=list)


@dataclass
class Dashboard:
    uid: str
    title: str
    description: str
    rows: list[Row]
    tags: list[str] = field(default_factory=lambda: ["chat-management"])


# --- reusable panels -----------------------------------------------------------------------------
def red_row(component: str | None) -> Row:
    """Requests, errors, duration: per route for one component, per component for the overview."""
    scope = f'{API}, component="{component}"' if component else API
    by = "route, method" if component else "component"
    legend = "{{method}} {{route}}" if component else "{{component}}"
    return Row(
        "Requests, errors, duration",
        [
            Panel(
                "Request rate",
                [(f"sum by ({by}) (rate(chat_http_requests_total{{{scope}}}[{RATE}]))", legend)],
                unit="reqps",
            ),
            Panel(
                "Server error ratio (5xx)",
                [
                    (
                        # `or 0 * all`: a route without a single 5xx shows 0, not "no data".
                        f'(sum by ({by}) (rate(chat_http_requests_total{{{scope}, status=~"5.."}}[{RATE}]))'
                        f" or 0 * sum by ({by}) (rate(chat_http_requests_total{{{scope}}}[{RATE}])))"
                        f" / sum by ({by}) (rate(chat_http_requests_total{{{scope}}}[{RATE}]))",
                        legend,
                    )
                ],
                unit="percentunit",
            ),
            Panel(
                "Client error rate (4xx)",
                [
                    (
                        f'sum by ({by}, status) (rate(chat_http_requests_total{{{scope}, status=~"4.."}}'
                        f"[{RATE}]))",
                        f"{legend} {{{{status}}}}",
                    )
                ],
                unit="reqps",
            ),
            Panel(
                "Latency p50 / p95 / p99",
                [
                    (
                        f"histogram_quantile({q}, sum by (le, {by}) (rate("
                        f'chat_http_request_duration_seconds_bucket{{{scope}, method!="WS"}}[{RATE}])))',
                        f"p{int(q * 100)} {legend}",
                    )
                    for q in (0.5, 0.95, 0.99)
                ],
                unit="s",
            ),
            Panel(
                "Requests faster than the 0.5 s objective",
                [
                    (
                        f'sum by ({by}) (rate(chat_http_request_duration_seconds_bucket{{{scope}, le="0.5", '
                        f'method!="WS"}}[{RATE}])) / sum by ({by}) (rate('
                        f'chat_http_request_duration_seconds_count{{{scope}, method!="WS"}}[{RATE}]))',
                        legend,
                    )
                ],
                unit="percentunit",
                description="The latency SLO is 99% (see the ChatLatencySloBurn alerts).",
            ),
            Panel(
                "In-flight requests",
                [
                    (
                        f"sum by (component) (chat_http_requests_in_flight{{{NS}"
                        + (f', component="{component}"' if component else "")
                        + "})",
                        "{{component}}",
                    )
                ],
            ),
        ],
    )


def uploads_row() -> Row:
    return Row(
        "Upload URLs",
        [
            Panel(
                "Upload URLs issued and refused",
                [
                    (f"sum(rate(chat_upload_urls_issued_total{{{NS}}}[{RATE}]))", "issued"),
                    (
                        f"sum by (reason) (rate(chat_upload_urls_refused_total{{{NS}}}[{RATE}]))",
                        "refused: {{reason}}",
                    ),
                ],
                unit="reqps",
            ),
            Panel(
                "Upload URL success ratio",
                [
                    (
                        f"sum(rate(chat_upload_urls_issued_total{{{NS}}}[{RATE}])) / "
                        f"(sum(rate(chat_upload_urls_issued_total{{{NS}}}[{RATE}])) + "
                        f"sum(rate(chat_upload_urls_refused_total{{{NS}}}[{RATE}])))",
                        "success",
                    )
                ],
                unit="percentunit",
            ),
        ],
    )


# Rejected uploads over all that landed; `or 0 * all`: no rejection shows 0, not "no data".
UPLOAD_FAILURE_RATIO = (
    f'(sum(rate(chat_uploads_total{{{NS}, result="rejected"}}[{RATE}]))'
    f" or 0 * sum(rate(chat_uploads_total{{{NS}}}[{RATE}])))"
    f" / sum(rate(chat_uploads_total{{{NS}}}[{RATE}]))"
)


def landed_row() -> Row:
    """Uploads as they land in the store (the media processor, from object-created events)."""
    return Row(
        "Uploads landed",
        [
            Panel(
                "Uploads stored and rejected by reason",
                [
                    (
                        f"sum by (result, reason) (rate(chat_uploads_total{{{NS}}}[{RATE}]))",
                        "{{result}}: {{reason}}",
                    )
                ],
                unit="ops",
                stack=True,
                description="Rejected: deleted on arrival (oversize, not an image, too many pixels).",
            ),
            Panel("Upload failure ratio", [(UPLOAD_FAILURE_RATIO, "rejected")], unit="percentunit"),
            Panel(
                "Upload duration p50 / p95 (URL issued -> object stored)",
                [
                    (
                        f"histogram_quantile({q}, sum by (le) "
                        f"(rate(chat_upload_duration_seconds_bucket{{{NS}}}[{RATE}])))",
                        f"p{int(q * 100)}",
                    )
                    for q in (0.5, 0.95)
                ],
                unit="s",
            ),
            Panel(
                "Average and p95 upload size",
                [
                    (
                        f"sum(rate(chat_upload_size_bytes_sum{{{NS}}}[{RATE}])) / "
                        f"sum(rate(chat_upload_size_bytes_count{{{NS}}}[{RATE}]))",
                        "average",
                    ),
                    (
                        f"histogram_quantile(0.95, sum by (le) (rate(chat_upload_size_bytes_bucket{{{NS}}}"
                        f"[{RATE}])))",
                        "p95",
                    ),
                ],
                unit="bytes",
            ),
        ],
    )


def images_row() -> Row:
    return Row(
        "Image messages",
        [
            Panel(
                "Messages sent by type",
                [(f"sum by (type) (rate(chat_messages_sent_total{{{NS}}}[{RATE}]))", "{{type}}")],
                unit="reqps",
                stack=True,
            ),
            Panel(
                "Image messages rejected by reason",
                [
                    (
                        f"sum by (reason) (rate(chat_image_messages_rejected_total{{{NS}}}[{RATE}]))",
                        "{{reason}}",
                    )
                ],
                unit="reqps",
                stack=True,
            ),
            Panel(
                "Upload-to-send latency p50 / p95",
                [
                    (
                        f"histogram_quantile({q}, sum by (le) "
                        f"(rate(chat_image_upload_to_send_seconds_bucket{{{NS}}}[{RATE}])))",
                        f"p{int(q * 100)}",
                    )
                    for q in (0.5, 0.95)
                ],
                unit="s",
                description="From the object's upload to the send that references it.",
            ),
            Panel(
                "Average and p95 image size",
                [
                    (
                        f"sum(rate(chat_image_size_bytes_sum{{{NS}}}[{RATE}])) / "
                        f"sum(rate(chat_image_size_bytes_count{{{NS}}}[{RATE}]))",
                        "average",
                    ),
                    (
                        f"histogram_quantile(0.95, sum by (le) (rate(chat_image_size_bytes_bucket{{{NS}}}"
                        f"[{RATE}])))",
                        "p95",
                    ),
                ],
                unit="bytes",
            ),
            Panel(
                "Images per image message (average, p95)",
                [
                    (
                        f"sum(rate(chat_images_per_message_sum{{{NS}}}[{RATE}])) / "
                        f"sum(rate(chat_images_per_message_count{{{NS}}}[{RATE}]))",
                        "average",
                    ),
                    (
                        f"histogram_quantile(0.95, sum by (le) (rate(chat_images_per_message_bucket{{{NS}}}"
                        f"[{RATE}])))",
                        "p95",
                    ),
                ],
                unit="short",
                description="1: a single image; 2..MAX_IMAGES_PER_MESSAGE: an album.",
            ),
        ],
    )


def storage_row() -> Row:
    # The storage gauges come from the shared ledger: every media-processor replica exports the same
    # value, so max(), never sum(). The cleanup panels are pushed by the CronJob to a Pushgateway (no
    # namespace label of the release's own).
    return Row(
        "Storage",
        [
            Panel(
                "Stored bytes by kind",
                [(f"max by (kind) (chat_storage_bytes{{{NS}}})", "{{kind}}")],
                unit="bytes",
                stack=True,
            ),
            Panel(
                "Stored objects by kind",
                [(f"max by (kind) (chat_storage_objects{{{NS}}})", "{{kind}}")],
                stack=True,
            ),
            Panel(
                "Storage growth per day (last 6 h's rate)",
                [(f"max by (kind) (deriv(chat_storage_bytes{{{NS}}}[6h])) * 86400", "{{kind}}")],
                unit="bytes",
            ),
            Panel(
                "Orphans deleted by the last run",
                [
                    ("max(chat_orphan_objects_deleted_total)", "objects"),
                    ("max(chat_orphan_bytes_deleted_total)", "bytes"),
                ],
                kind="stat",
            ),
            Panel(
                "Since the last successful cleanup",
                [("time() - max(chat_cleanup_last_success_timestamp_seconds > 0)", "age")],
                unit="s",
                kind="stat",
            ),
        ],
    )


def realtime_row() -> Row:
    return Row(
        "Real-time and outbox",
        [
            Panel(
                "Open WebSockets",
                [(f"sum(chat_websocket_connections{{{NS}}})", "sockets")],
            ),
            Panel(
                "Events published by type",
                [(f"sum by (type) (rate(chat_events_published_total{{{NS}}}[{RATE}]))", "{{type}}")],
                unit="ops",
            ),
            Panel(
                "Outbox depth and oldest entry",
                [
                    (f"max(chat_outbox_depth{{{NS}}})", "pending entries"),
                    (f"max(chat_outbox_oldest_age_seconds{{{NS}}})", "oldest (s)"),
                ],
                description="Stored messages whose publish or enqueue is still to do.",
            ),
            Panel(
                "Outbox relay errors by target",
                [
                    (
                        f"sum by (target) (rate(chat_outbox_relay_errors_total{{{NS}}}[{RATE}]))",
                        "{{target}}",
                    )
                ],
                unit="ops",
            ),
        ],
    )


def notifications_row() -> Row:
    return Row(
        "Notifications",
        [
            Panel(
                "Notification jobs enqueued",
                [(f"sum(rate(chat_notifications_enqueued_total{{{NS}}}[{RATE}]))", "enqueued")],
                unit="ops",
            ),
            Panel(
                "Pushes sent and failed",
                [
                    (
                        f"sum by (provider) (rate(chat_notifications_sent_total{{{NS}}}[{RATE}]))",
                        "sent {{provider}}",
                    ),
                    (
                        f"sum by (provider, reason) (rate(chat_notifications_failed_total{{{NS}}}[{RATE}]))",
                        "failed {{provider}}: {{reason}}",
                    ),
                ],
                unit="ops",
            ),
            Panel(
                "Retried and dead-lettered",
                [
                    (f"sum(rate(chat_notifications_retried_total{{{NS}}}[{RATE}]))", "retried"),
                    (f"sum(rate(chat_notifications_dead_lettered_total{{{NS}}}[{RATE}]))", "dead-lettered"),
                ],
                unit="ops",
            ),
            Panel(
                "Queue age p50 / p95",
                [
                    (
                        f"histogram_quantile({q}, sum by (le) "
                        f"(rate(chat_notification_queue_age_seconds_bucket{{{NS}}}[{RATE}])))",
                        f"p{int(q * 100)}",
                    )
                    for q in (0.5, 0.95)
                ],
                unit="s",
            ),
            Panel(
                "Queue depth (main, dead-letter)",
                [(f"max by (queue) (chat_notification_queue_messages{{{NS}}})", "{{queue}}")],
            ),
        ],
    )


def media_row() -> Row:
    return Row(
        "Media pipeline",
        [
            Panel(
                "Jobs by outcome and reason",
                [
                    (
                        f"sum by (outcome, reason) (rate(chat_media_jobs_total{{{NS}}}[{RATE}]))",
                        "{{outcome}}: {{reason}}",
                    )
                ],
                unit="ops",
                stack=True,
            ),
            Panel(
                "Failure ratio",
                [
                    (
                        f'(sum(rate(chat_media_jobs_total{{{NS}, outcome="failed"}}[{RATE}])) '
                        "or vector(0)) / "
                        f'sum(rate(chat_media_jobs_total{{{NS}, outcome=~"ready|failed"}}[{RATE}]))',
                        "failed",
                    )
                ],
                unit="percentunit",
            ),
            Panel(
                "Processing seconds p50 / p95 / p99",
                [
                    (
                        f"histogram_quantile({q}, sum by (le) "
                        f"(rate(chat_media_processing_seconds_bucket{{{NS}}}[{RATE}])))",
                        f"p{int(q * 100)}",
                    )
                    for q in (0.5, 0.95, 0.99)
                ],
                unit="s",
            ),
            Panel(
                "Bytes in (raw) and out (derivatives)",
                [(f"sum by (direction) (rate(chat_media_bytes_total{{{NS}}}[{RATE}]))", "{{direction}}")],
                unit="Bps",
            ),
            Panel(
                "Pixels per image p50 / p95",
                [
                    (
                        f"histogram_quantile({q}, sum by (le) "
                        f"(rate(chat_media_pixels_bucket{{{NS}}}[{RATE}])))",
                        f"p{int(q * 100)}",
                    )
                    for q in (0.5, 0.95)
                ],
            ),
            Panel(
                "Queue age p50 / p95",
                [
                    (
                        f"histogram_quantile({q}, sum by (le) "
                        f"(rate(chat_media_queue_age_seconds_bucket{{{NS}}}[{RATE}])))",
                        f"p{int(q * 100)}",
                    )
                    for q in (0.5, 0.95)
                ],
                unit="s",
            ),
            Panel(
                "Queue depth (main, dead-letter)",
                [(f"max by (queue) (chat_media_queue_messages{{{NS}}})", "{{queue}}")],
            ),
            Panel(
                "Uploads checked on arrival, by verdict",
                [
                    (
                        f"sum by (verdict) (rate(chat_media_uploads_checked_total{{{NS}}}[{RATE}]))",
                        "{{verdict}}",
                    )
                ],
                unit="ops",
                stack=True,
            ),
        ],
    )


def proxy_row() -> Row:
    return Row(
        "Image proxy decisions",
        [
            Panel(
                "Allowed and denied by reason",
                [
                    (
                        f"sum by (decision, reason) (rate(chat_image_proxy_requests_total{{{NS}}}[{RATE}]))",
                        "{{decision}}: {{reason}}",
                    )
                ],
                unit="reqps",
                stack=True,
            ),
            Panel(
                "Denied ratio",
                [
                    (
                        f'sum(rate(chat_image_proxy_requests_total{{{NS}, decision="denied"}}[{RATE}])) / '
                        f"sum(rate(chat_image_proxy_requests_total{{{NS}}}[{RATE}]))",
                        "denied",
                    )
                ],
                unit="percentunit",
            ),
        ],
    )


def workers_row(component: str) -> Row:
    """A queue worker serves no API (its HTTP is health and metrics): show its pods and its intake."""
    scope = f'{NS}, component="{component}"'
    return Row(
        "Workers",
        [
            Panel(
                "Pods up",
                [(f"sum by (namespace, release) (up{{{scope}}})", "{{namespace}}/{{release}}")],
                description="Scraped and answering; 0 or no line fires ChatQueueWorkerDown.",
            ),
            Panel(
                "Jobs received",
                [
                    (
                        f"sum by (namespace, release) (rate(chat_notification_queue_age_seconds_count{{{NS}}}"
                        f"[{RATE}]))",
                        "{{namespace}}/{{release}}",
                    )
                ],
                unit="ops",
                description="Flat while the queue grows fires ChatNotificationQueueNotConsumed.",
            ),
        ],
    )


def membership_row() -> Row:
    return Row(
        "Membership cache",
        [
            Panel(
                "Membership lookups by cache result",
                [
                    (
                        f"sum by (result) (rate(chat_membership_cache_lookups_total{{{NS}}}[{RATE}]))",
                        "{{result}}",
                    )
                ],
                unit="ops",
                stack=True,
            )
        ],
    )


def limits_row() -> Row:
    return Row(
        "Abuse limits",
        [
            Panel(
                "Refused with 429 by limit",
                [(f"sum by (limit) (rate(chat_rate_limited_total{{{NS}}}[{RATE}]))", "{{limit}}")],
                unit="ops",
                stack=True,
                description="Rate limits (rate_limited) and quotas (quota_exceeded), by limit name.",
            ),
            Panel(
                "Limit checks failed open",
                [(f"sum by (check) (rate(chat_rate_limit_errors_total{{{NS}}}[{RATE}]))", "{{check}}")],
                unit="ops",
                description="The limit store (Redis) did not answer: these requests were let through.",
            ),
        ],
    )


DASHBOARDS = [
    Dashboard(
        "chat-mgmt-overview",
        "chat-management / Overview",
        "Every service at a glance: RED per component, uploads (URLs and landed), image messages, "
        "notifications, storage.",
        [red_row(None), uploads_row(), landed_row(), images_row(), notifications_row(), storage_row()],
    ),
    Dashboard(
        "chat-mgmt-upload",
        "chat-management / Upload",
        "POST /conversations/{id}/images/upload_url: presigned URLs issued and refused.",
        [red_row("upload"), uploads_row(), landed_row(), limits_row(), membership_row()],
    ),
    Dashboard(
        "chat-mgmt-message",
        "chat-management / Message",
        "Conversations, messages, image checks, the real-time socket and the outbox.",
        [red_row("message"), images_row(), realtime_row(), limits_row()],
    ),
    Dashboard(
        "chat-mgmt-image-proxy",
        "chat-management / Image proxy",
        "GET /images/{conversation_id}/{object_key}: who was let in, who was not.",
        [red_row("image-proxy"), proxy_row(), membership_row()],
    ),
    Dashboard(
        "chat-mgmt-notifications",
        "chat-management / Notification consumer",
        "The notification queue and the pushes it turns into.",
        [notifications_row(), workers_row("notification-consumer")],
    ),
    Dashboard(
        "chat-mgmt-media",
        "chat-management / Media processor",
        "Raw uploads turned into sanitized originals, previews and thumbnails: outcomes, time, bytes, queue.",
        [media_row(), landed_row()],  # no public HTTP: its only requests are probes and scrapes
    ),
]


# --- Grafana JSON ----------------------------------------------------------------------------------
def _panel_json(panel: Panel, panel_id: int, x: int, y: int, width: int) -> dict[str, Any]:
    targets = [
        {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i)}
        for i, (expr, legend) in enumerate(panel.targets)
    ]
    body: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8 if panel.kind == "timeseries" else 5, "w": width, "x": x, "y": y},
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
    }
    if panel.kind == "timeseries":
        body["fieldConfig"]["defaults"]["custom"] = {
            "drawStyle": "line",
            "fillOpacity": 10,
            "stacking": {"mode": "normal" if panel.stack else "none"},
        }
        body["options"] = {
            "legend": {"displayMode": "list", "placement": "bottom"},
            "tooltip": {"mode": "multi"},
        }
    else:
        body["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"}
    return body


def render(dashboard: Dashboard) -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    next_id, y = 1, 0
    for row in dashboard.rows:
        panels.append(
            {"id": next_id, "type": "row", "title": row.title, "collapsed": False, "panels": [],
             "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}}
        )  # fmt: skip
        next_id, y = next_id + 1, y + 1
        per_line = 4 if all(p.kind == "stat" for p in row.panels) else 2
        width = 24 // per_line
        for index, panel in enumerate(row.panels):
            x = (index % per_line) * width
            if index and index % per_line == 0:
                y += 8
            panels.append(_panel_json(panel, next_id, x, y, width))
            next_id += 1
        y += 8
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": dashboard.tags,
        "editable": False,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "timezone": "utc",
        "graphTooltip": 1,
        "annotations": {"list": []},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                {
                    "name": "namespace",
                    "label": "Namespace",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "query": {"query": "label_values(chat_http_requests_total, namespace)", "refId": "ns"},
                    "definition": "label_values(chat_http_requests_total, namespace)",
                    "includeAll": True,
                    "allValue": ".*",
                    "multi": True,
                    "refresh": 2,
                    "current": {},
                    "hide": 0,
                },
                {
                    "name": "release",
                    "label": "Release",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "query": {"query": RELEASES, "refId": "release"},
                    "definition": RELEASES,
                    "includeAll": True,
                    "allValue": ".*",
                    "multi": True,
                    "refresh": 2,
                    "current": {},
                    "hide": 0,
                },
            ]
        },
        "panels": panels,
    }


def render_all() -> dict[str, str]:
    """File name -> file content, for every dashboard."""
    return {
        f"{d.uid.removeprefix('chat-mgmt-')}.json": json.dumps(render(d), indent=2, sort_keys=True) + "\n"
        for d in DASHBOARDS
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when the files differ from the code")
    args = parser.parse_args(argv)
    wanted = render_all()
    stale = sorted(
        name
        for name, text in wanted.items()
        if not (OUT_DIR / name).exists() or (OUT_DIR / name).read_text() != text
    )
    extra = sorted(p.name for p in OUT_DIR.glob("*.json") if p.name not in wanted)
    if args.check:
        for name in stale + extra:
            print(
                f"stale: {OUT_DIR / name} (run: uv run python deploy/grafana/dashboards.py)", file=sys.stderr
            )
        return 1 if stale or extra else 0
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name in stale:
        (OUT_DIR / name).write_text(wanted[name])
    for name in extra:
        (OUT_DIR / name).unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Traces and the cleanup job's Pushgateway."""

from __future__ import annotations

from typing import Annotated

from chat_core.settings.base import Frozen, env


class TelemetrySettings(Frozen, frozen=True, kw_only=True):
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

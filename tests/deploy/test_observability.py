"""Dashboards and alerts: current, well-formed, tested with promtool, and querying only real metrics."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from chat_management import all as all_in_one
from tests.conftest import make_settings
from tests.deploy.conftest import CHART, load_yaml
from tests.harness import ROOT

ALERTS = CHART / "files" / "alerts.yaml"
DASHBOARD_DIR = CHART / "files" / "dashboards"
RULE_TESTS = sorted((ROOT / "tests" / "deploy").glob("alerts*_test.yaml"))
METRIC_NAME = re.compile(r"\b(chat_[a-zA-Z0-9_]+)\b")
# Series Prometheus itself makes (not exported by the services).
PROMETHEUS_BUILTINS = {"up"}


def _generator() -> ModuleType:
    path = ROOT / "deploy" / "grafana" / "dashboards.py"
    spec = importlib.util.spec_from_file_location("chat_dashboards", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARD_DIR.glob("*.json"))}


def dashboard_queries() -> list[str]:
    queries: list[str] = []
    for dashboard in dashboards().values():
        for panel in dashboard["panels"]:
            queries.extend(target["expr"] for target in panel.get("targets", []))
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                queries.append(variable["definition"])
    return queries


def alert_queries() -> list[str]:
    return [rule["expr"] for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def exported_names(exposition: str) -> set[str]:
    """Every series name a Prometheus scrape of this text would store.

    Labelled metrics with no sample yet still have their ``# TYPE`` line, so names are derived from it:
    counters as ``x_total``, histograms as ``x_bucket``/``x_count``/``x_sum``, gauges as ``x``.
    """
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            if kind == "counter":
                names.add(name if name.endswith("_total") else f"{name}_total")
            elif kind == "histogram":
                names.update(f"{name}{suffix}" for suffix in ("_bucket", "_count", "_sum"))
            elif kind == "summary":
                names.update({name, f"{name}_count", f"{name}_sum"})
            else:
                names.add(name)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


# --- the scrape ------------------------------------------------------------------------------------
@pytest.fixture
async def scraped_names(tmp_path: Path, serve: Any) -> set[str]:
    # Short polls: the consumer's shutdown waits for its in-flight receive (10 s by default).
    settings = make_settings(tmp_path, {"SHUTDOWN_DRAIN_SECONDS": "0.2", "SQS_WAIT_SECONDS": "1"})
    base_url = await serve(all_in_one.create_app(settings))
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    return exported_names(response.text)


async def test_every_metric_a_dashboard_queries_is_exported(scraped_names: set[str]) -> None:
    queried = {name for query in dashboard_queries() for name in METRIC_NAME.findall(query)}
    assert len(queried) > 20
    assert queried - scraped_names == set()


async def test_every_metric_an_alert_queries_is_exported(scraped_names: set[str]) -> None:
    queried = {name for query in alert_queries() for name in METRIC_NAME.findall(query)}
    assert len(queried) > 10
    assert queried - scraped_names == set()


def test_exported_names_derive_counter_histogram_and_gauge_series() -> None:
    exposition = "\n".join(
        [
            "# TYPE chat_x_total counter",
            "# TYPE chat_h histogram",
            "# TYPE chat_g gauge",
            'chat_g{queue="dlq"} 0.0',
        ]
    )
    assert exported_names(exposition) == {
        "chat_x_total",
        "chat_h_bucket",
        "chat_h_count",
        "chat_h_sum",
        "chat_g",
    }


def test_queries_use_only_chat_metrics_or_prometheus_builtins() -> None:
    # A metric outside chat_* would escape the scrape check above.
    keywords = {"and", "or", "unless", "bool", "offset", "on", "ignoring"}
    for query in dashboard_queries() + alert_queries():
        bare = re.sub(r"label_values\(([^,]+),[^)]*\)", r"\1", query)  # Grafana: (metric, label)
        bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right) \([^)]*\)", "", bare)
        bare = re.sub(r'"[^"]*"|\{[^}]*\}|\[[^]]*\]', "", bare)
        series = set(re.findall(r"\b([a-zA-Z_][a-zA-Z0-9_:]*)\b(?!\s*\()", bare)) - keywords
        unknown = {
            name
            for name in series
            if not name.startswith(("chat_", "chat:")) and name not in PROMETHEUS_BUILTINS
        }
        assert not unknown, f"{query!r} uses {unknown}"


# --- dashboards ------------------------------------------------------------------------------------
def test_dashboard_files_are_what_the_generator_makes() -> None:
    wanted = _generator().render_all()
    assert {p.name: p.read_text() for p in DASHBOARD_DIR.glob("*.json")} == wanted, (
        "stale dashboards: run `uv run python deploy/grafana/dashboards.py`"
    )


def test_there_is_an_overview_and_one_dashboard_per_service() -> None:
    assert set(dashboards()) == {
        "overview.json",
        "upload.json",
        "message.json",
        "image-proxy.json",
        "notifications.json",
        "media.json",
    }


def test_every_dashboard_has_a_fixed_uid_and_a_datasource_variable() -> None:
    uids = set()
    for name, dashboard in dashboards().items():
        assert dashboard["uid"].startswith("chat-mgmt-"), name
        assert len(dashboard["uid"]) <= 40, name
        uids.add(dashboard["uid"])
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for panel in dashboard["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == "${datasource}", (name, panel["title"])
    assert len(uids) == len(dashboards())


def test_every_rate_uses_the_rate_interval() -> None:
    for query in dashboard_queries():
        for window in re.findall(r"\b(?:rate|increase|irate)\([^[]*\[([^]]+)\]", query):
            assert window == "$__rate_interval", query


def test_dashboards_show_the_specs_metrics() -> None:
    text = json.dumps(dashboards())
    for metric in (
        "chat_upload_urls_issued_total",  # upload success / failure
        "chat_upload_urls_refused_total",
        "chat_image_upload_to_send_seconds_bucket",  # upload latency
        "chat_storage_bytes",  # storage usage, by kind
        "chat_uploads_total",  # uploads stored / rejected as they land
        "chat_upload_duration_seconds_bucket",  # upload latency: URL issued -> object stored
        "chat_upload_size_bytes_sum",  # upload size
        "chat_image_size_bytes_sum",  # average image size
        "chat_notifications_sent_total",  # notifications
        "chat_notifications_failed_total",
    ):
        assert metric in text, metric


def test_panels_do_not_overlap() -> None:
    for name, dashboard in dashboards().items():
        cells: set[tuple[int, int]] = set()
        for panel in dashboard["panels"]:
            grid = panel["gridPos"]
            area = {
                (x, y)
                for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])
            }
            assert not cells & area, (name, panel["title"])
            cells |= area


# --- alert rules -----------------------------------------------------------------------------------
def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        message = "promtool is not installed (make deploy-deps, or apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return promtool


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*map(str, args)], capture_output=True, text=True, timeout=120, check=False, cwd=ROOT
    )


def test_alert_rules_pass_promtool_check() -> None:
    result = _run(_promtool(), "check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    assert RULE_TESTS
    result = _run(_promtool(), "test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_the_issue_asks_for_is_unit_tested() -> None:
    tested = {
        case["alertname"]
        for path in RULE_TESTS
        for test in load_yaml(path)["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    alerts = {
        rule["alert"] for group in load_yaml(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule
    }
    assert alerts == tested
    assert {
        "ChatAvailabilitySloBurnFast",
        "ChatAvailabilitySloBurnSlow",
        "ChatLatencySloBurnFast",
        "ChatLatencySloBurnSlow",
        "ChatQueueWorkerDown",
        "ChatNotificationQueueNotConsumed",
        "ChatUploadUrlFailureRateHigh",
        "ChatImageRejectionSpike",
        "ChatNotificationQueueAgeHigh",
        "ChatNotificationDlqNotEmpty",
        "ChatOutboxBacklog",
        "ChatUploadRejectionRatioHigh",
        "ChatStorageGrowthHigh",
    } <= alerts


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule]


RUNBOOKS = ROOT / "docs" / "runbooks"
RUNBOOK_BASE = "https://github.com/chat-management/chat-management/blob/main/docs/runbooks/"


def test_every_alert_links_its_runbook_in_this_repo() -> None:
    for rule in _alert_rules():
        url = rule["annotations"]["runbook_url"]
        assert url == f"{RUNBOOK_BASE}{rule['alert']}.md", rule["alert"]
        text = (RUNBOOKS / f"{rule['alert']}.md").read_text()
        for section in ("**Meaning.**", "**Confirm.**", "**Mitigate.**"):
            assert section in text, (rule["alert"], section)
    listed = {p.stem for p in RUNBOOKS.glob("Chat*.md")}
    assert listed == {rule["alert"] for rule in _alert_rules()}, "a runbook without its alert"


def test_every_aggregation_keeps_namespace_and_release() -> None:
    # Two releases (or namespaces) in one Prometheus must never be summed together.
    aggregations = re.compile(r"\b(sum|max|min|count|avg) by \(([^)]*)\)")
    for rule in (r for group in load_yaml(ALERTS)["groups"] for r in group["rules"]):
        found = aggregations.findall(rule["expr"])
        assert found or "chat:" in rule["expr"], rule  # SLO alerts read the recording rules
        for _, labels in found:
            names = {label.strip() for label in labels.split(",")}
            assert {"namespace", "release"} <= names, (rule.get("alert") or rule.get("record"), labels)
        assert not re.search(r"\b(sum|max|min|count|avg)\s*\(", rule["expr"]), rule


def test_slo_alerts_use_the_workbook_windows_and_burn_rates() -> None:
    rules = {rule["alert"]: rule["expr"] for rule in _alert_rules()}
    for sli, budget in (("http_errors", "0.001"), ("http_slow_requests", "0.01")):
        name = "Availability" if sli == "http_errors" else "Latency"
        fast, slow = rules[f"Chat{name}SloBurnFast"], rules[f"Chat{name}SloBurnSlow"]
        for expr, pairs in (
            (fast, (("1h", "5m", "14.4"), ("6h", "30m", "6"))),
            (slow, (("1d", "2h", "3"), ("3d", "6h", "1"))),
        ):
            for long, short, factor in pairs:
                for window in (long, short):
                    assert f"chat:{sli}:ratio_rate{window} > ({factor} * {budget})" in expr, (name, window)

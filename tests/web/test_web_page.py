"""The web client's page as the server ships it: strict CSP, compressed static files, and the dev sign-in
that exists only when DEV_LOGIN is on."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from chat_core.settings import SettingsError, load_settings
from chat_management import all as all_in_one
from chat_management import cli, webclient
from chat_management.webclient import WEB_ROOT
from tests.conftest import make_settings
from tests.deploy.conftest import CHART, PROFILES, render_values, rendered

CSP_REQUIRED = {
    "default-src": "'none'",
    "script-src": "'self'",
    "style-src": "'self'",
    "base-uri": "'none'",
    "frame-ancestors": "'none'",
}


def csp_directives(header: str) -> dict[str, list[str]]:
    directives = {}
    for part in header.split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


async def test_the_page_is_served_at_root_with_a_strict_csp(client_for: Any, tmp_path: Path) -> None:
    client = await client_for(all_in_one.create_app(make_settings(tmp_path)))
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    csp = csp_directives(response.headers["content-security-policy"])
    for name, value in CSP_REQUIRED.items():
        assert csp[name] == [value], name
    everything = " ".join(value for values in csp.values() for value in values)
    for loose in ("'unsafe-inline'", "'unsafe-eval'", "*", "data:", "https:", "http:"):
        assert loose not in everything.split(), loose
    # blob: for the local preview of a photo being uploaded; the store's origin for the proxy's redirect
    assert csp["img-src"] == ["'self'", "blob:", "http://127.0.0.1:8000"]
    assert csp["connect-src"] == ["'self'", "http://127.0.0.1:8000", "ws://127.0.0.1:8000"]
    assert response.headers["x-content-type-options"] == "nosniff"
    # nothing inline for the CSP to refuse: every script and style comes from a file
    page = response.text
    assert not re.search(r"<script(?![^>]*\bsrc=)", page)
    assert "<style" not in page
    assert " style=" not in page
    assert "javascript:" not in page
    assert 'content="access_token"' in page  # the proxy's cookie name, for the page to set


async def test_the_csp_names_the_bucket_origin_when_images_live_in_s3(
    client_for: Any, tmp_path: Path
) -> None:
    settings = make_settings(
        tmp_path,
        {
            "OBJECT_STORE": "s3",
            "S3_BUCKET_NAME": "chat-images",
            "S3_PUBLIC_ENDPOINT_URL": "https://files.example.com/base",
            "PUBLIC_BASE_URL": "https://chat.example.com",
        },
    )
    from chat_management.webclient import content_security_policy

    csp = csp_directives(content_security_policy(settings))
    assert csp["img-src"] == ["'self'", "blob:", "https://chat.example.com", "https://files.example.com"]
    assert csp["connect-src"][-1] == "wss://chat.example.com"


async def test_static_files_are_gzipped_cached_by_etag_and_confined(client_for: Any, tmp_path: Path) -> None:
    client = await client_for(all_in_one.create_app(make_settings(tmp_path)))
    plain = await client.get("/web/app.js", headers={"Accept-Encoding": "identity"})
    assert plain.status_code == 200
    assert plain.headers["content-type"].startswith("text/javascript")
    assert plain.content == (WEB_ROOT / "app.js").read_bytes()
    gzipped = await client.get("/web/app.js", headers={"Accept-Encoding": "gzip, br"})
    assert gzipped.headers["content-encoding"] == "gzip"
    assert int(gzipped.headers["content-length"]) < len(plain.content) / 2
    assert gzipped.content == plain.content  # httpx decodes it
    again = await client.get("/web/app.js", headers={"If-None-Match": plain.headers["etag"]})
    assert again.status_code == 304
    for path in ("/web/nope.js", "/web/../webclient.py", "/web/", "/web/vendor/LICENSE-htm"):
        assert (await client.get(path)).status_code == 404, path


async def test_dev_login_is_off_by_default_and_its_endpoint_does_not_exist(
    client_for: Any, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path)
    assert settings.auth.dev_login is False
    client = await client_for(all_in_one.create_app(settings))
    response = await client.post("/dev/token", json={"userId": "alice"})
    assert response.status_code == 404
    assert 'name="chat-dev-login" content="off"' in (await client.get("/")).text


async def test_dev_login_on_mints_a_token_the_api_accepts(client_for: Any, tmp_path: Path) -> None:
    client = await client_for(all_in_one.create_app(make_settings(tmp_path, {"DEV_LOGIN": "true"})))
    assert 'name="chat-dev-login" content="on"' in (await client.get("/")).text
    response = await client.post("/dev/token", json={"userId": "carol"})
    assert response.status_code == 200
    token = response.json()["token"]
    created = await client.post(
        "/conversations", json={"participantIds": ["dave"]}, headers={"Authorization": f"Bearer {token}"}
    )
    assert created.status_code == 201
    assert "carol" in created.json()["participants"]
    refused = await client.post("/dev/token", json={"userId": "no spaces/slashes"})
    assert refused.status_code == 400


@pytest.mark.parametrize("configured", ["*", "https://dev.example", ""], ids=["any", "named", "off"])
async def test_dev_token_answers_no_other_origin(client_for: Any, tmp_path: Path, configured: str) -> None:
    # Any page a developer visits while `make run` is up must not be able to read a minted token.
    settings = make_settings(tmp_path, {"DEV_LOGIN": "true", "CORS_ALLOW_ORIGINS": configured})
    client = await client_for(all_in_one.create_app(settings))
    evil = {"Origin": "https://evil.example"}
    preflight = await client.options(
        "/dev/token",
        headers={
            **evil,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert "access-control-allow-origin" not in preflight.headers
    minted = await client.post("/dev/token", json={"userId": "alice"}, headers=evil)
    assert minted.status_code == 200  # a same-origin page could still ask; this one cannot read it
    assert "access-control-allow-origin" not in minted.headers
    if configured == "*":  # the API itself keeps its configured CORS
        api = await client.get("/healthz", headers=evil)
        assert api.headers["access-control-allow-origin"] == "*"


async def test_dev_token_answers_a_named_origin(client_for: Any, tmp_path: Path) -> None:
    origin = "https://dev.example"
    settings = make_settings(tmp_path, {"DEV_LOGIN": "true", "CORS_ALLOW_ORIGINS": f"{origin},*"})
    client = await client_for(all_in_one.create_app(settings))
    preflight = await client.options(
        "/dev/token",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == origin
    minted = await client.post("/dev/token", json={"userId": "alice"}, headers={"Origin": origin})
    assert minted.status_code == 200
    assert minted.headers["access-control-allow-origin"] == origin
    assert "Origin" in minted.headers["vary"]


def test_dev_login_needs_the_dev_secret() -> None:
    with pytest.raises(SettingsError, match="DEV_LOGIN"):
        load_settings(
            {
                "DEV_LOGIN": "true",
                "AUTH_JWKS_URL": "https://idp.example.com/jwks",
                "AUTH_ISSUER": "https://idp.example.com",
                "AUTH_AUDIENCE": "chat",
            }
        )


def test_the_chart_refuses_dev_login() -> None:
    with pytest.raises(helm.HelmValuesError, match="DEV_LOGIN"):
        render_values({"config": {"DEV_LOGIN": "true"}})


@pytest.mark.parametrize("profile", PROFILES)
def test_no_chart_profile_turns_dev_login_on(profile: str) -> None:
    # nowhere in what the chart renders (ConfigMap, env of any container), nor in its defaults
    assert "DEV_LOGIN" not in (CHART / "values.yaml").read_text()
    manifests = yaml.safe_dump_all([obj for _, obj in rendered(profile).objects])
    assert "DEV_LOGIN" not in manifests


# --- `serve web`: the page alone (the chart's optional `web` service, make dev's page process) -------------
async def test_serve_web_serves_the_page_and_its_files_and_no_api(client_for: Any, tmp_path: Path) -> None:
    client = await client_for(webclient.create_app(make_settings(tmp_path)))
    page = await client.get("/")
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert (await client.get("/web/app.js")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200  # the chart's probes
    for method, path in (
        ("POST", "/conversations"),
        ("GET", "/conversations/c1/messages"),
        ("POST", "/conversations/c1/images/upload_url"),
        ("GET", "/images/c1/images/alice/x.jpg"),
        ("POST", "/dev/token"),  # DEV_LOGIN off: no dev sign-in either
    ):
        answer = await client.request(method, path, json={})
        assert answer.status_code == 404, (method, path)


def test_serve_web_is_a_target_of_the_command() -> None:
    args = cli.build_parser().parse_args(["serve", "web"])
    assert args.target == ["web"]
    assert cli.TARGETS["web"] is webclient.create_app

"""Settings: typed, read once from the environment, one line naming the bad variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from chat_core.settings import SettingsError, iter_env_vars, load_settings, markdown_table
from tests.conftest import TEST_SECRET

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_the_embedded_single_node_setup() -> None:
    settings = load_settings({"AUTH_JWT_SECRET": TEST_SECRET})
    assert settings.backends.object_store == "local"
    assert settings.backends.message_store == "sqlite"
    assert settings.images.upload_url_ttl_seconds == 3600
    assert settings.images.allowed_types == (
        "image/jpeg",
        "image/png",
        "image/gif",
        "image/webp",
        "image/heic",
        "image/heif",
    )
    assert settings.media.max_image_pixels == 50_000_000
    assert settings.media.wait_seconds == 10.0


def test_a_media_job_must_finish_within_its_visibility_timeout() -> None:
    with pytest.raises(SettingsError, match="MEDIA_VISIBILITY_TIMEOUT_SECONDS"):
        load_settings(
            {
                "AUTH_JWT_SECRET": TEST_SECRET,
                "MEDIA_JOB_TIMEOUT_SECONDS": "60",
                "MEDIA_VISIBILITY_TIMEOUT_SECONDS": "30",
            }
        )


def test_the_media_queues_visibility_timeout_covers_a_job_that_waited_for_an_image_worker() -> None:
    """The processor takes two jobs per image worker: one may wait a whole job timeout, then decode."""
    derived = load_settings({"AUTH_JWT_SECRET": TEST_SECRET, "MEDIA_JOB_TIMEOUT_SECONDS": "100"})
    assert derived.media.longest_job_seconds == 2 * 100 + 60
    assert derived.media.queue_visibility_timeout_seconds == 260  # derived: nothing else to keep in step
    assert load_settings({"AUTH_JWT_SECRET": TEST_SECRET}).media.queue_visibility_timeout_seconds == 120
    with pytest.raises(SettingsError, match="MEDIA_VISIBILITY_TIMEOUT_SECONDS"):
        load_settings(
            {
                "AUTH_JWT_SECRET": TEST_SECRET,
                "MEDIA_JOB_TIMEOUT_SECONDS": "60",
                "MEDIA_VISIBILITY_TIMEOUT_SECONDS": "90",  # longer than one decode, not than a wait and one
            }
        )


def test_values_are_typed_from_strings() -> None:
    settings = load_settings(
        {
            "AUTH_JWT_SECRET": TEST_SECRET,
            "PORT": "9000",
            "ACCESS_LOG": "false",
            "ALLOWED_IMAGE_TYPES": "image/png",
        }
    )
    assert settings.service.port == 9000
    assert settings.service.access_log is False
    assert settings.images.allowed_types == ("image/png",)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "abc"}, "PORT='abc': Expected `int`"),
        ({"PORT": "70000"}, "PORT='70000'"),
        ({"OBJECT_STORE": "gcs"}, "OBJECT_STORE='gcs'"),
        ({"OBJECT_STORE": "s3"}, "S3_BUCKET_NAME: required with OBJECT_STORE=s3"),
        ({"ALLOWED_IMAGE_TYPES": "image/png,image/svg+xml"}, "ALLOWED_IMAGE_TYPES: 'image/svg+xml'"),
        ({"ALLOWED_IMAGE_TYPES": "image/avif"}, "ALLOWED_IMAGE_TYPES: 'image/avif' is not one of image/jpeg"),
        ({"AUTH_JWT_SECRET": "short"}, "AUTH_JWT_SECRET: must be at least 32 characters"),
        ({"AUTH_JWT_SECRET": "", "AUTH_JWKS_URL": "https://x/jwks"}, "AUTH_ISSUER and AUTH_AUDIENCE"),
        # The raw-upload expiry must not beat the send window (uploads still sendable would vanish).
        ({"RAW_UPLOAD_EXPIRY_DAYS": "1"}, "RAW_UPLOAD_EXPIRY_DAYS: must be longer than ORPHAN_GRACE_SECONDS"),
        # A download URL handed out must not outlive the export it points at.
        (
            {"EXPORT_EXPIRY_DAYS": "1", "EXPORT_URL_TTL_SECONDS": "172800"},
            "EXPORT_EXPIRY_DAYS: must be at least EXPORT_URL_TTL_SECONDS",
        ),
    ],
)
def test_a_bad_value_names_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"AUTH_JWT_SECRET": TEST_SECRET, **env})
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_no_auth_configured_is_refused() -> None:
    with pytest.raises(SettingsError, match="AUTH_JWT_SECRET or AUTH_JWKS_URL"):
        load_settings({})


def test_a_service_with_bad_config_stops_with_one_line_naming_the_variable() -> None:
    env = {**os.environ, "AUTH_JWT_SECRET": TEST_SECRET, "PORT": "not-a-port"}
    result = subprocess.run(
        [sys.executable, "-m", "upload_service"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "configuration error: PORT='not-a-port': Expected `int`, got `str`"
    ]


def test_the_configuration_page_documents_every_variable() -> None:
    page = (ROOT / "docs" / "operations" / "configuration.md").read_text()
    missing = [name for name, _default, _meaning in iter_env_vars() if f"`{name}`" not in page]
    assert missing == []
    assert markdown_table() in page, "the configuration page's table is stale: run `make docs`"

"""The default profile comes up as written (see profile_stack.py): one test per file, so xdist's
`--dist loadfile` spreads the five stacks over its workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.stack.profile_stack import comes_up

pytestmark = [pytest.mark.redis, pytest.mark.localstack, pytest.mark.firestore]


def test_default_profile_comes_up_and_carries_an_image_message(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    steps = comes_up("default", tmp_path, request)

    assert [s["step"] for s in steps if not s["step"].startswith("readyz:")][-3:] == [
        "fetch_image_as_sender", "fetch_image_as_member", "refuse_stranger",
    ]  # fmt: skip
    assert all(s["ok"] for s in steps)

"""A benchmark row over refused requests fails the run instead of printing a rate (bench.guard).

Real load generators (wrk, bench.openloop) against a real uvicorn server whose route starts refusing with
429 after a few answers, as a rate limiter does; and the same generators against a route that never
refuses, so the guard is not simply failing everything. Nothing here is timed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from litestar import Litestar, Response, get, post

from bench import http as bench_http
from bench.guard import BenchFailure, require_clean, run
from bench.openloop import run_open_loop

ALLOWED = 20  # answers before the "limiter" refuses


def limited_app() -> Litestar:
    served = {"get": 0, "post": 0}

    def answer(kind: str, ok: int) -> Response[dict[str, str]]:
        served[kind] += 1
        if served[kind] > ALLOWED:
            return Response({"code": "rate_limited"}, status_code=429, headers={"Retry-After": "1"})
        return Response({"ok": "yes"}, status_code=ok)

    @get("/limited", sync_to_thread=False)
    def limited_get() -> Response[dict[str, str]]:
        return answer("get", 200)

    @post("/limited", sync_to_thread=False)
    def limited_post() -> Response[dict[str, str]]:
        return answer("post", 201)

    @get("/fine", sync_to_thread=False)
    def fine() -> dict[str, str]:
        return {"ok": "yes"}

    @post("/fine", sync_to_thread=False)
    def fine_post() -> Response[dict[str, str]]:
        return Response({"ok": "yes"}, status_code=201)

    return Litestar([limited_get, limited_post, fine, fine_post], logging_config=None)


Serve = Callable[[Litestar], Awaitable[str]]


def _need_wrk() -> None:
    if shutil.which("wrk") is None:
        if os.environ.get("CI"):
            pytest.fail("wrk is not installed (apt-get install -y wrk; make bench installs it)")
        pytest.skip("wrk is not installed (apt-get install -y wrk; make bench installs it)")


async def test_a_wrk_row_over_429s_fails_the_run(serve: Any) -> None:
    _need_wrk()
    base = await serve(limited_app())
    with pytest.raises(BenchFailure, match=r"requests were not the intended answer"):
        await asyncio.to_thread(bench_http.wrk, "GET limited", f"{base}/limited", seconds=1, connections=4)


async def test_a_wrk_row_of_intended_answers_passes(serve: Any) -> None:
    _need_wrk()
    base = await serve(limited_app())
    result = await asyncio.to_thread(bench_http.wrk, "GET fine", f"{base}/fine", seconds=1, connections=4)
    assert result.errors == 0
    assert result.requests > 0


async def test_an_open_loop_row_over_429s_fails_the_run(serve: Any) -> None:
    base = await serve(limited_app())
    outcome = await asyncio.to_thread(run_open_loop, f"{base}/limited", [b"{}"] * 60, {}, rate=200.0)
    assert outcome.statuses == {201: ALLOWED, 429: 60 - ALLOWED}  # the server did refuse
    with pytest.raises(BenchFailure, match=r"40 of 60 requests were not the intended answer \(40 x 429\)"):
        require_clean("send", errors=0, requests=60, statuses=outcome.statuses, expected=201)


async def test_an_open_loop_row_of_intended_answers_passes(serve: Any) -> None:
    base = await serve(limited_app())
    outcome = await asyncio.to_thread(run_open_loop, f"{base}/fine", [b"{}"] * 60, {}, rate=200.0)
    require_clean("send", errors=0, requests=60, statuses=outcome.statuses, expected=201)


def test_a_failed_row_exits_1_with_its_message(capsys: pytest.CaptureFixture[str]) -> None:
    def main() -> None:
        raise BenchFailure("GET limited: 3 of 9 requests were not the intended answer")

    with pytest.raises(SystemExit) as exited:
        run(main)
    assert exited.value.code == 1
    assert "BENCH FAILED: GET limited: 3 of 9" in capsys.readouterr().err

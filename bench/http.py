"""HTTP load against a running stack, side by side with a bare Litestar route on the same server settings.

    uv run python -m bench.http [--seconds 10] [--connections 32] [--stacks embedded,cloud]

For each stack (``embedded``: ``chat-management serve all`` with local disk, SQLite and the in-process bus;
``cloud``: each service its own process on local Redis, LocalStack and the Firestore emulator) it measures,
with wrk (one thread, closed loop), ``POST .../images/upload_url``, ``GET /images/...`` (the proxy's 302) and
``GET /bare`` of a bare Litestar app served by the same ``chat_core.server.serve`` settings (uvicorn,
uvloop, httptools, one process); then, open loop at a fixed rate, image sends (each of a fresh upload) with
p50/p99 measured from each request's scheduled start (no coordinated omission).
Machines here are noisy: compare ratios within one run, not figures across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
from PIL import Image

import chat_devstack as devstack
from bench import guard, results
from bench.guard import NEVER_REFUSING_LIMITS, require_clean
from bench.openloop import run_open_loop
from chat_core.auth import mint_token

SECRET = "bench-secret-0123456789abcdef-0123456789"  # noqa: S105 - a throwaway dev secret
LUA = Path(__file__).resolve().parent / "request.lua"
LABELS = {
    "embedded": "embedded (serve all: local disk, SQLite, in-process bus)",
    "cloud": "cloud adapters, a process per service (Redis, LocalStack, Firestore emulator)",
    "cloud-sqlite": "the same, with one shared SQLite file instead of the Firestore emulator",
}


@dataclass
class Result:
    name: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    p90_ms: float = 0.0
    max_ms: float = 0.0

    def record(self, stack: str, *, bare: Result | None = None, shape: str = "") -> None:
        """Into the run's JSON (``bench.results``): one row per measured route or rate."""
        results.record(
            "http",
            {
                "stack": stack,
                "row": self.name,
                "requests_per_second": round(self.requests_per_second, 1),
                "p50_ms": round(self.p50_ms, 3),
                "p90_ms": round(self.p90_ms, 3),
                "p99_ms": round(self.p99_ms, 3),
                "max_ms": round(self.max_ms, 3),
                "requests": self.requests,
                "errors": self.errors,
                "against": bare.name if bare else "",
                "shape": shape,
                "ratio": round(self.requests_per_second / bare.requests_per_second, 3) if bare else None,
            },
            key=("stack", "row"),
        )

    def row(self, bare: Result | None, label: str = "") -> str:
        ratio = f"{self.requests_per_second / bare.requests_per_second:6.0%}" if bare else "     -"
        if self.name.startswith("image send"):
            ratio = "     -"  # an open-loop run at a fixed rate: its req/s is the rate it kept up with
        name = label or self.name
        return (
            f"  {name:<34} {self.requests_per_second:9.0f} {self.p50_ms:8.2f} {self.p99_ms:8.2f} "
            f"{ratio}   {self.errors}"
        )


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(
    name: str,
    url: str,
    *,
    seconds: int,
    connections: int,
    method: str = "GET",
    body: str = "",
    token: str = "",
) -> Result:
    env = {**os.environ, "WRK_METHOD": method, "WRK_BODY": body, "WRK_TOKEN": token}
    out = subprocess.run(
        # A request unanswered after 10 s counts as an error (wrk's default, 2 s, fails rows on a busy
        # shared machine whose server answers every request).
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            str(LUA),
            url,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    distribution = out.partition("Latency Distribution")[2]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", distribution, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", distribution, re.M).group(1))  # type: ignore[union-attr]
    errors_match = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(errors_match.group(1)) if errors_match else 0
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    require_clean(f"{name} ({url})", errors=errors, requests=requests)
    return Result(name, rps, p50, p99, errors, requests)


def jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), color=(seed % 256, (seed // 256) % 256, 90)).save(buffer, format="JPEG")
    return buffer.getvalue()


def start_process(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
    )


@contextlib.contextmanager
def bare_server(workdir: Path) -> Iterator[str]:
    port = devstack.free_port()
    env = {**os.environ, "AUTH_JWT_SECRET": SECRET, "PORT": str(port)}
    process = start_process([sys.executable, "-m", "bench.bare_app"], env, workdir / "bare.log")
    try:
        devstack.wait_until(lambda: devstack.http_ok(f"http://127.0.0.1:{port}/bare"), 30, "bare app")
        yield f"http://127.0.0.1:{port}"
    finally:
        devstack.kill_group(process)


@contextlib.contextmanager
def embedded_stack(workdir: Path) -> Iterator[dict[str, str]]:
    port = devstack.free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FIRESTORE_", "REDIS_"))},
        "AUTH_JWT_SECRET": SECRET,
        "PORT": str(port),
        "DATA_DIR": str(workdir / "data"),
        **NEVER_REFUSING_LIMITS,
    }
    process = start_process(
        [sys.executable, "-m", "chat_management", "serve", "all"], env, workdir / "embedded.log"
    )
    base = f"http://127.0.0.1:{port}"
    try:
        devstack.wait_until(lambda: devstack.http_ok(f"{base}/readyz"), 60, "embedded stack")
        yield {"upload": base, "message": base, "image-proxy": base}
    finally:
        devstack.kill_group(process)


@contextlib.contextmanager
def cloud_stack(workdir: Path, extra_env: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
    with devstack.local_backends() as (redis, localstack, firestore):
        stack = devstack.Stack(
            redis_url=redis.address,
            aws_endpoint_url=localstack.address,
            firestore_host=firestore.address,
            workdir=workdir / "cloud",
            extra_env={
                "AUTH_JWT_SECRET": SECRET,
                "SQS_WAIT_SECONDS": "2",
                **NEVER_REFUSING_LIMITS,
                **(extra_env or {}),
            },
            suffix="bench",
        )
        stack.start()
        try:
            yield {name: service.url for name, service in stack.services.items()}
        finally:
            stack.stop()


def cloud_sqlite_stack(workdir: Path) -> contextlib.AbstractContextManager[dict[str, str]]:
    """The cloud stack with the message store swapped for one SQLite file the processes share: what the
    services themselves sustain once the Firestore emulator (CPU-bound Java) is out of the way."""
    return cloud_stack(workdir, {"MESSAGE_STORE": "sqlite", "DATA_DIR": str(workdir / "shared-data")})


class Flow:
    """A conversation, tokens, and uploaded images ready to be sent."""

    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = urls
        self.token = mint_token(SECRET, "alice")
        self.headers = {"Authorization": f"Bearer {self.token}"}
        self.http = httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64))
        self.conversation_id = ""

    async def setup(self) -> None:
        created = await self.http.post(
            f"{self.urls['message']}/conversations",
            json={"participantIds": ["bob", "carol"], "name": "bench"},
            headers=self.headers,
        )
        created.raise_for_status()
        self.conversation_id = created.json()["conversationId"]

    @property
    def upload_url_endpoint(self) -> str:
        return f"{self.urls['upload']}/conversations/{self.conversation_id}/images/upload_url"

    async def upload(self, seed: int) -> tuple[str, str]:
        grant = await self.http.post(
            self.upload_url_endpoint, json={"content_type": "image/jpeg"}, headers=self.headers
        )
        grant.raise_for_status()
        body = grant.json()
        put = await self.http.put(
            body["upload_url"], content=jpeg(seed), headers={"Content-Type": "image/jpeg"}
        )
        put.raise_for_status()
        return body["object_key"], body["file_url"]

    async def uploads(self, count: int) -> list[str]:
        semaphore = asyncio.Semaphore(16)

        async def one(seed: int) -> str:
            async with semaphore:
                return (await self.upload(seed))[0]

        return list(await asyncio.gather(*(one(seed) for seed in range(count))))

    async def send_at_rate(self, object_keys: list[str], rate: float) -> Result:
        """Open loop (bench.openloop): send i starts at i/rate; latency counts from that schedule."""
        url = f"{self.urls['message']}/conversations/{self.conversation_id}/messages"
        bodies = [
            msgspec.json.encode(
                {"messageType": "image", "metadata": {"object_key": key, "content_type": "image/jpeg"}}
            )
            for key in object_keys
        ]
        headers = {**self.headers, "Content-Type": "application/json"}
        outcome = await asyncio.to_thread(run_open_loop, url, bodies, headers, rate=rate)
        name = f"image send @ {rate:.0f}/s (open loop)"
        require_clean(name, errors=0, requests=len(bodies), statuses=outcome.statuses, expected=201)
        return Result(
            name,
            len(bodies) / outcome.elapsed,
            outcome.percentile(0.5) * 1000,
            outcome.percentile(0.99) * 1000,
            0,
            len(bodies),
            p90_ms=outcome.percentile(0.9) * 1000,
            max_ms=outcome.latencies[-1] * 1000 if outcome.latencies else 0.0,
        )

    async def sent_ready_image(self, seed: int) -> str:
        """The proxy URL of an image that was uploaded, sent in a message and processed: what a member's
        client fetches. (An uploaded image nobody sent is a 404 at the proxy, one still processing waits.)"""
        object_key, file_url = await self.upload(seed)
        sent = await self.http.post(
            f"{self.urls['message']}/conversations/{self.conversation_id}/messages",
            json={
                "messageType": "image",
                "metadata": {"object_key": object_key, "content_type": "image/jpeg"},
            },
            headers=self.headers,
        )
        if sent.status_code != 201:
            raise guard.BenchFailure(
                f"sending the proxy row's image answered {sent.status_code}: {sent.text}"
            )
        deadline = asyncio.get_running_loop().time() + 60.0
        while True:
            answer = await self.http.get(file_url, headers=self.headers, follow_redirects=False)
            if answer.status_code in (200, 302):
                return file_url
            if answer.status_code not in (404, 503) or asyncio.get_running_loop().time() > deadline:
                raise guard.BenchFailure(
                    f"the proxy row's sent image is not ready: GET {answer.status_code} {answer.text}"
                )
            await asyncio.sleep(0.5)

    async def close(self) -> None:
        await self.http.aclose()


async def measure(stack_name: str, urls: dict[str, str], bare: str, args: argparse.Namespace) -> list[str]:
    flow = Flow(urls)
    try:
        await flow.setup()
        file_url = await flow.sent_ready_image(0)
        load = {"seconds": args.seconds, "connections": args.connections}
        bare_result = await asyncio.to_thread(wrk, "bare Litestar GET /bare", f"{bare}/bare", **load)
        upload_url = await asyncio.to_thread(
            wrk,
            "POST upload_url",
            flow.upload_url_endpoint,
            method="POST",
            body='{"content_type": "image/jpeg"}',
            token=flow.token,
            **load,
        )
        proxy = await asyncio.to_thread(
            wrk, "GET /images/... (proxy 302)", file_url, token=flow.token, **load
        )
        bare_upload = await asyncio.to_thread(
            wrk,
            "bare POST of upload_url's shape",
            f"{bare}/conversations/c1/images/upload_url",
            method="POST",
            body='{"content_type": "image/jpeg"}',
            **load,
        )
        bare_proxy = await asyncio.to_thread(
            wrk, "bare 302 of the proxy's shape", f"{bare}/images/c1/alice/0123456789abcdef", **load
        )
        bare_again = await asyncio.to_thread(wrk, "bare Litestar GET /bare (again)", f"{bare}/bare", **load)
        sends = []
        for rate in args.send_rates:
            await flow.setup()  # a fresh conversation for each run of sends
            keys = await flow.uploads(int(rate * args.send_seconds))
            sends.append(await flow.send_at_rate(keys, rate))
    finally:
        await flow.close()
    stack = next(key for key, label in LABELS.items() if label == stack_name)
    bare_result.record(stack)
    bare_again.record(stack, bare=bare_result)
    bare_upload.record(stack, bare=bare_result, shape="upload_url")
    bare_proxy.record(stack, bare=bare_result, shape="proxy 302")
    upload_url.record(stack, bare=bare_upload, shape="upload_url")
    proxy.record(stack, bare=bare_proxy, shape="proxy 302")
    for send in sends:
        send.record(stack)
    lines = [f"\n{stack_name}", f"  {'':<34} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>6}   errors"]
    lines.append(bare_result.row(None))
    lines += [result.row(bare_result) for result in (upload_url, proxy, bare_again, *sends)]
    lines.append("  our hot routes against a bare route of the same shape (ratio = ours / bare same shape):")
    lines += [
        bare_upload.row(bare_result),
        upload_url.row(bare_upload, "  POST upload_url vs same shape"),
        bare_proxy.row(bare_result),
        proxy.row(bare_proxy, "  proxy 302 vs same shape"),
    ]
    return lines


def main() -> None:
    guard.run(_main)


def _main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10, help="duration of each wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--send-rates",
        type=lambda text: [float(rate) for rate in text.split(",")],
        default=[50.0, 200.0],
        help="image sends per second (open loop), one run each",
    )
    parser.add_argument("--send-seconds", type=float, default=10.0)
    parser.add_argument("--stacks", default="embedded,cloud,cloud-sqlite")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: embedded stack, 2 s per row, one send rate"
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.send_rates, args.send_seconds, args.stacks = 2, [20.0], 2.0, "embedded"
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk (make bench does it)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    workdir = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    stacks: dict[str, Callable[[Path], contextlib.AbstractContextManager[dict[str, str]]]] = {
        "embedded": embedded_stack,
        "cloud": cloud_stack,
        "cloud-sqlite": cloud_sqlite_stack,
    }
    report: list[str] = [
        f"HTTP: wrk -t1 -c{args.connections} -d{args.seconds}s; sends open loop at "
        f"{', '.join(f'{r:.0f}' for r in args.send_rates)}/s for {args.send_seconds:.0f}s each; "
        "ratio = req/s / bare route's req/s (its first run)"
    ]
    with bare_server(workdir) as bare:
        for name in args.stacks.split(","):
            with stacks[name](workdir) as urls:
                label = LABELS[name]
                print(f"measuring: {label} ...", file=sys.stderr, flush=True)
                report += asyncio.run(measure(label, urls, bare, args))
    print("\n".join(report))
    print(f"(logs in {workdir})")


if __name__ == "__main__":
    main()

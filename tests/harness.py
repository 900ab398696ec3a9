"""Real backends for the tests: Redis, LocalStack (S3 + SQS, signature validation on), Firestore emulator.

Each backend comes, in this order, from
1. its environment variable (``REDIS_URL``, ``AWS_ENDPOINT_URL``, ``FIRESTORE_EMULATOR_HOST``);
2. testcontainers, when a Docker engine answers;
3. a local process on a free port, started here and stopped by PID (recipes in DEVELOPERS.md).

A backend that cannot be had is reported loudly once and only the tests that need it skip.
Local processes are restartable (``stop()``/``start()`` on the same port), for outage tests.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIRESTORE_EMULATOR = Path(
    os.environ.get(
        "FIRESTORE_EMULATOR_BIN",
        "/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud_firestore_emulator",
    )
)
LOCALSTACK_VENV = Path(os.environ.get("LOCALSTACK_VENV", ROOT / ".venv-localstack"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until(probe: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if probe():
                return
        except Exception as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not become ready in {timeout:.0f}s (last error: {last})")


def _http_ok(url: str, expect: bytes | None = None) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - local test URL
        body: bytes = response.read()
        return response.status == 200 and (expect is None or expect in body)


@functools.cache
def docker_engine_available() -> bool:
    if os.environ.get("CHAT_TESTS_NO_DOCKER"):
        return False
    if shutil.which("docker") is None and not os.environ.get("DOCKER_HOST"):
        return False
    try:
        # By name: the repo's own docker/ folder would shadow the package for mypy.
        docker: Any = importlib.import_module("docker")
        client = docker.from_env(timeout=3)
        client.ping()
        client.close()
    except Exception:
        return False
    return True


@dataclass
class Backend:
    """One running backend and how it was obtained."""

    name: str
    how: str  # "env", "testcontainers" or "local process"
    address: str  # URL or host:port, as the matching env var would hold it
    detail: str = ""
    process: subprocess.Popen[bytes] | None = None
    _restart: Any = None
    _stop: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def restartable(self) -> bool:
        return self._restart is not None

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()

    def start(self) -> None:
        """Start again on the same address after ``stop()`` (local processes only)."""
        if self._restart is None:
            raise RuntimeError(f"{self.name} ({self.how}) cannot be restarted by the tests")
        self._restart()

    def describe(self) -> str:
        return f"{self.name}: {self.how} at {self.address}" + (f" ({self.detail})" if self.detail else "")


def _kill_group(process: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


# --- Redis -----------------------------------------------------------------------------------------
def start_local_redis(port: int | None = None) -> Backend:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="chat-redis-"))
    pidfile = workdir / "redis.pid"
    backend = Backend("redis", "local process", f"redis://127.0.0.1:{port}/0")

    def ping() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    def start() -> None:
        subprocess.run(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "yes", "--pidfile", str(pidfile), "--dir", str(workdir),
             "--logfile", str(workdir / "redis.log")],
            check=True,
        )  # fmt: skip
        _wait_until(ping, 10, "redis-server")
        backend.detail = f"pid {pidfile.read_text().strip()}"

    def stop() -> None:
        if not pidfile.exists():
            return
        pid = int(pidfile.read_text().strip())
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        pidfile.unlink(missing_ok=True)

    start()
    backend._restart, backend._stop = start, stop
    return backend


def redis_backend() -> Backend:
    if url := os.environ.get("REDIS_URL"):
        return Backend("redis", "env", url, "REDIS_URL")
    if docker_engine_available():
        from testcontainers.redis import RedisContainer

        container = RedisContainer("redis:7-alpine").start()
        url = f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/0"
        return Backend("redis", "testcontainers", url, _stop=container.stop)
    return start_local_redis()


# --- LocalStack (S3 + SQS) -------------------------------------------------------------------------
LOCALSTACK_ENV = {
    "SERVICES": "s3,sqs",
    "EAGER_SERVICE_LOADING": "1",
    "SQS_ENDPOINT_STRATEGY": "path",
    "S3_SKIP_SIGNATURE_VALIDATION": "0",
    "DISABLE_EVENTS": "1",
    "LOCALSTACK_TELEMETRY_DISABLED": "1",
    "SKIP_SSL_CERT_DOWNLOAD": "1",
}


def start_local_localstack(port: int | None = None) -> Backend:
    python = LOCALSTACK_VENV / "bin" / "python"
    if not python.exists():
        raise RuntimeError(f"no LocalStack venv at {LOCALSTACK_VENV} (run scripts/setup-localstack.sh)")
    port = port or free_port()
    volume = Path(tempfile.mkdtemp(prefix="chat-localstack-"))
    backend = Backend("localstack", "local process", f"http://127.0.0.1:{port}")

    def healthy() -> bool:
        return _http_ok(f"http://127.0.0.1:{port}/_localstack/health", b'"sqs": "running"')

    def start() -> None:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LOCALSTACK_"))},
            **LOCALSTACK_ENV,
            "GATEWAY_LISTEN": f"127.0.0.1:{port}",
            "LOCALSTACK_HOST": f"localhost:{port}",
            "LOCALSTACK_VOLUME_DIR": str(volume),
        }
        log = (volume / "localstack.log").open("ab")
        backend.process = subprocess.Popen(
            [str(python), "-m", "localstack.runtime.main"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=volume,
        )
        try:
            _wait_until(healthy, 60, "LocalStack")
        except TimeoutError:
            _kill_group(backend.process)
            tail = (volume / "localstack.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"LocalStack did not start:\n{tail}") from None
        backend.detail = f"pid {backend.process.pid}, venv {LOCALSTACK_VENV.name}"

    def stop() -> None:
        _kill_group(backend.process)

    start()
    backend._restart, backend._stop = start, stop
    return backend


def localstack_backend() -> Backend:
    if url := os.environ.get("AWS_ENDPOINT_URL"):
        return Backend("localstack", "env", url, "AWS_ENDPOINT_URL")
    if docker_engine_available():
        from testcontainers.localstack import LocalStackContainer

        container = LocalStackContainer("localstack/localstack:4").with_services("s3", "sqs")
        for key, value in LOCALSTACK_ENV.items():
            container = container.with_env(key, value)
        container.start()
        return Backend("localstack", "testcontainers", container.get_url(), _stop=container.stop)
    return start_local_localstack()


# --- Firestore emulator ----------------------------------------------------------------------------
def start_local_firestore(port: int | None = None) -> Backend:
    if not FIRESTORE_EMULATOR.exists():
        raise RuntimeError(f"the Firestore emulator is not installed at {FIRESTORE_EMULATOR}")
    if shutil.which("java") is None:
        raise RuntimeError("the Firestore emulator needs Java, and `java` is not on PATH")
    port = port or free_port()
    logdir = Path(tempfile.mkdtemp(prefix="chat-firestore-"))
    backend = Backend("firestore", "local process", f"127.0.0.1:{port}")

    def start() -> None:
        log = (logdir / "emulator.log").open("ab")
        backend.process = subprocess.Popen(
            [str(FIRESTORE_EMULATOR), "start", "--host=127.0.0.1", f"--port={port}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the wrapper starts a java child: kill the whole group
        )
        try:
            _wait_until(lambda: _http_ok(f"http://127.0.0.1:{port}/", b"Ok"), 60, "Firestore emulator")
        except TimeoutError:
            _kill_group(backend.process)
            tail = (logdir / "emulator.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the Firestore emulator did not start:\n{tail}") from None
        backend.detail = f"pid {backend.process.pid}"

    def stop() -> None:
        _kill_group(backend.process)

    start()
    backend._restart, backend._stop = start, stop
    return backend


def firestore_backend() -> Backend:
    if host := os.environ.get("FIRESTORE_EMULATOR_HOST"):
        return Backend("firestore", "env", host, "FIRESTORE_EMULATOR_HOST")
    if docker_engine_available():
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.waiting_utils import wait_for_logs

        container = (
            DockerContainer("gcr.io/google.com/cloudsdktool/google-cloud-cli:emulators")
            .with_command("gcloud emulators firestore start --host-port=0.0.0.0:8080")
            .with_exposed_ports(8080)
            .start()
        )
        wait_for_logs(container, "Dev App Server is now running", timeout=60)
        address = f"{container.get_container_host_ip()}:{container.get_exposed_port(8080)}"
        return Backend("firestore", "testcontainers", address, _stop=container.stop)
    return start_local_firestore()


def reset_firestore(address: str, project: str) -> None:
    request = urllib.request.Request(
        f"http://{address}/emulator/v1/projects/{project}/databases/(default)/documents", method="DELETE"
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        response.read()


FACTORIES = {"redis": redis_backend, "localstack": localstack_backend, "firestore": firestore_backend}


def loud(line: str) -> None:
    print(f"\n!!! {line}", file=sys.stderr, flush=True)

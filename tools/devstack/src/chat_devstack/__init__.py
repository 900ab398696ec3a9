"""The cluster's topology on one machine: real backends and each service as its own process.

Used by ``chat-management dev`` (``make dev``), by the end-to-end tests and by the benchmarks. Backends are
local processes on free ports (Redis, LocalStack without Docker, the Firestore emulator), stopped by PID;
the five services run as ``python -m chat_management serve <service>`` with the cloud adapters.

With ``gateway=True`` (``make dev``), another process serves the web client's page (``serve web``,
``DEV_LOGIN`` on) and a gateway (``chat_devstack.gateway``) puts them all behind one origin, routed by the
chart's own route table: the one URL to open.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "SERVICES",
    "WEB",
    "Backend",
    "ServiceProcess",
    "Stack",
    "free_port",
    "kill_cluster_node",
    "start_local_firestore",
    "start_local_localstack",
    "start_local_redis",
    "start_local_redis_cluster",
    "wait_until",
]

SERVICES = ("upload", "message", "image-proxy", "notification-consumer", "media-processor")
WEB = "web"  # the page alone (`serve web`), started with the gateway
FIRESTORE_EMULATOR = Path(
    os.environ.get(
        "FIRESTORE_EMULATOR_BIN",
        "/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud_firestore_emulator",
    )
)
LOCALSTACK_ENV = {
    "SERVICES": "s3,sqs",
    "EAGER_SERVICE_LOADING": "1",
    "SQS_ENDPOINT_STRATEGY": "path",
    "S3_SKIP_SIGNATURE_VALIDATION": "0",  # only then are bad content types, expiry and tampering refused
    "DISABLE_EVENTS": "1",
    "LOCALSTACK_TELEMETRY_DISABLED": "1",
    "SKIP_SSL_CERT_DOWNLOAD": "1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(probe: Callable[[], bool], timeout: float, what: str) -> None:
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


def http_ok(url: str, expect: bytes | None = None) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - local URL
        body: bytes = response.read()
        return response.status == 200 and (expect is None or expect in body)


def kill_group(process: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    """SIGTERM the process group (wrappers and their children), SIGKILL what lingers; returns when the
    whole group is gone (a wrapper may exit before the java child it started stops serving)."""
    if process is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _group_alive(process) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _group_alive(process):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        while _group_alive(process):
            time.sleep(0.05)


def _group_alive(leader: subprocess.Popen[bytes]) -> bool:
    leader.poll()  # reaps the leader (keeping its exit status), so a zombie does not count
    try:
        os.killpg(leader.pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class Backend:
    """One running backend and how it was obtained; local processes can stop and start on one address."""

    name: str
    how: str  # "env", "testcontainers" or "local process"
    address: str  # URL or host:port, as the matching env var would hold it
    detail: str = ""
    process: subprocess.Popen[bytes] | None = None
    _restart: Callable[[], None] | None = None
    _stop: Callable[[], None] | None = None
    cluster_ports: list[int] = field(default_factory=list)  # Redis Cluster: every node's port
    cluster_pidfiles: dict[int, Path] = field(default_factory=dict)  # Redis Cluster: port -> pidfile

    @property
    def restartable(self) -> bool:
        return self._restart is not None

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()

    def start(self) -> None:
        """Start again on the same address after ``stop()`` (local processes only)."""
        if self._restart is None:
            raise RuntimeError(f"{self.name} ({self.how}) cannot be restarted here")
        self._restart()

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def describe(self) -> str:
        return f"{self.name}: {self.how} at {self.address}" + (f" ({self.detail})" if self.detail else "")


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
        wait_until(ping, 10, "redis-server")
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


def _redis_pid_alive(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid


def _stop_pidfile(pidfile: Path, timeout: float = 10) -> None:
    pid = _redis_pid_alive(pidfile)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _redis_pid_alive(pidfile) is not None:
        time.sleep(0.05)
    pidfile.unlink(missing_ok=True)


def _redis_ask(port: int, *command: str) -> bytes:
    """One inline command to a local redis-server, the raw reply (for readiness probes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(" ".join(command).encode() + b"\r\n")
        return sock.recv(65536)


def _answers(port: int, command: str, expect: bytes) -> bool:
    return expect in _redis_ask(port, *command.split())


# How long a node may be silent before its replica takes over (Redis' own default is 15 s): a failover
# here takes about this plus an election (~1-2 s).
CLUSTER_NODE_TIMEOUT_MS = 2000


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too (so at most 55535)."""
    for _ in range(200):
        port = free_port()
        if port > 55535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a redis cluster node")


def start_local_redis_cluster(
    primaries: int = 3, ports: list[int] | None = None, replicas: int = 1
) -> Backend:
    """A Redis Cluster of ``primaries`` primaries with ``replicas`` replicas each (failover: a replica
    takes over a killed primary's slots after ``CLUSTER_NODE_TIMEOUT_MS``): ``redis-server
    --cluster-enabled yes`` processes joined by ``redis-cli --cluster create``; stopped by PID. The
    address is one seed node.

    ``backend.detail`` lists the PIDs; ``cluster_ports`` (attribute) the nodes' ports, for tests that move
    slots or stop a node (``stop_cluster_node``). An idle node costs a few MB and no CPU, so six are
    cheap on a small machine; replicas sync diskless, so the start stays ~2 s.
    """
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if binary is None or cli is None:
        raise RuntimeError("redis-server/redis-cli are not installed (apt-get install -y redis-server)")
    ports = ports or [_cluster_port() for _ in range(primaries * (1 + replicas))]
    workdir = Path(tempfile.mkdtemp(prefix="chat-redis-cluster-"))
    pidfiles = {port: workdir / f"{port}.pid" for port in ports}
    backend = Backend("redis-cluster", "local process", f"redis://127.0.0.1:{ports[0]}/0")
    created: list[bool] = []

    def start_node(port: int) -> None:
        subprocess.run(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--cluster-enabled", "yes", "--cluster-config-file", str(workdir / f"nodes-{port}.conf"),
             "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS),
             # a replica may always take over (however long it was cut off), and syncs without disk
             "--cluster-replica-validity-factor", "0", "--repl-diskless-sync", "yes",
             "--repl-diskless-sync-delay", "0",
             "--daemonize", "yes", "--pidfile", str(pidfiles[port]),
             "--dir", str(workdir), "--logfile", str(workdir / f"{port}.log")],
            check=True,
        )  # fmt: skip
        wait_until(functools.partial(_answers, port, "PING", b"+PONG"), 10, "redis-server")

    def start() -> None:
        for port in ports:
            if _redis_pid_alive(pidfiles[port]) is None:
                start_node(port)
        if not created:  # a restart keeps nodes.conf: the same nodes own the same slots
            created.append(True)
            subprocess.run(
                [cli, "--cluster", "create", *(f"127.0.0.1:{port}" for port in ports),
                 "--cluster-replicas", str(replicas), "--cluster-yes"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
            )  # fmt: skip
        for port in ports:
            wait_until(functools.partial(_answers, port, "CLUSTER INFO", b"cluster_state:ok"), 30, "cluster")
        # Every replica attached and in sync, so a failover test finds one to take over (and the topology
        # tests see does not change under them).
        wait_until(lambda: _replicas_in_sync(ports) == primaries * replicas, 30, "cluster replicas")
        backend.detail = "pids " + ", ".join(
            pidfile.read_text().strip() for pidfile in pidfiles.values() if pidfile.exists()
        )

    def stop() -> None:
        for pidfile in pidfiles.values():
            _stop_pidfile(pidfile)

    try:
        start()
    except BaseException:
        stop()
        raise
    backend._restart, backend._stop = start, stop
    backend.cluster_ports = list(ports)
    backend.cluster_pidfiles = dict(pidfiles)
    return backend


def _replicas_in_sync(ports: list[int]) -> int:
    """How many of the nodes on ``ports`` are replicas whose link to their primary is up."""
    return sum(
        b"role:slave" in reply and b"master_link_status:up" in reply
        for reply in (_redis_ask(port, "INFO", "replication") for port in ports)
    )


def kill_cluster_node(backend: Backend, port: int) -> None:
    """``kill -9`` one node of a local cluster (a crash: no shutdown, no save); ``backend.start()`` brings
    it back (it rejoins as a replica of whoever took over its slots)."""
    pid = _redis_pid_alive(backend.cluster_pidfiles[port])
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
        while _redis_pid_alive(backend.cluster_pidfiles[port]) is not None:
            time.sleep(0.02)
    backend.cluster_pidfiles[port].unlink(missing_ok=True)


def localstack_venv() -> Path:
    return Path(os.environ.get("LOCALSTACK_VENV", ".venv-localstack")).resolve()


def start_local_localstack(port: int | None = None, venv: Path | None = None) -> Backend:
    python = (venv or localstack_venv()) / "bin" / "python"
    if not python.exists():
        raise RuntimeError(f"no LocalStack venv at {python.parent.parent} (run scripts/setup-localstack.sh)")
    port = port or free_port()
    volume = Path(tempfile.mkdtemp(prefix="chat-localstack-"))
    backend = Backend("localstack", "local process", f"http://127.0.0.1:{port}")

    def healthy() -> bool:
        return http_ok(f"http://127.0.0.1:{port}/_localstack/health", b'"sqs": "running"')

    def start() -> None:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LOCALSTACK_"))},
            **LOCALSTACK_ENV,
            "GATEWAY_LISTEN": f"127.0.0.1:{port}",
            "LOCALSTACK_HOST": f"localhost:{port}",
            "LOCALSTACK_VOLUME_DIR": str(volume),
        }
        _launch(
            backend,
            [str(python), "-m", "localstack.runtime.main"],
            log_path=volume / "localstack.log",
            ready=healthy,
            what="LocalStack",
            env=env,
            cwd=volume,
        )
        backend.detail = f"pid {backend.pid}, venv {python.parent.parent.name}"

    start()
    backend._restart, backend._stop = start, lambda: kill_group(backend.process)
    return backend


def start_local_firestore(port: int | None = None) -> Backend:
    if not FIRESTORE_EMULATOR.exists():
        raise RuntimeError(f"the Firestore emulator is not installed at {FIRESTORE_EMULATOR}")
    if shutil.which("java") is None:
        raise RuntimeError("the Firestore emulator needs Java, and `java` is not on PATH")
    port = port or free_port()
    logdir = Path(tempfile.mkdtemp(prefix="chat-firestore-"))
    backend = Backend("firestore", "local process", f"127.0.0.1:{port}")

    def start() -> None:
        _launch(
            backend,
            [str(FIRESTORE_EMULATOR), "start", "--host=127.0.0.1", f"--port={port}"],
            log_path=logdir / "emulator.log",
            ready=lambda: http_ok(f"http://127.0.0.1:{port}/", b"Ok"),
            what="the Firestore emulator",
        )
        backend.detail = f"pid {backend.pid}"

    start()
    backend._restart, backend._stop = start, lambda: kill_group(backend.process)
    return backend


def _launch(
    backend: Backend,
    args: list[str],
    *,
    log_path: Path,
    ready: Callable[[], bool],
    what: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> None:
    """Start ``args`` in a session of its own (its children die with it), logging to ``log_path``, and
    wait until ``ready``; on a timeout, stop it and raise with the end of its log."""
    with log_path.open("ab") as log:
        backend.process = subprocess.Popen(
            args, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_until(ready, 60, what)
    except TimeoutError:
        kill_group(backend.process)
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{what} did not start:\n{tail}") from None


def reset_firestore(address: str, project: str) -> None:
    request = urllib.request.Request(
        f"http://{address}/emulator/v1/projects/{project}/databases/(default)/documents", method="DELETE"
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        response.read()


# --- the services ----------------------------------------------------------------------------------
@dataclass
class ServiceProcess:
    name: str
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    # Default: `python -m chat_management serve <name> --port <port>`, ready when /readyz says so.
    command: tuple[str, ...] = ()
    ready_path: str = "/readyz"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, env: Mapping[str, str]) -> None:
        with self.log_path.open("ab") as log:
            command = self.command or (
                sys.executable, "-m", "chat_management", "serve", self.name, "--port", str(self.port)
            )  # fmt: skip
            self.process = subprocess.Popen(
                command,
                env={**env, "PORT": str(self.port)},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{tail}")
            return http_ok(f"{self.url}{self.ready_path}")

        try:
            wait_until(ready, timeout, self.name)
        except TimeoutError:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise TimeoutError(f"{self.name} not ready in {timeout:.0f}s; its log ends:\n{tail}") from None

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM (graceful drain), then SIGKILL; returns the exit code."""
        kill_group(self.process, timeout)
        return None if self.process is None else self.process.returncode


@dataclass
class Stack:
    """The five services as separate processes with the cloud adapters, on real local backends; with
    ``gateway``, also the web client's page and the gateway in front of them all."""

    redis_url: str
    aws_endpoint_url: str
    firestore_host: str
    workdir: Path
    base_port: int = 0  # 0: free ports; else base+1 .. base+5 (base+6: web), the gateway on base
    extra_env: dict[str, str] = field(default_factory=dict)
    suffix: str = "dev"
    gateway: bool = False
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    front: ServiceProcess | None = None  # the gateway, when there is one

    def __post_init__(self) -> None:
        names = (*SERVICES, WEB) if self.gateway else SERVICES
        for index, name in enumerate(names):
            port = self.base_port + 1 + index if self.base_port else free_port()
            self.services[name] = ServiceProcess(name, port, self.workdir / f"{name}.log")
        if self.gateway:
            port = self.base_port or free_port()
            upstreams = [f"--upstream={name}={service.url}" for name, service in self.services.items()]
            self.front = ServiceProcess(
                "gateway",
                port,
                self.workdir / "gateway.log",
                command=(sys.executable, "-m", "chat_devstack.gateway", "--port", str(port), *upstreams),
                ready_path="/",  # the page, through its route: ready once routing works end to end
            )

    @property
    def public_url(self) -> str:
        """What a browser opens: the gateway with one, else the image proxy (where file_url points)."""
        return self.front.url if self.front is not None else self.url("image-proxy")

    def url(self, service: str) -> str:
        return self.services[service].url

    def env(self) -> dict[str, str]:
        inherited = {
            k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FIRESTORE_", "REDIS_"))
        }
        return {
            **inherited,
            "AUTH_JWT_SECRET": os.environ.get(
                "AUTH_JWT_SECRET", "dev-only-secret-change-me-0123456789abcdef"
            ),
            "HOST": "127.0.0.1",  # the dev secret is refused off loopback
            "OBJECT_STORE": "s3",
            "MESSAGE_STORE": "firestore",
            "EVENT_BUS": "redis",
            "LIMIT_STORE": "redis",
            "LIMIT_KEY_PREFIX": f"chat-{self.suffix}",  # stacks sharing one Redis count apart
            "NOTIFICATION_QUEUE": "sqs",
            "AWS_ENDPOINT_URL": self.aws_endpoint_url,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": "us-east-1",
            "S3_BUCKET_NAME": f"chat-images-{self.suffix}",
            "SQS_QUEUE_NAME": f"chat-notifications-{self.suffix}",
            "SQS_DLQ_NAME": f"chat-notifications-{self.suffix}-dlq",
            "MEDIA_QUEUE_NAME": f"chat-media-{self.suffix}",
            "FIRESTORE_EMULATOR_HOST": self.firestore_host,
            "FIRESTORE_PROJECT_ID": f"chat-{self.suffix}",
            "REDIS_URL": self.redis_url,
            # file_url and image urls point at the gateway (or the image proxy), as the ingress routes them
            "PUBLIC_BASE_URL": self.public_url,
            **self.extra_env,
        }

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = self.env()
        subprocess.run(
            [sys.executable, "-m", "chat_management", "setup"],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        for name, service in self.services.items():
            # the page's "sign in as ..." (POST /dev/token): a laptop's stack, never a deployment's
            service.start({"DEV_LOGIN": "true", **env} if name == WEB else env)
        for service in self.services.values():
            service.wait_ready()
        if self.front is not None:
            self.front.start(env)
            self.front.wait_ready()

    def stop(self) -> dict[str, int | None]:
        """Exit codes by process (the gateway's too, when there is one), the gateway stopped first."""
        codes = {} if self.front is None else {self.front.name: self.front.stop()}
        return {**codes, **{name: service.stop() for name, service in self.services.items()}}

    def prometheus_config(self) -> str:
        targets = "\n".join(
            f"      - targets: ['127.0.0.1:{s.port}']\n        labels: {{service: '{name}'}}"
            for name, s in self.services.items()
        )
        return (
            "global:\n  scrape_interval: 5s\n"
            "scrape_configs:\n  - job_name: chat-management\n    static_configs:\n" + targets + "\n"
        )


@contextlib.contextmanager
def local_backends() -> Iterator[tuple[Backend, Backend, Backend]]:
    started: list[Backend] = []
    try:
        for launcher in (start_local_redis, start_local_localstack, start_local_firestore):
            started.append(launcher())
        redis, localstack, firestore = started
        yield redis, localstack, firestore
    finally:
        for backend in reversed(started):
            backend.stop()

"""A chart profile, run on this machine the way its rendered pod specs say.

For one profile: render the chart, then start every workload as its pod spec says (command and args; env
from values, the ConfigMap and the Secrets the profile tells the operator to create, filled from
``TEST_SECRETS``; each Secret volume's files at its mount path; ``/tmp`` a tmpfs of the emptyDir's
``sizeLimit``), with the cloud's endpoints pointed at local Redis, LocalStack and the Firestore emulator.
The test profile's in-namespace Redis, LocalStack and emulator are these same local ones (their pods
run third-party images). Then every component's readiness probe must answer 200 with every check ok,
the profile's own ``helm test`` Job must pass, one image message must go upload URL -> PUT -> send ->
``ready`` -> proxy through a gateway routing as the profile's Ingress or HTTPRoute does, and the cleanup
CronJob's command must succeed.

What cannot be stood in for is overridden, and only here: ``ENDPOINTS`` (TLS endpoints of AWS and Google,
and the platform's own addresses), ``ISOLATION`` (names, so stacks sharing the backends keep apart) and
``PLATFORM`` (what a cluster gives every pod: its own network namespace, a cloud identity). Paths a pod
sees are absolute and unwritable here: ``PodRoot.host_path`` is the one mapping.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import helm_python as helm
import jwt
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from chat_devstack import free_port, kill_group, wait_until
from tests.consumer.receivers import service_account
from tests.deploy import wiring
from tests.deploy.conftest import CHART, NAMESPACE, Rendered, profile_values

# The release name the test profile's values assume (its PUBLIC_BASE_URL names the proxy's Service).
STACK_RELEASE = "chat-management"
LOG_TAIL = 2500


class ProfileDown(AssertionError):
    """A profile that cannot come up: says which workload lacks what."""


# --- what a cluster (or the cloud) does that cannot be had here ---------------------------------------
def endpoint_overrides(local: LocalEnds, workload: wiring.Workload) -> dict[str, str]:
    """ENDPOINTS: the variables whose endpoint cannot be stood in for (TLS to AWS's and Google's names,
    the platform's DNS), each pointed at its local stand-in. Only those a workload already has are
    overridden, except AWS_ENDPOINT_URL / FIRESTORE_EMULATOR_HOST, which a pod on the real cloud lacks."""
    env = workload.env
    overrides: dict[str, str] = {
        # S3 and SQS at <service>.<region>.amazonaws.com over TLS: LocalStack (signatures checked).
        "AWS_ENDPOINT_URL": local.localstack,
        # firestore.googleapis.com over TLS: the emulator (no credentials asked).
        "FIRESTORE_EMULATOR_HOST": local.firestore,
    }
    if "REDIS_URL" in env:
        overrides["REDIS_URL"] = local.redis_url(env["REDIS_URL"])
    if "AUTH_JWKS_URL" in env:
        overrides["AUTH_JWKS_URL"] = f"{local.stand_ins}/jwks"  # the identity provider's JWKS over TLS
    if env.get("PUSH_PROVIDER") == "fcm":
        overrides["FCM_ENDPOINT"] = local.stand_ins  # fcm.googleapis.com
        overrides["FCM_TOKEN_URL"] = f"{local.stand_ins}/token"  # oauth2.googleapis.com
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "PUSHGATEWAY_URL"):  # in-cluster names: a sink here
        if env.get(name):
            overrides[name] = local.stand_ins
    if "PUBLIC_BASE_URL" in env and local.gateway_url:
        overrides["PUBLIC_BASE_URL"] = local.gateway_url  # the ingress host clients use
    if "S3_PUBLIC_ENDPOINT_URL" in env:
        overrides["S3_PUBLIC_ENDPOINT_URL"] = local.localstack
    return overrides


def isolation(suffix: str) -> dict[str, str]:
    """ISOLATION: stacks run side by side on shared backends; each keeps its own names."""
    return {
        "S3_BUCKET_NAME": f"chart-{suffix}",
        "SQS_QUEUE_NAME": f"chart-{suffix}-notifications",
        "SQS_DLQ_NAME": f"chart-{suffix}-notifications-dlq",
        "MEDIA_QUEUE_NAME": f"chart-{suffix}-media",
        "FIRESTORE_PROJECT_ID": f"chart-{suffix}",
        "LIMIT_KEY_PREFIX": f"chart-{suffix}",
    }


def platform(workload: wiring.Workload, port: int, root: PodRoot) -> dict[str, str]:
    """PLATFORM: what the cluster gives a pod and a process here lacks. Its own network namespace (the
    port every pod listens on, 8000, is one per pod here); the cloud identity IRSA / Workload Identity
    inject (LocalStack's test keys, when the profile gives none); a HOME and TMPDIR on its volumes."""
    env = {
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "HOME": str(root.host_path("/tmp")),
        "TMPDIR": str(root.host_path("/tmp")),
    }
    if not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= workload.variables():
        env |= {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    return env


# --- the Secrets the profiles' README tells the operator to create --------------------------------------
@dataclass
class SecretSet:
    redis_username: str = "chat-app"
    redis_password: str = field(default_factory=lambda: uuid.uuid4().hex)
    ca_pem: str = ""
    server_cert: Path | None = None
    server_key: Path | None = None

    def values(self) -> dict[str, dict[str, str]]:
        google, _ = service_account("chat-prod")
        fcm, _ = service_account("chat-prod")
        return {
            "chat-redis": {
                "username": self.redis_username,
                "password": self.redis_password,
                "auth-string": self.redis_password,
                "server-ca.pem": self.ca_pem,
            },
            "chat-aws": {"access-key-id": "test", "secret-access-key": "test"},
            "chat-google-credentials": {"key.json": json.dumps(google)},
            "chat-fcm": {"credentials.json": json.dumps(fcm)},
        }


def tls_material(workdir: Path) -> tuple[str, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (Memorystore's per-instance CA)."""
    now = datetime.now(UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chart test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = workdir / "redis.crt", workdir / "redis.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca.public_bytes(serialization.Encoding.PEM).decode(), cert_path, key_path


# --- local ends --------------------------------------------------------------------------------------------
@dataclass
class LocalEnds:
    localstack: str
    firestore: str
    shared_redis: str
    stand_ins: str = ""
    gateway_url: str = ""
    private_redis: str = ""  # host:port of a Redis of this stack's own (credentials, TLS, cluster mode)
    private_tls: bool = False

    def redis_url(self, profile_url: str) -> str:
        """The profile's REDIS_URL with its host and port swapped for a local Redis and its database
        kept. A rediss:// stays TLS where the profile gives the CA (REDIS_TLS_CA_CERT: our own CA signs
        the local Redis's certificate); one that trusts the system store (ElastiCache: Amazon's CA)
        cannot be stood in for and becomes redis://."""
        parts = urlsplit(profile_url)
        netloc = self.private_redis or urlsplit(self.shared_redis).netloc
        scheme = "rediss" if parts.scheme == "rediss" and self.private_tls else "redis"
        return urlunsplit((scheme, netloc, parts.path or "/0", "", ""))


class StandIns:
    """The identity provider's JWKS, FCM's token and send endpoints, a Pushgateway and an OTLP collector:
    one small HTTP server that accepts what each is sent."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "chart-test"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop_ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def token(self, user: str, issuer: str, audience: str) -> str:
        now = int(time.time())
        claims = {"sub": user, "iss": issuer, "aud": audience, "iat": now, "exp": now + 900}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})

    def _jwks(self) -> dict[str, Any]:
        numbers = self.key.public_key().public_numbers()

        def b64(value: int) -> str:
            raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        return {
            "keys": [
                {
                    "kty": "RSA",
                    "kid": self.kid,
                    "alg": "RS256",
                    "use": "sig",
                    "n": b64(numbers.n),
                    "e": b64(numbers.e),
                }
            ]
        }

    def _run(self) -> None:
        async def jwks(_: web.Request) -> web.Response:
            return web.json_response(self._jwks())

        async def token(_: web.Request) -> web.Response:
            return web.json_response(
                {"access_token": f"ya29.{uuid.uuid4().hex}", "expires_in": 3599, "token_type": "Bearer"}
            )

        async def accept(request: web.Request) -> web.Response:
            await request.read()
            if request.path.endswith("messages:send"):
                return web.json_response({"name": "projects/x/messages/1"})
            return web.Response(status=200)

        app = web.Application()
        app.router.add_get("/jwks", jwks)
        app.router.add_post("/token", token)
        app.router.add_route("*", "/{tail:.*}", accept)

        async def main() -> None:
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
            self._loop_ready.set()
            await self._stopping.wait()
            await runner.cleanup()

        asyncio.run(main())

    def start(self) -> None:
        self._thread.start()
        self._loop_ready.wait(10)

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(10)


# --- one pod's filesystem -------------------------------------------------------------------------------
@dataclass
class PodRoot:
    """A pod's volumes under a directory of its own. ``/tmp`` (the scratch emptyDir) is a tmpfs of its
    ``sizeLimit`` (as root), else a plain directory and the process runs under RLIMIT_FSIZE of that size
    (one file cannot outgrow the volume)."""

    root: Path
    mounts: dict[str, Path] = field(default_factory=dict)  # the pod's absolute path -> here
    tmpfs: Path | None = None
    scratch_bytes: int = 0

    def host_path(self, pod_path: str) -> Path:
        """THE mapping: a path under one of the pod's mounts, where that mount is here."""
        for mount, here in sorted(self.mounts.items(), key=lambda m: -len(m[0])):
            if pod_path == mount or pod_path.startswith(mount.rstrip("/") + "/"):
                return here / os.path.relpath(pod_path, mount)
        raise ProfileDown(f"{pod_path} is on no volume of the pod (read-only root filesystem)")

    def rewrite(self, value: str) -> str:
        for mount in self.mounts:
            if value == mount or value.startswith(mount.rstrip("/") + "/"):
                return str(self.host_path(value))
        return value

    def confine(self, command: list[str]) -> list[str]:
        """Without a tmpfs (not root), no file the process writes may outgrow the scratch volume
        (prlimit rather than preexec_fn: the test process runs threads)."""
        if self.tmpfs is None and self.scratch_bytes and shutil.which("prlimit"):
            return ["prlimit", f"--fsize={self.scratch_bytes}", "--", *command]
        return command

    def release(self) -> None:
        if self.tmpfs is not None:
            subprocess.run(["umount", "-l", str(self.tmpfs)], check=False, capture_output=True)


def _quantity(text: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "": 1}
    number = text.rstrip("KiMG")
    return int(float(number) * units[text[len(number) :]])


def build_root(workload: wiring.Workload, secrets: Mapping[str, Mapping[str, str]], workdir: Path) -> PodRoot:
    root = PodRoot(workdir / workload.component)
    root.root.mkdir(parents=True, exist_ok=True)
    try:
        _fill(root, workload, secrets)
    except BaseException:
        root.release()
        raise
    return root


def _fill(root: PodRoot, workload: wiring.Workload, secrets: Mapping[str, Mapping[str, str]]) -> None:
    volumes = {v["name"]: v for v in workload.pod.get("volumes", [])}
    for mount in workload.container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        here = root.root / mount["mountPath"].lstrip("/")
        here.mkdir(parents=True, exist_ok=True)
        root.mounts[mount["mountPath"]] = here
        if "secret" in volume:
            name = volume["secret"]["secretName"]
            if name not in secrets:
                raise ProfileDown(
                    f"{workload.component} mounts Secret {name!r}, which the test secret set lacks"
                )
            items = volume["secret"].get("items") or [{"key": k, "path": k} for k in secrets[name]]
            for item in items:
                (here / item["path"]).write_text(secrets[name][item["key"]])
        elif "emptyDir" in volume and volume["emptyDir"].get("sizeLimit"):
            size = _quantity(volume["emptyDir"]["sizeLimit"])
            root.scratch_bytes = size
            mounted = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size},mode=1777", "tmpfs", str(here)],
                check=False, capture_output=True,
            )  # fmt: skip
            if mounted.returncode == 0:
                root.tmpfs = here


# --- the stack --------------------------------------------------------------------------------------------
@dataclass
class Process:
    workload: wiring.Workload
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-LOG_TAIL:] if self.log.exists() else ""


def _command(workload: wiring.Workload) -> list[str]:
    """The image's ENTRYPOINT (``chat-management``) with the pod's args (or its command, if it has one)."""
    container = workload.container
    if container.get("command"):
        raise ProfileDown(f"{workload.component} overrides the image's command: {container['command']}")
    return [sys.executable, "-m", "chat_management", *workload.args]


class ProfileStack:
    def __init__(self, name: str, workdir: Path, localstack: str, firestore: str, redis: str) -> None:
        self.name = name
        self.workdir = workdir
        self.suffix = f"{name}-{uuid.uuid4().hex[:6]}"
        self.values = profile_values(name)
        with helm.Chart.load(str(CHART)) as chart:
            manifests = chart.render(self.values, name=STACK_RELEASE, namespace=NAMESPACE, is_install=True)
        self.profile = Rendered(name, manifests)
        self.local = LocalEnds(localstack=localstack, firestore=firestore, shared_redis=redis)
        self.stand_ins = StandIns()
        self.secrets = SecretSet()
        self.processes: dict[str, Process] = {}
        self.roots: list[PodRoot] = []
        self._private_redis: list[Path] = []
        self.workloads = [w for w in wiring.workloads(self.profile) if w.is_chat_image]
        self.cluster_names = self._cluster_names()

    # --- in-cluster names: the Services the pods call each other by ------------------------------
    def _cluster_names(self) -> dict[str, str]:
        """Service name -> the component whose pods it selects."""
        return {
            s["metadata"]["name"]: s["spec"]["selector"]["app.kubernetes.io/component"]
            for s in self.profile.of_kind("Service")
        }

    def service_url(self, host: str) -> str | None:
        component = self.cluster_names.get(host.split(".")[0])
        process = self.processes.get(component or "")
        return process.url if process else None

    def rewrite_urls(self, value: str) -> str:
        """http://<Service>[.<ns>...]:8000 (alone or after ``name=``) -> the process serving its pods."""

        def local(match: re.Match[str]) -> str:
            found = self.service_url(match["host"])
            return found if found is not None else match[0]

        return re.sub(r"https?://(?P<host>[a-z0-9.-]+):8000", local, value)

    # --- backends ---------------------------------------------------------------------------------
    def _start_private_redis(self) -> None:
        """A Redis of this stack's own when the profile gives Redis credentials: it requires them (an
        ACL user, or AUTH), speaks TLS with the profile's CA, and runs in cluster mode where the profile
        says so, so a workload lacking any of them cannot come up."""
        referenced = {var for w in self.workloads for var in w.secret_refs if var.startswith("REDIS_")}
        if not referenced:
            return
        workdir = self.workdir / "redis"
        workdir.mkdir()
        cluster = any(w.env.get("REDIS_MODE") == "cluster" for w in self.workloads)
        port = free_port()
        while cluster and port > 55535:  # its cluster bus listens on port + 10000
            port = free_port()
        args = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(workdir), "--daemonize", "yes", "--pidfile", str(workdir / "redis.pid"),
                "--logfile", str(workdir / "redis.log")]  # fmt: skip
        if "REDIS_USERNAME" in referenced:
            args += ["--user", "default", "off", "--user", self.secrets.redis_username, "on",
                     f">{self.secrets.redis_password}", "~*", "&*", "+@all"]  # fmt: skip
        else:
            args += ["--requirepass", self.secrets.redis_password]
        tls = "REDIS_TLS_CA_CERT" in referenced
        if tls:
            self.secrets.ca_pem, cert, key = tls_material(workdir)
            (workdir / "ca.pem").write_text(self.secrets.ca_pem)
            args += ["--port", "0", "--tls-port", str(port),
                     "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                     "--tls-ca-cert-file", str(workdir / "ca.pem"), "--tls-auth-clients", "no"]  # fmt: skip
        else:
            args += ["--port", str(port)]
        if cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", str(workdir / "nodes.conf")]
        subprocess.run(args, check=True)
        self._private_redis.append(workdir / "redis.pid")
        cli = ["redis-cli", "-h", "127.0.0.1", "-p", str(port), "--no-auth-warning"]
        if "REDIS_USERNAME" in referenced:
            cli += ["--user", self.secrets.redis_username]
        cli += ["--pass", self.secrets.redis_password]
        if tls:
            cli += ["--tls", "--cacert", str(workdir / "ca.pem")]

        def answers() -> bool:
            return b"PONG" in subprocess.run([*cli, "PING"], capture_output=True, check=False).stdout

        wait_until(answers, 10, "the stack's Redis")
        if cluster:  # one node holding every slot: a cluster as far as the client can tell
            subprocess.run([*cli, "CLUSTER", "ADDSLOTSRANGE", "0", "16383"], check=True, capture_output=True)
            wait_until(
                lambda: (
                    b"cluster_state:ok"
                    in subprocess.run([*cli, "CLUSTER", "INFO"], capture_output=True).stdout
                ),
                10,
                "the stack's Redis cluster",
            )
        self.local.private_redis = f"127.0.0.1:{port}"
        self.local.private_tls = tls

    # --- environment ------------------------------------------------------------------------------
    def env_for(self, workload: wiring.Workload, port: int, root: PodRoot) -> dict[str, str]:
        secrets = self.secrets.values()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        lacking = []
        for name, value in workload.env.items():
            env[name] = self.rewrite_urls(root.rewrite(value))
        for name, (secret, key) in workload.secret_refs.items():
            if secret.startswith(STACK_RELEASE):  # made by the chart itself (the test profile's signing key)
                made = self.profile.named("Secret", secret)
                env[name] = base64.b64decode(made["data"][key]).decode()
            elif key in secrets.get(secret, {}):
                env[name] = secrets[secret][key]
            else:
                lacking.append(f"Secret {secret!r} key {key!r} (for {name})")
        if lacking:
            raise ProfileDown(
                f"{self.name}: {workload.component} reads {', '.join(lacking)}, not in the test secret set"
            )
        env |= endpoint_overrides(self.local, workload)
        env |= isolation(self.suffix)
        env |= platform(workload, port, root)
        return env

    def _launch(self, workload: wiring.Workload, process: Process | None = None) -> Process:
        root = build_root(workload, self.secrets.values(), self.workdir / "pods")
        self.roots.append(root)
        process = process or Process(workload, free_port(), self.workdir / f"{workload.component}.log")
        env = self.env_for(workload, process.port, root)
        command = [self.rewrite_urls(arg) for arg in _command(workload)]
        command = root.confine(command)
        with process.log.open("ab") as log:
            process.process = subprocess.Popen(
                command, env=env, cwd=root.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return process

    def run_job(self, workload: wiring.Workload, timeout: float = 120) -> Process:
        process = self._launch(workload)
        assert process.process is not None
        try:
            code = process.process.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_group(process.process)
            raise ProfileDown(
                f"{self.name}: {workload.component} ({' '.join(workload.args)}) did not finish:\n"
                + process.tail()
            ) from None
        if code != 0:
            raise ProfileDown(
                f"{self.name}: {workload.component} ({' '.join(workload.args[:3])}) exited {code}:\n"
                + process.tail()
            )
        return process

    # --- the whole profile --------------------------------------------------------------------------
    def start(self) -> None:
        self.stand_ins.start()
        self.local.stand_ins = self.stand_ins.url
        self._start_private_redis()
        services = [w for w in self.workloads if w.serves]
        if not services:
            raise ProfileDown(f"{self.name}: renders no service")
        # Every Service has its address before any pod starts (pods name each other by Service).
        for workload in services:
            log = self.workdir / f"{workload.component}.log"
            self.processes[workload.component] = Process(workload, free_port(), log)
        self.table = self.routes()
        if self.table:
            self.gateway_port = free_port()
            self.local.gateway_url = f"http://127.0.0.1:{self.gateway_port}"
        setup_jobs = [w for w in self.workloads if w.args[:1] == ["setup"] and w.kind == "Job"]
        if setup_jobs:
            for job in setup_jobs:  # the test profile's own setup Job
                self.run_job(job)
        else:
            # The operator's step before install (the chart's README): `chat-management setup` once, with
            # the release's configuration (the message service's pod has every setting it reads).
            (message,) = [w for w in services if "message" in w.serves]
            operator = wiring.Workload("Job", "operator-setup", "operator-setup", message.pod, None,
                                       env=dict(message.env), secret_refs=dict(message.secret_refs),
                                       secret_mounts=dict(message.secret_mounts))  # fmt: skip
            operator.pod = {**message.pod, "containers": [{**message.container, "args": ["setup"]}]}
            self.run_job(operator)
        for workload in services:
            self._launch(workload, self.processes[workload.component])
        for process in self.processes.values():
            self._wait_ready(process)
        if self.table:
            self._start_gateway()

    def _wait_ready(self, process: Process, timeout: float = 60) -> None:
        probe = process.workload.container.get("readinessProbe", {}).get("httpGet", {})
        if not probe:
            raise ProfileDown(f"{self.name}: {process.workload.component} has no HTTP readiness probe")
        url = f"{process.url}{probe['path']}"
        last = ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert process.process is not None
            if process.process.poll() is not None:
                raise ProfileDown(
                    f"{self.name}: {process.workload.component} exited {process.process.returncode}:\n"
                    + process.tail()
                )
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - local
                    body = answer.read().decode(errors="replace")
                    # Every backend answering, not "degraded": a Redis the pod cannot log in to is
                    # reported, not fatal, and would pass a plain 200.
                    if answer.status == 200 and json.loads(body).get("status") == "ready":
                        return
                    last = body[:800]
            except urllib.error.HTTPError as exc:
                last = exc.read().decode(errors="replace")[:800]
            except OSError as exc:
                last = repr(exc)
            time.sleep(0.3)
        raise ProfileDown(
            f"{self.name}: {process.workload.component} never ready: {last}\nits log ends:\n{process.tail()}"
        )

    # --- routes -------------------------------------------------------------------------------------
    def routes(self) -> list[dict[str, Any]]:
        """The profile's routes, as the gateway's table: Service name -> match."""
        table: list[dict[str, Any]] = []
        for route in self.profile.of_kind("HTTPRoute"):
            websocket = route["metadata"]["name"].endswith("-ws")
            for rule in route["spec"]["rules"]:
                backend = rule["backendRefs"][0]["name"]
                for match in rule.get("matches", []):
                    path = match["path"]
                    table.append(
                        {
                            "component": backend,
                            "match": {"type": path["type"], "value": path["value"]},
                            "websocket": websocket,
                        }
                    )
        ingress_paths = []
        for ingress in self.profile.of_kind("Ingress"):
            for rule in ingress["spec"]["rules"]:
                for path in rule["http"]["paths"]:
                    ingress_paths.append((path["path"], path["backend"]["service"]["name"]))
        # ingress-nginx with use-regex: case-insensitive, anchored at the start, the longest path wins.
        for path, backend in sorted(ingress_paths, key=lambda p: -len(p[0])):
            table.append(
                {"component": backend, "match": {"type": "RegularExpression", "value": f"(?i){path}.*"}}
            )
        return table  # empty: no routes (the test profile; clients call the Services)

    def _start_gateway(self) -> None:
        table = self.table
        routes_file = self.workdir / "routes.yaml"
        routes_file.write_text(yaml.safe_dump(table))
        upstreams = []
        for backend in {entry["component"] for entry in table}:
            local = self.service_url(backend)
            if local is None:
                raise ProfileDown(
                    f"{self.name}: a route goes to Service {backend!r}, whose pods are not running"
                )
            upstreams.append(f"--upstream={backend}={local}")
        log = self.workdir / "gateway.log"
        with log.open("ab") as out:
            self.gateway = subprocess.Popen(
                [sys.executable, "-m", "chat_devstack.gateway", "--port", str(self.gateway_port),
                 "--routes", str(routes_file), *upstreams],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

        def up() -> bool:
            with socket.create_connection(("127.0.0.1", self.gateway_port), timeout=1):
                return True

        wait_until(up, 30, "the gateway")

    # --- walking it ---------------------------------------------------------------------------------
    def tokens(self) -> Callable[[str], str]:
        """Tokens the profile's services accept: signed by the stand-in identity provider (JWKS), or with
        the test profile's signing Secret."""
        service = next(w for w in self.workloads if w.serves)
        env = service.env
        if env.get("AUTH_JWKS_URL"):
            issuer, audience = env.get("AUTH_ISSUER", ""), env.get("AUTH_AUDIENCE", "")
            return lambda user: self.stand_ins.token(user, issuer, audience)
        from chat_core.auth import mint_token

        name, key = service.secret_refs["AUTH_JWT_SECRET"]
        secret = base64.b64decode(self.profile.named("Secret", name)["data"][key]).decode()
        return lambda user: mint_token(secret, user, ttl_seconds=600)

    def helm_test(self) -> Process:
        (smoke,) = [w for w in self.workloads if w.component == "smoke-test"]
        return self.run_job(smoke)

    def cleanup_job(self) -> Process | None:
        jobs = [w for w in self.workloads if w.kind == "CronJob"]
        return self.run_job(jobs[0]) if jobs else None

    def stop(self) -> None:
        for process in self.processes.values():
            kill_group(process.process)
        with contextlib.suppress(AttributeError):
            kill_group(self.gateway)
        for pidfile in self._private_redis:
            with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
        self.stand_ins.stop()
        for root in self.roots:
            root.release()
        shutil.rmtree(self.workdir / "pods", ignore_errors=True)


@contextlib.contextmanager
def running(name: str, workdir: Path, localstack: str, firestore: str, redis: str) -> Iterator[ProfileStack]:
    stack = ProfileStack(name, workdir, localstack, firestore, redis)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def comes_up(name: str, workdir: Path, request: Any) -> list[dict[str, Any]]:
    """The whole check for one profile; returns the walk's steps (the test asserts on them)."""
    from chat_management import smoke

    localstack = request.getfixturevalue("localstack").address
    firestore = request.getfixturevalue("firestore_emulator").address
    redis = request.getfixturevalue("redis_backend").address
    with running(name, workdir, localstack, firestore, redis) as stack:
        # The profile's own `helm test` Job: every component's /readyz (and, in the test profile, a walk
        # through the Services directly).
        stack.helm_test()
        token = stack.tokens()
        # Through the profile's routes; a profile without any (test) is called at its Services.
        front = stack.local.gateway_url
        walk = smoke.SmokeTargets(
            upload_url=front or stack.processes["upload"].url,
            message_url=front or stack.processes["message"].url,
            proxy_url=front or stack.processes["image-proxy"].url,
            token=token("chart-sender"),
            peer_token=token("chart-member"),
            peer_id="chart-member",
            stranger_token=token("chart-stranger"),
            ready_urls={c: p.url for c, p in stack.processes.items()},
            timeout=30.0,
        )
        try:
            asyncio.run(smoke.walk(walk))
        except Exception as exc:
            logs = "\n".join(f"--- {c}:\n{p.tail()[-1200:]}" for c, p in stack.processes.items())
            raise ProfileDown(
                f"{name}: the image message did not make it through ({exc}); steps {walk.steps}\n{logs}"
            ) from None
        stack.cleanup_job()
        return walk.steps

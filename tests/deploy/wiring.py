"""What each rendered workload is, read from the chart and from the code: its environment as the pod would
see it, and the backends the code wires for it under that environment.

The backends come from the code's own wiring, not from a list: a service's ``ports`` and ``build`` (each
target of its ``serve`` arguments) run on a fresh composition root from the pod's settings, and the
adapters it picks are the ones it uses. The cleanup job's are the ones its ``ports`` picks; the test
profile's setup Job's are the ones ``chat-management setup`` asks for. Nothing is started.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from chat_core.capabilities import ReadinessProbe, UsesAws
from chat_core.composition import Composition
from chat_core.settings import iter_env_vars, load_settings
from tests.deploy.conftest import NAMESPACE, Rendered

POD_KINDS = {"Deployment", "Job", "CronJob"}
# Variables that carry one backend's credentials: what the profile gives one workload on that backend
# it must give every workload on it, and none off it.
CREDENTIAL_FAMILIES = {
    "redis": ("REDIS_USERNAME", "REDIS_PASSWORD", "REDIS_TLS_CA_CERT"),
    "aws": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"),
    "google": ("GOOGLE_APPLICATION_CREDENTIALS",),
    "fcm": ("FCM_CREDENTIALS_FILE",),
}
DEFAULTS = {name: default for name, default, _ in iter_env_vars()}


@dataclass
class Workload:
    """One pod the profile renders, as Kubernetes would run it."""

    kind: str  # Deployment | Job | CronJob
    name: str
    component: str
    pod: dict[str, Any]
    service_account: dict[str, Any] | None
    env: dict[str, str] = field(default_factory=dict)  # plain values (ConfigMap + env value)
    secret_refs: dict[str, tuple[str, str]] = field(default_factory=dict)  # VAR -> (secret, key)
    secret_mounts: dict[str, tuple[str, list[dict[str, str]] | None]] = field(default_factory=dict)
    hook: str = ""

    @property
    def container(self) -> dict[str, Any]:
        return dict(self.pod["containers"][0])

    @property
    def args(self) -> list[str]:
        return [str(a) for a in self.container.get("args", [])]

    @property
    def serves(self) -> list[str]:
        """The ``serve`` targets of a service pod (empty for a job)."""
        return self.args[1:] if self.args[:1] == ["serve"] else []

    @property
    def is_chat_image(self) -> bool:
        return not self.component.startswith("test-")

    def variables(self) -> set[str]:
        return set(self.env) | set(self.secret_refs)

    def annotations(self) -> dict[str, str]:
        sa = self.service_account or {}
        return dict(sa.get("metadata", {}).get("annotations") or {})


def workloads(profile: Rendered) -> list[Workload]:
    config_maps = {cm["metadata"]["name"]: cm.get("data", {}) for cm in profile.of_kind("ConfigMap")}
    accounts = {sa["metadata"]["name"]: sa for sa in profile.of_kind("ServiceAccount")}
    found = []
    for _, obj in profile.objects:
        if obj["kind"] not in POD_KINDS:
            continue
        spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
        template = spec["template"]
        pod = template["spec"]
        workload = Workload(
            kind=obj["kind"],
            name=obj["metadata"]["name"],
            component=template["metadata"]["labels"]["app.kubernetes.io/component"],
            pod=pod,
            service_account=accounts.get(pod.get("serviceAccountName", "")),
            hook=(obj["metadata"].get("annotations") or {}).get("helm.sh/hook", ""),
        )
        container = pod["containers"][0]
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                workload.env.update(config_maps[source["configMapRef"]["name"]])
        for entry in container.get("env", []):
            if "value" in entry:
                workload.env[entry["name"]] = str(entry["value"])
            elif "secretKeyRef" in entry.get("valueFrom", {}):
                ref = entry["valueFrom"]["secretKeyRef"]
                workload.env.pop(entry["name"], None)
                workload.secret_refs[entry["name"]] = (ref["name"], ref["key"])
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            secret = volumes[mount["name"]].get("secret")
            if secret:
                workload.secret_mounts[mount["mountPath"]] = (secret["secretName"], secret.get("items"))
        found.append(workload)
    return found


def settings_env(workload: Workload) -> dict[str, str]:
    """The pod's environment with a stand-in for each Secret value (settings only parse them)."""
    stand_ins = dict.fromkeys(workload.secret_refs, "x" * 40)
    if "REDIS_TLS_CA_CERT" in stand_ins:
        stand_ins["REDIS_TLS_CA_CERT"] = ""
    return {**workload.env, **stand_ins}


def wired(workload: Workload) -> Composition | None:
    """The code's composition root for this workload with the adapters it picks; None: it uses none."""
    from chat_management import all as all_in_one
    from chat_management.cli import _setup_steps
    from upload_service import cleanup

    settings = load_settings(settings_env(workload))
    backends = Composition(settings)
    if workload.serves:
        for target in workload.serves:  # `serve message upload`: both services' parts on one root
            all_in_one.build(target, settings, backends)
    elif workload.args[:1] == ["cleanup-orphans"]:
        cleanup.ports(backends)
    elif workload.args[:1] == ["setup"]:
        _setup_steps(backends)
    else:
        return None
    return backends


def kinds_of(backends: Composition) -> dict[str, set[str]]:
    """Backend kind (redis, aws, google, fcm) -> the ports that use it."""
    kinds: dict[str, set[str]] = {}
    for port, adapter in backends.adapters().items():
        name = f"{type(adapter).__module__}.{type(adapter).__name__}".lower()
        if isinstance(adapter, UsesAws):
            kind = "aws"
        elif "firestore" in name:
            kind = "google"
        elif "redis" in name:
            kind = "redis"
        elif "fcm" in name:
            kind = "fcm"
        else:
            continue  # embedded (sqlite, memory, log): nothing to reach
        kinds.setdefault(kind, set()).add(port)
    return kinds


def readiness_kinds(backends: Composition) -> set[str]:
    """The backend kinds /readyz asks (one check per adapter that can be asked)."""
    probed = {port for port, adapter in backends.adapters().items() if isinstance(adapter, ReadinessProbe)}
    return {kind for kind, ports in kinds_of(backends).items() if ports & probed}


# --- where a workload must be able to connect ------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    why: str
    host: str
    port: int


def _endpoint(why: str, url: str, default_port: int) -> Endpoint:
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    scheme_port = {"https": 443, "rediss": 6379, "redis": 6379, "http": 80}.get(parts.scheme, default_port)
    return Endpoint(why, parts.hostname or "", parts.port or scheme_port)


def endpoints(workload: Workload, backends: Composition | None) -> list[Endpoint]:
    env = settings_env(workload)
    kinds = kinds_of(backends) if backends is not None else {}
    found: list[Endpoint] = []
    if "redis" in kinds:
        found.append(_endpoint("redis", env.get("REDIS_URL", DEFAULTS["REDIS_URL"]), 6379))
    if "aws" in kinds:
        url = env.get("AWS_ENDPOINT_URL") or f"https://s3.{env.get('AWS_REGION', 'us-east-1')}.amazonaws.com"
        found.append(_endpoint("s3/sqs", url, 443))
    if "google" in kinds:
        emulator = env.get("FIRESTORE_EMULATOR_HOST")
        found.append(_endpoint("firestore", emulator or "https://firestore.googleapis.com", 443))
    if "fcm" in kinds:
        found.append(_endpoint("fcm", "https://fcm.googleapis.com", 443))
    if backends is not None and "auth_jwks" in backends.readiness_checks():
        found.append(_endpoint("jwks", env["AUTH_JWKS_URL"], 443))
    for name, why in (("OTEL_EXPORTER_OTLP_ENDPOINT", "otlp"), ("PUSHGATEWAY_URL", "pushgateway")):
        if env.get(name) and backends is not None:
            found.append(_endpoint(why, env[name], 443))
    return found


def _in_cluster(host: str) -> str | None:
    """The namespace of a cluster DNS name (``svc``, ``svc.ns``, ``svc.ns.svc[.cluster.local]``)."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    labels = host.split(".")
    if len(labels) == 1:
        return NAMESPACE
    if len(labels) == 2 or (len(labels) >= 3 and labels[2] == "svc"):
        return labels[1]
    return None


def _peer_admits(peer: dict[str, Any], host: str) -> bool:
    namespace = _in_cluster(host)
    if namespace is not None:
        if "ipBlock" in peer:
            return False  # traffic to pods: CNIs such as Cilium ignore ipBlock
        selector = peer.get("namespaceSelector")
        if selector is None:
            return namespace == NAMESPACE
        labels = selector.get("matchLabels", {})
        return not labels or labels.get("kubernetes.io/metadata.name") == namespace
    if "ipBlock" not in peer:
        return False
    network = ipaddress.ip_network(peer["ipBlock"]["cidr"])
    try:
        return ipaddress.ip_address(host) in network
    except ValueError:
        return True  # a name outside the cluster: any address range the operator chose


def _ports(rule: dict[str, Any]) -> set[tuple[str, int]]:
    return {(p.get("protocol", "TCP"), int(p["port"])) for p in rule.get("ports", [])}


def reaches(policy: dict[str, Any], host: str, port: int, protocol: str = "TCP") -> bool:
    for rule in policy["spec"].get("egress", []):
        if (protocol, port) not in _ports(rule):
            continue
        if any(_peer_admits(peer, host) for peer in rule.get("to", [])):
            return True
    return False


def dns_targets(profile: Rendered, values: dict[str, Any]) -> list[str]:
    """Where pods send DNS on the platform the profile targets."""
    targets = ["kube-dns", "169.254.20.10"]  # CoreDNS pods; NodeLocal DNSCache (any platform)
    if targets_gke(profile, values):
        targets.append("169.254.169.254")  # Cloud DNS, Autopilot's default, answers at the metadata server
    return targets


def targets_gke(profile: Rendered, values: dict[str, Any]) -> bool:
    route = values.get("httpRoute", {})
    annotated = any(
        "iam.gke.io/gcp-service-account" in (sa["metadata"].get("annotations") or {})
        for sa in profile.of_kind("ServiceAccount")
    )
    return annotated or (route.get("enabled") and route.get("controller") == "gke")


def reaches_dns(policy: dict[str, Any], target: str) -> bool:
    for rule in policy["spec"].get("egress", []):
        if not {("UDP", 53), ("TCP", 53)} <= _ports(rule):
            continue
        for peer in rule.get("to", []):
            if target == "kube-dns":
                labels = peer.get("podSelector", {}).get("matchLabels", {})
                if labels.get("k8s-app") == "kube-dns" and "namespaceSelector" in peer:
                    return True
            elif "ipBlock" in peer and ipaddress.ip_address(target) in ipaddress.ip_network(
                peer["ipBlock"]["cidr"]
            ):
                return True
    return False


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against an object's labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present, value = key in labels, labels.get(key)
        ok = {
            "In": present and value in values,
            "NotIn": value not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]
        if not ok:
            return False
    return True


def network_policy_for(profile: Rendered, workload: Workload) -> dict[str, Any] | None:
    for policy in profile.of_kind("NetworkPolicy"):
        selector = policy["spec"]["podSelector"]
        if selector.get("matchLabels", {}).get("app.kubernetes.io/component") == workload.component:
            return dict(policy)
    return None


def family_variables(workload: Workload) -> Iterator[tuple[str, str]]:
    """(kind, variable) of each credential variable the pod gets from a Secret (value or mounted file)."""
    from_secrets = set(workload.secret_refs) | {
        name
        for name, value in workload.env.items()
        if any(value.startswith(mount.rstrip("/") + "/") for mount in workload.secret_mounts)
    }
    for kind, names in CREDENTIAL_FAMILIES.items():
        for name in names:
            if name in from_secrets:
                yield kind, name


IMAGE_DIGEST = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")

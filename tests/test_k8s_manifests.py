"""deploy/k8s/ renders, is valid Kubernetes, keeps its secrets out, and agrees with the code.

Offline, like tests/test_compose_security.py for docker-compose.yml: each kustomization
is rendered by deploy/render_k8s.py (and compared with ``kubectl kustomize`` where kubectl
is installed), every object is checked against the Kubernetes schemas that
kubernetes-validate ships and the ScaledObjects against deploy/k8s/schemas/, and then the
commands, ports, environment, probes, grace periods and autoscaling thresholds are read
back through the app's own parser, settings and routes, so renaming any of them there
breaks this test.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import redis
import yaml

from shared.hosts import export_trusted_hosts
from shared.queue import QUEUES
from shared.settings import Settings, load_settings
from worker.cli import build_parser, worker_plan

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
KUSTOMIZATIONS = {"base": K8S / "base", "gpu": K8S / "overlays" / "gpu"}
KEDA_SCHEMA = K8S / "schemas" / "keda-scaledobject.json"
# the oldest Kubernetes the manifests are meant for, and the newest the schemas know
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())
SECRET = "atelier"  # the Secret every credential comes from (created by the operator)
SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY|TOKEN")
SECRET_SETTINGS = {"ATELIER_DATABASE_URL", "ATELIER_REDIS_URL"}  # URLs that carry passwords
LOAD_QUERY = re.compile(r'^max\(atelier_queue_load\{queue="(?P<queue>[a-z]+)"\}\)$')
POD_HOST = "10.42.0.7:8000"  # the Host header of a kubelet's probe: the pod's IP and port


def _renderer() -> ModuleType:
    """deploy/render_k8s.py, a script (deploy/ is no package), imported from its path."""
    spec = importlib.util.spec_from_file_location("render_k8s", ROOT / "deploy" / "render_k8s.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_k8s = _renderer()


@pytest.fixture(scope="module", params=sorted(KUSTOMIZATIONS))
def objects(request) -> list[dict]:
    return render_k8s.render(KUSTOMIZATIONS[request.param])


def _by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _pod(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def _containers(deployment: dict) -> list[dict]:
    pod = _pod(deployment)
    return [*pod.get("initContainers", []), *pod["containers"]]


def _environment(container: dict, objects: list[dict]) -> dict[str, str]:
    """What the process sees: ConfigMap values, then its own ``env`` (which wins); each
    Secret value is a stand-in ``__KEY__``."""
    config_maps = _by_kind(objects, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]]["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            env[item["name"]] = f"__{item['valueFrom']['secretKeyRef']['key']}__"
    return env


def _settings(env: dict[str, str], monkeypatch) -> Settings:
    """The settings a process started with exactly ``env`` reads."""
    with monkeypatch.context() as patch:
        for name in Settings.__dataclass_fields__:
            patch.delenv(f"ATELIER_{name.upper()}", raising=False)
        for key, value in env.items():
            patch.setenv(key, value)
        return load_settings()


def _strings(data: object) -> list[str]:
    if isinstance(data, str):
        return [data]
    if isinstance(data, dict):
        return [s for value in data.values() for s in _strings(value)]
    if isinstance(data, list):
        return [s for value in data for s in _strings(value)]
    return []


def _slots(container: dict) -> int:
    """Jobs one pod runs at once, as ``atelier worker`` plans them: one process per GPU
    the pod is given (the device plugin's cards are the container's 0..N-1)."""
    args = build_parser().parse_args(container["command"][1:])
    gpus = int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
    environ = {"CUDA_VISIBLE_DEVICES": ",".join(map(str, range(gpus)))} if gpus else {}
    commands = [command for _, command in worker_plan(args, environ)]
    return sum(int(command[command.index("--concurrency") + 1]) for command in commands)


# --- rendering -----------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_the_python_rendering_is_kubectls(name):
    """Where kubectl exists, deploy/render_k8s.py must produce what it produces."""
    out = subprocess.run(
        ["kubectl", "kustomize", str(KUSTOMIZATIONS[name])],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    theirs = sorted(yaml.safe_load_all(out), key=render_k8s.identity)
    ours = sorted(render_k8s.render(KUSTOMIZATIONS[name]), key=render_k8s.identity)
    assert ours == theirs


def _write_kustomization(folder: Path, patch_ops: list[dict], extra: dict | None = None) -> None:
    """A ConfigMap and a Service, each patched: ``patch_ops`` go to the Service."""
    folder.mkdir()
    (folder / "thing.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "thing", "namespace": "n"},
                "data": {"a/b": "1", "c": "2"},
            }
        )
        + "---\n"
        + yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "thing", "namespace": "n"},
                "spec": {"ports": [{"port": 1}, {"port": 3}]},
            }
        )
    )
    kustomization = {
        "resources": ["thing.yaml"],
        "patches": [
            {
                "target": {"kind": "Service", "name": "thing"},
                "patch": yaml.safe_dump(patch_ops),
            },
            {
                "target": {"kind": "ConfigMap", "name": "thing"},
                "patch": yaml.safe_dump(
                    [
                        {"op": "test", "path": "/data/a~1b", "value": "1"},
                        {"op": "replace", "path": "/data/a~1b", "value": "10"},
                        {"op": "remove", "path": "/data/c"},
                    ]
                ),
            },
        ],
        **(extra or {}),
    }
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))


SERVICE_OPS = [
    {"op": "add", "path": "/spec/ports/1", "value": {"port": 2}},
    {"op": "add", "path": "/spec/ports/-", "value": {"port": 4}},
    {"op": "replace", "path": "/spec/ports/0/port", "value": 5},
    {"op": "add", "path": "/spec/type", "value": "NodePort"},
    {"op": "remove", "path": "/spec/ports/3"},
]


def test_the_renderer_applies_json_patches_as_kustomize_does(tmp_path):
    _write_kustomization(tmp_path / "k", SERVICE_OPS)
    config, service = render_k8s.render(tmp_path / "k")
    assert config["data"] == {"a/b": "10"}
    assert service["spec"] == {"ports": [{"port": 5}, {"port": 2}, {"port": 3}], "type": "NodePort"}
    if shutil.which("kubectl"):  # the same reading of the RFC as kubectl's kustomize
        out = subprocess.run(
            ["kubectl", "kustomize", str(tmp_path / "k")],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        assert sorted(yaml.safe_load_all(out), key=render_k8s.identity) == sorted(
            [config, service], key=render_k8s.identity
        )


@pytest.mark.parametrize(
    ("ops", "extra", "error", "kustomize_refuses"),
    [
        ([{"op": "test", "path": "/spec/ports/0/port", "value": 9}], None, "PatchError", True),
        ([{"op": "remove", "path": "/spec/ports/7"}], None, "PatchError", True),
        # RFC 6902 says the target of a replace must exist; kustomize adds it instead
        ([{"op": "replace", "path": "/spec/nothing", "value": 1}], None, "PatchError", False),
        ([{"op": "move", "from": "/spec", "path": "/x"}], None, "UnsupportedKustomization", False),
        (SERVICE_OPS, {"namePrefix": "x-"}, "UnsupportedKustomization", False),
    ],
)
def test_the_renderer_refuses_what_it_cannot_render_faithfully(
    tmp_path, ops, extra, error, kustomize_refuses
):
    """A failed ``test``, a missing path, or a kustomize feature it lacks: an error, never a
    rendering that differs from kustomize's (stricter than kustomize where RFC 6902 is)."""
    _write_kustomization(tmp_path / "k", ops, extra)
    with pytest.raises(getattr(render_k8s, error)):
        render_k8s.render(tmp_path / "k")
    if shutil.which("kubectl"):
        answer = subprocess.run(
            ["kubectl", "kustomize", str(tmp_path / "k")], capture_output=True, timeout=60
        )
        assert (answer.returncode != 0) == kustomize_refuses


# --- schemas -------------------------------------------------------------------------


def test_every_object_is_valid_for_kubernetes_and_keda(objects):
    """Built-in kinds against the Kubernetes OpenAPI schemas (strict: no unknown field);
    ScaledObjects against KEDA's documented fields, their HPA behavior against the
    autoscaling/v2 schema KEDA hands it to."""
    keda = jsonschema.Draft202012Validator(json.loads(KEDA_SCHEMA.read_text()))
    kinds = set()
    for obj in objects:
        kinds.add(obj["kind"])
        if obj["apiVersion"].startswith("keda.sh/"):
            errors = [f"{list(e.absolute_path)}: {e.message}" for e in keda.iter_errors(obj)]
            assert not errors, (obj["metadata"]["name"], errors)
            behavior = obj["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {})
            obj = {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": obj["metadata"]["name"]},
                "spec": {
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
                    "maxReplicas": obj["spec"].get("maxReplicaCount", 100),
                    "behavior": behavior.get("behavior", {}),
                },
            }
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
    assert {"Deployment", "Service", "ConfigMap", "ScaledObject"} <= kinds


def test_names_refer_to_objects_that_exist(objects):
    """Selectors select their own pods, the Service reaches the web, KEDA scales Deployments
    that exist, and everything lives in the one namespace."""
    namespaces = set(_by_kind(objects, "Namespace"))
    assert len(namespaces) == 1
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] in namespaces, obj["metadata"]["name"]
    deployments = _by_kind(objects, "Deployment")
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        for container in _containers(deployment):
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in _by_kind(objects, "ConfigMap")
    for service in _by_kind(objects, "Service").values():
        assert any(
            service["spec"]["selector"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
            for d in deployments.values()
        )


# --- secrets -------------------------------------------------------------------------


def test_no_secret_is_written_in_the_manifests(objects):
    """Credentials come from the Secret `atelier` by reference; none is committed."""
    assert not _by_kind(objects, "Secret"), "a Secret object is committed"
    for config in _by_kind(objects, "ConfigMap").values():
        for key in config["data"]:
            assert not (SECRET_NAME.search(key) or key in SECRET_SETTINGS), key
    for deployment in _by_kind(objects, "Deployment").values():
        for container in _containers(deployment):
            for item in container.get("env", []):
                name = item["name"]
                if SECRET_NAME.search(name) or name in SECRET_SETTINGS:
                    assert "value" not in item, f"{container['name']}: {name} is a literal"
                    ref = item["valueFrom"]["secretKeyRef"]
                    assert (ref["name"], ref["key"]) == (SECRET, name), name
    for text in (s for obj in objects for s in _strings(obj)):
        for url in re.findall(r"[a-z][a-z0-9+.-]*://[^\s\"']+", text):
            assert urlsplit(url).password is None, f"a password in {url}"


def test_every_process_runs_with_auth_and_the_secrets_it_needs(objects, monkeypatch):
    """Each setting exists and parses as the code reads it; auth is on everywhere; every
    process that signs (web cookies, webhooks) has its key from the Secret, the same in
    every pod, instead of a random one made per pod under ATELIER_VAR_DIR."""
    known = {f"ATELIER_{name.upper()}" for name in Settings.__dataclass_fields__}
    deployments = _by_kind(objects, "Deployment")
    for name, deployment in deployments.items():
        for container in _containers(deployment):
            env = _environment(container, objects)
            unknown = {k for k in env if k.startswith("ATELIER_")} - known
            assert not unknown, f"{name}: unknown settings {unknown}"
            settings = _settings(env, monkeypatch)
            assert settings.auth == "token", name
            assert settings.database_url == "__ATELIER_DATABASE_URL__", name
        for container in _pod(deployment)["containers"]:  # the migration needs no broker
            settings = _settings(_environment(container, objects), monkeypatch)
            assert settings.redis_url == "__ATELIER_REDIS_URL__", name
    web = _settings(_environment(_pod(deployments["web"])["containers"][0], objects), monkeypatch)
    assert web.secret_key == "__ATELIER_SECRET_KEY__"
    assert web.metrics_token == "__ATELIER_METRICS_TOKEN__"
    for name in ("web", "worker-gpu", "worker-cpu"):  # webhooks are signed by the workers
        container = _pod(deployments[name])["containers"][0]
        settings = _settings(_environment(container, objects), monkeypatch)
        assert settings.webhook_secret == "__ATELIER_WEBHOOK_SECRET__", name


# --- commands, ports, probes, shutdown -----------------------------------------------


def test_every_container_runs_a_real_atelier_command(objects):
    """PID 1 is `atelier` itself (exec form, no shell), so the kubelet's and the preStop
    hook's signals reach the process that drains."""
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for deployment in _by_kind(objects, "Deployment").values():
        for container in _containers(deployment):
            command = container["command"]
            assert command[0] == "atelier", command
            commands[command[1]].parse_args(command[2:])  # SystemExit: an unknown option


def test_the_web_port_and_probes_are_the_apps(objects):
    deployment = _by_kind(objects, "Deployment")["web"]
    container = _pod(deployment)["containers"][0]
    args = build_parser().parse_args(container["command"][1:])
    (port,) = container["ports"]
    assert port["containerPort"] == args.port
    service = _by_kind(objects, "Service")["web"]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [port["name"]]
    assert args.host == "0.0.0.0", "the kubelet probes the pod's IP"
    probes = {kind: container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    for probe in probes.values():
        assert probe["httpGet"]["port"] in (port["name"], port["containerPort"])
    assert probes["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_the_probes_answer_as_the_manifests_expect(objects, monkeypatch, tmp_path):
    """The web built from the manifest's own settings, with its database and Redis both
    down: /healthz says so (the startup probe waits), the readiness and liveness path
    still answers 200 (the pods stay in the Service), and the probe's Host, the pod's IP,
    is accepted."""
    from web import create_app

    container = _pod(_by_kind(objects, "Deployment")["web"])["containers"][0]
    env = _environment(container, objects)
    export_trusted_hosts(build_parser().parse_args(container["command"][1:]).host, env)
    settings = dataclasses.replace(
        _settings(env, monkeypatch),
        database_url="postgresql+psycopg://atelier@127.0.0.1:1/atelier",
        redis_url="redis://127.0.0.1:1/0",
        var_dir=tmp_path,
    )
    client = create_app({"ATELIER_SETTINGS": settings, "TESTING": True}).test_client()
    routes = {rule.rule for rule in client.application.url_map.iter_rules()}

    def get(probe: str) -> int:
        path = container[probe]["httpGet"]["path"]
        assert path in routes, path
        return client.get(path, headers={"Host": POD_HOST}).status_code

    assert get("startupProbe") == 503
    assert get("readinessProbe") == 200
    assert get("livenessProbe") == 200


def test_grace_periods_outlast_the_drain(objects, monkeypatch):
    """Workers: the drain (ATELIER_DRAIN_SECONDS as the pod reads it), the hand-back and a
    margin fit before SIGKILL; a preStop hook starts the drain by signalling PID 1. The
    web: the preStop pause plus gunicorn's graceful timeout."""
    from gunicorn.config import GracefulTimeout

    from worker.embedded import DRAIN_MARGIN

    deployments = _by_kind(objects, "Deployment")
    workers = {n: d for n, d in deployments.items() if d is not deployments["web"]}
    workers.pop("dispatcher")
    assert set(workers) == {"worker-gpu", "worker-cpu"}
    for name, deployment in workers.items():
        container = _pod(deployment)["containers"][0]
        settings = _settings(_environment(container, objects), monkeypatch)
        grace = _pod(deployment)["terminationGracePeriodSeconds"]
        assert grace >= settings.drain_seconds + DRAIN_MARGIN, name
        hook = " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
        assert "kill -TERM 1" in hook and "kill -0 1" in hook, hook
    web = _pod(deployments["web"])
    pause = web["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep"
    assert web["terminationGracePeriodSeconds"] >= int(pause[1]) + GracefulTimeout.default
    dispatcher = deployments["dispatcher"]
    assert dispatcher["spec"]["replicas"] == 1
    assert dispatcher["spec"]["strategy"]["type"] == "Recreate"


# --- autoscaling ---------------------------------------------------------------------


def test_each_queue_scales_on_its_load_over_the_jobs_a_pod_runs(objects, redis_url):
    """One ScaledObject per queue, on a Deployment that serves exactly that queue and that
    sets no replicas of its own; its query reads the metric /metrics really exposes, and
    its threshold is the pod's job slots, so replicas = ceil(load / slots)."""
    from web.metrics import queue_metrics

    exposed = {
        (metric.name, sample.labels.get("queue"))
        for metric in queue_metrics(redis.Redis.from_url(redis_url))
        for sample in metric.samples
    }
    deployments = _by_kind(objects, "Deployment")
    scaled = {}
    for name, scaled_object in _by_kind(objects, "ScaledObject").items():
        target = deployments[scaled_object["spec"]["scaleTargetRef"]["name"]]
        assert "replicas" not in target["spec"], f"{name}: replicas would fight KEDA"
        (trigger,) = scaled_object["spec"]["triggers"]
        assert trigger["type"] == "prometheus"
        match = LOAD_QUERY.match(trigger["metadata"]["query"])
        assert match, trigger["metadata"]["query"]
        queue = match.group("queue")
        assert ("atelier_queue_load", queue) in exposed
        container = _pod(target)["containers"][0]
        args = build_parser().parse_args(container["command"][1:])
        assert args.queues == queue, f"{name} scales {args.queues} on the {queue} load"
        threshold = float(trigger["metadata"]["threshold"])
        assert threshold == _slots(container), name
        scaled[queue] = name
    assert set(scaled) == set(QUEUES), "a queue without a ScaledObject"


def test_the_gpu_overlay_puts_the_jobs_queue_on_gpus():
    base = _by_kind(render_k8s.render(KUSTOMIZATIONS["base"]), "Deployment")["worker-gpu"]
    gpu_objects = render_k8s.render(KUSTOMIZATIONS["gpu"])
    gpu = _by_kind(gpu_objects, "Deployment")["worker-gpu"]
    base_container, gpu_container = _pod(base)["containers"][0], _pod(gpu)["containers"][0]
    assert "nvidia.com/gpu" not in base_container["resources"]["limits"]
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in _pod(gpu)[
        "tolerations"
    ]
    args = build_parser().parse_args(gpu_container["command"][1:])
    assert args.gpus == "all" and args.queues == "gpu"
    env = {e["name"]: e.get("value") for e in gpu_container["env"]}
    assert env["ATELIER_DEVICE"] == "cuda"
    assert {e["name"]: e.get("value") for e in base_container["env"]}["ATELIER_DEVICE"] == "cpu"
    assert _by_kind(gpu_objects, "ScaledObject")["worker-gpu"]["spec"]["minReplicaCount"] == 0

"""Kubernetes manifests: rendered by `kubectl kustomize` (the same kustomize `kubectl apply -k` runs),
schema-valid (kubernetes-validate), consistent with each other and with the server's command line."""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.__main__ import _serve_parser, build_settings
from service.settings import Settings

from .conftest import load_yaml
from .tooling import ROOT, require_tool

K8S = ROOT / "docker" / "k8s"
BASE = K8S / "base"
GPU = K8S / "overlays" / "gpu"
HOT_RELOAD = K8S / "overlays" / "hot-reload"
SHARED_CACHE = K8S / "overlays" / "shared-cache"
KSERVE = K8S / "kserve"
KEDA = K8S / "overlays" / "keda"
ADAPTER = K8S / "components" / "prometheus-adapter"
UPLOADER = HOT_RELOAD / "model-uploader.yaml"
# Every kustomization a user applies with `kubectl apply -k` (the autoscaling ones: test_autoscaling.py).
KUSTOMIZATIONS = (BASE, GPU, HOT_RELOAD, KSERVE, SHARED_CACHE, KEDA, ADAPTER)
# The newest schema the validator ships, and an older release that managed clusters still run.
KUBERNETES_VERSIONS = ("1.37.0", "1.31.0")
KSERVE_GROUP = "serving.kserve.io"
SERVER_COMMAND = ["python", "-m", "service"]


# ------------------------------------------------------------------------------------------ rendering
@cache
def _render(path: Path) -> str:
    kubectl = require_tool("kubectl")
    result = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {path}: {result.stderr}"
    return result.stdout


def render(path: Path) -> list[dict[str, Any]]:
    """The resources `kubectl apply -k PATH` would send (a fresh copy each call)."""
    return [doc for doc in yaml.safe_load_all(_render(path)) if doc]


def by_kind(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = [r["kind"] for r in resources]
    assert len(kinds) == len(set(kinds)), f"one resource of each kind expected: {kinds}"
    return {r["kind"]: r for r in resources}


def deployment(path: Path) -> dict[str, Any]:
    return by_kind(render(path))["Deployment"]


def only_container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def kserve_resources(kind: str) -> dict[str, dict[str, Any]]:
    return {
        r["metadata"]["name"]: r
        for r in render(KSERVE)
        if r["apiVersion"].startswith(f"{KSERVE_GROUP}/") and r["kind"] == kind
    }


# ---------------------------------------------------------------------------------- the server's CLI
def image_env(flavor: str = "cpu") -> dict[str, str]:
    """EFFNET_* variables the image of this FLAVOR sets (what a container gets before its env): its
    base stage's, then the shared runtime tail's."""
    stages = re.split(r"^FROM ", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE)
    found: dict[str, str] = {}
    for name in (f"base-{flavor}", "runtime"):
        (stage,) = [s for s in stages if re.match(rf"\S+ AS {name}\s", s, flags=re.IGNORECASE)]
        joined = stage.replace("\\\n", " ")
        pairs = [p for line in re.findall(r"^ENV (.+)$", joined, flags=re.MULTILINE) for p in line.split()]
        found.update(p.split("=", 1) for p in pairs if p.startswith("EFFNET_"))
    return found


def kubernetes_quantity(text: str) -> float:
    """A Kubernetes quantity without a binary suffix: "2", "1.5", "500m" (cores, or a metric's value)."""
    return int(text.removesuffix("m")) / 1000 if text.endswith("m") else float(text)


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet sets it: plain values, and the downward API's
    `resourceFieldRef` on the container's own CPU request (the quantity over the divisor, rounded up)."""
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
            continue
        ref = entry["valueFrom"]["resourceFieldRef"]
        assert ref.get("containerName", container["name"]) == container["name"], "its own container's"
        assert ref["resource"] == "requests.cpu", f"{entry['name']}: only the CPU request is resolved here"
        request = kubernetes_quantity(str(container["resources"]["requests"]["cpu"]))
        env[entry["name"]] = str(math.ceil(request / kubernetes_quantity(str(ref.get("divisor", "1")))))
    return env


def container_settings(
    container: dict[str, Any], monkeypatch: pytest.MonkeyPatch, extra_args: list[str] | None = None
) -> Settings:
    """The Settings the server builds from this container: the image's ENV, then the container's env
    (every EFFNET_* name must be a setting), then its args parsed by the real `serve` parser."""
    assert container.get("command") in (None, SERVER_COMMAND), "the image's entrypoint is the server"
    env = container_env(container)
    for name in env:
        if name.startswith("EFFNET_"):
            field = name.removeprefix("EFFNET_").lower()
            assert field in Settings.model_fields, f"{name} is no setting of service/settings.py"
    for name in [n for n in os.environ if n.startswith("EFFNET_")]:
        monkeypatch.delenv(name)
    tag = container.get("image", "").rpartition(":")[2]
    for name, value in {**image_env(tag if tag in ("cpu", "gpu") else "cpu"), **env}.items():
        if name.startswith("EFFNET_"):
            monkeypatch.setenv(name, value)
    parser = argparse.ArgumentParser(prog="python -m service")
    _serve_parser(parser.add_subparsers(dest="command", required=True))
    args = [*container.get("args", ["serve"]), *(extra_args or [])]
    try:
        namespace = parser.parse_args(args)
    except SystemExit:
        pytest.fail(f"`python -m service {' '.join(args)}` is not a valid command line")
    return build_settings(namespace)


# ------------------------------------------------------------------------------------------ validation
def validate(validator: str, paths: list[Path], version: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [validator, "--strict", "--kubernetes-version", version, *map(str, paths)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def assert_valid(resources: list[dict[str, Any]], tmp_path: Path, name: str, version: str) -> None:
    validator = require_tool("kubernetes-validate")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump_all(resources))
    result = validate(validator, [path], version)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(resources), result.stdout + result.stderr


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("kustomization", [BASE, GPU, HOT_RELOAD, SHARED_CACHE], ids=lambda p: p.name)
def test_rendered_manifests_validate(tmp_path: Path, kustomization: Path, version: str) -> None:
    resources = render(kustomization)
    assert {"Deployment", "Service"} <= {r["kind"] for r in resources}
    assert_valid(resources, tmp_path, kustomization.name, version)


def as_pod(name: str, containers: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"containers": containers}}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kserve_manifests_validate(tmp_path: Path, version: str) -> None:
    """KServe's own kinds are not in the validator's schemas: their core parts are (the runtime's
    containers and the predictor as containers of a Pod); everything else is validated as is."""
    resources = render(KSERVE)
    native = [r for r in resources if not r["apiVersion"].startswith(f"{KSERVE_GROUP}/")]
    assert [r["kind"] for r in native] == ["PersistentVolumeClaim"]
    pods = [as_pod(name, r["spec"]["containers"]) for name, r in kserve_resources("ServingRuntime").items()]
    for name, service in kserve_resources("InferenceService").items():
        model = dict(service["spec"]["predictor"]["model"])
        for kserve_field in ("modelFormat", "runtime", "protocolVersion", "storageUri"):
            model.pop(kserve_field)
        model |= {"name": "kserve-container", "image": "merged-from-the-runtime"}
        pods.append(as_pod(name, [model]))
    assert_valid(native + pods, tmp_path, "kserve", version)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_uploader_pod_validates(tmp_path: Path, version: str) -> None:
    assert_valid([load_yaml(UPLOADER)], tmp_path, "uploader", version)


def test_validator_rejects_a_broken_manifest(tmp_path: Path) -> None:
    validator = require_tool("kubernetes-validate")
    broken = deployment(BASE)
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/readyz"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    assert validate(validator, [path], KUBERNETES_VERSIONS[0]).returncode != 0


def test_every_kustomization_is_checked_here() -> None:
    found = {
        path.parent
        for path in K8S.rglob("kustomization.yaml")
        if load_yaml(path).get("kind", "Kustomization") == "Kustomization"
    }
    assert found == set(KUSTOMIZATIONS)


def test_kustomize_rejects_a_patch_for_a_missing_resource(tmp_path: Path) -> None:
    """`kubectl kustomize` is really run: a patch that matches nothing fails the render."""
    kubectl = require_tool("kubectl")
    (tmp_path / "base").symlink_to(BASE)
    (tmp_path / "patch.yaml").write_text(
        yaml.safe_dump({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "nobody"}})
    )
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": ["base"], "patches": [{"path": "patch.yaml"}]})
    )
    result = subprocess.run([kubectl, "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "nobody" in result.stderr


# --------------------------------------------------------------------------------------- plain k8s
def test_probes_and_grace_period() -> None:
    workload = deployment(BASE)
    pod = workload["spec"]["template"]["spec"]
    container = only_container(workload)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001}
    env = container_env(container)
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > float(env["EFFNET_DRAIN_TIMEOUT_S"]) + pre_stop
    assert pod["securityContext"]["runAsUser"] == 10001, "matches the image's USER"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), "writable /tmp for the runtime"


@pytest.mark.parametrize("kustomization", [BASE, GPU, HOT_RELOAD], ids=lambda p: p.name)
def test_the_container_is_a_valid_server_command_line(
    kustomization: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    container = only_container(deployment(kustomization))
    settings = container_settings(container, monkeypatch)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": settings.http_port, "grpc": settings.grpc_port}
    assert settings.hash_cache is not None
    writable = [m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")]
    assert any(settings.hash_cache.is_relative_to(w) for w in writable), "the digest cache is writable"


def server_containers() -> list[tuple[str, dict[str, Any]]]:
    found = [(path.name, only_container(deployment(path))) for path in (BASE, GPU, HOT_RELOAD)]
    for name, runtime in kserve_resources("ServingRuntime").items():
        (container,) = runtime["spec"]["containers"]
        found.append((f"kserve-{name}", container))
    return found


@pytest.mark.parametrize("name", [name for name, _ in server_containers()])
def test_the_server_sizes_itself_by_its_cpu_request(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pod with a CPU request and no limit may run on every core of its node: without EFFNET_CPUS
    the server would start a thread per node core in each pool and a CPU instance per core."""
    container = dict(server_containers())[name]
    resources = container["resources"]
    assert "cpu" not in resources.get("limits", {}), "no CPU limit: the pod may use idle cores"
    cores = math.ceil(kubernetes_quantity(str(resources["requests"]["cpu"])))
    settings = container_settings(container, monkeypatch)
    assert settings.cpus == settings.cores == cores
    assert settings.effective_intra_op_threads == settings.effective_preprocess_workers == cores
    assert settings.instances_for("CPUExecutionProvider", gmacs=0.39) == cores + 1  # b0


def test_service_hpa_and_pdb_point_at_the_deployment() -> None:
    resources = by_kind(render(BASE))
    workload = resources["Deployment"]
    pod_labels = workload["spec"]["template"]["metadata"]["labels"]
    assert workload["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert resources["Service"]["spec"]["selector"].items() <= pod_labels.items()
    assert {p["targetPort"] for p in resources["Service"]["spec"]["ports"]} == {"http", "grpc"}
    assert resources["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    target = resources["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", workload["metadata"]["name"])
    hpa = resources["HorizontalPodAutoscaler"]["spec"]
    assert hpa["minReplicas"] > resources["PodDisruptionBudget"]["spec"]["minAvailable"]


def test_gpu_overlay_requests_a_gpu_and_keeps_the_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    base = only_container(deployment(BASE))
    container = only_container(deployment(GPU))
    assert container["image"].endswith(":gpu")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    env = container_env(container)
    assert env["EFFNET_DEVICE"] == "cuda" and env["EFFNET_MODELS"] == "b0,lite0"
    assert container["readinessProbe"] == base["readinessProbe"]
    assert container["livenessProbe"] == base["livenessProbe"]
    assert container_settings(container, monkeypatch).device == "cuda"


def test_hot_reload_overlay_polls_the_shared_volume_read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    resources = by_kind(render(HOT_RELOAD))
    pod = resources["Deployment"]["spec"]["template"]["spec"]
    container = only_container(resources["Deployment"])
    settings = container_settings(container, monkeypatch)
    assert settings.model_control == "poll" and settings.poll_interval_s <= 30
    claim = resources["PersistentVolumeClaim"]
    assert "ReadWriteMany" in claim["spec"]["accessModes"], "pods on several nodes share it"
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(settings.repository)]
    assert mount["readOnly"] is True, "the server never writes to the repository"
    assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    (seed,) = pod["initContainers"]
    (seed_mount,) = seed["volumeMounts"]
    assert seed_mount["name"] == mount["name"] and not seed_mount.get("readOnly")
    seed_env = {e["name"]: e["value"] for e in seed["env"]}
    assert seed_env["SEED_FROM"] == image_env()["EFFNET_REPOSITORY"], "copies the image's baked repository"
    assert seed_env["SEED_TO"] == seed_mount["mountPath"]
    assert seed["image"] == container["image"]
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    # The uploader pod writes to the same claim.
    uploader = load_yaml(UPLOADER)["spec"]
    (upload_volume,) = uploader["volumes"]
    assert upload_volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert uploader["securityContext"]["runAsUser"] == pod["securityContext"]["runAsUser"]


# -------------------------------------------------------------------------- the seeding init container
def seed_script() -> str:
    pod = deployment(HOT_RELOAD)["spec"]["template"]["spec"]
    (seed,) = pod["initContainers"]
    assert seed["command"] == ["python", "-c"]
    (script,) = seed["args"]
    assert isinstance(script, str)
    return script


def fake_repository(root: Path, models: dict[str, int]) -> Path:
    """`models` name -> bytes of its model.onnx: big ones make a copy slow enough to overlap."""
    for name, size in models.items():
        version = root / name / "1"
        version.mkdir(parents=True)
        (version / "model.onnx").write_bytes(os.urandom(size))
        (version / "model.json").write_text(f'{{"name": "{name}"}}')
        (version / "labels.txt").write_text("cat\ndog\n")
    (root / ".complete").touch()
    return root


def run_seed(source: Path, target: Path) -> subprocess.Popen[str]:
    env = {"PATH": os.environ.get("PATH", ""), "SEED_FROM": str(source), "SEED_TO": str(target)}
    pipe = subprocess.PIPE
    return subprocess.Popen(
        [sys.executable, "-c", seed_script()], env=env, stdout=pipe, stderr=pipe, text=True
    )


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_seed_fills_an_empty_repository(tmp_path: Path) -> None:
    source = fake_repository(tmp_path / "image", {"b0": 1000, "lite0": 2000})
    target = tmp_path / "pvc"
    (target / "lost+found").mkdir(parents=True)  # a fresh ext4 volume has one: it is no model
    process = run_seed(source, target)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    names = sorted(p.name for p in target.iterdir())
    assert names == ["b0", "lite0", "lost+found"], "no staging folder, no dotfile"
    assert tree(target) == {k: v for k, v in tree(source).items() if k != ".complete"}
    assert out.split() == ["seeded", "b0", "seeded", "lite0"]


def test_seed_leaves_a_repository_with_models_alone(tmp_path: Path) -> None:
    """Once seeded, the repository is the operator's: a model removed from it is not brought back."""
    source = fake_repository(tmp_path / "image", {"b0": 100, "lite0": 100})
    target = fake_repository(tmp_path / "pvc", {"b3": 100})
    before = tree(target)
    process = run_seed(source, target)
    assert process.wait(timeout=60) == 0
    assert tree(target) == before


def test_pods_seeding_at_once_publish_each_model_whole_and_once(tmp_path: Path) -> None:
    source = fake_repository(tmp_path / "image", {"b0": 8 << 20, "b1": 8 << 20, "lite0": 4 << 20})
    target = tmp_path / "pvc"
    target.mkdir()
    # Different hostnames, as for pods: each stages under its own name.
    processes = []
    for n in range(3):
        env = {"PATH": os.environ.get("PATH", ""), "SEED_FROM": str(source), "SEED_TO": str(target)}
        script = seed_script().replace("socket.gethostname()", f"'pod-{n}'")
        processes.append(
            subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
        )
    seen_partial = False
    while any(p.poll() is None for p in processes):
        for model in target.iterdir():
            if not model.name.startswith("."):
                files = {p.name for p in (model / "1").iterdir()}
                seen_partial |= files != {"model.onnx", "model.json", "labels.txt"}
        time.sleep(0.001)
    assert all(p.wait(timeout=60) == 0 for p in processes)
    assert not seen_partial, "a model became visible before all its files were there"
    assert sorted(p.name for p in target.iterdir()) == ["b0", "b1", "lite0"]
    assert tree(target) == {k: v for k, v in tree(source).items() if k != ".complete"}
    seeded = [line for p in processes for line in (p.stdout.read() if p.stdout else "").splitlines()]
    assert sorted(seeded) == ["seeded b0", "seeded b1", "seeded lite0"], "each model renamed in once"


# ------------------------------------------------------------------------------------------- KServe
def test_kserve_kustomization_renders_runtimes_and_services() -> None:
    kinds = sorted((r["apiVersion"], r["kind"]) for r in render(KSERVE))
    assert kinds == [
        (f"{KSERVE_GROUP}/v1alpha1", "ServingRuntime"),
        (f"{KSERVE_GROUP}/v1alpha1", "ServingRuntime"),
        (f"{KSERVE_GROUP}/v1beta1", "InferenceService"),
        (f"{KSERVE_GROUP}/v1beta1", "InferenceService"),
        ("v1", "PersistentVolumeClaim"),
    ]


@pytest.mark.parametrize("name", ["effnet-serve", "effnet-serve-grpc"])
def test_serving_runtime_structure(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = kserve_resources("ServingRuntime")[name]
    spec = runtime["spec"]
    formats = spec["supportedModelFormats"]
    assert {f["name"] for f in formats} == {"effnet", "onnx"}
    assert all(isinstance(f["version"], str) for f in formats), "versions are strings in the CRD"
    assert [f["name"] for f in formats if f.get("autoSelect")] == ["effnet"], "Triton keeps onnx by default"
    assert spec["protocolVersions"] and set(spec["protocolVersions"]) <= {"v2", "grpc-v2"}
    assert spec.get("multiModel", False) is False
    assert spec["annotations"]["prometheus.kserve.io/path"] == "/metrics"
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container", "the name KServe merges the predictor into"
    assert container["image"] and container["command"] == SERVER_COMMAND
    settings = container_settings(container, monkeypatch)
    assert settings.repository == Path("/mnt/models"), "where KServe puts the storageUri"
    assert settings.model_control == "none", "a storage-initializer copy never changes"
    assert spec["annotations"]["prometheus.kserve.io/port"] == str(settings.http_port)
    # Knative allows one port per pod: HTTP (http1) or gRPC (h2c), matching the protocol.
    (port,) = container["ports"]
    expected = {"v2": ("http1", settings.http_port), "grpc-v2": ("h2c", settings.grpc_port)}
    (protocol,) = spec["protocolVersions"]
    assert (port["name"], port["containerPort"]) == expected[protocol]
    probe = container["readinessProbe"]
    if protocol == "v2":
        assert probe["httpGet"] == {"path": "/readyz", "port": settings.http_port}
    else:
        assert probe["grpc"] == {"port": settings.grpc_port}
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]


def test_the_runtimes_differ_only_in_protocol() -> None:
    runtimes = kserve_resources("ServingRuntime")
    http, grpc = (runtimes[name]["spec"] for name in ("effnet-serve", "effnet-serve-grpc"))
    for spec in (http, grpc):
        spec.pop("protocolVersions")
        for container in spec["containers"]:
            container.pop("ports")
            container.pop("readinessProbe")
    assert http == grpc


@pytest.mark.parametrize("name", ["effnet", "effnet-grpc"])
def test_inference_service_uses_a_runtime_it_can(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    service = kserve_resources("InferenceService")[name]
    model = service["spec"]["predictor"]["model"]
    runtime = kserve_resources("ServingRuntime")[model["runtime"]]["spec"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["supportedModelFormats"]}
    assert model["protocolVersion"] in runtime["protocolVersions"]
    # KServe merges the predictor into the runtime's container: env by name, args appended.
    (container,) = runtime["containers"]
    merged_env = {e["name"]: e for e in [*container.get("env", []), *model.get("env", [])]}
    merged = {**container, "env": list(merged_env.values())}
    settings = container_settings(merged, monkeypatch, extra_args=model.get("args", []))
    assert settings.model_control == "poll", "the PVC is mounted directly: new versions show up in place"
    assert settings.model_names, "readiness waits for the models the service is for"
    # pvc://<claim>/<path>: the claim the kustomization creates.
    claim, _, _ = model["storageUri"].removeprefix("pvc://").partition("/")
    (pvc,) = [r for r in render(KSERVE) if r["kind"] == "PersistentVolumeClaim"]
    assert model["storageUri"].startswith("pvc://") and claim == pvc["metadata"]["name"]
    predictor = service["spec"]["predictor"]
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]


def test_runtime_args_are_checked_against_the_real_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    container = kserve_resources("ServingRuntime")["effnet-serve"]["spec"]["containers"][0]
    with pytest.raises(pytest.fail.Exception, match="not a valid command line"):
        container_settings(container, monkeypatch, extra_args=["--model-control", "sometimes"])
    container["env"].append({"name": "EFFNET_NO_SUCH_SETTING", "value": "1"})
    with pytest.raises(AssertionError, match="no setting"):
        container_settings(container, monkeypatch)

"""The image's Dockerfile, the compose stack and the Kubernetes Jobs, checked by real validators and for what
matters to a user. (tests/test_container.py builds and runs the image itself.)"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from llamafactory_fp8 import errors
from llamafactory_fp8.errors import STOPPED_EXIT_CODE, DoesNotFit

from .conftest import BENCH_MODELS, ROOT, model_dir

TOOLS = Path(sys.executable).parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
SHELL_SCRIPTS = [
    ROOT / "scripts" / "bootstrap",
    ROOT / "scripts" / "lock",
    ROOT / "scripts" / "container-tools",
    ROOT / "docker" / "standin" / "build",
    ROOT / ".ci" / "run",
    ROOT / "bench" / "transformer_engine.sh",
    ROOT / "bench" / "image_on_gpu.sh",
]
KUSTOMIZATIONS = {"one node": ROOT / "k8s", "several nodes": ROOT / "k8s" / "multinode"}


def validate(tool: str, *args: str) -> None:
    result = subprocess.run([str(TOOLS / tool), *args], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_passes_hadolint():
    validate("hadolint", str(DOCKERFILE))


def test_shell_scripts_pass_shellcheck():
    validate("shellcheck", *map(str, SHELL_SCRIPTS))


def test_compose_file_matches_the_compose_spec():
    validate("check-jsonschema", "--builtin-schema", "vendor.compose-spec", "compose.yaml")


@pytest.fixture(scope="module")
def rendered(container_tools, tmp_path_factory) -> dict[str, Path]:
    """What `kubectl apply -k` applies, rendered by kustomize."""
    out = tmp_path_factory.mktemp("k8s")
    paths = {}
    for label, folder in KUSTOMIZATIONS.items():
        result = subprocess.run(["kustomize", "build", str(folder)], capture_output=True, text=True, check=True)
        paths[label] = out / f"{folder.name}.yaml"
        paths[label].write_text(result.stdout)
    return paths


def test_kubernetes_manifests_pass_schema_validation(rendered):
    validate("kubernetes-validate", "--strict", *map(str, rendered.values()))


def test_dockerfile_essentials():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE_IMAGE=nvcr\.io/nvidia/pytorch:\S+", text, re.M)
    assert re.search(r"^USER \S+", text, re.M) and "useradd" in text, "runs as a non-root user"
    assert "HEALTHCHECK" in text and '"llamafactory-fp8-healthcheck"' in text
    assert 'ENTRYPOINT ["llamafactory-fp8"]' in text
    assert "docker/install.py" in text, "the image installs LLaMA-Factory the way CI does"
    assert not re.search(r"pip install[^\n]*\btorch\b", text), "never reinstalls the base's torch"


def compose():
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_compose_services_share_one_definition_with_gpus_and_mounts():
    services = compose()["services"]
    assert set(services) >= {"train", "train-fp8", "train-bf16", "inspect"}
    assert services["train-fp8"]["entrypoint"] == ["llamafactory-fp8", "train", "--fp8"]
    assert services["train"]["entrypoint"][-1] == "--auto"
    for service in services.values():
        device = service["deploy"]["resources"]["reservations"]["devices"][0]
        assert device["capabilities"] == ["gpu"]
        mounts = service["volumes"]
        assert "./configs:/workspace/configs:ro" in mounts and "./outputs:/workspace/outputs" in mounts
        assert any(m.startswith("hf-cache:") for m in mounts)
        assert service["working_dir"] == "/workspace", "configs/x.yaml resolves as it does on the host"
        assert service["ipc"] == "host" and service["ulimits"]["memlock"] == -1
        assert service["environment"]["HF_TOKEN"] == "${HF_TOKEN:-}", "the token comes from the environment"


def compose_compile_cache() -> str:
    """Where compose keeps torch.compile's caches on a volume (tests/test_container.py runs it against the image)."""
    (mount,) = [m for m in compose()["services"]["train"]["volumes"] if str(m).startswith("compile-cache:")]
    return mount.split(":")[1]


def documents(rendered, kind: str) -> list[dict]:
    return [doc for path in rendered.values() for doc in yaml.safe_load_all(path.read_text()) if doc["kind"] == kind]


def test_job_gpu_limit_equals_the_launchers_process_count(planner, rendered):
    plan = planner("h100-sxm-x8", {"model_name_or_path": str(BENCH_MODELS / "llama-3.1-8b"), "finetuning_type": "full"})
    for job in documents(rendered, "Job"):
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == plan.decision.processes_per_node


def test_the_jobs_memory_limit_holds_the_plan_for_its_own_training_yaml(planner, rendered):
    """The launcher reads the container's limit: the ConfigMap's run gets the plan it gets on an unlimited node, and
    under FSDP2 as well; a 70B in its place, whose only fitting plan offloads to the CPU, is refused before loading
    rather than killed in it."""
    config_maps = documents(rendered, "ConfigMap")  # the base's, in each rendering
    assert all(config_map["data"] == config_maps[0]["data"] for config_map in config_maps)
    keys = yaml.safe_load(config_maps[0]["data"]["train.yaml"])
    planned = {k: keys[k] for k in ("finetuning_type", "cutoff_len", "per_device_train_batch_size")}
    planned["model_name_or_path"] = str(BENCH_MODELS / "llama-3.1-8b")  # the ConfigMap's model, by its config.json
    unlimited = planner("h100-sxm-x8", planned, host_gib=2048.0).decision
    for job in documents(rendered, "Job"):
        (container,) = job["spec"]["template"]["spec"]["containers"]
        limit = float(container["resources"]["limits"]["memory"].removesuffix("Gi"))
        assert container["resources"]["requests"]["memory"] == container["resources"]["limits"]["memory"]
        limited = planner("h100-sxm-x8", planned, host_gib=limit).decision
        assert (limited.precision, limited.strategy.strategy.name) == (
            unlimited.precision,
            unlimited.strategy.strategy.name,
        )
        assert (unlimited.precision, unlimited.strategy.strategy.name) == ("fp8", "deepspeed-zero2")
        fsdp2 = planner("h100-sxm-x8", planned, host_gib=limit, strategy="fsdp2").decision  # or an image without it
        assert (fsdp2.precision, fsdp2.strategy.strategy.name) == ("fp8", "fsdp2")
        with pytest.raises(DoesNotFit, match=rf"GiB of CPU memory \({limit:.0f} here\)"):
            planner("h100-sxm-x8", {**planned, "model_name_or_path": str(model_dir("llama-3.1-70b"))}, host_gib=limit)


def test_jobs_fail_fast_on_config_errors_and_retry_preemption_and_stops(rendered):
    config_errors = sorted(
        cls.exit_code
        for cls in vars(errors).values()
        if isinstance(cls, type)
        and issubclass(cls, errors.LaunchError)
        and cls is not errors.LaunchError
        and not cls.passes
    ) + [errors.USAGE_EXIT_CODE, errors.DISK_FULL_EXIT_CODE]
    for job in documents(rendered, "Job"):
        spec = job["spec"]
        rules = spec["podFailurePolicy"]["rules"]
        assert sorted(rules[0]["onExitCodes"]["values"]) == config_errors
        assert rules[1]["action"] == "Ignore" and rules[1]["onExitCodes"]["values"] == [STOPPED_EXIT_CODE]
        assert rules[2] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
        pod = spec["template"]["spec"]
        assert pod["restartPolicy"] == "Never" and pod["terminationGracePeriodSeconds"] >= 120
        container = pod["containers"][0]
        for probe in ("startupProbe", "livenessProbe"):
            assert container[probe]["exec"]["command"] == ["llamafactory-fp8-healthcheck"], probe
        claims = {v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        cache = [m for m in container["volumeMounts"] if m["mountPath"] == "/home/trainer/.cache/huggingface"]
        assert cache and cache[0]["name"] in claims, "a replacement pod finds the downloaded model on the volume"
        compiled = [m for m in container["volumeMounts"] if m["mountPath"] == compose_compile_cache()]
        assert compiled and compiled[0]["name"] in claims, "a rerun finds torch.compile's caches, as under compose"
        assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in pod["volumes"]), "/dev/shm in memory"


def test_multinode_job_gives_the_launcher_rank_and_master(rendered):
    (multinode,) = [job for job in documents(rendered, "Job") if job["spec"].get("completionMode") == "Indexed"]
    pod = multinode["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["NNODES"] == str(multinode["spec"]["completions"]) == str(multinode["spec"]["parallelism"])
    assert env["MASTER_ADDR"] == f"{multinode['metadata']['name']}-0.{pod['subdomain']}", "pod 0 through its DNS name"
    (service,) = documents(rendered, "Service")
    assert service["metadata"]["name"] == pod["subdomain"] and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"job-name": multinode["metadata"]["name"]}
    assert "HF_TOKEN" in env, "the overlay adds to the single-node Job's environment rather than replacing it"


def test_compose_cpu_override_drops_the_gpu_and_memlock_and_allows_the_cpu(container_tools):
    merged = subprocess.run(
        ["docker", "compose", "-f", "compose.yaml", "-f", "compose.cpu.yaml", "config", "--format", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    services = json.loads(merged.stdout)["services"]
    assert set(services) == set(compose()["services"])
    for service in services.values():
        assert "deploy" not in service and "memlock" not in service.get("ulimits", {})
        assert service["entrypoint"][-1] == "--allow-cpu"


@pytest.mark.parametrize("example", sorted((ROOT / "configs" / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_example_training_configs_load(example):
    from llamafactory_fp8.training_config import load_training_config

    assert load_training_config(example, []).stage in ("sft", "pt")

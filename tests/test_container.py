"""The image, built from docker/Dockerfile on the NGC stand-in (docker/standin/), run as users run it: `docker run`,
`docker compose` with compose.cpu.yaml, `docker stop`, the HEALTHCHECK. Containers run with no network. Skipped,
saying why, where no Docker engine can be had (CI starts one through scripts/container-tools)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from llamafactory_fp8.errors import STOPPED_EXIT_CODE
from llamafactory_fp8.lf_files import lf_examples_dir

from .conftest import ROOT, SUMMARY, load_install

IMAGE = "llamafactory-fp8:latest"
STANDIN = "llamafactory-fp8/ngc-standin:25.12-py3"
CALLER = "4321"  # the uid and gid a user runs compose as
GUARDED = ("torch", "transformer-engine", "flash-attn", "torchao")  # the base's own; the image must keep them

pytestmark = pytest.mark.container


INSTALL = load_install()


def docker(*args: str, timeout: float = 300, check: bool = False, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=check, env={**os.environ, **env}
    )


@pytest.fixture(scope="session")
def image(container_tools, request) -> str:
    """The stand-in base, then `docker compose build`, as a user builds the image from a clone."""
    subprocess.run([str(ROOT / "docker" / "standin" / "build")], check=True, capture_output=True, timeout=900)
    started = time.monotonic()
    built = subprocess.run(
        ["docker", "compose", "build", "train"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "BASE_IMAGE": STANDIN},
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    size = int(docker("image", "inspect", "--format", "{{.Size}}", IMAGE, check=True).stdout)
    request.config.stash.setdefault(SUMMARY, []).append(
        f"image {IMAGE}: `docker compose build` on {STANDIN} took {time.monotonic() - started:.0f} s; "
        f"{size / 2**30:.2f} GiB"
    )
    return IMAGE


@pytest.fixture
def project(tmp_path) -> Path:
    """A user's checkout as compose mounts it (configs, data, models, and outputs and saves made as compose.yaml
    says: `mkdir -p outputs saves`), owned by the caller."""
    for folder in ("configs", "data", "models"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    (tmp_path / "outputs").mkdir()
    (tmp_path / "saves").mkdir()
    for path in [tmp_path, *tmp_path.rglob("*")]:
        os.chown(path, int(CALLER), int(CALLER))
    return tmp_path


def compose(project: Path, *args: str, timeout: float = 600, **env: str) -> subprocess.Popen:
    """`docker compose -f compose.yaml -f compose.cpu.yaml ...` in `project`, as the caller, with no network."""
    return subprocess.Popen(
        [
            "docker",
            "compose",
            "--project-directory",
            str(project),
            "-f",
            str(ROOT / "compose.yaml"),
            "-f",
            str(ROOT / "compose.cpu.yaml"),
            *args,
        ],
        env={**os.environ, "UID": CALLER, "GID": CALLER, "LLAMAFACTORY_FP8_NETWORK": "none", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def wait_until(condition, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def logged_steps(log: Path) -> list[int]:
    """The steps LLaMA-Factory logged a loss for (its last line, a summary, has none)."""
    if not log.exists():
        return []
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [entry["current_steps"] for entry in entries if "loss" in entry]


def owners(folder: Path) -> set[tuple[int, int]]:
    return {(path.stat().st_uid, path.stat().st_gid) for path in [folder, *folder.rglob("*")]}


def test_inspect_says_there_is_no_gpu(image):
    result = docker("run", "--rm", "--network", "none", image, "inspect")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^GPUs:\n  none \(NVML", result.stdout, re.M), result.stdout
    assert "train would refuse (exit 3): no GPU visible" in result.stdout


def test_training_without_a_gpu_is_refused_in_one_line(image):
    result = docker("run", "--rm", "--network", "none", image, "--bf16")
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1 and "--allow-cpu" in result.stderr, result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_the_demo_trains_on_the_cpu_when_allowed(image):
    result = docker("run", "--rm", "--network", "none", image, "--bf16", "--allow-cpu", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "train_loss" in result.stdout + result.stderr


def test_compose_on_the_cpu_trains_a_project_config_and_the_outputs_are_the_callers(image, project):
    (project / "configs" / "my_model.yaml").write_text(
        (project / "configs" / "examples" / "demo.yaml").read_text().replace("outputs/demo", "outputs/my_model")
    )
    code, output = finish(compose(project, "run", "--rm", "-T", "train-bf16", "configs/my_model.yaml"))
    assert code == 0, output[-4000:]
    outputs = project / "outputs" / "my_model"
    assert (outputs / "model.safetensors").is_file() and (outputs / "trainer_state.json").is_file()
    assert owners(outputs) == {(int(CALLER), int(CALLER))}


def test_an_output_dir_under_saves_lands_on_the_host_as_the_callers(image, project):
    """Issue #19's measured loss: LLaMA-Factory's `output_dir: saves/...` went down with the container, exit 0."""
    run = ("run", "--rm", "-T", "train-bf16", "configs/examples/demo.yaml", "output_dir=saves/demo", "max_steps=2")
    code, output = finish(compose(project, *run))
    assert code == 0, output[-4000:]
    saved = project / "saves" / "demo"
    assert (saved / "model.safetensors").is_file() and (saved / "trainer_state.json").is_file()
    assert owners(saved) == {(int(CALLER), int(CALLER))}


def test_without_a_saves_folder_compose_stops_before_the_run_naming_it_and_makes_none_as_root(image, project):
    (project / "saves").rmdir()
    code, output = finish(compose(project, "run", "--rm", "-T", "train-bf16", "configs/examples/demo.yaml"))
    assert code != 0
    assert f"bind source path does not exist: {project / 'saves'}" in output, output[-2000:]
    assert not (project / "saves").exists()


def test_the_fp8_guides_example_trains_on_llamafactorys_demo_data_into_saves_on_the_host(image, project):
    """The FP8 guide's "Complete Example" as its readers write it: only the model becomes the image's demo model
    (whose tokenizer holds the qwen template's markers), for two steps, in BF16 on the CPU."""
    guide = "configs/examples/fp8-guide-qwen2.5-7b.yaml"
    shrunk = ("model_name_or_path=demo/tiny-llama", "max_steps=2")
    code, output = finish(compose(project, "run", "--rm", "-T", "train-bf16", guide, *shrunk))
    assert code == 0, output[-4000:]
    saved = project / "saves" / "qwen-7b-fp8"
    assert (saved / "model.safetensors").is_file()
    assert json.loads((saved / "trainer_state.json").read_text())["global_step"] == 2
    assert owners(saved) == {(int(CALLER), int(CALLER))}


def test_llamafactorys_full_example_copied_into_configs_finds_its_deepspeed_file_in_the_image(image, project):
    """Its `deepspeed: examples/deepspeed/ds_z3_config.json` is relative to LLaMA-Factory's source root, which the
    user's folder is not: the plan passes the image's copy of the release's file."""
    shutil.copy(lf_examples_dir() / "train_full" / "qwen3_full_sft.yaml", project / "configs")
    planned = ("configs/qwen3_full_sft.yaml", "model_name_or_path=demo/tiny-llama", "--processes", "2")
    code, output = finish(compose(project, "run", "--rm", "-T", "train", *planned, "--dry-run"))
    assert code == 0, output[-3000:]
    assert "DeepSpeed ZeRO-3 over 2 (the YAML's)" in output
    assert " deepspeed=/opt/llamafactory-fp8/llamafactory/examples/deepspeed/ds_z3_config.json " in output


def test_docker_stop_saves_a_checkpoint_exits_75_and_the_same_command_resumes(image, project):
    name = f"lf8-stop-{uuid.uuid4().hex[:8]}"
    command = (
        "run",
        "--rm",
        "-T",
        "--name",
        name,
        "train-bf16",
        "configs/examples/demo.yaml",
        "max_steps=400",
        "save_steps=1000",
    )
    outputs = project / "outputs" / "demo"
    run = compose(project, *command)
    try:
        wait_until(lambda: logged_steps(outputs / "trainer_log.jsonl") or run.poll() is not None, 300, "training")
        started = time.monotonic()
        stop = docker("stop", name, timeout=400)
        code, output = finish(run)
    finally:
        docker("rm", "-f", name)
    assert stop.returncode == 0 and time.monotonic() - started < 300, "stopped within compose's 5-minute grace"
    assert code == STOPPED_EXIT_CODE, output[-4000:]
    (checkpoint,) = outputs.glob("checkpoint-*")
    stopped_at = int(checkpoint.name.split("-")[1])
    assert 0 < stopped_at < 400
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == stopped_at, "complete"

    code, output = finish(compose(project, *command[:3], *command[5:]))
    assert code == 0, output[-4000:]
    assert re.search(rf"^  resume +from \S*{checkpoint.name}: ", output, re.M), output[:3000]
    steps = logged_steps(outputs / "trainer_log.jsonl")
    assert steps == sorted(set(steps)) and steps[-1] == 400, "the step count continues where the stop left it"
    assert any(step > stopped_at for step in steps) and min(s for s in steps if s > stopped_at) <= stopped_at + 2


def health(name: str) -> str:
    return docker("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip()


def test_the_healthcheck_is_healthy_while_training_and_unhealthy_once_the_trainer_freezes(image, tmp_path):
    name, stall_after_s = f"lf8-health-{uuid.uuid4().hex[:8]}", 10
    outputs = tmp_path / "outputs"  # a volume, as the launcher requires of an output_dir in a container
    outputs.mkdir()
    os.chown(outputs, 1000, 1000)
    started = docker(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "none",
        "-v",
        f"{outputs}:/workspace/outputs",
        "--health-interval",
        "2s",
        "--health-retries",
        "1",
        "--health-timeout",
        "30s",
        "--health-start-period",
        "0s",
        "-e",
        f"LLAMAFACTORY_FP8_STALL_AFTER_S={stall_after_s}",
        image,
        "train",
        "configs/examples/demo.yaml",
        "--bf16",
        "--allow-cpu",
        "max_steps=100000",
        "save_steps=100000",
        "logging_steps=1",
    )
    assert started.returncode == 0, started.stderr
    try:
        in_container = lambda *cmd: docker("exec", name, *cmd)  # noqa: E731
        wait_until(
            lambda: in_container("test", "-s", "outputs/demo/trainer_log.jsonl").returncode == 0, 300, "training"
        )
        time.sleep(stall_after_s + 4)  # longer than the stall window: only progress keeps it healthy
        assert health(name) == "healthy"

        state = json.loads(in_container("bash", "-c", 'cat "$LLAMAFACTORY_FP8_STATE_DIR"/runs/*/run.json').stdout)
        frozen_at = time.monotonic()
        freeze = in_container("bash", "-c", f"kill -STOP -- -{state['trainer_pid']}")  # the trainer's process group
        assert freeze.returncode == 0, freeze.stderr
        wait_until(lambda: health(name) == "unhealthy", stall_after_s + 60, "the healthcheck to notice the freeze")
        assert time.monotonic() - frozen_at >= stall_after_s - 2
        last = json.loads(docker("inspect", "--format", "{{json .State.Health.Log}}", name).stdout)[-1]
        assert last["ExitCode"] == 1 and "rank 0 stalled" in last["Output"]
    finally:
        docker("rm", "-f", name)


IN_IMAGE_PROBE = """
import json, sys
from pathlib import Path
from llamafactory_fp8.lf_data import merged_dataset_info
from llamafactory_fp8.lf_files import lf_data_dir
from llamafactory_fp8.lf_schema import check_keys, load_schema
merged = merged_dataset_info(Path("data"), lf_data_dir())
print(json.dumps({
    "lf_data": str(lf_data_dir()),
    "alpaca_en_demo": Path(merged["alpaca_en_demo"]["file_name"]).is_file(),
    "demo_sft": "demo_sft" in merged,
    "problems": [str(problem) for problem in check_keys({"learning_rate": "abc", "stage": "sft"}, load_schema())],
    "heavy": sorted(m for m in ("torch", "transformers") if m in sys.modules),
}))
"""


def test_the_image_has_llamafactorys_demo_data_and_key_schema_for_any_uid(image):
    """Built at install time outside /workspace, where compose's mounts cannot hide them; read as the caller's uid."""
    as_caller = ("--user", f"{CALLER}:{CALLER}", "--entrypoint", "python3")
    probe = docker("run", "--rm", "--network", "none", *as_caller, image, "-c", IN_IMAGE_PROBE)
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert json.loads(probe.stdout.splitlines()[-1]) == {
        "lf_data": "/opt/llamafactory-fp8/llamafactory/data",
        "alpaca_en_demo": True,
        "demo_sft": True,
        "problems": ["learning_rate: must be a number, got 'abc'"],
        "heavy": [],
    }


COMPILE_CACHE_PROBE = """
import pathlib, sys
from torch._inductor.runtime.cache_dir_utils import cache_dir, triton_cache_dir
marker = pathlib.Path(cache_dir()) / sys.argv[1]
if sys.argv[2] == "write":
    marker.write_text("compiled")
else:
    print(marker.read_text(), triton_cache_dir(0).startswith(cache_dir()))
    marker.unlink()
"""


def test_torch_compiles_into_a_volume_that_the_next_run_finds(image, project):
    """Inductor's and Triton's caches outlive the container, written as the caller's uid: a rerun reuses what the
    first run compiled."""
    marker = f"probe-{uuid.uuid4().hex}"
    python = ("run", "--rm", "-T", "--entrypoint", "python3", "train-bf16", "-c", COMPILE_CACHE_PROBE, marker)
    code, output = finish(compose(project, *python, "write"))
    assert code == 0, output[-2000:]
    code, output = finish(compose(project, *python, "read"))
    assert code == 0, output[-2000:]
    assert output.splitlines()[-1] == "compiled True"


def test_the_image_runs_as_a_non_root_user(image):
    assert docker("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip() == "1000:1000"
    assert docker("run", "--rm", "--network", "none", "--entrypoint", "id", image, "-u").stdout.strip() == "1000"


def test_no_token_is_baked_in_and_hf_token_comes_only_from_the_callers_environment(image, project):
    baked = docker("history", "--no-trunc", image).stdout + docker("image", "inspect", image).stdout
    assert not re.search(r"HF_TOKEN=\S|hf_[A-Za-z0-9]{20,}", baked)
    show_token = ("run", "--rm", "-T", "--entrypoint", "printenv", "inspect", "HF_TOKEN")
    assert (
        finish(compose(project, *show_token, HF_TOKEN="hf_ThisIsTheCallersOwnTokenOnly"))[1]
        .strip()
        .endswith("hf_ThisIsTheCallersOwnTokenOnly")
    )
    without = {key: value for key, value in os.environ.items() if key != "HF_TOKEN"}
    process = subprocess.run(
        [
            "docker",
            "compose",
            "-f",
            str(ROOT / "compose.yaml"),
            "-f",
            str(ROOT / "compose.cpu.yaml"),
            "--project-directory",
            str(project),
            *show_token,
        ],
        env={**without, "LLAMAFACTORY_FP8_NETWORK": "none"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.stdout.strip() == "", "no token unless the caller has one"


def distributions(image_name: str) -> dict[str, str]:
    listing = docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "python3",
        image_name,
        "-c",
        "import importlib.metadata as m, json; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))",
    )
    return {INSTALL.canonical(name): version for name, version in json.loads(listing.stdout).items()}


def test_the_images_packages_are_the_lock_and_the_bases_own(image):
    locked = INSTALL.read_lock(INSTALL.LOCK, ["image"])
    in_image, in_base = distributions(image), distributions(STANDIN)
    record = json.loads(
        docker(
            "run", "--rm", "--network", "none", "--entrypoint", "cat", image, "/opt/llamafactory-fp8/installed.json"
        ).stdout
    )
    for name, (version, _) in locked.items():
        if name in record["kept"]:
            assert in_image[name] == in_base[name] == record["kept"][name], f"{name} kept from the base"
        else:
            assert in_image.get(name) == version, f"{name}: image has {in_image.get(name)}, the lock {version}"
    for name in GUARDED:
        assert in_image[name] == in_base[name], f"the base's {name} was replaced"

"""Shared helpers: the NVML fake at its one boundary, and running the real CLI in a subprocess."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from llamafactory_fp8 import capabilities, contract
from llamafactory_fp8 import gpus as gpus_module
from llamafactory_fp8.inspection import inspect_run
from llamafactory_fp8.plan import LaunchPlan, make_plan
from llamafactory_fp8.request import Request
from llamafactory_fp8.run_info import run_dir
from llamafactory_fp8.strategies import STRATEGIES

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "tests" / "nvml_profiles"
FAKE_NVML_DIR = ROOT / "tests" / "fake_nvml"
# The CPU memory of the machine a recorded GPU profile stands for (a DGX H100 has 2 TiB), not this machine's: the
# planner needs it where a strategy offloads to the CPU.
GPU_HOST_MEMORY_GIB = "1024"
BENCH_MODELS = ROOT / "bench" / "models"
TEST_MODELS = ROOT / "tests" / "models"  # real shapes the bench does not run, up to 405B
ALL_FP8_BACKENDS = frozenset({"torchao", "te"})
ALL_STRATEGIES = frozenset(strategy.name for strategy in STRATEGIES)


SUMMARY = pytest.StashKey[list]()  # lines for the end of the test run (the image's build time and size)


def pytest_terminal_summary(terminalreporter, config):
    for line in config.stash.get(SUMMARY, []):
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def container_tools() -> None:
    """Docker's engine with the Compose plugin, and kustomize: started (installed, in CI) by
    scripts/container-tools; the tests that need them skip, saying why, where they cannot be had."""
    result = subprocess.run([str(ROOT / "scripts" / "container-tools")], capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        said = (result.stderr + result.stdout).strip().splitlines() or [
            f"scripts/container-tools exited {result.returncode}"
        ]
        pytest.skip(f"no container tools: {said[-1]}")


def profile_path(name: str) -> Path:
    return PROFILES / f"{name}.json"


def _load_fake_pynvml():
    spec = importlib.util.spec_from_file_location("fake_pynvml", FAKE_NVML_DIR / "pynvml.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def nvml_profile(monkeypatch):
    """Replace pynvml inside the product with the replaying fake; call the result with a profile name."""
    monkeypatch.setattr(gpus_module, "pynvml", _load_fake_pynvml())
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def use(name: str) -> None:
        monkeypatch.setenv("FAKE_NVML_PROFILE", str(profile_path(name)))
        monkeypatch.setenv(contract.HOST_MEMORY_GIB.name, GPU_HOST_MEMORY_GIB)

    return use


def model_dir(name: str) -> Path:
    """A model folder holding only config.json: bench/models/NAME or tests/models/NAME."""
    return BENCH_MODELS / name if (BENCH_MODELS / name).is_dir() else TEST_MODELS / name


@pytest.fixture
def planner(nvml_profile, tmp_path, monkeypatch):
    """Plan a run in-process, as `train --dry-run` does: an NVML profile, the training YAML's keys, the flags.
    What this machine has installed and its memory are fixed (every backend and strategy, 1 TiB), so plans do
    not depend on it."""
    monkeypatch.setattr(capabilities, "_installed", lambda module: True)  # every optional package, as on a GPU host
    # no Hub: a model id not in the cache is one whose size is unknown (the discard port refuses at once)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")

    def plan(
        profile: str,
        keys: dict,
        backends: frozenset = ALL_FP8_BACKENDS,
        strategies: frozenset = ALL_STRATEGIES,
        host_gib: float | None = float(GPU_HOST_MEMORY_GIB),
        **flags,
    ) -> LaunchPlan:
        nvml_profile(profile)
        path = tmp_path / "train.yaml"
        path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "do_train": True, **keys}))
        found = inspect_run(Request(config=path, **flags))
        return make_plan(
            replace(
                found,
                installed_backends=backends,
                installed_strategies=strategies,
                host_memory_gib=host_gib,
                host_memory_is_this_machines=True,
            )
        )

    return plan


def cli_env(profile: str, **extra: str) -> dict[str, str]:
    """Environment for a CLI subprocess whose `import pynvml` finds the fake replaying `profile`."""
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "LLAMAFACTORY_FP8_HOME")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FAKE_NVML_DIR), env.get("PYTHONPATH")]))
    env["FAKE_NVML_PROFILE"] = str(profile_path(profile))
    if profile != "no-gpu":  # the recorded GPUs' machine, not this one
        env[contract.HOST_MEMORY_GIB.name] = GPU_HOST_MEMORY_GIB
    env.update(extra)
    return env


def run_cli(*args: str, profile: str = "no-gpu", cwd: Path = ROOT, timeout: float = 600, **extra_env: str):
    return subprocess.run(
        [sys.executable, "-m", "llamafactory_fp8", *args],
        cwd=cwd,
        env=cli_env(profile, **extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_state(state_dir: Path, output_dir: Path, node_suffix: str = "") -> Path:
    """The folder where the launcher keeps a run's state, under its LLAMAFACTORY_FP8_STATE_DIR."""
    return run_dir(output_dir, node_suffix, {"LLAMAFACTORY_FP8_STATE_DIR": str(state_dir)})


def start_demo_training(
    output_dir: Path, model: Path, state_dir: Path | None, *overrides: str, **env: str
) -> subprocess.Popen:
    """The launcher training the demo on the CPU, in the background, with its own state dir, as in its own pod
    (None: the default one, shared with every run of this user)."""
    if state_dir is not None:
        env = {"LLAMAFACTORY_FP8_STATE_DIR": str(state_dir), **env}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llamafactory_fp8",
            "train",
            "configs/examples/demo.yaml",
            "--allow-cpu",
            f"output_dir={output_dir}",
            f"model_name_or_path={model}",
            *overrides,
        ],
        cwd=ROOT,
        env=cli_env("no-gpu", **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def free_port() -> str:
    """A port nothing on localhost listens on, for a rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def start_two_nodes(output_dir: Path, model: Path, tmp_path: Path, *overrides: str) -> list[subprocess.Popen]:
    """Two launchers on localhost as the two pods of an Indexed Job, sharing output_dir as on a PVC."""
    port = free_port()
    return [
        start_demo_training(
            output_dir,
            model,
            tmp_path / f"state{rank}",
            *overrides,
            NNODES="2",
            JOB_COMPLETION_INDEX=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
        )
        for rank in (0, 1)
    ]


def load_install():
    """docker/install.py, the installer of the image and the venv: its reader of the lock, its names, its patches."""
    spec = importlib.util.spec_from_file_location("install", ROOT / "docker" / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

"""Shared helpers: the NVML fake at its one boundary, and running the real CLI in a subprocess."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llamafactory_fp8 import gpus as gpus_module

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "tests" / "nvml_profiles"
FAKE_NVML_DIR = ROOT / "tests" / "fake_nvml"
BENCH_MODELS = ROOT / "bench" / "models"


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

    return use


def cli_env(profile: str, **extra: str) -> dict[str, str]:
    """Environment for a CLI subprocess whose `import pynvml` finds the fake replaying `profile`."""
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "LLAMAFACTORY_FP8_HOME")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FAKE_NVML_DIR), env.get("PYTHONPATH")]))
    env["FAKE_NVML_PROFILE"] = str(profile_path(profile))
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

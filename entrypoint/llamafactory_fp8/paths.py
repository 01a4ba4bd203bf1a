"""Where the project's shipped files (configs/, data/) live: the image sets LLAMAFACTORY_FP8_HOME; a source
checkout finds them next to the package."""

from __future__ import annotations

from pathlib import Path

from . import contract


def project_home() -> Path:
    configured = contract.HOME.read()
    if configured is not None:
        return configured
    for parent in Path(__file__).resolve().parents:
        if (parent / "configs" / "accelerate").is_dir():
            return parent
    return Path.cwd()


def accelerate_configs_dir() -> Path:
    return project_home() / "configs" / "accelerate"


def deepspeed_config(name: str) -> Path:
    return project_home() / "configs" / "deepspeed" / name


def demo_config() -> Path:
    return project_home() / "configs" / "examples" / "demo.yaml"

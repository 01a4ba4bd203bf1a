"""Our patches against the pinned LLaMA-Factory: they apply to the release as published, FP8 requests reach
Accelerate, and text training needs no torchaudio. The same probes run against the pristine release and the patched
install. The pinned version is the lock's (docker/requirements.lock, from docker/requirements-nodeps.in)."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from .conftest import ROOT, load_install

INSTALL = load_install()
VERSION = INSTALL.read_lock(INSTALL.LOCK, ["image"])["llamafactory"][0]
PATCHES = INSTALL.llamafactory_patches(VERSION)

PROBE = """
import json, os, sys
from llamafactory.hparams import TrainingArguments
from llamafactory.train.fp8_utils import configure_fp8_environment
args = TrainingArguments(
    output_dir=sys.argv[1], bf16=True, use_cpu=True, fp8=sys.argv[2] == "fp8", fp8_backend=sys.argv[3]
)
try:
    configure_fp8_environment(args)
    outcome = "ok"
except ValueError as error:
    outcome = f"refused: {error}"
print(json.dumps({"outcome": outcome, "fp8": args.fp8, "mixed_precision": args.mixed_precision,
                  "env": {k: v for k, v in os.environ.items() if k.startswith("ACCELERATE_")}}))
"""


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """The release as published on PyPI, unpacked, unpatched."""
    download = tmp_path_factory.mktemp("wheel")
    fetched = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", f"llamafactory=={VERSION}", "-d", str(download)],
        capture_output=True,
        text=True,
    )
    if fetched.returncode != 0:
        pytest.skip(f"cannot fetch llamafactory=={VERSION} from the package index: {fetched.stderr.strip()[-200:]}")
    unpacked = tmp_path_factory.mktemp("pristine")
    with zipfile.ZipFile(next(download.glob("*.whl"))) as wheel:
        wheel.extractall(unpacked)
    return unpacked


def probe(tmp_path, fp8: bool, backend: str, env: dict, pristine_dir: Path | None = None) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    if pristine_dir is not None:
        clean["PYTHONPATH"] = str(pristine_dir)
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path), "fp8" if fp8 else "no", backend],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_patches_apply_cleanly_to_the_published_release(pristine, tmp_path):
    for change in PATCHES:
        applied = subprocess.run(
            ["patch", "--dry-run", "--forward", "-p1", "-d", str(pristine), "-i", str(change)],
            capture_output=True,
            text=True,
        )
        assert applied.returncode == 0, applied.stdout + applied.stderr


def test_the_install_stops_in_one_line_before_installing_when_the_pinned_release_has_no_patches(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"# [image]\nllamafactory==0.0.1 \\\n    --hash=sha256:{'0' * 64}\n")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, str(ROOT / "docker" / "install.py"), "--lock", str(lock), "--target", str(site), "image"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "install: no patches for the pinned llamafactory 0.0.1: patches/llamafactory-0.0.1 is missing "
        "(patches/README.md says how to carry the fixes to a new release)"
    ]
    assert not any(site.iterdir()), "nothing installed"


def test_the_pinned_release_has_its_patches():
    assert PATCHES, f"patches/llamafactory-{VERSION}/ holds no patch"


TORCHAUDIO_PROBE = """
import sys
sys.modules["torchaudio"] = None  # as on NGC, where PyPI's torchaudio does not load
try:
    import llamafactory.data.mm_plugin
    print("imported")
except ImportError as error:
    print(f"ImportError: {error}")
"""


def test_text_training_imports_llamafactorys_data_path_without_torchaudio(pristine):
    def probe(pythonpath: str | None) -> str:
        env = {**os.environ, "PYTHONPATH": pythonpath} if pythonpath else dict(os.environ)
        result = subprocess.run(
            [sys.executable, "-c", TORCHAUDIO_PROBE], env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout.strip().splitlines()[-1]

    assert probe(str(pristine)).startswith("ImportError: import of torchaudio halted"), "upstream needs torchaudio"
    assert probe(None) == "imported"


def test_installed_llamafactory_is_the_patched_release():
    import llamafactory
    from llamafactory.train import fp8_utils

    assert llamafactory.__version__ == VERSION
    assert hasattr(fp8_utils, "FP8LayerReportCallback")


ACCELERATE_TE_CONFIG = {
    "ACCELERATE_MIXED_PRECISION": "fp8",
    "ACCELERATE_FP8_BACKEND": "TE",
    "ACCELERATE_FP8_AMAX_HISTORY_LEN": "1024",
}


def test_accelerate_fp8_config_wins_over_bf16_yaml(pristine, tmp_path):
    before = probe(tmp_path, fp8=False, backend="auto", env=ACCELERATE_TE_CONFIG, pristine_dir=pristine)
    after = probe(tmp_path, fp8=False, backend="auto", env=ACCELERATE_TE_CONFIG)
    assert before["mixed_precision"] == "bf16", "upstream: the Trainer's Accelerator silently runs BF16"
    assert (after["fp8"], after["mixed_precision"]) == (True, "fp8")
    assert after["env"]["ACCELERATE_FP8_AMAX_HISTORY_LEN"] == "1024", "the config's recipe is kept"
    assert after["env"]["ACCELERATE_FP8_FORMAT"] == "HYBRID"


def test_fp8_backend_reaches_accelerate(pristine, tmp_path):
    before = probe(tmp_path, fp8=True, backend="torchao", env={}, pristine_dir=pristine)
    after = probe(tmp_path, fp8=True, backend="torchao", env={})
    assert before["mixed_precision"] == "bf16" and "ACCELERATE_FP8_BACKEND" not in before["env"]
    assert after["mixed_precision"] == "fp8" and after["env"]["ACCELERATE_FP8_BACKEND"] == "AO"


def test_llamafactory_te_recipe_only_fills_what_the_config_left_unset(tmp_path):
    defaults = probe(tmp_path, fp8=True, backend="te", env={})["env"]
    assert (defaults["ACCELERATE_FP8_BACKEND"], defaults["ACCELERATE_FP8_AMAX_HISTORY_LEN"]) == ("TE", "16")
    assert defaults["ACCELERATE_FP8_AMAX_COMPUTE_ALGO"] == "max"


def test_config_backend_wins_over_yaml_backend(tmp_path):
    after = probe(
        tmp_path, fp8=True, backend="te", env={"ACCELERATE_MIXED_PRECISION": "fp8", "ACCELERATE_FP8_BACKEND": "AO"}
    )
    assert after["env"]["ACCELERATE_FP8_BACKEND"] == "AO"
    assert "ACCELERATE_FP8_AMAX_HISTORY_LEN" not in after["env"], "no TE recipe for a torchao run"


def test_fp8_yaml_against_a_bf16_accelerate_config_is_refused(tmp_path):
    after = probe(tmp_path, fp8=True, backend="torchao", env={"ACCELERATE_MIXED_PRECISION": "bf16"})
    assert after["outcome"].startswith("refused: fp8 is set but the Accelerate config asks for mixed_precision=bf16")


class Float8Linear(torch.nn.Linear):
    """Stands for torchao's class of that name, which Accelerate swaps in on a GPU."""

    __module__ = "torchao.float8.float8_linear"


def test_fp8_layer_report_counts_converted_layers_and_fails_on_none():
    from llamafactory.train.fp8_utils import FP8LayerReportCallback, count_fp8_linear_layers

    converted = torch.nn.Sequential(Float8Linear(16, 16), torch.nn.Linear(16, 16), Float8Linear(16, 16))
    assert count_fp8_linear_layers(converted) == (2, 3)
    FP8LayerReportCallback().on_train_begin(None, None, None, model=converted)
    with pytest.raises(RuntimeError, match="no linear layer was converted"):
        FP8LayerReportCallback().on_train_begin(None, None, None, model=torch.nn.Linear(16, 16))

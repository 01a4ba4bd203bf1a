"""The memory model against every committed benchmark: each run is replayed through the launcher exactly as
bench/run_bench.py started it (its own argument list, captured), and the plan's estimate must be within 15% of
the peak memory the run reserved. A result committed later is checked the same way, with no change here."""

import argparse
import contextlib
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from llamafactory_fp8 import capabilities, memory
from llamafactory_fp8 import inspection as inspection_module
from llamafactory_fp8.cli import main
from llamafactory_fp8.model_facts import read_model_facts
from llamafactory_fp8.strategies import BY_NAME as STRATEGIES
from llamafactory_fp8.training_config import load_training_config

from .conftest import ALL_FP8_BACKENDS, BENCH_MODELS, PROFILES, ROOT, free_port, model_dir

RESULTS = sorted((ROOT / "bench" / "results").glob("*/*.json"))
MEASURED = [
    (path, index)
    for path in RESULTS
    for index, result in enumerate(json.loads(path.read_text())["results"])
    if result.get("peak_reserved_gib")
]
TOLERANCE = 0.15


@contextlib.contextmanager
def bench_module():
    """bench/run_bench.py itself, so that each case is replayed with the arguments the bench gave it."""
    spec = importlib.util.spec_from_file_location("run_bench", ROOT / "bench" / "run_bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


@pytest.fixture(scope="module")
def run_bench():
    with bench_module() as module:
        yield module


def case_of(run_bench, result: dict):
    return run_bench.Case(**{**result["case"], "extra": tuple(result["case"]["extra"])})


def log_of(run_bench, path: Path, result: dict) -> Path:
    """The run's own log, beside its results file."""
    return path.parent / "logs" / f"{case_of(run_bench, result).name}.log"


def launcher_arguments(bench_module, start) -> list[str]:
    """The launcher's arguments a bench module passes to subprocess.run when `start()` runs it (captured, not
    copied)."""
    captured = []

    def record(args, **kwargs):
        captured.append(args)
        return subprocess.CompletedProcess(args, 1, "", "")

    original, bench_module.subprocess.run = bench_module.subprocess.run, record
    try:
        start()
    finally:
        bench_module.subprocess.run = original
    (args,) = captured
    assert args[1:3] == ["-m", "llamafactory_fp8"], args
    return args[3:]


def bench_arguments(run_bench, case, model: Path, work: Path) -> list[str]:
    """The launcher's arguments for `case`, as bench/run_bench.py's run_case builds them."""
    return launcher_arguments(run_bench, lambda: run_bench.run_case(case, model, work / "data", work, work, None))


def planned_decision(args: list[str], what: str = "") -> dict:
    """`train ARGS --dry-run --json`, in this process and quiet: the plan's decision."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main([*args, "--dry-run", "--json"]) == 0, what
    return json.loads(out.getvalue())["decision"]


def profile_for(device: str, gpus: int = 1) -> str:
    """The recorded NVML profile with the fewest, and at least `gpus`, of the GPU the run measured on."""
    for path in sorted(PROFILES.glob("*.json"), key=lambda path: len(json.loads(path.read_text()).get("devices", []))):
        devices = json.loads(path.read_text()).get("devices", [])
        if (
            len(devices) >= gpus
            and {d["name"] for d in devices} == {device}
            and not any(d.get("mig_mode") or d.get("ecc_uncorrected") for d in devices)
        ):
            return path.stem
    raise AssertionError(
        f"no recorded NVML profile with {gpus} x {device}: record one with scripts/record_nvml_profile.py"
    )


def strategy_that_ran(log: Path) -> str:
    """The strategy the launcher's block in the run's own log names, so that the estimate is replayed for what ran
    whatever the launcher of today would choose (CPU offload, where an estimate sent results/batch8-offloaded/).
    The oldest results' logs carry the names of their day, not the case's: those all ran on one device."""
    lines = log.read_text().splitlines() if log.exists() else []
    choice = next((line for line in lines if line.startswith("  choice ")), "  choice one device")
    layout = choice.rsplit(", ", 1)[-1].removeprefix("  choice ").removesuffix(" (--strategy)").split(" over ")[0]
    if layout == "one device":
        return "ddp"
    return next(strategy.name for strategy in STRATEGIES.values() if strategy.label == layout)


def test_every_result_with_a_peak_is_checked():
    assert len(MEASURED) >= 20  # the results committed when this test was written: none may drop out unseen


def replay(
    path: Path, index: int, run_bench, tmp_path, monkeypatch, nvml_profile, as_a_user: bool = False
) -> tuple[dict, dict]:
    """The launcher's --dry-run plan for one committed run, on the recorded profile of its GPU: with the arguments
    the bench gave it and the strategy that ran, or `as_a_user`, without the bench's --strategy and
    --no-memory-check (what a user types for the same YAML)."""
    payload = json.loads(path.read_text())
    result = payload["results"][index]
    case = case_of(run_bench, result)
    config = json.loads((BENCH_MODELS / case.shape / "config.json").read_text())
    if case.layers:  # the depth run_bench's build_model gives the random-weight model
        config["num_hidden_layers"] = case.layers
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(config))
    run_bench.runner.build_corpus(tmp_path, 0.01)  # as the bench writes it before it launches
    args = bench_arguments(run_bench, case, model, tmp_path)
    if "--strategy" in args:
        at = args.index("--strategy")
        del args[at : at + 2]
    if as_a_user:
        args = [arg for arg in args if arg != "--no-memory-check"]
    else:
        args += ["--strategy", strategy_that_ran(log_of(run_bench, path, result))]

    nvml_profile(profile_for(payload["environment"]["device"], case.processes))
    monkeypatch.setattr(inspection_module, "installed_fp8_backends", lambda: ALL_FP8_BACKENDS)  # as on the GPU machine
    monkeypatch.setattr(capabilities, "_installed", lambda module: True)  # bitsandbytes for QLoRA, there
    decision = planned_decision(args)
    assert decision["precision"] == case.precision
    if case.precision == "fp8":
        assert decision["backend"]["name"] == case.backend
    return result, decision


@pytest.mark.parametrize("path, index", MEASURED, ids=[f"{p.parent.name}-{i}" for p, i in MEASURED])
def test_the_estimate_is_within_15_percent_of_each_measured_peak(
    path, index, run_bench, tmp_path, monkeypatch, nvml_profile
):
    result, decision = replay(path, index, run_bench, tmp_path, monkeypatch, nvml_profile)
    estimate, measured = decision["memory"]["allocator_gib"], result["peak_reserved_gib"]
    assert abs(estimate / measured - 1) <= TOLERANCE, (
        f"{result['case']}: estimated {estimate:.1f} GiB, measured {measured} GiB"
    )


with bench_module() as _run_bench:  # every run that trained to its end on one device, with its peak measured
    FITTED_ONE_GPU = [
        (path, index)
        for path, index in MEASURED
        if (result := json.loads(path.read_text())["results"][index])["exit_code"] == 0
        and strategy_that_ran(log_of(_run_bench, path, result)) == "ddp"
    ]


@pytest.mark.parametrize("path, index", FITTED_ONE_GPU, ids=[f"{p.parent.name}-{i}" for p, i in FITTED_ONE_GPU])
def test_a_run_measured_to_fit_one_gpu_is_planned_on_one_gpu(
    path, index, run_bench, tmp_path, monkeypatch, nvml_profile
):
    """Not refused, and not sent to CPU offload or another strategy by an estimate larger than the run."""
    result, decision = replay(path, index, run_bench, tmp_path, monkeypatch, nvml_profile, as_a_user=True)
    planned = decision["strategy"]["strategy"]["name"]
    assert planned == "ddp", f"{result['case']}: planned as {planned}"


@pytest.fixture
def estimate(tmp_path):
    """The memory model alone, for a training YAML's keys (full fine-tuning of the 8B unless they say otherwise)."""

    def made(keys, strategy="ddp", world=1, model="llama-3.1-8b"):
        path = tmp_path / "train.yaml"
        path.write_text(
            json.dumps(
                {"model_name_or_path": "m", "output_dir": "o", "do_train": True, "finetuning_type": "full", **keys}
            )
        )
        training = load_training_config(path, [])
        facts = read_model_facts(str(model_dir(model)))
        return memory.estimate(facts, training, None, STRATEGIES[strategy], world, min(world, 8))

    return made


def test_each_input_moves_the_estimate_the_way_it_should(estimate):
    base = estimate({"per_device_train_batch_size": 4, "disable_gradient_checkpointing": True}).total_gib
    assert estimate({"per_device_train_batch_size": 8, "disable_gradient_checkpointing": True}).total_gib > base
    assert estimate({"per_device_train_batch_size": 4}).total_gib < base, "gradient checkpointing saves memory"
    assert (
        estimate(
            {"per_device_train_batch_size": 4, "disable_gradient_checkpointing": True, "optim": "adamw_8bit"}
        ).total_gib
        < base
    )
    lora = estimate(
        {"finetuning_type": "lora", "per_device_train_batch_size": 4, "disable_gradient_checkpointing": True}
    ).total_gib
    qlora = estimate(
        {
            "finetuning_type": "lora",
            "quantization_bit": 4,
            "per_device_train_batch_size": 4,
            "disable_gradient_checkpointing": True,
        }
    ).total_gib
    freeze = estimate(
        {"finetuning_type": "freeze", "per_device_train_batch_size": 4, "disable_gradient_checkpointing": True}
    ).total_gib
    assert qlora < lora < base and freeze < base
    sharded = [
        estimate({"per_device_train_batch_size": 4}, strategy=s, world=8).total_gib
        for s in ("ddp", "deepspeed-zero2", "fsdp2")
    ]
    assert sharded == sorted(sharded, reverse=True), "each strategy splits more than the one before"
    offload = estimate({"per_device_train_batch_size": 4}, strategy="fsdp2-offload", world=8)
    assert offload.total_gib < sharded[-1] and offload.host_gib > 100, "offload moves the training state to the CPU"
    bigger_rank = estimate({"finetuning_type": "lora", "lora_rank": 256}).total_gib
    assert bigger_rank > estimate({"finetuning_type": "lora", "lora_rank": 8}).total_gib


REHEARSALS = sorted(
    path
    for pattern in ("rehearsal*/reports/*.json", "rehearsal*/*/reports/*.json")
    for path in (ROOT / "bench" / "results").glob(pattern)
    if not path.name.endswith(".profile.json")
    and "peak_allocated_gib" in json.loads(path.read_text())["memory"]  # a GPU's, not the CPU's resident set
)


def rehearsal_arguments(report: dict, name: str, model: Path, work: Path) -> list[str]:
    """The launcher's arguments for a committed rehearsal, as bench/rehearse.py builds them."""
    rehearse = importlib.import_module("bench.rehearse")
    rehearse.runner.build_corpus(work, 0.01)  # as the bench writes it before it launches
    batch = report["tokens_per_step_per_rank"] // 2048  # bench/configs/pt.yaml's cutoff_len, packed
    options = argparse.Namespace(
        out=work, fp8_recipe=None, strategy=report["strategy"], world_size=report["world_size"], steps=8, profile=False
    )
    return launcher_arguments(
        rehearse, lambda: rehearse.rehearse(options, model, work / "data", report["precision"], batch, name)
    )


def model_with_parameters(parameters: int, folder: Path) -> Path:
    """The bench shape, at the depth, that has this many parameters (the rehearsal's random-weight model)."""
    folder.mkdir()
    for shape in sorted(BENCH_MODELS.iterdir()):
        config = json.loads((shape / "config.json").read_text())
        for layers in range(1, config["num_hidden_layers"] + 1):
            (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": layers}))
            if read_model_facts(str(folder)).num_parameters == parameters:
                return folder
    raise AssertionError(f"no depth of any shape in bench/models has {parameters} parameters")


def test_every_gpu_rehearsal_is_checked():
    assert len(REHEARSALS) >= 20  # the rehearsals committed when this test was written


@pytest.mark.parametrize(
    "path", REHEARSALS, ids=[str(p.relative_to(ROOT / "bench" / "results")).replace("/reports", "") for p in REHEARSALS]
)
def test_the_estimate_is_within_15_percent_of_each_rehearsed_peak(path, tmp_path, nvml_profile, monkeypatch):
    """Rank 0's allocated peak against the estimate of what it allocates: the fake group allocates no NCCL
    buffers, and the allocator's slack is fitted on one GPU to a reserve that rehearsals do not follow (their
    reserve runs about twice their allocation, bench/README.md)."""
    report = json.loads(path.read_text())
    model = model_with_parameters(report["parameters"], tmp_path / "model")
    args = rehearsal_arguments(report, path.stem, model, tmp_path)
    log = path.parent.parent / f"{path.stem}.log"
    device = next(line for line in log.read_text().splitlines() if line.startswith("  GPUs ")).split("] ")[1]
    nvml_profile(profile_for(device.split(",")[0]))
    monkeypatch.setattr(inspection_module, "installed_fp8_backends", lambda: ALL_FP8_BACKENDS)
    decision = planned_decision(args)
    assert (decision["precision"], decision["strategy"]["strategy"]["name"]) == (
        report["precision"],
        report["strategy"],
    )
    estimate, measured = decision["memory"]["allocated_gib"], report["memory"]["peak_allocated_gib"]
    assert abs(estimate / measured - 1) <= TOLERANCE, f"estimated {estimate:.2f} GiB, measured {measured} GiB"


SEVERAL_GPU_PLANS = ("gpus-2-ddp", "gpus-2-fsdp2", "gpus-2-zero3")


@pytest.mark.parametrize("plan", SEVERAL_GPU_PLANS)
def test_the_several_gpu_plans_launch_what_they_name_and_fit_two_h100s(plan, run_bench, tmp_path, nvml_profile):
    """Ready for the day two GPUs are lent: each case, as the bench launches it but without its --no-memory-check,
    is planned on the GPUs and strategy it names, and fits an H100 with its margin."""
    model = tmp_path / "model"
    model.mkdir()
    nvml_profile(profile_for("NVIDIA H100 80GB HBM3", 2))
    run_bench.runner.build_corpus(tmp_path, 0.01)
    for case in run_bench.PLANS[plan]:
        (model / "config.json").write_text(json.dumps(run_bench.runner.model_config(case.shape, case.layers)))
        args = [arg for arg in bench_arguments(run_bench, case, model, tmp_path) if arg != "--no-memory-check"]
        decision = planned_decision(args, case.name)
        assert (decision["precision"], decision["strategy"]["strategy"]["name"], decision["world_size"]) == (
            case.precision,
            case.strategy,
            case.processes,
        ), case.name
        assert decision["memory"]["total_gib"] + decision["memory"]["margin_gib"] <= 80, case.name


def test_every_bench_case_trains_the_fp8_recipe_it_names(run_bench, tmp_path, nvml_profile):
    """A recipe the bench names reaches the plan and so the trainer; it once lost, for LoRA, to the plan's auto
    recipe, and results/lora-fp8-weights-smoke ran lora-base twice."""
    model = tmp_path / "model"
    model.mkdir()
    nvml_profile("h200")
    run_bench.runner.build_corpus(tmp_path, 0.01)
    named = {
        (case.finetuning, case.recipe): case for cases in run_bench.PLANS.values() for case in cases if case.recipe
    }
    assert ("lora", "lora-base-fp8-weights") in named
    for case in named.values():
        (model / "config.json").write_text(json.dumps(run_bench.runner.model_config(case.shape, case.layers)))
        decision = planned_decision(bench_arguments(run_bench, case, model, tmp_path), case.name)
        assert decision["fp8_recipe"] == case.recipe, case.name


LOADING_PROBE = """
import json, os, sys
import torch
import torch.distributed as dist
from accelerate.commands.config.config_args import load_config_from_file
from llamafactory.hparams import get_train_args
from transformers.integrations.fsdp import is_fsdp_enabled

config = load_config_from_file(sys.argv[1])
os.environ.update(ACCELERATE_USE_FSDP="true", MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
os.environ.update(RANK="0", WORLD_SIZE="1")
# as accelerate launch exports it from the config (Accelerate's own default: on)
efficient = config.fsdp_config.get("fsdp_cpu_ram_efficient_loading", True)
os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = str(efficient).lower()
dist.init_process_group("gloo")
model_args, *_ = get_train_args(dict(
    model_name_or_path=sys.argv[3], stage="pt", do_train=True, finetuning_type="full", dataset="c4_demo",
    dataset_dir=sys.argv[4], output_dir=sys.argv[5], use_cpu=True,
))
device_map = {key: str(value) for key, value in model_args.device_map.items()}
print(json.dumps({"fsdp_loading": is_fsdp_enabled(), "device_map": device_map}))
"""


@pytest.mark.parametrize("layout", ["fsdp2.yaml", "fsdp2-offload.yaml"])
def test_fsdp2_as_shipped_loads_each_processs_whole_model_onto_its_own_device(layout, tmp_path):
    """The premise of the memory model's `load_gib` (and of no CPU term for FSDP2): with the shipped layout,
    Transformers' FSDP loading, which would hold the model in CPU memory until FSDP2 shards it, stays off, and
    LLaMA-Factory maps the whole model onto the process's own device (here the CPU; on a GPU machine, its GPU)."""
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            LOADING_PROBE,
            str(ROOT / "configs" / "accelerate" / layout),
            free_port(),
            str(model_dir("llama-3.2-1b")),
            str(ROOT / "build" / "llamafactory" / "data"),
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    assert found == {"fsdp_loading": False, "device_map": {"": "cpu"}}

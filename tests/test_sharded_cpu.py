"""Sharded strategies executed on CPU processes, through the real launcher, Accelerate and LLaMA-Factory
(`train --allow-cpu --strategy S --processes N`): how the processes are started, what is refused, every strategy
trained, sharded, stopped and resumed against data parallel, and FSDP2 over two nodes. FSDP2 needs the patch in
fsdp_on_cpu.py."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from llamafactory_fp8.errors import STOPPED_EXIT_CODE

from .conftest import ROOT, free_port
from .sharded_cells import (
    LORA,
    finish,
    logged_losses,
    probes,
    start,
    stop_answer,
    wait_for_first_log,
)

PREPARE_ONE_LINEAR = """
import sys, torch
if sys.argv[1] == "patched":
    from llamafactory_fp8.fsdp_on_cpu import let_fsdp_run_on_cpu_processes
    let_fsdp_run_on_cpu_processes()
from accelerate import Accelerator
accelerator = Accelerator(cpu=True, mixed_precision="bf16")
model = torch.nn.Sequential(torch.nn.Linear(8, 8))
model, optimizer = accelerator.prepare(model, torch.optim.AdamW(model.parameters()))
print(accelerator.distributed_type, type(next(model.parameters())).__name__)
"""


RESUME_A_SHARDED_OPTIMIZER = """
import sys, tempfile, torch
from llamafactory_fp8.fsdp_on_cpu import let_fsdp_run_on_cpu_processes
let_fsdp_run_on_cpu_processes()
if sys.argv[1] == "patched":
    from llamafactory_fp8.fsdp_checkpoints import let_fsdp2_resume_its_sharded_optimizer
    let_fsdp2_resume_its_sharded_optimizer()
import transformers.trainer
from accelerate import Accelerator
from accelerate.utils import save_fsdp_optimizer
accelerator = Accelerator(cpu=True)
def prepared():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    return accelerator.prepare(model, torch.optim.AdamW(model.parameters()))
model, optimizer = prepared()
model(torch.ones(2, 8)).sum().backward()
optimizer.step()
saved = optimizer.optimizer.state_dict()["state"][0]["exp_avg"].to_local().clone()
folder = tempfile.mkdtemp()
save_fsdp_optimizer(accelerator.state.fsdp_plugin, accelerator, optimizer, model, folder)
model, optimizer = prepared()
transformers.trainer.load_fsdp_optimizer(accelerator.state.fsdp_plugin, accelerator, optimizer, model, folder)
state = optimizer.optimizer.state_dict()["state"]
print("restored" if state and torch.equal(state[0]["exp_avg"].to_local(), saved) else "lost")
"""


def one_fsdp2_cpu_process(script: str, mode: str, **fsdp_env: str) -> str:
    """`script` run as the one CPU process of an FSDP2 launch (what torchrun gives it); its last line."""
    env = {
        **os.environ,
        **dict(LOCAL_RANK="0", RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port()),
        **dict(ACCELERATE_USE_FSDP="true", FSDP_VERSION="2", **fsdp_env),
    }
    result = subprocess.run(
        [sys.executable, "-c", script, mode], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "mode, expected",
    [("unpatched", "DistributedType.MULTI_CPU Parameter"), ("patched", "DistributedType.FSDP DTensor")],
)
def test_an_fsdp2_config_on_a_cpu_process_shards_only_with_the_patch(mode, expected):
    """One CPU process of an FSDP2 launch, with CPU offload on (pinned memory needs an accelerator). Unpatched,
    Accelerate 1.11 leaves it MULTI_CPU and plain parameters: the day this line changes, Accelerate has fixed it
    and the patch can go."""
    assert one_fsdp2_cpu_process(PREPARE_ONE_LINEAR, mode, FSDP_OFFLOAD_PARAMS="true") == expected


@pytest.mark.parametrize("mode, expected", [("unpatched", "lost"), ("patched", "restored")])
def test_a_sharded_fsdp2_optimizer_is_restored_on_resume_only_with_the_patch(mode, expected):
    """AdamW's moments after one step, saved as Accelerate saves a SHARDED_STATE_DICT checkpoint, then loaded into
    a fresh optimizer the way Transformers' Trainer resumes. Unpatched, Accelerate 1.11 restores nothing, without a
    word: the day this line changes, the patch can go."""
    assert (
        one_fsdp2_cpu_process(RESUME_A_SHARDED_OPTIMIZER, mode, FSDP_STATE_DICT_TYPE="SHARDED_STATE_DICT") == expected
    )


@pytest.fixture
def cpu_plan(nvml_profile, tmp_path, monkeypatch):
    """The demo's plan for a strategy over CPU processes, as `train --allow-cpu --strategy S --processes N` makes it."""
    from llamafactory_fp8.plan import plan_run
    from llamafactory_fp8.request import Request

    nvml_profile("no-gpu")
    monkeypatch.setenv("LLAMAFACTORY_FP8_STATE_DIR", str(tmp_path / "state"))

    def plan(strategy: str, processes: int, precision: str = "auto", *overrides: str):
        request = Request(
            overrides=(f"output_dir={tmp_path / 'out'}", *overrides),
            precision=precision,
            allow_cpu=True,
            strategy=strategy,
            processes=processes,
        )
        return plan_run(request)

    return plan


@pytest.mark.parametrize(
    "strategy, layout, distributed_type",
    [
        ("ddp", "multi-gpu.yaml", "MULTI_GPU"),
        ("fsdp2", "fsdp2.yaml", "FSDP"),
        ("fsdp2-offload", "fsdp2-offload.yaml", "FSDP"),
        ("deepspeed-zero2", "multi-gpu.yaml", "MULTI_GPU"),
        ("deepspeed-zero3", "multi-gpu.yaml", "MULTI_GPU"),
        ("deepspeed-zero3-offload", "multi-gpu.yaml", "MULTI_GPU"),
    ],
)
def test_several_cpu_processes_get_the_strategys_layout_without_use_cpu_so_torchrun_starts_them(
    cpu_plan, strategy, layout, distributed_type
):
    plan = cpu_plan(strategy, 2)
    values = plan.accelerate.values
    assert (values["num_processes"], values["use_cpu"], values["distributed_type"]) == (2, False, distributed_type)
    assert [source.name for source in plan.accelerate.sources] == ["bf16.yaml", layout]
    assert plan.environment["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    deepspeed = [argument for argument in plan.command if argument.startswith("deepspeed=")]
    if strategy.startswith("deepspeed"):
        assert deepspeed == [f"deepspeed={ROOT}/configs/deepspeed/{strategy.removeprefix('deepspeed-')}.json"]
        assert "use_cpu=false" in plan.command and "bf16=false" in plan.command
    else:
        assert deepspeed == [] and "use_cpu=true" in plan.command


@pytest.mark.parametrize("nodes, distributed_type", [(1, "NO"), (2, "MULTI_CPU")])
def test_one_data_parallel_process_a_node_keeps_todays_config(cpu_plan, monkeypatch, nodes, distributed_type):
    """Its faults are tested on this path (tests/test_faults.py); through torchrun a lost node's workers ran on."""
    from llamafactory_fp8 import paths
    from llamafactory_fp8.accelerate_config import render_accelerate_config

    if nodes > 1:
        monkeypatch.setenv("NNODES", str(nodes))
        monkeypatch.setenv("NODE_RANK", "1")
        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    plan = cpu_plan("ddp", 1, "bf16")
    today, _ = render_accelerate_config(plan.decision, plan.topology, paths.accelerate_configs_dir())
    assert dict(plan.accelerate.values) == today
    assert (today["use_cpu"], today["distributed_type"], today["num_processes"]) == (True, distributed_type, nodes)


@pytest.mark.parametrize(
    "strategy, processes, precision, exit_code, words",
    [
        ("fsdp2", 1, "bf16", 13, "FSDP2 shards over several processes and this CPU run has one: pass --processes 2"),
        ("deepspeed-zero3", 1, "auto", 13, "DeepSpeed ZeRO-3 shards over several processes"),
        ("deepspeed-zero2", 2, "bf16", 4, "BF16 refused: DeepSpeed ZeRO-2 runs on the CPU in FP32 only"),
        ("ddp", 0, "auto", 13, "--processes must be 1 or more, got 0"),
    ],
)
def test_what_would_not_run_as_asked_on_the_cpu_is_refused_in_one_line(
    cpu_plan, strategy, processes, precision, exit_code, words
):
    from llamafactory_fp8.errors import LaunchError

    with pytest.raises(LaunchError) as refused:
        cpu_plan(strategy, processes, precision)
    assert refused.value.exit_code == exit_code
    assert str(refused.value).startswith(words) and "\n" not in str(refused.value)


# Every strategy trains, shards, saves in its own format, stops on SIGTERM (exit 75) and resumes at the same step,
# and its loss at the last step matches data parallel's at the same precision. DeepSpeed runs in FP32 on the CPU
# (cpu_processes.py), the others in BF16. Tolerances, relative, from what was measured (20 steps, 2 processes):
# - data parallel against itself, three runs: bit-identical, so any difference below is the strategy's arithmetic;
# - FP32: FSDP2, FSDP2 offload, ZeRO-2, ZeRO-3 within 1e-7 of data parallel, ZeRO-3 offload (DeepSpeed's CPU Adam)
#   4.1e-7: 1e-5 holds them with 24x to spare;
# - BF16: FSDP2's mixed-precision policy returns the logits, so the loss, in BF16, whose spacing near the demo's
#   losses (4-8) is 2^-5: half of it is 2^-8 = 3.9e-3 of the loss, and the largest difference measured was 1.9e-3;
#   the tolerance is that bound, 4e-3;
# - what the tolerances must catch: one rank's gradients lost (a single process) moved the loss at step 20 by 1.5%,
#   a learning rate 10% low by 2.2%.
STEPS = 20
TOLERANCE = {"bf16": 4e-3, "fp32": 1e-5}
PRECISION = {"ddp": "bf16", "fsdp2": "bf16", "fsdp2-offload": "bf16"}  # DeepSpeed: fp32


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from llamafactory_fp8.demo import build_demo_model

    return build_demo_model(tmp_path_factory.mktemp("model") / "tiny-llama", ROOT / "data")


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory, tiny_model):
    """Data parallel over 2 CPU processes, uninterrupted, once per fine-tuning type and precision: the loss at
    each logged step, and the final model's tensor shapes."""
    done = {}

    def reference(finetuning: str, precision: str):
        if (finetuning, precision) not in done:
            output_dir = tmp_path_factory.mktemp(f"ddp-{finetuning}-{precision}") / "out"
            args = precision_args(precision) + (LORA if finetuning == "lora" else ())
            code, _, stderr = finish(start("ddp", 2, output_dir, tiny_model, f"max_steps={STEPS}", *args))
            assert code == 0, stderr[-3000:]
            done[finetuning, precision] = logged_losses(output_dir), tensor_shapes(final_model(output_dir))
        return done[finetuning, precision]

    return reference


def precision_args(precision: str) -> tuple[str, ...]:
    return ("--bf16",) if precision == "bf16" else ()


def final_model(output_dir: Path) -> Path:
    return next(path for path in output_dir.glob("*.safetensors") if path.name in ADAPTER_OR_MODEL)


ADAPTER_OR_MODEL = ("model.safetensors", "adapter_model.safetensors")


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors.torch import load_file

    return {name: tuple(tensor.shape) for name, tensor in load_file(path).items()}


def checkpoint_shards(strategy: str, checkpoint: Path) -> list[str]:
    """The files that hold each rank's own share of the checkpoint, in the strategy's format."""
    if strategy.startswith("fsdp2"):  # torch.distributed.checkpoint, one file a rank, and a LoRA adapter's config
        shards = sorted(path.name for path in (checkpoint / "pytorch_model_fsdp_0").glob("*.distcp"))
        return shards + [path.name for path in checkpoint.glob("adapter_*")]
    if strategy.startswith("deepspeed"):  # each rank's ZeRO partition of the optimizer (and, for ZeRO-3, weights)
        return sorted(path.name for path in checkpoint.glob("global_step*/zero_pp_rank_*_optim_states.pt"))
    return sorted(path.name for path in checkpoint.glob("*.safetensors"))  # data parallel: rank 0 writes it whole


EXPECTED_SHARDS = {
    "ddp-full": ["model.safetensors"],
    "ddp-lora": ["adapter_model.safetensors"],
    "fsdp2-full": ["__0_0.distcp", "__1_0.distcp"],
    "fsdp2-lora": ["__0_0.distcp", "__1_0.distcp", "adapter_config.json"],
    "deepspeed": ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"],
}


def expected_shards(strategy: str, finetuning: str) -> list[str]:
    family = strategy.split("-")[0]
    return EXPECTED_SHARDS[family if family == "deepspeed" else f"{family}-{finetuning}"]


def assert_sharded(strategy: str, records: list[dict]) -> None:
    """What each of the 2 ranks held at its first step: not silently data parallel."""
    assert [record["rank"] for record in records] == [0, 1]
    for record in records:
        full, trainable_states = record["full_numel"], record["exp_avg_numel"]
        if strategy == "ddp":
            assert record["distributed_type"] == "DistributedType.MULTI_CPU" and record["local_numel"] == full
            continue
        halved_weights = strategy != "deepspeed-zero2"  # ZeRO-2 keeps whole weights, shards optimizer states
        assert record["local_numel"] == (full // 2 if halved_weights else full)
        assert 0 < trainable_states * 2 <= full  # each rank steps half the trainable parameters (LoRA's fewer)
        if strategy.startswith("fsdp2"):
            assert record["distributed_type"] == "DistributedType.FSDP"
            assert record["parameter_classes"] == ["DTensor"]
            expected_policy = "CPUOffloadPolicy" if strategy == "fsdp2-offload" else "OffloadPolicy"
            assert record["fsdp_offload_policy"] == expected_policy
        else:
            assert record["distributed_type"] == "DistributedType.DEEPSPEED"
            assert record["zero_stage"] == (2 if strategy == "deepspeed-zero2" else 3)
            if strategy == "deepspeed-zero3-offload":
                assert record["optimizer_class"] == "DeepSpeedCPUAdam"


def cell(strategy: str, finetuning: str, every_run: bool):
    marks = [pytest.mark.slow] + ([] if every_run else [pytest.mark.slow_sharded])
    return pytest.param(strategy, finetuning, marks=marks, id=f"{strategy}-{finetuning}")


CELLS = [
    cell("ddp", "full", False),  # data parallel's 2-process runs are the references; stop/resume in test_faults
    cell("ddp", "lora", False),
    cell("fsdp2", "full", True),
    cell("fsdp2", "lora", False),
    cell("fsdp2-offload", "full", True),
    cell("fsdp2-offload", "lora", False),
    cell("deepspeed-zero2", "full", False),
    cell("deepspeed-zero2", "lora", True),
    cell("deepspeed-zero3", "full", False),
    cell("deepspeed-zero3", "lora", True),
    cell("deepspeed-zero3-offload", "full", False),
    cell("deepspeed-zero3-offload", "lora", True),
]


@pytest.mark.parametrize("strategy, finetuning", CELLS)
def test_a_strategy_shards_saves_stops_resumes_and_matches_data_parallel(
    strategy, finetuning, tmp_path, tiny_model, ddp_reference
):
    precision = PRECISION.get(strategy, "fp32")
    args = (f"max_steps={STEPS}", *precision_args(precision), *(LORA if finetuning == "lora" else ()))
    output_dir = tmp_path / "out"
    launcher = start(strategy, 2, output_dir, tiny_model, *args)
    wait_for_first_log(output_dir, launcher)
    launcher.send_signal(signal.SIGTERM)
    code, _, stderr = finish(launcher)
    assert code == STOPPED_EXIT_CODE, stderr[-3000:]
    stopped_at = stop_answer(output_dir)["step"]
    assert 0 < stopped_at < STEPS - 2
    checkpoint = output_dir / f"checkpoint-{stopped_at}"
    assert checkpoint_shards(strategy, checkpoint) == expected_shards(strategy, finetuning)
    assert not list(output_dir.glob("*.safetensors"))  # no final model from a half-trained run

    code, stdout, stderr = finish(start(strategy, 2, output_dir, tiny_model, *args))
    assert code == 0, stderr[-3000:]
    assert f"resume      from {checkpoint}: the last run in this output_dir was stopped on request" in stdout
    assert f"Resuming training from checkpoint with epoch 0 and global step {stopped_at}" in stderr
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == STEPS
    assert_sharded(strategy, probes(output_dir))  # the resumed run's ranks

    losses, shapes = ddp_reference(finetuning, precision)
    assert tensor_shapes(final_model(output_dir)) == shapes  # whole, as LLaMA-Factory's final save writes it
    assert logged_losses(output_dir)[STEPS] == pytest.approx(losses[STEPS], rel=TOLERANCE[precision])


@pytest.mark.parametrize(
    "strategy, label",
    [
        pytest.param("fsdp2", "FSDP2 over 2", marks=pytest.mark.slow),
        # data parallel over nodes, one process each: the launcher's own path, as tests/test_multinode_cpu.py
        pytest.param("ddp", "data parallel over 2", marks=[pytest.mark.slow, pytest.mark.slow_sharded]),
    ],
)
def test_two_cpu_nodes_train_as_one_group_and_save_the_model_whole(strategy, label, tmp_path, tiny_model):
    """The Indexed Job's topology on localhost: two launchers, one process each, ranks from NNODES,
    JOB_COMPLETION_INDEX and MASTER_ADDR, one output_dir (as on a shared claim), a state folder each (as per pod);
    they train as one gloo group, and FSDP2 (through torchrun) shards the model over both."""
    output_dir, port = tmp_path / "out", free_port()
    nodes = [
        start(
            strategy,
            1,
            output_dir,
            tiny_model,
            "--bf16",
            "max_steps=10",
            NNODES="2",
            JOB_COMPLETION_INDEX=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            LLAMAFACTORY_FP8_STATE_DIR=str(tmp_path / f"state{rank}"),
        )
        for rank in (0, 1)
    ]
    ended = [finish(node) for node in nodes]
    assert [code for code, _, _ in ended] == [0, 0], ended[0][2][-2000:] + ended[1][2][-2000:]
    for rank, (_, stdout, stderr) in enumerate(ended):
        assert f"Process rank: {rank}, world size: 2" in stdout + stderr
        assert f"choice      BF16 on cpu, 1 process on each of 2 nodes, {label} (--strategy)" in stdout
        config = (output_dir / f"accelerate_config.node{rank}.yaml").read_text()
        # FSDP2 through torchrun; one data-parallel process a node through the launcher's own path
        layout, use_cpu = ("FSDP", "false") if strategy == "fsdp2" else ("MULTI_CPU", "true")
        expected = (f"distributed_type: {layout}", f"machine_rank: {rank}", "num_machines: 2", f"use_cpu: {use_cpu}")
        assert all(line in config for line in expected)
    assert_sharded(strategy, probes(output_dir))
    assert logged_losses(output_dir).keys() == {2, 4, 6, 8, 10}
    shapes = tensor_shapes(output_dir / "model.safetensors")
    assert shapes == tensor_shapes(tiny_model / "model.safetensors")  # whole, not rank 0's half

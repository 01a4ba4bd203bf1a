"""Rehearsing rank 0 of an N-rank job in one process on PyTorch's fake process group (rehearsal.py), and the
communication estimate it reports (communication.py)."""

import json

import pytest
from llamafactory_fp8.communication import estimate_communication, wire_bytes
from llamafactory_fp8.rehearsal import rehearsal_accelerate_config
from llamafactory_fp8.strategies import BY_NAME, DDP, FSDP2, FSDP2_OFFLOAD, ZERO2, ZERO3, ZERO3_OFFLOAD

from .sharded_cells import (
    LORA,
    finish,
    probes,
    start,
)

B = 8.03e9  # Llama-3.1-8B's parameters


def test_the_communication_estimate_follows_each_strategys_collectives():
    """Llama-3.1-8B over 8 ranks, BF16, full fine-tuning, one micro-batch per step: DDP all-reduces the FP32
    gradients (2 * 7/8 * 4 bytes a parameter); FSDP2 and ZeRO-3 gather the BF16 weights twice and reduce-scatter
    BF16 gradients (7/8 * 6 bytes); ZeRO-2 reduce-scatters gradients and gathers weights once each (7/8 * 4)."""
    sent = {
        strategy.name: estimate_communication(strategy, 8, int(B), int(B), 1, *wire_bytes(strategy, "bf16"))
        for strategy in (DDP, ZERO2, FSDP2, ZERO3)
    }
    assert sent["ddp"].network_bytes_per_step == pytest.approx(2 * 7 / 8 * 4 * B)
    assert sent["fsdp2"].network_bytes_per_step == pytest.approx(7 / 8 * 6 * B)
    assert sent["deepspeed-zero3"].network_bytes_per_step == sent["fsdp2"].network_bytes_per_step
    assert sent["deepspeed-zero2"].network_bytes_per_step == pytest.approx(7 / 8 * 4 * B)
    assert all(estimate.host_device_bytes_per_step == 0 for estimate in sent.values())


def test_accumulation_multiplies_what_is_sent_every_micro_batch_and_offload_adds_host_device_copies():
    def sent(strategy, accumulation, trainable=B):
        return estimate_communication(strategy, 8, int(B), int(trainable), accumulation, *wire_bytes(strategy, "bf16"))

    assert sent(DDP, 4).network_bytes_per_step == sent(DDP, 1).network_bytes_per_step
    assert sent(FSDP2, 4).network_bytes_per_step == pytest.approx(4 * sent(FSDP2, 1).network_bytes_per_step)
    assert sent(ZERO2, 4).network_bytes_per_step == pytest.approx(7 / 8 * (4 * 2 + 2) * B)
    assert sent(FSDP2_OFFLOAD, 1).network_bytes_per_step == sent(FSDP2, 1).network_bytes_per_step
    assert sent(ZERO3_OFFLOAD, 1).host_device_bytes_per_step == pytest.approx(6 * B / 8)
    lora = sent(FSDP2, 1, trainable=0.04e9)  # frozen weights are gathered all the same
    assert lora.network_bytes_per_step == pytest.approx(7 / 8 * (2 * 2 * B + 2 * 0.04e9))


@pytest.mark.parametrize(
    "layout, distributed_type", [("fsdp2.yaml", "FSDP"), ("fsdp2-offload.yaml", "FSDP"), ("multi-gpu.yaml", "NO")]
)
def test_a_rehearsal_runs_the_jobs_accelerate_config_as_one_process(layout, distributed_type):
    from llamafactory_fp8 import paths
    from llamafactory_fp8.accelerate_config import load_accelerate_config

    job = load_accelerate_config(paths.accelerate_configs_dir() / layout)
    job.update(num_machines=2, machine_rank=1, main_process_ip="10.0.0.1", main_process_port=29500)
    one = rehearsal_accelerate_config(job)
    assert (one["num_processes"], one["num_machines"], one["machine_rank"]) == (1, 1, 0)
    assert "main_process_ip" not in one and one["distributed_type"] == distributed_type
    assert one.get("fsdp_config") == job.get("fsdp_config")


def test_data_parallel_is_refused_in_one_line_before_anything_launches(tmp_path):
    code, _, stderr = finish(start("ddp", 4, tmp_path / "out", tmp_path / "no-model", "--rehearse"))
    assert code == 13
    assert stderr.strip().splitlines()[-1].startswith("llamafactory-fp8: error: data parallel cannot be rehearsed")
    assert not (tmp_path / "out.rehearsal").exists()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from llamafactory_fp8.demo import build_demo_model

    from .conftest import ROOT

    return build_demo_model(tmp_path_factory.mktemp("model") / "tiny-llama", ROOT / "data")


REHEARSALS = [
    pytest.param("fsdp2", ("--bf16",), id="fsdp2-bf16-full"),
    pytest.param("fsdp2", ("--bf16", *LORA), id="fsdp2-bf16-lora", marks=pytest.mark.slow_sharded),
    pytest.param("deepspeed-zero3", (), id="zero3-fp32-full"),
    pytest.param("deepspeed-zero2", (), id="zero2-fp32-full", marks=pytest.mark.slow_sharded),
]


@pytest.mark.slow
@pytest.mark.parametrize("strategy, args", REHEARSALS)
def test_a_rehearsal_runs_rank_0_of_four_alone_and_reports_what_it_measured(strategy, args, tmp_path, tiny_model):
    output_dir = tmp_path / "out"
    code, _, stderr = finish(start(strategy, 4, output_dir, tiny_model, "--rehearse", "max_steps=6", *args))
    assert code == 0, stderr[-3000:]
    rehearsal_dir = output_dir.with_name("out.rehearsal")  # a folder of its own, beside the job's
    report = json.loads((rehearsal_dir / "rehearsal.json").read_text())
    assert (report["world_size"], report["strategy"]) == (4, strategy)
    assert report["accelerate"]["num_processes"] == 4  # the fake group's size reached Accelerate
    assert report["steps_measured"] == 5 and report["step_s"] > 0
    assert 0 < report["tokens_per_step_per_rank"] <= 8 * 128  # 8 sequences a micro-batch, cutoff_len 128
    assert report["tokens_per_s_per_rank"] == pytest.approx(
        report["tokens_per_step_per_rank"] / report["step_s"], rel=1e-3
    )
    assert report["memory"]["training_peak_rss_gib"] > 0
    assert report["memory"]["estimate_gib"] is None  # the memory model estimates GPUs only
    (rank0,) = probes(output_dir)  # one process, rank 0 of 4, holding a quarter of every parameter
    assert (rank0["rank"], rank0["world_size"]) == (0, 4)
    assert rank0["full_numel"] == report["parameters"]
    whole_weights = strategy == "deepspeed-zero2"  # ZeRO-2 partitions the optimizer's states only
    assert rank0["local_numel"] == report["parameters"] / (1 if whole_weights else 4)
    assert rank0["exp_avg_numel"] == report["trainable_parameters"] / 4
    strategy_record = BY_NAME[strategy]
    expected = estimate_communication(
        strategy_record,
        4,
        report["parameters"],
        report["trainable_parameters"],
        1,
        *wire_bytes(strategy_record, report["precision"]),
    )
    assert report["communication_estimate"]["network_bytes_per_step"] == pytest.approx(expected.network_bytes_per_step)
    assert not list(rehearsal_dir.glob("*.safetensors"))  # the noise the fake group trained is never saved
    assert not list(rehearsal_dir.glob("checkpoint-*")) and not output_dir.exists()


@pytest.mark.slow
def test_under_fsdp2_with_torch_compile_each_decoder_layer_is_compiled_on_its_own(tmp_path, tiny_model):
    """Accelerate's whole-model compile left every layer eager under FSDP2 with checkpointing (fsdp_compile.py)."""
    output_dir = tmp_path / "out"
    launched = start("fsdp2", 4, output_dir, tiny_model, "--rehearse", "--bf16", "max_steps=3", "torch_compile=true")
    code, stdout, stderr = finish(launched)
    assert code == 0, stderr[-3000:]
    assert "FSDP2: 2 sharded layers' forward compiled one by one" in stdout + stderr  # the demo model's 2 layers

"""What one benchmark run is (Case) and what it measured (Result), and reading a Result back from its JSON."""

from __future__ import annotations

from dataclasses import dataclass, field

# How a run's name spells the extra keys that tell cases apart (other extra keys stay out of the name).
NAME_KEYS = {"lora_rank": "r", "quantization_bit": "int", "freeze_trainable_layers": "top"}


@dataclass(frozen=True)
class Case:
    shape: str
    layers: int | None  # truncated depth (same per-layer shapes); None keeps the model's own
    finetuning: str  # full | lora | freeze
    precision: str  # bf16 | fp8
    compile: bool
    steps: int = 40
    warmup_steps: int = 10
    batch: int = 4
    seq: int = 2048
    extra: tuple[str, ...] = ()  # further LLaMA-Factory keys, key=value
    backend: str = "torchao"  # the FP8 backend; ignored for bf16
    repeat: int = 0  # repeated runs of one case in one call are told apart by this
    grad_accum: int = 1
    grad_ckpt: bool = False
    recipe: str | None = None  # the product's --fp8-recipe (fp8 only); None leaves it to the plan's auto
    profile_steps: int = 0  # steps profiled after the timed ones; the run ends after them, unsaved
    memory_only: bool = False  # run beside other memory-only cases: its peak memory counts, its speed does not
    loss_only: bool = False  # run beside other loss-only cases: its losses and peak memory count, its speed does not
    search: str = ""  # cases sharing a search run in order until one trains to its end; the rest are skipped
    label: str = ""  # appended to the name, e.g. "llamafactory-defaults"
    expected_s: int = 120  # rough wall time, to skip a case that cannot finish before the deadline
    strategy: str = "ddp"  # the product's --strategy
    processes: int = 1  # GPUs the run trains on (--processes); 1 leaves the others of a larger machine idle
    compile_cache: str = ""  # Inductor's cache, shared by the runs naming the same; "": a fresh one of its own

    @property
    def family(self) -> str:
        """What runs compared as 'the same batch' share: shape, depth, fine-tuning, batch and sequence."""
        depth = f"{self.layers}L" if self.layers else "full-depth"
        accumulation = f"x{self.grad_accum}" if self.grad_accum > 1 else ""
        label = f"{self.shape}-{depth}-{self.finetuning}-b{self.batch}{accumulation}x{self.seq}"
        if self.processes > 1:
            label += f"-{self.strategy}x{self.processes}"
        return label + (f"-r{self.repeat}" if self.repeat else "")

    @property
    def pair(self) -> str:
        """What an FP8 run and its BF16 baselines share: the family and gradient checkpointing."""
        return self.family + ("-ckpt" if self.grad_ckpt else "")

    @property
    def extra_keys(self) -> dict[str, str]:
        """`extra` as LLaMA-Factory keys and their values."""
        return dict(item.split("=", 1) for item in self.extra)

    @property
    def packed(self) -> bool:
        """Whether every micro-batch is batch x seq tokens: the bench's pt stage packs its text into blocks, where
        sft (alpaca_en_demo's short examples) gives each micro-batch a length of its own."""
        return self.extra_keys.get("stage", "pt") == "pt"

    @property
    def name(self) -> str:
        precision = "fp8-te" if self.precision == "fp8" and self.backend == "te" else self.precision
        keys = self.extra_keys
        parts = [self.pair, precision, self.recipe, "compiled" if self.compile else "eager", self.label]
        parts += [f"{short}{keys[key]}" for key, short in NAME_KEYS.items() if key in keys]
        return "-".join(part for part in parts if part)

    @property
    def max_steps(self) -> int:
        return self.steps + self.profile_steps


@dataclass
class Result:
    case: Case
    exit_code: int
    tokens_per_s: float | None = None
    peak_allocated_gib: float | None = None
    peak_reserved_gib: float | None = None
    losses: dict[int, float] = field(default_factory=dict)
    fp8_layers: tuple[int, int] | None = None
    wall_s: float = 0.0
    error: str | None = None
    training: dict = field(default_factory=dict)  # the LLaMA-Factory keys this run trained with
    model: dict = field(default_factory=dict)  # the model's shape and parameter counts
    breakdown: dict | None = None  # per-step GPU time by kernel group, from the profiled steps
    seconds_to_step: dict[int, float] = field(default_factory=dict)  # from the launch to each logged step


def result_from_record(record: dict) -> Result:
    case = Case(**{**record["case"], "extra": tuple(record["case"]["extra"])})
    fp8_layers = tuple(record["fp8_layers"]) if record["fp8_layers"] else None
    losses = {int(step): loss for step, loss in record["losses"].items()}
    seconds = {int(step): s for step, s in record.get("seconds_to_step", {}).items()}
    return Result(**{**record, "case": case, "fp8_layers": fp8_layers, "losses": losses, "seconds_to_step": seconds})

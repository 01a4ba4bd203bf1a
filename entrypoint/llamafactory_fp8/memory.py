"""Peak GPU memory of one training process, estimated before launch from the model's shape, the training YAML,
the precision and the strategy: what Accelerate's `estimate-memory` (weights only), DeepSpeed's estimators (model
states only) and LLaMA-Factory's static table leave out.

The peak comes at one of two moments of a step. At the start of backward, every saved activation is alive with the
logits' gradient and the output layer's weight gradient; at its end, all gradients are. The optimizer states and
the weights are alive throughout, and with gradient accumulation the gradients too. What LLaMA-Factory keeps where:
trainable parameters are upcast to fp32 (`init_adapter`, unless `pure_bf16`), frozen ones stay in bf16 (or are
quantized for QLoRA), AdamW keeps two fp32 states per trainable parameter.

The activation and logit coefficients, the fixed term and the allocator's slack were fitted by least squares to
every committed benchmark (bench/results/*/*.json, one H100 or H200, LLaMA-Factory 0.9.5, packing, SDPA
attention); tests/test_memory.py replays each of those runs through the launcher and checks the estimate against its
peak reserved memory to within 15%, and that each run that fit one GPU is planned on one GPU, so a new result that
the model does not explain fails there. FSDP2's terms (a bf16 residual stream, the root gathered, the root's
unsharded gradient) come from rank 0 of 8 rehearsed on an H100 (bench/results/rehearsal*/), which the same test
holds to its allocated peak."""

from __future__ import annotations

from dataclasses import dataclass, field

from .backends import FP8Backend
from .fp8_recipe import Fp8Recipe, large_enough
from .model_facts import ModelFacts
from .strategies import Strategy
from .training_config import TrainingConfig

GIB = 2**30
# Saved for backward, per token and decoder layer, in bytes per unit of hidden and of MLP width (compiled BF16:
# norms, attention inputs and outputs, the gated MLP's inputs), and per unit of hidden on top where the residual
# stream and the norms run in fp32 because LLaMA-Factory upcast the trainable weights (full and freeze tuning).
# One coefficient for both streams overestimated LoRA's peak at 8 x 2048 tokens (results/lora-batch8/), enough
# to send a run that fits one H200 to CPU offload, 2x slower (results/batch8-offloaded/).
ACTIVATION_BYTES_PER_HIDDEN = 16.5
ACTIVATION_BYTES_PER_INTERMEDIATE = 6.65
FP32_STREAM_BYTES_PER_HIDDEN = 12.7
# The output layer's logits and their gradient, per token and vocabulary entry: compiled, torch.compile fuses the
# fp32 upcast of the loss; eager, Transformers' loss materialises it.
LOGIT_BYTES_COMPILED = 4.8
LOGIT_BYTES_EAGER = 14.1
# Eager with the output layer frozen (LoRA, QLoRA, freeze-tuning), its weight needs no gradient and less of the
# logits' stays for backward: fitted to the memory points in bench/results/memory*/ (LoRA r8 and r16, QLoRA, freeze).
LOGIT_BYTES_EAGER_FROZEN_HEAD = 11.0
FIXED_GIB = 0.7  # allocated beyond the model's own tensors: cuBLAS workspaces, the batch, compile's buffers
ALLOCATOR_SLACK = 0.05  # PyTorch's caching allocator reserves this much over its peak allocation
# Outside PyTorch's allocator, so not in the benchmarks' figures: the CUDA context, and NCCL's buffers on several
# GPUs. Not measured here (the bench records only the allocator): the usual size on an H100, with the margin below.
CUDA_CONTEXT_GIB = 0.5
NCCL_BUFFERS_GIB = 0.5
# the term a recipe that casts frozen weights to FP8 once adds: one name where it is added and where it is kept
# outside the margin
KEPT_BF16_BLOCKS = "BF16 blocks the cast left, kept by the allocator"
# A plan fits when its estimate plus this share of its fitted and unmeasured terms is within the GPU's memory: the
# tolerance tests/test_memory.py holds every benchmark to. Weights, gradients and optimizer states follow from the
# parameter count and are counted exactly, so a run whose peak is its training state is not refused for activations
# it does not have at that moment.
MARGIN = 0.15  # of the fitted terms, the strategy's buffers (never measured on several GPUs) and the fixed ones
HOST_HEADROOM = 0.10  # CPU offloading leaves this share of the node's memory to everything else
DEEPSPEED_BUCKET_BYTES = 2 * 5e8 * 2  # zero2.json/zero3.json: two buckets (or live parameters) of 5e8 bf16 values

# Optimizer state bytes per trainable parameter, by Transformers' `optim` name (the first that matches).
OPTIMIZER_STATE_BYTES = (
    ("8bit", 2),
    ("4bit", 1),
    ("lion", 4),
    ("sgd", 0),
    ("adafactor", 0),
    ("lomo", 0),
    ("adagrad", 4),
    ("rmsprop", 4),
    ("adam", 8),
)
UNKNOWN_OPTIMIZER_BYTES = 8  # as AdamW: an unknown optimizer is not assumed smaller
# LLaMA-Factory's memory-saving optimizers, whose states (low-rank projections, one block at a time) and layer-wise
# updates this model does not describe: a run with one is planned without an estimate rather than refused on one.
UNMODELED_OPTIMIZERS = {"use_galore": "GaLore", "use_apollo": "APOLLO", "use_badam": "BAdam"}


def unmodeled(training: TrainingConfig) -> str | None:
    """Why this run's memory is not estimated, or None."""
    if not training.trains:
        return "a run that only evaluates or predicts is not in the memory model (it models training)"
    names = [name for key, name in UNMODELED_OPTIMIZERS.items() if training.values.get(key) is True]
    return f"{names[0]}'s optimizer is not in the memory model" if names else None


@dataclass(frozen=True)
class MemoryEstimate:
    """Per GPU, in GiB: the named terms; `host_gib` is the CPU memory a node needs at its peak (an offloading
    strategy's state); `load_gib` what a GPU holds while its process loads the whole model, before sharding."""

    strategy: str
    world_size: int
    terms: tuple[tuple[str, float], ...]
    host_gib: float = 0.0
    load_gib: float = 0.0
    margin_gib: float = 0.0  # MARGIN of the terms that were fitted or not measured
    total_gib: float = field(init=False)
    allocator_gib: float = field(init=False)  # what PyTorch's allocator reserves at the peak: what the bench records
    allocated_gib: float = field(init=False)  # what it allocates at the peak, without its slack: what rehearsals read

    def __post_init__(self):
        object.__setattr__(self, "total_gib", sum(gib for _, gib in self.terms))
        outside = ("CUDA context", "NCCL buffers")
        object.__setattr__(self, "allocator_gib", sum(gib for name, gib in self.terms if name not in outside))
        slack = sum(gib for name, gib in self.terms if name == "allocator slack")
        object.__setattr__(self, "allocated_gib", self.allocator_gib - slack)

    def fits(self, gpu_gib: float, host_gib: float | None = None) -> bool:
        return self.total_gib + self.margin_gib <= gpu_gib and self.load_gib <= gpu_gib and self.host_fits(host_gib)

    @property
    def load_exceeds_peak(self) -> bool:
        """Whether loading, not training, sets this strategy's peak on a GPU: worth saying in the plan."""
        return self.load_gib > self.total_gib

    def host_fits(self, host_gib: float | None) -> bool:
        return host_gib is None or self.host_gib <= host_gib * (1 - HOST_HEADROOM)


@dataclass(frozen=True)
class _Parameters:
    trainable: float
    frozen_bytes: float  # the frozen parameters' storage
    output_layer: float  # output layer parameters that receive a gradient (full fine-tuning)
    largest_block: float  # the largest unit FSDP gathers at once: a decoder layer, or the root (embeddings, output)
    root_gradient: float  # the root's parameters that receive a gradient (full fine-tuning)
    activation_layers: int  # decoder layers whose activations backward needs


def estimate(
    model: ModelFacts,
    training: TrainingConfig,
    backend: FP8Backend | None,
    strategy: Strategy,
    world_size: int,
    processes_per_node: int = 1,
    recipe: Fp8Recipe | None = None,
) -> MemoryEstimate:
    params = _parameters(model, training)
    shard = {"replicated": 1.0, "sharded": 1.0 / world_size, "offloaded": 0.0}
    deepspeed = strategy.uses_deepspeed
    # DeepSpeed casts the module to bf16 and keeps the fp32 master copy with the optimizer states.
    weight_bytes = 2 if deepspeed or training.pure_bf16 else 4
    grad_bytes = 2 if training.pure_bf16 else 4
    optimizer_bytes = optimizer_state_bytes(training.optim) + (4 if deepspeed else 0)

    # loaded in BF16; from the first step on, a recipe that holds the frozen weights in FP8 keeps 1 byte of each
    held_in_fp8 = _frozen_weights_held_in_fp8(model, training, recipe)
    weights = (params.trainable * weight_bytes + params.frozen_bytes - held_in_fp8) * shard[strategy.weights]
    optimizer = params.trainable * optimizer_bytes * shard[strategy.optimizer]
    gradients = params.trainable * grad_bytes * shard[strategy.gradients]
    activations, logits = _activations(model, training, backend, recipe, params, strategy)
    output_grad = params.output_layer * grad_bytes * shard[strategy.gradients]
    # at the end of backward FSDP2 also holds the root's gradient, unsharded in bf16 until it is reduced
    end_of_backward = gradients + (params.root_gradient * 2 if strategy.buffers == "fsdp" else 0.0)
    if training.gradient_accumulation_steps > 1:  # gradients stay between micro-batches
        peak, fitted = gradients + activations + logits, activations + logits
    elif activations + logits + output_grad > end_of_backward:
        peak, fitted = activations + logits + output_grad, activations + logits
    else:
        peak, fitted = end_of_backward, 0.0

    terms = [
        ("weights", weights),
        ("optimizer states", optimizer),
        ("activations, logits and gradients at the peak", peak),
        (f"{strategy.label} buffers", _buffers(strategy, params, grad_bytes, world_size)),
    ]
    allocated = sum(value for _, value in terms) / GIB + FIXED_GIB
    gib = [(name, value / GIB) for name, value in terms]
    gib += [("fixed", FIXED_GIB), ("allocator slack", allocated * ALLOCATOR_SLACK), ("CUDA context", CUDA_CONTEXT_GIB)]
    if held_in_fp8:
        # the caching allocator keeps the blocks the freed BF16 copies leave, and a step reuses only part of them:
        # the 8B's LoRA peaked 6.5 GiB lower allocated but 4.4 GiB lower reserved than lora-base
        # (bench/results/lora-fp8-weights-h100), so the peak the plan fits counts none of the saving
        gib.append((KEPT_BF16_BLOCKS, held_in_fp8 * shard[strategy.weights] / GIB))
    if world_size > 1:
        gib.append(("NCCL buffers", NCCL_BUFFERS_GIB))
    offloaded = sum(
        size
        for placement, size in (
            (strategy.weights, params.trainable * 4 + params.frozen_bytes),
            (strategy.gradients, params.trainable * grad_bytes),
            (strategy.optimizer, params.trainable * optimizer_state_bytes(training.optim)),
        )
        if placement == "offloaded"
    )
    host = offloaded * processes_per_node / world_size / GIB
    load = 0.0
    if strategy.loads_whole_model_onto_gpu:
        upcast_bytes = 2 if training.pure_bf16 else 4  # LLaMA-Factory upcasts trainable weights, DeepSpeed or not
        load = (params.trainable * upcast_bytes + params.frozen_bytes) / GIB + CUDA_CONTEXT_GIB
    measured_exactly = (
        "weights",
        "optimizer states",
        "activations, logits and gradients at the peak",
        KEPT_BF16_BLOCKS,
    )
    unmeasured = fitted / GIB + sum(value for name, value in gib if name not in measured_exactly)
    return MemoryEstimate(strategy.name, world_size, tuple(gib), host, load, MARGIN * unmeasured)


def _frozen_weights_held_in_fp8(model: ModelFacts, training: TrainingConfig, recipe: Fp8Recipe | None) -> float:
    """The bytes a recipe that casts LoRA's frozen base layers to FP8 once frees: one for each converted weight."""
    if recipe is None or not recipe.frozen_weights_in_fp8 or training.finetuning_type not in ("lora", "oft"):
        return 0.0
    return model.num_layers * sum(i * o for _, i, o in model.linear_shapes_per_layer if large_enough(i, o))


def optimizer_state_bytes(optim: str) -> int:
    name = optim.lower()
    return next((size for part, size in OPTIMIZER_STATE_BYTES if part in name), UNKNOWN_OPTIMIZER_BYTES)


def _parameters(model: ModelFacts, training: TrainingConfig) -> _Parameters:
    embedding = model.vocab_size * model.hidden_size
    output_layer = 0 if model.tie_word_embeddings else embedding
    per_layer = (model.num_parameters - embedding - output_layer - model.hidden_size) / model.num_layers
    linear_per_layer = sum(i * o for _, i, o in model.linear_shapes_per_layer)
    root = embedding + output_layer  # FSDP2's root module: what the decoder layers' own units leave
    largest_block = max(per_layer, root)
    kind = training.finetuning_type
    if kind == "full":
        return _Parameters(model.num_parameters, 0, embedding, largest_block, root, model.num_layers)
    if kind == "freeze":  # LLaMA-Factory's freeze_trainable_layers: the last n layers, or the first -n
        layers = min(abs(training.freeze_trainable_layers), model.num_layers)
        trainable = layers * per_layer
        # backward stops at the first trainable layer: only layers from there on keep activations
        saving = layers if training.freeze_trainable_layers > 0 else model.num_layers
        return _Parameters(trainable, (model.num_parameters - trainable) * 2, 0, largest_block, 0, saving)
    targets = {name for name, _, _ in model.linear_shapes_per_layer}
    named = set(training.lora_target) & targets or targets  # "all", or names of another architecture: every linear
    adapters = (
        model.num_layers
        * training.lora_rank
        * sum(i + o for name, i, o in model.linear_shapes_per_layer if name in named)
    )
    frozen = model.num_parameters * 2
    if training.quantization_bit:  # QLoRA: bitsandbytes packs the linear layers, with ~3% for its scales
        linear = model.num_layers * linear_per_layer
        frozen = (model.num_parameters - linear) * 2 + linear * training.quantization_bit / 8 * 1.03
    return _Parameters(adapters, frozen, 0, largest_block, 0, model.num_layers)


def _activations(
    model: ModelFacts,
    training: TrainingConfig,
    backend: FP8Backend | None,
    recipe: Fp8Recipe | None,
    params: _Parameters,
    strategy: Strategy,
) -> tuple[float, float]:
    """Bytes saved for backward by the decoder layers, and by the logits, for one micro-batch."""
    tokens = training.micro_batch_size * training.cutoff_len  # packed, or padded to cutoff_len at most
    upcast = training.finetuning_type in ("full", "freeze") and not training.pure_bf16
    fp32_stream = upcast and not strategy.computes_in_bf16
    per_hidden = ACTIVATION_BYTES_PER_HIDDEN + (FP32_STREAM_BYTES_PER_HIDDEN if fp32_stream else 0.0)
    per_layer = tokens * (per_hidden * model.hidden_size + ACTIVATION_BYTES_PER_INTERMEDIATE * model.intermediate_size)
    if backend is not None:
        by_recipe = recipe.activation_factor if recipe is not None else None
        per_layer *= backend.activation_factor if by_recipe is None else by_recipe
    if training.gradient_checkpointing:
        # each layer keeps only its input (in the fp32 stream where it runs), and one layer's activations are
        # recomputed at a time
        residual = 4 if fp32_stream else 2
        layers = params.activation_layers * tokens * model.hidden_size * residual + per_layer
    else:
        layers = params.activation_layers * per_layer
    compiled = (
        bool(backend.training_keys.get("torch_compile", training.torch_compile)) if backend else training.torch_compile
    )
    if training.enable_liger_kernel:
        logits = 0.0  # Liger's fused linear cross-entropy never materialises the logits
    else:
        eager = LOGIT_BYTES_EAGER if params.output_layer else LOGIT_BYTES_EAGER_FROZEN_HEAD
        logits = tokens * model.vocab_size * (LOGIT_BYTES_COMPILED if compiled else eager)
    return layers, logits


def _buffers(strategy: Strategy, params: _Parameters, grad_bytes: int, world_size: int) -> float:
    if strategy.buffers == "deepspeed":
        return DEEPSPEED_BUCKET_BYTES
    if strategy.buffers == "fsdp":  # the largest unit gathered in bf16: the root, kept through the step (rehearsals)
        return params.largest_block * 2
    return params.trainable * grad_bytes if world_size > 1 else 0.0  # DDP's gradient buckets

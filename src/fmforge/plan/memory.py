"""Memory per device for training, and how many devices a model needs.

Model states (ZeRO: Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward
Training Trillion Parameter Models", §3.1), bytes per parameter with AdamW:

    mixed precision (bf16): weights 2 + gradients 2 + optimizer 12
                            (fp32 master weights 4, first moment 4, second moment 4) = 16
    pure fp32 (CPU demo):   weights 4 + gradients 4 + optimizer 8 (two moments)      = 16
    autocast (fmforge's trainer with train.dtype=bfloat16: fp32 weights, bf16 matmuls):
                            weights 4 + gradients 4 + optimizer 8, and the bf16 copy of
                            every matmul weight that autograd keeps for backward (2)

Under DDP every device holds all of it (plus, with more than one device, DDP's
gradient buckets: one more copy of the gradients unless ``gradient_as_bucket_view``);
under FSDP (ZeRO-3) the states are sharded, 16·P/N per device, plus all-gather
buffers for the unit being computed and the one prefetched.

Activations (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
Transformer Models", §4: count every tensor autograd saves for backward, per layer,
per token). Their GPT layer stores 34·s·b·h + 5·a·s²·b bytes in 16-bit; our block
(fmforge.model.transformer: RMSNorm, RoPE, GQA through scaled_dot_product_attention,
SwiGLU, no dropout) saves, per token and layer, with h = d_model and f = the MLP
width (census taken with torch.autograd.graph.saved_tensors_hooks):

    attention norm      input, normalised, output                          3h
    attention (SDPA)    rotated q; k and v expanded to all heads; output   4h
    o_proj input        heads re-laid out                                  h
    MLP norm            input, normalised, output                          3h
    SwiGLU              gate, silu(gate), up, their product                4f
    total elements                                                         11h + 4f

RoPE multiplies by constant tables, so it saves nothing activation-sized; the fused
attention kernels keep no s×s score matrix (only an s-sized log-sum-exp), so
Korthikanti's 5·a·s² term is absent; grouped-query attention saves nothing less,
because k and v are expanded to all heads before the kernel. Bytes: in fp32,
4·(11h + 4f); in bf16 (weights cast to bf16, as FSDP2's mixed precision does) the
norms keep an fp32 copy of their input, so 2·(11h + 4f) + 4h = 26h + 8f; under
autocast with fp32 weights (fmforge's trainer) the residual stream stays fp32 and
each projection saves its own bf16 cast of its input: 36h + 8f. Outside the
layers: the final norm (3h elements) and the loss, which the model computes in fp32
from the logits: while its backward runs, the saved log-softmax output, its
gradient and the logits' gradient coexist, 3 vocabulary-sized fp32 tensors per token
(plus the 16-bit logits under bf16).

With activation checkpointing of every block (Korthikanti §4.3, "full
recomputation") each layer keeps only its input (the residual stream: 4h bytes in
fp32, 2h in bf16) and one layer's full set lives again while it is recomputed.

The total reported is the sum weights + gradients + optimizer + activations (+
buffers). It is an estimate, not a bound: in a real step gradients fill in while
activations are freed (lowering the peak), while the allocator, matmul workspaces
and short-lived temporaries such as the fp32 copy of the logits add to it. On CPU
the sum came out 9-16% under the measured peak RSS (benchmarks/README.md;
tests/plan/test_memory.py holds it within 25%).

A device's usable memory is its capacity minus ``GPU_RESERVED_GB`` (CUDA context,
NCCL buffers) times ``GPU_USABLE_FRACTION`` (allocator fragmentation); a CPU's is
``CPU_USABLE_FRACTION`` of RAM.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from fmforge.plan.architecture import Architecture, count_params
from fmforge.plan.errors import PlanError, require_positive
from fmforge.hardware import Hardware

GPU_RESERVED_GB = 1.0
GPU_USABLE_FRACTION = 0.92
CPU_USABLE_FRACTION = 0.80
GB = 1e9

DType = Literal["bfloat16", "float32"]
Strategy = Literal["ddp", "fsdp"]


@dataclass(frozen=True)
class StateBytes:
    weights: float
    grads: float
    optimizer: float

    @property
    def per_param(self) -> float:
        return self.weights + self.grads + self.optimizer


DTYPES = ("bfloat16", "autocast", "float32")


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise PlanError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return dtype


def state_bytes_per_param(dtype: str) -> StateBytes:
    check_dtype(dtype)
    if dtype == "bfloat16":
        return StateBytes(weights=2, grads=2, optimizer=12)
    return StateBytes(weights=4, grads=4, optimizer=8)


def _act_bytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


def activation_bytes_per_token_layer(arch: Architecture, dtype: str) -> float:
    """Bytes saved for backward per token per transformer block (no checkpointing)."""
    check_dtype(dtype)
    h, f = arch.d_model, arch.ffn_dim
    if dtype == "autocast":
        # fp32 residual stream: each norm keeps its fp32 input and normalised value
        # (16h), every projection its own bf16 cast of its input (q, k, v, gate, up:
        # 10h), SDPA q, k, v, out (8h), o_proj input (2h), SwiGLU (8f)
        return 36 * h + 8 * f
    p = _act_bytes(dtype)
    return p * (11 * h + 4 * f) + (4 - p) * 2 * h


def head_bytes_per_token(arch: Architecture, dtype: str) -> float:
    """Final norm + the fp32 loss over the vocabulary, per token (peak, in backward)."""
    h, v = arch.d_model, arch.vocab_size
    if dtype == "autocast":
        return 8 * h + 2 * h + 3 * 4 * v + 2 * v
    p = _act_bytes(dtype)
    return p * 3 * h + (4 - p) * h + 3 * 4 * v + (p * v if p != 4 else 0)


def activation_bytes(arch: Architecture, micro_batch: int, dtype: str, checkpointing: bool) -> float:
    """Peak activation bytes of one micro-batch of ``micro_batch`` sequences of arch.seq_len."""
    require_positive("micro-batch size", micro_batch)
    tokens = micro_batch * arch.seq_len
    layer = activation_bytes_per_token_layer(arch, dtype)
    if checkpointing:
        # each block keeps its input (residual stream, fp32 on CPU / 16-bit on GPU);
        # one block at a time is recomputed in full
        # (under autocast the residual stream is fp32: 4 bytes)
        residual = 4 if dtype == "autocast" else _act_bytes(dtype)
        per_token = arch.n_layers * residual * arch.d_model + layer
    else:
        per_token = arch.n_layers * layer
    return tokens * (per_token + head_bytes_per_token(arch, dtype))


def usable_bytes(hw: Hardware) -> float:
    if hw.is_cpu:
        return hw.memory_gb * GB * CPU_USABLE_FRACTION
    return max(0.0, (hw.memory_gb - GPU_RESERVED_GB) * GB * GPU_USABLE_FRACTION)


@dataclass(frozen=True)
class MemoryEstimate:
    strategy: str  # "ddp" (single device: no sharding) or "fsdp"
    num_gpus: int
    micro_batch: int
    dtype: str
    checkpointing: bool
    weights_gb: float
    grads_gb: float
    optimizer_gb: float
    activations_gb: float
    activations_checkpointed_gb: float
    activations_full_gb: float
    buffers_gb: float  # DDP gradient buckets or FSDP all-gather buffers
    total_gb: float
    usable_gb: float
    fits: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _buffers(arch: Architecture, params: int, sb: StateBytes, strategy: str, num_gpus: int) -> float:
    if num_gpus == 1:
        return 0.0
    if strategy == "ddp":
        return params * sb.grads
    # FSDP: the gathered weights of the unit being computed and of the prefetched
    # one, and the unsharded gradient of one unit before its reduce-scatter.
    pc = count_params(arch)
    unit = max((pc.attention + pc.mlp) / arch.n_layers, pc.embedding)
    return 3 * unit * sb.weights


def _autocast_copy_bytes(arch: Architecture, dtype: str) -> float:
    """Under autocast, autograd keeps the bf16 copy of every matmul weight for backward."""
    return 2.0 * count_params(arch).matmul if dtype == "autocast" else 0.0


def estimate_memory(
    arch: Architecture,
    hw: Hardware,
    micro_batch: int,
    num_gpus: int = 1,
    strategy: str = "fsdp",
    dtype: str = "bfloat16",
    checkpointing: bool = False,
) -> MemoryEstimate:
    require_positive("number of GPUs", num_gpus)
    if strategy not in ("ddp", "fsdp"):
        raise PlanError(f"strategy must be 'ddp' or 'fsdp', got {strategy!r}")
    if num_gpus == 1:
        strategy = "ddp"  # nothing to shard over
    sb = state_bytes_per_param(dtype)
    params = count_params(arch).total
    shard = num_gpus if strategy == "fsdp" else 1
    act_full = activation_bytes(arch, micro_batch, dtype, False)
    act_ckpt = activation_bytes(arch, micro_batch, dtype, True)
    act = act_ckpt if checkpointing else act_full
    if dtype == "autocast":
        # autograd keeps autocast's bf16 copy of every weight until backward uses it
        cast = _autocast_copy_bytes(arch, dtype) / (num_gpus if strategy == "fsdp" else 1)
        act_full, act_ckpt, act = act_full + cast, act_ckpt + cast, act + cast
    buf = _buffers(arch, params, sb, strategy, num_gpus)
    w, g, o = (params * x / shard for x in (sb.weights, sb.grads, sb.optimizer))
    total = w + g + o + act + buf
    usable = usable_bytes(hw)
    return MemoryEstimate(
        strategy=strategy,
        num_gpus=num_gpus,
        micro_batch=micro_batch,
        dtype=dtype,
        checkpointing=checkpointing,
        weights_gb=w / GB,
        grads_gb=g / GB,
        optimizer_gb=o / GB,
        activations_gb=act / GB,
        activations_checkpointed_gb=act_ckpt / GB,
        activations_full_gb=act_full / GB,
        buffers_gb=buf / GB,
        total_gb=total / GB,
        usable_gb=usable / GB,
        fits=total <= usable,
    )


def max_micro_batch(
    arch: Architecture, hw: Hardware, num_gpus: int = 1, strategy: str = "fsdp",
    dtype: str = "bfloat16", checkpointing: bool = False,
) -> int:
    """The largest micro-batch (sequences) that fits on each device; 0 if none does."""
    base = estimate_memory(arch, hw, 1, num_gpus, strategy, dtype, checkpointing)
    # what one more sequence adds (under autocast activations_gb also holds the bf16
    # weight copies, which do not grow with the batch)
    per_seq = activation_bytes(arch, 1, dtype, checkpointing)
    room = base.usable_gb * GB - base.total_gb * GB
    return max(0, 1 + int(room // per_seq)) if room >= 0 else 0


MAX_GPUS = 1_000_000


def min_gpus(
    arch: Architecture, hw: Hardware, micro_batch: int, dtype: str = "bfloat16",
    checkpointing: bool = False,
) -> tuple[int, str]:
    """The fewest devices of type ``hw`` that hold the training state plus one
    micro-batch's activations: one device if it fits unsharded, else FSDP over N.
    Raises PlanError, saying what would fit, when no number of devices does."""
    one = estimate_memory(arch, hw, micro_batch, 1, "ddp", dtype, checkpointing)
    if one.fits:
        return 1, "ddp"
    if hw.is_cpu:
        raise PlanError(
            f"training needs {one.total_gb:.1f} GB but this machine has {one.usable_gb:.1f} GB usable "
            f"({hw.memory_gb:.1f} GB RAM); {_what_fits(arch, hw, micro_batch, dtype, checkpointing)}"
        )
    # Sharded states shrink as 1/N; activations and buffers do not.
    probe = estimate_memory(arch, hw, micro_batch, 2, "fsdp", dtype, checkpointing)
    cast = _autocast_copy_bytes(arch, dtype)  # sharded like the states
    fixed = (probe.activations_gb + probe.buffers_gb) * GB - cast / 2
    states = count_params(arch).total * state_bytes_per_param(dtype).per_param + cast
    room = probe.usable_gb * GB - fixed
    n = math.ceil(states / room) if room > 0 else MAX_GPUS + 1
    if n > MAX_GPUS:
        raise PlanError(
            f"the model fits on no number of {hw.key} GPUs at micro-batch {micro_batch}: "
            f"activations ({probe.activations_gb - cast / 2 / GB:.1f} GB) and buffers ({probe.buffers_gb:.1f} GB) "
            f"alone exceed the {probe.usable_gb:.1f} GB usable per GPU, and FSDP does not shard "
            f"activations; {_what_fits(arch, hw, micro_batch, dtype, checkpointing)}"
        )
    n = max(n, 2)
    while not estimate_memory(arch, hw, micro_batch, n, "fsdp", dtype, checkpointing).fits:
        n += 1  # rounding; at most a step or two
    return n, "fsdp"


def _unshardable_fits(arch: Architecture, hw: Hardware, micro_batch: int, dtype: str,
                      checkpointing: bool) -> bool:
    """Whether activations and buffers (what FSDP does not shard) leave room for states."""
    e = estimate_memory(arch, hw, micro_batch, 2, "fsdp", dtype, checkpointing)
    return (e.activations_gb + e.buffers_gb) * GB - _autocast_copy_bytes(arch, dtype) / 2 < e.usable_gb * GB


def _what_fits(arch: Architecture, hw: Hardware, micro_batch: int, dtype: str, checkpointing: bool) -> str:
    hints = []
    if not checkpointing and _unshardable_fits(arch, hw, micro_batch, dtype, True):
        hints.append("turn on activation checkpointing (--checkpointing)")
    if micro_batch > 1 and _unshardable_fits(arch, hw, 1, dtype, checkpointing):
        hints.append("lower the micro-batch size to 1")
    if not hints and not checkpointing and micro_batch > 1 and _unshardable_fits(arch, hw, 1, dtype, True):
        hints.append("turn on activation checkpointing and lower the micro-batch size to 1")
    hints.append(f"use a shorter sequence than {arch.seq_len}")
    hints.append("shard the activations too (tensor, sequence or context parallelism, not modelled here)")
    if hw.is_cpu:
        hints.append("use a GPU")
    return "to fit: " + ", or ".join(hints)
